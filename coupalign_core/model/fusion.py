"""Cross-attention fusion after the encoders (section 3.2, Eq. 7-8).

    V'_o = V_o W^v_o + e_p,  L'_o = L_o W^l_o                     Eq. 7
    S_o  = CrossAttn([V'_o; L'_o]) + V_o                          Eq. 8

CrossAttn is one plain multi-head attention layer over the concatenated sequence (HoWo + T tokens);
padding words are masked as keys. The attention works at width D and S_o lives at width C_o, so its
pixel outputs are mapped back to C_o by one linear layer before the residual of Eq. 8.
"""

from __future__ import annotations

import torch
from torch import nn

from .positional import LearnedPositionalEmbedding2d


class CrossAttentionFusion(nn.Module):
    def __init__(self, vision_dim: int, text_dim: int, num_heads: int, grid: tuple[int, int]):
        super().__init__()
        self.vision_proj = nn.Linear(vision_dim, text_dim)  # W^v_o
        self.text_proj = nn.Linear(text_dim, text_dim)  # W^l_o
        self.pos_embed = LearnedPositionalEmbedding2d(text_dim, grid)  # e_p
        self.attn = nn.MultiheadAttention(text_dim, num_heads, batch_first=True)
        self.out_proj = nn.Linear(text_dim, vision_dim)

    def forward(self, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """vision (B, Ho, Wo, C_o) NHWC, text (B, T, D), text_mask (B, T) bool -> S_o (B, Ho, Wo, C_o)."""
        b, h, w, c = vision.shape
        v_flat = vision.reshape(b, h * w, c)  # (B, HoWo, C_o)
        v = self.vision_proj(v_flat) + self.pos_embed(h, w)  # (B, HoWo, D)  Eq. 7
        words = self.text_proj(text)  # L (B, T, D)  Eq. 7
        tokens = torch.cat([v, words], dim=1)  # F_o (B, HoWo+T, D)
        pad = torch.cat([text_mask.new_zeros(b, h * w), ~text_mask], dim=1)  # True = ignore
        fused, _ = self.attn(tokens, tokens, tokens, key_padding_mask=pad, need_weights=False)
        s = self.out_proj(fused[:, : h * w]) + v_flat  # (B, HoWo, C_o)  Eq. 8
        return s.reshape(b, h, w, c)
