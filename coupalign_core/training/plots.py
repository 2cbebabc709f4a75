"""PNG reports of a run: training curves and a grid of validation overlays (matplotlib, Agg).

Both are redrawn at every evaluation so that a run can be watched with an image viewer alone;
TensorBoard gets the same scalars.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)  # no display on servers; a no-op if a backend is chosen
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Loss terms, learning rate and validation metrics against the optimizer step.

    ``history``: rows as written to ``metrics.jsonl``; a row with ``"split": "train"`` carries
    ``loss``/``seg``/``aux``/``presence``/``lr``, a row with ``"split": "val"`` carries ``oIoU``
    (and ``mIoU`` when known).
    """
    plt = _pyplot()
    train = [r for r in history if r.get("split") == "train"]
    val = [r for r in history if r.get("split") == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax_loss, ax_lr, ax_val = axes
    steps = [r["step"] for r in train]
    for key in ("loss", "seg", "aux", "presence"):
        values = [r.get(key) for r in train]
        if any(v is not None for v in values):
            ax_loss.plot(steps, [np.nan if v is None else v for v in values], label=key)
    ax_loss.set_title("training loss")
    ax_loss.set_xlabel("step")
    if steps:
        ax_loss.legend()
    ax_lr.plot(steps, [r.get("lr", np.nan) for r in train])
    ax_lr.set_title("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    vsteps = [r["step"] for r in val]
    for key in ("oIoU", "mIoU"):
        values = [r.get(key) for r in val]
        if any(v is not None for v in values):
            ax_val.plot(vsteps, [np.nan if v is None else v for v in values], marker="o", label=key)
    ax_val.set_title("validation (%)")
    ax_val.set_xlabel("step")
    if vsteps:
        ax_val.legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_overlay_grid(samples: Sequence[dict[str, Any]], path: str | Path, title: str = "",
                      columns: int = 4) -> Path:
    """One tile per sample: the image with the ground truth (green) and the prediction (red).

    ``samples``: dicts with ``image`` (H,W,3) uint8 RGB, ``target`` and ``pred`` (H,W) bool,
    ``sentence`` str and optionally ``iou`` (0..1) and ``kind``: the ``examples`` that
    ``coupalign_core.evaluation.evaluate`` returns.
    """
    from ..visualize import overlay_mask

    plt = _pyplot()
    if not samples:
        raise ValueError("plot_overlay_grid needs at least one sample")
    columns = max(1, min(columns, len(samples)))
    rows = (len(samples) + columns - 1) // columns
    # Each sample takes two tiles side by side: ground truth, prediction.
    fig, axes = plt.subplots(rows, 2 * columns, figsize=(3.0 * 2 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, s in enumerate(samples):
        r, c = divmod(i, columns)
        gt_ax, pred_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
        gt_ax.imshow(overlay_mask(s["image"], s["target"], color=(30, 220, 60)))
        pred_ax.imshow(overlay_mask(s["image"], s["pred"], color=(230, 40, 40)))
        sentence = "\n".join(textwrap.wrap(str(s["sentence"]), 34)[:3])
        gt_ax.set_title(f"GT: {sentence}", fontsize=8)
        iou, kind = s.get("iou"), s.get("kind")
        pred_ax.set_title("prediction" + (f"  IoU {100 * iou:.1f}" if iou is not None else "")
                          + (f"\n({kind})" if kind else ""), fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
