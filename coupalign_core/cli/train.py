"""Train CoupAlign from a YAML config, alone or under torchrun.

    coupalign train --config training/configs/synthetic_cpu.yaml
    coupalign train --config training/configs/refcoco_paper.yaml --set train.epochs=10
    coupalign train --config ... --resume                 # continue from <output_dir>/last.pt
    torchrun --standalone --nproc_per_node 8 -m coupalign_core.cli.main train --config ... --resume

The run folder (--output-dir, else train.output_dir, else runs/<config name>) receives last.pt,
best.pt, config.yaml, metrics.jsonl, curves.png, overlays/ and tb/ (TensorBoard). See
coupalign_core/training/distributed.py for multi-machine command lines.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="training YAML (model:, data:, train: sections); optional "
                        "with an explicit --resume CKPT, whose stored config is then used")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="continue a run: from CKPT, or without a value from <output_dir>/last.pt "
                        "when it exists (a fresh start otherwise)")
    parser.add_argument("--output-dir", help="run folder (overrides train.output_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set train.lr=1e-4 --set model.preset=tiny "
                        "(repeatable; values are parsed as YAML)")


def run(args: argparse.Namespace) -> int:
    from ..checkpoint import read_checkpoint
    from ..training.config import TrainingConfig, apply_overrides
    from ..training.distributed import cleanup_distributed, init_distributed
    from ..training.trainer import Trainer

    if args.config:
        config = TrainingConfig.load(args.config, args.overrides)
        default_dir = Path("runs") / Path(args.config).stem
    elif args.resume not in (None, "auto"):
        stored = read_checkpoint(args.resume).get("train_config")
        if not stored:
            raise ValueError(f"{args.resume} stores no training config: pass --config too")
        config = TrainingConfig.from_dict(apply_overrides(stored, args.overrides))
        default_dir = Path(args.resume).parent
    else:
        raise ValueError("--config is required (or --resume CKPT with a checkpoint path)")
    output_dir = Path(args.output_dir or config.train.output_dir or default_dir)

    ctx = init_distributed(config.train.device)
    try:
        if ctx.rank != 0:
            # One log and one progress bar: the other ranks report warnings and errors only.
            logging.getLogger().setLevel(logging.WARNING)
        trainer = Trainer(config, output_dir, resume=args.resume, dist_ctx=ctx)
        result = trainer.fit()
    finally:
        cleanup_distributed()
    if ctx.is_main:
        val = result.last_metrics
        summary = ", ".join(f"{k} {val[k]:.2f}" for k in ("oIoU", "mIoU") if k in val)
        print(f"stopped at step {result.step} ({result.stopped_by}); {summary or 'no validation'}; "
              f"best oIoU {'n/a' if result.best_oiou is None else f'{result.best_oiou:.2f}'}; "
              f"checkpoints in {result.output_dir}")
    return result.exit_code
