"""The coupalign_speech node on a real ROS 2: audio on a topic in, the command out, with the QoS
the segmentation node subscribes with. In-process (rclpy), so a failure shows the node's own
traceback. Skipped without rclpy, without audio_common_msgs (ros-drivers/audio_common, ROS 2
branch; docs/speech.md) or without espeak-ng.

The end-to-end run with both nodes and an audio bag (`coupalign make-bag --speech`, `ros2 bag play`)
is in docs/speech.md ("On the ROS 2 machine").
"""

from __future__ import annotations

import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy", reason="ROS 2 (rclpy) is not installed; these tests run on a ROS machine")
pytest.importorskip("audio_common_msgs", reason="audio_common_msgs is not installed (docs/speech.md)")

from coupalign_core.speech.synthesis import espeak_available, synthesize  # noqa: E402

if not espeak_available():
    pytest.skip("espeak-ng is not installed (scripts/setup.sh)", allow_module_level=True)

SENTENCE = "the leftmost red box"


@pytest.fixture
def ros():
    rclpy.init()
    yield
    rclpy.try_shutdown()


def spin_until(executor, done, timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end and not done():
        executor.spin_once(timeout_sec=0.05)
    return done()


@pytest.mark.parametrize("durability", ["volatile", "transient_local"])
def test_speech_on_the_audio_topic_becomes_one_command(ros, durability):
    from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
    from std_msgs.msg import String

    from coupalign_ros.node import command_qos
    from coupalign_ros.speech_node import CoupAlignSpeechNode

    node = CoupAlignSpeechNode(parameter_overrides=[
        Parameter("command_durability", value=durability), Parameter("audio_topic", value="/test/audio_stamped"),
        Parameter("audio_info_topic", value="/test/audio_info")])
    peer = rclpy.create_node("speech_test_peer")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    executor.add_node(peer)
    heard: list[str] = []
    # what the segmentation node subscribes with (both of its subscriptions)
    for policy in (DurabilityPolicy.VOLATILE, DurabilityPolicy.TRANSIENT_LOCAL):
        peer.create_subscription(String, "/coupalign/command", lambda m: heard.append(m.data), command_qos(policy))
    audio_pub = peer.create_publisher(AudioDataStamped, "/test/audio_stamped", 100)
    latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
    info_pub = peer.create_publisher(AudioInfo, "/test/audio_info", latched)
    try:
        assert node.trigger_configure() is not None and node.trigger_activate() is not None
        info_pub.publish(AudioInfo(channels=1, sample_rate=22050, sample_format="S16LE", bitrate=0,
                                   coding_format="wave"))
        spin_until(executor, lambda: False, 0.5)
        speech = synthesize(SENTENCE, rate=22050)
        stream = np.concatenate([np.zeros(22050, np.float32), speech, np.zeros(2 * 22050, np.float32)])
        pcm = (np.clip(stream, -1, 1) * 32767).astype("<i2")
        for i in range(0, pcm.size, 2205):
            msg = AudioDataStamped()
            msg.header.stamp = node.get_clock().now().to_msg()
            msg.audio = AudioData(data=pcm[i:i + 2205].tobytes())
            audio_pub.publish(msg)
            executor.spin_once(timeout_sec=0.0)
        # a latched command matches both of the segmentation node's subscriptions, a volatile one only
        # the volatile subscription (docs/ros.md, "Commands from any publisher")
        deliveries = 2 if durability == "transient_local" else 1
        assert spin_until(executor, lambda: len(heard) >= deliveries, 20.0), "no command published"
        spin_until(executor, lambda: False, 0.5)
        assert heard == [SENTENCE] * deliveries
        assert node._front is not None and node._front.stats.commands == 1
        silent = len(heard)
        for _ in range(20):  # 2 s of silence: no command
            audio_pub.publish(AudioDataStamped(audio=AudioData(data=np.zeros(2205, "<i2").tobytes())))
            executor.spin_once(timeout_sec=0.0)
        spin_until(executor, lambda: False, 2.0)
        assert len(heard) == silent
    finally:
        node.trigger_deactivate()
        node.trigger_cleanup()
        executor.shutdown()
        node.destroy_node()
        peer.destroy_node()
