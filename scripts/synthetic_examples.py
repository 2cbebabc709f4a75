#!/usr/bin/env python
"""Contact sheet of the synthetic benchmark: scenes read back through ReferDataset, masks overlaid.

    python scripts/synthetic_examples.py --out docs/synthetic_examples.png

Generates a small benchmark in a temporary folder (or reads ``--data-root``), then shows one
sentence of each kind over its image with the ground-truth mask outlined (no-target: no outline).
"""

from __future__ import annotations

import argparse
import tempfile
import textwrap

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from coupalign_core.data import ReferDataset  # noqa: E402
from coupalign_core.data.synthetic import KINDS, generate  # noqa: E402


def pick_examples(ds: ReferDataset, per_kind: int, seed: int) -> list[dict]:
    """``per_kind`` items of every kind, from different images where possible."""
    rng = np.random.default_rng(seed)
    by_kind: dict[str, list[int]] = {k: [] for k in KINDS}
    for i in rng.permutation(len(ds)):
        kind = ds.ref_and_sentence(int(i))[1].get("kind")
        if kind in by_kind and len(by_kind[kind]) < per_kind:
            by_kind[kind].append(int(i))
    return [ds[i] for k in KINDS for i in by_kind[k]]


def outline(image: np.ndarray, mask: np.ndarray, scale: int = 2) -> np.ndarray:
    """The image (upscaled) with the mask's outline in white on black, which reads on any colour."""
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    big_mask = cv2.resize(mask.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(big, contours, -1, (0, 0, 0), 4)
    cv2.drawContours(big, contours, -1, (255, 255, 255), 2)
    return big


def contact_sheet(items: list[dict], path: str, columns: int = 4) -> None:
    rows = -(-len(items) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.35 * rows), dpi=90, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, item in zip(axes.flat, items):
        ax.imshow(outline(item["image"], item["mask"]))
        title = f"[{item['kind']}] " + item["sentence"]
        ax.set_title("\n".join(textwrap.wrap(title, 34)), fontsize=6.5, loc="left")
    fig.tight_layout(pad=0.3)
    fig.canvas.draw()
    sheet = np.asarray(fig.canvas.buffer_rgba())[..., :3]
    plt.close(fig)
    # 256-colour palette PNG: a fraction of the size of a true-colour one, same look
    Image.fromarray(sheet).quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/synthetic_examples.png")
    parser.add_argument("--data-root", help="an existing synthetic benchmark (default: generate one)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--split", default="val")
    parser.add_argument("--per-kind", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.data_root
        if root is None:
            root = tmp
            generate(root, seed=args.seed, num_images=200, no_target_fraction=0.15, progress=False)
        ds = ReferDataset(root, "synthetic", "unc", args.split)
        contact_sheet(pick_examples(ds, args.per_kind, args.seed), args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
