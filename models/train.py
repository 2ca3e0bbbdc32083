"""Training: ``allegro-deploy train CONFIG.yaml [--resume CHECKPOINT]``.

The YAML file has four sections (paths are relative to the working directory):

.. code-block:: yaml

    data:      {train_file: cu.extxyz, val_fraction: 0.1, split_seed: 0}  # or val_file
    model:     {r_max: 4.5, l_max: 1, num_layers: 2, model_dtype: float32}
    training:  {seed: 0, epochs: 100, batch_size: 4, learning_rate: 0.001}
    output:    {directory: runs/cu}

``model`` takes any :class:`ModelConfig` option. ``species`` defaults to the elements of
the training data sorted by atomic number; ``avg_num_neighbors``,
``per_type_energy_shifts`` and ``per_type_energy_scales`` default to statistics of the
training split. The loss and metrics follow nequip 0.19.1: the loss is the weighted mean
(weights normalized to sum to one) of the per-atom energy MSE, the force-component MSE
and, where stress labels exist, the stress-component MSE.

Weights are averaged (EMA, nequip's warm-up rule); validation and the saved ``best`` and
``last`` checkpoints use the averaged weights, and ``last`` also holds the raw weights,
optimizer, scheduler and shuffling state so that ``--resume`` continues exactly.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import time
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ase
import ase.io
import torch
import yaml
from ase.data import atomic_numbers as ATOMIC_NUMBERS
from matplotlib.figure import Figure

from allegro_deploy.runtime.progress import Progress, output_console

from .allegro import AllegroModel
from .checkpoint import file_sha256, load_checkpoint, save_checkpoint
from .config import ConfigError, ModelConfig, check_options
from .data import LabelledBatch, LabelledDataset, split_indices
from .labels import LabelKeys, read_structures
from .stats import DatasetStatistics, compute_statistics, shift_warning

BEST = "best.safetensors"
LAST = "last.safetensors"
METRICS_CSV = "metrics.csv"
LEARNING_CURVE = "learning_curve.png"
VALIDATION = "validation.extxyz"
"""The validation structures with their labels, for ``check`` and ``evaluate``."""
TEST_METRICS = "test_metrics.json"


class TrainingError(ValueError):
    """A training run that cannot start or continue; the message says why."""


@dataclass(frozen=True)
class DataOptions:
    """``data`` section. ``test_file``: structures the best weights are tested on at the
    end (``test_metrics.json``). ``index`` (ASE frame selection) applies to every file;
    ``energy_key``, ``forces_key``, ``stress_key`` name the labels in files that do not use
    ASE's own names (e.g. ``REF_energy``)."""

    train_file: str
    val_file: str | None = None
    test_file: str | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    index: str = ":"
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"

    @property
    def keys(self) -> LabelKeys:
        return LabelKeys(self.energy_key, self.forces_key, self.stress_key)


@dataclass(frozen=True)
class TrainingOptions:
    """``training`` section. Learning rate schedule: ReduceLROnPlateau on the validation
    loss; early stopping after ``early_stopping_patience`` epochs without improvement;
    ``max_time_minutes`` stops before an epoch that would exceed the wall-time budget."""

    seed: int = 0
    epochs: int = 100
    batch_size: int = 4
    val_batch_size: int = 16
    learning_rate: float = 0.001
    energy_weight: float = 1.0
    force_weight: float = 1.0
    stress_weight: float = 1.0
    ema_decay: float = 0.999
    lr_patience: int = 10
    lr_factor: float = 0.5
    early_stopping_patience: int = 30
    max_time_minutes: float | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        valid = {
            "epochs": self.epochs >= 1,
            "batch_size": self.batch_size >= 1,
            "val_batch_size": self.val_batch_size >= 1,
            "learning_rate": self.learning_rate > 0,
            "energy_weight": self.energy_weight >= 0,
            "force_weight": self.force_weight >= 0,
            "stress_weight": self.stress_weight >= 0,
            "ema_decay": 0 <= self.ema_decay < 1,
            "lr_patience": self.lr_patience >= 0,
            "lr_factor": 0 < self.lr_factor < 1,
            "early_stopping_patience": self.early_stopping_patience >= 1,
            "max_time_minutes": self.max_time_minutes is None or self.max_time_minutes > 0,
        }
        bad = [name for name, ok in valid.items() if not ok]
        if bad:
            raise ConfigError(
                f"invalid training option(s) {bad}: epochs, batch sizes and "
                f"early_stopping_patience must be >= 1, learning_rate and max_time_minutes "
                f"> 0, loss weights and lr_patience >= 0, 0 <= ema_decay < 1, 0 < lr_factor < 1"
            )
        if self.energy_weight + self.force_weight == 0:
            raise ConfigError("energy_weight and force_weight cannot both be zero")


@dataclass(frozen=True)
class OutputOptions:
    """``output`` section: the run directory (checkpoints, metrics.csv, learning curve)."""

    directory: str = "runs/train"


@dataclass(frozen=True)
class TrainConfig:
    """A parsed training configuration; ``model`` holds ModelConfig options."""

    data: DataOptions
    model: dict[str, Any]
    training: TrainingOptions
    output: OutputOptions

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Parse and check a configuration, refusing unknown sections and options."""
        if not isinstance(values, Mapping):
            raise ConfigError(f"a training configuration is a mapping, got {type(values).__name__}")
        sections = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(sections))
        if unknown:
            raise ConfigError(f"unknown section(s) {unknown}; valid sections are {sections}")
        if "data" not in values:
            raise ConfigError("the configuration needs a 'data' section with train_file")
        model = _section(values, "model")
        known = [f.name for f in dataclasses.fields(ModelConfig)]
        unknown = sorted(set(model) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown option(s) {unknown} in section 'model'; valid options are {known}"
            )
        if "r_max" not in model:
            raise ConfigError("section 'model' needs r_max (the cutoff radius in Å)")
        try:
            check_options(model)  # before any data is read or neighbor list built with them
        except ConfigError as error:
            raise ConfigError(f"section 'model': {error}") from None
        return cls(
            data=_options(DataOptions, "data", _section(values, "data")),
            model=model,
            training=_options(TrainingOptions, "training", _section(values, "training")),
            output=_options(OutputOptions, "output", _section(values, "output")),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _section(values: Mapping[str, Any], name: str) -> dict[str, Any]:
    section = values.get(name) or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"section '{name}' must be a mapping of options, got {section!r}")
    return dict(section)


_T = typing.TypeVar("_T")


def _options(cls: type[_T], section: str, values: dict[str, Any]) -> _T:
    """Build the options dataclass ``cls`` from ``values``, checking names and types."""
    fields = dataclasses.fields(cls)
    known = [f.name for f in fields]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown option(s) {unknown} in section '{section}'; valid options are {known}"
        )
    missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in values]
    if missing:
        raise ConfigError(f"section '{section}' needs {missing}")
    hints = typing.get_type_hints(cls)
    return cls(
        **{name: _coerce(value, hints[name], f"{section}.{name}") for name, value in values.items()}
    )


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """``value`` as the scalar type of ``annotation`` (float also from int or '1e-3')."""
    kinds = typing.get_args(annotation) or (annotation,)
    if value is None and type(None) in kinds:
        return None
    kind = next(k for k in kinds if k is not type(None))
    if isinstance(value, bool) and kind is not bool:
        pass  # YAML's true/false are not numbers
    elif kind is float and isinstance(value, int | float | str):
        with contextlib.suppress(ValueError):
            if math.isfinite(number := float(value)):
                return number
    elif isinstance(value, kind):
        return value
    expected = {int: "an integer", float: "a finite number", bool: "true or false"}.get(
        kind, "a string (quote it in YAML)"
    )
    raise ConfigError(f"{name} must be {expected}, got {value!r}")


def train_from_config(
    path: str | Path, resume: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Train from a YAML file; returns the best checkpoint's path. See :func:`train`."""
    path = Path(path)
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    try:
        return train(values, resume=resume, overwrite=overwrite)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error


def train(
    config: Mapping[str, Any], resume: str | Path | None = None, overwrite: bool = False
) -> Path:
    """Train a model as configured (see the module docstring); returns the best checkpoint.

    resume: the ``last.safetensors`` of an earlier run in the configured output directory,
        of the same data and model options; training continues from its epoch, exactly
        as if it had not stopped.
    overwrite: replace the checkpoints and metrics of an earlier run in the output
        directory; without it (and without ``resume``) a directory holding any is refused.
    """
    options = TrainConfig.from_dict(config)
    check_output_directory(Path(options.output.directory), resume, overwrite)
    run = _Run(options, resume)
    return run.fit()


def check_output_directory(directory: Path, resume: str | Path | None, overwrite: bool) -> None:
    """Refuse, before any work, a run that would replace files it did not write: another
    run's checkpoints and metrics, or those of a run resumed from elsewhere."""
    if resume is not None:
        if Path(resume).resolve().parent != directory.resolve():
            raise TrainingError(
                f"--resume {resume} continues the run in {Path(resume).parent}, but the "
                f"configuration writes to {directory}; set output.directory to "
                f"{Path(resume).parent} to continue that run"
            )
        return
    existing = [name for name in (BEST, LAST, METRICS_CSV) if (directory / name).exists()]
    if existing and not overwrite:
        raise TrainingError(
            f"{directory} already holds {', '.join(existing)} of a training run; choose "
            f"another output.directory, continue it with --resume {directory / LAST}, or "
            "replace it with --overwrite"
        )


@dataclass
class _Data:
    train: LabelledDataset
    val: LabelledDataset
    val_structures: list[ase.Atoms]
    test: LabelledDataset | None
    provenance: dict[str, Any]


def _load_data(options: TrainConfig) -> _Data:
    """Read the files, build graphs once and split; species default to the data's."""
    data = options.data
    structures = read_structures(data.train_file, data.index, keys=data.keys)
    species = options.model.get("species") or sorted(
        {s for atoms in structures for s in atoms.get_chemical_symbols()},
        key=ATOMIC_NUMBERS.__getitem__,
    )
    unknown = [s for s in species if s not in ATOMIC_NUMBERS]
    if unknown:
        raise ConfigError(f"model.species {unknown} are not chemical symbols")
    r_max = float(options.model["r_max"])
    full = LabelledDataset.from_atoms(structures, species, r_max, data.train_file, data.keys)
    provenance = {"train_file": str(Path(data.train_file).resolve())}
    provenance["train_file_sha256"] = file_sha256(data.train_file)
    if data.val_file is not None:
        val_structures = read_structures(data.val_file, data.index, keys=data.keys)
        val = LabelledDataset.from_atoms(val_structures, species, r_max, data.val_file, data.keys)
        train = full
        provenance["val_file"] = str(Path(data.val_file).resolve())
        provenance["val_file_sha256"] = file_sha256(data.val_file)
    else:
        train_indices, val_indices = split_indices(len(full), data.val_fraction, data.split_seed)
        train = full.subset(train_indices, f"{data.train_file} (training split)")
        val = full.subset(val_indices, f"{data.train_file} (validation split)")
        val_structures = [structures[i] for i in val_indices]
    test = None
    if data.test_file is not None:
        test_structures = read_structures(data.test_file, data.index, keys=data.keys)
        test = LabelledDataset.from_atoms(
            test_structures, species, r_max, data.test_file, data.keys
        )
        provenance["test_file"] = str(Path(data.test_file).resolve())
        provenance["test_file_sha256"] = file_sha256(data.test_file)
    provenance.update(n_train=len(train), n_val=len(val))
    return _Data(train, val, val_structures, test, provenance)


def _model_config(
    options: TrainConfig, species: tuple[str, ...], stats: DatasetStatistics
) -> ModelConfig:
    """ModelConfig from the ``model`` section, statistics filling what it leaves out."""
    values = {**stats.model_options(), **options.model, "species": species}
    if "per_type_energy_scales" not in options.model and stats.energy_scale == 0:
        raise ConfigError(
            "all training forces are zero, so the energy scale (force RMS) is zero; "
            "set model.per_type_energy_scales"
        )
    return ModelConfig.from_dict(values)


class ExponentialMovingAverage:
    """Exponential moving average of parameters, as nequip's ``EMAWeights``.

    The first update copies the parameters; update n > 0 uses the decay
    ``min(decay, (1 + n) / (10 + n))`` so that early weights fade quickly.
    """

    def __init__(self, parameters: list[torch.nn.Parameter], decay: float) -> None:
        self.parameters = parameters
        self.decay = decay
        self.num_updates = 0
        self.weights = [p.detach().clone() for p in parameters]

    @torch.no_grad()
    def update(self) -> None:
        n = self.num_updates
        decay = min(self.decay, (1 + n) / (10 + n))
        for average, parameter in zip(self.weights, self.parameters, strict=True):
            if n == 0:
                average.copy_(parameter)
            else:
                average.lerp_(parameter, 1.0 - decay)
        self.num_updates += 1

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the parameters hold the averages (and the averages the raw)."""
        self._swap()
        try:
            yield
        finally:
            self._swap()

    @torch.no_grad()
    def _swap(self) -> None:
        for average, parameter in zip(self.weights, self.parameters, strict=True):
            raw = parameter.detach().clone()
            parameter.copy_(average)
            average.copy_(raw)


@dataclass
class _Residuals:
    """Prediction minus reference for one batch.

    energy_per_atom: (B,) eV/atom.  forces: (N * 3,) eV/Å.  stress: (K,) eV/Å³, the
    labelled components only.
    """

    energy_per_atom: torch.Tensor
    forces: torch.Tensor
    stress: torch.Tensor

    @classmethod
    def of(cls, output: dict[str, torch.Tensor], batch: LabelledBatch) -> _Residuals:
        labelled = ~batch.stress.isnan()
        return cls(
            (output["energy"] - batch.energy) / batch.n_atoms,
            (output["forces"] - batch.forces).reshape(-1),
            output["stress"][labelled] - batch.stress[labelled],
        )


class _Loss:
    """Weighted mean of the per-atom energy, force and stress MSEs, nequip style: terms
    without labels are left out and the weights of the others normalized to sum to one."""

    def __init__(self, training: TrainingOptions, use_stress: bool) -> None:
        self.weights = {
            "energy": training.energy_weight,
            "forces": training.force_weight,
            "stress": training.stress_weight if use_stress else 0.0,
        }

    def __call__(self, mse: dict[str, torch.Tensor | float | None]) -> Any:
        terms = {k: v for k, v in mse.items() if v is not None and self.weights[k] > 0}
        total = sum(self.weights[k] for k in terms)
        return sum(self.weights[k] * v for k, v in terms.items()) / total


class _Run:
    """One training invocation: data, model, optimizer and the epoch loop."""

    def __init__(self, options: TrainConfig, resume: str | Path | None) -> None:
        self.options = options
        self.training = options.training
        self.device = _device(self.training.device)
        self.console = output_console()
        self.data = _load_data(options)
        self.statistics = compute_statistics(self.data.train)
        config = _model_config(options, self.data.train.species, self.statistics)
        self.directory = Path(options.output.directory)
        self.loss = _Loss(self.training, self.data.train.has_stress)

        torch.manual_seed(self.training.seed)
        self.model = AllegroModel(config).to(self.device)
        parameters = list(self.model.parameters())
        self.optimizer = torch.optim.Adam(parameters, lr=self.training.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, factor=self.training.lr_factor, patience=self.training.lr_patience
        )
        self.ema = ExponentialMovingAverage(parameters, self.training.ema_decay)
        self.generator = torch.Generator().manual_seed(self.training.seed)
        self.epoch = 0
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.epochs_without_improvement = 0
        self.previous_wall_time = 0.0
        self.history: list[dict[str, float]] = []
        self.provenance = {
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            **self.data.provenance,
            "device": str(self.device),
            "config": options.to_dict(),
        }
        if resume is not None:
            self._restore(Path(resume), config)

    def _restore(self, path: Path, config: ModelConfig) -> None:
        checkpoint = load_checkpoint(path, map_location=self.device)
        state = checkpoint.training_state
        if state is None:
            raise TrainingError(f"{path} has no training state (only {LAST} files can be resumed)")
        if checkpoint.config != config:
            old, new = checkpoint.config.to_dict(), config.to_dict()
            changed = sorted(k for k in old if old[k] != new[k])
            raise TrainingError(
                f"cannot resume from {path}: its model differs from this configuration in "
                f"{changed} (the data and model options must be those of the original run)"
            )
        self.model.load_state_dict(state["model"])
        self.ema.weights = [p.detach().clone() for p in checkpoint.model.parameters()]
        self.ema.num_updates = state["ema_num_updates"]
        optimizer = state["optimizer"]
        self.optimizer.load_state_dict(
            {
                "state": {int(k): v for k, v in optimizer["state"].items()},
                "param_groups": optimizer["param_groups"],
            }
        )
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["shuffle_rng"].cpu())
        self.epoch = state["epoch"]
        self.best_val_loss = state["best_val_loss"]
        self.best_epoch = state["best_epoch"]
        self.epochs_without_improvement = state["epochs_without_improvement"]
        self.previous_wall_time = state["wall_time_s"]
        self.history = state["history"]
        self.provenance["resumed_from"] = str(path.resolve())

    def fit(self) -> Path:
        training = self.training
        self.directory.mkdir(parents=True, exist_ok=True)
        ase.io.write(self.directory / VALIDATION, self.data.val_structures, format="extxyz")
        self.console.print(
            f"training on {self.data.provenance['n_train']} structures, validating on "
            f"{self.data.provenance['n_val']} ({self.device}); "
            f"{self.model.parameter_count:,} parameters; "
            f"output in {self.directory}"
        )
        warning = shift_warning(self.statistics, self.data.train.source)
        if warning and "per_type_energy_shifts" not in self.options.model:
            self.console.print(warning)
        start = time.perf_counter()
        first_epoch = self.epoch + 1
        budget = None if training.max_time_minutes is None else 60 * training.max_time_minutes
        stop = f"reached {training.epochs} epochs"
        n_batches = self.data.train.n_batches(training.batch_size)
        with Progress("training", None, f"batches in all ({n_batches} per epoch)") as progress:
            for epoch in range(first_epoch, training.epochs + 1):
                self.epoch = epoch
                progress.stage(f"epoch {epoch}/{training.epochs}", announce=False)
                lr = self.optimizer.param_groups[0]["lr"]
                train_loss = self._train_epoch(lambda loss: progress.advance())
                if not math.isfinite(train_loss):
                    raise TrainingError(
                        f"training diverged in epoch {epoch} (loss {train_loss}); "
                        f"lower training.learning_rate"
                    )
                with self.ema.applied():
                    val = self._validate()
                self.scheduler.step(val["val_loss"])
                elapsed = time.perf_counter() - start
                row = {"epoch": epoch, "lr": lr, "train_loss": train_loss, **val}
                row["wall_time_s"] = self.previous_wall_time + elapsed
                self.history.append(row)
                improved = val["val_loss"] < self.best_val_loss
                if improved:
                    self.best_val_loss, self.best_epoch = val["val_loss"], epoch
                    self.epochs_without_improvement = 0
                else:
                    self.epochs_without_improvement += 1
                self._save(improved)
                progress.print(_summary(row, improved))
                if self.epochs_without_improvement >= training.early_stopping_patience:
                    stop = f"no improvement for {training.early_stopping_patience} epochs"
                    break
                per_epoch = elapsed / (epoch - first_epoch + 1)
                if budget is not None and epoch < training.epochs and elapsed + per_epoch > budget:
                    stop = f"time budget of {training.max_time_minutes:g} min"
                    break
        best = self.directory / BEST
        self.console.print(
            f"stopped: {stop}; best epoch {self.best_epoch} "
            f"(validation loss {self.best_val_loss:.4g}), checkpoint {best}"
        )
        if self.data.test is not None:
            self._test(best)
        return best

    def _test(self, best: Path) -> None:
        """Errors of the best weights on the test set, into ``test_metrics.json``."""
        self.model.load_state_dict(
            load_checkpoint(best, map_location=self.device).model.state_dict()
        )
        metrics = {
            "test_file": self.options.data.test_file,
            "structures": len(self.data.test),
            "best_epoch": self.best_epoch,
            **self._validate(self.data.test, "test"),
        }
        (self.directory / TEST_METRICS).write_text(json.dumps(metrics, indent=2) + "\n")
        self.console.print(
            f"test ({len(self.data.test)} structures): "
            f"E {metrics['test_energy_mae_meV_per_atom']:.2f} meV/atom, "
            f"F {metrics['test_force_mae_meV_per_A']:.1f} meV/Å (RMSE "
            f"{metrics['test_force_rmse_meV_per_A']:.1f}); {self.directory / TEST_METRICS}"
        )

    def _train_epoch(self, advance: typing.Callable[[float], None]) -> float:
        """One pass over the shuffled training set; returns the mean batch loss."""
        self.model.train()
        losses = []
        for batch in self.data.train.batches(self.training.batch_size, self.generator):
            batch = batch.to(self.device)
            residuals = _Residuals.of(self.model(batch.graph), batch)
            loss = self.loss(
                {
                    "energy": residuals.energy_per_atom.square().mean(),
                    "forces": residuals.forces.square().mean(),
                    "stress": residuals.stress.square().mean()
                    if residuals.stress.numel()
                    else None,
                }
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.ema.update()
            losses.append(loss.item())
            advance(losses[-1])
        return sum(losses) / len(losses)

    def _validate(
        self, dataset: LabelledDataset | None = None, name: str = "val"
    ) -> dict[str, float]:
        """Loss and errors over the whole validation set, or ``dataset`` (nequip metrics),
        keys prefixed with ``name``."""
        self.model.eval()
        parts: dict[str, list[torch.Tensor]] = {"energy": [], "forces": [], "stress": []}
        for batch in (dataset or self.data.val).batches(self.training.val_batch_size):
            batch = batch.to(self.device)
            residuals = _Residuals.of(self.model(batch.graph), batch)
            parts["energy"].append(residuals.energy_per_atom.detach())
            parts["forces"].append(residuals.forces.detach())
            parts["stress"].append(residuals.stress.detach())
        energy, forces, stress = (torch.cat(parts[k]) for k in ("energy", "forces", "stress"))
        mse = {
            "energy": energy.square().mean().item(),
            "forces": forces.square().mean().item(),
            "stress": stress.square().mean().item() if stress.numel() else None,
        }
        metrics = {
            f"{name}_loss": self.loss(mse),
            f"{name}_energy_mae_meV_per_atom": 1000 * energy.abs().mean().item(),
            f"{name}_force_mae_meV_per_A": 1000 * forces.abs().mean().item(),
            f"{name}_force_rmse_meV_per_A": 1000 * math.sqrt(mse["forces"]),
        }
        if stress.numel():
            metrics[f"{name}_stress_mae_meV_per_A3"] = 1000 * stress.abs().mean().item()
        return metrics

    def _save(self, improved: bool) -> None:
        """Write metrics.csv, the learning curve, ``last`` and (if improved) ``best``."""
        _write_csv(self.history, self.directory / METRICS_CSV)
        _plot(self.history, self.directory / LEARNING_CURVE)
        metrics = {**self.history[-1], "best_epoch": self.best_epoch}
        optimizer = self.optimizer.state_dict()
        state = {
            "epoch": self.epoch,
            "model": {k: v.clone() for k, v in self.model.state_dict().items()},
            "optimizer": {
                "state": {str(k): v for k, v in optimizer["state"].items()},
                "param_groups": optimizer["param_groups"],
            },
            "scheduler": self.scheduler.state_dict(),
            "ema_num_updates": self.ema.num_updates,
            "shuffle_rng": self.generator.get_state(),
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "epochs_without_improvement": self.epochs_without_improvement,
            "wall_time_s": self.history[-1]["wall_time_s"],
            "history": self.history,
        }
        common = {
            "statistics": self.statistics.to_dict(),
            "metrics": metrics,
            "provenance": self.provenance,
        }
        with self.ema.applied():
            save_checkpoint(self.directory / LAST, self.model, training_state=state, **common)
            if improved:
                save_checkpoint(self.directory / BEST, self.model, **common)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ConfigError(f"training.device {name!r} is not a torch device: {error}") from error


def _summary(row: dict[str, float], improved: bool) -> str:
    line = (
        f"epoch {row['epoch']:>4}  lr {row['lr']:.2e}  train {row['train_loss']:.4g}  "
        f"val {row['val_loss']:.4g}  E {row['val_energy_mae_meV_per_atom']:.2f} meV/atom  "
        f"F {row['val_force_mae_meV_per_A']:.1f} meV/Å (RMSE "
        f"{row['val_force_rmse_meV_per_A']:.1f})"
    )
    if "val_stress_mae_meV_per_A3" in row:
        line += f"  S {row['val_stress_mae_meV_per_A3']:.3f} meV/Å³"
    return line + ("  *" if improved else "")


def _write_csv(history: list[dict[str, float]], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in history for k in row))
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(history)
    os.replace(temporary, path)


def _plot(history: list[dict[str, float]], path: Path) -> None:
    """Losses and validation errors against epoch, as a PNG."""
    epochs = [row["epoch"] for row in history]
    figure = Figure(figsize=(10, 4))
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.13, top=0.9, wspace=0.2)
    loss_axes, error_axes = figure.subplots(1, 2)
    loss_axes.semilogy(epochs, [row["train_loss"] for row in history], label="train")
    loss_axes.semilogy(epochs, [row["val_loss"] for row in history], label="validation")
    loss_axes.set(xlabel="epoch", ylabel="loss", title="loss")
    for key, label in (
        ("val_energy_mae_meV_per_atom", "energy MAE (meV/atom)"),
        ("val_force_mae_meV_per_A", "force MAE (meV/Å)"),
        ("val_force_rmse_meV_per_A", "force RMSE (meV/Å)"),
        ("val_stress_mae_meV_per_A3", "stress MAE (meV/Å³)"),
    ):
        if key in history[-1]:
            error_axes.semilogy(epochs, [row[key] for row in history], label=label)
    error_axes.set(xlabel="epoch", title="validation errors")
    for axes in (loss_axes, error_axes):
        axes.legend()
        axes.grid(True, alpha=0.3)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png", dpi=100)
    os.replace(temporary, path)
