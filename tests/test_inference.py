"""Segmenter contract: inputs, text, mask/score/bbox semantics, batching, backends, CLI, drawing."""

from __future__ import annotations

import json
import logging

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from coupalign_core.inference import (
    SegmentationResult,
    Segmenter,
    SegmenterOptions,
    as_rgb,
    check_rgb_image,
    mask_bbox,
    upsample_logits,
)
from coupalign_core.inference.backends import BackendOutput, Environment, InferenceBackend, choose_backend
from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer
from coupalign_core.model.modeling import presence_score
from coupalign_core.visualize import draw_bbox, overlay_mask


def tiny_model() -> CoupAlign:
    torch.manual_seed(0)  # the same weights in every test file: the ONNX cache below is shared
    return CoupAlign(CoupAlignConfig.preset("tiny")).eval()


@pytest.fixture(scope="module")
def model_and_tokenizer():
    model = tiny_model()
    return model, build_tokenizer(model.config)


@pytest.fixture(scope="module")
def seg(model_and_tokenizer):
    model, tok = model_and_tokenizer
    return Segmenter(model, tok, backend="torch", device="cpu", threshold=0.0)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    # One folder for the whole pytest session, so test_export/test_tensorrt reuse this export.
    path = tmp_path_factory.getbasetemp() / "coupalign-onnx-cache"
    path.mkdir(exist_ok=True)
    return path


def frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


# ---- input conversions ----------------------------------------------------------------------------
def test_as_rgb_converts_each_encoding_explicitly():
    rgb = frame(5, 7)
    assert np.array_equal(as_rgb(rgb, "rgb"), rgb)
    assert np.array_equal(as_rgb(rgb[..., ::-1], "bgr"), rgb)
    assert np.array_equal(as_rgb(np.ascontiguousarray(rgb[..., ::-1]), "bgr8"), rgb)
    alpha = np.full((5, 7, 1), 17, np.uint8)
    assert np.array_equal(as_rgb(np.concatenate([rgb, alpha], -1), "rgba"), rgb)
    assert np.array_equal(as_rgb(np.concatenate([rgb[..., ::-1], alpha], -1), "bgra8"), rgb)
    gray = rgb[..., 0]
    for g in (gray, gray[..., None]):
        out = as_rgb(g, "mono8")
        assert out.shape == (5, 7, 3) and out.dtype == np.uint8
        assert all(np.array_equal(out[..., c], gray) for c in range(3))


@pytest.mark.parametrize(
    "array, encoding",
    [
        (np.zeros((4, 4, 3), np.uint16), "rgb"),
        (np.zeros((4, 4, 3), np.float32), "bgr"),
        (np.zeros((4, 4, 3), np.uint8), "rgba"),
        (np.zeros((4, 4), np.uint8), "rgb"),
        (np.zeros((4, 4, 2), np.uint8), "gray"),
        (np.zeros((0, 4, 3), np.uint8), "rgb"),
    ],
)
def test_as_rgb_rejects_mismatch_naming_shape_and_dtype(array, encoding):
    with pytest.raises(ValueError) as e:
        as_rgb(array, encoding)
    assert str(array.shape) in str(e.value) and str(array.dtype) in str(e.value)


def test_as_rgb_rejects_unknown_encoding():
    with pytest.raises(ValueError, match="unknown image encoding 'yuv'"):
        as_rgb(frame(2, 2), "yuv")


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8), np.uint8), np.zeros((8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.float32),
            np.zeros((8, 8, 3), np.uint16), np.zeros((3, 8, 8), np.uint8)],
)
def test_segmenter_rejects_non_rgb_input(seg, bad):
    with pytest.raises(ValueError) as e:
        seg(bad, "the cup")
    msg = str(e.value)
    assert str(bad.shape) in msg and str(bad.dtype) in msg and "as_rgb" in msg
    with pytest.raises(ValueError, match="got a list"):
        check_rgb_image([[1, 2, 3]])


# ---- the result contract ----------------------------------------------------------------------------
@pytest.mark.parametrize("h, w", [(1, 1), (96, 96), (37, 91), (480, 640)])
def test_result_is_at_the_input_size(seg, h, w):
    r = seg(frame(h, w), "the red cup on the left")
    assert r.mask.shape == (h, w) and r.mask.dtype == bool
    assert 0.0 <= r.score <= 1.0
    assert r.found == (r.score >= seg.threshold and r.mask.any())
    assert r.bbox == mask_bbox(r.mask)
    if r.bbox is not None:
        x0, y0, x1, y1 = r.bbox
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
    assert set(r.timings) == {"preprocess", "inference", "postprocess", "total"}
    assert all(v >= 0 for v in r.timings.values())
    parts = r.timings["preprocess"] + r.timings["inference"] + r.timings["postprocess"]
    assert r.timings["total"] == pytest.approx(parts, rel=1e-6)


def test_mask_and_score_follow_the_model(model_and_tokenizer, seg):
    """The mask is the model's logits bilinearly resized (torch semantics) and thresholded at 0;
    the score is presence_score of the model's outputs."""
    model, tok = model_and_tokenizer
    image, text = frame(150, 200, seed=3), "a small green ball"
    from coupalign_core.data.transforms import preprocess_image

    ids, mask = tok(text, model.config.max_tokens)
    with torch.inference_mode():
        out = model(torch.from_numpy(preprocess_image(image, model.config.image_size))[None],
                    torch.from_numpy(ids), torch.from_numpy(mask))
        up = F.interpolate(out.logits, size=(150, 200), mode="bilinear", align_corners=False)[0, 0].numpy()
        expected_score = float(presence_score(out.logits, out.presence_logits)[0])
    r = seg(image, text)
    assert r.score == pytest.approx(expected_score, abs=1e-6)
    confident = np.abs(up) > 1e-4  # pixels whose side of the threshold no rounding can flip
    assert np.array_equal(r.mask[confident], (up > 0)[confident])


def test_upsample_logits_matches_torch_bilinear():
    logits = np.random.default_rng(1).standard_normal((24, 24)).astype(np.float32)
    ours = upsample_logits(logits, 61, 83)
    ref = F.interpolate(torch.from_numpy(logits)[None, None], size=(61, 83), mode="bilinear",
                        align_corners=False)[0, 0].numpy()
    assert np.abs(ours - ref).max() < 1e-3
    assert upsample_logits(logits, 24, 24) is logits


def test_mask_bbox():
    m = np.zeros((10, 12), bool)
    assert mask_bbox(m) is None
    m[2:5, 3:9] = True
    m[7, 10] = True
    assert mask_bbox(m) == (3, 2, 11, 8)


def test_not_found_clears_mask_and_box(model_and_tokenizer):
    model, tok = model_and_tokenizer
    image = frame(60, 80)
    strict = Segmenter(model, tok, backend="torch", threshold=1.0)
    r = strict(image, "the cup")
    assert r.score < 1.0 and not r.found and not r.mask.any() and r.bbox is None
    raw = Segmenter(model, tok, backend="torch", threshold=1.0, clear_mask_if_not_found=False)(image, "the cup")
    everything = Segmenter(model, tok, backend="torch", threshold=0.0)(image, "the cup")
    assert not raw.found and np.array_equal(raw.mask, everything.mask)
    assert raw.bbox == everything.bbox


# ---- text ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_raises(seg, text):
    with pytest.raises(ValueError, match="empty or whitespace"):
        seg(frame(20, 20), text)


def test_any_unicode_is_accepted(seg):
    for text in ["la tasse à gauche, près du café", "the 🐶 next to the 🍕", "左边的红色杯子", "cup\x00\x07\u200b left",
                 "\x07", "Ωμέγα ∑ ∞ ⟨x⟩"]:
        r = seg(frame(32, 48), text)
        assert r.mask.shape == (32, 48) and 0.0 <= r.score <= 1.0


def test_long_text_truncates_with_a_single_warning(model_and_tokenizer, caplog):
    model, _ = model_and_tokenizer
    fresh = Segmenter(model, build_tokenizer(model.config), backend="torch")
    long = " ".join(["the big red cup on the wooden table"] * 20)
    with caplog.at_level(logging.WARNING):
        fresh(frame(20, 20), long)
        fresh(frame(20, 20), long + " again")
    warnings = [r for r in caplog.records if "truncated" in r.getMessage()]
    assert len(warnings) == 1


# ---- batching --------------------------------------------------------------------------------------
def test_batch_equals_single_calls(seg):
    images = [frame(40, 60, 1), frame(96, 96, 2), frame(13, 7, 3)]
    texts = ["the cup", "a red ball on the left of the big box", "dog"]
    batched = seg.batch(images, texts)
    for img, text, b in zip(images, texts, batched):
        single = seg(img, text)
        assert b.mask.shape == img.shape[:2]
        assert b.score == pytest.approx(single.score, abs=1e-5)
        assert np.mean(b.mask != single.mask) < 1e-3
    assert seg.batch([], []) == []
    with pytest.raises(ValueError, match="2 images but 1 sentences"):
        seg.batch(images[:2], texts[:1])
    with pytest.raises(ValueError, match="single str"):
        seg.batch(images[:1], "the cup")


# ---- backend choice --------------------------------------------------------------------------------
CPU_ONLY = Environment(has_cuda=False, has_tensorrt=False, ort_providers=("CPUExecutionProvider",))
BOTH_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.mark.parametrize(
    "env, device, precision, expected",
    [
        (Environment(True, True, BOTH_PROVIDERS), None, "fp16", ("tensorrt", "cuda")),
        (Environment(True, False, BOTH_PROVIDERS), None, "fp32", ("onnxruntime", "cuda")),
        (Environment(True, False, BOTH_PROVIDERS), None, "bf16", ("torch", "cuda")),
        (Environment(True, False, ("CPUExecutionProvider",)), "cuda", "fp32", ("torch", "cuda")),
        (Environment(True, True, ("CPUExecutionProvider",)), "cpu", "fp32", ("onnxruntime", "cpu")),
        (CPU_ONLY, None, "fp32", ("onnxruntime", "cpu")),
        (CPU_ONLY, None, "bf16", ("torch", "cpu")),
        (Environment(False, False, ()), None, "fp32", ("torch", "cpu")),
    ],
)
def test_auto_backend_order(env, device, precision, expected):
    backend, dev, reason = choose_backend(device, precision, env)
    assert (backend, dev) == expected and reason


def test_auto_backend_errors_say_what_is_missing():
    with pytest.raises(RuntimeError, match="no CUDA GPU"):
        choose_backend("cuda", "fp32", CPU_ONLY)
    with pytest.raises(RuntimeError, match="onnxruntime fp32 only"):
        choose_backend(None, "fp16", CPU_ONLY, allow_torch=False)
    with pytest.raises(ValueError, match="device"):
        choose_backend("tpu", "fp32", CPU_ONLY)


def test_auto_on_the_cpu_is_chosen_by_a_probe_and_cached(model_and_tokenizer, caplog, onnx_cache):
    model, tok = model_and_tokenizer
    threads = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger="coupalign_core.inference"):
            # one thread: three candidates (torch, onnxruntime's kernels, OpenVINO's), a short probe
            s = Segmenter(model, tok, backend="auto", device="cpu", num_threads=1, cache_dir=onnx_cache)
        probe = s.probe
        assert probe is not None and probe.cached_at is not None
        names = {c.backend for c in probe.timings}
        assert {"torch", "onnxruntime"} <= names and probe.choice in probe.timings
        assert s.backend.name == probe.choice.backend
        if probe.choice.backend == "onnxruntime":
            assert s.backend.num_threads == probe.choice.num_threads  # type: ignore[attr-defined]
        else:
            assert torch.get_num_threads() == probe.choice.num_threads
        assert f"backend='auto' chose {probe.choice.name}" in caplog.text
        assert f"| {probe.choice.name} |" in probe.table() and "**chosen**" in probe.table()
        # the second Segmenter reads the choice from the cache: no probe runs
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="coupalign_core.inference"):
            again = Segmenter(model, tok, backend="auto", device="cpu", num_threads=1, cache_dir=onnx_cache)
        assert again.probe is not None and again.probe.choice == probe.choice
        assert "probing" not in caplog.text and f"(probed {probe.date}" in caplog.text
        assert again(np.zeros((48, 64, 3), np.uint8), "the cup").mask.shape == (48, 64)
    finally:
        torch.set_num_threads(threads)


# ---- onnxruntime backend ---------------------------------------------------------------------------
def test_onnxruntime_segmenter_matches_torch(model_and_tokenizer, seg, onnx_cache):
    model, tok = model_and_tokenizer
    ort_seg = Segmenter(model, tok, backend="onnxruntime", device="cpu", threshold=0.0, num_threads=1,
                        cache_dir=onnx_cache)
    opts = ort_seg.backend.session.get_session_options()
    assert opts.intra_op_num_threads == 1
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert opts.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert ort_seg.backend.batch_size == 1
    images = [frame(48, 64, 5), frame(100, 90, 6), frame(96, 96, 7)]
    texts = ["the cup", "the man on the left holding a very small umbrella", "a 🐶"]
    for a, b in zip(ort_seg.batch(images, texts), seg.batch(images, texts)):  # 3 runs of the batch-1 graph
        assert a.score == pytest.approx(b.score, abs=1e-4)
        assert np.mean(a.mask != b.mask) < 1e-3


def test_checkpoint_and_onnx_file_load(model_and_tokenizer, tmp_path, onnx_cache):
    from coupalign_core.checkpoint import save_checkpoint
    from coupalign_core.inference.export import cached_onnx

    model, tok = model_and_tokenizer
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model, tok)
    image, text = frame(50, 70, 9), "the blue box"
    from_ckpt = Segmenter.from_checkpoint(ckpt, backend="torch", threshold=0.0)(image, text)
    # An .onnx alone (config and vocabulary in its metadata) gives the same result.
    onnx_path = cached_onnx(model, tok, cache_dir=onnx_cache)
    from_onnx = Segmenter.from_checkpoint(onnx_path, backend="onnxruntime", threshold=0.0)(image, text)
    assert from_onnx.score == pytest.approx(from_ckpt.score, abs=1e-4)
    assert np.mean(from_onnx.mask != from_ckpt.mask) < 1e-3
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Segmenter.from_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="torch needs the checkpoint"):
        Segmenter.from_checkpoint(onnx_path, backend="torch")


# ---- torch options -----------------------------------------------------------------------------------
def test_torch_bf16_autocast_on_cpu_stays_close(model_and_tokenizer, seg):
    model, tok = model_and_tokenizer
    half = Segmenter(model, tok, backend="torch", device="cpu", precision="bf16", threshold=0.0)
    image = frame(96, 96, 11)
    a, b = half(image, "the cup"), seg(image, "the cup")
    assert half.describe().startswith("torch on cpu, bf16 (autocast)")
    assert abs(a.score - b.score) < 0.05


def test_bad_options_raise(model_and_tokenizer):
    model, tok = model_and_tokenizer
    with pytest.raises(ValueError, match="backend must be one of"):
        Segmenter(model, tok, backend="tflite")
    with pytest.raises(ValueError, match="precision must be one of"):
        Segmenter(model, tok, backend="torch", precision="int4")
    with pytest.raises(ValueError, match="precision int8 runs on backend 'onnxruntime' on the CPU"):
        Segmenter(model, tok, backend="torch", precision="int8")
    with pytest.raises(ValueError, match="threshold must be in"):
        Segmenter(model, tok, backend="torch", threshold=1.5)
    with pytest.raises(ValueError, match="fp32 or fp16 graphs"):
        Segmenter(model, tok, backend="onnxruntime", precision="bf16")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
def test_torch_cuda_matches_cpu(model_and_tokenizer, seg, precision):
    model, tok = model_and_tokenizer
    import copy

    gpu = Segmenter(copy.deepcopy(model), tok, backend="torch", device="cuda", precision=precision, threshold=0.0)
    image = frame(120, 160, 4)
    a, b = gpu(image, "the cup"), seg(image, "the cup")
    assert abs(a.score - b.score) < (1e-4 if precision == "fp32" else 0.05)
    assert np.mean(a.mask != b.mask) < (1e-3 if precision == "fp32" else 0.05)


# ---- options as data ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("backend", "tflite", "backend must be one of"),
        ("device", "tpu", "device must be one of"),
        ("precision", "int4", "precision must be one of"),
        ("threshold", 1.5, "threshold must be in [0, 1]"),
        ("threshold", float("nan"), "threshold must be in [0, 1]"),
        ("threshold", "0.5", "threshold must be a number"),
        ("mask_threshold", 1.0, "mask_threshold must be a number in (0, 1)"),
        ("clear_mask_if_not_found", "yes", "clear_mask_if_not_found must be True or False"),
        ("num_threads", 0, "num_threads must be an integer >= 1"),
        ("num_threads", True, "num_threads must be an integer >= 1"),
        ("cpu_provider", "cuda", "cpu_provider must be one of"),
        ("compile", 1, "compile must be True or False"),
        ("compile_mode", "fastest", "compile_mode must be one of"),
        ("precision_mode", "half", "precision_mode must be one of"),
        ("batch_size", 0, "batch_size must be an integer >= 1"),
        ("opset", 17.5, "opset must be an integer >= 1"),
        ("exporter", "tflite", "exporter must be one of"),
        ("cache_dir", 3, "cache_dir must be a path"),
        ("workspace_gb", 0, "workspace_gb must be a positive number"),
        ("model_sha256", "abc", "model_sha256 must be 64 lowercase hex digits"),
    ],
)
def test_options_validation_names_the_field(field, value, message):
    with pytest.raises(ValueError) as e:
        SegmenterOptions(**{field: value})
    assert message in str(e.value), str(e.value)


def test_every_option_is_documented():
    doc = SegmenterOptions.__doc__
    for name in SegmenterOptions.field_names():
        assert f"\n        {name} (`" in doc, f"SegmenterOptions.{name} has no Args: entry"


def test_keyword_overrides_map_onto_option_fields(model_and_tokenizer, tmp_path):
    model, tok = model_and_tokenizer
    by_keywords = Segmenter(model, tok, backend="torch", device="cpu", threshold=0.3)
    assert by_keywords.options == SegmenterOptions(backend="torch", device="cpu", threshold=0.3)
    base = SegmenterOptions(backend="torch", device="cpu", threshold=0.3)
    assert Segmenter(model, tok, base, threshold=0.8).options == base.replace(threshold=0.8)
    assert base.threshold == 0.3  # options are values: an override makes a copy
    with pytest.raises(TypeError, match="unknown Segmenter option 'treshold'; the options are: backend"):
        Segmenter(model, tok, backend="torch", treshold=0.6)
    with pytest.raises(TypeError, match="unknown Segmenter option 'treshold'"):
        Segmenter.from_checkpoint(tmp_path / "missing.pt", treshold=0.6)
    with pytest.raises(TypeError, match="options must be a SegmenterOptions, got str"):
        Segmenter(model, tok, "torch")


def test_options_a_source_cannot_honour_are_refused(model_and_tokenizer, onnx_cache):
    from coupalign_core.inference.export import cached_onnx

    model, tok = model_and_tokenizer
    onnx_path = cached_onnx(model, tok, cache_dir=onnx_cache)
    with pytest.raises(ValueError, match=r"options compile, batch_size do not apply to an \.onnx file"):
        Segmenter.from_onnx(onnx_path, backend="onnxruntime", batch_size=2, compile=True)
    with pytest.raises(ValueError, match="option backend does not apply to an already built backend"):
        Segmenter.from_backend(FixedBackend(model.config), tok, model.config, backend="torch")


# ---- found has one owner: the Segmenter ---------------------------------------------------------------
class FixedBackend(InferenceBackend):
    """Every pixel's logit is ``logit``; the presence logit is ``presence`` (None: no presence head)."""

    name, device, precision = "fixed", "cpu", "fp32"

    def __init__(self, config, logit: float = -5.0, presence=5.0):
        self.image_size, self.max_tokens, self.batch_size = config.image_size, config.max_tokens, None
        self.logit, self.presence = logit, presence
        self.has_presence_head = presence is not None

    def __call__(self, images, input_ids, attention_mask):
        b, s = images.shape[0], self.image_size
        presence = None if self.presence is None else np.full((b,), self.presence, np.float32)
        return BackendOutput(np.full((b, 1, s, s), self.logit, np.float32), presence)


def test_found_never_comes_with_an_empty_mask(model_and_tokenizer):
    """A presence head sure of the object (score 0.99) over a mask with no pixel: not found."""
    model, tok = model_and_tokenizer
    seg = Segmenter.from_backend(FixedBackend(model.config, logit=-5.0, presence=5.0), tok, model.config)
    r = seg(frame(30, 40), "the cup")
    assert r.score > 0.99 and not r.mask.any()
    assert not r.found and r.bbox is None
    kept = Segmenter.from_backend(FixedBackend(model.config, logit=-5.0, presence=5.0), tok, model.config,
                                  clear_mask_if_not_found=False)(frame(30, 40), "the cup")
    assert not kept.found
    sure = Segmenter.from_backend(FixedBackend(model.config, logit=5.0, presence=5.0), tok, model.config)
    assert sure(frame(30, 40), "the cup").found
    with pytest.raises(ValueError, match="found=True needs a non-empty mask"):
        SegmentationResult(np.zeros((4, 4), bool), 0.9, True, None)


def test_threshold_is_a_checked_property_of_the_segmenter(model_and_tokenizer):
    model, tok = model_and_tokenizer
    seg = Segmenter.from_backend(FixedBackend(model.config, logit=5.0, presence=0.0), tok, model.config)  # 0.5
    assert seg(frame(8, 8), "x").found
    seg.threshold = 0.6
    assert seg.threshold == seg.options.threshold == 0.6 and not seg(frame(8, 8), "x").found
    for bad in (1.5, -0.01, float("nan"), True, None):
        with pytest.raises(ValueError, match="threshold"):
            seg.threshold = bad
    assert seg.threshold == 0.6


def test_pipeline_and_service_read_the_segmenters_found(model_and_tokenizer):
    """One threshold: set through the pipeline (as the node's parameter callback does) or on the
    Segmenter, the worker's and the Segment service's found both follow it."""
    from coupalign_core.runtime.pipeline import Frame, Pipeline

    model, tok = model_and_tokenizer
    seg = Segmenter.from_backend(FixedBackend(model.config, logit=5.0, presence=0.0), tok, model.config,
                                 threshold=0.4)  # score 0.5
    pipe = Pipeline(seg)
    pipe.set_command("the cup", arrival_ns=0)
    image = frame(12, 16)
    assert pipe.process(Frame(image, 1)).found and pipe.segment_once(Frame(image, 2), "the cup").found
    pipe.set_threshold(0.6)
    assert seg.threshold == 0.6
    out, service = pipe.process(Frame(image, 3)), pipe.segment_once(Frame(image, 4), "the cup")
    assert not out.found and not service.found
    assert out.message_fields()["found"] is False and not out.result.mask.any()
    seg.threshold = 0.5
    assert pipe.process(Frame(image, 5)).found
    with pytest.raises(ValueError, match="threshold must be in"):
        pipe.set_threshold(2.0)


# ---- drawing and the segment verb --------------------------------------------------------------------
def test_overlay_mask_and_draw_bbox():
    image = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), bool)
    mask[5:15, 10:20] = True
    out = overlay_mask(image, mask, color=(255, 0, 0), alpha=0.5, contour_thickness=0)
    assert np.array_equal(out[~mask], image[~mask])
    assert tuple(out[10, 15]) == (178, 50, 50)
    assert np.array_equal(image, np.full((20, 30, 3), 100, np.uint8))  # input untouched
    boxed = draw_bbox(image, (10, 5, 20, 15), color=(0, 255, 0), thickness=1)
    assert tuple(boxed[5, 10]) == (0, 255, 0) and tuple(boxed[14, 19]) == (0, 255, 0)
    assert tuple(boxed[10, 15]) == (100, 100, 100)
    assert np.array_equal(draw_bbox(image, None), image)
    with pytest.raises(ValueError, match="mask shape"):
        overlay_mask(image, mask[:5])
    with pytest.raises(ValueError, match="x1 > x0"):
        draw_bbox(image, (5, 5, 5, 9))


def test_segment_verb_writes_overlay(model_and_tokenizer, tmp_path, capsys):
    from coupalign_core.checkpoint import save_checkpoint
    from coupalign_core.cli.main import main

    model, tok = model_and_tokenizer
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model, tok)
    image = frame(45, 61, 2)
    cv2.imwrite(str(tmp_path / "in.png"), image[..., ::-1])
    rc = main(["segment", "--checkpoint", str(ckpt), "--image", str(tmp_path / "in.png"), "--text", "the cup",
               "--backend", "torch", "--threshold", "0", "--out", str(tmp_path / "overlay.png"),
               "--mask-out", str(tmp_path / "mask.png")])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    overlay = cv2.imread(str(tmp_path / "overlay.png"))
    mask = cv2.imread(str(tmp_path / "mask.png"), cv2.IMREAD_GRAYSCALE)
    assert overlay.shape == (45, 61, 3) and mask.shape == (45, 61)
    assert result["area"] == int((mask > 0).sum()) and result["found"] is True
    assert main(["segment", "--checkpoint", str(ckpt), "--image", str(tmp_path / "nope.png"), "--text", "x"]) == 2
