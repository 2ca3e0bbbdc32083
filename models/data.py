"""Labelled structures for training: precomputed graphs, batches and splits (reading the
files: :mod:`.labels`).

Neighbor lists are the expensive part of building a graph, so every structure's graph is
built once when the dataset is created; a batch only concatenates precomputed graphs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import ase
import numpy as np
import torch
from ase.data import atomic_numbers as ATOMIC_NUMBERS

from .graph import AtomicGraph
from .labels import ASE_KEYS, DataError, LabelKeys, structure_labels


@dataclass
class LabelledStructure:
    """One structure's precomputed graph and labels.

    graph: single-structure AtomicGraph.
    energy: () float64 eV.
    forces: (n_atoms, 3) float64 eV/Å.
    stress: (3, 3) float64 eV/Å³, NaN when unlabelled.
    """

    graph: AtomicGraph
    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor


@dataclass
class LabelledBatch:
    """Several structures as one graph with their labels.

    graph: AtomicGraph of B structures and N atoms.
    energy: (B,) float64 eV.
    forces: (N, 3) float64 eV/Å.
    stress: (B, 3, 3) float64 eV/Å³, NaN where unlabelled.
    n_atoms: (B,) int64 atoms per structure.
    """

    graph: AtomicGraph
    energy: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor
    n_atoms: torch.Tensor

    def to(self, device: torch.device | str) -> LabelledBatch:
        return LabelledBatch(
            self.graph.to(device),
            self.energy.to(device),
            self.forces.to(device),
            self.stress.to(device),
            self.n_atoms.to(device),
        )


def collate(items: Sequence[LabelledStructure]) -> LabelledBatch:
    """Concatenate precomputed structures into one batch (atoms and edges renumbered)."""
    graphs = [item.graph for item in items]
    n_atoms = torch.tensor([graph.n_atoms for graph in graphs], dtype=torch.int64)
    offsets = torch.cumsum(n_atoms, 0) - n_atoms
    graph = AtomicGraph(
        positions=torch.cat([g.positions for g in graphs]),
        species=torch.cat([g.species for g in graphs]),
        edge_index=torch.cat(
            [g.edge_index + o for g, o in zip(graphs, offsets, strict=True)], dim=1
        ),
        edge_shifts=torch.cat([g.edge_shifts for g in graphs]),
        structure_index=torch.repeat_interleave(torch.arange(len(graphs)), n_atoms),
        cell=torch.cat([g.cell for g in graphs]),
        pbc=torch.cat([g.pbc for g in graphs]),
    )
    return LabelledBatch(
        graph=graph,
        energy=torch.stack([item.energy for item in items]),
        forces=torch.cat([item.forces for item in items]),
        stress=torch.stack([item.stress for item in items]),
        n_atoms=n_atoms,
    )


@dataclass(frozen=True)
class LabelledDataset:
    """Labelled structures with graphs for a model of ``species`` and cutoff ``r_max`` (Å).

    ``source`` names where the structures came from in messages.
    """

    structures: tuple[LabelledStructure, ...]
    species: tuple[str, ...]
    r_max: float
    source: str

    @classmethod
    def from_atoms(
        cls,
        structures: Sequence[ase.Atoms],
        species: Sequence[str],
        r_max: float,
        source: str,
        keys: LabelKeys = ASE_KEYS,
    ) -> LabelledDataset:
        """Build every structure's graph once; ``keys`` name the labels.

        Raises ``DataError`` for missing labels and the runtime's ``StructureError`` /
        ``UnknownSpeciesError`` (prefixed with ``source``) for structures the model cannot
        take, e.g. an element that is not in ``species``.
        """
        labels = [
            structure_labels(atoms, f"{source}, frame {frame}", keys=keys)
            for frame, atoms in enumerate(structures)
        ]
        try:
            graph = AtomicGraph.from_atoms(structures, [ATOMIC_NUMBERS[s] for s in species], r_max)
        except ValueError as error:
            raise type(error)(f"{source}: {error}") from error
        n_atoms = [len(atoms) for atoms in structures]
        n_edges = torch.bincount(
            graph.structure_index[graph.edge_index[0]], minlength=len(structures)
        ).tolist()
        atom_offsets = np.cumsum([0, *n_atoms[:-1]]).tolist()
        pieces = zip(
            graph.positions.split(n_atoms),
            graph.species.split(n_atoms),
            graph.edge_index.split(n_edges, dim=1),
            graph.edge_shifts.split(n_edges),
            atom_offsets,
            strict=True,
        )
        items = []
        for b, (positions, species_index, edge_index, edge_shifts, offset) in enumerate(pieces):
            stress = labels[b].stress
            items.append(
                LabelledStructure(
                    graph=AtomicGraph(
                        positions=positions,
                        species=species_index,
                        edge_index=edge_index - offset,
                        edge_shifts=edge_shifts,
                        structure_index=torch.zeros(n_atoms[b], dtype=torch.int64),
                        cell=graph.cell[b : b + 1],
                        pbc=graph.pbc[b : b + 1],
                    ),
                    energy=torch.tensor(labels[b].energy, dtype=torch.float64),
                    forces=torch.as_tensor(labels[b].forces, dtype=torch.float64),
                    stress=torch.full((3, 3), torch.nan, dtype=torch.float64)
                    if stress is None
                    else torch.as_tensor(stress, dtype=torch.float64),
                )
            )
        return cls(tuple(items), tuple(species), float(r_max), source)

    def __len__(self) -> int:
        return len(self.structures)

    @property
    def has_stress(self) -> bool:
        """Whether any structure carries a stress label."""
        return any(not item.stress.isnan().all() for item in self.structures)

    def subset(self, indices: Sequence[int], source: str) -> LabelledDataset:
        """The structures at ``indices``, in that order."""
        return LabelledDataset(
            tuple(self.structures[i] for i in indices), self.species, self.r_max, source
        )

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[LabelledBatch]:
        """Batches of up to ``batch_size`` structures; shuffled with ``generator`` if given."""
        order = (
            list(range(len(self)))
            if generator is None
            else torch.randperm(len(self), generator=generator).tolist()
        )
        for start in range(0, len(order), batch_size):
            yield collate([self.structures[i] for i in order[start : start + batch_size]])

    def n_batches(self, batch_size: int) -> int:
        return -(-len(self) // batch_size)


def split_indices(n_structures: int, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded random (train, validation) split of ``range(n_structures)``.

    The validation part has ``round(val_fraction * n_structures)`` structures, at least one,
    and at least one structure stays for training. Both parts are sorted.
    """
    if not 0 < val_fraction < 1:
        raise DataError(f"val_fraction must be between 0 and 1, got {val_fraction}")
    n_val = max(1, round(val_fraction * n_structures))
    if n_val >= n_structures:
        raise DataError(
            f"cannot split {n_structures} structure(s) into training and validation sets "
            f"with val_fraction={val_fraction}"
        )
    permutation = np.random.default_rng(seed).permutation(n_structures)
    return sorted(permutation[n_val:].tolist()), sorted(permutation[:n_val].tolist())
