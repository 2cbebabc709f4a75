"""Drawing helpers for masks and boxes on RGB images (the segment verb, the ROS overlay, reports).

Everything here takes and returns (H, W, 3) uint8 RGB arrays and never modifies its input, so a
caller can draw several overlays from one frame.
"""

from __future__ import annotations

from typing import Optional, Sequence

import cv2
import numpy as np

# A saturated green that stays visible on most scenes; RGB order like every image in this project.
DEFAULT_MASK_COLOR: tuple[int, int, int] = (30, 220, 60)
DEFAULT_BOX_COLOR: tuple[int, int, int] = (255, 200, 0)


def _check_rgb(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise ValueError(f"expected an (H,W,3) uint8 RGB image, got shape {shape} dtype {dtype}")


def _check_color(color: Sequence[int]) -> tuple[int, int, int]:
    if len(color) != 3 or any(not 0 <= int(c) <= 255 for c in color):
        raise ValueError(f"color must be three integers in [0, 255] (R, G, B), got {tuple(color)}")
    return tuple(int(c) for c in color)  # type: ignore[return-value]


def overlay_mask(
    image: np.ndarray,
    mask: np.ndarray,
    color: Sequence[int] = DEFAULT_MASK_COLOR,
    alpha: float = 0.5,
    contour_thickness: int = 2,
) -> np.ndarray:
    """Blend ``color`` into ``image`` where ``mask`` is True and outline the mask.

    image (H,W,3) uint8 RGB; mask (H,W) bool (any dtype: nonzero is foreground). ``alpha`` is the
    colour's weight inside the mask; 0 leaves only the contour. ``contour_thickness`` 0 draws no
    contour. Returns a new (H,W,3) uint8 image.
    """
    _check_rgb(image)
    mask = np.asarray(mask)
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's (H, W) {image.shape[:2]}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = np.asarray(_check_color(color), dtype=np.float32)
    fg = mask.astype(bool)
    out = image.copy()
    if fg.any() and alpha > 0:
        blended = image[fg].astype(np.float32) * (1.0 - alpha) + rgb * alpha  # (K, 3)
        out[fg] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    if contour_thickness > 0 and fg.any():
        contours, _ = cv2.findContours(fg.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, tuple(int(c) for c in rgb), contour_thickness)
    return out


def draw_bbox(
    image: np.ndarray,
    bbox: Optional[Sequence[int]],
    color: Sequence[int] = DEFAULT_BOX_COLOR,
    thickness: int = 2,
    label: Optional[str] = None,
) -> np.ndarray:
    """Draw a box ``(x0, y0, x1, y1)`` (x1/y1 exclusive, image pixels) and an optional label.

    ``bbox`` None returns an unchanged copy, so ``draw_bbox(img, result.bbox)`` needs no check.
    The label is drawn with OpenCV's Hershey font, which covers ASCII only: other characters are
    replaced by '?'.
    """
    _check_rgb(image)
    out = image.copy()
    if bbox is None:
        return out
    if len(bbox) != 4:
        raise ValueError(f"bbox must be (x0, y0, x1, y1), got {tuple(bbox)}")
    x0, y0, x1, y1 = (int(v) for v in bbox)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(f"bbox must have x1 > x0 and y1 > y0, got {(x0, y0, x1, y1)}")
    rgb = _check_color(color)
    # cv2.rectangle takes inclusive corners.
    cv2.rectangle(out, (x0, y0), (x1 - 1, y1 - 1), rgb, thickness)
    if label:
        text = label.encode("ascii", "replace").decode("ascii")
        scale = max(0.4, min(image.shape[:2]) / 800.0)
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        ty = y0 - 4 if y0 - th - base - 4 >= 0 else min(y1 + th + 4, image.shape[0] - base)
        cv2.rectangle(out, (x0, ty - th - base), (x0 + tw + 2, ty + base), rgb, -1)
        cv2.putText(out, text, (x0 + 1, ty), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
