"""Presence head: is the referred object in the image at all? (a product addition, not in the paper)

A robot must be able to say "there is no red cup". The head reads, with gradients stopped, the
sentence embedding L_g, the pixel embeddings Y_1 pooled under the predicted mask and two statistics of
that mask, and is trained with BCE against "the target mask is non-empty" (synthetic no-target
expressions give the negatives). Because its inputs are detached it changes no mask logit, so
ablations of the paper's modules are unaffected by it.
"""

from __future__ import annotations

import torch
from torch import nn


class PresenceHead(nn.Module):
    def __init__(self, seg_dim: int, text_dim: int, hidden: int = 256):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(seg_dim + text_dim + 2, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1)
        )

    def forward(self, pixels: torch.Tensor, mask_logits: torch.Tensor, sentence: torch.Tensor) -> torch.Tensor:
        """Y_1 (B, d_s, h, w), M (B, h, w), L_g (B, D) -> presence logit (B,)."""
        p = mask_logits.detach().sigmoid().flatten(1)  # (B, hw)
        y = pixels.detach().flatten(2)  # (B, d_s, hw)
        pooled = torch.einsum("bn,bcn->bc", p, y) / (p.sum(1, keepdim=True) + 1e-6)  # (B, d_s)
        stats = torch.stack([p.max(1).values, p.mean(1)], dim=1)  # (B, 2)
        return self.mlp(torch.cat([pooled, sentence.detach(), stats], dim=1))[:, 0]
