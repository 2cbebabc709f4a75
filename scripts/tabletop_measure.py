#!/usr/bin/env python
"""Measurements behind docs/tabletop_benchmark.md: rendering throughput and the mask-grid ceiling.

    python scripts/tabletop_measure.py throughput --images 60 --sizes 256x192 640x480
    python scripts/tabletop_measure.py ceiling --seed 1000 --images 1000 --input-sizes 128 192 256

``throughput``: images per second of one process, (a) rendering only (scene sampling + pybullet
render + masks and 3D points) and (b) the whole ``generate`` (sentences and files too), per size.
``ceiling``: the model predicts its mask on the H/4 grid of an S x S input and upsamples it
bilinearly; even a perfect soft mask on that grid (the ground truth area-pooled to S/4 x S/4,
upsampled to the image, thresholded at 0.5) loses the detail finer than a grid cell. Its oIoU over
the target sentences of a fresh-seed val split bounds what a model of input size S can score.
Prints one JSON line per measurement, with the CPU model and load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np


def machine() -> dict[str, Any]:
    model = ""
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not model:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = [f for f in line.split(":", 1)[1].split() if f in ("avx2", "avx512f", "fma", "sse4_2")]
    except OSError:
        pass
    return {"cpu": model or platform.processor(), "flags": flags, "cpus": os.cpu_count(),
            "load_1min": round(os.getloadavg()[0], 2)}


def throughput(sizes: list[tuple[int, int]], images: int, seed: int) -> None:
    from coupalign_core.data.tabletop import generate
    from coupalign_core.data.tabletop.render import process_renderer, visible_objects
    from coupalign_core.data.tabletop.world import sample_scene

    renderer = process_renderer()
    renderer.render(sample_scene(np.random.default_rng([seed, 0])), 64, 48)  # loads the meshes once
    for width, height in sizes:
        start = time.perf_counter()
        for i in range(images):
            scene = sample_scene(np.random.default_rng([seed, i]))
            frame = renderer.render(scene, width, height)
            visible_objects(frame, len(scene.objects))
        render_s = (time.perf_counter() - start) / images
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            generate(tmp, seed=seed, num_images=images, image_size=(width, height), progress=False)
            generate_s = (time.perf_counter() - start) / images
        print(json.dumps({"measure": "throughput", "size": f"{width}x{height}", "images": images,
                          "render_images_per_s": round(1 / render_s, 2),
                          "generate_images_per_s": round(1 / generate_s, 2), **machine()}), flush=True)


def ceiling(seed: int, images: int, size: tuple[int, int], input_sizes: list[int], split: str, workers: int) -> None:
    from coupalign_core.data import ReferDataset
    from coupalign_core.data.tabletop import generate

    with tempfile.TemporaryDirectory() as tmp:
        generate(tmp, seed=seed, num_images=images, image_size=size, progress=False, workers=workers)
        ds = ReferDataset(tmp, "tabletop", "unc", split, sentences="all")
        masks = []
        for i in range(len(ds)):
            ref, sent = ds.ref_and_sentence(i)
            if not sent.get("no_target"):
                masks.append(ds[i]["mask"])
    for s in input_sizes:
        grid = s // 4
        inter = union = 0
        for gt in masks:
            h, w = gt.shape
            pooled = cv2.resize(gt.astype(np.float32), (grid, grid), interpolation=cv2.INTER_AREA)
            up = cv2.resize(pooled, (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
            inter += int((up & gt).sum())
            union += int((up | gt).sum())
        print(json.dumps({"measure": "ceiling", "seed": seed, "split": split, "render_size": f"{size[0]}x{size[1]}",
                          "input_size": s, "grid": grid, "sentences": len(masks),
                          "ceiling_oiou": round(100.0 * inter / max(union, 1), 2), **machine()}), flush=True)


def parse_size(text: str) -> tuple[int, int]:
    width, height = (int(v) for v in text.lower().split("x"))
    return width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--images", type=int, default=60)
    t.add_argument("--sizes", type=parse_size, nargs="+", default=[(256, 192), (640, 480)])
    t.add_argument("--seed", type=int, default=999)
    c = sub.add_parser("ceiling")
    c.add_argument("--seed", type=int, default=1000)
    c.add_argument("--images", type=int, default=1000)
    c.add_argument("--size", type=parse_size, default=(256, 192), help="render size of the val world")
    c.add_argument("--input-sizes", type=int, nargs="+", default=[128, 192, 256])
    c.add_argument("--split", default="val")
    c.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    if args.what == "throughput":
        throughput(args.sizes, args.images, args.seed)
    else:
        ceiling(args.seed, args.images, args.size, args.input_sizes, args.split, args.workers)


if __name__ == "__main__":
    main()
