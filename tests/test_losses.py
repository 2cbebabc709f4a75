"""CoupAlignLoss (Eq. 13-17) against hand-worked values, degenerate masks, memory bound, gradients."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from coupalign_core.losses import CoupAlignLoss
from coupalign_core.model import CoupAlign, CoupAlignConfig


def make_loss(**fields) -> CoupAlignLoss:
    defaults = dict(aux_loss_weight=0.1, aux_temperature=0.07, aux_max_pixels=1024, presence_loss_weight=0.1)
    defaults.update(fields)
    return CoupAlignLoss(CoupAlignConfig(**defaults))


def output(logits, emb, presence=None):
    """A stand-in with the fields of CoupAlignOutput that the loss reads."""
    return SimpleNamespace(logits=logits, pixel_embeddings=emb, presence_logits=presence)


def block_target(cells: list[list[int]], cell: int = 4) -> torch.Tensor:
    """(1, h*cell, w*cell) mask where each embedding cell is all foreground or all background."""
    t = torch.tensor(cells, dtype=torch.float32)
    return t.repeat_interleave(cell, 0).repeat_interleave(cell, 1)[None]


def test_segmentation_loss_matches_hand_computed_bce():
    l3 = math.log(3.0)
    logits = torch.tensor([[0.0, l3], [-l3, 2.0]]).view(1, 1, 2, 2)
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])[None]
    # -log σ(0) = log 2; -log σ(ln 3) = log(4/3); -log(1 - σ(-ln 3)) = log(4/3); -log(1 - σ(2)) = log(1 + e²)
    expected = (math.log(2) + 2 * math.log(4 / 3) + math.log(1 + math.e**2)) / 4
    seg = CoupAlignLoss.segmentation_loss(logits, target)
    assert seg.shape == (1,)
    assert seg.item() == pytest.approx(expected, rel=1e-6)


def test_segmentation_loss_is_per_image_mean_then_batch_mean():
    # image 0: 1 pixel of 4 wrong (big loss), image 1: 16x16 all right: per-image means, not pooled
    logits = torch.full((2, 1, 4, 4), -20.0)
    logits[0, 0, 0, 0] = 20.0  # false positive in image 0
    target = torch.zeros(2, 4, 4)
    loss = make_loss(aux_loss_weight=0.0)
    out = loss(output(logits, torch.randn(2, 3, 1, 1)), target)
    per_image = torch.tensor([(20 + 15 * math.log1p(math.exp(-20))) / 16, math.log1p(math.exp(-20))])
    assert out["seg"].item() == pytest.approx(per_image.mean().item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx(per_image.mean().item(), rel=1e-5)


def test_segmentation_logits_upsampled_to_target_size():
    logits = torch.full((1, 1, 2, 2), 3.0)
    target = torch.ones(1, 8, 8)
    seg = CoupAlignLoss.segmentation_loss(logits, target)
    assert seg.item() == pytest.approx(math.log1p(math.exp(-3.0)), rel=1e-6)


def test_aux_one_dimensional_embeddings_by_hand():
    # C = 1: after L2 normalisation positives are +1, negatives -1; τ = 1.
    # P2N per positive anchor: -log(e^1 / (e^1 + |N| e^-1)) = log(1 + |N| e^-2); N2P likewise with |P|.
    emb = torch.tensor([[2.0, 0.5], [-1.0, -3.0]]).view(1, 1, 2, 2)
    target = block_target([[1, 1], [0, 0]])  # P = 2, N = 2
    loss = make_loss(aux_temperature=1.0)
    aux = loss.auxiliary_loss(emb, target)
    expected = 2 * math.log(1 + 2 * math.exp(-2))
    assert aux.item() == pytest.approx(expected, rel=1e-6)

    target = block_target([[1, 0], [0, 0]])  # P = 1 (the 2.0 pixel), N = 3 (one of them is +0.5 -> +1)
    aux = loss.auxiliary_loss(emb, target)
    # negatives: +1, -1, -1 -> prototype mean (-1/3) normalised = -1.
    # P2N (anchor +1): positive score +1, negatives +1, -1, -1
    p2n = math.log(math.e + math.e + 2 * math.exp(-1)) - 1
    # N2P anchors: +1 -> ŷ- score -1, other +1; -1 (twice) -> score +1, other -1
    n2p_plus = math.log(math.exp(-1) + math.e) + 1
    n2p_minus = math.log(math.e + math.exp(-1)) - 1
    expected = p2n + (n2p_plus + 2 * n2p_minus) / 3
    assert aux.item() == pytest.approx(expected, rel=1e-6)


def test_aux_two_dimensional_with_prototype_normalisation_by_hand():
    # pixels (row-major): a=(3,0) pos, b=(0,1) pos, c=(-1,0) neg, d=(-2,0) neg; τ = 0.5
    emb = torch.tensor([[3.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [-2.0, 0.0]]).T.reshape(1, 2, 2, 2)
    target = block_target([[1, 1], [0, 0]])
    tau = 0.5
    aux = make_loss(aux_temperature=tau).auxiliary_loss(emb, target).item()
    r = 1 / math.sqrt(2)  # ŷ+ = normalise((1,0)+(0,1)) = (r, r); ŷ- = (-1, 0)
    a_pos, a_negs = r, [-1.0, -1.0]
    b_pos, b_negs = r, [0.0, 0.0]

    def nce(pos, others):
        return -math.log(math.exp(pos / tau) / (math.exp(pos / tau) + sum(math.exp(o / tau) for o in others)))

    p2n = (nce(a_pos, a_negs) + nce(b_pos, b_negs)) / 2
    n2p = nce(1.0, [-1.0, 0.0])  # c and d are the same unit vector
    assert aux == pytest.approx(p2n + n2p, rel=1e-6)


def test_empty_and_full_masks_are_finite_and_aux_zero():
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 32, 32, requires_grad=True)
    emb = torch.randn(2, 8, 8, 8, requires_grad=True)
    target = torch.stack([torch.zeros(32, 32), torch.ones(32, 32)])
    out = make_loss()(output(logits, emb, torch.zeros(2, requires_grad=True)), target)
    for key, value in out.items():
        assert torch.isfinite(value), key
    assert out["aux"].item() == 0.0
    out["loss"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert emb.grad is None or torch.isfinite(emb.grad).all()


def test_total_is_eq17_plus_presence():
    torch.manual_seed(1)
    logits = torch.randn(2, 1, 16, 16)
    emb = torch.randn(2, 4, 4, 4)
    target = torch.zeros(2, 16, 16)
    target[1, 4:12, 4:12] = 1  # image 0 has no target, image 1 has one
    presence = torch.tensor([0.0, 2.0])
    loss = make_loss(aux_loss_weight=0.3, presence_loss_weight=0.5)
    out = loss(output(logits, emb, presence), target)
    seg = loss.segmentation_loss(logits, target)
    aux = loss.auxiliary_loss(emb, target)
    assert aux[0].item() == 0.0 and aux[1].item() > 0
    bce = (math.log(2) + math.log1p(math.exp(-2))) / 2  # targets present = [0, 1]: balanced = plain mean
    assert out["presence"].item() == pytest.approx(bce, rel=1e-6)
    expected = (seg + 0.3 * aux).mean().item() + 0.5 * bce
    assert out["loss"].item() == pytest.approx(expected, rel=1e-6)
    # without a presence head the term is absent
    out_none = loss(output(logits, emb, None), target)
    assert out_none["presence"].item() == 0.0
    assert out_none["loss"].item() == pytest.approx((seg + 0.3 * aux).mean().item(), rel=1e-6)


def test_dice_term_by_hand_and_added_to_seg():
    # σ(ln 3) = 3/4, σ(-ln 3) = 1/4. Image 0: p = [3/4, 1/4], t = [1, 0]: overlap 3/4, Σp = 1, Σt = 1
    # -> 1 - (1.5 + 1) / (1 + 1 + 1) = 1/6. Image 1, empty target: 1 - 1 / (Σp + 1) = 1 - 1/2 = 1/2.
    l3 = math.log(3.0)
    logits = torch.tensor([[l3, -l3], [l3, -l3]]).view(2, 1, 1, 2)
    target = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    dice = CoupAlignLoss.dice_loss(logits, target)
    assert dice.tolist() == pytest.approx([1 / 6, 1 / 2], rel=1e-6)
    loss = make_loss(aux_loss_weight=0.0, dice_loss_weight=2.0)
    out = loss(output(logits, torch.randn(2, 3, 1, 2)), target)
    seg = CoupAlignLoss.segmentation_loss(logits, target)
    assert out["seg"].item() == pytest.approx((seg + 2.0 * dice).mean().item(), rel=1e-6)
    with pytest.raises(ValueError, match="dice_loss_weight"):
        make_loss(dice_loss_weight=-1.0)


def test_presence_loss_balances_present_and_absent_targets():
    """One absent target among four: it carries half the loss, the three present ones the other half."""
    target = torch.zeros(4, 8, 8)
    target[1:, 2:5, 2:5] = 1  # sample 0 absent, 1-3 present
    logits = torch.tensor([1.0, 2.0, -1.0, 0.5])
    bce = lambda x, y: math.log1p(math.exp(-x)) if y else math.log1p(math.exp(x))  # noqa: E731
    expected = 0.5 * bce(1.0, 0) + 0.5 * (bce(2.0, 1) + bce(-1.0, 1) + bce(0.5, 1)) / 3
    got = make_loss().presence_loss(logits, target)
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # a batch of one class is its plain mean
    got_all = make_loss().presence_loss(logits[1:], target[1:])
    assert got_all.item() == pytest.approx((bce(2.0, 1) + bce(-1.0, 1) + bce(0.5, 1)) / 3, rel=1e-6)


def test_gradients_reach_logits_and_embeddings():
    torch.manual_seed(2)
    logits = torch.randn(2, 1, 32, 32, requires_grad=True)
    emb = torch.randn(2, 8, 8, 8, requires_grad=True)
    presence = torch.randn(2, requires_grad=True)
    target = torch.zeros(2, 32, 32)
    target[:, 8:20, 4:16] = 1
    make_loss()(output(logits, emb, presence), target)["loss"].backward()
    for name, t in (("logits", logits), ("embeddings", emb), ("presence", presence)):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0, name


def test_lambda_zero_removes_aux():
    torch.manual_seed(3)
    logits = torch.randn(1, 1, 16, 16, requires_grad=True)
    emb = torch.randn(1, 4, 4, 4, requires_grad=True)
    target = torch.zeros(1, 16, 16)
    target[0, :8] = 1
    out = make_loss(aux_loss_weight=0.0)(output(logits, emb), target)
    assert out["loss"].item() == pytest.approx(out["seg"].item(), rel=1e-7)
    assert out["aux"].item() > 0  # still measured for logging
    out["loss"].backward()
    assert emb.grad is None  # ... but contributes no gradient
    with_aux = make_loss(aux_loss_weight=1.0)(output(logits, emb), target)
    assert with_aux["loss"].item() == pytest.approx(out["seg"].item() + out["aux"].item(), rel=1e-5)


def test_sampling_cap_bounds_memory_at_112x112():
    """448 input -> Y1 of 112x112: the largest tensor autograd keeps stays B x K x (K+1), not P x N."""
    torch.manual_seed(4)
    cap = 256
    emb = torch.randn(2, 16, 112, 112, requires_grad=True)
    target = torch.zeros(2, 448, 448)
    target[:, :224] = 1  # P = N = 6272 per image: the full matrix would hold 39 M scores
    saved: list[int] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        aux = make_loss(aux_max_pixels=cap).auxiliary_loss(emb, target)
    aux.sum().backward()
    assert torch.isfinite(aux).all() and emb.grad is not None
    largest_allowed = max(emb.numel(), 2 * cap * (cap + 1))  # the batch's score matrices (B, K, 1 + K)
    assert max(saved) <= largest_allowed, (max(saved), largest_allowed)
    assert max(saved) < 6272 * 6272 // 10  # far below the unbounded P x N matrix
    score_matrices = [n for n in saved if n == 2 * cap * (cap + 1)]
    assert score_matrices, "the sampled score matrix was not formed at the cap"


def test_batched_aux_equals_each_image_alone():
    """The padded, masked batch gives every image the loss it gets alone (no sampling here), for
    sets of different sizes, an empty target and a full one, values and gradients."""
    torch.manual_seed(6)
    emb = torch.randn(4, 8, 12, 12, requires_grad=True)
    target = torch.zeros(4, 48, 48)
    target[0, 4:20, 8:40] = 1  # a few positives
    target[1, :, :30] = 1  # most pixels positive
    target[3] = 1  # all foreground: 0; image 2 is all background: 0
    loss = make_loss()
    batched = loss.auxiliary_loss(emb, target)
    alone = torch.stack([loss.auxiliary_loss(emb[i:i + 1], target[i:i + 1])[0] for i in range(4)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)
    assert batched[0] > 0 and batched[1] > 0 and batched[2] == 0 and batched[3] == 0
    (g_batched,) = torch.autograd.grad(batched.sum(), emb)
    (g_alone,) = torch.autograd.grad(alone.sum(), emb)
    torch.testing.assert_close(g_batched, g_alone, rtol=1e-5, atol=1e-7)
    assert g_batched[2:].abs().sum() == 0  # nothing to contrast, no gradient


def test_sampling_estimates_the_full_loss():
    """With rescaled negative sums, a capped estimate stays close to the exact Eq. 14-16 value."""
    torch.manual_seed(5)
    emb = torch.randn(1, 16, 48, 48) + 0.5 * torch.randn(1, 16, 1, 1)
    emb[:, :, :20] += 1.0  # foreground pixels share a direction
    target = torch.zeros(1, 192, 192)
    target[:, :80] = 1  # 20 rows of 48 = 960 positives, 1344 negatives
    exact = make_loss(aux_max_pixels=10_000).auxiliary_loss(emb, target).item()
    estimates = [make_loss(aux_max_pixels=256).auxiliary_loss(emb, target).item() for _ in range(5)]
    mean_estimate = sum(estimates) / len(estimates)
    assert mean_estimate == pytest.approx(exact, rel=0.02)
    # an unscaled sum over 256 instead of 1344 pixels would be off by far more than that
    assert abs(mean_estimate - exact) < 0.25 * math.log(1344 / 256)


def test_bad_shapes_raise_with_both_shapes():
    loss = make_loss()
    with pytest.raises(ValueError, match=r"\(3, 16, 16\)"):
        loss(output(torch.zeros(2, 1, 16, 16), torch.zeros(2, 4, 4, 4)), torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match=r"\(2, 16, 16\)"):
        loss(output(torch.zeros(2, 16, 16), torch.zeros(2, 4, 4, 4)), torch.zeros(2, 16, 16))
    with pytest.raises(ValueError, match="aux_temperature"):
        make_loss(aux_temperature=0.0)


def test_on_the_tiny_model_output():
    """The real CoupAlignOutput: (B,1,96,96) logits, (B,32,24,24) Y1, presence logits."""
    torch.manual_seed(6)
    config = CoupAlignConfig.preset("tiny")
    model = CoupAlign(config)
    images = torch.randn(2, 3, config.image_size, config.image_size)
    ids = torch.tensor([[101, 2417, 2598, 102] + [0] * 16, [101, 2417, 102] + [0] * 17])
    mask = (ids != 0).long()
    target = torch.zeros(2, config.image_size, config.image_size)
    target[0, 10:50, 20:60] = 1  # image 1 has no target: presence 0, aux 0 for it
    out = CoupAlignLoss(config)(model(images, ids, mask), target)
    assert all(torch.isfinite(v) for v in out.values())
    assert out["aux"] > 0 and out["presence"] > 0
    out["loss"].backward()
    grads = [p.grad for p in model.seg_head.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
