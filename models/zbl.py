"""Ziegler–Biersack–Littmark screened nuclear repulsion, as LAMMPS ``pair_style zbl``."""

from __future__ import annotations

import torch

# e^2 / (4 π ε0) in eV·Å (LAMMPS ``metal`` units: qqr2e · qelectron²)
COULOMB_EV_ANGSTROM = 14.399645
_A0 = 0.46850
_POWER = 0.23
_C = (0.02817, 0.28022, 0.50986, 0.18175)
_D = (-0.20162, -0.40290, -0.94229, -3.19980)


def zbl_edge_energy(
    z_center: torch.Tensor, z_neighbor: torch.Tensor, r: torch.Tensor
) -> torch.Tensor:
    """ZBL energy (eV) of each directed edge: half of the pair energy, so ij + ji is the pair.

    z_center, z_neighbor: (n_edges,) atomic numbers as floats; r: (n_edges,) Å.
    The caller multiplies by the model's smooth cutoff.
    """
    x = (torch.pow(z_center, _POWER) + torch.pow(z_neighbor, _POWER)) * r / _A0
    psi = sum(c * torch.exp(d * x) for c, d in zip(_C, _D, strict=True))
    return (0.5 * COULOMB_EV_ANGSTROM) * (z_center * z_neighbor / r) * psi
