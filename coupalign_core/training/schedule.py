"""AdamW with the usual weight-decay exclusions, and the paper's polynomial decay per iteration.

Section 4.1: AdamW, weight decay 0.01, polynomial decay from 3e-5 to 1.5e-5 over 25 epochs. The
paper gives no power; LAVT and mmseg use 0.9 and step the schedule every iteration, as here.

No weight decay on:
- normalisation layers (LayerNorm, GroupNorm, BatchNorm: weights and biases),
- every bias and every other 1-D parameter (gates' scalars, the SMA logit scale),
- position embeddings: Swin's ``relative_position_bias_table`` and ``absolute_pos_embed``, BERT's
  ``position_embeddings`` and ``token_type_embeddings``, every ``LearnedPositionalEmbedding2d`` (the
  fusion's e_p, the mask generator's memory positions) and the mask generator's learnt queries
  (Mask2Former gives its query embeddings no decay either).
LAVT excludes norms and Swin's position tables the same way; it also leaves BERT's embeddings and
last two layers out of the optimizer altogether, which this project does not copy.
"""

from __future__ import annotations

import logging
import math
from typing import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

log = logging.getLogger(__name__)

# Parameter-name fragments that mark a position (or similar lookup) embedding.
NO_DECAY_NAME_PARTS = (
    "relative_position_bias_table",
    "absolute_pos_embed",
    "pos_embed",
    "position_embeddings",
    "token_type_embeddings",
    "query_pos",
    "query_embed",
    "level_embed",
)
NO_DECAY_NAME_SUFFIXES = ("mask_generator.queries",)
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._BatchNorm, nn.InstanceNorm1d,
          nn.InstanceNorm2d, nn.LocalResponseNorm, nn.RMSNorm)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of the parameters that get no weight decay (see the module docstring)."""
    from ..model.positional import LearnedPositionalEmbedding2d

    names: set[str] = set()
    for mod_name, module in model.named_modules():
        if isinstance(module, _NORMS + (LearnedPositionalEmbedding2d,)):
            names.update(f"{mod_name}.{p}" if mod_name else p for p, _ in module.named_parameters(recurse=False))
    for name, p in model.named_parameters():
        if (p.ndim <= 1 or any(part in name for part in NO_DECAY_NAME_PARTS)
                or name.endswith(NO_DECAY_NAME_SUFFIXES)):
            names.add(name)
    return names


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights and the rest. Frozen parameters are left out."""
    skip = no_decay_names(model)
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if name in skip else decay).append(p)
    n_decay = sum(p.numel() for p in decay)
    n_plain = sum(p.numel() for p in no_decay)
    log.info("weight decay %.3g on %d tensors (%d values); none on %d tensors (%d values)",
             weight_decay, len(decay), n_decay, len(no_decay), n_plain)
    return [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]


def build_optimizer(model: nn.Module, lr: float, weight_decay: float,
                    betas: Iterable[float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the fused kernel (one pass over each tensor, CPU and CUDA)
    when every parameter is a float tensor on one such device: same maths, less time per step."""
    params = [p for p in model.parameters() if p.requires_grad]
    fused = (len({p.device.type for p in params}) == 1 and params[0].device.type in ("cpu", "cuda")
             and all(p.is_floating_point() for p in params))
    beta1, beta2 = betas
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(beta1, beta2), eps=eps,
                             fused=fused)


def poly_lr(step: int, base_lr: float, end_lr: float, decay_steps: int, power: float = 0.9,
            warmup_steps: int = 0) -> float:
    """Learning rate after ``step`` optimizer steps.

    (base - end)(1 - t/T)^power + end while t < T = decay_steps, then end; with a warm-up, the first
    ``warmup_steps`` rise linearly from base/warmup to base (the decay clock still starts at 0, so
    the schedule after warm-up is the one without it).
    """
    if decay_steps <= 0:
        raise ValueError(f"decay_steps must be positive, got {decay_steps}")
    t = min(step, decay_steps)
    lr = (base_lr - end_lr) * (1.0 - t / decay_steps) ** power + end_lr
    if warmup_steps > 0 and step < warmup_steps:
        lr *= (step + 1) / warmup_steps
    return lr


class PolyLR(LRScheduler):
    """:func:`poly_lr` as a scheduler stepped once per optimizer step (``last_epoch`` = steps done)."""

    def __init__(self, optimizer: torch.optim.Optimizer, end_lr: float, decay_steps: int,
                 power: float = 0.9, warmup_steps: int = 0, last_epoch: int = -1):
        if decay_steps <= 0:
            raise ValueError(f"decay_steps must be positive, got {decay_steps}")
        self.end_lr = end_lr
        self.decay_steps = decay_steps
        self.power = power
        self.warmup_steps = warmup_steps
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float | torch.Tensor]:
        return [
            poly_lr(self.last_epoch, float(base), min(self.end_lr, float(base)), self.decay_steps, self.power,
                    self.warmup_steps)
            for base in self.base_lrs
        ]


def steps_for(epochs: float, steps_per_epoch: int) -> int:
    """Whole optimizer steps in ``epochs`` (fractional epochs allowed), at least 1."""
    return max(1, int(math.ceil(epochs * steps_per_epoch)))
