"""The 3D point a robot can move to: the centroid of a mask back-projected through aligned depth.

ROS-free: the node feeds it ``sensor_msgs/Image`` depth (16UC1 millimetres or 32FC1 metres, REP 118)
and the ``K`` of the depth camera's ``CameraInfo``; the result becomes a ``geometry_msgs/PointStamped``
in the depth image's frame. ``coupalign bag-eval`` scores the same function against ground truth.

A predicted mask's edge pixels often fall on whatever lies behind the object (the table, a wall),
and a plain mean of their 3D points is pulled towards it. :func:`mask_centroid_3d` therefore first
drops the mask's rim (``erode_px``, when enough pixels remain), then keeps the pixels whose depth lies
within a band around the median depth (the band widens with the median absolute deviation, so a deep
object keeps its own far side) and averages those. The rim goes because the band alone cannot tell
an object from the table right behind it (docs/tabletop_benchmark.md measures both).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from ..data.transforms import resize_mask
from .conversions import DEPTH_ENCODINGS, unpack_image


@dataclass(frozen=True)
class TargetPoint:
    """Centroid in the camera's optical frame (metres) and how many depth pixels it rests on."""

    x: float
    y: float
    z: float
    num_points: int  # valid depth pixels within the inlier band (the ones averaged)


# Inlier band around the median depth: max(DEPTH_BAND_MIN_M, DEPTH_BAND_MADS * 1.4826 * MAD), where
# 1.4826 * MAD estimates the standard deviation of the object's own depths.
DEPTH_BAND_MIN_M = 0.03
DEPTH_BAND_MADS = 3.0
ERODE_PX = 1  # rim of the mask left out ...
ERODE_KEEP = 0.25  # ... unless less than this share of its valid pixels would remain


def depth_to_meters(msg: Any) -> np.ndarray:
    """A depth ``sensor_msgs/Image``-like object -> (H, W) float32 metres, NaN where there is no reading.

    16UC1 is millimetres with 0 = no reading; 32FC1 is metres with 0, NaN and ±inf = no reading.
    """
    depth = unpack_image(msg, DEPTH_ENCODINGS)
    if depth.dtype == np.uint16:
        meters = depth.astype(np.float32) * 1e-3
    else:
        meters = depth.astype(np.float32, copy=True)
    meters[~np.isfinite(meters) | (meters <= 0)] = np.nan
    return meters


def intrinsics_from_k(k: Sequence[float] | np.ndarray) -> tuple[float, float, float, float]:
    """CameraInfo ``k`` (row-major 3x3, 9 values) -> (fx, fy, cx, cy); refuses an uncalibrated K."""
    values = np.asarray(k, dtype=np.float64).reshape(-1)
    if values.size != 9:
        raise ValueError(f"camera matrix K must have 9 values, got {values.size}")
    fx, fy, cx, cy = values[0], values[4], values[2], values[5]
    if not (np.isfinite([fx, fy, cx, cy]).all() and fx > 0 and fy > 0):
        raise ValueError(f"camera matrix K is not calibrated (fx={fx}, fy={fy}, cx={cx}, cy={cy})")
    return float(fx), float(fy), float(cx), float(cy)


def mask_centroid_3d(
    mask: np.ndarray,
    depth_m: np.ndarray,
    k: Sequence[float] | np.ndarray,
    *,
    min_depth: float = 0.0,
    max_depth: float = float("inf"),
    min_points: int = 1,
    erode_px: int = ERODE_PX,
) -> TargetPoint | None:
    """Mean of the 3D points under ``mask`` whose depth is near the median (see the module
    docstring); None when fewer than ``min_points`` have valid depth.

    mask (H, W) bool in the colour image; depth_m (Hd, Wd) float32 metres aligned to the colour
    image (NaN = invalid) and ``k`` the depth camera's K. When the sizes differ (depth registered at
    a lower resolution) the mask is resized to the depth image with nearest neighbour.
    Depth outside [min_depth, max_depth] is ignored like a missing reading. ``erode_px`` = 0 keeps
    the rim.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2 or depth_m.ndim != 2:
        raise ValueError(f"mask and depth must be 2-D, got {mask.shape} and {depth_m.shape}")
    if mask.shape != depth_m.shape:
        mask = resize_mask(mask, depth_m.shape)
    fx, fy, cx, cy = intrinsics_from_k(k)
    valid = mask & np.isfinite(depth_m) & (depth_m >= min_depth) & (depth_m <= max_depth)
    need = max(1, int(min_points))
    if erode_px > 0:
        kernel = np.ones((2 * erode_px + 1, 2 * erode_px + 1), np.uint8)
        inner = valid & cv2.erode(mask.astype(np.uint8), kernel).astype(bool)
        if inner.sum() >= max(need, ERODE_KEEP * valid.sum()):
            valid = inner
    vs, us = np.nonzero(valid)
    if us.size < need:
        return None
    z = depth_m[vs, us].astype(np.float64)  # (N,)
    keep = depth_inliers(z)
    us, vs, z = us[keep], vs[keep], z[keep]
    x = (us.astype(np.float64) - cx) * z / fx
    y = (vs.astype(np.float64) - cy) * z / fy
    return TargetPoint(float(x.mean()), float(y.mean()), float(z.mean()), int(us.size))


def depth_inliers(z: np.ndarray, *, band_min: float = DEPTH_BAND_MIN_M, mads: float = DEPTH_BAND_MADS) -> np.ndarray:
    """(N,) bool: the depths within ``max(band_min, mads * 1.4826 * MAD)`` of the median of ``z`` (N >= 1)."""
    median = float(np.median(z))
    deviation = np.abs(z - median)
    band = max(float(band_min), float(mads) * 1.4826 * float(np.median(deviation)))
    return deviation <= band
