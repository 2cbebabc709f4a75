"""Voice activity: where in a stream of audio someone speaks, from frame energy against the noise floor.

A 10 ms frame is *loud* when its energy is ``threshold_db`` above the noise floor and above
``min_level_db`` (absolute, dB re full scale). The floor is a low percentile of the frame energies
of the last ``floor_window_s`` seconds, so it follows a fan that starts or a room that gets quieter;
stationary noise alone never gets that far above its own floor, so it is never speech. An utterance
starts once ``start_s`` of the last ``start_window_s`` were loud and ends after ``hangover_s`` of
quiet (the pauses between words are shorter); it keeps ``padding_s`` of audio on either side, since
a word's first and last sounds are quieter than its middle. An utterance shorter than
``min_utterance_s`` (a click, a cough) is dropped; one longer than ``max_utterance_s`` is cut.

:class:`VoiceActivityDetector` is incremental (a microphone, an audio topic: :meth:`push` chunks of
any size as they come); :func:`detect_utterances` runs it over a whole recording, with the floor
primed from the whole recording so speech at its very start is found too.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .audio import SAMPLE_RATE

FRAME_S = 0.01


@dataclass(frozen=True)
class VadOptions:
    threshold_db: float = 12.0  # above the noise floor
    min_level_db: float = -50.0  # dBFS: quieter frames are never speech
    floor_percentile: float = 10.0
    floor_window_s: float = 5.0
    start_s: float = 0.08  # loud time within start_window_s that starts an utterance
    start_window_s: float = 0.2
    hangover_s: float = 0.5  # quiet time that ends it
    padding_s: float = 0.2  # kept before the start and after the end
    min_utterance_s: float = 0.3
    max_utterance_s: float = 15.0

    def __post_init__(self) -> None:
        for name in ("floor_window_s", "start_s", "start_window_s", "hangover_s", "min_utterance_s", "max_utterance_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"VadOptions.{name} must be > 0, got {getattr(self, name)}")
        if self.start_s > self.start_window_s:
            raise ValueError("VadOptions.start_s must not exceed start_window_s")
        if not 0 <= self.floor_percentile <= 100:
            raise ValueError(f"VadOptions.floor_percentile must be in [0, 100], got {self.floor_percentile}")
        if self.padding_s < 0 or self.threshold_db < 0:
            raise ValueError("VadOptions.padding_s and threshold_db must be >= 0")


@dataclass(frozen=True)
class Utterance:
    samples: np.ndarray  # (N,) float32 at the detector's rate, padding included
    start_s: float  # of the first sample, from the start of the stream
    end_s: float
    truncated: bool = False  # cut at max_utterance_s

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def frame_energy_db(samples: np.ndarray, frame: int) -> np.ndarray:
    """(N,) -> (N // frame,) mean-square energy per frame in dB re full scale (-100 for digital silence)."""
    n = samples.size // frame
    x = np.asarray(samples[: n * frame], dtype=np.float64).reshape(n, frame)
    return 10.0 * np.log10(np.mean(x * x, axis=1) + 1e-10)


class VoiceActivityDetector:
    """Utterances from a stream of (N,) float32 mono chunks at ``rate`` (see the module docstring)."""

    def __init__(self, options: Optional[VadOptions] = None, rate: int = SAMPLE_RATE) -> None:
        self.options = options or VadOptions()
        self.rate = int(rate)
        self.frame = max(1, int(round(FRAME_S * self.rate)))
        o = self.options
        self._floor_frames: collections.deque[float] = collections.deque(maxlen=self._frames(o.floor_window_s))
        self._recent: collections.deque[bool] = collections.deque(maxlen=self._frames(o.start_window_s))
        self._padding: collections.deque[np.ndarray] = collections.deque(maxlen=self._frames(o.padding_s))
        self._pending = np.zeros(0, dtype=np.float32)  # less than one frame, waiting for the next chunk
        self._voiced: list[np.ndarray] = []  # frames of the utterance in progress (padding included)
        self._quiet = 0  # consecutive quiet frames in the utterance in progress
        self._frames_seen = 0
        self._start_frame = 0
        self._primed_floor: Optional[float] = None

    def reset(self) -> None:
        """Forget the stream, the noise floor included."""
        for queue in (self._floor_frames, self._recent, self._padding):
            queue.clear()
        self._pending = np.zeros(0, dtype=np.float32)
        self._voiced = []
        self._quiet = self._frames_seen = self._start_frame = 0
        self._primed_floor = None

    def _frames(self, seconds: float) -> int:
        return max(1, int(round(seconds / FRAME_S)))

    @property
    def in_utterance(self) -> bool:
        return bool(self._voiced)

    @property
    def noise_floor_db(self) -> float:
        """The current floor estimate (dBFS)."""
        if self._floor_frames:
            floor = float(np.percentile(np.fromiter(self._floor_frames, float), self.options.floor_percentile))
            return floor if self._primed_floor is None else min(floor, self._primed_floor)
        return self._primed_floor if self._primed_floor is not None else self.options.min_level_db

    def prime(self, samples: np.ndarray) -> None:
        """Take the floor from ``samples`` (a whole recording) until the stream's own history is long enough."""
        energy = frame_energy_db(np.asarray(samples, dtype=np.float32).reshape(-1), self.frame)
        if energy.size:
            self._primed_floor = float(np.percentile(energy, self.options.floor_percentile))

    def push(self, chunk: np.ndarray) -> list[Utterance]:
        """Feed (N,) samples; returns the utterances that ended in them."""
        x = np.concatenate([self._pending, np.asarray(chunk, dtype=np.float32).reshape(-1)])
        n = x.size // self.frame
        self._pending = x[n * self.frame:].copy()
        out: list[Utterance] = []
        if n == 0:
            return out
        frames = x[: n * self.frame].reshape(n, self.frame)
        for frame, energy in zip(frames, frame_energy_db(frames.reshape(-1), self.frame)):
            done = self._step(frame, float(energy))
            if done is not None:
                out.append(done)
        return out

    def flush(self) -> list[Utterance]:
        """End of stream: the utterance in progress, if long enough."""
        done = self._finish(truncated=False) if self._voiced else None
        return [done] if done is not None else []

    def _step(self, frame: np.ndarray, energy: float) -> Optional[Utterance]:
        o = self.options
        loud = energy >= max(self.noise_floor_db + o.threshold_db, o.min_level_db)
        self._frames_seen += 1
        self._recent.append(loud)
        done: Optional[Utterance] = None
        if self._voiced:
            self._voiced.append(frame)
            self._quiet = 0 if loud else self._quiet + 1
            if self._quiet >= self._frames(o.hangover_s):
                keep = len(self._voiced) - self._quiet + self._frames(o.padding_s)
                del self._voiced[max(keep, 1):]
                done = self._finish(truncated=False)
            elif len(self._voiced) >= self._frames(o.max_utterance_s):
                done = self._finish(truncated=True)
        elif sum(self._recent) >= self._frames(o.start_s):
            self._voiced = [*self._padding, frame]
            self._start_frame = self._frames_seen - len(self._voiced)
            self._quiet = 0
            self._padding.clear()
        else:
            self._padding.append(frame)
        if not loud or not self._voiced:  # the floor learns from what is not speech (and from the very loud)
            self._floor_frames.append(energy)
        return done

    def _finish(self, truncated: bool) -> Optional[Utterance]:
        frames, self._voiced = self._voiced, []
        self._quiet = 0
        self._recent.clear()
        samples = np.concatenate(frames) if frames else np.zeros(0, dtype=np.float32)
        start = self._start_frame * self.frame / self.rate
        if samples.size / self.rate < self.options.min_utterance_s:
            return None
        return Utterance(samples, start, start + samples.size / self.rate, truncated)


def detect_utterances(samples: np.ndarray, rate: int = SAMPLE_RATE,
                      options: Optional[VadOptions] = None) -> list[Utterance]:
    """Every utterance in a whole recording ((N,) float32 mono), the floor primed from all of it."""
    vad = VoiceActivityDetector(options, rate)
    vad.prime(samples)
    return vad.push(samples) + vad.flush()
