"""Spoken-command bags: commands recorded as audio, and their replay through recognition and segmentation.

The audio message is the one ROS 2 audio capture drivers publish: ``audio_common_msgs/AudioDataStamped``
(``std_msgs/Header header``, ``AudioData audio`` holding ``uint8[] data``) from ros-drivers'
audio_common (ROS 2 branch; ``audio_capture`` publishes it on ``audio_stamped`` beside
``AudioInfo`` on ``audio_info``). The definitions are registered in the rosbags type store here, as
``interfaces`` registers coupalign_ros's own, so no ROS is needed to write or read them. The
samples are raw 16-bit little-endian PCM, mono, at :data:`SPEECH_RATE` (``AudioInfo``:
``sample_format`` "S16LE", ``coding_format`` "wave").

A speech bag (``coupalign make-bag --speech``) holds, per item: the sentence spoken by espeak-ng
(voices and speeds in turn) in ``CHUNK_S`` chunks on :data:`AUDIO_TOPIC` (with the silence between
sentences, as a microphone streams), the typed sentence on
:data:`REFERENCE_TOPIC` (not the command topic: played to the live nodes, only the speech node
commands the segmentation node), then, ``FRAME_DELAY_NS`` after the speech ends, the camera frame
and its ground truth. ``coupalign bag-eval --speech`` runs the audio through voice-activity detection
and recognition as the speech node does, and replays the frames twice, commanded by the recognised
text and by the typed text: word error rate, sentence accuracy and the mask metrics of both.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

import numpy as np

from .files import STORAGES, BagError, BagWriter
from .layout import COMMAND_TOPIC, GT_TOPIC, IMAGE_TOPIC, IMAGE_TYPE, START_NS, STRING_TYPE
from .messages import command_qos, image_message, make_header
from .reader import BagReader

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

    from ..speech import Transcriber
    from .record import BagItem

AUDIO_TOPIC = "/audio/audio_stamped"
AUDIO_INFO_TOPIC = "/audio/audio_info"
REFERENCE_TOPIC = "/coupalign/command_reference"
AUDIO_DATA_TYPE = "audio_common_msgs/msg/AudioData"
AUDIO_STAMPED_TYPE = "audio_common_msgs/msg/AudioDataStamped"
AUDIO_INFO_TYPE = "audio_common_msgs/msg/AudioInfo"
AUDIO_MESSAGES: dict[str, str] = {
    AUDIO_DATA_TYPE: "uint8[] data\n",
    AUDIO_STAMPED_TYPE: "std_msgs/Header header\naudio_common_msgs/AudioData audio\n",
    AUDIO_INFO_TYPE: ("uint8 channels\nuint32 sample_rate\nstring sample_format\nuint32 bitrate\n"
                      "string coding_format\n"),
}
SPEECH_RATE = 16000
CHUNK_S = 0.1
LEAD_SILENCE_S = 0.5  # before each sentence
FRAME_DELAY_NS = 1_500_000_000  # speech end -> frame: the VAD's hangover plus recognition, with room
GAP_NS = 200_000_000  # frame -> the next sentence's audio


def register_audio_types(typestore: Typestore) -> None:
    """Add the audio_common_msgs definitions to ``typestore`` (no-op where they are)."""
    from rosbags.typesys import get_types_from_msg

    types: dict[str, Any] = {}
    for name, text in AUDIO_MESSAGES.items():
        if name not in typestore.types:
            types.update(get_types_from_msg(text, name))
    if types:
        typestore.register(types)


def pcm16_bytes(samples: np.ndarray) -> bytes:
    from ..speech.audio import to_pcm16

    return to_pcm16(samples).astype("<i2").tobytes()


def write_speech_bag(
    items: Iterable[BagItem], out: str | os.PathLike[str], *, voices: Sequence[str], speeds: Sequence[int],
    storage: str = "sqlite3", distro: str = "jazzy", encoding: str = "rgb8", image_topic: str = IMAGE_TOPIC,
    audio_topic: str = AUDIO_TOPIC, reference_topic: str = REFERENCE_TOPIC, gt_topic: str = GT_TOPIC,
    frame_id: str = "camera_color_optical_frame", overwrite: bool = False, progress: bool = True,
    total: Optional[int] = None,
) -> dict[str, Any]:
    """A speech bag of ``items`` (see the module docstring); voice and speed cycle over the items."""
    from tqdm import tqdm

    from ..runtime.conversions import mask_to_mono8, rgb_to_image_fields
    from ..speech.synthesis import synthesize
    from .interfaces import make_typestore

    if storage not in STORAGES:
        raise BagError(f"unknown bag storage {storage!r}; supported: {', '.join(STORAGES)}")
    if not voices or not speeds:
        raise ValueError("a speech bag needs at least one voice and one speed")
    typestore = make_typestore(distro)
    String, Stamped, AudioData, AudioInfo = (typestore.types[t] for t in (STRING_TYPE, AUDIO_STAMPED_TYPE,
                                                                          AUDIO_DATA_TYPE, AUDIO_INFO_TYPE))
    chunk = int(CHUNK_S * SPEECH_RATE)
    styles = list(itertools.product(voices, speeds))
    count, stamp, speech_s = 0, START_NS, 0.0
    with BagWriter(out, storage, overwrite=overwrite) as writer:
        audio_conn = writer.connection(audio_topic, AUDIO_STAMPED_TYPE, typestore)
        info_conn = writer.connection(audio_topic.rsplit("/", 1)[0] + "/audio_info", AUDIO_INFO_TYPE, typestore,
                                      qos=[command_qos()])
        ref_conn = writer.connection(reference_topic, STRING_TYPE, typestore, qos=[command_qos()])
        image_conn = writer.connection(image_topic, IMAGE_TYPE, typestore)
        gt_conn = writer.connection(gt_topic, IMAGE_TYPE, typestore)
        writer.write(info_conn, stamp, AudioInfo(channels=1, sample_rate=SPEECH_RATE, sample_format="S16LE",
                                                 bitrate=16 * SPEECH_RATE, coding_format="wave"), typestore)
        for item in tqdm(items, total=total, desc="make-bag --speech", unit="command", disable=not progress):
            voice, speed = styles[count % len(styles)]
            speech = synthesize(item.sentence, voice=voice, speed=speed)
            # the microphone streams on between commands: silence up to the next sentence
            lead = np.zeros(int(LEAD_SILENCE_S * SPEECH_RATE), np.float32)
            tail = np.zeros((FRAME_DELAY_NS + GAP_NS) * SPEECH_RATE // 10**9, np.float32)
            audio = np.concatenate([lead, speech, tail])
            audio = np.pad(audio, (0, -audio.size % chunk))
            writer.write(ref_conn, stamp, String(data=item.sentence), typestore)
            for i in range(0, audio.size, chunk):
                t = stamp + i * 10**9 // SPEECH_RATE
                message = Stamped(header=make_header(typestore, t, "microphone"),
                                  audio=AudioData(data=np.frombuffer(pcm16_bytes(audio[i:i + chunk]), np.uint8)))
                writer.write(audio_conn, t, message, typestore)
            frame_ns = stamp + (lead.size + speech.size) * 10**9 // SPEECH_RATE + FRAME_DELAY_NS
            header = make_header(typestore, frame_ns, frame_id)
            writer.write(image_conn, frame_ns,
                         image_message(typestore, rgb_to_image_fields(item.image, encoding), header), typestore)
            writer.write(gt_conn, frame_ns, image_message(typestore, mask_to_mono8(item.mask), header), typestore)
            speech_s += speech.size / SPEECH_RATE
            count += 1
            stamp += audio.size * 10**9 // SPEECH_RATE
    if count == 0:
        raise ValueError("no items to write: the bag would be empty")
    return {"bag": str(out), "commands": count, "storage": storage, "distro": distro, "speech_s": round(speech_s, 2),
            "voices": list(voices), "speeds_wpm": [int(s) for s in speeds],
            "topics": {"audio": audio_topic, "reference": reference_topic, "image": image_topic, "gt": gt_topic},
            "duration_s": round((stamp - START_NS) * 1e-9, 2)}


# ---- replay -------------------------------------------------------------------------------------
@dataclass
class HeardCommand:
    stamp_ns: int  # recording time of the audio chunk that ended the utterance
    text: str  # "" when no command
    reason: str
    confidence: float
    decode_s: float


@dataclass
class SpeechReplay:
    heard: list[HeardCommand] = field(default_factory=list)
    references: list[tuple[int, str]] = field(default_factory=list)  # (stamp, typed text)
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (typed, recognised) per reference
    scores: dict[str, Any] = field(default_factory=dict)
    speech_report: dict[str, Any] = field(default_factory=dict)
    text_report: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"speech": self.scores, "from_speech": self.speech_report, "from_text": self.text_report,
                "utterances": len(self.heard), "no_command": sum(not h.text for h in self.heard),
                "pairs": [{"typed": a, "heard": b} for a, b in self.pairs]}


def recognise_bag(reader: BagReader, transcriber: Transcriber, audio_topic: str = AUDIO_TOPIC) -> list[HeardCommand]:
    """Every utterance on ``audio_topic`` (AudioDataStamped, 16-bit mono at the AudioInfo's rate),
    found by a streaming voice-activity detector and recognised, as the speech node does it."""
    from ..speech.vad import VoiceActivityDetector

    topic = reader.topics.get(audio_topic)
    if topic is None or topic.msgtype != AUDIO_STAMPED_TYPE:
        found = f"{topic.msgtype}" if topic else "no such topic"
        raise BagError(f"bag {reader.path} has no {AUDIO_STAMPED_TYPE} topic {audio_topic!r} ({found})")
    info_topic = audio_topic.rsplit("/", 1)[0] + "/audio_info"
    rate = SPEECH_RATE
    if info_topic in reader.topics:
        for message in reader.messages([info_topic]):
            info = reader.decode(message)
            if info.channels != 1 or info.sample_format != "S16LE":
                raise BagError(f"{info_topic}: only mono S16LE audio is read, got {info.channels} channels "
                               f"{info.sample_format}")
            rate = int(info.sample_rate)
            break
    vad = VoiceActivityDetector(transcriber.options.vad, rate)
    heard: list[HeardCommand] = []

    def recognise(utterances: list[Any], stamp_ns: int) -> None:
        from ..speech.audio import resample

        for u in utterances:
            t = transcriber.recognize(resample(u.samples, rate))
            heard.append(HeardCommand(stamp_ns, t.text if t.is_command else "", t.reason, t.confidence, t.decode_s))

    last = 0
    for message in reader.messages([audio_topic]):
        stamped = reader.decode(message)
        samples = np.frombuffer(bytes(stamped.audio.data), dtype="<i2").astype(np.float32) / 32768.0
        last = message.timestamp_ns
        recognise(vad.push(samples), last)
    recognise(vad.flush(), last)
    return heard


def pair_with_references(heard: Sequence[HeardCommand], references: Sequence[tuple[int, str]]) -> list[tuple[str, str]]:
    """(typed, recognised) per reference: the commands heard between it and the next reference, joined."""
    pairs = []
    for i, (stamp, typed) in enumerate(references):
        end = references[i + 1][0] if i + 1 < len(references) else None
        texts = [h.text for h in heard if h.stamp_ns >= stamp and (end is None or h.stamp_ns < end) and h.text]
        pairs.append((typed, " ".join(texts)))
    return pairs


def _commanded_copy(reader: BagReader, out: Path, commands: Sequence[tuple[int, str]], image_topic: str,
                    gt_topic: str) -> None:
    """A bag of the input's frames and ground truth with ``commands`` on the command topic."""
    typestore = reader.typestore
    String = typestore.types[STRING_TYPE]
    with BagWriter(out, "sqlite3", what="replay bag") as writer:
        cmd_conn = writer.connection(COMMAND_TOPIC, STRING_TYPE, typestore, qos=[command_qos()])
        conns = {t: writer.connection(t, IMAGE_TYPE, typestore) for t in (image_topic, gt_topic)
                 if t in reader.topics}
        for stamp, text in commands:
            writer.write(cmd_conn, stamp, String(data=text), typestore)
        for message in reader.messages(list(conns)):
            writer.write(conns[message.topic], message.timestamp_ns, reader.decode(message), typestore)


def replay_speech_bag(
    bag: str | os.PathLike[str], segment: Any, transcriber: Transcriber, *, distro: str = "jazzy",
    audio_topic: str = AUDIO_TOPIC, reference_topic: str = REFERENCE_TOPIC, image_topic: str = IMAGE_TOPIC,
    gt_topic: str = GT_TOPIC, progress: bool = True,
) -> SpeechReplay:
    """Recognise a speech bag's audio, score the text against the typed references, and replay its
    frames commanded by each (see the module docstring)."""
    from ..speech.metrics import SpeechScores
    from .replay import replay_bag

    result = SpeechReplay()
    with BagReader(bag, distro) as reader:
        result.heard = recognise_bag(reader, transcriber, audio_topic)
        if reference_topic in reader.topics:
            result.references = [(m.timestamp_ns, str(reader.decode(m).data))
                                 for m in reader.messages([reference_topic])]
        with tempfile.TemporaryDirectory(prefix="coupalign-speech-replay-") as tmp:
            heard_commands = [(h.stamp_ns, h.text) for h in result.heard if h.text]
            _commanded_copy(reader, Path(tmp) / "speech", heard_commands, image_topic, gt_topic)
            if result.references:
                _commanded_copy(reader, Path(tmp) / "text", result.references, image_topic, gt_topic)
            result.speech_report = replay_bag(Path(tmp) / "speech", segment, distro=distro, gt_topic=gt_topic,
                                              progress=progress).to_dict()
            if result.references:
                result.text_report = replay_bag(Path(tmp) / "text", segment, distro=distro, gt_topic=gt_topic,
                                                progress=progress).to_dict()
    scores = SpeechScores()
    if result.references:
        result.pairs = pair_with_references(result.heard, result.references)
        for typed, recognised in result.pairs:
            scores.update(typed, recognised)
        result.scores = scores.summary()
    decode = [h.decode_s for h in result.heard]
    result.scores["decode_s_mean"] = round(float(np.mean(decode)), 4) if decode else 0.0
    return result
