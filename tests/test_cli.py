"""The allegro-deploy command line."""

import subprocess
import sys
from pathlib import Path

import ase.io
import click
import numpy as np
import pytest
from click.testing import CliRunner

from allegro_deploy import __version__
from allegro_deploy.cli import main


def command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            paths += command_paths(command, (*prefix, name))
        else:
            paths.append((*prefix, name))
    return paths


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


@pytest.mark.parametrize("path", command_paths(main), ids=lambda path: " ".join(path) or "main")
def test_help_on_every_command(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output


def test_expected_commands_exist() -> None:
    assert {" ".join(path) for path in command_paths(main)} >= {
        "data generate",
        "train",
        "info",
        "quickstart",
    }


def test_data_generate_writes_labelled_frames(tmp_path: Path) -> None:
    out = tmp_path / "cu.extxyz"
    args = ["data", "generate", str(out), "--supercell", "1", "1", "2"]
    args += ["--temperatures", "300,900", "--frames", "3", "--interval", "2", "--seed", "1"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "wrote 3 frames" in result.output

    frames = ase.io.read(out, index=":")
    assert len(frames) == 3
    for atoms in frames:
        assert len(atoms) == 8 and set(atoms.get_chemical_symbols()) == {"Cu"}
        assert atoms.get_forces().shape == (8, 3)
        assert atoms.get_stress().shape == (6,)
        assert isinstance(atoms.get_potential_energy(), float)
    volumes = [atoms.get_volume() for atoms in frames]
    assert len(set(volumes)) == 3  # each frame is strained differently

    again = tmp_path / "again.extxyz"
    assert CliRunner().invoke(main, [*args[:2], str(again), *args[3:]]).exit_code == 0
    assert again.read_text() == out.read_text()  # deterministic for a seed


def test_data_generate_alloy(tmp_path: Path) -> None:
    out = tmp_path / "cuau.extxyz"
    args = [
        "data",
        "generate",
        str(out),
        "--alloy",
        "Cu:0.75,Au:0.25",
        "--supercell",
        "1",
        "1",
        "2",
    ]
    result = CliRunner().invoke(main, [*args, "--temperatures", "300", "--frames", "10"])
    assert result.exit_code == 0, result.output
    formulas = [atoms.get_chemical_formula() for atoms in ase.io.read(out, ":")]
    assert formulas[0] == "Cu8" and formulas[5] == "Au8"  # every fifth frame pure, in turn
    assert len(set(formulas)) >= 4  # compositions vary from frame to frame
    mixed = [f for i, f in enumerate(formulas) if i % 5]
    au = [ase.Atoms(f).get_chemical_symbols().count("Au") for f in mixed]
    assert 0 < np.mean(au) < 4  # around the mean fraction 0.25 of 8 atoms


def test_data_generate_rejects_unsupported_element(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["data", "generate", str(tmp_path / "x.extxyz"), "--element", "Fe"]
    )
    assert result.exit_code == 1
    assert "EMT has no fcc parameters for Fe" in result.output
    assert "Al, Cu, Ag, Au, Ni, Pd, Pt" in result.output


def test_import_does_not_load_torch() -> None:
    code = "import sys, allegro_deploy.cli; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bad_input_is_reported_in_one_line_without_traceback(tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("data: {train_file: x.extxyz}\nmodel: {r_max: 4.0, lmax: 1}\n")
    result = CliRunner().invoke(main, ["train", str(config)])
    assert result.exit_code == 1
    assert "unknown option(s) ['lmax'] in section" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("command", "name"), [("export", "model.safetensors"), ("import", "model.ckpt")]
)
def test_a_command_never_writes_over_its_input(tmp_path: Path, command: str, name: str) -> None:
    source = tmp_path / name
    source.write_bytes(b"the user's trained model")
    result = CliRunner().invoke(main, [command, str(source), "-o", str(tmp_path / "." / name)])
    assert result.exit_code == 1
    assert "is also the input file; choose another output file" in result.output
    assert source.read_bytes() == b"the user's trained model"


def test_info_refuses_an_empty_onnx_file(tmp_path: Path) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for args in (["info", str(empty)], ["info", "--tensorrt", str(empty)]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 1 and "is not an ONNX model: it has no graph" in result.output
