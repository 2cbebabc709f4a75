"""World-agnostic language for referring-expression generators: command phrasing and out-of-domain negatives.

A generator (the synthetic shapes world, a tabletop world) writes plain referring expressions whose
meaning it has checked; this package turns them into what people say to a robot
(:mod:`.phrasing`), makes no-target commands the model cannot ground (:mod:`.negatives`) and
applies both to one image's refs (:mod:`.augment`). Nothing here knows a world beyond the
:class:`~.negatives.WorldWords` it is given.
"""

from .augment import LanguageAugmentation, augment_image_refs
from .negatives import NEGATIVE_KINDS, WorldWords, make_negative
from .phrasing import HELD_OUT_WORDS, TRAINING_WORDS, PhrasedSentence, PhrasingWords, phrase
from .text import normalise, words

__all__ = [
    "HELD_OUT_WORDS", "LanguageAugmentation", "NEGATIVE_KINDS", "PhrasedSentence", "PhrasingWords", "TRAINING_WORDS",
    "WorldWords", "augment_image_refs", "make_negative", "normalise", "phrase", "words",
]
