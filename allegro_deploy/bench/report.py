"""What a benchmark run measured: rows, the table, JSON and the scaling plot."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from allegro_deploy import __version__

from .implementations import LABELS

if TYPE_CHECKING:
    import rich.table

    from .run import BenchModel

TIMED = (
    "one call = input checks + neighbor list (vesin) + energy, forces and virial, from ase.Atoms"
)


@dataclass
class Row:
    """One (implementation, workload): times in s, memory in bytes, GEMM FLOPs per timed call
    (None when the model's count is unknown)."""

    implementation: str
    case: str
    kind: str
    n_atoms: int
    n_structures: int
    n_edges: int
    calls: int
    flops: int | None = None
    times: list[float] = field(default_factory=list)
    peak_memory: int | None = None
    force_deviation: float | None = None
    speedup: float | None = None
    skipped: str = ""

    @property
    def median(self) -> float | None:
        return statistics.median(self.times) if self.times else None

    @property
    def per_atom(self) -> float | None:
        """s per atom."""
        return None if self.median is None else self.median / self.n_atoms

    @property
    def atom_steps_per_second(self) -> float | None:
        return None if self.median is None else self.n_atoms / self.median

    def floor_fraction(self, flop_rate: float) -> float | None:
        """The FLOP floor (FLOPs at ``flop_rate``) as a fraction of the measured time."""
        if self.median is None or self.flops is None:
            return None
        return self.flops / flop_rate / self.median

    @property
    def memory_per_atom(self) -> float | None:
        return None if self.peak_memory is None else self.peak_memory / self.n_atoms


@dataclass
class BenchReport:
    """Everything :func:`run_bench` measured; see :meth:`to_json` for the units."""

    model: BenchModel
    implementations: list[str]
    unavailable: dict[str, str]
    threads: int | None
    warmup: int
    repeats: int
    gemm_rate: float
    rows: list[Row]

    @property
    def baseline(self) -> str:
        return self.implementations[0]

    def to_json(self) -> dict[str, Any]:
        """Plain data: seconds, bytes, FLOP, FLOP/s."""
        import onnxruntime as ort

        rows = []
        for row in self.rows:
            entry = dataclasses.asdict(row)
            entry.update(
                label=LABELS[row.implementation],
                median_s=row.median,
                per_atom_s=row.per_atom,
                atom_steps_per_s=row.atom_steps_per_second,
                floor_fraction=row.floor_fraction(self.gemm_rate),
                memory_bytes_per_atom=row.memory_per_atom,
            )
            rows.append(entry)
        return {
            "allegro_deploy": __version__,
            "model": dataclasses.asdict(self.model),
            "timed": TIMED,
            "machine": {
                "platform": platform.platform(),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "onnxruntime": ort.__version__,
                "gemm_float32_flop_per_s": self.gemm_rate,
            },
            "threads": self.threads,
            "warmup": self.warmup,
            "repeats": self.repeats,
            "baseline": self.baseline,
            "implementations": self.implementations,
            "unavailable": self.unavailable,
            "rows": rows,
        }

    def table(self) -> rich.table.Table:
        """The results as a rich table, workloads in rows, one line per implementation."""
        from rich import box
        from rich.table import Table

        threads = self.threads or "default"
        floor = (
            f"GEMM FLOPs at {self.gemm_rate / 1e9:.0f} GFLOP/s (float32 GEMM, the faster of "
            "before and after the timings)"
            if self.model.flops is not None
            else "not known, the file records no FLOP count (re-export it to get one)"
        )
        table = Table(
            box=box.SIMPLE_HEAD,
            caption_justify="left",
            title=f"energy + forces, median of {self.repeats} interleaved repeats after "
            f"{self.warmup} warm-up, {threads} threads",
            caption=f"{TIMED}. implementations: "
            + ", ".join(f"{name} = {LABELS[name]}" for name in self.implementations)
            + f". speed-up: vs {self.baseline} in this run; % floor: {floor}; "
            "memory: peak RSS of one call in a fresh process; "
            "dev.: max |ΔF| / max |F| vs the baseline."
            + "".join(
                f"\nskipped: {r.implementation} on {r.case}, {r.n_atoms} atoms: {r.skipped}"
                for r in self.rows
                if r.skipped
            ),
        )
        table.add_column("workload")
        table.add_column("atoms", justify="right")
        table.add_column("implementation")
        for name in ("ms/call", "µs/atom", "atom-steps/s", "speed-up", "% floor", "MB", "B/atom"):
            table.add_column(name, justify="right")
        table.add_column("dev.", justify="right")
        previous = None
        for row in self.rows:
            new = (row.case, row.n_atoms) != previous
            if new and previous is not None:
                table.add_section()
            previous = (row.case, row.n_atoms)
            head = [row.case, f"{row.n_atoms}"] if new else ["", ""]
            if row.skipped:
                table.add_row(*head, row.implementation, "skipped")
                continue
            fraction = row.floor_fraction(self.gemm_rate)
            table.add_row(
                *head,
                row.implementation,
                f"{row.median * 1e3:.2f}",
                f"{row.per_atom * 1e6:.2f}",
                f"{row.atom_steps_per_second:,.0f}",
                "" if row.speedup is None else f"{row.speedup:.2f}×",
                "" if fraction is None else f"{fraction * 100:.1f}",
                "" if row.peak_memory is None else f"{row.peak_memory / 1e6:.0f}",
                "" if row.memory_per_atom is None else f"{row.memory_per_atom:.3g}",
                "" if row.force_deviation is None else f"{row.force_deviation:.1e}",
            )
        return table

    def plot(self, path: str | Path) -> None:
        """Time per atom and peak memory per atom against atoms (fcc workloads), PNG."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        memory = any(r.peak_memory is not None for r in self.rows if r.kind == "fcc")
        figure, axes = plt.subplots(1, 2 if memory else 1, figsize=(11 if memory else 6, 4.2))
        axes = np.atleast_1d(axes)
        for name in self.implementations:
            rows = [r for r in self.rows if r.implementation == name and r.kind == "fcc"]
            timed = [r for r in rows if r.median is not None]
            axes[0].plot(
                [r.n_atoms for r in timed], [r.per_atom * 1e6 for r in timed], "o-",
                label=LABELS[name],
            )  # fmt: skip
            if memory:
                measured = [r for r in rows if r.peak_memory is not None]
                axes[1].plot(
                    [r.n_atoms for r in measured], [r.memory_per_atom / 1e3 for r in measured],
                    "o-", label=LABELS[name],
                )  # fmt: skip
        names = ["time per atom (µs)", "peak memory per atom (kB)"]
        for axis, name in zip(axes, names, strict=False):
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xlabel("atoms (fcc cell)")
            axis.set_ylabel(name)
            axis.grid(True, which="both", alpha=0.3)
            axis.legend()
        figure.suptitle(f"{self.model.name or 'model'}: energy + forces per call")
        figure.tight_layout()
        figure.savefig(path, dpi=120)
        plt.close(figure)

    def write(self, folder: str | Path) -> tuple[Path, Path]:
        """``bench.json`` and ``bench_scaling.png`` in ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        json_path, png_path = folder / "bench.json", folder / "bench_scaling.png"
        json_path.write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
        self.plot(png_path)
        return json_path, png_path
