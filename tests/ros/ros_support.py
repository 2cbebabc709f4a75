"""What the ROS 2 tests share: the node launched through launch/coupalign.launch.py, a client node
that records what it publishes, and `ros2 ...` command lines run with a timeout.

Imported by the tests in this folder after they made sure rclpy and launch_pytest exist (CI has
no ROS: every test module skips before importing this).
"""

from __future__ import annotations

import array
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

import launch_pytest
import numpy as np
import rclpy
from ament_index_python.packages import get_package_share_directory
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PointStamped
from launch.actions import IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import String

import launch
from coupalign_ros.msg import ReferringSegmentation
from coupalign_ros.srv import Segment

SHARE = Path(get_package_share_directory("coupalign_ros"))
NODE = "/coupalign"
IMAGE_TOPIC = "/test_camera/image"
DEPTH_TOPIC = "/test_camera/depth"
INFO_TOPIC = "/test_camera/camera_info"
K = [50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0]
COMMAND_TOPIC = "/test/command"
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
WAIT_S = 90.0  # the node imports torch and builds the model on a shared CPU


def node_launch(checkpoint: Path | str, autostart: bool, **extra: str) -> launch.LaunchDescription:
    """The node through the installed coupalign.launch.py, reading the test's topics."""
    include = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(SHARE / "launch" / "coupalign.launch.py")),
        launch_arguments={
            "checkpoint": str(checkpoint), "backend": "torch", "device": "cpu",
            "image_topic": IMAGE_TOPIC, "command_topic": COMMAND_TOPIC, "publish_overlay": "true",
            "max_frame_age_s": "0", "autostart": "true" if autostart else "false", **extra,
        }.items(),
    )
    return launch.LaunchDescription([include, launch_pytest.actions.ReadyToTest()])


def image_message(stamp, width: int = 64, height: int = 48, *, encoding: str = "rgb8",
                  step: int | None = None) -> Image:
    """A frame with a bright band (what the tiny model is asked to find)."""
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = "test_camera"
    msg.height, msg.width, msg.encoding = height, width, encoding
    msg.step = width * 3 if step is None else step
    pixels = np.zeros((height, msg.step), np.uint8)
    pixels[height // 4: height // 2, : msg.step // 2] = 200
    msg.data = array.array("B", pixels.tobytes())
    return msg


class Client:
    """A test-side rclpy node spun on a background thread, recording what the node publishes."""

    def __init__(self, image_qos: Any = 10) -> None:
        rclpy.init()
        self.node = rclpy.create_node("coupalign_test_client")
        self.received: dict[str, list[Any]] = {"result": [], "mask": [], "overlay": [], "diagnostics": [],
                                               "target_point": []}
        n = self.node
        n.create_subscription(ReferringSegmentation, f"{NODE}/result", self._keep("result"), 10)
        n.create_subscription(Image, f"{NODE}/mask", self._keep("mask"), 10)
        n.create_subscription(Image, f"{NODE}/overlay", self._keep("overlay"), 10)
        n.create_subscription(DiagnosticArray, "/diagnostics", self._keep("diagnostics"), 10)
        n.create_subscription(PointStamped, f"{NODE}/target_point", self._keep("target_point"), 10)
        self.images = n.create_publisher(Image, IMAGE_TOPIC, image_qos)
        self.depth = n.create_publisher(Image, DEPTH_TOPIC, 10)
        self.camera_info = n.create_publisher(CameraInfo, INFO_TOPIC, 10)
        self.set_parameters = n.create_client(SetParameters, f"{NODE}/set_parameters")
        self.commands = n.create_publisher(String, COMMAND_TOPIC, LATCHED)
        self.get_state = n.create_client(GetState, f"{NODE}/get_state")
        self.change_state = n.create_client(ChangeState, f"{NODE}/change_state")
        self.segment = n.create_client(Segment, f"{NODE}/segment")
        self.executor = MultiThreadedExecutor(num_threads=2)
        self.executor.add_node(n)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.stamps: list[tuple[int, int]] = []

    def _keep(self, key: str) -> Callable[[Any], None]:
        def store(msg: Any) -> None:
            self.received[key].append(msg)
        return store

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown()

    def wait_for(self, predicate: Callable[[], Any], timeout: float = WAIT_S, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()  # reads lists that callbacks only append to
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")

    def call(self, client, request, timeout: float = WAIT_S):
        assert client.wait_for_service(timeout_sec=timeout), f"service {client.srv_name} not available"
        future = client.call_async(request)
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert future.done(), f"{client.srv_name} did not answer"
        return future.result()

    def state(self) -> str:
        return self.call(self.get_state, GetState.Request()).current_state.label

    def transition(self, transition_id: int) -> bool:
        return self.call(self.change_state, ChangeState.Request(transition=Transition(id=transition_id))).success

    def image(self, width: int = 64, height: int = 48, **kwargs: Any) -> Image:
        return image_message(self.node.get_clock().now().to_msg(), width, height, **kwargs)

    def publish_images(self, seconds: float, with_depth: bool = False, period: float = 0.1, **kwargs: Any) -> None:
        """Camera frames at 1/period Hz; with_depth adds an aligned 32FC1 depth (2 m) and CameraInfo."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            msg = self.image(**kwargs)
            if with_depth:
                depth = Image(header=msg.header, height=msg.height, width=msg.width, encoding="32FC1",
                              is_bigendian=0, step=msg.width * 4)
                depth.data = array.array("B", np.full((msg.height, msg.width), 2.0, np.float32).tobytes())
                self.depth.publish(depth)
                self.camera_info.publish(CameraInfo(header=msg.header, height=msg.height, width=msg.width, k=K))
            self.images.publish(msg)
            self.stamps.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
            time.sleep(period)

    def set_parameter(self, name: str, value: Any):
        """(successful, reason) of setting one node parameter through its service."""
        kind = {bool: ParameterType.PARAMETER_BOOL, float: ParameterType.PARAMETER_DOUBLE,
                int: ParameterType.PARAMETER_INTEGER, str: ParameterType.PARAMETER_STRING}[type(value)]
        field = {bool: "bool_value", float: "double_value", int: "integer_value", str: "string_value"}[type(value)]
        pv = ParameterValue(type=kind, **{field: value})
        reply = self.call(self.set_parameters, SetParameters.Request(parameters=[Parameter(name=name, value=pv)]))
        return reply.results[0].successful, reply.results[0].reason

    def diagnostics(self) -> dict[str, str] | None:
        """The key/values of the coupalign node's latest diagnostic status (None before one)."""
        for diagnostic_array in reversed(self.received["diagnostics"]):
            for status in diagnostic_array.status:
                if status.name.startswith("coupalign"):
                    values = {kv.key: kv.value for kv in status.values}
                    values["_message"], values["_level"] = status.message, int.from_bytes(status.level, "little") \
                        if isinstance(status.level, bytes) else int(status.level)
                    return values
        return None

    def results_for(self, command: str) -> list[Any]:
        return [r for r in self.received["result"] if r.command == command]


class ImageStream:
    """Publishes camera frames from a background thread until stopped (a camera that keeps running)."""

    def __init__(self, client: Client, period: float = 0.1, **kwargs: Any):
        self.client, self.period, self.kwargs = client, period, kwargs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.client.images.publish(self.client.image(**self.kwargs))
            self._stop.wait(self.period)

    def __enter__(self) -> "ImageStream":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run(command: list[str], timeout: float = WAIT_S) -> subprocess.CompletedProcess:
    """A command line to its end (a test failure, not a hang, when it does not end in time)."""
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


def ros2_launch(*arguments: str, until: str, timeout: float = WAIT_S) -> tuple[int | None, str]:
    """Run `ros2 launch coupalign_ros coupalign.launch.py ...` until ``until`` is printed or it exits."""
    proc = subprocess.Popen(["ros2", "launch", "coupalign_ros", "coupalign.launch.py", *arguments],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None and until not in "".join(output):
        time.sleep(0.1)
    code = proc.poll()
    if code is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    reader.join(timeout=5)
    return code, "".join(output)
