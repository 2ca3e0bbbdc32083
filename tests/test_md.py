"""Molecular dynamics through the runtime: NVE energy conservation and the ``md`` command."""

from __future__ import annotations

import csv
from pathlib import Path

import ase
import ase.io
import numpy as np
import pytest
from ase import units
from click.testing import CliRunner
from exported_models import copper, exported, small_model

from allegro_deploy.cli import main
from allegro_deploy.models.checkpoint import save_checkpoint
from allegro_deploy.runtime import AllegroCalculator
from allegro_deploy.runtime.md import THERMO_COLUMNS, run_md

MAX_DRIFT_MEV_PER_ATOM_PS = {"float64": 0.1, "float32": 0.5}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {dtype: exported(tmp_path_factory, dtype) for dtype in ("float64", "float32")}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_nve_conserves_energy(files: dict[str, Path], dtype: str) -> None:
    """108 Cu atoms from 300 K, velocity Verlet with 1 fs for 0.2 ps."""
    calculator = AllegroCalculator(files[dtype], "cpu", threads=1)
    atoms = copper(3)
    report = run_md(
        atoms,
        calculator,
        ensemble="nve",
        temperature_K=300.0,
        steps=200,
        interval=5,
        progress=False,
    )
    drift = report.drift_ev_per_atom_per_ps * 1e3
    spread = float(np.ptp(report.total_energies)) / len(atoms) * 1e3
    print(f"{dtype}: NVE drift {drift:.4f} meV/atom/ps, spread {spread:.4f} meV/atom")
    assert abs(drift) < MAX_DRIFT_MEV_PER_ATOM_PS[dtype]
    assert spread < 0.5
    # The crystal stays solid: equipartition takes it to about 150 K.
    assert 50.0 < report.temperatures[-20:].mean() < 400.0


def test_md_command_runs_and_reports_speed(files: dict[str, Path], tmp_path: Path) -> None:
    model = files["float32"]
    structure = tmp_path / "cu.extxyz"
    copper(2).write(structure)
    trajectory = tmp_path / "out" / "md.extxyz"
    args = ["md", str(model), str(structure), "--steps", "6", "--interval", "2"]
    args += ["--trajectory", str(trajectory), "--backend", "cpu", "--threads", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "6 steps of 32 atoms (NVT, 1 fs)" in result.output
    assert "ns/day" in result.output and "atom-steps/s" in result.output
    frames = ase.io.read(trajectory, ":")
    assert len(frames) == 4 and frames[-1].get_forces().shape == (32, 3)

    result = CliRunner().invoke(main, [*args[:3], "--trajectory", str(tmp_path / "md.pdb")])
    assert result.exit_code == 1 and "must end in one of .traj" in result.output


def test_thermo_log_has_a_row_every_interval(files: dict[str, Path], tmp_path: Path) -> None:
    calculator = AllegroCalculator(files["float64"], "cpu", threads=1)
    atoms = copper(2)
    thermo = tmp_path / "thermo.csv"
    report = run_md(atoms, calculator, ensemble="nve", steps=7, interval=3, thermo=thermo,
                    progress=False)  # fmt: skip
    rows = list(csv.DictReader(open(thermo)))
    assert list(rows[0]) == list(THERMO_COLUMNS)
    assert [int(r["step"]) for r in rows] == [0, 3, 6, 7]
    total = np.array([float(r["total_eV"]) for r in rows])
    np.testing.assert_allclose(total, report.total_energies, rtol=1e-12)
    potential, kinetic = (
        np.array([float(r[k]) for r in rows]) for k in ("potential_eV", "kinetic_eV")
    )
    np.testing.assert_allclose(potential + kinetic, total, rtol=1e-12)
    atoms.calc = calculator
    pressure = -atoms.get_stress(include_ideal_gas=True)[:3].mean() / units.GPa
    assert float(rows[-1]["pressure_GPa"]) == pytest.approx(pressure, rel=1e-8)


def test_md_command_runs_a_checkpoint_after_saying_it_exports_it(tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    save_checkpoint(checkpoint, small_model())
    molecule = tmp_path / "molecule.extxyz"
    ase.io.write(molecule, ase.Atoms("CuO", positions=[[0, 0, 0], [0, 0, 1.9]]))
    result = CliRunner().invoke(
        main,
        ["md", str(checkpoint), str(molecule), "--steps", "2", "--thermo", str(tmp_path / "t.csv")],
    )
    assert result.exit_code == 0, result.output
    assert "is a checkpoint: exporting it first" in result.output
    assert "allegro-deploy export" in result.output
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert rows[-1]["pressure_GPa"] == ""  # a molecule has no pressure
    assert not list(tmp_path.glob("*.onnx"))  # the export was temporary
