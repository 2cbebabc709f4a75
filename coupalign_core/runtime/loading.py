"""Loading and releasing the model for the node (no rclpy): errors that say what to fix."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # imported when a model is loaded: importing this module stays cheap
    from ..inference.options import SegmenterOptions
    from ..inference.segmenter import Segmenter

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names the file and the settings."""


def load_segmenter(checkpoint: str, options: Optional[SegmenterOptions] = None, **overrides: Any) -> Segmenter:
    """``Segmenter.from_checkpoint(checkpoint, options, **overrides)`` with one clear error for every failure;
    without ``options``, ``device`` defaults to ``"cpu"``.

    A missing file, a file that is not a CoupAlign checkpoint/export, a backend that is not
    installed or a device that is not there all raise :class:`ModelLoadError`; so do options the
    Segmenter refuses.
    """
    if not checkpoint:
        raise ModelLoadError("no checkpoint given: set the 'checkpoint' parameter to a model file")
    path = Path(os.path.expanduser(checkpoint))
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    try:
        from ..inference.options import SegmenterOptions, resolve_options

        # Without options: the CPU, as the node's device parameter defaults to (not the GPU when there is one).
        options = resolve_options(SegmenterOptions(device="cpu") if options is None else options, overrides)
    except (TypeError, ValueError) as e:
        raise ModelLoadError(f"could not load {path}: {e}") from e
    try:
        from ..inference.segmenter import Segmenter

        return Segmenter.from_checkpoint(path, options)
    except Exception as e:  # torch.load, onnx, TensorRT and CUDA raise many types; all mean "not loaded"
        raise ModelLoadError(
            f"could not load {path} (backend={options.backend}, device={options.device}, "
            f"precision={options.precision or 'fp32'}): {type(e).__name__}: {e}"
        ) from e


def release_accelerator_memory(device: str) -> None:
    """Give cached GPU memory back after the Segmenter was dropped (deactivate, cleanup)."""
    gc.collect()
    if device.startswith("cuda"):
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:  # an onnxruntime/TensorRT-only install
            pass
