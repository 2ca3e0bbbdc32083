"""Build a TensorRT engine once and keep it in the file (``allegro-deploy compile``).

ONNX Runtime writes an EP-context model when asked to by the session options
``ep.context_enable``, ``ep.context_file_path`` and ``ep.context_embed_mode``: an ONNX file
whose ``com.microsoft.EPContext`` nodes hold the serialized engine, which ONNX Runtime
loads later without building it again. :func:`compile_engine` builds that file on the GPU
it will run on, from a float32-only export that the TensorRT parser check accepts, and
carries the export's metadata over (plus ``compiled_for``: the backend, the profile and
the ONNX Runtime version), so that :meth:`Potential.load` and every host run it as any
other file. Needs onnx, and onnxruntime-gpu with NVIDIA's TensorRT 10 libraries.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import onnx
import onnxruntime as ort

from allegro_deploy.runtime.backends import Profile, open_session

from .tensorrt_check import check_tensorrt


class CompileError(ValueError):
    """The file cannot be compiled; the message says why."""


def carry_metadata(source: onnx.ModelProto, compiled: onnx.ModelProto, compiled_for: dict) -> None:
    """Give ``compiled`` (changed in place) the ``metadata_props`` of ``source`` and a
    ``compiled_for`` entry (JSON of ``compiled_for``)."""
    props = {p.key: p.value for p in source.metadata_props}
    props["compiled_for"] = json.dumps(compiled_for)
    onnx.helper.set_model_props(compiled, props)


def compile_engine(
    model: str | Path,
    output: str | Path,
    *,
    profile: Profile | None = None,
    device_id: int = 0,
    tensorrt_version: str = "10.1",
    log: Callable[[str], None] = print,
) -> Path:
    """Build the TensorRT engine of the float32-only export ``model`` for ``profile`` on
    GPU ``device_id`` and write the EP-context model to ``output``.

    Raises :class:`CompileError` when ``output`` is ``model``, when the TensorRT parser
    check (``tensorrt_version``'s support table) rejects a node, or when ONNX Runtime
    writes no EP-context model; ``BackendError`` when TensorRT cannot run here.
    """
    model, output = Path(model), Path(output)
    if output.resolve() == model.resolve():
        raise CompileError(f"{output}: the compiled file must not replace its source {model}")
    report = check_tensorrt(model, tensorrt_version)
    if not report.ok:
        raise CompileError(
            f"{model}: {len(report.findings)} nodes would fail in TensorRT {tensorrt_version}'s "
            f"parser, the first {report.findings[0]} (allegro-deploy info --tensorrt lists all)"
        )
    profile = profile or Profile()
    temporary = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("ep.context_enable", "1")
    options.add_session_config_entry("ep.context_file_path", str(temporary))
    options.add_session_config_entry("ep.context_embed_mode", "1")
    log(f"building the TensorRT engine of {model} for {profile} on GPU {device_id} ...")
    try:
        open_session(
            model, "tensorrt", session_options=options, profile=profile, device_id=device_id
        )
        if not temporary.is_file():
            raise CompileError(f"ONNX Runtime wrote no EP-context model for {model}")
        compiled = onnx.load(temporary)
        compiled_for = {
            "backend": "tensorrt",
            "max_atoms": profile.max_atoms,
            "max_neighbors": profile.max_neighbors,
            "onnxruntime": ort.__version__,
        }
        carry_metadata(onnx.load(model, load_external_data=False), compiled, compiled_for)
        onnx.save(compiled, temporary)
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)
    log(f"wrote {output}")
    return output
