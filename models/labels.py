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

LABELS = ("energy", "forces", "stress")
TRAINING_LABELS = ("energy", "forces")
"""Labels every training frame must carry; stress is optional."""


class DataError(ValueError):
    """A data file or structure that cannot be used; the message says where."""


@dataclass(frozen=True)
class LabelKeys:
    """Where a data file keeps each label: under ASE's own names (``energy``, ``forces``,
    ``stress``, read by ASE as calculator results) or under others (``REF_energy``, ...),
    which extxyz keeps in each frame's info (energy, stress) and arrays (forces)."""

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"


ASE_KEYS = LabelKeys()
"""ASE's own label names, the default."""


def _label(atoms: ase.Atoms, key: str) -> object:
    """The value labelled ``key`` in ``atoms``: a calculator result, info or array entry."""
    results = atoms.calc.results if atoms.calc is not None else {}
    for source in (results, atoms.info, atoms.arrays):
        if key in source:
            return source[key]
    return None


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
    atoms: ase.Atoms,
    where: str,
    required: Sequence[str] = TRAINING_LABELS,
    keys: LabelKeys = ASE_KEYS,
) -> Labels:
    """The energy, forces and stress labels of ``atoms``, found under ``keys``.

    ``where`` names the structure in error messages, e.g. ``"data.extxyz, frame 7"``.
    Raises ``DataError`` when a ``required`` label (``energy``, ``forces`` or ``stress``)
    is missing or any label is malformed.
    """
    energy, forces, stress = (_label(atoms, getattr(keys, kind)) for kind in LABELS)
    found = {"energy": energy, "forces": forces, "stress": stress}
    missing = [getattr(keys, kind) for kind in required if found[kind] is None]
    if missing:
        raise DataError(
            f"{where} ({atoms.get_chemical_formula()}) has no {' and no '.join(missing)} "
            f"label; training needs a total energy (eV) and forces (eV/Å) for every "
            f"structure (extxyz: energy=... in the comment line, forces in Properties; "
            f"under other names, set the energy and forces keys)"
        )
    if energy is not None:
        try:
            energy = float(energy)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DataError(f"{where}: energy label {energy!r} is not a number") from None
    if forces is not None:
        forces = np.asarray(forces, dtype=np.float64)
        if forces.shape != (len(atoms), 3):
            raise DataError(
                f"{where}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)"
            )
    if stress is not None:
        stress = np.asarray(stress, dtype=np.float64)
        if stress.shape == (6,):
            stress = voigt_6_to_full_3x3_stress(stress)
        elif stress.shape == (9,):
            stress = stress.reshape(3, 3)
        if stress.shape != (3, 3):
            raise DataError(
                f"{where}: stress has shape {stress.shape}, expected (6,), (9,) or (3, 3)"
            )
    return Labels(energy, forces, stress)


def read_structures(
    path: str | Path,
    index: str = ":",
    required: Sequence[str] = TRAINING_LABELS,
    keys: LabelKeys = ASE_KEYS,
) -> list[ase.Atoms]:
    """The frames of an ASE-readable file (extxyz, ASE trajectory, ...) with their labels.

    index: ASE frame selection, e.g. ``":"`` (all), ``"0:100"``, ``"::10"``.
    required, keys: labels every frame must carry, and where (see
        :func:`structure_labels`). Raises
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
        structure_labels(atoms, f"{path}, frame {frame}{selection}", required, keys)
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
