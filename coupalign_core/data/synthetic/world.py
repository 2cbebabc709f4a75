"""Scene sampling for the synthetic benchmark: what objects there are and where (no pixels drawn here).

An object is a shape (circle, square, ...) of one of six clear colours and one of two sizes, drawn
as a polygon. Objects are placed one by one; a later object may partly cover an earlier one of a
*different* colour (two same-coloured objects never touch, so they never merge into one blob), and
every object keeps at least ``MIN_VISIBLE_FRACTION`` of its area visible. An object's mask is its
visible part; its position, for every location word, is the centroid of that visible part.

Masks are rasterised with pycocotools from the same polygons that instances.json stores, so the
painted pixels, the saved polygons and the masks the loader decodes are the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pycocotools.mask as mask_utils

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "diamond", "cross")
# Saturated, mutually distinct hues; backgrounds are kept grey-ish so these stand out.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 85, 220),
    "yellow": (240, 210, 35),
    "purple": (145, 55, 190),
    "orange": (245, 130, 25),
}
SIZES: tuple[str, ...] = ("small", "large")
# Shape scale r as a fraction of the shorter image side (jittered ±8 %). At the default 192x144
# a small circle is ~22 px across, a large one ~37 px; resized to 96x96 that is >= 11 px wide.
SIZE_SCALE: dict[str, float] = {"small": 0.078, "large": 0.13}
MIN_VISIBLE_FRACTION = 0.6  # an occluded object keeps at least this share of its area
GAP_PX = 3  # objects that do not overlap are at least this far apart
OCCLUSION_PROB = 0.35  # chance that a new object may be placed over earlier ones

# Object counts per scene profile: train/val mix sparse and crowded scenes; testA is sparse (3-6
# objects), testB crowded (7-12), which makes location words matter more (RefCOCO's testA/testB
# differ by category, people vs objects; here they differ by clutter).
PROFILES: dict[str, tuple[tuple[float, int, int], ...]] = {
    "mixed": ((0.8, 3, 8), (0.2, 9, 12)),  # (probability, min objects, max objects)
    "sparse": ((1.0, 3, 6),),
    "crowded": ((1.0, 7, 12),),
}
GROUP_PROB = 0.6  # a scene holds a group of 3-4 identical objects (only location words separate them)
PAIR_PROB = 0.5  # ... and/or a pair of identical objects


@dataclass
class SceneObject:
    shape: str
    color: str
    size: str
    polygon: np.ndarray  # (K, 2) float x, y in pixels
    full_mask: np.ndarray  # (H, W) bool, the whole shape
    mask: np.ndarray  # (H, W) bool, the visible part (starts as full_mask, shrinks as objects cover it)
    shading: float = 0.0  # direction (radians) of the object's light gradient, for the renderer

    @property
    def full_area(self) -> int:
        return int(self.full_mask.sum())

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def occluded(self) -> bool:
        return self.area < self.full_area

    def centroid(self) -> tuple[float, float]:
        """(x, y) of the visible part, in pixels."""
        return mask_centroid(self.mask)


@dataclass
class Scene:
    width: int
    height: int
    objects: list[SceneObject]  # in drawing order: a later object covers an earlier one


def mask_centroid(mask: np.ndarray) -> tuple[float, float]:
    ys, xs = np.nonzero(mask)
    return float(xs.mean()), float(ys.mean())


def shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """(K, 2) polygon of ``shape`` centred at (cx, cy) with scale r, rotated by ``angle`` radians.

    Each shape's proportions are tuned so the two size classes look alike in area across shapes.
    """
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * r
    elif shape == "square":
        s = 0.9 * r
        pts = np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    elif shape == "triangle":
        t = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3  # apex up
        pts = np.stack([np.cos(t), np.sin(t)], 1) * 1.25 * r
        pts[:, 1] += 0.2 * r  # visual centre
    elif shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.3 * r, 0.6 * r)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radii[:, None]
    elif shape == "diamond":
        pts = np.array([[0, -1.2 * r], [0.92 * r, 0], [0, 1.2 * r], [-0.92 * r, 0]])
    elif shape == "cross":
        a, b = 1.1 * r, 0.4 * r
        pts = np.array([[-b, -a], [b, -a], [b, -b], [a, -b], [a, b], [b, b], [b, a], [-b, a],
                        [-b, b], [-a, b], [-a, -b], [-b, -b]])
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    return pts.astype(np.float64) @ rot.T + np.array([cx, cy])


def polygon_to_coco(polygon: np.ndarray) -> list[float]:
    """Flat [x0, y0, x1, y1, ...] rounded to 0.01 px: what instances.json stores and masks are made from."""
    return [round(float(v), 2) for v in polygon.reshape(-1)]


def rasterize(coco_polygon: list[float], height: int, width: int) -> np.ndarray:
    """(H, W) bool: pycocotools' rasterisation, the one every COCO loader decodes polygons with."""
    rle = mask_utils.frPyObjects([coco_polygon], height, width)
    return mask_utils.decode(rle)[:, :, 0].astype(bool)


def sample_num_objects(rng: np.random.Generator, profile: str) -> int:
    options = PROFILES[profile]
    pick = rng.choice(len(options), p=[o[0] for o in options])
    _, lo, hi = options[pick]
    return int(rng.integers(lo, hi + 1))


def sample_attributes(rng: np.random.Generator, n: int) -> list[tuple[str, str, str]]:
    """(shape, colour, size) per object: maybe a group of 3-4 identical objects, maybe a pair, rest random."""
    attrs: list[tuple[str, str, str]] = []

    def random_combo() -> tuple[str, str, str]:
        return (SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))], SIZES[rng.integers(2)])

    if n >= 3 and rng.random() < GROUP_PROB:
        size = 4 if n >= 5 and rng.random() < 0.3 else 3
        attrs += [random_combo()] * size
    if n - len(attrs) >= 2 and rng.random() < PAIR_PROB:
        attrs += [random_combo()] * 2
    while len(attrs) < n:
        attrs.append(random_combo())
    order = rng.permutation(len(attrs))  # drawing order
    return [attrs[i] for i in order]


_GAP_KERNEL = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * GAP_PX + 1, 2 * GAP_PX + 1))


def sample_scene(rng: np.random.Generator, width: int, height: int, profile: str = "mixed",
                 max_tries: int = 60) -> Scene:
    """Places 3-12 objects (per ``profile``) with bounded partial occlusion; see the module docstring."""
    if profile not in PROFILES:
        raise ValueError(f"unknown scene profile {profile!r}; known: {tuple(PROFILES)}")
    n = sample_num_objects(rng, profile)
    short = min(width, height)
    objects: list[SceneObject] = []
    occupied = np.zeros((height, width), dtype=bool)  # union of full masks
    by_color: dict[str, np.ndarray] = {}
    for shape, color, size in sample_attributes(rng, n):
        may_occlude = rng.random() < OCCLUSION_PROB
        for _ in range(max_tries):
            r = SIZE_SCALE[size] * short * rng.uniform(0.92, 1.08)
            reach = 1.35 * r + 1  # every shape fits in this radius
            if 2 * reach >= min(width, height):
                raise ValueError(f"image {width}x{height} is too small for a {size} object")
            cx = rng.uniform(reach, width - reach)
            cy = rng.uniform(reach, height - reach)
            angle = 0.0 if shape == "circle" else rng.uniform(-0.21, 0.21)  # ±12°: a square stays a square
            polygon = shape_polygon(shape, cx, cy, r, angle)
            full = rasterize(polygon_to_coco(polygon), height, width)
            halo = cv2.dilate(full.astype(np.uint8), _GAP_KERNEL).astype(bool)
            same_color = by_color.get(color)
            if same_color is not None and (halo & same_color).any():
                continue
            if not may_occlude and (halo & occupied).any():
                continue
            if may_occlude and (full & occupied).any():
                if any((o.mask & ~full).sum() < MIN_VISIBLE_FRACTION * o.full_area for o in objects):
                    continue
            break
        else:
            continue  # no room: the scene gets one object fewer
        for o in objects:
            o.mask &= ~full
        objects.append(SceneObject(shape, color, size, polygon, full, full.copy(), float(rng.uniform(0, 2 * np.pi))))
        occupied |= full
        by_color[color] = full if same_color is None else (same_color | full)
    if len(objects) < 3:  # a very unlucky draw: start again with fresh randomness
        return sample_scene(rng, width, height, profile, max_tries)
    return Scene(width, height, objects)
