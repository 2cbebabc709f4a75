"""The synthetic world's words, and its hook into the shared phrasing and negatives (``data.language``).

:func:`generator_words` is every word the generator can write in a sentence that has a target:
the vocabulary a model trained only on this world can ground. It stands in for the words stored
with a model when a synthetic-world model predates stored vocabularies
(``inference.grounding_vocabulary``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import numpy as np

from ..language import LanguageAugmentation, WorldWords, augment_image_refs
from ..language.text import normalise
from . import expressions as ex
from .world import COLORS

# The writer draws phrasing and negatives from rng([seed, image index, LANGUAGE_STREAM]), a stream
# of its own: the scenes and the plain sentences are the same for any fraction.
LANGUAGE_STREAM = 0x1A46
# Words that only ``expressions.render_text`` and ``_no_location_text`` write inline (not in a constant).
_INLINE_WORDS = ("the", "only", "that", "is", "and", "colored", "in")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    if isinstance(value, (tuple, list, frozenset, set)):
        return [s for v in value for s in _strings(v)]
    return []


def template_words(sources: Any) -> frozenset[str]:
    """Every word of the strings nested in ``sources`` (dicts, tuples, sets), normalised, with
    template placeholders ("{N}", "{ord}") dropped."""
    words: set[str] = set()
    for text in _strings(sources):
        text = " ".join(w for w in text.split() if not ("{" in w or "}" in w))
        words.update(normalise(text).split())
    return frozenset(words)


@functools.lru_cache(maxsize=1)
def generator_words() -> frozenset[str]:
    """Every word of the generator's target sentences: templates (placeholders dropped), attribute
    and place words, and the few it writes inline."""
    sources = (ex.SHAPE_WORDS, ex.PLURALS, ex.SIZE_WORDS, ex.ORDINAL_WORDS, ex.EXTREME_TEMPLATES, ex.CENTER_TEMPLATES,
               ex.ORDINAL_TEMPLATES, ex.RELATION_WORDS, ex.RELATION_TEMPLATES, ex.LONG_ADVERBS,
               ex.LONG_EXTREME_TEMPLATES, ex.LONG_ORDINAL_TEMPLATES, ex.LONG_RELATION_TEMPLATES,
               ex.LONG_ATTRIBUTE_TEMPLATES, ex.LOCATION_WORDS, ex.DIRECTIONS, tuple(COLORS), _INLINE_WORDS)
    return template_words(sources)


@functools.lru_cache(maxsize=1)
def world_words() -> WorldWords:
    categories = {word: ex.PLURALS[word] for words in ex.SHAPE_WORDS.values() for word in words}
    return WorldWords(colors=frozenset(COLORS), categories=categories, known=generator_words())


def augment_specs(
    seed: int, index: int, specs: list[dict[str, Any]], aug: LanguageAugmentation, *, no_target_ann_id: int,
    category_ids: dict[str, int], words: Optional[WorldWords] = None, lexicon: ex.Lexicon = ex.SHAPES_LEXICON,
) -> list[dict[str, Any]]:
    """Image ``index``'s ref specs with the world's phrasing and out-of-domain negatives.

    A negative that names a category ("the pink triangle") carries that category; one that names
    none carries a category drawn from the same stream (the refer layout wants some category).
    Another world passes its ``words`` and ``lexicon`` (by default the 2D world's).
    """
    if not aug.active:
        return specs
    rng = np.random.default_rng([seed, index, LANGUAGE_STREAM])
    categories = sorted(category_ids)
    category_of_word = {word: c for c, cwords in lexicon.category_words.items() for word in cwords}

    def category_id(word: Optional[str]) -> int:
        category = category_of_word.get(word or "") or categories[int(rng.integers(len(categories)))]
        return category_ids[category]

    if aug.max_length is None:  # a phrasing must fit the sentence length the generator keeps to
        aug = dataclasses.replace(aug, max_length=ex.MAX_WORDS)
    return augment_image_refs(rng, specs, world_words() if words is None else words, aug,
                              no_target_ann_id=no_target_ann_id, category_id=category_id)
