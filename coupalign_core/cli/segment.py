"""Segment one image with one sentence and save the mask overlay.

Prints the result (score, found, bbox, area, timings) as one JSON line; --out writes the image
with the mask blended in and the box labelled with the score, --mask-out the binary mask (PNG,
0/255). Works with a checkpoint (.pt), an exported .onnx or a TensorRT engine.
"""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING

from coupalign_core.inference.options import BACKENDS, DEVICES, PRECISIONS

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint (.pt), exported .onnx or TensorRT engine")
    parser.add_argument("--image", required=True, help="image file (any format OpenCV reads)")
    parser.add_argument("--text", required=True, help="the referring expression")
    parser.add_argument("--out", default=None, help="overlay PNG to write")
    parser.add_argument("--mask-out", default=None, help="binary mask PNG to write")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--device", choices=DEVICES, default=None, help="default: the GPU when there is one")
    parser.add_argument("--precision", choices=PRECISIONS, default=None, help="default fp32")
    parser.add_argument("--threshold", type=float, default=0.5,
                        help="score needed for found=True (default %(default)s)")
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity (default %(default)s)")
    parser.add_argument("--cache-dir", default=None, help="ONNX/engine cache (default ~/.cache/coupalign)")


def read_rgb(path: str) -> np.ndarray:
    """An image file as (H,W,3) uint8 RGB (grayscale is expanded, alpha dropped)."""
    from pathlib import Path

    import cv2

    from coupalign_core.inference import as_rgb

    if not Path(path).is_file():
        raise FileNotFoundError(f"image {path} does not exist")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"{path} could not be decoded as an image")
    return as_rgb(bgr, encoding="bgr")


def run(args: argparse.Namespace) -> int:
    import json

    import cv2
    import numpy as np

    from coupalign_core.inference import Segmenter, SegmenterOptions
    from coupalign_core.inference.segmenter import ENGINE_SUFFIXES
    from coupalign_core.visualize import draw_bbox, overlay_mask

    image = read_rgb(args.image)
    is_engine = args.checkpoint.endswith(ENGINE_SUFFIXES)  # an engine has no export cache
    options = SegmenterOptions(backend=args.backend, device=args.device, precision=args.precision,
                               threshold=args.threshold, cache_dir=None if is_engine else args.cache_dir)
    seg = Segmenter.from_checkpoint(args.checkpoint, options)
    result = seg(image, args.text)
    if args.out:
        drawn = overlay_mask(image, result.mask, alpha=args.alpha)
        drawn = draw_bbox(drawn, result.bbox, label=f"{result.score:.2f}")
        if not cv2.imwrite(args.out, cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
            raise ValueError(f"could not write {args.out} (unknown extension or unwritable folder)")
        log.info("wrote %s", args.out)
    if args.mask_out:
        if not cv2.imwrite(args.mask_out, result.mask.astype(np.uint8) * 255):
            raise ValueError(f"could not write {args.mask_out}")
    print(json.dumps({"text": args.text, "backend": seg.describe(), **result.to_dict()}))
    return 0
