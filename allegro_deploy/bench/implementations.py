"""The implementations ``allegro-deploy bench`` compares, opened from plain data."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ase
import ase.build
import numpy as np

if TYPE_CHECKING:
    from allegro_deploy.models import AllegroModel

from .workloads import BenchError, Case

IMPLEMENTATIONS = ("official", "torch", "ort-cpu", "openvino", "ort-cuda", "tensorrt")
"""Implementations compared, in the order they are run; the first one run is the baseline.
The runtime ones run ``Potential`` on a runtime backend (:data:`RUNTIME_BACKENDS`)."""
LABELS = {
    "official": "nequip-allegro eager",
    "torch": "torch eager",
    "ort-cpu": "ONNX Runtime CPU",
    "openvino": "OpenVINO CPU",
    "ort-cuda": "ONNX Runtime CUDA",
    "tensorrt": "TensorRT",
}
TORCH_IMPLEMENTATIONS = ("official", "torch")
"""The implementations that run a checkpoint's torch model in this process (need torch)."""
RUNTIME_BACKENDS = {
    "ort-cpu": "cpu",
    "openvino": "openvino",
    "ort-cuda": "cuda",
    "tensorrt": "tensorrt",
}

Evaluate = Callable[[Sequence[ase.Atoms]], np.ndarray]
"""One evaluation of structures together: forces (n_atoms, 3) float64 eV/Å."""


@dataclass(frozen=True)
class Implementation:
    """An implementation to open, as plain data so that a fresh process opens the same one.

    name: one of :data:`IMPLEMENTATIONS`.
    model: the file it runs: a checkpoint for ``torch`` and ``official`` (the official
        model is then read from the file the checkpoint was imported from), an exported
        ``.onnx`` file for the ONNX Runtime and OpenVINO ones.
    threads: CPU threads (None: the library default).
    official_config: ``official`` only: an official model config (as in a training YAML)
        to build with nequip instead of reading a file; its ``seed`` fixes the weights.
    """

    name: str
    model: str
    threads: int | None = None
    official_config: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return LABELS[self.name]


def official_source(checkpoint: str | Path) -> tuple[Path | None, str]:
    """The official file ``checkpoint`` was imported from, or None and why it cannot be
    used (not imported, file gone or changed since)."""
    from allegro_deploy.models.checkpoint import file_sha256, load_checkpoint

    source = load_checkpoint(checkpoint).provenance.get("imported_from")
    if not source:
        return None, "model did not come from nequip-allegro"
    path = Path(source["path"])
    if not path.is_file():
        return None, f"the official file it was imported from, {path}, no longer exists"
    if file_sha256(path) != source.get("sha256"):
        return None, f"the official file it was imported from, {path}, changed since"
    return path, ""


def nequip_missing() -> str:
    """Why the official implementation cannot run at all here ("" when it can)."""
    missing = [p for p in ("nequip", "allegro") if importlib.util.find_spec(p) is None]
    return "nequip-allegro not installed" if missing else ""


def _tensorrt_available() -> bool:
    """ONNX Runtime here has its TensorRT execution provider (onnxruntime-gpu)."""
    import onnxruntime as ort

    return "TensorrtExecutionProvider" in ort.get_available_providers()


def runtime_backend_missing(path: str | Path, name: str) -> str:
    """Why the runtime implementation ``name`` cannot run ``path`` here ("" when it can)."""
    import onnxruntime as ort

    from allegro_deploy.runtime.backends import BackendError
    from allegro_deploy.runtime.potential import Potential

    if name == "ort-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime-gpu not installed (or no GPU)"
    if name == "tensorrt" and not _tensorrt_available():
        return "onnxruntime-gpu with NVIDIA TensorRT not installed"
    try:
        Potential.load(path, RUNTIME_BACKENDS[name])
    except BackendError as error:
        return str(error)
    return ""


def _torch_evaluate(model: AllegroModel) -> Evaluate:
    from allegro_deploy.models import AtomicGraph

    c = model.config

    def evaluate(structures: Sequence[ase.Atoms]) -> np.ndarray:
        graph = AtomicGraph.from_atoms(structures, c.atomic_numbers, c.r_max)
        return model(graph)["forces"].detach().numpy()

    return evaluate


def _official_evaluate(spec: Implementation) -> Evaluate:
    from allegro_deploy.models import AtomicGraph
    from allegro_deploy.models.checkpoint import load_checkpoint
    from allegro_deploy.models.official_reference import load_official, official_outputs

    c = load_checkpoint(spec.model).config
    if spec.official_config is not None:
        official = load_official(spec.official_config)
    else:
        source, why = official_source(spec.model)
        if source is None:
            raise BenchError(f"official implementation: {why}")
        official = load_official(source)

    def evaluate(structures: Sequence[ase.Atoms]) -> np.ndarray:
        graph = AtomicGraph.from_atoms(structures, c.atomic_numbers, c.r_max)
        return official_outputs(official, graph)["forces"].detach().double().numpy()

    return evaluate


def open_implementation(spec: Implementation) -> Evaluate:
    """Load ``spec``'s model in its implementation; torch threads are the caller's to set."""
    if spec.name == "torch":
        from allegro_deploy.models.checkpoint import load_checkpoint

        return _torch_evaluate(load_checkpoint(spec.model).model)
    if spec.name == "official":
        return _official_evaluate(spec)
    from allegro_deploy.runtime.potential import Potential

    potential = Potential.load(spec.model, RUNTIME_BACKENDS[spec.name], threads=spec.threads)
    return lambda structures: np.concatenate([r.forces for r in potential.evaluate(structures)])


def timed_call(evaluate: Evaluate, case: Case, structures: list[ase.Atoms]) -> Callable[[], Any]:
    """One timed call of ``case``: all structures in one evaluation, or one each."""
    if case.separate:
        return lambda: np.concatenate([evaluate([atoms]) for atoms in structures])
    return lambda: evaluate(structures)


def implementations_here(
    path: str | Path,
    workdir: str | Path,
    threads: int | None = None,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[Implementation], dict[str, str]]:
    """The implementations that can run ``path`` (a checkpoint or an ``.onnx`` export) here, in
    :data:`IMPLEMENTATIONS` order, and the reason for each that cannot.

    From a checkpoint the runtime implementations run an export of its model (in its dtype)
    written to ``workdir``. only: keep just these implementation names.
    """
    path = Path(path)
    only = tuple(only or IMPLEMENTATIONS)
    unknown = [name for name in only if name not in IMPLEMENTATIONS]
    if unknown:
        choices = ", ".join(IMPLEMENTATIONS)
        raise BenchError(f"unknown implementation(s) {unknown}; choose from {choices}")
    specs: list[Implementation] = []
    unavailable: dict[str, str] = {}
    if path.suffix == ".onnx":
        onnx_path = path
        for name in TORCH_IMPLEMENTATIONS:
            if name in only:
                unavailable[name] = "needs a checkpoint, not an .onnx export"
    else:
        from allegro_deploy.exporters.onnx_export import export_model
        from allegro_deploy.models.checkpoint import file_sha256, load_checkpoint

        model = load_checkpoint(path).model
        if "official" in only:
            why = nequip_missing() or official_source(path)[1]
            if why:
                unavailable["official"] = why
            else:
                specs.append(Implementation("official", str(path), threads))
        if "torch" in only:
            specs.append(Implementation("torch", str(path), threads))
        onnx_path = Path(workdir) / f"{path.stem}.onnx"
        if any(name in only for name in RUNTIME_BACKENDS):
            log(f"exporting {path} ({model.config.model_dtype}) for the runtime implementations")
            export_model(model, onnx_path, checkpoint_sha256=file_sha256(path), log=log)
    files = {name: onnx_path for name in RUNTIME_BACKENDS}
    if path.suffix != ".onnx" and "tensorrt" in only and _tensorrt_available():
        # TensorRT has no float64: it runs a float32-only export
        files["tensorrt"] = Path(workdir) / f"{path.stem}_no_float64.onnx"
        log(f"exporting {path} float32-only for TensorRT")
        export_model(
            model, files["tensorrt"], float64=False, checkpoint_sha256=file_sha256(path), log=log
        )
    for name in RUNTIME_BACKENDS:
        if name in only:
            why = runtime_backend_missing(files[name], name)
            if why:
                unavailable[name] = why
            else:
                specs.append(Implementation(name, str(files[name]), threads))
    return specs, unavailable
