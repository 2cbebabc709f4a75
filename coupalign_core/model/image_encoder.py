"""Swin image encoder f_v (section 3.2), run stage by stage so WPA can sit between stages.

timm's Swin takes and returns NHWC in ``patch_embed`` and every ``layers[i]``; the PatchMerging
downsample sits at the start of stages 2-4, so ``stage(i, x)`` maps the output of stage i-1 to the
output of stage i. Running the stages one by one equals timm's ``forward_intermediates`` exactly.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, cast

import timm
import torch
from torch import nn

from .configuration import CoupAlignConfig
from .positional import LearnedPositionalEmbedding2d

log = logging.getLogger(__name__)


class SwinImageEncoder(nn.Module):
    def __init__(self, config: CoupAlignConfig):
        super().__init__()
        kwargs: dict[str, Any] = dict(
            img_size=config.image_size,
            window_size=config.window_size,
            num_classes=0,
            **config.image_encoder_kwargs,
        )
        if config.drop_path_rate is not None:
            kwargs["drop_path_rate"] = config.drop_path_rate
        source = config.image_pretrained
        if source is None:
            swin = timm.create_model(config.image_encoder, pretrained=False, **kwargs)
        elif Path(source).is_file():
            # timm's checkpoint filter resizes relative-position tables to this window/size.
            swin = timm.create_model(
                config.image_encoder, pretrained=True, pretrained_cfg_overlay=dict(file=str(source)), **kwargs
            )
        elif source == "timm" or source.startswith("timm:"):
            name = timm_pretrained_name(config.image_encoder, source)
            swin = timm.create_model(name, pretrained=True, **kwargs)  # needs internet
        else:
            raise FileNotFoundError(
                f"image_pretrained={source!r} is neither an existing weights file nor 'timm' / 'timm:<tag>' "
                f"(download {config.image_encoder}'s weights where you have internet)"
            )
        layers, patch_embed = getattr(swin, "layers", None), getattr(swin, "patch_embed", None)
        if not isinstance(layers, (nn.Sequential, nn.ModuleList)) or len(layers) != 4 or patch_embed is None:
            raise ValueError(f"{config.image_encoder} is not a 4-stage timm Swin Transformer")
        # Keep only what CoupAlign uses: the final norm and the classifier would get no gradient.
        self.patch_embed: nn.Module = patch_embed
        self.stages: nn.Sequential | nn.ModuleList = layers
        feature_info = cast(list[dict[str, Any]], swin.feature_info)  # timm: one dict per stage
        self.channels: list[int] = [int(info["num_chs"]) for info in feature_info]  # C_1..C_4
        # Swin's optional absolute position embedding (see CoupAlignConfig.image_abs_pos_embed).
        grid = (config.image_size // 4, config.image_size // 4)
        self.abs_pos_embed = (
            LearnedPositionalEmbedding2d(self.channels[0], grid, init="sincos") if config.image_abs_pos_embed else None
        )
        # CoupAlignConfig.stage_norm: one LayerNorm per stage output, for the readers of V_i only.
        self.stage_norms = nn.ModuleList(nn.LayerNorm(c) for c in self.channels) if config.stage_norm else None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)  # (B, H/4, W/4, C_1)
        if self.abs_pos_embed is not None:
            b, h, w, c = x.shape
            x = x + self.abs_pos_embed(h, w).reshape(1, h, w, c)
        return x

    def stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """SwinStage_{index+1}: NHWC in, NHWC out at the stage's resolution."""
        return self.stages[index](x)  # (B, H_i, W_i, C_i)

    def output(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """V_{index+1} as the SegHead and the fusion read it: the stage output, LayerNorm-ed with
        ``stage_norm`` (the stream into the next stage is not)."""
        return x if self.stage_norms is None else self.stage_norms[index](x)  # (B, H_i, W_i, C_i)

    @property
    def stage_input_channels(self) -> list[int]:
        """Width of each stage's input: C_1 (patch embedding) for stage 1, C_{i-1} after."""
        return [self.channels[0], *self.channels[:3]]


def timm_pretrained_name(image_encoder: str, source: str) -> str:
    """timm's ``arch.tag`` for ``image_pretrained`` "timm" (the architecture's default tag) or
    "timm:<tag>"; an unknown tag is refused offline, with the tags timm knows for the architecture."""
    arch = image_encoder.split(".", 1)[0]
    if source == "timm":
        return image_encoder
    tag = source.split(":", 1)[1].strip()
    if tag.startswith(arch + "."):  # the full "arch.tag" is accepted too
        tag = tag[len(arch) + 1:]
    known = [name.split(".", 1)[1] for name in timm.list_pretrained(f"{arch}.*") if name.split(".", 1)[0] == arch]
    if tag not in known:
        raise ValueError(f"image_pretrained={source!r}: timm has no pretrained tag {tag!r} for {arch}; "
                         f"it has {known}")
    return f"{arch}.{tag}"
