"""A model's predictions beside a data file's labels (``allegro-deploy evaluate``): the
counterpart of ``dp test``, ``mace_eval_configs`` and ``nequip-test``.

:func:`evaluate` runs a checkpoint (its torch model, in its own dtype) or an ``.onnx``
export (on any runtime backend) on every structure of an ASE-readable file, in batches,
and :meth:`Evaluation.write` writes to a folder:

* ``predictions.extxyz``: the structures with ``energy_label`` / ``energy_predicted`` (eV),
  ``stress_label`` / ``stress_predicted`` (eV/Å³, 3x3 row-major) in each frame's info and
  ``forces_label`` / ``forces_predicted`` (eV/Å) per atom (labels only where present);
* ``structures.csv``: one row per structure with its errors;
* ``metrics.json`` and ``metrics.md``: energy MAE/RMSE per atom (meV/atom), force
  MAE/RMSE/largest component (meV/Å), also per species, stress MAE/RMSE (meV/Å³);
* ``parity.png``: predictions against labels, the error figures printed in each panel.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import ase
import ase.io
import numpy as np

from allegro_deploy.check.predictions import (
    Predictions,
    file_predictions,
    labels_of,
    predictions_of,
    read_data,
    torch_predictions,
)
from allegro_deploy.models.labels import ASE_KEYS, LabelKeys
from allegro_deploy.runtime.progress import Progress

OUTPUTS = ("predictions.extxyz", "structures.csv", "metrics.json", "metrics.md", "parity.png")
"""The files :meth:`Evaluation.write` writes."""


class EvaluateError(ValueError):
    """Input ``evaluate`` cannot use; the message says why."""


@dataclass
class Evaluation:
    """Predictions and labels of the structures of one data file.

    labels, predictions: energies (S,) eV, forces (N, 3) eV/Å, stresses (S, 3, 3) eV/Å³;
        NaN where a structure has no such label (or, for stress, is not periodic).
    labelled: the quantities the file labels (``energy``, ``forces``, ``stress``).
    """

    model: str
    data: str
    keys: LabelKeys
    structures: list[ase.Atoms]
    labels: Predictions
    predictions: Predictions
    labelled: list[str]

    def metrics(self) -> dict[str, Any]:
        """Errors against the labels: ``energy`` (meV/atom), ``forces`` (meV/Å, also per
        species), ``stress`` (meV/Å³), each None when not labelled."""
        energy = (self.predictions.energy - self.labels.energy) / self.labels.n_atoms * 1e3
        energy = energy[np.isfinite(energy)]
        forces = (self.predictions.forces - self.labels.forces) * 1e3
        rows = np.isfinite(forces).all(axis=1)
        stress = ((self.predictions.stress - self.labels.stress) * 1e3).reshape(-1, 9)
        stress = stress[np.isfinite(stress).all(axis=1)]
        symbols = np.array([s for atoms in self.structures for s in atoms.get_chemical_symbols()])
        return {
            "energy": _summary(energy, "meV/atom", "structures", len(energy)),
            "forces": None
            if not rows.any()
            else {
                **_summary(forces[rows], "meV/Å", "atoms", int(rows.sum()), largest=True),
                "per_species": {
                    species: _summary(
                        forces[rows & (symbols == species)],
                        "meV/Å",
                        "atoms",
                        int((rows & (symbols == species)).sum()),
                        largest=True,
                    )
                    for species in dict.fromkeys(symbols[rows])
                },
            },
            "stress": _summary(stress, "meV/Å³", "structures", len(stress)),
        }

    def write(self, folder: Path) -> list[Path]:
        """The :data:`OUTPUTS` in ``folder``; returns their paths."""
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / name for name in OUTPUTS]
        inputs = {Path(self.model).resolve(), Path(self.data).resolve()}
        clash = [p for p in paths if p.resolve() in inputs]
        if clash:
            raise EvaluateError(f"--out {folder} would write over the input {clash[0]}")
        metrics = self.metrics()
        ase.io.write(paths[0], self._frames(), format="extxyz")
        self._write_csv(paths[1])
        report = {
            "model": self.model,
            "data": self.data,
            "label_keys": vars(self.keys),
            "structures": len(self.structures),
            "atoms": int(self.labels.n_atoms.sum()),
            "labelled": self.labelled,
            "metrics": metrics,
        }
        paths[2].write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
        paths[3].write_text(self.markdown(metrics))
        self._plot(paths[4], metrics)
        return paths

    def markdown(self, metrics: dict[str, Any] | None = None) -> str:
        """The metrics as a short Markdown report."""
        metrics = metrics or self.metrics()
        lines = [
            "# allegro-deploy evaluate",
            "",
            f"- model: `{self.model}`",
            f"- data: `{self.data}` ({len(self.structures)} structures, "
            f"{int(self.labels.n_atoms.sum())} atoms; labels: "
            f"{', '.join(self.labelled) or 'none'})",
            "",
            "| quantity | MAE | RMSE | largest | unit | count |",
            "|---|---:|---:|---:|---|---:|",
        ]
        for name, entry in self._rows(metrics):
            largest = entry.get("max")
            lines.append(
                f"| {name} | {entry['mae']:.4g} | {entry['rmse']:.4g} | "
                f"{'' if largest is None else f'{largest:.4g}'} | {entry['unit']} | "
                f"{entry['count']} {entry['of']} |"
            )
        return "\n".join(lines) + "\n"

    def _rows(self, metrics: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
        rows = []
        if metrics["energy"]:
            rows.append(("energy per atom", metrics["energy"]))
        if metrics["forces"]:
            rows.append(("forces", metrics["forces"]))
            rows += [(f"forces on {s}", e) for s, e in metrics["forces"]["per_species"].items()]
        if metrics["stress"]:
            rows.append(("stress", metrics["stress"]))
        return rows

    def _frames(self) -> list[ase.Atoms]:
        frames, start = [], 0
        for index, atoms in enumerate(self.structures):
            frame = ase.Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
            end = start + len(atoms)
            for kind, values in (("label", self.labels), ("predicted", self.predictions)):
                if math.isfinite(values.energy[index]):
                    frame.info[f"energy_{kind}"] = float(values.energy[index])
                if np.isfinite(values.stress[index]).all():
                    frame.info[f"stress_{kind}"] = values.stress[index].ravel()
                if np.isfinite(values.forces[start:end]).all():
                    frame.arrays[f"forces_{kind}"] = values.forces[start:end]
            frames.append(frame)
            start = end
        return frames

    def _write_csv(self, path: Path) -> None:
        with open(path, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(
                [
                    "index",
                    "formula",
                    "atoms",
                    "energy_label_eV",
                    "energy_predicted_eV",
                    "energy_error_meV_per_atom",
                    "force_rmse_meV_per_A",
                    "force_max_meV_per_A",
                    "stress_max_error_meV_per_A3",
                ]
            )
            start = 0
            for index, atoms in enumerate(self.structures):
                end = start + len(atoms)
                n = len(atoms)
                energy_error = (
                    (self.predictions.energy[index] - self.labels.energy[index]) / n * 1e3
                )
                forces = (self.predictions.forces[start:end] - self.labels.forces[start:end]) * 1e3
                stress = (self.predictions.stress[index] - self.labels.stress[index]) * 1e3
                writer.writerow(
                    [
                        index,
                        atoms.get_chemical_formula(),
                        n,
                        _cell(self.labels.energy[index]),
                        _cell(self.predictions.energy[index]),
                        _cell(energy_error),
                        _cell(np.sqrt(np.mean(forces**2)) if forces.size else math.nan),
                        _cell(np.abs(forces).max() if forces.size else math.nan),
                        _cell(np.abs(stress).max()),
                    ]
                )
                start = end

    def _plot(self, path: Path, metrics: dict[str, Any]) -> None:
        from matplotlib.figure import Figure

        per_atom = self.labels.n_atoms
        panels = [
            ("energy", "energy (eV/atom)", self.labels.energy / per_atom,
             self.predictions.energy / per_atom),
            ("forces", "force component (eV/Å)", self.labels.forces.ravel(),
             self.predictions.forces.ravel()),
            ("stress", "stress component (eV/Å³)", self.labels.stress.ravel(),
             self.predictions.stress.ravel()),
        ]  # fmt: skip
        panels = [panel for panel in panels if metrics[panel[0]]]
        figure = Figure(figsize=(4.4 * max(len(panels), 1), 4.2), layout="constrained")
        for axes, (name, label, x, y) in zip(
            np.atleast_1d(figure.subplots(1, max(len(panels), 1))), panels, strict=False
        ):
            finite = np.isfinite(x) & np.isfinite(y)
            x, y = x[finite], y[finite]
            axes.scatter(x, y, s=4, alpha=0.6)
            low, high = min(x.min(), y.min()), max(x.max(), y.max())
            axes.plot([low, high], [low, high], color="gray", lw=0.8)
            entry = metrics[name]
            axes.set_title(
                f"MAE {entry['mae']:.3g}, RMSE {entry['rmse']:.3g} {entry['unit']}", fontsize=10
            )
            axes.set_xlabel(f"label {label}")
            axes.set_ylabel(f"predicted {label}")
        figure.suptitle(f"{Path(self.model).name} on {Path(self.data).name}")
        figure.savefig(path, dpi=110)


def _summary(
    errors: np.ndarray, unit: str, of: str, count: int, largest: bool = False
) -> dict[str, Any] | None:
    """MAE, RMSE (and the largest absolute error) of ``errors``; None when empty."""
    if not errors.size:
        return None
    entry = {
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt(np.mean(errors**2))),
        "unit": unit,
        "count": count,
        "of": of,
    }
    if largest:
        entry["max"] = float(np.abs(errors).max())
    return entry


def _cell(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.10g}"


def evaluate(
    model: Path,
    data: Path,
    *,
    backend: str = "auto",
    threads: int | None = None,
    keys: LabelKeys = ASE_KEYS,
    index: str = ":",
    batch_size: int = 16,
    stream: TextIO | None = None,
) -> Evaluation:
    """Predictions of ``model`` (a checkpoint or an ``.onnx`` export) on the frames
    ``index`` of ``data``, beside the labels found there under ``keys``.

    backend, threads: where an ``.onnx`` model runs (see
        :func:`~allegro_deploy.runtime.backends.open_session`); a checkpoint runs in torch.
    batch_size: structures per evaluation; progress goes to ``stream`` (default stderr).
    """
    if batch_size < 1:
        raise EvaluateError(f"batch size must be >= 1, got {batch_size}")
    if model.suffix == ".onnx":
        from allegro_deploy.runtime.potential import Potential

        potential = Potential.load(model, backend, threads=threads)
        atomic_numbers: Sequence[int] = potential.atomic_numbers
        predict = lambda batch: file_predictions(potential, batch)  # noqa: E731
    elif model.suffix == ".safetensors":
        from allegro_deploy.models.checkpoint import load_checkpoint

        if backend != "auto":
            raise EvaluateError(
                f"--backend {backend} applies to .onnx models; {model} runs in torch"
            )
        torch_model = load_checkpoint(model).model
        atomic_numbers = torch_model.config.atomic_numbers
        predict = lambda batch: torch_predictions(torch_model, batch)  # noqa: E731
    else:
        raise EvaluateError(f"{model} is neither a checkpoint (.safetensors) nor an export (.onnx)")
    structures = read_data(data, atomic_numbers, index, keys)
    labels, labelled = labels_of(structures, data, keys)
    parts = []
    with Progress("evaluating", len(structures), "structures", stream=stream) as progress:
        for start in range(0, len(structures), batch_size):
            batch = structures[start : start + batch_size]
            parts.append(predict(batch))
            progress.advance(len(batch))
    predictions = predictions_of(
        structures,
        np.concatenate([p.energy for p in parts]),
        [p.forces for p in parts],
        np.concatenate([p.stress for p in parts]),
    )
    return Evaluation(str(model), str(data), keys, structures, labels, predictions, labelled)
