"""Mask generator (section 3.3, Eq. 9): a transformer decoder turning N learnable queries into
segment tokens, Q_o = MaskGenerator(Q, S_o).

The paper fixes 6 layers and says no more. The widths, heads, FFN size and the absence of dropout are
Mask2Former's decoder defaults; the layer itself is PyTorch's standard pre-norm
``nn.TransformerDecoderLayer``, not Mask2Former's:

* each layer runs self-attention among the queries, then cross-attention to S_o, then the FFN, each
  as x + sublayer(LayerNorm(x)) (pre-norm), and a final LayerNorm closes the stack;
* the N learnt queries are the only query input: no separate query positional embedding;
* S_o is projected to d_q and its learnt positional embedding is added to it before the decoder, so
  the position enters the cross-attention's keys *and* values.

Mask2Former's decoder differs in each point: cross-attention comes first (masked by the previous
layer's mask prediction), then self-attention and the FFN, each post-norm (LayerNorm(x + sublayer(x)));
learnt query positional embeddings and the memory's positional encoding are added to the queries
and keys only.
"""

from __future__ import annotations

import torch
from torch import nn

from .positional import LearnedPositionalEmbedding2d


class MaskGenerator(nn.Module):
    def __init__(
        self,
        in_dim: int,
        query_dim: int,
        num_queries: int,
        num_layers: int,
        num_heads: int,
        ffn_dim: int,
        dropout: float,
        grid: tuple[int, int],
    ):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(1, num_queries, query_dim))  # Q (N, d_q)
        nn.init.trunc_normal_(self.queries, std=0.02)
        self.memory_proj = nn.Linear(in_dim, query_dim)
        self.memory_pos = LearnedPositionalEmbedding2d(query_dim, grid)
        layer = nn.TransformerDecoderLayer(
            query_dim, num_heads, ffn_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.decoder = nn.TransformerDecoder(layer, num_layers, norm=nn.LayerNorm(query_dim))

    def forward(self, s_o: torch.Tensor) -> torch.Tensor:
        """S_o (B, Ho, Wo, C_o) -> Q_o (B, N, d_q)."""
        b, h, w, c = s_o.shape
        memory = self.memory_proj(s_o.reshape(b, h * w, c)) + self.memory_pos(h, w)  # (B, HoWo, d_q)
        return self.decoder(self.queries.expand(b, -1, -1), memory)  # (B, N, d_q)  Eq. 9
