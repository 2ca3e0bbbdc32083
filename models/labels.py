"""Labelled structures from files, without torch: the energy, forces and stress a data file
attaches to each frame. Training needs energy and forces on every frame (the default);
``allegro-deploy check`` takes whatever labels a frame has."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase.stress import voigt_6_to_full_3x3_stress

TRAINING_LABELS = ("energy", "forces")
"""Labels every training frame must carry; stress is optional."""


class DataError(ValueError):
    """A data file or structure that cannot be used; the message says where."""


@dataclass(frozen=True)
class Labels:
    """Reference labels of one structure (None: not labelled).

    energy: eV, total energy.
    forces: (n_atoms, 3) eV/Å.
    stress: (3, 3) eV/Å³ (ASE sign: tensile positive).
    """

    energy: float | None
    forces: np.ndarray | None
    stress: np.ndarray | None


def structure_labels(
    atoms: ase.Atoms, where: str, required: Sequence[str] = TRAINING_LABELS
) -> Labels:
    """The energy, forces and stress attached to ``atoms`` by its calculator.

    ``where`` names the structure in error messages, e.g. ``"data.extxyz, frame 7"``.
    Raises ``DataError`` when a ``required`` label is missing or any label is malformed.
    """
    results = atoms.calc.results if atoms.calc is not None else {}
    missing = [key for key in required if key not in results]
    if missing:
        raise DataError(
            f"{where} ({atoms.get_chemical_formula()}) has no {' and no '.join(missing)} "
            f"label; training needs a total energy (eV) and forces (eV/Å) for every "
            f"structure (extxyz: energy=... in the comment line, forces in Properties)"
        )
    energy = results.get("energy")
    forces = results.get("forces")
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise DataError(
                f"{where}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)"
            )
    stress = results.get("stress")
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (6,):
            stress = voigt_6_to_full_3x3_stress(stress)
        if stress.shape != (3, 3):
            raise DataError(f"{where}: stress has shape {stress.shape}, expected (6,) or (3, 3)")
    return Labels(None if energy is None else float(energy), forces, stress)


def read_structures(
    path: str | Path, index: str = ":", required: Sequence[str] = TRAINING_LABELS
) -> list[ase.Atoms]:
    """The frames of an ASE-readable file (extxyz, ASE trajectory, ...) with their labels.

    index: ASE frame selection, e.g. ``":"`` (all), ``"0:100"``, ``"::10"``.
    required: labels every frame must carry (see :func:`structure_labels`). Raises
    ``FileNotFoundError`` for a missing file and ``DataError`` naming the file and the
    frame for unreadable files and missing or malformed labels.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path.resolve()} does not exist")
    try:
        structures = ase.io.read(path, index=index)
    except Exception as error:  # ASE raises many types for malformed input
        raise DataError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    if not structures:
        raise DataError(f"{path} contains no structures (index {index!r})")
    selection = "" if index == ":" else f" of the selection index={index!r}"
    for frame, atoms in enumerate(structures):
        structure_labels(atoms, f"{path}, frame {frame}{selection}", required)
    return structures


def read_structure(path: str | Path, frame: int = -1) -> ase.Atoms:
    """Frame ``frame`` (default the last) of an ASE-readable file, labels not needed, e.g.
    an MD start. Raises ``DataError`` naming the file for an unreadable file, a missing
    frame or a frame without atoms."""
    index = f"{frame}:" if frame == -1 else f"{frame}:{frame + 1}"
    (atoms,) = read_structures(path, index, required=())
    if not len(atoms):
        raise DataError(f"{path}: frame {frame} has no atoms")
    return atoms
