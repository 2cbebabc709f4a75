"""ONNX export: fixed-shape graph, checker, self-describing metadata, onnxruntime == torch."""

from __future__ import annotations

import time

import numpy as np
import onnx
import pytest
import torch

from coupalign_core.inference.backends.onnxruntime_backend import (
    OnnxRuntimeBackend,
    available_providers,
    resolve_cpu_provider,
)
from coupalign_core.inference.export import (
    FORMAT,
    OnnxModelInfo,
    cached_onnx,
    cached_onnxruntime_fused_onnx,
    example_inputs,
    export_onnx,
    read_onnx_info,
    verify_onnx,
)
from coupalign_core.inference.graph import InferenceGraph
from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

HAS_OPENVINO = "OpenVINOExecutionProvider" in available_providers()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)  # same weights as test_inference: the session-wide ONNX cache is shared
    model = CoupAlign(CoupAlignConfig.preset("tiny")).eval()
    return model, build_tokenizer(model.config)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    path = tmp_path_factory.getbasetemp() / "coupalign-onnx-cache"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="module")
def tiny_onnx(tiny, onnx_cache):
    model, tok = tiny
    return cached_onnx(model, tok, cache_dir=onnx_cache)  # dynamo exporter, batch 1, opset 18


def torch_outputs(model, images, ids, mask):
    with torch.inference_mode():
        return [t.numpy() for t in InferenceGraph(model)(images, ids, mask)]


def test_graph_interface_is_fixed(tiny, tiny_onnx):
    model, _ = tiny
    m = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == 18

    def dims(vi):
        return [d.dim_value for d in vi.type.tensor_type.shape.dim]

    inputs = {i.name: i for i in m.graph.input}
    s, t = model.config.image_size, model.config.max_tokens
    assert list(inputs) == ["images", "input_ids", "attention_mask"]
    assert dims(inputs["images"]) == [1, 3, s, s]
    assert dims(inputs["input_ids"]) == [1, t] and dims(inputs["attention_mask"]) == [1, t]
    assert inputs["input_ids"].type.tensor_type.elem_type == onnx.TensorProto.INT64
    outputs = {o.name: o for o in m.graph.output}
    assert list(outputs) == ["logits", "presence_logits"]
    assert dims(outputs["logits"]) == [1, 1, s, s] and dims(outputs["presence_logits"]) == [1]


def test_metadata_makes_the_file_self_contained(tiny, tiny_onnx):
    model, tok = tiny
    info = read_onnx_info(tiny_onnx)
    assert info.config == model.config
    assert info.tokenizer.vocab == tok.vocab and info.tokenizer.lowercase == tok.lowercase
    assert (info.batch_size, info.opset, info.exporter, info.precision) == (1, 18, "dynamo", "fp32")
    with pytest.raises(ValueError, match="carries no CoupAlign metadata"):
        OnnxModelInfo.from_props({"coupalign.format": "something-else"})
    assert FORMAT.startswith("coupalign-onnx")


@pytest.mark.parametrize("sentences", [
    ["dog"],  # 3 of 20 tokens: mostly padding
    ["the man in the blue shirt standing to the left of the tall woman with an umbrella"],  # truncated
    ["a 🐶 and 左边的杯子"],
])
@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_onnxruntime_matches_torch_tiny(tiny, tiny_onnx, sentences, provider):
    if provider == "openvino" and not HAS_OPENVINO:
        pytest.skip("this onnxruntime has no OpenVINO execution provider")
    model, tok = tiny
    backend = OnnxRuntimeBackend(tiny_onnx, num_threads=1, cpu_provider=provider)
    assert backend.provider == provider
    expected = {"cpu": "CPUExecutionProvider", "openvino": "OpenVINOExecutionProvider"}[provider]
    assert backend.session.get_providers()[0] == expected
    g = torch.Generator().manual_seed(len(sentences[0]))
    images = torch.randn(1, 3, model.config.image_size, model.config.image_size, generator=g)
    ids, mask = tok(sentences, model.config.max_tokens)
    expected = torch_outputs(model, images, torch.from_numpy(ids), torch.from_numpy(mask))
    got = backend(images.numpy(), ids, mask)
    assert np.abs(got.logits - expected[0]).max() <= 1e-4
    assert np.abs(got.presence_logits - expected[1]).max() <= 1e-4


@pytest.mark.skipif(not HAS_OPENVINO, reason="this onnxruntime has no OpenVINO execution provider")
def test_openvino_runs_the_whole_portable_graph(tiny_onnx):
    """Every node of the export is OpenVINO's: with the CPU fallback switched off the session
    still builds (a node OpenVINO lacked would split the graph and cost copies)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    session = ort.InferenceSession(str(tiny_onnx), sess_options=so, providers=[
        ("OpenVINOExecutionProvider", {"device_type": "CPU", "precision": "FP32", "num_of_threads": "1"})])
    assert session.get_providers()[0] == "OpenVINOExecutionProvider"


def test_cpu_provider_choice_is_checked():
    with pytest.raises(ValueError, match="cpu_provider must be one of"):
        resolve_cpu_provider("gpu")
    assert resolve_cpu_provider("cpu") == "cpu"
    assert resolve_cpu_provider("auto") == ("openvino" if HAS_OPENVINO else "cpu")
    if not HAS_OPENVINO:
        with pytest.raises(RuntimeError, match="pip install onnxruntime-openvino"):
            resolve_cpu_provider("openvino")


def test_onnxruntime_fusions_replace_the_decomposed_gelus(tiny, tiny_onnx, onnx_cache):
    """The onnxruntime backend's copy: every Erf-GELU of Swin and BERT becomes one BiasGelu, the
    outputs stay within 1e-4 of torch, and the copy is cached."""
    model, tok = tiny
    plain = onnx.load(str(tiny_onnx))
    fused_path = cached_onnxruntime_fused_onnx(tiny_onnx, onnx_cache)
    fused = onnx.load(str(fused_path))
    ops = lambda m: [n.op_type for n in m.graph.node]  # noqa: E731
    n_gelu = ops(plain).count("Erf")
    # one per Swin block and BERT layer at least (the mask generator's FFNs add theirs)
    assert n_gelu >= sum(model.config.image_encoder_kwargs["depths"]) + model.config.text_config["num_hidden_layers"]
    assert "Erf" not in ops(fused) and ops(fused).count("BiasGelu") == n_gelu
    assert len(fused.graph.node) < len(plain.graph.node)
    assert {p.key: p.value for p in fused.metadata_props} == {p.key: p.value for p in plain.metadata_props}
    assert verify_onnx(model, tok, fused_path) <= 1e-4
    mtime = fused_path.stat().st_mtime_ns
    assert cached_onnxruntime_fused_onnx(tiny_onnx, onnx_cache) == fused_path
    assert fused_path.stat().st_mtime_ns == mtime


def test_export_cache_reuses_the_file(tiny, tiny_onnx, onnx_cache):
    model, tok = tiny
    mtime = tiny_onnx.stat().st_mtime_ns
    start = time.perf_counter()
    again = cached_onnx(model, tok, cache_dir=onnx_cache)
    assert again == tiny_onnx and again.stat().st_mtime_ns == mtime
    assert time.perf_counter() - start < 5.0  # a hash, not an export
    other = CoupAlign(CoupAlignConfig.preset("tiny")).eval()  # other random weights: other key
    from coupalign_core.inference.cache import model_sha256

    assert model_sha256(other) != model_sha256(model)


def test_batched_legacy_export(tiny, tmp_path):
    """--batch B with the TorchScript exporter (the fallback); padded sentences of unequal length."""
    model, tok = tiny
    path = export_onnx(model, tok, tmp_path / "b2.onnx", batch_size=2, exporter="legacy", verify=False)
    onnx.checker.check_model(onnx.load(str(path)))
    assert read_onnx_info(path).batch_size == 2
    backend = OnnxRuntimeBackend(path, num_threads=1)
    assert backend.batch_size == 2
    inputs = example_inputs(model.config, tok, 2, seed=5)
    assert inputs[2].sum(1).tolist()[0] != inputs[2].sum(1).tolist()[1]  # different lengths
    assert verify_onnx(model, tok, path, inputs) <= 1e-4
    with pytest.raises(ValueError, match="built for batch 2"):
        backend(*(t[:1].numpy() for t in inputs))


def test_export_rejects_bad_arguments(tiny, tmp_path):
    model, tok = tiny
    with pytest.raises(ValueError, match="exporter"):
        export_onnx(model, tok, tmp_path / "x.onnx", exporter="tf2onnx")
    with pytest.raises(ValueError, match="batch_size"):
        export_onnx(model, tok, tmp_path / "x.onnx", batch_size=0)
    with pytest.raises(ValueError, match="opset"):
        export_onnx(model, tok, tmp_path / "x.onnx", opset=13)
    with pytest.raises(FileNotFoundError):
        read_onnx_info(tmp_path / "missing.onnx")


def test_export_verb(tiny, tmp_path, capsys):
    from coupalign_core.checkpoint import save_checkpoint
    from coupalign_core.cli.main import main

    model, tok = tiny
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model, tok)
    out = tmp_path / "tiny16.onnx"
    rc = main(["export", "--checkpoint", str(ckpt), "--format", "onnx", "--out", str(out), "--exporter", "legacy",
               "--precision", "fp16", "--no-verify"])
    assert rc == 0 and out.is_file()
    printed = capsys.readouterr()
    assert "export (torch.onnx)" in printed.err and "stage" in printed.err  # the progress bar
    assert f"wrote {out} (fp16, batch 1, opset 18, " in printed.out and " MB; peak memory " in printed.out
    info = read_onnx_info(out)
    assert info.precision == "fp16" and info.exporter == "legacy"
    # The fp16 file runs in onnxruntime on its own (inputs and outputs stay float32).
    from coupalign_core.inference import Segmenter

    seg = Segmenter.from_checkpoint(out, backend="onnxruntime", threshold=0.0)
    r = seg(np.zeros((30, 40, 3), np.uint8), "the cup")
    assert r.mask.shape == (30, 40) and seg.backend.precision == "fp16"


def test_export_verb_weights_keeps_what_inference_needs(tiny, tmp_path, capsys):
    """--format weights: the release copy (how models/coupalign-synthetic.safetensors is made) drops the
    optimizer state and loads into the same model."""
    from coupalign_core.checkpoint import load_model, read_checkpoint, save_checkpoint
    from coupalign_core.cli.main import main

    model, tok = tiny
    optimizer_state = {"state": {0: {"exp_avg": torch.zeros(100_000)}}}  # what a training run carries
    ckpt = save_checkpoint(tmp_path / "train.pt", model, tok, optimizer=optimizer_state, step=7)
    out = tmp_path / "release.safetensors"
    assert main(["export", "--checkpoint", str(ckpt), "--format", "weights", "--out", str(out)]) == 0
    state = read_checkpoint(out)
    assert "optimizer" not in state and state["step"] == 7
    assert out.stat().st_size < ckpt.stat().st_size
    loaded, _, _ = load_model(out)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)


def test_export_verb_tensorrt_without_tensorrt_fails_clearly(tiny, tmp_path, capsys):
    from coupalign_core.cli.main import main
    from coupalign_core.inference.backends.tensorrt_backend import tensorrt_available

    if tensorrt_available() and torch.cuda.is_available():
        pytest.skip("TensorRT and CUDA are present")
    from coupalign_core.checkpoint import save_checkpoint

    model, tok = tiny
    ckpt = save_checkpoint(tmp_path / "tiny.pt", model, tok)
    rc = main(["export", "--checkpoint", str(ckpt), "--format", "tensorrt", "--out", str(tmp_path / "x.engine")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "pip install tensorrt" in err or "CUDA" in err
    assert not (tmp_path / "x.engine").exists()


@pytest.mark.slow
def test_onnxruntime_matches_torch_small(tmp_path):
    """The small preset (pretrained MiniLM + Swin-T at 224): ~40 s on a 2-core CPU, mostly the export."""
    torch.manual_seed(0)
    config = CoupAlignConfig.preset("small")
    model = CoupAlign(config).eval()
    tok = build_tokenizer(config)
    path = export_onnx(model, tok, tmp_path / "small.onnx", verify=False)
    onnx.checker.check_model(str(path))
    fused = cached_onnxruntime_fused_onnx(path, tmp_path)  # what the onnxruntime backend runs
    for sentence in ["cup", "the person on the far right wearing a dark jacket"]:
        inputs = list(example_inputs(config, tok, 1, seed=len(sentence)))
        ids, mask = tok([sentence], config.max_tokens)
        inputs[1:] = [torch.from_numpy(ids), torch.from_numpy(mask)]
        assert verify_onnx(model, tok, path, tuple(inputs)) <= 1e-4
        assert verify_onnx(model, tok, fused, tuple(inputs)) <= 1e-4
        if HAS_OPENVINO:  # what the onnxruntime backend runs where onnxruntime has OpenVINO
            assert verify_onnx(model, tok, path, tuple(inputs), cpu_provider="openvino") <= 1e-4


def test_external_data_graph_loads_and_runs(tiny, tiny_onnx, tmp_path, onnx_cache):
    """A graph over protobuf's 2 GB limit keeps its weights beside it; everything that reads an
    .onnx finds them (here forced on the tiny graph)."""
    from coupalign_core.inference import Segmenter
    from coupalign_core.inference.export import onnx_files, save_onnx, sha256_onnx

    path = save_onnx(onnx.load(str(tiny_onnx)), tmp_path / "split.onnx", external_data=True)
    files = onnx_files(path)
    assert files == [path, tmp_path / "split.onnx.data"] and path.stat().st_size < files[1].stat().st_size
    assert read_onnx_info(path).config == read_onnx_info(tiny_onnx).config
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left
    image = np.zeros((40, 56, 3), np.uint8)
    plain = Segmenter.from_onnx(tiny_onnx, backend="onnxruntime", cpu_provider="cpu", num_threads=1, threshold=0.0,
                                cache_dir=onnx_cache)(image, "the cup")
    for provider in ("cpu", "openvino") if HAS_OPENVINO else ("cpu",):
        split = Segmenter.from_onnx(path, backend="onnxruntime", cpu_provider=provider, num_threads=1, threshold=0.0,
                                    cache_dir=tmp_path / "cache")(image, "the cup")
        assert abs(split.score - plain.score) < 1e-4, provider
    before = sha256_onnx(path)
    data = files[1].read_bytes()
    files[1].write_bytes(data[:-4] + bytes(4))  # other weights, same graph file
    assert sha256_onnx(path) != before


def test_segmenter_refuses_to_export_a_large_model_on_first_use(tiny, tiny_onnx, tmp_path, onnx_cache, monkeypatch):
    from coupalign_core.inference import Segmenter, export

    model, tok = tiny
    monkeypatch.setattr(export, "LARGE_EXPORT_PARAMETERS", 1000)  # the tiny model counts as large
    with pytest.raises(export.ExportRequiredError, match=r"coupalign export --checkpoint CHECKPOINT --format onnx"):
        Segmenter(model, tok, backend="onnxruntime", device="cpu", cache_dir=tmp_path)
    assert not (tmp_path / "onnx").exists()  # nothing was exported
    # an export made beforehand (the cache that `coupalign export --format tensorrt` and gpu_bench fill) is used
    assert Segmenter(model, tok, backend="onnxruntime", device="cpu", num_threads=1, cache_dir=onnx_cache)
    # backend="auto" leaves onnxruntime out of its probe and says why
    threads = torch.get_num_threads()
    try:
        auto = Segmenter(model, tok, backend="auto", device="cpu", num_threads=1, cache_dir=tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert auto.backend.name == "torch" and auto.probe is not None
    assert any("onnxruntime left out" in note and "coupalign export" in note for note in auto.probe.notes)


def test_int8_graph_is_quantized_calibrated_and_close(tiny_onnx, tmp_path, onnx_cache):
    """precision="int8": the export quantized (QDQ around the matrix products, calibrated on synthetic
    frames), cached, and close to fp32 (random weights: the logits correlate, they are not equal)."""
    from coupalign_core.inference import Segmenter
    from coupalign_core.inference.quantize import calibration_batches, calibration_frames

    seg = Segmenter.from_onnx(tiny_onnx, precision="int8", num_threads=1, threshold=0.0, cache_dir=tmp_path)
    assert seg.backend.name == "onnxruntime" and seg.backend.precision == "int8"
    graph_path = seg.backend.onnx_path  # type: ignore[attr-defined]
    graph = onnx.load(str(graph_path))
    ops = {n.op_type for n in graph.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    info = read_onnx_info(graph_path)
    assert info.precision == "int8" and info.config == read_onnx_info(tiny_onnx).config
    # the quantized file runs on its own, as an int8 graph
    again = Segmenter.from_onnx(graph_path, num_threads=1, threshold=0.0, cache_dir=tmp_path)
    assert again.backend.precision == "int8" and again.backend.onnx_path == graph_path  # type: ignore[attr-defined]
    fp32 = OnnxRuntimeBackend(tiny_onnx, num_threads=1, cpu_provider="cpu")
    frames = calibration_frames(3, seed=4242)
    for feed in calibration_batches(frames, info.tokenizer, info.config.image_size, info.config.max_tokens, 1):
        want = fp32(feed["images"], feed["input_ids"], feed["attention_mask"]).logits.ravel()
        got = seg.backend(feed["images"], feed["input_ids"], feed["attention_mask"]).logits.ravel()
        assert np.corrcoef(want, got)[0, 1] > 0.9
    with pytest.raises(ValueError, match="int8 runs on the CPU only"):
        Segmenter.from_onnx(tiny_onnx, precision="int8", device="cuda")


def _symbolic_batch_graph(path):
    """A stand-in CoupAlign graph with a symbolic batch: logits = the first image channel."""
    from onnx import TensorProto, helper

    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, 8, 8]),
              helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", 4]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", 4])]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1, 8, 8])
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("s", 0), ("e", 1), ("a", 1))]
    node = helper.make_node("Slice", ["images", "s", "e", "a"], ["logits"])
    graph = helper.make_graph([node], "g", inputs, [out], initializer=consts)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10), str(path))
    return path


def test_a_symbolic_batch_runs_any_batch_in_one_call(tmp_path):
    backend = OnnxRuntimeBackend(_symbolic_batch_graph(tmp_path / "dyn.onnx"), num_threads=1, cpu_provider="cpu")
    assert backend.batch_size is None and backend.image_size == 8 and backend.max_tokens == 4
    assert "batch any" in backend.describe()
    for batch in (1, 3):
        images = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        ids = np.zeros((batch, 4), np.int64)
        out = backend(images, ids, ids)
        np.testing.assert_array_equal(out.logits, images[:, :1])


def test_dynamic_batch_needs_the_dynamo_exporter(tiny, tmp_path):
    from coupalign_core.inference import SegmenterOptions

    with pytest.raises(ValueError, match="dynamic_batch needs exporter 'dynamo'"):
        SegmenterOptions(dynamic_batch=True, exporter="legacy")
    model, tok = tiny
    with pytest.raises(ValueError, match="a dynamic batch needs the dynamo exporter"):
        export_onnx(model, tok, tmp_path / "x.onnx", exporter="legacy", dynamic_batch=True)


@pytest.mark.slow
def test_dynamic_batch_export_matches_torch_at_every_batch(tiny, tmp_path):
    from coupalign_core.inference import Segmenter

    model, tok = tiny
    path = export_onnx(model, tok, tmp_path / "dyn.onnx", dynamic_batch=True, verify=False)
    assert read_onnx_info(path).batch_size is None
    backend = OnnxRuntimeBackend(path, num_threads=1, cpu_provider="cpu")
    assert backend.batch_size is None
    for batch in (1, 3):
        inputs = example_inputs(model.config, tok, batch, seed=batch)
        got = backend(*(t.numpy() for t in inputs))
        want = torch_outputs(model, *inputs)
        assert got.logits.shape == (batch, 1, model.config.image_size, model.config.image_size)
        assert np.abs(got.logits - want[0]).max() <= 1e-4
    seg = Segmenter(model, tok, backend="onnxruntime", device="cpu", dynamic_batch=True, num_threads=1,
                    threshold=0.0, cache_dir=tmp_path)
    assert seg.backend.batch_size is None
    results = seg.batch([np.zeros((30, 40, 3), np.uint8)] * 3, ["the cup", "a box", "the ball"])
    assert len(results) == 3
