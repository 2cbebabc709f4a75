#!/usr/bin/env python
"""Contact sheet of the tabletop world: sentence, colour image with the ground-truth mask outlined
and the 3D target point marked, and the depth image, read back from the written files.

    python scripts/tabletop_examples.py --out docs/tabletop_examples.png

Renders a small world in a temporary folder (or reads ``--data-root``) and shows one sentence of
each kind (no-target: no outline, no point). The point is the saved ``point_3d`` (centroid of the
visible surface, optical frame) projected through the saved CameraInfo K.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import textwrap
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from coupalign_core.data import ReferDataset  # noqa: E402
from coupalign_core.data.tabletop import KINDS, generate, load_depth  # noqa: E402


def pick_examples(ds: ReferDataset, seed: int) -> list[int]:
    """One item of every kind, from different images where possible."""
    rng = np.random.default_rng(seed)
    chosen: dict[str, int] = {}
    images: set[int] = set()
    for i in rng.permutation(len(ds)):
        ref, sent = ds.ref_and_sentence(int(i))
        kind = sent.get("kind")
        if kind in KINDS and kind not in chosen and ref["image_id"] not in images:
            chosen[kind] = int(i)
            images.add(ref["image_id"])
    return [chosen[k] for k in KINDS if k in chosen]


def panel(image: np.ndarray, mask: np.ndarray, pixel: tuple[float, float] | None, scale: int) -> np.ndarray:
    """The image (upscaled) with the mask's outline (white on black) and the point (a cross)."""
    big = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    big_mask = cv2.resize(mask.astype(np.uint8), None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    contours, _ = cv2.findContours(big_mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(big, contours, -1, (0, 0, 0), 4)
    cv2.drawContours(big, contours, -1, (255, 255, 255), 2)
    if pixel is not None:
        centre = (int(round((pixel[0] + 0.5) * scale)), int(round((pixel[1] + 0.5) * scale)))
        cv2.drawMarker(big, centre, (0, 0, 0), cv2.MARKER_CROSS, 5 * scale, 3)
        cv2.drawMarker(big, centre, (255, 40, 200), cv2.MARKER_CROSS, 5 * scale - 1, 1)
    return big


def depth_panel(depth: np.ndarray, scale: int) -> np.ndarray:
    """Depth in metres as a colour map (near: warm), black where there is no reading."""
    valid = np.isfinite(depth)
    lo, hi = np.percentile(depth[valid], [1, 99]) if valid.any() else (0.0, 1.0)
    norm = np.clip((np.nan_to_num(depth, nan=hi) - lo) / max(hi - lo, 1e-6), 0, 1)
    colour = cv2.applyColorMap((255 * (1 - norm)).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1].copy()
    colour[~valid] = 0
    return cv2.resize(colour, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)


def contact_sheet(root: Path, items: list[int], ds: ReferDataset, path: str, scale: int = 2) -> None:
    instances = json.loads((root / "tabletop" / "instances.json").read_text())
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {im["id"]: im for im in instances["images"]}
    rows = -(-len(items) // 2)  # two examples a row: colour and depth side by side
    fig, axes = plt.subplots(rows, 4, figsize=(10.0, 2.0 * rows), dpi=110, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, i in enumerate(items):
        row = axes[n // 2, 2 * (n % 2): 2 * (n % 2) + 2]
        item = ds[i]
        ref, sent = ds.ref_and_sentence(i)
        image = images[ref["image_id"]]
        fx, _, cx, _, fy, cy = image["camera_info"]["k"][:6]
        pixel = title_point = None
        if ref["ann_id"] in anns:
            x, y, z = anns[ref["ann_id"]]["point_3d"]
            pixel = (fx * x / z + cx, fy * y / z + cy)
            title_point = f"point ({x:+.3f}, {y:+.3f}, {z:.3f}) m"
        row[0].imshow(panel(item["image"], item["mask"], pixel, scale))
        row[1].imshow(depth_panel(load_depth(root / "images" / "tabletop", image), scale))
        text = f"[{sent['kind']}] {sent['raw']}"
        row[0].set_title("\n".join(textwrap.wrap(text, 40)), fontsize=6.5, loc="left")
        row[1].set_title(title_point or "no target: nothing to point at", fontsize=6.5, loc="left")
    fig.tight_layout(pad=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    sheet = Image.open(buffer).convert("RGB")
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)  # a palette PNG: smaller


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/tabletop_examples.png")
    parser.add_argument("--data-root", help="an existing tabletop world (default: render one)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--split", default="val")
    parser.add_argument("--size", default="256x192", help="render size of the generated world")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.data_root or tmp)
        if args.data_root is None:
            generate(root, seed=args.seed, num_images=200, image_size=(width, height), no_target_fraction=0.15,
                     progress=False)
        ds = ReferDataset(root, "tabletop", "unc", args.split, sentences="all")
        contact_sheet(root, pick_examples(ds, args.seed), ds, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
