#!/usr/bin/env python3
"""Several inference backends side by side, in one process and one interleaved run.

    .venv/bin/python scripts/compare_backends.py --preset small --image-size 640x480 --runs 60 \
        --backends torch:fp32 onnxruntime:fp32 --markdown docs/benchmarks/cpu-small.md --json out.json

Each backend is a Segmenter over the same randomly initialised model (or --checkpoint); rounds
alternate between backends so that load from other processes hits all of them alike. Prints and
writes a markdown table (stage medians, end-to-end median/p90/p99, FPS, pre+post share, peak
memory, speed-up over the first backend) with the machine it ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger("compare_backends")


def parse_spec(text: str) -> tuple[str, str, dict[str, Any]]:
    """``backend:precision[:option=value,...]``, e.g. ``torch:bf16``, ``onnxruntime:fp32:threads=1``
    or ``onnxruntime:fp32:provider=cpu`` (onnxruntime's own CPU kernels instead of OpenVINO's), or
    ``onnxruntime:fp32:dynamic=1`` (a graph with a symbolic batch: ``--batch N`` in one call), or
    ``onnxruntime:int8``.

    Returns (backend, precision, SegmenterOptions fields the options set)."""
    parts = text.split(":")
    backend = parts[0]
    precision = parts[1] if len(parts) > 1 and parts[1] else "fp32"
    options: dict[str, Any] = {}
    for item in parts[2].split(",") if len(parts) > 2 else []:
        key, _, value = item.partition("=")
        if key == "threads":
            options["num_threads"] = int(value)
        elif key == "compile":
            options["compile"] = value in ("1", "true", "yes")
        elif key == "mode":
            options["precision_mode"] = value
        elif key == "provider":
            options["cpu_provider"] = value
        elif key == "dynamic":
            options["dynamic_batch"] = value in ("1", "true", "yes")
        else:
            raise argparse.ArgumentTypeError(
                f"unknown option {key!r} in {text!r} (threads=, compile=, mode=, provider=, dynamic=)")
    return backend, precision, options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    model_source = parser.add_mutually_exclusive_group(required=True)
    model_source.add_argument("--preset", choices=("tiny", "small", "paper"))
    model_source.add_argument("--checkpoint")
    parser.add_argument("--backends", nargs="+", type=parse_spec,
                        default=[parse_spec("torch:fp32"), parse_spec("onnxruntime:fp32")],
                        help="backend:precision[:threads=N,compile=1,mode=cast,provider=cpu,dynamic=1] "
                             "(first one is the baseline)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--image-size", default="640x480", metavar="WxH")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads and onnxruntime intra-op threads "
                             "(default: torch's and the usable cores)")
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--competing-load", type=int, default=0, metavar="N",
                        help="run N busy-looping processes during the timed runs (N = the core count: another "
                             "process busy on every core), to see which configuration holds its p90 under load")
    parser.add_argument("--markdown", default=None, help="write the table (with machine and command) here")
    parser.add_argument("--json", dest="json_out", default=None, help="write all numbers as JSON here")
    return parser


def load_model(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(model, tokenizer, description of the source): the checkpoint, or a seeded random preset."""
    import torch

    if args.checkpoint:
        from coupalign_core.checkpoint import load_model as load_checkpoint

        model, tokenizer, _ = load_checkpoint(args.checkpoint)
        return model, tokenizer, args.checkpoint
    from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

    torch.manual_seed(0)
    config = CoupAlignConfig.preset(args.preset)
    model = CoupAlign(config).eval()
    return model, build_tokenizer(config), (f"preset {args.preset} (random init, "
                                            f"{model.num_parameters() / 1e6:.1f} M parameters)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")

    import torch

    from coupalign_core.inference import Segmenter, SegmenterOptions
    from coupalign_core.inference.bench import (
        DEFAULT_TEXT,
        benchmark_interleaved,
        format_table,
        parse_image_size,
        synthetic_frame,
        timestamp,
        write_json,
    )
    from coupalign_core.machine import describe_machine, machine_info

    width, height = parse_image_size(args.image_size)
    if args.threads:
        torch.set_num_threads(args.threads)  # process-wide: every torch backend below
    model, tokenizer, source = load_model(args)
    common = SegmenterOptions(device=args.device, batch_size=args.batch, cache_dir=args.cache_dir)
    segmenters = {}
    for backend, precision, fields in args.backends:
        name = f"{backend} {precision}" + "".join(f" {k}={v}" for k, v in fields.items())
        if args.threads and backend == "onnxruntime":
            fields.setdefault("num_threads", args.threads)
        segmenters[name] = Segmenter(model, tokenizer, common.replace(backend=backend, precision=precision, **fields))
    machine = machine_info()
    with competing_load(args.competing_load):
        results = benchmark_interleaved(segmenters, synthetic_frame(width, height), DEFAULT_TEXT, runs=args.runs,
                                        warmup=args.warmup, batch_size=args.batch, device=args.device)
    load_after = machine_info()["load_average_1min"]
    table = format_table(results, baseline=next(iter(results)))
    where = describe_machine(machine)
    command = "python scripts/compare_backends.py " + " ".join(sys.argv[1:] if argv is None else argv)
    report = "\n".join([
        f"**{source}**, {width}x{height} frames, batch {args.batch}, {args.runs} interleaved runs after "
        f"{args.warmup} warm-up, on {where}, torch threads {torch.get_num_threads()}; torch {machine['torch']}, "
        f"onnxruntime {_onnxruntime_version(machine)}; "
        f"{timestamp()}; 1-min load average {_load(machine['load_average_1min'])} before, {_load(load_after)} after"
        + (f"; {args.competing_load} competing busy processes during the runs." if args.competing_load else "."),
        "",
        table,
        "",
        f"Command: `{command}`",
        "",
    ])
    print(report)
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(report)
    if args.json_out:
        write_json(args.json_out, {"date": timestamp(), "machine": machine, "load_average_1min_after": load_after,
                                   "competing_load_processes": args.competing_load,
                                   "source": source, "image_size": [width, height], "results": results})
    return 0


@contextlib.contextmanager
def competing_load(processes: int) -> Iterator[None]:
    """``processes`` Python processes spinning on the CPU while the block runs (ended by their pids)."""
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(max(0, processes))]
    try:
        if busy:
            time.sleep(1.0)  # let the scheduler spread them
        yield
    finally:
        for proc in busy:
            proc.terminate()
        for proc in busy:
            proc.wait(timeout=10)


def _onnxruntime_version(machine: dict[str, Any]) -> str:
    libraries = machine.get("libraries", {})
    for dist in ("onnxruntime", "onnxruntime-openvino", "onnxruntime-gpu"):
        if dist in libraries:
            return f"{libraries[dist]} ({dist})"
    return "not installed"


def _load(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


if __name__ == "__main__":
    sys.exit(main())
