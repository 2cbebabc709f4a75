"""Recognition with pocketsphinx: silence and noise give no command; espeak-ng's sentences come back.

The spoken tests need Debian's espeak-ng (scripts/setup.sh installs it) and skip without it.
"""

import json

import numpy as np
import pytest

pytest.importorskip("pocketsphinx")

from coupalign_core.cli.main import main  # noqa: E402
from coupalign_core.speech import RecognizerOptions, Transcriber, write_wav  # noqa: E402
from coupalign_core.speech.audio import SAMPLE_RATE, resample  # noqa: E402
from coupalign_core.speech.synthesis import add_noise, espeak_available, synthesize  # noqa: E402

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed (scripts/setup.sh)")

# Plain and command-phrased sentences of the 2D world (leftmost: spelt from "left" + "most").
SENTENCES = (
    "the leftmost red box",
    "could you pick up the second red circle from the left please",
    "the small blue star above the green square",
)


@pytest.fixture(scope="module")
def transcriber():
    return Transcriber()


def test_two_seconds_of_silence_or_noise_give_no_command(transcriber):
    rng = np.random.default_rng(0)
    for audio in (np.zeros(2 * SAMPLE_RATE, np.float32), rng.normal(0, 0.05, 2 * SAMPLE_RATE).astype(np.float32)):
        t = transcriber.transcribe(audio)
        assert not t.is_command and t.text == "" and t.reason == "no speech"
    assert not transcriber.transcribe(np.zeros(0, np.float32)).is_command


def test_words_the_dictionary_lacks_are_spelt_from_their_parts_or_vetoed(transcriber):
    assert {"leftmost", "rightmost", "topmost", "bottommost"} <= set(transcriber.compounds)
    assert "leftmost" not in transcriber.vetoed
    assert transcriber.grammar is not None and "leftmost" in transcriber.grammar.words()
    vetoed = Transcriber(vocabulary=frozenset({"red", "circle", "box"}))
    assert vetoed.grammar is not None and "blue" in vetoed.vetoed and vetoed.grammar.matches("the red circle")
    assert not vetoed.grammar.matches("the blue circle")


@needs_espeak
@pytest.mark.parametrize("sentence", SENTENCES)
def test_spoken_sentences_come_back_word_for_word(transcriber, sentence):
    t = transcriber.transcribe(synthesize(sentence, voice="en-us", speed=160))
    assert t.is_command and t.text == sentence
    assert 0.0 < t.confidence <= 1.0 and t.decode_s > 0
    assert [w.word for w in t.words] == sentence.split()
    assert all(a.end_s <= b.start_s + 1e-6 for a, b in zip(t.words, t.words[1:]))


@needs_espeak
def test_stereo_44k_clipped_and_padded_recordings_are_recognised(tmp_path, transcriber):
    sentence = SENTENCES[0]
    speech = synthesize(sentence, voice="en-us", speed=160)
    at_44k = resample(speech, SAMPLE_RATE, 44100)
    silence = np.zeros(44100, np.float32)
    loud = np.clip(3.0 * np.concatenate([silence, at_44k, silence]), -1, 1)  # clipped, 1 s pauses around it
    path = tmp_path / "stereo.wav"
    write_wav(path, np.stack([loud, 0.5 * loud], axis=1), 44100)
    t = transcriber.transcribe_file(path)
    assert t.text == sentence and t.start_s > 0.7 and t.audio_s == pytest.approx(at_44k.size / 44100 + 2, abs=0.01)


@needs_espeak
def test_noisy_speech_is_recognised(transcriber):
    sentence = SENTENCES[2]
    noisy = add_noise(synthesize(sentence, voice="en-us", speed=160), 20.0, np.random.default_rng(1))
    assert transcriber.transcribe(noisy).text == sentence


@needs_espeak
def test_speech_outside_the_grammar_is_not_taken_for_a_wrong_command(transcriber):
    t = transcriber.transcribe(synthesize("the weather is lovely today", voice="en-us", speed=160))
    assert not t.is_command or t.text != "the weather is lovely today"


@needs_espeak
def test_the_cli_prints_the_command_as_text_or_json(tmp_path, capsys):
    path = tmp_path / "cmd.wav"
    write_wav(path, synthesize(SENTENCES[0], voice="en-us", speed=160))
    silent = tmp_path / "silent.wav"
    write_wav(silent, np.zeros(SAMPLE_RATE, np.float32), 8000)
    assert main(["transcribe", str(path)]) == 0
    assert capsys.readouterr().out.strip() == SENTENCES[0]
    assert main(["transcribe", "--json", str(path), str(silent)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert lines[0]["command"] and lines[0]["text"] == SENTENCES[0] and lines[0]["words"]
    assert not lines[1]["command"] and lines[1]["reason"] == "no speech"
    assert main(["transcribe", str(silent)]) == 1


def test_the_cli_refuses_bad_files_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"definitely not audio")
    assert main(["transcribe", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a WAV file" in err[0]
    assert main(["transcribe", str(tmp_path / "missing.wav")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_options_are_checked():
    with pytest.raises(ValueError, match="recognition mode"):
        RecognizerOptions(mode="whisper")
    with pytest.raises(ValueError, match="min_confidence"):
        RecognizerOptions(min_confidence=2.0)


@needs_espeak
def test_the_front_end_turns_a_stream_into_one_command_per_utterance(transcriber):
    from coupalign_core.speech.frontend import SpeechFrontEnd

    heard = []
    rate = 22050
    front = SpeechFrontEnd(transcriber, lambda text, t: heard.append(text), rate=rate)
    pause = np.zeros(rate, np.float32)
    stream = np.concatenate([pause, synthesize(SENTENCES[0], rate=rate), pause,
                             0.05 * np.random.default_rng(0).normal(size=rate // 2).astype(np.float32),  # a noise burst
                             pause, synthesize(SENTENCES[2], rate=rate), pause])
    front.start()
    try:
        for i in range(0, stream.size, 2205):  # 100 ms chunks, as a driver sends them
            front.push(stream[i:i + 2205])
        front.flush()
    finally:
        front.stop(drain=True)
    snap = front.stats.snapshot()
    assert heard == [SENTENCES[0], SENTENCES[2]]
    assert snap["commands"] == 2 and snap["utterances"] == 2 + sum(snap["rejects"].values())
    assert snap["latency_ms_p50"] > 0
