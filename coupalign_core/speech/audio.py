"""Audio in and out: any PCM or float WAV to the recogniser's 16 kHz mono, and back to 16-bit WAV.

The recogniser's acoustic model was trained on 16 kHz speech, so every input is mixed down to mono
(the mean of its channels) and resampled by a polyphase windowed-sinc (Kaiser) low-pass filter: a
rate change without one folds everything above the new Nyquist frequency back into the speech band.
WAV files are parsed here rather than by the standard ``wave`` module, which reads neither
IEEE-float nor WAVE_FORMAT_EXTENSIBLE files (what many recorders and ``sox`` write).
"""

from __future__ import annotations

import math
import os
import struct
import wave
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

SAMPLE_RATE = 16000  # the recogniser's rate (pocketsphinx's en-US acoustic model)

_PCM, _FLOAT, _EXTENSIBLE = 0x0001, 0x0003, 0xFFFE


class AudioError(ValueError):
    """A file that is not audio this module can read, said in one line."""


@dataclass(frozen=True)
class Audio:
    samples: np.ndarray  # (N, C) float32 in [-1, 1]
    rate: int  # samples per second per channel
    sample_width: int  # bytes per sample in the file (1, 2, 3, 4 or 8)

    @property
    def channels(self) -> int:
        return int(self.samples.shape[1])

    @property
    def duration_s(self) -> float:
        return self.samples.shape[0] / self.rate

    def mono(self, rate: int = SAMPLE_RATE) -> np.ndarray:
        """(M,) float32: the channels' mean, resampled to ``rate``."""
        return resample(to_mono(self.samples), self.rate, rate)


def to_mono(samples: np.ndarray) -> np.ndarray:
    """(N,) or (N, C) -> (N,) float32, the mean of the channels."""
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim == 1:
        return x
    if x.ndim != 2:
        raise AudioError(f"audio must be (samples,) or (samples, channels), got shape {x.shape}")
    return x.mean(axis=1, dtype=np.float32)


# ---- reading ------------------------------------------------------------------------------------
def _decode(data: bytes, fmt: int, width: int, channels: int) -> np.ndarray:
    """Interleaved sample bytes -> (N, C) float32 in [-1, 1]."""
    frame = width * channels
    data = data[: len(data) - len(data) % frame]  # a truncated last frame is dropped
    if fmt == _FLOAT:
        if width not in (4, 8):
            raise AudioError(f"float WAV with {8 * width}-bit samples is not supported (32 or 64 bit)")
        x = np.frombuffer(data, dtype="<f4" if width == 4 else "<f8").astype(np.float32)
        x = np.clip(np.nan_to_num(x), -1.0, 1.0)
    elif width == 1:  # 8-bit WAV is unsigned, centred on 128
        x = (np.frombuffer(data, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:  # 24-bit: widen each sample to 32 bits, sign carried by the top byte
        b = np.frombuffer(data, dtype=np.uint8).reshape(-1, 3)
        wide = np.zeros((b.shape[0], 4), dtype=np.uint8)
        wide[:, 1:] = b
        x = wide.view("<i4").reshape(-1).astype(np.float32) / 2147483648.0
    elif width == 4:
        x = (np.frombuffer(data, dtype="<i4").astype(np.float64) / 2147483648.0).astype(np.float32)
    else:
        raise AudioError(f"PCM WAV with {8 * width}-bit samples is not supported (8, 16, 24 or 32 bit)")
    return x.reshape(-1, channels)


def read_wav(path: str | os.PathLike[str]) -> Audio:
    """A RIFF/WAVE file (PCM 8/16/24/32 bit, float 32/64 bit, plain or extensible) as :class:`Audio`."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            blob = f.read()
    except IsADirectoryError:
        raise AudioError(f"{name} is a folder, not a WAV file") from None
    return parse_wav(blob, name)


def parse_wav(blob: bytes, name: str = "WAV data") -> Audio:
    """:func:`read_wav` of bytes. A streamed WAV (``espeak-ng --stdout``, a recorder that died) whose
    header sizes were never filled in is read up to its end."""
    if len(blob) < 12 or blob[:4] != b"RIFF" or blob[8:12] != b"WAVE":
        raise AudioError(f"{name} is not a WAV file (no RIFF/WAVE header)")
    fmt_chunk: bytes | None = None
    data: bytes | None = None
    pos = 12
    while pos + 8 <= len(blob):
        chunk_id, size = blob[pos:pos + 4], struct.unpack("<I", blob[pos + 4:pos + 8])[0]
        body = blob[pos + 8:pos + 8 + size]  # a recorder that died leaves a short last chunk: keep what is there
        if chunk_id == b"fmt ":
            fmt_chunk = body
        elif chunk_id == b"data":
            data = body
        pos += 8 + size + (size & 1)  # chunks are padded to an even length
    if fmt_chunk is None or len(fmt_chunk) < 16:
        raise AudioError(f"{name} has no valid 'fmt ' chunk")
    if data is None:
        raise AudioError(f"{name} has no 'data' chunk")
    fmt, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if fmt == _EXTENSIBLE:
        if len(fmt_chunk) < 26:
            raise AudioError(f"{name}: WAVE_FORMAT_EXTENSIBLE 'fmt ' chunk is too short")
        fmt = struct.unpack("<H", fmt_chunk[24:26])[0]  # the sub-format GUID starts with the format code
    if fmt not in (_PCM, _FLOAT):
        raise AudioError(f"{name}: WAV format code {fmt:#06x} is not supported (PCM or IEEE float only)")
    if channels < 1 or rate < 1 or bits < 8 or bits % 8:
        raise AudioError(f"{name}: invalid WAV format ({channels} channels, {rate} Hz, {bits} bits)")
    return Audio(_decode(data, fmt, bits // 8, channels), int(rate), bits // 8)


def load_audio(path: str | os.PathLike[str], rate: int = SAMPLE_RATE) -> np.ndarray:
    """A WAV file as (N,) float32 mono at ``rate`` (16 kHz: what the recogniser takes)."""
    return read_wav(path).mono(rate)


# ---- writing ------------------------------------------------------------------------------------
def to_pcm16(samples: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] (louder ones are clipped) -> int16."""
    x = np.clip(np.nan_to_num(np.asarray(samples, dtype=np.float32)), -1.0, 1.0)
    return np.round(x * 32767.0).astype(np.int16)


def write_wav(path: str | os.PathLike[str], samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write (N,) or (N, C) float samples as a 16-bit PCM WAV file."""
    x = np.asarray(samples, dtype=np.float32)
    x = x[:, None] if x.ndim == 1 else x
    with wave.open(os.fspath(path), "wb") as w:
        w.setnchannels(x.shape[1])
        w.setsampwidth(2)
        w.setframerate(int(rate))
        w.writeframes(to_pcm16(x).astype("<i2").tobytes())


# ---- resampling ---------------------------------------------------------------------------------
ZERO_CROSSINGS = 16  # of the sinc on each side: the filter's length, so its transition width
KAISER_BETA = 8.6  # about 80 dB stop-band attenuation
ROLLOFF = 0.92  # the pass band ends at this share of the lower Nyquist frequency


@lru_cache(maxsize=16)
def _lowpass(up: int, down: int) -> np.ndarray:
    """The prototype filter at ``up`` times the input rate: a Kaiser-windowed sinc, unit sum."""
    factor = max(up, down)
    half = ZERO_CROSSINGS * factor
    n = np.arange(-half, half + 1, dtype=np.float64)
    cutoff = ROLLOFF / factor  # in units of the upsampled Nyquist frequency
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(2 * half + 1, KAISER_BETA)
    return h / h.sum()


def resample(samples: np.ndarray, rate_in: int, rate_out: int = SAMPLE_RATE, *, block: int = 1 << 15) -> np.ndarray:
    """(N,) float -> (ceil(N * rate_out / rate_in),) float32 by polyphase filtering.

    Output sample n is the filtered, ``up``-times upsampled input at position ``n * down``, where
    ``up / down`` is ``rate_out / rate_in`` in lowest terms; only the input samples under the
    filter are touched (``ceil(len(h) / up)`` per output), in blocks to bound memory.
    """
    if rate_in < 1 or rate_out < 1:
        raise AudioError(f"sample rates must be positive, got {rate_in} -> {rate_out}")
    x = np.asarray(samples, dtype=np.float64).reshape(-1)
    if rate_in == rate_out or x.size == 0:
        return x.astype(np.float32)
    g = math.gcd(int(rate_in), int(rate_out))
    up, down = int(rate_out) // g, int(rate_in) // g
    h = _lowpass(up, down) * up  # each output sums one of `up` phases: unit gain at DC
    half = (h.size - 1) // 2
    taps = (2 * half) // up + 1
    n_out = -(-x.size * up // down)
    pad = taps + 1
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
    out = np.empty(n_out, dtype=np.float64)
    t = np.arange(taps)
    for start in range(0, n_out, block):
        n = np.arange(start, min(start + block, n_out), dtype=np.int64)
        pos = n * down + half  # in the upsampled, filter-delayed timeline
        first = -(-(pos - 2 * half) // up)  # smallest input index under the filter
        i = first[:, None] + t[None, :]  # (B, taps) input indices
        j = pos[:, None] - up * i  # matching filter indices
        valid = (j >= 0) & (j <= 2 * half)
        coeff = np.where(valid, h[np.clip(j, 0, 2 * half)], 0.0)
        out[start:start + n.size] = (coeff * xp[i + pad]).sum(axis=1)
    return out.astype(np.float32)
