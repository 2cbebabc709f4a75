"""The node's ROS-free pipeline: newest-frame-wins, timed commands, stale frames, bad inputs, stats.

The Segmenter is injected: here a deterministic one whose latency the test controls (the brightness
threshold below), so ordering and dropping under a producer faster than inference can be asserted.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref

import numpy as np
import pytest

from coupalign_core.inference import SegmentationResult
from coupalign_core.runtime.pipeline import CommandBook, Frame, FrameSlot, PendingFrame, Pipeline, ThrottledLog


class BrightSegmenter:
    """Mask = bright pixels; score = their share; found at ``threshold`` (settable, like the
    Segmenter's). Sleeps ``delay_s`` to play a slow model."""

    def __init__(self, delay_s: float = 0.0, threshold: float = 0.5):
        self.delay_s = delay_s
        self.threshold = threshold
        self.calls: list[tuple[int, str]] = []  # (first pixel value = frame number, text)

    def __call__(self, image: np.ndarray, text: str) -> SegmentationResult:
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected (H,W,3), got {image.shape}")
        if text == "explode":
            raise RuntimeError("CUDA out of memory")
        time.sleep(self.delay_s)
        self.calls.append((int(image[0, 0, 1]), text))
        mask = image[:, :, 0] > 127
        ys, xs = np.nonzero(mask)
        bbox = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1) if xs.size else None
        score = float(mask.mean())
        found = score >= self.threshold and bool(mask.any())
        return SegmentationResult(mask, score, found, bbox, {"inference": self.delay_s * 1e3})


def frame(number: int, stamp_ns: int | None = None, size: int = 8) -> Frame:
    image = np.zeros((size, size, 3), np.uint8)
    image[:, :, 1] = number % 256
    image[2:5, 1:4, 0] = 255  # the bright square: x 1..3, y 2..4
    return Frame(image, stamp_ns if stamp_ns is not None else number, f"cam{number}")


def test_newest_frame_wins_in_order_with_bounded_memory():
    seg = BrightSegmenter(delay_s=0.02)
    outputs = []
    pipe = Pipeline(seg, on_result=outputs.append)
    pipe.set_command("the bright square", arrival_ns=0)
    alive: list[weakref.ref] = []
    peak_alive = 0
    pipe.start()
    try:
        for n in range(1, 301):  # ~1 ms apart: 20x faster than the model
            f = frame(n)
            alive.append(weakref.ref(f.image))
            pipe.submit(f)
            del f
            if n % 25 == 0:
                gc.collect()
                peak_alive = max(peak_alive, sum(r() is not None for r in alive))
            time.sleep(0.001)
        deadline = time.monotonic() + 5
        while (not outputs or outputs[-1].frame.stamp_ns != 300) and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        pipe.stop()
    stats = pipe.stats.snapshot()
    stamps = [o.frame.stamp_ns for o in outputs]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps), "results out of order"
    assert stamps[-1] == 300, "the newest frame must be processed last"
    assert stats["received"] == 300
    assert stats["processed"] + stats["dropped"]["superseded"] == 300
    assert 5 <= stats["processed"] < 150
    # the slot, the frame being segmented and the outputs list: no backlog of frames
    assert peak_alive <= len(outputs) + 3
    gc.collect()
    assert sum(r() is not None for r in alive) == len(outputs)


def test_command_applies_to_frames_stamped_after_arrival_or_immediately():
    seg = BrightSegmenter()
    pipe = Pipeline(seg)
    assert pipe.process(frame(1, stamp_ns=50)) is None  # no command yet
    pipe.set_command("first", arrival_ns=100)
    assert pipe.process(frame(2, stamp_ns=99)) is None  # stamped before the command arrived
    assert pipe.process(frame(3, stamp_ns=100)).command.text == "first"
    pipe.set_command("  second  ", arrival_ns=200)
    late = pipe.process(frame(4, stamp_ns=180))  # taken before "second" arrived
    assert (late.command.text, late.command.command_id) == ("first", 1)
    assert pipe.process(frame(5, stamp_ns=250)).command.text == "second"  # stripped
    pipe.set_command("third", arrival_ns=10_000, immediate=True)
    assert pipe.process(frame(6, stamp_ns=260)).command.command_id == 3
    assert pipe.stats.snapshot()["dropped"] == {"no_command": 2}


def test_stale_frames_are_dropped_and_counted():
    now = [10_000_000_000]
    pipe = Pipeline(BrightSegmenter(), clock_ns=lambda: now[0], max_frame_age_s=1.0)
    pipe.set_command("x", arrival_ns=0)
    assert pipe.process(frame(1, stamp_ns=8_000_000_000)) is None
    assert pipe.process(frame(2, stamp_ns=9_500_000_000)) is not None
    pipe.update_limits(max_frame_age_s=0.0)  # 0 keeps every frame
    assert pipe.process(frame(3, stamp_ns=1)) is not None
    assert pipe.stats.snapshot()["dropped"] == {"stale": 1}


@pytest.mark.parametrize(
    "text, reason",
    [("", "empty command"), ("   \n\t", "empty command"), ("x" * 501, "501 characters long; the limit is 500"),
     (None, "must be a str, got NoneType"), (b"bytes", "must be a str, got bytes")],
)
def test_bad_commands_are_rejected_with_a_reason(text, reason, caplog):
    pipe = Pipeline(BrightSegmenter())
    with caplog.at_level(logging.WARNING, logger="coupalign_core.runtime.pipeline"):
        assert pipe.set_command(text, arrival_ns=0) is None
    assert pipe.stats.snapshot()["rejected"] == {"command": 1}
    assert reason in caplog.text
    assert pipe.commands.latest is None
    ok = pipe.set_command("日本語 ✓ \x07 emoji 🦾", arrival_ns=0)  # any Unicode is a command
    assert ok is not None and ok.command_id == 1


def test_segmenter_failures_are_counted_and_the_worker_keeps_serving():
    seg = BrightSegmenter()
    outputs = []
    pipe = Pipeline(seg, on_result=outputs.append)
    pipe.set_command("explode", arrival_ns=0)
    bad = frame(1)
    bad.image = bad.image[:, :, 0]  # wrong shape: the Segmenter raises ValueError
    pipe.start()
    try:
        pipe.submit(bad)
        time.sleep(0.2)
        pipe.submit(frame(2))  # "explode": RuntimeError inside the model
        time.sleep(0.2)
        pipe.set_command("fine", arrival_ns=0)
        pipe.submit(frame(3))
        deadline = time.monotonic() + 5
        while not outputs and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pipe.running
    finally:
        pipe.stop()
    stats = pipe.stats.snapshot()
    assert [o.frame.stamp_ns for o in outputs] == [3]
    assert stats["rejected"] == {"segmenter_input": 1} and stats["errors"] == 1
    assert not pipe.running


def test_on_result_failure_does_not_stop_the_worker():
    calls = []

    def publish(output):
        calls.append(output.frame.stamp_ns)
        if len(calls) == 1:
            raise RuntimeError("publisher gone")

    pipe = Pipeline(BrightSegmenter(), on_result=publish)
    pipe.set_command("x", arrival_ns=0)
    pipe.start()
    try:
        for n in (1, 2):
            pipe.submit(frame(n))
            deadline = time.monotonic() + 5
            while len(calls) < n and time.monotonic() < deadline:
                time.sleep(0.01)
    finally:
        pipe.stop()
    assert calls == [1, 2] and pipe.stats.snapshot()["errors"] == 1


def test_max_rate_limits_segmentations():
    seg = BrightSegmenter()
    pipe = Pipeline(seg, max_rate_hz=20.0)
    pipe.set_command("x", arrival_ns=0)
    pipe.start()
    t0 = time.monotonic()
    n = 0
    try:
        while time.monotonic() - t0 < 0.5:
            n += 1
            pipe.submit(frame(n))
            time.sleep(0.002)
    finally:
        pipe.stop()
    processed = pipe.stats.snapshot()["processed"]
    assert 3 <= processed <= 12, processed  # 20 Hz for 0.5 s: about 10


def test_message_fields_and_runtime_threshold():
    seg = BrightSegmenter()
    pipe = Pipeline(seg)
    pipe.set_command("square", arrival_ns=0)
    out = pipe.process(frame(7))
    fields = out.message_fields()
    assert fields["command"] == "square" and fields["command_id"] == 1
    assert fields["bbox"] == (1, 2, 3, 3)  # x, y, width, height
    assert fields["score"] == pytest.approx(9 / 64) and fields["found"] is False
    mask = np.frombuffer(fields["mask"].data, np.uint8).reshape(8, 8)
    assert mask.sum() == 9 * 255 and fields["mask"].encoding == "mono8"
    pipe.set_threshold(0.1)  # the node's threshold parameter, changed at runtime: set on the segmenter
    assert seg.threshold == 0.1
    assert pipe.process(frame(8)).message_fields()["found"] is True
    empty = frame(9)
    empty.image[:, :, 0] = 0
    assert pipe.process(empty).message_fields()["bbox"] == (0, 0, 0, 0)


def test_stats_rate_and_latency_percentiles():
    from coupalign_core.runtime.pipeline import PipelineStats

    stats = PipelineStats(rate_window_s=10.0)
    for i in range(11):
        stats.count_processed(latency_ms=float(i), now=100.0 + 0.1 * i)  # 10 Hz
    snap = stats.snapshot(now=101.0)
    assert snap["rate_hz"] == pytest.approx(10.0)
    assert snap["latency_ms_p50"] == pytest.approx(5.0) and snap["latency_ms_max"] == 10.0
    assert stats.snapshot(now=200.0)["rate_hz"] == 0.0  # nothing in the window any more


def test_throttled_log_holds_back_repeats_and_reports_how_many():
    emitted = []
    now = [0.0]
    log = ThrottledLog(lambda level, msg: emitted.append(msg), period_s=5.0, clock=lambda: now[0])
    for _ in range(10):
        log("bad", logging.WARNING, "bad image")
    log("other", logging.WARNING, "other problem")
    now[0] = 6.0
    log("bad", logging.WARNING, "bad image")
    assert emitted == ["bad image", "other problem", "bad image (9 more like this in the last 5 s)"]


def test_frame_slot_take_waits_and_wakes():
    slot = FrameSlot()
    assert slot.take(timeout=0.01) is None
    threading.Timer(0.05, lambda: slot.put(frame(1))).start()
    got = slot.take(timeout=2.0)
    assert got is not None and got.stamp_ns == 1
    assert slot.put(frame(2)) is None and slot.put(frame(3)).stamp_ns == 2


def test_command_book_keeps_a_bounded_history():
    book = CommandBook(history=4)
    for i in range(10):
        book.set(f"c{i}", arrival_ns=i * 10)
    assert book.for_stamp(95).text == "c9" and book.for_stamp(65).text == "c6"
    assert book.for_stamp(55) is None  # older commands fell out of the history



def test_one_message_delivered_twice_is_one_command():
    """The node subscribes to the command topic twice (volatile and transient local); a latched
    publisher's message arrives on both with the same source key and counts once."""
    book = CommandBook()
    first = book.set("the cup", arrival_ns=10, source_key=(111, None, "the cup"))
    assert first is not None and first.command_id == 1
    assert book.set("the cup", arrival_ns=12, source_key=(111, None, "the cup")) is None  # the other subscription
    again = book.set("the cup", arrival_ns=20, source_key=(222, None, "the cup"))  # sent again: a new command
    assert again is not None and again.command_id == 2
    assert book.set("the cup", arrival_ns=30).command_id == 3  # no key: never de-duplicated
    assert book.set("the cup", arrival_ns=31).command_id == 4
    with pytest.raises(ValueError, match="empty"):
        book.set("  ", arrival_ns=40, source_key=(333, None, "  "))
    assert book.set("the box", arrival_ns=41, source_key=(333, None, "the box")).command_id == 5
    for i in range(200):  # the memory of keys is bounded; the newest are kept
        book.set(f"c{i}", arrival_ns=50 + i, source_key=(1000 + i, None, f"c{i}"))
    assert len(book._seen) <= book._seen_limit
    assert book.set("c199", arrival_ns=300, source_key=(1199, None, "c199")) is None
    book.clear()
    assert book.set("c199", arrival_ns=301, source_key=(1199, None, "c199")) is not None

    pipe = Pipeline(BrightSegmenter())
    assert pipe.set_command("square", arrival_ns=0, source_key=(5, 1, "square")).command_id == 1
    assert pipe.set_command("square", arrival_ns=1, source_key=(5, 1, "square")) is None
    assert pipe.stats.snapshot()["rejected"] == {}  # a duplicate is not a rejected command


class CountingConverter:
    """Stands in for a camera message: converting it is counted, and a broken one raises."""

    def __init__(self, number: int, broken: bool = False):
        self.number, self.broken, self.calls = number, broken, 0

    def __call__(self) -> np.ndarray:
        self.calls += 1
        if self.broken:
            raise ValueError("data size 3 does not match step*height")
        return frame(self.number).image


def test_pending_frames_are_converted_only_when_processed():
    seg = BrightSegmenter(delay_s=0.05)
    outputs = []
    pipe = Pipeline(seg, on_result=outputs.append)
    converters = [CountingConverter(n) for n in range(40)]
    # no command yet: dropped without being converted
    assert pipe.process(PendingFrame(converters[0], 0)) is None and converters[0].calls == 0
    pipe.set_command("the bright square", arrival_ns=0)
    pipe.start()
    try:
        for n, convert in enumerate(converters[1:], start=1):
            pipe.submit(PendingFrame(convert, n, f"cam{n}", header=("header", n)))
            time.sleep(0.005)
        deadline = time.monotonic() + 10
        while pipe.stats.snapshot()["processed"] + pipe.stats.snapshot()["dropped"].get("superseded", 0) < 39:
            assert time.monotonic() < deadline, pipe.stats.snapshot()
            time.sleep(0.01)
    finally:
        pipe.stop()
    converted = sum(c.calls for c in converters)
    stats = pipe.stats.snapshot()
    assert converted == stats["processed"] == len(outputs) < 39  # superseded frames never converted
    assert all(c.calls <= 1 for c in converters)
    for out in outputs:  # the output carries the converted pixels and the message's header
        assert isinstance(out.frame, Frame) and out.frame.header == ("header", out.frame.stamp_ns)
        assert int(out.frame.image[0, 0, 1]) == out.frame.stamp_ns

    # a malformed message is rejected when the worker converts it; the next frame is processed
    broken = CountingConverter(50, broken=True)
    assert pipe.process(PendingFrame(broken, 50)) is None and broken.calls == 1
    assert pipe.stats.snapshot()["rejected"] == {"image": 1}
    assert pipe.process(PendingFrame(CountingConverter(51), 51)) is not None
    # the service converts a pending frame too, and names a broken one
    assert pipe.segment_once(PendingFrame(CountingConverter(52), 52), "square").result.mask.sum() == 9
    with pytest.raises(ValueError, match="does not match"):
        pipe.segment_once(PendingFrame(CountingConverter(53, broken=True), 53), "square")
    assert pipe.stats.snapshot()["rejected"] == {"image": 1, "service": 1}


# ---- one owner of found; the node's small API --------------------------------------------------------
def test_the_segmenter_alone_decides_found_for_worker_and_service():
    """The threshold lives on the segmenter: changing it there changes what process() and
    segment_once() report, and the pipeline has no threshold of its own to drift from it."""
    seg = BrightSegmenter(threshold=0.5)
    pipe = Pipeline(seg)
    pipe.set_command("square", arrival_ns=0)
    assert not pipe.process(frame(1)).found and not pipe.segment_once(frame(2), "square").found
    seg.threshold = 0.1  # 9 bright pixels of 64: score 0.14
    assert pipe.process(frame(3)).found and pipe.segment_once(frame(4), "square").found
    out = pipe.process(frame(5))
    with pytest.raises(AttributeError):
        out.found = False  # read from the result, not stored beside it
    assert out.message_fields()["found"] is out.result.found is True
    with pytest.raises(TypeError, match="threshold"):
        Pipeline(seg, threshold=0.3)  # type: ignore[call-arg]  # the Segmenter alone decides found
    assert not hasattr(pipe, "threshold")


def test_set_threshold_goes_to_the_segmenter_or_fails_clearly():
    def plain(image, text):
        return SegmentationResult(np.zeros(image.shape[:2], bool), 0.0, False, None)

    with pytest.raises(TypeError, match="has no adjustable threshold"):
        Pipeline(plain).set_threshold(0.2)
    with pytest.raises(RuntimeError, match="no model loaded"):
        Pipeline(None).set_threshold(0.2)
    seg = BrightSegmenter()
    Pipeline(seg).set_threshold(0.7)
    assert seg.threshold == 0.7  # (the real Segmenter's checks: tests/test_inference.py)


def test_update_limits_checks_every_value_before_changing_any():
    pipe = Pipeline(BrightSegmenter(), max_rate_hz=5.0, max_frame_age_s=2.0)
    for bad in ({"max_rate_hz": -1.0}, {"max_frame_age_s": float("nan")}, {"max_rate_hz": float("inf")},
                {"max_rate_hz": 1.0, "max_command_chars": 0}, {"max_command_chars": 2.5}):
        with pytest.raises(ValueError, match=next(iter(bad)) if "max_command_chars" not in bad else "max_command"):
            pipe.update_limits(**bad)
        assert (pipe.max_rate_hz, pipe.max_frame_age_s, pipe.commands.max_chars) == (5.0, 2.0, 500)
    pipe.update_limits(max_rate_hz=10.0, max_command_chars=4)
    assert (pipe.max_rate_hz, pipe.max_frame_age_s, pipe.commands.max_chars) == (10.0, 2.0, 4)
    assert pipe.set_command("too long", arrival_ns=0) is None
    with pytest.raises(AttributeError):
        pipe.max_rate_hz = 1.0  # only through update_limits
    with pytest.raises(ValueError, match="max_rate_hz"):
        Pipeline(BrightSegmenter(), max_rate_hz=-5.0)


def test_set_segmenter_swaps_the_model_after_the_call_in_progress():
    slow = BrightSegmenter(delay_s=0.3)
    pipe = Pipeline(slow)
    pipe.set_command("x", arrival_ns=0)
    worker = threading.Thread(target=pipe.process, args=(frame(1),))
    worker.start()
    time.sleep(0.05)  # the slow call is under way
    t0 = time.monotonic()
    pipe.set_segmenter(None)
    assert time.monotonic() - t0 > 0.15, "set_segmenter must wait for the call in progress"
    worker.join()
    assert pipe.segment is None and slow.calls == [(1, "x")]
    assert pipe.process(frame(2)) is None and pipe.stats.snapshot()["errors"] == 1  # no model: counted
    fast = BrightSegmenter()
    pipe.set_segmenter(fast)
    assert pipe.process(frame(3)) is not None and fast.calls == [(3, "x")]


def test_segment_once_validates_counts_and_uses_no_command_book():
    pipe = Pipeline(BrightSegmenter())
    out = pipe.segment_once(frame(7, stamp_ns=1234), "  the square  ")
    assert (out.command.text, out.command.command_id, out.command.arrival_ns) == ("the square", 0, 1234)
    assert out.result.mask.sum() == 9 and pipe.commands.latest is None
    with pytest.raises(ValueError, match="empty command"):
        pipe.segment_once(frame(8), "   ")
    bad = frame(9)
    bad.image = bad.image[:, :, 0]
    with pytest.raises(ValueError, match="expected"):
        pipe.segment_once(bad, "square")
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        pipe.segment_once(frame(10), "explode")
    stats = pipe.stats.snapshot()
    assert stats["rejected"] == {"service": 2} and stats["errors"] == 1 and stats["processed"] == 0
    with pytest.raises(RuntimeError, match="no model loaded"):
        Pipeline(None).segment_once(frame(11), "square")


# ---- the Segmenter's part of the frame path ------------------------------------------------------------
class CountingTokenizer:
    """Wraps a TextTokenizer and counts the sentences it encodes."""

    def __init__(self, inner):
        self.inner, self.sentences = inner, []

    def __call__(self, texts, max_tokens):
        self.sentences.extend([texts] if isinstance(texts, str) else list(texts))
        return self.inner(texts, max_tokens)


def test_the_command_is_tokenised_once_not_every_frame():
    import torch

    from coupalign_core.inference import Segmenter
    from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

    torch.manual_seed(0)
    model = CoupAlign(CoupAlignConfig.preset("tiny")).eval()
    plain = build_tokenizer(model.config)
    seg = Segmenter(model, CountingTokenizer(plain), backend="torch", device="cpu", threshold=0.0)
    image = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    first = seg(image, "the red cup")
    for _ in range(3):
        again = seg(image, "the red cup")
        np.testing.assert_array_equal(again.mask, first.mask)
    assert seg.tokenizer.sentences == ["the red cup"]
    pixels, ids, attention = seg.preprocess([image, image], ["the red cup", "a new sentence"])
    expected_ids, expected_attention = plain(["the red cup", "a new sentence"], seg.max_tokens)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_array_equal(attention, expected_attention)
    ids[:] = 0  # the caller's arrays are its own: the cache is not changed through them
    np.testing.assert_array_equal(seg.preprocess([image], ["the red cup"])[1], expected_ids[:1])
    with pytest.raises(ValueError, match="sentence 1 is empty"):  # the tokenizer's own errors, unchanged
        seg.preprocess([image, image], ["the red cup", "  "])
    seg.tokenizer = plain  # another tokenizer: nothing cached for it yet
    np.testing.assert_array_equal(seg.preprocess([image], ["the red cup"])[1], expected_ids[:1])


def test_pre_processing_resize_is_opencvs_area_average_when_shrinking():
    """resize_image (training and inference) averages pixel areas when it shrinks more than 2x:
    OpenCV's INTER_AREA, computed in two passes when the width shrinks by a whole number."""
    import cv2

    from coupalign_core.data.transforms import resize_image

    rng = np.random.default_rng(5)
    for width, height in ((640, 480), (1280, 720), (1000, 700)):
        image = cv2.GaussianBlur(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), (0, 0), 1.5)
        ours = resize_image(image, 128).astype(int)
        area = cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA).astype(int)
        assert ours.shape == (128, 128, 3) and np.abs(ours - area).max() <= 1  # float rounding at most
        assert (ours != area).mean() < 0.01
    small = rng.integers(0, 256, (144, 192, 3), dtype=np.uint8)  # the synthetic benchmark's size: bilinear
    np.testing.assert_array_equal(resize_image(small, 128),
                                  cv2.resize(small, (128, 128), interpolation=cv2.INTER_LINEAR))
