"""The CoupAlign model: shapes per preset, padding invariance, gradients, ablation switches, and
modules checked against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import timm
import torch
from transformers import BertConfig, BertModel

from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer
from coupalign_core.model.modeling import presence_score
from coupalign_core.model.sma import SentenceMaskAlignment
from coupalign_core.model.text_encoder import split_layers
from coupalign_core.model.tokenization import minilm_path
from coupalign_core.model.wpa import Gate, WordPixelAlignment

SENTENCES = ["the second red cup from the left", "man in white shirt"]


def _inputs(config: CoupAlignConfig, batch: int = 2, max_tokens: int | None = None, seed: int = 0):
    # BERT-base's uncased vocabulary is MiniLM's: the paper preset tokenises offline with it.
    tok = build_tokenizer(config.replace(tokenizer=config.tokenizer or str(minilm_path())))
    ids, mask = tok(SENTENCES[:batch], max_tokens or config.max_tokens)
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, config.image_size, config.image_size, generator=g)
    return images, torch.from_numpy(ids), torch.from_numpy(mask)


def _build(config: CoupAlignConfig, seed: int = 0) -> CoupAlign:
    torch.manual_seed(seed)
    return CoupAlign(config).eval()


@pytest.fixture(scope="module")
def tiny():
    return _build(CoupAlignConfig.preset("tiny"))


# ---- shapes and sizes ---------------------------------------------------------------------------
def test_tiny_output_shapes(tiny):
    cfg = tiny.config
    images, ids, mask = _inputs(cfg)
    with torch.no_grad():
        out = tiny(images, ids, mask, output_attentions=True, output_query_masks=True)
    s, q = cfg.image_size, cfg.image_size // 4
    assert out.logits.shape == (2, 1, s, s)
    assert out.pixel_embeddings.shape == (2, cfg.seg_dim, q, q)
    assert out.presence_logits.shape == (2,)
    assert out.query_weights.shape == (2, cfg.num_queries)
    torch.testing.assert_close(out.query_weights.sum(1), torch.ones(2))
    assert out.query_masks.shape == (2, cfg.num_queries, q, q)
    assert [a.shape for a in out.wpa_attentions] == [
        (2, (s // 4 // 2**i) ** 2, cfg.max_tokens) for i in range(4)
    ]
    # softmax over words, padding words get no weight
    for a in out.wpa_attentions:
        torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:2]))
        assert a.masked_select(~mask.bool()[:, None, :].expand_as(a)).abs().max() == 0


def test_small_preset_shapes_with_pretrained_minilm():
    cfg = CoupAlignConfig.preset("small")
    model = _build(cfg)
    assert cfg.text_config["num_hidden_layers"] == 6  # recorded from the pretrained model
    assert model.text_encoder.stage_layers == [[0, 1], [2, 3], [4], [5]]
    images, ids, mask = _inputs(cfg, batch=1)
    with torch.no_grad():
        out = model(images, ids, mask)
    assert out.logits.shape == (1, 1, 224, 224)
    assert out.presence_logits.shape == (1,)


def test_paper_preset_builds_offline_with_the_papers_numbers():
    cfg = CoupAlignConfig.preset("paper")
    assert (cfg.image_size, cfg.max_tokens, cfg.num_queries, cfg.decoder_layers) == (448, 30, 100, 6)
    assert cfg.aux_loss_weight == 0.1 and cfg.window_size == 12
    model = _build(cfg)
    parts = {name: sum(p.numel() for p in m.parameters()) for name, m in model.named_children()}
    total = model.num_parameters()
    print(f"paper preset: {total / 1e6:.1f} M parameters; "
          + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in parts.items()))
    assert 86e6 < parts["image_encoder"] < 89e6  # Swin-B without its classifier
    assert 108e6 < parts["text_encoder"] < 110e6  # BERT-base without the pooler
    assert 200e6 < total < 280e6
    assert model.text_encoder.stage_layers == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    images, ids, mask = _inputs(cfg, batch=1)
    with torch.no_grad():
        out = model(images, ids, mask)
    assert out.logits.shape == (1, 1, 448, 448)
    assert out.pixel_embeddings.shape == (1, cfg.seg_dim, 112, 112)
    assert out.presence_logits is None


# ---- padding, gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_padding_does_not_change_outputs(preset, tiny):
    model = tiny if preset == "tiny" else _build(CoupAlignConfig.preset(preset))
    cfg = model.config
    images, ids, mask = _inputs(cfg)
    images2, ids2, mask2 = _inputs(cfg, max_tokens=cfg.max_tokens + 17)
    assert (ids2[:, : ids.shape[1]][mask.bool()] == ids[mask.bool()]).all()
    with torch.no_grad():
        a = model(images, ids, mask)
        b = model(images2, ids2, mask2)
    torch.testing.assert_close(a.logits, b.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.presence_logits, b.presence_logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.query_weights, b.query_weights, atol=1e-5, rtol=0)


def test_every_trainable_parameter_gets_a_gradient_from_the_total_loss():
    from coupalign_core.losses import CoupAlignLoss

    cfg = CoupAlignConfig.preset("tiny")
    model = _build(cfg).train()
    images, ids, mask = _inputs(cfg)
    target = torch.zeros(2, cfg.image_size, cfg.image_size)
    target[0, 20:60, 30:70] = 1  # one present target, one empty (no-target) mask
    losses = CoupAlignLoss(cfg)(model(images, ids, mask), target)
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not missing, f"parameters without gradient: {missing}"


# ---- ablation switches: each changes exactly what it names ------------------------------------------
def _zero_gates(model: CoupAlign, stages=(1, 2, 3, 4), which=("vision_gate", "text_gate")):
    """A gate whose last linear is zero outputs tanh(0) * F = 0: that WPA adds nothing."""
    with torch.no_grad():
        for s in stages:
            for name in which:
                gate = getattr(model.wpa[str(s)], name, None)
                if gate is not None:
                    gate.mlp[2].weight.zero_()
                    gate.mlp[2].bias.zero_()


def _transplant(src: CoupAlign, config: CoupAlignConfig) -> tuple[CoupAlign, list[str], list[str]]:
    dst = CoupAlign(config).eval()
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    return dst, missing, unexpected


@pytest.mark.parametrize(
    "change, dropped, zero",
    [
        (dict(wpa_direction="off"), ("wpa.",), dict(stages=(1, 2, 3, 4))),
        (dict(wpa_stages=(3, 4)), ("wpa.1.", "wpa.2."), dict(stages=(1, 2))),
        (dict(wpa_stages=(4,)), ("wpa.1.", "wpa.2.", "wpa.3."), dict(stages=(1, 2, 3))),
        (
            dict(wpa_direction="language_to_vision"),
            ("wpa.1.pixels_to_words", "wpa.1.text_gate", "wpa.2.pixels_to_words", "wpa.2.text_gate",
             "wpa.3.pixels_to_words", "wpa.3.text_gate", "wpa.4.pixels_to_words", "wpa.4.text_gate"),
            dict(which=("text_gate",)),
        ),
    ],
)
def test_wpa_switches_remove_exactly_the_named_alignment(tiny, change, dropped, zero):
    ablated, missing, unexpected = _transplant(tiny, tiny.config.replace(**change))
    assert not missing
    assert unexpected and all(k.startswith(dropped) for k in unexpected)
    reference = _build(tiny.config)
    reference.load_state_dict(tiny.state_dict())
    _zero_gates(reference, **zero)
    images, ids, mask = _inputs(tiny.config)
    with torch.no_grad():
        want = reference(images, ids, mask)
        got = ablated(images, ids, mask)
        full = tiny(images, ids, mask)
    agree = (got.logits - want.logits).abs().max()
    assert agree < 1e-6
    # and the switch did change something (gates start small, so the change is small at init)
    assert (got.logits - full.logits).abs().max() > 100 * max(agree.item(), 1e-9)


def test_sma_switch_replaces_only_the_mask_read_out(tiny):
    ablated, missing, unexpected = _transplant(tiny, tiny.config.replace(use_sma=False))
    assert missing and all(k.startswith("pixel_mask_head.") for k in missing)
    assert unexpected and all(k.startswith(("mask_generator.", "sma.")) for k in unexpected)
    images, ids, mask = _inputs(tiny.config)
    with torch.no_grad():
        full = tiny(images, ids, mask)
        out = ablated(images, ids, mask)
    torch.testing.assert_close(out.pixel_embeddings, full.pixel_embeddings)  # encoder + SegHead untouched
    assert out.query_weights is None and out.logits.shape == full.logits.shape


def test_presence_head_changes_no_mask_logit(tiny):
    without, missing, unexpected = _transplant(tiny, tiny.config.replace(presence_head=False))
    assert not missing and all(k.startswith("presence.") for k in unexpected)
    images, ids, mask = _inputs(tiny.config)
    with torch.no_grad():
        torch.testing.assert_close(without(images, ids, mask).logits, tiny(images, ids, mask).logits)


# ---- modules against hand-worked values -------------------------------------------------------------
def _set(linear: torch.nn.Linear, weight: float, bias: float | None = 0.0):
    with torch.no_grad():
        linear.weight.fill_(weight)
        if linear.bias is not None:
            linear.bias.fill_(bias)


def test_wpa_against_hand_computation():
    """C = D = d = 1 with every projection 1 and gates tanh(relu(F)) * F (Eq. 4-6)."""
    wpa = WordPixelAlignment(1, 1, 1, "bidirectional")
    for lin in (wpa.vision_proj, wpa.text_proj, wpa.words_to_pixels, wpa.pixels_to_words):
        _set(lin, 1.0)
    for gate in (wpa.vision_gate, wpa.text_gate):
        _set(gate.mlp[0], 1.0)
        _set(gate.mlp[2], 1.0)
    vision = torch.tensor([[[1.0], [2.0]]])  # two pixels
    text = torch.tensor([[[1.0], [0.0], [5.0]]])  # two words and one padding token
    mask = torch.tensor([[True, True, False]])
    v_out, t_out, attn = wpa(vision, text, mask)

    def gate(f):
        return math.tanh(max(f, 0.0)) * f

    e, e2 = math.e, math.e**2
    # pixel p attends words with scores (p*1, p*0): softmax -> e^p / (e^p + 1); context = that * 1
    ctx = [e / (e + 1), e2 / (e2 + 1)]
    assert attn[0, :, 2].abs().max() == 0  # the padding word gets no weight
    torch.testing.assert_close(v_out[0, :, 0], torch.tensor([1 + gate(ctx[0]), 2 + gate(ctx[1])]))
    # word 1 (l=1) sees scores (1, 2) over pixels -> softmax; context = weighted pixel values
    w1 = (1 * e + 2 * e2) / (e + e2)
    # word 2 (l=0) sees scores (0, 0) -> uniform -> 1.5
    torch.testing.assert_close(t_out[0, :2, 0], torch.tensor([1 + gate(w1), 0 + gate(1.5)]))
    assert t_out[0, 2, 0] == 5.0  # padding token untouched


def test_gate_is_mlp_times_input():
    gate = Gate(2)
    f = torch.tensor([[0.5, -2.0]])
    torch.testing.assert_close(gate(f), gate.mlp(f) * f)
    assert gate.mlp[-1].__class__ is torch.nn.Tanh


def test_sma_against_hand_computation():
    """Q̂ = identity, Ŷ = identity, s = 1: Q_w = softmax(cos) and M = Σ Q_w (q · y) (Eq. 11-12)."""
    sma = SentenceMaskAlignment(query_dim=2, seg_dim=2, text_dim=2, logit_scale=1.0)
    with torch.no_grad():
        sma.query_proj.weight.copy_(torch.eye(2))
        sma.query_proj.bias.zero_()
        sma.pixel_proj.weight.copy_(torch.eye(2)[:, :, None, None])
        sma.pixel_proj.bias.zero_()
    queries = torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])  # cos with L_g = (1, 0): 1 and 0
    pixels = torch.tensor([[2.0, 3.0]])[:, :, None, None]  # one pixel y = (2, 3)
    sentence = torch.tensor([[4.0, 0.0]])
    mask, weights, per_query = sma(queries, pixels, sentence, return_query_masks=True)
    w = [math.e / (math.e + 1), 1 / (math.e + 1)]
    torch.testing.assert_close(weights[0], torch.tensor(w))
    torch.testing.assert_close(per_query[0, :, 0, 0], torch.tensor([2.0, 9.0]))  # q_n · y
    torch.testing.assert_close(mask[0, 0, 0], torch.tensor(w[0] * 2 + w[1] * 9))


def test_presence_score_definitions():
    logits = torch.tensor([[[[3.0, -3.0], [0.0, -1.0]]]])  # p = .953, .047, .5, .269
    p = torch.sigmoid(torch.tensor(3.0))
    torch.testing.assert_close(presence_score(logits, None), torch.stack([(p + 0.5) / 2]))
    torch.testing.assert_close(presence_score(logits, torch.tensor([0.0])), torch.tensor([0.5]))
    assert presence_score(torch.full((1, 1, 2, 2), -5.0), None).item() == 0.0


# ---- encoders run stage by stage exactly as the whole backbone ----------------------------------------
def test_swin_stages_equal_timm_forward_intermediates(tiny):
    cfg = tiny.config
    swin = timm.create_model(
        cfg.image_encoder, pretrained=False, img_size=cfg.image_size, window_size=cfg.window_size,
        num_classes=0, **cfg.image_encoder_kwargs,
    ).eval()
    swin.load_state_dict(
        {k.replace("stages.", "layers."): v for k, v in tiny.image_encoder.state_dict().items()}, strict=False
    )
    x = torch.randn(1, 3, cfg.image_size, cfg.image_size)
    with torch.no_grad():
        want = swin.forward_intermediates(x, norm=False, output_fmt="NCHW", intermediates_only=True)
        v = tiny.image_encoder.patch_embed(x)  # timm's Swin has no absolute position embedding
        got = []
        for i in range(4):
            v = tiny.image_encoder.stage(i, v)
            got.append(v.permute(0, 3, 1, 2))
    assert len(want) == 4
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_absolute_position_embedding_adds_a_sincos_table(tiny):
    """The tiny preset's Swin "ape": embed = patch_embed + a learnable table that starts as the MAE
    2-D sin-cos values (sin/cos of y in the first half of the channels, of x in the second)."""
    from coupalign_core.model.positional import sincos_2d

    enc = tiny.image_encoder
    assert tiny.config.image_abs_pos_embed and enc.abs_pos_embed is not None
    x = torch.randn(2, 3, tiny.config.image_size, tiny.config.image_size)
    with torch.no_grad():
        added = enc.embed(x) - enc.patch_embed(x)  # (B, H/4, W/4, C_1)
    c = enc.channels[0]
    table = sincos_2d(c, (3, 5))[0]  # (C, 3, 5)
    quarter = c // 4
    omega1 = 1.0 / 10000 ** (1 / quarter)
    assert table[0, 2, 4].item() == pytest.approx(math.sin(2.0))  # sin(y * omega_0), y = 2
    assert table[quarter + 1, 2, 4].item() == pytest.approx(math.cos(2.0 * omega1))  # cos(y * omega_1)
    assert table[2 * quarter + 1, 2, 4].item() == pytest.approx(math.sin(4.0 * omega1))  # sin(x * omega_1), x = 4
    assert table[3 * quarter, 1, 3].item() == pytest.approx(math.cos(3.0))  # cos(x * omega_0)
    assert isinstance(enc.abs_pos_embed.weight, torch.nn.Parameter)  # learnable
    grid = tiny.config.image_size // 4
    torch.testing.assert_close(added, sincos_2d(c, (grid, grid)).permute(0, 2, 3, 1).expand(2, -1, -1, -1))
    # the paper preset has none
    assert CoupAlignConfig().image_abs_pos_embed is False


def test_position_tables_resample_to_another_image_size(tiny):
    """A 96² checkpoint loaded into the same model at 128²: 2-D tables become what the 96² model's
    forward would resize them to at 128², Swin's last-stage bias table follows its window (3 -> 4,
    the map's size), the bias tables of unchanged windows and every other weight stay as they are."""
    from coupalign_core.model.positional import resample_position_tables

    big = _build(tiny.config.replace(image_size=128), seed=1)
    state, resampled = resample_position_tables(big, tiny.state_dict())
    assert sorted(resampled) == sorted([
        "image_encoder.abs_pos_embed.weight", "fusion.pos_embed.weight", "mask_generator.memory_pos.weight",
        "image_encoder.stages.3.blocks.0.attn.relative_position_bias_table"])
    big.load_state_dict(state)
    for name in ("image_encoder.abs_pos_embed", "fusion.pos_embed", "mask_generator.memory_pos"):
        old, new = tiny.get_submodule(name), big.get_submodule(name)
        h, w = new.grid
        torch.testing.assert_close(new(h, w), old(h, w))  # the run-time resize, now stored
    table = state["image_encoder.stages.3.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (7 * 7, 8)  # window 4: (2*4-1)^2 offsets, 8 heads
    # the centre offset (0, 0) keeps its bias: the 5x5 table's centre is the 7x7 table's centre
    old_table = tiny.state_dict()["image_encoder.stages.3.blocks.0.attn.relative_position_bias_table"]
    torch.testing.assert_close(table.reshape(7, 7, 8)[3, 3], old_table.reshape(5, 5, 8)[2, 2], rtol=0, atol=0.02)
    for key, value in tiny.state_dict().items():
        if key not in resampled:
            torch.testing.assert_close(big.state_dict()[key], value, rtol=0, atol=0)
    images, ids, mask = _inputs(big.config)
    with torch.no_grad():
        assert big(images, ids, mask).logits.shape == (2, 1, 128, 128)  # (B, 1, H, W)


def test_bert_stages_equal_the_whole_model(tiny):
    enc = tiny.text_encoder
    bert = BertModel(BertConfig(**tiny.config.text_config), add_pooling_layer=False).eval()
    bert.load_state_dict(enc.bert.state_dict())
    _, ids, mask = _inputs(tiny.config)
    with torch.no_grad():
        want = bert(input_ids=ids, attention_mask=mask).last_hidden_state
        h = enc.embed(ids)
        add = enc.additive_mask(mask, h.dtype)
        for i in range(4):
            h = enc.stage(i, h, add)
    valid = mask.bool()
    torch.testing.assert_close(h[valid], want[valid], atol=1e-5, rtol=1e-5)


def test_layer_split():
    assert split_layers(12) == [3, 3, 3, 3]
    assert split_layers(6) == [2, 2, 1, 1]
    assert split_layers(4) == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="3 layers"):
        split_layers(3)


# ---- config --------------------------------------------------------------------------------------------
def test_config_round_trips_and_validates(tmp_path):
    cfg = CoupAlignConfig.preset("tiny", wpa_stages=(3, 4), use_sma=False)
    cfg.to_yaml(tmp_path / "c.yaml")
    assert CoupAlignConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert CoupAlignConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="wpa_stages"):
        CoupAlignConfig(wpa_stages=(0, 5))
    with pytest.raises(ValueError, match="wpa_direction"):
        CoupAlignConfig(wpa_direction="sideways")
    # YAML 1.1 reads a bare `off` as false (also through `--set model.wpa_direction=off`)
    assert CoupAlignConfig.from_yaml("wpa_direction: off\nimage_size: 448\n").wpa_direction == "off"
    with pytest.raises(ValueError, match="unknown preset"):
        CoupAlignConfig.preset("huge")
    with pytest.raises(ValueError, match="unknown CoupAlignConfig fields"):
        CoupAlignConfig.from_dict({"nonsense": 1})


def test_bad_input_shapes_are_named(tiny):
    images, ids, mask = _inputs(tiny.config)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny(images[:, :1], ids, mask)
    with pytest.raises(ValueError, match="attention_mask"):
        tiny(images, ids, mask[:, :5])


def test_image_encoder_loads_local_pretrained_weights(tmp_path, tiny):
    """A timm Swin state dict in a local file (what a user downloads) initialises the encoder."""
    cfg = tiny.config
    swin = timm.create_model(
        cfg.image_encoder, pretrained=False, img_size=cfg.image_size, window_size=cfg.window_size,
        num_classes=0, **cfg.image_encoder_kwargs,
    )
    torch.save(swin.state_dict(), tmp_path / "swin.pth")
    model = CoupAlign(cfg.replace(image_pretrained=str(tmp_path / "swin.pth")))
    for name, value in model.image_encoder.state_dict().items():
        if name.startswith("abs_pos_embed."):  # ours, not timm's: keeps its sin-cos start
            continue
        torch.testing.assert_close(value, swin.state_dict()[name.replace("stages.", "layers.")])
    with pytest.raises(FileNotFoundError, match="neither an existing weights file"):
        CoupAlign(cfg.replace(image_pretrained=str(tmp_path / "missing.pth")))
