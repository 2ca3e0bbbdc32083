"""Reference data without DFT: labelled EMT molecular dynamics of fcc metals and alloys."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import atomic_numbers, reference_states
from ase.md.langevin import Langevin

from allegro_deploy.runtime.md import maxwell_boltzmann
from allegro_deploy.runtime.progress import Progress

# Elements with EMT parameters that crystallise fcc (EMT's H, C, N, O are not bulk metals).
EMT_ELEMENTS = ("Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt")
TIMESTEP_FS = 5.0
FRICTION_PER_FS = 0.02
MAX_STRAIN = 0.01


def generate_emt_dataset(
    path: str | Path,
    element: str = "Cu",
    supercell: Sequence[int] = (3, 3, 3),
    temperatures: Sequence[float] = (300.0, 600.0, 900.0),
    n_frames: int = 60,
    interval: int = 10,
    seed: int = 0,
    alloy: Mapping[str, float] | None = None,
) -> int:
    """Write ``n_frames`` EMT-labelled frames of Langevin MD to an extxyz file.

    path: output extxyz file (parent folders are created).
    element: fcc metal with EMT parameters, one of ``EMT_ELEMENTS``; ignored if ``alloy``.
    supercell: repetitions of the 4-atom cubic fcc cell along a, b, c.
    temperatures: K; the frames are split evenly over them, one MD run each.
    n_frames: total number of frames written.
    interval: MD steps (of 5 fs) between recorded frames.
    seed: seeds the alloy arrangement, velocities, thermostat noise and strains.
    alloy: random substitutional alloy as element -> mean fraction (fractions sum to 1),
        e.g. ``{"Cu": 0.5, "Au": 0.5}``: every frame gets a new random arrangement and
        composition (every fifth frame one pure element, the others drawn around these
        fractions), lattice constant from Vegard's law, so that the per-species energy
        shifts can be separated.

    Before each frame's ``interval`` MD steps the cell is set to the reference cell
    deformed by a random symmetric strain with components within ±1 % (volume within
    about ±3 %, atoms scaled with it), so stresses cover compression, tension and shear.
    Each frame stores energy (eV), forces (n_atoms, 3) eV/Å and stress (6,) eV/Å³.
    Returns the number of frames written.
    """
    composition = _composition(element, alloy)
    if len(supercell) != 3 or min(supercell) < 1:
        raise ValueError(f"supercell must be 3 positive integers, got {tuple(supercell)}")
    if not temperatures or min(temperatures) <= 0:
        raise ValueError(f"temperatures must be positive (K), got {tuple(temperatures)}")
    if n_frames < 1 or interval < 1:
        raise ValueError(f"n_frames and interval must be >= 1, got {n_frames} and {interval}")

    rng = np.random.default_rng(seed)
    reference = _crystal(composition, supercell, rng)
    frames_per_temperature = [
        len(chunk) for chunk in np.array_split(np.arange(n_frames), len(temperatures))
    ]
    frames: list[Atoms] = []
    with Progress("EMT MD", n_frames, "frames") as progress:
        for temperature, count in zip(temperatures, frames_per_temperature, strict=True):
            progress.stage(f"EMT MD at {temperature:g} K", announce=False)
            atoms = reference.copy()
            dynamics = _langevin(atoms, temperature, rng)
            for _ in range(count):
                cell = reference.cell.array
                if len(composition) > 1:  # a new arrangement and composition every frame
                    atoms = _crystal(_frame_composition(composition, len(frames), rng),
                                     supercell, rng)  # fmt: skip
                    cell = atoms.cell.array
                    dynamics = _langevin(atoms, temperature, rng)
                atoms.set_cell(cell @ _random_strain(rng), scale_atoms=True)
                dynamics.run(interval)
                frames.append(_labelled_copy(atoms))
                progress.advance()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ase.io.write(path, frames, format="extxyz")
    return len(frames)


def _composition(element: str, alloy: Mapping[str, float] | None) -> dict[str, float]:
    """Element -> fraction, checked against the elements EMT supports."""
    composition = dict(alloy) if alloy else {element: 1.0}
    unsupported = [symbol for symbol in composition if symbol not in EMT_ELEMENTS]
    if unsupported:
        raise ValueError(
            f"EMT has no fcc parameters for {', '.join(unsupported)}; "
            f"supported elements: {', '.join(EMT_ELEMENTS)}"
        )
    fractions = np.array(list(composition.values()), dtype=float)
    if (fractions <= 0).any() or not np.isclose(fractions.sum(), 1.0):
        raise ValueError(f"alloy fractions must be positive and sum to 1, got {composition}")
    return composition


def _crystal(
    composition: Mapping[str, float], supercell: Sequence[int], rng: np.random.Generator
) -> Atoms:
    """Cubic fcc supercell with the composition's elements placed at random."""
    lattice_constant = sum(
        fraction * reference_states[atomic_numbers[symbol]]["a"]
        for symbol, fraction in composition.items()
    )
    first = next(iter(composition))
    atoms = bulk(first, "fcc", a=lattice_constant, cubic=True).repeat(tuple(supercell))
    n_atoms = len(atoms)
    # Largest-remainder rounding so the counts add up to n_atoms.
    exact = np.array(list(composition.values())) * n_atoms
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact)[: n_atoms - counts.sum()]] += 1
    symbols = np.repeat(list(composition), counts)
    atoms.set_chemical_symbols(rng.permutation(symbols).tolist())
    return atoms


def _langevin(atoms: Atoms, temperature: float, rng: np.random.Generator) -> Langevin:
    """EMT Langevin dynamics of ``atoms`` at ``temperature`` K, from Maxwell-Boltzmann
    momenta."""
    atoms.calc = EMT()
    maxwell_boltzmann(atoms, temperature, rng)
    return Langevin(
        atoms,
        TIMESTEP_FS * units.fs,
        temperature_K=temperature,
        friction=FRICTION_PER_FS / units.fs,
        fixcm=False,
        rng=rng,
    )


def _frame_composition(
    composition: Mapping[str, float], frame: int, rng: np.random.Generator
) -> dict[str, float]:
    """The composition of an alloy frame: every fifth frame one pure element in turn, the
    others drawn around ``composition`` (a Dirichlet distribution with that mean), so
    that the per-species energy shifts can be told apart."""
    symbols = list(composition)
    if frame % 5 == 0:
        pure = symbols[(frame // 5) % len(symbols)]
        return {symbol: float(symbol == pure) for symbol in symbols}
    alpha = 2.0 * len(symbols) * np.array(list(composition.values()))
    fractions = rng.dirichlet(alpha)
    return {symbol: float(f) for symbol, f in zip(symbols, fractions, strict=True)}


def _random_strain(rng: np.random.Generator) -> np.ndarray:
    """(3, 3) deformation I + ε with ε symmetric, components within ±MAX_STRAIN."""
    strain = rng.uniform(-MAX_STRAIN, MAX_STRAIN, size=(3, 3))
    return np.eye(3) + (strain + strain.T) / 2


def _labelled_copy(atoms: Atoms) -> Atoms:
    """Snapshot of ``atoms`` with its EMT energy, forces and stress attached."""
    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    frame.calc = SinglePointCalculator(
        frame,
        energy=atoms.get_potential_energy(),
        forces=atoms.get_forces(),
        stress=atoms.get_stress(voigt=True),
    )
    return frame
