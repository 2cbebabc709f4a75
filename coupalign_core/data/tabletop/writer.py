"""Writes the tabletop world in the refer layout, with depth and camera intrinsics beside the pictures.

::

    <out_root>/tabletop/refs(unc).p, no_target_refs(unc).p, instances.json   (as the 2D world's)
    <out_root>/images/tabletop/table_*.png              colour (ReferDataset's image_root for "tabletop")
    <out_root>/images/tabletop/depth/table_*.png        depth, 16-bit PNG of millimetres (16UC1; 0 = no reading)
    <out_root>/images/tabletop/depth/table_*.npy        exact float32 depth in metres (NaN = none), with float_depth

instances.json adds, per image: ``depth_file`` (relative to the image folder), ``depth_scale``
(metres per unit, 0.001), ``camera_info`` (``sensor_msgs/CameraInfo``'s fields: frame_id, width,
height, distortion_model, d, k, r, p), ``camera_to_world`` (4x4 pose of the optical frame) and
``camera_mount``; per annotation (every object with a visible pixel): the visible-pixel mask (one
compressed RLE), ``point_3d`` (centroid of its visible surface, optical frame, metres),
``distance``, ``support`` (the annotation id it stands on or in, or None), ``visible_pixels`` and
``referable`` (enough pixels to be a target). Image ``i`` depends only on ``(seed, i)`` and the
image size: the same seed gives the same files for any ``workers``.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from tqdm import tqdm

from ..language import LanguageAugmentation
from ..refer import NO_TARGET_ANN_ID
from ..refer_writer import mask_segmentation, write_refer
from ..synthetic import expressions as ex
from ..synthetic.vocabulary import augment_specs
from ..synthetic.writer import (
    REFS_PER_IMAGE,
    SENTENCES_PER_REF,
    SPLIT_PROFILES,
    MadeImage,
    RefWorld,
    check_world_arguments,
    made_images,
    prepare_world_output,
)
from ..synthetic.writer import split_of as split_of
from . import expressions as tx
from .render import RENDERERS, Frame, process_renderer, projection_from_k, visible_objects
from .vocabulary import world_words
from .world import CATEGORIES, PROFILES, SIZE_SCALE, TableScene, sample_scene

log = logging.getLogger(__name__)

DATASET = "tabletop"
SPLIT_BY = "unc"
GENERATOR_VERSION = 1
PREFIX = "table"
DEFAULT_IMAGE_SIZE = (256, 192)
DEFAULT_NO_TARGET_FRACTION = 0.1
DEPTH_SCALE = 0.001  # metres per unit of the 16-bit depth PNGs
OPTICAL_FRAME = "camera_color_optical_frame"  # the RealSense driver's name for the colour camera's optical frame
# An object is a possible target only when this share of the image (and MIN_VISIBLE_PIXELS) of it is seen.
MIN_VISIBLE_FRACTION = 0.0015
MIN_VISIBLE_PIXELS = 24
CATEGORY_IDS = {name: i + 1 for i, name in enumerate(CATEGORIES)}


def image_file_name(image_id: int) -> str:
    return f"{PREFIX}_{image_id:06d}.png"


def depth_file_name(image_id: int, ext: str = "png") -> str:
    return f"depth/{PREFIX}_{image_id:06d}.{ext}"


def min_visible_pixels(width: int, height: int) -> int:
    return max(MIN_VISIBLE_PIXELS, int(round(MIN_VISIBLE_FRACTION * width * height)))


def camera_info(frame: Frame) -> dict[str, Any]:
    """``sensor_msgs/CameraInfo`` fields of ``frame``'s camera (no distortion, no rectification)."""
    return {"frame_id": OPTICAL_FRAME, "width": frame.width, "height": frame.height,
            "distortion_model": "plumb_bob", "d": [0.0] * 5, "k": [float(v) for v in frame.k],
            "r": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            "p": [float(v) for v in projection_from_k(frame.k).reshape(-1)]}


def scene_views(scene: TableScene, frame: Frame) -> tuple[list[tx.TableView], list[int], list[int]]:
    """Resolver views of the objects the camera sees (scene order), their scene indices and visible pixel counts."""
    seen = visible_objects(frame, len(scene.objects))
    indices = [i for i, v in enumerate(seen) if v is not None]
    view_of = {i: j for j, i in enumerate(indices)}
    views, pixels = [], []
    for i in indices:
        obj, vis = scene.objects[i], seen[i]
        assert vis is not None
        ys, xs = np.nonzero(frame.mask(i))
        point = vis["point"]
        support = view_of.get(obj.support) if obj.support is not None else None
        views.append(tx.TableView(obj.category, obj.color, obj.size, float(xs.mean()) / frame.width,
                                  float(ys.mean()) / frame.height, cam_x=float(point[0]), cam_z=float(point[2]),
                                  distance=float(np.linalg.norm(point)), support=support))
        pixels.append(int(vis["pixels"]))
    return views, indices, pixels


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _make_image(index: int, *, seed: int, width: int, height: int, image_dir: str, extra_per_ref: float,
                renderer: str, float_depth: bool, language: LanguageAugmentation = LanguageAugmentation()
                ) -> MadeImage:
    """Image ``index``: renders and writes its colour and depth, returns (image record, annotations, refs, stats)."""
    rng = np.random.default_rng([seed, index])
    split = split_of(index)
    image_id = index + 1
    scene = sample_scene(rng, SPLIT_PROFILES[split])
    frame = process_renderer(renderer).render(scene, width, height)
    file_name = image_file_name(image_id)
    for path, data in ((os.path.join(image_dir, file_name), cv2.cvtColor(frame.rgb, cv2.COLOR_RGB2BGR)),
                       (os.path.join(image_dir, depth_file_name(image_id)), frame.depth_mm())):
        if not cv2.imwrite(path, data):
            raise RuntimeError(f"could not write image {path}")
    if float_depth:
        np.save(os.path.join(image_dir, depth_file_name(image_id, "npy")), frame.depth)
    views, indices, pixels = scene_views(scene, frame)
    threshold = min_visible_pixels(width, height)
    can_refer = [n >= threshold for n in pixels]
    annotations = []
    for j, (view, i, n) in enumerate(zip(views, indices, pixels)):
        obj, mask = scene.objects[i], frame.mask(i)
        point = frame.points(mask).mean(axis=0)
        annotations.append({
            "id": image_id * 100 + j, "image_id": image_id, "category_id": CATEGORY_IDS[obj.category],
            "segmentation": mask_segmentation(mask), "area": float(n), "bbox": _bbox(mask), "iscrowd": 0,
            "attributes": {"category": obj.category, "color": obj.color, "size": obj.size},
            "point_3d": [float(v) for v in point], "distance": view.distance,
            "support": None if view.support is None else image_id * 100 + view.support,
            "visible_pixels": n, "referable": can_refer[j],
        })
    num_refs = int(rng.integers(REFS_PER_IMAGE[0], REFS_PER_IMAGE[1] + 1))
    expected_extra = num_refs * extra_per_ref
    num_no_target = int(expected_extra) + int(rng.random() < expected_extra - int(expected_extra))
    specs = []
    for spec in tx.make_refs(rng, views, num_refs=num_refs, sentences_per_ref=SENTENCES_PER_REF,
                             num_no_target=num_no_target, can_refer=can_refer):
        specs.append({
            "ann_id": NO_TARGET_ANN_ID if spec.target is None else image_id * 100 + spec.target,
            "category_id": CATEGORY_IDS[spec.shape],
            "sentences": [{"raw": s["raw"], "sent": s["sent"], "kind": s["kind"], "no_target": s["no_target"],
                           "query": s["query"]} for s in spec.sentences],
        })
    specs = augment_specs(seed, index, specs, language, no_target_ann_id=NO_TARGET_ANN_ID, category_ids=CATEGORY_IDS,
                          words=world_words(), lexicon=tx.LEXICON)
    image = {"id": image_id, "file_name": file_name, "width": width, "height": height, "split": split,
             "num_objects": len(views), "depth_file": depth_file_name(image_id), "depth_scale": DEPTH_SCALE,
             "camera_info": camera_info(frame),
             "camera_to_world": [[float(v) for v in row] for row in frame.camera_to_world],
             "camera_mount": scene.camera.mount}
    if float_depth:
        image["float_depth_file"] = depth_file_name(image_id, "npy")
    stats: collections.Counter[str] = collections.Counter()
    stats["objects"] += len(views)
    stats["referable_objects"] += sum(can_refer)
    stats["stacked_objects"] += sum(v.support is not None and v.shape != tx.TRAY and views[v.support].shape != tx.TRAY
                                    for v in views if v.support is not None)
    stats["objects_in_tray"] += sum(v.support is not None and views[v.support].shape == tx.TRAY for v in views)
    looks = collections.Counter((v.shape, v.color) for v in views)
    stats["images_with_3_alike"] += bool(looks) and max(looks.values()) >= 3
    return image, annotations, specs, stats


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
    renderer: str = "tiny",
    float_depth: bool = False,
    phrasing_fraction: float = 0.0,
    ood_negative_fraction: float = 0.0,
) -> dict[str, Any]:
    """Renders ``num_images`` tabletop scenes with their refs under ``out_root``; returns a summary dict.

    The arguments are the 2D world's (:func:`coupalign_core.data.synthetic.generate`) plus
    ``renderer`` ("tiny": pybullet's CPU renderer; "egl": its GPU plug-in) and ``float_depth``
    (also write the exact float depth as .npy).
    """
    width, height = (int(v) for v in image_size)
    check_world_arguments(num_images, width, height, workers, no_target_fraction, min_size=(32, 24))
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}; known: {RENDERERS}")
    language = LanguageAugmentation(phrasing_fraction=phrasing_fraction, ood_negative_fraction=ood_negative_fraction)
    out_root = Path(out_root)
    image_dir = prepare_world_output(out_root, DATASET, (f"{PREFIX}_*.png", f"depth/{PREFIX}_*"),
                                     "a tabletop world", overwrite)
    (image_dir / "depth").mkdir(exist_ok=True)
    make = functools.partial(_make_image, seed=seed, width=width, height=height, image_dir=str(image_dir),
                             extra_per_ref=no_target_fraction / (1.0 - no_target_fraction), renderer=renderer,
                             float_depth=float_depth, language=language)
    world = RefWorld(prefix=PREFIX)
    with made_images(make, num_images, min(int(workers), num_images)) as made:
        for image in tqdm(made, total=num_images, desc="sim", unit="img", disable=not progress, dynamic_ncols=True):
            world.add(image)
    categories = [{"id": cid, "name": name, "supercategory": "object"} for name, cid in CATEGORY_IDS.items()]
    info = {
        "description": "CoupAlign tabletop RGB-D referring segmentation world", "generator_version": GENERATOR_VERSION,
        "seed": int(seed), "num_images": int(num_images), "image_size": [width, height],
        "no_target_fraction": float(no_target_fraction), "phrasing_fraction": float(phrasing_fraction),
        "ood_negative_fraction": float(ood_negative_fraction), "renderer": renderer,
        "split_profiles": {s: {"profile": p, "objects": PROFILES[p]} for s, p in SPLIT_PROFILES.items()},
        "position_margin": ex.POSITION_MARGIN, "distance_ratio": ex.DISTANCE_RATIO,
        "depth_margin": tx.DEPTH_MARGIN, "lateral_band": tx.LATERAL_BAND,
        "min_visible_pixels": min_visible_pixels(width, height), "size_scale": SIZE_SCALE,
        "depth_scale": DEPTH_SCALE,
    }
    instances = {"info": info, "images": world.images, "annotations": world.annotations, "categories": categories}
    inst_file, no_target_file, refs_file = write_refer(out_root, DATASET, SPLIT_BY, instances=instances,
                                                       refs=world.refs)
    log.info("wrote %d images, %d refs, %d sentences under %s", num_images, len(world.refs), world.num_sentences,
             out_root)
    return {
        "root": str(out_root), "refs_file": str(refs_file), "no_target_refs_file": str(no_target_file),
        "instances_file": str(inst_file), "image_dir": str(image_dir), "seed": int(seed),
        "image_size": [width, height], "splits": {s: dict(c) for s, c in world.per_split.items()},
        "kinds": {k: world.kinds[k] for k in (*tx.KINDS, *sorted(set(world.kinds) - set(tx.KINDS))) if world.kinds[k]},
        **{k: int(v) for k, v in world.stats.items()},
    }


def load_depth(image_dir: str | os.PathLike[str], image: dict[str, Any]) -> np.ndarray:
    """(H, W) float32 metres of an image record's depth PNG, NaN where there is no reading."""
    path = Path(image_dir) / image["depth_file"]
    raw: Optional[np.ndarray] = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if raw is None or raw.dtype != np.uint16:
        raise ValueError(f"{path} is not a 16-bit depth PNG")
    meters = raw.astype(np.float32) * float(image.get("depth_scale", DEPTH_SCALE))
    meters[raw == 0] = np.nan
    return meters
