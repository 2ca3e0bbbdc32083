"""Accuracy of reduced-precision models against a float64 reference (``allegro-deploy check``).

:func:`run_check` evaluates one model at several precisions on the structures of a data
file and compares each with a float64 reference and with the file's labels:

* a checkpoint is exported at every requested precision (``fp64`` is the float64 export)
  to a temporary folder and the files are run through the runtime. Without a GPU, the
  reduced precisions (tf32, fp16, bf16) are emulated exports run on CPU (inputs of every
  matrix product rounded to the format, float32 accumulation; see
  :mod:`allegro_deploy.models.precision`), labelled ``emulated``; with ONNX Runtime's CUDA
  provider, the real files run on the GPU, labelled ``real (cuda)``. The reference is the
  checkpoint's torch model in float64;
* an ``.onnx`` file is run as it is; the reference is a checkpoint (its torch model in
  float64) or a float64 export, or none (errors against the labels only).

Errors (:data:`METRICS`) per precision: energy per atom, forces (MAE, RMSE, largest
component, RMSE relative to the RMS reference force), stress, and the total-energy drift
of a short NVE run from the largest structure. Written to ``--out``: ``report.json``,
``report.md``, ``parity_<precision>.png`` and ``force_error_hist.png``. A threshold on
any metric fails the check for every precision above it.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase
import ase.data
import ase.io
import numpy as np
from ase.stress import voigt_6_to_full_3x3_stress
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from allegro_deploy.runtime.metadata import FULL_PRECISIONS
from allegro_deploy.runtime.metadata import PRECISIONS as FILE_PRECISIONS

PRECISIONS = tuple(FILE_PRECISIONS)
METRICS: dict[str, tuple[str, str, str]] = {
    "energy_mae": ("meV/atom", "E MAE", "mean |ΔE| / atoms"),
    "energy_max": ("meV/atom", "E max", "largest |ΔE| / atoms"),
    "force_mae": ("meV/Å", "F MAE", "mean |ΔF| per component"),
    "force_rmse": ("meV/Å", "F RMSE", "root mean square ΔF per component"),
    "force_max": ("meV/Å", "F max", "largest |ΔF| component"),
    "force_relative": ("", "F rel.", "force RMSE / RMS reference force"),
    "stress_mae": ("meV/Å³", "σ MAE", "mean |Δσ| per component (periodic structures)"),
    "stress_max": ("meV/Å³", "σ max", "largest |Δσ| component"),
    "drift": ("meV/atom/ps", "drift", "slope of the NVE total energy (thresholds: |slope|)"),
}
"""Metric -> (unit, table header, meaning). All but ``drift`` compare with the reference
or the labels."""
UNITS = "E: meV/atom, F: meV/Å (F rel.: RMSE / RMS force), σ: meV/Å³, drift: meV/atom/ps"
MD_TIMESTEP_FS = 1.0
MD_TEMPERATURE_K = 300.0
_BATCH = 32
"""Structures per torch evaluation of the reference."""


class CheckError(ValueError):
    """Input the check cannot use; the message says why."""


@dataclass(frozen=True, eq=False)
class Predictions:
    """Energies, forces and stresses of S structures of N atoms in all (NaN: unknown).

    energy: (S,) eV. forces: (N, 3) eV/Å. stress: (S, 3, 3) eV/Å³. n_atoms: (S,).
    """

    energy: np.ndarray
    forces: np.ndarray
    stress: np.ndarray
    n_atoms: np.ndarray


@dataclass
class PrecisionResult:
    """One precision's errors; metrics as in :data:`METRICS` (None: not measured)."""

    precision: str
    mode: str
    vs_reference: dict[str, float | None]
    vs_labels: dict[str, float | None]
    drift: float | None
    predictions: Predictions = field(repr=False)

    def metric(self, name: str, against_reference: bool) -> float | None:
        if name == "drift":
            return None if self.drift is None else abs(self.drift)
        return (self.vs_reference if against_reference else self.vs_labels).get(name)


@dataclass
class CheckReport:
    """Everything :func:`run_check` measured; see :meth:`to_json` for the fields."""

    model: str
    data: str
    reference: str | None
    n_structures: int
    n_atoms: int
    labels: list[str]
    md: dict[str, Any] | None
    results: list[PrecisionResult]
    thresholds: dict[str, float]
    failures: list[str]
    figures: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "reference": self.reference,
            "structures": self.n_structures,
            "atoms": self.n_atoms,
            "labels": self.labels,
            "md": self.md,
            "metrics": {k: {"unit": u, "description": d} for k, (u, _, d) in METRICS.items()},
            "results": [
                {
                    "precision": r.precision,
                    "mode": r.mode,
                    "vs_reference": r.vs_reference,
                    "vs_labels": r.vs_labels,
                    "drift_mev_per_atom_per_ps": r.drift,
                }
                for r in self.results
            ],
            "thresholds": self.thresholds,
            "failures": self.failures,
            "figures": self.figures,
        }

    def tables(self) -> list[tuple[str, list[str], list[list[str]]]]:
        """``(title, header, rows)`` of the errors against the reference and the labels."""
        names = [n for n in METRICS if n != "drift"]
        header = ["precision", "mode"] + [METRICS[n][1] for n in names]
        tables = []
        for title, against_reference in (("float64 reference", True), ("labels", False)):
            rows = [
                [r.precision, r.mode]
                + [_number(r.metric(n, against_reference)) for n in names]
                + ([_number(r.drift)] if against_reference and self.md else [])
                for r in self.results
                if (r.vs_reference if against_reference else r.vs_labels)
            ]
            if rows:
                extra = ["drift"] if against_reference and self.md else []
                tables.append((f"errors against the {title}", header + extra, rows))
        return tables

    def to_markdown(self) -> str:
        lines = [
            "# allegro-deploy check",
            "",
            f"- model: `{self.model}`",
            f"- data: `{self.data}` ({self.n_structures} structures, {self.n_atoms} atoms; "
            f"labels: {', '.join(self.labels) or 'none'})",
            f"- reference: {self.reference or 'none'}",
        ]
        if self.md:
            lines.append(
                f"- drift: NVE, {self.md['steps']} steps of {self.md['timestep_fs']:g} fs from "
                f"structure {self.md['structure']} ({self.md['atoms']} atoms, "
                f"{self.md['temperature_K']:g} K)"
            )
        if any(r.mode == "emulated" for r in self.results):
            lines.append(
                "- emulated: every matrix-product input (and fp16/bf16 product) rounded to the "
                "format, float32 accumulation, on CPU (no GPU matrix units here)"
            )
        for title, header, rows in self.tables():
            lines += ["", f"## {title[0].upper()}{title[1:]}", "", f"Units: {UNITS}.", ""]
            lines.append("| " + " | ".join(header) + " |")
            lines.append("|" + "---|" * len(header))
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        if self.thresholds:
            lines += ["", "## Thresholds", ""]
            lines += [f"- {n} ≤ {v:g} {METRICS[n][0]}" for n, v in self.thresholds.items()]
            lines += [f"- **FAILED** {f}" for f in self.failures] or ["- all passed"]
        lines += ["", "## Figures", ""]
        lines += [f"![{name}]({name})" for name in self.figures]
        return "\n".join(lines) + "\n"

    def print_tables(self, console: Console) -> None:
        for title, header, rows in self.tables():
            table = Table(title=title, caption=UNITS)
            for name in header:
                table.add_column(name, justify="left" if name in ("precision", "mode") else "right")
            for row in rows:
                table.add_row(*row)
            console.print(table)


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


# --------------------------------------------------------------------------- data


def read_data(path: Path, atomic_numbers: Sequence[int], max_structures: int | None) -> list:
    """The first ``max_structures`` frames of an ASE-readable file, all of whose elements
    the model knows."""
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    index = ":" if max_structures is None else f":{max_structures}"
    try:
        structures = ase.io.read(path, index=index)
    except Exception as error:  # ASE raises many types for malformed input
        raise CheckError(f"cannot read {path}: {type(error).__name__}: {error}") from error
    if not structures:
        raise CheckError(f"{path} contains no structures")
    known = set(atomic_numbers)
    for frame, atoms in enumerate(structures):
        unknown = sorted(set(atoms.numbers.tolist()) - known)
        if unknown:
            names = ", ".join(ase.data.chemical_symbols[z] for z in unknown)
            species = ", ".join(ase.data.chemical_symbols[z] for z in atomic_numbers)
            raise CheckError(
                f"{path}, frame {frame}: element {names} is not among the model's species "
                f"({species})"
            )
    return structures


def labels_of(structures: Sequence[ase.Atoms]) -> tuple[Predictions, list[str]]:
    """The energy, forces and stress labels of ``structures`` (NaN where missing) and the
    names of the labelled quantities."""
    energy, forces, stress = [], [], []
    for atoms in structures:
        results = atoms.calc.results if atoms.calc is not None else {}
        energy.append(results.get("energy", math.nan))
        forces.append(results.get("forces", np.full((len(atoms), 3), math.nan)))
        value = results.get("stress")
        if value is None:
            stress.append(np.full((3, 3), math.nan))
        else:
            value = np.asarray(value, dtype=np.float64)
            stress.append(voigt_6_to_full_3x3_stress(value) if value.shape == (6,) else value)
    labels = _predictions(structures, energy, forces, stress)
    present = [
        name
        for name, values in (
            ("energy", labels.energy),
            ("forces", labels.forces),
            ("stress", labels.stress),
        )
        if np.isfinite(values).any()
    ]
    return labels, present


def _predictions(
    structures: Sequence[ase.Atoms],
    energy: Sequence[float],
    forces: Sequence[np.ndarray],
    stress: Sequence[np.ndarray],
) -> Predictions:
    return Predictions(
        energy=np.asarray(energy, dtype=np.float64),
        forces=np.concatenate([np.asarray(f, dtype=np.float64) for f in forces]).reshape(-1, 3),
        stress=np.stack([np.asarray(s, dtype=np.float64) for s in stress]),
        n_atoms=np.array([len(atoms) for atoms in structures]),
    )


# --------------------------------------------------------------------------- evaluation


def torch_predictions(model: Any, structures: Sequence[ase.Atoms]) -> Predictions:
    """``model`` (an :class:`AllegroModel`) evaluated in float64, in batches."""
    from allegro_deploy.exporters.onnx_export import model_in_dtype
    from allegro_deploy.models.graph import AtomicGraph

    model = model_in_dtype(model, "float64").eval()
    c = model.config
    energy, forces, stress = [], [], []
    for start in range(0, len(structures), _BATCH):
        graph = AtomicGraph.from_atoms(
            structures[start : start + _BATCH], c.atomic_numbers, c.r_max
        )
        out = {k: v.detach().numpy() for k, v in model(graph).items()}
        energy += list(out["energy"])
        forces.append(out["forces"])
        stress += list(out["stress"])
    return _predictions(structures, energy, forces, stress)


def file_predictions(potential: Any, structures: Sequence[ase.Atoms]) -> Predictions:
    """An exported model (a :class:`~allegro_deploy.runtime.Potential`) on ``structures``."""
    results = potential.evaluate(list(structures))
    nan = np.full((3, 3), math.nan)
    return _predictions(
        structures,
        [r.energy for r in results],
        [r.forces for r in results],
        [nan if r.stress is None else r.stress for r in results],
    )


def error_metrics(actual: Predictions, expected: Predictions) -> dict[str, float | None]:
    """:data:`METRICS` (but drift) of ``actual`` against ``expected``, over the finite
    entries of both; None where there are none."""
    metrics: dict[str, float | None] = dict.fromkeys(METRICS)
    del metrics["drift"]
    energy = (actual.energy - expected.energy) / actual.n_atoms * 1e3
    energy = np.abs(energy[np.isfinite(energy)])
    if energy.size:
        metrics["energy_mae"], metrics["energy_max"] = float(energy.mean()), float(energy.max())
    rows = np.isfinite(actual.forces).all(1) & np.isfinite(expected.forces).all(1)
    forces = (actual.forces[rows] - expected.forces[rows]) * 1e3
    if forces.size:
        rmse = float(np.sqrt(np.mean(forces**2)))
        scale = float(np.sqrt(np.mean(expected.forces[rows] ** 2))) * 1e3
        metrics["force_mae"] = float(np.abs(forces).mean())
        metrics["force_rmse"] = rmse
        metrics["force_max"] = float(np.abs(forces).max())
        metrics["force_relative"] = rmse / scale if scale > 0 else None
    stress = (actual.stress - expected.stress) * 1e3
    stress = np.abs(stress[np.isfinite(stress)])
    if stress.size:
        metrics["stress_mae"], metrics["stress_max"] = float(stress.mean()), float(stress.max())
    return metrics


@dataclass(frozen=True)
class Variant:
    """One model file to check: its precision, how it runs (``mode``) and on which backend."""

    precision: str
    mode: str
    path: Path
    backend: str


def _cuda_available() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


def _load(variant: Variant) -> Any:
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
    cuda = _cuda_available()
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


def _file_variant(path: Path) -> Variant:
    from allegro_deploy.runtime.metadata import read_metadata

    meta = read_metadata(path)
    cuda = _cuda_available()
    if meta.precision == "bf16" and meta.precision_mode == "real" and not cuda:
        raise CheckError(
            f"{path} is a real bf16 file and ONNX Runtime has no CPU kernels for bfloat16; "
            "check the checkpoint (emulated on CPU) or run on a GPU"
        )
    if meta.precision_mode == "emulated":
        return Variant(meta.precision, "emulated", path, "cpu")
    backend = "cuda" if cuda else "cpu"
    return Variant(meta.precision, f"real ({backend})", path, backend)


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


# --------------------------------------------------------------------------- gate


def parse_threshold(text: str) -> tuple[str, float]:
    """``"force_rmse=5"`` -> ``("force_rmse", 5.0)``; metric names in :data:`METRICS`."""
    name, _, value = text.partition("=")
    name = name.strip()
    if name not in METRICS:
        raise CheckError(
            f"unknown metric {name!r} in --threshold; choose one of {', '.join(METRICS)}"
        )
    try:
        return name, float(value)
    except ValueError:
        raise CheckError(
            f"--threshold {text!r}: expected METRIC=NUMBER, e.g. force_rmse=5"
        ) from None


def threshold_failures(
    results: Sequence[PrecisionResult], thresholds: Mapping[str, float], against_reference: bool
) -> list[str]:
    """One line per (precision, metric) above its threshold or not measured."""
    failures = []
    for result in results:
        for name, limit in thresholds.items():
            value = result.metric(name, against_reference)
            unit = METRICS[name][0]
            if value is None:
                failures.append(f"{result.precision}: {name} was not measured")
            elif not value <= limit:
                failures.append(f"{result.precision}: {name} {value:.3g} {unit} > {limit:g} {unit}")
    return failures


# --------------------------------------------------------------------------- figures


def write_figures(
    results: Sequence[PrecisionResult], expected: Predictions, against: str, out: Path
) -> list[str]:
    """``parity_<precision>.png`` (energy per atom and force components against
    ``expected``) and ``force_error_hist.png`` in ``out``; returns the file names."""
    from matplotlib.figure import Figure

    names = []
    for result in results:
        actual = result.predictions
        figure = Figure(figsize=(9, 4.2), layout="constrained")
        panels = (
            (
                "energy (eV/atom)",
                expected.energy / expected.n_atoms,
                actual.energy / actual.n_atoms,
            ),
            ("force component (eV/Å)", expected.forces.ravel(), actual.forces.ravel()),
        )
        for axes, (label, x, y) in zip(figure.subplots(1, 2), panels, strict=True):
            finite = np.isfinite(x) & np.isfinite(y)
            x, y = x[finite], y[finite]
            axes.scatter(x, y, s=4, alpha=0.6)
            if x.size:
                low, high = min(x.min(), y.min()), max(x.max(), y.max())
                axes.plot([low, high], [low, high], color="gray", lw=0.8)
            axes.set_xlabel(f"{against} {label}")
            axes.set_ylabel(f"{result.precision} {label}")
        figure.suptitle(f"{result.precision} ({result.mode}) against the {against}")
        name = f"parity_{result.precision}.png"
        figure.savefig(out / name, dpi=100)
        names.append(name)

    figure = Figure(figsize=(6.5, 4.2), layout="constrained")
    axes = figure.subplots()
    errors = {
        r.precision: np.abs(r.predictions.forces - expected.forces).ravel() * 1e3 for r in results
    }
    positive = np.concatenate([e[np.isfinite(e) & (e > 0)] for e in errors.values()] + [[1e-9]])
    bins = np.logspace(math.log10(max(positive.min(), 1e-12)), math.log10(positive.max()) + 0.1, 60)
    for precision, error in errors.items():
        finite = error[np.isfinite(error)]
        axes.hist(np.maximum(finite, bins[0]), bins=bins, histtype="step", label=precision)
    axes.set_xscale("log")
    axes.set_xlabel(f"|ΔF| per component against the {against} (meV/Å)")
    axes.set_ylabel("components")
    axes.legend()
    figure.savefig(out / "force_error_hist.png", dpi=100)
    return [*names, "force_error_hist.png"]


# --------------------------------------------------------------------------- check


def run_check(
    model: Path,
    data: Path,
    out: Path,
    *,
    precisions: Sequence[str] | None = None,
    reference: Path | None = None,
    max_structures: int | None = None,
    md_steps: int = 100,
    thresholds: Mapping[str, float] | None = None,
    console: Console | None = None,
) -> CheckReport:
    """Check ``model`` (a checkpoint or an ``.onnx`` export) on the structures of ``data``.

    precisions: for a checkpoint, those of :data:`PRECISIONS` to export and check
        (default all); not for an ``.onnx`` file, which is checked at its own precision.
    reference: for an ``.onnx`` file, a checkpoint or float64 export giving the float64
        reference (default none: errors against the labels only).
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
    console = console or Console()
    out.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory() as folder, _progress() as progress:
        task = progress.add_task("check", total=None)

        def log(precision: str, message: str) -> None:
            progress.update(task, description=f"{precision}: {message.rstrip(' .')}")

        if is_file:
            variants = [_file_variant(model)]
            torch_model = None
            atomic_numbers = _file_atomic_numbers(model)
        else:
            torch_model, variants = export_variants(model, precisions, Path(folder), log)
            atomic_numbers = torch_model.config.atomic_numbers
        structures = read_data(data, atomic_numbers, max_structures)
        labels, labelled = labels_of(structures)

        expected, reference_name = None, None
        if torch_model is not None:
            log("fp64", "torch reference")
            expected = torch_predictions(torch_model, structures)
            reference_name = f"torch float64 model of {model}"
        elif reference is not None:
            expected, reference_name = _reference(reference, structures), str(reference)

        md_atoms = max(structures, key=len)
        results = []
        for variant in variants:
            log(variant.precision, f"evaluating ({variant.mode})")
            potential = _load(variant)
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


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )


def _file_atomic_numbers(path: Path) -> tuple[int, ...]:
    from allegro_deploy.runtime.metadata import read_metadata

    return read_metadata(path).atomic_numbers


def _reference(path: Path, structures: Sequence[ase.Atoms]) -> Predictions:
    """Float64 reference predictions from a checkpoint or a float64 export."""
    if path.suffix != ".onnx":
        from allegro_deploy.models.checkpoint import load_checkpoint

        return torch_predictions(load_checkpoint(path).model, structures)
    from allegro_deploy.runtime.metadata import read_metadata
    from allegro_deploy.runtime.potential import Potential

    if read_metadata(path).precision != "fp64":
        raise CheckError(f"the reference {path} must be a float64 (fp64) export")
    return file_predictions(Potential.load(path, "cpu"), structures)
