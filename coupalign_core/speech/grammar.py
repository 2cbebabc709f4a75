"""The command grammar: what a recogniser may hear, as a tree that writes JSGF and matches text.

A general language model turns "the red cup on the left" into "the red dot on the length"; a
grammar of the sentences a model can ground makes the recogniser choose among those only. The tree
has five kinds of node (:class:`Word`, :class:`Ref` to a named rule, :class:`Seq`, :class:`Alt`,
:class:`Opt`), built from the expression generators' own templates (:func:`template`,
``speech.worlds``); one :class:`Grammar` of them

* writes the JSGF text pocketsphinx compiles to a finite-state grammar (:meth:`Grammar.to_jsgf`),
* says whether a sentence is in it (:meth:`Grammar.matches`), which is how the tests prove that it
  covers every sentence the generators write,
* drops every path through a word that something cannot take (:meth:`Grammar.veto`: a word the
  pronunciation dictionary lacks cannot be recognised; a word the model cannot ground would make
  the segmentation node reject the command).

:func:`command_grammar` wraps the worlds' descriptions in what people say around them (openers,
polite words, verbs, "please"; hesitations and a repeated "the" inside), from the phrasing lists
of ``data.language.phrasing``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

from ..data.language.phrasing import HELD_OUT_WORDS, REPEATABLE, TRAINING_WORDS, PhrasingWords
from ..data.language.text import normalise


@dataclass(frozen=True)
class Word:
    text: str  # as the dictionary spells it (lower case; "where's" keeps its apostrophe)


@dataclass(frozen=True)
class Ref:
    name: str  # a rule of the same grammar


@dataclass(frozen=True)
class Seq:
    items: tuple["Node", ...]  # empty: matches nothing, i.e. the empty string


@dataclass(frozen=True)
class Alt:
    options: tuple["Node", ...]


@dataclass(frozen=True)
class Opt:
    item: "Node"
    weight: float = 0.5  # prior probability that the item is said (written as JSGF weights)

    def __post_init__(self) -> None:
        if not 0.0 < self.weight < 1.0:
            raise ValueError(f"an optional item's weight must be in (0, 1), got {self.weight}")


Node = Union[Word, Ref, Seq, Alt, Opt]
EMPTY = Seq(())
# A pause, written as a word of its own: the recogniser spells it with the silence phone
# (``Transcriber``), where a comma or a colon of a template lets a speaker stop, and before and after
# the command; it never appears in a transcript or in the text :meth:`Grammar.matches` compares.
PAUSE = "sil_pause"
_SLOT = re.compile(r"^\{(\w+)\}$")
_RULE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def spoken_words(text: str) -> list[str]:
    """``text`` as dictionary words: lower case, punctuation dropped except a word-inner apostrophe."""
    cleaned = "".join(ch if ch.isalnum() or ch.isspace() or ch == "'" else " " for ch in text.lower())
    return [w.strip("'") for w in cleaned.split() if w.strip("'")]


def phrase_node(text: str) -> Node:
    """A fixed phrase ("plus sign") as words in sequence."""
    words = spoken_words(text)
    if not words:
        raise ValueError(f"no words in phrase {text!r}")
    return Word(words[0]) if len(words) == 1 else Seq(tuple(Word(w) for w in words))


def one_of(phrases: Iterable[Union[str, Node]]) -> Node:
    """An alternative of phrases (duplicates dropped, order kept)."""
    options = tuple(dict.fromkeys(phrase_node(p) if isinstance(p, str) else p for p in phrases))
    if not options:
        raise ValueError("an alternative needs at least one option")
    return options[0] if len(options) == 1 else Alt(options)


def template(text: str, slots: Mapping[str, str]) -> Node:
    """A generator template ("the {N} on the far left") as a sequence: ``{X}`` is a reference to rule
    ``slots[X]``, a token in square brackets is optional ("the [{size}] {S}"), punctuation is dropped."""
    items: list[Node] = []
    for token in text.replace(",", " , ").replace(":", " , ").split():
        if token == ",":
            items.append(Opt(Word(PAUSE)))
            continue
        optional = token.startswith("[") and token.endswith("]")
        token = token[1:-1] if optional else token
        slot = _SLOT.match(token)
        if slot:
            if slot.group(1) not in slots:
                raise ValueError(f"template {text!r}: no rule for slot {{{slot.group(1)}}}")
            node: Node = Ref(slots[slot.group(1)])
        elif "{" in token or "}" in token:
            raise ValueError(f"template {text!r}: malformed slot in {token!r}")
        else:
            node = phrase_node(token)
        items.append(Opt(node) if optional else node)
    return items[0] if len(items) == 1 else Seq(tuple(items))


def _words_of(node: Node, out: set[str]) -> None:
    if isinstance(node, Word):
        out.add(node.text)
    elif isinstance(node, Seq):
        for item in node.items:
            _words_of(item, out)
    elif isinstance(node, Alt):
        for option in node.options:
            _words_of(option, out)
    elif isinstance(node, Opt):
        _words_of(node.item, out)


def _refs_of(node: Node) -> Iterable[str]:
    if isinstance(node, Ref):
        yield node.name
    elif isinstance(node, Seq):
        for item in node.items:
            yield from _refs_of(item)
    elif isinstance(node, Alt):
        for option in node.options:
            yield from _refs_of(option)
    elif isinstance(node, Opt):
        yield from _refs_of(node.item)


def map_words(node: Node, fn: Callable[[Word], Node]) -> Node:
    """``node`` with every word replaced by ``fn(word)``."""
    if isinstance(node, Word):
        return fn(node)
    if isinstance(node, Seq):
        return Seq(tuple(map_words(i, fn) for i in node.items))
    if isinstance(node, Alt):
        return Alt(tuple(map_words(o, fn) for o in node.options))
    if isinstance(node, Opt):
        return Opt(map_words(node.item, fn), node.weight)
    return node


def map_refs(node: Node, fn: Callable[[Ref], Node]) -> Node:
    """``node`` with every rule reference replaced by ``fn(ref)``."""
    if isinstance(node, Ref):
        return fn(node)
    if isinstance(node, Seq):
        return Seq(tuple(map_refs(i, fn) for i in node.items))
    if isinstance(node, Alt):
        return Alt(tuple(map_refs(o, fn) for o in node.options))
    if isinstance(node, Opt):
        return Opt(map_refs(node.item, fn), node.weight)
    return node


@dataclass(frozen=True)
class Grammar:
    """Named rules and the top rule a sentence must match (see the module docstring)."""

    rules: Mapping[str, Node]
    top: str
    vetoed: frozenset[str] = field(default=frozenset())  # words :meth:`veto` removed

    def __post_init__(self) -> None:
        for name in self.rules:
            if not _RULE_NAME.match(name):
                raise ValueError(f"invalid rule name {name!r} (letters, digits and _ only)")
        if self.top not in self.rules:
            raise ValueError(f"top rule {self.top!r} is not among the rules")
        for name, node in self.rules.items():
            missing = sorted(set(_refs_of(node)) - set(self.rules))
            if missing:
                raise ValueError(f"rule {name!r} refers to undefined rules: {', '.join(missing)}")
        self._check_acyclic()

    def _check_acyclic(self) -> None:
        state: dict[str, int] = {}

        def visit(name: str, path: tuple[str, ...]) -> None:
            if state.get(name) == 2:
                return
            if state.get(name) == 1:
                raise ValueError(f"rules refer to themselves: {' -> '.join(path + (name,))}")
            state[name] = 1
            for ref in _refs_of(self.rules[name]):
                visit(ref, path + (name,))
            state[name] = 2

        for name in self.rules:
            visit(name, ())

    def reachable(self) -> list[str]:
        """The rules the top rule uses, top first."""
        seen: dict[str, None] = {}
        stack = [self.top]
        while stack:
            name = stack.pop()
            if name not in seen:
                seen[name] = None
                stack.extend(reversed(list(_refs_of(self.rules[name]))))
        return list(seen)

    def words(self) -> frozenset[str]:
        """Every word a sentence of this grammar can contain (the pause not counted)."""
        out: set[str] = set()
        for name in self.reachable():
            _words_of(self.rules[name], out)
        return frozenset(out - {PAUSE})

    # ---- JSGF -----------------------------------------------------------------------------------
    def to_jsgf(self, name: str = "coupalign") -> str:
        """The grammar as JSGF V1.0 text with ``<top>`` public (pocketsphinx ``add_jsgf_string``)."""
        lines = ["#JSGF V1.0;", f"grammar {name};"]
        for rule in self.reachable():
            public = "public " if rule == self.top else ""
            lines.append(f"{public}<{rule}> = {_jsgf(self.rules[rule], top=True)};")
        return "\n".join(lines) + "\n"

    # ---- matching -------------------------------------------------------------------------------
    @functools.cached_property
    def _pattern(self) -> re.Pattern[str]:
        memo: dict[str, str] = {}

        def rule(name: str) -> str:
            if name not in memo:
                memo[name] = _regex(self.rules[name], rule)
            return memo[name]

        return re.compile(rule(self.top))

    def matches(self, text: str) -> bool:
        """Whether ``text`` (any case and punctuation: compared as ``data.language.normalise`` words) is a
        sentence of this grammar."""
        words = normalise(text).split()
        return bool(words) and self._pattern.fullmatch(" ".join(words) + " ") is not None

    # ---- veto -----------------------------------------------------------------------------------
    def veto(self, keep: Callable[[str], bool]) -> "Grammar":
        """This grammar without every path through a word ``keep`` refuses (those words land in
        :attr:`vetoed`). Raises ValueError when no sentence is left."""
        refused = frozenset(w for w in self.words() if not keep(w))
        if not refused:
            return self
        pruned: dict[str, Optional[Node]] = {}

        def rule(name: str) -> Optional[Node]:
            if name not in pruned:
                pruned[name] = _prune(self.rules[name], refused, rule)
            return pruned[name]

        if rule(self.top) is None:
            raise ValueError(f"every sentence of the grammar uses a refused word ({', '.join(sorted(refused))})")
        rules = {name: node for name, node in pruned.items() if node is not None}
        return Grammar(rules, self.top, self.vetoed | refused)


def _jsgf(node: Node, top: bool = False) -> str:
    if isinstance(node, Word):
        return node.text
    if isinstance(node, Ref):
        return f"<{node.name}>"
    if isinstance(node, Seq):
        if not node.items:
            return "<NULL>"
        inner = " ".join(_jsgf(i) for i in node.items)
        return inner if top or len(node.items) == 1 else f"( {inner} )"
    if isinstance(node, Alt):
        inner = " | ".join(_jsgf(o, top=True) for o in node.options)
        return inner if top else f"( {inner} )"
    if node.weight == 0.5:
        return f"[ {_jsgf(node.item, top=True)} ]"
    return f"( /{node.weight:.4g}/ {_jsgf(node.item)} | /{1.0 - node.weight:.4g}/ <NULL> )"


def _regex(node: Node, rule: Callable[[str], str]) -> str:
    """A pattern over normalised words, each followed by one space."""
    if isinstance(node, Word):
        return "" if node.text == PAUSE else "".join(re.escape(w) + " " for w in normalise(node.text).split())
    if isinstance(node, Ref):
        return f"(?:{rule(node.name)})"
    if isinstance(node, Seq):
        return "".join(_regex(i, rule) for i in node.items)
    if isinstance(node, Alt):
        return "(?:" + "|".join(_regex(o, rule) for o in node.options) + ")"
    return f"(?:{_regex(node.item, rule)})?"


def _prune(node: Node, refused: frozenset[str], rule: Callable[[str], Optional[Node]]) -> Optional[Node]:
    """``node`` without the paths through ``refused`` words; None when no path is left."""
    if isinstance(node, Word):
        return None if node.text in refused else node
    if isinstance(node, Ref):
        return node if rule(node.name) is not None else None
    if isinstance(node, Seq):
        items = [_prune(i, refused, rule) for i in node.items]
        return None if any(i is None for i in items) else Seq(tuple(i for i in items if i is not None))
    if isinstance(node, Alt):
        options = tuple(o for o in (_prune(o, refused, rule) for o in node.options) if o is not None)
        return None if not options else options[0] if len(options) == 1 else Alt(options)
    item = _prune(node.item, refused, rule)
    return EMPTY if item is None else Opt(item, node.weight)


# ---- the command around a description -----------------------------------------------------------
def merge_phrasing(lists: Sequence[PhrasingWords]) -> PhrasingWords:
    """One phrasing list holding every phrase of ``lists``."""
    def joined(attr: str) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p for words in lists for p in getattr(words, attr)))

    return PhrasingWords(**{a: joined(a) for a in ("verbs", "requests", "questions", "polite_prefixes",
                                                    "polite_suffixes", "openers", "hesitations")})


# Training phrasing and the held-out words (a user may well say "bring me"; the grounding gate
# treats both as neutral).
DEFAULT_PHRASING = merge_phrasing([TRAINING_WORDS, HELD_OUT_WORDS])


# Prior probabilities of the optional parts of a command, written as JSGF weights: the words around
# a description are the exception. pocketsphinx 5.1.1 gave the same results with and without them
# on a small test set (docs/speech.md), so they document intent more than they steer the search.
PART_WEIGHTS: dict[str, float] = {"opener": 0.1, "polite": 0.1, "lead": 0.3, "suffix": 0.1, "inner_hesitation": 0.02,
                                  "repeat": 0.02}


def command_grammar(descriptions: Mapping[str, Node], *, phrasing: PhrasingWords = DEFAULT_PHRASING,
                    inner_hesitations: bool = False) -> Grammar:
    """``[opener] [polite] [lead] <description> [suffix]`` over the worlds' description rules.

    ``descriptions``: rule name -> node, every rule a world contributes (``speech.worlds``), each
    world's top rule named ``<world>_description``. With ``inner_hesitations`` a hesitation may come
    before any word of a description and "the"/"a" may be said twice, as the generators' speech style
    writes them.
    """
    tops = [name for name in descriptions if name.endswith("_description")]
    if not tops:
        raise ValueError("no world description rule (a rule named <world>_description)")
    rules: dict[str, Node] = {}
    hesitation = Ref("hesitation")

    def spoken(word: Word) -> Node:
        if word.text == PAUSE:
            return word
        repeated: Node = Seq((word, Opt(word, PART_WEIGHTS["repeat"]))) if word.text in REPEATABLE else word
        return Seq((Opt(hesitation, PART_WEIGHTS["inner_hesitation"]), repeated))

    for name, node in descriptions.items():
        rules[name] = map_words(node, spoken) if inner_hesitations else node
    rules.update({
        "command": Seq((Opt(Word(PAUSE)),
                        *(Opt(Ref(part), PART_WEIGHTS[part]) for part in ("opener", "polite", "lead")),
                        Ref("description"), Opt(Ref("suffix"), PART_WEIGHTS["suffix"]), Opt(Word(PAUSE)))),
        "description": Alt(tuple(Ref(t) for t in tops)) if len(tops) > 1 else Ref(tops[0]),
        "opener": one_of((*phrasing.openers, *phrasing.hesitations)),
        "polite": one_of(phrasing.polite_prefixes),
        "lead": one_of((*phrasing.verbs, *phrasing.requests, *phrasing.questions)),
        "suffix": one_of(phrasing.polite_suffixes),
        "hesitation": one_of(phrasing.hesitations),
    })
    return Grammar(rules, "command")
