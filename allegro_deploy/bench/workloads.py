"""Benchmark workloads: rattled fcc cells of a metal and batches of 21-atom molecules."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import ase
import ase.build
import numpy as np
from ase.data import atomic_numbers, covalent_radii, reference_states

MOLECULE_ATOMS = 21
RATTLE = 0.05
"""Å, standard deviation of the random displacement of every atom of a workload."""


class BenchError(ValueError):
    """Bad input to the benchmark (unknown file type, size < 1, element not in the model)."""


def fcc_lattice_constant(symbol: str) -> float:
    """Å: ASE's reference fcc lattice constant of ``symbol``, or else the fcc lattice whose
    nearest-neighbour distance is twice the covalent radius."""
    state = reference_states[atomic_numbers[symbol]]
    if state is not None and state.get("symmetry") == "fcc":
        return float(state["a"])
    return 2.0 * math.sqrt(2.0) * float(covalent_radii[atomic_numbers[symbol]])


def first_metal(species: Sequence[str]) -> str:
    """The first of ``species`` that is a metal (an fcc, bcc or hcp reference state in ASE),
    else the first species."""
    for symbol in species:
        state = reference_states[atomic_numbers[symbol]]
        if state is not None and state.get("symmetry") in ("fcc", "bcc", "hcp"):
            return symbol
    return species[0]


def fcc_repeats(n_atoms: int) -> tuple[int, int, int]:
    """Repetitions (n1 <= n2 <= n3, within one of each other) of the 4-atom cubic fcc
    cell whose atom count 4·n1·n2·n3 is nearest to ``n_atoms``."""
    k = max(1, round((n_atoms / 4) ** (1 / 3)) - 1)
    candidates = [(k, k, k), (k, k, k + 1), (k, k + 1, k + 1), (k + 1, k + 1, k + 1)]
    candidates += [(k + 1, k + 1, k + 2), (k + 1, k + 2, k + 2)]
    return min(candidates, key=lambda r: abs(4 * math.prod(r) - n_atoms))


def fcc_cell(n_atoms: int, element: str, seed: int = 0) -> ase.Atoms:
    """Periodic fcc ``element`` of about ``n_atoms`` atoms (:func:`fcc_repeats`), lattice
    constant :func:`fcc_lattice_constant`, every atom displaced by N(0, RATTLE) Å."""
    a = fcc_lattice_constant(element)
    atoms = ase.build.bulk(element, "fcc", a=a, cubic=True).repeat(fcc_repeats(n_atoms))
    atoms.positions += np.random.default_rng(seed).normal(0.0, RATTLE, atoms.positions.shape)
    return atoms


def neighbour_lattice_constant(neighbours: float, r_max: float) -> float:
    """Å: the fcc lattice constant at which an atom has on average ``neighbours`` atoms
    within ``r_max`` Å (4 atoms per a³ in a sphere of radius r_max)."""
    return (16.0 * math.pi * r_max**3 / (3.0 * neighbours)) ** (1.0 / 3.0)


def alloy_cell(
    n_atoms: int,
    fractions: dict[str, float],
    lattice_constant: float,
    seed: int = 0,
) -> ase.Atoms:
    """Periodic fcc of about ``n_atoms`` atoms (:func:`fcc_repeats`) at ``lattice_constant``
    Å, the species of ``fractions`` placed at random in those proportions, every atom
    displaced by N(0, RATTLE) Å."""
    rng = np.random.default_rng(seed)
    cell = ase.build.bulk("X", "fcc", a=lattice_constant, cubic=True)
    atoms = cell.repeat(fcc_repeats(n_atoms))
    symbols, weights = list(fractions), np.array(list(fractions.values()), dtype=float)
    atoms.set_chemical_symbols(rng.choice(symbols, len(atoms), p=weights / weights.sum()))
    atoms.positions += rng.normal(0.0, RATTLE, atoms.positions.shape)
    return atoms


@dataclass(frozen=True)
class TrainingWorkload:
    """What a model was trained on, for a default workload like it.

    fractions: species -> share of the training atoms.
    neighbours: mean neighbours per atom within ``r_max`` Å in the training data.
    """

    fractions: dict[str, float]
    neighbours: float
    r_max: float

    @property
    def lattice_constant(self) -> float:
        return neighbour_lattice_constant(self.neighbours, self.r_max)

    def describe(self) -> str:
        composition = ", ".join(f"{s} {f:.0%}" for s, f in self.fractions.items())
        return (
            f"fcc cells of the training composition ({composition}) at a = "
            f"{self.lattice_constant:.3f} Å, where an atom has the training data's "
            f"{self.neighbours:.1f} neighbours within r_max = {self.r_max:g} Å"
        )


def aspirin() -> ase.Atoms:
    """Acetylsalicylic acid (C9H8O4, 21 atoms) from standard bond lengths and angles (Å):
    planar ring and carboxylic acid, acetyl ester twisted out of the ring plane."""
    angles = np.radians(np.arange(6) * 60.0)
    radial = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], 1)
    up = np.array([0.0, 0.0, 1.0])

    def turned(vector: np.ndarray, degrees: float) -> np.ndarray:
        """``vector`` rotated about z."""
        a = np.radians(degrees)
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ vector

    symbols = ["C"] * 6 + ["H"] * 4
    positions = [*(1.39 * radial), *(2.47 * radial[2:])]
    # carboxylic acid on ring carbon 0
    carboxyl = 2.87 * radial[0]
    hydroxyl = carboxyl + 1.34 * turned(radial[0], -60)
    symbols += ["C", "O", "O", "H"]
    positions += [carboxyl, carboxyl + 1.22 * turned(radial[0], 60), hydroxyl]
    positions += [hydroxyl + 0.97 * radial[0]]
    # acetyl ester on ring carbon 1, in the plane of the ring normal
    out = radial[1]
    ester = 2.75 * out
    carbonyl = ester + 1.36 * (0.5 * out + 0.866 * up)
    axis = -0.5 * out + 0.866 * up
    methyl = carbonyl + 1.50 * axis
    symbols += ["O", "C", "O", "C", "H", "H", "H"]
    positions += [ester, carbonyl, carbonyl + 1.20 * out, methyl]
    across, side = 0.866 * out + 0.5 * up, np.cross(out, up)
    for phi in np.radians([0.0, 120.0, 240.0]):
        direction = 0.334 * axis + 0.943 * (np.cos(phi) * across + np.sin(phi) * side)
        positions.append(methyl + 1.09 * direction)
    return ase.Atoms(symbols, positions=np.array(positions))


def cluster(species: Sequence[str], rng: np.random.Generator) -> ase.Atoms:
    """A compact 21-atom cluster: the sites of an fcc lattice (spaced for the largest of
    ``species``) nearest to a lattice site, each of a random species."""
    a = max(fcc_lattice_constant(s) for s in species)
    lattice = ase.build.bulk("X", "fcc", a=a, cubic=True).repeat(3)
    distance = np.linalg.norm(lattice.positions - lattice.positions[len(lattice) // 2], axis=1)
    positions = lattice.positions[np.argsort(distance, kind="stable")[:MOLECULE_ATOMS]]
    return ase.Atoms(list(rng.choice(list(species), MOLECULE_ATOMS)), positions=positions)


def molecules(species: Sequence[str], count: int, seed: int = 0) -> list[ase.Atoms]:
    """``count`` 21-atom molecules of ``species``, each displaced by N(0, RATTLE) Å:
    aspirin when H, C and O are among the species, else :func:`cluster` s."""
    rng = np.random.default_rng(seed)
    organic = {"H", "C", "O"} <= set(species)
    result = []
    for _ in range(count):
        atoms = aspirin() if organic else cluster(species, rng)
        atoms.positions += rng.normal(0.0, RATTLE, atoms.positions.shape)
        result.append(atoms)
    return result


@dataclass(frozen=True)
class Case:
    """One timed workload, as plain data so that a fresh process builds the same structures.

    kind: ``fcc`` (one periodic cell of about ``size`` atoms of ``species[0]`` at its own
        lattice constant, or with ``fractions`` and ``lattice_constant`` an
        :func:`alloy_cell` of ``species``) or ``molecules`` (``size`` molecules of
        ``species``, see :func:`molecules`).
    separate: for molecules, one call per molecule instead of all in one call.
    """

    kind: str
    size: int
    species: tuple[str, ...]
    separate: bool = False
    fractions: tuple[float, ...] = ()
    lattice_constant: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("fcc", "molecules"):
            raise BenchError(f"unknown workload kind {self.kind!r}; choose fcc or molecules")
        if self.size < 1:
            raise BenchError(f"a workload needs a size of at least 1, got {self.size}")

    def structures(self) -> list[ase.Atoms]:
        if self.kind == "fcc" and self.lattice_constant is not None:
            fractions = dict(zip(self.species, self.fractions, strict=True))
            return [alloy_cell(self.size, fractions, self.lattice_constant)]
        if self.kind == "fcc":
            return [fcc_cell(self.size, self.species[0])]
        return molecules(self.species, self.size)

    @property
    def label(self) -> str:
        if self.kind == "fcc" and self.lattice_constant is not None:
            return f"fcc {'-'.join(self.species)}, a = {self.lattice_constant:.2f} Å"
        if self.kind == "fcc":
            return f"fcc {self.species[0]}"
        what = "C9H8O4" if {"H", "C", "O"} <= set(self.species) else "21-atom clusters"
        calls = f"{self.size} calls" if self.separate else "1 call"
        return f"{self.size}× {what}, {calls}"


def default_cases(
    species: Sequence[str],
    sizes: Sequence[int],
    n_molecules: int,
    element: str | None = None,
    training: TrainingWorkload | None = None,
) -> list[Case]:
    """fcc cells of each size: of ``element`` at its own lattice constant when named, else
    like the ``training`` data (:class:`TrainingWorkload`) when known, else of
    :func:`first_metal` of the species; then ``n_molecules`` molecules in one call and in
    one call each (none when 0)."""
    bad = [size for size in sizes if size < 1]
    if bad:
        raise BenchError(f"system sizes must be at least 1 atom, got {bad}")
    if element is None and training is not None:
        names = tuple(training.fractions)
        shares = tuple(training.fractions.values())
        cases = [
            Case("fcc", size, names, fractions=shares, lattice_constant=training.lattice_constant)
            for size in sizes
        ]
    else:
        element = element or first_metal(species)
        if element not in species:
            raise BenchError(
                f"element {element} is not one of the model's species ({', '.join(species)})"
            )
        cases = [Case("fcc", size, (element,)) for size in sizes]
    if n_molecules:
        cases += [
            Case("molecules", n_molecules, tuple(species), separate) for separate in (False, True)
        ]
    return cases
