"""Mixed-precision ONNX: the fp16/bf16 graph a strongly typed TensorRT network is built from.

TensorRT 11 removed the FP16/BF16 builder flags: every network is strongly typed, so a tensor is
computed in the type the ONNX graph gives it. NVIDIA's recipe (ModelOpt AutoCast) rewrites the
ONNX to low precision while keeping the numerically fragile ops in fp32. This module does that
rewrite with the ``onnx`` package alone, so it is unit-tested on machines without TensorRT, and
the same file serves TensorRT 10 (strongly typed flag) and 11 and ONNX Runtime's CUDA provider.

Rules:
- float32 initializers, ``Constant``s and ``Cast(to=FLOAT)`` become fp16/bf16, unless every
  consumer needs fp32 (then they stay fp32 and nothing is rounded);
- ops in ``keep_fp32_ops`` (LayerNorm, softmax, norms, exp by default) compute in fp32: their
  float inputs are cast up and their outputs stay fp32 until a low-precision op reads them;
- inputs that ONNX defines as fp32-only (Resize's ``roi``/``scales``) stay fp32;
- with ``keep_io_types`` the graph's inputs and outputs stay float32, so callers bind the same
  buffers whatever the precision;
- values beyond fp16's range are clamped to ±65504 (an attention mask built from
  ``finfo(float32).min`` would otherwise become -inf, and ``0 * -inf`` is NaN).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, helper, numpy_helper

log = logging.getLogger(__name__)

# Element types as plain ints (the values of TensorProto.DataType), as NodeProto attributes hold them.
FLOAT: int = TensorProto.FLOAT
LOW_PRECISION_TYPES: dict[str, int] = {"fp16": TensorProto.FLOAT16, "bf16": TensorProto.BFLOAT16}
FP16_MAX = float(np.finfo(np.float16).max)  # 65504

# Ops whose fp16 versions lose too much: normalisations and softmax (the AutoCast defaults),
# plus squares/roots/exponentials that overflow fp16's range long before fp32's.
DEFAULT_KEEP_FP32_OPS: frozenset[str] = frozenset(
    {
        "LayerNormalization", "GroupNormalization", "InstanceNormalization",
        "Softmax", "LogSoftmax",
        "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp", "Pow", "Sqrt", "Exp",
    }
)
# (op_type -> input slots) that the ONNX spec types as float32 whatever the data's type.
FP32_ONLY_INPUTS: dict[str, frozenset[int]] = {"Resize": frozenset({1, 2}), "Upsample": frozenset({1})}
# Ops whose float output type comes from a dtype attribute rather than from an input.
_DTYPE_ATTR_OPS = {"EyeLike", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike"}


def _low_numpy(array: np.ndarray, low: int) -> tuple[np.ndarray, int]:
    """float32 array -> fp16/bf16 array, clamping finite values to fp16's range; returns the clamp count."""
    a = np.asarray(array, dtype=np.float32)
    clamped = 0
    if low == TensorProto.FLOAT16:
        over = np.isfinite(a) & (np.abs(a) > FP16_MAX)
        clamped = int(over.sum())
        if clamped:
            a = np.where(over, np.sign(a) * FP16_MAX, a)
        return a.astype(np.float16), clamped
    import ml_dtypes  # an onnx dependency; bfloat16 keeps fp32's range, so nothing to clamp

    return a.astype(ml_dtypes.bfloat16), 0


def _low_tensor(tensor: TensorProto, low: int) -> tuple[TensorProto, int]:
    arr, clamped = _low_numpy(numpy_helper.to_array(tensor), low)
    out = numpy_helper.from_array(arr, tensor.name)
    return out, clamped


def _schema_allows(op_type: str, opset: int, elem_type: int) -> bool:
    """Whether some type constraint of the op's schema at ``opset`` admits ``elem_type``."""
    import onnx.defs

    try:
        schema = onnx.defs.get_schema(op_type, opset)
    except onnx.defs.SchemaError:
        return True  # unknown op: leave the decision to the checker
    type_strs: dict[int, str] = {FLOAT: "tensor(float)", TensorProto.FLOAT16: "tensor(float16)",
                                 TensorProto.BFLOAT16: "tensor(bfloat16)"}
    type_str = type_strs[elem_type]
    return any(type_str in tc.allowed_type_strs for tc in schema.type_constraints)


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute)


def _unique(name: str, taken: set[str]) -> str:
    candidate, i = name, 1
    while candidate in taken:
        candidate, i = f"{name}_{i}", i + 1
    taken.add(candidate)
    return candidate


def convert_float_precision(
    model: onnx.ModelProto,
    precision: str = "fp16",
    keep_fp32_ops: Iterable[str] = DEFAULT_KEEP_FP32_OPS,
    keep_io_types: bool = True,
) -> onnx.ModelProto:
    """Returns a mixed-precision copy of ``model`` (see the module docstring for the rules).

    Raises ValueError for an unknown precision or a graph with control-flow subgraphs (If/Loop:
    the CoupAlign export has none, and converting them is not supported here). The result passes
    ``onnx.checker.check_model(full_check=True)``; that check runs before returning.
    """
    if precision not in LOW_PRECISION_TYPES:
        raise ValueError(f"precision must be one of {sorted(LOW_PRECISION_TYPES)}, got {precision!r}")
    low = LOW_PRECISION_TYPES[precision]
    if model.functions:  # model-local functions hide their nodes from the rewrite below
        model = onnx.inliner.inline_local_functions(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    sub = [n.name or n.op_type for n in graph.node if _has_subgraph(n)]
    if sub:
        raise ValueError(f"graphs with control-flow subgraphs are not supported, found in nodes {sub[:5]}")
    # Ops whose schema at this opset has no low-precision variant (e.g. Conv gains bf16 only in
    # opset 22) compute in fp32 too, so the result stays a valid ONNX graph.
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 18)
    unsupported = _ops_without_low_variant(graph, opset, low)
    if unsupported:
        log.info("opset %d has no %s variant of %s: kept in fp32", opset, precision, sorted(unsupported))

    rewrite = _Rewrite(
        graph=graph, low=low, precision=precision, keep=frozenset(keep_fp32_ops) | unsupported,
        io_type=FLOAT if keep_io_types else low, types=_element_types(model, graph),
    )
    rewrite.assign_types()
    new_nodes = rewrite.insert_casts()
    del graph.node[:]
    graph.node.extend(new_nodes)
    del graph.value_info[:]
    if rewrite.clamped:
        log.info("clamped %d values beyond fp16's range to ±%g", rewrite.clamped, FP16_MAX)
    _set_metadata(out, "coupalign.precision", precision)
    out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
    onnx.checker.check_model(out, full_check=True)
    return out


def _ops_without_low_variant(graph: onnx.GraphProto, opset: int, low: int) -> set[str]:
    """Float ops of the graph (not e.g. Not or Shape) whose schema at ``opset`` has no ``low`` variant."""
    return {
        n.op_type for n in graph.node
        if n.domain in ("", "ai.onnx")
        and _schema_allows(n.op_type, opset, FLOAT)  # a float op (not e.g. Not or Shape) ...
        and not _schema_allows(n.op_type, opset, low)  # ... without a low-precision variant
    } - {"Cast", "Constant", "ConstantOfShape"}


def _element_types(model: onnx.ModelProto, graph: onnx.GraphProto) -> dict[str, int]:
    """Tensor name -> element type in the original graph (shape inference plus the initializers)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    types: dict[str, int] = {}
    for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    return types


def _set_metadata(model: onnx.ModelProto, key: str, value: str) -> None:
    props = {p.key: p for p in model.metadata_props}
    if key in props:
        props[key].value = value
    else:
        model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))


@dataclass
class _Rewrite:
    """One conversion of ``graph`` (edited in place): pass 1 decides the type every float tensor has
    in the new graph and lowers what carries its type in an attribute; pass 2 inserts the casts."""

    graph: onnx.GraphProto
    low: int  # TensorProto.FLOAT16 or BFLOAT16
    precision: str  # "fp16" | "bf16", for the names of inserted casts
    keep: frozenset[str]  # ops that compute in fp32
    io_type: int  # the type of the graph's float inputs and outputs
    types: dict[str, int]  # element types of the original graph
    avail: dict[str, int] = field(default_factory=dict)  # float tensor -> its type in the new graph
    clamped: int = 0  # values clamped to fp16's range
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = field(init=False)
    output_names: set[str] = field(init=False)

    def __post_init__(self) -> None:
        self.consumers = defaultdict(list)
        for node in self.graph.node:
            for slot, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((node, slot))
        self.output_names = {o.name for o in self.graph.output}

    def required(self, node: onnx.NodeProto, slot: int) -> int:
        """The type ``node`` reads its input ``slot`` in."""
        if node.op_type in self.keep or slot in FP32_ONLY_INPUTS.get(node.op_type, ()):
            return FLOAT
        return self.low

    def only_fp32_readers(self, name: str) -> bool:
        reqs = [self.required(n, s) for n, s in self.consumers[name]]
        if name in self.output_names:
            reqs.append(self.io_type)
        return bool(reqs) and all(r == FLOAT for r in reqs)

    # ---- pass 1: decide each float tensor's type in the new graph ----------------------------
    def assign_types(self) -> None:
        for inp in self.graph.input:
            if self.types.get(inp.name) == FLOAT:
                self.avail[inp.name] = self.io_type
                inp.type.tensor_type.elem_type = self.io_type
        for i, init in enumerate(self.graph.initializer):
            if init.data_type == FLOAT:
                if self.only_fp32_readers(init.name):
                    self.avail[init.name] = FLOAT
                else:
                    self.graph.initializer[i].CopyFrom(self._lowered(init))
                    self.avail[init.name] = self.low
        for node in self.graph.node:
            float_outputs = [o for o in node.output if o and self.types.get(o) == FLOAT]
            if not float_outputs:
                continue
            if node.op_type in self.keep:
                target = FLOAT
            elif node.op_type in ("Constant", "Cast"):
                target = FLOAT if all(self.only_fp32_readers(o) for o in float_outputs) else self.low
            else:
                target = self.low
            for o in float_outputs:
                self.avail[o] = target
            if target != FLOAT:
                self._lower_type_attributes(node)

    def _lowered(self, tensor: TensorProto) -> TensorProto:
        new, clamped = _low_tensor(tensor, self.low)
        self.clamped += clamped
        return new

    def _lower_type_attributes(self, node: onnx.NodeProto) -> None:
        """Nodes whose float output type is set by an attribute, not by an input."""
        low = self.low
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to":
                    a.i = low
        elif node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == FLOAT:
                    a.t.CopyFrom(self._lowered(a.t))
                elif a.name in ("value_float", "value_floats"):
                    values = [a.f] if a.name == "value_float" else list(a.floats)
                    arr, clamped = _low_numpy(np.array(values, dtype=np.float32), low)
                    self.clamped += clamped
                    arr = arr.reshape(()) if a.name == "value_float" else arr
                    node.attribute.remove(a)
                    node.attribute.append(helper.make_attribute("value", numpy_helper.from_array(arr)))
                    break
        elif node.op_type == "ConstantOfShape":
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is None:  # the default value is a float32 zero
                node.attribute.append(
                    helper.make_attribute("value", numpy_helper.from_array(_low_numpy(np.zeros(1), low)[0]))
                )
            elif value.t.data_type == FLOAT:
                value.t.CopyFrom(_low_tensor(value.t, low)[0])
        elif node.op_type in _DTYPE_ATTR_OPS:
            attr = next((a for a in node.attribute if a.name == "dtype"), None)
            if attr is not None:
                attr.i = low
            elif node.op_type in ("RandomNormal", "RandomUniform"):
                node.attribute.append(helper.make_attribute("dtype", low))

    # ---- pass 2: insert the casts where a reader needs another type ---------------------------
    def insert_casts(self) -> list[onnx.NodeProto]:
        """The new node list: every node with its inputs cast where needed, in graph order."""
        graph = self.graph
        taken = set(self.types) | {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
        type_tag = {FLOAT: "fp32", self.low: self.precision}
        cast_of: dict[tuple[str, int], str] = {}
        new_nodes: list[onnx.NodeProto] = []

        def cast_to(name: str, to: int) -> str:
            key = (name, to)
            if key not in cast_of:
                cast_name = _unique(f"{name}__{type_tag[to]}", taken)
                new_nodes.append(helper.make_node("Cast", [name], [cast_name], to=to, name=f"{cast_name}__cast"))
                cast_of[key] = cast_name
            return cast_of[key]

        renamed_outputs = self._rename_outputs_that_change_type(taken, type_tag)
        for node in graph.node:
            for slot, name in enumerate(node.input):
                if not name:
                    continue
                name = renamed_outputs.get(name, name)
                node.input[slot] = name
                if self.avail.get(name) not in (FLOAT, self.low):
                    continue  # not a float tensor
                need = self.required(node, slot)
                if self.avail[name] != need:
                    node.input[slot] = cast_to(name, need)
            for k, o in enumerate(node.output):
                if o in renamed_outputs:
                    node.output[k] = renamed_outputs[o]
            new_nodes.append(node)
        for original, renamed in renamed_outputs.items():
            new_nodes.append(helper.make_node("Cast", [renamed], [original], to=self.io_type, name=f"{original}__cast"))
        return new_nodes

    def _rename_outputs_that_change_type(self, taken: set[str], type_tag: dict[int, str]) -> dict[str, str]:
        """A float graph output that must change type: its producer writes a renamed tensor and a
        final Cast writes the output's own name. Returns output name -> the producer's new name."""
        renamed_outputs: dict[str, str] = {}
        for out_vi in self.graph.output:
            name = out_vi.name
            if self.types.get(name) != FLOAT:
                continue
            out_vi.type.tensor_type.elem_type = self.io_type
            if self.avail.get(name, self.io_type) != self.io_type:
                renamed_outputs[name] = _unique(f"{name}__{type_tag[self.avail[name]]}", taken)
                self.avail[renamed_outputs[name]] = self.avail[name]
        return renamed_outputs
