"""SegHead (section 3.3, Eq. 10): an FPN-style top-down path from S_o to H/4 x W/4.

    Y_5 = S_o,   Y_i = Up(ρ(Y_{i+1})) + γ(V_i),   i = 4, 3, 2, 1

ρ is two (3x3 conv -> ReLU -> BatchNorm) layers, γ a 1x1 conv to d_s. S_o and V_4 share the 1/32
resolution, so "Up" resizes bilinearly to V_i's size: the identity at i = 4 and 2x above it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ConvReluBN(nn.Sequential):
    """ρ: two 3x3 conv -> ReLU -> BN layers, as the paper orders them."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__(
            nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(out_dim),
            nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.BatchNorm2d(out_dim),
        )


class SegHead(nn.Module):
    def __init__(self, stage_channels: list[int], top_dim: int, dim: int):
        super().__init__()
        # rho[i] reads Y_{i+2} (0-based i): rho[3] reads S_o (C_o wide), the others read d_s.
        self.rho = nn.ModuleList([ConvReluBN(dim, dim) for _ in range(3)] + [ConvReluBN(top_dim, dim)])
        self.gamma = nn.ModuleList([nn.Conv2d(c, dim, 1) for c in stage_channels])

    def forward(self, s_o: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        """S_o (B, C_o, Ho, Wo) and V_1..V_4 (B, C_i, H_i, W_i) NCHW -> Y_1 (B, d_s, H/4, W/4)."""
        y = s_o  # Y_5
        for i in (3, 2, 1, 0):
            up = self.rho[i](y)
            target = features[i].shape[-2:]
            if up.shape[-2:] != target:
                up = F.interpolate(up, size=target, mode="bilinear", align_corners=False)
            y = up + self.gamma[i](features[i])  # Eq. 10
        return y
