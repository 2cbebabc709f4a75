"""Each world's descriptions as grammar rules, from its expression generator's own templates and words.

One registry (:func:`register_world`) maps a world's name to a function that returns its
:class:`WorldGrammar`; :func:`grammar_for` merges the worlds asked for into one command grammar.
A world added later (the tabletop world) registers its builder here and its sentences become
speakable; ``tests/test_speech_grammar.py`` checks that a world's grammar matches every sentence
its generator writes.

The synthetic world's templates come from ``data.synthetic.expressions``; the few phrasings that
module writes inline (``render_text``'s attribute forms, ``_no_location_text``) are restated in
:data:`SYNTHETIC_INLINE_TEMPLATES`, and the coverage test fails if the two drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from .grammar import DEFAULT_PHRASING, Grammar, Node, Opt, Ref, Seq, command_grammar, map_refs, one_of, template


@dataclass(frozen=True)
class WorldGrammar:
    """A world's description rules; ``rules["description"]`` is its top rule (names are local: the
    merged grammar prefixes them with the world's name)."""

    name: str
    rules: Mapping[str, Node]

    def __post_init__(self) -> None:
        if "description" not in self.rules:
            raise ValueError(f"world {self.name!r} has no 'description' rule")

    def prefixed(self) -> dict[str, Node]:
        """The rules with every name (and every reference) prefixed ``<world>_``."""
        return {f"{self.name}_{k}": map_refs(v, lambda r: Ref(f"{self.name}_{r.name}")) for k, v in self.rules.items()}


_WORLDS: dict[str, Callable[[], WorldGrammar]] = {}


def register_world(name: str, builder: Callable[[], WorldGrammar]) -> None:
    """Make world ``name`` speakable: ``builder()`` returns its :class:`WorldGrammar`."""
    if not name.isidentifier():
        raise ValueError(f"a world name must be an identifier, got {name!r}")
    _WORLDS[name] = builder


def world_names() -> tuple[str, ...]:
    return tuple(_WORLDS)


def world_grammar(name: str) -> WorldGrammar:
    if name not in _WORLDS:
        raise ValueError(f"unknown world {name!r}; known: {', '.join(_WORLDS)}")
    world = _WORLDS[name]()
    if world.name != name:
        raise ValueError(f"world builder for {name!r} returned world {world.name!r}")
    return world


def grammar_for(worlds: Sequence[str] | None = None, **options: Any) -> Grammar:
    """The command grammar over ``worlds`` (default: every registered world); ``options`` go to
    :func:`~.grammar.command_grammar`."""
    names = list(worlds) if worlds else list(_WORLDS)
    rules: dict[str, Node] = {}
    for name in dict.fromkeys(names):
        rules.update(world_grammar(name).prefixed())
    options.setdefault("phrasing", DEFAULT_PHRASING)
    return command_grammar(rules, **options)


# ---- the synthetic (2D shapes) world ------------------------------------------------------------
# Phrasings data.synthetic.expressions writes inline rather than in a template constant:
# render_text's attribute forms ("the {N}", "{N}") and _no_location_text's forms, where {S} is a
# shape word, {size} a size word and {color} a colour.
SYNTHETIC_INLINE_TEMPLATES: tuple[str, ...] = (
    "the {N}", "{N}",
    "the only {S}", "the {S} that is {size}", "the {S} that is {color}", "the {S} that is {size} and {color}",
    "the [{size}] {S} colored {color}", "[{size}] {S} in {color}",
)


def _flat(values: Iterable[Any]) -> list[str]:
    out: list[str] = []
    for v in values:
        out.extend(_flat(v) if isinstance(v, (tuple, list)) else [str(v)])
    return out


def synthetic_world() -> WorldGrammar:
    """Rules for every sentence ``data.synthetic.expressions`` writes about a target or an absent thing."""
    from ..data.synthetic import expressions as ex
    from ..data.synthetic.world import COLORS

    slots = {"N": "np", "Np": "np_plural", "L": "np", "S": "shape", "ord": "ordinal", "dir": "direction",
             "rel": "relation", "adv": "adverb", "size": "size", "color": "color"}
    templates = [
        *_flat(ex.EXTREME_TEMPLATES.values()), *ex.CENTER_TEMPLATES, *ex.ORDINAL_TEMPLATES, *ex.RELATION_TEMPLATES,
        *ex.LONG_EXTREME_TEMPLATES, *ex.LONG_ORDINAL_TEMPLATES, *ex.LONG_RELATION_TEMPLATES,
        *ex.LONG_ATTRIBUTE_TEMPLATES, *SYNTHETIC_INLINE_TEMPLATES,
    ]
    rules: dict[str, Node] = {
        "shape": one_of(_flat(ex.SHAPE_WORDS.values())),
        "shape_plural": one_of(ex.PLURALS.values()),
        "size": one_of(_flat(ex.SIZE_WORDS.values())),
        "color": one_of(COLORS),
        "ordinal": one_of(ex.ORDINAL_WORDS.values()),
        "direction": one_of(ex.DIRECTIONS),
        "relation": one_of(_flat(ex.RELATION_WORDS.values())),
        "adverb": one_of(ex.LONG_ADVERBS.values()),
        "np": Seq((Opt(Ref("size")), Opt(Ref("color")), Ref("shape"))),
        "np_plural": Seq((Opt(Ref("size")), Opt(Ref("color")), Ref("shape_plural"))),
        "description": one_of(template(t, slots) for t in templates),
    }
    return WorldGrammar("synthetic", rules)


register_world("synthetic", synthetic_world)
