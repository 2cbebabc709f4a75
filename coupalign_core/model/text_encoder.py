"""BERT language encoder f_l (section 3.2), its layers grouped into 4 stages for WPA.

The paper groups BERT-base's 12 layers 3 per stage. Other depths are split as evenly as possible
with the earlier stages taking the remainder (6 layers -> 2, 2, 1, 1), so every stage has a layer
when the depth is at least 4.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertConfig, BertModel

from .configuration import CoupAlignConfig


def split_layers(num_layers: int, num_stages: int = 4) -> list[int]:
    """Layers per stage, as even as possible, earlier stages first: 12 -> [3,3,3,3], 6 -> [2,2,1,1]."""
    if num_layers < num_stages:
        raise ValueError(f"a text encoder with {num_layers} layers cannot form {num_stages} stages")
    base, extra = divmod(num_layers, num_stages)
    return [base + (1 if i < extra else 0) for i in range(num_stages)]


class BertTextEncoder(nn.Module):
    def __init__(self, config: CoupAlignConfig):
        super().__init__()
        if config.text_pretrained:
            # Local folder or hub id; no pooler: CoupAlign takes Lg from the [CLS] hidden state.
            self.bert = BertModel.from_pretrained(config.text_encoder, add_pooling_layer=False)
            # Record the architecture so a checkpoint rebuilds it without the weights' source.
            bc = self.bert.config
            config.text_config = dict(
                vocab_size=bc.vocab_size, hidden_size=bc.hidden_size,
                num_hidden_layers=bc.num_hidden_layers, num_attention_heads=bc.num_attention_heads,
                intermediate_size=bc.intermediate_size, max_position_embeddings=bc.max_position_embeddings,
                type_vocab_size=bc.type_vocab_size, hidden_act=bc.hidden_act,
                layer_norm_eps=bc.layer_norm_eps, pad_token_id=bc.pad_token_id,
            )
        else:
            self.bert = BertModel(BertConfig(**config.text_config), add_pooling_layer=False)
        layers = self.bert.encoder.layer
        sizes = split_layers(len(layers))
        bounds = [sum(sizes[:i]) for i in range(5)]
        self.stage_layers = [list(range(bounds[i], bounds[i + 1])) for i in range(4)]
        self.hidden_size: int = self.bert.config.hidden_size  # D

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.bert.embeddings(input_ids=input_ids)  # (B, T, D)

    @staticmethod
    def additive_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B, T) 1/0 -> (B, 1, 1, T) additive mask: padding never acts as a key."""
        m = attention_mask[:, None, None, :].to(dtype)
        return (1.0 - m) * torch.finfo(dtype).min

    def stage(self, index: int, hidden: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
        """BERTStage_{index+1}: its group of layers."""
        for i in self.stage_layers[index]:
            hidden = self.bert.encoder.layer[i](hidden, attention_mask=additive_mask)
        return hidden  # (B, T, D)
