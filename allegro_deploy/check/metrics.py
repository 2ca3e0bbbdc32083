"""The errors ``check`` reports, and the thresholds that gate them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .predictions import CheckError, Predictions

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
