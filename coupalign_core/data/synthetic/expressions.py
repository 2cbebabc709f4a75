"""Referring expressions for synthetic scenes: a small grammar whose meaning is checked.

Every expression is generated from a *query* (a plain dict, saved with the sentence) and is kept
only if :func:`resolve` finds exactly its target in the scene. A query is::

    {"np": {"shape": str, "color": str | None, "size": str | None},   # what the thing looks like
     "spatial": None                                                   # attributes alone
              | {"type": "extreme", "dir": "left" | "right" | "top" | "bottom"}
              | {"type": "center"}
              | {"type": "ordinal", "dir": ..., "rank": 2 | 3}
              | {"type": "relation", "rel": "left" | "right" | "above" | "below" | "near",
                 "landmark": np}}

Meaning (positions are visible-part centroids, x / width and y / height in [0, 1]):

* candidates: the objects whose attributes equal every non-None field of ``np``; for a relation,
  the landmark (which ``landmark`` must describe uniquely) is not a candidate.
* extreme: the candidate with the smallest key (left: x, right: -x, top: y, bottom: -y), which must
  beat the runner-up by ``POSITION_MARGIN``; ordinal: the rank-th smallest key, with every gap
  up to it and just after it >= ``POSITION_MARGIN``.
* center / near: the candidate nearest the image centre / the landmark; the runner-up must be
  ``DISTANCE_RATIO`` times as far and ``POSITION_MARGIN`` farther.
* left / right / above / below: the candidates displaced from the landmark in that direction by at
  least ``POSITION_MARGIN``; a candidate displaced by less but in that direction is a borderline case.

A close call (a gap below the margin, a borderline candidate) makes the query ill-posed
(:func:`resolve` returns None) and the generator drops it, so the words always have a clear answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, TypeVar

import numpy as np

from .world import COLORS, SHAPES, SIZES, Scene

KINDS: tuple[str, ...] = ("attribute", "location", "ordinal", "relation", "no_location", "long", "no_target")
POSITION_MARGIN = 0.08  # in units of the image width (x) or height (y)
DISTANCE_RATIO = 1.5
DIRECTIONS: tuple[str, ...] = ("left", "right", "top", "bottom")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below", "near")
MAX_WORDS = 15  # keeps every sentence within T = 20 WordPiece tokens with [CLS] and [SEP]

# Relative sampling weights of the kinds a target can be described with (ordinal and relation,
# the hardest, come up more often).
KIND_WEIGHTS: dict[str, float] = {
    "attribute": 0.8, "location": 1.0, "ordinal": 3.0, "relation": 2.0, "no_location": 0.7, "long": 0.7,
}

# ---- vocabulary ---------------------------------------------------------------------------------
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc"), "square": ("square", "box"), "triangle": ("triangle",),
    "star": ("star",), "diamond": ("diamond",), "cross": ("cross", "plus sign"),
}
PLURALS: dict[str, str] = {
    "circle": "circles", "disc": "discs", "square": "squares", "box": "boxes", "triangle": "triangles",
    "star": "stars", "diamond": "diamonds", "cross": "crosses", "plus sign": "plus signs",
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}
ORDINAL_WORDS: dict[int, str] = {2: "second", 3: "third"}

EXTREME_TEMPLATES: dict[str, tuple[str, ...]] = {
    "left": ("the leftmost {N}", "the {N} on the far left", "the {N} furthest to the left", "leftmost {N}",
             "{N} on the left"),
    "right": ("the rightmost {N}", "the {N} on the far right", "the {N} furthest to the right", "rightmost {N}",
              "{N} on the right"),
    "top": ("the topmost {N}", "the {N} at the top", "the highest {N}", "top {N}", "the {N} nearest the top"),
    "bottom": ("the bottommost {N}", "the {N} at the bottom", "the lowest {N}", "bottom {N}",
               "the {N} nearest the bottom"),
}
CENTER_TEMPLATES = ("the {N} closest to the center", "the {N} nearest the center of the image", "the most central {N}")
ORDINAL_TEMPLATES = ("the {ord} {N} from the {dir}", "{ord} {N} from the {dir}", "the {N} {ord} from the {dir}")
RELATION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("to the left of", "left of"), "right": ("to the right of", "right of"),
    "above": ("above", "over"), "below": ("below", "under", "beneath"),
    "near": ("next to", "closest to", "nearest to"),
}
RELATION_TEMPLATES = ("the {N} {rel} the {L}", "{N} {rel} the {L}", "the {N} that is {rel} the {L}")
LONG_ADVERBS: dict[str, str] = {
    "left": "furthest to the left", "right": "furthest to the right", "top": "closest to the top edge",
    "bottom": "closest to the bottom edge", "center": "closest to the center of the image",
}
LONG_EXTREME_TEMPLATES = ("out of all the {Np}, the one {adv}", "the {N} that is {adv} in the picture",
                          "of the {Np} in this image, the one {adv}")
LONG_ORDINAL_TEMPLATES = ("counting from the {dir}, the {ord} of the {Np} in the image",
                          "the {N} that comes {ord} when counting from the {dir}",
                          "among the {Np}, the {ord} one counting from the {dir}")
LONG_RELATION_TEMPLATES = ("the {N} that is located {rel} the {L} in the picture",
                           "a {N} which can be seen {rel} the {L}", "look at the {L}: the {N} {rel} it")
LONG_ATTRIBUTE_TEMPLATES = ("the {N} that can be seen in the picture", "there is a {N} in the image, that one",
                            "the only {N} in this picture")



@dataclass(frozen=True)
class Lexicon:
    """A world's description words: what :func:`np_text` writes for a category, colour and size, and the
    attribute values that descriptions of absent things (:func:`absent_queries`) combine. The 2D
    world's is :data:`SHAPES_LEXICON`; another world passes its own (``data.tabletop``)."""

    category_words: dict[str, tuple[str, ...]]  # category -> its words (the first is its name)
    plurals: dict[str, str]  # word -> plural
    size_words: dict[str, tuple[str, ...]]
    categories: tuple[str, ...]
    colors: tuple[str, ...]
    sizes: tuple[str, ...]
    directions: tuple[str, ...] = DIRECTIONS  # the extremes a no-target description may add ("the leftmost ...")


SHAPES_LEXICON = Lexicon(SHAPE_WORDS, PLURALS, SIZE_WORDS, SHAPES, tuple(COLORS), SIZES)

# Every word that says where something is; no_location and attribute sentences contain none.
LOCATION_WORDS: frozenset[str] = frozenset(
    "left right top bottom leftmost rightmost topmost bottommost highest lowest middle center central "
    "above below over under beneath next closest nearest furthest first second third edge".split()
)


# ---- meaning ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectView:
    """What the resolver knows of an object: attributes and visible centroid (normalised)."""

    shape: str
    color: str
    size: str
    x: float
    y: float


def scene_views(scene: Scene) -> list[ObjectView]:
    out = []
    for o in scene.objects:
        cx, cy = o.centroid()
        out.append(ObjectView(o.shape, o.color, o.size, cx / scene.width, cy / scene.height))
    return out


def matches(np_: dict[str, Any], obj: ObjectView) -> bool:
    """Every attribute the description names (shape, colour, size; None = not named) is the object's."""
    shape, color, size = np_.get("shape"), np_.get("color"), np_.get("size")
    return ((shape is None or shape == obj.shape) and (color is None or color == obj.color)
            and (size is None or size == obj.size))


def _axis_key(obj: ObjectView, direction: str) -> float:
    return {"left": obj.x, "right": -obj.x, "top": obj.y, "bottom": -obj.y}[direction]


def pick_ranked(cands: list[int], keys: list[float], rank: int, margin: float = POSITION_MARGIN) -> list[int] | None:
    """The candidate with the rank-th smallest key, or None when a gap up to it or just after it is below ``margin``."""
    if len(cands) < rank:
        return []
    order = np.argsort(keys, kind="stable")
    ks = [keys[i] for i in order]
    for j in range(min(rank, len(ks) - 1)):  # gaps up to the rank-th and just after it
        if ks[j + 1] - ks[j] < margin:
            return None
    return [cands[order[rank - 1]]]


def _pick_nearest(cands: list[int], dists: list[float]) -> list[int] | None:
    if len(cands) == 1:
        return list(cands)
    order = np.argsort(dists, kind="stable")
    d0, d1 = dists[order[0]], dists[order[1]]
    if d1 < DISTANCE_RATIO * d0 or d1 - d0 < POSITION_MARGIN:
        return None
    return [cands[order[0]]]


def resolve(query: dict[str, Any], objects: Sequence[ObjectView]) -> list[int] | None:
    """Indices of the objects ``query`` refers to, or None when the query is a close call."""
    cands = [i for i, o in enumerate(objects) if matches(query["np"], o)]
    spatial = query.get("spatial")
    if spatial is None:
        return cands
    kind = spatial["type"]
    if kind == "relation":
        found = resolve({"np": spatial["landmark"], "spatial": None}, objects)
        if found is None or len(found) != 1:
            return None
        cands = [i for i in cands if i != found[0]]
        return _resolve_relation(spatial["rel"], cands, objects, objects[found[0]])
    if not cands:
        return []
    if kind in ("extreme", "ordinal"):
        keys = [_axis_key(objects[i], spatial["dir"]) for i in cands]
        return pick_ranked(cands, keys, 1 if kind == "extreme" else int(spatial["rank"]))
    if kind == "center":
        return _pick_nearest(cands, [float(np.hypot(objects[i].x - 0.5, objects[i].y - 0.5)) for i in cands])
    raise ValueError(f"unknown spatial type {kind!r}")


def _resolve_relation(rel: str, cands: list[int], objects: Sequence[ObjectView],
                      landmark: ObjectView) -> list[int] | None:
    """``resolve`` for "<np> <rel> <landmark>": the candidates (landmark excluded) in that relation."""
    if not cands:
        return []
    if rel == "near":
        dists = [float(np.hypot(objects[i].x - landmark.x, objects[i].y - landmark.y)) for i in cands]
        return _pick_nearest(cands, dists)
    chosen = []
    for i in cands:
        o = objects[i]
        d = {"left": landmark.x - o.x, "right": o.x - landmark.x,
             "above": landmark.y - o.y, "below": o.y - landmark.y}[rel]
        if d >= POSITION_MARGIN:
            chosen.append(i)
        elif d > 0:
            return None  # borderline: neither clearly there nor clearly not
    return chosen


# ---- candidate queries per kind ------------------------------------------------------------------
def np_variants(obj: ObjectView) -> list[dict[str, Any]]:
    """Every description of ``obj`` that names its shape: shape, +colour, +size, +both."""
    return [{"shape": obj.shape, "color": c, "size": s} for c in (obj.color, None) for s in (obj.size, None)]


def full_np(obj: ObjectView) -> dict[str, Any]:
    return {"shape": obj.shape, "color": obj.color, "size": obj.size}


def unique_nps(objects: Sequence[ObjectView], index: int) -> list[dict[str, Any]]:
    return [np_ for np_ in np_variants(objects[index]) if resolve({"np": np_}, objects) == [index]]


def query_options(objects: Sequence[ObjectView], target: int) -> dict[str, list[dict[str, Any]]]:
    """For each kind, every query that refers to exactly ``target`` (by :func:`resolve`)."""
    obj = objects[target]
    options: dict[str, list[dict[str, Any]]] = {k: [] for k in KIND_WEIGHTS}

    def refers(q: dict[str, Any]) -> bool:
        return resolve(q, objects) == [target]

    def count(np_: dict[str, Any]) -> int:
        return sum(matches(np_, o) for o in objects)

    for np_ in unique_nps(objects, target):
        options["attribute"].append({"np": np_, "spatial": None})
        options["no_location"].append({"np": np_, "spatial": None})
    landmarks = {j: unique_nps(objects, j) for j in range(len(objects)) if j != target}
    for np_ in np_variants(obj):
        n = count(np_)
        is_full = np_["color"] is not None and np_["size"] is not None
        for spatial in [{"type": "extreme", "dir": d} for d in DIRECTIONS] + [{"type": "center"}]:
            q = {"np": np_, "spatial": spatial}
            if n >= 2 and refers(q):
                options["location"].append(q)
                if is_full:
                    options["long"].append(q)
        for rank in ORDINAL_WORDS:
            for d in DIRECTIONS:
                q = {"np": np_, "spatial": {"type": "ordinal", "dir": d, "rank": rank}}
                if n >= rank + 1 and refers(q):
                    options["ordinal"].append(q)
                    if is_full:
                        options["long"].append(q)
        for j, lm_nps in landmarks.items():
            if not lm_nps:
                continue
            # the landmark's description: colour and shape where that is unique, else another unique one
            lm_np = next((x for x in lm_nps if x["color"] is not None and x["size"] is None), lm_nps[0])
            others = n - matches(np_, objects[j])  # candidates once the landmark is left out
            for rel in RELATIONS:
                q = {"np": np_, "spatial": {"type": "relation", "rel": rel, "landmark": lm_np}}
                if others >= 2 and refers(q):
                    options["relation"].append(q)
                # G-Ref style: full descriptions, the landmark's too where that is unique ("near" needs
                # a rival candidate to mean anything)
                if is_full and (rel != "near" or others >= 2):
                    lm_long = full_np(objects[j]) if full_np(objects[j]) in lm_nps else lm_np
                    q = {"np": np_, "spatial": {"type": "relation", "rel": rel, "landmark": lm_long}}
                    if refers(q):
                        options["long"].append(q)
    if refers({"np": full_np(obj)}):
        options["long"].append({"np": full_np(obj), "spatial": None})
    return options


def absent_queries(objects: Sequence[ObjectView], lexicon: Lexicon = SHAPES_LEXICON) -> dict[str, list[dict[str, Any]]]:
    """Descriptions that match nothing in the scene, grouped by how close they come to something that is.

    ``"size"``: a shape and colour that are there, in the size that is not; ``"near"``: a shape or a
    colour that is there, in a combination that is not; ``"far"``: neither is there.
    """
    present = {(o.shape, o.color) for o in objects}
    present_full = {(o.shape, o.color, o.size) for o in objects}
    shapes = {o.shape for o in objects}
    colors = {o.color for o in objects}
    groups: dict[str, list[dict[str, Any]]] = {"size": [], "near": [], "far": []}
    for shape in lexicon.categories:
        for color in lexicon.colors:
            if (shape, color) in present:
                for size in lexicon.sizes:
                    if (shape, color, size) not in present_full:
                        groups["size"].append({"np": {"shape": shape, "color": color, "size": size}, "spatial": None})
                continue
            q = {"np": {"shape": shape, "color": color, "size": None}, "spatial": None}
            groups["near" if shape in shapes or color in colors else "far"].append(q)
    return groups


NO_TARGET_MIX = {"size": 0.15, "near": 0.65, "far": 0.2}  # how no-target descriptions miss


# ---- words --------------------------------------------------------------------------------------
T = TypeVar("T")


def _choice(rng: np.random.Generator, seq: Sequence[T]) -> T:
    return seq[int(rng.integers(len(seq)))]


def np_text(rng: np.random.Generator, np_: dict[str, Any], plural: bool = False,
            lexicon: Lexicon = SHAPES_LEXICON) -> str:
    shape = _choice(rng, lexicon.category_words[np_["shape"]])
    words = []
    if np_.get("size"):
        words.append(_choice(rng, lexicon.size_words[np_["size"]]))
    if np_.get("color"):
        words.append(np_["color"])
    words.append(lexicon.plurals[shape] if plural else shape)
    return " ".join(words)


def _no_location_text(rng: np.random.Generator, np_: dict[str, Any], lexicon: Lexicon) -> str:
    """RefCOCO+-style appearance-only phrasing."""
    shape = _choice(rng, lexicon.category_words[np_["shape"]])
    size = _choice(rng, lexicon.size_words[np_["size"]]) if np_.get("size") else None
    color = np_.get("color")
    adjs = [a for a in (size, color) if a]
    if not adjs:
        forms = [f"the only {shape}"]
    else:
        forms = [f"the {shape} that is {' and '.join(adjs)}", f"{' '.join(adjs)} {shape}"]
    if color:
        sized = f"{size} {shape}" if size else shape
        forms += [f"the {sized} colored {color}", f"{sized} in {color}"]
    return _choice(rng, forms)


def render_text(rng: np.random.Generator, kind: str, query: dict[str, Any], lexicon: Lexicon = SHAPES_LEXICON) -> str:
    """One sentence for ``query`` in the style of ``kind`` (lower case, no punctuation)."""
    np_, spatial = query["np"], query.get("spatial")
    if kind in ("attribute", "no_target") and spatial is None:
        return _choice(rng, ("the {N}", "the {N}", "{N}")).format(N=np_text(rng, np_, lexicon=lexicon))
    if kind == "no_location":
        return _no_location_text(rng, np_, lexicon)
    if kind == "long":
        if spatial is None:
            return _choice(rng, LONG_ATTRIBUTE_TEMPLATES).format(N=np_text(rng, np_, lexicon=lexicon))
        fields = {"N": np_text(rng, np_, lexicon=lexicon), "Np": np_text(rng, np_, plural=True, lexicon=lexicon)}
        if spatial["type"] in ("extreme", "center"):
            adv = LONG_ADVERBS[spatial.get("dir", "center")]
            return _choice(rng, LONG_EXTREME_TEMPLATES).format(adv=adv, **fields)
        if spatial["type"] == "ordinal":
            return _choice(rng, LONG_ORDINAL_TEMPLATES).format(
                ord=ORDINAL_WORDS[spatial["rank"]], dir=spatial["dir"], **fields)
        return _choice(rng, LONG_RELATION_TEMPLATES).format(
            rel=_choice(rng, RELATION_WORDS[spatial["rel"]]), L=np_text(rng, spatial["landmark"], lexicon=lexicon),
            **fields)
    if spatial is None:
        raise ValueError(f"a {kind} sentence needs a spatial query, got {query!r}")
    n_text = np_text(rng, np_, lexicon=lexicon)
    if spatial["type"] == "extreme":
        return _choice(rng, EXTREME_TEMPLATES[spatial["dir"]]).format(N=n_text)
    if spatial["type"] == "center":
        return _choice(rng, CENTER_TEMPLATES).format(N=n_text)
    if spatial["type"] == "ordinal":
        return _choice(rng, ORDINAL_TEMPLATES).format(N=n_text, ord=ORDINAL_WORDS[spatial["rank"]], dir=spatial["dir"])
    template = _choice(rng, RELATION_TEMPLATES)  # draws in this order: template, relation words, landmark words
    rel = _choice(rng, RELATION_WORDS[spatial["rel"]])
    return template.format(N=n_text, rel=rel, L=np_text(rng, spatial["landmark"], lexicon=lexicon))


def raw_text(rng: np.random.Generator, sent: str) -> str:
    """The annotator's version: sometimes capitalised, sometimes with a full stop."""
    raw = sent[0].upper() + sent[1:] if rng.random() < 0.5 else sent
    return raw + "." if rng.random() < 0.2 else raw


def normalise(raw: str) -> str:
    """The refer ``sent`` field: lower case, punctuation removed."""
    return " ".join("".join(ch for ch in raw.lower() if ch.isalnum() or ch.isspace()).split())


# ---- one image's refs ---------------------------------------------------------------------------
@dataclass
class RefSpec:
    target: int | None  # object index, None for a no-target ref
    shape: str  # the shape the expressions name (the category of a no-target ref)
    sentences: list[dict[str, Any]]  # {"kind", "raw", "sent", "query", "no_target"}


TextFn = Callable[[np.random.Generator, str, dict[str, Any]], str]  # (rng, kind, query) -> sentence
OptionsFn = Callable[[Sequence[ObjectView], int], dict[str, list[dict[str, Any]]]]  # query_options' signature


def _sentence(
    rng: np.random.Generator, kind: str, query: dict[str, Any], text: TextFn, no_target: bool = False
) -> dict[str, Any] | None:
    for _ in range(4):  # a few tries at a phrasing within MAX_WORDS
        sent = text(rng, kind, query)
        if len(sent.split()) <= MAX_WORDS:
            raw = raw_text(rng, sent)
            return {"kind": kind, "raw": raw, "sent": normalise(raw), "query": query, "no_target": no_target}
    return None


def make_refs(rng: np.random.Generator, objects: Sequence[ObjectView], *, num_refs: int,
              sentences_per_ref: tuple[int, int], num_no_target: int, lexicon: Lexicon = SHAPES_LEXICON,
              options_of: OptionsFn = query_options, kind_weights: Optional[dict[str, float]] = None,
              text: Optional[TextFn] = None, can_refer: Optional[Sequence[bool]] = None) -> list[RefSpec]:
    """Up to ``num_refs`` target refs (objects that share shape and colour with others are likelier) with
    2-3 sentences each (kinds drawn by ``kind_weights`` among those that fit), plus ``num_no_target``
    refs to absent things.

    Another world passes its ``lexicon``, the ``options_of`` and ``text`` of its grammar (by default
    :func:`query_options` and :func:`render_text`, with :data:`KIND_WEIGHTS`), and ``can_refer``:
    which objects may be targets (all by default; every object still counts as a look-alike).
    """
    weights_of_kind = KIND_WEIGHTS if kind_weights is None else kind_weights
    say: TextFn = text if text is not None else (lambda r, k, q: render_text(r, k, q, lexicon))
    targets = [i for i in range(len(objects)) if can_refer is None or can_refer[i]]
    same_look = [sum(o.shape == p.shape and o.color == p.color for p in objects) for o in objects]
    weights = np.array([4.0 if same_look[i] >= 3 else 2.0 if same_look[i] == 2 else 1.0 for i in targets])
    order = [] if not targets else [
        targets[int(i)] for i in rng.choice(len(targets), size=len(targets), replace=False, p=weights / weights.sum())]
    refs: list[RefSpec] = []
    for target in order:
        if len(refs) == num_refs:
            break
        options = {k: v for k, v in options_of(objects, int(target)).items() if v}
        if not options:
            continue
        want = int(rng.integers(sentences_per_ref[0], sentences_per_ref[1] + 1))
        kinds = list(options)
        w = np.array([weights_of_kind[k] for k in kinds])
        sentences: list[dict[str, Any]] = []
        seen: set[str] = set()
        for _ in range(2 * want):  # each sentence: a kind by weight, then one of its queries
            if len(sentences) == want:
                break
            kind = kinds[int(rng.choice(len(kinds), p=w / w.sum()))]
            sentence = _sentence(rng, kind, _choice(rng, options[kind]), say)
            if sentence is not None and sentence["sent"] not in seen:
                seen.add(sentence["sent"])
                sentences.append(sentence)
        if sentences:
            refs.append(RefSpec(int(target), objects[int(target)].shape, sentences))
    absent = absent_queries(objects, lexicon)
    mix = [g for g in NO_TARGET_MIX if absent[g]]
    p = np.array([NO_TARGET_MIX[g] for g in mix])
    for _ in range(num_no_target if mix else 0):
        group = mix[int(rng.choice(len(mix), p=p / p.sum()))]
        query = _choice(rng, absent[group])
        if rng.random() < 0.3:  # "the leftmost blue star" when there is no blue star at all
            query = {"np": query["np"], "spatial": {"type": "extreme", "dir": _choice(rng, lexicon.directions)}}
        sentence = _sentence(rng, "attribute" if query["spatial"] is None else "location", query, say, no_target=True)
        if sentence is not None:
            sentence["kind"] = "no_target"
            refs.append(RefSpec(None, query["np"]["shape"], [sentence]))
    return refs
