#!/usr/bin/env python
"""Table 4 of the paper in miniature, on the synthetic benchmark, with the literal readings beside it.

    python scripts/ablation.py --seeds 0 1 --jobs 2

Trains every variant (full CoupAlign, no WPA, language-to-vision WPA only, no SMA, no auxiliary loss,
and the paper's formulas as printed: plain softmax of cosines in SMA, raw-dot-product auxiliary loss
over every pixel, WPA before each stage) from `training/configs/synthetic_cpu.yaml` with the same
number of optimizer steps and the same seeds, scores each run's last.pt on a world none of them
trained on (val, testA, testB of --eval-seed), and writes a markdown table of mean ± std over seeds
into --table (between the `<!-- ablation table -->` markers when the file has them, so the text
around it stays). A run is budgeted in steps, never minutes, so every variant gets the same number
of updates whatever the machine's load; --steps defaults to what about 12 minutes of the full
variant gave on the project's 2-core machine at one thread (docs/ablation.md). Finished runs (an
eval.json beside their last.pt) are skipped and interrupted ones resume, so the command can simply
be run again; a run folder whose ablation.json records other settings is refused.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS = {
    "full": {},
    "no_wpa": {"model.wpa_direction": "off"},
    "uni_wpa": {"model.wpa_direction": "language_to_vision"},
    "no_sma": {"model.use_sma": "false"},
    "no_aux": {"model.aux_loss_weight": "0"},
    "literal_sma": {"model.sma_temperature": "1.0"},
    "literal_aux": {"model.aux_loss_form": "paper"},
    "wpa_before_stage": {"model.wpa_position": "before_stage"},
}
LABELS = {
    "full": "CoupAlign (Bi-WPA + SMA + aux)",
    "no_wpa": "w/o WPA",
    "uni_wpa": "Uni-WPA (language → vision)",
    "no_sma": "w/o SMA",
    "no_aux": "w/o aux loss",
    "literal_sma": "literal SMA: softmax(cos), Eq. 11 as printed",
    "literal_aux": "literal aux: raw dot products, all pixels, Eq. 14-15",
    "wpa_before_stage": "WPA before each stage, Eq. 3 as printed",
}
# What every variant shares beyond the config: the paper's loss (no Dice), float32, one sentence per
# ref an epoch, last.pt as the run's model (scored on another world, so no split chooses it).
PROTOCOL = {
    "train.batch_size": "8",
    "train.amp": "none",
    "model.dice_loss_weight": "0",
    "train.select_checkpoint": "last",
    "train.eval_every": "1000",
    "train.checkpoint_every": "250",
    "train.max_minutes": "null",
}
# Steps of batch 8 that ~12 minutes of the full variant gave at one thread (docs/ablation.md).
DEFAULT_STEPS = 5000
METRICS = ("oIoU", "mIoU", "prec@0.5", "prec@0.7", "prec@0.9")
CLI = [sys.executable, "-m", "coupalign_core.cli.main", "-q"]
BEGIN, END = "<!-- ablation table -->", "<!-- /ablation table -->"


def run_dir(out: Path, variant: str, seed: int) -> Path:
    return out / f"{variant}_seed{seed}"


def overrides(variant: str, seed: int, steps: int, extra: dict[str, str]) -> dict[str, str]:
    return {**PROTOCOL, **extra, **VARIANTS[variant], "train.seed": str(seed), "train.max_steps": str(steps),
            "train.decay_steps": str(steps)}


def train(variant: str, seed: int, steps: int, config: Path, out: Path, extra: dict[str, str]) -> Path:
    """Trains (or resumes) one run; returns its last.pt."""
    folder = run_dir(out, variant, seed)
    cmd = [*CLI, "train", "--config", str(config), "--output-dir", str(folder), "--resume"]
    for key, value in overrides(variant, seed, steps, extra).items():
        cmd += ["--set", f"{key}={value}"]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "ablation.log", "a") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return folder / "last.pt"


def score(checkpoint: Path, data_root: Path, out_json: Path, threads: int | None) -> dict:
    if not out_json.is_file():
        cmd = [*CLI, "eval", "--checkpoint", str(checkpoint), "--data-root", str(data_root),
               "--splits", "val", "testA", "testB", "--json", str(out_json), "--no-progress"]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
        subprocess.run(cmd, check=True, env=env)
    return json.loads(out_json.read_text())


def one_run(variant: str, seed: int, args: argparse.Namespace, extra: dict[str, str], eval_root: Path) -> dict:
    """Train and score one (variant, seed), or read its scores when it finished before."""
    folder = run_dir(args.out, variant, seed)
    result, marker = folder / "eval.json", folder / "ablation.json"
    wanted = {"config": str(args.config), "overrides": overrides(variant, seed, args.steps, extra),
              "eval_root": str(eval_root)}
    if marker.is_file():
        if json.loads(marker.read_text()) != wanted:
            raise SystemExit(f"{folder} holds a run with other settings (see its ablation.json); "
                             "choose another --out for these")
        if result.is_file():
            print(f"{variant} seed {seed}: done before, {result}", flush=True)
            return json.loads(result.read_text())
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(wanted, indent=1))
    start = time.monotonic()
    checkpoint = train(variant, seed, args.steps, args.config, args.out, extra)
    scores = score(checkpoint, eval_root, result, args.threads)
    print(f"{variant} seed {seed}: val oIoU {scores['val']['oIoU']:.1f} ({(time.monotonic() - start) / 60:.1f} min)",
          flush=True)
    return scores


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


def machine() -> str:
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    name = platform.processor() or platform.machine()
    try:
        models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")]
        name = models[0] if models else name
    except OSError:
        pass
    return f"CPU {name}, {os.cpu_count()} cores"


def write_table(path: Path, text: str) -> None:
    """``text`` between the markers of ``path`` (kept around it), or the whole file."""
    block = f"{BEGIN}\n{text}\n{END}"
    old = path.read_text() if path.is_file() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + block + rest.split(END, 1)[1]
    else:
        new = block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


def prepare_training_data(config: Path, sets: list[str]) -> None:
    """Generate the config's synthetic training world once, before runs that may start together."""
    from coupalign_core.training.config import TrainingConfig

    data = TrainingConfig.load(config, sets).data
    refs = Path(data.data_root) / data.dataset / f"refs({data.split_by}).p"
    if data.synthesize is not None and not refs.is_file():
        from coupalign_core.data.synthetic import generate

        generate(data.data_root, **data.synthesize)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("training/configs/synthetic_cpu.yaml"))
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="optimizer steps per run (same for all)")
    parser.add_argument("--eval-seed", type=int, default=777, help="world used for scoring only")
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1: runs degrade gracefully on a shared CPU)")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained side by side")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="extra override for every variant, as `coupalign train --set`")
    parser.add_argument("--out", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--table", type=Path, default=Path("docs/ablation.md"))
    args = parser.parse_args()
    if args.seeds and len(args.seeds) < 2:
        print("note: one seed gives no spread; the table needs at least two", file=sys.stderr)

    eval_root = Path(f"data/synthetic_seed{args.eval_seed}_n{args.eval_images}")
    if not (eval_root / "synthetic" / "refs(unc).p").is_file():
        subprocess.run([*CLI, "synth", "--out", str(eval_root), "--seed", str(args.eval_seed),
                        "--num-images", str(args.eval_images), "--no-progress"], check=True)
    extra = dict(item.split("=", 1) for item in args.sets)
    if args.threads:
        extra["train.num_threads"] = str(args.threads)
    first = overrides(args.variants[0], args.seeds[0], args.steps, extra)
    prepare_training_data(args.config, [f"{k}={v}" for k, v in first.items()])

    load_before = os.getloadavg()
    started = time.monotonic()
    jobs = [(variant, seed) for variant in args.variants for seed in args.seeds]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        scores = list(pool.map(lambda job: one_run(job[0], job[1], args, extra, eval_root), jobs))
    results: dict[str, list[dict]] = {}
    for (variant, _), result in zip(jobs, scores):
        results.setdefault(variant, []).append(result)
    load_after = os.getloadavg()

    protocol = ", ".join(f"`{k}={v}`" for k, v in {**PROTOCOL, **extra}.items())
    text = [
        f"Each variant: `{args.config}` with {protocol}; {args.steps} optimizer steps; seeds {args.seeds}; "
        f"scored (last.pt) on a world of seed {args.eval_seed} ({args.eval_images} images) that no run trained on.",
        f"Machine: {machine()}; {args.jobs} run(s) at a time; load average {load_before[0]:.1f} at the start and "
        f"{load_after[0]:.1f} at the end; {(time.monotonic() - started) / 60:.0f} min for the runs not done before.",
        f"Reproduce with `python {' '.join(sys.argv)}`.",
        "",
        table(results, "val", "### val (mean ± std over seeds)"),
        "",
        table(results, "testB", "### testB: crowded scenes (mean ± std over seeds)"),
    ]
    write_table(args.table, "\n".join(text))
    print("\n".join(text))
    return 0


if __name__ == "__main__":
    sys.exit(main())
