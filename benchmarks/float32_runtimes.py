"""One file, several runtimes: accuracy of float32 files against float64, and OpenVINO
against ONNX Runtime, in one process run.

    python benchmarks/float32_runtimes.py [--models tutorial,large] [--sizes 864,100000]
        [--threads 2] [--repeats 5] [--edge-budget 20000] [--out runs/float32_runtimes]

For the tutorial-size and the larger model of ``cpu_speed.py`` (random weights, seed 0,
energy shift -3.5 eV), three exports: float64 (the reference), the default float32 file
(float64 geometry, shifts and sums inside the graph) and the float32-only file
(``--no-float64``: the runtime does those in float64). On rattled fcc Cu of each size:

1. accuracy against the float64 file on ONNX Runtime CPU: energy per atom, forces (largest
   component error, absolute and relative to the largest force) and stress, for the
   float32 file on ONNX Runtime and the float32-only file on ONNX Runtime and OpenVINO;
2. speed on 864 atoms: ONNX Runtime CPU and OpenVINO CPU interleaved on each float32
   file (``allegro_deploy.bench.run_bench``: checks, neighbor list and evaluation).

Prints the tables and writes ``float32_runtimes.json`` and ``float32_runtimes.png`` (force
errors) to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from cpu_speed import COPPER, LARGE, TUTORIAL  # benchmarks/, the script's folder, is on sys.path
from rich.console import Console
from rich.table import Table

from allegro_deploy.bench import BenchModel, Implementation, fcc_cell, run_bench
from allegro_deploy.exporters.onnx_export import export_model
from allegro_deploy.models import AllegroModel
from allegro_deploy.runtime import Potential

MODELS = {"tutorial": TUTORIAL, "large": LARGE}
FILES = ("float64", "float32", "float32-only")
RUNS = (("float32", "cpu"), ("float32-only", "cpu"), ("float32-only", "openvino"))
"""(file, backend) compared with the float64 file on ONNX Runtime CPU."""


def export_files(config: Any, folder: Path, name: str) -> dict[str, Path]:
    """The three exports of one model with seeded random weights."""
    torch.manual_seed(0)
    model = AllegroModel(config).eval()
    files = {kind: folder / f"{name}_{kind}.onnx" for kind in FILES}
    for kind, path in files.items():
        start = time.perf_counter()
        export_model(
            model,
            path,
            dtype="float64" if kind == "float64" else "float32",
            float64=kind != "float32-only",
            log=lambda _: None,
        )
        print(f"{name}: exported {kind} in {time.perf_counter() - start:.0f} s", flush=True)
    return files


def accuracy(
    files: dict[str, Path], n_atoms: int, threads: int, edge_budget: int
) -> list[dict[str, Any]]:
    """Errors of each of :data:`RUNS` against the float64 file on ``n_atoms`` of Cu."""
    atoms = fcc_cell(n_atoms, "Cu")
    volume = atoms.get_volume()
    options = {"threads": threads, "edge_budget": edge_budget}
    reference = Potential.load(files["float64"], "cpu", **options).evaluate(atoms)
    rows = []
    for kind, backend in RUNS:
        start = time.perf_counter()
        result = Potential.load(files[kind], backend, **options).evaluate(atoms)
        seconds = time.perf_counter() - start
        force_error = float(np.abs(result.forces - reference.forces).max())
        rows.append(
            {
                "file": kind,
                "backend": backend,
                "n_atoms": len(atoms),
                "energy_per_atom_error_eV": abs(result.energy - reference.energy) / len(atoms),
                "force_error_eV_per_A": force_error,
                "force_error_relative": force_error / float(np.abs(reference.forces).max()),
                "stress_error_eV_per_A3": float(np.abs(result.virial - reference.virial).max())
                / volume,
                "seconds": seconds,
            }
        )
        errors = ", ".join(f"{k} {v:.2e}" for k, v in rows[-1].items() if "error" in k)
        print(f"  {n_atoms} atoms, {kind} on {backend}: {seconds:.1f} s, {errors}", flush=True)
    return rows


def accuracy_table(results: dict[str, list[dict[str, Any]]]) -> Table:
    table = Table(title="float32 files against the float64 file (ONNX Runtime CPU)")
    for column in ("model", "atoms", "file", "backend", "ΔE/atom eV", "max ΔF eV/Å"):
        table.add_column(column)
    for column in ("ΔF / max F", "max Δσ eV/Å³"):
        table.add_column(column)
    for name, rows in results.items():
        for r in rows:
            table.add_row(
                name,
                str(r["n_atoms"]),
                r["file"],
                r["backend"],
                f"{r['energy_per_atom_error_eV']:.1e}",
                f"{r['force_error_eV_per_A']:.1e}",
                f"{r['force_error_relative']:.1e}",
                f"{r['stress_error_eV_per_A3']:.1e}",
            )
    return table


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 4))
    labels, values = [], []
    for name, rows in results.items():
        for r in rows:
            labels.append(f"{name} {r['n_atoms']}\n{r['file']} {r['backend']}")
            values.append(r["force_error_relative"])
    axes.bar(range(len(values)), values)
    axes.set_xticks(range(len(values)), labels, rotation=60, ha="right", fontsize=7)
    axes.set_yscale("log")
    axes.set_ylabel("max |ΔF| / max |F| vs float64")
    axes.set_title("float32 files against the float64 file")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default="tutorial,large")
    parser.add_argument("--sizes", default="864,100000", help="atoms of the accuracy cells")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per runtime")
    parser.add_argument(
        "--edge-budget",
        type=int,
        default=20_000,
        help="edges per graph evaluation of the accuracy runs (memory: the larger model in "
        "float64 needs far more per edge than the tutorial one)",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/float32_runtimes"))
    args = parser.parse_args()
    console = Console(width=140)
    accuracies: dict[str, list[dict[str, Any]]] = {}
    speeds: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="allegro-float32-") as folder:
        for name in args.models.split(","):
            files = export_files(MODELS[name], Path(folder), name)
            accuracies[name] = [
                row
                for size in args.sizes.split(",")
                for row in accuracy(files, int(size), args.threads, args.edge_budget)
            ]
            torch.manual_seed(0)
            model = AllegroModel(MODELS[name]).eval()
            for kind in ("float32", "float32-only"):
                specs = [
                    Implementation(name, str(files[kind]), args.threads)
                    for name in ("ort-cpu", "openvino")
                ]
                report = run_bench(
                    specs, [COPPER], BenchModel.of(model, f"{name} {kind}"), repeats=args.repeats,
                    memory=False, threads=args.threads,
                )  # fmt: skip
                console.print(report.table())
                speeds[f"{name} {kind}"] = report.to_json()
    console.print(accuracy_table(accuracies))
    speed = Table(title="OpenVINO CPU against ONNX Runtime CPU, 864 Cu, interleaved")
    for column in ("model and file", "ONNX Runtime ms", "OpenVINO ms", "OpenVINO speed-up"):
        speed.add_column(column)
    for label, report in speeds.items():
        times = {r["implementation"]: r["median_s"] for r in report["rows"]}
        speed.add_row(
            label,
            f"{times['ort-cpu'] * 1e3:.0f}",
            f"{times['openvino'] * 1e3:.0f}",
            f"{times['ort-cpu'] / times['openvino']:.2f}×",
        )
    console.print(speed)
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"accuracy": accuracies, "speed": speeds}
    (args.out / "float32_runtimes.json").write_text(json.dumps(out, indent=2, ensure_ascii=False))
    plot(accuracies, args.out / "float32_runtimes.png")
    console.print(
        f"wrote {args.out / 'float32_runtimes.json'} and {args.out / 'float32_runtimes.png'}"
    )


if __name__ == "__main__":
    main()
