"""Export an Allegro model's energy, forces and virial to one verified ONNX file.

:func:`export_model` traces the model for a target (:mod:`.tracing`), writes the
metadata (the file contract: :mod:`allegro_deploy.runtime.metadata`, which defines each
target's tensors and every metadata key), checks the file with ONNX's full checker, and
verifies it with ONNX Runtime against the torch model on fresh structures
(:mod:`.verify`) before it is put in place.

Geometry inputs are float64, as in the official code: positions, shifts and edge
vectors are subtracted and normalized (lengths, r/r_max, the radial basis and the
spherical harmonics) in float64, so that a float32 model does not lose the difference
of two large coordinates; the float32 body begins after the radial basis and spherical
harmonics. Per-species scale/shift, every sum over atoms and all outputs are float64.

Float32-only files (``float64=False``; for TensorRT, which has no float64, and other
runtimes that compute float64 as float32) hold no float64 tensor at all. What float64
buys moves to the runtime: it computes the edge vectors from float64 positions, adds the
per-species energy shifts (metadata ``energy_shifts``) and sums pair forces into forces
and virials in float64.

Reduced precision (:mod:`allegro_deploy.models.precision`): a float32 export can run the
matrix products of its MLPs and tensor products in ``tf32``, ``fp16`` or ``bf16``. Real
files (the default) are strongly typed graphs with explicit Casts, for TensorRT (a
``tf32`` file is the ``fp32`` graph; the engine enables TF32); emulated files round in
float32 for CPUs without the reduced matrix units.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch

from allegro_deploy import __version__
from allegro_deploy.models.allegro import AllegroModel
from allegro_deploy.models.precision import dtype_precision, get_precision, matmul_precision
from allegro_deploy.runtime.metadata import (
    DTYPES,
    FORMAT_VERSION,
    TARGETS,
    ModelMetadata,
    tensor_specs,
)

from .inspect import op_counts
from .tracing import to_onnx
from .verify import REDUCED_TOLERANCES, TOLERANCES, ort_session, verify

MAX_WEIGHT_BYTES = 2**31 - 2**26
"""Weights above this do not fit one protobuf file (2 GiB, less room for the graph)."""

_log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The model cannot be exported, or the exported file failed verification."""


@dataclass
class ExportReport:
    """What :func:`export_model` did.

    precision, precision_mode: see :mod:`allegro_deploy.models.precision`.
    verified: what ONNX Runtime ran, ``the file`` or ``its emulated twin`` (a real bf16
        file: ONNX Runtime has no CPU kernels for bfloat16).
    errors: per verification sample, the relative error of every output.
    seconds: wall time of each phase (``export``: trace, export, convert and check;
        ``verify``: ONNX Runtime against torch).
    """

    path: Path
    target: str
    dtype: str
    precision: str
    precision_mode: str
    verified: str
    tolerance: float
    size_bytes: int
    op_counts: dict[str, int]
    errors: dict[str, dict[str, float]]
    seconds: dict[str, float]

    @property
    def max_error(self) -> float:
        return max((e for sample in self.errors.values() for e in sample.values()), default=0.0)

    def summary(self) -> str:
        """Human-readable verification table and totals."""
        lines = [
            f"verification against torch of {self.verified} ({self.precision}, "
            f"{self.precision_mode}; tolerance {self.tolerance:.0e} relative):"
        ]
        for sample, errors in self.errors.items():
            cells = "  ".join(f"{name} {error:.1e}" for name, error in errors.items())
            lines.append(f"  {sample}: {cells}")
        timing = ", ".join(f"{phase} {s:.1f} s" for phase, s in self.seconds.items())
        lines.append(
            f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, "
            f"{sum(self.op_counts.values())} nodes; {timing})"
        )
        return "\n".join(lines)


def model_in_dtype(model: AllegroModel, dtype: str, float64: bool = True) -> AllegroModel:
    """``model`` itself, or a copy built in ``dtype`` (and with ``float64`` geometry, see
    :class:`AllegroModel`) with its weights cast (never ``.to``)."""
    if dtype == model.config.model_dtype and float64 == model.float64:
        return model
    config = dataclasses.replace(model.config, model_dtype=dtype)
    copy = AllegroModel(config, float64=float64)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def _weight_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def metadata(
    model: AllegroModel,
    target: str,
    checkpoint_sha256: str,
    precision: str | None = None,
    precision_mode: str = "real",
) -> dict[str, str]:
    """``metadata_props`` of an exported file, provenance included; ``precision``
    defaults to the full precision of the model dtype."""
    c = model.config
    inputs, outputs = tensor_specs(target, model.float64)
    contract = ModelMetadata(
        species=tuple(c.species),
        atomic_numbers=tuple(c.atomic_numbers),
        r_max=float(c.r_max),
        pair_cutoffs=tuple(tuple(row) for row in c.pair_cutoffs()),
        dtype=c.model_dtype,
        precision=precision or dtype_precision(c.model_dtype),
        precision_mode=precision_mode,
        float64=model.float64,
        energy_shifts=tuple(c.per_species("per_type_energy_shifts", 0.0)),
        target=target,
        format_version=FORMAT_VERSION,
        inputs=inputs,
        outputs=outputs,
    )
    per_edge, per_call = model.gemm_flops()
    return contract.to_props(
        model_config=json.dumps(c.to_dict()),
        parameters=str(model.parameter_count),
        gemm_flops_per_edge=str(per_edge),
        gemm_flops_per_call=str(per_call),
        exporter="allegro-deploy",
        exporter_version=__version__,
        torch_version=torch.__version__,
        checkpoint_sha256=checkpoint_sha256,
    )


def export_model(
    model: AllegroModel,
    path: str | Path,
    *,
    target: str = "structures",
    dtype: str | None = None,
    precision: str | None = None,
    emulate: bool = False,
    float64: bool = True,
    checkpoint_sha256: str = "",
    tolerance: float | None = None,
    log: Callable[[str], None] = _log.info,
) -> ExportReport:
    """Export ``model`` to ``path`` for ``target`` and verify it with ONNX Runtime.

    dtype: float32 or float64 (default: the model's own, the precision's, or float32 for
        ``float64=False``); a model of another dtype is rebuilt in that dtype with its
        weights cast.
    precision: fp64 (float64 only), fp32, tf32, fp16 or bf16 (float32 only) for the matrix
        products of the MLPs and tensor products (default: the dtype's full precision).
    emulate: round in float32 instead of running the products in the reduced type (see
        :mod:`allegro_deploy.models.precision`; no effect on fp64 and fp32). The file is
        verified against the torch model with the same roundings; a real bf16 file, which
        ONNX Runtime cannot run on CPU, through its emulated twin.
    float64: False writes a float32-only file (float32 dtype only; see the module
        docstring), verified against the torch model computing the same in float32.
    tolerance: largest accepted relative error (default :data:`TOLERANCES` of the dtype,
        :data:`REDUCED_TOLERANCES` of a reduced precision).
    The file is written to a temporary name next to ``path``, checked, verified and only
    then renamed to ``path``. Raises :class:`ExportError` when the model is too large,
    or when verification fails (the temporary file is deleted; an existing ``path`` is
    left as it was).
    """
    path = Path(path)
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; choose one of {TARGETS}")
    if precision is not None:
        needed = get_precision(precision).dtype
        if dtype not in (None, needed):
            raise ExportError(
                f"precision {precision} needs a {needed} export, not {dtype} (use --dtype {needed})"
            )
        dtype = needed
    dtype = dtype or ("float32" if not float64 else model.config.model_dtype)
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of {DTYPES}")
    if not float64 and dtype != "float32":
        raise ExportError(
            f"a float32-only export (no float64) needs dtype float32, not {dtype} "
            "(use --dtype float32 or a float32 precision)"
        )
    precision = precision or dtype_precision(dtype)
    reduced = precision in REDUCED_TOLERANCES
    mode = "emulated" if emulate and reduced else "real"
    if tolerance is None:
        tolerance = REDUCED_TOLERANCES[precision] if reduced else TOLERANCES[dtype]
    model = model_in_dtype(model, dtype, float64).eval()
    weight_bytes = _weight_bytes(model)
    if weight_bytes > MAX_WEIGHT_BYTES:
        raise ExportError(
            f"the weights take {weight_bytes / 2**30:.2f} GiB; one ONNX file holds at most "
            f"{MAX_WEIGHT_BYTES / 2**30:.2f} GiB of weights (2 GiB protobuf limit) and "
            "external-data export is not supported"
        )

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    what = f"{precision}, {mode}" + ("" if float64 else ", float32-only")
    log(f"tracing {target} energy + gradients ({what}) and converting to ONNX ...")
    with matmul_precision(model, precision, mode):
        proto = to_onnx(model, target)
    props = metadata(model, target, checkpoint_sha256, precision, mode)
    onnx.helper.set_model_props(proto, props)
    proto.producer_name, proto.producer_version = "allegro-deploy", __version__
    onnx.checker.check_model(proto, full_check=True)
    # ONNX Runtime has no CPU kernels for bfloat16: verify the emulated twin instead.
    verified_mode = "emulated" if precision == "bf16" else mode
    twin = proto
    if verified_mode != mode:
        log("converting the emulated twin for verification ...")
        with matmul_precision(model, precision, verified_mode):
            twin = to_onnx(model, target)
    seconds["export"] = time.perf_counter() - start

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    twin_file = path.with_name(f".{path.name}.{os.getpid()}.emulated.tmp")
    try:
        onnx.save_model(proto, temporary)
        start = time.perf_counter()
        log("verifying with ONNX Runtime on fresh structures ...")
        if twin is not proto:
            onnx.save_model(twin, twin_file)
        session = ort_session(temporary if twin is proto else twin_file)
        with matmul_precision(model, precision, verified_mode):
            errors = verify(session, model, target)
        seconds["verify"] = time.perf_counter() - start
        report = ExportReport(
            path=path,
            target=target,
            dtype=dtype,
            precision=precision,
            precision_mode=mode,
            verified="the file" if twin is proto else "its emulated twin",
            tolerance=tolerance,
            size_bytes=temporary.stat().st_size,
            op_counts=op_counts(proto),
            errors=errors,
            seconds=seconds,
        )
        if not report.max_error <= tolerance:
            raise ExportError(
                f"{report.summary()}\nverification failed: ONNX Runtime differs from torch "
                f"by {report.max_error:.2e} relative (tolerance {tolerance:.0e}); "
                f"no file was written to {path}"
            )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
        twin_file.unlink(missing_ok=True)
    return report


def export_checkpoint(
    checkpoint: str | Path,
    path: str | Path,
    *,
    target: str = "structures",
    dtype: str | None = None,
    precision: str | None = None,
    emulate: bool = False,
    float64: bool = True,
    tolerance: float | None = None,
    log: Callable[[str], None] = _log.info,
) -> ExportReport:
    """Load an allegro-deploy checkpoint and :func:`export_model` it, recording its SHA-256."""
    from allegro_deploy.models.checkpoint import file_sha256, load_checkpoint, refuse_overwriting

    refuse_overwriting(path, checkpoint)
    model = load_checkpoint(checkpoint).model
    return export_model(
        model,
        path,
        target=target,
        dtype=dtype,
        precision=precision,
        emulate=emulate,
        float64=float64,
        checkpoint_sha256=file_sha256(checkpoint),
        tolerance=tolerance,
        log=log,
    )
