"""The Segmenter: one image and one sentence in, a mask, a score and a box out.

This is the product's contract (the ROS node and the bag tools call it)::

    seg = Segmenter.from_checkpoint("model.pt", backend="auto")
    result = seg(image_rgb_uint8, "the red cup on the left")
    result.mask   # (H, W) bool at the input image's size
    result.score  # [0, 1]: presence_score (sigmoid of the presence head, or mask confidence)
    result.found  # score >= threshold, a non-empty mask, and a command the gate accepts
    result.reason # why found is False when the score alone does not say ("" otherwise)
    result.bbox   # (x0, y0, x1, y1), x1/y1 exclusive, or None
    result.timings  # ms: preprocess, inference, postprocess, total

Pre-processing is the training pipeline's own ``preprocess_image`` (square resize + ImageNet
normalisation) and the checkpoint's tokenizer. Post-processing upsamples the S×S logits to the
image size with OpenCV's bilinear resize (the same half-pixel sampling as torch's
``interpolate(mode="bilinear", align_corners=False)``, several times cheaper at 640×480 than
a torch resize), then thresholds. When ``found`` is False the mask is cleared and ``bbox`` is
None (``clear_mask_if_not_found``): a robot must not act on the mask of an object the model
says is absent. ``found`` never comes with an empty mask.

The grounding-vocabulary gate (``grounding_vocabulary``: the words the model was trained on,
read from the checkpoint) reports a command with no word the model can ground, or with words it
was never trained on, as not found with score 0 and a ``reason``, whatever the model's score
(docs/inference.md, "Presence").
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch

from ..data.transforms import preprocess_image
from ..model.modeling import presence_score
from .backends import BACKENDS, InferenceBackend, check_precision, choose_backend, probe_environment
from .export import (
    DEFAULT_OPSET, OnnxModelInfo, cached_low_precision_onnx, cached_onnx, cached_onnxruntime_fused_onnx, read_onnx_info,
)
from .grounding_vocabulary import GroundingGate, gate_for_checkpoint
from .inputs import check_rgb_image

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


@dataclass
class SegmentationResult:
    mask: np.ndarray  # (H, W) bool at the input image's size
    score: float  # in [0, 1], see presence_score
    found: bool  # score >= the Segmenter's threshold
    bbox: Optional[tuple[int, int, int, int]]  # (x0, y0, x1, y1), x1/y1 exclusive; None if empty
    timings: dict[str, float] = field(default_factory=dict)  # ms: preprocess, inference, postprocess, total
    reason: str = ""  # why found is False beyond the score: the gate's verdict, or an empty mask

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly summary (the mask itself is left out)."""
        return {
            "score": self.score,
            "found": self.found,
            "bbox": list(self.bbox) if self.bbox is not None else None,
            "area": self.area,
            "height": int(self.mask.shape[0]),
            "width": int(self.mask.shape[1]),
            "timings": dict(self.timings),
            "reason": self.reason,
        }


def mask_bbox(mask: np.ndarray) -> Optional[tuple[int, int, int, int]]:
    """Tight box (x0, y0, x1, y1) of a bool mask, x1/y1 exclusive; None when the mask is empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def upsample_logits(logits: np.ndarray, height: int, width: int) -> np.ndarray:
    """(S, S) float32 logits -> (height, width), bilinear with half-pixel centres."""
    if logits.shape == (height, width):
        return logits
    return cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)


def _logit(p: float) -> float:
    if not 0.0 < p < 1.0:
        raise ValueError(f"mask_threshold must be in (0, 1), got {p}")
    return math.log(p / (1.0 - p))


class Segmenter:
    """Referring segmentation with any backend; see the module docstring for the contract.

    Build it from an in-memory model (``Segmenter(model, tokenizer, backend=...)``), from a
    checkpoint or an exported ``.onnx``/TensorRT engine (``Segmenter.from_checkpoint(path)``).

    backend: ``"auto"`` (TensorRT, onnxruntime CUDA, torch CUDA, onnxruntime CPU: the choice and
    its reason are logged), ``"torch"``, ``"onnxruntime"`` or ``"tensorrt"``. device: ``"cpu"``,
    ``"cuda"`` or None (the GPU when there is one). precision: ``"fp32"``, ``"fp16"``, ``"bf16"``.
    threshold: score at or above which ``found`` is True. mask_threshold: probability above
    which a pixel is foreground.

    Backend options: ``num_threads`` (onnxruntime intra-op threads; default the usable cores),
    ``cpu_provider`` (onnxruntime on the CPU: ``"auto"``, ``"openvino"`` or ``"cpu"``; see
    ``backends.onnxruntime_backend.resolve_cpu_provider``),
    ``compile``/``compile_mode``/``precision_mode`` (torch), ``batch_size`` (the fixed batch of
    exported graphs: ``batch()`` runs chunks of it), ``opset``/``exporter`` (the on-the-fly
    export), ``cache_dir`` (exports and engines; default ``$COUPALIGN_CACHE_DIR`` or
    ``~/.cache/coupalign``), ``workspace_gb`` (TensorRT builder memory), ``model_sha256`` (the
    weights' hash keying the export cache, when the caller already has it; computed otherwise).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        *,
        backend: str = "auto",
        device: Optional[str] = None,
        precision: str = "fp32",
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        clear_mask_if_not_found: bool = True,
        num_threads: Optional[int] = None,
        cpu_provider: str = "auto",
        compile: bool = False,
        compile_mode: Optional[str] = None,
        precision_mode: str = "autocast",
        batch_size: int = 1,
        opset: int = DEFAULT_OPSET,
        exporter: str = "dynamo",
        cache_dir: Optional[str | os.PathLike] = None,
        workspace_gb: float = 4.0,
        model_sha256: Optional[str] = None,
    ):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        check_precision(precision)
        name, device = _resolve(backend, device, precision, allow_torch=True)
        export = dict(batch_size=batch_size, opset=opset, exporter=exporter, cache_dir=cache_dir, source_sha256=model_sha256)
        impl: InferenceBackend
        if name == "torch":
            from .backends.torch_backend import TorchBackend

            impl = TorchBackend(
                model, device=device, precision=precision, precision_mode=precision_mode,
                compile=compile, compile_mode=compile_mode,
            )
        elif name == "onnxruntime":
            impl = _onnxruntime_backend(cached_onnx(model, tokenizer, **export), device, precision, num_threads,
                                        cpu_provider, cache_dir)
        else:
            from .backends.tensorrt_backend import TensorRTBackend, require_tensorrt_and_cuda

            require_tensorrt_and_cuda()  # before the export, which takes a while
            impl = TensorRTBackend(
                cached_onnx(model, tokenizer, **export), precision=precision, cache_dir=cache_dir,
                workspace_gb=workspace_gb,
            )
        self._setup(impl, tokenizer, model.config, threshold, mask_threshold, clear_mask_if_not_found)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_backend(
        cls,
        backend: InferenceBackend,
        tokenizer,
        config,
        *,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        clear_mask_if_not_found: bool = True,
    ) -> "Segmenter":
        """Wrap an already built backend (a custom one, or one shared by several Segmenters)."""
        self = cls.__new__(cls)
        self._setup(backend, tokenizer, config, threshold, mask_threshold, clear_mask_if_not_found)
        return self

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        device: Optional[str] = None,
        precision: Optional[str] = None,
        threshold: float = 0.5,
        **options: Any,
    ) -> "Segmenter":
        """From a training checkpoint (``.pt``), an exported ``.onnx`` or a TensorRT engine.

        An ``.onnx`` carries its config and tokenizer in its metadata; an engine carries them
        in the ``<engine>.json`` that ``coupalign export --format tensorrt`` writes beside it.
        ``precision`` None means fp32, or for an engine the precision it was built for.
        ``options`` are the keyword arguments of the constructor (checkpoints), ``from_onnx``
        or ``from_engine``.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.suffix in ENGINE_SUFFIXES:
            return cls.from_engine(path, backend=backend, device=device, precision=precision, threshold=threshold, **options)
        precision = precision or "fp32"
        if path.suffix == ".onnx":
            return cls.from_onnx(path, backend=backend, device=device, precision=precision, threshold=threshold, **options)
        from ..checkpoint import load_model

        model, tokenizer, state = load_model(path, map_location="cpu")
        seg = cls(model, tokenizer, backend=backend, device=device, precision=precision, threshold=threshold, **options)
        seg.grounding_gate = gate_for_checkpoint(state, path)
        return seg

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        device: Optional[str] = None,
        precision: str = "fp32",
        threshold: float = 0.5,
        *,
        mask_threshold: float = 0.5,
        clear_mask_if_not_found: bool = True,
        num_threads: Optional[int] = None,
        cpu_provider: str = "auto",
        cache_dir: Optional[str | os.PathLike] = None,
        workspace_gb: float = 4.0,
    ) -> "Segmenter":
        """From an exported ``.onnx`` alone (onnxruntime or TensorRT; torch needs the checkpoint)."""
        if backend == "torch":
            raise ValueError("an .onnx file runs on backend 'onnxruntime' or 'tensorrt'; torch needs the checkpoint")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        info = read_onnx_info(path)
        if info.precision != "fp32":
            # A graph exported with --precision fp16/bf16 already computes in that precision.
            if precision not in ("fp32", info.precision):
                raise ValueError(f"{path} is a {info.precision} graph; it cannot run in {precision}")
            precision = info.precision
        name, device = _resolve(backend, device, check_precision(precision), allow_torch=False)
        if name == "tensorrt" and info.precision != "fp32":
            raise ValueError(f"the tensorrt backend builds from the fp32 export; {path} is {info.precision}")
        if name == "onnxruntime":
            # a graph exported in fp16 is run as it is; an fp32 one gets its backend copy
            impl: InferenceBackend = _onnxruntime_backend(path, device, precision, num_threads, cpu_provider,
                                                          cache_dir, prepared=info.precision != "fp32")
        else:
            from .backends.tensorrt_backend import TensorRTBackend

            impl = TensorRTBackend(path, precision=precision, cache_dir=cache_dir, workspace_gb=workspace_gb)
        return cls.from_backend(
            impl, info.tokenizer, info.config, threshold=threshold, mask_threshold=mask_threshold,
            clear_mask_if_not_found=clear_mask_if_not_found,
        )

    @classmethod
    def from_engine(
        cls,
        path: str | os.PathLike,
        backend: str = "tensorrt",
        device: Optional[str] = None,
        precision: Optional[str] = None,
        threshold: float = 0.5,
        *,
        mask_threshold: float = 0.5,
        clear_mask_if_not_found: bool = True,
    ) -> "Segmenter":
        """From a TensorRT engine file and its ``<engine>.json`` (written by ``coupalign export``)."""
        import json

        from .backends.tensorrt_backend import TensorRTBackend

        if backend not in ("auto", "tensorrt"):
            raise ValueError(f"a TensorRT engine runs on backend 'tensorrt' only, got {backend!r}")
        if device not in (None, "cuda"):
            raise ValueError(f"a TensorRT engine runs on device 'cuda' only, got {device!r}")
        path = Path(path)
        sidecar = path.with_name(path.name + ".json")
        if not sidecar.is_file():
            raise FileNotFoundError(
                f"{sidecar} (config and tokenizer of the engine) does not exist; "
                "`coupalign export --format tensorrt` writes it beside the engine"
            )
        props = json.loads(sidecar.read_text())
        info = OnnxModelInfo.from_props(props, source=str(sidecar))
        built = props.get("coupalign.engine_precision", "fp32")
        if precision is not None and precision != built:
            raise ValueError(f"{path} was built for {built}, not {precision}; rebuild it with --precision {precision}")
        impl = TensorRTBackend(engine_path=path, precision=built)
        return cls.from_backend(
            impl, info.tokenizer, info.config, threshold=threshold, mask_threshold=mask_threshold,
            clear_mask_if_not_found=clear_mask_if_not_found,
        )

    def _setup(self, backend, tokenizer, config, threshold, mask_threshold, clear_mask_if_not_found) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        if backend.image_size != config.image_size or backend.max_tokens != config.max_tokens:
            raise ValueError(
                f"the backend's graph is {backend.image_size}² with {backend.max_tokens} tokens but the "
                f"config says {config.image_size}² with {config.max_tokens}"
            )
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self.threshold = float(threshold)
        self.mask_threshold = float(mask_threshold)
        self._mask_logit = _logit(mask_threshold)
        self.clear_mask_if_not_found = clear_mask_if_not_found
        # None: no gate (a model with no known vocabulary); from_checkpoint sets the checkpoint's
        self.grounding_gate: Optional[GroundingGate] = None
        log.info("Segmenter ready: %s", backend.describe())

    # ---- properties -----------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.backend.image_size

    @property
    def max_tokens(self) -> int:
        return self.backend.max_tokens

    def describe(self) -> str:
        return self.backend.describe()

    # ---- inference ------------------------------------------------------------------------------
    def __call__(self, image: np.ndarray, text: str) -> SegmentationResult:
        """One (H,W,3) uint8 RGB image and one sentence."""
        return self.batch([image], [text])[0]

    def batch(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> list[SegmentationResult]:
        """Several (image, sentence) pairs, run as padded batches of the backend's batch size.

        Every result carries the timings of the whole call.
        """
        if isinstance(texts, str):
            raise ValueError("texts must be a sequence of sentences, got a single str")
        if len(images) != len(texts):
            raise ValueError(f"got {len(images)} images but {len(texts)} sentences")
        if not len(images):
            return []
        t0 = time.perf_counter()
        images = [check_rgb_image(im, name=f"image {i}") for i, im in enumerate(images)]
        pixels, input_ids, attention_mask = self.preprocess(images, texts)
        t1 = time.perf_counter()
        logits, presence = self._infer(pixels, input_ids, attention_mask)
        t2 = time.perf_counter()
        results = self.postprocess(logits, presence, [im.shape[:2] for im in images])
        if self.grounding_gate is not None:
            results = self.grounding_gate.screen(texts, results)
        t3 = time.perf_counter()
        timings = {
            "preprocess": (t1 - t0) * 1e3,
            "inference": (t2 - t1) * 1e3,
            "postprocess": (t3 - t2) * 1e3,
            "total": (t3 - t0) * 1e3,
        }
        for r in results:
            r.timings = dict(timings)
        return results

    def preprocess(self, images: Sequence[np.ndarray], texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> pixels (B,3,S,S) float32, input_ids/attention_mask (B,T) int64."""
        input_ids, attention_mask = self.tokenizer(list(texts), self.max_tokens)
        pixels = np.stack([preprocess_image(im, self.image_size) for im in images])
        return pixels, input_ids, attention_mask

    def _infer(self, pixels, input_ids, attention_mask) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """Runs the backend in chunks of its fixed batch, padding the last chunk by repetition."""
        n = pixels.shape[0]
        step = self.backend.batch_size or n
        logits, presence = [], []
        for start in range(0, n, step):
            idx = np.arange(start, min(start + step, n))
            if idx.size < step:
                idx = np.concatenate([idx, np.full(step - idx.size, idx[-1])])
            out = self.backend(pixels[idx], input_ids[idx], attention_mask[idx])
            keep = min(step, n - start)
            logits.append(out.logits[:keep])
            if out.presence_logits is not None:
                presence.append(out.presence_logits[:keep])
        return np.concatenate(logits), (np.concatenate(presence) if presence else None)

    def postprocess(
        self, logits: np.ndarray, presence_logits: Optional[np.ndarray], sizes: Sequence[tuple[int, int]]
    ) -> list[SegmentationResult]:
        """logits (B,1,S,S), presence_logits (B,) or None, sizes [(H, W)] -> results."""
        scores = presence_score(
            torch.from_numpy(logits), None if presence_logits is None else torch.from_numpy(presence_logits)
        ).numpy()  # (B,)
        results = []
        for i, (h, w) in enumerate(sizes):
            score = float(scores[i])
            found = score >= self.threshold
            if found or not self.clear_mask_if_not_found:
                mask = upsample_logits(logits[i, 0], h, w) > self._mask_logit  # (H, W)
            else:
                mask = np.zeros((h, w), dtype=bool)
            bbox = mask_bbox(mask)
            reason = ""
            if found and bbox is None:  # a score above threshold but no pixel above mask_threshold
                found, reason = False, "empty mask"
            results.append(SegmentationResult(mask=mask, score=score, found=found, bbox=bbox, reason=reason))
        return results


def _onnxruntime_backend(onnx_path: str | os.PathLike, device: str, precision: str, num_threads: Optional[int],
                         cpu_provider: str, cache_dir: Optional[str | os.PathLike], prepared: bool = False) -> InferenceBackend:
    """The onnxruntime backend over the graph its provider runs (``prepared``: ``onnx_path`` is
    that graph already)."""
    from .backends.onnxruntime_backend import OnnxRuntimeBackend

    provider = _onnxruntime_provider(device, precision, cpu_provider)
    graph = Path(onnx_path) if prepared else _onnxruntime_graph(onnx_path, precision, provider, cache_dir)
    # "cuda" is no CPU provider: the backend reads cpu_provider only on the CPU
    return OnnxRuntimeBackend(graph, device=device, num_threads=num_threads, precision=precision,
                              cpu_provider=provider if device == "cpu" else "auto")


def _onnxruntime_provider(device: str, precision: str, cpu_provider: str) -> str:
    """"cuda", or the CPU provider an onnxruntime session of this precision will use."""
    from .backends.onnxruntime_backend import resolve_cpu_provider

    if device == "cuda":
        return "cuda"
    provider = resolve_cpu_provider(cpu_provider)  # checks the choice even where it is not used
    return provider if precision == "fp32" else "cpu"


def _onnxruntime_graph(onnx_path: str | os.PathLike, precision: str, provider: str,
                       cache_dir: Optional[str | os.PathLike]) -> Path:
    """The graph the onnxruntime backend runs: the portable export for OpenVINO (standard ONNX
    only), the copy with onnxruntime's contrib-op fusions for its own CPU and CUDA kernels, or
    the fp16 copy."""
    if precision != "fp32":
        return cached_low_precision_onnx(onnx_path, precision, cache_dir)
    if provider in ("cpu", "cuda"):
        return cached_onnxruntime_fused_onnx(onnx_path, cache_dir)
    return Path(onnx_path)


def _resolve(backend: str, device: Optional[str], precision: str, allow_torch: bool) -> tuple[str, str]:
    """Backend name and device; ``auto`` asks ``choose_backend`` and logs its reason."""
    if backend == "onnxruntime" and precision == "bf16":
        others = "'torch' or 'tensorrt'" if allow_torch else "'tensorrt'"
        raise ValueError(f"the onnxruntime backend runs fp32 or fp16 graphs; use backend {others} for bf16")
    if backend == "auto":
        name, device, reason = choose_backend(device, precision, probe_environment(), allow_torch=allow_torch)
        log.info("backend='auto' chose %s on %s: %s", name, device, reason)
        return name, device
    if backend == "tensorrt":
        if device not in (None, "cuda"):
            raise ValueError(f"the tensorrt backend runs on device 'cuda' only, got {device!r}")
        return backend, "cuda"
    if device is None:  # the GPU when this backend can use one here
        gpu = torch.cuda.is_available()
        if backend == "onnxruntime":
            from .backends.onnxruntime_backend import available_providers

            gpu = gpu and "CUDAExecutionProvider" in available_providers()
        device = "cuda" if gpu else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return backend, device
