"""ONNX Runtime backend: CPU or CUDA execution provider, on an exported fixed-shape graph."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ..graph import INPUT_NAMES, LOGITS, PRESENCE_LOGITS
from ..options import CPU_PROVIDERS, DEVICES
from .base import BackendOutput, InferenceBackend, check_precision

log = logging.getLogger(__name__)

_OPT_LEVELS = ("disable", "basic", "extended", "all")


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - pinned in requirements.txt
        raise RuntimeError(
            "the onnxruntime backend needs the onnxruntime package: `pip install onnxruntime` "
            "(CPU) or `pip install onnxruntime-gpu` (CUDA)"
        ) from e
    return ort


def available_providers() -> list[str]:
    try:
        return list(_import_ort().get_available_providers())
    except RuntimeError:
        return []


def resolve_cpu_provider(choice: str = "auto") -> str:
    """Which onnxruntime provider runs a CPU session: ``"openvino"`` (Intel's OpenVINO kernels,
    in the onnxruntime-openvino package that requirements.txt installs on x86-64 Linux) or
    ``"cpu"`` (onnxruntime's own). ``"auto"``: OpenVINO when this onnxruntime has it."""
    if choice not in CPU_PROVIDERS:
        raise ValueError(f"cpu_provider must be one of {CPU_PROVIDERS}, got {choice!r}")
    has_openvino = "OpenVINOExecutionProvider" in available_providers()
    if choice == "openvino" and not has_openvino:
        raise RuntimeError(
            "cpu_provider='openvino' needs onnxruntime's OpenVINO execution provider: "
            "`pip uninstall onnxruntime && pip install onnxruntime-openvino` (x86-64 Linux or "
            f"Windows), or use cpu_provider='cpu' (providers here: {available_providers()})"
        )
    if choice == "auto":
        return "openvino" if has_openvino else "cpu"
    return choice


def default_num_threads() -> int:
    """Cores this process may use: ORT's own default counts every core of the machine."""
    from ...machine import usable_cores

    return usable_cores()


class OnnxRuntimeBackend(InferenceBackend):
    """Runs an exported CoupAlign ONNX graph (see ``coupalign_core.inference.export``).

    Thread spinning is off by default (``allow_spinning=False``): a spinning ORT pool keeps its
    cores busy between calls, which slows torch in the same process and starves a ROS executor
    (docs/benchmarks.md). ``num_threads`` defaults to the cores this process may run on.
    ``precision`` says what the graph computes in: an fp16 graph comes from
    ``onnx_precision.convert_float_precision`` (the caller prepares it; see the Segmenter).

    On the CPU, an fp32 graph runs on OpenVINO's execution provider when onnxruntime has it
    (``cpu_provider="auto"``; see :func:`resolve_cpu_provider`), pinned to FP32 inference (on CPUs
    with bf16 units OpenVINO would otherwise be free to compute in bf16) and to ``num_threads``
    threads. OpenVINO reads only standard ONNX: give it the portable export, not the copy with
    onnxruntime's contrib-op fusions (``export.cached_onnxruntime_fused_onnx``), which is for the
    ``"cpu"`` provider. Other precisions always use the ``"cpu"`` provider.
    """

    name = "onnxruntime"

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        device: str = "cpu",
        num_threads: Optional[int] = None,
        inter_op_threads: int = 1,
        allow_spinning: bool = False,
        graph_optimization: str = "all",
        precision: str = "fp32",
        device_id: int = 0,
        dynamic_block_base: int = 4,
        cpu_provider: str = "auto",
    ):
        ort = _import_ort()
        self.onnx_path = Path(onnx_path)
        if not self.onnx_path.is_file():
            raise FileNotFoundError(f"ONNX file {self.onnx_path} does not exist")
        if device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
        if graph_optimization not in _OPT_LEVELS:
            raise ValueError(f"graph_optimization must be one of {_OPT_LEVELS}, got {graph_optimization!r}")
        self.precision = check_precision(precision)
        self.device = device
        self.num_threads = int(num_threads) if num_threads else default_num_threads()
        self.allow_spinning = allow_spinning

        so = self._session_options(ort, inter_op_threads, graph_optimization, dynamic_block_base)
        providers = self._providers(ort, device_id, cpu_provider)
        self.session = ort.InferenceSession(str(self.onnx_path), sess_options=so, providers=providers)
        if device == "cuda" and self.session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(
                f"onnxruntime could not start the CUDA execution provider (active: "
                f"{self.session.get_providers()}); check the CUDA/cuDNN libraries onnxruntime-gpu needs"
            )
        self._read_graph_signature()

    def _session_options(self, ort: Any, inter_op_threads: int, graph_optimization: str,
                         dynamic_block_base: int) -> Any:
        """Threads, spinning, work blocks and graph optimisation level of the session."""
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.num_threads
        so.inter_op_num_threads = max(1, int(inter_op_threads))
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        spin = "1" if self.allow_spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        if dynamic_block_base > 0:
            # Hand out an operator's work in shrinking blocks instead of one even split: without
            # spinning, a woken thread starts late, and this lets the other take up its share
            # (docs/benchmarks.md).
            so.add_session_config_entry("session.dynamic_block_base", str(int(dynamic_block_base)))
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise
        return so

    def _providers(self, ort: Any, device_id: int, cpu_provider: str) -> list[str | tuple[str, dict[str, Any]]]:
        """The execution providers in order of preference; sets ``self.provider``."""
        if self.device == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise RuntimeError(
                    "onnxruntime on device='cuda' needs the CUDA execution provider, which this "
                    f"onnxruntime {ort.__version__} lacks (providers: {ort.get_available_providers()}); "
                    "`pip uninstall onnxruntime && pip install onnxruntime-gpu` on a machine with "
                    "CUDA 12 and cuDNN 9, or use device='cpu'"
                )
            self.provider = "cuda"
            return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
        self.provider = resolve_cpu_provider(cpu_provider) if self.precision == "fp32" else "cpu"
        if self.provider == "openvino":
            ov_options = {"device_type": "CPU", "precision": "FP32", "num_of_threads": str(self.num_threads)}
            return [("OpenVINOExecutionProvider", ov_options), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _read_graph_signature(self) -> None:
        """Batch, image size, tokens and outputs from the session; ValueError if not a CoupAlign graph."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in INPUT_NAMES if n not in inputs]
        if missing:
            raise ValueError(f"{self.onnx_path} is not a CoupAlign graph: it lacks the inputs {missing}")
        shape = inputs["images"].shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise ValueError(f"{self.onnx_path} has images of shape {shape}; only the batch may be dynamic")
        # a symbolic batch ("batch"): any batch runs in one call
        self.batch_size = int(shape[0]) if isinstance(shape[0], int) else None
        self.image_size = int(shape[2])
        self.max_tokens = int(inputs["input_ids"].shape[1])
        outputs = [o.name for o in self.session.get_outputs()]
        if LOGITS not in outputs:
            raise ValueError(f"{self.onnx_path} is not a CoupAlign graph: outputs {outputs} lack {LOGITS!r}")
        self.has_presence_head = PRESENCE_LOGITS in outputs
        self._output_names = [LOGITS, PRESENCE_LOGITS] if self.has_presence_head else [LOGITS]

    @property
    def metadata(self) -> dict[str, str]:
        """The graph's ``metadata_props`` (model config and tokenizer, see export.py)."""
        return dict(self.session.get_modelmeta().custom_metadata_map)

    def describe(self) -> str:
        spin = "spinning" if self.allow_spinning else "no spinning"
        return (
            f"onnxruntime {self.session.get_providers()[0]}, {self.precision}, "
            f"batch {'any' if self.batch_size is None else self.batch_size}, "
            f"{self.num_threads} threads, {spin}"
        )

    def __call__(
        self, images: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> BackendOutput:
        self.check_inputs(images, input_ids, attention_mask)
        feeds = {
            "images": np.ascontiguousarray(images, dtype=np.float32),
            "input_ids": np.ascontiguousarray(input_ids, dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask, dtype=np.int64),
        }
        outs = self.session.run(self._output_names, feeds)
        logits = np.asarray(outs[0], dtype=np.float32)  # (B,1,S,S)
        presence = np.asarray(outs[1], dtype=np.float32) if self.has_presence_head else None  # (B,)
        return BackendOutput(logits=logits, presence_logits=presence)
