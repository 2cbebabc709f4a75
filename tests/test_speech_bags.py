"""Speech bags without ROS: commands recorded as audio_common_msgs/AudioDataStamped, replayed through
recognition and the node's pipeline (the segmenter here records the text each frame was given)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("pocketsphinx")

from coupalign_core.bags import BagItem, BagReader, make_typestore  # noqa: E402
from coupalign_core.bags.speech import (  # noqa: E402
    AUDIO_INFO_TYPE,
    AUDIO_STAMPED_TYPE,
    AUDIO_TOPIC,
    REFERENCE_TOPIC,
    HeardCommand,
    pair_with_references,
    replay_speech_bag,
    write_speech_bag,
)
from coupalign_core.inference import SegmentationResult  # noqa: E402
from coupalign_core.speech import Transcriber  # noqa: E402
from coupalign_core.speech.synthesis import espeak_available  # noqa: E402

SENTENCES = ("the leftmost red box", "the small blue star above the green square",
             "grab the third yellow circle from the top")


class TextRecorder:
    def __init__(self):
        self.texts: list[str] = []

    def __call__(self, image: np.ndarray, text: str) -> SegmentationResult:
        self.texts.append(text)
        mask = image[:, :, 0] > 200
        return SegmentationResult(mask, 0.9, bool(mask.any()), None)


def items() -> list[BagItem]:
    out = []
    for i, sentence in enumerate(SENTENCES):
        image = np.zeros((16, 20, 3), np.uint8)
        image[2:8, 2 + i:8 + i] = (255, 0, 0)
        out.append(BagItem(image, sentence, image[:, :, 0] > 200))
    return out


@pytest.mark.parametrize("distro", ["humble", "jazzy"])
def test_the_audio_messages_load_into_the_rosbags_typestore(distro):
    store = make_typestore(distro)
    msg = store.types[AUDIO_STAMPED_TYPE]
    assert [name for name, _ in msg.__dataclass_fields__.items()][:2] == ["header", "audio"]
    assert {"channels", "sample_rate", "sample_format"} <= set(store.types[AUDIO_INFO_TYPE].__dataclass_fields__)


def test_commands_are_paired_with_the_reference_they_follow():
    heard = [HeardCommand(15, "a", "", 1.0, 0.0), HeardCommand(25, "b", "", 1.0, 0.0), HeardCommand(27, "", "x", 0, 0)]
    assert pair_with_references(heard, [(10, "A"), (20, "B"), (30, "C")]) == [("A", "a"), ("B", "b"), ("C", "")]


@pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/setup.sh)")
def test_a_speech_bag_is_recognised_and_commands_the_frames(tmp_path):
    bag = tmp_path / "speech"
    summary = write_speech_bag(items(), bag, voices=["en-us"], speeds=[160], storage="mcap", progress=False)
    assert summary["commands"] == 3
    with BagReader(bag) as reader:
        assert reader.topics[AUDIO_TOPIC].msgtype == AUDIO_STAMPED_TYPE
        assert reader.topics[REFERENCE_TOPIC].count == 3
        assert "/coupalign/command" not in reader.topics  # only the speech node commands a live replay
    segmenter = TextRecorder()
    result = replay_speech_bag(bag, segmenter, Transcriber(), progress=False)
    assert [h.text for h in result.heard] == list(SENTENCES)
    assert result.scores["wer"] == 0.0 and result.scores["sentence_accuracy"] == 100.0
    assert list(dict.fromkeys(segmenter.texts)) == list(SENTENCES)  # each frame its own command (warm-up repeats one)
    assert result.speech_report["processed"] == 3 and result.speech_report["oIoU"] == pytest.approx(100.0)
    assert result.text_report["oIoU"] == pytest.approx(100.0)
