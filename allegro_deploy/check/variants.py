"""The model files ``check`` runs: a checkpoint exported at each precision, or one
``.onnx`` file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from allegro_deploy.runtime.metadata import FULL_PRECISIONS

from .predictions import CheckError


@dataclass(frozen=True)
class Variant:
    """One model file to check: its precision, how it runs (``mode``) and on which backend."""

    precision: str
    mode: str
    path: Path
    backend: str


def cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def load_variant(variant: Variant) -> Any:
    """A Potential for ``variant`` (on CUDA, TF32 matrix units only for a ``tf32`` file)."""
    from allegro_deploy.runtime.potential import Potential

    return Potential.load(variant.path, variant.backend)


def export_variants(
    checkpoint: Path, precisions: Sequence[str], folder: Path, log: Callable[[str, str], None]
) -> tuple[Any, list[Variant]]:
    """Export the checkpoint at each precision into ``folder``: real files on CUDA when
    ONNX Runtime has it, else emulated ones for tf32/fp16/bf16. Returns the torch model
    and the files. ``log(precision, message)`` reports progress."""
    from allegro_deploy.exporters.onnx_export import export_model
    from allegro_deploy.models.checkpoint import file_sha256, load_checkpoint

    model = load_checkpoint(checkpoint).model
    sha256 = file_sha256(checkpoint)
    cuda = cuda_available()
    variants = []
    for precision in precisions:
        reduced = precision not in FULL_PRECISIONS.values()
        emulate = reduced and not cuda
        path = folder / f"{precision}{'_emulated' if emulate else ''}.onnx"
        export_model(
            model,
            path,
            precision=precision,
            emulate=emulate,
            checkpoint_sha256=sha256,
            log=lambda message, p=precision: log(p, message),
        )
        backend = "cuda" if cuda else "cpu"
        mode = "emulated" if emulate else f"real ({backend})"
        variants.append(Variant(precision, mode, path, backend))
    return model, variants


def file_variant(path: Path) -> Variant:
    from allegro_deploy.runtime.metadata import read_metadata

    meta = read_metadata(path)
    cuda = cuda_available()
    if meta.precision == "bf16" and meta.precision_mode == "real" and not cuda:
        raise CheckError(
            f"{path} is a real bf16 file and ONNX Runtime has no CPU kernels for bfloat16; "
            "check the checkpoint (emulated on CPU) or run on a GPU"
        )
    if meta.precision_mode == "emulated":
        return Variant(meta.precision, "emulated", path, "cpu")
    backend = "cuda" if cuda else "cpu"
    return Variant(meta.precision, f"real ({backend})", path, backend)
