"""Full neighbor lists with integer periodic shifts (numpy + vesin, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import vesin

MAX_PAIRS = 2**31
"""Most neighbor pairs one list may hold (~100 GB of pair arrays): a cutoff that would give
more is refused at once instead of exhausting memory or running for hours."""


@dataclass(frozen=True)
class NeighborList:
    """Directed edges center -> neighbor within a cutoff, both directions present.

    centers: (n_edges,) int64 atom index of each edge's center i.
    neighbors: (n_edges,) int64 atom index of each edge's neighbor j.
    shifts: (n_edges, 3) int64 integer cell shifts S, so that
        ``r_ij = positions[j] - positions[i] + S @ cell`` (Å).
    """

    centers: np.ndarray
    neighbors: np.ndarray
    shifts: np.ndarray


def neighbor_list(
    positions: npt.ArrayLike,
    cell: npt.ArrayLike,
    pbc: bool | npt.ArrayLike,
    cutoff: float,
) -> NeighborList:
    """All ordered pairs (i, j, S) with ``|r_ij| < cutoff``, excluding i == j with S == 0.

    positions: (n_atoms, 3) Å, need not be wrapped into the cell.
    cell: (3, 3) Å, lattice vectors as rows; rows along non-periodic directions are
        ignored (all zeros for a molecule).
    pbc: bool or (3,) bool, periodicity along each lattice vector.
    cutoff: Å, > 0.

    Cells smaller than the cutoff give several images of the same neighbor, including
    an atom's own images. Edges are sorted by center, then neighbor, then shift.
    """
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff} Å")
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    cell = np.asarray(cell, dtype=np.float64)
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise ValueError(f"positions must have shape (n_atoms, 3), got {positions.shape}")
    if cell.shape != (3, 3):
        raise ValueError(f"cell must have shape (3, 3), got {cell.shape}")
    periodic = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,))
    estimate = _pairs_estimate(len(positions), cell, periodic, cutoff)
    if estimate > MAX_PAIRS:
        volume = abs(float(np.linalg.det(cell))) if periodic.all() else 0.0
        density = f" at {len(positions) / volume:.3g} atoms/Å³ (solids: ~0.1)" if volume else ""
        raise ValueError(
            f"a cutoff of {cutoff:g} Å would give about {estimate:.1e} neighbor pairs for "
            f"these {len(positions)} atoms{density}, more than {MAX_PAIRS:.1e}: is the "
            "cutoff or the structure wrong?"
        )
    # Non-periodic lattice vectors carry no information here and may be zero or
    # degenerate; vesin accepts zero rows for non-periodic directions.
    box = np.where(periodic[:, None], cell, 0.0)
    calculator = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    centers, neighbors, shifts = calculator.compute(
        positions, box, periodic.tolist(), quantities="ijS"
    )
    centers = centers.astype(np.int64)
    neighbors = neighbors.astype(np.int64)
    shifts = shifts.astype(np.int64)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], neighbors, centers))
    return NeighborList(centers[order], neighbors[order], shifts[order])


def _pairs_estimate(n_atoms: int, cell: np.ndarray, periodic: np.ndarray, cutoff: float) -> float:
    """About how many ordered pairs lie within ``cutoff``: n² / V · 4/3 π r³ for a
    periodic cell, at most n² times the periodic images within reach otherwise (0 for a
    degenerate cell, which the structure checks refuse)."""
    vectors = cell[periodic]
    if len(vectors) == 3:
        volume = abs(float(np.linalg.det(vectors)))
        return n_atoms * n_atoms / volume * 4.0 / 3.0 * np.pi * cutoff**3 if volume else 0.0
    images = 1.0
    for k, vector in enumerate(vectors):
        others = np.delete(vectors, k, axis=0)
        if len(others):
            spacing = np.linalg.norm(np.cross(vector, others[0])) / np.linalg.norm(others[0])
        else:
            spacing = np.linalg.norm(vector)
        if not spacing > 0:
            return 0.0
        images *= 2 * np.ceil(cutoff / spacing) + 1
    return float(n_atoms) * n_atoms * images
