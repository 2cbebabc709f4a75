#!/usr/bin/env python
"""Score a checkpoint on a synthetic world it never saw, with and without shuffled expressions.

    python scripts/score_synthetic.py runs/synthetic_cpu/last.pt --seed 777 --num-images 2000 \
        --json docs/results/synthetic_cpu.json

Writes (once) a fresh-seed benchmark under --data-root, then runs `coupalign eval` on val, testA and
testB twice: as is, and with every sentence moved to another image (--shuffle-expressions). A model
that reads the sentence scores high on the first and low on the second. Prints oIoU per split
(overall, i.e. over every expression kind) and by expression kind, and the presence figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SPLITS = ("val", "testA", "testB")


def run_eval(checkpoint: Path, data_root: Path, shuffle: bool, out: Path) -> dict:
    cmd = [sys.executable, "-m", "coupalign_core.cli.main", "-q", "eval", "--checkpoint", str(checkpoint),
           "--data-root", str(data_root), "--dataset", "synthetic", "--split-by", "unc",
           "--splits", *SPLITS, "--json", str(out), "--no-progress"]
    if shuffle:
        cmd.append("--shuffle-expressions")
    subprocess.run(cmd, check=True)
    return json.loads(out.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--seed", type=int, default=777, help="world seed (training used 0 and 1)")
    parser.add_argument("--num-images", type=int, default=2000)
    parser.add_argument("--data-root", type=Path, default=None, help="default: data/synthetic_seed<seed>")
    parser.add_argument("--json", type=Path, help="write both result sets here")
    args = parser.parse_args()

    root = args.data_root or Path(f"data/synthetic_seed{args.seed}")
    if not (root / "synthetic" / "refs(unc).p").is_file():
        subprocess.run([sys.executable, "-m", "coupalign_core.cli.main", "-q", "synth", "--out", str(root),
                        "--seed", str(args.seed), "--num-images", str(args.num_images), "--no-progress"],
                       check=True)
    with tempfile.TemporaryDirectory() as tmp:
        normal = run_eval(args.checkpoint, root, False, Path(tmp) / "normal.json")
        shuffled = run_eval(args.checkpoint, root, True, Path(tmp) / "shuffled.json")

    report = {"checkpoint": str(args.checkpoint), "seed": args.seed, "num_images": args.num_images,
              "normal": normal, "shuffled": shuffled}
    print(f"\n{args.checkpoint} on a fresh world (seed {args.seed}):")
    for name, res in (("expressions as written", normal), ("expressions shuffled across images", shuffled)):
        per_split = ", ".join(f"{s} {res[s]['oIoU']:.1f}" for s in SPLITS)
        print(f"  {name:36s} oIoU per split: {per_split}")
    for split in SPLITS:
        kinds = normal.get("by_kind", {}).get(split, {})
        if kinds:
            print(f"  {split} by kind: " + ", ".join(f"{k} {v['oIoU']:.1f}" for k, v in kinds.items()))
    if "presence" in normal:
        print(f"  presence: {json.dumps(normal['presence'])[:400]}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
