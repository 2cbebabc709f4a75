"""Sentence-Mask Alignment (section 3.3, Eq. 11-12).

    Q̂_o = Q_o W_Q,  Ŷ_1 = Y_1 W_Y
    Q_w = softmax(s · cos(L_g, Q̂_o))               Eq. 11 (s: learnt inverse temperature, or fixed;
                                                     s = 1 is the formula as printed)
    Y_N = Ŷ_1 ⊗ Q̂_o,   M = Y_N ⊗ Q_w               Eq. 12

M = Σ_n Q_w[n] (Q̂_o[n] · Ŷ_1) = (Σ_n Q_w[n] Q̂_o[n]) · Ŷ_1, so M is computed from the weighted query
without forming the N per-query masks (100 x 112 x 112 x D at 448 input); Y_N is formed only when
asked for (Figure 4 pictures).

With SMA switched off (Table 4), the mask is Ŷ_1 through a 1x1 projection to one channel.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class SentenceMaskAlignment(nn.Module):
    """``logit_scale``: the inverse temperature s of Eq. 11, learnt from that start
    (``learn_scale=True``, a log-parametrised ``logit_scale`` parameter) or fixed (no parameter)."""

    def __init__(self, query_dim: int, seg_dim: int, text_dim: int, logit_scale: float, learn_scale: bool = True):
        super().__init__()
        self.query_proj = nn.Linear(query_dim, text_dim)  # W_Q
        self.pixel_proj = nn.Conv2d(seg_dim, text_dim, 1)  # W_Y
        self.logit_scale: Optional[nn.Parameter] = (
            nn.Parameter(torch.tensor(math.log(logit_scale))) if learn_scale else None
        )
        self.fixed_scale = float(logit_scale)

    def forward(
        self, queries: torch.Tensor, pixels: torch.Tensor, sentence: torch.Tensor, return_query_masks: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Q_o (B, N, d_q), Y_1 (B, d_s, h, w), L_g (B, D) -> M (B, h, w), Q_w (B, N), Y_N or None."""
        q = self.query_proj(queries)  # Q̂_o (B, N, D)
        y = self.pixel_proj(pixels)  # Ŷ_1 (B, D, h, w)
        sim = F.cosine_similarity(sentence[:, None, :], q, dim=-1)  # (B, N)
        scale = self.logit_scale.exp() if self.logit_scale is not None else self.fixed_scale
        weights = (scale * sim).softmax(dim=-1)  # Q_w  Eq. 11
        weighted_query = torch.einsum("bn,bnd->bd", weights, q)  # (B, D)
        mask = torch.einsum("bd,bdhw->bhw", weighted_query, y)  # M  Eq. 12
        query_masks = torch.einsum("bnd,bdhw->bnhw", q, y) if return_query_masks else None  # Y_N
        return mask, weights, query_masks


class PixelMaskHead(nn.Module):
    """Table 4's "w/o SMA": M = 1x1 projection of Ŷ_1 = Y_1 W_Y."""

    def __init__(self, seg_dim: int, text_dim: int):
        super().__init__()
        self.pixel_proj = nn.Conv2d(seg_dim, text_dim, 1)  # W_Y
        self.to_mask = nn.Conv2d(text_dim, 1, 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.to_mask(self.pixel_proj(pixels))[:, 0]  # (B, h, w)
