"""Plain referring expressions phrased as the commands people give a robot.

A generator writes "the second red circle from the left"; a person says "um could you pick up the
second red circle from the left please", types "Grab the second red circle from the left!" or asks
"where is the second red circle from the left?". :func:`phrase` wraps a plain sentence in such
words, deterministically for a given ``numpy`` generator::

    rng = np.random.default_rng([seed, image_index, stream])
    p = phrase(rng, "the second red circle from the left", max_length=15)
    p.raw     # "Okay, could you grab the second red circle from the left?"
    p.plain   # "the second red circle from the left" (normalised)

The meaning is never touched: the plain sentence's words stay, in their order, and the words added
around or between them (``PhrasedSentence.added``) come only from :class:`PhrasingWords`, which
names no colour, shape, size or place. Removing the added words gives the plain sentence back
(:meth:`PhrasedSentence.without_added`), so a sentence whose query resolved to exactly its target
still does.

Two word lists: :data:`TRAINING_WORDS` (what generators use) and :data:`HELD_OUT_WORDS` (verbs,
polite words and fillers no generator uses), which measures whether a model learnt "ignore the
command around the description" or only the training list.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from .text import normalise

STYLES: tuple[str, ...] = ("typed", "speech")  # punctuation and capitals, or lower case and none
# Chances of each part of a phrasing (independent draws; at least one part is always added).
VERB_PROB = 0.8  # an imperative verb or a question in front
POLITE_PREFIX_PROB = 0.3
POLITE_SUFFIX_PROB = 0.2
FILLER_PROB = 0.3  # an opener or a hesitation in front
INNER_FILLER_PROB = 0.15  # a hesitation between two words of the description (speech only)
REPEAT_PROB = 0.1  # "the the red circle" (speech only)
QUESTION_SHARE = 0.2  # of the leading phrases, the share of questions
REQUEST_SHARE = 0.1  # ... and of the rest, of requests ("i want")
REPEATABLE = ("the", "a")  # words a speaker repeats while thinking (function words only)


@dataclass(frozen=True)
class PhrasingWords:
    """Words a phrasing may add; none of them may say what something looks like or where it is."""

    verbs: tuple[str, ...]  # imperatives that take the description as object ("pick up ...")
    requests: tuple[str, ...]  # "i want ...": a lead that takes no polite prefix
    questions: tuple[str, ...]  # "where is ...?"
    polite_prefixes: tuple[str, ...]  # before a verb ("could you ...")
    polite_suffixes: tuple[str, ...]  # at the end ("... please")
    openers: tuple[str, ...]  # in front ("okay so", "hey robot")
    hesitations: tuple[str, ...]  # also between two words of the description ("um")

    def all_words(self) -> frozenset[str]:
        """Every single word these phrases add (normalised)."""
        phrases = (*self.verbs, *self.requests, *self.questions, *self.polite_prefixes, *self.polite_suffixes,
                   *self.openers, *self.hesitations)
        return frozenset(w for p in phrases for w in normalise(p).split()) | frozenset(REPEATABLE)


TRAINING_WORDS = PhrasingWords(
    verbs=("pick up", "grab", "point at", "go to", "find", "show me", "get", "take", "touch", "select",
           "move to", "hand me", "give me", "fetch", "highlight", "segment"),
    requests=("i want", "i need", "i am looking for"),
    questions=("where is", "where's", "can you find", "can you see", "which one is", "do you see"),
    polite_prefixes=("please", "could you", "can you", "would you", "could you please", "can you please",
                     "would you please", "i need you to"),
    polite_suffixes=("please", "thanks", "thank you", "for me", "for me please"),
    openers=("okay", "okay so", "so", "alright", "well", "ok", "now", "hey robot"),
    hesitations=("um", "uh", "hmm", "er"),
)

HELD_OUT_WORDS = PhrasingWords(
    verbs=("bring me", "tap", "reach for", "aim at", "hold", "locate", "choose", "lift", "pass me", "grasp"),
    requests=("i would like", "let me have"),
    questions=("where exactly is", "could you locate", "have you seen"),
    polite_prefixes=("kindly", "i would like you to", "go ahead and"),
    polite_suffixes=("cheers", "if you can", "thanks a lot"),
    openers=("hey there", "oh", "listen", "alright then"),
    hesitations=("erm", "uhh", "mm"),
)
# Sentences that are clauses rather than descriptions take no verb in front ("grab there is a ...").
CLAUSE_STARTS: tuple[str, ...] = ("there is", "there are", "look at")


@dataclass(frozen=True)
class PhrasedSentence:
    raw: str  # as said or typed (the refer ``raw`` field)
    plain: str  # the normalised plain sentence inside it
    added: tuple[int, ...]  # positions, in normalise(raw).split(), of the words the phrasing added
    style: str  # one of STYLES

    def without_added(self) -> str:
        """The phrased sentence with the added words removed: equals :attr:`plain`."""
        drop = set(self.added)
        return " ".join(w for i, w in enumerate(normalise(self.raw).split()) if i not in drop)


def _choice(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def text_length(raw: str) -> int:
    """Words plus punctuation marks: a bound on the WordPiece tokens of a sentence of whole words."""
    return len(raw.split()) + sum(not ch.isalnum() and not ch.isspace() for ch in raw)


def phrase(
    rng: np.random.Generator, sentence: str, *, words: PhrasingWords = TRAINING_WORDS,
    max_length: Optional[int] = None,
) -> Optional[PhrasedSentence]:
    """``sentence`` (a plain description) as a command; None when no phrasing fits ``max_length``
    (:func:`text_length`; the model's token budget, so that no word of the description is cut).

    The draws depend only on ``rng``'s state, so one seed gives one phrasing.
    """
    plain = normalise(sentence).split()
    if not plain:
        raise ValueError(f"nothing to phrase in {sentence!r}")
    clause = any(" ".join(plain).startswith(c + " ") for c in CLAUSE_STARTS)
    style = STYLES[int(rng.integers(len(STYLES)))]
    lead_kind = "question" if rng.random() < QUESTION_SHARE else "request" if rng.random() < REQUEST_SHARE \
        else "verb"
    leads = {"question": words.questions, "request": words.requests, "verb": words.verbs}[lead_kind]
    lead = _choice(rng, leads) if rng.random() < VERB_PROB and not clause else None
    polite = _choice(rng, words.polite_prefixes) if lead and lead_kind == "verb" \
        and rng.random() < POLITE_PREFIX_PROB else None
    suffix = _choice(rng, words.polite_suffixes) if rng.random() < POLITE_SUFFIX_PROB else None
    opener = _choice(rng, words.openers + words.hesitations) if rng.random() < FILLER_PROB else None
    inner_at = int(rng.integers(1, len(plain))) if len(plain) > 1 else None
    inner = _choice(rng, words.hesitations) if style == "speech" and inner_at is not None \
        and rng.random() < INNER_FILLER_PROB else None
    repeat_at = [i for i, w in enumerate(plain) if w in REPEATABLE]
    repeat = repeat_at[int(rng.integers(len(repeat_at)))] if repeat_at and style == "speech" \
        and rng.random() < REPEAT_PROB else None
    if not any((lead, polite, suffix, opener, inner, repeat is not None)):  # a phrasing always adds something
        if clause:
            opener = _choice(rng, words.openers + words.hesitations)
        else:
            lead, lead_kind = _choice(rng, words.verbs), "verb"
    capitalise = rng.random() < 0.7  # typed only
    statement_mark = "." if rng.random() < 0.6 else "!"
    # Optional parts, dropped in this order until the sentence fits.
    parts: dict[str, Any] = {"lead": lead, "polite": polite, "suffix": suffix, "opener": opener, "inner": inner,
                             "repeat": repeat}
    for drop in (None, "repeat", "inner", "opener", "suffix", "polite"):
        if drop is not None:
            parts[drop] = None
        if not any(v is not None for v in parts.values()):
            return None
        asks = (parts["lead"] and lead_kind == "question") or (
            parts["polite"] and parts["polite"].split()[0] in ("could", "can", "would"))
        raw, added = _compose(plain, parts, style, capitalise, "?" if asks else statement_mark, inner_at)
        if max_length is None or text_length(raw) <= max_length:
            return PhrasedSentence(raw=raw, plain=" ".join(plain), added=added, style=style)
    return None


def _compose(plain: list[str], parts: dict[str, Any], style: str, capitalise: bool, mark: str,
             inner_at: Optional[int]) -> tuple[str, tuple[int, ...]]:
    """Words in order, each marked added or not; typed style adds commas, a final mark and a capital."""
    typed = style == "typed"
    tokens: list[tuple[str, bool]] = []  # (text as written, added)

    def add(phrase_: Optional[str], comma: bool = False) -> None:
        if phrase_:
            pieces = phrase_.split()
            for k, piece in enumerate(pieces):
                last = k == len(pieces) - 1
                tokens.append((piece + ("," if typed and comma and last else ""), True))

    add(parts["opener"], comma=True)
    add(parts["polite"], comma=parts["polite"] == "please" and not parts["lead"])
    add(parts["lead"])
    for i, w in enumerate(plain):
        if parts["inner"] and i == inner_at:
            add(parts["inner"])
        if parts["repeat"] == i:
            tokens.append((w, True))
        tokens.append((w, False))
    if parts["suffix"]:
        if typed and tokens:
            tokens[-1] = (tokens[-1][0] + ",", tokens[-1][1])
        add(parts["suffix"])
    if typed:
        tokens[-1] = (tokens[-1][0] + mark, tokens[-1][1])
        if capitalise:
            first, is_added = tokens[0]
            tokens[0] = (first[:1].upper() + first[1:], is_added)
    raw = " ".join(t for t, _ in tokens)
    # "where's" normalises to one word: positions are counted on the normalised words
    added = tuple(i for i, (_, is_added) in enumerate(tokens) if is_added)
    return raw, added
