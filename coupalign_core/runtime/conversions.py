"""sensor_msgs image <-> numpy conversions without cv_bridge and without rclpy.

Everything takes plain field values (or any object with the ``sensor_msgs/Image`` attributes: an
rclpy message, a rosbags message, :class:`ImageFields`), so the node, the bag tools and the tests
share one implementation. Every malformed input raises ``ValueError`` naming what was wrong; the
node counts and logs those and keeps serving.

Masks always travel as lossless ``mono8`` (255 = target): a JPEG mask would smear its edges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..inference.inputs import IMAGE_ENCODINGS, as_rgb

# encoding -> (channels, numpy dtype) of the colour encodings a camera frame may have: a view of
# the one encoding table, coupalign_core.inference.inputs.IMAGE_ENCODINGS.
COLOR_ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    name: (spec.channels, spec.dtype) for name, spec in IMAGE_ENCODINGS.items()
}
DEPTH_ENCODINGS: dict[str, tuple[int, np.dtype]] = {
    "16UC1": (1, np.dtype(np.uint16)),  # millimetres (REP 118), 0 = no reading
    "32FC1": (1, np.dtype(np.float32)),  # metres, NaN/inf = no reading
}
COMPRESSED_FORMATS = ("jpeg", "jpg", "png")
# Larger sides are refused: a corrupt header must not make the node allocate gigabytes.
MAX_IMAGE_SIDE = 16384


@dataclass
class ImageFields:
    """The fields of a ``sensor_msgs/Image`` (without the header), as plain Python values."""

    height: int
    width: int
    encoding: str
    is_bigendian: int
    step: int
    data: bytes


def as_uint8_buffer(data: Any, what: str) -> np.ndarray:
    """bytes, array.array('B'), a numpy uint8 array or a sequence of ints -> flat uint8 view/copy."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ValueError(f"{what} must be uint8, got dtype {data.dtype}")
        return data.reshape(-1)
    try:
        return np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    except TypeError:
        pass
    try:
        return np.asarray(data, dtype=np.uint8).reshape(-1)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{what} is not a byte buffer ({type(data).__name__}): {e}") from e


def unpack_image(msg: Any, encodings: dict[str, tuple[int, np.dtype]] | None = None) -> np.ndarray:
    """A ``sensor_msgs/Image``-like object -> (H, W) or (H, W, C) array of its encoding's dtype.

    Handles row padding (``step`` > width·bytes per pixel) and big-endian 16/32-bit data. The
    result is a copy, so it stays valid after the message buffer is reused.
    """
    encodings = COLOR_ENCODINGS if encodings is None else encodings
    encoding = str(msg.encoding)
    if encoding not in encodings:
        raise ValueError(
            f"unsupported image encoding {encoding!r}; supported: {', '.join(encodings)}"
        )
    channels, dtype = encodings[encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"zero-size image: {width}x{height} ({encoding})")
    if height > MAX_IMAGE_SIDE or width > MAX_IMAGE_SIDE:
        raise ValueError(f"image {width}x{height} is larger than {MAX_IMAGE_SIDE} pixels a side")
    row_bytes = width * channels * dtype.itemsize
    if step < row_bytes:
        raise ValueError(
            f"step {step} is smaller than width*bytes_per_pixel = {width}*{channels * dtype.itemsize}"
            f" = {row_bytes} ({encoding})"
        )
    data = as_uint8_buffer(msg.data, "image data")
    if data.size != step * height:
        raise ValueError(
            f"data size {data.size} does not match step*height = {step}*{height} = {step * height}"
            f" ({encoding} {width}x{height})"
        )
    rows = data.reshape(height, step)[:, :row_bytes]  # drop the row padding
    big = bool(int(msg.is_bigendian))
    pixels = rows.copy().view(dtype.newbyteorder(">" if big else "<") if dtype.itemsize > 1 else dtype)
    pixels = pixels.astype(dtype, copy=False)  # native byte order
    return pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)


def image_to_rgb(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/Image``-like object (rgb8, bgr8, rgba8, bgra8, mono8, mono16) -> (H,W,3) uint8 RGB.

    mono16 is scaled to 8 bits over its full range (value * 255 / 65535), like cv_bridge does.
    Alpha is dropped. The pixels are converted by ``as_rgb``, as an array from a camera driver is.
    """
    return as_rgb(unpack_image(msg, COLOR_ENCODINGS), str(msg.encoding))


def compressed_to_rgb(format: str, data: Any) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (format, data) with JPEG or PNG data -> (H,W,3) uint8 RGB.

    ``format`` is what image_transport writes ("jpeg", "png", "rgb8; jpeg compressed bgr8", ...);
    the decoder reads the real file type from the data, the format only has to name jpeg or png.
    compressedDepth and other formats are refused.
    """
    fmt = str(format).lower()
    if "compresseddepth" in fmt or not any(name in fmt for name in COMPRESSED_FORMATS):
        raise ValueError(f"unsupported compressed image format {format!r}; supported: jpeg, png")
    buffer = as_uint8_buffer(data, "compressed image data")
    if buffer.size == 0:
        raise ValueError(f"empty compressed image data (format {format!r})")
    decoded = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if decoded is None or decoded.size == 0:
        raise ValueError(f"could not decode {buffer.size} bytes of {format!r} image data")
    if decoded.dtype == np.uint16:  # 16-bit PNG
        decoded = ((decoded.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    if decoded.dtype != np.uint8:
        raise ValueError(f"decoded {format!r} image has unsupported dtype {decoded.dtype}")
    if decoded.ndim == 2:
        return cv2.cvtColor(decoded, cv2.COLOR_GRAY2RGB)
    if decoded.shape[2] == 4:
        return cv2.cvtColor(decoded, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)


def rgb_to_image_fields(image: np.ndarray, encoding: str = "rgb8") -> ImageFields:
    """(H,W,3) uint8 RGB -> Image fields in ``rgb8`` or ``bgr8`` (tightly packed rows)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an (H,W,3) uint8 RGB image, got shape {getattr(image, 'shape', None)} "
            f"dtype {getattr(image, 'dtype', type(image).__name__)}"
        )
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"encoding must be 'rgb8' or 'bgr8', got {encoding!r}")
    pixels = image if encoding == "rgb8" else image[:, :, ::-1]
    h, w = image.shape[:2]
    return ImageFields(h, w, encoding, 0, w * 3, np.ascontiguousarray(pixels).tobytes())


def mask_to_mono8(mask: np.ndarray) -> ImageFields:
    """(H, W) bool mask -> lossless mono8 Image fields, 255 = target, 0 = background."""
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] == 0 or mask.shape[1] == 0:
        raise ValueError(f"mask must be a non-empty (H, W) array, got shape {mask.shape}")
    h, w = mask.shape
    data = np.where(mask.astype(bool), np.uint8(255), np.uint8(0)).tobytes()
    return ImageFields(h, w, "mono8", 0, w, data)


def mono8_to_mask(msg: Any) -> np.ndarray:
    """A mono8 (or 8UC1) ``sensor_msgs/Image``-like mask -> (H, W) bool, non-zero = target."""
    if str(msg.encoding) not in ("mono8", "8UC1"):
        raise ValueError(f"a mask must be mono8, got encoding {msg.encoding!r}")
    return unpack_image(msg, {str(msg.encoding): (1, np.dtype(np.uint8))}) != 0
