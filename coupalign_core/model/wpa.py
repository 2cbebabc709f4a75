"""Word-Pixel Alignment (section 3.2, Eq. 1-6): gated bidirectional cross attention between stages.

Reading of Eq. 4-5. The paper's matrix sizes (Ŵ^l ∈ R^{d×C_i}, Ŵ^v ∈ R^{d×D}) only compose with the
*projected* features, so the values are L̂_i and V̂_i::

    Attn = V̂ L̂ᵀ / √d                         (HW, T)       Eq. 4
    L'   = softmax_T(Attn) L̂ Ŵ^l               (HW, C_i)     Eq. 5, words -> pixels
    V'   = softmax_HW(Attnᵀ) V̂ Ŵ^v             (T, D)        Eq. 5, pixels -> words
    V ← V + Gate(L'),  L ← L + Gate(V')                      Eq. 2-3

Padding words are masked out of the words->pixels softmax and receive no pixel context, so they
influence nothing.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class Gate(nn.Module):
    """Gate(F) = MLP(F) ⊙ F with MLP = Linear -> ReLU -> Linear -> Tanh (Eq. 6)."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim), nn.Tanh())

    def forward(self, fused: torch.Tensor) -> torch.Tensor:
        return self.mlp(fused) * fused


class WordPixelAlignment(nn.Module):
    """One WPA module for stage i: vision width C_i, language width D, joint width d.

    ``direction="bidirectional"`` is the paper's Bi-WPA; ``"language_to_vision"`` is Uni-WPA
    (Table 4, as LAVT): the words still inform the pixels but the text stream is left untouched.
    """

    def __init__(self, vision_dim: int, text_dim: int, dim: int, direction: str = "bidirectional"):
        super().__init__()
        if direction not in ("bidirectional", "language_to_vision"):
            raise ValueError(f"WPA direction must be bidirectional or language_to_vision, got {direction!r}")
        self.direction = direction
        self.scale = 1.0 / math.sqrt(dim)
        self.vision_proj = nn.Linear(vision_dim, dim, bias=False)  # W^v_i
        self.text_proj = nn.Linear(text_dim, dim, bias=False)  # W^l_i
        self.words_to_pixels = nn.Linear(dim, vision_dim, bias=False)  # Ŵ^l_i
        self.vision_gate = Gate(vision_dim)
        if direction == "bidirectional":
            self.pixels_to_words = nn.Linear(dim, text_dim, bias=False)  # Ŵ^v_i
            self.text_gate = Gate(text_dim)

    def forward(
        self, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """vision (B, HW, C_i), text (B, T, D), text_mask (B, T) bool -> (vision, text, attn).

        ``attn`` (B, HW, T) is softmax over words: which words each pixel listens to.
        """
        v_hat = self.vision_proj(vision)  # (B, HW, d)
        l_hat = self.text_proj(text)  # (B, T, d)
        scores = torch.bmm(v_hat, l_hat.transpose(1, 2)) * self.scale  # (B, HW, T)  Eq. 4
        neg = torch.finfo(scores.dtype).min
        attn_words = scores.masked_fill(~text_mask[:, None, :], neg).softmax(dim=-1)  # (B, HW, T)
        lang_ctx = self.words_to_pixels(torch.bmm(attn_words, l_hat))  # L' (B, HW, C_i)  Eq. 5
        vision = vision + self.vision_gate(lang_ctx)  # Eq. 2-3
        if self.direction == "bidirectional":
            attn_pixels = scores.transpose(1, 2).softmax(dim=-1)  # (B, T, HW)
            vis_ctx = self.pixels_to_words(torch.bmm(attn_pixels, v_hat))  # V' (B, T, D)  Eq. 5
            vis_ctx = vis_ctx * text_mask[..., None].to(vis_ctx.dtype)  # padding gets nothing
            text = text + self.text_gate(vis_ctx)  # Eq. 2-3
        return vision, text, attn_words


def build_wpa(
    stage_channels: list[int], text_dim: int, dim: int, stages: tuple[int, ...], direction: str
) -> nn.ModuleDict:
    """WPA modules keyed by 1-based stage number ("1".."4"); empty when ``direction == "off"``."""
    if direction == "off":
        return nn.ModuleDict()
    return nn.ModuleDict(
        {str(s): WordPixelAlignment(stage_channels[s - 1], text_dim, dim, direction) for s in stages}
    )

