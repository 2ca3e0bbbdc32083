"""``allegro-deploy evaluate``: predictions beside labels, metrics, files; label keys."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import ase
import ase.build
import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.stress import voigt_6_to_full_3x3_stress
from click.testing import CliRunner
from exported_models import exported, small_model

from allegro_deploy.cli import main
from allegro_deploy.evaluate import OUTPUTS, EvaluateError, evaluate
from allegro_deploy.models.checkpoint import save_checkpoint
from allegro_deploy.models.data import LabelledDataset
from allegro_deploy.models.labels import DataError, LabelKeys, read_structures
from allegro_deploy.runtime.potential import Potential
from allegro_deploy.runtime.progress import Progress

REF = LabelKeys("REF_energy", "REF_forces", "REF_stress")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """EMT-labelled rattled Cu cells, one with an O atom, labels under REF_ names; the last
    frame is a molecule (no stress label)."""
    frames = []
    for seed in range(5):
        atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=seed)
        if seed == 4:
            atoms.numbers[0] = 8
        atoms.calc = EMT()
        labels = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = None
        atoms.info["REF_energy"], atoms.arrays["REF_forces"] = labels[0], labels[1]
        atoms.info["REF_stress"] = labels[2]
        frames.append(atoms)
    molecule = ase.Atoms("Cu2", positions=[[0, 0, 0], [2.4, 0, 0]])
    molecule.info["REF_energy"], molecule.arrays["REF_forces"] = 0.5, np.zeros((2, 3))
    frames.append(molecule)
    path = tmp_path_factory.mktemp("evaluate") / "ref.extxyz"
    ase.io.write(path, frames)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(tmp_path_factory, "float64")


def test_metrics_match_an_independent_computation(
    model_file: Path, data_file: Path, tmp_path: Path
) -> None:
    result = CliRunner().invoke(
        main,
        ["evaluate", str(model_file), str(data_file), "--out", str(tmp_path), "--batch-size", "2"]
        + [
            "--energy-key",
            "REF_energy",
            "--forces-key",
            "REF_forces",
            "--stress-key",
            "REF_stress",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "metrics.json").read_text())
    metrics = report["metrics"]

    frames = ase.io.read(data_file, ":")
    results = Potential.load(model_file, "cpu").evaluate(frames)
    pairs = list(zip(results, frames, strict=True))
    energy = np.array([(r.energy - a.info["REF_energy"]) / len(a) for r, a in pairs])
    forces = np.concatenate([r.forces - a.arrays["REF_forces"] for r, a in pairs])
    symbols = np.concatenate([a.get_chemical_symbols() for a in frames])
    np.testing.assert_allclose(metrics["energy"]["mae"], np.abs(energy).mean() * 1e3, rtol=1e-12)
    np.testing.assert_allclose(
        metrics["energy"]["rmse"], np.sqrt(np.mean(energy**2)) * 1e3, rtol=1e-12
    )
    np.testing.assert_allclose(metrics["forces"]["mae"], np.abs(forces).mean() * 1e3, rtol=1e-12)
    np.testing.assert_allclose(metrics["forces"]["max"], np.abs(forces).max() * 1e3, rtol=1e-12)
    oxygen = forces[symbols == "O"]
    np.testing.assert_allclose(
        metrics["forces"]["per_species"]["O"]["rmse"], np.sqrt(np.mean(oxygen**2)) * 1e3,
        rtol=1e-12,
    )  # fmt: skip
    stress = np.array(
        [
            (r.stress - voigt_6_to_full_3x3_stress(a.info["REF_stress"])).ravel()
            for r, a in pairs
            if a.pbc.all()
        ]
    )
    np.testing.assert_allclose(metrics["stress"]["mae"], np.abs(stress).mean() * 1e3, rtol=1e-12)
    assert metrics["stress"]["count"] == 5 and metrics["energy"]["count"] == 6
    assert report["label_keys"] == {
        "energy": "REF_energy",
        "forces": "REF_forces",
        "stress": "REF_stress",
    }
    assert "energy per atom" in result.output and "forces on O" in result.output


def test_files_hold_predictions_beside_labels(
    model_file: Path, data_file: Path, tmp_path: Path
) -> None:
    evaluation = evaluate(model_file, data_file, keys=REF, stream=io.StringIO())
    paths = evaluation.write(tmp_path)
    assert [p.name for p in paths] == list(OUTPUTS)
    frames = ase.io.read(tmp_path / "predictions.extxyz", ":")
    source = ase.io.read(data_file, ":")
    assert len(frames) == len(source) == 6
    assert frames[0].info["energy_label"] == pytest.approx(source[0].info["REF_energy"], 1e-12)
    np.testing.assert_allclose(frames[2].arrays["forces_label"], source[2].arrays["REF_forces"])
    assert "stress_label" not in frames[5].info  # the molecule: no stress label
    predicted = Potential.load(model_file, "cpu").evaluate(source[3])
    assert frames[3].info["energy_predicted"] == pytest.approx(predicted.energy, rel=1e-12)
    rows = list(csv.DictReader(open(tmp_path / "structures.csv")))
    assert len(rows) == 6 and rows[4]["formula"] == "Cu31O"
    assert rows[5]["stress_max_error_meV_per_A3"] == ""
    assert (tmp_path / "parity.png").read_bytes().startswith(b"\x89PNG")
    assert "| forces on Cu |" in (tmp_path / "metrics.md").read_text()


def test_checkpoint_and_its_export_agree(model_file: Path, data_file: Path, tmp_path: Path) -> None:
    checkpoint = tmp_path / "model.safetensors"
    save_checkpoint(checkpoint, small_model())
    torch_run = evaluate(checkpoint, data_file, keys=REF, stream=io.StringIO())
    file_run = evaluate(model_file, data_file, keys=REF, stream=io.StringIO())
    np.testing.assert_allclose(torch_run.predictions.forces, file_run.predictions.forces,
                               rtol=0, atol=1e-9)  # fmt: skip
    np.testing.assert_allclose(
        torch_run.predictions.energy, file_run.predictions.energy, rtol=1e-10
    )


def test_unlabelled_data_gives_predictions_and_no_metrics(model_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "plain.extxyz"
    ase.io.write(path, ase.build.bulk("Cu", "fcc", a=3.6, cubic=True))
    evaluation = evaluate(model_file, path, stream=io.StringIO())
    assert evaluation.labelled == []
    assert evaluation.metrics() == {"energy": None, "forces": None, "stress": None}
    evaluation.write(tmp_path / "out")
    (frame,) = ase.io.read(tmp_path / "out" / "predictions.extxyz", ":")
    assert "energy_predicted" in frame.info and "energy_label" not in frame.info


def test_bad_input_is_refused(model_file: Path, data_file: Path, tmp_path: Path) -> None:
    with pytest.raises(EvaluateError, match="neither a checkpoint"):
        evaluate(tmp_path / "model.pt", data_file)
    with pytest.raises(EvaluateError, match="batch size must be >= 1"):
        evaluate(model_file, data_file, batch_size=0)
    clash = tmp_path / "clash"
    clash.mkdir()
    data_in_out = clash / "predictions.extxyz"
    data_in_out.write_bytes(data_file.read_bytes())
    evaluation = evaluate(model_file, data_in_out, keys=REF, stream=io.StringIO())
    with pytest.raises(EvaluateError, match="would write over the input"):
        evaluation.write(clash)
    assert data_in_out.read_bytes() == data_file.read_bytes()


def test_label_keys_reach_training_data_and_check(data_file: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has no energy and no forces label"):
        read_structures(data_file)
    structures = read_structures(data_file, keys=REF)
    dataset = LabelledDataset.from_atoms(structures, ("Cu", "O"), 4.0, str(data_file), REF)
    assert float(dataset.structures[0].energy) == pytest.approx(structures[0].info["REF_energy"])
    checkpoint = tmp_path / "model.safetensors"
    save_checkpoint(checkpoint, small_model())
    result = CliRunner().invoke(
        main,
        ["check", str(checkpoint), "--data", str(data_file), "--precisions", "fp64",
         "--md-steps", "0", "--out", str(tmp_path / "check"), "--energy-key", "REF_energy",
         "--forces-key", "REF_forces", "--stress-key", "REF_stress"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "check" / "report.json").read_text())
    assert report["labels"] == ["energy", "forces", "stress"]


def test_progress_off_a_terminal_prints_plain_lines() -> None:
    stream = io.StringIO()
    with Progress("evaluating", 10, "structures", stream=stream, interval=0.0) as progress:
        progress.advance(4)
        progress.stage("fp16: evaluating")
        progress.advance(6)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("evaluating: 4/10 structures (40 %), ")
    assert lines[1].startswith("fp16: evaluating: 4/10 structures (40 %), ")
    assert lines[2].startswith("fp16: evaluating: 10/10 structures (100 %), ")
    assert len(lines) == 3


def test_short_work_off_a_terminal_stays_quiet() -> None:
    stream = io.StringIO()
    with Progress("evaluating", 10, "structures", stream=stream) as progress:
        progress.advance(10)
    assert stream.getvalue() == ""
