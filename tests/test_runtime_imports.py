"""The runtime works on a machine without torch, e3nn or the training/export code."""

import json
import subprocess
import sys

import pytest
from exported_models import copper, exported, small_model

from allegro_deploy.models import AtomicGraph

BLOCKED = ("torch", "e3nn", "allegro_deploy.models", "allegro_deploy.exporters")

SCRIPT = f"""
import json
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == blocked or name.startswith(blocked + ".") for blocked in {BLOCKED!r}):
            raise ImportError(f"{{name}} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())

import ase.build
import numpy as np

import allegro_deploy.runtime
import allegro_deploy.runtime.backends
import allegro_deploy.runtime.calculator
import allegro_deploy.runtime.md
import allegro_deploy.runtime.metadata
import allegro_deploy.runtime.neighbors
import allegro_deploy.runtime.potential
import allegro_deploy.runtime.validation
from allegro_deploy.runtime import AllegroCalculator, Potential
from allegro_deploy.runtime.md import run_md
from allegro_deploy.runtime.neighbors import neighbor_list

edges = neighbor_list([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [[0.0] * 3] * 3, False, 2.0)
assert edges.centers.tolist() == [0, 1]

model_path, expected = sys.argv[1], json.loads(sys.argv[2])
atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
atoms.positions = np.array(expected["positions"])
result = Potential.load(model_path, "cpu", threads=1).evaluate(atoms)
assert abs(result.energy - expected["energy"]) <= 1e-10 * abs(expected["energy"]), result.energy
assert np.abs(result.forces - np.array(expected["forces"])).max() <= 1e-10, result.forces
report = run_md(atoms, AllegroCalculator(model_path, "cpu"), steps=2, interval=1, progress=False)
assert np.isfinite(report.total_energies).all()

loaded = [name for name in sys.modules if name.split(".")[0] in ("torch", "e3nn")]
assert not loaded, loaded
"""


def test_runtime_imports_and_evaluates_without_torch(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    path = exported(tmp_path_factory, "float64")
    atoms = copper(1, rattle=0.05)
    model = small_model()
    graph = AtomicGraph.from_atoms([atoms], model.config.atomic_numbers, model.config.r_max)
    output = model(graph)
    expected = {
        "positions": atoms.positions.tolist(),
        "energy": output["energy"].item(),
        "forces": output["forces"].tolist(),
    }
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(path), json.dumps(expected)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr


CLI = """
import sys

BLOCKED = ("torch", "e3nn", "onnx", "onnxscript")

class Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Block())
from allegro_deploy.cli import main
sys.argv = ["allegro-deploy", *sys.argv[1:]]
main()
"""


def cli_without_torch_or_onnx(*args: str) -> subprocess.CompletedProcess[str]:
    """``allegro-deploy ARGS`` where torch, e3nn, onnx and onnxscript cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", CLI, *args], capture_output=True, text=True, timeout=600
    )


def test_commands_on_an_onnx_file_run_without_torch_or_onnx(
    tmp_path_factory: pytest.TempPathFactory, tmp_path
) -> None:
    import ase.io
    from ase.calculators.emt import EMT

    path = exported(tmp_path_factory, "float64")
    frames = []
    for seed in range(3):
        atoms = copper(2, rattle=0.05, seed=seed)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    data = tmp_path / "data.extxyz"
    ase.io.write(data, frames)

    info = cli_without_torch_or_onnx("info", str(path))
    assert info.returncode == 0, info.stderr
    assert (
        "target: structures" in info.stdout
        and "pip install 'allegro-deploy[export]'" in info.stdout
    )
    md = cli_without_torch_or_onnx("md", str(path), str(data), "--steps", "3", "--threads", "1")
    assert md.returncode == 0 and "3 steps of 32 atoms" in md.stdout, md.stderr
    evaluate = cli_without_torch_or_onnx(
        "evaluate", str(path), str(data), "--out", str(tmp_path / "e")
    )
    assert evaluate.returncode == 0 and (tmp_path / "e" / "parity.png").exists(), evaluate.stderr
    check = cli_without_torch_or_onnx(
        "check", str(path), "--data", str(data), "--md-steps", "2", "--out", str(tmp_path / "c")
    )
    assert check.returncode == 0 and (tmp_path / "c" / "report.json").exists(), check.stderr
    bench = cli_without_torch_or_onnx(
        "bench", str(path), "--sizes", "32", "--molecules", "2", "--repeats", "1",
        "--threads", "1", "--no-memory", "--out", str(tmp_path / "b"),
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    report = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert report["implementations"] == ["ort-cpu"]
    assert all(row["floor_fraction"] > 0 for row in report["rows"])
    assert "needs a checkpoint, not an .onnx export" in report["unavailable"]["torch"]
    assert "pip install 'allegro-deploy[openvino]'" in bench.stdout  # printed as it is


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["export", "model.safetensors", "-o", "x.onnx"], "export"),
        (["train", "train.yaml"], "train"),
        (["bench", "model.safetensors", "--no-memory"], "train"),
    ],  # fmt: skip
)
def test_commands_that_need_an_extra_name_it_in_one_line(tmp_path, args, extra) -> None:
    for name in ("model.safetensors", "train.yaml", "model.onnx"):
        (tmp_path / name).write_text("data: {train_file: x}\nmodel: {r_max: 4.0}\n")
    args = [str(tmp_path / a) if (tmp_path / a).exists() else a for a in args]
    result = cli_without_torch_or_onnx(*args)
    assert result.returncode == 1
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert f"pip install 'allegro-deploy[{extra}]'" in line, result.stderr
    assert "Traceback" not in result.stderr
