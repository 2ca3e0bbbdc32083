"""Molecular dynamics through ASE with speed and energy-conservation figures (no torch)."""

from __future__ import annotations

import contextlib
import csv
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ase
import ase.io
import numpy as np
from ase import units
from ase.calculators.calculator import Calculator
from ase.io.trajectory import Trajectory
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.velocitydistribution import Stationary
from ase.md.verlet import VelocityVerlet

from .progress import Progress

ENSEMBLES = ("nve", "nvt")
THERMO_COLUMNS = (
    "step",
    "time_fs",
    "potential_eV",
    "kinetic_eV",
    "total_eV",
    "temperature_K",
    "pressure_GPa",
)
"""Columns of the thermo CSV of :func:`run_md` (pressure empty for a non-periodic one)."""
TRAJECTORY_FORMATS = {".traj": "traj", ".extxyz": "extxyz", ".xyz": "extxyz"}
_SECONDS_PER_DAY = 86400.0
_FS_PER_PS = 1000.0


@dataclass(frozen=True, eq=False)
class MDReport:
    """What :func:`run_md` did and how fast.

    steps, n_atoms: the run's size. timestep_fs: fs. seconds: wall time of the steps
        (after a first force evaluation that warms up the session).
    times_fs: (n_samples,) fs, simulation time of each sample (every ``interval`` steps
        from 0, and the last step).
    total_energies: (n_samples,) eV, potential + kinetic energy at those times.
    temperatures: (n_samples,) K, kinetic temperature at those times.
    """

    ensemble: str
    steps: int
    n_atoms: int
    timestep_fs: float
    seconds: float
    times_fs: np.ndarray
    total_energies: np.ndarray
    temperatures: np.ndarray

    @property
    def ns_per_day(self) -> float:
        """Simulated nanoseconds per day of wall time."""
        return self.steps * self.timestep_fs * 1e-6 / self.seconds * _SECONDS_PER_DAY

    @property
    def atom_steps_per_second(self) -> float:
        return self.steps * self.n_atoms / self.seconds

    @property
    def drift_ev_per_atom_per_ps(self) -> float:
        """Slope of a straight-line fit of the total energy, eV/atom/ps (NVE: ideally 0)."""
        if len(self.times_fs) < 2:
            return 0.0
        slope = np.polyfit(self.times_fs, self.total_energies, 1)[0]
        return float(slope) * _FS_PER_PS / self.n_atoms

    def summary(self) -> str:
        """Speed, and for NVE the energy drift, in two lines."""
        lines = [
            f"{self.steps} steps of {self.n_atoms} atoms ({self.ensemble.upper()}, "
            f"{self.timestep_fs:g} fs) in {self.seconds:.2f} s: {self.ns_per_day:.3g} ns/day, "
            f"{self.atom_steps_per_second:.4g} atom-steps/s"
        ]
        if self.ensemble == "nve":
            fluctuation = float(np.ptp(self.total_energies)) / self.n_atoms
            lines.append(
                f"total energy drift {self.drift_ev_per_atom_per_ps * 1e3:.3g} meV/atom/ps, "
                f"range {fluctuation * 1e3:.3g} meV/atom; final temperature "
                f"{self.temperatures[-1]:.1f} K"
            )
        else:
            lines.append(f"final temperature {self.temperatures[-1]:.1f} K")
        return "\n".join(lines)


def run_md(
    atoms: ase.Atoms,
    calculator: Calculator,
    *,
    ensemble: str = "nvt",
    timestep_fs: float = 1.0,
    temperature_K: float = 300.0,
    steps: int = 1000,
    friction_per_fs: float = 0.01,
    trajectory: str | Path | None = None,
    thermo: str | Path | None = None,
    interval: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> MDReport:
    """Run ASE molecular dynamics of ``atoms`` (changed in place) with ``calculator``.

    ensemble: ``nve`` (velocity Verlet) or ``nvt`` (Langevin at ``temperature_K`` with
        ``friction_per_fs`` 1/fs).
    temperature_K: K; initial velocities are drawn from the Maxwell-Boltzmann
        distribution at this temperature (seed ``seed``) with the total momentum removed.
    trajectory: ``.traj``, ``.extxyz`` or ``.xyz`` file getting a frame (with energy and
        forces) every ``interval`` steps; energies and temperatures are sampled as often.
    thermo: CSV file getting a row every ``interval`` steps (:data:`THERMO_COLUMNS`: step,
        time, potential, kinetic and total energy, temperature and, for a periodic
        structure, pressure with the kinetic contribution).
    progress: show progress on stderr (a bar on a terminal, plain lines elsewhere).
    """
    if not len(atoms):
        raise ValueError("the structure has no atoms: there is nothing to simulate")
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; choose one of {', '.join(ENSEMBLES)}")
    if steps < 1 or interval < 1:
        raise ValueError(f"steps and interval must be >= 1, got {steps} and {interval}")
    if timestep_fs <= 0 or temperature_K < 0 or friction_per_fs < 0:
        raise ValueError("timestep must be positive, temperature and friction non-negative")
    trajectory_format = _trajectory_format(trajectory)

    rng = np.random.default_rng(seed)
    atoms.calc = calculator
    # Maxwell-Boltzmann momenta: each component ~ N(0, m kB T); then zero total momentum.
    maxwell_boltzmann(atoms, temperature_K, rng)
    # a single atom has only its centre-of-mass motion: it starts at rest
    Stationary(atoms, preserve_temperature=len(atoms) > 1)
    dynamics: MolecularDynamics
    if ensemble == "nve":
        dynamics = VelocityVerlet(atoms, timestep_fs * units.fs)
    else:
        dynamics = Langevin(
            atoms,
            timestep_fs * units.fs,
            temperature_K=temperature_K,
            friction=friction_per_fs / units.fs,
            fixcm=False,
            rng=rng,
        )

    samples: list[tuple[float, float, float]] = []
    log: Callable[[list[float]], None] = lambda row: None  # noqa: E731

    def sample() -> None:
        potential, kinetic = atoms.get_potential_energy(), atoms.get_kinetic_energy()
        time_fs, temperature = dynamics.nsteps * timestep_fs, atoms.get_temperature()
        samples.append((time_fs, potential + kinetic, temperature))
        pressure = math.nan
        if atoms.pbc.all():
            stress = atoms.get_stress(include_ideal_gas=True)
            pressure = -float(stress[:3].mean()) / units.GPa
        log([dynamics.nsteps, time_fs, potential, kinetic, potential + kinetic, temperature,
             pressure])  # fmt: skip

    atoms.get_forces()  # first evaluation: session warm-up, outside the timing
    with contextlib.ExitStack() as stack:
        if trajectory is not None:
            write = stack.enter_context(_writer(Path(trajectory), trajectory_format, atoms))
            dynamics.attach(write, interval=interval)
        if thermo is not None:
            log = stack.enter_context(_thermo_writer(Path(thermo)))
        dynamics.attach(sample, interval=interval)
        if progress:
            bar = stack.enter_context(Progress(f"{ensemble.upper()} MD", steps, "steps"))
            dynamics.attach(lambda: bar.advance(dynamics.nsteps - bar.done), interval=1)
        start = time.perf_counter()
        dynamics.run(steps)
        seconds = time.perf_counter() - start
        if samples[-1][0] != steps * timestep_fs:
            sample()
    times, energies, temperatures = (np.array(column) for column in zip(*samples, strict=True))
    return MDReport(
        ensemble=ensemble,
        steps=steps,
        n_atoms=len(atoms),
        timestep_fs=timestep_fs,
        seconds=seconds,
        times_fs=times,
        total_energies=energies,
        temperatures=temperatures,
    )


def maxwell_boltzmann(atoms: ase.Atoms, temperature_K: float, rng: np.random.Generator) -> None:
    """Momenta of ``atoms`` drawn from the Maxwell-Boltzmann distribution at
    ``temperature_K``: each component ~ N(0, m kB T)."""
    scale = np.sqrt(atoms.get_masses() * units.kB * temperature_K)[:, None]
    atoms.set_momenta(rng.standard_normal((len(atoms), 3)) * scale)


def _trajectory_format(path: str | Path | None) -> str | None:
    if path is None:
        return None
    suffix = Path(path).suffix.lower()
    if suffix not in TRAJECTORY_FORMATS:
        raise ValueError(
            f"trajectory {path} must end in one of {', '.join(TRAJECTORY_FORMATS)}, got {suffix!r}"
        )
    return TRAJECTORY_FORMATS[suffix]


@contextlib.contextmanager
def _writer(path: Path, kind: str | None, atoms: ase.Atoms) -> Iterator[Callable[[], None]]:
    """A function writing the current frame of ``atoms`` to ``path`` (``traj`` or ``extxyz``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "traj":
        with Trajectory(path, "w", atoms) as trajectory:
            yield trajectory.write
    else:
        with open(path, "w") as file:
            yield lambda: ase.io.write(file, atoms, format="extxyz")


@contextlib.contextmanager
def _thermo_writer(path: Path) -> Iterator[Callable[[list[float]], None]]:
    """A function appending a row of :data:`THERMO_COLUMNS` to the CSV file ``path``, each
    row flushed so that a log of a long run can be followed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(THERMO_COLUMNS)

        def write(row: list[float]) -> None:
            cells = ["" if math.isnan(v) else f"{v:.15g}" for v in row[1:]]
            writer.writerow([int(row[0]), *cells])
            file.flush()

        yield write
