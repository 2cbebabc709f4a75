"""Type a command to the coupalign node: publishes sentences on the command topic.

    ros2 run coupalign_ros coupalign_command "the red cup on the left"
    ros2 run coupalign_ros coupalign_command              # interactive: one sentence per line
    ros2 run coupalign_ros coupalign_command --topic /robot1/coupalign/command --latch "the box"

The publisher is reliable and transient local with depth 1, like the node's subscription, so a
node that starts later still receives the last sentence for as long as this tool runs (--latch
keeps it running after a one-shot sentence; interactive mode always does).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence

DEFAULT_TOPIC = "/coupalign/command"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coupalign_command", description=__doc__.splitlines()[0])
    parser.add_argument("sentence", nargs="*", help="the command; omit it to type sentences interactively")
    parser.add_argument("--topic", default=DEFAULT_TOPIC, help=f"command topic (default: {DEFAULT_TOPIC})")
    parser.add_argument("--wait", type=float, default=5.0,
                        help="seconds to wait for a subscriber before publishing (default: 5; 0: don't wait)")
    parser.add_argument("--latch", action="store_true",
                        help="after a one-shot sentence keep running (Ctrl-C to stop) so late nodes get it")
    return parser


def sentence_from(words: Sequence[str]) -> Optional[str]:
    """The words joined; None when there are none (interactive mode). Refuses a blank sentence."""
    if not words:
        return None
    sentence = " ".join(words).strip()
    if not sentence:
        raise ValueError("the sentence is empty")
    return sentence


def main(argv: Optional[Sequence[str]] = None) -> int:
    import rclpy
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.utilities import remove_ros_args
    from std_msgs.msg import String

    argv = list(sys.argv if argv is None else argv)
    args = build_parser().parse_args(remove_ros_args(argv)[1:])
    try:
        sentence = sentence_from(args.sentence)
    except ValueError as e:
        print(f"coupalign_command: {e}", file=sys.stderr)
        return 2
    rclpy.init(args=argv)
    node = rclpy.create_node("coupalign_command")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    publisher = node.create_publisher(String, args.topic, qos)
    try:
        deadline = time.monotonic() + max(0.0, args.wait)
        while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        if publisher.get_subscription_count() == 0 and args.wait > 0:
            node.get_logger().warning(f"no subscriber on {args.topic} yet; publishing anyway (latched)")

        def send(text: str) -> None:
            publisher.publish(String(data=text))
            node.get_logger().info(f"sent {text!r} on {publisher.topic_name}")

        if sentence is not None:
            send(sentence)
            end = time.monotonic() + 0.5  # let DDS deliver before the publisher goes away
            while args.latch or time.monotonic() < end:
                rclpy.spin_once(node, timeout_sec=0.1)
            return 0
        print(f"type a sentence and press Enter to send it on {args.topic} (Ctrl-D to quit)", file=sys.stderr)
        for line in sys.stdin:
            text = line.strip()
            if text:
                send(text)
            rclpy.spin_once(node, timeout_sec=0.0)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    sys.exit(main())
