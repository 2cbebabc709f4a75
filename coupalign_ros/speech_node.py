"""The coupalign_speech ROS 2 node: spoken commands to the command topic, offline (a thin rclpy
LifecycleNode around ``coupalign_core.speech.SpeechFrontEnd``).

    ros2 run coupalign_ros coupalign_speech        # audio from /audio/audio_stamped
    ros2 run coupalign_ros coupalign_speech --ros-args -p microphone:=default
    (or both nodes: ros2 launch coupalign_ros speech.launch.py checkpoint:=/path/model.safetensors)

Lifecycle: configure builds the recogniser (grammar compiled, words the dictionary lacks vetoed;
with ``checkpoint`` set, also the words that model cannot ground) and the ROS interfaces;
activate starts recognition (and the microphone); deactivate stops it; cleanup and shutdown drop
everything. /diagnostics reports utterances, commands, rejects by kind and latency.

Interfaces (docs/speech.md):
  subscribes  audio_topic: audio_common_msgs/AudioDataStamped (``audio_message:=stamped``, what
              ros-drivers' audio_capture publishes on audio_stamped) or AudioData (``data``),
              raw 16-bit little-endian mono PCM; audio_info_topic (audio_common_msgs/AudioInfo,
              transient local) gives the rate and format, else ``sample_rate`` is assumed.
              With ``microphone`` set (a sounddevice input name or "default"), a local
              microphone instead of the topic.
  publishes   command_topic (std_msgs/String), reliable + volatile by default, keep last 10: the
              segmentation node's volatile subscription matches it (``command_durability:=
              transient_local`` latches the last command for late joiners; it matches too);
              ~/transcript (std_msgs/String): every recognition as JSON, rejects included
"""

from __future__ import annotations

import json
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from diagnostic_updater import DiagnosticStatusWrapper, Updater
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.event_handler import PublisherEventCallbacks
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import String

from coupalign_core.speech import RecognizerOptions, Transcriber, Transcript
from coupalign_core.speech.frontend import SpeechFrontEnd
from coupalign_core.speech.vad import VadOptions

from .spin import spin_node


@dataclass(frozen=True)
class SpeechParam:
    name: str
    default: Any
    description: str


PARAMETERS: tuple[SpeechParam, ...] = (
    SpeechParam("audio_topic", "/audio/audio_stamped", "audio input topic"),
    SpeechParam("audio_message", "stamped", "stamped (audio_common_msgs/AudioDataStamped) or data (AudioData)"),
    SpeechParam("audio_info_topic", "/audio/audio_info", "audio_common_msgs/AudioInfo ('' = none)"),
    SpeechParam("audio_reliability", "reliable", "QoS reliability of the audio subscription (reliable or best_effort)"),
    SpeechParam("sample_rate", 16000, "Hz of the audio when no AudioInfo says otherwise"),
    SpeechParam("microphone", "", "sounddevice input ('default' or a device name); '' = the audio topic"),
    SpeechParam("command_topic", "/coupalign/command", "where recognised commands are published"),
    SpeechParam("command_durability", "volatile", "volatile or transient_local (latches the last command)"),
    SpeechParam("mode", "grammar", "grammar (the worlds' sentences) or free (general language model)"),
    SpeechParam("worlds", "", "comma-separated worlds the grammar covers ('' = every registered one)"),
    SpeechParam("checkpoint", "", "model whose grounding vocabulary vetoes grammar words ('' = none)"),
    SpeechParam("min_confidence", 0.0, "mean word confidence below which a result is no command"),
    SpeechParam("vad_threshold_db", 12.0, "speech is this far above the noise floor"),
    SpeechParam("vad_hangover_s", 0.5, "quiet time that ends an utterance"),
)
DEFAULTS = {p.name: p.default for p in PARAMETERS}


def command_publisher_qos(durability: str) -> QoSProfile:
    """Reliable, keep last 10: what the segmentation node's command subscriptions accept."""
    if durability not in ("volatile", "transient_local"):
        raise ValueError(f"command_durability must be volatile or transient_local, got {durability!r}")
    policy = DurabilityPolicy.TRANSIENT_LOCAL if durability == "transient_local" else DurabilityPolicy.VOLATILE
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE,
                      durability=policy)


def pcm16_to_float(data: Any, channels: int = 1) -> np.ndarray:
    """uint8[] of S16LE PCM -> (N,) float32 mono (channels averaged)."""
    raw = bytes(data)
    x = np.frombuffer(raw[: len(raw) - len(raw) % (2 * channels)], dtype="<i2").astype(np.float32) / 32768.0
    return x.reshape(-1, channels).mean(axis=1) if channels > 1 else x


class CoupAlignSpeechNode(LifecycleNode):
    """Publishes each recognised spoken command on the command topic."""

    def __init__(self, node_name: str = "coupalign_speech", **kwargs: Any):
        super().__init__(node_name, **kwargs)
        for p in PARAMETERS:
            self.declare_parameter(p.name, p.default, ParameterDescriptor(description=p.description))
        self._front: Optional[SpeechFrontEnd] = None
        self._transcriber: Optional[Transcriber] = None
        self._subs: list[Any] = []
        self._pubs: dict[str, Any] = {}
        self._channels = 1
        self._microphone: Any = None
        self._lifecycle = "unconfigured"
        self._error = ""
        self._active = False
        self._lock = threading.Lock()
        self._diagnostics = Updater(self)
        self._diagnostics.setHardwareID("none")
        self._diagnostics.add("coupalign_speech", self._diagnose)

    def _values(self) -> dict[str, Any]:
        return {p.name: self.get_parameter(p.name).value for p in PARAMETERS}

    # ---- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        values = self._values()
        try:
            if values["audio_message"] not in ("stamped", "data"):
                raise ValueError(f"audio_message must be stamped or data, got {values['audio_message']!r}")
            if int(values["sample_rate"]) < 1000:
                raise ValueError(f"sample_rate must be >= 1000 Hz, got {values['sample_rate']}")
            qos = command_publisher_qos(values["command_durability"])
            self._transcriber = self._build_transcriber(values)
            if not values["microphone"]:
                self._subscribe_audio(values)
        except (ValueError, OSError, RuntimeError, ImportError) as e:
            self._error = str(e)
            self.get_logger().error(f"configure failed: {e}")
            self._destroy_interfaces()
            return TransitionCallbackReturn.FAILURE
        self._error = ""
        self._front = SpeechFrontEnd(self._transcriber, self._publish_command, rate=int(values["sample_rate"]),
                                     on_reject=self._report)
        # The segmentation node also subscribes transient-local (for latched commands), which a volatile
        # publisher cannot serve by design; its volatile subscription receives the commands, so that
        # event is only logged at debug level.
        self._pubs["command"] = self.create_lifecycle_publisher(
            String, values["command_topic"], qos,
            event_callbacks=PublisherEventCallbacks(incompatible_qos=self._on_incompatible_command_subscription))
        self._pubs["transcript"] = self.create_lifecycle_publisher(String, "~/transcript", 10)
        vetoed = sorted(self._transcriber.vetoed)
        self.get_logger().info(
            f"configured: {values['mode']} recognition; audio from "
            f"{'microphone ' + values['microphone'] if values['microphone'] else values['audio_topic']}; "
            f"commands to {values['command_topic']} (reliable, {values['command_durability']})"
            + (f"; words the grammar cannot use: {', '.join(vetoed)}" if vetoed else ""))
        self._lifecycle = "inactive"
        return TransitionCallbackReturn.SUCCESS

    def _on_incompatible_command_subscription(self, info: Any) -> None:
        self.get_logger().debug("a command subscription asks for transient-local durability, which this volatile "
                                "publisher cannot serve; subscriptions with volatile durability receive the commands")

    def _build_transcriber(self, values: dict[str, Any]) -> Transcriber:
        options = RecognizerOptions(
            mode=values["mode"], worlds=tuple(w.strip() for w in values["worlds"].split(",") if w.strip()),
            min_confidence=float(values["min_confidence"]),
            vad=VadOptions(threshold_db=float(values["vad_threshold_db"]), hangover_s=float(values["vad_hangover_s"])))
        vocabulary = None
        if values["checkpoint"] and values["mode"] == "grammar":
            from coupalign_core.checkpoint import read_checkpoint
            from coupalign_core.inference.grounding_vocabulary import vocabulary_from_checkpoint

            stored = vocabulary_from_checkpoint(read_checkpoint(values["checkpoint"]))
            vocabulary = stored.words if stored is not None else None
        return Transcriber(options, vocabulary=vocabulary)

    def _subscribe_audio(self, values: dict[str, Any]) -> None:
        try:
            from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
        except ImportError:
            raise ImportError("audio_common_msgs is not installed: build ros-drivers/audio_common (ros2 branch) "
                              "in the workspace or install its package (docs/speech.md), or set microphone:=default"
                              ) from None

        reliability = (ReliabilityPolicy.BEST_EFFORT if values["audio_reliability"] == "best_effort"
                       else ReliabilityPolicy.RELIABLE)
        audio_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=reliability)
        if values["audio_message"] == "stamped":
            self._subs.append(self.create_subscription(AudioDataStamped, values["audio_topic"],
                                                       lambda m: self._on_audio(m.audio.data), audio_qos))
        else:
            self._subs.append(self.create_subscription(AudioData, values["audio_topic"],
                                                       lambda m: self._on_audio(m.data), audio_qos))
        if values["audio_info_topic"]:
            latched = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self._subs.append(self.create_subscription(AudioInfo, values["audio_info_topic"], self._on_info, latched))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._front is None:
            return TransitionCallbackReturn.FAILURE
        self._front.start()
        microphone = self.get_parameter("microphone").value
        if microphone:
            try:
                self._open_microphone(microphone)
            except Exception as e:  # sounddevice/PortAudio errors have no common base class
                self._error = f"microphone {microphone!r}: {e}"
                self.get_logger().error(f"activate failed: {self._error}")
                self._front.stop()
                return TransitionCallbackReturn.FAILURE
        self._active = True
        self._lifecycle = "active"
        self.get_logger().info("active: listening")
        return super().on_activate(state)

    def _open_microphone(self, device: str) -> None:
        import sounddevice

        rate = int(self.get_parameter("sample_rate").value)
        front = self._front
        assert front is not None
        front.set_rate(rate)

        def callback(indata: np.ndarray, frames: int, when: Any, status: Any) -> None:
            front.push(indata.mean(axis=1) if indata.ndim == 2 else indata)

        self._microphone = sounddevice.InputStream(samplerate=rate, channels=1, dtype="float32",
                                                   device=None if device == "default" else device, callback=callback)
        self._microphone.start()

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self._lifecycle = "inactive"
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self._destroy_interfaces()
        self._lifecycle = "unconfigured"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop()
        self._destroy_interfaces()
        self._lifecycle = "finalized"
        return super().on_shutdown(state)

    def _stop(self) -> None:
        self._active = False
        if self._microphone is not None:
            self._microphone.stop()
            self._microphone.close()
            self._microphone = None
        if self._front is not None:
            self._front.stop()

    def _destroy_interfaces(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        for pub in self._pubs.values():
            self.destroy_publisher(pub)
        self._subs, self._pubs = [], {}
        self._front, self._transcriber = None, None

    # ---- data -------------------------------------------------------------------------------
    def _on_info(self, msg: Any) -> None:
        if msg.sample_format and msg.sample_format != "S16LE":
            self.get_logger().error(f"audio format {msg.sample_format!r} is not supported (S16LE only)")
            return
        if msg.coding_format and msg.coding_format.lower() not in ("wave", "wav", "raw", "pcm"):
            self.get_logger().error(f"audio coding {msg.coding_format!r} is not supported (raw PCM: wave)")
            return
        self._channels = max(1, int(msg.channels))
        if self._front is not None and int(msg.sample_rate) > 0:
            self._front.set_rate(int(msg.sample_rate))

    def _on_audio(self, data: Any) -> None:
        if self._active and self._front is not None:
            self._front.push(pcm16_to_float(data, self._channels))

    def _publish_command(self, text: str, transcript: Transcript) -> None:
        publisher = self._pubs.get("command")
        if publisher is not None:
            publisher.publish(String(data=text))
            self.get_logger().info(f"command: {text!r} (confidence {transcript.confidence:.2f})")
        self._report(transcript)

    def _report(self, transcript: Transcript) -> None:
        publisher = self._pubs.get("transcript")
        if publisher is not None:
            publisher.publish(String(data=json.dumps({**transcript.to_dict(), "stamp": time.time()})))

    # ---- diagnostics ------------------------------------------------------------------------
    def _diagnose(self, stat: DiagnosticStatusWrapper) -> DiagnosticStatusWrapper:
        stat.add("state", self._lifecycle)
        front = self._front
        if front is None:
            level = DiagnosticStatus.ERROR if self._error else DiagnosticStatus.OK
            stat.summary(level, f"not configured: {self._error}" if self._error else self._lifecycle)
            return stat
        snap = front.stats.snapshot()
        stat.add("sample_rate", str(front.rate))
        stat.add("utterances", str(snap["utterances"]))
        stat.add("commands", str(snap["commands"]))
        rejects = snap["rejects"]
        assert isinstance(rejects, dict)
        stat.add("rejects", str(sum(rejects.values())))
        for kind, count in sorted(rejects.items()):
            stat.add(f"rejected_{kind}", str(count))
        stat.add("dropped_utterances", str(snap["dropped"]))
        stat.add("latency_ms_p50", f"{snap['latency_ms_p50']:.0f}")
        stat.add("latency_ms_p90", f"{snap['latency_ms_p90']:.0f}")
        stat.add("last_command", str(snap["last_command"]))
        if self._error:
            stat.summary(DiagnosticStatus.ERROR, self._error)
        elif snap["dropped"]:
            stat.summary(DiagnosticStatus.WARN, f"{snap['dropped']} utterances dropped: recognition falls behind")
        else:
            stat.summary(DiagnosticStatus.OK, f"{self._lifecycle}, {snap['commands']} commands")
        return stat


def main(args: Optional[list[str]] = None) -> int:
    return spin_node(CoupAlignSpeechNode, lambda node: node._stop(), num_threads=2, args=args)


if __name__ == "__main__":
    sys.exit(main())
