"""The grounding-vocabulary gate: a command the model cannot read is reported not found, before any mask.

A referring segmentation model always produces *some* mask; its presence head is trained on the
sentences of its world, so for text unlike anything it saw ("?!.,;:", an emoji, "asdfgh qwerty",
"le cercle rouge à gauche") its score says little. The gate decides from the words alone:

* The **grounding vocabulary** is the set of words of the training sentences that had a target
  (stored with the weights by the trainer; for a synthetic-world model trained before that, the
  synthetic generator's vocabulary; see :func:`vocabulary_from_checkpoint`).
* A command's words (``data.language.words``: lower case, punctuation, emoji and invisible
  characters dropped) are **neutral** (function words and the command words people wrap a
  description in: "the", "please", "pick up", "um"; :data:`NEUTRAL_WORDS`), **known** (in the
  vocabulary) or **unknown**.
* The command is **rejected** when it has no known word, or when its share of unknown words (of its
  known and unknown words together) is above ``max_unknown_share``. The default, 0, rejects any
  unknown word: a typo ("the red circel"), a colour or a thing the world does not have ("the
  crimson circle", "the red ball") or a garbled speech result must not make a robot move, and a
  model cannot ground a word it never saw. ``max_unknown_share=0.49`` rejects only commands of
  which at least half is unknown (then "the pink star on the left", one unknown word in three, is
  the model's to reject).

Rejected commands come back with ``found=False``, score 0, an empty mask and a ``reason`` the node
or the CLI can log ("no word the model can ground (no content words)", "unknown words: pink").
Whatever passes the gate is still judged by the model's presence score ("the red star" when there
is none).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Sequence, TypeVar

import numpy as np

from ..data.language.phrasing import HELD_OUT_WORDS, TRAINING_WORDS
from ..data.language.text import words as split_words

log = logging.getLogger(__name__)

DEFAULT_MAX_UNKNOWN_SHARE = 0.0  # any unknown word rejects (see the module docstring)

# Function words: they carry no grounding and are never "unknown". Words that change a description's
# meaning ("not", "no", "or", "but") are not among them: a model that never saw them cannot honour them.
# Command words come from the phrasing lists (data.language.phrasing), the held-out ones included: a
# user may say "bring me".
_FUNCTION_WORDS = frozenset("""
a an the this that these those it its one ones thing things object objects item items of to in on at by for from
with and is are was be been can could would will should shall may might must do does did have has had
i me my you your we us our he she they them please thanks thank yes just also very really there here
what which who where whereis wheres whats thats theres its im id ill ive youre hey robot okay ok so now then well
um uh er hmm erm uhh mm oh like
""".split())
NEUTRAL_WORDS: frozenset[str] = _FUNCTION_WORDS | TRAINING_WORDS.all_words() | HELD_OUT_WORDS.all_words()


@dataclass(frozen=True)
class GroundingVocabulary:
    """The words a model was trained to ground, and where that list came from."""

    words: frozenset[str]
    source: str  # e.g. "training sentences with a target (data/x, split train)"

    def to_state(self) -> dict[str, Any]:
        """What a checkpoint stores under ``"grounding_vocabulary"``."""
        return {"words": sorted(self.words), "source": self.source}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> "GroundingVocabulary":
        words = state.get("words")
        if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) for w in words):
            raise ValueError("a grounding_vocabulary entry needs 'words', a list of strings")
        return cls(frozenset(words), str(state.get("source", "unknown")))

    @classmethod
    def from_refs(cls, refs: Iterable[Mapping[str, Any]], source: str) -> "GroundingVocabulary":
        """The words of every sentence of a ref that has a target (refer layout: ``ann_id`` != -1 and
        the sentence not marked ``no_target``): the words the model learnt to turn into a mask.
        Words that only no-target sentences use ("pink" in an out-of-domain negative) stay out."""
        found: set[str] = set()
        for ref in refs:
            if int(ref.get("ann_id", -1)) == -1:
                continue
            for sentence in ref.get("sentences", ()):
                if not sentence.get("no_target", False):
                    found.update(split_words(str(sentence.get("raw") or sentence.get("sent") or "")))
        return cls(frozenset(found), source)

    def union(self, other: Optional["GroundingVocabulary"]) -> "GroundingVocabulary":
        if other is None:
            return self
        sources = dict.fromkeys(self.source.split("; ") + other.source.split("; "))
        return GroundingVocabulary(self.words | other.words, "; ".join(sources))


@dataclass(frozen=True)
class GateVerdict:
    accepted: bool
    reason: str  # "" when accepted
    known: tuple[str, ...]  # the command's known (non-neutral) words
    unknown: tuple[str, ...]  # its unknown words


R = TypeVar("R")


@dataclass(frozen=True)
class GroundingGate:
    """:meth:`check` one command; :meth:`screen` a batch of Segmenter results (see the module docstring)."""

    vocabulary: GroundingVocabulary
    max_unknown_share: float = DEFAULT_MAX_UNKNOWN_SHARE

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_unknown_share < 1.0:
            raise ValueError(f"max_unknown_share must be in [0, 1), got {self.max_unknown_share}")

    def check(self, text: str) -> GateVerdict:
        content = [w for w in split_words(text) if w not in NEUTRAL_WORDS]
        known = tuple(w for w in content if w in self.vocabulary.words)
        unknown = tuple(w for w in content if w not in self.vocabulary.words)
        if not known:
            what = f"unknown words: {', '.join(dict.fromkeys(unknown))}" if unknown else "no content words"
            return GateVerdict(False, f"no word the model can ground ({what})", known, unknown)
        if len(unknown) > self.max_unknown_share * len(content):
            return GateVerdict(False, f"unknown words: {', '.join(dict.fromkeys(unknown))}", known, unknown)
        return GateVerdict(True, "", known, unknown)

    def screen(self, texts: Sequence[str], results: list[R]) -> list[R]:
        """``results`` (SegmentationResult-like dataclasses with mask, score, found, bbox, reason) with
        every rejected command's result replaced by not found: score 0, empty mask, its reason."""
        out = list(results)
        for i, text in enumerate(texts):
            verdict = self.check(text)
            if not verdict.accepted:
                r: Any = out[i]
                out[i] = dataclasses.replace(r, mask=np.zeros_like(r.mask), score=0.0, found=False, bbox=None,
                                             reason=verdict.reason)
        return out


def training_vocabulary(train_set: Any, inherited: Optional[GroundingVocabulary] = None) -> GroundingVocabulary:
    """What the trainer stores: the words of ``train_set``'s (a ReferDataset) target sentences, with
    those of the model it started from (``train.init_from``)."""
    source = f"training sentences with a target ({train_set.data_root}, {train_set.dataset} {train_set.split})"
    return GroundingVocabulary.from_refs(train_set.refs, source).union(inherited)


def vocabulary_from_checkpoint(state: Mapping[str, Any]) -> Optional[GroundingVocabulary]:
    """The vocabulary a checkpoint (or release file) stores; for a synthetic-world model that stores
    none (trained before vocabularies were stored), the synthetic generator's; else None."""
    stored = state.get("grounding_vocabulary")
    if stored is not None:
        return GroundingVocabulary.from_state(stored)
    train_config = state.get("train_config")
    data = train_config.get("data") if isinstance(train_config, Mapping) else None
    if isinstance(data, Mapping) and data.get("dataset") == "synthetic":
        from ..data.synthetic.vocabulary import generator_words

        return GroundingVocabulary(generator_words(), "synthetic generator vocabulary (the model stores none)")
    return None


def gate_for_checkpoint(state: Mapping[str, Any], path: Any = "") -> Optional[GroundingGate]:
    """The gate a Segmenter built from checkpoint ``state`` applies (None, with a warning, when the
    checkpoint names no vocabulary: the presence score alone then judges every command)."""
    vocabulary = vocabulary_from_checkpoint(state)
    if vocabulary is None:
        log.warning("%s stores no grounding vocabulary and was not trained on the synthetic world: commands are "
                    "judged by the presence score alone (no out-of-domain gate)", path or "the checkpoint")
        return None
    log.info("grounding-vocabulary gate: %d words (%s)", len(vocabulary.words), vocabulary.source)
    return GroundingGate(vocabulary)
