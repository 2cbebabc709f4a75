"""A 4000x3000 rgb8 camera (36 MB a frame): over the default best-effort image QoS the frames are
lost in transport, and the node says so on /diagnostics and in its log (naming the fix); with
image_reliability:=reliable every frame arrives and is segmented. docs/ros.md lists which camera
sizes need which. Skipped without ROS (CI).
"""

from __future__ import annotations

import time

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; these tests run on a ROS machine")
launch_pytest = pytest.importorskip("launch_pytest", reason="launch_pytest is not installed")

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory  # noqa: E402

try:
    get_package_share_directory("coupalign_ros")
except PackageNotFoundError:  # pragma: no cover - depends on the machine
    pytest.skip("coupalign_ros is not built and sourced (docs/ros.md)", allow_module_level=True)

from rcl_interfaces.msg import Log  # noqa: E402
from ros_support import IMAGE_TOPIC, node_launch  # noqa: E402
from std_msgs.msg import String  # noqa: E402

LARGE = (4000, 3000)


def send_large_frames(client, count: int = 3, gap_s: float = 1.5) -> list[tuple[int, int]]:
    """``count`` 4000x3000 rgb8 frames from a reliable publisher (default QoS, as a driver writes it)."""
    stamps = []
    for _ in range(count):
        msg = client.image(*LARGE)
        client.images.publish(msg)
        stamps.append((msg.header.stamp.sec, msg.header.stamp.nanosec))
        time.sleep(gap_s)
    return stamps


@launch_pytest.fixture
def best_effort_node(checkpoint):
    return node_launch(checkpoint, autostart=True)


@pytest.mark.launch(fixture=best_effort_node)
def test_large_frames_over_best_effort_are_reported(client):
    log: list[Log] = []
    client.node.create_subscription(Log, "/rosout", log.append, 100)
    client.wait_for(lambda: client.state() == "active" or None, what="autostart to activate the node")
    client.wait_for(lambda: client.images.get_subscription_count() > 0, what="the node's image subscription")
    client.commands.publish(String(data="the bright band"))
    stamps = send_large_frames(client)
    diag = client.wait_for(lambda: (d := client.diagnostics()) and (
        d["_level"] == 1 and "no image for" in d["_message"] or d.get("frames_received", "0") != "0") and d,
        what="/diagnostics either counting the frames or saying that none arrive")
    if diag.get("frames_received", "0") != "0":  # this machine delivered them: then they are segmented
        client.wait_for(lambda: any((r.header.stamp.sec, r.header.stamp.nanosec) in stamps
                                    for r in client.received["result"]), what="a result for a large frame")
        pytest.skip("best effort delivered 36 MB frames here; the report path was not needed")
    assert f"publisher(s) on {IMAGE_TOPIC}" in diag["_message"]
    assert "image_reliability:=reliable" in diag["_message"]  # the test's publisher is reliable
    warning = client.wait_for(lambda: [m for m in log if "no image for" in m.msg], what="the warning in the log")
    assert warning[0].level == Log.WARN and "docs/ros.md" in warning[0].msg

    # a 640x480 frame over the same QoS arrives: the node works, the size was the problem
    client.publish_images(2.0, width=640, height=480)
    client.wait_for(lambda: client.received["result"], what="a result for a 640x480 frame")
    assert (client.received["result"][-1].mask.width, client.received["result"][-1].mask.height) == (640, 480)


@launch_pytest.fixture
def reliable_node(checkpoint):
    return node_launch(checkpoint, autostart=True, image_reliability="reliable")


@pytest.mark.launch(fixture=reliable_node)
def test_large_frames_over_reliable_qos_all_arrive(client):
    client.wait_for(lambda: client.state() == "active" or None, what="autostart to activate the node")
    client.wait_for(lambda: client.images.get_subscription_count() > 0, what="the node's image subscription")
    client.commands.publish(String(data="the bright band"))
    time.sleep(0.5)  # the command first: frames stamped before it are not segmented with it
    stamps = send_large_frames(client)
    def segmented():
        return {(r.header.stamp.sec, r.header.stamp.nanosec) for r in client.received["result"]} >= set(stamps)

    client.wait_for(segmented, what="results for all three 4000x3000 frames")
    result = client.received["result"][-1]
    assert (result.mask.width, result.mask.height) == LARGE and len(result.mask.data) == LARGE[0] * LARGE[1]
    diag = client.wait_for(lambda: (d := client.diagnostics()) and int(d.get("frames_processed", 0)) >= 3 and d,
                           what="/diagnostics counting the frames")
    assert diag["_level"] == 0, diag["_message"]
