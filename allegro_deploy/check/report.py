"""What ``check`` measured: tables, ``report.json``, ``report.md`` and the figures."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .metrics import METRICS, UNITS, PrecisionResult
from .predictions import Predictions


def _number(value: float | None) -> str:
    return "—" if value is None else f"{value:.3g}"


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
