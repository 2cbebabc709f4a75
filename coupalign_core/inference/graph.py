"""The deployed graph's interface: names, shapes and the torch module every backend runs.

Every backend (torch, ONNX Runtime, TensorRT) computes the same function::

    images (B,3,S,S) float32, input_ids (B,T) int64, attention_mask (B,T) int64
      -> logits (B,1,S,S) float32 [, presence_logits (B,) float32]

The score (``presence_score``) and the mask threshold stay outside the graph: they are cheap,
and keeping thresholds out of an engine lets one engine serve every threshold.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

INPUT_NAMES: tuple[str, str, str] = ("images", "input_ids", "attention_mask")
LOGITS = "logits"
PRESENCE_LOGITS = "presence_logits"


def output_names(has_presence_head: bool) -> tuple[str, ...]:
    return (LOGITS, PRESENCE_LOGITS) if has_presence_head else (LOGITS,)


def input_shapes(batch_size: int, image_size: int, max_tokens: int) -> dict[str, tuple[int, ...]]:
    """Fixed input shapes of an exported graph (the TensorRT engine cache keys on them)."""
    return {
        "images": (batch_size, 3, image_size, image_size),
        "input_ids": (batch_size, max_tokens),
        "attention_mask": (batch_size, max_tokens),
    }


class InferenceGraph(nn.Module):
    """A CoupAlign seen as tensors in, tuple of tensors out.

    ONNX export and ``torch.compile`` both want plain tensor outputs; the model returns a
    dataclass with training-only fields. This wrapper is the one place that picks the outputs.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.has_presence_head = bool(getattr(model.config, "presence_head", False))

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out: Any = self.model(images, input_ids, attention_mask)
        if self.has_presence_head:
            return out.logits, out.presence_logits  # (B,1,S,S), (B,)
        return (out.logits,)
