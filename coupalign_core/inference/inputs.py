"""Image input checks and explicit colour conversions.

The Segmenter takes exactly one image layout, (H, W, 3) uint8 RGB, and refuses anything else
instead of guessing: a BGR frame passed as RGB segments fine but with swapped colours, which is
the kind of silent error a robot must not make. Cameras that deliver other layouts convert with
``as_rgb(image, encoding=...)``, naming what they have; ``IMAGE_ENCODINGS`` is the project's one
table of pixel encodings (the ROS message conversions read it too).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np


@dataclass(frozen=True)
class ImageEncoding:
    """One pixel layout: how many channels of which dtype, and how it becomes RGB.

    The one table of encodings in the project: ``as_rgb`` reads it for arrays, and
    ``coupalign_core.runtime.conversions`` for ``sensor_msgs/Image`` messages.
    """

    name: str  # the REP 104 / sensor_msgs/image_encodings name
    channels: int
    dtype: np.dtype
    to_rgb: Optional[int]  # cv2.cvtColor code to RGB; None: already RGB
    aliases: tuple[str, ...] = ()  # other names as_rgb accepts (case-insensitive)


IMAGE_ENCODINGS: dict[str, ImageEncoding] = {e.name: e for e in (
    ImageEncoding("rgb8", 3, np.dtype(np.uint8), None, ("rgb",)),
    ImageEncoding("bgr8", 3, np.dtype(np.uint8), cv2.COLOR_BGR2RGB, ("bgr",)),
    ImageEncoding("rgba8", 4, np.dtype(np.uint8), cv2.COLOR_RGBA2RGB, ("rgba",)),
    ImageEncoding("bgra8", 4, np.dtype(np.uint8), cv2.COLOR_BGRA2RGB, ("bgra",)),
    ImageEncoding("mono8", 1, np.dtype(np.uint8), cv2.COLOR_GRAY2RGB, ("gray", "grey", "grayscale", "l", "8uc1")),
    # 16-bit grey is scaled to 8 bits over its full range (value * 255 / 65535), as cv_bridge does
    ImageEncoding("mono16", 1, np.dtype(np.uint16), cv2.COLOR_GRAY2RGB),
)}
_BY_NAME: dict[str, ImageEncoding] = {
    name: e for e in IMAGE_ENCODINGS.values() for name in (e.name, *e.aliases)
}
ENCODINGS = tuple(sorted(_BY_NAME))


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

    encodings (see ``IMAGE_ENCODINGS``): ``rgb8``, ``bgr8``, ``rgba8``, ``bgra8`` (alpha dropped,
    not composited), ``mono8`` ((H,W) or (H,W,1), replicated to three channels) and ``mono16``
    (uint16, scaled to 8 bits over its full range like cv_bridge), with the short names ``rgb``,
    ``bgr``, ``rgba``, ``bgra``, ``gray``. Every other encoding is uint8 only: a 16-bit or float
    colour image has no single right mapping to 8 bits, so the caller decides it. Raises
    ValueError naming the shape and dtype when the array does not fit the encoding.
    """
    spec = _BY_NAME.get(encoding.lower())
    if spec is None:
        raise ValueError(f"unknown image encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    if not isinstance(image, np.ndarray):
        raise ValueError(f"expected a numpy array in encoding {encoding!r}, got {_describe(image)}")
    if image.dtype != spec.dtype:
        hint = "; scale it to 8 bits first" if spec.dtype == np.uint8 else ""
        raise ValueError(f"encoding {encoding!r} needs a {spec.dtype} array, got {_describe(image)}{hint}")
    if spec.channels == 1 and image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    expected_ndim = 2 if spec.channels == 1 else 3
    if (
        image.ndim != expected_ndim
        or (spec.channels > 1 and image.shape[2] != spec.channels)
        or image.shape[0] < 1
        or image.shape[1] < 1
    ):
        layout = "(H,W) or (H,W,1)" if spec.channels == 1 else f"(H,W,{spec.channels})"
        raise ValueError(f"encoding {encoding!r} needs a {layout} {spec.dtype} array, got {_describe(image)}")
    if image.dtype == np.uint16:
        image = ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    image = np.ascontiguousarray(image)
    if spec.to_rgb is None:
        return image
    rgb: np.ndarray = cv2.cvtColor(image, spec.to_rgb)
    return rgb
