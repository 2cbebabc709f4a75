"""The switches between the code's readings of the paper and the literal ones (issue 15): each changes
exactly the computation it names, the literal SMA and auxiliary loss match values worked out by
hand, the paper configs state every switch, and a run with every literal switch on trains."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from test_training import tiny_config, write_refer_fixture

from coupalign_core.checkpoint import read_checkpoint
from coupalign_core.data import ReferDataset
from coupalign_core.losses import CoupAlignLoss
from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer
from coupalign_core.model.sma import SentenceMaskAlignment
from coupalign_core.training.config import DataConfig, OptimConfig, TrainingConfig, load_config_dict
from coupalign_core.training.datasets import build_datasets, held_out_images
from coupalign_core.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
PAPER_CONFIGS = ("refcoco_paper", "refcocoplus_paper", "refcocog_umd_paper", "refcocog_google_paper")
SENTENCES = ["the second red cup from the left", "man in white shirt"]


def _inputs(config: CoupAlignConfig, batch: int = 2):
    ids, mask = build_tokenizer(config)(SENTENCES[:batch], config.max_tokens)
    images = torch.randn(batch, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))
    return images, torch.from_numpy(ids), torch.from_numpy(mask)


def _build(config: CoupAlignConfig, seed: int = 0) -> CoupAlign:
    torch.manual_seed(seed)
    return CoupAlign(config).eval()


@pytest.fixture(scope="module")
def tiny():
    return _build(CoupAlignConfig.preset("tiny"))


def _transplant(src: CoupAlign, **change) -> tuple[CoupAlign, list[str], list[str]]:
    dst = CoupAlign(src.config.replace(**change)).eval()
    missing, unexpected = dst.load_state_dict(src.state_dict(), strict=False)
    return dst, missing, unexpected


def _capture(module: torch.nn.Module, store: list) -> torch.utils.hooks.RemovableHandle:
    return module.register_forward_pre_hook(lambda _m, args: store.append(args))


# ---- defaults are today's model ---------------------------------------------------------------------------
def test_defaults_are_the_readings_the_code_had():
    cfg = CoupAlignConfig()
    assert (cfg.sma_temperature, cfg.aux_loss_form, cfg.wpa_position) == ("learnt", "normalised", "after_stage")
    assert cfg.drop_path_rate is None and cfg.stage_norm is False
    data = DataConfig(data_root="d", dataset="synthetic", split_by="unc")
    assert data.epoch_sentences == "one_per_ref" and data.val_from_train is None and data.val_split == "val"
    assert OptimConfig(max_steps=1, batch_size=1).select_checkpoint == "best"
    # a config stored before the switches existed (no such keys) reads as today's model
    stored = {k: v for k, v in CoupAlignConfig.preset("tiny").to_dict().items()
              if k not in ("sma_temperature", "aux_loss_form", "wpa_position", "drop_path_rate", "stage_norm")}
    assert CoupAlignConfig.from_dict(stored) == CoupAlignConfig.preset("tiny")


# ---- SMA temperature (Eq. 11) -----------------------------------------------------------------------------
def test_literal_sma_against_hand_computation():
    """Fixed s = 1 (Eq. 11 as printed): Q_w = softmax(cos); no temperature parameter."""
    sma = SentenceMaskAlignment(query_dim=2, seg_dim=2, text_dim=2, logit_scale=1.0, learn_scale=False)
    assert "logit_scale" not in dict(sma.named_parameters())
    with torch.no_grad():
        sma.query_proj.weight.copy_(torch.eye(2))
        sma.query_proj.bias.zero_()
        sma.pixel_proj.weight.copy_(torch.eye(2)[:, :, None, None])
        sma.pixel_proj.bias.zero_()
    queries = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]]])  # cos with L_g = (1, 0): 1, 0, -1
    pixels = torch.tensor([[2.0, 3.0]])[:, :, None, None]  # one pixel y = (2, 3): q · y = 2, 9, -4
    sentence = torch.tensor([[4.0, 0.0]])
    mask, weights, _ = sma(queries, pixels, sentence)
    z = math.e + 1 + 1 / math.e
    w = [math.e / z, 1 / z, (1 / math.e) / z]
    torch.testing.assert_close(weights[0], torch.tensor(w))
    torch.testing.assert_close(mask[0, 0, 0], torch.tensor(2 * w[0] + 9 * w[1] - 4 * w[2]))


def test_sma_temperature_changes_only_the_query_weights(tiny):
    images, ids, mask = _inputs(tiny.config)
    with torch.no_grad():
        learnt = tiny(images, ids, mask)
    # fixed at the learnt scale's starting value (1/0.07): the same model, less one parameter
    fixed, missing, unexpected = _transplant(tiny, sma_temperature=0.07)
    assert not missing and unexpected == ["sma.logit_scale"]
    with torch.no_grad():
        torch.testing.assert_close(fixed(images, ids, mask).logits, learnt.logits, rtol=0, atol=1e-5)
    # the literal softmax of cosines: log Q_w = s·cos - log Z, so its weights are softmax(log Q_w / s)
    literal, _, _ = _transplant(tiny, sma_temperature=1.0)
    with torch.no_grad():
        out = literal(images, ids, mask)
    torch.testing.assert_close(out.pixel_embeddings, learnt.pixel_embeddings)  # encoder, SegHead untouched
    torch.testing.assert_close(out.query_weights, (learnt.query_weights.log() * 0.07).softmax(-1), rtol=0, atol=1e-6)
    assert out.query_weights.max() < learnt.query_weights.max()  # flatter
    assert (out.logits - learnt.logits).abs().max() > 1e-4


# ---- image encoder: drop path, stage norm -------------------------------------------------------------------
def test_drop_path_rate_sets_swin_stochastic_depth_only(tiny):
    assert tiny.config.image_encoder_kwargs["drop_path_rate"] == 0.0
    dropped, missing, unexpected = _transplant(tiny, drop_path_rate=0.3)
    assert not missing and not unexpected
    blocks = [b for stage in dropped.image_encoder.stages for b in stage.blocks]
    assert blocks[-1].drop_path1.drop_prob == pytest.approx(0.3)  # timm: linear from 0 to the rate
    images, ids, mask = _inputs(tiny.config)
    with torch.no_grad():
        torch.testing.assert_close(dropped(images, ids, mask).logits, tiny(images, ids, mask).logits)  # eval
        torch.manual_seed(0)
        train_a = dropped.train()(images, ids, mask).logits
        train_b = tiny.train()(images, ids, mask).logits
    tiny.eval()
    assert (train_a - train_b).abs().max() > 1e-4


def test_stage_norm_normalises_what_seghead_and_fusion_read_not_the_stream(tiny):
    normed, missing, unexpected = _transplant(tiny, stage_norm=True)
    assert missing and all(k.startswith("image_encoder.stage_norms.") for k in missing) and not unexpected
    seen: dict[str, dict[str, list]] = {}
    for name, model in (("plain", tiny), ("normed", normed)):
        seen[name] = {"seg_head": [], "fusion": [], "stage_in": []}
        handles = [_capture(model.seg_head, seen[name]["seg_head"]), _capture(model.fusion, seen[name]["fusion"])]
        handles += [_capture(s, seen[name]["stage_in"]) for s in model.image_encoder.stages]
        with torch.no_grad():
            model(*_inputs(tiny.config))
        for h in handles:
            h.remove()
    for i in range(4):  # the stream through the stages is the same
        torch.testing.assert_close(seen["normed"]["stage_in"][i][0], seen["plain"]["stage_in"][i][0])
    plain_v, normed_v = seen["plain"]["seg_head"][0][1], seen["normed"]["seg_head"][0][1]
    for p, n in zip(plain_v, normed_v):  # (B, C, H, W): LayerNorm over C, weight 1 and bias 0 at the start
        want = F.layer_norm(p.permute(0, 2, 3, 1), p.shape[1:2]).permute(0, 3, 1, 2)
        torch.testing.assert_close(n, want, rtol=0, atol=1e-5)
        assert (n - p).abs().max() > 1e-2
    torch.testing.assert_close(seen["normed"]["fusion"][0][0],
                               F.layer_norm(seen["plain"]["fusion"][0][0], plain_v[3].shape[1:2]), rtol=0, atol=1e-5)


# ---- WPA position (Eq. 3) ------------------------------------------------------------------------------------
def test_wpa_before_stage_aligns_each_stage_input():
    config = CoupAlignConfig.preset("tiny", wpa_position="before_stage")
    model = _build(config)
    after = _build(CoupAlignConfig.preset("tiny"))
    assert model.state_dict().keys() == after.state_dict().keys()  # same modules, other widths
    c = model.image_encoder.channels
    assert [model.wpa[str(i)].vision_proj.in_features for i in (1, 2, 3, 4)] == [c[0], c[0], c[1], c[2]]
    images, ids, mask = _inputs(config)
    seg_inputs: list = []
    handle = _capture(model.seg_head, seg_inputs)
    with torch.no_grad():
        out = model(images, ids, mask, output_attentions=True)
    handle.remove()
    s = config.image_size // 4
    assert [a.shape[1] for a in out.wpa_attentions] == [s * s, s * s, (s // 2) ** 2, (s // 4) ** 2]
    # by hand: V_{i+1} = SwinStage_i(WPA_i(V_i, L_i)), L_{i+1} = BERTStage_i(WPA_i(V_i, L_i))
    text_mask = mask.bool()
    additive = model.text_encoder.additive_mask(mask, images.dtype)
    with torch.no_grad():
        v, t = model.image_encoder.embed(images), model.text_encoder.embed(ids)
        features = []
        for i in range(4):
            b, h, w, ch = v.shape
            flat, t, _ = model.wpa[str(i + 1)](v.reshape(b, h * w, ch), t, text_mask)
            v = model.image_encoder.stage(i, flat.reshape(b, h, w, ch))
            t = model.text_encoder.stage(i, t, additive)
            features.append(v.permute(0, 3, 1, 2))
    for got, want in zip(seg_inputs[0][1], features):
        torch.testing.assert_close(got, want)


# ---- auxiliary loss (Eq. 14-16) ------------------------------------------------------------------------------
def _loss(**fields) -> CoupAlignLoss:
    return CoupAlignLoss(CoupAlignConfig.preset("tiny", **fields))


def test_literal_aux_against_hand_computation():
    """Y1 = 1-D embeddings (1, 2 | 0, -1), mask (1, 1 | 0, 0): ŷ+ = 1.5, ŷ- = -0.5, raw dot products."""
    emb = torch.tensor([1.0, 2.0, 0.0, -1.0]).reshape(1, 1, 2, 2)
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])[None]

    def nll(positive: float, others: list[float], tau: float) -> float:
        return -math.log(math.exp(positive / tau) / (math.exp(positive / tau) + sum(math.exp(o / tau) for o in others)))

    for tau in (1.0, 0.5):
        p2n = (nll(1 * 1.5, [1 * 0, 1 * -1], tau) + nll(2 * 1.5, [2 * 0, 2 * -1], tau)) / 2  # Eq. 14
        n2p = (nll(0 * -0.5, [0 * 1, 0 * 2], tau) + nll(-1 * -0.5, [-1 * 1, -1 * 2], tau)) / 2  # Eq. 15
        got = _loss(aux_loss_form="paper", aux_temperature=tau).auxiliary_loss(emb, target)
        torch.testing.assert_close(got, torch.tensor([p2n + n2p]))
        assert abs(got.item() - _loss(aux_temperature=tau).auxiliary_loss(emb, target).item()) > 0.1
    assert nll(0.0, [0.0, 0.0], 1.0) == pytest.approx(math.log(3))  # the hand formula itself


def _brute_force_paper_aux(emb: torch.Tensor, fg: torch.Tensor, tau: float) -> torch.Tensor:
    e, f = emb.flatten(1), fg.flatten().bool()
    pos, neg = e[:, f], e[:, ~f]

    def direction(anchors, prototype, others):
        per_anchor = [torch.logsumexp(torch.cat([(a @ prototype)[None], a @ others]) / tau, 0) - a @ prototype / tau
                      for a in anchors.T]
        return torch.stack(per_anchor).mean()

    return direction(pos, pos.mean(1), neg) + direction(neg, neg.mean(1), pos)


def test_literal_aux_is_exact_in_chunks_with_gradients_and_in_float32_under_autocast():
    torch.manual_seed(0)
    emb = torch.randn(3, 4, 6, 5, requires_grad=True)
    target = (torch.rand(3, 6, 5) > 0.6).float()
    target[2] = 0.0  # nothing to contrast: 0
    loss = _loss(aux_loss_form="paper", aux_temperature=0.3)
    want = torch.stack([_brute_force_paper_aux(emb[i], target[i], 0.3) for i in range(2)] + [emb.new_zeros(())])
    (want_grad,) = torch.autograd.grad(want.sum(), emb)
    for chunk in (loss.paper_chunk_scores, 7, 1):  # one chunk per image; 7 scores: one anchor at a time
        loss.paper_chunk_scores = chunk
        got = loss.auxiliary_loss(emb, target)
        (grad,) = torch.autograd.grad(got.sum(), emb)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(grad, want_grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss.auxiliary_loss(emb, target), want)


def test_aux_form_changes_only_the_aux_term(tiny):
    images, ids, mask = _inputs(tiny.config)
    with torch.no_grad():
        out = tiny(images, ids, mask)
    target = torch.zeros(2, tiny.config.image_size, tiny.config.image_size)
    target[0, 20:60, 30:70] = 1
    target[1, 10:30, 10:90] = 1
    normalised, paper = _loss()(out, target), _loss(aux_loss_form="paper")(out, target)
    for key in ("seg", "presence"):
        torch.testing.assert_close(paper[key], normalised[key])
    assert abs(paper["aux"].item() - normalised["aux"].item()) > 1e-3
    torch.testing.assert_close(paper["loss"] - 0.1 * paper["aux"], normalised["loss"] - 0.1 * normalised["aux"])


# ---- config values ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    (dict(sma_temperature="warm"), "sma_temperature"),
    (dict(sma_temperature=0), "sma_temperature"),
    (dict(sma_temperature=True), "sma_temperature"),
    (dict(aux_loss_form="raw"), "aux_loss_form"),
    (dict(wpa_position="inside"), "wpa_position"),
    (dict(drop_path_rate=1.0), "drop_path_rate"),
])
def test_bad_model_switch_values_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        CoupAlignConfig(**change)


@pytest.mark.parametrize("change, message", [
    (dict(epoch_sentences="random"), "epoch_sentences"),
    (dict(val_from_train=0, val_split=None), "val_from_train"),
    (dict(val_from_train=1.5, val_split=None), "val_from_train"),
    (dict(val_from_train=True, val_split=None), "val_from_train"),
    (dict(val_from_train=100), "val_split: null"),
])
def test_bad_data_switch_values_are_named(change, message):
    with pytest.raises(ValueError, match=message):
        DataConfig(data_root="d", dataset="synthetic", split_by="unc", **change)
    with pytest.raises(ValueError, match="select_checkpoint"):
        OptimConfig(max_steps=1, batch_size=1, select_checkpoint="first")


def test_sma_temperature_reads_from_yaml_as_a_number():
    assert CoupAlignConfig.from_yaml("sma_temperature: 1\n").sma_temperature == 1.0
    assert CoupAlignConfig.from_yaml("sma_temperature: '0.5'\n").sma_temperature == 0.5
    assert CoupAlignConfig.from_yaml("sma_temperature: learnt\n").sma_temperature == "learnt"


# ---- the paper configs state every switch -----------------------------------------------------------------------
EXPLICIT = {
    "model": ("image_encoder", "image_pretrained", "drop_path_rate", "stage_norm", "wpa_direction", "wpa_stages",
              "wpa_position", "sma_temperature", "sma_logit_scale", "aux_loss_form", "aux_temperature",
              "aux_max_pixels", "aux_loss_weight", "dice_loss_weight", "presence_head"),
    "data": ("epoch_sentences", "val_split", "val_from_train", "val_sentences"),
    "train": ("select_checkpoint", "epochs", "global_batch_size", "lr", "end_lr", "decay_epochs", "poly_power"),
}


@pytest.mark.parametrize("name", PAPER_CONFIGS)
def test_paper_configs_state_every_switch_explicitly(name):
    path = REPO / "training" / "configs" / f"{name}.yaml"
    raw = load_config_dict(path)  # the file and its base chain, before any default fills a gap
    absent = [f"{section}.{key}" for section, keys in EXPLICIT.items() for key in keys if key not in raw[section]]
    assert not absent, f"{name}.yaml leaves {absent} to the code's defaults"
    config = TrainingConfig.load(path)
    m, d, t = config.model, config.data, config.train
    assert (m.drop_path_rate, m.stage_norm, m.wpa_position) == (0.3, True, "after_stage")
    assert (m.sma_temperature, m.aux_loss_form) == ("learnt", "normalised")
    assert (d.epoch_sentences, d.val_from_train, t.select_checkpoint) == ("one_per_ref", None, "last")


def test_paper_config_swin_weights_are_the_imagenet22k_ones():
    model = load_config_dict(REPO / "training" / "configs" / "refcoco_paper.yaml")["model"]
    cfg = timm.models.get_pretrained_cfg(f"{model['image_encoder']}.ms_in22k")  # offline: timm's registry
    assert cfg.num_classes == 21841  # the 22K classifier, not a 1K fine-tune
    assert Path(cfg.url).name == Path(model["image_pretrained"]).name == "swin_base_patch4_window12_384_22k.pth"
    from coupalign_core.model.image_encoder import timm_pretrained_name

    assert timm_pretrained_name(model["image_encoder"], "timm:ms_in22k") == "swin_base_patch4_window12_384.ms_in22k"
    with pytest.raises(ValueError, match="ms_in22k"):  # an unknown tag lists the known ones
        timm_pretrained_name(model["image_encoder"], "timm:in21k")


# ---- data: epoch sentences, held-out training images ------------------------------------------------------------
@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_refer_fixture(tmp_path_factory.mktemp("refer"), num_images=10)  # 6 train images, 12 refs


def test_held_out_images_are_deterministic_and_disjoint(data_root):
    ids = list(range(100))
    assert held_out_images(ids, 0.1) == held_out_images(reversed(ids), 0.1)
    assert len(held_out_images(ids, 0.1)) == 10 and len(held_out_images(ids, 25)) == 25
    assert held_out_images(ids, 10) <= held_out_images(ids, 25)  # a larger hold-out extends a smaller one
    assert held_out_images(ids + [1000], 0.1) == held_out_images(ids, 0.1)  # new images shift nothing else
    with pytest.raises(ValueError, match="nothing would be left"):
        held_out_images(range(3), 3)
    data = DataConfig(data_root=str(data_root), dataset="synthetic", split_by="unc", val_split=None,
                      val_from_train=2, epoch_sentences="all", val_sentences="all")
    train, val = build_datasets(data, transform=lambda item: item, seed=0)
    train_images = {int(r["image_id"]) for r in train.refs}
    val_images = {int(r["image_id"]) for r in val.refs}
    assert len(val_images) == 2 and not train_images & val_images
    assert train_images | val_images == set(range(6))  # the training split only
    assert len(train) == 2 * len(train.refs)  # "all": every sentence once
    one_per_ref, _ = build_datasets(DataConfig(data_root=str(data_root), dataset="synthetic", split_by="unc"),
                                    transform=lambda item: item, seed=0)
    assert len(one_per_ref) == len(one_per_ref.refs) == 12
    assert isinstance(one_per_ref, ReferDataset) and one_per_ref.sentences == "random"


# ---- training: checkpoint selection, every literal switch on ----------------------------------------------------
def test_select_last_writes_no_best_checkpoint(data_root, tmp_path):
    config = TrainingConfig.from_dict(tiny_config(data_root, max_steps=3, eval_every=1, select_checkpoint="last"))
    result = Trainer(config, tmp_path).fit()
    assert result.best_oiou is not None  # validation still ran
    assert (tmp_path / "last.pt").is_file() and not (tmp_path / "best.pt").exists()


def test_a_run_with_every_literal_switch_on(data_root, tmp_path):
    raw = tiny_config(data_root, max_steps=3, eval_every=3, select_checkpoint="best")
    raw["model"].update(sma_temperature=1.0, aux_loss_form="paper", wpa_position="before_stage", stage_norm=True,
                        drop_path_rate=0.3)
    raw["data"].update(epoch_sentences="all", val_split=None, val_from_train=2)
    trainer = Trainer(TrainingConfig.from_dict(raw), tmp_path)
    assert len(trainer.train_set) == 2 * 4 * 2  # 4 training images left, 2 refs each, 2 sentences each
    losses: list[dict] = []
    trainer.step_callbacks.append(lambda _t, step_losses: losses.append(step_losses))
    result = trainer.fit()
    assert result.step == 3 and all(math.isfinite(v) for row in losses for v in row.values())
    assert losses[0]["aux"] > 0
    best = read_checkpoint(tmp_path / "best.pt")  # chosen on the held-out training images
    assert best["train_config"]["data"]["val_from_train"] == 2 and best["train_config"]["data"]["val_split"] is None
    stored = CoupAlignConfig.from_dict(best["config"])
    assert (stored.sma_temperature, stored.aux_loss_form, stored.wpa_position) == (1.0, "paper", "before_stage")
    assert "sma.logit_scale" not in best["model"] and "image_encoder.stage_norms.0.weight" in best["model"]
