"""Would TensorRT's ONNX parser take this file? A check without TensorRT
(``allegro-deploy info --tensorrt``).

Every node of the main graph, and of the ``allegro`` function bodies the parser falls
back to when no plugin of that name is registered, is checked against the parser's
documented support (:mod:`allegro_deploy.exporters.tensorrt_ops`): the op, the data type
it is given, inputs that must be constants, unsupported attributes; and the graph's
opset and its inputs' types and shapes. Needs ``onnx`` only.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import onnx

from .tensorrt_ops import SUPPORT, ParserSupport

_DATA_INPUTS = {"Where": (1, 2), "ScatterElements": (0, 2), "ScatterND": (0, 2)}
"""Inputs whose type is the op's data type (default: the first); the others are
indices, shapes or conditions."""
_OUTPUT_TYPED = ("Cast", "CastLike", "Constant", "ConstantOfShape")
"""Ops whose output type is a data type to check too."""


@dataclass(frozen=True)
class Finding:
    """One node (or the graph, ``where`` = ``graph``) the parser would reject, and why."""

    where: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where} ({self.op}): {self.reason}"


@dataclass(frozen=True)
class TensorRTReport:
    """The outcome of :func:`check_tensorrt`: ``findings`` empty means the parser would
    take every node."""

    source: str
    version: str
    nodes: int
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        head = (
            f"TensorRT {self.version} ONNX parser check of {self.source}: {self.nodes} nodes "
            "(main graph and allegro function bodies)"
        )
        if self.ok:
            return f"{head}: every node is supported"
        lines = [f"{head}: {len(self.findings)} would fail"]
        lines += [f"  {finding}" for finding in self.findings]
        return "\n".join(lines)


def check_tensorrt(model: onnx.ModelProto | str | Path, version: str = "10.1") -> TensorRTReport:
    """Check ``model`` (an ONNX file or proto) against TensorRT ``version``'s parser.

    Raises ``ValueError`` for a version without a support table.
    """
    if version not in SUPPORT:
        raise ValueError(
            f"no ONNX parser support table for TensorRT {version}; known: {', '.join(SUPPORT)}"
        )
    support = SUPPORT[version]
    source = "model" if isinstance(model, onnx.ModelProto) else str(model)
    if not isinstance(model, onnx.ModelProto):
        model = onnx.load(model)
    inferred = onnx.shape_inference.infer_shapes(model)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    findings = list(_graph_findings(inferred.graph, support, opset))
    functions = {(f.domain, f.name): f for f in model.functions}
    types = _types(inferred.graph)
    constants = _constants(inferred.graph)
    nodes = 0
    for node in inferred.graph.node:
        nodes += 1
        where = node.name or f"{node.op_type} node"
        if node.domain in ("", "ai.onnx"):
            findings += _node_findings(node, where, types, constants, support, opset)
            continue
        function = functions.get((node.domain, node.op_type))
        if function is None:
            findings.append(
                Finding(where, f"{node.domain}.{node.op_type}", "custom op with no function body")
            )
            continue
        body, body_types, body_constants = _typed_body(function, node, types, opset)
        for inner in body.node:
            nodes += 1
            inner_where = f"{where} > {function.name}.{inner.name or inner.op_type}"
            findings += _node_findings(
                inner, inner_where, body_types, body_constants, support, opset
            )
    return TensorRTReport(source, version, nodes, tuple(findings))


def _graph_findings(
    graph: onnx.GraphProto, support: ParserSupport, opset: int
) -> Iterator[Finding]:
    low, high = support.opsets
    if not low <= opset <= high:
        yield Finding("graph", "opset", f"opset {opset} is outside {low}-{high}")
    for value in graph.input:
        tensor = value.type.tensor_type
        name = onnx.TensorProto.DataType.Name(tensor.elem_type)
        if name == "DOUBLE":
            yield Finding(f"input {value.name}", "graph input", "DOUBLE (TensorRT has no float64)")
        if not tensor.HasField("shape"):
            yield Finding(f"input {value.name}", "graph input", "unknown rank")
        elif any(not (d.dim_param or d.HasField("dim_value")) for d in tensor.shape.dim):
            yield Finding(f"input {value.name}", "graph input", "an axis without size or name")
    for value in graph.output:
        if value.type.tensor_type.elem_type == onnx.TensorProto.DOUBLE:
            yield Finding(
                f"output {value.name}", "graph output", "DOUBLE (TensorRT has no float64)"
            )


def _types(graph: onnx.GraphProto) -> dict[str, int]:
    """Element type of every tensor shape inference typed."""
    values = [*graph.input, *graph.output, *graph.value_info]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in graph.initializer})
    return types


def _constants(graph: onnx.GraphProto) -> set[str]:
    """Names of the initializers and the outputs of Constant nodes."""
    names = {t.name for t in graph.initializer}
    names.update(n.output[0] for n in graph.node if n.op_type == "Constant")
    return names


def _typed_body(
    function: onnx.FunctionProto, call: onnx.NodeProto, types: Mapping[str, int], opset: int
) -> tuple[onnx.GraphProto, dict[str, int], set[str]]:
    """The body of ``function`` as a graph typed by the inputs of ``call``."""
    inputs = [
        onnx.helper.make_tensor_value_info(name, types.get(actual, 0), None)
        for name, actual in zip(function.input, call.input, strict=False)
    ]
    graph = onnx.helper.make_graph(
        list(function.node),
        function.name,
        inputs,
        [onnx.helper.make_empty_tensor_value_info(name) for name in function.output],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    typed = onnx.shape_inference.infer_shapes(model).graph
    return typed, _types(typed), _constants(typed)


def _node_findings(
    node: onnx.NodeProto,
    where: str,
    types: Mapping[str, int],
    constants: set[str],
    support: ParserSupport,
    opset: int,
) -> list[Finding]:
    """Why the parser would reject ``node`` (empty when it would take it)."""
    op = node.op_type
    if op in support.unsupported:
        return [Finding(where, op, f"not supported by TensorRT {support.version}")]
    if op not in support.op_types:
        return [Finding(where, op, f"not in TensorRT {support.version}'s operator table")]
    findings = []
    allowed = support.op_types[op]
    tensors = [node.input[i] for i in _DATA_INPUTS.get(op, (0,)) if i < len(node.input)]
    if op in _OUTPUT_TYPED:
        tensors.append(node.output[0])
    for name in tensors:
        if not name or name not in types or not types[name]:
            continue
        dtype = onnx.TensorProto.DataType.Name(types[name])
        if dtype not in allowed:
            why = " (TensorRT has no float64)" if dtype == "DOUBLE" else ""
            findings.append(
                Finding(where, op, f"{name} is {dtype}{why}; it takes {', '.join(sorted(allowed))}")
            )
    if op in support.constant_inputs:
        wanted = support.constant_inputs[op]
        schema = onnx.defs.get_schema(op, opset)
        names = [i.name for i in schema.inputs]
        if wanted in names:
            index = names.index(wanted)
            if index < len(node.input) and node.input[index] and node.input[index] not in constants:
                findings.append(Finding(where, op, f"input {wanted} must be a constant"))
    attribute = support.unsupported_attributes.get(op)
    for a in node.attribute:
        if a.name == attribute and onnx.helper.get_attribute_value(a) not in (b"none", "none"):
            findings.append(Finding(where, op, f"attribute {attribute} is not supported"))
    return findings
