"""Writes the synthetic benchmark in the refer layout, so :class:`ReferDataset` reads it like RefCOCO.

::

    <out_root>/synthetic/refs(unc).p            refs with a target; sentences {sent_id, raw, sent, tokens,
                                                kind, no_target, query}
    <out_root>/synthetic/no_target_refs(unc).p  refs that name nothing in their image (ann_id -1)
    <out_root>/synthetic/instances.json         COCO images / annotations (polygon, or a list holding one
                                                compressed RLE when occluded) / categories
    <out_root>/images/synthetic/*.png            the pictures (ReferDataset's default image_root for "synthetic")

The refer files are written by :mod:`coupalign_core.data.refer_writer`, which keeps the layout the
refer API reads. Image ``i`` depends only on ``(seed, i)``: the same seed gives byte-identical files,
a larger ``num_images`` extends the same world, and another seed gives a fresh one. Images can be
rendered in several processes (``workers``): the pictures and instances.json are the same bytes, and
the refs pickles load to the same refs (their bytes can differ, as pickle shares equal strings by
identity).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import multiprocessing
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from ..language import LanguageAugmentation
from ..refer import DEFAULT_IMAGE_DIRS, NO_TARGET_ANN_ID
from ..refer_writer import mask_segmentation, refer_files, remove_refer_files, write_refer
from . import expressions as ex
from .render import render
from .vocabulary import augment_specs
from .world import (
    COLORS,
    MIN_VISIBLE_FRACTION,
    PROFILES,
    SHAPES,
    SIZE_SCALE,
    Scene,
    SceneObject,
    polygon_to_coco,
    sample_scene,
)

log = logging.getLogger(__name__)

DATASET = "synthetic"
SPLIT_BY = "unc"
GENERATOR_VERSION = 2  # 2: no-target refs in their own file, occluded masks as a list of one RLE
# 192x144 (4:3 like most photos): resized to the tiny model's 96x96 a small object is still
# >= 11 px wide and a location margin (8 % of the side) is ~8 px.
DEFAULT_IMAGE_SIZE = (192, 144)
DEFAULT_NO_TARGET_FRACTION = 0.1
# Split of image i, by i mod 20: 80 % train, 10 % val, 5 % testA, 5 % testB (every split exists
# from 4 images on). testA holds sparse scenes (3-6 objects), testB crowded ones (7-12).
_SPLIT_PATTERN = ("val", "testA", "testB", "val") + ("train",) * 16
SPLIT_PROFILES = {"train": "mixed", "val": "mixed", "testA": "sparse", "testB": "crowded"}
REFS_PER_IMAGE = (2, 4)  # target refs per image, inclusive range (RefCOCO has ~2.5)
SENTENCES_PER_REF = (2, 3)
CATEGORY_IDS = {shape: i + 1 for i, shape in enumerate(SHAPES)}

# What one image contributes: (image record, annotations, ref specs, counters), see _make_image.
MadeImage = tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]], collections.Counter[str]]


def split_of(index: int) -> str:
    return _SPLIT_PATTERN[index % len(_SPLIT_PATTERN)]


def image_file_name(image_id: int) -> str:
    return f"synth_{image_id:06d}.png"


def _segmentation(obj: SceneObject) -> Any:
    """Polygon when the whole shape is visible; the visible part as one compressed RLE when occluded."""
    if not obj.occluded:
        return [polygon_to_coco(obj.polygon)]
    return mask_segmentation(obj.mask)


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _annotations(scene: Scene, image_id: int) -> list[dict[str, Any]]:
    """COCO annotation of every object, id ``image_id * 100 + z`` (z: drawing order)."""
    return [{
        "id": image_id * 100 + z, "image_id": image_id, "category_id": CATEGORY_IDS[obj.shape],
        "segmentation": _segmentation(obj), "area": float(obj.area), "bbox": _bbox(obj.mask), "iscrowd": 0,
        "attributes": {"shape": obj.shape, "color": obj.color, "size": obj.size},
        "z_order": z, "full_area": obj.full_area, "occluded": obj.occluded,
    } for z, obj in enumerate(scene.objects)]


def _ref_specs(rng: np.random.Generator, scene: Scene, image_id: int, extra_per_ref: float) -> list[dict[str, Any]]:
    """The image's refs before numbering: ann_id, category_id and sentences (-1: names nothing here)."""
    num_refs = int(rng.integers(REFS_PER_IMAGE[0], REFS_PER_IMAGE[1] + 1))
    expected_extra = num_refs * extra_per_ref
    num_no_target = int(expected_extra) + int(rng.random() < expected_extra - int(expected_extra))
    specs = []
    for spec in ex.make_refs(rng, ex.scene_views(scene), num_refs=num_refs, sentences_per_ref=SENTENCES_PER_REF,
                             num_no_target=num_no_target):
        specs.append({
            "ann_id": NO_TARGET_ANN_ID if spec.target is None else image_id * 100 + spec.target,
            "category_id": CATEGORY_IDS[spec.shape],
            "sentences": [{"raw": s["raw"], "sent": s["sent"], "kind": s["kind"], "no_target": s["no_target"],
                           "query": s["query"]} for s in spec.sentences],
        })
    return specs


def _make_image(index: int, *, seed: int, width: int, height: int, image_dir: str, extra_per_ref: float,
                language: LanguageAugmentation = LanguageAugmentation()) -> MadeImage:
    """Image ``index`` of the world: writes its PNG, returns (image record, annotations, ref specs, stats).

    Depends only on ``(seed, index)``, so images can be made in any process; ref and sentence ids
    are numbered by the caller, in index order.
    """
    rng = np.random.default_rng([seed, index])
    split = split_of(index)
    image_id = index + 1
    scene = sample_scene(rng, width, height, SPLIT_PROFILES[split])
    picture = render(rng, scene)
    file_name = image_file_name(image_id)
    path = os.path.join(image_dir, file_name)
    if not cv2.imwrite(path, cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise RuntimeError(f"could not write image {path}")
    image = {"id": image_id, "file_name": file_name, "width": width, "height": height,
             "split": split, "num_objects": len(scene.objects)}
    annotations = _annotations(scene, image_id)
    stats: collections.Counter[str] = collections.Counter()
    stats["objects"] += len(scene.objects)
    stats["occluded_objects"] += sum(obj.occluded for obj in scene.objects)
    looks = collections.Counter((o.shape, o.color) for o in scene.objects)
    stats["images_with_3_alike"] += max(looks.values()) >= 3
    specs = augment_specs(seed, index, _ref_specs(rng, scene, image_id, extra_per_ref), language,
                          no_target_ann_id=NO_TARGET_ANN_ID, category_ids=CATEGORY_IDS)
    return image, annotations, specs, stats


@dataclass
class RefWorld:
    """What the images add up to, numbered in image order (ref and sentence ids start at 1); any
    generated world uses it (``prefix`` starts the refs' ``file_name``)."""

    prefix: str = "synth"
    splits: tuple[str, ...] = tuple(SPLIT_PROFILES)

    images: list[dict[str, Any]] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    refs: list[dict[str, Any]] = field(default_factory=list)
    kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    per_split: dict[str, collections.Counter[str]] = field(default_factory=dict)
    stats: collections.Counter[str] = field(default_factory=collections.Counter)
    num_sentences: int = 0

    def __post_init__(self) -> None:
        self.per_split = {s: collections.Counter() for s in self.splits}

    def add(self, made: MadeImage) -> None:
        image, annotations, specs, stats = made
        image_id, split = image["id"], image["split"]
        self.images.append(image)
        self.annotations.extend(annotations)
        self.stats.update(stats)
        for spec in specs:
            sentences = []
            for s in spec["sentences"]:
                self.num_sentences += 1
                sentences.append({"sent_id": self.num_sentences, "raw": s["raw"], "sent": s["sent"],
                                  "tokens": s["sent"].split(), "kind": s["kind"], "no_target": s["no_target"],
                                  "query": s["query"], **{k: s[k] for k in ("phrasing", "negative") if k in s}})
                self.kinds[s["kind"]] += 1
            self.refs.append({
                "ref_id": len(self.refs) + 1, "ann_id": spec["ann_id"], "image_id": image_id,
                "category_id": spec["category_id"], "split": split,
                "file_name": f"{self.prefix}_{image_id:06d}_{spec['ann_id']}.png",
                "sent_ids": [s["sent_id"] for s in sentences], "sentences": sentences,
            })
            self.per_split[split]["refs"] += 1
            self.per_split[split]["sentences"] += len(sentences)
        self.per_split[split]["images"] += 1


@contextlib.contextmanager
def made_images(make: Callable[[int], MadeImage], num_images: int, workers: int) -> Iterator[Iterator[MadeImage]]:
    """``make(i)`` for every image in index order, in ``workers`` processes when more than one."""
    if workers <= 1:
        yield map(make, range(num_images))
        return
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        yield pool.imap(make, range(num_images), chunksize=16)  # in index order: ids stay sequential


def check_world_arguments(num_images: int, width: int, height: int, workers: int, no_target_fraction: float,
                          min_size: tuple[int, int] = (64, 48)) -> None:
    """The checks every generated world (2D shapes, tabletop) makes of its common arguments."""
    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if width < min_size[0] or height < min_size[1]:
        raise ValueError(f"image_size {width}x{height} is too small: objects need at least {min_size[0]}x{min_size[1]}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 0.0 <= no_target_fraction < 1.0:
        raise ValueError(f"no_target_fraction must be in [0, 1), got {no_target_fraction}")


def prepare_world_output(out_root: Path, dataset: str, patterns: tuple[str, ...], what: str,
                         overwrite: bool) -> Path:
    """Refuses (or, with ``overwrite``, clears) an existing world of ``dataset`` under ``out_root``: its
    refer files and the images matching ``patterns`` in its image folder; returns the image folder."""
    image_dir = out_root / DEFAULT_IMAGE_DIRS[dataset]
    old_images = [p for pattern in patterns for p in sorted(image_dir.glob(pattern))] if image_dir.is_dir() else []
    files = refer_files(out_root, dataset, SPLIT_BY)
    if (any(p.exists() for p in files) or old_images) and not overwrite:
        raise ValueError(f"{out_root} already holds {what} ({files[-1]}); "
                         "pass overwrite=True (--overwrite) to replace it")
    remove_refer_files(out_root, dataset, SPLIT_BY)
    for path in old_images:
        path.unlink(missing_ok=True)
    image_dir.mkdir(parents=True, exist_ok=True)
    return image_dir


def _world_info(seed: int, num_images: int, width: int, height: int, no_target_fraction: float,
                language: LanguageAugmentation) -> dict[str, Any]:
    """instances.json's ``info``: how the world was made (the tests read margins from it)."""
    return {
        "description": "CoupAlign synthetic referring segmentation benchmark",
        "generator_version": GENERATOR_VERSION, "seed": int(seed), "num_images": int(num_images),
        "image_size": [width, height], "no_target_fraction": float(no_target_fraction),
        "phrasing_fraction": float(language.phrasing_fraction),
        "ood_negative_fraction": float(language.ood_negative_fraction),
        "split_profiles": {s: {"profile": p, "objects": PROFILES[p]} for s, p in SPLIT_PROFILES.items()},
        "position_margin": ex.POSITION_MARGIN, "distance_ratio": ex.DISTANCE_RATIO,
        "min_visible_fraction": MIN_VISIBLE_FRACTION, "size_scale": SIZE_SCALE, "colors": COLORS,
    }


def generate(
    out_root: str | os.PathLike[str],
    seed: int,
    num_images: int,
    image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    no_target_fraction: float = DEFAULT_NO_TARGET_FRACTION,
    *,
    overwrite: bool = False,
    progress: bool = True,
    workers: int = 1,
    phrasing_fraction: float = 0.0,
    ood_negative_fraction: float = 0.0,
) -> dict[str, Any]:
    """Writes ``num_images`` scenes with their refs under ``out_root``; returns a summary dict.

    ``image_size`` is (width, height). ``no_target_fraction`` is the expected share of refs that
    name something absent from their image (kind ``no_target``, empty mask, ``ann_id`` -1).
    ``workers`` > 1 renders images in that many processes (see the module docstring).
    ``phrasing_fraction``: share of sentences phrased as commands people give robots;
    ``ood_negative_fraction``: expected share of refs that are out-of-domain no-target commands
    (kind ``out_of_domain``); both from ``coupalign_core.data.language``, drawn from a stream of
    their own, so the scenes and plain sentences do not change with them.
    """
    width, height = (int(v) for v in image_size)
    check_world_arguments(num_images, width, height, workers, no_target_fraction)
    language = LanguageAugmentation(phrasing_fraction=phrasing_fraction, ood_negative_fraction=ood_negative_fraction)
    out_root = Path(out_root)
    image_dir = prepare_world_output(out_root, DATASET, ("synth_*.png",), "a synthetic benchmark", overwrite)
    make = functools.partial(_make_image, seed=seed, width=width, height=height, image_dir=str(image_dir),
                             extra_per_ref=no_target_fraction / (1.0 - no_target_fraction), language=language)
    world = RefWorld()
    with made_images(make, num_images, min(int(workers), num_images)) as made:
        for image in tqdm(made, total=num_images, desc="synth", unit="img", disable=not progress, dynamic_ncols=True):
            world.add(image)

    categories = [{"id": cid, "name": shape, "supercategory": "shape"} for shape, cid in CATEGORY_IDS.items()]
    instances = {"info": _world_info(seed, num_images, width, height, no_target_fraction, language),
                 "images": world.images, "annotations": world.annotations, "categories": categories}
    inst_file, no_target_file, refs_file = write_refer(out_root, DATASET, SPLIT_BY, instances=instances,
                                                       refs=world.refs)
    log.info("wrote %d images, %d refs, %d sentences under %s", num_images, len(world.refs), world.num_sentences,
             out_root)
    return {
        "root": str(out_root), "refs_file": str(refs_file), "no_target_refs_file": str(no_target_file),
        "instances_file": str(inst_file), "image_dir": str(image_dir),
        "seed": int(seed), "image_size": [width, height],
        "splits": {s: dict(c) for s, c in world.per_split.items()},
        "kinds": {k: world.kinds[k] for k in (*ex.KINDS, *sorted(set(world.kinds) - set(ex.KINDS))) if world.kinds[k]},
        **{k: int(v) for k, v in world.stats.items()},
    }
