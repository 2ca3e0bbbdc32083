"""Radial basis and smooth cutoff of the normalized edge length ``x = r / r_max``."""

from __future__ import annotations

import torch


def polynomial_cutoff(x: torch.Tensor, p: float = 6.0) -> torch.Tensor:
    """Polynomial envelope (DimeNet) that is 1 at x=0 and vanishes with p-1 derivatives at x=1.

    ``1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for x < 1, else 0.
    """
    out = 1.0 - ((p + 1.0) * (p + 2.0) / 2.0) * torch.pow(x, p)
    out = out + (p * (p + 2.0)) * torch.pow(x, p + 1.0)
    out = out - (p * (p + 1.0) / 2.0) * torch.pow(x, p + 2.0)
    return out * (x < 1.0)


class BesselBasis(torch.nn.Module):
    """``sin(n π x) / (π x)`` for n = 1..num_bessels, times the polynomial cutoff.

    Computed in float64 and returned in ``dtype``, as the official code does.
    """

    def __init__(
        self, num_bessels: int = 8, trainable: bool = False, cutoff_p: float = 6.0
    ) -> None:
        super().__init__()
        self.cutoff_p = float(cutoff_p)
        frequencies = torch.linspace(1.0, num_bessels, num_bessels, dtype=torch.float64)
        if trainable:
            self.frequencies = torch.nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)

    def forward(self, x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """x: (n_edges, 1) float64 normalized lengths -> (n_edges, num_bessels) in ``dtype``."""
        bessel = (torch.sinc(x * self.frequencies) * self.frequencies).to(dtype)
        return bessel * polynomial_cutoff(x, self.cutoff_p).to(dtype)
