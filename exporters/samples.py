"""Random structures for tracing and verifying an export."""

from __future__ import annotations

from collections.abc import Sequence

import ase
import numpy as np

from allegro_deploy.models.allegro import AllegroModel
from allegro_deploy.models.graph import AtomicGraph


def _lattice(
    rng: np.random.Generator,
    n_species: int,
    shape: tuple[int, int, int],
    spacing: float,
    periodic: bool,
) -> ase.Atoms:
    """Rattled simple-cubic block of random species (numbers are species indices + 1).

    The rattle (σ = 5% of the spacing) keeps atoms well apart.
    """
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    positions = (grid + rng.normal(0.0, 0.05, grid.shape)) * spacing
    numbers = rng.integers(1, n_species + 1, len(positions))
    cell = np.diag(np.array(shape) * spacing) if periodic else None
    return ase.Atoms(numbers, positions=positions, cell=cell, pbc=periodic)


def sample_structures(
    n_species: int, r_max: float, seed: int, kinds: Sequence[str]
) -> list[ase.Atoms]:
    """Random structures for tracing and verification (numbers are species indices + 1).

    kinds: ``small_cell`` (8 atoms, periodic; for r_max >= 3.3 Å a cell edge of 0.9 r_max,
    so atoms see their own images), ``cell`` (18 atoms, periodic), ``molecule`` (7 atoms),
    ``cluster`` (5 atoms), ``isolated`` (2 atoms, no edges), ``single`` (1 atom). Atoms are
    at least ~0.75 Å apart.
    """
    rng = np.random.default_rng(seed)
    spacing = max(0.45 * r_max, 1.5)
    make = {
        "small_cell": lambda: _lattice(rng, n_species, (2, 2, 2), spacing, True),
        "cell": lambda: _lattice(rng, n_species, (3, 3, 2), spacing, True),
        "molecule": lambda: _lattice(rng, n_species, (1, 7, 1), max(0.3 * r_max, 1.5), False),
        "cluster": lambda: _lattice(rng, n_species, (1, 5, 1), spacing, False),
        "isolated": lambda: _lattice(rng, n_species, (2, 1, 1), 3.0 * r_max, False),
        "single": lambda: _lattice(rng, n_species, (1, 1, 1), spacing, False),
    }
    return [make[kind]() for kind in kinds]


def graph_of(model: AllegroModel, structures: Sequence[ase.Atoms]) -> AtomicGraph:
    """Graph of structures whose atomic numbers are species indices + 1."""
    numbers = range(1, len(model.config.species) + 1)
    return AtomicGraph.from_atoms(structures, numbers, model.config.r_max)
