"""Radial basis and smooth cutoff of the normalized edge length ``x = r / r_max``.

Edge quantities are 1-D ``(n_edges,)`` and the basis is built edges last: ONNX Runtime
broadcasts along rows of edges quickly but runs a ``(n_edges, 1)`` operand one element at a
time, and calls ``std::pow`` per element for any exponent but 2.
"""

from __future__ import annotations

import torch


def integer_power(x: torch.Tensor, n: int) -> torch.Tensor:
    """``x ** n`` for an integer ``n >= 1`` by repeated squaring (products only)."""
    if n < 1:
        raise ValueError(f"integer_power needs n >= 1, got {n}")
    result, base = None, x
    while True:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if not n:
            return result
        base = base * base


def polynomial_cutoff(x: torch.Tensor, p: int = 6) -> torch.Tensor:
    """Polynomial envelope (DimeNet) that is 1 at x=0 and vanishes with p-1 derivatives at x=1.

    ``1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for x < 1, else 0.
    x: (n_edges,) float64 -> (n_edges,).
    """
    a, b, c = (p + 1.0) * (p + 2.0) / 2.0, p * (p + 2.0), p * (p + 1.0) / 2.0
    out = 1.0 + integer_power(x, p) * (x * (b - c * x) - a)
    return out * (x < 1.0)


class BesselBasis(torch.nn.Module):
    """``sin(n π x) / (π x)`` for n = 1..num_bessels, times the polynomial cutoff.

    Computed in float64 (the frequencies' ``dtype``) and returned in the model dtype, as
    the official code does.
    """

    def __init__(
        self,
        num_bessels: int = 8,
        trainable: bool = False,
        cutoff_p: int = 6,
        dtype: torch.dtype = torch.float64,
    ) -> None:
        super().__init__()
        self.cutoff_p = cutoff_p
        frequencies = torch.linspace(1.0, num_bessels, num_bessels, dtype=dtype)
        if trainable:
            self.frequencies = torch.nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x: (n_edges,) float64 normalized lengths -> (n_edges, num_bessels) in ``dtype``."""
        frequencies = self.frequencies.unsqueeze(1)
        bessel = torch.sinc(frequencies * x) * frequencies * polynomial_cutoff(x, self.cutoff_p)
        return bessel.to(dtype).T
