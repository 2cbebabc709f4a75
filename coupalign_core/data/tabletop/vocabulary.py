"""The tabletop world's words, and its hook into the shared phrasing and negatives (``data.language``)."""

from __future__ import annotations

import functools

from ..language import WorldWords
from ..synthetic import expressions as ex
from ..synthetic.vocabulary import template_words
from . import expressions as tx

# Words that only the 2D grammar's render_text and _no_location_text write inline (not in a constant).
_INLINE_WORDS = ("the", "only", "that", "is", "and", "colored", "in")


@functools.lru_cache(maxsize=1)
def generator_words() -> frozenset[str]:
    """Every word of the tabletop generator's target sentences (the vocabulary a model trained on it grounds)."""
    lex = tx.LEXICON
    return template_words((
        lex.category_words, lex.plurals, lex.size_words, lex.colors, ex.ORDINAL_WORDS,
        {d: ex.EXTREME_TEMPLATES[d] for d in lex.directions}, ex.CENTER_TEMPLATES, ex.ORDINAL_TEMPLATES,
        {r: w for r, w in ex.RELATION_WORDS.items() if r not in tx.IMAGE_VERTICAL}, ex.RELATION_TEMPLATES,
        {d: a for d, a in ex.LONG_ADVERBS.items() if d not in tx.IMAGE_VERTICAL},
        ex.LONG_EXTREME_TEMPLATES, ex.LONG_ORDINAL_TEMPLATES, ex.LONG_RELATION_TEMPLATES, ex.LONG_ATTRIBUTE_TEMPLATES,
        lex.directions, tx.DISTANCE_TEMPLATES, tx.RANKED_DISTANCE_TEMPLATES, tx.RELATION_3D_WORDS,
        tx.RELATION_3D_TEMPLATES, _INLINE_WORDS))


@functools.lru_cache(maxsize=1)
def world_words() -> WorldWords:
    lex = tx.LEXICON
    categories = {word: lex.plurals[word] for words in lex.category_words.values() for word in words}
    return WorldWords(colors=frozenset(lex.colors), categories=categories, known=generator_words())
