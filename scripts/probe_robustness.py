#!/usr/bin/env python
"""Probe a model with what users say: out-of-domain text, in-domain presence, and command phrasing.

    python scripts/probe_robustness.py models/coupalign-synthetic.pt --seed 4243 \
        --json docs/results/robustness_stage6.json

On a fresh synthetic world (written once under --data-root; seeds 0-6 trained the shipped model),
through the product's own ``Segmenter.from_checkpoint`` (gate included), on the val, testA and
testB images:

(a) out-of-domain commands by kind (``data.language.negatives``, the **held-out** word pools by
    default, so no word list of training is measured; English ones phrased with held-out command
    words 40 % of the time), plus the literal inputs of issue 13: the share reported found, by the
    Segmenter and by the model alone (gate off), and how many the gate rejected;
(b) in-domain no-target sentences rejected and target sentences found;
(c) oIoU of the same target refs said plainly, lower case without punctuation, and phrased as
    commands (the training phrasing words and the held-out ones).

Prints a table by kind and writes everything (with the CPU model, lscpu) to --json.
"""

from __future__ import annotations

import argparse
import collections
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

from coupalign_core.data import ReferDataset
from coupalign_core.data.language import HELD_OUT_WORDS, TRAINING_WORDS, make_negative, phrase
from coupalign_core.data.language.negatives import NEGATIVE_KINDS
from coupalign_core.data.synthetic.vocabulary import world_words
from coupalign_core.inference import Segmenter
from coupalign_core.inference.grounding_vocabulary import GroundingGate
from coupalign_core.metrics import RISMetrics

SPLITS = ("val", "testA", "testB")
LENIENT_MAX_UNKNOWN_SHARE = 0.49  # the gate that rejects only commands of which at least half is unknown
ISSUE_EXAMPLES = ("?!.,;:", "asdfgh qwerty", "🙂", "\x00", "\u200b", "\xad", "the pink triangle", "👍🔥")
PHRASED_OOD_SHARE = 0.4


def cpu_model() -> dict[str, Any]:
    """lscpu's model name and whether the CPU has bf16 units (the numbers depend on both, and on load)."""
    info: dict[str, Any] = {"machine": platform.machine()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Vendor ID"):
            info[key.strip()] = value.strip()
    info["avx512_bf16"] = "avx512_bf16" in out
    try:
        info["load_average"] = [round(v, 2) for v in __import__("os").getloadavg()]
    except OSError:
        pass
    return info


def ensure_world(root: Path, seed: int, num_images: int) -> None:
    """The plain generator's world (no phrasing, no negatives), a quarter of its refs no-target."""
    if not (root / "synthetic" / "refs(unc).p").is_file():
        subprocess.run([sys.executable, "-m", "coupalign_core.cli.main", "-q", "synth", "--out", str(root), "--seed",
                        str(seed), "--num-images", str(num_images), "--no-target-fraction", "0.25", "--no-progress"],
                       check=True)


def run(seg: Segmenter, images: list[np.ndarray], texts: list[str], chunk: int = 32) -> list[Any]:
    out = []
    for start in range(0, len(texts), chunk):
        out += seg.batch(images[start:start + chunk], texts[start:start + chunk])
    return out


def probe(checkpoint: Path, data_root: Path, per_kind: int, pool: str, seed: int, threshold: float) -> dict[str, Any]:
    seg = Segmenter.from_checkpoint(checkpoint, backend="torch", device="cpu", threshold=threshold,
                                    clear_mask_if_not_found=False)
    gate = seg.grounding_gate
    sets = [ReferDataset(data_root, "synthetic", "unc", split, sentences="all") for split in SPLITS]
    rng = np.random.default_rng([seed, 13])
    images_cache: dict[tuple[int, int], np.ndarray] = {}

    def image(ds_index: int, image_id: int) -> np.ndarray:
        key = (ds_index, image_id)
        if key not in images_cache:
            images_cache[key] = sets[ds_index].load_image(image_id)
        return images_cache[key]

    # ---- (a) out-of-domain commands ---------------------------------------------------------------
    world = world_words()
    ood: list[tuple[str, str, np.ndarray]] = []  # (kind, text, image)
    by_image: dict[tuple[int, int], list[str]] = collections.defaultdict(list)
    for k, ds in enumerate(sets):
        for ref in ds.refs:
            if int(ref["ann_id"]) != -1:
                by_image[(k, int(ref["image_id"]))] += [s["sent"] for s in ref["sentences"]]
    keys = sorted(by_image)
    for kind in NEGATIVE_KINDS:
        for _ in range(per_kind):
            key = keys[int(rng.integers(len(keys)))]
            text, _ = make_negative(rng, kind, world, by_image[key], pool=pool)  # type: ignore[arg-type]
            if kind in ("unknown_color", "unknown_category", "other_scene") and rng.random() < PHRASED_OOD_SHARE:
                phrased = phrase(rng, text, words=HELD_OUT_WORDS)
                text = phrased.raw if phrased is not None else text
            ood.append((kind, text, image(*key)))
    for text in ISSUE_EXAMPLES:
        for _ in range(max(1, per_kind // len(ISSUE_EXAMPLES))):
            key = keys[int(rng.integers(len(keys)))]
            ood.append(("issue_13_examples", text, image(*key)))
    texts = [t for _, t, _ in ood]
    ims = [im for _, _, im in ood]
    t0 = time.perf_counter()
    with_gate = run(seg, ims, texts)
    seg.grounding_gate = None
    model_alone = run(seg, ims, texts)
    seg.grounding_gate = gate
    lenient = None if gate is None else GroundingGate(gate.vocabulary, max_unknown_share=LENIENT_MAX_UNKNOWN_SHARE)
    ood_rows: dict[str, dict[str, Any]] = {}
    for (kind, text, _), r, m in zip(ood, with_gate, model_alone):
        row = ood_rows.setdefault(kind, {"n": 0, "found": 0, "found_model_alone": 0, "found_lenient_gate": 0,
                                         "gate_rejected": 0, "found_with_empty_mask": 0, "examples": []})
        row["n"] += 1
        row["found"] += r.found
        row["found_model_alone"] += m.score >= threshold
        row["found_lenient_gate"] += m.found and (lenient is None or lenient.check(text).accepted)
        row["gate_rejected"] += r.reason.startswith(("no word", "unknown words"))
        row["found_with_empty_mask"] += r.found and not r.mask.any()
        if len(row["examples"]) < 4:
            row["examples"].append({"text": text, "found": r.found, "score": round(r.score, 3),
                                    "model_score": round(m.score, 3), "reason": r.reason})
    counts = ("n", "found", "found_model_alone", "found_lenient_gate", "gate_rejected", "found_with_empty_mask")
    total = {k: sum(r[k] for r in ood_rows.values()) for k in counts}
    ood_seconds = time.perf_counter() - t0

    # ---- (b) in-domain presence and (c) phrasing, on the same refs --------------------------------
    variants = ("plain", "lower_no_punctuation", "command_training_words", "command_held_out_words")
    metrics = {v: RISMetrics() for v in variants}
    found = {v: [0, 0] for v in variants}  # found, n (targets)
    gate_rejected_targets = {v: 0 for v in variants}
    no_target = [0, 0]  # rejected, n
    examples: list[dict[str, str]] = []
    t0 = time.perf_counter()
    batch: list[tuple[dict[str, Any], np.ndarray, np.ndarray]] = []

    def flush() -> None:
        if not batch:
            return
        texts = {v: [b[0][v] for b in batch] for v in variants}
        ims = [b[1] for b in batch]
        for v in variants:
            for b, r in zip(batch, run(seg, ims, texts[v])):
                metrics[v].update(r.mask, b[2], group=b[0]["kind"])
                found[v][0] += r.found
                found[v][1] += 1
                gate_rejected_targets[v] += r.reason.startswith(("no word", "unknown words"))
        batch.clear()

    no_target_items: list[tuple[str, np.ndarray]] = []
    for k, ds in enumerate(sets):
        for index in range(len(ds)):
            ref, sent = ds.ref_and_sentence(index)
            im = image(k, int(ref["image_id"]))
            if int(ref["ann_id"]) == -1 or sent.get("no_target"):
                no_target_items.append((sent["raw"], im))
                continue
            gt = ds.load_mask(int(ref["ann_id"]), int(ref["image_id"]))
            p_train = phrase(rng, sent["sent"], words=TRAINING_WORDS, max_length=15)
            p_held = phrase(rng, sent["sent"], words=HELD_OUT_WORDS, max_length=15)
            texts_of = {"plain": sent["raw"], "lower_no_punctuation": sent["sent"], "kind": sent.get("kind"),
                        "command_training_words": p_train.raw if p_train else sent["raw"],
                        "command_held_out_words": p_held.raw if p_held else sent["raw"]}
            if len(examples) < 12:
                examples.append({v: texts_of[v] for v in variants})
            batch.append((texts_of, im, gt))
            if len(batch) == 32:
                flush()
    flush()
    no_target[1] = len(no_target_items)
    results = run(seg, [im for _, im in no_target_items], [t for t, _ in no_target_items])
    no_target[0] = sum(not r.found for r in results)
    in_domain_seconds = time.perf_counter() - t0

    phrasing = {v: {"oIoU": metrics[v].compute()["oIoU"], "mIoU": metrics[v].compute()["mIoU"], "n": len(metrics[v]),
                    "found": found[v][0], "found_pct": 100.0 * found[v][0] / max(found[v][1], 1),
                    "gate_rejected": gate_rejected_targets[v],
                    "by_kind": {g: round(m["oIoU"], 2) for g, m in metrics[v].breakdown().items()}}
                for v in variants}
    return {
        "checkpoint": str(checkpoint), "data_root": str(data_root), "splits": list(SPLITS), "pool": pool,
        "threshold": threshold, "gate": None if gate is None else {
            "source": gate.vocabulary.source, "words": len(gate.vocabulary.words),
            "max_unknown_share": gate.max_unknown_share},
        "out_of_domain": {"by_kind": ood_rows, "total": total,
                          "found_pct": 100.0 * total["found"] / max(total["n"], 1),
                          "found_model_alone_pct": 100.0 * total["found_model_alone"] / max(total["n"], 1),
                          "found_lenient_gate_pct": 100.0 * total["found_lenient_gate"] / max(total["n"], 1),
                          "seconds": round(ood_seconds, 1)},
        "in_domain": {"no_target_n": no_target[1], "no_target_rejected": no_target[0],
                      "no_target_rejected_pct": 100.0 * no_target[0] / max(no_target[1], 1),
                      "targets_n": found["plain"][1], "targets_found": found["plain"][0],
                      "targets_found_pct": phrasing["plain"]["found_pct"], "seconds": round(in_domain_seconds, 1)},
        "phrasing": phrasing, "phrasing_examples": examples,
    }


def print_report(report: dict[str, Any]) -> None:
    print(f"\n{report['checkpoint']} on {report['data_root']} ({'/'.join(report['splits'])}), "
          f"gate: {report['gate']}")
    print(f"CPU: {report['cpu'].get('Model name')}, load {report['cpu'].get('load_average')}")
    print(f"\n(a) out-of-domain commands ({report['pool']} pools), share found: by the Segmenter (default gate), "
          f"with the lenient gate (max_unknown_share {LENIENT_MAX_UNKNOWN_SHARE}), by the model alone (no gate)")
    print(f"{'kind':<20}{'n':>5}{'found':>8}{'lenient':>9}{'model':>8}{'gated':>8}")
    rows = report["out_of_domain"]["by_kind"]
    for kind, r in [*rows.items(), ("all", report["out_of_domain"]["total"])]:
        pct = {k: 100 * r[k] / r["n"] for k in ("found", "found_lenient_gate", "found_model_alone")}
        print(f"{kind:<20}{r['n']:>5}{pct['found']:>7.1f}%{pct['found_lenient_gate']:>8.1f}%"
              f"{pct['found_model_alone']:>7.1f}%{r['gate_rejected']:>8}")
    d = report["in_domain"]
    print(f"\n(b) in-domain: no-target rejected {d['no_target_rejected']}/{d['no_target_n']} "
          f"({d['no_target_rejected_pct']:.1f} %), targets found {d['targets_found']}/{d['targets_n']} "
          f"({d['targets_found_pct']:.1f} %)")
    print("\n(c) the same target refs, phrased:")
    for v, p in report["phrasing"].items():
        print(f"  {v:<26} oIoU {p['oIoU']:6.2f}  mIoU {p['mIoU']:6.2f}  found {p['found_pct']:5.1f} %  "
              f"gate-rejected {p['gate_rejected']}")


def plot(reports: list[tuple[str, dict[str, Any]]], out: Path) -> None:
    """Two panels: out-of-domain share found by kind (Segmenter and model alone) and oIoU of the same
    refs per phrasing, one bar per report (e.g. the model before and after a fine-tune)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    kinds = list(reports[0][1]["out_of_domain"]["by_kind"])
    variants = list(reports[0][1]["phrasing"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    bars = [(f"{name}: model alone", "found_model_alone", 0.35) for name, _ in reports] + \
        [(f"{name}: Segmenter (gate)", "found", 1.0) for name, _ in reports]
    width = 0.8 / len(bars)
    x = np.arange(len(kinds))
    for b, (label, key, alpha) in enumerate(bars):
        report = reports[b % len(reports)][1]["out_of_domain"]["by_kind"]
        ax1.bar(x + b * width, [100 * report[k][key] / report[k]["n"] for k in kinds], width, label=label,
                alpha=alpha, color=f"C{b % len(reports)}")
    ax1.set_xticks(x + width * (len(bars) - 1) / 2, [k.replace("_", "\n") for k in kinds], fontsize=8)
    ax1.set_ylabel("% reported found")
    ax1.axhline(5, color="k", lw=0.8, ls="--")
    ax1.set_title("out-of-domain commands (held-out words)")
    ax1.legend(fontsize=7)
    x = np.arange(len(variants))
    width = 0.8 / len(reports)
    for b, (name, report) in enumerate(reports):
        ax2.bar(x + b * width, [report["phrasing"][v]["oIoU"] for v in variants], width, label=name, color=f"C{b}")
    ax2.set_xticks(x + width * (len(reports) - 1) / 2, [v.replace("_", "\n") for v in variants], fontsize=8)
    ax2.set_ylabel("oIoU")
    ax2.set_title("the same target refs, phrased")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--seed", type=int, default=4243, help="fresh world seed (training used 0-6)")
    parser.add_argument("--num-images", type=int, default=600, help="images of the fresh world (all splits)")
    parser.add_argument("--data-root", type=Path, help="default: data/synthetic_seed<seed>")
    parser.add_argument("--per-kind", type=int, default=40, help="out-of-domain commands per kind")
    parser.add_argument("--pool", choices=("held_out", "train"), default="held_out",
                        help="word pools of the out-of-domain commands (default: held out from training)")
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="write the report here")
    parser.add_argument("--plot", type=Path, help="write a bar chart here (PNG)")
    parser.add_argument("--baseline", nargs=2, metavar=("NAME", "JSON"),
                        help="another report to draw beside this one in --plot (e.g. the model before)")
    parser.add_argument("--name", default="this model", help="this report's name in --plot")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    root = args.data_root or Path(f"data/synthetic_seed{args.seed}")
    ensure_world(root, args.seed, args.num_images)
    report = probe(args.checkpoint, root, args.per_kind, args.pool, args.seed, args.threshold)
    report["cpu"] = cpu_model()
    report["seed"], report["num_images"] = args.seed, args.num_images
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    if args.plot:
        reports = [(args.baseline[0], json.loads(Path(args.baseline[1]).read_text()))] if args.baseline else []
        plot(reports + [(args.name, report)], args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
