"""What every inference backend implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..options import PRECISIONS


@dataclass
class BackendOutput:
    logits: np.ndarray  # (B,1,S,S) float32 mask logits at the model's input size
    presence_logits: Optional[np.ndarray]  # (B,) float32, None without a presence head


class InferenceBackend(abc.ABC):
    """Runs the deployed graph (see ``coupalign_core.inference.graph``) on host arrays.

    Inputs and outputs are numpy on the host whatever the device: the Segmenter's pre- and
    post-processing are OpenCV/numpy, and the logits at S×S are small (0.8 MB at 448²).
    """

    name: str  # "torch", "onnxruntime" or "tensorrt"
    device: str  # "cpu" or "cuda"
    precision: str  # one of PRECISIONS
    image_size: int  # S
    max_tokens: int  # T
    # A graph exported with fixed shapes runs exactly this batch; None runs any batch.
    batch_size: Optional[int] = None
    has_presence_head: bool = False

    @abc.abstractmethod
    def __call__(
        self, images: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> BackendOutput:
        """images (B,3,S,S) float32, input_ids/attention_mask (B,T) int64."""

    def describe(self) -> str:
        batch = "any" if self.batch_size is None else str(self.batch_size)
        return f"{self.name} on {self.device}, {self.precision}, batch {batch}"

    def check_inputs(self, images: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray) -> None:
        """Shape checks shared by all backends, with errors that name the offending array."""
        b = images.shape[0]
        expected = (b, 3, self.image_size, self.image_size)
        if images.shape != expected:
            raise ValueError(f"images must have shape {expected}, got {images.shape}")
        for name, arr in (("input_ids", input_ids), ("attention_mask", attention_mask)):
            if arr.shape != (b, self.max_tokens):
                raise ValueError(f"{name} must have shape {(b, self.max_tokens)}, got {arr.shape}")
        if self.batch_size is not None and b != self.batch_size:
            raise ValueError(
                f"this {self.name} graph was built for batch {self.batch_size}, got a batch of {b}"
            )


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision
