"""CoupAlign's training objective (paper section 3.4, Eq. 13-17), plus the optional presence term.

    L = 1/B · Σ_j (L_seg_j + λ · L_aux_j)  [+ w_presence · BCE(presence_logit, target non-empty)]

* ``L_seg`` (Eq. 13): binary cross entropy on the mask logits, averaged over the pixels of each
  image and then over the batch (Eq. 17). The model already returns its logits at the input
  resolution (M upsampled bilinearly); a target of another size gets the logits upsampled
  bilinearly to it, which is the paper's M -> M'.
* ``L_aux`` (Eq. 14-16): a pixel-contrastive InfoNCE on Y1, the SegHead's (S/4, S/4) pixel
  embeddings. Choices where the paper is silent or loose, and why:

  - **The log.** Eq. 14/15 as printed average the InfoNCE *ratios* without a log. That is not
    InfoNCE (the paper cites [39], van den Oord et al., whose loss is -log of the ratio) and its
    gradient vanishes exactly where a pixel is most wrong. We use ``-log(ratio)``.
  - **L2-normalised embeddings and prototypes.** The dot products are divided by τ = 0.07; on raw
    256-d features they would be in the hundreds, the softmax would saturate and the loss could be
    lowered by inflating feature norms instead of separating the sets. On the unit sphere every
    score is a cosine/τ ∈ [-1/τ, 1/τ], as in the contrastive works that use τ = 0.07. The prototype
    ŷ± is the mean of *all* positive/negative pixels of the image, re-normalised to unit length so
    that it is compared by cosine like everything else.
  - **Bounded memory by sampling.** A 448² input gives 112² = 12,544 pixels per image; the full
    P×N score matrix would hold up to ~39 M entries per image (plus autograd buffers). Each set is
    therefore subsampled (uniformly, without replacement) to at most ``aux_max_pixels`` pixels per
    image (default 1024): the sampled positives are both the anchors of Eq. 14 and the "other set"
    of Eq. 15, and vice versa, so the largest matrix is 1024×1024 (4 MB in float32) per direction
    and image, whatever the resolution. The anchor average is then an unbiased estimate of the mean
    over the set. The sum over the other set is rescaled by |set| / |sample| (a log-weight added to
    the sampled scores), so that Σ_k exp(·) estimates the full sum of Eq. 14/15 without bias.
    When a set has no more than ``aux_max_pixels`` pixels the loss is exactly Eq. 14-16.
    The normalisation is applied as a per-pixel scale where vectors are used (prototype sums,
    sampled rows), so no normalised copy of Y1 is kept either. The batch is scored at once: each
    image's sets are padded to the batch's largest (capped) set and masked, so the score tensors
    are at most (B, K, 1 + K) per direction; padding makes an image with small sets pay for the
    batch's largest ones, which the cap bounds.
  - **Stability.** ``-log(e^a / (e^a + Σ e^b)) = logsumexp([a, b...]) - a``, evaluated with
    ``torch.logsumexp``.
  - **Degenerate masks.** An image whose resized mask is all background or all foreground has no
    positive/negative pair to contrast; its aux loss is 0 (finite, no gradient) rather than NaN.
  - The ground truth is resized to Y1's size with nearest neighbour ("nearest-exact", which picks
    the pixel at the centre of each 4×4 cell, the one the embedding is centred on).

* ``aux_loss_form="paper"``: Eq. 14-16 as printed, up to the -log: raw (unnormalised) dot products
  y_i · ŷ / τ, raw mean prototypes, every pixel of both sets, in float32 (autocast off: raw scores
  divided by τ reach the hundreds, where bfloat16 rounds by whole units). Exact, with memory
  bounded by chunking: per image, the anchors are taken ``PAPER_AUX_CHUNK_SCORES // hw`` at a time
  (at least one), so at most that many (anchor, pixel) scores exist at once, and each chunk runs
  under activation checkpointing, so backward recomputes it instead of keeping it. Peak memory is
  then O(B·hw·C + PAPER_AUX_CHUNK_SCORES) whatever the resolution, and compute O(B·hw²·C) (at 448²,
  hw = 12,544: 157 M scores per image, ~10 chunks); a loop over images and chunks, so slower than
  the batched "normalised" form.

* Dice (not in the paper; ``dice_loss_weight``, 0 in the paper preset): ``1 - (2 Σ p·t + 1) /
  (Σ p + Σ t + 1)`` per image on the sigmoid of the same logits as ``L_seg``, added to it. The +1
  keeps an empty target finite (its Dice loss is then ``Σ p / (Σ p + 1)``: any predicted pixel costs).
* Presence (not in the paper; see ``CoupAlignConfig.presence_head``): binary cross entropy of
  ``presence_logits`` against "the target mask is non-empty", weighted by ``presence_loss_weight``,
  added only when the model has a presence head.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

if TYPE_CHECKING:
    from .model.configuration import CoupAlignConfig


# aux_loss_form="paper": the most (anchor, pixel) scores held at once per chunk (16 MiB in float32).
PAPER_AUX_CHUNK_SCORES = 1 << 22


def at_target_size(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Float32 logits (B,1,h,w) at the ground truth's (H, W): M -> M', bilinear upsampling of the
    prediction (a no-op when the sizes already agree)."""
    logits = logits.float()
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return logits


class CoupAlignLoss(nn.Module):
    """Eq. 17 (+ presence term). ``forward(output, target)`` returns scalar tensors
    ``{"loss", "seg", "aux", "presence"}``: ``loss`` is the weighted total to back-propagate;
    ``seg``, ``aux`` and ``presence`` are the unweighted batch means, for logging (``aux`` is still
    measured, without gradient, when λ = 0 so that "w/o aux loss" runs can be compared; ``seg``
    includes the weighted Dice term when ``dice_loss_weight`` > 0).
    """

    def __init__(self, config: CoupAlignConfig) -> None:
        """``config``: a ``CoupAlignConfig`` (reads aux_loss_weight λ, aux_temperature τ,
        aux_max_pixels, presence_loss_weight and dice_loss_weight)."""
        super().__init__()
        if config.aux_temperature <= 0:
            raise ValueError(f"aux_temperature must be > 0, got {config.aux_temperature}")
        if config.aux_loss_form not in ("normalised", "paper"):
            raise ValueError(f"aux_loss_form must be 'normalised' or 'paper', got {config.aux_loss_form!r}")
        if config.aux_max_pixels < 1:
            raise ValueError(f"aux_max_pixels must be >= 1, got {config.aux_max_pixels}")
        if config.aux_loss_weight < 0 or config.presence_loss_weight < 0 or config.dice_loss_weight < 0:
            raise ValueError(
                f"loss weights must be >= 0, got aux_loss_weight={config.aux_loss_weight}, "
                f"presence_loss_weight={config.presence_loss_weight}, dice_loss_weight={config.dice_loss_weight}"
            )
        self.aux_loss_weight = float(config.aux_loss_weight)
        self.aux_temperature = float(config.aux_temperature)
        self.aux_max_pixels = int(config.aux_max_pixels)
        self.aux_loss_form = str(config.aux_loss_form)
        self.paper_chunk_scores = PAPER_AUX_CHUNK_SCORES
        self.presence_loss_weight = float(config.presence_loss_weight)
        self.dice_loss_weight = float(config.dice_loss_weight)

    def extra_repr(self) -> str:
        return (
            f"λ={self.aux_loss_weight}, τ={self.aux_temperature}, aux_form={self.aux_loss_form}, "
            f"aux_max_pixels={self.aux_max_pixels}, presence_weight={self.presence_loss_weight}, "
            f"dice_weight={self.dice_loss_weight}"
        )

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, output: Any, target: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = output.logits  # (B, 1, S, S)
        if logits.dim() != 4 or logits.shape[1] != 1:
            raise ValueError(f"output.logits must be (B, 1, H, W), got {tuple(logits.shape)}")
        if target.dim() != 3 or target.shape[0] != logits.shape[0]:
            raise ValueError(
                f"target must be (B, H, W) with B = {logits.shape[0]} (from logits "
                f"{tuple(logits.shape)}), got {tuple(target.shape)}"
            )
        target = target.to(device=logits.device, dtype=torch.float32)  # (B, H, W) in {0, 1}

        logits = at_target_size(logits, target)  # once for both mask terms
        seg = self.segmentation_loss(logits, target)  # (B,)
        if self.dice_loss_weight > 0:
            seg = seg + self.dice_loss_weight * self.dice_loss(logits, target)
        if self.aux_loss_weight > 0:
            aux = self.auxiliary_loss(output.pixel_embeddings, target)  # (B,)
        else:
            with torch.no_grad():
                aux = self.auxiliary_loss(output.pixel_embeddings, target)
        total = (seg + self.aux_loss_weight * aux).mean()  # Eq. 17

        presence_logits = getattr(output, "presence_logits", None)
        if presence_logits is not None:
            presence = self.presence_loss(presence_logits, target)
            total = total + self.presence_loss_weight * presence
        else:
            presence = total.new_zeros(())
        return {"loss": total, "seg": seg.mean().detach(), "aux": aux.mean().detach(),
                "presence": presence.detach()}

    # ---- terms ----------------------------------------------------------------------------------
    @staticmethod
    def segmentation_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Eq. 13 per image: mean BCE over pixels. logits (B,1,h,w), target (B,H,W) -> (B,)."""
        logits = at_target_size(logits, target)
        bce = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")  # (B, H, W)
        return bce.flatten(1).mean(1)

    @staticmethod
    def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Soft Dice per image: logits (B,1,h,w), target (B,H,W) -> (B,), in [0, 1)."""
        logits = at_target_size(logits, target)
        prob = logits[:, 0].sigmoid().flatten(1)  # (B, HW)
        truth = target.flatten(1)  # (B, HW)
        overlap = (prob * truth).sum(1)
        return 1.0 - (2.0 * overlap + 1.0) / (prob.sum(1) + truth.sum(1) + 1.0)

    def auxiliary_loss(self, pixel_embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Eq. 14-16 per image. pixel_embeddings (B,C,h,w) = Y1, target (B,H,W) -> (B,).

        Batched: the sets of every image are padded to the batch's largest (capped) set and masked,
        so the term costs a fixed handful of kernels per batch. A loop over the images cost ~20 ops
        and a device sync each, which made a batch-128 step of the tiny model slow on a GPU
        (docs/training.md, "One GPU").
        """
        if pixel_embeddings.dim() != 4 or pixel_embeddings.shape[0] != target.shape[0]:
            raise ValueError(
                f"pixel_embeddings must be (B, C, h, w) with B = {target.shape[0]}, got "
                f"{tuple(pixel_embeddings.shape)}"
            )
        h, w = pixel_embeddings.shape[-2:]
        small = F.interpolate(target[:, None], size=(h, w), mode="nearest-exact")[:, 0] > 0.5  # (B, h, w)
        fg = small.flatten(1)  # (B, hw)
        if self.aux_loss_form == "paper":
            with torch.autocast(pixel_embeddings.device.type, enabled=False):
                return self._paper_auxiliary_loss(pixel_embeddings.float().flatten(2), fg)
        emb = pixel_embeddings.float().flatten(2)  # (B, C, hw), a view: no full-size copy
        # L2 normalisation as a per-pixel scale, applied only where vectors are used (prototype
        # sums and sampled rows), so no normalised (B, hw, C) copy is kept for backward.
        inv_norm = torch.linalg.vector_norm(emb, dim=1).clamp_min(1e-12).reciprocal()  # (B, hw)
        # ŷ± from all pixels: the mean of the unit vectors, re-normalised (the mean and the sum
        # have the same direction, so the sum is normalised directly).
        fg_weight = fg.to(emb.dtype)
        proto_pos = F.normalize(torch.einsum("bcn,bn->bc", emb, fg_weight * inv_norm), dim=1)  # ŷ+ (B, C)
        proto_neg = F.normalize(torch.einsum("bcn,bn->bc", emb, (1.0 - fg_weight) * inv_norm), dim=1)  # ŷ- (B, C)
        pos_s, pos_valid, log_w_pos = self._sample(emb, inv_norm, fg)  # (B, Kp, C), (B, Kp), (B,)
        neg_s, neg_valid, log_w_neg = self._sample(emb, inv_norm, ~fg)  # (B, Kn, C), (B, Kn), (B,)
        p2n = self._info_nce(pos_s, pos_valid, proto_pos, neg_s, neg_valid, log_w_neg)  # Eq. 14
        n2p = self._info_nce(neg_s, neg_valid, proto_neg, pos_s, pos_valid, log_w_pos)  # Eq. 15
        # an image that is all background or all foreground has nothing to contrast: 0, no gradient
        both = pos_valid.any(1) & neg_valid.any(1)  # (B,)
        return torch.where(both, p2n + n2p, torch.zeros_like(p2n))  # Eq. 16

    def _sample(
        self, emb: torch.Tensor, inv_norm: torch.Tensor, members: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unit vectors of each image's set ``members`` (B, hw) bool: at most ``aux_max_pixels`` per
        image, uniformly without replacement (the set's pixels of smallest random key).

        Returns (B, K, C) vectors padded to the batch's largest sample K, a (B, K) validity mask, and
        log(|set| / k) per image (B,): the weight that makes a sampled sum unbiased (0 unsampled).
        """
        count = members.sum(1)  # (B,)
        k = int(count.max().clamp(max=self.aux_max_pixels))  # one host sync per call
        if k == 0:
            k = 1  # every image lacks this set: one masked column keeps shapes valid
        keys = torch.rand(members.shape, device=members.device)
        keys = keys.masked_fill(~members, 2.0)  # non-members sort after every member
        order = keys.topk(k, dim=1, largest=False).indices  # (B, K)
        valid = torch.gather(members, 1, order)  # (B, K): padding where the set is smaller than K
        vectors = torch.gather(emb, 2, order[:, None, :].expand(-1, emb.shape[1], -1))  # (B, C, K)
        vectors = vectors * torch.gather(inv_norm, 1, order)[:, None, :]
        taken = count.clamp(max=self.aux_max_pixels).clamp(min=1)
        log_weight = torch.log(count.clamp(min=1).to(emb.dtype) / taken.to(emb.dtype))  # (B,)
        return vectors.transpose(1, 2), valid, log_weight

    def _info_nce(self, anchors: torch.Tensor, anchor_valid: torch.Tensor, prototype: torch.Tensor,
                  others: torch.Tensor, other_valid: torch.Tensor, log_weight: torch.Tensor) -> torch.Tensor:
        """Per image, mean over valid anchors a_i of -log(e^{a_i·ŷ/τ} / (e^{a_i·ŷ/τ} + w·Σ_k e^{a_i·o_k/τ})),
        via log-sum-exp. anchors (B, A, C), prototype (B, C), others (B, K, C) -> (B,)."""
        positive = torch.einsum("bac,bc->ba", anchors, prototype)[..., None] / self.aux_temperature  # (B, A, 1)
        negatives = anchors @ others.transpose(1, 2) / self.aux_temperature + log_weight[:, None, None]  # (B, A, K)
        negatives = negatives.masked_fill(~other_valid[:, None, :], float("-inf"))
        scores = torch.cat([positive, negatives], dim=2)  # (B, A, 1 + K)
        per_anchor = torch.logsumexp(scores, dim=2) - positive[..., 0]  # (B, A)
        weights = anchor_valid.to(per_anchor.dtype)
        return (per_anchor * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def _paper_auxiliary_loss(self, emb: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
        """Eq. 14-16 over every pixel, raw dot products: emb (B, C, hw) float32, fg (B, hw) bool -> (B,).

        Per image, anchors in chunks (``paper_chunk_scores`` scores at most), each under activation
        checkpointing: exact, with memory bounded by the chunk (see the module docstring)."""
        hw = emb.shape[2]
        chunk = max(1, self.paper_chunk_scores // hw)
        checkpointed = torch.is_grad_enabled() and emb.requires_grad
        losses = []
        for e, f in zip(emb, fg):  # e (C, hw), f (hw,)
            n_pos = int(f.sum())
            if n_pos == 0 or n_pos == hw:  # nothing to contrast: 0, no gradient
                losses.append(e.new_zeros(()))
                continue
            prototypes = torch.stack([e[:, ~f].mean(1), e[:, f].mean(1)])  # (2, C): ŷ-, ŷ+ (raw means)
            sums = e.new_zeros(2)  # Σ over negative anchors, Σ over positive anchors
            for start in range(0, hw, chunk):
                part = slice(start, start + chunk)
                args = (e[:, part], f[part], e, f, prototypes, self.aux_temperature)
                if checkpointed:
                    sums = sums + torch.utils.checkpoint.checkpoint(_paper_info_nce_chunk, *args, use_reentrant=False)
                else:
                    sums = sums + _paper_info_nce_chunk(*args)
            losses.append(sums[1] / n_pos + sums[0] / (hw - n_pos))  # L_P2N + L_N2P  Eq. 14-16
        return torch.stack(losses)

    def presence_loss(self, presence_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Class-balanced BCE of presence_logits (B,) against "target mask is non-empty" -> scalar.

        Half the weight on the present samples, half on the absent ones (all of it on one class
        when the batch holds only that class): absent targets are rare (~10 % of the synthetic
        training sentences), and a plain mean would learn to answer "found" almost always, while
        the Segmenter must reject >= 90 % of them at threshold 0.5.
        """
        if presence_logits.shape != target.shape[:1]:
            raise ValueError(
                f"presence_logits must be (B,) = ({target.shape[0]},), got {tuple(presence_logits.shape)}"
            )
        present = (target.flatten(1) > 0.5).any(1).float()  # (B,)
        bce = F.binary_cross_entropy_with_logits(presence_logits.float(), present, reduction="none")  # (B,)
        n_present = present.sum()
        n_absent = present.numel() - n_present
        classes = (n_present > 0).float() + (n_absent > 0).float()  # 1 or 2
        weights = torch.where(present > 0, 1.0 / n_present.clamp(min=1), 1.0 / n_absent.clamp(min=1)) / classes
        return (weights * bce).sum()


def _paper_info_nce_chunk(anchors: torch.Tensor, anchor_fg: torch.Tensor, emb: torch.Tensor, fg: torch.Tensor,
                          prototypes: torch.Tensor, temperature: float) -> torch.Tensor:
    """-log(e^{a·ŷ/τ} / (e^{a·ŷ/τ} + Σ_{k in the other set} e^{a·y_k/τ})) summed over the chunk's
    negative and positive anchors separately -> (2,). anchors (C, k), anchor_fg (k,), emb (C, hw),
    fg (hw,), prototypes (2, C) indexed by the anchor's own set (0: ŷ-, 1: ŷ+)."""
    own = prototypes[anchor_fg.long()]  # (k, C)
    positive = (own * anchors.T).sum(1, keepdim=True) / temperature  # (k, 1)
    others = (anchors.T @ emb) / temperature  # (k, hw)
    others = others.masked_fill(anchor_fg[:, None] == fg[None, :], float("-inf"))  # the other set only
    per_anchor = torch.logsumexp(torch.cat([positive, others], dim=1), dim=1) - positive[:, 0]  # (k,)
    is_pos = anchor_fg.to(per_anchor.dtype)
    return torch.stack([(per_anchor * (1.0 - is_pos)).sum(), (per_anchor * is_pos).sum()])
