"""A voice front end without ROS: audio chunks in, one command per utterance out, on a worker thread.

:class:`SpeechFrontEnd` is what the ``coupalign_speech`` node (and a microphone loop) wraps: the
caller pushes chunks of any size as they arrive (:meth:`SpeechFrontEnd.push`, never blocks on
recognition); a streaming voice-activity detector cuts utterances; a worker thread recognises each
and calls ``on_command(text, transcript)`` for a command, or counts the reject by its reason
(no match in the grammar, low confidence). :class:`FrontEndStats` holds what diagnostics report:
utterances, commands, rejects, dropped utterances and the latency from the end of speech to the
command.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from .audio import SAMPLE_RATE, resample
from .recognizer import Transcriber, Transcript
from .vad import Utterance, VoiceActivityDetector

MAX_PENDING = 4  # utterances waiting for the recogniser; older ones are dropped beyond this


@dataclass
class FrontEndStats:
    utterances: int = 0
    commands: int = 0
    rejects: collections.Counter[str] = field(default_factory=collections.Counter)  # reason -> count
    dropped: int = 0  # utterances the recogniser could not keep up with
    latencies_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=200))
    last_text: str = ""

    def snapshot(self) -> dict[str, object]:
        lat = np.asarray(self.latencies_ms, dtype=float)
        return {"utterances": self.utterances, "commands": self.commands, "rejects": dict(self.rejects),
                "dropped": self.dropped, "last_command": self.last_text,
                "latency_ms_p50": float(np.percentile(lat, 50)) if lat.size else 0.0,
                "latency_ms_p90": float(np.percentile(lat, 90)) if lat.size else 0.0}


def reject_kind(reason: str) -> str:
    """A reject's reason as a counter name: no_match, low_confidence, no_speech or other."""
    if reason.startswith("nothing") or reason.startswith("no words"):
        return "no_match"
    if reason.startswith("confidence"):
        return "low_confidence"
    if reason.startswith("no speech"):
        return "no_speech"
    return "other"


class SpeechFrontEnd:
    """Streaming VAD + recognition (see the module docstring); :meth:`start` / :meth:`stop` the worker."""

    def __init__(self, transcriber: Transcriber, on_command: Callable[[str, Transcript], None], *,
                 rate: int = SAMPLE_RATE, on_reject: Optional[Callable[[Transcript], None]] = None) -> None:
        self.transcriber = transcriber
        self.on_command = on_command
        self.on_reject = on_reject
        self.stats = FrontEndStats()
        self._rate = int(rate)
        self._vad = VoiceActivityDetector(transcriber.options.vad, self._rate)
        self._queue: queue.Queue[Optional[tuple[Utterance, float]]] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None

    @property
    def rate(self) -> int:
        return self._rate

    def set_rate(self, rate: int) -> None:
        """A new input rate (an AudioInfo that changed): the detector starts over."""
        if int(rate) != self._rate:
            with self._lock:
                self._rate = int(rate)
                self._vad = VoiceActivityDetector(self.transcriber.options.vad, self._rate)

    def push(self, samples: np.ndarray) -> None:
        """(N,) float32 mono at :attr:`rate`; utterances that end here go to the worker."""
        with self._lock:
            done = self._vad.push(samples)
        for u in done:
            self._enqueue(u)

    def flush(self) -> None:
        """The utterance in progress, as if the speaker had stopped (end of a stream)."""
        with self._lock:
            done = self._vad.flush()
        for u in done:
            self._enqueue(u)

    def _enqueue(self, u: Utterance) -> None:
        self.stats.utterances += 1
        while self._queue.qsize() >= MAX_PENDING:
            try:
                self._queue.get_nowait()
                self.stats.dropped += 1
            except queue.Empty:
                break
        self._queue.put((u, time.monotonic()))
        if self._thread is None:  # not started: recognise in the caller's thread
            self._drain()

    def _drain(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if item is not None:
                self._recognise(*item)

    def _recognise(self, u: Utterance, queued_at: float) -> None:
        t = self.transcriber.recognize(resample(u.samples, self._rate, SAMPLE_RATE), offset_s=u.start_s)
        latency_ms = (time.monotonic() - queued_at) * 1000.0
        if t.is_command:
            self.stats.commands += 1
            self.stats.last_text = t.text
            self.stats.latencies_ms.append(latency_ms)
            self.on_command(t.text, t)
        else:
            self.stats.rejects[reject_kind(t.reason)] += 1
            if self.on_reject is not None:
                self.on_reject(t)

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._recognise(*item)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="coupalign-speech", daemon=True)
            self._thread.start()

    def stop(self, drain: bool = False) -> None:
        """Stop the worker after the utterance it is on; queued ones are recognised first with
        ``drain`` (the end of a stream), else dropped (a node that deactivates)."""
        thread, self._thread = self._thread, None
        if thread is not None:
            while not drain and not self._queue.empty():
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._queue.put(None)
            thread.join(timeout=10.0)
        with self._lock:
            self._vad.reset()
