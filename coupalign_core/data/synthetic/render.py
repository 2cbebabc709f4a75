"""Drawing scenes with numpy/cv2: textured, low-saturation backgrounds and flat-shaded objects.

Backgrounds mix two muted colours through a pattern (gradient, stripes, checkers, clouds) so the
model cannot find objects by "anything that is not the background colour", but their saturation
stays well below the objects' so colour words stay easy. Objects are painted exactly on their
rasterised masks (no anti-aliasing), so every painted pixel belongs to the saved mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from .world import COLORS, Scene

BACKGROUND_PATTERNS = ("gradient", "stripes", "checkers", "clouds")


def _muted_color(rng: np.random.Generator) -> np.ndarray:
    """A greyish RGB colour: saturation <= 0.22, value 0.45-0.9."""
    hsv = np.array([[[rng.uniform(0, 180), rng.uniform(0, 0.22) * 255, rng.uniform(0.45, 0.9) * 255]]])
    return cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) uint8 RGB textured background."""
    pattern = BACKGROUND_PATTERNS[rng.integers(len(BACKGROUND_PATTERNS))]
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    theta = rng.uniform(0, np.pi)
    along = xx * np.cos(theta) + yy * np.sin(theta)  # (H, W) coordinate along a random direction
    if pattern == "gradient":
        t = (along - along.min()) / max(float(np.ptp(along)), 1.0)
    elif pattern == "stripes":
        period = rng.uniform(8, 28)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * along / period)
    elif pattern == "checkers":
        cell = rng.uniform(8, 24)
        across = -xx * np.sin(theta) + yy * np.cos(theta)
        t = ((np.floor(along / cell) + np.floor(across / cell)) % 2).astype(np.float32)
    else:  # clouds: smooth low-frequency noise
        coarse = rng.random((int(rng.integers(3, 7)), int(rng.integers(4, 9)))).astype(np.float32)
        t = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).clip(0, 1)
    c1, c2 = _muted_color(rng), _muted_color(rng)
    image = c1 + t[..., None] * (c2 - c1)  # (H, W, 3)
    image += rng.normal(0, 1.5, size=(height, width, 1)).astype(np.float32)  # faint grain
    return image.clip(0, 255).astype(np.uint8)


def paint_objects(rng: np.random.Generator, image: np.ndarray, scene: Scene) -> np.ndarray:
    """Paints the objects in drawing order (later ones cover earlier ones), in place; returns ``image``."""
    height, width = image.shape[:2]
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    for obj in scene.objects:
        ys, xs = np.nonzero(obj.full_mask)
        base = np.array(COLORS[obj.color], dtype=np.float32) + rng.uniform(-10, 10, size=3).astype(np.float32)
        # a gentle light gradient across the object (±12 % brightness) so it is not a flat sticker
        direction = xx[ys, xs] * np.cos(obj.shading) + yy[ys, xs] * np.sin(obj.shading)
        span = max(float(np.ptp(direction)), 1.0)
        light = 0.88 + 0.24 * (direction - direction.min()) / span
        pixels = base[None, :] * light[:, None]
        # a darker rim one pixel wide, inside the mask, separates touching objects
        inner = cv2.erode(obj.full_mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        rim = ~inner[ys, xs]
        pixels[rim] *= 0.7
        image[ys, xs] = pixels.clip(0, 255).astype(np.uint8)
    return image


def render(rng: np.random.Generator, scene: Scene) -> np.ndarray:
    """(H, W, 3) uint8 RGB picture of ``scene``."""
    return paint_objects(rng, background(rng, scene.width, scene.height), scene)
