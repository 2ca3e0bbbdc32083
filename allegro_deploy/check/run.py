"""The ``check`` run: predictions of every variant against the reference and the labels."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ase
from rich.console import Console

from allegro_deploy.models.labels import ASE_KEYS, LabelKeys
from allegro_deploy.runtime.metadata import PRECISIONS
from allegro_deploy.runtime.progress import Progress, output_console

from .metrics import PrecisionResult, error_metrics, threshold_failures
from .predictions import (
    CheckError,
    Predictions,
    file_predictions,
    labels_of,
    read_data,
    torch_predictions,
)
from .report import CheckReport, write_figures
from .variants import export_variants, file_variant, load_variant

MD_TIMESTEP_FS = 1.0


MD_TEMPERATURE_K = 300.0


def md_drift(potential: Any, atoms: ase.Atoms, steps: int) -> float:
    """Total-energy drift (meV/atom/ps) of ``steps`` NVE steps from ``atoms`` (copied)."""
    from allegro_deploy.runtime.calculator import AllegroCalculator
    from allegro_deploy.runtime.md import run_md

    report = run_md(
        atoms.copy(),
        AllegroCalculator(potential),
        ensemble="nve",
        timestep_fs=MD_TIMESTEP_FS,
        temperature_K=MD_TEMPERATURE_K,
        steps=steps,
        interval=1,
        progress=False,
    )
    return report.drift_ev_per_atom_per_ps * 1e3


def run_check(
    model: Path,
    data: Path,
    out: Path,
    *,
    precisions: Sequence[str] | None = None,
    reference: Path | None = None,
    max_structures: int | None = None,
    keys: LabelKeys = ASE_KEYS,
    md_steps: int = 100,
    thresholds: Mapping[str, float] | None = None,
    console: Console | None = None,
) -> CheckReport:
    """Check ``model`` (a checkpoint or an ``.onnx`` export) on the structures of ``data``.

    precisions: for a checkpoint, those of :data:`PRECISIONS` to export and check
        (default all); not for an ``.onnx`` file, which is checked at its own precision.
    reference: for an ``.onnx`` file, a checkpoint or float64 export giving the float64
        reference (default none: errors against the labels only).
    keys: where ``data`` keeps its labels (default ASE's own names).
    md_steps: NVE steps of 1 fs from the largest structure at 300 K per precision (0: none).
    thresholds: metric -> largest accepted value, in the units of :data:`METRICS`, checked
        against the reference (or, without one, the labels); failures are listed in the
        report.
    console: where progress and the tables go (default: stderr and stdout).
    Writes ``report.json``, ``report.md`` and the figures into ``out``.
    """
    thresholds = dict(thresholds or {})
    is_file = model.suffix == ".onnx"
    if is_file and precisions is not None:
        raise CheckError(
            "--precisions applies to checkpoints; an .onnx file is checked at its own precision"
        )
    if not is_file and reference is not None:
        raise CheckError("--reference applies to .onnx files; a checkpoint is its own reference")
    precisions = list(precisions or PRECISIONS)
    for precision in precisions:
        if precision not in PRECISIONS:
            raise CheckError(
                f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
    if md_steps < 0:
        raise CheckError(f"md steps must be >= 0, got {md_steps}")
    console = console or output_console()
    out.mkdir(parents=True, exist_ok=True)

    with (
        tempfile.TemporaryDirectory() as folder,
        Progress("check", None, "steps") as progress,
    ):

        def log(precision: str, message: str) -> None:
            progress.stage(f"{precision}: {message.rstrip(' .')}")

        if is_file:
            variants = [file_variant(model)]
            torch_model = None
            atomic_numbers = _file_atomic_numbers(model)
        else:
            torch_model, variants = export_variants(model, precisions, Path(folder), log)
            atomic_numbers = torch_model.config.atomic_numbers
        index = ":" if max_structures is None else f":{max_structures}"
        structures = read_data(data, atomic_numbers, index, keys)
        labels, labelled = labels_of(structures, data, keys)

        expected, reference_name = None, None
        if torch_model is not None:
            log("fp64", "torch reference")
            from allegro_deploy.exporters.onnx_export import model_in_dtype

            expected = torch_predictions(model_in_dtype(torch_model, "float64"), structures)
            reference_name = f"torch float64 model of {model}"
        elif reference is not None:
            expected, reference_name = _reference(reference, structures), str(reference)

        md_atoms = max(structures, key=len)
        results = []
        for variant in variants:
            log(variant.precision, f"evaluating ({variant.mode})")
            potential = load_variant(variant)
            predictions = file_predictions(potential, structures)
            drift = None
            if md_steps:
                log(variant.precision, f"{md_steps} NVE steps")
                drift = md_drift(potential, md_atoms, md_steps)
            results.append(
                PrecisionResult(
                    precision=variant.precision,
                    mode=variant.mode,
                    vs_reference={} if expected is None else error_metrics(predictions, expected),
                    vs_labels=error_metrics(predictions, labels) if labelled else {},
                    drift=drift,
                    predictions=predictions,
                )
            )
        log("all", "figures")
        against = "float64 reference" if expected is not None else "labels"
        figures = write_figures(results, labels if expected is None else expected, against, out)

    report = CheckReport(
        model=str(model),
        data=str(data),
        reference=reference_name,
        n_structures=len(structures),
        n_atoms=sum(len(atoms) for atoms in structures),
        labels=labelled,
        md=(
            {
                "steps": md_steps,
                "timestep_fs": MD_TIMESTEP_FS,
                "temperature_K": MD_TEMPERATURE_K,
                "structure": structures.index(md_atoms),
                "atoms": len(md_atoms),
            }
            if md_steps
            else None
        ),
        results=results,
        thresholds=thresholds,
        failures=threshold_failures(results, thresholds, expected is not None),
        figures=figures,
    )
    (out / "report.json").write_text(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    (out / "report.md").write_text(report.to_markdown())
    report.print_tables(console)
    return report


def _file_atomic_numbers(path: Path) -> tuple[int, ...]:
    from allegro_deploy.runtime.metadata import read_metadata

    return read_metadata(path).atomic_numbers


def _reference(path: Path, structures: Sequence[ase.Atoms]) -> Predictions:
    """Float64 reference predictions from a checkpoint or a float64 export."""
    if path.suffix != ".onnx":
        from allegro_deploy.exporters.onnx_export import model_in_dtype
        from allegro_deploy.models.checkpoint import load_checkpoint

        return torch_predictions(model_in_dtype(load_checkpoint(path).model, "float64"), structures)
    from allegro_deploy.runtime.metadata import read_metadata
    from allegro_deploy.runtime.potential import Potential

    if read_metadata(path).precision != "fp64":
        raise CheckError(f"the reference {path} must be a float64 (fp64) export")
    return file_predictions(Potential.load(path, "cpu"), structures)
