"""Out-of-domain commands: text that names nothing a model of this world can ground.

Trained as no-target refs (empty mask, presence 0), they teach the presence head that a sentence it
cannot read means "not there" rather than "the most salient thing". Kinds (:data:`NEGATIVE_KINDS`):

* ``random``: keyboard mashes and letter soup ("asdfgh qwerty");
* ``punctuation``: punctuation and symbols only ("?!.,;:");
* ``emoji``: emoji, alone or in a row;
* ``no_tokens``: zero-width, soft-hyphen and control characters, which a BERT tokenizer drops
  entirely (the sentence becomes [CLS] [SEP]);
* ``other_language``: descriptions in other languages ("le cercle rouge à gauche");
* ``unknown_color`` / ``unknown_category``: one of this world's own sentences with its colour or its
  category word replaced by one the world does not have ("the pink triangle on the left",
  "the second red hexagon from the top");
* ``other_scene``: sentences about other scenes ("the man in the blue shirt", "the cup next to the laptop").

Every word list comes in two pools: ``"train"`` (what generators write) and ``"held_out"`` (what
only measurements use), so a measurement on held-out negatives tells whether the model learnt the
rule or the list. Words the world knows are never drawn as unknown (:class:`WorldWords`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import numpy as np

from .text import normalise

Pool = Literal["train", "held_out"]
NEGATIVE_KINDS: tuple[str, ...] = (
    "random", "punctuation", "emoji", "no_tokens", "other_language", "unknown_color", "unknown_category", "other_scene",
)
# Relative weights of the kinds in training; the English-looking kinds, which a model can half read,
# come up more often.
TRAINING_MIX: dict[str, float] = {
    "random": 0.12, "punctuation": 0.08, "emoji": 0.08, "no_tokens": 0.04, "other_language": 0.14,
    "unknown_color": 0.2, "unknown_category": 0.2, "other_scene": 0.14,
}

MADE_UP_COLOR_SHARE = 0.25  # of the training unknown_color negatives


@dataclass(frozen=True)
class WorldWords:
    """What a world's sentences can name: negatives replace these words, and never draw them as unknown."""

    colors: frozenset[str]  # colour words ("red")
    categories: dict[str, str]  # category word -> its plural ("circle" -> "circles"; may be multi-word)
    known: frozenset[str]  # every word the world's sentences use

    def __post_init__(self) -> None:
        if not self.colors or not self.categories:
            raise ValueError("WorldWords needs at least one colour and one category")


# ---- word pools ---------------------------------------------------------------------------------
_COLORS: dict[str, tuple[str, ...]] = {
    "train": ("pink", "brown", "black", "white", "grey", "gray", "cyan", "magenta", "teal", "gold", "silver",
              "beige", "navy", "maroon", "violet", "turquoise", "scarlet", "amber", "azure", "emerald", "rose",
              "salmon", "mint", "plum", "ochre", "charcoal", "cream", "chocolate", "bronze", "copper", "lilac",
              "mauve", "aqua", "jade", "ruby", "sapphire", "rust", "burgundy", "cobalt", "fuchsia", "mustard",
              "sand", "slate", "cherry", "lemon", "pearl", "ebony", "auburn", "sienna", "saffron", "orchid",
              "denim", "honey", "golden", "silvery", "pinkish", "brownish", "dark", "light", "pale", "striped",
              "dotted", "shiny", "transparent"),
    "held_out": ("lime", "indigo", "crimson", "olive", "tan", "lavender", "peach", "coral", "khaki", "ivory"),
}
_CATEGORIES: dict[str, dict[str, str]] = {
    "train": {"hexagon": "hexagons", "heart": "hearts", "moon": "moons", "arrow": "arrows", "oval": "ovals",
              "rectangle": "rectangles", "pentagon": "pentagons", "ring": "rings", "crescent": "crescents",
              "octagon": "octagons", "ball": "balls", "cube": "cubes", "cup": "cups", "car": "cars",
              "bottle": "bottles", "book": "books", "apple": "apples", "chair": "chairs", "dog": "dogs",
              "person": "people", "phone": "phones", "banana": "bananas", "block": "blocks"},
    "held_out": {"trapezoid": "trapezoids", "cone": "cones", "cylinder": "cylinders", "donut": "donuts",
                 "key": "keys", "spoon": "spoons", "bowl": "bowls", "lamp": "lamps", "bird": "birds",
                 "shoe": "shoes", "flower": "flowers", "pyramid": "pyramids", "clock": "clocks", "pen": "pens"},
}
_EMOJI: dict[str, tuple[str, ...]] = {
    "train": ("🙂", "😀", "😂", "👍", "🔴", "🟦", "⭐", "❤️", "🚗", "🐶", "🍎", "🎉",
              "🤖", "👀", "✨", "🔥", "👉", "✅"),
    "held_out": ("😎", "🙃", "🤔", "👋", "🟢", "🔺", "🍕", "🐱", "💡", "🚀", "🌈", "🎈", "👨‍👩‍👧", "🇫🇷"),
}
_PUNCTUATION = "?!.,;:-_'\"()[]{}/\\|@#$%^&*+=~`<>…—"
_NO_TOKEN_CHARS = ("\x00", "\u200b", "\xad", "\u200c", "\u200d", "\ufeff", "\u2060", "\x07", "\x1b")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_KEYBOARD_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")

# Other languages: a small lexicon each (article, colours, shapes, "on the left/right") rendered as
# "<article> <shape> <colour> <place>" or "<colour> <shape>" orders; whole languages are held out.
_LANGUAGES: dict[str, dict[str, dict[str, tuple[str, ...]]]] = {
    "train": {
        "fr": {"art": ("le", "la"), "color": ("rouge", "vert", "bleu", "jaune", "violette"),
               "shape": ("cercle", "carré", "étoile", "losange", "croix"), "place": ("à gauche", "à droite", "en haut"),
               "order": ("art shape color place", "art shape color")},
        "de": {"art": ("der", "die", "das"), "color": ("rote", "grüne", "blaue", "gelbe", "lila"),
               "shape": ("Kreis", "Quadrat", "Dreieck", "Stern", "Raute", "Kreuz"),
               "place": ("links", "rechts", "oben"), "order": ("art color shape place", "art color shape")},
        "es": {"art": ("el", "la"), "color": ("rojo", "verde", "azul", "amarillo", "morado", "naranja"),
               "shape": ("círculo", "cuadrado", "triángulo", "estrella", "rombo", "cruz"),
               "place": ("a la izquierda", "a la derecha", "arriba"),
               "order": ("art shape color place", "art shape color")},
        "zh": {"art": ("",), "color": ("红色的", "绿色的", "蓝色的", "黄色的"),
               "shape": ("圆", "正方形", "三角形", "星星"),
               "place": ("左边的", "右边的"), "order": ("place color shape", "color shape")},
        "ru": {"art": ("",), "color": ("красный", "зелёный", "синий", "жёлтый"),
               "shape": ("круг", "квадрат", "треугольник"),
               "place": ("слева", "справа"), "order": ("color shape place", "color shape")},
    },
    "held_out": {
        "it": {"art": ("il", "la"), "color": ("rosso", "verde", "azzurro", "giallo", "viola"),
               "shape": ("cerchio", "quadrato", "triangolo", "stella", "rombo", "croce"),
               "place": ("a sinistra", "a destra", "in alto"), "order": ("art shape color place", "art shape color")},
        "pt": {"art": ("o", "a"), "color": ("vermelho", "verde", "azul", "amarelo", "roxo", "laranja"),
               "shape": ("círculo", "quadrado", "triângulo", "estrela", "losango", "cruz"),
               "place": ("à esquerda", "à direita", "em cima"), "order": ("art shape color place", "art shape color")},
        "nl": {"art": ("de", "het"), "color": ("rode", "groene", "blauwe", "gele", "paarse", "oranje"),
               "shape": ("cirkel", "vierkant", "driehoek", "ster", "ruit", "kruis"),
               "place": ("links", "rechts", "bovenaan"), "order": ("art color shape place", "art color shape")},
        "ja": {"art": ("",), "color": ("赤い", "緑の", "青い", "黄色い"), "shape": ("丸", "四角", "三角", "星"),
               "place": ("左の", "右の"), "order": ("place color shape", "color shape")},
        "pl": {"art": ("",), "color": ("czerwone", "zielone", "niebieskie", "żółte"),
               "shape": ("koło", "kwadrat", "trójkąt"),
               "place": ("po lewej", "po prawej"), "order": ("color shape place", "color shape")},
    },
}

# Other scenes: RefCOCO-like phrases about people and household things, some with this kind of
# world's colour and place words ("the man in the blue shirt on the left").
_SCENE_NOUNS: dict[str, tuple[str, ...]] = {
    "train": ("man", "woman", "guy", "girl", "boy", "kid", "lady", "dog", "cat", "horse", "car", "bus", "truck",
              "bike", "chair", "couch", "table", "laptop", "keyboard", "pizza", "sandwich", "cake", "bed",
              "umbrella", "tree", "building", "sheep", "giraffe", "zebra", "elephant"),
    "held_out": ("player", "child", "cow", "bear", "train", "plane", "boat", "bench", "tv", "vase", "sofa",
                 "donut", "broccoli", "toilet", "skateboard", "surfboard", "teddy"),
}
_SCENE_ATTRIBUTES = ("tall", "wooden", "old", "young", "smiling", "sitting", "standing", "striped", "dark", "white")
_SCENE_PLACES = ("on the left", "on the right", "in the middle", "in front", "in the back", "closest to us",
                 "behind the fence", "with glasses", "holding an umbrella", "in the blue shirt", "wearing a hat",
                 "next to the window", "on the table", "under the tree", "near the door")
_SCENE_SENTENCES: dict[str, tuple[str, ...]] = {
    "train": ("man in the blue shirt", "woman holding an umbrella", "guy on the right with glasses",
              "kid eating pizza", "the cup next to the laptop", "left zebra", "the slice of pizza closest to you",
              "person in red on skis", "the dog lying on the couch", "white car behind the bus",
              "the remote on the table", "catcher", "batter", "the bowl of rice", "the computer monitor"),
    "held_out": ("the goalkeeper in green", "umpire behind the plate", "the glass of wine on the right",
                 "the girl with the kite", "the lamp by the bed", "tennis player swinging", "the banana bunch",
                 "the clock on the tower", "the giraffe eating leaves", "the sheep lying down"),
}


def _choice(rng: np.random.Generator, seq: Sequence[str]) -> str:
    return seq[int(rng.integers(len(seq)))]


def _unknown(words: Sequence[str], world: WorldWords) -> tuple[str, ...]:
    """The pool's words that the world does not know (a tabletop world may have a cup)."""
    return tuple(w for w in words if not set(normalise(w).split()) & world.known)


# ---- one negative ---------------------------------------------------------------------------------
def make_negative(
    rng: np.random.Generator, kind: str, world: WorldWords, sentences: Sequence[str] = (), pool: Pool = "train",
) -> tuple[str, Optional[str]]:
    """One out-of-domain command of ``kind``: (raw text, the world category it names or None).

    ``sentences``: the world's own plain sentences for this image, which ``unknown_color`` and
    ``unknown_category`` rewrite (without them, "the <colour> <category>" is used).
    """
    if kind not in NEGATIVE_KINDS:
        raise ValueError(f"unknown negative kind {kind!r}; known: {NEGATIVE_KINDS}")
    if pool not in ("train", "held_out"):
        raise ValueError(f"pool must be 'train' or 'held_out', got {pool!r}")
    if kind == "random":
        return _random_words(rng, world), None
    if kind == "punctuation":
        n = int(rng.integers(1, 9))
        text = "".join(_choice(rng, _PUNCTUATION) for _ in range(n))
        return (text if rng.random() < 0.7 else " ".join(text)), None
    if kind == "emoji":
        n = int(rng.integers(1, 4))
        sep = "" if rng.random() < 0.6 else " "
        return sep.join(_choice(rng, _EMOJI[pool]) for _ in range(n)), None
    if kind == "no_tokens":
        n = int(rng.integers(1, 4))
        return "".join(_choice(rng, _NO_TOKEN_CHARS) for _ in range(n)), None
    if kind == "other_language":
        return _other_language(rng, pool, world), None
    if kind == "other_scene":
        return _other_scene(rng, pool, world), None
    if kind == "unknown_color":
        return _swap_color(rng, world, sentences, pool)
    return _swap_category(rng, world, sentences, pool)


def _random_words(rng: np.random.Generator, world: WorldWords) -> str:
    out: list[str] = []
    want = int(rng.integers(1, 4))
    while len(out) < want:
        if rng.random() < 0.5:  # a run along one keyboard row
            row = _choice(rng, _KEYBOARD_ROWS)
            start = int(rng.integers(0, len(row) - 2))
            word = row[start:start + int(rng.integers(3, 7))]
        else:
            word = "".join(_choice(rng, _LETTERS) for _ in range(int(rng.integers(2, 9))))
            if rng.random() < 0.2:
                word += str(int(rng.integers(0, 100)))
        if word not in world.known:
            out.append(word)
    return " ".join(out)


def _other_language(rng: np.random.Generator, pool: Pool, world: WorldWords) -> str:
    langs = _LANGUAGES[pool]
    lex = langs[_choice(rng, tuple(sorted(langs)))]
    slots = {k: _unknown(v, world) or ("",) for k, v in lex.items() if k != "order"}
    parts = [_choice(rng, slots[slot]) for slot in _choice(rng, lex["order"]).split()]
    joiner = "" if lex["art"] == ("",) and all(ord(ch) > 0x2E80 for p in parts for ch in p) else " "
    return joiner.join(p for p in parts if p)


def _other_scene(rng: np.random.Generator, pool: Pool, world: WorldWords) -> str:
    if rng.random() < 0.35:
        return _choice(rng, _SCENE_SENTENCES[pool])
    noun = _choice(rng, _unknown(_SCENE_NOUNS[pool], world))
    words = ["the"] if rng.random() < 0.7 else []
    if rng.random() < 0.4:
        words.append(_choice(rng, sorted(world.colors)) if rng.random() < 0.5 else _choice(rng, _SCENE_ATTRIBUTES))
    words.append(noun)
    if rng.random() < 0.6:
        words.append(_choice(rng, _SCENE_PLACES))
    return " ".join(words)


def _swap_color(rng: np.random.Generator, world: WorldWords, sentences: Sequence[str], pool: Pool
                ) -> tuple[str, Optional[str]]:
    # In training, a made-up word in the colour's place now and then: the rule to learn is "not one
    # of the world's colours", not a list of other colours.
    if pool == "train" and rng.random() < MADE_UP_COLOR_SHARE:
        new = _random_words(rng, world).split()[0]
    else:
        new = _choice(rng, _unknown(_COLORS[pool], world))
    with_color = [s for s in sentences if set(normalise(s).split()) & world.colors]
    if not with_color:
        category = _choice(rng, sorted(world.categories))
        return f"the {new} {category}", category
    words = normalise(_choice(rng, with_color)).split()
    spots = [i for i, w in enumerate(words) if w in world.colors]
    words[spots[int(rng.integers(len(spots)))]] = new  # one colour: "left of the red ..." keeps the landmark's
    return " ".join(words), _category_in(words, world)


def _swap_category(rng: np.random.Generator, world: WorldWords, sentences: Sequence[str], pool: Pool
                   ) -> tuple[str, Optional[str]]:
    unknown = _CATEGORIES[pool]
    singular = _choice(rng, _unknown(tuple(sorted(unknown)), world))
    text = normalise(_choice(rng, sentences)) if sentences else ""
    found = _find_category(text, world)
    if found is None:
        color = _choice(rng, sorted(world.colors))
        return f"the {color} {singular}", None
    start, end, plural = found
    return f"{text[:start]}{unknown[singular] if plural else singular}{text[end:]}", None


def _find_category(text: str, world: WorldWords) -> Optional[tuple[int, int, bool]]:
    """(start, end, is plural) of the first category word (whole words; plurals and multi-word names)."""
    padded = f" {text} "
    best: Optional[tuple[int, int, bool]] = None
    forms = [(w, False) for w in world.categories] + [(p, True) for p in world.categories.values()]
    for form, plural in sorted(forms, key=lambda f: -len(f[0])):  # "plus signs" before "plus sign"
        at = padded.find(f" {form} ")
        if at >= 0 and (best is None or at < best[0]):
            best = (at, at + len(form), plural)
    return best


def _category_in(words: list[str], world: WorldWords) -> Optional[str]:
    text = " ".join(words)
    found = _find_category(text, world)
    if found is None:
        return None
    name = text[found[0]:found[1]]
    if found[2]:
        name = next(s for s, p in world.categories.items() if p == name)
    return name
