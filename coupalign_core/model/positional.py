"""Learnable 2-D positional embeddings, resized when the feature map differs from the trained size."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LearnedPositionalEmbedding2d(nn.Module):
    def __init__(self, dim: int, grid: tuple[int, int], init: str = "normal"):
        super().__init__()
        self.grid = grid
        self.weight = nn.Parameter(torch.zeros(1, dim, grid[0], grid[1]))
        if init == "sincos":
            with torch.no_grad():
                self.weight.copy_(sincos_2d(dim, grid))
        elif init == "normal":
            nn.init.trunc_normal_(self.weight, std=0.02)
        else:
            raise ValueError(f"init must be 'normal' or 'sincos', got {init!r}")

    def forward(self, height: int, width: int) -> torch.Tensor:
        """(1, height*width, dim); bicubic resize of the table when (height, width) != grid."""
        table: torch.Tensor = self.weight  # (1, dim, grid_h, grid_w)
        if (height, width) != self.grid:
            table = F.interpolate(table, size=(height, width), mode="bicubic", align_corners=False)
        return table.flatten(2).transpose(1, 2)


def sincos_2d(dim: int, grid: tuple[int, int], temperature: float = 10000.0) -> torch.Tensor:
    """(1, dim, H, W) fixed 2-D sin-cos table (MAE): dim/2 channels encode y, dim/2 encode x."""
    if dim % 4:
        raise ValueError(f"a 2-D sin-cos embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    ys, xs = torch.meshgrid(
        torch.arange(grid[0], dtype=torch.float64), torch.arange(grid[1], dtype=torch.float64), indexing="ij"
    )
    ang_y = ys[None] * omega[:, None, None]  # (dim/4, H, W)
    ang_x = xs[None] * omega[:, None, None]
    table = torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()])  # (dim, H, W)
    return table[None].float()


def resample_position_tables(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Fits a checkpoint's position tables to ``model``'s input size; returns (state, resampled keys).

    A model trained at one image size starts another size (a fine-tuning stage at a higher
    resolution) with its position knowledge intact, as timm does for ViT and Swin checkpoints:
    2-D tables (:class:`LearnedPositionalEmbedding2d`) are resized bicubically, exactly as their
    forward resizes them at run time, and Swin's relative position bias tables follow the
    stage's window (which shrinks to the feature map when the map is smaller) with timm's resize.
    Every other weight is left alone: a shape mismatch elsewhere stays the caller's error.
    """
    from timm.layers import resize_rel_pos_bias_table

    state = dict(state)
    resampled = []
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, LearnedPositionalEmbedding2d):
            key, own = prefix + "weight", module.weight
            if key in state and state[key].dim() == 4 and state[key].shape[:2] == own.shape[:2] \
                    and state[key].shape != own.shape:
                state[key] = F.interpolate(state[key].float(), size=own.shape[-2:], mode="bicubic",
                                           align_corners=False).to(state[key].dtype)
                resampled.append(key)
        table = getattr(module, "relative_position_bias_table", None)
        if isinstance(table, torch.Tensor) and hasattr(module, "window_size"):
            key = prefix + "relative_position_bias_table"
            if key in state and state[key].shape != table.shape and state[key].shape[-1] == table.shape[-1]:
                state[key] = resize_rel_pos_bias_table(
                    state[key], new_window_size=tuple(module.window_size), new_bias_shape=tuple(table.shape))
                resampled.append(key)
    return state, resampled
