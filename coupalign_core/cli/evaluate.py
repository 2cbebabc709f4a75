"""Score a checkpoint on refer-layout splits with the paper's protocol: per split oIoU (headline),
mIoU, prec@0.5/0.7/0.9 and the Table 2 histogram of IoU < 0.5, at the model's input resolution
(LAVT) or at the original image resolution; on the synthetic benchmark also a breakdown by
expression kind and the presence accuracy on no-target expressions.

Example:
  coupalign eval --checkpoint models/coupalign-synthetic.safetensors --data-root data/synth-eval \\
      --dataset synthetic --split-by unc --splits val testA testB --json outputs/eval.json

Under torchrun (e.g. ``torchrun --standalone --nproc_per_node 4 -m coupalign_core.cli.main eval ...``)
the sentences are split across the processes and the metrics merged; rank 0 prints and writes.

JSON (--json): {"<split>": RISMetrics.compute() dict, ..., "by_kind": {"<split>": {kind: dict,
"ordinal+relation": dict}}, "presence": {"<split>": {no_target_n, no_target_accuracy, target_n,
found_rate, threshold}}, "meta": {resolution, image_size, threshold, shuffle_expressions,
num_sentences, checkpoint, dataset, split_by}}. Every split is checked (exists, has refs, its files
read) before any is scored. The report is rewritten after each split, so an interrupt or a failing
later split keeps the splits already scored; until every split is done, "meta" also holds
"incomplete": {not_scored: [split, ...], reason}.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--checkpoint", required=True, help="a CoupAlign checkpoint (.pt)")
    parser.add_argument("--data-root", required=True, help="root of the refer layout")
    parser.add_argument("--dataset", default="synthetic",
                        help="refcoco, refcoco+, refcocog, refclef, synthetic or tabletop (default: synthetic)")
    parser.add_argument("--split-by", default="unc", help="unc, umd, google or berkeley (default: unc)")
    parser.add_argument("--splits", nargs="+", default=["val"], help="splits to score (default: val)")
    parser.add_argument("--image-root", help="image folder (default: the data set's usual folder under --data-root)")
    parser.add_argument("--resolution", choices=("input", "original"), default="input",
                        help="score at the model's input size (LAVT protocol, default) or the original image size")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int,
                        help="data-loading processes (default: 0 on the CPU, where the model needs the "
                             "cores itself; up to 4 with a GPU)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="auto: a GPU when torch sees one")
    parser.add_argument("--threshold", type=float, default=0.5, help="mask threshold on the sigmoid (default: 0.5)")
    parser.add_argument("--presence-threshold", type=float, default=0.5,
                        help="presence score at or above which the object counts as found (default: 0.5)")
    parser.add_argument("--shuffle-expressions", action="store_true",
                        help="control: score each mask with the sentence of a sample from another image")
    parser.add_argument("--seed", type=int, default=0, help="seed of --shuffle-expressions (default: 0)")
    parser.add_argument("--json", dest="json_out", help="write the results as JSON to this file")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def run(args: argparse.Namespace) -> int:
    import torch

    from ..evaluation import SplitScoringError, evaluate_checkpoint, format_table

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.num_workers is not None and args.num_workers < 0:
        raise ValueError(f"--num-workers must be >= 0, got {args.num_workers}")
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"checkpoint {args.checkpoint} does not exist")
    report_path = _writable_report_path(args.json_out) if args.json_out else None

    ctx = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun
        from ..training.distributed import init_distributed

        ctx = init_distributed(args.device)
        device = ctx.device
    elif args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        if args.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no GPU")
        device = torch.device(args.device)
    is_main = ctx is None or ctx.is_main
    num_workers = args.num_workers
    if num_workers is None:
        num_workers = min(4, max((os.cpu_count() or 1) - 1, 0)) if device.type == "cuda" else 0

    scored: dict[str, dict[str, Any]] = {}

    def keep(split: str, result: dict[str, Any]) -> None:
        scored[split] = result
        if is_main and report_path is not None and len(scored) < len(args.splits):
            _write_report(report_path, scored, args, reason="scoring was still running when this was written")

    try:
        results = evaluate_checkpoint(
            args.checkpoint, args.data_root, args.dataset, args.split_by, args.splits,
            image_root=args.image_root, device=device, batch_size=args.batch_size,
            num_workers=num_workers, resolution=args.resolution, threshold=args.threshold,
            presence_threshold=args.presence_threshold, shuffle_expressions=args.shuffle_expressions,
            seed=args.seed, progress=not args.no_progress, distributed=ctx is not None,
            on_split_scored=keep,
        )
    except SplitScoringError as e:
        if not (is_main and e.scored):
            raise
        print(format_table(e.scored))
        if report_path is None:
            raise RuntimeError(f"{e}; the splits scored before it are printed above") from e
        _write_report(report_path, e.scored, args, reason=str(e))
        raise RuntimeError(f"{e}; the splits scored before it are in {report_path}") from e
    except KeyboardInterrupt:
        if is_main and scored and report_path is not None:
            _write_report(report_path, scored, args, reason="interrupted")
            log.warning("interrupted: the splits scored so far are in %s", report_path)
        raise
    finally:
        if ctx is not None:
            from ..training.distributed import cleanup_distributed

            cleanup_distributed()
    if not is_main:
        return 0
    print(format_table(results))
    if report_path is not None:
        _write_report(report_path, results, args)
        log.info("wrote %s", report_path)
    return 0


def _writable_report_path(value: str) -> Path:
    """--json checked before anything is scored: a path that cannot be written would lose the results."""
    path = Path(value)
    if path.is_dir():
        raise ValueError(f"--json {path} is a directory; give the path of a file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--json {path}: cannot create its folder ({e.strerror})") from None
    if not os.access(path.parent, os.W_OK):
        raise ValueError(f"--json {path}: its folder {path.parent} is not writable")
    return path


def _write_report(path: Path, results: dict[str, dict[str, Any]], args: argparse.Namespace,
                  reason: str | None = None) -> None:
    """The JSON report of ``results``; with ``reason``, marked incomplete (the splits not scored and why).

    Written to a temporary file and renamed, so a kill mid-write leaves the previous report whole."""
    from ..evaluation import results_to_json

    meta: dict[str, Any] = {}
    if reason is not None:
        meta["incomplete"] = {"not_scored": [s for s in args.splits if s not in results], "reason": reason}
    report = results_to_json(
        results, checkpoint=str(args.checkpoint), dataset=args.dataset, split_by=args.split_by,
        data_root=str(args.data_root), **meta,
    )
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(partial, path)
