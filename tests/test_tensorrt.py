"""TensorRT backend: everything that runs without TensorRT (mixed-precision ONNX, engine cache keys,
binding plan, errors), plus an end-to-end check that runs only where TensorRT and a GPU exist."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from coupalign_core.inference.backends.tensorrt_backend import (
    BindingPlan,
    TensorSpec,
    engine_cache_key,
    engine_cache_path,
    io_specs_from_engine,
    io_specs_from_onnx,
    network_creation_flags,
    require_tensorrt,
    tensorrt_available,
)
from coupalign_core.inference.export import cached_onnx
from coupalign_core.inference.onnx_precision import FP16_MAX, convert_float_precision
from coupalign_core.model import CoupAlign, CoupAlignConfig, build_tokenizer

HAS_TRT_AND_GPU = tensorrt_available() and torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)  # same weights as test_inference/test_export: shared ONNX cache
    model = CoupAlign(CoupAlignConfig.preset("tiny")).eval()
    return model, build_tokenizer(model.config)


@pytest.fixture(scope="module")
def tiny_onnx(tiny, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "coupalign-onnx-cache"
    cache.mkdir(exist_ok=True)
    return cached_onnx(*tiny, cache_dir=cache)


def value_types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    types.update({i.name: i.data_type for i in model.graph.initializer})
    return types


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


# ---- mixed-precision ONNX --------------------------------------------------------------------------
def attention_like_graph() -> onnx.ModelProto:
    """MatMul -> LayerNorm -> + (1 - mask) * finfo.min -> Softmax -> Resize, with `a` also an output."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "W"),
        numpy_helper.from_array(np.ones(8, np.float32) * 1.5, "gamma"),
        numpy_helper.from_array(np.full(8, 0.1, np.float32), "beta"),
        numpy_helper.from_array(np.array([1.0], np.float32), "one"),
        numpy_helper.from_array(np.array([np.finfo(np.float32).min], np.float32), "neg"),
        numpy_helper.from_array(np.array([1.0, 1.0, 2.0], np.float32), "scales"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a"]),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array([2.0], np.float32))),
        helper.make_node("Mul", ["a", "two"], ["a2"]),
        helper.make_node("LayerNormalization", ["a2", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("Sub", ["one", "m"], ["inv"]),
        helper.make_node("Mul", ["inv", "neg"], ["bias"]),
        helper.make_node("Add", ["ln", "bias"], ["s"]),
        helper.make_node("Softmax", ["s"], ["sm"], axis=-1),
        helper.make_node("Resize", ["sm", "", "scales"], ["y"], mode="nearest"),
    ]
    f = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph(nodes, "g", [f("x", [1, 4, 8]), f("m", [1, 4, 8])],
                              [f("y", [1, 4, 16]), f("a", [1, 4, 8])], initializer=inits)
    # IR version 10 (what torch's exporter writes): onnx's default for a new model can be newer
    # than the onnxruntime beside it reads (onnxruntime-openvino 1.24 stops at IR 13).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def test_fp16_conversion_places_casts_by_the_rules():
    model = attention_like_graph()
    onnx.checker.check_model(model, full_check=True)
    conv = convert_float_precision(model, "fp16")
    types = value_types(conv)
    inits = {i.name: i for i in conv.graph.initializer}
    # Weights read by low-precision ops are fp16; LayerNorm's own and Resize's scales stay fp32.
    assert inits["W"].data_type == TensorProto.FLOAT16 and inits["one"].data_type == TensorProto.FLOAT16
    assert inits["gamma"].data_type == TensorProto.FLOAT and inits["beta"].data_type == TensorProto.FLOAT
    assert inits["scales"].data_type == TensorProto.FLOAT
    # finfo(float32).min would be -inf in fp16 (and 0 * -inf = NaN): clamped to -65504.
    assert numpy_helper.to_array(inits["neg"]).item() == -FP16_MAX
    const = next(n for n in conv.graph.node if n.op_type == "Constant")
    assert const.attribute[0].t.data_type == TensorProto.FLOAT16
    # LayerNorm and Softmax compute in fp32; graph inputs and outputs stay float32.
    for node in conv.graph.node:
        if node.op_type in ("LayerNormalization", "Softmax"):
            assert all(types[i] == TensorProto.FLOAT for i in node.input if i)
        if node.op_type == "MatMul":
            assert all(types[i] == TensorProto.FLOAT16 for i in node.input)
    assert all(v.type.tensor_type.elem_type == TensorProto.FLOAT for v in (*conv.graph.input, *conv.graph.output))
    # `a` is both a graph output and read by Mul: the output is a Cast of the fp16 tensor.
    producer = next(n for n in conv.graph.node if "a" in n.output)
    assert producer.op_type == "Cast" and types[producer.input[0]] == TensorProto.FLOAT16


def test_fp16_conversion_keeps_the_numbers():
    model = attention_like_graph()
    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((1, 4, 8)).astype(np.float32),
             "m": (rng.random((1, 4, 8)) > 0.3).astype(np.float32)}
    ref = run(model, feeds)
    got = run(convert_float_precision(model, "fp16"), feeds)
    assert all(np.isfinite(g).all() for g in got)
    assert np.abs(got[0] - ref[0]).max() < 2e-3  # softmax weights
    assert np.abs(got[1] - ref[1]).max() < 1e-2 * np.abs(ref[1]).max()
    assert np.all(got[0][np.repeat(feeds["m"], 2, axis=-1) == 0] < 1e-6)  # masked positions stay masked


def test_fp16_tiny_model_matches_fp32(tiny, tiny_onnx):
    model, tok = tiny
    fp32 = onnx.load(str(tiny_onnx))
    fp16 = convert_float_precision(fp32, "fp16")
    types = value_types(fp16)
    kept = [n for n in fp16.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert kept and all(types[i] == TensorProto.FLOAT for n in kept for i in n.input if i)
    assert sum(i.data_type == TensorProto.FLOAT16 for i in fp16.graph.initializer) > 50
    assert {p.key: p.value for p in fp16.metadata_props}["coupalign.precision"] == "fp16"
    rng = np.random.default_rng(2)
    ids, mask = tok(["the red cup"], model.config.max_tokens)
    feeds = {"images": rng.standard_normal((1, 3, 96, 96)).astype(np.float32), "input_ids": ids, "attention_mask": mask}
    ref, got = run(fp32, feeds), run(fp16, feeds)
    assert np.abs(got[0] - ref[0]).max() < 2e-2
    assert np.mean((got[0] > 0) == (ref[0] > 0)) > 0.995
    assert abs(got[1] - ref[1]).max() < 2e-2


def test_bf16_keeps_ops_without_a_bf16_schema_in_fp32(tiny_onnx):
    bf16 = convert_float_precision(onnx.load(str(tiny_onnx)), "bf16")  # checker(full) runs inside
    types = value_types(bf16)
    convs = [n for n in bf16.graph.node if n.op_type == "Conv"]  # Conv has bf16 only from opset 22
    assert convs and all(types[n.input[0]] == TensorProto.FLOAT for n in convs)
    matmuls = [n for n in bf16.graph.node if n.op_type == "MatMul"]
    assert any(types[n.input[0]] == TensorProto.BFLOAT16 for n in matmuls)


def test_conversion_rejects_bad_requests():
    with pytest.raises(ValueError, match="precision must be one of"):
        convert_float_precision(attention_like_graph(), "int8")
    then = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "then", [],
                             [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    g = helper.make_graph(
        [helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=then)], "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])])
    with pytest.raises(ValueError, match="subgraphs"):
        convert_float_precision(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), "fp16")


# ---- engine cache ----------------------------------------------------------------------------------
SHAPES = {"images": (1, 3, 224, 224), "input_ids": (1, 30), "attention_mask": (1, 30)}


def test_engine_cache_key_covers_every_field():
    base = dict(onnx_sha256="ab" * 32, tensorrt_version="10.3.0", gpu_name="NVIDIA H100 80GB HBM3",
                compute_capability=(9, 0), precision="fp16", input_shapes=SHAPES)
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**dict(base, input_shapes=dict(reversed(list(SHAPES.items())))))  # order-free
    changes = [
        dict(onnx_sha256="cd" * 32), dict(tensorrt_version="11.0.0"), dict(gpu_name="NVIDIA H200"),
        dict(compute_capability=(8, 9)), dict(precision="fp32"),
        dict(input_shapes=dict(SHAPES, images=(2, 3, 224, 224))),
    ]
    keys = {engine_cache_key(**dict(base, **c)) for c in changes}
    assert key not in keys and len(keys) == len(changes)
    path = engine_cache_path("/c", key, "fp16", 1)
    assert path.parent.name == "tensorrt" and path.name == f"coupalign-fp16-b1-{key[:20]}.engine"


# ---- binding plan ----------------------------------------------------------------------------------
def specs(batch=1, s=96, t=20, ids_dtype="int64", presence=True, logits_shape=None) -> list[TensorSpec]:
    out = [
        TensorSpec("attention_mask", True, (batch, t), ids_dtype),
        TensorSpec("images", True, (batch, 3, s, s), "float32"),
        TensorSpec("input_ids", True, (batch, t), ids_dtype),
        TensorSpec("logits", False, logits_shape or (batch, 1, s, s), "float32"),
    ]
    return out + ([TensorSpec("presence_logits", False, (batch,), "float32")] if presence else [])


def test_binding_plan_from_the_exported_graph(tiny_onnx):
    plan = BindingPlan.from_specs(io_specs_from_onnx(onnx.load(str(tiny_onnx), load_external_data=False)))
    assert [s.name for s in plan.inputs] == ["images", "input_ids", "attention_mask"]
    assert (plan.batch_size, plan.image_size, plan.max_tokens, plan.has_presence_head) == (1, 96, 20, True)
    assert plan.input_shapes() == {"images": (1, 3, 96, 96), "input_ids": (1, 20), "attention_mask": (1, 20)}


def test_binding_plan_stages_inputs_with_dtype_conversion():
    plan = BindingPlan.from_specs(specs(batch=2, ids_dtype="int32"))  # an engine that narrowed int64 ids
    assert [s.name for s in plan.inputs] == ["images", "input_ids", "attention_mask"]  # canonical order
    buffers = plan.allocate("cpu")
    assert buffers["input_ids"].dtype == torch.int32 and buffers["presence_logits"].shape == (2,)
    images = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    ids = np.arange(40, dtype=np.int64).reshape(2, 20)
    plan.stage_inputs(buffers, (images, ids, np.ones((2, 20), np.int64)))
    assert torch.equal(buffers["input_ids"], torch.arange(40, dtype=torch.int32).reshape(2, 20))
    assert torch.equal(buffers["images"], torch.from_numpy(images))
    with pytest.raises(ValueError, match=r"images must have shape \(2, 3, 96, 96\)"):
        plan.stage_inputs(buffers, (images[:1], ids, ids))


@pytest.mark.parametrize(
    "bad, message",
    [
        ([s for s in specs() if s.name != "attention_mask"], "missing \\['attention_mask'\\]"),
        (specs() + [TensorSpec("token_type_ids", True, (1, 20), "int64")], "unexpected \\['token_type_ids'\\]"),
        (specs(logits_shape=(1, 1, 48, 48)), "logits must be"),
        ([TensorSpec("images", True, (-1, 3, 96, 96), "float32")] + specs()[2:] + specs()[:1], "dynamic shape"),
        (specs(ids_dtype="float32"), "must be a int tensor"),
    ],
)
def test_binding_plan_rejects_foreign_engines(bad, message):
    with pytest.raises(ValueError, match=message):
        BindingPlan.from_specs(bad)


def test_io_specs_from_a_tensorrt_style_engine():
    """The TensorRT 10 name-based API (num_io_tensors, get_tensor_*) mapped to specs."""
    mode = SimpleNamespace(INPUT="in", OUTPUT="out")
    table = [("images", "in", "DataType.HALF", (1, 3, 96, 96)), ("input_ids", "in", "DataType.INT64", (1, 20)),
             ("attention_mask", "in", "DataType.INT32", (1, 20)), ("logits", "out", "DataType.FLOAT", (1, 1, 96, 96))]
    engine = SimpleNamespace(
        num_io_tensors=len(table),
        get_tensor_name=lambda i: table[i][0],
        get_tensor_mode=lambda n: next(r[1] for r in table if r[0] == n),
        get_tensor_dtype=lambda n: next(r[2] for r in table if r[0] == n),
        get_tensor_shape=lambda n: next(r[3] for r in table if r[0] == n),
    )
    plan = BindingPlan.from_specs(io_specs_from_engine(engine, SimpleNamespace(TensorIOMode=mode)))
    assert [s.dtype for s in plan.inputs] == ["float16", "int64", "int32"]
    assert not plan.has_presence_head


def test_strongly_typed_flag_where_it_exists():
    ten = SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace(STRONGLY_TYPED=2))
    assert network_creation_flags(ten) == 1 << 2
    assert network_creation_flags(SimpleNamespace(NetworkDefinitionCreationFlag=SimpleNamespace())) == 0


# ---- without TensorRT: clear errors ----------------------------------------------------------------
@pytest.mark.skipif(tensorrt_available(), reason="TensorRT is installed")
def test_missing_tensorrt_says_what_to_install(tiny, tmp_path):
    from coupalign_core.inference import Segmenter
    from coupalign_core.inference.backends.tensorrt_backend import TensorRTBackend

    with pytest.raises(RuntimeError, match="pip install tensorrt"):
        require_tensorrt()
    with pytest.raises(RuntimeError, match="pip install tensorrt"):
        TensorRTBackend(tmp_path / "model.onnx")
    with pytest.raises(RuntimeError, match="pip install tensorrt"):
        Segmenter(*tiny, backend="tensorrt", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())  # failed before exporting anything


# ---- with TensorRT and a GPU -----------------------------------------------------------------------
@pytest.mark.skipif(not HAS_TRT_AND_GPU, reason="needs TensorRT and a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_torch(tiny, tiny_onnx, tmp_path, precision):
    from coupalign_core.inference import Segmenter

    model, tok = tiny
    trt_seg = Segmenter.from_onnx(tiny_onnx, backend="tensorrt", precision=precision, threshold=0.0, cache_dir=tmp_path)
    ref = Segmenter(model, tok, backend="torch", device="cpu", threshold=0.0)
    image = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    a, b = trt_seg(image, "the cup"), ref(image, "the cup")
    assert abs(a.score - b.score) < (1e-3 if precision == "fp32" else 2e-2)
    assert np.mean(a.mask != b.mask) < (1e-3 if precision == "fp32" else 1e-2)
    assert list((tmp_path / "tensorrt").glob("*.engine"))  # cached for the next start


# ---- the build recipe, against a stand-in for the tensorrt module ---------------------------------
class FakeTensorRT:
    """Just enough of the TensorRT 10/11 builder API to run build_engine without TensorRT.

    Records what the recipe asked for; ``parse_ok``/``build_ok`` make the parser or builder fail.
    """

    __version__ = "10.9.0"

    def __init__(self, parse_ok=True, build_ok=True):
        self.calls: dict = {}
        fake = self

        class Logger:
            WARNING = "warning"

            def __init__(self, level):
                fake.calls["logger"] = level

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls["pool"] = (pool, size)

            def create_timing_cache(self, data):
                fake.calls["timing_in"] = bytes(data)
                return SimpleNamespace(serialize=lambda: memoryview(bytes(data) + b"+new"))

            def set_timing_cache(self, cache, ignore_mismatch):
                fake.calls["ignore_mismatch"] = ignore_mismatch
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls["flags"] = flags
                return "network"

            def create_builder_config(self):
                return Config()

            def build_serialized_network(self, network, config):
                return memoryview(b"PLAN") if build_ok else None

        class OnnxParser:
            num_errors = 0 if parse_ok else 2

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls["parsed"] = path
                return parse_ok

            def get_error(self, i):
                return f"error {i}"

        self.Logger, self.Builder, self.OnnxParser = Logger, Builder, OnnxParser
        self.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=5)
        self.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")


def test_build_engine_recipe_and_timing_cache(tmp_path):
    from coupalign_core.inference.backends.tensorrt_backend import build_engine

    timing = tmp_path / "timing.cache"
    trt = FakeTensorRT()
    plan = build_engine(tmp_path / "m.onnx", workspace_bytes=123, timing_cache_path=timing, trt=trt)
    assert plan == b"PLAN"
    assert trt.calls["flags"] == 1 << 5  # strongly typed
    assert trt.calls["parsed"] == str(tmp_path / "m.onnx")
    assert trt.calls["pool"] == ("workspace", 123)
    assert trt.calls["timing_in"] == b"" and trt.calls["ignore_mismatch"] is False
    assert timing.read_bytes() == b"+new"  # saved for the next build...
    build_engine(tmp_path / "m.onnx", timing_cache_path=timing, trt=FakeTensorRT())
    assert timing.read_bytes() == b"+new+new"  # ...and loaded by it

    with pytest.raises(RuntimeError, match="rejected .*error 0; error 1"):
        build_engine(tmp_path / "m.onnx", trt=FakeTensorRT(parse_ok=False))
    with pytest.raises(RuntimeError, match="could not build an engine"):
        build_engine(tmp_path / "m.onnx", trt=FakeTensorRT(build_ok=False))
