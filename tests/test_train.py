"""Real (short) training runs on EMT copper: learning, outputs, determinism, resume, errors."""

from __future__ import annotations

import csv
import json

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase.calculators.singlepoint import SinglePointCalculator

from allegro_deploy.models.checkpoint import describe, load_checkpoint
from allegro_deploy.models.config import ConfigError
from allegro_deploy.models.datagen import generate_emt_dataset
from allegro_deploy.models.labels import DataError
from allegro_deploy.models.train import TrainingError, train, train_from_config
from allegro_deploy.runtime.validation import UnknownSpeciesError

EPOCHS = 4


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Graphs of ~100 edges: thread synchronization costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cu_file(tmp_path_factory):
    """32 EMT MD frames of an 8-atom Cu cell with energy, forces and stress."""
    path = tmp_path_factory.mktemp("data") / "cu.extxyz"
    generate_emt_dataset(
        path, "Cu", supercell=(2, 1, 1), temperatures=(300.0, 900.0), n_frames=32, interval=3
    )
    return path


def make_config(train_file, directory, **training) -> dict:
    return {
        "data": {"train_file": str(train_file), "val_fraction": 0.25, "split_seed": 1},
        "model": {
            "r_max": 3.0,
            "l_max": 1,
            "num_layers": 1,
            "num_scalar_features": 8,
            "num_tensor_features": 4,
            "scalar_embed_mlp_hidden_layers_width": 16,
            "allegro_mlp_hidden_layers_width": 16,
            "readout_mlp_hidden_layers_width": 8,
        },
        "training": {
            "epochs": EPOCHS,
            "batch_size": 4,
            "learning_rate": 0.01,
            "ema_decay": 0.9,
            **training,
        },
        "output": {"directory": str(directory)},
    }


def read_metrics(directory) -> list[dict[str, float]]:
    with open(directory / "metrics.csv") as file:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(file)]


def without_wall_time(rows):
    return [{k: v for k, v in row.items() if k != "wall_time_s"} for row in rows]


@pytest.fixture(scope="module")
def reference_run(cu_file, tmp_path_factory):
    directory = tmp_path_factory.mktemp("reference")
    best = train(make_config(cu_file, directory))
    return directory, best


def test_training_lowers_force_error_and_writes_outputs(reference_run):
    directory, best = reference_run
    rows = read_metrics(directory)
    assert [row["epoch"] for row in rows] == list(range(1, EPOCHS + 1))
    assert {
        "lr",
        "train_loss",
        "val_loss",
        "val_energy_mae_meV_per_atom",
        "val_force_mae_meV_per_A",
        "val_force_rmse_meV_per_A",
        "val_stress_mae_meV_per_A3",
        "wall_time_s",
    } <= set(rows[0])
    assert rows[-1]["val_force_mae_meV_per_A"] < 0.8 * rows[0]["val_force_mae_meV_per_A"]
    assert (directory / "learning_curve.png").read_bytes().startswith(b"\x89PNG")

    assert best == directory / "best.safetensors"
    best_epoch = min(rows, key=lambda row: row["val_loss"])["epoch"]
    checkpoint = load_checkpoint(best)
    assert checkpoint.metrics["epoch"] == best_epoch
    assert checkpoint.training_state is None
    assert checkpoint.config.species == ("Cu",)
    assert checkpoint.config.avg_num_neighbors == checkpoint.statistics["avg_num_neighbors"]
    assert checkpoint.provenance["n_train"] == 24 and checkpoint.provenance["n_val"] == 8
    last = load_checkpoint(directory / "last.safetensors")
    assert last.training_state["epoch"] == EPOCHS
    assert "resumable" in describe(directory / "last.safetensors")


def test_same_config_gives_identical_metrics(cu_file, reference_run, tmp_path):
    directory = tmp_path / "again"
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(make_config(cu_file, directory)))
    train_from_config(path)
    assert without_wall_time(read_metrics(directory)) == without_wall_time(
        read_metrics(reference_run[0])
    )


def test_resume_continues_exactly(cu_file, reference_run, tmp_path):
    reference = reference_run[0]
    train(make_config(cu_file, tmp_path, epochs=2))
    with pytest.raises(TrainingError, match="already holds .* of a training run"):
        train(make_config(cu_file, tmp_path, epochs=EPOCHS))
    with pytest.raises(TrainingError, match="no training state"):
        train(make_config(cu_file, tmp_path, epochs=EPOCHS), resume=tmp_path / "best.safetensors")
    changed = make_config(cu_file, tmp_path, epochs=EPOCHS)
    changed["model"]["num_scalar_features"] = 16
    with pytest.raises(TrainingError, match="num_scalar_features"):
        train(changed, resume=tmp_path / "last.safetensors")

    train(make_config(cu_file, tmp_path, epochs=EPOCHS), resume=tmp_path / "last.safetensors")
    assert without_wall_time(read_metrics(tmp_path)) == without_wall_time(read_metrics(reference))
    resumed = load_checkpoint(tmp_path / "last.safetensors")
    straight = load_checkpoint(reference / "last.safetensors")
    for name, value in straight.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], value), name


def test_file_without_labels_is_refused(cu_file, tmp_path):
    frames = ase.io.read(cu_file, index=":4")
    frames[3].calc = SinglePointCalculator(frames[3], energy=frames[3].get_potential_energy())
    path = tmp_path / "no_forces.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(DataError, match=r"no_forces\.extxyz, frame 3 .*has no forces"):
        train(make_config(path, tmp_path / "run"))


def test_element_missing_from_model_species_is_named(cu_file, tmp_path):
    frames = ase.io.read(cu_file, index=":6")
    frames[4].numbers[1] = 79
    path = tmp_path / "with_gold.extxyz"
    ase.io.write(path, frames)
    config = make_config(path, tmp_path / "run")
    config["model"]["species"] = ["Cu"]
    with pytest.raises(UnknownSpeciesError, match=r"with_gold\.extxyz: structure 4 .*Au.*knows Cu"):
        train(config)


@pytest.mark.parametrize(
    ("section", "key", "listed"),
    [
        ("training", "learning_rat", "learning_rate"),
        ("model", "num_features", "num_scalar_features"),
        ("data", "train", "train_file"),
        ("output", "dir", "directory"),
        (None, "optimizer", "training"),
    ],
)
def test_unknown_config_key_lists_valid_keys(cu_file, tmp_path, section, key, listed):
    config = make_config(cu_file, tmp_path / "run")
    (config[section] if section else config)[key] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match=rf"bad\.yaml: unknown .*'{key}'.*valid .*'{listed}'"):
        train_from_config(path)


def test_bad_option_values_are_refused(cu_file, tmp_path):
    config = make_config(cu_file, tmp_path / "run", learning_rate="1e-3", epochs=0)
    with pytest.raises(ConfigError, match=r"invalid training option\(s\) \['epochs'\]"):
        train(config)
    config = make_config(cu_file, tmp_path / "run")
    config["data"]["index"] = 600  # YAML reads an unquoted 10:00 as the integer 600
    with pytest.raises(ConfigError, match=r"data.index must be a string \(quote it in YAML\)"):
        train(config)


def test_test_file_metrics_and_the_validation_split_are_written(cu_file, tmp_path):
    config = make_config(cu_file, tmp_path / "run", epochs=1)
    config["data"]["test_file"] = str(cu_file)
    config["data"]["index"] = ":12"
    best = train(config)
    validation = ase.io.read(tmp_path / "run" / "validation.extxyz", ":")
    source = ase.io.read(cu_file, ":12")
    assert len(validation) == 3  # a quarter of 12
    assert any(np.allclose(v.positions, s.positions) for v in validation for s in source)
    assert all(v.get_forces().shape == (8, 3) for v in validation)
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["structures"] == 12 and metrics["best_epoch"] == 1
    # the best weights on the test set, by the same metric as validation
    checkpoint = load_checkpoint(best)
    assert metrics["test_force_mae_meV_per_A"] > 0
    assert checkpoint.provenance["test_file"] == str(cu_file.resolve())
