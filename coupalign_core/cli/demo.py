"""The main job, out of the box on a CPU: write a synthetic referring split from a seed the shipped model
never saw, record it as a ROS 2 bag (camera images, timed commands, ground-truth masks), replay the
bag through the same pipeline the ROS node runs, and print oIoU / mIoU / prec@X and latency.

Writes into --out: data/ (the refer-layout split), bag/ (the input bag), results/ (a bag of
ReferringSegmentation messages), overlays.png (a contact sheet) and metrics.json. A previous demo's
--out is replaced; a folder holding anything else is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path

from coupalign_core.bags import DISTROS, STORAGES

log = logging.getLogger(__name__)

# Training used seeds 0 (synthetic_cpu) and 1-5 (the shipped model's stages): the demo's world is new to it.
DEMO_SEED = 20261127
# What a demo writes into --out (and the hidden folders its bags are built in): only such a folder is replaced.
DEMO_OUTPUTS = frozenset({"data", "bag", "results", "overlays.png", "metrics.json", ".bag.partial",
                          ".results.partial"})


def default_checkpoint() -> Path:
    """``models/coupalign-synthetic.safetensors`` of this repository (an editable install or a checkout)."""
    return Path(__file__).resolve().parents[2] / "models" / "coupalign-synthetic.safetensors"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="model to replay (default: models/coupalign-synthetic.safetensors of this repository)")
    parser.add_argument("--out", type=Path, default=Path("outputs/demo"),
                        help="output folder (a previous demo's is replaced; default: outputs/demo)")
    parser.add_argument("--seed", type=int, default=DEMO_SEED, help="world of the synthetic split")
    parser.add_argument("--num-images", type=int, default=300,
                        help="images generated over all splits; the val split (~10%%) is replayed")
    parser.add_argument("--split", default="val", help="split to replay")
    parser.add_argument("--storage", choices=STORAGES, default="mcap", help="bag storage")
    parser.add_argument("--distro", choices=DISTROS, default="jazzy", help="message type store")
    parser.add_argument("--backend", default="torch", help="torch, onnxruntime, tensorrt or auto")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def check_output_folder(out: Path) -> None:
    """ValueError unless ``out`` is new, empty or a previous demo's: the demo replaces its folder."""
    if not out.exists() and not out.is_symlink():
        return
    if out.is_symlink() or not out.is_dir():
        raise ValueError(f"--out {out} is a file or a link, not a folder; choose another --out")
    others = sorted(p.name for p in out.iterdir() if p.name not in DEMO_OUTPUTS)
    if others:
        raise ValueError(f"--out {out} is not a demo output folder (it holds {', '.join(others[:5])}); "
                         f"choose another --out: the demo replaces its folder")


def run(args: argparse.Namespace) -> int:
    from coupalign_core.bags import refer_items, replay_bag, write_bag
    from coupalign_core.data import ReferDataset
    from coupalign_core.data.synthetic import generate
    from coupalign_core.inference import Segmenter

    out: Path = args.out
    check_output_folder(out)
    checkpoint = args.checkpoint or default_checkpoint()
    if not checkpoint.is_file():
        raise FileNotFoundError(
            f"checkpoint {checkpoint} does not exist; pass --checkpoint, or train one with "
            "`coupalign train --config training/configs/synthetic_shipped.yaml`"
        )
    if out.exists():  # a previous demo's (checked above)
        shutil.rmtree(out)
    out.mkdir(parents=True)

    log.info("1/3 writing a synthetic world (seed %d, %d images) to %s", args.seed, args.num_images, out / "data")
    generate(out / "data", seed=args.seed, num_images=args.num_images, progress=not args.no_progress)
    dataset = ReferDataset(out / "data", "synthetic", "unc", args.split, sentences="all")

    log.info("2/3 recording %d sentences of split %s as a %s/%s bag", len(dataset), args.split,
             args.storage, args.distro)
    write_bag(refer_items(dataset), out / "bag", storage=args.storage, distro=args.distro, total=len(dataset),
              progress=not args.no_progress)

    log.info("3/3 replaying the bag through %s (%s backend, %s)", checkpoint, args.backend, args.device)
    segmenter = Segmenter.from_checkpoint(checkpoint, backend=args.backend, device=args.device)
    report = replay_bag(
        out / "bag", segmenter, distro=args.distro, out=out / "results", overlays=out / "overlays.png",
        progress=not args.no_progress,
    ).to_dict()
    report.update(checkpoint=str(checkpoint), seed=args.seed, split=args.split, backend=args.backend)
    (out / "metrics.json").write_text(json.dumps(report, indent=2))

    from coupalign_core.cli.bag_eval import format_report

    print(format_report(report))
    print(f"\noverlays: {out / 'overlays.png'}\nmetrics:  {out / 'metrics.json'}\nresults:  {out / 'results'}")
    return 0 if report["processed"] else 1
