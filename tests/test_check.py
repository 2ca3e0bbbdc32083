"""`allegro-deploy check`: errors against the float64 reference and labels, reports, gate."""

from __future__ import annotations

import json
from pathlib import Path

import ase
import ase.io
import pytest
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from click.testing import CliRunner
from exported_models import copper, exported, small_model

from allegro_deploy.check import CheckError, run_check
from allegro_deploy.cli import main
from allegro_deploy.models.checkpoint import save_checkpoint


def labelled(structures: list[ase.Atoms]) -> list[ase.Atoms]:
    for atoms in structures:
        atoms.calc = EMT()
        results = {k: atoms.get_properties([k])[k] for k in ("energy", "forces", "stress")}
        atoms.calc = SinglePointCalculator(atoms, **results)
    return structures


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("data") / "cu.extxyz"
    ase.io.write(path, labelled([copper(2, 0.05, seed) for seed in range(3)]))
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint") / "small.safetensors"
    save_checkpoint(path, small_model())
    return path


def test_float64_is_zero_level_and_float32_within_1e_5(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, data: Path, checkpoint: Path
) -> None:
    errors = {}
    for dtype in ("float64", "float32"):
        report = run_check(
            exported(tmp_path_factory, dtype),
            data,
            tmp_path / dtype,
            reference=checkpoint,
            md_steps=0,
        )
        (result,) = report.results
        errors[result.precision] = result.vs_reference
        assert result.vs_labels["force_mae"] > 1.0  # an untrained model against EMT
    assert errors["fp64"]["force_relative"] < 1e-12 and errors["fp64"]["energy_max"] < 1e-9
    assert errors["fp64"]["stress_max"] < 1e-9
    assert 0 < errors["fp32"]["force_relative"] <= 1e-5
    assert errors["fp32"]["energy_max"] < 1e-2  # meV/atom


def test_cli_writes_the_reports_and_the_gate_fails_when_it_should(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, data: Path
) -> None:
    model = exported(tmp_path_factory, "float32")
    reference = exported(tmp_path_factory, "float64")
    out = tmp_path / "report"
    args = ["check", str(model), "--data", str(data), "--reference", str(reference)]
    args += ["--md-steps", "5", "--out", str(out)]
    failed = CliRunner().invoke(main, [*args, "--threshold", "force_max=1e-9"])
    assert failed.exit_code == 1
    assert "threshold exceeded: fp32: force_max" in failed.output
    for name in ("report.json", "report.md", "parity_fp32.png", "force_error_hist.png"):
        assert (out / name).stat().st_size > 0
    report = json.loads((out / "report.json").read_text())
    (result,) = report["results"]
    assert result["precision"] == "fp32" and result["mode"] == "real (cpu)"
    assert result["drift_mev_per_atom_per_ps"] is not None
    assert report["failures"] == [failed.output.split("threshold exceeded: ")[1].strip()]
    assert "| fp32 | real (cpu) |" in (out / "report.md").read_text()

    passed = CliRunner().invoke(main, [*args, "--threshold", "force_relative=1e-5"])
    assert passed.exit_code == 0, passed.output
    assert "errors against the float64 reference" in passed.output
    unmeasured = CliRunner().invoke(
        main, [*args[:-4], "--md-steps", "0", "--out", str(out), "--threshold", "drift=1"]
    )
    assert unmeasured.exit_code == 1 and "fp32: drift was not measured" in unmeasured.output


def test_bad_input_is_refused_in_one_line(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, data: Path, checkpoint: Path
) -> None:
    model = exported(tmp_path_factory, "float32")
    gold = tmp_path / "au.extxyz"
    ase.io.write(gold, labelled([ase.build.bulk("Au", "fcc", a=4.08, cubic=True)]))
    with pytest.raises(CheckError, match="frame 0: element Au is not among the model's species"):
        run_check(model, gold, tmp_path / "out", md_steps=0)
    with pytest.raises(CheckError, match="--precisions applies to checkpoints"):
        run_check(model, data, tmp_path / "out", precisions=["fp16"])
    with pytest.raises(CheckError, match="unknown precision 'fp8'"):
        run_check(checkpoint, data, tmp_path / "out", precisions=["fp8"])
    with pytest.raises(CheckError, match="must be a float64"):
        run_check(model, data, tmp_path / "out", reference=model, md_steps=0)
    result = CliRunner().invoke(
        main, ["check", str(model), "--data", str(data), "--threshold", "speed=1"]
    )
    assert result.exit_code == 1 and "unknown metric 'speed'" in result.output


@pytest.mark.slow
def test_checkpoint_exported_at_each_precision(
    tmp_path: Path, data: Path, checkpoint: Path
) -> None:
    """Exports fp64 and emulated tf32/bf16 (~1.5 min): zero-level fp64 and non-zero
    reduced-precision errors in the expected order, through ONNX Runtime. (fp32 and fp16
    are covered by the tests above and by tests/test_precision.py.)"""
    out = tmp_path / "report"
    args = ["check", str(checkpoint), "--data", str(data), "--precisions", "fp64,tf32,bf16"]
    result = CliRunner().invoke(main, [*args, "--md-steps", "5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    modes = {r["precision"]: r["mode"] for r in report["results"]}
    assert modes == {"fp64": "real (cpu)", "tf32": "emulated", "bf16": "emulated"}
    error = {r["precision"]: r["vs_reference"]["force_relative"] for r in report["results"]}
    assert error["fp64"] < 1e-12
    assert 1e-6 < error["tf32"] < error["bf16"] / 3
    assert {f"parity_{p}.png" for p in modes} <= {p.name for p in out.iterdir()}
