"""ONNX side of the export: the ``allegro`` custom domain and the torch.onnx translations.

Each custom op becomes one node of domain ``allegro`` whose computation is also given as
a model-local function (a ``FunctionProto`` in ``model.functions``, same domain and name)
made of standard ONNX ops (MatMul, Mul, ReduceSum, Reshape, Transpose, Shape, Concat,
Unsqueeze). A runtime without a fused kernel (ONNX Runtime, or TensorRT without the
plugin) inlines the function; a runtime with a fused kernel takes the node over. The
nodes carry ``plugin_namespace="allegro"`` and ``plugin_version="1"``, which the TensorRT
ONNX parser uses to look up a registered plugin of the node's name in namespace
``allegro`` before falling back to the function body.

Nodes (E edges, U channels, P paths, I/J/K irreps dimensions of the inputs/output)::

    allegro.TensorProduct(x1 (E,U,I), x2 (E,U,J), path_weights (U,P), cg (P,I,J,K))
        -> out (E,U,K)
    allegro.TensorProductBackward(grad (E,U,K), x1, x2, path_weights, cg)
        -> grad_x1 (E,U,I), grad_x2 (E,U,J)
    allegro.TensorProductEnvFirst, allegro.TensorProductEnvFirstBackward: the same
        inputs, outputs and values
    allegro.CenterTensorProduct(x1 (E,U,I), env (N,U,J), slot_edge (N,W) int64,
        edge_slot (E,) int64, path_weights, cg) -> out (E,U,K), the product of x1 with
        x2 = env[center]
    allegro.CenterTensorProductBackward(grad, x1, env, slot_edge, edge_slot,
        path_weights, cg) -> grad_x1 (E,U,I), grad_env (N,U,J)

The first two pairs differ only in their function bodies, the order of the contractions:
``TensorProduct`` builds the outer product x1 ⊗ x2 and contracts it with the coupling,
``TensorProductEnvFirst`` contracts x2 (the environment) with the coupling first; a fused
kernel implements both names alike (one plugin creator registered under both). The
``Center`` pair takes the environment per atom (N atoms) with the padded layout of edges
grouped by center (:func:`_center_slots`: slot_edge holds the edge in each of a center's
W slots, E where empty; edge_slot each edge's flat slot n*W + w), contracts env with the
coupling once per atom and multiplies each center's block of edges by the result; its
backward returns the environment gradient already summed over each center's edges.
Each layer's form is chosen at export time from its static CG shape
(:func:`~allegro_deploy.exporters.custom_ops.center_first`, then :func:`env_first`).

:func:`translation_table` also overrides ATen translations of ``torch.onnx``, keeping
the sums over atoms fast in ONNX Runtime and parseable by TensorRT (which rejects a
``ScatterND`` with a reduction):

* ``allegro::center_sum`` (the sums of edge rows onto their center atoms, see
  :func:`~allegro_deploy.exporters.tracing.trace`) becomes a gather into a padded
  (atoms, neighbors, ...) table summed by a product with its 0/1 occupancy: whole rows
  are moved, where ONNX Runtime's ``ScatterElements`` adds one element at a time (~100x
  slower);
* ``aten.index_put`` with ``accumulate=True`` and one 1-D index (the other sums, over
  neighbors or structures, with 3 or 9 values per edge) becomes
  ``ScatterElements(reduction="add")``, which sums repeated indices, instead of the
  stock ``ScatterND(reduction="add")``;
* ``aten.scalar_tensor`` (what ``x * 1.7320508075688772`` decomposes into) becomes a
  constant of the requested dtype; the stock translation rounds the scalar through
  float32 first, which costs float64 models 1e-8 relative accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar, Union

import onnx
import onnx_ir as ir
import torch
from onnxscript import BFLOAT16, DOUBLE, FLOAT, FLOAT16, INT64, script
from onnxscript import opset18 as op
from onnxscript.function_libs.torch_lib.ops.core import aten_index_put
from onnxscript.values import Op, Opset

from allegro_deploy.runtime.metadata import OP_DOMAIN as DOMAIN

from . import custom_ops  # noqa: F401  (registers torch.ops.allegro.*)

DOMAIN_VERSION = 1
OPSET_VERSION = 18
"""Version of the standard ONNX opset of the exported graphs and the function bodies."""
PLUGIN_NAMESPACE = "allegro"
PLUGIN_VERSION = "1"
TENSOR_PRODUCT = "TensorProduct"
TENSOR_PRODUCT_BACKWARD = "TensorProductBackward"
TENSOR_PRODUCT_ENV_FIRST = "TensorProductEnvFirst"
TENSOR_PRODUCT_ENV_FIRST_BACKWARD = "TensorProductEnvFirstBackward"
CENTER_TENSOR_PRODUCT = "CenterTensorProduct"
CENTER_TENSOR_PRODUCT_BACKWARD = "CenterTensorProductBackward"

allegro = Opset(DOMAIN, DOMAIN_VERSION)
TFloat = TypeVar("TFloat", bound=Union[FLOAT, DOUBLE, FLOAT16, BFLOAT16])  # noqa: UP007


@script(allegro, default_opset=op)
def TensorProduct(
    x1: TFloat,
    x2: TFloat,
    path_weights: TFloat,
    cg: TFloat,
    plugin_namespace: str = PLUGIN_NAMESPACE,
    plugin_version: str = PLUGIN_VERSION,
) -> TFloat:
    """Channel-wise CG product, (E,U,I) x (E,U,J) -> (E,U,K), as U GEMMs (K, I*J) @ (I*J, E).

    The edge axis is moved last so that the outer product broadcasts over long rows.
    """
    channels = op.Shape(x1, start=1, end=2)
    n_paths = op.Shape(cg, start=0, end=1)
    dim_in = op.Mul(op.Shape(cg, start=1, end=2), op.Shape(cg, start=2, end=3))
    dim_out = op.Shape(cg, start=3, end=4)
    n_edges = op.Shape(x1, start=0, end=1)
    # (U, K, I*J) coupling Σ_p w[u,p] cg[p,i,j,k], transposed
    flat_cg = op.Reshape(cg, op.Concat(n_paths, op.Mul(dim_in, dim_out), axis=0), allowzero=1)
    coupled = op.Reshape(
        op.MatMul(path_weights, flat_cg), op.Concat(channels, dim_in, dim_out, axis=0), allowzero=1
    )
    coupled = op.Transpose(coupled, perm=[0, 2, 1])
    # (U, I*J, E) outer products, edges last
    x1_t = op.Unsqueeze(op.Transpose(x1, perm=[1, 2, 0]), [2])  # (U, I, 1, E)
    x2_t = op.Unsqueeze(op.Transpose(x2, perm=[1, 2, 0]), [1])  # (U, 1, J, E)
    outer = op.Reshape(
        op.Mul(x1_t, x2_t), op.Concat(channels, dim_in, n_edges, axis=0), allowzero=1
    )
    return op.Transpose(op.MatMul(coupled, outer), perm=[2, 0, 1])


@script(allegro, default_opset=op)
def TensorProductBackward(
    grad: TFloat,
    x1: TFloat,
    x2: TFloat,
    path_weights: TFloat,
    cg: TFloat,
    plugin_namespace: str = PLUGIN_NAMESPACE,
    plugin_version: str = PLUGIN_VERSION,
) -> tuple[TFloat, TFloat]:
    """Input gradients of TensorProduct: grad (E,U,K) -> (E,U,I), (E,U,J), edges last inside."""
    channels = op.Shape(x1, start=1, end=2)
    n_paths = op.Shape(cg, start=0, end=1)
    dim1 = op.Shape(cg, start=1, end=2)
    dim2 = op.Shape(cg, start=2, end=3)
    dim_out = op.Shape(cg, start=3, end=4)
    n_edges = op.Shape(x1, start=0, end=1)
    flat_cg = op.Reshape(
        cg, op.Concat(n_paths, op.Mul(op.Mul(dim1, dim2), dim_out), axis=0), allowzero=1
    )
    coupled = op.Reshape(  # (U, I, J, K)
        op.MatMul(path_weights, flat_cg),
        op.Concat(channels, dim1, dim2, dim_out, axis=0),
        allowzero=1,
    )
    x1_t = op.Transpose(x1, perm=[1, 2, 0])  # (U, I, E)
    x2_t = op.Transpose(x2, perm=[1, 2, 0])  # (U, J, E)
    grad_t = op.Unsqueeze(op.Transpose(grad, perm=[1, 2, 0]), [1])  # (U, 1, K, E)
    # grad_x1[u,i,e] = Σ_jk C[u,i,j,k] x2[u,j,e] grad[u,k,e]: (U,I,J*K) @ (U,J*K,E)
    dim_jk = op.Mul(dim2, dim_out)
    x2_grad = op.Reshape(
        op.Mul(op.Unsqueeze(x2_t, [2]), grad_t),
        op.Concat(channels, dim_jk, n_edges, axis=0),
        allowzero=1,
    )
    coupled_1 = op.Reshape(coupled, op.Concat(channels, dim1, dim_jk, axis=0), allowzero=1)
    grad_x1 = op.Transpose(op.MatMul(coupled_1, x2_grad), perm=[2, 0, 1])
    # grad_x2[u,j,e] = Σ_ik C[u,i,j,k] x1[u,i,e] grad[u,k,e]: (U,J,I*K) @ (U,I*K,E)
    dim_ik = op.Mul(dim1, dim_out)
    x1_grad = op.Reshape(
        op.Mul(op.Unsqueeze(x1_t, [2]), grad_t),
        op.Concat(channels, dim_ik, n_edges, axis=0),
        allowzero=1,
    )
    coupled_2 = op.Reshape(
        op.Transpose(coupled, perm=[0, 2, 1, 3]),
        op.Concat(channels, dim2, dim_ik, axis=0),
        allowzero=1,
    )
    grad_x2 = op.Transpose(op.MatMul(coupled_2, x1_grad), perm=[2, 0, 1])
    return grad_x1, grad_x2


@script(allegro, default_opset=op)
def TensorProductEnvFirst(
    x1: TFloat,
    x2: TFloat,
    path_weights: TFloat,
    cg: TFloat,
    plugin_namespace: str = PLUGIN_NAMESPACE,
    plugin_version: str = PLUGIN_VERSION,
) -> TFloat:
    """TensorProduct contracting x2 first: U GEMMs (I*K, J) @ (J, E) -> y (U, I, K, E),
    then ``out[u,k,e] = Σ_i x1[u,i,e] y[u,i,k,e]``, edges last inside."""
    channels = op.Shape(x1, start=1, end=2)
    n_paths = op.Shape(cg, start=0, end=1)
    dim1 = op.Shape(cg, start=1, end=2)
    dim2 = op.Shape(cg, start=2, end=3)
    dim_out = op.Shape(cg, start=3, end=4)
    n_edges = op.Shape(x1, start=0, end=1)
    dim_ik = op.Mul(dim1, dim_out)
    flat_cg = op.Reshape(cg, op.Concat(n_paths, op.Mul(dim_ik, dim2), axis=0), allowzero=1)
    coupled = op.Reshape(  # (U, I, J, K)
        op.MatMul(path_weights, flat_cg),
        op.Concat(channels, dim1, dim2, dim_out, axis=0),
        allowzero=1,
    )
    coupled_x2 = op.Reshape(
        op.Transpose(coupled, perm=[0, 1, 3, 2]),
        op.Concat(channels, dim_ik, dim2, axis=0),
        allowzero=1,
    )
    y = op.Reshape(  # (U, I, K, E)
        op.MatMul(coupled_x2, op.Transpose(x2, perm=[1, 2, 0])),
        op.Concat(channels, dim1, dim_out, n_edges, axis=0),
        allowzero=1,
    )
    x1_t = op.Unsqueeze(op.Transpose(x1, perm=[1, 2, 0]), [2])  # (U, I, 1, E)
    out = op.ReduceSum(op.Mul(x1_t, y), op.Constant(value_ints=[1]), keepdims=0)
    return op.Transpose(out, perm=[2, 0, 1])


@script(allegro, default_opset=op)
def TensorProductEnvFirstBackward(
    grad: TFloat,
    x1: TFloat,
    x2: TFloat,
    path_weights: TFloat,
    cg: TFloat,
    plugin_namespace: str = PLUGIN_NAMESPACE,
    plugin_version: str = PLUGIN_VERSION,
) -> tuple[TFloat, TFloat]:
    """Input gradients of TensorProductEnvFirst, edges last inside: grad_x1 from the
    forward's y (U, I, K, E), the same nodes (ONNX Runtime merges them with the
    forward's), grad_x2 as in TensorProductBackward."""
    channels = op.Shape(x1, start=1, end=2)
    n_paths = op.Shape(cg, start=0, end=1)
    dim1 = op.Shape(cg, start=1, end=2)
    dim2 = op.Shape(cg, start=2, end=3)
    dim_out = op.Shape(cg, start=3, end=4)
    n_edges = op.Shape(x1, start=0, end=1)
    dim_ik = op.Mul(dim1, dim_out)
    flat_cg = op.Reshape(cg, op.Concat(n_paths, op.Mul(dim_ik, dim2), axis=0), allowzero=1)
    coupled = op.Reshape(  # (U, I, J, K)
        op.MatMul(path_weights, flat_cg),
        op.Concat(channels, dim1, dim2, dim_out, axis=0),
        allowzero=1,
    )
    coupled_x2 = op.Reshape(
        op.Transpose(coupled, perm=[0, 1, 3, 2]),
        op.Concat(channels, dim_ik, dim2, axis=0),
        allowzero=1,
    )
    y = op.Reshape(  # (U, I, K, E)
        op.MatMul(coupled_x2, op.Transpose(x2, perm=[1, 2, 0])),
        op.Concat(channels, dim1, dim_out, n_edges, axis=0),
        allowzero=1,
    )
    grad_t = op.Unsqueeze(op.Transpose(grad, perm=[1, 2, 0]), [1])  # (U, 1, K, E)
    # grad_x1[u,i,e] = Σ_k y[u,i,k,e] grad[u,k,e]
    grad_x1 = op.ReduceSum(op.Mul(y, grad_t), op.Constant(value_ints=[2]), keepdims=0)
    # grad_x2[u,j,e] = Σ_ik C[u,i,j,k] x1[u,i,e] grad[u,k,e]: (U,J,I*K) @ (U,I*K,E)
    x1_t = op.Unsqueeze(op.Transpose(x1, perm=[1, 2, 0]), [2])  # (U, I, 1, E)
    x1_grad = op.Reshape(
        op.Mul(x1_t, grad_t), op.Concat(channels, dim_ik, n_edges, axis=0), allowzero=1
    )
    coupled_2 = op.Reshape(
        op.Transpose(coupled, perm=[0, 2, 1, 3]),
        op.Concat(channels, dim2, dim_ik, axis=0),
        allowzero=1,
    )
    grad_x2 = op.MatMul(coupled_2, x1_grad)
    return op.Transpose(grad_x1, perm=[2, 0, 1]), op.Transpose(grad_x2, perm=[2, 0, 1])


@script(allegro, default_opset=op)
def CenterTensorProduct(
    x1: TFloat,
    env: TFloat,
    slot_edge: INT64,
    edge_slot: INT64,
    path_weights: TFloat,
    cg: TFloat,
    plugin_namespace: str = PLUGIN_NAMESPACE,
    plugin_version: str = PLUGIN_VERSION,
) -> TFloat:
    """TensorProduct of x1 with env[center], the environment contracted once per atom:
    y (U, N, I, K), then each center's padded block of edges times its y, U*N GEMMs
    (W, I) @ (I, K).

    slot_edge (N, W): the edge in each of a center's W slots, E (a zero row) where empty.
    edge_slot (E,): each edge's slot in the flattened (N*W) table.
    """
    channels = op.Shape(x1, start=1, end=2)
    n_paths = op.Shape(cg, start=0, end=1)
    dim1 = op.Shape(cg, start=1, end=2)
    dim2 = op.Shape(cg, start=2, end=3)
    dim_out = op.Shape(cg, start=3, end=4)
    n_atoms = op.Shape(env, start=0, end=1)
    width = op.Shape(slot_edge, start=1, end=2)
    dim_ik = op.Mul(dim1, dim_out)
    flat_cg = op.Reshape(cg, op.Concat(n_paths, op.Mul(dim_ik, dim2), axis=0), allowzero=1)
    coupled = op.Reshape(  # (U, I, J, K)
        op.MatMul(path_weights, flat_cg),
        op.Concat(channels, dim1, dim2, dim_out, axis=0),
        allowzero=1,
    )
    coupled_env = op.Reshape(  # (U, J, I*K)
        op.Transpose(coupled, perm=[0, 2, 1, 3]),
        op.Concat(channels, dim2, dim_ik, axis=0),
        allowzero=1,
    )
    y = op.Reshape(  # (U, N, I, K)
        op.MatMul(op.Transpose(env, perm=[1, 0, 2]), coupled_env),
        op.Concat(channels, n_atoms, dim1, dim_out, axis=0),
        allowzero=1,
    )
    zero_row = op.Expand(
        op.CastLike(op.Constant(value_float=0.0), x1),
        op.Concat(channels, op.Constant(value_ints=[1]), dim1, axis=0),
    )
    x1_rows = op.Concat(op.Transpose(x1, perm=[1, 0, 2]), zero_row, axis=1)  # (U, E+1, I)
    x1_padded = op.Reshape(  # (U, N, W, I)
        op.Gather(x1_rows, op.Reshape(slot_edge, op.Constant(value_ints=[-1])), axis=1),
        op.Concat(channels, n_atoms, width, dim1, axis=0),
        allowzero=1,
    )
    out_padded = op.Reshape(  # (U, N*W, K)
        op.MatMul(x1_padded, y),
        op.Concat(channels, op.Mul(n_atoms, width), dim_out, axis=0),
        allowzero=1,
    )
    return op.Transpose(op.Gather(out_padded, edge_slot, axis=1), perm=[1, 0, 2])


@script(allegro, default_opset=op)
def CenterTensorProductBackward(
    grad: TFloat,
    x1: TFloat,
    env: TFloat,
    slot_edge: INT64,
    edge_slot: INT64,
    path_weights: TFloat,
    cg: TFloat,
    plugin_namespace: str = PLUGIN_NAMESPACE,
    plugin_version: str = PLUGIN_VERSION,
) -> tuple[TFloat, TFloat]:
    """Input gradients of CenterTensorProduct: grad_x1 (E, U, I) from the padded grad
    times y^T per atom and channel, grad_env (N, U, J) from the padded x1^T times the
    padded grad (the sum over each center's edges) contracted with the coupling. y and
    the padded x1 are the forward's nodes (ONNX Runtime merges them)."""
    channels = op.Shape(x1, start=1, end=2)
    n_paths = op.Shape(cg, start=0, end=1)
    dim1 = op.Shape(cg, start=1, end=2)
    dim2 = op.Shape(cg, start=2, end=3)
    dim_out = op.Shape(cg, start=3, end=4)
    n_edges = op.Shape(x1, start=0, end=1)
    n_atoms = op.Shape(env, start=0, end=1)
    width = op.Shape(slot_edge, start=1, end=2)
    dim_ik = op.Mul(dim1, dim_out)
    flat_cg = op.Reshape(cg, op.Concat(n_paths, op.Mul(dim_ik, dim2), axis=0), allowzero=1)
    coupled = op.Reshape(  # (U, I, J, K)
        op.MatMul(path_weights, flat_cg),
        op.Concat(channels, dim1, dim2, dim_out, axis=0),
        allowzero=1,
    )
    coupled_env = op.Reshape(  # (U, J, I*K)
        op.Transpose(coupled, perm=[0, 2, 1, 3]),
        op.Concat(channels, dim2, dim_ik, axis=0),
        allowzero=1,
    )
    y = op.Reshape(  # (U, N, I, K)
        op.MatMul(op.Transpose(env, perm=[1, 0, 2]), coupled_env),
        op.Concat(channels, n_atoms, dim1, dim_out, axis=0),
        allowzero=1,
    )
    zero_row = op.Expand(
        op.CastLike(op.Constant(value_float=0.0), x1),
        op.Concat(channels, op.Constant(value_ints=[1]), dim1, axis=0),
    )
    x1_rows = op.Concat(op.Transpose(x1, perm=[1, 0, 2]), zero_row, axis=1)  # (U, E+1, I)
    slots = op.Reshape(slot_edge, op.Constant(value_ints=[-1]))
    x1_padded = op.Reshape(  # (U, N, W, I), zero in empty slots
        op.Gather(x1_rows, slots, axis=1),
        op.Concat(channels, n_atoms, width, dim1, axis=0),
        allowzero=1,
    )
    # empty slots gather the last edge's grad; their products meet zero x1 rows or are dropped
    last_edge = op.Sub(n_edges, op.Constant(value_ints=[1]))
    grad_padded = op.Reshape(  # (U, N, W, K)
        op.Gather(op.Transpose(grad, perm=[1, 0, 2]), op.Min(slots, last_edge), axis=1),
        op.Concat(channels, n_atoms, width, dim_out, axis=0),
        allowzero=1,
    )
    grad_x1_padded = op.Reshape(  # (U, N*W, I)
        op.MatMul(grad_padded, op.Transpose(y, perm=[0, 1, 3, 2])),
        op.Concat(channels, op.Mul(n_atoms, width), dim1, axis=0),
        allowzero=1,
    )
    grad_x1 = op.Transpose(op.Gather(grad_x1_padded, edge_slot, axis=1), perm=[1, 0, 2])
    grad_y = op.Reshape(  # (U, N, I*K): Σ over each center's edges of x1 ⊗ grad
        op.MatMul(op.Transpose(x1_padded, perm=[0, 1, 3, 2]), grad_padded),
        op.Concat(channels, n_atoms, dim_ik, axis=0),
        allowzero=1,
    )
    coupled_ik = op.Reshape(  # (U, I*K, J)
        op.Transpose(coupled, perm=[0, 1, 3, 2]),
        op.Concat(channels, dim_ik, dim2, axis=0),
        allowzero=1,
    )
    grad_env = op.Transpose(op.MatMul(grad_y, coupled_ik), perm=[1, 0, 2])
    return grad_x1, grad_env


_FLOAT_TYPES = ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"]


_INDEX_INPUTS = ("slot_edge", "edge_slot")


def _schema(
    name: str, doc: str, inputs: Sequence[str], outputs: Sequence[str]
) -> onnx.defs.OpSchema:
    """OpSchema of an ``allegro`` node: float inputs/outputs of one type T (int64 for the
    slot tables), plugin attributes."""
    parameter = onnx.defs.OpSchema.FormalParameter
    attribute = onnx.defs.OpSchema.Attribute
    return onnx.defs.OpSchema(
        name,
        DOMAIN,
        DOMAIN_VERSION,
        doc,
        inputs=[parameter(n, "tensor(int64)" if n in _INDEX_INPUTS else "T") for n in inputs],
        outputs=[parameter(n, "T") for n in outputs],
        type_constraints=[("T", _FLOAT_TYPES, "float type")],
        attributes=[
            attribute("plugin_namespace", onnx.helper.make_attribute("", PLUGIN_NAMESPACE)),
            attribute("plugin_version", onnx.helper.make_attribute("", PLUGIN_VERSION)),
        ],
    )


_TP_INPUTS = ("x1", "x2", "path_weights", "cg")
_tensor_product_node = Op(
    allegro,
    TENSOR_PRODUCT,
    _schema(TENSOR_PRODUCT, "channel-wise tensor product", _TP_INPUTS, ["out"]),
)
_tensor_product_backward_node = Op(
    allegro,
    TENSOR_PRODUCT_BACKWARD,
    _schema(
        TENSOR_PRODUCT_BACKWARD,
        "input gradients of the channel-wise tensor product",
        ("grad", *_TP_INPUTS),
        ["grad_x1", "grad_x2"],
    ),
)


_env_first_node = Op(
    allegro,
    TENSOR_PRODUCT_ENV_FIRST,
    _schema(TENSOR_PRODUCT_ENV_FIRST, "channel-wise tensor product", _TP_INPUTS, ["out"]),
)
_env_first_backward_node = Op(
    allegro,
    TENSOR_PRODUCT_ENV_FIRST_BACKWARD,
    _schema(
        TENSOR_PRODUCT_ENV_FIRST_BACKWARD,
        "input gradients of the channel-wise tensor product",
        ("grad", *_TP_INPUTS),
        ["grad_x1", "grad_x2"],
    ),
)


_CENTER_INPUTS = ("x1", "env", *_INDEX_INPUTS, "path_weights", "cg")
_center_node = Op(
    allegro,
    CENTER_TENSOR_PRODUCT,
    _schema(CENTER_TENSOR_PRODUCT, "channel-wise tensor product", _CENTER_INPUTS, ["out"]),
)
_center_backward_node = Op(
    allegro,
    CENTER_TENSOR_PRODUCT_BACKWARD,
    _schema(
        CENTER_TENSOR_PRODUCT_BACKWARD,
        "input gradients of the channel-wise tensor product",
        ("grad", *_CENTER_INPUTS),
        ["grad_x1", "grad_env"],
    ),
)


def env_first(cg_shape: Sequence[int]) -> bool:
    """Whether a product with CG coefficients of shape (P, I, J, K) exports as
    TensorProductEnvFirst: when K <= J.

    Same CG work either way; per channel and edge, TensorProduct writes the outer
    products x1 ⊗ x2 (I*J) and x2 ⊗ grad (J*K) and runs 3 GEMMs, the env-first form
    writes y, x1 ⊙ y and y ⊙ grad (3 * I*K) and runs 2, its backward reusing the forward's
    y. Measured (ONNX Runtime CPU, 37k edges; docs/design.md, *Contraction order per
    layer*): env-first is
    as fast at I = J = K = 4, 4–6 % faster for the whole graph at I = J = K = 9, and
    removes the I*J outer product of the last layer (K = 1); for K > J (middle layers of
    3+ layer models with both parities, e.g. 9 x 9 -> 17) its intermediates grow past
    the outer product's.
    """
    _, _, dim2, dim_out = cg_shape
    return dim_out <= dim2


def _translate_tensor_product(x1: TFloat, x2: TFloat, path_weights: TFloat, cg: TFloat) -> TFloat:
    """``allegro::tensor_product`` -> one ``allegro.TensorProduct`` node, or
    ``allegro.TensorProductEnvFirst`` where :func:`env_first` chooses it."""
    node = _env_first_node if env_first(cg.shape) else _tensor_product_node
    return node(
        x1,
        x2,
        path_weights,
        cg,
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
    )


def _translate_tensor_product_backward(
    grad: TFloat, x1: TFloat, x2: TFloat, path_weights: TFloat, cg: TFloat
) -> tuple[TFloat, TFloat]:
    """``allegro::tensor_product_backward`` -> one ``allegro.TensorProductBackward`` node,
    or ``allegro.TensorProductEnvFirstBackward`` where :func:`env_first` chooses it."""
    node = _env_first_backward_node if env_first(cg.shape) else _tensor_product_backward_node
    return node(
        grad,
        x1,
        x2,
        path_weights,
        cg,
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
    )


def _translate_index_put(
    self: TFloat,
    indices: Sequence[ir.Value | None],
    values: TFloat,
    accumulate: bool = False,
) -> TFloat:
    """``self.index_put(indices, values, accumulate)``; a sum over one 1-D index along one
    axis becomes ``ScatterElements(reduction="add")``, anything else the stock translation."""
    advanced = [axis for axis, index in enumerate(indices) if index is not None]
    if not accumulate or len(advanced) != 1 or len(indices[advanced[0]].shape) != 1:
        return aten_index_put(self, indices, values, accumulate)
    axis = advanced[0]
    index = indices[axis]
    # values broadcast to self's shape with axis `axis` replaced by the index length
    parts = [op.Shape(index), op.Shape(self, start=axis + 1)]
    if axis > 0:
        parts.insert(0, op.Shape(self, start=0, end=axis))
    target = op.Concat(*parts, axis=0)
    other_axes = [d for d in range(len(self.shape)) if d != axis]
    if other_axes:
        index = op.Unsqueeze(index, other_axes)
    return op.ScatterElements(
        self,
        op.Expand(index, target),
        op.Expand(values, target),
        axis=axis,
        reduction="add",
    )


def _center_slots(center: INT64, n_atoms: INT64) -> tuple[INT64, INT64, INT64]:
    """The padded (atoms, width) layout of edges grouped by center: every edge ``e`` takes
    slot ``e - first[center[e]]`` of its center's row, ``first`` being the center's first
    edge; ``width`` is the largest slot + 1, the number of neighbors when each center's
    edges are consecutive, as neighbor lists emit them (any order is still exact; only the
    table grows with the spread of a center's edges).

    Returns ``edges`` (E,) = 0..E-1, ``edge_slot`` (E,) the flat index ``center * width +
    slot`` of every edge, and ``width`` (1,).
    """
    n_edges = op.Shape(center)
    edges = op.Range(op.Constant(value_int=0), op.Squeeze(n_edges), op.Constant(value_int=1))
    first = op.ScatterElements(op.Expand(n_edges, n_atoms), center, edges, reduction="min")
    slot = op.Sub(edges, op.Gather(first, center))
    width = op.Add(
        op.ReduceMax(op.Concat(slot, op.Constant(value_ints=[-1]), axis=0)),
        op.Constant(value_ints=[1]),
    )
    return edges, op.Add(op.Mul(center, width), slot), width


def _translate_center_sum(base: TFloat, center: INT64, values: TFloat) -> TFloat:
    """``base.index_add(0, center, values)`` for the sums of edge rows onto their centers,
    as a gather into the padded (atoms, width, row) table of :func:`_center_slots` summed
    by a product with its 0/1 occupancy, ``(atoms, 1, width) @ (atoms, width, row)``.

    Every order of edges is summed exactly, in edge order. Empty slots gather edge 0 and
    weigh 0. ONNX Runtime runs the gather and the product over whole rows, where
    ``ScatterElements`` adds one element at a time (100x slower); the product also
    replaces appending a zero row for the empty slots (a copy of all edge rows) and a
    ``ReduceSum``. TensorRT parses all of it (it rejects a ``ScatterND`` with a reduction).
    """
    n_atoms = op.Shape(base, start=0, end=1)
    edges, edge_slot, width = _center_slots(center, n_atoms)
    n_edges = op.Shape(center)
    one = op.Constant(value_ints=[1])
    slots = op.Mul(n_atoms, width)
    table = op.ScatterElements(op.Expand(op.Constant(value_ints=[0]), slots), edge_slot, edges)
    occupied = op.ScatterElements(
        op.Expand(op.CastLike(op.Constant(value_float=0.0), values), slots),
        edge_slot,
        op.Expand(op.CastLike(op.Constant(value_float=1.0), values), n_edges),
    )
    row_shape = op.Shape(values, start=1)
    row_size = op.ReduceProd(row_shape, keepdims=1)
    rows = op.Reshape(values, op.Concat(n_edges, row_size, axis=0), allowzero=1)
    padded = op.Reshape(
        op.Gather(rows, table, axis=0), op.Concat(n_atoms, width, row_size, axis=0), allowzero=1
    )
    weights = op.Reshape(occupied, op.Concat(n_atoms, one, width, axis=0), allowzero=1)
    total = op.MatMul(weights, padded)
    return op.Add(base, op.Reshape(total, op.Concat(n_atoms, row_shape, axis=0), allowzero=1))


def _center_tables(env: TFloat, center: INT64) -> tuple[INT64, INT64]:
    """``slot_edge`` (N, W), the edge in every slot of :func:`_center_slots`'s table or E
    where empty, and ``edge_slot`` (E,), for the ``CenterTensorProduct`` nodes."""
    n_atoms = op.Shape(env, start=0, end=1)
    edges, edge_slot, width = _center_slots(center, n_atoms)
    slot_edge = op.ScatterElements(
        op.Expand(op.Shape(center), op.Mul(n_atoms, width)), edge_slot, edges
    )
    return op.Reshape(slot_edge, op.Concat(n_atoms, width, axis=0), allowzero=1), edge_slot


def _translate_center_tensor_product(
    x1: TFloat, env: TFloat, center: INT64, path_weights: TFloat, cg: TFloat
) -> TFloat:
    """``allegro::center_tensor_product`` -> one ``allegro.CenterTensorProduct`` node."""
    slot_edge, edge_slot = _center_tables(env, center)
    return _center_node(
        x1,
        env,
        slot_edge,
        edge_slot,
        path_weights,
        cg,
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
    )


def _translate_center_tensor_product_backward(
    grad: TFloat, x1: TFloat, env: TFloat, center: INT64, path_weights: TFloat, cg: TFloat
) -> tuple[TFloat, TFloat]:
    """``allegro::center_tensor_product_backward`` -> one
    ``allegro.CenterTensorProductBackward`` node."""
    slot_edge, edge_slot = _center_tables(env, center)
    return _center_backward_node(
        grad,
        x1,
        env,
        slot_edge,
        edge_slot,
        path_weights,
        cg,
        plugin_namespace=PLUGIN_NAMESPACE,
        plugin_version=PLUGIN_VERSION,
    )


def _translate_scalar_tensor(
    s: float,
    dtype: int = FLOAT.dtype,
    layout: str = "",
    device: str = "",
    pin_memory: bool = False,
) -> TFloat:
    """``torch.scalar_tensor(s, dtype)`` as a constant of that dtype, rounded once."""
    return op.Constant(value=ir.tensor(s, dtype=ir.DataType(dtype)))


def translation_table() -> dict[Callable, Callable]:
    """``custom_translation_table`` for ``torch.onnx.export``."""
    return {
        torch.ops.allegro.tensor_product.default: _translate_tensor_product,
        torch.ops.allegro.tensor_product_backward.default: _translate_tensor_product_backward,
        torch.ops.allegro.center_tensor_product.default: _translate_center_tensor_product,
        torch.ops.allegro.center_tensor_product_backward.default: (
            _translate_center_tensor_product_backward
        ),
        torch.ops.allegro.center_sum.default: _translate_center_sum,
        torch.ops.aten.index_put.default: _translate_index_put,
        torch.ops.aten.scalar_tensor.default: _translate_scalar_tensor,
    }


def function_protos() -> list[onnx.FunctionProto]:
    """Model-local function bodies of the ``allegro`` nodes."""
    bodies = [
        TensorProduct,
        TensorProductBackward,
        TensorProductEnvFirst,
        TensorProductEnvFirstBackward,
        CenterTensorProduct,
        CenterTensorProductBackward,
    ]
    return [body.to_function_proto() for body in bodies]
