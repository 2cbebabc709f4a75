"""Render the tabletop RGB-D referring world in the refer layout (docs/tabletop_benchmark.md).

Writes ROOT/tabletop/refs(unc).p, ROOT/tabletop/no_target_refs(unc).p, ROOT/tabletop/instances.json
(with CameraInfo and the 3D centroid of every object), ROOT/images/tabletop/table_*.png and
ROOT/images/tabletop/depth/table_*.png (16UC1 millimetres), which ReferDataset(ROOT, "tabletop", "unc",
split) and `coupalign eval --dataset tabletop` read. Splits as `coupalign synth`'s. The same seed and
size give identical files for any --workers; evaluate on a seed that training never saw.
"""

from __future__ import annotations

import argparse
from typing import Any

from .synth import add_world_arguments, parse_size, summary_tables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from coupalign_core.data.tabletop.writer import DEFAULT_IMAGE_SIZE, DEFAULT_NO_TARGET_FRACTION

    parser.add_argument("--out", required=True, help="data root to write (ROOT)")
    parser.add_argument("--images", "--num-images", dest="num_images", type=int, required=True,
                        help="number of images over all splits")
    parser.add_argument("--size", "--image-size", dest="image_size", type=parse_size, default=DEFAULT_IMAGE_SIZE,
                        metavar="WxH", help="rendered width x height (default %dx%d)" % DEFAULT_IMAGE_SIZE)
    parser.add_argument("--renderer", choices=("tiny", "egl"), default="tiny",
                        help="pybullet's CPU TinyRenderer (default) or its EGL plug-in on a GPU")
    parser.add_argument("--float-depth", action="store_true", help="also write the exact float32 depth (.npy)")
    add_world_arguments(parser, DEFAULT_NO_TARGET_FRACTION)


def format_summary(summary: dict[str, Any]) -> str:
    width, height = summary["image_size"]
    lines = [f"tabletop world (seed {summary['seed']}, {width}x{height}) under {summary['root']}",
             *summary_tables(summary),
             f"objects seen {summary.get('objects', 0)}, possible targets {summary.get('referable_objects', 0)}, "
             f"stacked {summary.get('stacked_objects', 0)}, in the tray {summary.get('objects_in_tray', 0)}, "
             f"images with >= 3 objects of one category and colour {summary.get('images_with_3_alike', 0)}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from coupalign_core.data.tabletop import generate

    summary = generate(args.out, seed=args.seed, num_images=args.num_images, image_size=args.image_size,
                       no_target_fraction=args.no_target_fraction, overwrite=args.overwrite,
                       phrasing_fraction=args.phrasing_fraction, ood_negative_fraction=args.ood_negative_fraction,
                       renderer=args.renderer, float_depth=args.float_depth, progress=not args.no_progress,
                       workers=args.workers)
    print(format_summary(summary))
    return 0
