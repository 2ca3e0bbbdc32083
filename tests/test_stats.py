"""Dataset statistics: least-squares energy shifts, neighbor counts, force RMS."""

from __future__ import annotations

import json

import ase
import ase.build
import ase.neighborlist
import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator

from allegro_deploy.models import ModelConfig
from allegro_deploy.models.data import LabelledDataset
from allegro_deploy.models.stats import compute_statistics, shift_warning

SHIFTS = {"Cu": -3.5, "Au": -2.9}
R_MAX = 3.2


def synthetic_alloys(n: int, seed: int = 0) -> list[ase.Atoms]:
    """Random Cu/Au cells of 4-12 atoms with ``E = Σ_s n_s·shift_s`` and random forces."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = ase.build.bulk("Cu", "fcc", a=3.8, cubic=True).repeat((1 + i % 3, 1, 1))
        atoms.numbers = rng.choice([29, 79], len(atoms))
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        energy = sum(SHIFTS[s] for s in atoms.get_chemical_symbols())
        forces = rng.normal(0.0, 0.5, (len(atoms), 3))
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def test_least_squares_recovers_per_species_energies():
    frames = synthetic_alloys(12)
    stats = compute_statistics(LabelledDataset.from_atoms(frames, ["Cu", "Au"], R_MAX, "x"))
    assert stats.per_type_energy_shifts == pytest.approx(SHIFTS, abs=1e-10)
    forces = np.concatenate([a.get_forces() for a in frames])
    assert stats.energy_scale == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    symbols = [s for a in frames for s in a.get_chemical_symbols()]
    assert stats.species_counts == {"Cu": symbols.count("Cu"), "Au": symbols.count("Au")}
    assert stats.n_structures == 12 and stats.n_atoms == len(symbols)


def test_single_species_shift_is_mean_energy_per_atom():
    frames = synthetic_alloys(6)
    rng = np.random.default_rng(1)
    for atoms in frames:
        atoms.numbers[:] = 29
        atoms.calc = SinglePointCalculator(
            atoms, energy=rng.normal(-3.0, 0.2) * len(atoms), forces=atoms.calc.results["forces"]
        )
    stats = compute_statistics(LabelledDataset.from_atoms(frames, ["Cu"], R_MAX, "x"))
    per_atom = [a.get_potential_energy() / len(a) for a in frames]
    assert stats.per_type_energy_shifts["Cu"] == pytest.approx(np.mean(per_atom), abs=1e-12)


def test_avg_num_neighbors_is_a_direct_count():
    frames = synthetic_alloys(5)
    frames.append(ase.Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.6, 0]]))
    frames[-1].calc = SinglePointCalculator(frames[-1], energy=-9.0, forces=np.zeros((3, 3)))
    stats = compute_statistics(LabelledDataset.from_atoms(frames, ["Cu", "Au"], R_MAX, "x"))
    n_pairs = sum(len(ase.neighborlist.neighbor_list("i", a, R_MAX)) for a in frames)
    n_atoms = sum(len(a) for a in frames)
    assert stats.n_edges == n_pairs
    assert stats.avg_num_neighbors == pytest.approx(n_pairs / n_atoms, rel=1e-15)


def test_statistics_fill_a_model_config():
    stats = compute_statistics(
        LabelledDataset.from_atoms(synthetic_alloys(4), ["Cu", "Au"], R_MAX, "x")
    )
    assert json.loads(json.dumps(stats.to_dict())) == stats.to_dict()
    config = ModelConfig(species=("Cu", "Au"), r_max=R_MAX, **stats.model_options())
    assert config.per_species("per_type_energy_shifts", 0.0) == pytest.approx([-3.5, -2.9])
    assert config.per_species("per_type_energy_scales", 1.0) == [stats.energy_scale] * 2


def test_a_fixed_composition_is_flagged_as_unable_to_separate_the_shifts():
    frames = synthetic_alloys(8)
    assert compute_statistics(
        LabelledDataset.from_atoms(frames, ["Cu", "Au"], R_MAX, "x")
    ).shifts_separable
    for atoms in frames:
        atoms.numbers[:] = [29, 79] * (len(atoms) // 2)
    stats = compute_statistics(
        LabelledDataset.from_atoms(frames, ["Cu", "Au"], R_MAX, "fixed.extxyz")
    )
    assert not stats.shifts_separable
    warning = shift_warning(stats, "fixed.extxyz")
    assert "fixed.extxyz cannot separate the per-species energy shifts of Cu, Au" in warning
