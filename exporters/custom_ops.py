"""The channel-wise tensor product and its backward as ``torch.library`` custom ops.

``torch.onnx`` and ``make_fx`` see an opaque ``allegro::tensor_product`` node instead of
the einsum/bmm decomposition of :func:`~allegro_deploy.models.tensor_product.tensor_product`,
and the input gradient of that node is a second opaque op,
``allegro::tensor_product_backward``, so that both survive into the ONNX file as nodes of
the ``allegro`` domain (see :mod:`allegro_deploy.exporters.onnx_functions`).

Shapes (E edges, N atoms, U channels, P paths, I/J/K irreps dimensions of the
inputs/output)::

    tensor_product(x1 (E,U,I), x2 (E,U,J), path_weights (U,P), cg (P,I,J,K)) -> (E,U,K)
    tensor_product_backward(grad (E,U,K), x1, x2, path_weights, cg) -> (E,U,I), (E,U,J)
    center_tensor_product(x1 (E,U,I), env (N,U,J), center (E,), path_weights, cg)
        -> (E,U,K), the same product with x2 = env[center]
    center_tensor_product_backward(grad, x1, env, center, path_weights, cg)
        -> (E,U,I), (N,U,J)

The ``center_`` pair takes the environment per atom: its ONNX body contracts the
environment with the coupling once per atom instead of once per edge (see
:func:`center_first`). Only the gradients with respect to the features (``x1``, ``x2``,
``env``) are provided: exported graphs differentiate the energy with respect to geometry,
never the weights.

:func:`custom_tensor_products` routes the tensor products of a model through these ops
for the duration of a ``with`` block, without changing the model code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from allegro_deploy.models.tensor_product import ChannelwiseTensorProduct, tensor_product


@torch.library.custom_op("allegro::tensor_product", mutates_args=())
def tensor_product_op(
    x1: torch.Tensor, x2: torch.Tensor, path_weights: torch.Tensor, cg: torch.Tensor
) -> torch.Tensor:
    """``out[e,u,k] = Σ_p w[u,p] Σ_ij cg[p,i,j,k] x1[e,u,i] x2[e,u,j]``, (E,U,K)."""
    return tensor_product(x1, x2, path_weights, cg).contiguous()


@tensor_product_op.register_fake
def _(
    x1: torch.Tensor, x2: torch.Tensor, path_weights: torch.Tensor, cg: torch.Tensor
) -> torch.Tensor:
    return x1.new_empty((x1.shape[0], x1.shape[1], cg.shape[3]))


def _coupled(path_weights: torch.Tensor, cg: torch.Tensor) -> torch.Tensor:
    """(U, I, J, K) per-channel coupling tensor ``Σ_p w[u,p] cg[p,i,j,k]``."""
    return torch.einsum("up,pijk->uijk", path_weights, cg)


@torch.library.custom_op("allegro::tensor_product_backward", mutates_args=())
def tensor_product_backward_op(
    grad: torch.Tensor,
    x1: torch.Tensor,
    x2: torch.Tensor,
    path_weights: torch.Tensor,
    cg: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input gradients of :func:`tensor_product_op` for the output gradient ``grad`` (E,U,K).

    Returns ``(dL/dx1 (E,U,I), dL/dx2 (E,U,J))``.
    """
    coupled = _coupled(path_weights, cg)
    grad_x1 = torch.einsum("uijk,euj,euk->eui", coupled, x2, grad)
    grad_x2 = torch.einsum("uijk,eui,euk->euj", coupled, x1, grad)
    return grad_x1, grad_x2


@tensor_product_backward_op.register_fake
def _(
    grad: torch.Tensor,
    x1: torch.Tensor,
    x2: torch.Tensor,
    path_weights: torch.Tensor,
    cg: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x1), torch.empty_like(x2)


def _check_input_gradients(ctx: Any, op: str) -> None:
    if ctx.needs_input_grad[-2] or ctx.needs_input_grad[-1]:
        raise NotImplementedError(
            f"allegro::{op} is an export op: it differentiates with respect to its "
            "features only, not the path weights or CG coefficients"
        )


def _setup_context(ctx: Any, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    _check_input_gradients(ctx, "tensor_product")
    x1, x2, path_weights, cg = ctx.saved_tensors
    grad_x1, grad_x2 = tensor_product_backward_op(grad, x1, x2, path_weights, cg)
    return grad_x1, grad_x2, None, None


tensor_product_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("allegro::center_tensor_product", mutates_args=())
def center_tensor_product_op(
    x1: torch.Tensor,
    env: torch.Tensor,
    center: torch.Tensor,
    path_weights: torch.Tensor,
    cg: torch.Tensor,
) -> torch.Tensor:
    """:func:`tensor_product_op` of ``x1`` with ``env[center]``, (E,U,K)."""
    return tensor_product(x1, env.index_select(0, center), path_weights, cg).contiguous()


@center_tensor_product_op.register_fake
def _(
    x1: torch.Tensor,
    env: torch.Tensor,
    center: torch.Tensor,
    path_weights: torch.Tensor,
    cg: torch.Tensor,
) -> torch.Tensor:
    return x1.new_empty((x1.shape[0], x1.shape[1], cg.shape[3]))


@torch.library.custom_op("allegro::center_tensor_product_backward", mutates_args=())
def center_tensor_product_backward_op(
    grad: torch.Tensor,
    x1: torch.Tensor,
    env: torch.Tensor,
    center: torch.Tensor,
    path_weights: torch.Tensor,
    cg: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Input gradients of :func:`center_tensor_product_op` for ``grad`` (E,U,K).

    Returns ``(dL/dx1 (E,U,I), dL/denv (N,U,J))``, the latter summed over each atom's edges.
    """
    grad_x1, grad_x2 = tensor_product_backward_op(
        grad, x1, env.index_select(0, center), path_weights, cg
    )
    return grad_x1, torch.zeros_like(env).index_add(0, center, grad_x2)


@center_tensor_product_backward_op.register_fake
def _(
    grad: torch.Tensor,
    x1: torch.Tensor,
    env: torch.Tensor,
    center: torch.Tensor,
    path_weights: torch.Tensor,
    cg: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x1), torch.empty_like(env)


def _center_backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    _check_input_gradients(ctx, "center_tensor_product")
    x1, env, center, path_weights, cg = ctx.saved_tensors
    grad_x1, grad_env = center_tensor_product_backward_op(grad, x1, env, center, path_weights, cg)
    return grad_x1, grad_env, None, None, None


center_tensor_product_op.register_autograd(_center_backward, setup_context=_setup_context)


def center_first(cg_shape: Sequence[int]) -> bool:
    """Whether a product with CG coefficients of shape (P, I, J, K) exports as the
    ``center_`` pair: when I * K > 16 (and the products are not stored in fp16/bf16, see
    :func:`custom_tensor_products`).

    The per-edge bodies write (U, I*K) or (U, I*J) floats per edge several times forward
    and backward; the center body contracts the environment once per atom, y (U, N, I, K),
    and multiplies each center's padded block of edges by it, (W, I) @ (I, K) per atom
    and channel, so per edge it moves only the (U, I) and (U, K) rows. Measured (ONNX
    Runtime CPU, 2 threads, 864-atom Cu, 37k edges; docs/design.md, *Center tensor
    product*): faster at
    I = K = 9, slower at I = K = 4, even at 9 x 9 -> 1: where the per-edge arrays are
    small, the padding and the regathering cost as much as they save.
    """
    _, dim1, _, dim_out = cg_shape
    return dim1 * dim_out > 16


def _custom_forward(module: ChannelwiseTensorProduct) -> Any:
    def forward(x1: torch.Tensor, env: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        policy = module.matmul_policy
        weights = module.path_weights()
        # In fp16/bf16 the operands' casts round their gradients: the environment is
        # gathered before its cast so that its gradient is rounded per edge and summed
        # over the center's edges in the model dtype, which the center form cannot do.
        if center_first(module.cg.shape) and policy.precision.reduced_dtype is None:
            operands = policy.operands(x1, env, weights, module.cg)
            return policy.result(center_tensor_product_op(*operands[:2], center, *operands[2:]))
        operands = policy.operands(x1, env.index_select(0, center), weights, module.cg)
        return policy.result(tensor_product_op(*operands))

    return forward


@contextlib.contextmanager
def custom_tensor_products(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, every :class:`ChannelwiseTensorProduct` of ``model`` calls
    ``allegro::center_tensor_product`` where :func:`center_first` chooses it, else
    ``allegro::tensor_product`` of the gathered environment (same inputs, weights and CG
    buffer as its own forward, rounded by its ``matmul_policy`` as its own forward rounds
    them). Under an fp16/bf16 policy every layer takes the gathered form: the environment's
    gradient is then rounded per edge and summed in the model dtype, as in the module's
    own forward, where the center form would round the sum.

    Only the instances in ``model`` are affected (an instance attribute shadows the class
    method); they are restored on exit.
    """
    modules = [m for m in model.modules() if isinstance(m, ChannelwiseTensorProduct)]
    for module in modules:
        module.forward = _custom_forward(module)
    try:
        yield
    finally:
        for module in modules:
            del module.forward


@torch.library.custom_op("allegro::center_sum", mutates_args=())
def center_sum_op(base: torch.Tensor, center: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``base.index_add(0, center, values)`` for a sum of edge rows onto their center atoms.

    base: (N, ...) atom rows. center: (E,) int64 center atom of each edge. values: (E, ...).
    Marks the sums whose index is the edges' centers, which neighbor lists keep grouped
    (see :func:`~allegro_deploy.exporters.onnx_functions.translation_table`); the graph is
    differentiated before it is introduced, so it has no autograd formula.
    """
    return base.index_add(0, center, values)


@center_sum_op.register_fake
def _(base: torch.Tensor, center: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(base)
