"""Inference engine: the Segmenter API, backends (torch, onnxruntime, TensorRT), export, benchmark.

    from coupalign_core.inference import Segmenter, as_rgb
    seg = Segmenter.from_checkpoint("model.pt", backend="auto")
    result = seg(as_rgb(frame, encoding="bgr"), "the red cup on the left")
"""

from .inputs import ENCODINGS, as_rgb, check_rgb_image
from .segmenter import SegmentationResult, Segmenter, mask_bbox, upsample_logits

__all__ = [
    "ENCODINGS", "SegmentationResult", "Segmenter", "as_rgb", "check_rgb_image", "mask_bbox",
    "upsample_logits",
]
