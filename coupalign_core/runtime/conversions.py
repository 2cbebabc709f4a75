"""sensor_msgs image <-> numpy conversions without cv_bridge and without rclpy.

Everything takes plain field values (or any object with the ``sensor_msgs/Image`` attributes: an
rclpy message, a rosbags message, :class:`ImageFields`), so the bag tools, the tests and a node
without cv_bridge share one implementation; the node uses cv_bridge where it is installed, and
tests/ros checks that the two agree byte for byte. Every malformed input raises ``ValueError``
naming what was wrong; the node counts and logs those and keeps serving.

Pixels are converted by OpenCV (``cv2.cvtColor``) straight from the message buffer: no NumPy
channel flips and no copy before the conversion.

Masks always travel as lossless ``mono8`` (255 = target): a JPEG mask would smear its edges.
"""

from __future__ import annotations

import array
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from ..inference.inputs import IMAGE_ENCODINGS

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


def check_image_fields(msg: Any, encodings: dict[str, tuple[int, np.dtype]] | None = None) -> None:
    """ValueError unless the fields of a ``sensor_msgs/Image``-like object describe a valid image.

    Constant time (no pixel is read): the node checks every message as it arrives and converts
    only the frames it processes.
    """
    _layout(msg, COLOR_ENCODINGS if encodings is None else encodings, _byte_size(msg.data))


def _byte_size(data: Any) -> int:
    try:
        return memoryview(data).nbytes
    except TypeError:
        return len(data)  # a list of ints (hand-made messages); the values are checked on conversion


def _layout(msg: Any, encodings: dict[str, tuple[int, np.dtype]], size: int) -> tuple[int, int, int]:
    """(height, step, row_bytes) of a valid image of ``size`` data bytes, or ValueError."""
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
    if size != step * height:
        raise ValueError(
            f"data size {size} does not match step*height = {step}*{height} = {step * height}"
            f" ({encoding} {width}x{height})"
        )
    return height, step, row_bytes


def _rows(msg: Any, encodings: dict[str, tuple[int, np.dtype]]) -> np.ndarray:
    """(H, row_bytes) uint8 view of the message's pixel bytes without the row padding (no copy)."""
    data = as_uint8_buffer(msg.data, "image data")
    height, step, row_bytes = _layout(msg, encodings, data.size)
    return data.reshape(height, step)[:, :row_bytes]


def _pixels(msg: Any, encodings: dict[str, tuple[int, np.dtype]]) -> np.ndarray:
    """(H, W) or (H, W, C) view of the message's pixels in the message's byte order (no copy)."""
    rows = _rows(msg, encodings)
    channels, dtype = encodings[str(msg.encoding)]
    if dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">" if int(msg.is_bigendian) else "<")
    pixels = rows.view(dtype) if dtype.itemsize > 1 else rows
    height, width = int(msg.height), int(msg.width)
    return pixels.reshape(height, width, channels) if channels > 1 else pixels.reshape(height, width)


def unpack_image(msg: Any, encodings: dict[str, tuple[int, np.dtype]] | None = None) -> np.ndarray:
    """A ``sensor_msgs/Image``-like object -> (H, W) or (H, W, C) array of its encoding's dtype.

    Handles row padding (``step`` > width·bytes per pixel) and big-endian 16/32-bit data. The
    result is a copy in native byte order, so it stays valid after the message buffer is reused.
    """
    encodings = COLOR_ENCODINGS if encodings is None else encodings
    pixels = _pixels(msg, encodings)
    native = encodings[str(msg.encoding)][1]
    return pixels.astype(native, copy=True)


def scale_16_to_8(pixels: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 over the full range, rounded (value * 255 / 65535), as cv_bridge does."""
    return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def image_to_rgb(msg: Any) -> np.ndarray:
    """A ``sensor_msgs/Image``-like object (rgb8, bgr8, rgba8, bgra8, mono8, mono16) -> (H,W,3) uint8 RGB.

    mono16 is scaled to 8 bits over its full range (value * 255 / 65535), like cv_bridge does.
    Alpha is dropped. OpenCV reads the message buffer in place (row padding included) and writes
    the RGB array: one pass, one new array; rgb8 is copied once.
    """
    pixels = _pixels(msg, COLOR_ENCODINGS)
    spec = IMAGE_ENCODINGS[str(msg.encoding)]
    if spec.dtype.itemsize > 1:
        pixels = scale_16_to_8(pixels)
    if spec.to_rgb is None:
        return np.array(pixels, order="C", copy=True)
    rgb: np.ndarray = cv2.cvtColor(pixels, spec.to_rgb)
    return rgb


def decoded_to_rgb(decoded: np.ndarray | None, format: str, size: int = 0) -> np.ndarray:
    """What ``cv2.imdecode(..., IMREAD_UNCHANGED)`` gave for a CompressedImage -> (H,W,3) uint8 RGB.

    Grey, BGR and BGRA, 8 or 16 bits (16-bit PNG scaled like mono16); ValueError otherwise.
    """
    if decoded is None or decoded.size == 0:
        raise ValueError(f"could not decode {size} bytes of {format!r} image data")
    if decoded.dtype == np.uint16:  # 16-bit PNG
        decoded = scale_16_to_8(decoded)
    if decoded.dtype != np.uint8:
        raise ValueError(f"decoded {format!r} image has unsupported dtype {decoded.dtype}")
    if decoded.ndim == 2:
        code = cv2.COLOR_GRAY2RGB
    elif decoded.shape[2] == 4:
        code = cv2.COLOR_BGRA2RGB
    else:
        code = cv2.COLOR_BGR2RGB
    rgb: np.ndarray = cv2.cvtColor(decoded, code)
    return rgb


def check_compressed_format(format: str) -> None:
    """ValueError unless a CompressedImage ``format`` names jpeg or png (compressedDepth is refused)."""
    fmt = str(format).lower()
    if "compresseddepth" in fmt or not any(name in fmt for name in COMPRESSED_FORMATS):
        raise ValueError(f"unsupported compressed image format {format!r}; supported: jpeg, png")


def compressed_to_rgb(format: str, data: Any) -> np.ndarray:
    """A ``sensor_msgs/CompressedImage`` (format, data) with JPEG or PNG data -> (H,W,3) uint8 RGB.

    ``format`` is what image_transport writes ("jpeg", "png", "rgb8; jpeg compressed bgr8", ...);
    the decoder reads the real file type from the data, the format only has to name jpeg or png.
    compressedDepth and other formats are refused.
    """
    check_compressed_format(format)
    buffer = as_uint8_buffer(data, "compressed image data")
    if buffer.size == 0:
        raise ValueError(f"empty compressed image data (format {format!r})")
    return decoded_to_rgb(cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED), format, buffer.size)


def rgb_to_image_fields(image: np.ndarray, encoding: str = "rgb8") -> ImageFields:
    """(H,W,3) uint8 RGB -> Image fields in ``rgb8`` or ``bgr8`` (tightly packed rows)."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"expected an (H,W,3) uint8 RGB image, got shape {getattr(image, 'shape', None)} "
            f"dtype {getattr(image, 'dtype', type(image).__name__)}"
        )
    if encoding not in ("rgb8", "bgr8"):
        raise ValueError(f"encoding must be 'rgb8' or 'bgr8', got {encoding!r}")
    pixels = np.ascontiguousarray(image) if encoding == "rgb8" else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    h, w = image.shape[:2]
    return ImageFields(h, w, encoding, 0, w * 3, pixels.tobytes())


def _check_mask(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.shape[0] == 0 or mask.shape[1] == 0:
        raise ValueError(f"mask must be a non-empty (H, W) array, got shape {mask.shape}")
    return mask


def mask_to_mono8(mask: np.ndarray) -> ImageFields:
    """(H, W) bool mask -> lossless mono8 Image fields, 255 = target, 0 = background."""
    mask = _check_mask(mask)
    h, w = mask.shape
    data = np.where(mask.astype(bool), np.uint8(255), np.uint8(0)).tobytes()
    return ImageFields(h, w, "mono8", 0, w, data)


def depth_mm_to_image_fields(depth_mm: np.ndarray) -> ImageFields:
    """(H, W) uint16 millimetres -> ``16UC1`` Image fields (little-endian, 0 = no reading), as depth cameras publish."""
    depth_mm = np.asarray(depth_mm)
    if depth_mm.ndim != 2 or depth_mm.dtype != np.uint16:
        raise ValueError(f"depth must be a 2-D uint16 array of millimetres, got {depth_mm.dtype} {depth_mm.shape}")
    h, w = depth_mm.shape
    return ImageFields(h, w, "16UC1", 0, 2 * w, depth_mm.astype("<u2").tobytes())


def mask_to_mono8_buffer(mask: np.ndarray) -> array.array:
    """(H, W) bool mask -> its mono8 bytes (255 = target) in ``array.array('B')``, written once.

    ``array.array('B')`` is what rclpy stores a ``uint8[]`` field in, so the node assigns the
    result to ``Image.data`` as it is: OpenCV writes the mask into the message's own buffer.
    """
    mask = _check_mask(mask)
    h, w = mask.shape
    buffer = array.array("B", bytes(h * w))
    out = np.frombuffer(buffer, dtype=np.uint8).reshape(h, w)
    np.multiply(mask, np.uint8(255), out=out, casting="unsafe")
    return buffer


def mono8_to_mask(msg: Any) -> np.ndarray:
    """A mono8 (or 8UC1) ``sensor_msgs/Image``-like mask -> (H, W) bool, non-zero = target."""
    if str(msg.encoding) not in ("mono8", "8UC1"):
        raise ValueError(f"a mask must be mono8, got encoding {msg.encoding!r}")
    return unpack_image(msg, {str(msg.encoding): (1, np.dtype(np.uint8))}) != 0
