#!/usr/bin/env python
"""Table 4 of the paper in miniature, on the synthetic benchmark.

    python scripts/ablation.py --steps 3000 --seeds 0 1 --table docs/ablation.md

Trains every variant (full CoupAlign, no WPA, language-to-vision WPA only, no SMA, no auxiliary
loss) from `training/configs/synthetic_cpu.yaml` with the same step budget and the same seeds, scores
each on a world none of them trained on (val, testA, testB of --eval-seed), and writes a markdown
table of mean ± std over seeds. Finished runs are skipped and interrupted ones resume, so the
command can simply be run again. How long a run takes: docs/results/runs.md ("scripts/ablation.py").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

VARIANTS = {
    "full": {},
    "no_wpa": {"model.wpa_direction": "off"},
    "uni_wpa": {"model.wpa_direction": "language_to_vision"},
    "no_sma": {"model.use_sma": "false"},
    "no_aux": {"model.aux_loss_weight": "0"},
}
LABELS = {
    "full": "CoupAlign (Bi-WPA + SMA + aux)",
    "no_wpa": "w/o WPA",
    "uni_wpa": "Uni-WPA (language → vision)",
    "no_sma": "w/o SMA",
    "no_aux": "w/o aux loss",
}
METRICS = ("oIoU", "mIoU", "prec@0.5", "prec@0.7", "prec@0.9")
CLI = [sys.executable, "-m", "coupalign_core.cli.main", "-q"]


def train(variant: str, seed: int, steps: int, config: Path, out: Path, extra: dict[str, str]) -> Path:
    run_dir = out / f"{variant}_seed{seed}"
    sets = {**extra, **VARIANTS[variant], "train.seed": str(seed), "train.max_steps": str(steps),
            "train.decay_steps": str(steps), "train.max_minutes": "null"}
    cmd = [*CLI, "train", "--config", str(config), "--output-dir", str(run_dir), "--resume"]
    for key, value in sets.items():
        cmd += ["--set", f"{key}={value}"]
    subprocess.run(cmd, check=True)
    return run_dir / "last.pt"


def score(checkpoint: Path, data_root: Path, out_json: Path, threads: int | None) -> dict:
    if not out_json.is_file():
        cmd = [*CLI, "eval", "--checkpoint", str(checkpoint), "--data-root", str(data_root),
               "--splits", "val", "testA", "testB", "--json", str(out_json), "--no-progress"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
        subprocess.run(cmd, check=True, env=env)
    return json.loads(out_json.read_text())


def table(results: dict[str, list[dict]], split: str, header: str) -> str:
    lines = [header, "", "| variant | seeds | " + " | ".join(METRICS) + " |",
             "| --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
    for variant, runs in results.items():
        cells = []
        for metric in METRICS:
            values = [r[split][metric] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):.1f} ± {spread:.1f}")
        lines.append(f"| {LABELS[variant]} | {len(runs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("training/configs/synthetic_cpu.yaml"))
    parser.add_argument("--variants", nargs="+", choices=sorted(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps per run (same for all)")
    parser.add_argument("--eval-seed", type=int, default=777, help="world used for scoring only")
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: the config's); 1 lets another job share a 2-core CPU")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every variant, as `coupalign train --set`")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--table", type=Path, default=Path("docs/ablation.md"))
    args = parser.parse_args()

    eval_root = Path(f"data/synthetic_seed{args.eval_seed}")
    if not (eval_root / "synthetic" / "refs(unc).p").is_file():
        subprocess.run([*CLI, "synth", "--out", str(eval_root), "--seed", str(args.eval_seed),
                        "--num-images", str(args.eval_images), "--no-progress"], check=True)

    extra = dict(item.split("=", 1) for item in args.sets)
    if args.threads:
        extra["train.num_threads"] = str(args.threads)
    results: dict[str, list[dict]] = {}
    for variant in args.variants:
        for seed in args.seeds:
            ckpt = train(variant, seed, args.steps, args.config, args.out, extra)
            results.setdefault(variant, []).append(score(ckpt, eval_root, ckpt.parent / "eval.json", args.threads))

    import torch

    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU ({cpu})"
    text = [
        "# Table 4 in miniature: ablations on the synthetic benchmark",
        "",
        f"Each variant: `{args.config}`, {args.steps} optimizer steps, seeds {args.seeds}; scored on a",
        f"world of seed {args.eval_seed} that no run trained on. Machine: {device}. Reproduce with",
        f"`python {' '.join(sys.argv)}`.",
        "",
        table(results, "val", "## val (mean ± std over seeds)"),
        "",
        table(results, "testB", "## testB: crowded scenes (mean ± std over seeds)"),
        "",
    ]
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text("\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
