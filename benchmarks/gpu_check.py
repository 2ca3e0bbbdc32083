"""GPU self-check: every GPU path that is installed, end to end, in one short run.

    python benchmarks/gpu_check.py [--out runs/gpu_check] [--sizes 864,4000,32000]

A small model with seeded random weights (the tutorial size of ``cpu_speed.py``, species
H, C, O, Cu) is exported at each precision: default files (fp32, tf32, fp16, bf16) for
ONNX Runtime CUDA, float32-only files (``--no-float64``) for ONNX Runtime's TensorRT
execution provider and TensorRT-RTX's plugin execution provider. For each path that can run here:

- agreement with the float64 file on ONNX Runtime CPU (the reference) on 864-atom Cu:
  energy per atom, forces and virial, relative to the largest reference value;
- ms per call (checks, neighbor list and evaluation; median of 5 after 2 warm-up calls)
  on rattled fcc Cu of each size, and 64 aspirins in one call against 64 calls;
- atom-steps/s of 200 velocity-Verlet steps of 864-atom Cu;
- the GPU memory in use after the largest call (``nvidia-smi``);
- the same cells through the torch model on the same GPU, and through the official
  nequip-allegro model when it is installed (agreement, ms per call, peak memory); the
  model's weights are then the official model's (built by nequip from its config,
  seed 0), so that every path runs the same weights.

Paths that cannot run are listed with the reason; without a GPU the run takes seconds and
reports every GPU path as skipped. Prints a table and writes ``gpu_check.json`` to
``--out``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from allegro_deploy.bench import fcc_cell, molecules
from allegro_deploy.bench.implementations import nequip_missing
from allegro_deploy.runtime.backends import BackendError
from allegro_deploy.runtime.metadata import PRECISIONS as FILE_PRECISIONS

PRECISIONS = tuple(name for name, dtype in FILE_PRECISIONS.items() if dtype == "float32")
"""The float32 precisions, each checked on the GPU."""
PATHS = {
    "cuda": "ONNX Runtime CUDA",
    "tensorrt": "ONNX Runtime TensorRT",
    "tensorrt-rtx": "ONNX Runtime TensorRT-RTX",
    "torch": "torch CUDA",
    "official": "nequip-allegro CUDA",
}
REPEATS, WARMUP, MD_STEPS = 5, 2, 200


def gpu_name() -> str:
    """The first NVIDIA GPU's name, or "" when ``nvidia-smi`` finds none."""
    if shutil.which("nvidia-smi") is None:
        return ""
    query = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    result = subprocess.run(query, capture_output=True, text=True, check=False)
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout else ""


def gpu_memory_used() -> int | None:
    """Bytes of GPU memory in use on the first GPU (None without ``nvidia-smi``)."""
    query = ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"]
    result = subprocess.run(query, capture_output=True, text=True, check=False)
    return int(result.stdout.split()[0]) * 2**20 if result.returncode == 0 else None


def unavailable() -> dict[str, str]:
    """Why each GPU path cannot run here ("" when it can)."""
    import onnxruntime as ort

    providers = ort.get_available_providers()
    why = {}
    gpu = gpu_name()
    for path, provider in (
        ("cuda", "CUDAExecutionProvider"),
        ("tensorrt", "TensorrtExecutionProvider"),
    ):
        if provider not in providers:
            why[path] = f"onnxruntime {ort.__version__} has no {provider} (needs onnxruntime-gpu)"
        elif not gpu:
            why[path] = "no NVIDIA GPU (nvidia-smi finds none)"
        else:
            why[path] = ""
    if importlib.util.find_spec("onnxruntime_ep_nv_tensorrt_rtx") is None:
        why["tensorrt-rtx"] = "onnxruntime-ep-nv-tensorrt-rtx-cu13 not installed"
    else:
        why["tensorrt-rtx"] = "" if gpu else "no NVIDIA GPU (nvidia-smi finds none)"
    try:
        import torch

        why["torch"] = "" if torch.cuda.is_available() else "torch finds no CUDA device"
    except ImportError:
        why["torch"] = "torch not installed"
    why["official"] = nequip_missing() or why["torch"]
    return why


def median_seconds(call: Callable[[], Any]) -> float:
    for _ in range(WARMUP):
        call()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def relative(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12))


def check_runtime(path: Path, backend: str, reference: Any, sizes: list[int]) -> dict[str, Any]:
    """Agreement, timings, MD speed and memory of one exported file on one backend."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    from allegro_deploy.runtime import AllegroCalculator, Potential

    potential = Potential.load(path, backend)
    atoms = fcc_cell(864, "Cu")
    result = potential.evaluate(atoms)
    row: dict[str, Any] = {
        "energy_per_atom_error_eV": abs(result.energy - reference.energy) / len(atoms),
        "force_error": relative(result.forces, reference.forces),
        "virial_error": relative(result.virial, reference.virial),
        "ms_per_call": {},
    }
    for size in sizes:
        cell = fcc_cell(size, "Cu")
        row["ms_per_call"][str(len(cell))] = (
            median_seconds(lambda c=cell: potential.evaluate(c)) * 1e3
        )
    row["gpu_memory_bytes"] = gpu_memory_used()
    aspirins = molecules(("H", "C", "O", "Cu"), 64)
    together = median_seconds(lambda: potential.evaluate(aspirins))
    separate = median_seconds(lambda: [potential.evaluate(m) for m in aspirins])
    row["molecules_64_one_call_ms"] = together * 1e3
    row["molecules_64_separate_ms"] = separate * 1e3
    atoms.calc = AllegroCalculator(potential)
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    start = time.perf_counter()
    dynamics.run(MD_STEPS)
    row["md_atom_steps_per_s"] = MD_STEPS * len(atoms) / (time.perf_counter() - start)
    return row


def check_torch(
    forces: Callable[[Any], Any],
    atomic_numbers: tuple[int, ...],
    r_max: float,
    reference: Any,
    sizes: list[int],
    device: str = "cuda",
) -> dict[str, Any]:
    """Agreement and ms per call of a torch model on ``device``: ``forces`` maps an
    :class:`~allegro_deploy.models.AtomicGraph` of ``atomic_numbers`` (model order) within
    ``r_max`` (Å) on ``device`` to its forces (energy, forces and virial are computed)."""
    import torch

    from allegro_deploy.models import AtomicGraph

    def call(atoms: Any) -> np.ndarray:
        graph = AtomicGraph.from_atoms([atoms], atomic_numbers, r_max).to(device)
        return forces(graph).detach().cpu().double().numpy()

    row: dict[str, Any] = {
        "force_error": relative(call(fcc_cell(864, "Cu")), reference.forces),
        "ms_per_call": {},
    }
    for size in sizes:
        cell = fcc_cell(size, "Cu")
        row["ms_per_call"][str(len(cell))] = median_seconds(lambda c=cell: call(c)) * 1e3
    if device == "cuda":
        row["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/gpu_check"))
    parser.add_argument("--sizes", default="864,4000,32000")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    start = time.perf_counter()
    why = unavailable()
    report: dict[str, Any] = {
        "gpu": gpu_name() or None,
        "platform": platform.platform(),
        "skipped": {PATHS[k]: v for k, v in why.items() if v},
        "results": {},
    }
    for path, reason in why.items():
        print(f"{PATHS[path]}: " + (f"skipped ({reason})" if reason else "runs"), flush=True)
    if any(not reason for reason in why.values()):
        run_paths(report, why, sizes)
    report["seconds"] = time.perf_counter() - start
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out / 'gpu_check.json'} in {report['seconds']:.0f} s")


def run_paths(
    report: dict[str, Any], why: dict[str, str], sizes: list[int], device: str = "cuda"
) -> None:
    """Export the test model and run every path that can run here into ``report``; the
    torch paths run on ``device`` (the tests run them on the CPU)."""
    import dataclasses

    import torch
    from cpu_speed import TUTORIAL, official_config  # benchmarks/, the script's folder

    from allegro_deploy.exporters.onnx_export import export_model
    from allegro_deploy.models import AllegroModel
    from allegro_deploy.runtime import Potential

    config = dataclasses.replace(TUTORIAL, model_dtype="float32")
    official = None
    if why["official"]:
        torch.manual_seed(0)
        model = AllegroModel(config).eval()
        report["weights"] = "torch.manual_seed(0)"
    else:
        from allegro_deploy.models.official import model_from_official
        from allegro_deploy.models.official_reference import load_official, official_outputs

        settings = official_config(config)
        official = load_official(settings)
        model = model_from_official(settings, official.state_dict())
        report["weights"] = "the official model's, built by nequip with seed 0"
    with tempfile.TemporaryDirectory(prefix="allegro-gpu-check-") as folder:
        reference_file = Path(folder) / "fp64.onnx"
        export_model(model, reference_file, dtype="float64", log=lambda _: None)
        reference = Potential.load(reference_file, "cpu").evaluate(fcc_cell(864, "Cu"))
        for backend in ("cuda", "tensorrt", "tensorrt-rtx"):
            if why[backend]:
                continue
            for precision in PRECISIONS:
                path = Path(folder) / f"{backend}_{precision}.onnx"
                export_model(
                    model, path, precision=precision, float64=backend == "cuda", log=lambda _: None
                )
                label = f"{PATHS[backend]} {precision}"
                try:
                    report["results"][label] = check_runtime(path, backend, reference, sizes)
                except BackendError as error:
                    report["skipped"][label] = str(error)
                print(f"{label}: {report['results'].get(label) or report['skipped'][label]}")
    numbers, r_max = model.config.atomic_numbers, model.config.r_max
    if not why["torch"]:
        model = model.to(device)
        report["results"][f"{PATHS['torch']} float32"] = check_torch(
            lambda g: model(g)["forces"], numbers, r_max, reference, sizes, device
        )
    if official is not None:
        official = official.to(device)
        report["results"][f"{PATHS['official']} float32"] = check_torch(
            lambda g: official_outputs(official, g)["forces"], numbers, r_max, reference, sizes,
            device,
        )  # fmt: skip


if __name__ == "__main__":
    main()
