"""Dataset statistics that set a model's normalization, from the training split only.

Matches nequip's defaults: ``avg_num_neighbors`` is the mean number of edges per atom
within r_max, the energy scale is the RMS of the force components and the per-species
energy shifts come from a least-squares fit of the energy per atom (with one species,
the mean energy per atom).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .data import LabelledDataset


@dataclass(frozen=True)
class DatasetStatistics:
    """Counts and normalization constants of a training set.

    r_max: Å, the cutoff the neighbor counts refer to.
    avg_num_neighbors: mean number of edges (neighbors within r_max) per atom.
    per_type_energy_shifts: species -> eV per atom, least squares of the per-atom energy.
    energy_scale: eV/Å, RMS of all force components.
    species_counts: species -> number of atoms.
    shifts_separable: whether the compositions of the structures determine every
        species' shift (False for, e.g., one fixed composition: then energies of other
        compositions, pure elements included, come out wrong).
    """

    n_structures: int
    n_atoms: int
    n_edges: int
    species_counts: dict[str, int]
    r_max: float
    avg_num_neighbors: float
    per_type_energy_shifts: dict[str, float]
    energy_scale: float
    shifts_separable: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_options(self) -> dict[str, Any]:
        """The ModelConfig options these statistics determine."""
        return {
            "avg_num_neighbors": self.avg_num_neighbors,
            "per_type_energy_shifts": dict(self.per_type_energy_shifts),
            "per_type_energy_scales": self.energy_scale,
        }


def compute_statistics(dataset: LabelledDataset) -> DatasetStatistics:
    """Statistics of ``dataset`` (the training split) for its species and r_max.

    The shifts minimize ``Σ_structures (E/N - Σ_s (n_s/N) shift_s)²`` (eV/atom); species
    whose amounts are not independent (e.g. a fixed composition) get the minimum-norm
    solution. Raises ``ValueError`` when all forces are zero (no energy scale).
    """
    n_species = len(dataset.species)
    counts = np.zeros((len(dataset), n_species))
    energies = np.zeros(len(dataset))
    n_edges = 0
    square_force_sum = 0.0
    n_components = 0
    for b, item in enumerate(dataset.structures):
        counts[b] = torch.bincount(item.graph.species, minlength=n_species).numpy()
        energies[b] = float(item.energy)
        n_edges += item.graph.n_edges
        square_force_sum += float(item.forces.square().sum())
        n_components += item.forces.numel()
    n_atoms = counts.sum(axis=1)
    fractions = counts / n_atoms[:, None]
    shifts, _, rank, _ = np.linalg.lstsq(fractions, energies / n_atoms, rcond=None)
    energy_scale = float(np.sqrt(square_force_sum / n_components))
    if energy_scale == 0.0:
        raise ValueError(
            f"all forces in {dataset.source} are zero, so there is no energy scale; "
            f"set model.per_type_energy_scales explicitly"
        )
    return DatasetStatistics(
        n_structures=len(dataset),
        n_atoms=int(n_atoms.sum()),
        n_edges=n_edges,
        species_counts={
            s: int(c) for s, c in zip(dataset.species, counts.sum(axis=0), strict=True)
        },
        r_max=dataset.r_max,
        avg_num_neighbors=n_edges / float(n_atoms.sum()),
        per_type_energy_shifts={s: float(v) for s, v in zip(dataset.species, shifts, strict=True)},
        energy_scale=energy_scale,
        shifts_separable=bool(rank == n_species),
    )


def shift_warning(statistics: DatasetStatistics, source: str) -> str | None:
    """A warning when the training compositions cannot separate the species' energy shifts."""
    if statistics.shifts_separable:
        return None
    return (
        f"warning: the compositions in {source} cannot separate the per-species energy "
        f"shifts of {', '.join(statistics.species_counts)} (e.g. every structure has the "
        "same composition); energies of other compositions, pure elements included, will "
        "be off. Add structures of other compositions, or set model.per_type_energy_shifts"
    )
