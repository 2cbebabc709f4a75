"""The processing pipeline shared by the ROS node and the rosbag tools (no rclpy here).

A camera publishes faster than a model segments, so the node keeps one slot: the newest frame
replaces an unprocessed older one (counted as dropped), and a worker thread runs the Segmenter on
whatever is newest when it is free. The node puts the camera message itself in the slot (a
:class:`PendingFrame`); only the frame the worker processes is converted to pixels. Commands are
timed: a new sentence applies to frames stamped at or after its arrival (the frame the user was
looking at), or to every frame from now on when it is flagged immediate. Bag replay calls
:meth:`Pipeline.process` synchronously, frame by frame, so it scores exactly what the node would
compute.
"""

from __future__ import annotations

import collections
import logging
import math
import numbers
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional, Protocol, Union, runtime_checkable

import numpy as np

from .conversions import ImageFields, mask_to_mono8

logger = logging.getLogger(__name__)


class SegmentationResultLike(Protocol):
    """What the pipeline reads of a result (``coupalign_core.inference.SegmentationResult`` is one).

    ``found`` is the segmenter's decision, never re-decided here, and is never True with an empty mask.
    """

    @property
    def mask(self) -> np.ndarray: ...  # (H, W) bool at the image's size

    @property
    def score(self) -> float: ...  # [0, 1]

    @property
    def found(self) -> bool: ...

    @property
    def bbox(self) -> Optional[tuple[int, int, int, int]]: ...  # (x0, y0, x1, y1), x1/y1 exclusive


# (image (H,W,3) uint8 RGB, text) -> result; normally a coupalign_core.inference.Segmenter
SegmentFn = Callable[[np.ndarray, str], SegmentationResultLike]


@runtime_checkable
class AdjustableSegmenter(Protocol):
    """A segmenter whose ``found`` threshold can change at run time (the Segmenter's property)."""

    threshold: float

    def __call__(self, image: np.ndarray, text: str) -> SegmentationResultLike: ...


@dataclass
class Frame:
    """One camera image waiting for the model."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    stamp_ns: int  # the source header's stamp
    frame_id: str = ""
    header: Any = None  # the source header itself, copied into the results untouched
    received_ns: int = field(default_factory=time.monotonic_ns)


@dataclass
class PendingFrame:
    """A camera message not converted yet: what the node puts in the slot.

    At camera rate most frames are replaced before the worker is free, so converting each one as
    it arrives would be wasted; the worker calls :meth:`to_frame` on the one it processes.
    ``convert`` raises ValueError for a malformed message (counted as a rejected image).
    """

    convert: Callable[[], np.ndarray]  # the message -> (H, W, 3) uint8 RGB
    stamp_ns: int
    frame_id: str = ""
    header: Any = None
    received_ns: int = field(default_factory=time.monotonic_ns)

    def to_frame(self) -> Frame:
        return Frame(self.convert(), self.stamp_ns, self.frame_id, self.header, self.received_ns)


AnyFrame = Union[Frame, PendingFrame]


@dataclass(frozen=True)
class Command:
    """A sentence and when it starts to apply."""

    text: str
    command_id: int  # 1, 2, ... in order of arrival
    arrival_ns: int  # on the clock of the frames' stamps
    immediate: bool = False  # apply to every frame processed from now on, whatever its stamp


@dataclass
class SegmentationOutput:
    """What the pipeline hands to the node's publishers or the bag writer for one frame."""

    frame: Frame
    command: Command
    result: SegmentationResultLike
    latency_ms: float  # wall time of the Segmenter call (pre- + inference + post-processing)

    @property
    def found(self) -> bool:
        """The Segmenter's decision (its threshold), read from the result."""
        return bool(self.result.found)

    def message_fields(self, mask: bool = True) -> dict[str, Any]:
        """Plain values of a ``coupalign_ros/ReferringSegmentation`` (without the header).

        The node and the bag writer both fill their message classes from this, so the two can't
        drift apart. ``bbox`` is (x_offset, y_offset, width, height) in source pixels, zeros when
        the mask is empty. ``mask=False`` leaves the mono8 mask out (the node writes it straight
        into its message with ``conversions.mask_to_mono8_buffer``).
        """
        bbox = self.result.bbox
        if bbox is None:
            roi = (0, 0, 0, 0)
        else:
            x0, y0, x1, y1 = (int(v) for v in bbox)
            roi = (x0, y0, x1 - x0, y1 - y0)
        values: dict[str, Any] = {
            "command": self.command.text,
            "command_id": self.command.command_id,
            "found": bool(self.found),
            "score": float(self.result.score),
            "bbox": roi,
            "latency_ms": float(self.latency_ms),
        }
        if mask:
            fields: ImageFields = mask_to_mono8(self.result.mask)
            values["mask"] = fields
        return values


class CommandBook:
    """The commands received so far and which one is in force for a frame stamp.

    Keeps a short history so a frame stamped just before a new command still gets the old one.
    The node feeds it from two subscriptions (volatile, so any publisher matches, and transient
    local, so a latched command reaches a node that starts later); a sample both deliver carries
    the same ``source_key`` and is recorded once.
    """

    def __init__(self, max_chars: int = 500, history: int = 32):
        self.max_chars = self.check_max_chars(max_chars)
        self._commands: collections.deque[Command] = collections.deque(maxlen=history)
        self._next_id = 1
        self._lock = threading.Lock()
        self._seen: collections.OrderedDict[Hashable, None] = collections.OrderedDict()
        self._seen_limit = max(64, 2 * history)

    @staticmethod
    def check_max_chars(max_chars: int) -> int:
        """``max_chars`` as an int >= 1, or ValueError."""
        if isinstance(max_chars, bool) or not isinstance(max_chars, numbers.Integral) or max_chars < 1:
            raise ValueError(f"max_command_chars must be an integer >= 1, got {max_chars!r}")
        return int(max_chars)

    def validate(self, text: Any) -> str:
        """The stripped sentence, or ValueError saying why it can't be a command."""
        if not isinstance(text, str):
            raise ValueError(f"a command must be a str, got {type(text).__name__}")
        stripped = text.strip()
        if not stripped:
            raise ValueError("empty command (nothing but whitespace)")
        if len(stripped) > self.max_chars:
            raise ValueError(f"command is {len(stripped)} characters long; the limit is {self.max_chars}")
        return stripped

    def set(self, text: Any, arrival_ns: int, immediate: bool = False, *,
            source_key: Optional[Hashable] = None) -> Optional[Command]:
        """Record a new command; raises ValueError (and records nothing) for an invalid one.

        ``source_key`` identifies the message it came in (the node uses the publisher's source
        timestamp and the text): a key already recorded returns None and records nothing, so one
        message delivered by two subscriptions is one command. None: always a new command.
        """
        stripped = self.validate(text)
        with self._lock:
            if source_key is not None:
                if source_key in self._seen:
                    return None
                self._seen[source_key] = None
                while len(self._seen) > self._seen_limit:
                    self._seen.popitem(last=False)
            command = Command(stripped, self._next_id, int(arrival_ns), bool(immediate))
            self._next_id += 1
            self._commands.append(command)
        return command

    @property
    def latest(self) -> Optional[Command]:
        with self._lock:
            return self._commands[-1] if self._commands else None

    def for_stamp(self, stamp_ns: int) -> Optional[Command]:
        """The newest command that applies to a frame stamped ``stamp_ns`` (None before the first)."""
        with self._lock:
            for command in reversed(self._commands):
                if command.immediate or command.arrival_ns <= stamp_ns:
                    return command
        return None

    def clear(self) -> None:
        with self._lock:
            self._commands.clear()
            self._seen.clear()


class FrameSlot:
    """A one-frame buffer: the newest frame wins, so memory stays bounded whatever the camera rate."""

    def __init__(self) -> None:
        self._frame: Optional[AnyFrame] = None
        self._cond = threading.Condition()

    def put(self, frame: AnyFrame) -> Optional[AnyFrame]:
        """Store ``frame``; returns the unprocessed frame it replaced (the caller counts it dropped)."""
        with self._cond:
            superseded, self._frame = self._frame, frame
            self._cond.notify()
        return superseded

    def take(self, timeout: Optional[float] = None) -> Optional[AnyFrame]:
        """Remove and return the frame, waiting up to ``timeout`` seconds for one (None: none came)."""
        with self._cond:
            if self._frame is None:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
        return frame

    def clear(self) -> Optional[AnyFrame]:
        with self._cond:
            frame, self._frame = self._frame, None
        return frame

    def wake(self) -> None:
        """Release a waiting :meth:`take` (it returns None) so a stopping worker exits at once."""
        with self._cond:
            self._cond.notify_all()


class ThrottledLog:
    """At most one message per key per ``period_s``; says how many were held back in between.

    A camera sending a broken image at 30 Hz must not flood the log, but the first one is shown.
    """

    def __init__(self, emit: Callable[[int, str], None], period_s: float = 5.0,
                 clock: Callable[[], float] = time.monotonic):
        self.emit = emit
        self.period_s = float(period_s)
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, key: str, level: int, message: str) -> bool:
        """Emit ``message`` unless ``key`` was emitted within the period; True when emitted."""
        now = self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period_s:
                self._held[key] += 1
                return False
            held = self._held.pop(key, 0)
            self._last[key] = now
        suffix = f" ({held} more like this in the last {self.period_s:g} s)" if held else ""
        self.emit(level, message + suffix)
        return True


class PipelineStats:
    """Counters and rolling figures for /diagnostics and the bag report (thread-safe)."""

    def __init__(self, window: int = 200, rate_window_s: float = 10.0):
        self._lock = threading.Lock()
        self.rate_window_s = float(rate_window_s)
        self.received = 0
        self.processed = 0
        self.dropped: collections.Counter[str] = collections.Counter()  # superseded, stale, no_command
        self.rejected: collections.Counter[str] = collections.Counter()  # by reason
        self.errors = 0
        self._latencies: collections.deque[float] = collections.deque(maxlen=window)
        self._done_at: collections.deque[float] = collections.deque()

    def count_received(self) -> None:
        with self._lock:
            self.received += 1

    def count_dropped(self, reason: str) -> None:
        with self._lock:
            self.dropped[reason] += 1

    def count_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] += 1

    def count_error(self) -> None:
        with self._lock:
            self.errors += 1

    def count_processed(self, latency_ms: float, now: Optional[float] = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.processed += 1
            self._latencies.append(float(latency_ms))
            self._done_at.append(now)
            self._trim(now)

    def _trim(self, now: float) -> None:
        while self._done_at and now - self._done_at[0] > self.rate_window_s:
            self._done_at.popleft()

    def snapshot(self, now: Optional[float] = None) -> dict[str, Any]:
        """A consistent copy: counts, processing rate (Hz over the window) and latency percentiles."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            lat = np.asarray(self._latencies, dtype=np.float64)
            span = self._done_at[-1] - self._done_at[0] if len(self._done_at) >= 2 else 0.0
            rate = (len(self._done_at) - 1) / span if span > 0 else 0.0
            return {
                "received": self.received,
                "processed": self.processed,
                "dropped": dict(self.dropped),
                "rejected": dict(self.rejected),
                "errors": self.errors,
                "rate_hz": float(rate),
                "latency_ms_mean": float(lat.mean()) if lat.size else 0.0,
                "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else 0.0,
                "latency_ms_p90": float(np.percentile(lat, 90)) if lat.size else 0.0,
                "latency_ms_max": float(lat.max()) if lat.size else 0.0,
            }


def _python_log(level: int, message: str) -> None:
    logger.log(level, "%s", message)


def _check_limit(name: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return number


class Pipeline:
    """Frames in, :class:`SegmentationOutput` out, on a worker thread or synchronously.

    ``segment`` is any ``(image, text) -> SegmentationResultLike`` callable, normally a
    ``coupalign_core.inference.Segmenter``, which alone decides ``found``. ``clock_ns`` is the clock
    of the frame stamps (the node's ROS clock, which follows /clock under sim time); without it
    frames are never stale. The node changes what it may at run time through :meth:`set_segmenter`,
    :meth:`set_threshold` and :meth:`update_limits`, and serves its Segment service with
    :meth:`segment_once`.
    """

    def __init__(
        self,
        segment: Optional[SegmentFn],
        *,
        commands: Optional[CommandBook] = None,
        on_result: Optional[Callable[[SegmentationOutput], None]] = None,
        clock_ns: Optional[Callable[[], int]] = None,
        max_frame_age_s: float = 0.0,
        max_rate_hz: float = 0.0,
        log: Optional[Callable[[int, str], None]] = None,
        log_period_s: float = 5.0,
        command_log_level: int = logging.INFO,
    ):
        self._segment = segment
        # A live node logs every command an operator sends; a bag replay sends hundreds (DEBUG).
        self.command_log_level = command_log_level
        self.commands = commands if commands is not None else CommandBook()
        self.on_result = on_result
        self.clock_ns = clock_ns
        self._max_frame_age_s = _check_limit("max_frame_age_s", max_frame_age_s)
        self._max_rate_hz = _check_limit("max_rate_hz", max_rate_hz)
        self.stats = PipelineStats()
        self.log = ThrottledLog(log or _python_log, log_period_s)
        self._slot = FrameSlot()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._busy = threading.Lock()  # one Segmenter call at a time (worker and service share it)

    # ---- run-time settings ----------------------------------------------------------------------
    @property
    def segment(self) -> Optional[SegmentFn]:
        """The segmenter in use; None while no model is loaded."""
        return self._segment

    @property
    def max_frame_age_s(self) -> float:
        return self._max_frame_age_s

    @property
    def max_rate_hz(self) -> float:
        return self._max_rate_hz

    def set_segmenter(self, segment: Optional[SegmentFn]) -> None:
        """Use ``segment`` from the next frame on (None: no model; frames then fail as errors).

        Waits for a call in progress, so the old segmenter is unused once this returns and its
        memory can be freed.
        """
        with self._busy:
            self._segment = segment

    def set_threshold(self, threshold: float) -> None:
        """Change the segmenter's ``found`` threshold; the segmenter checks the value and owns it.

        RuntimeError when no segmenter is set, TypeError when it has no adjustable threshold.
        """
        segment = self._segment
        if segment is None:
            raise RuntimeError("no model loaded: the threshold is set on the segmenter, and there is none")
        if not isinstance(segment, AdjustableSegmenter):
            raise TypeError(f"the segmenter {type(segment).__name__} has no adjustable threshold")
        segment.threshold = threshold

    def update_limits(self, *, max_rate_hz: Optional[float] = None, max_frame_age_s: Optional[float] = None,
                      max_command_chars: Optional[int] = None) -> None:
        """Change the limits given (the others stay); ValueError, and nothing changed, for a bad one."""
        rate = None if max_rate_hz is None else _check_limit("max_rate_hz", max_rate_hz)
        age = None if max_frame_age_s is None else _check_limit("max_frame_age_s", max_frame_age_s)
        if max_command_chars is not None:
            self.commands.check_max_chars(max_command_chars)
        if rate is not None:
            self._max_rate_hz = rate
        if age is not None:
            self._max_frame_age_s = age
        if max_command_chars is not None:
            self.commands.max_chars = int(max_command_chars)

    # ---- inputs -------------------------------------------------------------------------------
    def submit(self, frame: AnyFrame) -> None:
        """Offer a frame (or a camera message to convert) to the worker; an unprocessed older one
        is dropped (counted)."""
        self.stats.count_received()
        if self._slot.put(frame) is not None:
            self.stats.count_dropped("superseded")

    def reject(self, reason: str, detail: str) -> None:
        """Count a refused input under ``reason`` and log it, throttled per reason."""
        self.stats.count_rejected(reason)
        self.log(f"reject:{reason}", logging.WARNING, f"rejected {reason}: {detail}")

    def set_command(self, text: Any, arrival_ns: int, immediate: bool = False, *,
                    source_key: Optional[Hashable] = None) -> Optional[Command]:
        """Record a command; an invalid one is rejected (counted, logged) and None returned.

        None too, silently, for a message already recorded under ``source_key``
        (:meth:`CommandBook.set`).
        """
        try:
            command = self.commands.set(text, arrival_ns, immediate, source_key=source_key)
        except ValueError as e:
            self.reject("command", str(e))
            return None
        if command is None:
            return None
        self.log(f"command:{command.command_id}", self.command_log_level,
                 f"command {command.command_id}: {command.text!r}")
        return command

    # ---- processing ---------------------------------------------------------------------------
    def run_segmenter(self, image: np.ndarray, text: str) -> tuple[SegmentationResultLike, float]:
        """(result, wall ms) of one Segmenter call; serialised so the service can share the model."""
        with self._busy:
            segment = self._segment
            if segment is None:
                raise RuntimeError("no model loaded (the node is not configured)")
            t0 = time.perf_counter()
            result = segment(image, text)
            return result, (time.perf_counter() - t0) * 1e3

    def segment_once(self, pending: AnyFrame, text: Any) -> SegmentationOutput:
        """Segment a frame with ``text`` now, outside the command book (the node's Segment service).

        The text must pass the command rules (:meth:`CommandBook.validate`); the call waits for the
        worker's, so the two never run the model at once. A bad text or image raises ValueError
        (counted as rejected ``service``); a failing model raises its exception (counted as an
        error); RuntimeError when no model is loaded. The output's command has id 0.
        """
        try:
            text = self.commands.validate(text)
            frame = self.convert(pending)
        except ValueError as e:
            self.reject("service", str(e))
            raise
        try:
            result, latency_ms = self.run_segmenter(frame.image, text)
        except ValueError as e:
            self.reject("service", str(e))
            raise
        except Exception:
            self.stats.count_error()
            raise
        return SegmentationOutput(frame, Command(text, 0, frame.stamp_ns), result, latency_ms)

    @staticmethod
    def convert(frame: AnyFrame) -> Frame:
        """The frame with its pixels (a pending one is converted now); ValueError if malformed."""
        return frame.to_frame() if isinstance(frame, PendingFrame) else frame

    def process(self, pending: AnyFrame) -> Optional[SegmentationOutput]:
        """Segment one frame with the command in force at its stamp.

        None when it is dropped (stale, no command yet), malformed (rejected) or the Segmenter
        failed; all are counted, and an exception never escapes, so a bad frame cannot stop the
        worker. A pending frame is converted only once it is known to be segmented.
        """
        max_age_s = self._max_frame_age_s
        if self.clock_ns is not None and max_age_s > 0:
            age_s = (self.clock_ns() - pending.stamp_ns) * 1e-9
            if age_s > max_age_s:
                self.stats.count_dropped("stale")
                self.log("stale", logging.WARNING, f"dropped a frame {age_s:.2f} s old (max_frame_age_s={max_age_s:g})")
                return None
        command = self.commands.for_stamp(pending.stamp_ns)
        if command is None:
            self.stats.count_dropped("no_command")
            latest = self.commands.latest
            if latest is not None:
                self.log("early_frame", logging.WARNING,
                         f"frames are stamped {(latest.arrival_ns - pending.stamp_ns) * 1e-9:.3f} s before "
                         f"the command arrived; if the camera's clock differs from this node's, set "
                         f"command_immediate")
            return None
        try:
            frame: Frame = self.convert(pending)
        except Exception as e:  # ValueError names the problem; anything else a broken message triggers
            detail = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            self.reject("image", detail)
            return None
        try:
            result, latency_ms = self.run_segmenter(frame.image, command.text)
        except ValueError as e:
            self.reject("segmenter_input", str(e))
            return None
        except Exception as e:  # a model failure (CUDA OOM, ...) must not end the node
            self.stats.count_error()
            self.log("segmenter_error", logging.ERROR, f"segmentation failed: {type(e).__name__}: {e}")
            return None
        self.stats.count_processed(latency_ms)
        return SegmentationOutput(frame, command, result, latency_ms)

    # ---- worker thread ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="coupalign-pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the worker after its current frame; the pending frame is discarded."""
        self._stop.set()
        self._slot.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("pipeline worker still busy after %.1f s; it stops after this frame", timeout)
        self._thread = None
        self._slot.clear()

    def _work(self) -> None:
        next_start = 0.0
        while not self._stop.is_set():
            if self._max_rate_hz > 0:
                wait = next_start - time.monotonic()
                if wait > 0 and self._stop.wait(wait):
                    break
            frame = self._slot.take(timeout=0.1)
            if frame is None:
                continue
            rate = self._max_rate_hz
            next_start = time.monotonic() + (1.0 / rate if rate > 0 else 0.0)
            output = self.process(frame)
            if output is None or self.on_result is None:
                continue
            try:
                self.on_result(output)
            except Exception as e:  # a publisher failing must not end the worker
                self.stats.count_error()
                self.log("publish_error", logging.ERROR, f"publishing a result failed: {type(e).__name__}: {e}")
