"""Audio in (any WAV rate, channels and sample format -> 16 kHz mono) and voice-activity detection."""

import struct

import numpy as np
import pytest

from coupalign_core.speech.audio import (
    SAMPLE_RATE,
    AudioError,
    load_audio,
    parse_wav,
    read_wav,
    resample,
    to_pcm16,
    write_wav,
)
from coupalign_core.speech.vad import VadOptions, VoiceActivityDetector, detect_utterances


def tone(freq, rate, seconds=1.0, amplitude=0.5):
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(data: bytes, *, fmt=1, channels=1, rate=16000, bits=16, extensible=False):
    """A hand-made RIFF/WAVE file (the formats the standard ``wave`` module cannot write)."""
    block = channels * bits // 8
    fields = struct.pack("<HHIIHH", 0xFFFE if extensible else fmt, channels, rate, rate * block, block, bits)
    if extensible:
        guid_tail = b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"  # KSDATAFORMAT_SUBTYPE_*
        fields += struct.pack("<HHI", 22, bits, 0) + struct.pack("<H", fmt) + guid_tail
    chunks = b"fmt " + struct.pack("<I", len(fields)) + fields + b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_wav_round_trip_at_common_rates_gives_the_same_tone_at_16k(tmp_path, rate):
    path = tmp_path / f"tone{rate}.wav"
    write_wav(path, tone(440.0, rate), rate)
    audio = read_wav(path)
    assert (audio.rate, audio.channels, audio.sample_width) == (rate, 1, 2)
    x = load_audio(path)
    assert x.dtype == np.float32 and x.size == SAMPLE_RATE
    expected = tone(440.0, SAMPLE_RATE)
    middle = slice(800, -800)  # the filter's edges see zeros beyond the ends
    assert np.max(np.abs(x[middle] - expected[middle])) < 2e-3


def test_resampling_filters_what_the_new_rate_cannot_hold():
    """A 10 kHz tone has no place at 16 kHz (Nyquist 8 kHz): dropping samples would fold it to 6 kHz."""
    y = resample(tone(10000.0, 44100), 44100, SAMPLE_RATE)
    assert np.sqrt(np.mean(y[800:-800] ** 2)) < 1e-3
    folded = tone(10000.0, 44100)[:: 44100 // SAMPLE_RATE]  # naive decimation, for contrast
    assert np.sqrt(np.mean(folded ** 2)) > 0.3


def test_stereo_is_mixed_to_the_channels_mean(tmp_path):
    left, right = tone(440.0, 44100), tone(1000.0, 44100, amplitude=0.25)
    path = tmp_path / "stereo.wav"
    write_wav(path, np.stack([left, right], axis=1), 44100)
    audio = read_wav(path)
    assert audio.channels == 2
    expected = resample((left + right) / 2, 44100, SAMPLE_RATE)
    assert np.max(np.abs(load_audio(path) - expected)) < 1e-3


def test_float_24_bit_8_bit_and_extensible_files_are_read():
    x = np.array([0.0, 0.5, -0.5, 1.0, -1.0], dtype=np.float32)
    as_float = parse_wav(wav_bytes(x.astype("<f4").tobytes(), fmt=3, bits=32, extensible=True))
    assert np.allclose(as_float.samples[:, 0], x)
    pcm24 = b"".join(int(round(v * 8388607)).to_bytes(3, "little", signed=True) for v in x)
    assert np.allclose(parse_wav(wav_bytes(pcm24, bits=24)).samples[:, 0], x, atol=1e-6)
    pcm8 = bytes([128, 192, 64, 255, 0])
    assert np.allclose(parse_wav(wav_bytes(pcm8, bits=8)).samples[:, 0], [0, 0.5, -0.5, 127 / 128, -1])


def test_clipped_audio_stays_at_full_scale(tmp_path):
    path = tmp_path / "clipped.wav"
    loud = np.clip(4.0 * tone(300.0, SAMPLE_RATE), -10, 10)  # far beyond full scale
    write_wav(path, loud)
    x = load_audio(path)
    assert np.max(x) == pytest.approx(32767 / 32768) and np.min(x) == pytest.approx(-32767 / 32768)
    assert np.mean(np.abs(x) > 0.99) > 0.5  # most of it sits at the rails
    assert to_pcm16(np.array([2.0, -2.0, np.nan])).tolist() == [32767, -32767, 0]
    assert parse_wav(wav_bytes(struct.pack("<h", -32768))).samples[0, 0] == -1.0


def test_empty_wav_loads_as_no_samples(tmp_path):
    path = tmp_path / "empty.wav"
    write_wav(path, np.zeros(0, dtype=np.float32), 44100)
    assert load_audio(path).size == 0
    assert detect_utterances(load_audio(path)) == []


@pytest.mark.parametrize("blob, message", [
    (b"not a wav at all", "no RIFF/WAVE header"),
    (b"RIFF\x04\x00\x00\x00WAVE", "no valid 'fmt ' chunk"),
    (wav_bytes(b"\x00\x00", fmt=6, bits=8), "format code 0x0006"),
    (wav_bytes(b"\x00" * 4, fmt=3, bits=16), "float WAV with 16-bit"),
])
def test_unreadable_files_say_why_in_one_line(blob, message):
    with pytest.raises(AudioError, match=message.replace("(", r"\(")):
        parse_wav(blob)


def test_a_truncated_streamed_wav_is_read_to_its_end():
    """espeak-ng --stdout and a recorder that died leave the data size unset or too large."""
    blob = bytearray(wav_bytes(to_pcm16(np.full(100, 0.25)).tobytes()))
    blob[40:44] = b"\xff\xff\xff\xff"
    assert parse_wav(bytes(blob)).samples.shape == (100, 1)


# ---- voice activity -----------------------------------------------------------------------------
def noise(seconds, level, seed=0):
    return np.random.default_rng(seed).normal(0, level, int(SAMPLE_RATE * seconds)).astype(np.float32)


@pytest.mark.parametrize("signal", ["silence", "white noise", "loud white noise"])
def test_silence_or_stationary_noise_alone_is_no_utterance(signal):
    x = {"silence": np.zeros(2 * SAMPLE_RATE, np.float32), "white noise": noise(2.0, 0.01),
         "loud white noise": noise(2.0, 0.3)}[signal]
    assert detect_utterances(x) == []
    vad = VoiceActivityDetector()
    assert vad.push(x) + vad.flush() == []


def burst(at_s, seconds, total_s, background=0.003):
    x = noise(total_s, background, seed=1)
    start = int(at_s * SAMPLE_RATE)
    x[start:start + int(seconds * SAMPLE_RATE)] += tone(220.0, SAMPLE_RATE, seconds, 0.3)
    return x


def test_an_utterance_is_found_where_it_is_with_its_padding():
    found = detect_utterances(burst(1.0, 0.8, 3.0))
    assert len(found) == 1
    u = found[0]
    assert 0.75 <= u.start_s <= 1.0 and 1.8 <= u.end_s <= 2.1
    assert u.samples.size == pytest.approx(u.duration_s * SAMPLE_RATE, abs=1)


def test_a_short_pause_keeps_one_utterance_and_a_long_one_splits_it():
    x = burst(0.5, 0.6, 4.0)
    x += burst(1.3, 0.6, 4.0, background=0.0)  # 0.2 s after the first: shorter than the hangover
    assert len(detect_utterances(x)) == 1
    y = burst(0.5, 0.6, 4.0)
    y += burst(2.3, 0.6, 4.0, background=0.0)  # 1.2 s after
    assert len(detect_utterances(y)) == 2


def test_clicks_are_not_utterances():
    x = noise(2.0, 0.003)
    x[16000:16000 + 480] += 0.5  # 30 ms
    assert detect_utterances(x) == []


def test_streaming_in_odd_chunks_finds_what_the_whole_recording_does():
    x = burst(1.0, 0.8, 4.0)
    vad = VoiceActivityDetector(VadOptions())
    found = []
    for i in range(0, x.size, 777):
        found += vad.push(x[i:i + 777])
    found += vad.flush()
    assert len(found) == 1 and abs(found[0].start_s - detect_utterances(x)[0].start_s) < 0.05


def test_a_long_utterance_is_cut_at_the_maximum():
    x = burst(0.5, 3.0, 4.0)
    found = detect_utterances(x, options=VadOptions(max_utterance_s=1.0))
    assert found[0].truncated and found[0].duration_s == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("bad", [dict(hangover_s=0), dict(start_s=0.5, start_window_s=0.2), dict(floor_percentile=120)])
def test_vad_options_are_checked(bad):
    with pytest.raises(ValueError):
        VadOptions(**bad)
