"""Inference engine: the Segmenter API, its options, backends (torch, onnxruntime, TensorRT), export, benchmark.

    from coupalign_core.inference import Segmenter, SegmenterOptions, as_rgb
    seg = Segmenter.from_checkpoint("model.pt", SegmenterOptions(backend="auto", threshold=0.6))
    result = seg(as_rgb(frame, encoding="bgr"), "the red cup on the left")

The names below load their module on first use (as transformers' top-level package does), so
importing ``coupalign_core.inference.options`` for its value sets (the ROS parameters and the
launch files do) does not import torch, OpenCV or the model.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .inputs import ENCODINGS, IMAGE_ENCODINGS, ImageEncoding, as_rgb, check_rgb_image
    from .options import SegmenterOptions
    from .segmenter import SegmentationResult, Segmenter, mask_bbox, upsample_logits

_MODULE_OF = {
    "ENCODINGS": "inputs", "IMAGE_ENCODINGS": "inputs", "ImageEncoding": "inputs", "as_rgb": "inputs",
    "check_rgb_image": "inputs",
    "SegmenterOptions": "options",
    "SegmentationResult": "segmenter", "Segmenter": "segmenter", "mask_bbox": "segmenter",
    "upsample_logits": "segmenter",
}
__all__ = [
    "ENCODINGS", "IMAGE_ENCODINGS", "ImageEncoding", "SegmentationResult", "Segmenter", "SegmenterOptions",
    "as_rgb", "check_rgb_image", "mask_bbox", "upsample_logits",
]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
