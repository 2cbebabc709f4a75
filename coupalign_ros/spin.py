"""The process around a node: one place that starts rclpy, spins, and stops cleanly on Ctrl-C or
an external shutdown, for every console script that runs a node."""

from __future__ import annotations

import sys
from typing import Callable, Optional, TypeVar

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

N = TypeVar("N", bound=Node)


def spin_node(make_node: Callable[[], N], stop: Callable[[N], None], num_threads: int,
              args: Optional[list[str]] = None) -> int:
    """Runs ``make_node()`` on a multi-threaded executor until shutdown; ``stop(node)`` releases what
    the node holds (worker threads, the model) before the node is destroyed. Returns the exit code."""
    rclpy.init(args=args if args is not None else sys.argv)
    node = make_node()
    executor = MultiThreadedExecutor(num_threads=num_threads)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop(node)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
