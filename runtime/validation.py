"""Checks on structures before they reach a model (numpy + vesin, no torch)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from .neighbors import NeighborList, neighbor_list

# Element symbols indexed by atomic number (index 0 is a placeholder).
CHEMICAL_SYMBOLS = (
    "X H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge"
    " As Se Br Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm"
    " Eu Gd Tb Dy Ho Er Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U"
    " Np Pu Am Cm Bk Cf Es Fm Md No Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()

_AXES = "abc"
_SPAN = {1: ("length", "Å"), 2: ("area", "Å²"), 3: ("volume", "Å³")}


class StructureError(ValueError):
    """A structure a model cannot be evaluated on; the message names the problem."""


class UnknownSpeciesError(ValueError):
    """A structure contains elements the model was not trained on."""


def element_symbol(atomic_number: int) -> str:
    """Chemical symbol of ``atomic_number``, or ``Z=<n>`` outside the periodic table."""
    if 0 < atomic_number < len(CHEMICAL_SYMBOLS):
        return CHEMICAL_SYMBOLS[atomic_number]
    return f"Z={atomic_number}"


def validate_structure(
    positions: npt.ArrayLike,
    cell: npt.ArrayLike,
    pbc: bool | npt.ArrayLike,
    *,
    min_distance: float = 0.5,
    cutoff: float = 0.0,
) -> NeighborList:
    """Raise ``StructureError`` unless the structure is fit for a model evaluation.

    positions: (n_atoms, 3) Å.
    cell: (3, 3) Å, lattice vectors as rows; only rows along periodic directions matter.
    pbc: bool or (3,) bool.
    min_distance: Å, atoms (or periodic images) closer than this are rejected.
    cutoff: Å, the cutoff of the neighbor list returned, at least ``min_distance``.

    Checks, in order: array shapes, finite positions and cell, a non-singular cell
    along the periodic directions, and no pair of atoms closer than ``min_distance``.
    Returns the neighbor list the distances were checked on (cutoff
    ``max(cutoff, min_distance)``), so that a model with that cutoff builds no second one.
    """
    positions = np.asarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise StructureError(f"positions must have shape (n_atoms, 3), got {positions.shape}")
    if cell.shape != (3, 3):
        raise StructureError(f"cell must have shape (3, 3), got {cell.shape}")
    pbc_array = np.asarray(pbc, dtype=bool)
    if pbc_array.shape not in ((), (3,)):
        raise StructureError(f"pbc must be a bool or 3 bools, got shape {pbc_array.shape}")
    periodic = np.broadcast_to(pbc_array, (3,))

    bad_atoms = np.flatnonzero(~np.isfinite(positions).all(axis=1))
    if bad_atoms.size:
        first = bad_atoms[0]
        raise StructureError(
            f"{bad_atoms.size} atom(s) have non-finite positions, first atom {first} "
            f"at {positions[first].tolist()}"
        )
    if not np.isfinite(cell[periodic]).all():
        raise StructureError(
            f"cell has non-finite entries along periodic directions: {cell.tolist()}"
        )

    _check_periodic_cell(cell, periodic)
    edges = neighbor_list(positions, cell, periodic, max(cutoff, min_distance))
    _check_distances(positions, cell, edges, min_distance)
    return edges


def _check_periodic_cell(cell: np.ndarray, periodic: np.ndarray) -> None:
    """Lattice vectors along periodic directions must span a non-degenerate lattice."""
    vectors = cell[periodic]
    if len(vectors) == 0:
        return
    # Length, area or volume spanned by the periodic vectors: sqrt of the Gram determinant.
    span = float(np.sqrt(max(np.linalg.det(vectors @ vectors.T), 0.0)))
    scale = float(np.prod(np.linalg.norm(vectors, axis=1)))
    if span > 1e-8 * scale:
        return
    axes = ", ".join(_AXES[k] for k in np.flatnonzero(periodic))
    quantity, unit = _SPAN[len(vectors)]
    detail = f"; det(cell) = {np.linalg.det(cell):.6g}" if len(vectors) == 3 else ""
    raise StructureError(
        f"cell is singular along periodic direction(s) {axes}: spanned {quantity} "
        f"{span:.6g} {unit}{detail}"
    )


def _check_distances(
    positions: np.ndarray, cell: np.ndarray, edges: NeighborList, min_distance: float
) -> None:
    """No two atoms, or an atom and a periodic image, closer than ``min_distance`` Å,
    among the pairs of ``edges``."""
    vectors = positions[edges.neighbors] - positions[edges.centers] + edges.shifts @ cell
    distances = np.linalg.norm(vectors, axis=1)
    too_close = int((distances < min_distance).sum())
    if too_close == 0:
        return
    closest = int(np.argmin(distances))
    center, neighbor = int(edges.centers[closest]), int(edges.neighbors[closest])
    shift = tuple(int(s) for s in edges.shifts[closest])
    if center == neighbor:
        pair = f"atom {center} and its periodic image at cell shift {shift}"
    elif any(shift):
        pair = f"atoms {center} and {neighbor} (periodic image at cell shift {shift})"
    else:
        pair = f"atoms {center} and {neighbor}"
    raise StructureError(
        f"{pair} are {distances[closest]:.4g} Å apart, closer than min_distance = "
        f"{min_distance} Å ({too_close // 2} pair(s) too close)"
    )


def species_indices(
    atomic_numbers: npt.ArrayLike, model_atomic_numbers: Sequence[int]
) -> np.ndarray:
    """Index of each atom's element in the model's species list.

    atomic_numbers: (n_atoms,) int, the structure's elements.
    model_atomic_numbers: (n_species,) int, the model's elements in model order.
    Returns (n_atoms,) int64 species indices into ``model_atomic_numbers``.
    Raises ``UnknownSpeciesError`` naming the elements the model does not know.
    """
    atomic_numbers = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
    model = np.asarray(model_atomic_numbers, dtype=np.int64).reshape(-1)
    # species index by atomic number, -1 for elements the model lacks (a lookup table:
    # this runs on every call of a small structure)
    table = np.full(len(CHEMICAL_SYMBOLS), -1)
    table[model] = np.arange(model.size)
    known = (atomic_numbers >= 0) & (atomic_numbers < table.size)
    species = np.where(known, table[np.where(known, atomic_numbers, 0)], -1)
    if (species < 0).any():
        unknown = np.unique(atomic_numbers[species < 0])
        raise UnknownSpeciesError(
            f"unknown species {', '.join(element_symbol(int(z)) for z in unknown)}; "
            f"the model knows {', '.join(element_symbol(int(z)) for z in model)}"
        )
    return species.astype(np.int64, copy=False)
