"""Learnable 2-D positional embeddings, resized when the feature map differs from the trained size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LearnedPositionalEmbedding2d(nn.Module):
    def __init__(self, dim: int, grid: tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.weight = nn.Parameter(torch.zeros(1, dim, grid[0], grid[1]))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, height: int, width: int) -> torch.Tensor:
        """(1, height*width, dim); bicubic resize of the table when (height, width) != grid."""
        w = self.weight
        if (height, width) != self.grid:
            w = F.interpolate(w, size=(height, width), mode="bicubic", align_corners=False)
        return w.flatten(2).transpose(1, 2)
