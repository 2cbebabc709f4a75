"""The Segmenter: one image and one sentence in, a mask, a score and a box out.

This is the product's contract (the ROS node and the bag tools call it)::

    seg = Segmenter.from_checkpoint("model.pt", backend="auto")   # or a SegmenterOptions
    result = seg(image_rgb_uint8, "the red cup on the left")
    result.mask   # (H, W) bool at the input image's size
    result.score  # [0, 1]: presence_score (sigmoid of the presence head, or mask confidence)
    result.found  # score >= seg.threshold, a non-empty mask, and a command the gate accepts
    result.reason # why found is False when the score alone does not say ("" otherwise)
    result.bbox   # (x0, y0, x1, y1), x1/y1 exclusive, or None
    result.timings  # ms: preprocess, inference, postprocess, total

Pre-processing is the training pipeline's own ``preprocess_image`` (square resize + ImageNet
normalisation) and the checkpoint's tokenizer. Post-processing upsamples the S×S logits to the
image size with OpenCV's bilinear resize (the same half-pixel sampling as torch's
``interpolate(mode="bilinear", align_corners=False)``, several times cheaper at 640×480 than
a torch resize), then thresholds.

The Segmenter alone decides ``found`` (its ``threshold``, adjustable at run time) and clears the
mask: when ``found`` is False the mask is cleared and ``bbox`` is None
(``clear_mask_if_not_found``), because a robot must not act on the mask of an object the model
says is absent; and ``found`` is never True with an empty mask (a score above the threshold whose
mask has no pixel above ``mask_threshold`` is reported not found). The ROS pipeline, the node and
the bag tools read ``found``; none of them re-decides it.

The grounding-vocabulary gate (``grounding_vocabulary``: the words the model was trained on,
read from the checkpoint) reports a command with no word the model can ground, or with words it
was never trained on, as not found with score 0 and a ``reason``, whatever the model's score
(docs/inference.md, "Presence").
"""

from __future__ import annotations

import json
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
from ..model.configuration import CoupAlignConfig
from ..model.modeling import CoupAlign, presence_score
from ..model.tokenization import TextTokenizer
from .backends import InferenceBackend, choose_backend, probe_environment
from .export import (
    OnnxModelInfo,
    cached_low_precision_onnx,
    cached_onnx,
    cached_onnxruntime_fused_onnx,
    read_onnx_info,
)
from .grounding_vocabulary import GroundingGate, gate_for_checkpoint
from .inputs import check_rgb_image
from .options import SegmenterOptions, check_threshold, resolve_options
from .probe import ProbeOutcome, ProbeResult, probe_cpu

log = logging.getLogger(__name__)

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
TOKEN_CACHE_SIZE = 64  # sentences whose tokens a Segmenter keeps (Segmenter._tokenize)

# The options each kind of source can honour (SegmenterOptions.check_applies refuses the others).
RESULT_OPTIONS = frozenset({"threshold", "mask_threshold", "clear_mask_if_not_found"})
ENGINE_OPTIONS = RESULT_OPTIONS | {"backend", "device", "precision"}
ONNX_OPTIONS = ENGINE_OPTIONS | {"num_threads", "cpu_provider", "cache_dir", "workspace_gb"}


@dataclass
class SegmentationResult:
    """One (image, sentence) answer. ``found`` implies a non-empty mask (checked on creation)."""

    mask: np.ndarray  # (H, W) bool at the input image's size
    score: float  # in [0, 1], see presence_score
    found: bool  # score >= the Segmenter's threshold and the mask is not empty
    bbox: Optional[tuple[int, int, int, int]]  # (x0, y0, x1, y1), x1/y1 exclusive; None if empty
    timings: dict[str, float] = field(default_factory=dict)  # ms: preprocess, inference, postprocess, total
    reason: str = ""  # why found is False beyond the score: the gate's verdict, or an empty mask

    def __post_init__(self) -> None:
        if self.found and not np.any(self.mask):
            raise ValueError("a SegmentationResult with found=True needs a non-empty mask: "
                             "report an empty mask as not found")

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
    resized: np.ndarray = cv2.resize(logits, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))  # p in (0, 1): SegmenterOptions checked it


class Segmenter:
    """Referring segmentation with any backend; see the module docstring for the contract.

    Build it from an in-memory model (``Segmenter(model, tokenizer, options)``), or from a
    checkpoint, an exported ``.onnx`` or a TensorRT engine (``Segmenter.from_checkpoint(path,
    options)``). ``options`` is a :class:`SegmenterOptions` (every field documented there);
    keyword arguments override single fields (``Segmenter.from_checkpoint(path, backend="torch",
    threshold=0.6)``), and an unknown keyword raises TypeError naming it.

    Fields that concern one backend only (``num_threads`` for onnxruntime, ``compile`` for torch)
    are ignored by the others, so one options object serves ``backend="auto"``; fields a source
    cannot honour at all (the export settings for an ``.onnx`` file) raise ValueError.
    """

    backend: InferenceBackend
    tokenizer: TextTokenizer
    config: CoupAlignConfig
    probe: Optional[ProbeResult]  # backend="auto" on the CPU: what the probe measured and chose

    def __init__(
        self,
        model: CoupAlign,
        tokenizer: TextTokenizer,
        options: Optional[SegmenterOptions] = None,
        **overrides: Any,
    ) -> None:
        options = resolve_options(options, overrides)
        precision = options.precision or "fp32"
        name, device = _resolve(options.backend, options.device, precision, allow_torch=True)
        impl: InferenceBackend
        if _probes(options, name, device, precision):
            outcome = probe_cpu(options, model=model, tokenizer=tokenizer)
            impl = _chosen_backend(outcome, options, model=model, tokenizer=tokenizer)
            self._setup(impl, tokenizer, model.config, options, outcome.result)
            return
        if name == "torch":
            from .backends.torch_backend import TorchBackend

            impl = TorchBackend(
                model, device=device, precision=precision, precision_mode=options.precision_mode,
                compile=options.compile, compile_mode=options.compile_mode,
                num_threads=options.num_threads if device == "cpu" else None,
            )
        elif name == "onnxruntime":
            impl = _onnxruntime_backend(_export(model, tokenizer, options), device, precision, options)
        else:
            from .backends.tensorrt_backend import TensorRTBackend, require_tensorrt_and_cuda

            if options.dynamic_batch:
                raise ValueError("dynamic_batch is for onnxruntime; a TensorRT engine is built for a fixed batch_size")
            require_tensorrt_and_cuda()  # before the export, which takes a while
            impl = TensorRTBackend(
                _export(model, tokenizer, options), precision=precision, cache_dir=options.cache_dir,
                workspace_gb=options.workspace_gb,
            )
        self._setup(impl, tokenizer, model.config, options)

    # ---- construction ---------------------------------------------------------------------------
    @classmethod
    def from_backend(
        cls,
        backend: InferenceBackend,
        tokenizer: TextTokenizer,
        config: CoupAlignConfig,
        /,
        options: Optional[SegmenterOptions] = None,
        **overrides: Any,
    ) -> "Segmenter":
        """Wrap an already built backend (a custom one, or one shared by several Segmenters).

        Only the options that decide the result (threshold, mask_threshold,
        clear_mask_if_not_found) apply.
        """
        options = resolve_options(options, overrides)
        options.check_applies(RESULT_OPTIONS, "an already built backend")
        return cls._wrap(backend, tokenizer, config, options)

    @classmethod
    def _wrap(cls, backend: InferenceBackend, tokenizer: TextTokenizer, config: CoupAlignConfig,
              options: SegmenterOptions) -> "Segmenter":
        self = cls.__new__(cls)
        self._setup(backend, tokenizer, config, options)
        return self

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str],
        options: Optional[SegmenterOptions] = None,
        **overrides: Any,
    ) -> "Segmenter":
        """From a training checkpoint (``.pt``), an exported ``.onnx`` or a TensorRT engine.

        An ``.onnx`` carries its config and tokenizer in its metadata; an engine carries them
        in the ``<engine>.json`` that ``coupalign export --format tensorrt`` writes beside it.
        ``precision`` None means fp32, or for a half-precision ``.onnx`` or an engine the
        precision it was made for. See :meth:`from_onnx` and :meth:`from_engine` for the
        options those files take.
        """
        options = resolve_options(options, overrides)
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        if path.suffix in ENGINE_SUFFIXES:
            return cls.from_engine(path, options)
        if path.suffix == ".onnx":
            return cls.from_onnx(path, options)
        from ..checkpoint import load_model

        model, tokenizer, state = load_model(path, map_location="cpu")
        seg = cls(model, tokenizer, options)
        seg.grounding_gate = gate_for_checkpoint(state, path)
        return seg

    @classmethod
    def from_onnx(
        cls,
        path: str | os.PathLike[str],
        options: Optional[SegmenterOptions] = None,
        **overrides: Any,
    ) -> "Segmenter":
        """From an exported ``.onnx`` alone (onnxruntime or TensorRT; torch needs the checkpoint).

        The export settings (batch_size, opset, exporter, model_sha256) and the torch options
        do not apply: the file fixes them.
        """
        options = resolve_options(options, overrides)
        if options.backend == "torch":
            raise ValueError("an .onnx file runs on backend 'onnxruntime' or 'tensorrt'; torch needs the checkpoint")
        options.check_applies(ONNX_OPTIONS, f"an .onnx file ({path}); they apply to a .pt checkpoint")
        info = read_onnx_info(path)
        precision = options.precision or "fp32"
        if info.precision != "fp32":
            # A graph exported with --precision fp16/bf16 already computes in that precision.
            if precision not in ("fp32", info.precision):
                raise ValueError(f"{path} is a {info.precision} graph; it cannot run in {precision}")
            precision = info.precision
        name, device = _resolve(options.backend, options.device, precision, allow_torch=False)
        if name == "tensorrt" and info.precision != "fp32":
            raise ValueError(f"the tensorrt backend builds from the fp32 export; {path} is {info.precision}")
        impl: InferenceBackend
        if _probes(options, name, device, precision) and info.precision == "fp32":
            outcome = probe_cpu(options, onnx_path=path)
            impl = _chosen_backend(outcome, options, onnx_path=path)
            seg = cls.__new__(cls)
            seg._setup(impl, info.tokenizer, info.config, options, outcome.result)
            return seg
        if name == "onnxruntime":
            # a graph exported in fp16 is run as it is; an fp32 one gets its backend copy
            impl = _onnxruntime_backend(path, device, precision, options, prepared=info.precision != "fp32")
        else:
            from .backends.tensorrt_backend import TensorRTBackend

            impl = TensorRTBackend(path, precision=precision, cache_dir=options.cache_dir,
                                   workspace_gb=options.workspace_gb)
        return cls._wrap(impl, info.tokenizer, info.config, options)

    @classmethod
    def from_engine(
        cls,
        path: str | os.PathLike[str],
        options: Optional[SegmenterOptions] = None,
        **overrides: Any,
    ) -> "Segmenter":
        """From a TensorRT engine file and its ``<engine>.json`` (written by ``coupalign export``).

        Only backend ("auto" or "tensorrt"), device (None or "cuda"), precision (None or the one
        the engine was built for) and the result options apply.
        """
        from .backends.tensorrt_backend import TensorRTBackend

        options = resolve_options(options, overrides)
        options.check_applies(ENGINE_OPTIONS, f"a TensorRT engine ({path}), which fixes them when it is built")
        if options.backend not in ("auto", "tensorrt"):
            raise ValueError(f"a TensorRT engine runs on backend 'tensorrt' only, got {options.backend!r}")
        if options.device not in (None, "cuda"):
            raise ValueError(f"a TensorRT engine runs on device 'cuda' only, got {options.device!r}")
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
        if options.precision is not None and options.precision != built:
            raise ValueError(f"{path} was built for {built}, not {options.precision}; "
                             f"rebuild it with --precision {options.precision}")
        impl = TensorRTBackend(engine_path=path, precision=built)
        return cls._wrap(impl, info.tokenizer, info.config, options)

    def _setup(self, backend: InferenceBackend, tokenizer: TextTokenizer, config: CoupAlignConfig,
               options: SegmenterOptions, probe: Optional[ProbeResult] = None) -> None:
        if backend.image_size != config.image_size or backend.max_tokens != config.max_tokens:
            raise ValueError(
                f"the backend's graph is {backend.image_size}² with {backend.max_tokens} tokens but the "
                f"config says {config.image_size}² with {config.max_tokens}"
            )
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = config
        self._options = options
        self._mask_logit = _logit(options.mask_threshold)
        # None: no gate (a model with no known vocabulary); from_checkpoint sets the checkpoint's
        self.grounding_gate: Optional[GroundingGate] = None
        self.probe = probe
        log.info("Segmenter ready: %s", backend.describe())

    # ---- options and the decision they own ------------------------------------------------------
    @property
    def options(self) -> SegmenterOptions:
        """The options this Segmenter was built with, with the current threshold."""
        return self._options

    @property
    def threshold(self) -> float:
        """Score at or above which ``found`` is True; settable at run time (checked: [0, 1], not NaN)."""
        return self._options.threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._options = self._options.replace(threshold=check_threshold(value))

    @property
    def mask_threshold(self) -> float:
        return self._options.mask_threshold

    @property
    def clear_mask_if_not_found(self) -> bool:
        return self._options.clear_mask_if_not_found

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
        results = self.postprocess(logits, presence, [(im.shape[0], im.shape[1]) for im in images])
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

    def preprocess(self, images: Sequence[np.ndarray],
                   texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> pixels (B,3,S,S) float32, input_ids/attention_mask (B,T) int64."""
        input_ids, attention_mask = self._tokenize(texts)
        pixels = np.stack([preprocess_image(im, self.image_size) for im in images])
        return pixels, input_ids, attention_mask

    def _tokenize(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """input_ids, attention_mask (B,T) int64 of ``texts``; a sentence seen recently is not
        tokenised again (a robot's command stays the same for many frames).

        The rows of the last ``TOKEN_CACHE_SIZE`` sentences are kept with the tokenizer that made
        them and copied into new arrays; a batch with a new sentence goes through the tokenizer
        whole, so its errors are the tokenizer's own.
        """
        owner, cache = self.__dict__.get("_token_cache", (None, {}))
        if owner is not self.tokenizer:
            cache = {}
            self.__dict__["_token_cache"] = (self.tokenizer, cache)
        rows = [cache.get(text) if isinstance(text, str) else None for text in texts]
        if any(row is None for row in rows):
            input_ids, attention_mask = self.tokenizer(list(texts), self.max_tokens)
            for i, text in enumerate(texts):
                cache.pop(text, None)  # (re)inserted last: the dict's order is the recency
                cache[text] = (input_ids[i:i + 1].copy(), attention_mask[i:i + 1].copy())
            while len(cache) > TOKEN_CACHE_SIZE:
                del cache[next(iter(cache))]
            return input_ids, attention_mask
        cached = [row for row in rows if row is not None]
        return np.concatenate([r[0] for r in cached]), np.concatenate([r[1] for r in cached])

    def _infer(self, pixels: np.ndarray, input_ids: np.ndarray,
               attention_mask: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray]]:
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
        options = self._options  # read once: a threshold changed meanwhile applies to the next call
        results = []
        for i, (h, w) in enumerate(sizes):
            score = float(scores[i])
            found = score >= options.threshold
            if found or not options.clear_mask_if_not_found:
                mask = upsample_logits(logits[i, 0], h, w) > self._mask_logit  # (H, W)
            else:
                mask = np.zeros((h, w), dtype=bool)
            bbox = mask_bbox(mask)
            reason = ""
            if found and bbox is None:  # a score above threshold but no pixel above mask_threshold
                found, reason = False, "empty mask"
            results.append(SegmentationResult(mask=mask, score=score, found=found, bbox=bbox, reason=reason))
        return results


def _export(model: CoupAlign, tokenizer: TextTokenizer, options: SegmenterOptions) -> Path:
    """The (cached) fp32 ONNX export of ``model`` that the onnxruntime and TensorRT backends run.

    A large model (the paper preset) with no cached export raises ``ExportRequiredError`` naming
    ``coupalign export``: a robot's node must not stall for minutes, or be killed for memory, on
    its first frame."""
    return cached_onnx(model, tokenizer, batch_size=options.batch_size, opset=options.opset,
                       exporter=options.exporter, cache_dir=options.cache_dir, source_sha256=options.model_sha256,
                       refuse_large=True, dynamic_batch=options.dynamic_batch)


def _onnxruntime_backend(onnx_path: str | os.PathLike[str], device: str, precision: str, options: SegmenterOptions,
                         prepared: bool = False) -> InferenceBackend:
    """The onnxruntime backend over the graph its provider runs (``prepared``: ``onnx_path`` is
    that graph already)."""
    from .backends.onnxruntime_backend import OnnxRuntimeBackend

    provider = _onnxruntime_provider(device, precision, options.cpu_provider)
    graph = Path(onnx_path) if prepared else _onnxruntime_graph(onnx_path, precision, provider, options.cache_dir)
    # "cuda" is no CPU provider: the backend reads cpu_provider only on the CPU
    return OnnxRuntimeBackend(graph, device=device, num_threads=options.num_threads, precision=precision,
                              cpu_provider=provider if device == "cpu" else "auto")


def _onnxruntime_provider(device: str, precision: str, cpu_provider: str) -> str:
    """"cuda", or the CPU provider an onnxruntime session of this precision will use."""
    from .backends.onnxruntime_backend import resolve_cpu_provider

    if device == "cuda":
        return "cuda"
    provider = resolve_cpu_provider(cpu_provider)  # checks the choice even where it is not used
    return provider if precision == "fp32" else "cpu"


def _onnxruntime_graph(onnx_path: str | os.PathLike[str], precision: str, provider: str,
                       cache_dir: Optional[str | os.PathLike[str]]) -> Path:
    """The graph the onnxruntime backend runs: the portable export for OpenVINO (standard ONNX
    only), the copy with onnxruntime's contrib-op fusions for its own CPU and CUDA kernels, the
    fp16 copy, or the INT8 (QDQ) one calibrated on the synthetic world."""
    if precision == "int8":
        from .quantize import cached_int8_onnx

        return cached_int8_onnx(onnx_path, cache_dir)
    if precision != "fp32":
        return cached_low_precision_onnx(onnx_path, precision, cache_dir)
    if provider in ("cpu", "cuda"):
        return cached_onnxruntime_fused_onnx(onnx_path, cache_dir)
    return Path(onnx_path)


def _probes(options: SegmenterOptions, name: str, device: str, precision: str) -> bool:
    """Whether ``backend="auto"`` is decided by the timed probe: on the CPU in fp32 (the GPU keeps
    ``choose_backend``'s order; other precisions on the CPU run under torch)."""
    return options.backend == "auto" and device == "cpu" and precision == "fp32" and name == "onnxruntime"


def _chosen_backend(outcome: ProbeOutcome, options: SegmenterOptions, model: Optional[CoupAlign] = None,
                    tokenizer: Optional[TextTokenizer] = None,
                    onnx_path: Optional[str | os.PathLike[str]] = None) -> InferenceBackend:
    """The probe's choice: the backend it built, or (a cached choice) built now."""
    choice = outcome.result.choice
    if choice.backend == "torch":
        from .backends.torch_backend import TorchBackend, set_torch_threads

        if outcome.backend is not None:
            set_torch_threads(choice.num_threads)
            return outcome.backend
        assert model is not None  # torch is a candidate only with the model
        return TorchBackend(model, device="cpu", precision="fp32", num_threads=choice.num_threads)
    if outcome.backend is not None:
        return outcome.backend
    opts = options.replace(cpu_provider=choice.cpu_provider, num_threads=choice.num_threads)
    if onnx_path is not None:
        return _onnxruntime_backend(onnx_path, "cpu", "fp32", opts)
    assert model is not None and tokenizer is not None
    return _onnxruntime_backend(_export(model, tokenizer, opts), "cpu", "fp32", opts)


def _resolve(backend: str, device: Optional[str], precision: str, allow_torch: bool) -> tuple[str, str]:
    """Backend name and device; ``auto`` asks ``choose_backend`` and logs its reason (on the CPU in
    fp32 the probe then decides among the CPU backends, see ``probe.py``)."""
    if precision == "int8":
        if backend not in ("auto", "onnxruntime"):
            raise ValueError(f"precision int8 runs on backend 'onnxruntime' on the CPU (a quantized graph, "
                             f"inference/quantize.py); backend {backend!r} runs fp32, fp16 or bf16")
        if device not in (None, "cpu"):
            raise ValueError(f"precision int8 runs on the CPU only, got device {device!r}")
        if backend == "auto":
            log.info("backend='auto' chose onnxruntime on cpu: int8 runs on onnxruntime's CPU kernels")
        return "onnxruntime", "cpu"
    if backend == "onnxruntime" and precision == "bf16":
        others = "'torch' or 'tensorrt'" if allow_torch else "'tensorrt'"
        raise ValueError(f"the onnxruntime backend runs fp32 or fp16 graphs; use backend {others} for bf16")
    if backend == "auto":
        name, device, reason = choose_backend(device, precision, probe_environment(), allow_torch=allow_torch)
        if not (device == "cpu" and precision == "fp32" and name == "onnxruntime"):
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
    return backend, device
