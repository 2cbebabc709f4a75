"""Export a checkpoint to a fixed-shape ONNX graph or a TensorRT engine.

ONNX: inputs images (B,3,S,S), input_ids and attention_mask (B,T); outputs logits (B,1,S,S) and
presence_logits (B,) when the model has a presence head. The file carries the model config and
tokenizer in its metadata, so `coupalign segment --checkpoint model.onnx` needs nothing else.
--precision fp16/bf16 writes the mixed-precision graph (LayerNorm/softmax in fp32) that a
strongly typed TensorRT build (trtexec --stronglyTyped) expects; --precision int8 the INT8 (QDQ)
graph that onnxruntime runs on the CPU, calibrated on frames of the synthetic world.

The export of a large model (the paper preset) takes minutes and several GB of memory: this verb
shows its stages as a progress bar and logs the expected size first and the file size and peak
memory after; the Segmenter never exports such a model on first use (it names this command).
A graph over protobuf's 2 GB limit keeps its weights in OUT.data beside OUT.

TensorRT: builds an engine for this machine's GPU and TensorRT version (strongly typed, precision
from the ONNX) and writes PATH plus PATH.json (config and tokenizer).

weights: the released weights of a training checkpoint as one .safetensors file (fp32 tensors; config,
vocabulary, step, validation metrics and provenance as JSON in its metadata; no optimizer, scheduler
or RNG state), loadable like any checkpoint and unable to run code on load. This is how
models/coupalign-synthetic.safetensors is made. A .pt that only arbitrary unpickling can read is refused
everywhere; if you trust where it came from, convert it once with --trust-pickle:

  coupalign export --checkpoint old.pt --format weights --trust-pickle --out old.safetensors
"""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True,
                        help="training checkpoint (.pt) or released weights (.safetensors)")
    parser.add_argument("--format", choices=("onnx", "tensorrt", "weights"), required=True, help="what to write")
    parser.add_argument("--out", required=True, help="output file (.onnx, .engine or .safetensors)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="with --format weights: read a --checkpoint that needs arbitrary unpickling "
                        "(torch.load(weights_only=False)), which runs any code the file carries; only for "
                        "files whose origin you trust")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (default %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="fixed batch size of the graph (default %(default)s)")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="onnx: a symbolic batch dimension (any batch in one onnxruntime call; dynamo exporter)")
    parser.add_argument("--precision", choices=("fp32", "fp16", "bf16", "int8"), default=None,
                        help="graph precision (default: fp32 for onnx, fp16 for tensorrt); int8 (onnx only): "
                             "static quantization calibrated on the synthetic world, for onnxruntime on the CPU")
    parser.add_argument("--exporter", choices=("dynamo", "legacy"), default="dynamo",
                        help="torch.onnx exporter (default %(default)s: smaller, faster graph)")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-torch check")
    parser.add_argument("--workspace-gb", type=float, default=4.0, help="TensorRT builder memory (default %(default)s)")
    parser.add_argument("--cache-dir", default=None, help="where the intermediate ONNX goes for --format tensorrt")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from coupalign_core.checkpoint import load_model
    from coupalign_core.inference.export import export_onnx, onnx_files, peak_rss_mb, save_onnx

    out = Path(args.out)
    if args.trust_pickle and args.format != "weights":
        raise ValueError("--trust-pickle converts to --format weights only; export the converted "
                         ".safetensors to onnx or tensorrt afterwards")
    if args.format == "weights":
        from coupalign_core.checkpoint import RELEASE_SUFFIX, export_weights

        if out.suffix != RELEASE_SUFFIX:  # before reading the checkpoint
            raise ValueError(f"--format weights writes safetensors: name --out *{RELEASE_SUFFIX}, not {out}")
        if args.trust_pickle:
            log.warning("--trust-pickle: unpickling %s with torch.load(weights_only=False), which runs any "
                        "code it carries", args.checkpoint)
        export_weights(args.checkpoint, out, trust_pickle=args.trust_pickle)
        print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
        return 0
    if args.dynamic_batch and args.format != "onnx":
        raise ValueError("--dynamic-batch is for --format onnx (onnxruntime); a TensorRT engine has a fixed batch")
    if args.precision == "int8" and args.format != "onnx":
        raise ValueError("--precision int8 writes an onnx graph for onnxruntime on the CPU: use --format onnx")
    if args.format == "tensorrt":
        from coupalign_core.inference.backends.tensorrt_backend import export_engine, require_tensorrt_and_cuda

        require_tensorrt_and_cuda()  # fail before the (slow) ONNX export
    model, tokenizer, _ = load_model(args.checkpoint, map_location="cpu")
    if args.format == "onnx":
        precision = args.precision or "fp32"
        if precision == "fp32":
            export_onnx(model, tokenizer, out, batch_size=args.batch, opset=args.opset, exporter=args.exporter,
                        verify=not args.no_verify, progress=True, dynamic_batch=args.dynamic_batch)
        else:
            import tempfile

            import onnx

            from coupalign_core.inference.onnx_precision import convert_float_precision

            with tempfile.TemporaryDirectory() as tmp:
                fp32 = export_onnx(model, tokenizer, Path(tmp) / "fp32.onnx", batch_size=args.batch, opset=args.opset,
                                   exporter=args.exporter, verify=not args.no_verify, progress=True,
                                   dynamic_batch=args.dynamic_batch)
                if precision == "int8":
                    from coupalign_core.inference.quantize import quantize_int8

                    quantize_int8(fp32, out)
                else:
                    save_onnx(convert_float_precision(onnx.load(str(fp32)), precision), out)
        files = onnx_files(out)
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        data = f", weights in {', '.join(f.name for f in files[1:])}" if len(files) > 1 else ""
        batch = "dynamic" if args.dynamic_batch else args.batch
        print(f"wrote {out} ({precision}, batch {batch}, opset {args.opset}, {size_mb:.1f} MB{data}; "
              f"peak memory {peak_rss_mb():.0f} MB)")
        return 0
    from coupalign_core.inference.export import cached_onnx

    precision = args.precision or "fp16"
    onnx_path = cached_onnx(model, tokenizer, batch_size=args.batch, opset=args.opset, exporter=args.exporter,
                            cache_dir=args.cache_dir, progress=True)
    export_engine(onnx_path, out, precision=precision, cache_dir=args.cache_dir, workspace_gb=args.workspace_gb)
    print(f"wrote {out} and {out}.json ({precision}, batch {args.batch})")
    return 0
