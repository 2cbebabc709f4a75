"""Command phrasing and out-of-domain negatives applied to one image's refs, for any generator.

A generator hands over its refs in the writer's form (``{"ann_id", "category_id", "sentences": [{"raw",
"sent", "kind", "no_target", "query"}]}``) together with its :class:`~.negatives.WorldWords`;
:func:`augment_image_refs` returns them with

* each sentence, with probability ``phrasing_fraction``, rewritten as a command (:mod:`.phrasing`):
  targets and in-domain no-targets alike, so the command words say nothing about presence; the
  sentence gains ``"phrasing": {"style", "plain", "added"}`` and keeps its kind and query;
* out-of-domain no-target refs appended (:mod:`.negatives`), an expected ``ood_negative_fraction`` of
  all refs: one sentence each, kind ``"out_of_domain"``, ``"negative"`` naming the negative's kind,
  ``ann_id`` the no-target id. The English-looking ones are phrased like any other sentence.

Draws come from the ``rng`` given, which a writer seeds per image from its own stream (so the
scenes and their plain sentences stay the same for any fraction).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from .negatives import NEGATIVE_KINDS, TRAINING_MIX, Pool, WorldWords, make_negative
from .phrasing import TRAINING_WORDS, PhrasingWords, phrase
from .text import normalise

OUT_OF_DOMAIN_KIND = "out_of_domain"
PHRASED_NEGATIVE_KINDS = ("unknown_color", "unknown_category", "other_scene")  # English: phrased like any sentence


@dataclass(frozen=True)
class LanguageAugmentation:
    """How much of a world's language becomes commands and out-of-domain negatives (0 and 0: none)."""

    phrasing_fraction: float = 0.0  # share of sentences phrased as commands
    ood_negative_fraction: float = 0.0  # expected share of all refs that are out-of-domain negatives
    phrasing_words: PhrasingWords = TRAINING_WORDS
    pool: Pool = "train"
    mix: dict[str, float] = field(default_factory=lambda: dict(TRAINING_MIX))  # negative kind -> weight
    max_length: Optional[int] = None  # words + punctuation of a phrased sentence (phrasing.text_length)

    def __post_init__(self) -> None:
        if not 0.0 <= self.phrasing_fraction <= 1.0:
            raise ValueError(f"phrasing_fraction must be in [0, 1], got {self.phrasing_fraction}")
        if not 0.0 <= self.ood_negative_fraction < 1.0:
            raise ValueError(f"ood_negative_fraction must be in [0, 1), got {self.ood_negative_fraction}")
        unknown = sorted(set(self.mix) - set(NEGATIVE_KINDS))
        if unknown or not any(w > 0 for w in self.mix.values()):
            raise ValueError(f"mix must weigh some of {NEGATIVE_KINDS}; got {self.mix}")

    @property
    def active(self) -> bool:
        return self.phrasing_fraction > 0 or self.ood_negative_fraction > 0


def phrase_sentence(rng: np.random.Generator, sentence: dict[str, Any], aug: LanguageAugmentation) -> dict[str, Any]:
    """``sentence`` (a writer sentence dict) rewritten as a command, or unchanged when none fits."""
    phrased = phrase(rng, sentence["sent"], words=aug.phrasing_words, max_length=aug.max_length)
    if phrased is None:
        return sentence
    return {**sentence, "raw": phrased.raw, "sent": normalise(phrased.raw),
            "phrasing": {"style": phrased.style, "plain": phrased.plain, "added": list(phrased.added)}}


def augment_image_refs(
    rng: np.random.Generator,
    specs: list[dict[str, Any]],
    world: WorldWords,
    aug: LanguageAugmentation,
    *,
    no_target_ann_id: int,
    category_id: Callable[[Optional[str]], int],
) -> list[dict[str, Any]]:
    """One image's refs with phrasing and negatives (see the module docstring).

    ``category_id(word)``: the refer ``category_id`` of a negative that names the world category
    ``word`` (None when it names none: the generator decides what such a ref carries).
    """
    out = []
    for spec in specs:
        sentences = [phrase_sentence(rng, s, aug) if rng.random() < aug.phrasing_fraction else s
                     for s in spec["sentences"]]
        out.append({**spec, "sentences": sentences})
    expected = len(specs) * aug.ood_negative_fraction / (1.0 - aug.ood_negative_fraction)
    count = int(expected) + int(rng.random() < expected - int(expected))
    plain = [s["sent"] for spec in specs for s in spec["sentences"] if not s.get("no_target")]
    kinds = [k for k in NEGATIVE_KINDS if aug.mix.get(k, 0) > 0]
    weights = np.array([aug.mix[k] for k in kinds], dtype=float)
    for _ in range(count):
        kind = kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]
        raw, category = make_negative(rng, kind, world, plain, pool=aug.pool)
        sentence: dict[str, Any] = {"raw": raw, "sent": normalise(raw), "kind": OUT_OF_DOMAIN_KIND,
                                    "no_target": True, "query": None, "negative": kind}
        if kind in PHRASED_NEGATIVE_KINDS and rng.random() < aug.phrasing_fraction:
            sentence = phrase_sentence(rng, sentence, aug)
        out.append({"ann_id": no_target_ann_id, "category_id": category_id(category), "sentences": [sentence]})
    return out
