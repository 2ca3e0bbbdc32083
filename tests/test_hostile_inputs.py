"""A catalogue of bad, hostile and unusual inputs, through the Python API and the CLI.

Every case asserts its exact outcome: a correct result, or an error of the package's own
types (``ValueError`` and its subclasses, ``FileNotFoundError``, ``ConnectionError``,
``TimeoutError``) whose one-line message names the file, option or structure and the
problem. No case may destroy a file, hang (huge inputs run under a time limit), return
NaN or end in a library's traceback. Classes: structures, runtime arguments, model files,
checkpoints, training configurations, structure and data files, output safety, i-PI
peers, huge inputs and command-line options.
"""

from __future__ import annotations

import json
import math
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import ase
import ase.build
import ase.io
import numpy as np
import pytest
import yaml
from ase.calculators.singlepoint import SinglePointCalculator
from click.testing import CliRunner
from exported_models import exported, small_model

from allegro_deploy.cli import main
from allegro_deploy.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from allegro_deploy.models.config import ConfigError
from allegro_deploy.models.train import TrainConfig, TrainingError, train
from allegro_deploy.runtime.calculator import AllegroCalculator
from allegro_deploy.runtime.ipi import Address, IPIClient, IPIProtocolError
from allegro_deploy.runtime.metadata import MetadataError, ModelMetadata, read_metadata
from allegro_deploy.runtime.potential import Potential, Structure

ERRORS = (ValueError, FileNotFoundError, ConnectionError, TimeoutError)
"""What a user's bad input may raise: the package's error types all derive from these."""


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small float64 Cu/O model's ``structures`` export."""
    return exported(tmp_path_factory, "float64")


@pytest.fixture(scope="module")
def potential(model_file: Path) -> Potential:
    return Potential.load(model_file, "cpu", threads=1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checkpoint") / "model.safetensors"
    save_checkpoint(path, small_model())
    return path


def refused(run: Callable[[], Any], *fragments: str) -> str:
    """Run ``run``, which must fail with one of :data:`ERRORS` whose single-line message
    holds every fragment; returns the message."""
    with pytest.raises(ERRORS) as caught:
        run()
    message = str(caught.value)
    assert "\n" not in message.strip(), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def cli_refused(args: list[str], *fragments: str) -> str:
    """The CLI run with ``args`` must exit 1 with a one-line error holding the fragments."""
    result = CliRunner().invoke(main, args)
    output = result.output
    assert result.exit_code != 0, output
    assert (
        "Traceback" not in output
        and result.exception is None
        or isinstance(result.exception, SystemExit)
    ), output
    errors = [line for line in output.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], (fragment, output)
    return errors[0]


def copper(repeat: int = 2) -> ase.Atoms:
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=1)
    return atoms


# --------------------------------------------------------------------------- structures


def _with(change: Callable[[ase.Atoms], Any]) -> ase.Atoms:
    atoms = copper()
    change(atoms)
    return atoms


def _set_position(atoms: ase.Atoms, index: int, value: Any) -> None:
    positions = atoms.positions
    positions[index] = value
    atoms.positions = positions


BAD_STRUCTURES: dict[str, tuple[Callable[[], Any], tuple[str, ...]]] = {
    "NaN position": (
        lambda: _with(lambda a: _set_position(a, 3, [np.nan, 0, 0])),
        ("non-finite positions", "atom 3"),
    ),
    "infinite position": (
        lambda: _with(lambda a: _set_position(a, 0, [np.inf, 0, 0])),
        ("non-finite positions", "atom 0"),
    ),
    "coincident atoms": (
        lambda: _with(lambda a: _set_position(a, 1, a.positions[0])),
        ("atoms 0 and 1", "closer than min_distance"),
    ),
    "atoms 0.1 Å apart": (
        lambda: _with(lambda a: _set_position(a, 1, a.positions[0] + [0.1, 0, 0])),
        ("0.1 Å apart",),
    ),
    "singular cell": (
        lambda: _with(lambda a: a.set_cell([[3.6, 0, 0], [7.2, 0, 0], [0, 0, 3.6]])),
        ("singular along periodic direction",),
    ),
    "zero cell": (
        lambda: _with(lambda a: a.set_cell(np.zeros((3, 3)))),
        ("singular along periodic direction",),
    ),
    "NaN cell": (
        lambda: _with(lambda a: a.set_cell(np.diag([np.nan, 7.2, 7.2]))),
        ("cell has non-finite entries",),
    ),
    "unknown element": (
        lambda: _with(lambda a: a.numbers.__setitem__(2, 79)),
        ("unknown species Au",),
    ),
    "atomic number 0": (
        lambda: Structure(np.zeros((1, 3)), [0]),
        ("atomic number 0 is not an element",),
    ),
    "negative atomic number": (
        lambda: Structure(np.zeros((1, 3)), [-29]),
        ("atomic number -29 is not an element",),
    ),
    "atomic number 29.5": (
        lambda: Structure(np.zeros((1, 3)), [29.5]),
        ("atomic numbers must be whole numbers", "29.5"),
    ),
    "atomic number 2**40": (
        lambda: Structure(np.zeros((1, 3)), [2**40]),
        ("atomic number 1099511627776 is not an element",),
    ),
    "atomic number 119": (
        lambda: Structure(np.zeros((1, 3)), [119]),
        ("atomic number 119 is not an element",),
    ),
    "atomic numbers as text": (
        lambda: Structure(np.zeros((1, 3)), ["Cu"]),
        ("atomic numbers must be whole numbers",),
    ),
    "positions of shape (4, 2)": (
        lambda: Structure(np.zeros((4, 2)), [29] * 4),
        ("positions must have shape (N, 3)",),
    ),
    "fewer numbers than atoms": (
        lambda: Structure(np.zeros((4, 3)), [29] * 3),
        ("atomic_numbers must have shape (4,)",),
    ),
    "cell of shape (2, 2)": (
        lambda: Structure(np.zeros((1, 3)), [29], np.eye(2), True),
        ("cell must have shape (3, 3)",),
    ),
}


@pytest.mark.parametrize("name", list(BAD_STRUCTURES))
def test_structure_is_refused(potential: Potential, name: str) -> None:
    make, fragments = BAD_STRUCTURES[name]
    refused(lambda: potential.evaluate(make()), *fragments)


ODD_BUT_FINE: dict[str, Callable[[], ase.Atoms]] = {
    "single atom": lambda: ase.Atoms("Cu", positions=[[0, 0, 0]]),
    "two atoms out of reach": lambda: ase.Atoms("CuO", positions=[[0, 0, 0], [0, 0, 9]]),
    "single atom in a periodic cell": lambda: ase.Atoms("Cu", cell=np.eye(3) * 2.5, pbc=True),
    "cell smaller than the cutoff": lambda: copper(1),
    "slab with a zero vacuum vector": lambda: ase.Atoms(
        "Cu2", positions=[[0, 0, 0], [1.8, 1.8, 0]], cell=[3.6, 3.6, 0], pbc=[True, True, False]
    ),
    "atoms far outside the cell": lambda: _with(lambda a: a.translate([1e3, -2e3, 5e2])),
    "left-handed cell": lambda: _with(lambda a: a.set_cell(-a.cell.array, scale_atoms=True)),
    "molecule far from the origin": lambda: ase.Atoms(
        "CuO", positions=[[1e5, 1e5, 1e5], [1e5 + 1.9, 1e5, 1e5]]
    ),
}


@pytest.mark.parametrize("name", list(ODD_BUT_FINE))
def test_unusual_structure_is_evaluated(potential: Potential, name: str) -> None:
    atoms = ODD_BUT_FINE[name]()
    result = potential.evaluate(atoms)
    assert math.isfinite(result.energy) and np.isfinite(result.forces).all()
    assert np.abs(result.forces.sum(axis=0)).max() < 1e-9  # no net force
    if atoms.pbc.all():
        assert np.isfinite(result.stress).all()


def test_empty_structure_has_zero_energy(potential: Potential) -> None:
    result = potential.evaluate(ase.Atoms(cell=np.eye(3) * 5, pbc=True))
    assert result.energy == 0.0 and result.forces.shape == (0, 3)


def test_translated_structure_gives_the_same_energy(potential: Potential) -> None:
    atoms = copper()
    moved = atoms.copy()
    moved.translate([123.4, -56.7, 8.9])
    assert abs(potential.evaluate(moved).energy - potential.evaluate(atoms).energy) < 1e-9


# --------------------------------------------------------------------------- runtime arguments


BAD_LOAD_ARGUMENTS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "min_distance 0": ({"min_distance": 0.0}, ("min_distance must be a positive number",)),
    "negative min_distance": ({"min_distance": -1.0}, ("min_distance must be a positive",)),
    "NaN min_distance": ({"min_distance": math.nan}, ("min_distance must be a positive",)),
    "edge_budget 0": ({"edge_budget": 0}, ("edge_budget must be an integer >= 1",)),
    "edge_budget 1.5": ({"edge_budget": 1.5}, ("edge_budget must be an integer >= 1",)),
    "threads 0": ({"threads": 0}, ("threads must be >= 1",)),
    "unknown backend": ({"backend": "gpu"}, ("unknown backend 'gpu'",)),
}


@pytest.mark.parametrize("name", list(BAD_LOAD_ARGUMENTS))
def test_load_argument_is_refused(model_file: Path, name: str) -> None:
    arguments, fragments = BAD_LOAD_ARGUMENTS[name]
    arguments = {"backend": "cpu", **arguments}
    refused(lambda: Potential.load(model_file, **arguments), *fragments)


def test_coincident_atoms_never_give_nan_at_the_smallest_min_distance(model_file: Path) -> None:
    potential = Potential.load(model_file, "cpu", min_distance=1e-6)
    atoms = _with(lambda a: _set_position(a, 1, a.positions[0]))
    refused(lambda: potential.evaluate(atoms), "atoms 0 and 1", "closer than min_distance")


def test_calculator_refuses_a_structures_file_that_is_missing(tmp_path: Path) -> None:
    refused(lambda: AllegroCalculator(tmp_path / "absent.onnx"), "absent.onnx")


# --------------------------------------------------------------------------- model files


def _metadata_variant(model_file: Path, folder: Path, **changes: str) -> Path:
    """A copy of ``model_file`` whose metadata entries are replaced by ``changes``."""
    import onnx

    proto = onnx.load(model_file)
    props = {p.key: p.value for p in proto.metadata_props} | changes
    onnx.helper.set_model_props(proto, props)
    path = folder / "variant.onnx"
    onnx.save(proto, path)
    return path


BAD_METADATA: dict[str, tuple[dict[str, str], tuple[str, ...]]] = {
    "r_max NaN": ({"r_max": "nan"}, ("r_max must be a positive number",)),
    "r_max negative": ({"r_max": "-4.0"}, ("r_max must be a positive number",)),
    "r_max text": ({"r_max": "four"}, ("incomplete or invalid metadata",)),
    "r_max 1e7 with 4 Å pair cutoffs": ({"r_max": "1e7"}, None),
    "pair cutoff beyond r_max": (
        {"pair_cutoffs": "[[5.0, 4.0], [4.0, 4.0]]"},
        ("every pair cutoff must be in (0, r_max",),
    ),
    "species and numbers disagree": (
        {"atomic_numbers": "[29]"},
        ("species, atomic_numbers and pair_cutoffs disagree",),
    ),
    "energy shift infinite": (
        {"energy_shifts": "[Infinity, 0.0]"},
        ("energy_shifts must be finite",),
    ),
    "unknown target": ({"target": "atoms"}, ("unknown target 'atoms'",)),
    "unknown dtype": ({"dtype": "float16"}, ("unknown dtype 'float16'",)),
    "unknown precision": ({"precision": "fp8"}, ("unknown precision 'fp8'",)),
    "format version 99": ({"format_version": "99"}, ("format version 99", "upgrade")),
    "format version text": ({"format_version": "two"}, ("invalid format_version 'two'",)),
    "foreign format": ({"format": "other"}, ("not an allegro-deploy model file",)),
    "float64 flag text": ({"float64": "maybe"}, ("float64 = 'maybe'",)),
    "inputs not JSON": ({"inputs": "{"}, ("incomplete or invalid metadata",)),
}


@pytest.mark.parametrize("name", list(BAD_METADATA))
def test_model_file_metadata_is_checked_before_any_work(
    model_file: Path, tmp_path: Path, name: str
) -> None:
    changes, fragments = BAD_METADATA[name]
    path = _metadata_variant(model_file, tmp_path, **changes)
    if fragments is None:  # valid: the neighbor list stops at the pair cutoffs, in time
        start = time.perf_counter()
        result = Potential.load(path, "cpu").evaluate(copper())
        assert math.isfinite(result.energy) and time.perf_counter() - start < 30
        return
    refused(lambda: Potential.load(path, "cpu"), str(path), *fragments)


FOREIGN_MODEL_FILES: dict[str, tuple[bytes, tuple[str, ...]]] = {
    "empty file": (b"", ("not an allegro-deploy model file",)),
    "random bytes": (bytes(range(256)) * 8, ("not an ONNX file",)),
    "text": (b"hello world\n", ("not an ONNX file",)),
    "JSON": (b'{"format": "allegro-deploy-onnx"}', ("not an ONNX file",)),
}


@pytest.mark.parametrize("name", list(FOREIGN_MODEL_FILES))
def test_foreign_model_file_is_refused(tmp_path: Path, name: str) -> None:
    content, fragments = FOREIGN_MODEL_FILES[name]
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    refused(lambda: Potential.load(path, "cpu"), str(path), *fragments)


def test_truncated_model_file_is_refused(model_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "truncated.onnx"
    path.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 2])
    refused(lambda: Potential.load(path, "cpu"), str(path))


def test_missing_model_file_is_named(tmp_path: Path) -> None:
    refused(lambda: Potential.load(tmp_path / "absent.onnx", "cpu"), "absent.onnx")


def test_model_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model.onnx"
    folder.mkdir()
    refused(lambda: read_metadata(folder), "model.onnx is a directory")


# --------------------------------------------------------------------------- checkpoints


def _header_variant(checkpoint: Path, folder: Path, change: Callable[[dict], None]) -> Path:
    """A copy of ``checkpoint`` with its JSON header changed by ``change``."""
    import safetensors.torch

    from allegro_deploy.models.checkpoint import METADATA_KEY

    data = checkpoint.read_bytes()
    length = int.from_bytes(data[:8], "little")
    metadata = json.loads(data[8 : 8 + length])["__metadata__"]
    header = json.loads(metadata[METADATA_KEY])
    change(header)
    tensors = safetensors.torch.load(data)
    path = folder / "variant.safetensors"
    path.write_bytes(safetensors.torch.save(tensors, {METADATA_KEY: json.dumps(header)}))
    return path


BAD_HEADERS: dict[str, tuple[Callable[[dict], None], tuple[str, ...]]] = {
    "config lacks species": (
        lambda h: h["config"].pop("species"),
        ("invalid model configuration",),
    ),
    "header lacks the config": (lambda h: h.pop("config"), ("header lacks ['config']",)),
    "header lacks statistics": (lambda h: h.pop("statistics"), ("header lacks ['statistics']",)),
    "more layers than weights": (
        lambda h: h["config"].update(num_layers=3),
        ("weights do not fit its model configuration",),
    ),
    "wider than its weights": (
        lambda h: h["config"].update(num_scalar_features=32),
        ("weights do not fit its model configuration",),
    ),
    "negative r_max": (
        lambda h: h["config"].update(r_max=-4.0),
        ("invalid model configuration", "r_max"),
    ),
    "format version 99": (lambda h: h.update(format_version=99), ("format version 99",)),
    "format version text": (lambda h: h.update(format_version="1"), ("format_version is '1'",)),
    "checksum altered": (lambda h: h.update(tensor_sha256="0" * 64), ("checksum",)),
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_checkpoint_header_and_tensors_are_checked(
    checkpoint: Path, tmp_path: Path, name: str
) -> None:
    change, fragments = BAD_HEADERS[name]
    path = _header_variant(checkpoint, tmp_path, change)
    refused(lambda: load_checkpoint(path), str(path), *fragments)


def test_checkpoint_of_random_bytes_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(bytes(range(256)) * 4)
    refused(lambda: load_checkpoint(path), str(path), "not an allegro-deploy checkpoint")


def test_truncated_checkpoint_is_refused(checkpoint: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(checkpoint.read_bytes()[:-100])
    refused(lambda: load_checkpoint(path), str(path), "truncated")


def test_export_of_a_broken_checkpoint_is_one_line(checkpoint: Path, tmp_path: Path) -> None:
    path = _header_variant(checkpoint, tmp_path, lambda h: h["config"].update(num_layers=3))
    cli_refused(["export", str(path), "-o", str(tmp_path / "out.onnx")], "weights do not fit")
    assert not (tmp_path / "out.onnx").exists()


# --------------------------------------------------------------------------- configurations


def _config(**sections: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = {"data": {"train_file": "data.extxyz"}, "model": {"r_max": 4.0}}
    for name, values in sections.items():
        config.setdefault(name, {}).update(values)
    return config


BAD_CONFIGS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "num_layers text": (
        _config(model={"num_layers": "two"}),
        ("num_layers must be an integer >= 1", "'two'"),
    ),
    "l_max 1.5": (_config(model={"l_max": 1.5}), ("l_max must be an integer >= 0", "1.5")),
    "l_max negative": (_config(model={"l_max": -1}), ("l_max must be an integer >= 0", "-1")),
    "num_layers 0": (_config(model={"num_layers": 0}), ("num_layers must be an integer >= 1", "0")),
    "negative features": (
        _config(model={"num_scalar_features": -8}),
        ("num_scalar_features must be an integer >= 1", "-8"),
    ),
    "r_max NaN": (_config(model={"r_max": math.nan}), ("r_max must be a positive number",)),
    "r_max text": (_config(model={"r_max": "four"}), ("r_max must be a positive number", "four")),
    "r_max negative": (_config(model={"r_max": -3.0}), ("r_max must be a positive number",)),
    "r_max zero": (_config(model={"r_max": 0}), ("r_max must be a positive number",)),
    "r_max true": (_config(model={"r_max": True}), ("r_max must be a positive number",)),
    "no r_max": (
        {"data": {"train_file": "data.extxyz"}, "model": {}},
        ("needs r_max",),
    ),
    "species a string": (_config(model={"species": "Cu"}), ("species must be a list",)),
    "species not symbols": (_config(model={"species": ["Cu", "Xx"]}), ("not chemical symbols",)),
    "species duplicated": (_config(model={"species": ["Cu", "Cu"]}), ("duplicates",)),
    "zbl text": (_config(model={"zbl": "yes"}), ("zbl must be true or false",)),
    "parity number": (_config(model={"parity": 1}), ("parity must be true or false",)),
    "avg_num_neighbors negative": (
        _config(model={"avg_num_neighbors": -3}),
        ("avg_num_neighbors must be positive",),
    ),
    "energy scale text": (
        _config(model={"per_type_energy_scales": "big"}),
        ("per_type_energy_scales must be a number",),
    ),
    "odd embedding": (
        _config(model={"radial_chemical_embed_dim": 7}),
        ("radial_chemical_embed_dim must be even",),
    ),
    "unknown dtype": (_config(model={"model_dtype": "float16"}), ("model_dtype must be one of",)),
    "unknown nonlinearity": (
        _config(model={"readout_mlp_nonlinearity": "relu6"}),
        ("'relu6' is not one of",),
    ),
    "unknown model option": (_config(model={"r_cut": 4.0}), ("unknown option(s) ['r_cut']",)),
    "epochs true": (_config(training={"epochs": True}), ("training.epochs must be an integer",)),
    "epochs 2.5": (_config(training={"epochs": 2.5}), ("training.epochs must be an integer",)),
    "epochs 0": (_config(training={"epochs": 0}), ("invalid training option(s) ['epochs']",)),
    "learning rate text": (
        _config(training={"learning_rate": "fast"}),
        ("training.learning_rate must be a finite number",),
    ),
    "learning rate infinite": (
        _config(training={"learning_rate": math.inf}),
        ("training.learning_rate must be a finite number",),
    ),
    "negative weight": (
        _config(training={"force_weight": -1.0}),
        ("invalid training option(s) ['force_weight']",),
    ),
    "zero weights": (
        _config(training={"energy_weight": 0, "force_weight": 0}),
        ("cannot both be zero",),
    ),
    "ema decay 1": (_config(training={"ema_decay": 1.0}), ("['ema_decay']",)),
    "unknown training option": (_config(training={"epoch": 3}), ("unknown option(s) ['epoch']",)),
    "unknown section": (_config(optimizer={"lr": 1}), ("unknown section(s) ['optimizer']",)),
    "section a list": ({"data": {"train_file": "x"}, "model": [1]}, ("must be a mapping",)),
    "no data section": ({"model": {"r_max": 4.0}}, ("needs a 'data' section",)),
    "data without train_file": (
        {"data": {"val_fraction": 0.1}, "model": {"r_max": 4.0}},
        ("section 'data' needs ['train_file']",),
    ),
    "train_file a number": (
        {"data": {"train_file": 3}, "model": {"r_max": 4.0}},
        ("data.train_file must be a string",),
    ),
    "config a list": ([1, 2], ("a training configuration is a mapping",)),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_training_configuration_is_checked_before_any_work(name: str) -> None:
    config, fragments = BAD_CONFIGS[name]
    refused(lambda: TrainConfig.from_dict(config), *fragments)


def test_absurd_cutoff_is_refused_in_seconds(tmp_path: Path) -> None:
    data = tmp_path / "data.extxyz"
    atoms = copper()
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
    ase.io.write(data, [atoms] * 4)
    config = _config(data={"train_file": str(data)}, model={"r_max": 1.0e4})
    config["output"] = {"directory": str(tmp_path / "run")}
    start = time.perf_counter()
    refused(lambda: train(config), "cutoff of 10000 Å", "neighbor pairs")
    assert time.perf_counter() - start < 30


def test_config_file_that_is_not_yaml_is_named(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("data: [unclosed\n")
    cli_refused(["train", str(path)], str(path), "not valid YAML")


def test_config_error_names_the_file_and_the_option(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(_config(model={"r_max": "four"})))
    cli_refused(["train", str(path)], str(path), "r_max must be a positive number")


# --------------------------------------------------------------------------- structure files


STRUCTURE_FILES: dict[str, tuple[bytes, str, tuple[str, ...]]] = {
    "empty extxyz": (b"", "start.extxyz", ("start.extxyz",)),
    "random bytes": (bytes(range(128, 256)) * 4, "start.extxyz", ("cannot read", "start.extxyz")),
    "truncated extxyz": (
        b"5\nProperties=species:S:1:pos:R:3\nCu 0 0 0\n",
        "start.extxyz",
        ("cannot read", "start.extxyz"),
    ),  # fmt: skip
    "text where numbers belong": (
        b"1\nProperties=species:S:1:pos:R:3\nCu x 0 0\n",
        "start.extxyz",
        ("cannot read", "start.extxyz"),
    ),
    "unknown format": (b"whatever", "start.unknownformat", ("cannot read", "start.unknownformat")),
    "zero atoms": (b"0\nProperties=species:S:1:pos:R:3\n", "start.extxyz", ("has no atoms",)),
}


@pytest.mark.parametrize("name", list(STRUCTURE_FILES))
@pytest.mark.parametrize("command", ["md", "ipi"])
def test_structure_file_errors_name_the_file(
    model_file: Path, tmp_path: Path, name: str, command: str
) -> None:
    content, filename, fragments = STRUCTURE_FILES[name]
    path = tmp_path / filename
    path.write_bytes(content)
    args = [command, str(model_file), str(path), "--steps", "2"]
    if command == "ipi":
        args = [command, str(model_file), "--structure", str(path), "--address", "unix:x"]
    cli_refused(args, *fragments)


def test_md_of_a_single_atom_runs(model_file: Path, tmp_path: Path) -> None:
    path = tmp_path / "one.extxyz"
    ase.io.write(path, ase.Atoms("Cu", cell=np.eye(3) * 3.0, pbc=True))
    result = CliRunner().invoke(main, ["md", str(model_file), str(path), "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert "nan" not in result.output.lower()


def test_check_of_data_with_an_unknown_element_names_the_frame(
    checkpoint: Path, tmp_path: Path
) -> None:
    path = tmp_path / "data.extxyz"
    ase.io.write(path, [copper(), ase.build.bulk("Au", "fcc", a=4.08)])
    cli_refused(
        ["check", str(checkpoint), "--data", str(path), "--out", str(tmp_path / "out")],
        "frame 1",
        "element Au is not among the model's species",
    )


# --------------------------------------------------------------------------- output safety


def test_export_never_writes_over_its_checkpoint(checkpoint: Path, tmp_path: Path) -> None:
    copy = tmp_path / "model.safetensors"
    copy.write_bytes(checkpoint.read_bytes())
    cli_refused(["export", str(copy), "-o", str(copy)], str(copy))
    assert copy.read_bytes() == checkpoint.read_bytes()


def test_md_trajectory_never_writes_over_the_start_structure(
    model_file: Path, tmp_path: Path
) -> None:
    start = tmp_path / "start.extxyz"
    ase.io.write(start, copper())
    before = start.read_bytes()
    cli_refused(["md", str(model_file), str(start), "--steps", "2", "--trajectory", str(start)],
                str(start))  # fmt: skip
    assert start.read_bytes() == before


def _training_data(folder: Path) -> Path:
    data = folder / "data.extxyz"
    frames = []
    for seed in range(8):
        atoms = copper(1)
        atoms.rattle(0.05, seed=seed)
        atoms.calc = SinglePointCalculator(
            atoms, energy=-3.5 * len(atoms) + 0.01 * seed, forces=np.zeros((len(atoms), 3))
        )
        frames.append(atoms)
    ase.io.write(data, frames)
    return data


def test_training_never_replaces_another_runs_checkpoint(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.safetensors").write_bytes(b"someone's model")
    config = _config(data={"train_file": str(_training_data(tmp_path))},
                     training={"epochs": 1, "max_time_minutes": 1})  # fmt: skip
    config["output"] = {"directory": str(run)}
    refused(lambda: train(config), str(run), "best.safetensors", "--overwrite")
    assert (run / "best.safetensors").read_bytes() == b"someone's model"


def test_resume_from_another_run_never_touches_this_one(tmp_path: Path) -> None:
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    run_b.mkdir()
    (run_b / "metrics.csv").write_text("B's metrics")
    config = _config(data={"train_file": str(_training_data(tmp_path))})
    config["output"] = {"directory": str(run_b)}
    refused(lambda: train(config, resume=run_a / "last.safetensors"), "continues the run in")
    assert (run_b / "metrics.csv").read_text() == "B's metrics"


def test_info_writes_nothing(model_file: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in model_file.parent.iterdir())
    result = CliRunner().invoke(main, ["info", str(model_file)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in model_file.parent.iterdir()) == before


# --------------------------------------------------------------------------- i-PI peers


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Address, list[bytes], threading.Thread]]:
    """A UNIX socket an i-PI imitation behind :func:`serve` listens on."""
    path = tmp_path / "ipi.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    script: list[bytes] = []

    def run() -> None:
        connection, _ = listener.accept()
        with connection:
            for chunk in script:
                connection.sendall(chunk)
            time.sleep(0.5)

    thread = threading.Thread(target=run, daemon=True)
    yield Address(socket.AF_UNIX, str(path)), script, thread
    listener.close()


def _message(name: str) -> bytes:
    return name.encode().ljust(12)


def _posdata(n_atoms: int, positions: np.ndarray | None = None) -> bytes:
    cell = (np.eye(3) * 7.2 / 0.529177210903).T.tobytes()
    body = cell + np.linalg.inv(np.eye(3) * 7.2).tobytes() + struct.pack("<i", n_atoms)
    return _message("POSDATA") + body + (positions.tobytes() if positions is not None else b"")


IPI_PEERS: dict[str, tuple[list[bytes], type[Exception], str]] = {
    "2**31 - 1 atoms announced": (
        [_message("STATUS"), _posdata(2**31 - 1)],
        IPIProtocolError,
        "i-PI sent 2147483647 atoms",
    ),  # fmt: skip
    "-5 atoms announced": (
        [_message("STATUS"), _posdata(-5)],
        IPIProtocolError,
        "i-PI sent -5 atoms",
    ),  # fmt: skip
    "unknown message": ([_message("HELLO")], IPIProtocolError, "unexpected i-PI message"),
    "forces before positions": ([_message("GETFORCE")], IPIProtocolError, "before sending"),
    "closes mid-message": (
        [_message("STATUS"), _message("POSDATA")[:12] + b"\0" * 10],
        ConnectionError,
        "lost the i-PI server",
    ),  # fmt: skip
    "closes at once": ([], ConnectionError, "lost the i-PI server"),
}


@pytest.mark.parametrize("name", list(IPI_PEERS))
def test_misbehaving_ipi_server_is_reported(potential: Potential, server, name: str) -> None:
    address, script, thread = server
    messages, error, fragment = IPI_PEERS[name]
    script.extend(messages)
    thread.start()
    client = IPIClient(potential, copper().numbers, [True] * 3, timeout=5.0)
    with pytest.raises(error, match=fragment):
        client.serve(address, wait=2.0)


def test_unresolvable_ipi_host_is_one_line(potential: Potential) -> None:
    client = IPIClient(potential, [29], [False] * 3)
    refused(lambda: client.serve("no-such-host.invalid:31415", wait=0.0), "cannot resolve")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("unix:", "names no socket"),
        ("localhost", "HOST:PORT"),
        ("localhost:x", "HOST:PORT"),
        ("localhost:70000", "HOST:PORT"),
        (":31415", "HOST:PORT"),
    ],
)
def test_bad_ipi_address_is_named(text: str, fragment: str) -> None:
    refused(lambda: Address.parse(text), fragment)


# --------------------------------------------------------------------------- huge inputs


def test_a_hundred_thousand_atoms_in_a_small_box_are_refused_quickly(potential: Potential) -> None:
    rng = np.random.default_rng(0)
    atoms = ase.Atoms("Cu" * 100_000, positions=rng.uniform(0, 10, (100_000, 3)), cell=[10] * 3,
                      pbc=True)  # fmt: skip
    start = time.perf_counter()
    refused(lambda: potential.evaluate(atoms), "neighbor pairs", "100 atoms/Å³")
    assert time.perf_counter() - start < 60


def test_a_cell_of_a_thousandth_of_an_angstrom_is_refused_quickly(potential: Potential) -> None:
    atoms = ase.Atoms("Cu", cell=np.eye(3) * 1e-3, pbc=True)
    start = time.perf_counter()
    refused(lambda: potential.evaluate(atoms), "neighbor pairs")
    assert time.perf_counter() - start < 10


# --------------------------------------------------------------------------- options


CLI_OPTIONS: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "md steps 0": (["--steps", "0"], ("--steps",)),
    "md timestep 0": (["--timestep", "0"], ("--timestep",)),
    "md negative temperature": (["--temperature", "-1"], ("--temperature",)),
    "md threads 0": (["--threads", "0"], ("--threads",)),
    "md unknown backend": (["--backend", "gpu"], ("--backend",)),
    "md unknown ensemble": (["--ensemble", "npt"], ("--ensemble",)),
    "md trajectory of unknown format": (["--trajectory", "out.pdf"], ("trajectory",)),
}


@pytest.mark.parametrize("name", list(CLI_OPTIONS))
def test_md_option_is_checked(model_file: Path, tmp_path: Path, name: str) -> None:
    start = tmp_path / "start.extxyz"
    ase.io.write(start, copper())
    options, fragments = CLI_OPTIONS[name]
    cli_refused(["md", str(model_file), str(start), *options], *fragments)


def test_metadata_round_trip_keeps_the_checks(model_file: Path) -> None:
    meta = read_metadata(model_file)
    assert ModelMetadata.from_props(meta.to_props()) == meta
    refused(lambda: ModelMetadata.from_props({**meta.to_props(), "r_max": "inf"}),
            "r_max must be a positive number")  # fmt: skip
    with pytest.raises(MetadataError):
        ModelMetadata.from_props({})


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError) and issubclass(TrainingError, ValueError)
    assert issubclass(ConfigError, ValueError)
