"""The runtime works on a machine without torch, e3nn or the training/export code."""

import subprocess
import sys

BLOCKED = ("torch", "e3nn", "allegro_deploy.models", "allegro_deploy.exporters")

SCRIPT = f"""
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if any(name == blocked or name.startswith(blocked + ".") for blocked in {BLOCKED!r}):
            raise ImportError(f"{{name}} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())

import allegro_deploy.runtime
import allegro_deploy.runtime.neighbors
import allegro_deploy.runtime.validation
from allegro_deploy.runtime.neighbors import neighbor_list

edges = neighbor_list([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], [[0.0] * 3] * 3, False, 2.0)
assert edges.centers.tolist() == [0, 1]
loaded = [name for name in sys.modules if name.split(".")[0] in ("torch", "e3nn")]
assert not loaded, loaded
"""


def test_runtime_imports_without_torch() -> None:
    result = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
