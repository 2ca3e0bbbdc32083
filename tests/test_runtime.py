"""Runtime: batched inference on real exported files through ONNX Runtime, against torch."""

from __future__ import annotations

from pathlib import Path

import ase
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from ase.calculators.calculator import PropertyNotImplementedError
from ase.calculators.fd import calculate_numerical_stress
from exported_models import SPECIES, copper, exported, small_model

from allegro_deploy.models import AtomicGraph
from allegro_deploy.runtime import AllegroCalculator, Potential, Result, Structure
from allegro_deploy.runtime.backends import BackendError, open_session
from allegro_deploy.runtime.md import run_md
from allegro_deploy.runtime.metadata import MetadataError, ModelMetadata, read_metadata
from allegro_deploy.runtime.validation import StructureError, UnknownSpeciesError

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
FIELDS = ("energy", "atomic_energies", "forces", "virial", "stress")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {dtype: exported(tmp_path_factory, dtype) for dtype in ("float64", "float32")}


@pytest.fixture(scope="module")
def potential(files: dict[str, Path]) -> Potential:
    return Potential.load(files["float64"], "cpu", threads=1)


def oxide(seed: int, repeat: tuple[int, int, int]) -> ase.Atoms:
    """Rattled Cu/O fcc block in a sheared (triclinic) periodic cell."""
    rng = np.random.default_rng(seed)
    atoms = copper(1).repeat(repeat)
    atoms.numbers = rng.choice([29, 8], len(atoms), p=[0.7, 0.3])
    atoms.set_cell(atoms.cell.array @ [[1, 0.05, 0], [0, 1, 0.03], [0.02, 0, 1]], scale_atoms=True)
    atoms.positions += rng.normal(0.0, 0.08, atoms.positions.shape)
    return atoms


def structures(seed: int = 0) -> list[ase.Atoms]:
    """Periodic, small-cell (atoms see their own images), slab, molecule, single atom."""
    rng = np.random.default_rng(seed)
    small = ase.build.bulk("Cu", "fcc", a=3.6).repeat((2, 1, 1))
    small.positions += rng.normal(0.0, 0.1, small.positions.shape)
    slab = oxide(seed + 1, (2, 2, 1))
    slab.pbc = (True, True, False)
    cluster = oxide(seed + 2, (1, 1, 2))[:6]
    cluster.pbc, cluster.cell = False, None
    return [oxide(seed, (2, 2, 2)), small, slab, cluster, ase.Atoms("O", positions=[[1, 2, 3]])]


def stacked(results: list[Result], field: str) -> np.ndarray:
    """One field of all results concatenated (stress of non-periodic systems as NaN)."""
    values = [getattr(r, field) for r in results]
    values = [np.full((3, 3), np.nan) if v is None else v for v in values]
    return np.concatenate([np.reshape(v, (-1,)) for v in values])


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / max |expected|``, NaN where both are NaN ignored."""
    assert np.array_equal(np.isnan(actual), np.isnan(expected))
    finite = ~np.isnan(expected)
    return float(np.abs(actual - expected)[finite].max() / np.abs(expected[finite]).max())


def torch_results(atoms: list[ase.Atoms], dtype: str) -> dict[str, np.ndarray]:
    """The torch model's outputs, concatenated as :func:`stacked`."""
    model = small_model(dtype)
    graph = AtomicGraph.from_atoms(atoms, model.config.atomic_numbers, model.config.r_max)
    return {k: v.detach().numpy().reshape(-1) for k, v in model(graph).items()}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_matches_the_torch_model(files: dict[str, Path], dtype: str) -> None:
    atoms = structures()
    results = Potential.load(files[dtype], "cpu", threads=1).evaluate(atoms)
    expected = torch_results(atoms, dtype)
    for field in FIELDS:
        error = relative_error(stacked(results, field), expected[field])
        assert error <= TOLERANCE[dtype], (field, error)
    assert [r.stress is None for r in results] == [False, False, True, True, True]


def test_batched_equals_one_by_one(potential: Potential) -> None:
    atoms = structures(seed=1)
    batched = potential.evaluate(atoms)
    for one, together in zip(atoms, batched, strict=True):
        alone = potential.evaluate(one)
        assert isinstance(alone, Result)
        for field in FIELDS:
            a, b = stacked([alone], field), stacked([together], field)
            np.testing.assert_allclose(b, a, rtol=1e-12, atol=1e-12, err_msg=field)


@pytest.mark.parametrize("edge_budget", [1, 37, 500])
def test_chunked_equals_unchunked(
    files: dict[str, Path], edge_budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Structures over the edge budget are evaluated in pieces of consecutive centers."""
    stray = oxide(6, (1, 2, 2))
    stray.pbc, stray.cell = False, None
    stray += ase.Atoms("O", positions=[[30.0, 0.0, 0.0]])  # no neighbors: no edges at all
    atoms = [*structures(seed=2), stray, copper(2, rattle=0.05)] * 2
    whole = Potential.load(files["float64"], "cpu", threads=1, edge_budget=10**9)
    expected = whole.evaluate(atoms)
    small = Potential.load(files["float64"], "cpu", threads=1, edge_budget=edge_budget)
    evaluations = []
    run = small.session.run

    def counting(inputs: dict[str, np.ndarray], outputs: tuple[str, ...]) -> object:
        evaluations.append(inputs["edge_index"].shape[1])
        return run(inputs, outputs)

    monkeypatch.setattr(small.session, "run", counting)
    chunked = small.evaluate(atoms)
    assert len(evaluations) > len(atoms) if edge_budget < 500 else len(evaluations) > 2
    if edge_budget > 1:  # a single center has more edges than a budget of 1
        assert max(evaluations) <= edge_budget
    for field in FIELDS:
        error = relative_error(stacked(chunked, field), stacked(expected, field))
        assert error <= 1e-12, (field, error)
    assert chunked[5].atomic_energies[-1] == expected[5].atomic_energies[-1] == -1.0


def test_structure_inputs_and_return_types(potential: Potential) -> None:
    atoms = oxide(3, (1, 1, 2))
    structure = Structure(atoms.positions, atoms.numbers, atoms.cell.array, atoms.pbc)
    from_atoms, from_structure = potential.evaluate(atoms), potential.evaluate(structure)
    assert isinstance(from_structure, Result)
    np.testing.assert_array_equal(from_atoms.forces, from_structure.forces)
    assert potential.evaluate([]) == []
    assert len(potential.evaluate((structure, atoms))) == 2
    molecule = Structure([[0, 0, 0], [0, 0, 1.2]], [8, 29])
    assert molecule.pbc.tolist() == [False] * 3 and potential.evaluate(molecule).stress is None
    with pytest.raises(StructureError, match="shape"):
        Structure([[0.0, 0.0]], [29])


def test_properties_and_metadata(files: dict[str, Path], potential: Potential) -> None:
    assert potential.species == SPECIES
    assert potential.atomic_numbers == (29, 8)
    assert potential.r_max == 4.0 and potential.dtype == "float64"
    assert potential.backend == "cpu"
    metadata = read_metadata(files["float32"])
    assert metadata.dtype == "float32" and metadata.target == "structures"
    assert metadata.format_version == 2 and metadata.float64
    assert metadata.pair_cutoffs == ((4.0, 4.0), (4.0, 3.0))
    assert metadata.input_names[0] == "positions" and "forces" in metadata.output_names
    assert metadata.raw["format"] == "allegro-deploy-onnx"


def test_stress_sign_voigt_order_and_virial(potential: Potential) -> None:
    """Against finite differences of the energy under strain and the torch model."""
    atoms = oxide(4, (1, 1, 2))
    atoms.calc = AllegroCalculator(potential)
    stress = atoms.get_stress()  # Voigt xx yy zz yz xz xy, eV/Å³
    numerical = calculate_numerical_stress(atoms, 1e-5)
    np.testing.assert_allclose(stress, numerical, atol=1e-7 * np.abs(stress).max())
    full = torch_results([atoms], "float64")["stress"].reshape(3, 3)
    voigt = [full[0, 0], full[1, 1], full[2, 2], full[1, 2], full[0, 2], full[0, 1]]
    np.testing.assert_allclose(stress, voigt, rtol=1e-10, atol=1e-14)
    result = potential.evaluate(atoms)
    assert result.stress is not None
    np.testing.assert_allclose(result.virial, -atoms.get_volume() * result.stress, rtol=1e-12)


def test_ase_calculator_properties_and_short_md(files: dict[str, Path]) -> None:
    calculator = AllegroCalculator(files["float32"], "cpu", threads=1)
    atoms = oxide(5, (2, 2, 1))
    atoms.calc = calculator
    energy = atoms.get_potential_energy()
    assert atoms.get_potential_energy(force_consistent=True) == energy
    np.testing.assert_allclose(atoms.get_potential_energies().sum(), energy, rtol=1e-12)
    assert atoms.get_forces().shape == (len(atoms), 3) and atoms.get_stress().shape == (6,)

    molecule = ase.Atoms("CuO", positions=[[0, 0, 0], [0, 0, 1.9]], calculator=calculator)
    assert np.isfinite(molecule.get_potential_energy())
    with pytest.raises(PropertyNotImplementedError, match="periodic along all three"):
        molecule.get_stress()

    report = run_md(atoms, calculator, steps=10, interval=2, progress=False)
    assert report.steps == 10 and len(report.times_fs) == 6
    assert np.isfinite(report.total_energies).all() and report.atom_steps_per_second > 0


@pytest.mark.parametrize(
    ("atoms", "error", "message"),
    [
        (ase.Atoms("CuHe", positions=[[0, 0, 0], [2, 0, 0]]), UnknownSpeciesError, "unknown "),
        (
            ase.Atoms("Cu2", positions=[[0, 0, 0], [np.nan, 0, 0]]),
            StructureError,
            "non-finite positions, first atom 1",
        ),
        (
            ase.Atoms("CuO", positions=[[0, 0, 0], [0.4, 0, 0]]),
            StructureError,
            "atoms 0 and 1 are 0.4 Å apart, closer than min_distance = 0.5",
        ),
        (
            ase.Atoms("Cu", cell=[[2, 0, 0], [4, 0, 0], [0, 0, 3]], pbc=True),
            StructureError,
            "cell is singular",
        ),
    ],
    ids=["unknown element", "NaN", "too close", "singular cell"],
)
def test_invalid_structures_are_refused(
    potential: Potential, atoms: ase.Atoms, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        potential.evaluate(atoms)
    with pytest.raises(error, match=f"^structure 1 \\({atoms.get_chemical_formula()}\\): "):
        potential.evaluate([copper(1), atoms])


def test_min_distance_is_configurable(files: dict[str, Path]) -> None:
    close = ase.Atoms("CuO", positions=[[0, 0, 0], [0.4, 0, 0]])
    lenient = Potential.load(files["float64"], "cpu", threads=1, min_distance=0.3)
    assert np.isfinite(lenient.evaluate(close).energy)


def test_one_neighbor_list_per_structure(potential: Potential, monkeypatch) -> None:
    """The distance check and the model share one neighbor list (the model's cutoff)."""
    from allegro_deploy.runtime import potential as potential_module
    from allegro_deploy.runtime import validation

    cutoffs = []

    def counting(*args: object) -> object:
        cutoffs.append(args[3])
        return neighbors(*args)

    neighbors = validation.neighbor_list
    monkeypatch.setattr(validation, "neighbor_list", counting)
    monkeypatch.setattr(potential_module, "neighbor_list", counting)
    reference = potential.evaluate(copper(1))
    assert cutoffs == [potential.r_max]
    monkeypatch.undo()
    np.testing.assert_array_equal(potential.evaluate(copper(1)).forces, reference.forces)


def rewrite_metadata(source: Path, destination: Path, **changes: str | None) -> Path:
    """Copy of ``source`` with metadata entries changed (None: removed)."""
    proto = onnx.load(source)
    props = {p.key: p.value for p in proto.metadata_props}
    props.update(changes)
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {k: v for k, v in props.items() if v is not None})
    onnx.save(proto, destination)
    return destination


def test_foreign_files_are_refused(files: dict[str, Path], tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("hello, not a model\n")
    with pytest.raises(MetadataError, match="is not an ONNX file"):
        Potential.load(text)
    stripped = rewrite_metadata(files["float64"], tmp_path / "plain.onnx", format=None)
    with pytest.raises(MetadataError, match="not an allegro-deploy model file .*no 'format'"):
        Potential.load(stripped)
    with pytest.raises(FileNotFoundError):
        Potential.load(tmp_path / "missing.onnx")


def test_newer_format_version_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    newer = rewrite_metadata(files["float64"], tmp_path / "v3.onnx", format_version="3")
    with pytest.raises(MetadataError, match="format version 3, but this runtime reads .* 2; up"):
        read_metadata(newer)
    unknown = rewrite_metadata(files["float64"], tmp_path / "t.onnx", target="graphs")
    with pytest.raises(MetadataError, match="unknown target 'graphs'"):
        Potential.load(unknown)


def test_pairs_target_is_refused_with_a_pointer_to_lammps(
    files: dict[str, Path], tmp_path: Path
) -> None:
    pairs = rewrite_metadata(files["float64"], tmp_path / "pairs.onnx", target="pairs")
    with pytest.raises(MetadataError, match="'pairs' export, made for LAMMPS .*AllegroMLIAP"):
        Potential.load(pairs)
    with pytest.raises(MetadataError, match="'pairs' export"):
        AllegroCalculator(pairs)


@pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="onnxruntime-gpu is installed here; the missing-package error cannot occur",
)
def test_cuda_backend_says_what_is_missing_and_auto_falls_back(files: dict[str, Path]) -> None:
    with pytest.raises(BackendError, match="backend 'cuda' needs onnxruntime-gpu"):
        Potential.load(files["float64"], "cuda")
    assert open_session(files["float64"], "auto", threads=1).backend == "cpu"
    with pytest.raises(BackendError, match="unknown backend 'gpu'"):
        open_session(files["float64"], "gpu")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"r_max": "nan"}, "r_max must be a positive number of Å, got nan"),
        ({"r_max": "-4"}, "r_max must be a positive number of Å, got -4.0"),
        ({"r_max": "1e-3"}, r"every pair cutoff must be in \(0, r_max = 0.001\] Å"),
        ({"pair_cutoffs": "[[4.0, 4.0], [4.0, 0.0]]"}, r"every pair cutoff must be in \(0, r_max"),
        ({"energy_shifts": "[-3.5, NaN]"}, "energy_shifts must be finite"),
    ],
)
def test_metadata_with_an_absurd_cutoff_or_shift_is_refused_before_any_work(
    files: dict[str, Path], changes: dict[str, str], message: str
) -> None:
    props = dict(read_metadata(files["float64"]).raw) | changes
    with pytest.raises(MetadataError, match=message):
        ModelMetadata.from_props(props, "bad.onnx")


def test_neighbor_lists_stop_at_the_largest_pair_cutoff(
    files: dict[str, Path], tmp_path: Path
) -> None:
    """An r_max far beyond every pair cutoff (1e7 Å) builds no huge neighbor list: edges
    past their pair's cutoff contribute nothing, so the results are the file's own."""
    wide = rewrite_metadata(files["float64"], tmp_path / "wide.onnx", r_max="1e7")
    atoms = copper(2, 0.05)
    expected = Potential.load(files["float64"], "cpu").evaluate(atoms)
    got = Potential.load(wide, "cpu").evaluate(atoms)
    assert got.energy == pytest.approx(expected.energy, rel=1e-12)
    np.testing.assert_allclose(got.forces, expected.forces, rtol=1e-10, atol=1e-12)
