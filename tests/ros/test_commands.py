"""Commands reach the node from any publisher (the QoS matrix), each message counts once, and the
result is readable with `ros2 topic echo --no-arr`.

The node subscribes to the command topic twice (reliable + volatile, reliable + transient local)
and de-duplicates what both deliver. Each row of the matrix is a publisher written the way other
ROS software writes it; the late joiner (a latched command sent before the node started) is in
test_node_launch.py. Skipped without ROS (CI).
"""

from __future__ import annotations

import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; these tests run on a ROS machine")
launch_pytest = pytest.importorskip("launch_pytest", reason="launch_pytest is not installed")

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory  # noqa: E402

try:
    get_package_share_directory("coupalign_ros")
except PackageNotFoundError:  # pragma: no cover - depends on the machine
    pytest.skip("coupalign_ros is not built and sourced (docs/ros.md)", allow_module_level=True)

from ros_support import COMMAND_TOPIC, NODE, ImageStream, node_launch, run  # noqa: E402
from std_msgs.msg import String  # noqa: E402


def write_command_bag(path, text: str, latched: bool) -> None:
    """A bag with one command, recorded with the QoS a latched (or a default) publisher offers:
    `ros2 bag play` offers the recorded QoS again."""
    from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime

    from coupalign_core.bags import files, make_typestore

    zero = QosTime(sec=0, nsec=0)
    durability = QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE
    qos = Qos(QosHistory.KEEP_LAST, 1, QosReliability.RELIABLE, durability, zero, zero, QosLiveliness.AUTOMATIC,
              zero, False)
    typestore = make_typestore("jazzy")
    with files.BagWriter(path, "mcap") as writer:
        connection = writer.connection(COMMAND_TOPIC, "std_msgs/msg/String", typestore, [qos])
        writer.write(connection, 1_700_000_000 * 10**9, typestore.types["std_msgs/msg/String"](data=text), typestore)


@launch_pytest.fixture
def running_node(checkpoint):
    return node_launch(checkpoint, autostart=True)


@pytest.mark.launch(fixture=running_node)
def test_commands_from_any_publisher_count_once(client, tmp_path):
    client.wait_for(lambda: client.state() == "active" or None, what="autostart to activate the node")
    sent: list[str] = []

    def applied(text: str):
        sent.append(text)
        return client.wait_for(lambda: client.results_for(text), what=f"a result for {text!r}")[0]

    with ImageStream(client):
        # a publisher with default QoS (reliable, volatile, depth 10): what speech-to-text nodes write
        plain = client.node.create_publisher(String, COMMAND_TOPIC, 10)
        client.wait_for(lambda: plain.get_subscription_count() > 0, what="the node to match a default publisher")
        plain.publish(String(data="from a default publisher"))
        applied("from a default publisher")

        # a latched publisher (reliable, transient local): both subscriptions receive it, one command
        client.commands.publish(String(data="from a latched publisher"))
        applied("from a latched publisher")

        # `ros2 topic pub` with its defaults (reliable, volatile; --once waits for a subscription)
        done = run(["ros2", "topic", "pub", "--once", COMMAND_TOPIC, "std_msgs/msg/String",
                    "{data: 'from ros2 topic pub'}"], timeout=60)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        applied("from ros2 topic pub")

        # `ros2 bag play` of a bag recorded from a latched and from a default publisher
        for latched in (True, False):
            text = f"from ros2 bag play ({'latched' if latched else 'volatile'})"
            write_command_bag(tmp_path / f"bag-{latched}", text, latched)
            # -d 1: a bag of nothing but one command would otherwise be played before discovery ends
            done = run(["ros2", "bag", "play", "-d", "1", "--wait-for-all-acked", "5000",
                        str(tmp_path / f"bag-{latched}")], timeout=60)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
            applied(text)

        # `ros2 topic echo --no-arr`: the result without the mask's bytes (docs/ros.md)
        echo = run(["ros2", "topic", "echo", "--once", "--no-arr", f"{NODE}/result"], timeout=60)
        assert echo.returncode == 0, echo.stderr[-2000:]

    # every message is one command: ids 1, 2, ... in order, none twice
    first_ids = [client.results_for(text)[0].command_id for text in sent]
    assert first_ids == list(range(1, len(sent) + 1)), first_ids
    assert {r.command_id for r in client.received["result"]} <= set(first_ids)
    diag = client.wait_for(lambda: (d := client.diagnostics()) and d.get("command_id") == str(len(sent)) and d,
                           what="/diagnostics with the last command")
    assert diag["command"] == sent[-1]

    lines = echo.stdout.splitlines()
    assert any(line.startswith("command: ") for line in lines) and any(line.startswith("found: ") for line in lines)
    assert any("<sequence type: uint8, length: 3072>" in line for line in lines), echo.stdout
    assert len(lines) < 60, echo.stdout  # readable: the 3072 mask bytes are not printed
