"""Image input checks and explicit colour conversions.

The Segmenter takes exactly one image layout, (H, W, 3) uint8 RGB, and refuses anything else
instead of guessing: a BGR frame passed as RGB segments fine but with swapped colours, which is
the kind of silent error a robot must not make. Cameras that deliver other layouts convert with
``as_rgb(image, encoding=...)``, naming what they have.
"""

from __future__ import annotations

import cv2
import numpy as np

# encoding -> (channels it must have, cv2 conversion code or None). ROS sensor_msgs/Image names
# (rgb8, bgr8, mono8, ...) are accepted as aliases so a ROS node can pass msg.encoding through.
_ENCODINGS: dict[str, tuple[int, int | None]] = {
    "rgb": (3, None),
    "bgr": (3, cv2.COLOR_BGR2RGB),
    "rgba": (4, cv2.COLOR_RGBA2RGB),
    "bgra": (4, cv2.COLOR_BGRA2RGB),
    "gray": (1, cv2.COLOR_GRAY2RGB),
}
_ALIASES = {
    "rgb8": "rgb", "bgr8": "bgr", "rgba8": "rgba", "bgra8": "bgra",
    "mono8": "gray", "grey": "gray", "grayscale": "gray", "l": "gray", "8uc1": "gray",
}
ENCODINGS = tuple(sorted(set(_ENCODINGS) | set(_ALIASES)))


def _describe(image: object) -> str:
    shape = getattr(image, "shape", None)
    dtype = getattr(image, "dtype", None)
    if shape is None:
        return f"a {type(image).__name__}"
    return f"shape {tuple(shape)} dtype {dtype}"


def check_rgb_image(image: object, name: str = "image") -> np.ndarray:
    """Returns ``image`` as a C-contiguous (H,W,3) uint8 array, or raises ValueError.

    The error names the shape and dtype it got and how to convert. A view with negative strides
    (``bgr[..., ::-1]``) is copied, because OpenCV cannot read those.
    """
    if (
        not isinstance(image, np.ndarray)
        or image.dtype != np.uint8
        or image.ndim != 3
        or image.shape[2] != 3
        or image.shape[0] < 1
        or image.shape[1] < 1
    ):
        raise ValueError(
            f"{name} must be an (H,W,3) uint8 RGB array with H, W >= 1, got {_describe(image)}; "
            "convert grayscale, RGBA or BGR input with "
            "coupalign_core.inference.as_rgb(image, encoding='gray'|'rgba'|'bgr'|...)"
        )
    return image if image.flags.c_contiguous else np.ascontiguousarray(image)


def as_rgb(image: np.ndarray, encoding: str = "rgb") -> np.ndarray:
    """Converts an image in the named ``encoding`` to (H,W,3) uint8 RGB.

    encodings: ``rgb``, ``bgr``, ``rgba``, ``bgra`` (alpha dropped, not composited), ``gray``
    ((H,W) or (H,W,1), replicated to three channels), and the ROS aliases ``rgb8``, ``bgr8``,
    ``rgba8``, ``bgra8``, ``mono8``. Only uint8 is accepted: a 16-bit or float image has no single
    right mapping to 8 bits, so the caller decides it. Raises ValueError naming the shape and
    dtype when the array does not fit the encoding.
    """
    key = _ALIASES.get(encoding.lower(), encoding.lower())
    if key not in _ENCODINGS:
        raise ValueError(f"unknown image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    channels, code = _ENCODINGS[key]
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array in encoding {encoding!r}, got {_describe(image)}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"encoding {encoding!r} needs a uint8 array, got {_describe(image)}; scale it to 8 bits first"
        )
    if channels == 1 and image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    expected_ndim = 2 if channels == 1 else 3
    if (
        image.ndim != expected_ndim
        or (channels > 1 and image.shape[2] != channels)
        or image.shape[0] < 1
        or image.shape[1] < 1
    ):
        layout = "(H,W) or (H,W,1)" if channels == 1 else f"(H,W,{channels})"
        raise ValueError(f"encoding {encoding!r} needs a {layout} uint8 array, got {_describe(image)}")
    image = np.ascontiguousarray(image)
    if code is None:
        return image
    return cv2.cvtColor(image, code)
