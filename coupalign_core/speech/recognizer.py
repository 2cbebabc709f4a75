"""Speech to command text, offline: pocketsphinx restricted to the command grammar, or free speech.

::

    from coupalign_core.speech import Transcriber
    transcriber = Transcriber()                      # the grammar of every registered world
    t = transcriber.transcribe_file("command.wav")   # any WAV rate, channels and sample format
    t.is_command, t.text, t.confidence               # True, "pick up the red circle", 0.93

:meth:`Transcriber.transcribe` finds the speech in a recording first (``speech.vad``): silence or
noise alone gives no command (``is_command`` False, ``reason`` says why), and the recogniser only
sees the speech. With ``mode="grammar"`` (the default) pocketsphinx searches only the sentences of
the command grammar (``speech.worlds``); a word the pronunciation dictionary lacks, or (given a
``vocabulary``) one the model cannot ground, is vetoed before the grammar is compiled. With
``mode="free"`` it uses its general en-US language model, for dictation or for finding out what a
user said that the grammar does not cover; its text is not restricted to anything.

``confidence`` is the mean posterior probability of the recognised words (fillers and silences
left out), from the decoder's word lattice: how sure the recogniser is of each word against the
alternatives the search kept. A result below ``min_confidence`` is not a command.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .audio import SAMPLE_RATE, load_audio, resample, to_pcm16
from .grammar import PAUSE, Grammar
from .vad import VadOptions, detect_utterances

MODES = ("grammar", "free")
DITHER_SEED = 1  # one input, one result
NON_WORDS = frozenset({"<s>", "</s>", "<sil>", "[NOISE]", "[BREATH]", "[COUGH]", "[SMACK]", "[UH]", "[UM]", "NULL",
                       PAUSE})
SILENCE_PHONE = "SIL"
# Words the grammar needs that the dictionary spells only as parts: "leftmost" is "left" + "most".
MIN_PART_LETTERS = 3


@dataclass(frozen=True)
class RecognizerOptions:
    mode: str = "grammar"  # one of MODES
    worlds: tuple[str, ...] = ()  # the worlds whose descriptions the grammar covers; () = every registered one
    # "the uh red circle", "the the red circle": in the grammar, at several times the search (docs/speech.md)
    inner_hesitations: bool = False
    min_confidence: float = 0.0  # results below it are no command
    # RMS of white noise added before decoding (-60 dBFS): digital silence, or the near-silence of a
    # synthesiser or a muted input, is unlike any silence the acoustic model was trained on
    noise_floor: float = 1e-3
    vad: VadOptions = field(default_factory=VadOptions)
    hmm: Optional[str] = None  # acoustic model folder (default: pocketsphinx's en-US)
    dictionary: Optional[str] = None  # pronunciation dictionary (default: pocketsphinx's CMUdict)
    language_model: Optional[str] = None  # free mode only (default: pocketsphinx's en-US model)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown recognition mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not 0.0 <= self.noise_floor < 0.1:
            raise ValueError(f"noise_floor must be in [0, 0.1), got {self.noise_floor}")
        if not 0.0 <= self.min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {self.min_confidence}")


@dataclass(frozen=True)
class WordTiming:
    word: str
    start_s: float
    end_s: float
    confidence: float


@dataclass(frozen=True)
class Transcript:
    """One recognition: the command's text, or why there is none."""

    text: str  # the recognised words ("" when nothing was recognised)
    confidence: float  # mean word posterior in [0, 1]; 0 without words
    reason: str = ""  # "" for a command; else why it is none ("no speech", "nothing in the grammar matched", ...)
    words: tuple[WordTiming, ...] = ()
    start_s: float = 0.0  # of the decoded speech, in the input
    end_s: float = 0.0
    audio_s: float = 0.0  # length of the whole input
    decode_s: float = 0.0  # wall time of the recogniser (VAD and resampling excluded)

    @property
    def is_command(self) -> bool:
        return bool(self.text) and not self.reason

    def to_dict(self) -> dict[str, Any]:
        return {"command": self.is_command, "text": self.text, "confidence": round(self.confidence, 4),
                "reason": self.reason, "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3),
                "audio_s": round(self.audio_s, 3), "decode_s": round(self.decode_s, 4),
                "words": [{"word": w.word, "start_s": round(w.start_s, 3), "end_s": round(w.end_s, 3),
                           "confidence": round(w.confidence, 4)} for w in self.words]}


def no_command(reason: str, audio_s: float = 0.0) -> Transcript:
    return Transcript("", 0.0, reason, audio_s=audio_s)


def vocabulary_filter(vocabulary: frozenset[str]) -> Callable[[str], bool]:
    """Keeps a word the grounding gate would not reject: a neutral word or one of ``vocabulary``."""
    from ..data.language.text import words as split_words
    from ..inference.grounding_vocabulary import NEUTRAL_WORDS

    def keep(word: str) -> bool:
        return all(w in NEUTRAL_WORDS or w in vocabulary for w in split_words(word))

    return keep


class Transcriber:
    """A pocketsphinx decoder set up once (grammar compiled, dictionary checked); thread safe."""

    def __init__(self, options: Optional[RecognizerOptions] = None, *, grammar: Optional[Grammar] = None,
                 vocabulary: Optional[frozenset[str]] = None) -> None:
        import pocketsphinx

        self.options = options or RecognizerOptions()
        self._lock = threading.Lock()
        o = self.options
        # dither: digital silence (exact zeros, as synthesisers and some drivers write) has no
        # log-energy; fsgusefiller off: a filler loop at every grammar state multiplies the search
        # (silence before and after the words is kept by the voice-activity padding and dither)
        config = pocketsphinx.Config(loglevel="FATAL", dither=True, seed=DITHER_SEED, fsgusefiller=False,
                                     )
        if o.hmm:
            config["hmm"] = _existing(o.hmm, "acoustic model folder")
        if o.dictionary:
            config["dict"] = _existing(o.dictionary, "pronunciation dictionary")
        if o.mode == "free":
            if o.language_model:
                config["lm"] = _existing(o.language_model, "language model")
        else:
            config["lm"] = None
        self._decoder = pocketsphinx.Decoder(config)
        self.grammar: Optional[Grammar] = None
        self.compounds: dict[str, str] = {}  # words added to the dictionary from their parts -> phones
        if o.mode == "grammar":
            from .worlds import grammar_for

            grammar = grammar or grammar_for(o.worlds or None, inner_hesitations=o.inner_hesitations)
            self.compounds = {w: p for w in sorted(grammar.words()) if self._decoder.lookup_word(w) is None
                              for p in [compound_pronunciation(w, self._decoder.lookup_word)] if p is not None}
            for word, phones in self.compounds.items():
                self._decoder.add_word(word, phones, update=False)
            self._decoder.add_word(PAUSE, SILENCE_PHONE, update=True)  # update: rebuild the search's lexicon once
            grammar = grammar.veto(lambda w: self._decoder.lookup_word(w) is not None)
            if vocabulary is not None:
                grammar = grammar.veto(vocabulary_filter(vocabulary))
            self._decoder.add_jsgf_string("commands", grammar.to_jsgf())
            self._decoder.activate_search("commands")
            self.grammar = grammar
        self._frame_s = 1.0 / float(self._decoder.config["frate"])

    @property
    def vetoed(self) -> frozenset[str]:
        """Words the grammar lost to the dictionary or the vocabulary (they can never be recognised)."""
        return self.grammar.vetoed if self.grammar is not None else frozenset()

    # ---- decoding -------------------------------------------------------------------------------
    def recognize(self, samples: np.ndarray, offset_s: float = 0.0) -> Transcript:
        """Decode (N,) float32 16 kHz mono samples as one utterance, without voice-activity detection."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        audio_s = x.size / SAMPLE_RATE
        if x.size < SAMPLE_RATE // 10:
            return no_command("no speech (under 0.1 s of audio)", audio_s)
        if self.options.noise_floor > 0:  # the same noise for the same input: one input, one result
            x = x + np.random.default_rng(DITHER_SEED).normal(0.0, self.options.noise_floor, x.size).astype(np.float32)
        with self._lock:
            start = time.perf_counter()
            d = self._decoder
            d.start_utt()
            d.process_raw(to_pcm16(x).tobytes(), no_search=False, full_utt=True)
            d.end_utt()
            hyp = d.hyp()
            words = tuple(
                WordTiming(s.word, offset_s + s.start_frame * self._frame_s,
                           offset_s + (s.end_frame + 1) * self._frame_s, float(min(max(s.prob, 0.0), 1.0)))
                for s in (d.seg() if hyp is not None else ()) if s.word not in NON_WORDS
            )
            decode_s = time.perf_counter() - start
        if hyp is None or not words:
            what = "nothing in the grammar matched" if self.grammar is not None else "no words recognised"
            return Transcript("", 0.0, what, audio_s=audio_s, decode_s=decode_s,
                              start_s=offset_s, end_s=offset_s + audio_s)
        words = tuple(WordTiming(_clean(w.word), w.start_s, w.end_s, w.confidence) for w in words)
        text = " ".join(w.word for w in words)
        confidence = float(np.mean([w.confidence for w in words]))
        reason = ""
        if confidence < self.options.min_confidence:
            reason = f"confidence {confidence:.2f} below {self.options.min_confidence:.2f}"
        return Transcript(text, confidence, reason, words, offset_s, offset_s + audio_s, audio_s, decode_s)

    def transcribe(self, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Transcript:
        """One command from a whole recording ((N,) or (N, C) float): the speech from the first
        utterance's start to the last one's end, decoded as one; no command without speech."""
        from .audio import to_mono

        x = resample(to_mono(samples), rate, SAMPLE_RATE)
        audio_s = x.size / SAMPLE_RATE
        utterances = detect_utterances(x, SAMPLE_RATE, self.options.vad)
        if not utterances:
            return no_command("no speech", audio_s)
        first, last = utterances[0], utterances[-1]
        speech = x[int(round(first.start_s * SAMPLE_RATE)):int(round(last.end_s * SAMPLE_RATE))]
        t = self.recognize(speech, offset_s=first.start_s)
        return Transcript(t.text, t.confidence, t.reason, t.words, t.start_s, t.end_s, audio_s, t.decode_s)

    def transcribe_file(self, path: str | os.PathLike[str]) -> Transcript:
        """:meth:`transcribe` of a WAV file (``speech.audio.AudioError`` when it cannot be read)."""
        return self.transcribe(load_audio(path), SAMPLE_RATE)

    def transcribe_many(self, recordings: Sequence[np.ndarray], rate: int = SAMPLE_RATE) -> list[Transcript]:
        return [self.transcribe(r, rate) for r in recordings]


def compound_pronunciation(word: str, lookup: Callable[[str], Optional[str]]) -> Optional[str]:
    """The phones of ``word`` as two dictionary words ("leftmost" = "left" + "most"), or None."""
    for cut in range(MIN_PART_LETTERS, len(word) - MIN_PART_LETTERS + 1):
        head, tail = lookup(word[:cut]), lookup(word[cut:])
        if head and tail:
            return f"{head} {tail}"
    return None


def _clean(word: str) -> str:
    """A dictionary entry's spelling: alternative pronunciations are written "word(2)"."""
    return word.split("(", 1)[0]


def _existing(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    return path
