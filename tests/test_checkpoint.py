"""Checkpoints: exact round trips, and clear errors for files that are not ours."""

from __future__ import annotations

import json
from pathlib import Path

import ase.build
import numpy as np
import pytest
import safetensors.torch
import torch

from allegro_deploy.models import AllegroModel, AtomicGraph, ModelConfig
from allegro_deploy.models.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    describe,
    load_checkpoint,
    save_checkpoint,
)


def make_model(dtype: str) -> AllegroModel:
    torch.manual_seed(0)
    config = ModelConfig(
        species=("Cu", "Au"),
        r_max=3.5,
        l_max=2,
        num_layers=2,
        num_scalar_features=8,
        num_tensor_features=4,
        scalar_embed_mlp_hidden_layers_width=8,
        allegro_mlp_hidden_layers_width=8,
        readout_mlp_hidden_layers_width=8,
        avg_num_neighbors=14.5,
        per_type_energy_scales=0.4,
        per_type_energy_shifts={"Cu": -3.5, "Au": -2.9},
        model_dtype=dtype,
    )
    model = AllegroModel(config)
    with torch.no_grad():  # move weights away from their initial values
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return model


def alloy_graph() -> AtomicGraph:
    rng = np.random.default_rng(0)
    atoms = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True).repeat((2, 1, 1))
    atoms.numbers = rng.choice([29, 79], len(atoms))
    atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
    return AtomicGraph.from_atoms([atoms], [29, 79], 3.5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> tuple:
    path = tmp_path_factory.mktemp("checkpoint") / "model.safetensors"
    model = make_model("float32")
    save_checkpoint(path, model, metrics={"val_force_mae_meV_per_A": 12.5})
    return path, model


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_for_bit(tmp_path, dtype):
    model = make_model(dtype).eval()
    path = tmp_path / "model.safetensors"
    state = {
        "epoch": 3,
        "optimizer": {"state": {"0": {"exp_avg": torch.arange(4.0)}}, "betas": (0.9, 0.99)},
        "rng": torch.Generator().manual_seed(1).get_state(),
    }
    save_checkpoint(
        path,
        model,
        statistics={"avg_num_neighbors": 14.5, "species_counts": {"Cu": 3}},
        metrics={"epoch": 3, "val_loss": 0.25},
        provenance={"train_file": "cu.extxyz"},
        training_state=state,
    )
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]
    checkpoint = load_checkpoint(path)
    assert checkpoint.config == model.config
    assert checkpoint.format_version == FORMAT_VERSION
    assert not checkpoint.model.training
    assert checkpoint.statistics == {"avg_num_neighbors": 14.5, "species_counts": {"Cu": 3}}
    assert checkpoint.metrics == {"epoch": 3, "val_loss": 0.25}
    assert checkpoint.provenance == {"train_file": "cu.extxyz"}
    assert set(checkpoint.package_versions) == {"allegro-deploy", "torch", "e3nn", "python"}
    restored = checkpoint.training_state
    assert restored["epoch"] == 3 and restored["optimizer"]["betas"] == [0.9, 0.99]
    assert torch.equal(restored["optimizer"]["state"]["0"]["exp_avg"], torch.arange(4.0))
    assert torch.equal(restored["rng"], state["rng"])
    for name, value in model.state_dict().items():
        loaded = checkpoint.model.state_dict()[name]
        assert loaded.dtype == value.dtype and torch.equal(loaded, value), name
    graph = alloy_graph()
    expected, actual = model(graph), checkpoint.model(graph)
    for key in ("energy", "atomic_energies", "forces", "virial", "stress"):
        assert torch.equal(actual[key], expected[key]), key


def test_describe_summarizes(saved):
    path, model = saved
    text = describe(path)
    n_parameters = sum(p.numel() for p in model.parameters())
    for expected in ("Cu (Z=29)", "Au (Z=79)", "r_max: 3.5", "float32", "l_max 2",
                     "2 layer(s)", f"{n_parameters:,}", "val_force_mae_meV_per_A: 12.5",
                     "training state: absent", "torch"):  # fmt: skip
        assert expected in text, expected


def test_foreign_files_are_refused_clearly(tmp_path, saved):
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a model\n")
    with pytest.raises(CheckpointError, match="not an allegro-deploy checkpoint.*text file"):
        load_checkpoint(text)

    random_bytes = tmp_path / "random.bin"
    random_bytes.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not an allegro-deploy checkpoint.*binary"):
        load_checkpoint(random_bytes)

    pickled = tmp_path / "model.pt"
    torch.save(saved[1].state_dict(), pickled)
    with pytest.raises(CheckpointError, match="not an allegro-deploy checkpoint.*torch.save"):
        load_checkpoint(pickled)

    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"weight": torch.zeros(3)}, plain)
    with pytest.raises(CheckpointError, match="not an allegro-deploy.*safetensors file"):
        load_checkpoint(plain)

    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_newer_format_version_is_named(tmp_path, saved):
    path, _ = saved
    tensors = safetensors.torch.load_file(path)
    with safetensors.safe_open(path, "pt") as file:
        header = json.loads(file.metadata()["allegro_deploy"])
    header["format_version"] = FORMAT_VERSION + 1
    newer = tmp_path / "newer.safetensors"
    safetensors.torch.save_file(tensors, newer, metadata={"allegro_deploy": json.dumps(header)})
    with pytest.raises(
        CheckpointError, match=rf"format version {FORMAT_VERSION + 1}.*reads format version 1"
    ):
        load_checkpoint(newer)


def test_truncated_and_corrupted_files_say_so(tmp_path, saved):
    data = saved[0].read_bytes()
    damaged = tmp_path / "damaged.safetensors"
    for length in (len(data) - 100, 200):
        damaged.write_bytes(data[:length])
        with pytest.raises(CheckpointError, match="truncated"):
            load_checkpoint(damaged)
    damaged.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="only 5 bytes"):
        load_checkpoint(damaged)

    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    damaged.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(damaged)


def test_describe_leaves_out_unset_options(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    save_checkpoint(
        path,
        AllegroModel(ModelConfig(species=("Cu",), r_max=4.0)),
        provenance={"config": {"data": {"train_file": "cu.extxyz", "val_file": None}}},
    )
    text = describe(path)
    assert "train_file: cu.extxyz" in text and "val_file" not in text
