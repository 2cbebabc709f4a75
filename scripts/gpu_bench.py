#!/usr/bin/env python3
"""GPU latency of the paper preset: torch fp32 eager vs fp16/bf16 vs torch.compile (+CUDA graphs).

    .venv/bin/python scripts/gpu_bench.py --out-dir gpu_bench_out        # on a machine with a CUDA GPU

One process, start to end within --budget-s (default 420 s, so the whole script stays under 8
minutes on an H100/H200): the randomly initialised paper model (Swin-B + BERT-base, 448², T=30,
N=100; latency does not depend on the weights) runs batch 1 through the Segmenter, so every
number includes pre-processing of a 448×448 frame, host<->device copies and post-processing.
Configurations run cheapest first; one that would not fit the remaining budget is skipped and
listed as skipped. Where TensorRT or onnxruntime-gpu is installed, their fp16 backends run last.
Writes gpu_bench.json and gpu_bench.md (with the GPU's name) into --out-dir and prints the table.
Exits with status 2 and a clear message where torch sees no CUDA GPU.
"""

from __future__ import annotations

import argparse
import gc
import logging
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("gpu_bench")

# name -> (backend, precision, Segmenter options, rough seconds it needs beyond the timed runs)
CONFIGS: dict[str, tuple[str, str, dict, float]] = {
    "torch fp32 eager": ("torch", "fp32", {}, 5),
    "torch fp32 eager tf32": ("torch", "fp32", {"tf32": True}, 5),
    "torch fp16 autocast": ("torch", "fp16", {}, 5),
    "torch bf16 autocast": ("torch", "bf16", {}, 5),
    "torch fp16 cast": ("torch", "fp16", {"precision_mode": "cast"}, 10),
    "torch bf16 cast": ("torch", "bf16", {"precision_mode": "cast"}, 10),
    "torch fp16 cast compile": ("torch", "fp16", {"precision_mode": "cast", "compile": True}, 120),
    "torch fp16 cast compile+cudagraphs": (
        "torch", "fp16", {"precision_mode": "cast", "compile": True, "compile_mode": "reduce-overhead"}, 150),
    "onnxruntime fp16": ("onnxruntime", "fp16", {}, 90),
    "tensorrt fp16": ("tensorrt", "fp16", {}, 240),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--preset", default="paper", choices=("paper", "small", "tiny"))
    parser.add_argument("--image-size", default="448x448", metavar="WxH",
                        help="camera frame size (default %(default)s)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=420.0, help="stop starting configurations after this")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS), metavar="NAME",
                        help="subset to run, in order (default: all)")
    parser.add_argument("--out-dir", default="gpu_bench_out")
    parser.add_argument("--cache-dir", default=None, help="ONNX/TensorRT cache (default: under --out-dir)")
    # For checking this script's logic on a machine without a GPU (tiny preset, no GPU numbers).
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    start = time.perf_counter()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_bench: torch sees no CUDA GPU (torch %s, CUDA build %s). Run this on a machine with an "
            "NVIDIA GPU, its driver and a CUDA build of torch (scripts/setup.sh installs one)." % (
                torch.__version__, torch.version.cuda),
            file=sys.stderr,
        )
        return 2

    from coupalign_core.inference.backends import probe_environment
    from coupalign_core.inference.bench import parse_image_size, synthetic_frame
    from coupalign_core.machine import machine_info
    from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

    width, height = parse_image_size(args.image_size)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = Path(args.cache_dir) if args.cache_dir else out_dir / "cache"
    machine = machine_info()
    gpu = machine.get("gpu", "no GPU (CPU logic check)")
    print(f"GPU: {gpu}", flush=True)
    env = probe_environment()

    torch.manual_seed(0)
    config = CoupAlignConfig.preset(args.preset)
    model = CoupAlign(config).eval()
    tokenizer = build_tokenizer(config)
    image = synthetic_frame(width, height)
    log.info("%s preset: %.1f M parameters, %d² input, T=%d, model built in %.0f s", args.preset,
             model.num_parameters() / 1e6, config.image_size, config.max_tokens, time.perf_counter() - start)

    results: dict[str, dict] = {}
    notes: dict[str, str] = {}
    per_run_s = None  # seconds per timed run of the slowest eager config so far
    for name in args.configs:
        backend, precision, options, overhead = CONFIGS[name]
        missing = missing_backend(backend, args, env)
        if missing:
            notes[name] = missing
            continue
        over = over_budget(overhead, per_run_s, time.perf_counter() - start, args)
        if over:
            notes[name] = over
            log.warning("%s %s", name, over)
            continue
        try:
            result = run_config(model, tokenizer, image, backend, precision, dict(options), args, cache_dir)
        except Exception as e:  # one failing configuration must not lose the others' numbers
            notes[name] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            log.error("%s %s", name, notes[name])
            continue
        results[name] = result
        per_run_s = max(per_run_s or 0.0, result["stages_ms"]["total"]["median"] / 1e3)
        log.info("%s: median %.2f ms end to end (inference %.2f ms), setup %.0f s", name,
                 result["stages_ms"]["total"]["median"], result["stages_ms"]["inference"]["median"],
                 result["setup_s"])

    write_report(args, results, notes, machine, (width, height), time.perf_counter() - start, out_dir)
    return 0


def missing_backend(backend: str, args: argparse.Namespace, env: Any) -> str | None:
    """The note for a configuration whose backend is not installed here, else None."""
    if backend == "tensorrt" and not (env.has_tensorrt and args.device == "cuda"):
        return "skipped: TensorRT is not installed"
    if backend == "onnxruntime" and "CUDAExecutionProvider" not in env.ort_providers and args.device == "cuda":
        return "skipped: onnxruntime-gpu (CUDA execution provider) is not installed"
    return None


def over_budget(overhead: float, per_run_s: float | None, elapsed: float, args: argparse.Namespace) -> str | None:
    """The note for a configuration that would not fit the budget left, else None. ``per_run_s``: seconds
    per timed run of the slowest configuration so far (None before the first)."""
    expected = overhead + (per_run_s or 0.05) * (args.runs + args.warmup)
    if elapsed + expected > args.budget_s:
        return f"skipped: ~{expected:.0f} s needed, {args.budget_s - elapsed:.0f} s of the budget left"
    return None


def run_config(model: Any, tokenizer: Any, image: Any, backend: str, precision: str, options: dict,
               args: argparse.Namespace, cache_dir: Path) -> dict:
    """One configuration: a Segmenter built and warmed up (its setup_s), then the timed runs.

    Frees what it built (compiled graphs included) before returning, so the next one starts clean."""
    import torch

    from coupalign_core.inference import Segmenter
    from coupalign_core.inference.bench import benchmark

    # "fp32 eager" keeps torch's defaults (TF32 matmuls off); the tf32 row turns them on.
    torch.backends.cuda.matmul.allow_tf32 = options.pop("tf32", False)
    t0 = time.perf_counter()
    try:
        if backend in ("onnxruntime", "tensorrt"):
            from coupalign_core.inference.export import cached_onnx

            # the Segmenter does not export the paper preset on first use: export it here, once
            cached_onnx(model, tokenizer, cache_dir=cache_dir, progress=True)
        seg = Segmenter(model, tokenizer, backend=backend, device=args.device, precision=precision,
                        cache_dir=cache_dir, **options)
        seg(image, "warm-up sentence")  # compiles / builds / autotunes here
        setup_s = time.perf_counter() - t0
        result = benchmark(seg, image, runs=args.runs, warmup=args.warmup, device=args.device, progress=False)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    result["setup_s"] = setup_s
    del seg
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    if options.get("compile"):
        import torch._dynamo

        torch._dynamo.reset()  # free the compiled graphs before the next configuration
    return result


def write_report(args: argparse.Namespace, results: dict[str, dict], notes: dict[str, str], machine: dict,
                 frame: tuple[int, int], total_s: float, out_dir: Path) -> None:
    """Prints the table and writes gpu_bench.md and gpu_bench.json into ``out_dir``."""
    from coupalign_core.inference.bench import format_table, timestamp, write_json
    from coupalign_core.machine import describe_machine

    width, height = frame
    gpu = machine.get("gpu", "no GPU (CPU logic check)")
    baseline = next(iter(results), None)
    table = format_table(results, baseline=baseline) if results else "(no configuration ran)"
    lines = [
        f"**{args.preset} preset** (random init), {width}x{height} frames, batch 1, {args.runs} runs after "
        f"{args.warmup} warm-up, on **{gpu}** (host: {describe_machine(machine)}); torch {machine['torch']}, "
        f"CUDA {machine.get('cuda')}; {timestamp()}; whole script {total_s:.0f} s.",
        "",
        table,
        "",
        "Setup (first call: export, compile or engine build), seconds: "
        + ", ".join(f"{n} {r['setup_s']:.0f}" for n, r in results.items()),
    ]
    lines += [f"- {n}: {note}" for n, note in notes.items()]
    report = "\n".join(lines) + "\n"
    print(report)
    (out_dir / "gpu_bench.md").write_text(report)
    write_json(out_dir / "gpu_bench.json", {
        "date": timestamp(), "machine": machine, "preset": args.preset, "image_size": [width, height],
        "results": results, "notes": notes, "total_s": total_s,
    })
    log.info("wrote %s and %s", out_dir / "gpu_bench.md", out_dir / "gpu_bench.json")


if __name__ == "__main__":
    sys.exit(main())
