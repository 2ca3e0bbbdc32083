"""runtime.validation: every check fires with a message naming the problem."""

import numpy as np
import pytest
from ase.build import bulk, molecule

from allegro_deploy.runtime.validation import (
    StructureError,
    UnknownSpeciesError,
    species_indices,
    validate_structure,
)


def copper():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    return atoms.positions.copy(), atoms.cell.array.copy(), atoms.pbc.copy()


def test_valid_structures_pass() -> None:
    validate_structure(*copper())
    water = molecule("H2O")
    validate_structure(water.positions, water.cell.array, water.pbc)
    slab_cell = np.diag([3.0, 3.0, 0.0])  # zero vector along the non-periodic direction
    validate_structure([[0.0, 0.0, 0.0]], slab_cell, [True, True, False])


def test_wrong_positions_shape() -> None:
    _, cell, pbc = copper()
    with pytest.raises(
        StructureError, match=r"positions must have shape \(n_atoms, 3\), got \(4, 2\)"
    ):
        validate_structure(np.zeros((4, 2)), cell, pbc)


def test_non_finite_position_names_atom() -> None:
    positions, cell, pbc = copper()
    positions[2, 1] = np.nan
    positions[3, 0] = np.inf
    with pytest.raises(StructureError, match="2 atom.*non-finite positions, first atom 2"):
        validate_structure(positions, cell, pbc)


def test_singular_periodic_cell_gives_volume() -> None:
    positions, cell, pbc = copper()
    cell[2] = cell[0] + cell[1]
    with pytest.raises(
        StructureError,
        match=r"singular along periodic direction\(s\) a, b, c: "
        r"spanned volume 0 Å³; det\(cell\) = 0",
    ):
        validate_structure(positions, cell, pbc)


def test_zero_cell_vector_along_periodic_direction() -> None:
    with pytest.raises(StructureError, match=r"direction\(s\) a, b: spanned area 0 Å²"):
        validate_structure([[0.0, 0.0, 0.0]], np.diag([3.0, 0.0, 0.0]), [True, True, False])


def test_close_atoms_named_with_distance() -> None:
    positions, cell, pbc = copper()
    positions[3] = positions[1] + [0.1, 0.0, 0.0]
    with pytest.raises(
        StructureError,
        match=r"atoms 1 and 3 are 0\.1 Å apart, closer than "
        r"min_distance = 0\.5 Å \(1 pair\(s\) too close\)",
    ):
        validate_structure(positions, cell, pbc)


def test_close_periodic_image() -> None:
    positions = [[0.0, 0.0, 0.0], [1.5, 1.5, 1.5]]
    cell = np.diag([3.0, 3.0, 0.3])
    with pytest.raises(
        StructureError,
        match=r"atom 0 and its periodic image at cell shift "
        r"\(0, 0, -1\) are 0\.3 Å apart",
    ):
        validate_structure(positions, cell, True)


def test_min_distance_is_configurable() -> None:
    positions, cell, pbc = copper()  # nearest neighbors at 2.55 Å
    validate_structure(positions, cell, pbc, min_distance=2.5)
    with pytest.raises(StructureError, match="2.546 Å apart"):
        validate_structure(positions, cell, pbc, min_distance=2.6)


def test_species_indices_follow_model_order() -> None:
    indices = species_indices([79, 29, 29, 79, 8], [29, 8, 79])
    assert indices.dtype == np.int64
    assert indices.tolist() == [2, 0, 0, 2, 1]


def test_unknown_species_named() -> None:
    with pytest.raises(UnknownSpeciesError, match="unknown species H, Fe; the model knows Cu, Au"):
        species_indices([29, 26, 1, 26], [29, 79])
