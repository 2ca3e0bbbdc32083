"""A batch of atomic structures as one graph of directed edges (center -> neighbor)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import ase
import numpy as np
import torch

from allegro_deploy.runtime.neighbors import neighbor_list
from allegro_deploy.runtime.validation import species_indices, validate_structure


def edge_vectors(
    positions: torch.Tensor, edge_index: torch.Tensor, edge_shifts: torch.Tensor
) -> torch.Tensor:
    """(n_edges, 3) Å vectors from center to neighbor: ``r_neighbor - r_center + shift``.

    positions: (n_atoms, 3) Å; edge_index: (2, n_edges) rows (center, neighbor);
    edge_shifts: (n_edges, 3) Å, the periodic image offset of each neighbor. Gathers are
    ``index_select`` (an ONNX ``Gather``; indexing exports as the slower ``GatherND``).
    """
    center, neighbor = edge_index[0], edge_index[1]
    return positions.index_select(0, neighbor) - positions.index_select(0, center) + edge_shifts


@dataclass
class AtomicGraph:
    """Several structures concatenated; each edge stays within its structure.

    positions: (n_atoms, 3) float64 Å.
    species: (n_atoms,) int64 index into the model's species.
    edge_index: (2, n_edges) int64, rows (center, neighbor).
    edge_shifts: (n_edges, 3) float64 Å, so that
        ``r_ij = positions[neighbor] - positions[center] + edge_shifts``.
    structure_index: (n_atoms,) int64 structure of each atom.
    cell: (n_structures, 3, 3) float64 Å, lattice vectors as rows (zeros where absent).
    pbc: (n_structures, 3) bool.
    """

    positions: torch.Tensor
    species: torch.Tensor
    edge_index: torch.Tensor
    edge_shifts: torch.Tensor
    structure_index: torch.Tensor
    cell: torch.Tensor
    pbc: torch.Tensor

    @property
    def n_atoms(self) -> int:
        return self.positions.shape[0]

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[1]

    @property
    def n_structures(self) -> int:
        return self.cell.shape[0]

    def edge_vectors(self) -> torch.Tensor:
        """(n_edges, 3) float64 Å vectors from center to neighbor."""
        return edge_vectors(self.positions, self.edge_index, self.edge_shifts)

    def volumes(self) -> torch.Tensor:
        """(n_structures,) Å³ cell volume, NaN unless periodic in all three directions."""
        volume = torch.linalg.det(self.cell).abs()
        return torch.where(self.pbc.all(dim=1), volume, torch.full_like(volume, torch.nan))

    def to(self, device: torch.device | str) -> AtomicGraph:
        return AtomicGraph(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @classmethod
    def from_atoms(
        cls,
        structures: Sequence[ase.Atoms],
        atomic_numbers: Sequence[int],
        r_max: float,
    ) -> AtomicGraph:
        """Build the graph of ``structures`` for a model of ``atomic_numbers`` and cutoff ``r_max``.

        Raises ``StructureError`` / ``UnknownSpeciesError`` naming the offending structure.
        """
        parts: dict[str, list[np.ndarray]] = {f.name: [] for f in fields(cls)}
        offset = 0
        for index, atoms in enumerate(structures):
            positions = np.asarray(atoms.positions, dtype=np.float64)
            cell = np.asarray(atoms.cell.array, dtype=np.float64)
            pbc = np.asarray(atoms.pbc, dtype=bool)
            try:
                validate_structure(positions, cell, pbc)
                species = species_indices(atoms.numbers, atomic_numbers)
            except ValueError as error:
                formula = atoms.get_chemical_formula()
                raise type(error)(f"structure {index} ({formula}): {error}") from None
            edges = neighbor_list(positions, cell, pbc, r_max)
            parts["positions"].append(positions)
            parts["species"].append(species)
            parts["edge_index"].append(np.stack([edges.centers, edges.neighbors]) + offset)
            parts["edge_shifts"].append(edges.shifts @ cell)
            parts["structure_index"].append(np.full(len(atoms), index))
            parts["cell"].append(cell[None])
            parts["pbc"].append(pbc[None])
            offset += len(atoms)
        dtypes = {"positions": torch.float64, "edge_shifts": torch.float64, "cell": torch.float64}
        return cls(
            **{
                name: torch.as_tensor(
                    np.concatenate(arrays, axis=-1 if name == "edge_index" else 0),
                    dtype=dtypes.get(name, torch.bool if name == "pbc" else torch.int64),
                )
                for name, arrays in parts.items()
            }
        )
