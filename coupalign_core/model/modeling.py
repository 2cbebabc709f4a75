"""CoupAlign (Fig. 2): encoders with Word-Pixel Alignment, cross-attention fusion, mask generator,
SegHead and Sentence-Mask Alignment.

Data flow for images (B, 3, H, W) and a sentence of T tokens::

    V = PatchEmbed(I);  L = BERTEmbeddings(w)
    for i in 1..4:  V_i = SwinStage_i(V);  L_i = BERTStage_i(L)          (Eq. 3)
                    V, L = WPA_i(V_i, L_i)   (gated, where WPA is on)      (Eq. 1-6)
    S_o = CrossAttn([V W + e_p; L W]) + V                                  (Eq. 7-8)
    Q_o = MaskGenerator(Q, S_o)                                            (Eq. 9)
    Y_1 = SegHead(S_o, V_1..V_4)                                           (Eq. 10)
    M   = SMA(Q_o, Y_1, L_g)  -> bilinear x4 -> logits (B, 1, H, W)        (Eq. 11-12)

The WPA of stage i acts on the *output* of stage i and its result feeds stage i+1 (the paper's
V_{i+1} = SwinStage_i(V_i + L'_i) with V_i the aligned output of the previous stage); V_1..V_4
given to the SegHead are the aligned features. L_g is the [CLS] state after the last stage.
``wpa_position="before_stage"`` reads Eq. 3 literally instead: WPA_i aligns the input of stage i
(the patch embedding for i = 1), and V_1..V_4 are the plain stage outputs. ``stage_norm`` gives the
SegHead and the fusion LayerNorm(V_i) (CoupAlignConfig says why each reading exists).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import CoupAlignConfig
from .fusion import CrossAttentionFusion
from .image_encoder import SwinImageEncoder
from .mask_generator import MaskGenerator
from .presence import PresenceHead
from .seg_head import SegHead
from .sma import PixelMaskHead, SentenceMaskAlignment
from .text_encoder import BertTextEncoder
from .wpa import build_wpa


@dataclass
class CoupAlignOutput:
    logits: torch.Tensor  # (B, 1, H, W) mask logits at the input resolution
    pixel_embeddings: torch.Tensor  # Y_1 (B, d_s, H/4, W/4), used by the auxiliary loss
    presence_logits: Optional[torch.Tensor] = None  # (B,) when config.presence_head
    query_weights: Optional[torch.Tensor] = None  # Q_w (B, N) when config.use_sma
    query_masks: Optional[torch.Tensor] = None  # Y_N (B, N, H/4, W/4) on request
    wpa_attentions: Optional[tuple[torch.Tensor, ...]] = None  # per WPA stage (B, H_i*W_i, T) on request


def presence_score(logits: torch.Tensor, presence_logits: Optional[torch.Tensor]) -> torch.Tensor:
    """How sure the model is that the referred object is there, (B,) in [0, 1].

    With a presence head: its sigmoid. Without one: the mean foreground probability over the pixels
    predicted foreground (0 when no pixel is), i.e. how confident the predicted mask is.
    """
    if presence_logits is not None:
        return presence_logits.float().sigmoid()
    p = logits.float().sigmoid().flatten(1)  # (B, HW)
    fg = p >= 0.5
    return torch.where(fg, p, torch.zeros_like(p)).sum(1) / fg.sum(1).clamp(min=1)


class CoupAlign(nn.Module):
    def __init__(self, config: CoupAlignConfig):
        super().__init__()
        self.config = config
        # Backbones first: they load or initialise their own weights.
        self.image_encoder = SwinImageEncoder(config)
        self.text_encoder = BertTextEncoder(config)
        channels = self.image_encoder.channels  # C_1..C_4
        text_dim = self.text_encoder.hidden_size  # D
        grid = (config.image_size // 32, config.image_size // 32)  # (Ho, Wo)

        # WPA_i aligns the output of stage i (after_stage) or its input (before_stage).
        wpa_channels = channels if config.wpa_position == "after_stage" else self.image_encoder.stage_input_channels
        self.wpa = build_wpa(wpa_channels, text_dim, config.wpa_dim, config.wpa_stages, config.wpa_direction)
        self.fusion = CrossAttentionFusion(channels[3], text_dim, config.fusion_heads, grid)
        self.seg_head = SegHead(channels, channels[3], config.seg_dim)
        if config.use_sma:
            self.mask_generator = MaskGenerator(
                channels[3], config.query_dim, config.num_queries, config.decoder_layers,
                config.decoder_heads, config.decoder_ffn_dim, config.dropout, grid,
            )
            learnt = config.sma_temperature == "learnt"
            scale = config.sma_logit_scale if learnt else 1.0 / float(config.sma_temperature)
            self.sma = SentenceMaskAlignment(config.query_dim, config.seg_dim, text_dim, scale, learn_scale=learnt)
        else:
            self.pixel_mask_head = PixelMaskHead(config.seg_dim, text_dim)
        self.presence = PresenceHead(config.seg_dim, text_dim) if config.presence_head else None
        # New modules last, so that nothing re-initialises the (possibly pretrained) backbones and
        # the gates keep their initialisation.
        for name, module in self.named_children():
            if name not in ("image_encoder", "text_encoder"):
                module.apply(_init_new_weights)

    def forward(
        self,
        images: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        output_attentions: bool = False,
        output_query_masks: bool = False,
    ) -> CoupAlignOutput:
        """images (B, 3, H, W) ImageNet-normalised; input_ids, attention_mask (B, T)."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        if input_ids.shape != attention_mask.shape or input_ids.shape[0] != images.shape[0]:
            raise ValueError(
                f"input_ids {tuple(input_ids.shape)} and attention_mask {tuple(attention_mask.shape)} "
                f"must both be (B, T) with B = {images.shape[0]}"
            )
        height, width = images.shape[-2:]
        text_mask = attention_mask.bool()  # (B, T)
        additive = self.text_encoder.additive_mask(attention_mask, images.dtype)  # (B, 1, 1, T)

        vision = self.image_encoder.embed(images)  # (B, H/4, W/4, C_1)
        text = self.text_encoder.embed(input_ids)  # (B, T, D)
        features: list[torch.Tensor] = []
        attentions: list[torch.Tensor] = []
        before = self.config.wpa_position == "before_stage"
        for i in range(4):
            key = str(i + 1)
            if before and key in self.wpa:  # Eq. 3 read literally: align the stage's input
                vision, text = self._align(key, vision, text, text_mask, attentions)
            vision = self.image_encoder.stage(i, vision)  # V_i (B, H_i, W_i, C_i)   Eq. 3
            text = self.text_encoder.stage(i, text, additive)  # L_i (B, T, D)       Eq. 3
            if not before and key in self.wpa:  # as LAVT's PWAM: align the stage's output
                vision, text = self._align(key, vision, text, text_mask, attentions)
            features.append(self.image_encoder.output(i, vision))  # LayerNorm-ed with stage_norm

        sentence = text[:, 0]  # L_g, the [CLS] state (B, D)
        s_o = self.fusion(features[3], text, text_mask)  # (B, Ho, Wo, C_o)  Eq. 7-8
        y1 = self.seg_head(  # (B, d_s, H/4, W/4)  Eq. 10
            s_o.permute(0, 3, 1, 2), [f.permute(0, 3, 1, 2) for f in features]
        )
        query_weights = query_masks = None
        if self.config.use_sma:
            queries = self.mask_generator(s_o)  # Q_o (B, N, d_q)  Eq. 9
            mask, query_weights, query_masks = self.sma(queries, y1, sentence, output_query_masks)  # Eq. 11-12
        else:
            mask = self.pixel_mask_head(y1)  # (B, H/4, W/4)
        logits = F.interpolate(mask[:, None], size=(height, width), mode="bilinear", align_corners=False)
        presence = self.presence(y1, mask, sentence) if self.presence is not None else None
        return CoupAlignOutput(
            logits=logits,
            pixel_embeddings=y1,
            presence_logits=presence,
            query_weights=query_weights,
            query_masks=query_masks,
            wpa_attentions=tuple(attentions) if output_attentions else None,
        )

    def _align(self, key: str, vision: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor,
               attentions: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """WPA ``key`` on vision (B, H, W, C) and text (B, T, D) (Eq. 1-6); its word attention is
        appended to ``attentions``."""
        b, h, w, c = vision.shape
        flat, text, attn = self.wpa[key](vision.reshape(b, h * w, c), text, text_mask)
        attentions.append(attn)  # (B, HW, T)
        return flat.reshape(b, h, w, c), text

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def _init_new_weights(module: nn.Module) -> None:
    # Xavier, as the Transformer and Mask2Former heads: the alignment path chains up to four new
    # projections (W^v, W^l, Ŵ^l, gate MLP); with BERT's std 0.02 each, the words' influence on the
    # pixels starts ~1e-5 of the features and training sits on an "empty mask" plateau for long.
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
