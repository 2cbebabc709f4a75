"""Latency benchmark of one inference backend on a synthetic camera frame.

Prints the median, p90 and p99 latency of each stage (preprocess, inference, postprocess) and end
to end, the FPS and the peak memory (process RSS on the CPU, torch.cuda.max_memory_allocated on
the GPU), and writes them with the machine's description as JSON (--json). --preset benchmarks
a randomly initialised model of that preset (latency does not depend on the weights).
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from coupalign_core.inference.options import BACKENDS, CPU_PROVIDERS, DEVICES, PRECISIONS, SegmenterOptions

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="checkpoint (.pt), exported .onnx or TensorRT engine")
    source.add_argument("--preset", choices=("tiny", "small", "paper"), help="random-init model of a preset")
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--device", choices=DEVICES, default=None, help="default: the GPU when there is one")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32")
    parser.add_argument("--image-size", default="640x480", metavar="WxH",
                        help="camera frame size (default %(default)s)")
    parser.add_argument("--runs", type=int, default=50, help="timed runs (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first (default %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="frames per call (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None,
                        help="onnxruntime intra-op threads (default: usable cores)")
    parser.add_argument("--cpu-provider", choices=CPU_PROVIDERS, default="auto",
                        help="onnxruntime on the CPU: OpenVINO's kernels or onnxruntime's own "
                             "(default: OpenVINO when installed)")
    parser.add_argument("--compile", action="store_true", help="torch backend: torch.compile the model")
    parser.add_argument("--choose", action="store_true",
                        help="run backend='auto''s CPU probe now (not its cached choice), print what it measured "
                             "and chose, then benchmark the choice (needs --backend auto on the CPU, fp32)")
    parser.add_argument("--text", default=None, help="sentence to segment (default: a fixed 9-word sentence)")
    parser.add_argument("--cache-dir", default=None, help="ONNX/engine cache (default ~/.cache/coupalign)")
    parser.add_argument("--json", dest="json_out", default=None, metavar="OUT", help="write the results as JSON")


def segmenter_options(args: argparse.Namespace) -> SegmenterOptions:
    """The options of ``args`` that the source can honour: an engine fixes its precision, batch and
    backend settings, an ``.onnx`` its batch and export settings (``--batch`` then runs chunks)."""
    from coupalign_core.inference.segmenter import ENGINE_SUFFIXES

    checkpoint = args.checkpoint or ""
    if checkpoint.endswith(ENGINE_SUFFIXES):
        return SegmenterOptions(backend=args.backend, device=args.device,
                                precision=None if args.precision == "fp32" else args.precision)
    exported = checkpoint.endswith(".onnx")
    return SegmenterOptions(
        backend=args.backend, device=args.device, precision=args.precision, cache_dir=args.cache_dir,
        num_threads=args.threads, cpu_provider=args.cpu_provider,
        batch_size=1 if exported else args.batch, compile=False if exported else args.compile,
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from coupalign_core.inference import Segmenter
    from coupalign_core.inference.bench import (
        DEFAULT_TEXT,
        benchmark,
        format_stages,
        format_table,
        parse_image_size,
        synthetic_frame,
        timestamp,
        write_json,
    )
    from coupalign_core.machine import describe_machine, machine_info

    width, height = parse_image_size(args.image_size)
    if args.runs < 1:
        raise ValueError(f"--runs must be >= 1, got {args.runs}")
    options = segmenter_options(args)
    if args.choose:
        if args.backend != "auto" or args.device == "cuda" or args.precision != "fp32":
            raise ValueError("--choose probes backend='auto' on the CPU in fp32: drop --backend/--device/--precision")
        options = options.replace(device="cpu")
    if args.checkpoint:
        if args.choose:
            show_probe(args.checkpoint, options)
        seg = Segmenter.from_checkpoint(args.checkpoint, options)
    else:
        from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

        torch.manual_seed(0)
        config = CoupAlignConfig.preset(args.preset)
        model = CoupAlign(config).eval()
        if args.choose:
            show_probe((model, build_tokenizer(config)), options)
        seg = Segmenter(model, build_tokenizer(config), options)
    device = getattr(seg.backend, "device", "cpu")
    image = synthetic_frame(width, height)
    log.info("benchmarking %s on %dx%d frames, batch %d, %d runs after %d warm-up",
             seg.describe(), width, height, args.batch, args.runs, args.warmup)
    result = benchmark(seg, image, args.text or DEFAULT_TEXT, runs=args.runs, warmup=args.warmup,
                       batch_size=args.batch, device=device)
    name = f"{seg.backend.name} {seg.backend.precision}"
    machine = machine_info()
    print(f"{seg.describe()} on {describe_machine(machine)}, {timestamp()}")
    print(format_stages(result))
    print()
    print(format_table({name: result}))
    payload = {
        "date": timestamp(),
        "machine": machine,
        "probe": seg.probe.to_dict() if seg.probe is not None else None,
        "source": args.checkpoint or f"preset {args.preset} (random init)",
        "image_size": [width, height],
        "results": {name: result},
    }
    if args.json_out:
        write_json(args.json_out, payload)
        log.info("wrote %s", args.json_out)
    return 0


def show_probe(source: Any, options: SegmenterOptions) -> None:
    """Probe the CPU candidates of ``source`` (a checkpoint path or ``(model, tokenizer)``) now,
    rewriting the cached choice, and print the table."""
    from coupalign_core.inference.probe import probe_cpu
    from coupalign_core.machine import describe_machine

    if isinstance(source, tuple):
        outcome = probe_cpu(options, model=source[0], tokenizer=source[1], refresh=True)
    elif str(source).endswith(".onnx"):
        outcome = probe_cpu(options, onnx_path=source, refresh=True)
    else:
        from coupalign_core.checkpoint import load_model

        model, tokenizer, _ = load_model(source, map_location="cpu")
        outcome = probe_cpu(options, model=model, tokenizer=tokenizer, refresh=True)
    result = outcome.result
    print(f"backend='auto' probe on {describe_machine(result.machine)}, {result.date}:")
    print(result.table())
    for note in result.notes:
        print(f"- {note}")
    print(f"chosen: {result.reason}")
    print(f"cached in {result.cached_at}")
    print()
