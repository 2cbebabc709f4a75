"""Write the synthetic referring segmentation benchmark in the refer layout.

Writes ROOT/synthetic/refs(unc).p, ROOT/synthetic/no_target_refs(unc).p, ROOT/synthetic/instances.json
and ROOT/images/synthetic/*.png, which ReferDataset(ROOT, "synthetic", "unc", split), `coupalign eval
--data-root ROOT --dataset synthetic --split-by unc` and the refer API read (docs/synthetic_benchmark.md).
Splits: train (80 %), val (10 %), testA (5 %, sparse scenes of 3-6 objects) and testB (5 %, crowded
scenes of 7-12 objects). The same seed gives identical files; evaluate on a seed that training never saw.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

log = logging.getLogger(__name__)


def parse_size(text: str) -> tuple[int, int]:
    """'192x144' -> (192, 144) (width, height)."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 192x144, got {text!r}") from None
    return width, height


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from coupalign_core.data.synthetic.writer import DEFAULT_IMAGE_SIZE, DEFAULT_NO_TARGET_FRACTION

    parser.add_argument("--out", required=True, help="data root to write (ROOT)")
    parser.add_argument("--num-images", type=int, required=True, help="number of images over all splits")
    parser.add_argument("--image-size", type=parse_size, default=DEFAULT_IMAGE_SIZE, metavar="WxH",
                        help="image width x height (default %dx%d)" % DEFAULT_IMAGE_SIZE)
    add_world_arguments(parser, DEFAULT_NO_TARGET_FRACTION)


def add_world_arguments(parser: argparse.ArgumentParser, no_target_fraction: float) -> None:
    """The options every generated world takes (``synth``, ``sim``): seed, language, workers, overwrite."""
    parser.add_argument("--seed", type=int, default=0, help="selects the world: another seed, other scenes")
    parser.add_argument("--no-target-fraction", type=float, default=no_target_fraction,
                        help="expected share of refs naming something absent (empty mask; default %(default)s)")
    parser.add_argument("--phrasing-fraction", type=float, default=0.0,
                        help="share of sentences phrased as commands to a robot (default %(default)s)")
    parser.add_argument("--ood-negative-fraction", type=float, default=0.0,
                        help="expected share of refs that are out-of-domain no-target commands (default %(default)s)")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes rendering images (default 1); the world is the same for any count")
    parser.add_argument("--overwrite", action="store_true", help="replace a world already under ROOT")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def summary_tables(summary: dict[str, Any]) -> list[str]:
    """Images, refs and sentences per split, and sentences per kind, of a ``generate`` summary."""
    lines = [f"{'split':<8}{'images':>8}{'refs':>8}{'sentences':>11}"]
    for split, c in summary["splits"].items():
        lines.append(f"{split:<8}{c.get('images', 0):>8}{c.get('refs', 0):>8}{c.get('sentences', 0):>11}")
    total = sum(summary["kinds"].values())
    width = max([13, *(len(k) + 1 for k in summary["kinds"])])
    lines.append(f"{'kind':<{width}}{'sentences':>10}{'share':>8}")
    for kind, n in summary["kinds"].items():
        lines.append(f"{kind:<{width}}{n:>10}{100.0 * n / max(total, 1):>7.1f}%")
    return lines


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"synthetic benchmark (seed {summary['seed']}, {summary['image_size'][0]}x{summary['image_size'][1]}) "
             f"under {summary['root']}", *summary_tables(summary)]
    lines.append(f"objects {summary['objects']}, occluded {summary['occluded_objects']}, "
                 f"images with >= 3 objects of one shape and colour {summary['images_with_3_alike']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from coupalign_core.data.synthetic import generate

    summary = generate(args.out, seed=args.seed, num_images=args.num_images, image_size=args.image_size,
                       no_target_fraction=args.no_target_fraction, overwrite=args.overwrite,
                       phrasing_fraction=args.phrasing_fraction, ood_negative_fraction=args.ood_negative_fraction,
                       progress=not args.no_progress, workers=args.workers)
    print(format_summary(summary))
    return 0
