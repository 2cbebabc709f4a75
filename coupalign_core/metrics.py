"""Referring-segmentation metrics (paper section 4.1, LAVT's test protocol).

Per sample k: I_k = |pred ∩ gt|, U_k = |pred ∪ gt|, IoU_k = I_k / U_k, and IoU_k = 0 when U_k = 0
(an empty prediction of an empty target counts as a miss, as in LAVT's ``test.py``).

* ``oIoU``     = 100 · Σ I_k / Σ U_k (the paper's headline metric; 0 when Σ U_k = 0)
* ``mIoU``     = 100 · mean_k IoU_k
* ``prec@X``   = 100 · share of samples with IoU_k ≥ X, X ∈ {0.5, 0.6, 0.7, 0.8, 0.9}
* ``iou_hist`` = counts of IoU_k in [0, 0.1), [0.1, 0.2), [0.2, 0.3), [0.3, 0.4), [0.4, 0.5)
  (the failure histogram of the paper's Table 2)
* ``n``        = number of samples

``RISMetrics`` keeps the integer pair (I_k, U_k) of every sample rather than running sums, so that
merged metrics (other shards, other ranks) give exactly the mIoU, prec@X and histogram of one pass
over all samples. Thresholds are compared in integer arithmetic (10·I ≥ 7·U rather than
I/U ≥ 0.7) so that no sample lands in the wrong bin through rounding.

Each sample may carry a group label (the synthetic benchmark's expression kind): ``compute(group=...)``
restricts to one label or a set of labels, ``breakdown()`` gives every label.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional, Sequence, Union

import numpy as np
import torch

PREC_THRESHOLDS = (5, 6, 7, 8, 9)  # tenths: prec@0.5 ... prec@0.9
HIST_BINS = 5  # [0, 0.1) ... [0.4, 0.5)

GroupArg = Union[None, str, Sequence[Optional[str]]]


def _to_numpy_bool(x: Any, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        if x.dtype != torch.bool:
            raise ValueError(f"{name} must be a boolean mask (threshold it first), got dtype {x.dtype}")
        array: np.ndarray = x.detach().cpu().numpy()
        return array
    array = np.asarray(x)
    if array.dtype != np.bool_:
        raise ValueError(f"{name} must be a boolean mask (threshold it first), got dtype {array.dtype}")
    return array


class RISMetrics:
    """Accumulates (I, U) per sample; ``compute()`` returns the paper's metrics as a dict.

    >>> m = RISMetrics()
    >>> m.update(pred, gt)                 # (H, W) or (B, H, W) bool arrays or tensors
    >>> m.update(preds, gts, group=["ordinal", "relation"])   # optional label per sample
    >>> m.compute()["oIoU"]
    """

    def __init__(self) -> None:
        self._intersections: list[int] = []
        self._unions: list[int] = []
        self._groups: list[Optional[str]] = []

    def __len__(self) -> int:
        return len(self._unions)

    def reset(self) -> None:
        self._intersections, self._unions, self._groups = [], [], []

    # ---- accumulation ---------------------------------------------------------------------------
    def update(self, pred: Any, gt: Any, group: GroupArg = None) -> None:
        """Add one (H, W) pair or a batch (B, H, W). ``group``: one label for all, or one per sample."""
        pred = pred if isinstance(pred, torch.Tensor) else np.asarray(pred)
        gt = gt if isinstance(gt, torch.Tensor) else np.asarray(gt)
        pred_shape, gt_shape = tuple(pred.shape), tuple(gt.shape)
        if pred_shape != gt_shape:
            raise ValueError(f"prediction shape {pred_shape} does not match ground-truth shape {gt_shape}")
        if len(pred_shape) not in (2, 3):
            raise ValueError(f"masks must be (H, W) or (B, H, W), got prediction shape {pred_shape}")
        if isinstance(pred, torch.Tensor) and isinstance(gt, torch.Tensor):
            # Reduce on the masks' device (GPU during evaluation); only 2·B integers travel.
            gt = gt.to(pred.device)
            for name, x in (("prediction", pred), ("ground truth", gt)):
                if x.dtype != torch.bool:
                    raise ValueError(f"{name} must be a boolean mask (threshold it first), got dtype {x.dtype}")
            inter = (pred & gt).flatten(-2).sum(-1).reshape(-1).tolist()
            union = (pred | gt).flatten(-2).sum(-1).reshape(-1).tolist()
        else:
            p, g = _to_numpy_bool(pred, "prediction"), _to_numpy_bool(gt, "ground truth")
            inter = np.logical_and(p, g).reshape(*p.shape[:-2], -1).sum(-1).reshape(-1).tolist()
            union = np.logical_or(p, g).reshape(*p.shape[:-2], -1).sum(-1).reshape(-1).tolist()
        batch = len(union)
        if group is None or isinstance(group, str):
            groups = [group] * batch
        else:
            groups = list(group)
            if len(groups) != batch:
                raise ValueError(f"got {len(groups)} group labels for a batch of {batch} masks")
        self._intersections.extend(int(i) for i in inter)
        self._unions.extend(int(u) for u in union)
        self._groups.extend(groups)

    # ---- results --------------------------------------------------------------------------------
    def compute(self, group: Union[None, str, Iterable[str]] = None) -> dict[str, Any]:
        """The metrics over all samples, or over those whose label is ``group`` (a str or a set)."""
        inter = np.asarray(self._intersections, dtype=np.int64)
        union = np.asarray(self._unions, dtype=np.int64)
        if group is not None:
            wanted = {group} if isinstance(group, str) else set(group)
            keep = np.array([g in wanted for g in self._groups], dtype=bool)
            inter, union = inter[keep], union[keep]
        n = int(union.size)
        total_union = int(union.sum())
        safe_union = np.maximum(union, 1)
        iou = np.where(union > 0, inter / safe_union, 0.0)
        tenths = np.where(union > 0, (10 * inter) // safe_union, 0)  # floor(10·IoU), exactly
        result: dict[str, Any] = {
            "oIoU": 100.0 * int(inter.sum()) / total_union if total_union else 0.0,
            # fsum: exactly rounded, so the order in which shards were merged cannot change mIoU
            "mIoU": 100.0 * math.fsum(iou.tolist()) / n if n else 0.0,
        }
        for t in PREC_THRESHOLDS:
            result[f"prec@0.{t}"] = 100.0 * float((tenths >= t).mean()) if n else 0.0
        result["n"] = n
        result["iou_hist"] = [int((tenths == b).sum()) for b in range(HIST_BINS)]
        return result

    def groups(self) -> list[str]:
        """The labels seen so far, sorted (None, an unlabelled sample, is left out)."""
        return sorted({g for g in self._groups if g is not None})

    def breakdown(self) -> dict[str, dict[str, Any]]:
        """``compute()`` for every label seen."""
        return {g: self.compute(group=g) for g in self.groups()}

    def ious(self) -> np.ndarray:
        """IoU of every sample, in update order (0 where the union is empty)."""
        union = np.asarray(self._unions, dtype=np.int64)
        inter = np.asarray(self._intersections, dtype=np.int64)
        return np.where(union > 0, inter / np.maximum(union, 1), 0.0)

    # ---- merging across shards and processes ----------------------------------------------------
    def state(self) -> dict[str, list]:
        """Plain-Python state (picklable, JSON-able) from which ``from_state`` rebuilds the object."""
        return {
            "intersections": list(self._intersections),
            "unions": list(self._unions),
            "groups": list(self._groups),
        }

    @classmethod
    def from_state(cls, state: dict[str, list]) -> "RISMetrics":
        m = cls()
        inter, union = state["intersections"], state["unions"]
        groups = state.get("groups") or [None] * len(union)
        if not (len(inter) == len(union) == len(groups)):
            raise ValueError(
                f"inconsistent RISMetrics state: {len(inter)} intersections, {len(union)} unions, "
                f"{len(groups)} groups"
            )
        m._intersections = [int(i) for i in inter]
        m._unions = [int(u) for u in union]
        m._groups = list(groups)
        return m

    def merge(self, other: "RISMetrics") -> "RISMetrics":
        """Append ``other``'s samples to this one (in place); returns self."""
        self._intersections.extend(other._intersections)
        self._unions.extend(other._unions)
        self._groups.extend(other._groups)
        return self

    def all_reduce(self) -> "RISMetrics":
        """Gather every rank's samples onto every rank (torch.distributed), in rank order.

        A no-op when torch.distributed is not initialised, so single-process code can call it too.
        Returns self, now holding all ranks' samples.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        world = torch.distributed.get_world_size()
        states: list[Any] = [None] * world
        torch.distributed.all_gather_object(states, self.state())
        merged = RISMetrics()
        for s in states:
            merged.merge(RISMetrics.from_state(s))
        self._intersections, self._unions, self._groups = (
            merged._intersections, merged._unions, merged._groups,
        )
        return self
