"""One home per concept: the file contract and the session factory are defined once."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
SOURCES = [
    path
    for folder in ("allegro_deploy", "exporters", "models", "runtime", "benchmarks")
    for path in sorted((ROOT / folder).rglob("*.py"))
]


def occurrences(pattern: str) -> list[str]:
    """``file:line`` of every match of ``pattern`` in the package and benchmark sources."""
    regex = re.compile(pattern)
    return [
        f"{path.relative_to(ROOT)}:{number}"
        for path in SOURCES
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if regex.search(line)
    ]


def test_one_place_creates_an_onnx_runtime_session() -> None:
    (place,) = occurrences(r"InferenceSession\(")
    assert place.startswith("runtime/backends.py:"), place


def test_the_format_name_and_the_tensor_names_are_written_once() -> None:
    assert occurrences(r'"allegro-deploy-onnx"') == occurrences(r'^FORMAT = "allegro-deploy-onnx"')
    assert occurrences(r'^FORMAT = "allegro-deploy-onnx"')[0].startswith("runtime/metadata.py:")
    for name in (
        "edge_vectors",
        "n_local",
        "n_structures",
        "atomic_virials",
        "atomic_energies_unshifted",
        "pair_forces",
    ):
        places = occurrences(rf'"{name}"')
        assert all(place.startswith("runtime/metadata.py:") for place in places), (name, places)


def test_labelled_data_reads_without_torch(tmp_path: Path) -> None:
    """``models.labels`` (shared by training and check) needs no torch, so commands that
    read labelled data for an .onnx model run on a runtime-only install."""
    code = (
        "import sys, ase.build, ase.io\n"
        "from ase.calculators.singlepoint import SinglePointCalculator\n"
        "from allegro_deploy.models.labels import read_structures\n"
        "atoms = ase.build.bulk('Cu')\n"
        "atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=[[0.0, 0.0, 0.1]])\n"
        f"ase.io.write({str(tmp_path / 'one.extxyz')!r}, atoms)\n"
        f"(read,) = read_structures({str(tmp_path / 'one.extxyz')!r})\n"
        "assert read.get_potential_energy() == -1.0\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
