"""Referring expressions for tabletop scenes: the 2D world's grammar plus what depth makes sayable.

The seven kinds of :mod:`coupalign_core.data.synthetic.expressions` apply unchanged (a category is
the 2D grammar's "shape"; image positions are visible-mask centroids), with the tabletop words
(:data:`LEXICON`). Three kinds need the third dimension; their queries are::

    distance        {"type": "distance", "dir": "near" | "far", "rank": 1 | 2 | 3}
                                                                            "the mug closest to you",
                                                                            "the second farthest ball"
    depth_relation  {"type": "relation", "rel": "behind" | "in_front", "landmark": np}
                                                                            "the duck behind the red mug"
    support         {"type": "relation", "rel": "in" | "on", "landmark": np}
                                                                            "the block in the tray"

Meaning (object positions are the centroids of their visible surfaces in the camera's optical
frame, metres):

* distance: the candidate nearest to (farthest from) the camera, or the rank-th nearest (farthest);
  every gap in distance up to it and just after it must be at least ``DEPTH_MARGIN``.
* behind / in front of: candidates (landmark excluded) at least ``DEPTH_MARGIN`` deeper (shallower)
  than the landmark and within ``LATERAL_BAND`` of it sideways; a candidate on that side but within
  the margin, or deeper but only a little outside the band, is a close call, and so is one that
  stands on or in the landmark (or holds it): that is "on", not "behind".
* in / on: the candidates that stand in the landmark (which must be a tray) or on it (which must
  not be).

As in the 2D world, a close call makes :func:`resolve` return None and the generator drops the query.
Image up and down are left out: on a table seen from above, "the highest mug" or "the cup over the
box" would read as height, not as a place in the picture; near / far and behind / in front of say
what they meant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from ..synthetic import expressions as ex
from ..synthetic.world import COLORS
from .world import CATEGORIES, SIZES, TRAY

KINDS_3D: tuple[str, ...] = ("distance", "depth_relation", "support")
KINDS: tuple[str, ...] = (*(k for k in ex.KINDS if k != "no_target"), *KINDS_3D, "no_target")
KIND_WEIGHTS: dict[str, float] = {**ex.KIND_WEIGHTS, "distance": 1.5, "depth_relation": 1.5, "support": 1.5}
DEPTH_MARGIN = 0.05  # metres
LATERAL_BAND = 0.10  # metres, sideways (optical x) between an object and the landmark it is behind
RELATIONS_3D: dict[str, str] = {  # relation -> the kind of sentence it makes
    "behind": "depth_relation", "in_front": "depth_relation", "in": "support", "on": "support"}

IMAGE_VERTICAL = frozenset({"top", "bottom", "above", "below"})  # 2D directions and relations left out (see above)
LEXICON = ex.Lexicon(
    category_words={name: c.words for name, c in CATEGORIES.items()},
    plurals={w: p for c in CATEGORIES.values() for w, p in zip(c.words, c.plurals)},
    size_words=ex.SIZE_WORDS, categories=tuple(CATEGORIES), colors=tuple(COLORS), sizes=SIZES,
    directions=tuple(d for d in ex.DIRECTIONS if d not in IMAGE_VERTICAL),
)

DISTANCE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "near": ("the {N} closest to you", "the {N} nearest to you", "the nearest {N}", "the closest {N}",
             "the {N} nearest the camera"),
    "far": ("the farthest {N}", "the {N} farthest from you", "the {N} furthest away", "the most distant {N}",
            "the {N} farthest from the camera"),
}
RANKED_DISTANCE_TEMPLATES: dict[str, tuple[str, ...]] = {
    "near": ("the {ord} closest {N}", "the {ord} nearest {N}", "the {N} {ord} closest to you",
             "the {N} {ord} nearest to the camera"),
    "far": ("the {ord} farthest {N}", "the {ord} most distant {N}", "the {N} {ord} farthest from you",
            "the {N} {ord} farthest from the camera"),
}
RELATION_3D_WORDS: dict[str, tuple[str, ...]] = {
    "behind": ("behind",), "in_front": ("in front of",), "in": ("in", "inside"), "on": ("on", "on top of"),
}
RELATION_3D_TEMPLATES = ("the {N} {rel} the {L}", "{N} {rel} the {L}", "the {N} that is {rel} the {L}")
# Words only the 3D kinds write; with ex.LOCATION_WORDS, every word that says where something is.
LOCATION_WORDS_3D: frozenset[str] = frozenset(
    "closest nearest farthest furthest distant away camera you behind front in inside on top".split())


@dataclass(frozen=True)
class TableView(ex.ObjectView):
    """What the resolver knows of an object: the 2D view (category as ``shape``, image centroid as
    ``x``, ``y`` in [0, 1]) plus its visible surface's centroid in the optical frame and its support."""

    cam_x: float = 0.0  # metres, right
    cam_z: float = 0.0  # metres, forward
    distance: float = 0.0  # metres from the camera
    support: Optional[int] = None  # index (in the same view list) of what it stands on or in; None: the table


def resolve(query: dict[str, Any], objects: Sequence[TableView]) -> list[int] | None:
    """Indices of the objects ``query`` refers to, or None when the query is a close call."""
    spatial = query.get("spatial")
    is_3d = spatial is not None and (spatial["type"] == "distance"
                                     or (spatial["type"] == "relation" and spatial["rel"] in RELATIONS_3D))
    if spatial is None or not is_3d:
        return ex.resolve(query, objects)
    cands = [i for i, o in enumerate(objects) if ex.matches(query["np"], o)]
    if spatial["type"] == "distance":
        if not cands:
            return []
        sign = 1.0 if spatial["dir"] == "near" else -1.0
        keys = [sign * objects[i].distance for i in cands]
        return ex.pick_ranked(cands, keys, int(spatial.get("rank", 1)), margin=DEPTH_MARGIN)
    found = ex.resolve({"np": spatial["landmark"], "spatial": None}, objects)
    if found is None or len(found) != 1:
        return None
    landmark = found[0]
    cands = [i for i in cands if i != landmark]
    rel = spatial["rel"]
    if rel in ("in", "on"):
        if (rel == "in") != (objects[landmark].shape == TRAY):  # things are in the tray, on anything else
            return None
        return [i for i in cands if objects[i].support == landmark]
    lm = objects[landmark]
    chosen = []
    for i in cands:
        if objects[i].support == landmark or lm.support == i:
            return None  # one stands on the other
        depth = objects[i].cam_z - lm.cam_z
        depth = depth if rel == "behind" else -depth
        lateral = abs(objects[i].cam_x - lm.cam_x)
        if depth >= DEPTH_MARGIN and lateral <= LATERAL_BAND:
            chosen.append(i)
        elif depth > 0 and lateral <= 1.5 * LATERAL_BAND:
            return None  # borderline: too close in depth, or only just outside the band
    return chosen


def _image_vertical(query: dict[str, Any]) -> bool:
    spatial = query.get("spatial") or {}
    return spatial.get("dir") in IMAGE_VERTICAL or spatial.get("rel") in IMAGE_VERTICAL


def query_options(objects: Sequence[ex.ObjectView], target: int) -> dict[str, list[dict[str, Any]]]:
    """For each kind (2D and 3D), every query that refers to exactly ``target``."""
    views = [o for o in objects if isinstance(o, TableView)]
    if len(views) != len(objects):
        raise TypeError("tabletop queries need TableView objects")
    options = {kind: [q for q in queries if not _image_vertical(q)]
               for kind, queries in ex.query_options(views, target).items()}
    options.update({k: [] for k in KINDS_3D})

    def refers(q: dict[str, Any]) -> bool:
        return resolve(q, views) == [target]

    landmarks = {j: ex.unique_nps(views, j) for j in range(len(views)) if j != target}
    for np_ in ex.np_variants(views[target]):
        n = sum(ex.matches(np_, o) for o in views)
        for direction in DISTANCE_TEMPLATES:
            q = {"np": np_, "spatial": {"type": "distance", "dir": direction}}
            if n >= 2 and refers(q):
                options["distance"].append(q)
            for rank in ex.ORDINAL_WORDS:
                q = {"np": np_, "spatial": {"type": "distance", "dir": direction, "rank": rank}}
                if n >= rank + 1 and refers(q):
                    options["distance"].append(q)
        for j, lm_nps in landmarks.items():
            if not lm_nps:
                continue
            lm_np = next((x for x in lm_nps if x["color"] is not None and x["size"] is None), lm_nps[0])
            others = n - ex.matches(np_, views[j])
            for rel, kind in RELATIONS_3D.items():
                if kind == "support" and views[target].support != j:
                    continue
                q = {"np": np_, "spatial": {"type": "relation", "rel": rel, "landmark": lm_np}}
                if others >= 2 and refers(q):
                    options[kind].append(q)
    return options


def render_text(rng: np.random.Generator, kind: str, query: dict[str, Any]) -> str:
    """One sentence for ``query`` in the style of ``kind`` (lower case, no punctuation)."""
    if kind not in KINDS_3D:
        return ex.render_text(rng, kind, query, LEXICON)
    spatial = query["spatial"]
    n_text = ex.np_text(rng, query["np"], lexicon=LEXICON)
    if kind == "distance" and spatial.get("rank", 1) > 1:
        template = str(rng.choice(RANKED_DISTANCE_TEMPLATES[spatial["dir"]]))
        return template.format(N=n_text, ord=ex.ORDINAL_WORDS[spatial["rank"]])
    if kind == "distance":
        return str(rng.choice(DISTANCE_TEMPLATES[spatial["dir"]])).format(N=n_text)
    template = str(rng.choice(RELATION_3D_TEMPLATES))
    rel = str(rng.choice(RELATION_3D_WORDS[spatial["rel"]]))
    return template.format(N=n_text, rel=rel, L=ex.np_text(rng, spatial["landmark"], lexicon=LEXICON))


def make_refs(rng: np.random.Generator, objects: Sequence[TableView], *, num_refs: int,
              sentences_per_ref: tuple[int, int], num_no_target: int, can_refer: Sequence[bool]) -> list[ex.RefSpec]:
    """The 2D world's :func:`~coupalign_core.data.synthetic.expressions.make_refs` with the tabletop grammar;
    only objects with ``can_refer`` (enough visible pixels) become targets."""
    return ex.make_refs(rng, objects, num_refs=num_refs, sentences_per_ref=sentences_per_ref,
                        num_no_target=num_no_target, lexicon=LEXICON, options_of=query_options,
                        kind_weights=KIND_WEIGHTS, text=render_text, can_refer=can_refer)
