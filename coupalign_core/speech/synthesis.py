"""Spoken test commands from text, offline, through Debian's ``espeak-ng`` (measurements, tests, bags).

espeak-ng is a formant synthesiser: robotic, but many voices and speeds, no model files, and the
same audio for the same text, voice and speed. :func:`add_noise` mixes in white noise at a given
signal-to-noise ratio, measured over the speech (the frames above -50 dBFS), not the pauses.
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Optional

import numpy as np

from .audio import SAMPLE_RATE, AudioError, parse_wav
from .vad import FRAME_S, frame_energy_db

ESPEAK = "espeak-ng"
# Voices of Debian's espeak-ng-data that the measurements use: American, British (with a female
# variant) and Scottish English.
DEFAULT_VOICES: tuple[str, ...] = ("en-us", "en-gb+f3", "en-gb-scotland")
DEFAULT_SPEEDS: tuple[int, ...] = (140, 175)  # words per minute (espeak-ng's default is 175)


def espeak_available() -> bool:
    return shutil.which(ESPEAK) is not None


def synthesize(text: str, voice: str = "en-us", speed: int = 160, rate: int = SAMPLE_RATE,
               timeout_s: float = 30.0) -> np.ndarray:
    """``text`` spoken by espeak-ng as (N,) float32 mono at ``rate``; RuntimeError without espeak-ng."""
    exe = shutil.which(ESPEAK)
    if exe is None:
        raise RuntimeError("espeak-ng is not installed (Debian: apt-get install espeak-ng)")
    if not text.strip():
        raise ValueError("nothing to say: empty text")
    done = subprocess.run([exe, "-v", voice, "-s", str(int(speed)), "--stdout", text], capture_output=True,
                          timeout=timeout_s, check=False)
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"espeak-ng failed for voice {voice!r}: {done.stderr.decode(errors='replace').strip()}")
    try:
        return parse_wav(done.stdout, "espeak-ng output").mono(rate)
    except AudioError as e:
        raise RuntimeError(f"espeak-ng wrote no readable audio: {e}") from None


def speech_power(samples: np.ndarray, rate: int = SAMPLE_RATE, floor_db: float = -50.0) -> float:
    """Mean square of the 10 ms frames louder than ``floor_db`` (the speech, not the pauses)."""
    frame = max(1, int(round(FRAME_S * rate)))
    energy = frame_energy_db(samples, frame)
    loud = energy > floor_db
    if not loud.any():
        return float(np.mean(np.square(samples, dtype=np.float64))) if samples.size else 0.0
    return float(np.mean(10.0 ** (energy[loud] / 10.0)))


def add_noise(samples: np.ndarray, snr_db: float, rng: Optional[np.random.Generator] = None,
              rate: int = SAMPLE_RATE) -> np.ndarray:
    """``samples`` plus white Gaussian noise ``snr_db`` below the speech's power (:func:`speech_power`)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    x = np.asarray(samples, dtype=np.float32)
    sigma = np.sqrt(speech_power(x, rate) / 10.0 ** (snr_db / 10.0))
    return (x + rng.normal(0.0, sigma, x.shape)).astype(np.float32)
