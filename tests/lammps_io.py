"""LAMMPS files in tests: the data file a run starts from, thermo rows of a log and
frames of a ``dump custom``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ase
import ase.io
import numpy as np


def write_data(path: Path, atoms: ase.Atoms, type_order: Sequence[str]) -> None:
    """``atoms`` (with velocities) as a metal-units atomic LAMMPS data file, element of
    type 1, 2, ... in ``type_order``."""
    ase.io.write(
        path,
        atoms,
        format="lammps-data",
        specorder=list(type_order),
        masses=True,
        velocities=True,
        units="metal",
        atom_style="atomic",
    )


def read_thermo(log: Path) -> np.ndarray:
    """(n_rows, n_columns) thermo rows of the (only) run in a LAMMPS log."""
    rows, inside = [], False
    for line in log.read_text().splitlines():
        if line.split()[:1] == ["Step"]:
            inside = True
        elif inside and line.startswith("Loop time"):
            break
        elif inside:
            rows.append([float(x) for x in line.split()])
    return np.array(rows)


def read_dump(dump: Path, n_atoms: int) -> np.ndarray:
    """(n_frames, n_atoms, n_columns - 1) per-atom columns after ``id`` of a
    ``dump custom ... id ...`` sorted by id."""
    lines = dump.read_text().splitlines()
    frame_lines = n_atoms + 9
    frames = [lines[k + 9 : k + frame_lines] for k in range(0, len(lines), frame_lines)]
    return np.array([[[float(x) for x in row.split()[1:]] for row in f] for f in frames])
