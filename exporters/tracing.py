"""Trace a model's energy and its gradients into one ONNX graph.

Recipe: the per-atom energy and its gradient with respect to the edge vectors are traced
into one flat graph by ``make_fx`` (weights passed as inputs through
``torch.func.functional_call``; duck shaping off; ``silu_backward`` decomposed stably),
with the tensor products routed through the custom ops of
:mod:`allegro_deploy.exporters.custom_ops`. That graph, holding the weights as buffers,
goes through ``torch.export`` with dynamic atom and edge counts and ``torch.onnx`` with
the translations of :mod:`allegro_deploy.exporters.onnx_functions`; the ``allegro``
function bodies are attached.

The tensor products appear as ``allegro.TensorProduct`` / ``allegro.TensorProductBackward``
nodes (or their ``EnvFirst`` or ``Center`` forms, chosen per layer from the static shapes)
with model-local function bodies; sums over atoms (``index_add`` and the backward of
indexing) over the edges' centers as a gather into a padded (atoms, neighbors, ...) table
summed by a product with its 0/1 occupancy, the other sums over atoms as
``ScatterElements(reduction="add")``: standard ops that ONNX Runtime runs fast and
TensorRT parses. Edges grouped by center, as neighbor lists emit them, keep the table at
(atoms, most neighbors); any order is exact.

Constant subgraphs (splits and transposes of weights) are folded into initializers:
OpenVINO 2026.4 multiplies by the untransposed weight when one weight feeds a MatMul both
directly and through a Transpose, as the forward and backward of every linear layer do.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import onnx
import onnxscript.optimizer
import torch
from onnx.reference import ReferenceEvaluator
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx

from allegro_deploy.models.allegro import AllegroModel
from allegro_deploy.runtime.metadata import EDGE_INDEX, tensor_specs

from .custom_ops import custom_tensor_products
from .onnx_functions import (
    DOMAIN,
    DOMAIN_VERSION,
    OPSET_VERSION,
    function_protos,
    translation_table,
)
from .samples import graph_of, sample_structures
from .targets import AtomicEnergies, output_function, target_inputs

TRACE_SAMPLE = ("cell", "cluster")
"""Structures traced (of other atom and edge counts than those verified)."""


class _TracedGraph(torch.nn.Module):
    """The ``make_fx`` graph with the model's weights as buffers, for ``torch.export``."""

    def __init__(self, graph: torch.fx.GraphModule, state: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.graph_module = graph
        self.n_state = len(state)
        for i, tensor in enumerate(state):
            self.register_buffer(f"state_{i}", tensor.detach().clone())

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = [getattr(self, f"state_{i}") for i in range(self.n_state)]
        return self.graph_module(*inputs, *state)


def _stable_silu_backward(grad_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``silu_backward`` through ``sigmoid`` (no ``1 / (1 + exp(-x))`` overflow), as nequip.

    Written with the forward's ``sigmoid(x)`` and ``x * sigmoid(x)``, which the runtime's
    common-subexpression elimination shares, so it costs four elementwise passes, not five.
    """
    sigmoid = torch.sigmoid(x)
    silu = x * sigmoid
    return grad_output * (sigmoid + silu * (1 - sigmoid))


def _select_backward_by_concat(
    grad_output: torch.Tensor, input_sizes: Sequence[int], dim: int, index: int
) -> torch.Tensor:
    """``select_backward`` as one concatenation of the gradient with zeros along ``dim``.

    The stock decomposition is a ``where`` over a mask broadcast against the whole input,
    which ONNX Runtime runs element by element; a concatenation copies contiguous blocks.
    The new axis is a ``reshape``, not an ``unsqueeze``: ONNX Runtime's transpose optimizer
    moves a transpose of the gradient past an ``Unsqueeze``, turning a (E, U) -> (U, E)
    transpose (1 ns per element) into (E, 1, U) -> (U, 1, E) (~100 ns per element).
    """
    dim %= len(input_sizes)
    index %= input_sizes[dim]
    grad = grad_output.reshape(*input_sizes[:dim], 1, *input_sizes[dim + 1 :])
    parts = []
    for size in (index, input_sizes[dim] - index - 1):
        zeros = list(input_sizes)
        zeros[dim] = size
        parts.append(grad.new_zeros(zeros) if size else None)
    return torch.cat([p for p in (parts[0], grad, parts[1]) if p is not None], dim)


def _sum_leading_axis_by_product(
    x: torch.Tensor,
    dim: Sequence[int] | None,
    keepdim: bool = False,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A sum over the first axis only of an array of rank >= 2 as a product with a row of
    ones, ``(1, n) @ (n, rest)``; other sums are left to the stock decomposition.

    Autograd makes such sums for the gradient of every broadcast along a leading axis (the
    spherical harmonics and the Bessel basis against channels). ONNX Runtime's
    ``ReduceSum`` over axis 0 of a (32, 4, E) array takes 4.1 ms; the product 0.32 ms.
    """
    if list(dim or ()) != [0] or x.dim() < 2 or not x.is_floating_point() or dtype is not None:
        return NotImplemented
    ones = x.new_ones((1, x.shape[0]))
    total = torch.matmul(ones, x.reshape(x.shape[0], -1)).reshape(1, *x.shape[1:])
    return total if keepdim else total.reshape(x.shape[1:])


@contextlib.contextmanager
def _no_duck_shaping() -> Iterator[None]:
    """Give equal sizes separate symbols, so no dynamic size is tied to a weight shape."""
    config = torch.fx.experimental._config
    previous = config.use_duck_shape
    config.use_duck_shape = False
    try:
        yield
    finally:
        config.use_duck_shape = previous


def _mark_center_sums(graph: torch.fx.GraphModule, edge_index: torch.fx.Node) -> None:
    """Turn the sums of edge rows onto their centers (accumulating ``index_put`` over
    ``edge_index[0]``: the environment sums and the backward of gathering them) into
    ``allegro::center_sum``, which exports as a padded gather instead of a scatter
    (see :func:`onnx_functions.translation_table`)."""

    def is_center(index: object) -> bool:
        return (
            isinstance(index, torch.fx.Node)
            and index.target == torch.ops.aten.select.int
            and index.args == (edge_index, 0, 0)
        )

    for node in graph.graph.find_nodes(op="call_function", target=torch.ops.aten.index_put.default):
        base, indices, values, *accumulate = node.args
        if not (accumulate and accumulate[0] and len(indices) == 1 and is_center(indices[0])):
            continue
        with graph.graph.inserting_after(node):
            center_sum = graph.graph.call_function(
                torch.ops.allegro.center_sum.default, (base, indices[0], values)
            )
        center_sum.meta = dict(node.meta)
        node.replace_all_uses_with(center_sum)
        graph.graph.erase_node(node)
    graph.recompile()


def trace(model: AllegroModel, target: str, inputs: Sequence[torch.Tensor]) -> torch.nn.Module:
    """Energy and its input gradients of ``target`` as one flat graph module.

    inputs: example inputs of the target (see the module docstring); sizes should be >= 2.
    Returns a module taking the target's inputs, with the weights as buffers.
    """
    wrapper = AtomicEnergies(model)
    names = [name for name, _ in wrapper.named_parameters()]
    names += [name for name, _ in wrapper.named_buffers()]
    state = [t.detach() for t in wrapper.parameters()] + list(wrapper.buffers())
    outputs = output_function(target, model.float64)
    n_inputs = len(inputs)

    def function(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weights = dict(zip(names, args[n_inputs:], strict=True))

        def atomic_energies(*edges: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(wrapper, weights, edges)

        return outputs(atomic_energies, *args[:n_inputs])

    decompositions = dict(core_aten_decompositions())
    decompositions[torch.ops.aten.silu_backward.default] = _stable_silu_backward
    decompositions[torch.ops.aten.select_backward.default] = _select_backward_by_concat
    decompositions[torch.ops.aten.sum.dim_IntList] = _sum_leading_axis_by_product
    with custom_tensor_products(model), _no_duck_shaping():
        graph = make_fx(
            function,
            decomposition_table=decompositions,
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,
        )(*inputs, *state)
    edge_index = list(graph.graph.find_nodes(op="placeholder"))[
        [spec.name for spec in tensor_specs(target, model.float64)[0]].index(EDGE_INDEX)
    ]
    _mark_center_sums(graph, edge_index)
    return _TracedGraph(graph, state)


@contextlib.contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    """Silence the optional-dependency and deprecation chatter of torch.onnx and onnx_ir."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def to_onnx(model: AllegroModel, target: str) -> onnx.ModelProto:
    """Trace, export and convert ``model`` (in its own dtype) for ``target``, no metadata.

    Returns the model with the ``allegro`` function bodies attached.
    """
    inputs_spec, outputs_spec = tensor_specs(target, model.float64)
    c = model.config
    trace_graph = graph_of(model, sample_structures(len(c.species), c.r_max, 0, TRACE_SAMPLE))
    example = tuple(target_inputs(trace_graph, target, model.float64))
    traced = trace(model, target, example)
    sizes = {"atoms": torch.export.Dim("atoms"), "edges": torch.export.Dim("edges")}
    dynamic = tuple(
        {axis: sizes[size] for axis, size in enumerate(s.shape) if isinstance(size, str)} or None
        for s in inputs_spec
    )
    with _quiet_torch_onnx():
        exported = torch.export.export(traced, example, dynamic_shapes=(dynamic,), strict=False)
        program = torch.onnx.export(
            exported,
            dynamo=True,
            opset_version=OPSET_VERSION,
            optimize=False,
            verbose=False,
            custom_translation_table=translation_table(),
            input_names=[s.name for s in inputs_spec],
            output_names=[s.name for s in outputs_spec],
        )
        # constant folding, CSE and onnxscript's rewrites, keeping the allegro nodes
        onnxscript.optimizer.optimize_ir(program.model, inline=False)
    proto = fold_constants(program.model_proto)
    used = {n.op_type for n in proto.graph.node if n.domain == DOMAIN}
    proto.functions.extend(f for f in function_protos() if f.name in used)
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return proto


def fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every main-graph node whose inputs are all initializers (the splits and
    transposes of weights that onnxscript's optimizer leaves) by initializers holding its
    outputs; returns ``proto``, changed in place.

    Runtimes fold these themselves, except where they go wrong: OpenVINO 2026.4's CPU
    plugin multiplies by the untransposed weight when one weight feeds a MatMul both
    directly and through a Transpose (``tests/test_runtimes.py`` keeps the reproducer).
    """
    graph = proto.graph
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    kept = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.domain or not inputs or any(name not in values for name in inputs):
            kept.append(node)
            continue
        single = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                "constant",
                [onnx.helper.make_empty_tensor_value_info(name) for name in inputs],
                [onnx.helper.make_empty_tensor_value_info(name) for name in node.output],
            ),
            opset_imports=[onnx.helper.make_opsetid("", OPSET_VERSION)],
        )
        results = ReferenceEvaluator(single).run(None, {name: values[name] for name in inputs})
        values.update(zip(node.output, results, strict=True))
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(
        onnx.numpy_helper.from_array(np.asarray(value), name)
        for name, value in values.items()
        if name in used
    )
    return proto
