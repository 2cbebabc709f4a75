"""Loading and releasing the model for the node (no rclpy): errors that say what to fix."""

from __future__ import annotations

import gc
import logging
import os
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message names the file and the settings."""


def load_segmenter(checkpoint: str, backend: str = "auto", device: str = "cpu", precision: str = "fp32",
                   threshold: float = 0.5) -> Any:
    """``coupalign_core.inference.Segmenter.from_checkpoint`` with one clear error for every failure.

    A missing file, a file that is not a CoupAlign checkpoint/export, a backend that is not
    installed or a device that is not there all raise :class:`ModelLoadError`.
    """
    if not checkpoint:
        raise ModelLoadError("no checkpoint given: set the 'checkpoint' parameter to a model file")
    path = Path(os.path.expanduser(checkpoint))
    if not path.is_file():
        raise ModelLoadError(f"checkpoint {path} does not exist")
    try:
        from ..inference import Segmenter

        return Segmenter.from_checkpoint(path, backend=backend, device=device, precision=precision,
                                         threshold=threshold)
    except Exception as e:  # torch.load, onnx, TensorRT and CUDA raise many types; all mean "not loaded"
        raise ModelLoadError(
            f"could not load {path} (backend={backend}, device={device}, precision={precision}): "
            f"{type(e).__name__}: {e}"
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
