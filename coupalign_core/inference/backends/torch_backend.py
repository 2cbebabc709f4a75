"""PyTorch backend: eager or ``torch.compile``d, CPU or CUDA, fp32 / fp16 / bf16."""

from __future__ import annotations

import contextlib
import copy
import logging
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ...model.modeling import CoupAlign
from ..graph import InferenceGraph
from ..options import PRECISION_MODES
from .base import BackendOutput, InferenceBackend, check_precision

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def cuda_required_error(what: str) -> RuntimeError:
    return RuntimeError(
        f"{what} needs an NVIDIA GPU with CUDA, but torch.cuda.is_available() is False "
        f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); install a CUDA build of "
        "torch (https://pytorch.org/get-started/locally/) on a machine with a GPU and driver, "
        "or use device='cpu'"
    )


def set_torch_threads(num_threads: int) -> None:
    """torch's intra-op threads, for the whole process (torch has no per-model setting): logged,
    because it changes every other torch user in the process too."""
    if torch.get_num_threads() != num_threads:
        log.info("torch.set_num_threads(%d) (was %d): process-wide", num_threads, torch.get_num_threads())
        torch.set_num_threads(num_threads)


class TorchBackend(InferenceBackend):
    """Runs the model itself.

    precision: ``fp32``; ``fp16``/``bf16`` either under autocast (``precision_mode="autocast"``:
    LayerNorm, softmax and reductions stay fp32, the safe default) or with the weights cast
    (``"cast"``: a half-precision copy of the model, every op in half precision, fewer casts,
    faster at batch 1 on a GPU). The fp32 model itself is moved to ``device`` (like ``.to``).
    ``compile=True`` wraps the graph in ``torch.compile(mode=compile_mode)``; the first call
    then compiles (tens of seconds to minutes). ``num_threads`` on the CPU sets torch's
    intra-op threads, which are process-wide (:func:`set_torch_threads`); None leaves them.
    """

    name = "torch"

    def __init__(
        self,
        model: CoupAlign,
        device: str = "cpu",
        precision: str = "fp32",
        precision_mode: str = "autocast",
        compile: bool = False,
        compile_mode: Optional[str] = None,
        num_threads: Optional[int] = None,
    ):
        self.precision = check_precision(precision)
        if precision not in _DTYPES:
            raise ValueError(f"the torch backend runs {', '.join(_DTYPES)}; {precision} runs on backend "
                             "'onnxruntime' on the CPU")
        if precision_mode not in PRECISION_MODES:
            raise ValueError(f"precision_mode must be one of {PRECISION_MODES}, got {precision_mode!r}")
        if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise cuda_required_error("the torch backend on device='cuda'")
        self.device = device
        self._torch_device = torch.device(device)
        if num_threads is not None and device == "cpu":
            set_torch_threads(num_threads)
        self.precision_mode = precision_mode
        self.image_size = int(model.config.image_size)
        self.max_tokens = int(model.config.max_tokens)
        self.batch_size = None
        self._dtype = _DTYPES[precision]
        if precision != "fp32" and precision_mode == "cast":
            # A half-precision copy: casting in place would change the caller's model.
            model = copy.deepcopy(model).to(self._torch_device, self._dtype)
        model = model.eval().to(self._torch_device)
        graph = InferenceGraph(model)
        self.has_presence_head = graph.has_presence_head
        self.compiled = compile
        # images, input_ids, attention_mask -> (logits, [presence_logits])
        self.graph: Callable[..., Sequence[torch.Tensor]] = (
            torch.compile(graph, mode=compile_mode) if compile else graph
        )
        # Images go in as the weights' dtype when the weights were cast; autocast handles the rest.
        self._input_dtype = self._dtype if precision_mode == "cast" else torch.float32

    def describe(self) -> str:
        mode = f" ({self.precision_mode})" if self.precision != "fp32" else ""
        compiled = ", torch.compile" if self.compiled else ", eager"
        threads = f", {torch.get_num_threads()} threads" if self.device == "cpu" else ""
        return f"torch on {self.device}, {self.precision}{mode}{compiled}{threads}"

    def _autocast(self):
        if self.precision == "fp32" or self.precision_mode == "cast":
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._torch_device.type, dtype=self._dtype)

    def __call__(
        self, images: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray
    ) -> BackendOutput:
        self.check_inputs(images, input_ids, attention_mask)
        dev = self._torch_device
        non_blocking = dev.type == "cuda"
        with torch.inference_mode(), self._autocast():
            x = torch.from_numpy(images).to(dev, dtype=self._input_dtype, non_blocking=non_blocking)
            ids = torch.from_numpy(input_ids).to(dev, non_blocking=non_blocking)
            mask = torch.from_numpy(attention_mask).to(dev, non_blocking=non_blocking)
            outs = self.graph(x, ids, mask)
            logits = outs[0].float().cpu().numpy()  # (B,1,S,S); .cpu() synchronises
            presence = outs[1].float().cpu().numpy() if len(outs) > 1 else None  # (B,)
        return BackendOutput(logits=logits, presence_logits=presence)
