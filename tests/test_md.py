"""Molecular dynamics through the runtime: NVE energy conservation and the ``md`` command."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
from click.testing import CliRunner
from exported_models import copper, exported

from allegro_deploy.cli import main
from allegro_deploy.runtime import AllegroCalculator
from allegro_deploy.runtime.md import run_md

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
