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
