"""Batched energies, forces and stresses from an exported model (numpy + ONNX Runtime only).

:class:`Potential` runs a ``structures`` export (see
:mod:`allegro_deploy.exporters.onnx_export`): many structures are concatenated into one
graph and evaluated in one call, in chunks of whole structures under an edge budget, and
the outputs are split back per structure as :class:`Result` objects.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import ase
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from .backends import Session, open_session
from .metadata import MetadataError, ModelMetadata, read_metadata
from .neighbors import neighbor_list
from .validation import StructureError, element_symbol, species_indices, validate_structure

DEFAULT_EDGE_BUDGET = 100_000
"""Most edges per graph evaluation. ONNX Runtime's working memory grows with the edges:
about 27 kB per edge for the tutorial-size model in float32 (l_max 1, 64 scalar / 32
tensor features; docs/performance.md), so about 2.7 GB at this budget."""
DEFAULT_MIN_DISTANCE = 0.5
"""Å; atoms closer than this are refused (see ``validate_structure``)."""

_INPUTS = ("positions", "species", "edge_index", "edge_shifts", "structure_index", "n_structures")
_OUTPUTS = ("energy", "atomic_energies", "forces", "virial")


@dataclass(frozen=True, eq=False)
class Structure:
    """One atomic structure.

    positions: (N, 3) float64 Å.
    atomic_numbers: (N,) int64.
    cell: (3, 3) float64 Å, lattice vectors as rows (only rows along periodic directions
        matter; zeros for a molecule).
    pbc: (3,) bool, periodicity along each lattice vector.
    """

    positions: np.ndarray
    atomic_numbers: np.ndarray
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))

    def __post_init__(self) -> None:
        positions = np.array(self.positions, dtype=np.float64)
        numbers = np.array(self.atomic_numbers, dtype=np.int64)
        cell = np.array(self.cell, dtype=np.float64)
        pbc = np.array(np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)))
        if positions.ndim != 2 or positions.shape[1] != 3:
            raise StructureError(f"positions must have shape (N, 3), got {positions.shape}")
        if numbers.shape != (len(positions),):
            raise StructureError(
                f"atomic_numbers must have shape ({len(positions)},), got {numbers.shape}"
            )
        if cell.shape != (3, 3):
            raise StructureError(f"cell must have shape (3, 3), got {cell.shape}")
        for name, value in ("positions", positions), ("atomic_numbers", numbers), ("cell", cell):
            value.flags.writeable = False
            object.__setattr__(self, name, value)
        pbc.flags.writeable = False
        object.__setattr__(self, "pbc", pbc)

    @classmethod
    def from_atoms(cls, atoms: ase.Atoms) -> Structure:
        """The positions, atomic numbers, cell and pbc of an ASE ``Atoms`` (copied)."""
        return cls(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)

    @property
    def n_atoms(self) -> int:
        return len(self.positions)

    @property
    def periodic(self) -> bool:
        """True when periodic along all three lattice vectors (stress is defined)."""
        return bool(self.pbc.all())

    def formula(self) -> str:
        """Chemical formula in order of first appearance, e.g. ``Cu4O``."""
        numbers, first, counts = np.unique(
            self.atomic_numbers, return_index=True, return_counts=True
        )
        return "".join(
            element_symbol(int(numbers[k])) + (str(counts[k]) if counts[k] > 1 else "")
            for k in np.argsort(first)
        )


@dataclass(frozen=True, eq=False)
class Result:
    """Model outputs for one structure (float64).

    energy: eV.
    atomic_energies: (N,) eV.
    forces: (N, 3) eV/Å, -dE/dr.
    virial: (3, 3) eV, -dE/dε for a symmetric strain ε (= -V·stress).
    stress: (3, 3) eV/Å³, -virial / V (ASE sign: tensile positive); None unless the
        structure is periodic along all three lattice vectors.
    """

    energy: float
    atomic_energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray
    stress: np.ndarray | None


@dataclass(frozen=True)
class _Graph:
    """One structure's part of a model input: species indices and edges within it.

    species: (N,) int64. edge_index: (2, E) int64 (center, neighbor), structure-local.
    edge_shifts: (E, 3) float64 Å, ``shift @ cell`` of each edge.
    """

    structure: Structure
    species: np.ndarray
    edge_index: np.ndarray
    edge_shifts: np.ndarray

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[1]


StructureLike = ase.Atoms | Structure


def _check_target(metadata: ModelMetadata, path: str | Path) -> None:
    """Refuse anything but a ``structures`` export, pointing ``pairs`` files to LAMMPS."""
    if metadata.target != "structures":
        raise MetadataError(
            f"{path} is a {metadata.target!r} export, made for LAMMPS pair_style mliap "
            "unified through the ML-IAP adapter allegro_deploy.runtime.mliap.AllegroMLIAP; "
            "Potential and the ASE calculator need a 'structures' export "
            "(allegro-deploy export --target structures)"
        )


class Potential:
    """An exported ``structures`` model loaded for evaluation; see :meth:`load`."""

    def __init__(
        self,
        session: Session,
        metadata: ModelMetadata,
        *,
        edge_budget: int = DEFAULT_EDGE_BUDGET,
        min_distance: float = DEFAULT_MIN_DISTANCE,
    ) -> None:
        _check_target(metadata, session.path)
        missing = [n for n in _INPUTS if n not in session.input_names]
        missing += [n for n in _OUTPUTS if n not in session.output_names]
        if missing:
            raise MetadataError(f"{session.path} lacks the tensors {missing} of its target")
        if edge_budget < 1:
            raise ValueError(f"edge_budget must be >= 1, got {edge_budget}")
        self.session = session
        self.metadata = metadata
        self.edge_budget = edge_budget
        self.min_distance = min_distance
        self._input_dtypes = {s.name: np.dtype(s.dtype) for s in metadata.inputs}
        cutoffs = np.array(metadata.pair_cutoffs, dtype=np.float64)
        # Edges beyond their pair's cutoff contribute exactly zero: drop them.
        self._pair_cutoffs = None if (cutoffs >= metadata.r_max).all() else cutoffs

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str = "auto",
        *,
        threads: int | None = None,
        device_id: int = 0,
        session_options: ort.SessionOptions | None = None,
        edge_budget: int = DEFAULT_EDGE_BUDGET,
        min_distance: float = DEFAULT_MIN_DISTANCE,
    ) -> Potential:
        """Load a ``structures`` export.

        backend, threads, device_id, session_options: see
            :func:`~allegro_deploy.runtime.backends.open_session`.
        edge_budget: most edges per graph evaluation; more are split into chunks of whole
            structures (a structure with more edges runs alone). Results do not depend on it.
        min_distance: Å, atoms closer than this are refused.
        Raises :class:`MetadataError` for a file that is not a ``structures`` export this
        runtime reads (a ``pairs`` export is for the LAMMPS ML-IAP adapter).
        """
        metadata = read_metadata(path)
        _check_target(metadata, path)
        session = open_session(
            path, backend, threads=threads, device_id=device_id, session_options=session_options
        )
        return cls(session, metadata, edge_budget=edge_budget, min_distance=min_distance)

    @property
    def species(self) -> tuple[str, ...]:
        return self.metadata.species

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        return self.metadata.atomic_numbers

    @property
    def r_max(self) -> float:
        """Å."""
        return self.metadata.r_max

    @property
    def dtype(self) -> str:
        return self.metadata.dtype

    @property
    def backend(self) -> str:
        return self.session.backend

    def __repr__(self) -> str:
        return (
            f"Potential({str(self.session.path)!r}, species={list(self.species)}, "
            f"r_max={self.r_max} Å, dtype={self.dtype}, backend={self.backend})"
        )

    @overload
    def evaluate(self, structures: StructureLike) -> Result: ...

    @overload
    def evaluate(self, structures: Sequence[StructureLike]) -> list[Result]: ...

    def evaluate(
        self, structures: StructureLike | Sequence[StructureLike]
    ) -> Result | list[Result]:
        """Energies, forces, virials and stresses of one structure or many.

        structures: one ASE ``Atoms`` or :class:`Structure` (returns one :class:`Result`),
            or a sequence of them (returns a list, in order), evaluated together in as few
            graph evaluations as the edge budget allows.
        Raises ``StructureError`` (NaN positions, atoms closer than ``min_distance``, a
        singular periodic cell) or ``UnknownSpeciesError``, naming the structure.
        """
        if isinstance(structures, StructureLike):
            return self._run(self._graph(structures, None))[0]
        graphs = [self._graph(item, k) for k, item in enumerate(structures)]
        return [result for chunk in self._chunks(graphs) for result in self._run(*chunk)]

    def _graph(self, item: StructureLike, index: int | None) -> _Graph:
        """Check ``item`` and build its neighbor list; errors name structure ``index``."""
        structure = Structure.from_atoms(item) if isinstance(item, ase.Atoms) else item
        try:
            edges = validate_structure(
                structure.positions,
                structure.cell,
                structure.pbc,
                min_distance=self.min_distance,
                cutoff=self.r_max,
            )
            species = species_indices(structure.atomic_numbers, self.atomic_numbers)
        except ValueError as error:
            if index is None:
                raise
            raise type(error)(f"structure {index} ({structure.formula()}): {error}") from None
        if self.min_distance > self.r_max:
            edges = neighbor_list(structure.positions, structure.cell, structure.pbc, self.r_max)
        edge_index = np.stack([edges.centers, edges.neighbors])
        # Shift vectors in float64, from integer shifts and the float64 cell.
        edge_shifts = edges.shifts.astype(np.float64) @ structure.cell
        if self._pair_cutoffs is not None:
            vectors = (
                structure.positions[edges.neighbors]
                - structure.positions[edges.centers]
                + edge_shifts
            )
            cutoff = self._pair_cutoffs[species[edges.centers], species[edges.neighbors]]
            keep = np.linalg.norm(vectors, axis=1) < cutoff
            edge_index, edge_shifts = edge_index[:, keep], edge_shifts[keep]
        return _Graph(structure, species, edge_index, edge_shifts)

    def _chunks(self, graphs: Sequence[_Graph]) -> Iterator[list[_Graph]]:
        """Consecutive runs of whole structures with at most ``edge_budget`` edges in all
        (a structure over the budget on its own)."""
        chunk: list[_Graph] = []
        edges = 0
        for graph in graphs:
            if chunk and edges + graph.n_edges > self.edge_budget:
                yield chunk
                chunk, edges = [], 0
            chunk.append(graph)
            edges += graph.n_edges
        if chunk:
            yield chunk

    def _run(self, *graphs: _Graph) -> list[Result]:
        """One graph evaluation of ``graphs`` together, split back per structure."""
        n_atoms = [g.structure.n_atoms for g in graphs]
        offsets = np.cumsum([0, *n_atoms])
        inputs: dict[str, npt.ArrayLike] = {
            "positions": np.concatenate([g.structure.positions for g in graphs]),
            "species": np.concatenate([g.species for g in graphs]),
            "edge_index": np.concatenate(
                [g.edge_index + offset for g, offset in zip(graphs, offsets, strict=False)], 1
            ),
            "edge_shifts": np.concatenate([g.edge_shifts for g in graphs]),
            "structure_index": np.repeat(np.arange(len(graphs)), n_atoms),
            "n_structures": np.array(len(graphs)),
        }
        outputs = self.session.run(
            {
                name: np.asarray(value, dtype=self._input_dtypes[name])
                for name, value in inputs.items()
            },
            _OUTPUTS,
        )
        energy, atomic, forces, virial = (np.asarray(outputs[n], np.float64) for n in _OUTPUTS)
        results = []
        for k, graph in enumerate(graphs):
            atoms = slice(offsets[k], offsets[k + 1])
            structure = graph.structure
            stress = -virial[k] / abs(np.linalg.det(structure.cell)) if structure.periodic else None
            results.append(
                Result(
                    energy=float(energy[k]),
                    atomic_energies=atomic[atoms],
                    forces=forces[atoms],
                    virial=virial[k],
                    stress=stress,
                )
            )
        return results
