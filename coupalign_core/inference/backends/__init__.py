"""Inference backends (torch, onnxruntime, tensorrt) and the ``backend="auto"`` choice.

Each backend lives in its own module and imports its runtime lazily, so a machine without
TensorRT (or without onnxruntime) can still use the others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..options import BACKENDS, DEVICES, PRECISIONS
from .base import BackendOutput, InferenceBackend, check_precision


@dataclass(frozen=True)
class Environment:
    """What this machine offers, probed once (``probe_environment``) or given by a test."""

    has_cuda: bool
    has_tensorrt: bool
    ort_providers: tuple[str, ...]


def probe_environment() -> Environment:
    import torch

    from .onnxruntime_backend import available_providers
    from .tensorrt_backend import tensorrt_available

    return Environment(
        has_cuda=torch.cuda.is_available(),
        has_tensorrt=tensorrt_available(),
        ort_providers=tuple(available_providers()),
    )


def choose_backend(
    device: Optional[str], precision: str, env: Environment, allow_torch: bool = True
) -> tuple[str, str, str]:
    """``backend="auto"``: returns ``(backend, device, reason)``.

    Order: TensorRT, then onnxruntime CUDA, then torch CUDA, then onnxruntime CPU (fp32) or
    torch CPU (fp16/bf16, which onnxruntime's CPU provider does not run). ``device=None`` means
    the GPU when there is one. ``allow_torch=False`` (an .onnx file without the torch model)
    leaves torch out of the chain.
    """
    check_precision(precision)
    if device not in (None, *DEVICES):
        raise ValueError(f"device must be one of {DEVICES} or None, got {device!r}")
    if precision == "int8":
        if device == "cuda" or "CPUExecutionProvider" not in env.ort_providers:
            raise RuntimeError("precision int8 runs on onnxruntime's CPU kernels only: use device='cpu' "
                               f"with onnxruntime installed (providers here: {list(env.ort_providers)})")
        return "onnxruntime", "cpu", "int8 runs on onnxruntime's CPU kernels"
    if device == "cuda" and not env.has_cuda:
        raise RuntimeError(
            "device='cuda' was asked for but torch sees no CUDA GPU; install a CUDA build of torch "
            "on a machine with an NVIDIA GPU and driver, or use device='cpu'"
        )
    if device != "cpu" and env.has_cuda:
        if env.has_tensorrt:
            return "tensorrt", "cuda", "TensorRT and a CUDA GPU are available"
        if "CUDAExecutionProvider" in env.ort_providers and precision in ("fp32", "fp16"):
            return "onnxruntime", "cuda", "no TensorRT; onnxruntime has the CUDA execution provider"
        if not allow_torch:
            raise RuntimeError(
                "an ONNX file on the GPU needs TensorRT or onnxruntime-gpu (fp32/fp16), neither of "
                f"which is usable here (onnxruntime providers: {list(env.ort_providers)}); install "
                "one, or run the checkpoint with backend='torch'"
            )
        why = "no TensorRT" + (
            "; onnxruntime's CUDA provider does not run bf16" if "CUDAExecutionProvider" in env.ort_providers
            else " and no onnxruntime CUDA provider (onnxruntime-gpu)"
        )
        return "torch", "cuda", f"{why}; torch sees a CUDA GPU"
    where = "device='cpu' was asked for" if device == "cpu" else "no CUDA GPU"
    if precision == "fp32" and "CPUExecutionProvider" in env.ort_providers:
        return "onnxruntime", "cpu", f"{where}; onnxruntime is the fastest CPU backend for fp32"
    if not allow_torch:
        raise RuntimeError(
            f"{where}, and an ONNX file on the CPU runs in onnxruntime fp32 only (asked: {precision}, "
            f"onnxruntime providers: {list(env.ort_providers)}); use precision='fp32' with "
            "`pip install onnxruntime`, or run the checkpoint with backend='torch'"
        )
    if precision != "fp32":
        return "torch", "cpu", f"{where}; {precision} on the CPU runs under torch autocast"
    return "torch", "cpu", f"{where}; onnxruntime is not installed"


__all__ = [
    "BACKENDS", "DEVICES", "PRECISIONS", "BackendOutput", "Environment", "InferenceBackend",
    "check_precision", "choose_backend", "probe_environment",
]
