#!/usr/bin/env python3
"""INT8 against fp32 onnxruntime on the CPU: accuracy on a fresh-seed synthetic world, and speed.

    .venv/bin/python scripts/int8_parity.py --checkpoint models/coupalign-synthetic.safetensors \
        --data-root data/synthetic_fresh --json int8.json --markdown int8.md

For each checkpoint: the fp32 export and its INT8 version (``precision="int8"``: static
quantization calibrated on synthetic frames of a seed no world uses, inference/quantize.py) each
score the splits of --data-root (a world the model never trained on; written first with
``coupalign synth --seed --num-images`` when absent) exactly as ``coupalign eval`` does (every
sentence, at the model's input size: oIoU, mIoU, presence), then run interleaved on one 640x480
frame for the latency ratio. fp32 is onnxruntime's own CPU kernels, the path INT8 also takes, so the
ratio is the quantization's alone. Prints one table per checkpoint with the machine it ran on.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

log = logging.getLogger("int8_parity")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--checkpoint", nargs="+", required=True, help="checkpoints (.pt/.safetensors)")
    parser.add_argument("--data-root", required=True, help="a synthetic world the models never saw")
    parser.add_argument("--seed", type=int, default=12345,
                        help="seed of the world when it is written (default %(default)s)")
    parser.add_argument("--num-images", type=int, default=400,
                        help="its images when it is written (default %(default)s)")
    parser.add_argument("--splits", nargs="+", default=["val", "testA", "testB"])
    parser.add_argument("--max-samples", type=int, default=None,
                        help="score every k-th sentence so that at most this many are scored per split")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default %(default)s)")
    parser.add_argument("--runs", type=int, default=40, help="timed interleaved runs (default %(default)s)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--json", dest="json_out", default=None)
    parser.add_argument("--markdown", default=None)
    return parser.parse_args(argv)


class BackendAsModel(torch.nn.Module):
    """What ``evaluation.evaluate`` calls (``net(images, ids, mask)`` -> logits, presence) over an
    inference backend with a fixed batch."""

    def __init__(self, backend: Any, config: Any):
        super().__init__()
        self.backend, self.config = backend, config

    def forward(self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        n = images.shape[0]
        step = self.backend.batch_size or n
        logits, presence = [], []
        for start in range(0, n, step):
            idx = np.arange(start, start + step).clip(max=n - 1)  # the last chunk padded by repetition
            out = self.backend(images[idx].numpy(), input_ids[idx].numpy(), attention_mask[idx].numpy())
            keep = min(step, n - start)
            logits.append(out.logits[:keep])
            if out.presence_logits is not None:
                presence.append(out.presence_logits[:keep])
        return SimpleNamespace(logits=torch.from_numpy(np.concatenate(logits)),
                               presence_logits=torch.from_numpy(np.concatenate(presence)) if presence else None)


def world(args: argparse.Namespace) -> Path:
    root = Path(args.data_root)
    if not (root / "synthetic" / "refs(unc).p").is_file():
        from coupalign_core.data.synthetic import generate

        log.info("writing a fresh world: seed %d, %d images, into %s", args.seed, args.num_images, root)
        generate(str(root), seed=args.seed, num_images=args.num_images)
    return root


def score(model: torch.nn.Module, tokenizer: Any, datasets: dict[str, Any], max_samples: int | None) -> dict[str, Any]:
    from coupalign_core.evaluation import evaluate

    out = {}
    for split, data in datasets.items():
        if max_samples and len(data) > max_samples:
            step = -(-len(data) // max_samples)
            data = torch.utils.data.Subset(data, range(0, len(data), step))
        result = evaluate(model, tokenizer, data, batch_size=8, device="cpu", progress=False, desc=split)
        out[split] = {"oIoU": result["metrics"]["oIoU"], "mIoU": result["metrics"]["mIoU"],
                      "n": result["metrics"]["n"], "presence": result["presence"]}
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    from coupalign_core.checkpoint import load_model
    from coupalign_core.evaluation import open_splits
    from coupalign_core.inference import Segmenter
    from coupalign_core.inference.bench import (
        DEFAULT_TEXT,
        benchmark_interleaved,
        format_table,
        synthetic_frame,
        timestamp,
        write_json,
    )
    from coupalign_core.machine import describe_machine, machine_info

    datasets = open_splits(world(args), "synthetic", "unc", args.splits)
    machine = machine_info()
    report, payload = [], {"date": timestamp(), "machine": machine, "data_root": args.data_root, "models": {}}
    for checkpoint in args.checkpoint:
        model, tokenizer, _ = load_model(checkpoint, map_location="cpu")
        segs = {precision: Segmenter(model, tokenizer, backend="onnxruntime", device="cpu", precision=precision,
                                     cpu_provider="cpu", num_threads=args.threads, cache_dir=args.cache_dir)
                for precision in ("fp32", "int8")}
        accuracy = {p: score(BackendAsModel(s.backend, model.config), tokenizer, datasets, args.max_samples)
                    for p, s in segs.items()}
        timing = benchmark_interleaved({f"onnxruntime {p}": s for p, s in segs.items()}, synthetic_frame(640, 480),
                                       DEFAULT_TEXT, runs=args.runs, warmup=3, progress=False)
        load_after = machine_info()["load_average_1min"]
        lines = [f"**{checkpoint}** on {describe_machine(machine)} (1-min load {load_after:.2f} after), "
                 f"{args.threads} thread(s), {timestamp()}", "",
                 "| split | fp32 oIoU | int8 oIoU | loss (points) | fp32 mIoU | int8 mIoU | sentences |",
                 "|---|---|---|---|---|---|---|"]
        for split in datasets:
            a, b = accuracy["fp32"][split], accuracy["int8"][split]
            lines.append(f"| {split} | {a['oIoU']:.2f} | {b['oIoU']:.2f} | {a['oIoU'] - b['oIoU']:.2f} | "
                         f"{a['mIoU']:.2f} | {b['mIoU']:.2f} | {a['n']} |")
        lines += ["", format_table(timing, baseline="onnxruntime fp32"), ""]
        report.append("\n".join(lines))
        payload["models"][checkpoint] = {"accuracy": accuracy, "timing": timing, "load_average_1min_after": load_after}
    text = "\n".join(report)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text)
    if args.json_out:
        write_json(args.json_out, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
