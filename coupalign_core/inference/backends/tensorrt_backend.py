"""TensorRT backend, written to the TensorRT 10 and 11 Python APIs.

Build: ``OnnxParser`` -> strongly typed network -> ``build_serialized_network`` with a persistent
timing cache. Precision comes from the ONNX itself (``onnx_precision``): TensorRT 11 has no
FP16/BF16 builder flags any more, and on TensorRT 10 the same strongly typed build gives the
same engine. Engines are cached under a key of model hash + TensorRT version + GPU name and
compute capability + precision + input shapes, because a plan only runs on the GPU architecture
and TensorRT version that built it.

Run: ``execute_async_v3`` on torch CUDA tensors bound once with ``set_tensor_address`` (no
PyCUDA: torch already owns the CUDA context in this process). Buffers keep their addresses
between calls, so the call is also capturable in a CUDA graph.

Everything up to the first ``import tensorrt`` (cache keys, binding plan, ONNX preparation) is
plain Python and unit-tested without TensorRT.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..cache import atomic_write_bytes, default_cache_dir, key_digest, sha256_file
from ..graph import INPUT_NAMES, LOGITS, PRESENCE_LOGITS
from .base import BackendOutput, InferenceBackend, check_precision
from .torch_backend import cuda_required_error

log = logging.getLogger(__name__)

TENSORRT_INSTALL_HINT = (
    "install NVIDIA TensorRT 10 or 11 with its Python bindings on a machine with an NVIDIA GPU "
    "and driver: `pip install tensorrt` (the wheels fetch their libraries from pypi.nvidia.com), "
    "or on Jetson the JetPack package python3-libnvinfer; otherwise use backend='onnxruntime' "
    "or backend='torch'"
)

# TensorRT DataType names -> numpy-style names (and torch dtypes below). TensorRT 10 spells
# bfloat16 "BF16"; "HALF" is float16.
TRT_DTYPE_NAMES = {
    "FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16", "INT32": "int32", "INT64": "int64",
    "BOOL": "bool", "INT8": "int8", "UINT8": "uint8",
}
TORCH_DTYPES = {
    "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int32": torch.int32, "int64": torch.int64, "bool": torch.bool, "int8": torch.int8,
    "uint8": torch.uint8,
}
_INPUT_KINDS = {"images": "float", "input_ids": "int", "attention_mask": "int"}


def require_tensorrt() -> Any:
    """``import tensorrt`` (10.x or 11.x) or a RuntimeError telling the user what to install."""
    try:
        import tensorrt as trt
    except ImportError as e:
        raise RuntimeError(f"the tensorrt backend needs the tensorrt Python package: {TENSORRT_INSTALL_HINT}") from e
    major = int(str(trt.__version__).split(".")[0])
    if major < 10:
        raise RuntimeError(
            f"the tensorrt backend needs TensorRT 10 or newer (name-based tensor API, "
            f"execute_async_v3), found {trt.__version__}: {TENSORRT_INSTALL_HINT}"
        )
    return trt


def require_tensorrt_and_cuda() -> Any:
    """TensorRT and a CUDA GPU, or a RuntimeError saying which is missing and what to install."""
    trt = require_tensorrt()
    if not torch.cuda.is_available():
        raise cuda_required_error("the tensorrt backend")
    return trt


def tensorrt_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorrt") is not None


# ---- binding plan --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorSpec:
    name: str
    is_input: bool
    shape: tuple[int, ...]
    dtype: str  # numpy-style name: "float32", "float16", "int64", ...


@dataclass(frozen=True)
class BindingPlan:
    """Which buffer each engine I/O tensor gets, checked against the CoupAlign graph contract.

    Built from the engine's I/O tensors (or, for tests and before building, from the ONNX
    graph). Raises ValueError when the graph is not a fixed-shape CoupAlign graph.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_specs(cls, specs: Iterable[TensorSpec]) -> "BindingPlan":
        specs = list(specs)
        inputs = tuple(s for s in specs if s.is_input)
        outputs = tuple(s for s in specs if not s.is_input)
        names = [s.name for s in inputs]
        missing = [n for n in INPUT_NAMES if n not in names]
        extra = [n for n in names if n not in INPUT_NAMES]
        if missing or extra:
            raise ValueError(
                f"engine inputs {names} do not match the CoupAlign graph {list(INPUT_NAMES)} "
                f"(missing {missing}, unexpected {extra})"
            )
        out_names = [s.name for s in outputs]
        if LOGITS not in out_names or any(n not in (LOGITS, PRESENCE_LOGITS) for n in out_names):
            raise ValueError(f"engine outputs {out_names} must be {LOGITS!r} and optionally {PRESENCE_LOGITS!r}")
        for s in specs:
            if any(d < 0 for d in s.shape):
                raise ValueError(f"tensor {s.name!r} has a dynamic shape {s.shape}; build from a fixed-shape export")
            if s.dtype not in TORCH_DTYPES:
                raise ValueError(f"tensor {s.name!r} has dtype {s.dtype}, which this backend cannot bind")
        by_name = {s.name: s for s in specs}
        images = by_name["images"].shape
        if len(images) != 4 or images[1] != 3 or images[2] != images[3]:
            raise ValueError(f"images must be (B,3,S,S), the engine has {images}")
        b, s_ = images[0], images[2]
        for n in ("input_ids", "attention_mask"):
            shape = by_name[n].shape
            if len(shape) != 2 or shape[0] != b:
                raise ValueError(f"{n} must be (B,T) with B = {b}, the engine has {shape}")
        if by_name["input_ids"].shape != by_name["attention_mask"].shape:
            raise ValueError("input_ids and attention_mask must have the same shape")
        for n, kind in _INPUT_KINDS.items():
            is_float = by_name[n].dtype in ("float32", "float16", "bfloat16")
            if is_float != (kind == "float"):
                raise ValueError(f"{n} must be a {kind} tensor, the engine has {by_name[n].dtype}")
        if by_name[LOGITS].shape != (b, 1, s_, s_):
            raise ValueError(f"{LOGITS} must be {(b, 1, s_, s_)}, the engine has {by_name[LOGITS].shape}")
        if PRESENCE_LOGITS in by_name and by_name[PRESENCE_LOGITS].shape != (b,):
            raise ValueError(f"{PRESENCE_LOGITS} must be {(b,)}, the engine has {by_name[PRESENCE_LOGITS].shape}")
        order = {n: i for i, n in enumerate(INPUT_NAMES)}
        return cls(tuple(sorted(inputs, key=lambda x: order[x.name])), outputs)

    @property
    def batch_size(self) -> int:
        return self.inputs[0].shape[0]

    @property
    def image_size(self) -> int:
        return self.inputs[0].shape[2]

    @property
    def max_tokens(self) -> int:
        return self.inputs[1].shape[1]

    @property
    def has_presence_head(self) -> bool:
        return any(s.name == PRESENCE_LOGITS for s in self.outputs)

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {s.name: s.shape for s in self.inputs}

    def allocate(self, device: str | torch.device) -> dict[str, torch.Tensor]:
        """One persistent buffer per I/O tensor; their addresses are bound once."""
        return {
            s.name: torch.empty(s.shape, dtype=TORCH_DTYPES[s.dtype], device=device)
            for s in (*self.inputs, *self.outputs)
        }

    def stage_inputs(self, buffers: dict[str, torch.Tensor], arrays: Sequence[np.ndarray]) -> None:
        """Copy host arrays (images, input_ids, attention_mask) into the bound buffers.

        Converts dtype on the way (e.g. int64 ids into an int32 engine input, float32 images
        into an fp16 one), after checking the shapes: a wrong shape would otherwise be read as
        garbage by the engine.
        """
        for spec, array in zip(self.inputs, arrays):
            if tuple(array.shape) != spec.shape:
                raise ValueError(f"{spec.name} must have shape {spec.shape}, got {tuple(array.shape)}")
            buffers[spec.name].copy_(torch.from_numpy(np.ascontiguousarray(array)), non_blocking=True)


def io_specs_from_onnx(model) -> list[TensorSpec]:
    """I/O specs of an ONNX graph (what the engine built from it will expose)."""
    from onnx import helper

    def spec(vi, is_input: bool) -> TensorSpec:
        t = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        dtype = "bfloat16" if t.elem_type == 16 else str(np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type)))
        return TensorSpec(vi.name, is_input, shape, dtype)

    initializers = {i.name for i in model.graph.initializer}
    return [spec(v, True) for v in model.graph.input if v.name not in initializers] + [
        spec(v, False) for v in model.graph.output
    ]


def io_specs_from_engine(engine, trt) -> list[TensorSpec]:
    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        dtype_name = str(engine.get_tensor_dtype(name)).split(".")[-1]
        if dtype_name not in TRT_DTYPE_NAMES:
            raise ValueError(f"engine tensor {name!r} has TensorRT dtype {dtype_name}, which this backend cannot bind")
        specs.append(TensorSpec(name, is_input, tuple(engine.get_tensor_shape(name)), TRT_DTYPE_NAMES[dtype_name]))
    return specs


# ---- engine cache --------------------------------------------------------------------------------
def engine_cache_key(
    onnx_sha256: str,
    tensorrt_version: str,
    gpu_name: str,
    compute_capability: tuple[int, int],
    precision: str,
    input_shapes: Mapping[str, Sequence[int]],
) -> str:
    """Hex key of an engine: any change of model, TensorRT, GPU, precision or shapes misses."""
    return key_digest(
        {
            "onnx": onnx_sha256,
            "tensorrt": tensorrt_version,
            "gpu": gpu_name,
            "sm": list(compute_capability),
            "precision": precision,
            "shapes": {k: list(v) for k, v in sorted(input_shapes.items())},
        }
    )


def engine_cache_path(cache_dir: str | os.PathLike, key: str, precision: str, batch_size: int) -> Path:
    return Path(cache_dir) / "tensorrt" / f"coupalign-{precision}-b{batch_size}-{key[:20]}.engine"


def network_creation_flags(trt) -> int:
    """STRONGLY_TYPED where the flag exists (TensorRT 10: opt in; 11: accepted and always on)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)


def build_engine(
    onnx_path: str | os.PathLike,
    *,
    workspace_bytes: int = 4 << 30,
    timing_cache_path: Optional[str | os.PathLike] = None,
    trt: Any = None,
) -> bytes:
    """Serialized engine of a (precision-prepared) ONNX file; updates the timing cache file."""
    trt = trt or require_tensorrt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(network_creation_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    timing_bytes = b""
    if timing_cache_path is not None and Path(timing_cache_path).is_file():
        timing_bytes = Path(timing_cache_path).read_bytes()
    cache = config.create_timing_cache(timing_bytes)
    # ignore_mismatch=False: a cache from another GPU or TensorRT version is not reused.
    config.set_timing_cache(cache, False)
    log.info("building a TensorRT %s engine from %s (minutes on first build)", trt.__version__, onnx_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine from {onnx_path}; its log above says why")
    if timing_cache_path is not None:
        atomic_write_bytes(timing_cache_path, bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def gpu_identity(device_id: int = 0) -> tuple[str, tuple[int, int]]:
    props = torch.cuda.get_device_properties(device_id)
    return props.name, (props.major, props.minor)


class TensorRTBackend(InferenceBackend):
    """Runs a TensorRT engine built from an exported CoupAlign ONNX (or a given engine file).

    ``onnx_path`` is the fp32 export; for fp16/bf16 it is converted first
    (``export.cached_low_precision_onnx``). ``engine_path`` loads a prebuilt engine instead
    (``coupalign export --format tensorrt``); it must come from the same TensorRT and GPU.
    """

    name = "tensorrt"

    def __init__(
        self,
        onnx_path: Optional[str | os.PathLike] = None,
        *,
        engine_path: Optional[str | os.PathLike] = None,
        precision: str = "fp16",
        device: str = "cuda",
        device_id: int = 0,
        cache_dir: Optional[str | os.PathLike] = None,
        workspace_gb: float = 4.0,
    ):
        self.precision = check_precision(precision)
        if device != "cuda":
            raise ValueError(f"the tensorrt backend runs on device='cuda' only, got {device!r}")
        if (onnx_path is None) == (engine_path is None):
            raise ValueError("give exactly one of onnx_path (build or reuse a cached engine) and engine_path")
        trt = require_tensorrt_and_cuda()
        self.device = device
        self._device = torch.device("cuda", device_id)
        self._trt = trt
        self.cache_dir = Path(cache_dir or default_cache_dir())
        if engine_path is None:
            engine_path = self.ensure_engine(onnx_path, precision, device_id, workspace_gb)
        self.engine_path = Path(engine_path)
        if not self.engine_path.is_file():
            raise FileNotFoundError(f"TensorRT engine {self.engine_path} does not exist")

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(self._device):
            self.engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
            if self.engine is None:
                raise RuntimeError(
                    f"TensorRT {trt.__version__} could not load {self.engine_path}: engines only run on "
                    "the TensorRT version and GPU architecture that built them; rebuild it"
                )
            self.context = self.engine.create_execution_context()
            self.plan = BindingPlan.from_specs(io_specs_from_engine(self.engine, trt))
            self.buffers = self.plan.allocate(self._device)
            for spec in self.plan.inputs:
                self.context.set_input_shape(spec.name, spec.shape)
            for name, tensor in self.buffers.items():
                self.context.set_tensor_address(name, tensor.data_ptr())
            self.stream = torch.cuda.Stream(self._device)
        self.batch_size = self.plan.batch_size
        self.image_size = self.plan.image_size
        self.max_tokens = self.plan.max_tokens
        self.has_presence_head = self.plan.has_presence_head

    def ensure_engine(self, onnx_path, precision: str, device_id: int, workspace_gb: float) -> Path:
        """The cached engine for this ONNX, precision, TensorRT and GPU; built on a miss."""
        import onnx

        from ..export import cached_low_precision_onnx

        prepared = cached_low_precision_onnx(onnx_path, precision, self.cache_dir)
        shapes = BindingPlan.from_specs(io_specs_from_onnx(onnx.load(str(prepared), load_external_data=False)))
        gpu, sm = gpu_identity(device_id)
        key = engine_cache_key(sha256_file(prepared), self._trt.__version__, gpu, sm, precision, shapes.input_shapes())
        path = engine_cache_path(self.cache_dir, key, precision, shapes.batch_size)
        if path.is_file():
            log.info("using cached TensorRT engine %s", path)
            return path
        timing = self.cache_dir / "tensorrt" / f"timing-{self._trt.__version__}-sm{sm[0]}{sm[1]}.cache"
        with torch.cuda.device(device_id):
            data = build_engine(prepared, workspace_bytes=int(workspace_gb * (1 << 30)), timing_cache_path=timing,
                                trt=self._trt)
        atomic_write_bytes(path, data)
        log.info("cached TensorRT engine %s (%.1f MB)", path, len(data) / 1e6)
        return path

    def describe(self) -> str:
        gpu = torch.cuda.get_device_name(self._device)
        return f"tensorrt {self._trt.__version__} on {gpu}, {self.precision}, batch {self.batch_size}"

    def __call__(
        self, images: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> BackendOutput:
        self.check_inputs(images, input_ids, attention_mask)
        with torch.cuda.stream(self.stream):
            self.plan.stage_inputs(self.buffers, (images, input_ids, attention_mask))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed; its log above says why")
            logits = self.buffers[LOGITS].float().cpu()
            presence = self.buffers[PRESENCE_LOGITS].float().cpu() if self.has_presence_head else None
        self.stream.synchronize()
        return BackendOutput(
            logits=logits.numpy(), presence_logits=None if presence is None else presence.numpy()
        )


def export_engine(
    onnx_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    precision: str = "fp16",
    cache_dir: Optional[str | os.PathLike] = None,
    workspace_gb: float = 4.0,
    device_id: int = 0,
) -> Path:
    """Build (or take from the cache) the engine of an fp32 export and copy it to ``out_path``.

    Writes ``<out_path>.json`` beside it: the ONNX's CoupAlign metadata plus the engine's
    precision and TensorRT version, which ``Segmenter.from_engine`` reads.
    """
    import json
    import shutil

    import onnx

    backend = TensorRTBackend(onnx_path, precision=precision, cache_dir=cache_dir, workspace_gb=workspace_gb,
                              device_id=device_id)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(backend.engine_path, out_path)
    props = {p.key: p.value for p in onnx.load(str(onnx_path), load_external_data=False).metadata_props}
    props.update({
        "coupalign.engine_precision": precision,
        "coupalign.tensorrt_version": backend._trt.__version__,
        "coupalign.gpu": torch.cuda.get_device_name(device_id),
    })
    atomic_write_bytes(out_path.with_name(out_path.name + ".json"), json.dumps(props).encode())
    return out_path
