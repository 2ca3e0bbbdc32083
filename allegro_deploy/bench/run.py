"""The benchmark's run loop: memory first, then interleaved timings."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ase
import ase.build
import numpy as np

if TYPE_CHECKING:
    from allegro_deploy.models import AllegroModel

from allegro_deploy.runtime.progress import Progress

from .flops import GemmFlops, count_edges, gemm_rate
from .implementations import (
    LABELS,
    RUNTIME_BACKENDS,
    TORCH_IMPLEMENTATIONS,
    Evaluate,
    Implementation,
    open_implementation,
    timed_call,
)
from .memory import MEMORY_HEADROOM, RUNTIME_HOST_BYTES_PER_EDGE, available_memory, peak_memory
from .report import BenchReport, Row
from .workloads import BenchError, Case, TrainingWorkload

WARMUP = 2
"""Untimed calls per (implementation, workload) before the timed ones. ONNX Runtime reaches its
steady state on the third call: the first grows its memory arena and the second allocates
the memory pattern the first recorded (each ~450k page faults, 1.7 s instead of 1.0 s,
for the large benchmark model on 864 Cu; docs/design.md, *Two warm-up calls*)."""


@dataclass(frozen=True)
class BenchModel:
    """What the benchmark needs of a model: read from an export without torch, or from a
    torch model.

    name, path: the file (or a label). species, r_max (Å), dtype: of the model.
    parameters: trainable parameters. config: the model configuration
    (``ModelConfig.to_dict``). flops: the GEMM FLOPs of its evaluations; None for an
    export written before files recorded them (no FLOP floor is then reported).
    training: what it was trained on, from a checkpoint's statistics (species counts, mean
    neighbours) or an export's configuration (its mean neighbours, species in equal
    shares); None when neither says.
    """

    name: str
    path: str
    species: tuple[str, ...]
    r_max: float
    dtype: str
    parameters: int | None
    config: dict[str, Any]
    flops: GemmFlops | None
    training: TrainingWorkload | None = None

    @classmethod
    def of(
        cls,
        model: AllegroModel,
        source: str | Path = "",
        statistics: Mapping[str, Any] | None = None,
    ) -> BenchModel:
        """The torch ``model``, read from the file ``source`` (or labelled so), with the
        training ``statistics`` of its checkpoint."""
        c = model.config
        statistics = statistics or {}
        return cls(
            name=Path(source).name,
            path=str(source),
            species=tuple(c.species),
            r_max=c.r_max,
            dtype=c.model_dtype,
            parameters=model.parameter_count,
            config=c.to_dict(),
            flops=GemmFlops(*model.gemm_flops()),
            training=_training_workload(
                statistics.get("species_counts") or {},
                statistics.get("avg_num_neighbors"),
                statistics.get("r_max"),
            ),
        )

    @classmethod
    def read(cls, path: str | Path) -> BenchModel:
        """The model of a checkpoint (``.safetensors``, needs torch) or of an exported
        ``.onnx`` file (its metadata, no torch)."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from allegro_deploy.models.checkpoint import load_checkpoint

            checkpoint = load_checkpoint(path)
            return cls.of(checkpoint.model, path, checkpoint.statistics)
        if path.suffix != ".onnx":
            raise BenchError(
                f"{path} is neither a checkpoint (.safetensors) nor an exported model (.onnx)"
            )
        from allegro_deploy.runtime.metadata import read_metadata

        meta = read_metadata(path)
        raw = meta.raw
        counted = all(f"gemm_flops_per_{n}" in raw for n in ("edge", "call"))
        config = json.loads(raw.get("model_config", "{}"))
        neighbours = config.get("avg_num_neighbors")
        if isinstance(neighbours, dict):
            neighbours = sum(neighbours.values()) / len(neighbours)
        return cls(
            name=path.name,
            path=str(path),
            species=meta.species,
            r_max=meta.r_max,
            dtype=meta.dtype,
            parameters=int(raw["parameters"]) if "parameters" in raw else None,
            config=config,
            flops=GemmFlops(int(raw["gemm_flops_per_edge"]), int(raw["gemm_flops_per_call"]))
            if counted
            else None,
            training=_training_workload(dict.fromkeys(meta.species, 1), neighbours, meta.r_max),
        )


def _training_workload(
    counts: Mapping[str, int], neighbours: float | None, r_max: float | None
) -> TrainingWorkload | None:
    """The training workload of species ``counts`` at ``neighbours`` mean neighbours within
    ``r_max`` Å; None when they say nothing."""
    if not counts or not neighbours or not r_max or neighbours <= 1.0:
        return None  # an untrained model's placeholder (1.0) says nothing
    total = sum(counts.values())
    return TrainingWorkload(
        {s: n / total for s, n in counts.items()}, float(neighbours), float(r_max)
    )


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` inside (None: left alone, torch not imported)."""
    if not threads:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_bench(
    specs: Sequence[Implementation],
    cases: Sequence[Case],
    model: BenchModel,
    *,
    repeats: int = 5,
    warmup: int = WARMUP,
    memory: bool = True,
    threads: int | None = None,
    unavailable: dict[str, str] | None = None,
) -> BenchReport:
    """Time every implementation of ``specs`` on every workload of ``cases``.

    model: the model the implementations run (its edges and FLOPs are counted).
    repeats, warmup: timed and untimed calls per (implementation, workload); ``warmup`` >= 1,
        the first call's forces are compared with the baseline's (the first spec).
    memory: measure the peak memory of each (implementation, workload) in a fresh process first;
        a workload projected (from the largest bytes per atom, or for the runtime
        implementations per edge of one graph evaluation, measured so far on that one) to need more
        than :data:`MEMORY_HEADROOM` of the available memory is skipped on that implementation, as
        are larger ones after a failure.
    threads: CPU threads of every implementation and of the GEMM rate measurement.
    unavailable: implementations that cannot run here, with the reason (only reported).
    """
    if repeats < 1 or warmup < 1:
        raise BenchError(f"repeats and warmup must be >= 1, got {repeats} and {warmup}")
    if not specs:
        raise BenchError("no implementation can run this model here")
    torch_specs = any(spec.name in TORCH_IMPLEMENTATIONS for spec in specs)
    with _torch_threads(threads if torch_specs else None):
        cases = sorted(cases, key=lambda case: (case.kind != "fcc", case.size, case.separate))
        structures = {case: case.structures() for case in cases}
        rows = {
            (spec.name, case): Row(
                implementation=spec.name,
                case=case.label,
                kind=case.kind,
                n_atoms=sum(len(a) for a in structures[case]),
                n_structures=len(structures[case]),
                n_edges=count_edges(structures[case], model.r_max),
                calls=len(structures[case]) if case.separate else 1,
            )
            for case in cases
            for spec in specs
        }
        if model.flops is not None:
            for row in rows.values():
                row.flops = model.flops.of(row.n_edges, row.calls)
        steps = len(rows) * (warmup + repeats + memory)
        with Progress("GEMM rate", steps + 2, "steps") as progress:
            rate = gemm_rate(threads)
            progress.advance()
            if memory:
                for spec in specs:
                    _measure_memory(spec, cases, rows, progress)
            evaluators = {spec.name: open_implementation(spec) for spec in specs}
            for case in cases:
                _time_case(specs, evaluators, case, structures[case], rows, warmup, repeats,
                           progress)  # fmt: skip
            # the faster of before and after the timings: a busy moment lowers one of them
            rate = max(rate, gemm_rate(threads))
            progress.advance()
    return BenchReport(
        model=model,
        implementations=[spec.name for spec in specs],
        unavailable=dict(unavailable or {}),
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        gemm_rate=rate,
        rows=list(rows.values()),
    )


def _measure_memory(
    spec: Implementation,
    cases: Sequence[Case],
    rows: dict[tuple[str, Case], Row],
    progress: Progress,
) -> None:
    """Peak memory of ``spec`` on ``cases`` (ascending in atoms), guarded by projection.

    The torch implementations evaluate all atoms at once: memory is projected per atom. The
    runtime implementations evaluate at most ``DEFAULT_EDGE_BUDGET`` edges per graph (a
    larger structure in pieces of centers): memory is projected per edge of one graph
    evaluation, plus
    :data:`RUNTIME_HOST_BYTES_PER_EDGE` for all edges.
    """
    from allegro_deploy.runtime.potential import DEFAULT_EDGE_BUDGET

    runtime = spec.name in RUNTIME_BACKENDS

    def host(row: Row) -> int:
        return RUNTIME_HOST_BYTES_PER_EDGE * row.n_edges if runtime else 0

    def size(row: Row) -> int:
        """What the memory beyond ``host`` grows with."""
        return max(min(row.n_edges, DEFAULT_EDGE_BUDGET), 1) if runtime else row.n_atoms

    per_size = 0.0
    failed = ""
    for case in sorted(cases, key=lambda c: rows[spec.name, c].n_atoms):
        row = rows[spec.name, case]
        progress.stage(f"memory: {spec.label}, {case.label}", announce=False)
        projected = per_size * size(row) + host(row)
        if failed:
            row.skipped = f"a smaller workload failed ({failed})"
        elif projected > MEMORY_HEADROOM * available_memory():
            row.skipped = (
                f"would need ~{projected / 2**30:.1f} GiB, "
                f"{available_memory() / 2**30:.1f} GiB available"
            )
        else:
            try:
                row.peak_memory = peak_memory(spec, case)
                per_size = max(per_size, (row.peak_memory - host(row)) / size(row))
            except RuntimeError as error:
                failed = row.skipped = f"memory measurement failed: {error}"
        progress.advance()


def _time_case(
    specs: Sequence[Implementation],
    evaluators: dict[str, Evaluate],
    case: Case,
    structures: list[ase.Atoms],
    rows: dict[tuple[str, Case], Row],
    warmup: int,
    repeats: int,
    progress: Progress,
) -> None:
    """Warm up, check against the baseline, then time the implementations in turn, ``repeats``
    rounds; fills the rows of ``case``."""
    calls = {
        spec.name: timed_call(evaluators[spec.name], case, structures)
        for spec in specs
        if not rows[spec.name, case].skipped
    }
    forces = {}
    for name, call in calls.items():
        progress.stage(f"warm-up: {LABELS[name]}, {case.label}", announce=False)
        forces[name] = call()
        for _ in range(warmup - 1):
            call()
        progress.advance(warmup)
    reference = forces.get(specs[0].name)
    if reference is not None:
        scale = max(float(np.abs(reference).max()), 1e-12)
        for name, value in forces.items():
            rows[name, case].force_deviation = float(np.abs(value - reference).max()) / scale
    for repeat in range(repeats):
        for name, call in calls.items():
            progress.stage(f"{LABELS[name]}, {case.label} ({repeat + 1})", announce=False)
            start = time.perf_counter()
            call()
            rows[name, case].times.append(time.perf_counter() - start)
            progress.advance()
    base = rows[specs[0].name, case].median
    for name in calls:
        if base is not None:
            rows[name, case].speedup = base / rows[name, case].median
