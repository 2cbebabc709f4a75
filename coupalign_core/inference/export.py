"""ONNX export of a CoupAlign with fixed shapes, and the metadata that makes the file self-contained.

The exported graph (see ``graph.py``) has inputs ``images`` (B,3,S,S) float32, ``input_ids`` and
``attention_mask`` (B,T) int64, and outputs ``logits`` (B,1,S,S) and, with a presence head,
``presence_logits`` (B,). Shapes are fixed by default: TensorRT fuses static shapes best, and the
legacy exporter bakes attention reshapes so dynamic axes would fail at run time there. With
``dynamic_batch`` (dynamo exporter only) B is a symbolic ``batch`` dimension, so onnxruntime runs
any batch in one call (several cameras at once) instead of chunks of a fixed one.

An ``.onnx`` file alone is enough to run the Segmenter: its ``metadata_props`` carry

    coupalign.format      "coupalign-onnx/1"
    coupalign.config      the CoupAlignConfig as JSON
    coupalign.tokenizer   the tokenizer state (vocabulary in id order, casing) as JSON
    coupalign.batch_size ("dynamic" for a symbolic batch), coupalign.opset, coupalign.exporter, coupalign.precision,
    coupalign.source_sha256 (hash of the weights it came from), coupalign.torch_version

A graph over protobuf's 2 GB limit is written with its weights in ``<name>.onnx.data`` beside it
(ONNX external data, :func:`save_onnx`); onnxruntime and ``onnx.load`` find that file by itself.

Exporting a large model (the paper preset) takes minutes and several GB of memory, so the
Segmenter never does it on first use: ``coupalign export`` does it once, with a progress bar and a
size and memory note, and the Segmenter refuses a large model whose export is not cached
(:class:`ExportRequiredError`, docs/inference.md).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import nn

from ..model.modeling import CoupAlign
from .cache import atomic_write_bytes, default_cache_dir, key_digest, model_sha256, sha256_file
from .graph import INPUT_NAMES, InferenceGraph, output_names
from .options import DEFAULT_OPSET, EXPORTERS

log = logging.getLogger(__name__)

FORMAT = "coupalign-onnx/1"
DYNAMIC = "dynamic"  # coupalign.batch_size of a graph with a symbolic batch dimension
# Models at least this large are exported only when asked (``coupalign export``), never on the spot.
LARGE_EXPORT_PARAMETERS = 100_000_000
# Protobuf refuses messages over 2 GiB; above this size the weights go to an external data file.
EXTERNAL_DATA_BYTES = 2**31 - 2**26


class ExportRequiredError(RuntimeError):
    """A large model has no cached ONNX export, and exporting it on first use is refused."""
# Sentences for the example inputs: short ones, so the export traces the padded path (the graph
# is static, but the verification below then exercises attention masks with zeros).
_EXAMPLE_SENTENCES = ("the cup on the left", "a small red box next to the green ball", "dog", "the man")


@dataclass
class OnnxModelInfo:
    """What ``metadata_props`` says about an exported CoupAlign graph."""

    config: Any  # CoupAlignConfig
    tokenizer: Any  # TextTokenizer
    batch_size: Optional[int]  # None: a dynamic batch
    opset: int
    exporter: str
    precision: str
    source_sha256: str

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "the ONNX file") -> "OnnxModelInfo":
        from ..model import CoupAlignConfig
        from ..model.tokenization import TextTokenizer

        if props.get("coupalign.format") != FORMAT:
            raise ValueError(
                f"{source} carries no CoupAlign metadata (metadata_props coupalign.format is "
                f"{props.get('coupalign.format')!r}, expected {FORMAT!r}); export it with "
                "`coupalign export --format onnx`"
            )
        return cls(
            config=CoupAlignConfig.from_dict(json.loads(props["coupalign.config"])),
            tokenizer=TextTokenizer.from_state(json.loads(props["coupalign.tokenizer"])),
            batch_size=None if props["coupalign.batch_size"] == DYNAMIC else int(props["coupalign.batch_size"]),
            opset=int(props.get("coupalign.opset", DEFAULT_OPSET)),
            exporter=props.get("coupalign.exporter", "unknown"),
            precision=props.get("coupalign.precision", "fp32"),
            source_sha256=props.get("coupalign.source_sha256", ""),
        )


def read_onnx_info(path: str | os.PathLike) -> OnnxModelInfo:
    """Config and tokenizer of an exported file, read without loading the weights' data."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise ValueError(f"{path} could not be read as an ONNX model: {e}") from e
    return OnnxModelInfo.from_props({p.key: p.value for p in model.metadata_props}, source=str(path))


def example_inputs(config, tokenizer, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Deterministic (images, input_ids, attention_mask) with padded sentences."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(batch_size, 3, config.image_size, config.image_size, generator=g)
    sentences = [_EXAMPLE_SENTENCES[i % len(_EXAMPLE_SENTENCES)] for i in range(batch_size)]
    ids, mask = tokenizer(sentences, config.max_tokens)
    return images, torch.from_numpy(ids), torch.from_numpy(mask)


def _on_cpu(model: CoupAlign) -> CoupAlign:
    """The model in eval mode on the CPU, copied when it lives elsewhere (the caller's stays put)."""
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).to("cpu")
    return model.eval()


@contextlib.contextmanager
def _quiet_exporter():
    """The exporters' tracer warnings and optimizer chatter say nothing actionable here."""
    names = ("onnxscript", "onnx_ir", "torch.onnx", "torch._dynamo", "torch.export", "torch._export")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export_proto(graph: nn.Module, inputs: tuple[torch.Tensor, ...], opset: int, exporter: str,
                  names: tuple[str, ...], dynamic_batch: bool = False) -> Any:
    import onnx

    if exporter == "dynamo":
        batch = torch.export.Dim("batch", min=1, max=1024)
        dynamic_shapes = tuple({0: batch} for _ in INPUT_NAMES) if dynamic_batch else None
        with _quiet_exporter():
            program = torch.onnx.export(
                graph, inputs, dynamo=True, opset_version=opset, dynamic_shapes=dynamic_shapes,
                input_names=list(INPUT_NAMES), output_names=list(names), optimize=True, verbose=False,
            )
        if program is None:  # only the legacy path returns None
            raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNX program")
        return program.model_proto
    import io

    buf = io.BytesIO()
    with _quiet_exporter():
        torch.onnx.export(
            graph, inputs, buf, dynamo=False, opset_version=opset,  # type: ignore[arg-type]  # a file object works
            input_names=list(INPUT_NAMES), output_names=list(names), do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def save_onnx(proto: Any, path: str | os.PathLike, external_data: Optional[bool] = None) -> Path:
    """Write ``proto`` to ``path`` atomically; the weights go to ``<name>.data`` beside it when
    ``external_data`` (None: when the graph is over protobuf's 2 GB limit, ``EXTERNAL_DATA_BYTES``).

    With external data ``proto`` is changed in place (its tensors then point to the file)."""
    import shutil
    import tempfile

    import onnx

    path = Path(path)
    if external_data is None:
        external_data = proto.ByteSize() >= EXTERNAL_DATA_BYTES
    if not external_data:
        return atomic_write_bytes(path, proto.SerializeToString())
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = path.name + ".data"
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:  # both files under their final names in a temp folder, then moved: the data file first
        onnx.save_model(proto, str(tmp / path.name), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
        os.replace(tmp / data_name, path.parent / data_name)
        os.replace(tmp / path.name, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def onnx_files(path: str | os.PathLike) -> list[Path]:
    """The graph file and the external data files it names (the files a copy or a hash needs)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, uses_external_data

    path = Path(path)
    files = [path]
    model = onnx.load(str(path), load_external_data=False)
    for tensor in _graph_tensors(model.graph):
        if uses_external_data(tensor):
            data = path.parent / ExternalDataInfo(tensor).location
            if data not in files:
                files.append(data)
    return files


def _graph_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto of a graph: initializers and node attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _graph_tensors(attr.g)
            for sub in attr.graphs:
                yield from _graph_tensors(sub)


def sha256_onnx(path: str | os.PathLike) -> str:
    """Hash of a graph with its external data files (a plain ``.onnx``: the hash of the file)."""
    files = onnx_files(path)
    if len(files) == 1:
        return sha256_file(path)
    return key_digest({f.name: sha256_file(f) for f in files})


def is_large(model: nn.Module) -> bool:
    return sum(p.numel() for p in model.parameters()) >= LARGE_EXPORT_PARAMETERS


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def export_onnx(
    model: CoupAlign,
    tokenizer,
    out_path: str | os.PathLike,
    *,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    verify: bool = True,
    source_sha256: Optional[str] = None,
    progress: bool = False,
    external_data: Optional[bool] = None,
    dynamic_batch: bool = False,
) -> Path:
    """Export ``model`` to ``out_path`` with fixed shapes (batch_size × S² images, T tokens).

    ``exporter="dynamo"`` (default) uses ``torch.onnx.export(dynamo=True)`` with onnxscript's
    optimizer: a graph with fewer nodes than the legacy exporter's that runs faster in onnxruntime
    (docs/inference.md); ``"legacy"`` is the TorchScript exporter (faster to
    export, kept as a fallback). The ONNX checker runs on the result; with ``verify`` the graph
    is run in onnxruntime and compared with torch (max-abs difference logged). ``progress`` shows
    the stages as a progress bar (the export itself is one step of minutes for a large model);
    ``external_data`` as in :func:`save_onnx`. ``dynamic_batch``: a symbolic batch dimension
    (dynamo exporter; traced with a batch of at least 2, which a dynamic batch needs).
    """
    import onnx
    from tqdm.auto import tqdm

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if opset < 17:
        raise ValueError(f"opset must be >= 17 (LayerNormalization), got {opset}")
    if dynamic_batch and exporter != "dynamo":
        raise ValueError("a dynamic batch needs the dynamo exporter: the legacy one bakes the attention reshapes")
    out_path = Path(out_path)
    config = model.config
    model = _on_cpu(model)
    graph = InferenceGraph(model).eval()
    names = output_names(graph.has_presence_head)
    inputs = example_inputs(config, tokenizer, max(batch_size, 2) if dynamic_batch else batch_size)
    parameters = sum(p.numel() for p in model.parameters())
    log.info("exporting %s (%.1f M parameters) to ONNX (opset %d, batch %d, %s exporter): a file of about "
             "%.0f MB; the export holds several copies of the weights in memory (docs/inference.md)",
             type(model).__name__, parameters / 1e6, opset, batch_size, exporter, parameters * 4 / 1e6)
    stages = ["export (torch.onnx)", "check", "write"] + (["verify (onnxruntime vs torch)"] if verify else [])
    bar = tqdm(total=len(stages), desc=stages[0], unit="stage", disable=not progress, dynamic_ncols=True)
    proto = _export_proto(graph, inputs, opset, exporter, names, dynamic_batch)
    bar.update()

    props = {
        "coupalign.format": FORMAT,
        "coupalign.config": json.dumps(config.to_dict()),
        "coupalign.tokenizer": json.dumps(tokenizer.to_state()),
        "coupalign.batch_size": DYNAMIC if dynamic_batch else str(batch_size),
        "coupalign.opset": str(opset),
        "coupalign.exporter": exporter,
        "coupalign.precision": "fp32",
        "coupalign.source_sha256": source_sha256 or model_sha256(model),
        "coupalign.torch_version": torch.__version__,
    }
    del proto.metadata_props[:]
    for k, v in props.items():
        proto.metadata_props.append(onnx.StringStringEntryProto(key=k, value=v))
    proto.producer_name = "coupalign"
    bar.set_description(stages[1])
    external = proto.ByteSize() >= EXTERNAL_DATA_BYTES if external_data is None else external_data
    if not external:
        onnx.checker.check_model(proto)  # a graph over 2 GB is checked from its file below
    bar.update()
    bar.set_description(stages[2])
    save_onnx(proto, out_path, external_data=external)
    if external:
        onnx.checker.check_model(str(out_path))
    bar.update()
    size_mb = sum(f.stat().st_size for f in onnx_files(out_path)) / 1e6
    log.info("wrote %s (%.1f MB%s); peak memory of this process so far %.0f MB", out_path, size_mb,
             ", weights in " + out_path.name + ".data" if external else "", peak_rss_mb())
    if verify:
        bar.set_description(stages[3])
        diff = verify_onnx(model, tokenizer, out_path, inputs)
        level = logging.INFO if diff <= 1e-4 else logging.WARNING
        log.log(level, "onnxruntime vs torch on the example inputs: max-abs difference %.2e", diff)
        bar.update()
    bar.close()
    return out_path


def verify_onnx(model: CoupAlign, tokenizer, onnx_path: str | os.PathLike, inputs=None,
                cpu_provider: str = "cpu") -> float:
    """Max-abs difference between onnxruntime on the CPU (its own kernels by default, or
    ``cpu_provider="openvino"``) and torch fp32 over every output."""
    from .backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(onnx_path, device="cpu", cpu_provider=cpu_provider)
    if inputs is None:
        inputs = example_inputs(model.config, tokenizer, backend.batch_size or 1)
    graph = InferenceGraph(_on_cpu(model))
    with torch.inference_mode():
        expected = [t.float().numpy() for t in graph(*inputs)]
    got = backend(*(t.numpy() for t in inputs))
    diffs = [float(np.abs(got.logits - expected[0]).max())]
    if got.presence_logits is not None:
        diffs.append(float(np.abs(got.presence_logits - expected[1]).max()))
    return max(diffs)


def cached_onnx(
    model: CoupAlign,
    tokenizer,
    *,
    batch_size: int = 1,
    opset: int = DEFAULT_OPSET,
    exporter: str = "dynamo",
    cache_dir: Optional[str | os.PathLike] = None,
    source_sha256: Optional[str] = None,
    refuse_large: bool = False,
    progress: bool = False,
    dynamic_batch: bool = False,
) -> Path:
    """The exported ONNX of ``model``, exporting into ``cache_dir/onnx`` only on a cache miss.

    The key covers the weights' hash, the tokenizer, batch, opset, exporter and torch version,
    so a changed model or exporter never reuses a stale file. ``refuse_large`` (the Segmenter's
    first use): a miss for a model of ``LARGE_EXPORT_PARAMETERS`` or more raises
    :class:`ExportRequiredError` instead of exporting for minutes.
    """
    sha = source_sha256 or model_sha256(model)
    key = key_digest(
        {"weights": sha, "tokenizer": tokenizer.to_state(), "batch": DYNAMIC if dynamic_batch else batch_size,
         "opset": opset, "exporter": exporter, "torch": torch.__version__, "format": FORMAT}
    )
    batch = "dyn" if dynamic_batch else str(batch_size)
    path = Path(cache_dir or default_cache_dir()) / "onnx" / f"coupalign-b{batch}-{key[:20]}.onnx"
    if path.is_file():
        log.info("using cached ONNX export %s", path)
        return path
    if refuse_large and is_large(model):
        raise ExportRequiredError(
            f"this model has {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters: its ONNX export "
            "takes minutes and several GB of memory, so it is not made on first use. Export it once with "
            "`coupalign export --checkpoint CHECKPOINT --format onnx --out model.onnx` and load model.onnx, "
            "or use backend='torch'"
        )
    return export_onnx(
        model, tokenizer, path, batch_size=batch_size, opset=opset, exporter=exporter, verify=False,
        source_sha256=sha, progress=progress, dynamic_batch=dynamic_batch,
    )


def cached_low_precision_onnx(
    onnx_path: str | os.PathLike, precision: str, cache_dir: Optional[str | os.PathLike] = None
) -> Path:
    """fp16/bf16 version of an fp32 export (``onnx_precision``), cached beside the other exports.

    fp32 returns ``onnx_path`` itself.
    """
    import onnx

    from .onnx_precision import convert_float_precision

    onnx_path = Path(onnx_path)
    if precision == "fp32":
        return onnx_path
    key = key_digest({"source": sha256_onnx(onnx_path), "precision": precision, "format": FORMAT})
    path = Path(cache_dir or default_cache_dir()) / "onnx" / f"{onnx_path.stem}-{precision}-{key[:12]}.onnx"
    if path.is_file():
        return path
    log.info("converting %s to %s (LayerNorm/softmax kept in fp32)", onnx_path.name, precision)
    converted = convert_float_precision(onnx.load(str(onnx_path)), precision)
    return save_onnx(converted, path)


def cached_onnxruntime_fused_onnx(onnx_path: str | os.PathLike, cache_dir: Optional[str | os.PathLike] = None) -> Path:
    """An fp32 export with onnxruntime's transformer fusions, cached beside the other exports.

    ``onnxruntime.transformers.optimizer`` (graph rewrites only, ``opt_level=0``) turns the
    exporter's decomposed GELUs (Div, Erf, Add, Mul, Mul) into one ``BiasGelu`` contrib op and
    decomposed layer norms into ``LayerNormalization``; onnxruntime's own session optimiser does not
    match these patterns in the dynamo export. The result only runs on onnxruntime (contrib ops),
    so the portable export stays as it is and only the onnxruntime backend reads this copy.
    """
    import onnx
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    onnx_path = Path(onnx_path)
    key = key_digest({"source": sha256_onnx(onnx_path), "fusions": "gelu+layernorm", "format": FORMAT})
    path = Path(cache_dir or default_cache_dir()) / "onnx" / f"{onnx_path.stem}-ortfused-{key[:12]}.onnx"
    if path.is_file():
        return path
    options = FusionOptions("bert")
    # Only the element-wise fusions: the attention and skip-layer-norm ones match nothing in a
    # Swin + BERT export with relative-position biases and need shape inference besides.
    for name in ("enable_attention", "enable_skip_layer_norm", "enable_bias_skip_layer_norm", "enable_embed_layer_norm",
                 "enable_rotary_embeddings", "enable_qordered_matmul", "enable_shape_inference"):
        setattr(options, name, False)
    fused = optimize_model(str(onnx_path), model_type="bert", num_heads=0, hidden_size=0, opt_level=0, use_gpu=False,
                           optimization_options=options)
    counts = {k: v for k, v in fused.get_fused_operator_statistics().items() if v}
    log.info("onnxruntime fusions for %s: %s", onnx_path.name, counts or "none")
    model: onnx.ModelProto = fused.model
    return save_onnx(model, path)
