"""Batched energies, forces and stresses from an exported model (numpy + ONNX Runtime only).

:class:`Potential` runs a ``structures`` export (see
:mod:`allegro_deploy.exporters.onnx_export`): many structures are concatenated into one
graph and evaluated in one call, in batches under an edge budget, and the outputs are
split back per structure as :class:`Result` objects. A structure with more edges than the
budget is evaluated in pieces of consecutive centers (Allegro is strictly local: an
atom's energy depends only on the edges centered on it), each with only its centers'
edges and the atoms those reach; forces and virials add up over the pieces.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import overload

import ase
import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from .backends import Profile, Session, open_session
from .metadata import (
    ATOMIC_ENERGIES,
    EDGE_INDEX,
    EDGE_SHIFTS,
    EDGE_VECTORS,
    FORCES,
    N_STRUCTURES,
    POSITIONS,
    SPECIES,
    STRUCTURE_INDEX,
    VIRIAL,
    MetadataError,
    ModelMetadata,
    read_metadata,
    tensor_specs,
)
from .neighbors import neighbor_list
from .validation import (
    CHEMICAL_SYMBOLS,
    StructureError,
    element_symbol,
    species_indices,
    validate_structure,
)

DEFAULT_EDGE_BUDGET = 100_000
"""Most edges per graph evaluation (a single center with more edges is evaluated alone).
ONNX Runtime's working memory grows with the edges of one evaluation: 28-30 kB per edge
for the tutorial-size model in float32 (l_max 1, 64 scalar / 32 tensor features; peak
RSS with ONNX Runtime's memory arena; docs/design.md, *Evaluation in pieces*), about
2.8 GiB at this budget for any structure size: 100k-atom fcc Cu (4.3M edges, 44
pieces) peaked at 2.8 GiB above the loaded model, 3.1 GiB in all."""
DEFAULT_MIN_DISTANCE = 0.5
"""Å; atoms closer than this are refused (see ``validate_structure``)."""

_OUTPUTS = (ATOMIC_ENERGIES, FORCES, VIRIAL)
"""The outputs read from a file with float64 tensors: a structure's energy is the sum of
the atomic energies of its own atoms (an evaluation's ``energy`` output also counts the
energy shifts of ghost atoms). A float32-only file's outputs are all read."""


def _atomic_numbers(values: npt.ArrayLike) -> np.ndarray:
    """``values`` as int64 atomic numbers; :class:`StructureError` for numbers that are not
    whole (29.5 is not copper) or not elements."""
    array = np.asarray(values)
    if array.dtype.kind not in "iub":
        if array.dtype.kind != "f" or not np.array_equal(array, np.round(array)):
            raise StructureError(f"atomic numbers must be whole numbers, got {array.tolist()}")
    if array.size and not (array.min() >= 1 and array.max() < len(CHEMICAL_SYMBOLS)):
        bad = array[(array < 1) | (array >= len(CHEMICAL_SYMBOLS))][0]
        raise StructureError(
            f"atomic number {bad} is not an element (1 to {len(CHEMICAL_SYMBOLS) - 1})"
        )
    return array.astype(np.int64)


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
        numbers = _atomic_numbers(self.atomic_numbers)
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
    """One structure checked for a model: species indices and edges within it.

    species: (N,) int64. edge_index: (2, E) int64 (center, neighbor), structure-local,
    grouped by center in ascending order (as :func:`neighbor_list` sorts them).
    edge_shifts: (E, 3) float64 Å, ``shift @ cell`` of each edge.
    """

    structure: Structure
    species: np.ndarray
    edge_index: np.ndarray
    edge_shifts: np.ndarray

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[1]


@dataclass(frozen=True)
class _Piece:
    """The centers ``first:stop`` of structure ``owner`` (its index in the call) with the
    edges centered on them: one structure of a graph evaluation.

    Its atoms are the centers, then the ghosts: (G,) int64 sorted indices of the atoms
    outside ``first:stop`` that the edges reach. Allegro is strictly local (an atom's
    energy depends only on the edges centered on it), so the centers' atomic energies are
    exact. Ghosts only serve as neighbors: with no edge centered on them, their atomic
    energy in the evaluation is just their species' energy shift and is dropped (the
    center that owns them elsewhere supplies it); the forces on them from the piece's
    edges are kept.
    edge_index: (2, E) int64 into the piece's atoms. edge_shifts: (E, 3) float64 Å.
    """

    graph: _Graph
    owner: int
    first: int
    stop: int
    ghosts: np.ndarray
    edge_index: np.ndarray
    edge_shifts: np.ndarray

    @property
    def n_atoms(self) -> int:
        return self.stop - self.first + len(self.ghosts)

    @property
    def n_edges(self) -> int:
        return self.edge_index.shape[1]

    def gather(self, values: np.ndarray) -> np.ndarray:
        """Per-atom ``values`` (N, ...) of the structure for the piece's atoms."""
        own = values[self.first : self.stop]
        return np.concatenate([own, values[self.ghosts]]) if len(self.ghosts) else own


@dataclass(frozen=True)
class _Totals:
    """One structure's outputs summed over its pieces (float64).

    atomic_energies: (N,) eV. forces: (N, 3) eV/Å. virial: (3, 3) eV.
    """

    atomic_energies: np.ndarray
    forces: np.ndarray
    virial: np.ndarray

    def result(self, structure: Structure) -> Result:
        stress = None
        if structure.periodic:
            stress = -self.virial / abs(np.linalg.det(structure.cell))
        return Result(
            energy=float(self.atomic_energies.sum()),
            atomic_energies=self.atomic_energies,
            forces=self.forces,
            virial=self.virial,
            stress=stress,
        )


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
        inputs, outputs = tensor_specs(metadata.target, metadata.float64)
        self._outputs = _OUTPUTS if metadata.float64 else tuple(o.name for o in outputs)
        missing = [s.name for s in inputs if s.name not in session.input_names]
        missing += [n for n in self._outputs if n not in session.output_names]
        if missing:
            raise MetadataError(f"{session.path} lacks the tensors {missing} of its target")
        dtypes = {spec.name: spec.dtype for spec in metadata.inputs}
        wrong = {s.name: dtypes.get(s.name) for s in inputs if dtypes.get(s.name) != s.dtype}
        if wrong:
            raise MetadataError(
                f"{session.path} has inputs of dtypes {wrong}; this runtime feeds "
                f"{ {s.name: s.dtype for s in inputs if s.name in wrong} }"
            )
        self._energy_shifts = np.array(metadata.energy_shifts, dtype=np.float64)
        if isinstance(edge_budget, bool) or not isinstance(edge_budget, int) or edge_budget < 1:
            raise ValueError(f"edge_budget must be an integer >= 1, got {edge_budget!r}")
        if not (isinstance(min_distance, int | float) and 0 < min_distance < math.inf):
            raise ValueError(
                f"min_distance must be a positive number of Å (atoms closer than it are "
                f"refused; at 0 coincident atoms would give NaN forces), got {min_distance!r}"
            )
        self.session = session
        self.metadata = metadata
        profile = session.profile
        self.edge_budget = edge_budget if profile is None else min(edge_budget, profile.max_edges)
        self._max_atoms = None if profile is None else profile.max_atoms
        self.min_distance = min_distance
        cutoffs = np.array(metadata.pair_cutoffs, dtype=np.float64)
        # Edges beyond their pair's cutoff contribute exactly zero: drop them.
        self._pair_cutoffs = None if (cutoffs >= metadata.cutoff).all() else cutoffs

    @classmethod
    def load(
        cls,
        path: str | Path,
        backend: str = "auto",
        *,
        threads: int | None = None,
        device_id: int = 0,
        session_options: ort.SessionOptions | None = None,
        cache_dir: str | Path | None = None,
        profile: Profile | None = None,
        edge_budget: int = DEFAULT_EDGE_BUDGET,
        min_distance: float = DEFAULT_MIN_DISTANCE,
    ) -> Potential:
        """Load a ``structures`` export.

        backend, threads, device_id, session_options, cache_dir, profile: see
            :func:`~allegro_deploy.runtime.backends.open_session`.
        edge_budget: most edges per graph evaluation (see :data:`DEFAULT_EDGE_BUDGET`):
            structures are batched up to it, and a structure with more edges is evaluated
            in pieces of consecutive centers. Results do not depend on it (to round-off).
            A TensorRT profile lowers it to the profile's edges and caps the atoms of an
            evaluation at its ``max_atoms``.
        min_distance: Å, atoms closer than this are refused.
        Raises :class:`MetadataError` for a file that is not a ``structures`` export this
        runtime reads (a ``pairs`` export is for the LAMMPS ML-IAP adapter).
        """
        metadata = read_metadata(path)
        _check_target(metadata, path)
        session = open_session(
            path,
            backend,
            threads=threads,
            device_id=device_id,
            session_options=session_options,
            cache_dir=cache_dir,
            profile=profile,
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
            return self._evaluate([self._graph(structures, None)])[0]
        return self._evaluate([self._graph(item, k) for k, item in enumerate(structures)])

    def _graph(self, item: StructureLike, index: int | None) -> _Graph:
        """Check ``item`` and build its neighbor list; errors name structure ``index``."""
        structure = Structure.from_atoms(item) if isinstance(item, ase.Atoms) else item
        try:
            edges = validate_structure(
                structure.positions,
                structure.cell,
                structure.pbc,
                min_distance=self.min_distance,
                cutoff=self.metadata.cutoff,
            )
            species = species_indices(structure.atomic_numbers, self.atomic_numbers)
        except ValueError as error:
            if index is None:
                raise
            raise type(error)(f"structure {index} ({structure.formula()}): {error}") from None
        if self.min_distance > self.metadata.cutoff:
            edges = neighbor_list(
                structure.positions, structure.cell, structure.pbc, self.metadata.cutoff
            )
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

    def _evaluate(self, graphs: Sequence[_Graph]) -> list[Result]:
        """Evaluate ``graphs`` in batches of pieces under the edge budget."""
        totals = [
            _Totals(
                np.zeros(g.structure.n_atoms), np.zeros((g.structure.n_atoms, 3)), np.zeros((3, 3))
            )
            for g in graphs
        ]
        pieces = (
            piece for k, graph in enumerate(graphs) for piece in self._fitting_pieces(graph, k)
        )
        for batch in self._batches(pieces):
            self._run(batch, totals)
        return [t.result(g.structure) for t, g in zip(totals, graphs, strict=True)]

    def _fitting_pieces(self, graph: _Graph, owner: int) -> Iterable[_Piece]:
        """:meth:`_pieces` under the edge budget; under a TensorRT profile, under halved
        budgets until every piece's atoms (its centers and the atoms their edges reach)
        fit the profile's ``max_atoms``."""
        budget = self.edge_budget
        if self._max_atoms is None:
            return self._pieces(graph, owner, budget)
        while True:
            pieces = list(self._pieces(graph, owner, budget))
            largest = max(pieces, key=lambda piece: piece.n_atoms)
            if largest.n_atoms <= self._max_atoms:
                return pieces
            if largest.stop - largest.first == 1:  # one center cannot be split further
                raise StructureError(
                    f"structure {owner} ({graph.structure.formula()}): atom {largest.first} "
                    f"and the {largest.n_atoms - 1} atoms its edges reach are more than the "
                    f"TensorRT profile's max_atoms {self._max_atoms}; load the model with a "
                    "larger Profile(max_atoms=...)"
                )
            budget //= 2

    def _pieces(self, graph: _Graph, owner: int, budget: int) -> Iterator[_Piece]:
        """``graph`` whole when its edges fit ``budget`` (> 0), else in pieces of
        consecutive centers of at most ``budget`` edges each (or one center)."""
        n_atoms = graph.structure.n_atoms
        if 0 < budget and graph.n_edges <= budget:
            no_ghosts = np.zeros(0, dtype=np.int64)
            yield _Piece(graph, owner, 0, n_atoms, no_ghosts, graph.edge_index, graph.edge_shifts)
            return
        centers, neighbors = graph.edge_index
        # first_edge[i]: the first edge centered on atom i or later (edges grouped by center)
        first_edge = np.searchsorted(centers, np.arange(n_atoms + 1))
        first = 0
        while first < n_atoms:
            limit = first_edge[first] + budget
            stop = int(np.searchsorted(first_edge, limit, side="right")) - 1
            stop = min(max(stop, first + 1), n_atoms)
            edges = slice(first_edge[first], first_edge[stop])
            reached = neighbors[edges]
            own = (reached >= first) & (reached < stop)
            ghosts = np.unique(reached[~own])
            local_neighbors = np.where(
                own, reached - first, stop - first + np.searchsorted(ghosts, reached)
            )
            edge_index = np.stack([centers[edges] - first, local_neighbors])
            yield _Piece(graph, owner, first, stop, ghosts, edge_index, graph.edge_shifts[edges])
            first = stop

    def _batches(self, pieces: Iterable[_Piece]) -> Iterator[list[_Piece]]:
        """Consecutive runs of pieces with at most ``edge_budget`` edges in all (a piece
        over the budget on its own) and, under a TensorRT profile, at most its atoms."""
        max_atoms = self._max_atoms or np.inf
        batch: list[_Piece] = []
        edges = atoms = 0
        for piece in pieces:
            if batch and (
                edges + piece.n_edges > self.edge_budget or atoms + piece.n_atoms > max_atoms
            ):
                yield batch
                batch, edges, atoms = [], 0, 0
            batch.append(piece)
            edges += piece.n_edges
            atoms += piece.n_atoms
        if batch:
            yield batch

    def _run(self, pieces: Sequence[_Piece], totals: Sequence[_Totals]) -> None:
        """One graph evaluation of ``pieces`` together (one model structure each), added
        to the totals of their structures."""
        n_atoms = [p.n_atoms for p in pieces]
        offsets = np.cumsum([0, *n_atoms])
        inputs = {
            POSITIONS: np.concatenate([p.gather(p.graph.structure.positions) for p in pieces]),
            SPECIES: np.concatenate([p.gather(p.graph.species) for p in pieces]),
            EDGE_INDEX: np.concatenate(
                [p.edge_index + offset for p, offset in zip(pieces, offsets, strict=False)], 1
            ),
            EDGE_SHIFTS: np.concatenate([p.edge_shifts for p in pieces]),
            STRUCTURE_INDEX: np.repeat(np.arange(len(pieces)), n_atoms),
            N_STRUCTURES: np.array(len(pieces)),
        }
        if self.metadata.float64:
            outputs = self.session.run(inputs, _OUTPUTS)
            atomic, forces, virial = (np.asarray(outputs[n], np.float64) for n in _OUTPUTS)
        else:
            edge_counts = np.array([p.n_edges for p in pieces])
            atomic, forces, virial = self._run_float32(inputs, edge_counts)
        for k, piece in enumerate(pieces):
            total = totals[piece.owner]
            own = slice(piece.first, piece.stop)
            start, middle, end = offsets[k], offsets[k] + piece.stop - piece.first, offsets[k + 1]
            total.atomic_energies[own] = atomic[start:middle]
            total.forces[own] += forces[start:middle]
            total.forces[piece.ghosts] += forces[middle:end]  # ghosts are distinct
            total.virial[...] += virial[k]

    def _run_float32(
        self, inputs: dict[str, np.ndarray], edge_counts: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A float32-only file's evaluation of the ``structures`` inputs of a float64 file,
        with everything that loses precision in float32 done here in float64.

        edge_counts: (S,) edges of each structure, in order. Returns atomic energies (N,)
        eV, forces (N, 3) eV/Å and virials (S, 3, 3) eV, float64.
        """
        positions, (centers, neighbors) = inputs[POSITIONS], inputs[EDGE_INDEX]
        vectors = positions[neighbors] - positions[centers] + inputs[EDGE_SHIFTS]
        species = inputs[SPECIES]
        outputs = self.session.run(
            {
                EDGE_VECTORS: vectors.astype(np.float32),
                SPECIES: species,
                EDGE_INDEX: inputs[EDGE_INDEX],
            },
            self._outputs,
        )
        unshifted, pair_forces = (np.asarray(outputs[n], np.float64) for n in self._outputs)
        atomic = unshifted + self._energy_shifts[species]
        forces = pair_forces_to_atoms(pair_forces, inputs[EDGE_INDEX], len(species))
        return atomic, forces, pair_virials(pair_forces, vectors, edge_counts)


def pair_forces_to_atoms(
    pair_forces: np.ndarray, edge_index: np.ndarray, n_atoms: int
) -> np.ndarray:
    """Forces (n_atoms, 3) eV/Å from ∂E/∂r_ij (n_edges, 3): ``F_i = Σ_(i→j) g - Σ_(k→i) g``."""
    centers, neighbors = edge_index
    return np.stack(
        [
            np.bincount(centers, g, n_atoms) - np.bincount(neighbors, g, n_atoms)
            for g in pair_forces.T
        ],
        axis=1,
    )


def pair_virials(
    pair_forces: np.ndarray, edge_vectors: np.ndarray, edge_counts: np.ndarray
) -> np.ndarray:
    """Virials (S, 3, 3) eV, ``-sym(Σ r_ij ⊗ ∂E/∂r_ij)`` over each structure's consecutive
    ``edge_counts`` edges (edge_vectors (n_edges, 3) Å)."""
    bounds = np.cumsum([0, *edge_counts])
    virials = np.stack(
        [
            -edge_vectors[start:stop].T @ pair_forces[start:stop]
            for start, stop in zip(bounds[:-1], bounds[1:], strict=True)
        ]
    )
    return 0.5 * (virials + virials.transpose(0, 2, 1))
