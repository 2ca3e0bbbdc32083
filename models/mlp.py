"""Bias-free MLPs with the forward-normalized weight scaling of the official code."""

from __future__ import annotations

import math

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

    @property
    def is_linear(self) -> bool:
        return len(self.weights) == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (n, input_dim) -> (n, output_dim)."""
        last = len(self.weights) - 1
        for layer, (weight, alpha) in enumerate(zip(self.weights, self.alphas, strict=True)):
            x = self.matmul_policy.matmul(x, weight * alpha)
            if layer != last:
                x = self.nonlinearity(x)
        return x
