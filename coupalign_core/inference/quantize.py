"""INT8 on the CPU: post-training static quantization of the exported graph, calibrated on the
project's own synthetic world.

    int8 = cached_int8_onnx("model.onnx")                       # cached beside the other exports
    seg = Segmenter.from_checkpoint("model.onnx", precision="int8")   # the same, through the Segmenter

onnxruntime's quantizer (``quantize_static``, QDQ format) puts QuantizeLinear/DequantizeLinear
pairs around the matrix products (MatMul, Gemm, Conv): weights int8 per output channel, activations
uint8 per tensor with ranges from a calibration run. LayerNorm, softmax, GELU and the attention
masks stay fp32, which is where quantization error would hurt most. onnxruntime fuses each
QDQ pair with its product into an integer kernel (VNNI/AMX where the CPU has them, see
``coupalign_core.machine``). The calibration frames are rendered from the synthetic world with a
seed no training world uses, with one of their own referring sentences each, so the ranges are
those of the images and sentences the model meets.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from .cache import default_cache_dir, key_digest

log = logging.getLogger(__name__)

CALIBRATION_SEED = 90_210  # no shipped world uses it (their seeds are 0-6 and 12345)
CALIBRATION_FRAMES = 32
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


def calibration_frames(num: int = CALIBRATION_FRAMES, seed: int = CALIBRATION_SEED,
                       size: tuple[int, int] = (192, 144)) -> list[tuple[np.ndarray, str]]:
    """``num`` (RGB uint8 image, sentence) pairs of the synthetic world (the ``val`` profile), each
    sentence naming an object in its image."""
    from ..data.synthetic import expressions as ex
    from ..data.synthetic.render import render
    from ..data.synthetic.world import sample_scene

    frames = []
    for index in range(num):
        rng = np.random.default_rng([seed, index])
        scene = sample_scene(rng, size[0], size[1], "mixed")
        picture = render(rng, scene)
        refs = ex.make_refs(rng, ex.scene_views(scene), num_refs=1, sentences_per_ref=(1, 1), num_no_target=0)
        frames.append((picture, refs[0].sentences[0]["sent"]))
    return frames


def calibration_batches(frames: Sequence[tuple[np.ndarray, str]], tokenizer: Any, image_size: int, max_tokens: int,
                        batch_size: int) -> list[dict[str, np.ndarray]]:
    """The graph's feeds for ``frames``, ``batch_size`` at a time (the last batch padded by repetition)."""
    from ..data.transforms import preprocess_image

    pixels = np.stack([preprocess_image(image, image_size) for image, _ in frames])  # (N,3,S,S)
    ids, mask = tokenizer([text for _, text in frames], max_tokens)  # (N,T)
    feeds = []
    for start in range(0, len(frames), batch_size):
        idx = np.arange(start, start + batch_size) % len(frames)
        feeds.append({"images": pixels[idx].astype(np.float32), "input_ids": ids[idx].astype(np.int64),
                      "attention_mask": mask[idx].astype(np.int64)})
    return feeds


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self._it: Iterator[dict[str, np.ndarray]] = iter(feeds)

    def get_next(self) -> Optional[dict[str, np.ndarray]]:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter(self._feeds)


def quantize_int8(onnx_path: str | os.PathLike[str], out_path: str | os.PathLike[str],
                  frames: Optional[Sequence[tuple[np.ndarray, str]]] = None) -> Path:
    """Quantize an fp32 CoupAlign export to INT8 (QDQ) into ``out_path``, calibrated on ``frames``
    (default: :func:`calibration_frames`). The result carries the source's metadata with
    ``coupalign.precision`` = ``int8``."""
    import tempfile

    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from .export import read_onnx_info, save_onnx

    onnx_path, out_path = Path(onnx_path), Path(out_path)
    info = read_onnx_info(onnx_path)
    if info.precision != "fp32":
        raise ValueError(f"{onnx_path} is a {info.precision} graph; INT8 quantization starts from the fp32 export")
    frames = list(frames) if frames is not None else calibration_frames()
    feeds = calibration_batches(frames, info.tokenizer, info.config.image_size, info.config.max_tokens,
                                info.batch_size or 1)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        quantized = Path(tmp) / "int8.onnx"
        quantize_static(
            str(onnx_path), str(quantized), _Reader(feeds), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OPS), per_channel=True, weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8, calibrate_method=CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )
        model = onnx.load(str(quantized))
    props = {p.key: p.value for p in model.metadata_props}
    props["coupalign.precision"] = "int8"
    props["coupalign.int8_calibration"] = f"{len(frames)} frames, {len(feeds)} batches"
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
    save_onnx(model, out_path)
    log.info("quantized %s to INT8 in %.0f s (%d calibration frames): %s", onnx_path.name,
             time.perf_counter() - start, len(frames), out_path)
    return out_path


def cached_int8_onnx(onnx_path: str | os.PathLike[str], cache_dir: Optional[str | os.PathLike[str]] = None) -> Path:
    """The INT8 version of an fp32 export, made on a cache miss (:func:`quantize_int8`)."""
    from .export import FORMAT, sha256_onnx

    onnx_path = Path(onnx_path)
    key = key_digest({"source": sha256_onnx(onnx_path), "precision": "int8", "seed": CALIBRATION_SEED,
                      "frames": CALIBRATION_FRAMES, "ops": QUANTIZED_OPS, "format": FORMAT})
    path = Path(cache_dir or default_cache_dir()) / "onnx" / f"{onnx_path.stem}-int8-{key[:12]}.onnx"
    if path.is_file():
        return path
    return quantize_int8(onnx_path, path)
