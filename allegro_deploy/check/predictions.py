"""Energies, forces and stresses of many structures: the labels of a data file, a torch
model's and an exported file's."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ase
import ase.data
import numpy as np

from allegro_deploy.models.labels import (
    ASE_KEYS,
    DataError,
    LabelKeys,
    read_structures,
    structure_labels,
)


class CheckError(ValueError):
    """Input the check cannot use; the message says why."""


_BATCH = 32
"""Structures per torch evaluation of the reference."""


@dataclass(frozen=True, eq=False)
class Predictions:
    """Energies, forces and stresses of S structures of N atoms in all (NaN: unknown).

    energy: (S,) eV. forces: (N, 3) eV/Å. stress: (S, 3, 3) eV/Å³. n_atoms: (S,).
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    n_atoms: np.ndarray


def read_data(
    path: Path, atomic_numbers: Sequence[int], index: str = ":", keys: LabelKeys = ASE_KEYS
) -> list:
    """The frames ``index`` (ASE selection) of an ASE-readable file, all of whose elements
    the model knows; labels, under ``keys``, are optional."""
    try:
        structures = read_structures(path, index, required=(), keys=keys)
    except DataError as error:
        raise CheckError(str(error)) from None
    known = set(atomic_numbers)
    for frame, atoms in enumerate(structures):
        unknown = sorted(set(atoms.numbers.tolist()) - known)
        if unknown:
            names = ", ".join(ase.data.chemical_symbols[z] for z in unknown)
            species = ", ".join(ase.data.chemical_symbols[z] for z in atomic_numbers)
            raise CheckError(
                f"{path}, frame {frame}: element {names} is not among the model's species "
                f"({species})"
            )
    return structures


def labels_of(
    structures: Sequence[ase.Atoms], source: Path, keys: LabelKeys = ASE_KEYS
) -> tuple[Predictions, list[str]]:
    """The energy, forces and stress labels of ``structures`` read from ``source`` under
    ``keys`` (NaN where missing) and the names of the labelled quantities."""
    energy, forces, stress = [], [], []
    for frame, atoms in enumerate(structures):
        labels = structure_labels(atoms, f"{source}, frame {frame}", required=(), keys=keys)
        energy.append(math.nan if labels.energy is None else labels.energy)
        forces.append(
            np.full((len(atoms), 3), math.nan) if labels.forces is None else labels.forces
        )
        stress.append(np.full((3, 3), math.nan) if labels.stress is None else labels.stress)
    labels = predictions_of(structures, energy, forces, stress)
    present = [
        name
        for name, values in (
            ("energy", labels.energy),
            ("forces", labels.forces),
            ("stress", labels.stress),
        )
        if np.isfinite(values).any()
    ]
    return labels, present


def predictions_of(
    structures: Sequence[ase.Atoms],
    energy: Sequence[float],
    forces: Sequence[np.ndarray],
    stress: Sequence[np.ndarray],
) -> Predictions:
    return Predictions(
        energy=np.asarray(energy, dtype=np.float64),
        forces=np.concatenate([np.asarray(f, dtype=np.float64) for f in forces]).reshape(-1, 3),
        stress=np.stack([np.asarray(s, dtype=np.float64) for s in stress]),
        n_atoms=np.array([len(atoms) for atoms in structures]),
    )


def torch_predictions(model: Any, structures: Sequence[ase.Atoms]) -> Predictions:
    """``model`` (an :class:`AllegroModel`, in its own dtype) evaluated in batches."""
    from allegro_deploy.models.graph import AtomicGraph

    c = model.config
    energy, forces, stress = [], [], []
    for start in range(0, len(structures), _BATCH):
        graph = AtomicGraph.from_atoms(
            structures[start : start + _BATCH], c.atomic_numbers, c.r_max
        )
        out = {k: v.detach().numpy() for k, v in model(graph).items()}
        energy += list(out["energy"])
        forces.append(out["forces"])
        stress += list(out["stress"])
    return predictions_of(structures, energy, forces, stress)


def file_predictions(potential: Any, structures: Sequence[ase.Atoms]) -> Predictions:
    """An exported model (a :class:`~allegro_deploy.runtime.Potential`) on ``structures``."""
    results = potential.evaluate(list(structures))
    nan = np.full((3, 3), math.nan)
    return predictions_of(
        structures,
        [r.energy for r in results],
        [r.forces for r in results],
        [nan if r.stress is None else r.stress for r in results],
    )
