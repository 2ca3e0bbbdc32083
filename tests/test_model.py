"""Physics of the Allegro model: symmetry, derivatives, smoothness, extensivity, batching."""

from __future__ import annotations

import ase
import ase.build
import numpy as np
import pytest
import torch

from allegro_deploy.models import AllegroModel, AtomicGraph, ModelConfig
from allegro_deploy.models.config import ConfigError
from allegro_deploy.models.radial import integer_power, polynomial_cutoff

R_MAX = 4.0


def make_model(dtype: str = "float64", **overrides) -> AllegroModel:
    torch.manual_seed(0)
    options = dict(
        species=("Cu", "Au"),
        r_max=R_MAX,
        l_max=2,
        parity=True,
        num_layers=2,
        num_scalar_features=16,
        num_tensor_features=4,
        scalar_embed_mlp_hidden_layers_width=16,
        allegro_mlp_hidden_layers_width=16,
        readout_mlp_hidden_layers_width=8,
        avg_num_neighbors=12.0,
        per_type_energy_scales=0.7,
        per_type_energy_shifts={"Cu": -3.5, "Au": -2.9},
        model_dtype=dtype,
    )
    options.update(overrides)
    return AllegroModel(ModelConfig(**options))


def rattled_alloy(seed: int = 0, repeat=(2, 2, 1)) -> ase.Atoms:
    rng = np.random.default_rng(seed)
    atoms = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True).repeat(repeat)
    atoms.numbers = rng.choice([29, 79], len(atoms))
    atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
    atoms.cell[1, 0] += 0.4  # triclinic
    return atoms


def molecule(seed: int = 1, n_atoms: int = 7) -> ase.Atoms:
    rng = np.random.default_rng(seed)
    positions = rng.uniform(0.0, 4.0, (n_atoms, 3))
    return ase.Atoms(rng.choice([29, 79], n_atoms), positions=positions)


def evaluate(model: AllegroModel, structures: list[ase.Atoms]) -> dict[str, np.ndarray]:
    graph = AtomicGraph.from_atoms(structures, model.config.atomic_numbers, model.config.r_max)
    return {k: v.detach().numpy() for k, v in model(graph).items()}


def energy_of(model: AllegroModel, atoms: ase.Atoms) -> float:
    return float(evaluate(model, [atoms])["energy"][0])


def assert_rel(actual, expected, tol):
    actual, expected = np.asarray(actual), np.asarray(expected)
    scale = max(np.abs(expected).max(), 1e-12)
    assert np.abs(actual - expected).max() / scale <= tol


def random_orthogonal(rng: np.random.Generator, reflect: bool) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) < 0) != reflect:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("make", [rattled_alloy, molecule])
def test_energy_invariant_forces_equivariant_under_rotation_and_reflection(make, reflect):
    model = make_model()
    atoms = make()
    reference = evaluate(model, [atoms])
    q = random_orthogonal(np.random.default_rng(3), reflect)
    moved = atoms.copy()
    moved.positions = atoms.positions @ q.T
    moved.cell = atoms.cell.array @ q.T
    out = evaluate(model, [moved])
    assert_rel(out["energy"], reference["energy"], 1e-10)
    assert_rel(out["forces"], reference["forces"] @ q.T, 1e-10)
    if atoms.pbc.all():
        assert_rel(out["stress"][0], q @ reference["stress"][0] @ q.T, 1e-10)


def test_energy_invariant_under_translation_and_permutation():
    model = make_model()
    atoms = rattled_alloy()
    reference = evaluate(model, [atoms])
    shifted = atoms.copy()
    shifted.positions += np.array([0.3, -1.7, 2.2])
    assert_rel(evaluate(model, [shifted])["energy"], reference["energy"], 1e-10)

    order = np.random.default_rng(4).permutation(len(atoms))
    permuted = atoms[order]
    out = evaluate(model, [permuted])
    assert_rel(out["energy"], reference["energy"], 1e-10)
    assert_rel(out["forces"], reference["forces"][order], 1e-10)
    assert_rel(out["atomic_energies"], reference["atomic_energies"][order], 1e-10)


@pytest.mark.parametrize("make", [rattled_alloy, molecule])
def test_forces_are_minus_energy_gradient(make):
    model = make_model()
    atoms = make()
    forces = evaluate(model, [atoms])["forces"]
    h = 1e-5
    for atom, axis in [(0, 0), (1, 2), (len(atoms) - 1, 1)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        numeric = -(energy_of(model, plus) - energy_of(model, minus)) / (2 * h)
        assert abs(numeric - forces[atom, axis]) <= 1e-7 * max(1.0, abs(forces[atom, axis]))


def test_stress_is_strain_derivative():
    model = make_model()
    atoms = rattled_alloy()
    stress = evaluate(model, [atoms])["stress"][0]
    h = 1e-6
    volume = atoms.get_volume()
    for a, b in [(0, 0), (1, 2), (0, 1), (2, 2)]:
        strain = np.zeros((3, 3))
        strain[a, b] = strain[b, a] = h / 2 if a != b else h
        energies = []
        for sign in (1, -1):
            deformed = atoms.copy()
            deformed.set_cell(atoms.cell.array @ (np.eye(3) + sign * strain), scale_atoms=True)
            energies.append(energy_of(model, deformed))
        numeric = (energies[0] - energies[1]) / (2 * h) / volume
        assert abs(numeric - stress[a, b]) <= 1e-6 * max(1.0, np.abs(stress).max())


def test_energy_and_forces_continuous_as_neighbor_crosses_r_max():
    model = make_model()
    far = ase.Atoms("CuAu", positions=[[0, 0, 0], [0, 0, R_MAX + 1.0]])
    e_far = energy_of(model, far)
    for delta in (1e-2, 1e-3, 1e-4):
        inside = ase.Atoms("CuAu", positions=[[0, 0, 0], [0, 0, R_MAX - delta]])
        outside = ase.Atoms("CuAu", positions=[[0, 0, 0], [0, 0, R_MAX + delta]])
        out = evaluate(model, [inside])
        assert evaluate(model, [outside])["energy"][0] == e_far
        # the p=6 envelope vanishes as (1 - r/r_max)^3 and its derivative as ^2
        assert abs(out["energy"][0] - e_far) <= 1e2 * (delta / R_MAX) ** 3
        assert np.abs(out["forces"]).max() <= 1e2 * (delta / R_MAX) ** 2


def test_supercell_is_extensive_and_small_cell_matches_its_supercell():
    model = make_model()
    atoms = rattled_alloy(repeat=(1, 1, 1))  # 4 atoms, cell smaller than r_max
    assert min(atoms.cell.lengths()) < R_MAX
    unit = evaluate(model, [atoms])
    supercell = evaluate(model, [atoms.repeat((2, 2, 2))])
    assert_rel(supercell["energy"], 8 * unit["energy"], 1e-10)
    assert_rel(supercell["forces"], np.tile(unit["forces"], (8, 1)), 1e-10)
    assert_rel(supercell["atomic_energies"], np.tile(unit["atomic_energies"], 8), 1e-10)
    assert_rel(supercell["stress"], unit["stress"], 1e-10)


def test_batch_equals_structures_one_by_one():
    model = make_model()
    structures = [
        rattled_alloy(0),
        molecule(1, 5),
        ase.Atoms("Au", positions=[[0, 0, 0]]),
        rattled_alloy(2, repeat=(1, 1, 1)),
        ase.Atoms("CuCu", positions=[[0, 0, 0], [0, 0, 9.0]]),  # isolated atoms, no edges
    ]
    batched = evaluate(model, structures)
    start = 0
    for index, atoms in enumerate(structures):
        single = evaluate(model, [atoms])
        stop = start + len(atoms)
        assert_rel(batched["energy"][index], single["energy"][0], 1e-12)
        assert_rel(batched["forces"][start:stop], single["forces"], 1e-12)
        np.testing.assert_allclose(batched["stress"][index], single["stress"][0], rtol=1e-12)
        start = stop


def test_isolated_atoms_have_their_shift_energy_and_no_force():
    model = make_model()
    out = evaluate(model, [ase.Atoms("CuAu", positions=[[0, 0, 0], [0, 0, 10.0]])])
    np.testing.assert_allclose(out["atomic_energies"], [-3.5, -2.9])
    assert not out["forces"].any()
    assert np.isnan(out["stress"]).all()


def test_float32_model_agrees_with_float64():
    model64 = make_model("float64")
    model32 = make_model("float32")
    model32.load_state_dict(
        {k: v.to(model32.state_dict()[k].dtype) for k, v in model64.state_dict().items()}
    )
    atoms = rattled_alloy()
    out64, out32 = evaluate(model64, [atoms]), evaluate(model32, [atoms])
    assert_rel(out32["energy"], out64["energy"], 1e-6)
    assert_rel(out32["forces"], out64["forces"], 1e-4)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(parity=False, l_max=1),
        dict(tp_path_channel_coupling=False, num_layers=3),
        dict(num_layers=1, zbl=True),
        dict(per_edge_type_cutoff={"Cu": {"Au": 3.0}}),
    ],
)
def test_variants_are_smooth_and_equivariant(overrides):
    model = make_model(**overrides)
    atoms = rattled_alloy()
    reference = evaluate(model, [atoms])
    q = random_orthogonal(np.random.default_rng(5), reflect=True)
    moved = atoms.copy()
    moved.positions = atoms.positions @ q.T
    moved.cell = atoms.cell.array @ q.T
    out = evaluate(model, [moved])
    assert_rel(out["energy"], reference["energy"], 1e-10)
    assert_rel(out["forces"], reference["forces"] @ q.T, 1e-10)


@pytest.mark.parametrize("n", [1, 2, 5, 6, 7, 8])
def test_integer_power_is_pow(n):
    x = torch.linspace(0.0, 1.3, 50, dtype=torch.float64)
    torch.testing.assert_close(integer_power(x, n), x**n, rtol=1e-15, atol=0.0)


def test_polynomial_cutoff_is_the_dimenet_envelope():
    p = 6
    x = torch.linspace(0.0, 1.2, 61, dtype=torch.float64)
    envelope = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1)
    envelope = (envelope - p * (p + 1) / 2 * x ** (p + 2)) * (x < 1)
    torch.testing.assert_close(polynomial_cutoff(x, p), envelope, rtol=0.0, atol=1e-14)
    assert polynomial_cutoff(torch.tensor([0.0], dtype=torch.float64)).item() == 1.0


def test_non_integer_cutoff_power_is_refused():
    with pytest.raises(ConfigError, match=r"polynomial_cutoff_p must be an integer >= 1, got 6\.5"):
        ModelConfig(species=("Cu",), r_max=4.0, polynomial_cutoff_p=6.5)
