"""runtime.neighbors against ASE's reference neighbor list."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from allegro_deploy.runtime.neighbors import NeighborList, neighbor_list


def edge_set(edges: NeighborList) -> set[tuple[int, int, tuple[int, ...]]]:
    return {
        (int(i), int(j), tuple(int(s) for s in shift))
        for i, j, shift in zip(edges.centers, edges.neighbors, edges.shifts, strict=True)
    }


def reference_edge_set(atoms: Atoms, cutoff: float) -> set[tuple[int, int, tuple[int, ...]]]:
    centers, neighbors, shifts = ase_neighbor_list("ijS", atoms, cutoff)
    return {
        (int(i), int(j), tuple(int(s) for s in shift))
        for i, j, shift in zip(centers, neighbors, shifts, strict=True)
    }


def ours(atoms: Atoms, cutoff: float) -> NeighborList:
    return neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)


def triclinic() -> Atoms:
    rng = np.random.default_rng(0)
    cell = np.array([[3.1, 0.0, 0.0], [1.3, 2.9, 0.0], [0.7, -0.8, 3.3]])
    return Atoms("Cu3Au", scaled_positions=rng.random((4, 3)), cell=cell, pbc=True)


def slab() -> Atoms:
    atoms = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    atoms.rattle(0.05, seed=1)
    return atoms


STRUCTURES = {
    # Primitive fcc cell (1 atom, 11.7 Å³): the cutoff spans several images of the atom itself.
    "fcc_primitive_cutoff_beyond_cell": (bulk("Cu", "fcc", a=3.6), 6.0),
    "triclinic": (triclinic(), 5.0),
    "slab_pbc_TTF": (slab(), 4.0),
    "molecule_no_cell": (molecule("CH3CH2OH"), 2.5),
    "single_atom_periodic": (Atoms("Cu", cell=np.eye(3) * 2.0, pbc=True), 4.5),
    "single_atom_isolated": (Atoms("Cu"), 4.0),
    "isolated_atoms": (Atoms("Cu2", positions=[[0, 0, 0], [10, 0, 0]]), 4.0),
}


@pytest.mark.parametrize("name", STRUCTURES)
def test_matches_ase(name: str) -> None:
    atoms, cutoff = STRUCTURES[name]
    edges = ours(atoms, cutoff)
    assert edge_set(edges) == reference_edge_set(atoms, cutoff)
    assert len(edge_set(edges)) == len(edges.centers)  # no duplicate edges


def test_cell_smaller_than_cutoff_has_self_images() -> None:
    atoms, cutoff = STRUCTURES["fcc_primitive_cutoff_beyond_cell"]
    edges = ours(atoms, cutoff)
    assert len(edges.centers) > 12
    assert (edges.centers == edges.neighbors).all()
    assert (edges.shifts != 0).any(axis=1).all()  # never the atom itself at zero shift


@pytest.mark.parametrize("name", ["single_atom_isolated", "isolated_atoms"])
def test_no_neighbors_gives_empty_arrays(name: str) -> None:
    atoms, cutoff = STRUCTURES[name]
    edges = ours(atoms, cutoff)
    assert edges.centers.shape == (0,) and edges.centers.dtype == np.int64
    assert edges.neighbors.shape == (0,) and edges.neighbors.dtype == np.int64
    assert edges.shifts.shape == (0, 3) and edges.shifts.dtype == np.int64


@pytest.mark.parametrize("name", ["triclinic", "slab_pbc_TTF", "fcc_primitive_cutoff_beyond_cell"])
def test_edge_vectors_and_order(name: str) -> None:
    atoms, cutoff = STRUCTURES[name]
    edges = ours(atoms, cutoff)
    vectors = (
        atoms.positions[edges.neighbors]
        - atoms.positions[edges.centers]
        + edges.shifts @ atoms.cell.array
    )
    reference_distances = ase_neighbor_list("d", atoms, cutoff)
    np.testing.assert_allclose(
        np.sort(np.linalg.norm(vectors, axis=1)), np.sort(reference_distances), atol=1e-10
    )
    assert (np.linalg.norm(vectors, axis=1) < cutoff).all()
    keys = np.stack([edges.centers, edges.neighbors], axis=1)
    assert (np.diff(keys[:, 0]) >= 0).all()
    same_center = np.diff(keys[:, 0]) == 0
    assert (np.diff(keys[:, 1])[same_center] >= 0).all()


def test_non_periodic_directions_have_zero_shift() -> None:
    atoms, cutoff = STRUCTURES["slab_pbc_TTF"]
    assert (ours(atoms, cutoff).shifts[:, 2] == 0).all()


def test_unwrapped_positions() -> None:
    atoms = triclinic()
    moved = atoms.copy()
    moved.positions += 2.5 * atoms.cell.array[0] - 1.5 * atoms.cell.array[2]
    assert edge_set(ours(moved, 5.0)) == reference_edge_set(moved, 5.0)
