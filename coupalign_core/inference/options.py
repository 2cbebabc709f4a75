"""What a Segmenter is built with, as data: one typed, validated options object.

    options = SegmenterOptions(backend="onnxruntime", device="cpu", threshold=0.6, num_threads=2)
    seg = Segmenter.from_checkpoint("model.pt", options)
    seg = Segmenter.from_checkpoint("model.pt", backend="torch", threshold=0.6)  # same fields as keywords

This module also owns the value sets the options accept (backends, devices, precisions, CPU
providers, ...): the backends, the CLI verbs and the ROS node's parameters import them from here,
so one list says what exists.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
import re
from dataclasses import dataclass
from typing import Any, Optional

BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
DEVICES = ("cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # int8: onnxruntime on the CPU only (inference/quantize.py)
CPU_PROVIDERS = ("auto", "openvino", "cpu")  # onnxruntime on the CPU
PRECISION_MODES = ("autocast", "cast")  # torch fp16/bf16
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile
EXPORTERS = ("dynamo", "legacy")  # torch.onnx
DEFAULT_OPSET = 18

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_threshold(value: object, name: str = "threshold") -> float:
    """``value`` as a float in [0, 1], or ValueError naming ``name`` (NaN and bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number in [0, 1], got {type(value).__name__} {value!r}")
    number = float(value)
    if not 0.0 <= number <= 1.0:  # also False for NaN
        raise ValueError(f"{name} must be in [0, 1], got {number}")
    return number


def _check_open_unit(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 < float(value) < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {type(value).__name__} {value!r}")
    return float(value)


def _check_choice(name: str, value: object, choices: tuple[str, ...], optional: bool = False) -> None:
    if optional and value is None:
        return
    if value not in choices:
        also = " or None" if optional else ""
        raise ValueError(f"{name} must be one of {choices}{also}, got {value!r}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {type(value).__name__} {value!r}")


def _check_positive_int(name: str, value: object, optional: bool = False) -> Optional[int]:
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 1:
        also = " or None" if optional else ""
        raise ValueError(f"{name} must be an integer >= 1{also}, got {type(value).__name__} {value!r}")
    return int(value)


@dataclass(frozen=True)
class SegmenterOptions:
    """How a :class:`~coupalign_core.inference.Segmenter` runs and decides.

    Every field has a default, so ``SegmenterOptions()`` is the usual choice (the fastest backend
    here, fp32, threshold 0.5). Fields are checked when the object is made; a bad value raises
    ValueError naming the field. Not every field applies to every model file: the backend
    fields of a checkpoint do not apply to a prebuilt TensorRT engine, and the Segmenter says
    which ones it cannot honour instead of ignoring them.

    Args:
        backend (`str`, *optional*, defaults to `"auto"`):
            `"torch"`, `"onnxruntime"`, `"tensorrt"`, or `"auto"`: TensorRT, then onnxruntime
            CUDA, then torch CUDA; on the CPU in fp32 a short timed probe of torch eager and
            onnxruntime (its own kernels and OpenVINO's, 1 thread and all usable cores) on first
            use, cached per machine, model and library versions (`inference/probe.py`). The
            choice and its reason are logged.
        device (`str`, *optional*):
            `"cpu"` or `"cuda"`; None uses the GPU when the backend can use one here.
        precision (`str`, *optional*):
            `"fp32"`, `"fp16"` or `"bf16"`. None means fp32, except for an `.onnx` exported in
            half precision or a TensorRT engine, which run in the precision they were made for.
        threshold (`float`, *optional*, defaults to 0.5):
            Score in [0, 1] at or above which the referred object counts as found. The one place
            that decides `found`: the ROS pipeline and node read the result, they never re-decide.
        mask_threshold (`float`, *optional*, defaults to 0.5):
            Probability in (0, 1) above which a pixel is foreground.
        clear_mask_if_not_found (`bool`, *optional*, defaults to `True`):
            Clear the mask (and box) when the object is not found, so a robot never acts on the
            mask of an object the model says is absent. False keeps it, for inspection.
        num_threads (`int`, *optional*):
            onnxruntime intra-op threads, or torch's on the CPU (process-wide); None: onnxruntime
            uses the cores this process may run on and torch keeps its setting, except that
            `backend="auto"` on the CPU lets its probe choose between 1 and all usable cores.
        cpu_provider (`str`, *optional*, defaults to `"auto"`):
            onnxruntime's provider on the CPU: `"openvino"` (Intel's kernels), `"cpu"`
            (onnxruntime's own) or `"auto"` (OpenVINO when installed).
        compile (`bool`, *optional*, defaults to `False`):
            torch backend: wrap the model in `torch.compile` (the first call then compiles).
        compile_mode (`str`, *optional*):
            torch backend: the `torch.compile` mode (one of `COMPILE_MODES`); None is torch's default.
        precision_mode (`str`, *optional*, defaults to `"autocast"`):
            torch backend in fp16/bf16: `"autocast"` (LayerNorm, softmax and reductions stay
            fp32, the safe default) or `"cast"` (a half-precision copy of the weights).
        batch_size (`int`, *optional*, defaults to 1):
            The fixed batch of an exported graph (onnxruntime, TensorRT); `Segmenter.batch` runs
            chunks of it. The torch backend runs any batch.
        dynamic_batch (`bool`, *optional*, defaults to `False`):
            onnxruntime: export the graph with a symbolic batch, so `Segmenter.batch` runs all its
            frames in one call (several cameras); `batch_size` is then unused. Not for TensorRT.
        opset (`int`, *optional*, defaults to `DEFAULT_OPSET`):
            ONNX opset of the on-the-fly export of a checkpoint.
        exporter (`str`, *optional*, defaults to `"dynamo"`):
            `torch.onnx` exporter of the on-the-fly export: `"dynamo"` or `"legacy"`.
        cache_dir (`str` or `os.PathLike`, *optional*):
            Where exports and engines are cached; None is `$COUPALIGN_CACHE_DIR` or
            `~/.cache/coupalign`.
        workspace_gb (`float`, *optional*, defaults to 4.0):
            GPU memory the TensorRT builder may use while building an engine.
        model_sha256 (`str`, *optional*):
            The weights' SHA-256 (64 lowercase hex digits) keying the export cache, when the
            caller already has it; computed from the weights otherwise.
    """

    backend: str = "auto"
    device: Optional[str] = None
    precision: Optional[str] = None
    threshold: float = 0.5
    mask_threshold: float = 0.5
    clear_mask_if_not_found: bool = True
    num_threads: Optional[int] = None
    cpu_provider: str = "auto"
    compile: bool = False
    compile_mode: Optional[str] = None
    precision_mode: str = "autocast"
    batch_size: int = 1
    dynamic_batch: bool = False
    opset: int = DEFAULT_OPSET
    exporter: str = "dynamo"
    cache_dir: Optional[str | os.PathLike[str]] = None
    workspace_gb: float = 4.0
    model_sha256: Optional[str] = None

    def __post_init__(self) -> None:
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("device", self.device, DEVICES, optional=True)
        _check_choice("precision", self.precision, PRECISIONS, optional=True)
        self._set("threshold", check_threshold(self.threshold, "threshold"))
        self._set("mask_threshold", _check_open_unit("mask_threshold", self.mask_threshold))
        _check_bool("clear_mask_if_not_found", self.clear_mask_if_not_found)
        self._set("num_threads", _check_positive_int("num_threads", self.num_threads, optional=True))
        _check_choice("cpu_provider", self.cpu_provider, CPU_PROVIDERS)
        _check_bool("compile", self.compile)
        _check_choice("compile_mode", self.compile_mode, COMPILE_MODES, optional=True)
        _check_choice("precision_mode", self.precision_mode, PRECISION_MODES)
        self._set("batch_size", _check_positive_int("batch_size", self.batch_size))
        _check_bool("dynamic_batch", self.dynamic_batch)
        if self.dynamic_batch and self.exporter != "dynamo":
            raise ValueError("dynamic_batch needs exporter 'dynamo' (the legacy exporter bakes the attention reshapes)")
        self._set("opset", _check_positive_int("opset", self.opset))
        _check_choice("exporter", self.exporter, EXPORTERS)
        if self.cache_dir is not None and not isinstance(self.cache_dir, (str, os.PathLike)):
            raise ValueError(f"cache_dir must be a path or None, got {type(self.cache_dir).__name__}")
        workspace = self.workspace_gb
        if isinstance(workspace, bool) or not isinstance(workspace, numbers.Real) or not math.isfinite(workspace) \
                or workspace <= 0:
            raise ValueError(f"workspace_gb must be a positive number of GiB, got {workspace!r}")
        self._set("workspace_gb", float(workspace))
        sha = self.model_sha256
        if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
            raise ValueError(f"model_sha256 must be 64 lowercase hex digits or None, got {self.model_sha256!r}")

    def _set(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)  # normalising a frozen field (an int threshold -> float)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **overrides: Any) -> "SegmenterOptions":
        """A copy with ``overrides`` applied (validated); TypeError names a field that does not exist."""
        unknown = sorted(set(overrides) - set(self.field_names()))
        if unknown:
            raise TypeError(
                f"unknown Segmenter option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                f"the options are: {', '.join(self.field_names())}"
            )
        return dataclasses.replace(self, **overrides)

    def changed_fields(self) -> tuple[str, ...]:
        """Names of the fields that differ from their defaults."""
        default = SegmenterOptions()
        return tuple(name for name in self.field_names() if getattr(self, name) != getattr(default, name))

    def check_applies(self, allowed: frozenset[str], source: str) -> None:
        """ValueError naming every changed field that ``source`` (e.g. "a TensorRT engine") cannot honour."""
        extra = [name for name in self.changed_fields() if name not in allowed]
        if extra:
            verb = "does" if len(extra) == 1 else "do"
            raise ValueError(f"option{'s' if len(extra) > 1 else ''} {', '.join(extra)} {verb} not apply to {source}")


def resolve_options(options: Optional[SegmenterOptions], overrides: dict[str, Any]) -> SegmenterOptions:
    """``options`` (default: ``SegmenterOptions()``) with keyword ``overrides`` applied."""
    if options is None:
        options = SegmenterOptions()
    elif not isinstance(options, SegmenterOptions):
        raise TypeError(
            f"options must be a SegmenterOptions, got {type(options).__name__} {options!r}; pass single "
            "fields as keywords (backend='torch', threshold=0.6)"
        )
    return options.replace(**overrides) if overrides else options
