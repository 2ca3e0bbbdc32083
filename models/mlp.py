"""Bias-free MLPs with the forward-normalized weight scaling of the official code."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from .precision import FULL_PRECISION, MatmulPolicy

_NONLINEARITIES: dict[str | None, type[torch.nn.Module]] = {
    None: torch.nn.Identity,
    "silu": torch.nn.SiLU,
    "mish": torch.nn.Mish,
    "gelu": torch.nn.GELU,
    "tanh": torch.nn.Tanh,
}


class ScalarMLP(torch.nn.Module):
    """``x @ (W_1 α_1) -> φ -> ... -> @ (W_n α_n)`` with no biases.

    Weights are stored ``(in, out)`` and initialised uniform with unit variance; the
    effective weight is ``W·α`` with ``α = gain / sqrt(fan_in)`` (gain 1 on the first
    layer or without a nonlinearity, sqrt(2) otherwise). No bias keeps ``f(0) = 0``, which
    the smoothness of the potential at the cutoff relies on. Each product follows
    ``matmul_policy`` (see :mod:`~allegro_deploy.models.precision`).
    """

    matmul_policy: MatmulPolicy = FULL_PRECISION

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        hidden_layers_depth: int = 0,
        hidden_layers_width: int | None = None,
        nonlinearity: str | None = "silu",
    ) -> None:
        super().__init__()
        dims = [input_dim] + [hidden_layers_width or 0] * hidden_layers_depth + [output_dim]
        if min(dims) <= 0:
            raise ValueError(f"MLP dimensions must be positive, got {dims}")
        self.dims = dims
        self.weights = torch.nn.ParameterList(
            torch.nn.Parameter(torch.empty(d_in, d_out).uniform_(-math.sqrt(3), math.sqrt(3)))
            for d_in, d_out in zip(dims[:-1], dims[1:], strict=True)
        )
        gains = [
            1.0 if (nonlinearity is None or layer == 0) else math.sqrt(2.0)
            for layer in range(len(dims) - 1)
        ]
        self.alphas = [gain / math.sqrt(d_in) for gain, d_in in zip(gains, dims[:-1], strict=True)]
        self.nonlinearity = _NONLINEARITIES[nonlinearity]()

    def forward(self, *blocks: torch.Tensor) -> torch.Tensor:
        """blocks: (n, d_b) column blocks of the input, widths summing to ``input_dim``
        -> (n, output_dim). Several blocks give the output of their concatenation without
        copying them into one array: each block meets its own rows of the first weight."""
        return self.forward_split(*blocks, sizes=(self.dims[-1],))[0]

    def forward_split(self, *blocks: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
        """As :meth:`forward`, returning the output in column blocks of ``sizes``: each its
        own product with columns of the last weight, so that the gradient sums products
        instead of concatenating the blocks' gradients."""
        last = len(self.weights) - 1
        for layer, (weight, alpha) in enumerate(zip(self.weights, self.alphas, strict=True)):
            columns = sizes if layer == last else (weight.shape[1],)
            blocks = self._linear(blocks, weight * alpha, columns)
            if layer != last:
                blocks = [self.nonlinearity(x) for x in blocks]
        return list(blocks)

    def _linear(
        self, blocks: Sequence[torch.Tensor], weight: torch.Tensor, columns: Sequence[int]
    ) -> list[torch.Tensor]:
        """``concat(blocks) @ weight`` split into ``columns``, as sums of block products."""
        rows = weight.split([x.shape[1] for x in blocks])
        return [
            functools.reduce(
                torch.add,
                (self.matmul_policy.matmul(x, w) for x, w in zip(blocks, piece, strict=True)),
            )
            for piece in zip(*(w.split(list(columns), dim=1) for w in rows), strict=True)
        ]
