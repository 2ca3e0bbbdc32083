"""Reduced-precision arithmetic for the matrix products of the network body.

A float32 model can run its heavy parts (the MLPs and the tensor products) in a reduced
format while everything sensitive stays float32 or float64: geometry, radial basis,
cutoff, spherical harmonics, sums over edges and atoms, scale/shift and the energy.

Precisions (:data:`PRECISIONS`): ``fp64`` (float64 body, the reference), ``fp32``,
``tf32`` (inputs of each product rounded to 10 explicit mantissa bits with the float32
exponent, float32 products, as GPU tensor cores do), ``fp16`` and ``bf16`` (inputs and
products stored in float16 / bfloat16, float32 accumulation).

Two modes (:data:`PRECISION_MODES`) for the same arithmetic:

* ``real``: the product runs in the reduced type, ``mm(a.to(f16), b.to(f16)).to(f32)``.
  An exported graph is then strongly typed (explicit Casts), as TensorRT 11 wants. TF32 is
  a property of the GPU engine (``BuilderFlag.TF32``), not of the graph: a real ``tf32``
  graph is the ``fp32`` graph.
* ``emulated``: the same roundings in float32, for hardware without the reduced matrix
  units: inputs rounded to the format and back to float32 around a float32 product, and
  for fp16/bf16 the product rounded too (the real graph stores it in the reduced type).
  So emulated equals real up to the order of accumulation.

Because autograd sees the roundings, the backward (input-gradient) products are rounded
at the same places as on real hardware: in fp16/bf16 the cast of a product rounds its
incoming gradient and the cast of an input rounds the outgoing one; in tf32 the gradient
entering a product is rounded (:func:`round_tf32_gradient`) and the input rounding passes
gradients through unchanged, as TF32 units round operands only.

:func:`matmul_precision` applies a precision to a model for the duration of a ``with``
block: every module with a ``matmul_policy`` attribute (:class:`ScalarMLP` and
:class:`ChannelwiseTensorProduct`) routes its products through a :class:`MatmulPolicy`.
Outside such a block the policy is :data:`FULL_PRECISION`, the identity.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from allegro_deploy.runtime.metadata import FULL_PRECISIONS, PRECISION_MODES
from allegro_deploy.runtime.metadata import PRECISIONS as FILE_PRECISIONS


@dataclass(frozen=True)
class Precision:
    """Arithmetic of the heavy matrix products.

    name: one of :data:`PRECISIONS`.
    dtype: ``float64`` or ``float32``, the model dtype it applies to.
    mantissa_bits: explicit mantissa bits of the product inputs.
    reduced_dtype: float16 / bfloat16, the type products are stored in; None for
        precisions whose products are stored in ``dtype``.
    """

    name: str
    dtype: str
    mantissa_bits: int
    reduced_dtype: torch.dtype | None = None


_PRODUCTS = {
    "fp64": (52, None),
    "fp32": (23, None),
    "tf32": (10, None),
    "fp16": (10, torch.float16),
    "bf16": (7, torch.bfloat16),
}
"""Mantissa bits and storage type of each precision's product inputs."""
PRECISIONS: dict[str, Precision] = {
    name: Precision(name, dtype, *_PRODUCTS[name]) for name, dtype in FILE_PRECISIONS.items()
}
"""Every precision by name (names and dtypes from the file contract), most precise first."""


def get_precision(name: str) -> Precision:
    """The :class:`Precision` called ``name``; ``ValueError`` for an unknown name."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; choose one of {', '.join(PRECISIONS)}")
    return PRECISIONS[name]


def dtype_precision(dtype: str) -> str:
    """The full precision of a model dtype: ``float64`` -> fp64, ``float32`` -> fp32."""
    return FULL_PRECISIONS[dtype]


_VELTKAMP_SPLITTER = 2.0**13 + 1.0
"""Splits a float32 (24-bit significand) into a high part of 24 - 13 = 11 significant bits."""


def round_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 ``x`` rounded to nearest TF32 (10 explicit mantissa bits, float32 exponent).

    Veltkamp's split, ``t = c·x; hi = t - (t - x)`` with ``c = 2**13 + 1``, in plain float
    arithmetic (ONNX has no bitcast, so no bit mask); it needs float32 evaluation without
    fused multiply-adds (true of ONNX Runtime's CPU kernels) and ``|x| < 4e34``. Ties round
    either way. The gradient passes through unchanged (``d hi / d x = 1``).
    """
    t = x * _VELTKAMP_SPLITTER
    return t - (t - x)


class _RoundTF32Gradient(torch.autograd.Function):
    """Identity forward; rounds the gradient to TF32 on the way back."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx: object, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        pass

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return round_tf32(grad)


def round_tf32_gradient(x: torch.Tensor) -> torch.Tensor:
    """``x`` unchanged; its gradient rounded to TF32 (what enters a backward product)."""
    return _RoundTF32Gradient.apply(x)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class MatmulPolicy:
    """How the matrix products of the heavy parts run: ``result(product(*operands(...)))``.

    operands(*tensors): the inputs of a product, as the product takes them.
    result(product): the product, back in the model dtype.
    """

    def __init__(self, precision: str, mode: str = "real") -> None:
        if mode not in PRECISION_MODES:
            raise ValueError(
                f"unknown precision mode {mode!r}; choose one of {', '.join(PRECISION_MODES)}"
            )
        self.precision = get_precision(precision)
        self.mode = mode
        reduced = self.precision.reduced_dtype
        self._operand: Callable[[torch.Tensor], torch.Tensor] = _identity
        self._result: Callable[[torch.Tensor], torch.Tensor] = _identity
        if reduced is not None and mode == "real":
            self._operand = lambda x: x.to(reduced)
            self._result = lambda x: x.to(torch.float32)
        elif reduced is not None:
            self._operand = self._result = lambda x: x.to(reduced).to(x.dtype)
        elif precision == "tf32" and mode == "emulated":
            self._operand, self._result = round_tf32, round_tf32_gradient

    def operands(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self._operand(t) for t in tensors)

    def result(self, product: torch.Tensor) -> torch.Tensor:
        return self._result(product)

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b`` for a: (n, k), b: (k, m) -> (n, m) in this precision."""
        return self._result(torch.mm(*self.operands(a, b)))

    def __repr__(self) -> str:
        return f"MatmulPolicy({self.precision.name!r}, {self.mode!r})"


FULL_PRECISION = MatmulPolicy("fp32")
"""The identity policy (products in the model's own dtype), the default of every module."""


@contextlib.contextmanager
def matmul_precision(model: torch.nn.Module, precision: str, mode: str = "real") -> Iterator[None]:
    """Within the block, the heavy matrix products of ``model`` run in ``precision``.

    Every submodule with a ``matmul_policy`` attribute gets the policy as an instance
    attribute, removed on exit. Raises ``ValueError`` for an unknown precision or mode, and
    when the precision is for another dtype than the model's (fp16 on a float64 model).
    """
    policy = MatmulPolicy(precision, mode)
    modules = [m for m in model.modules() if hasattr(m, "matmul_policy")]
    dtypes = {str(p.dtype).removeprefix("torch.") for m in modules for p in m.parameters()}
    if dtypes - {policy.precision.dtype}:
        raise ValueError(
            f"precision {precision} is for {policy.precision.dtype} models; this model is "
            f"{', '.join(sorted(dtypes))}"
        )
    for module in modules:
        module.matmul_policy = policy
    try:
        yield
    finally:
        for module in modules:
            del module.matmul_policy
