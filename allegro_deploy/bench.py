"""Speed and memory of energy + forces evaluations, per backend and system size.

``allegro-deploy bench`` (:func:`run_bench`) times one model on every backend that can run
it here, in one process, over the same workloads:

* ``official``: the official ``nequip-allegro`` model in torch eager mode, loaded with
  nequip's own loader from the file a checkpoint was imported from;
* ``torch``: this package's torch model in eager mode, from a checkpoint;
* ``ort-cpu`` / ``openvino`` / ``ort-cuda`` / ``tensorrt``: an exported ``structures`` model
  through :meth:`allegro_deploy.runtime.Potential.evaluate` on that backend (a float32-only
  export for ``tensorrt``).

Every timed call starts from ``ase.Atoms`` and includes the input checks, the neighbor
list (vesin, the same for all backends) and the energy, forces and virial of the model
(:data:`TIMED`). Workloads (:class:`Case`) are rattled fcc cells of a metal and batches of
21-atom molecules, evaluated together in one call or one call per molecule. Each
(backend, workload) is warmed up, then the backends take turns for each repeat and the
median is reported, with the speed-up over the first backend (the baseline), the time per
atom, atom-steps/s, the GEMM FLOPs of the evaluation (:func:`gemm_flops`) against the
machine's float32 GEMM rate measured in the same run, before and after the timings, the
faster kept (:func:`gemm_rate`), and the peak
memory of one evaluation measured in a fresh process (:func:`peak_memory`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ase
import ase.build
import numpy as np
from ase.data import atomic_numbers, covalent_radii, reference_states

from allegro_deploy import __version__
from allegro_deploy.runtime.neighbors import neighbor_list

if TYPE_CHECKING:
    import rich.console
    import rich.table

    from allegro_deploy.models import AllegroModel

BACKENDS = ("official", "torch", "ort-cpu", "openvino", "ort-cuda", "tensorrt")
"""Backend names, in the order they are run; the first one run is the baseline."""
LABELS = {
    "official": "nequip-allegro eager",
    "torch": "torch eager",
    "ort-cpu": "ONNX Runtime CPU",
    "openvino": "OpenVINO CPU",
    "ort-cuda": "ONNX Runtime CUDA",
    "tensorrt": "TensorRT",
}
_RUNTIME_BACKENDS = {
    "ort-cpu": "cpu",
    "openvino": "openvino",
    "ort-cuda": "cuda",
    "tensorrt": "tensorrt",
}
TIMED = (
    "one call = input checks + neighbor list (vesin) + energy, forces and virial, from ase.Atoms"
)
MOLECULE_ATOMS = 21
RATTLE = 0.05
"""Å, standard deviation of the random displacement of every atom of a workload."""
WARMUP = 2
"""Untimed calls per (backend, workload) before the timed ones. ONNX Runtime reaches its
steady state on the third call: the first grows its memory arena and the second allocates
the memory pattern the first recorded (each ~450k page faults, 1.7 s instead of 1.0 s,
for the large benchmark model on 864 Cu; docs/design.md, *Two warm-up calls*)."""
MEMORY_HEADROOM = 0.8
"""Fraction of the available memory a (backend, workload) may be projected to use."""
RUNTIME_HOST_BYTES_PER_EDGE = 120
"""Bytes per edge the runtime backends hold besides the graph evaluations: neighbor list,
checks and inputs (113 measured with tracemalloc for 100k-atom fcc Cu, 4.3M edges)."""

Evaluate = Callable[[Sequence[ase.Atoms]], np.ndarray]
"""One evaluation of structures together: forces (n_atoms, 3) float64 eV/Å."""


class BenchError(ValueError):
    """Bad input to the benchmark (unknown file type, size < 1, element not in the model)."""


# --------------------------------------------------------------------------- workloads


def fcc_lattice_constant(symbol: str) -> float:
    """Å: ASE's reference fcc lattice constant of ``symbol``, or else the fcc lattice whose
    nearest-neighbour distance is twice the covalent radius."""
    state = reference_states[atomic_numbers[symbol]]
    if state is not None and state.get("symmetry") == "fcc":
        return float(state["a"])
    return 2.0 * math.sqrt(2.0) * float(covalent_radii[atomic_numbers[symbol]])


def first_metal(species: Sequence[str]) -> str:
    """The first of ``species`` that is a metal (an fcc, bcc or hcp reference state in ASE),
    else the first species."""
    for symbol in species:
        state = reference_states[atomic_numbers[symbol]]
        if state is not None and state.get("symmetry") in ("fcc", "bcc", "hcp"):
            return symbol
    return species[0]


def fcc_repeats(n_atoms: int) -> tuple[int, int, int]:
    """Repetitions (n1 <= n2 <= n3, within one of each other) of the 4-atom cubic fcc
    cell whose atom count 4·n1·n2·n3 is nearest to ``n_atoms``."""
    k = max(1, round((n_atoms / 4) ** (1 / 3)) - 1)
    candidates = [(k, k, k), (k, k, k + 1), (k, k + 1, k + 1), (k + 1, k + 1, k + 1)]
    candidates += [(k + 1, k + 1, k + 2), (k + 1, k + 2, k + 2)]
    return min(candidates, key=lambda r: abs(4 * math.prod(r) - n_atoms))


def fcc_cell(n_atoms: int, element: str, seed: int = 0) -> ase.Atoms:
    """Periodic fcc ``element`` of about ``n_atoms`` atoms (:func:`fcc_repeats`), lattice
    constant :func:`fcc_lattice_constant`, every atom displaced by N(0, RATTLE) Å."""
    a = fcc_lattice_constant(element)
    atoms = ase.build.bulk(element, "fcc", a=a, cubic=True).repeat(fcc_repeats(n_atoms))
    atoms.positions += np.random.default_rng(seed).normal(0.0, RATTLE, atoms.positions.shape)
    return atoms


def aspirin() -> ase.Atoms:
    """Acetylsalicylic acid (C9H8O4, 21 atoms) from standard bond lengths and angles (Å):
    planar ring and carboxylic acid, acetyl ester twisted out of the ring plane."""
    angles = np.radians(np.arange(6) * 60.0)
    radial = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], 1)
    up = np.array([0.0, 0.0, 1.0])

    def turned(vector: np.ndarray, degrees: float) -> np.ndarray:
        """``vector`` rotated about z."""
        a = np.radians(degrees)
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ vector

    symbols = ["C"] * 6 + ["H"] * 4
    positions = [*(1.39 * radial), *(2.47 * radial[2:])]
    # carboxylic acid on ring carbon 0
    carboxyl = 2.87 * radial[0]
    hydroxyl = carboxyl + 1.34 * turned(radial[0], -60)
    symbols += ["C", "O", "O", "H"]
    positions += [carboxyl, carboxyl + 1.22 * turned(radial[0], 60), hydroxyl]
    positions += [hydroxyl + 0.97 * radial[0]]
    # acetyl ester on ring carbon 1, in the plane of the ring normal
    out = radial[1]
    ester = 2.75 * out
    carbonyl = ester + 1.36 * (0.5 * out + 0.866 * up)
    axis = -0.5 * out + 0.866 * up
    methyl = carbonyl + 1.50 * axis
    symbols += ["O", "C", "O", "C", "H", "H", "H"]
    positions += [ester, carbonyl, carbonyl + 1.20 * out, methyl]
    across, side = 0.866 * out + 0.5 * up, np.cross(out, up)
    for phi in np.radians([0.0, 120.0, 240.0]):
        direction = 0.334 * axis + 0.943 * (np.cos(phi) * across + np.sin(phi) * side)
        positions.append(methyl + 1.09 * direction)
    return ase.Atoms(symbols, positions=np.array(positions))


def cluster(species: Sequence[str], rng: np.random.Generator) -> ase.Atoms:
    """A compact 21-atom cluster: the sites of an fcc lattice (spaced for the largest of
    ``species``) nearest to a lattice site, each of a random species."""
    a = max(fcc_lattice_constant(s) for s in species)
    lattice = ase.build.bulk("X", "fcc", a=a, cubic=True).repeat(3)
    distance = np.linalg.norm(lattice.positions - lattice.positions[len(lattice) // 2], axis=1)
    positions = lattice.positions[np.argsort(distance, kind="stable")[:MOLECULE_ATOMS]]
    return ase.Atoms(list(rng.choice(list(species), MOLECULE_ATOMS)), positions=positions)


def molecules(species: Sequence[str], count: int, seed: int = 0) -> list[ase.Atoms]:
    """``count`` 21-atom molecules of ``species``, each displaced by N(0, RATTLE) Å:
    aspirin when H, C and O are among the species, else :func:`cluster` s."""
    rng = np.random.default_rng(seed)
    organic = {"H", "C", "O"} <= set(species)
    result = []
    for _ in range(count):
        atoms = aspirin() if organic else cluster(species, rng)
        atoms.positions += rng.normal(0.0, RATTLE, atoms.positions.shape)
        result.append(atoms)
    return result


@dataclass(frozen=True)
class Case:
    """One timed workload, as plain data so that a fresh process builds the same structures.

    kind: ``fcc`` (one periodic cell of about ``size`` atoms of ``species[0]``) or
        ``molecules`` (``size`` molecules of ``species``, see :func:`molecules`).
    separate: for molecules, one call per molecule instead of all in one call.
    """

    kind: str
    size: int
    species: tuple[str, ...]
    separate: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("fcc", "molecules"):
            raise BenchError(f"unknown workload kind {self.kind!r}; choose fcc or molecules")
        if self.size < 1:
            raise BenchError(f"a workload needs a size of at least 1, got {self.size}")

    def structures(self) -> list[ase.Atoms]:
        if self.kind == "fcc":
            return [fcc_cell(self.size, self.species[0])]
        return molecules(self.species, self.size)

    @property
    def label(self) -> str:
        if self.kind == "fcc":
            return f"fcc {self.species[0]}"
        what = "C9H8O4" if {"H", "C", "O"} <= set(self.species) else "21-atom clusters"
        calls = f"{self.size} calls" if self.separate else "1 call"
        return f"{self.size}× {what}, {calls}"


def default_cases(
    species: Sequence[str], sizes: Sequence[int], n_molecules: int, element: str | None = None
) -> list[Case]:
    """fcc cells of ``element`` (default: :func:`first_metal` of the species) of each size,
    then ``n_molecules`` molecules in one call and in one call each (none when 0)."""
    element = element or first_metal(species)
    if element not in species:
        raise BenchError(
            f"element {element} is not one of the model's species ({', '.join(species)})"
        )
    bad = [size for size in sizes if size < 1]
    if bad:
        raise BenchError(f"system sizes must be at least 1 atom, got {bad}")
    cases = [Case("fcc", size, (element,)) for size in sizes]
    if n_molecules:
        cases += [
            Case("molecules", n_molecules, tuple(species), separate) for separate in (False, True)
        ]
    return cases


# --------------------------------------------------------------------------- FLOPs


def gemm_flops(model: AllegroModel, n_edges: int, n_calls: int = 1) -> int:
    """Matrix-product FLOPs of ``n_calls`` energy + forces evaluations of ``n_edges`` edges
    in all: the MLPs and tensor products, forward and input-gradient backward (no weight
    gradients), as ``torch.utils.flop_counter`` counts them for those modules.

    Per edge: every MLP layer (in, out) costs 2·in·out forward and 2·in·out backward;
    every tensor product (U channels, I × J -> K) costs 2·U·I·J·K forward (the outer
    product times the coupled CG tensor) and the same backward. Per call: every tensor
    product couples its (U, P) path weights with the (P, I, J, K) CG tensor, 2·U·P·I·J·K.
    Elementwise work (nonlinearities, outer products, gathers, scatters) and products that
    only move data (by 0/1 matrices) are not counted.
    """
    from allegro_deploy.models.mlp import ScalarMLP

    mlp = sum(
        w.shape[0] * w.shape[1]
        for m in model.modules()
        if isinstance(m, ScalarMLP)
        for w in m.weights
    )
    tps = model.tensor_products
    per_edge = 4 * mlp + 4 * sum(tp.channels * math.prod(tp.cg.shape[1:]) for tp in tps)
    per_call = sum(2 * tp.channels * tp.cg.numel() for tp in tps)
    return n_edges * per_edge + n_calls * per_call


def gemm_rate(threads: int | None = None, size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of a large float32 matrix product (size × size @ size × size) in torch on
    ``threads`` threads (None: torch's current setting), best of ``repeats`` after a
    warm-up: the machine's practical peak for the GEMMs of a model."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    try:
        generator = torch.Generator().manual_seed(0)
        a, b = (torch.randn(size, size, generator=generator) for _ in range(2))
        torch.mm(a, b)
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            seconds.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2 * size**3 / min(seconds)


def count_edges(structures: Sequence[ase.Atoms], r_max: float) -> int:
    """Directed edges within ``r_max`` (Å) of ``structures`` in all."""
    return sum(
        len(neighbor_list(a.positions, a.cell.array, a.pbc, r_max).centers) for a in structures
    )


# --------------------------------------------------------------------------- backends


@dataclass(frozen=True)
class BackendSpec:
    """A backend to open, as plain data so that a fresh process opens the same one.

    name: one of :data:`BACKENDS`.
    model: the file it runs: a checkpoint for ``torch`` and ``official`` (the official
        model is then read from the file the checkpoint was imported from), an exported
        ``.onnx`` file for the ONNX backends.
    threads: CPU threads (None: the library default).
    official_config: ``official`` only: an official model config (as in a training YAML)
        to build with nequip instead of reading a file; its ``seed`` fixes the weights.
    """

    name: str
    model: str
    threads: int | None = None
    official_config: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        return LABELS[self.name]


def official_source(checkpoint: str | Path) -> tuple[Path | None, str]:
    """The official file ``checkpoint`` was imported from, or None and why it cannot be
    used (not imported, file gone or changed since)."""
    from allegro_deploy.models.checkpoint import file_sha256, load_checkpoint

    source = load_checkpoint(checkpoint).provenance.get("imported_from")
    if not source:
        return None, "model did not come from nequip-allegro"
    path = Path(source["path"])
    if not path.is_file():
        return None, f"the official file it was imported from, {path}, no longer exists"
    if file_sha256(path) != source.get("sha256"):
        return None, f"the official file it was imported from, {path}, changed since"
    return path, ""


def nequip_missing() -> str:
    """Why the official backend cannot run at all here ("" when it can)."""
    missing = [p for p in ("nequip", "allegro") if importlib.util.find_spec(p) is None]
    return "nequip-allegro not installed" if missing else ""


def _tensorrt_available() -> bool:
    """ONNX Runtime here has its TensorRT execution provider (onnxruntime-gpu)."""
    import onnxruntime as ort

    return "TensorrtExecutionProvider" in ort.get_available_providers()


def runtime_backend_missing(path: str | Path, name: str) -> str:
    """Why the ONNX backend ``name`` cannot run ``path`` here ("" when it can)."""
    import onnxruntime as ort

    from allegro_deploy.runtime.backends import BackendError
    from allegro_deploy.runtime.potential import Potential

    if name == "ort-cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime-gpu not installed (or no GPU)"
    if name == "tensorrt" and not _tensorrt_available():
        return "onnxruntime-gpu with NVIDIA TensorRT not installed"
    try:
        Potential.load(path, _RUNTIME_BACKENDS[name])
    except BackendError as error:
        return str(error)
    return ""


def _torch_evaluate(model: AllegroModel) -> Evaluate:
    from allegro_deploy.models import AtomicGraph

    c = model.config

    def evaluate(structures: Sequence[ase.Atoms]) -> np.ndarray:
        graph = AtomicGraph.from_atoms(structures, c.atomic_numbers, c.r_max)
        return model(graph)["forces"].detach().numpy()

    return evaluate


def _official_evaluate(spec: BackendSpec) -> Evaluate:
    from allegro_deploy.models import AtomicGraph
    from allegro_deploy.models.checkpoint import load_checkpoint
    from allegro_deploy.models.official_reference import load_official, official_outputs

    c = load_checkpoint(spec.model).config
    if spec.official_config is not None:
        official = load_official(spec.official_config)
    else:
        source, why = official_source(spec.model)
        if source is None:
            raise BenchError(f"official backend: {why}")
        official = load_official(source)

    def evaluate(structures: Sequence[ase.Atoms]) -> np.ndarray:
        graph = AtomicGraph.from_atoms(structures, c.atomic_numbers, c.r_max)
        return official_outputs(official, graph)["forces"].detach().double().numpy()

    return evaluate


def open_backend(spec: BackendSpec) -> Evaluate:
    """Load ``spec``'s model on its backend; torch threads are the caller's to set."""
    if spec.name == "torch":
        from allegro_deploy.models.checkpoint import load_checkpoint

        return _torch_evaluate(load_checkpoint(spec.model).model)
    if spec.name == "official":
        return _official_evaluate(spec)
    from allegro_deploy.runtime.potential import Potential

    potential = Potential.load(spec.model, _RUNTIME_BACKENDS[spec.name], threads=spec.threads)
    return lambda structures: np.concatenate([r.forces for r in potential.evaluate(structures)])


def timed_call(evaluate: Evaluate, case: Case, structures: list[ase.Atoms]) -> Callable[[], Any]:
    """One timed call of ``case``: all structures in one evaluation, or one each."""
    if case.separate:
        return lambda: np.concatenate([evaluate([atoms]) for atoms in structures])
    return lambda: evaluate(structures)


# --------------------------------------------------------------------------- memory


def _reset_peak_rss() -> None:
    """Reset this process's peak RSS (``VmHWM``) to its current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as file:
        file.write("5")


def _peak_rss() -> int:
    """Bytes, the largest resident set size of this process since start or reset.

    ``VmHWM`` of ``/proc/self/status``, not ``getrusage``: the latter also reports the
    peak at which any thread of the process exited, which no reset clears.
    """
    return _proc_bytes("/proc/self/status", "VmHWM")


def available_memory() -> int:
    """Bytes of memory available for new allocations (``MemAvailable``)."""
    return _proc_bytes("/proc/meminfo", "MemAvailable")


def _proc_bytes(path: str, key: str) -> int:
    """Bytes of the ``key:  <n> kB`` line of a ``/proc`` file."""
    with open(path) as file:
        for line in file:
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
    raise OSError(f"{path} has no {key}")


def measure_peak_memory() -> None:
    """Child side of :func:`peak_memory`: a JSON request on stdin, bytes on stdout."""
    request = json.load(sys.stdin)
    spec = BackendSpec(**request["spec"])
    case = Case(**{**request["case"], "species": tuple(request["case"]["species"])})
    if spec.name in ("torch", "official") and spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    call = timed_call(open_backend(spec), case, case.structures())
    _reset_peak_rss()
    baseline = _peak_rss()
    call()
    print(json.dumps({"bytes": _peak_rss() - baseline}))


def peak_memory(spec: BackendSpec, case: Case) -> int:
    """Peak resident memory (bytes) of the first timed call of ``case`` on ``spec`` above
    the memory held once the model is loaded and the structures are built, measured in a
    fresh Python process so that nothing else run before counts.

    Raises ``RuntimeError`` with the child's last error line when it fails (or is
    killed, e.g. for lack of memory).
    """
    request = {"spec": dataclasses.asdict(spec), "case": dataclasses.asdict(case)}
    child = subprocess.run(
        [sys.executable, "-c", "from allegro_deploy.bench import measure_peak_memory as m; m()"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
    )
    if child.returncode != 0:
        lines = child.stderr.strip().splitlines()
        why = lines[-1] if lines else f"killed by signal {-child.returncode} (out of memory?)"
        raise RuntimeError(why)
    return int(json.loads(child.stdout.strip().splitlines()[-1])["bytes"])


# --------------------------------------------------------------------------- results


@dataclass
class Row:
    """One (backend, workload): times in s, memory in bytes, FLOPs per timed call."""

    backend: str
    case: str
    kind: str
    n_atoms: int
    n_structures: int
    n_edges: int
    calls: int
    flops: int
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
        return None if self.median is None else self.flops / flop_rate / self.median

    @property
    def memory_per_atom(self) -> float | None:
        return None if self.peak_memory is None else self.peak_memory / self.n_atoms


@dataclass
class BenchReport:
    """Everything :func:`run_bench` measured; see :meth:`to_json` for the units."""

    model: dict[str, Any]
    backends: list[str]
    unavailable: dict[str, str]
    threads: int | None
    warmup: int
    repeats: int
    gemm_rate: float
    rows: list[Row]

    @property
    def baseline(self) -> str:
        return self.backends[0]

    def to_json(self) -> dict[str, Any]:
        """Plain data: seconds, bytes, FLOP, FLOP/s."""
        import onnxruntime as ort

        rows = []
        for row in self.rows:
            entry = dataclasses.asdict(row)
            entry.update(
                label=LABELS[row.backend],
                median_s=row.median,
                per_atom_s=row.per_atom,
                atom_steps_per_s=row.atom_steps_per_second,
                floor_fraction=row.floor_fraction(self.gemm_rate),
                memory_bytes_per_atom=row.memory_per_atom,
            )
            rows.append(entry)
        return {
            "allegro_deploy": __version__,
            "model": self.model,
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
            "backends": self.backends,
            "unavailable": self.unavailable,
            "rows": rows,
        }

    def table(self) -> rich.table.Table:
        """The results as a rich table, workloads in rows, one line per backend."""
        from rich import box
        from rich.table import Table

        threads = self.threads or "default"
        table = Table(
            box=box.SIMPLE_HEAD,
            caption_justify="left",
            title=f"energy + forces, median of {self.repeats} interleaved repeats after "
            f"{self.warmup} warm-up, {threads} threads",
            caption=f"{TIMED}. backends: "
            + ", ".join(f"{name} = {LABELS[name]}" for name in self.backends)
            + f". speed-up: vs {self.baseline} in this run; % floor: "
            f"GEMM FLOPs at {self.gemm_rate / 1e9:.0f} GFLOP/s (float32 GEMM, the faster of "
            "before and after the timings); "
            "memory: peak RSS of one call in a fresh process; dev.: max |ΔF| / max |F| "
            "vs the baseline."
            + "".join(
                f"\nskipped: {r.backend} on {r.case}, {r.n_atoms} atoms: {r.skipped}"
                for r in self.rows
                if r.skipped
            ),
        )
        table.add_column("workload")
        table.add_column("atoms", justify="right")
        table.add_column("backend")
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
                table.add_row(*head, row.backend, "skipped")
                continue
            fraction = row.floor_fraction(self.gemm_rate)
            table.add_row(
                *head,
                row.backend,
                f"{row.median * 1e3:.2f}",
                f"{row.per_atom * 1e6:.2f}",
                f"{row.atom_steps_per_second:,.0f}",
                "" if row.speedup is None else f"{row.speedup:.2f}×",
                f"{fraction * 100:.1f}",
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
        for backend in self.backends:
            rows = [r for r in self.rows if r.backend == backend and r.kind == "fcc"]
            timed = [r for r in rows if r.median is not None]
            axes[0].plot(
                [r.n_atoms for r in timed], [r.per_atom * 1e6 for r in timed], "o-",
                label=LABELS[backend],
            )  # fmt: skip
            if memory:
                measured = [r for r in rows if r.peak_memory is not None]
                axes[1].plot(
                    [r.n_atoms for r in measured], [r.memory_per_atom / 1e3 for r in measured],
                    "o-", label=LABELS[backend],
                )  # fmt: skip
        names = ["time per atom (µs)", "peak memory per atom (kB)"]
        for axis, name in zip(axes, names, strict=False):
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xlabel("atoms (fcc cell)")
            axis.set_ylabel(name)
            axis.grid(True, which="both", alpha=0.3)
            axis.legend()
        figure.suptitle(f"{self.model.get('name', 'model')}: energy + forces per call")
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


# --------------------------------------------------------------------------- running


def describe_model(model: AllegroModel, source: str | Path) -> dict[str, Any]:
    """The model fields a report records."""
    c = model.config
    return {
        "name": Path(source).name,
        "path": str(source),
        "species": list(c.species),
        "r_max": c.r_max,
        "dtype": c.model_dtype,
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": c.to_dict(),
    }


def run_bench(
    specs: Sequence[BackendSpec],
    cases: Sequence[Case],
    model: AllegroModel,
    *,
    repeats: int = 5,
    warmup: int = WARMUP,
    memory: bool = True,
    threads: int | None = None,
    unavailable: dict[str, str] | None = None,
    source: str | Path = "",
    console: rich.console.Console | None = None,
) -> BenchReport:
    """Time every backend of ``specs`` on every workload of ``cases``.

    model: the torch model the backends run (its edges and FLOPs are counted; weights do
        not matter).
    repeats, warmup: timed and untimed calls per (backend, workload); ``warmup`` >= 1,
        the first call's forces are compared with the baseline's (the first spec).
    memory: measure the peak memory of each (backend, workload) in a fresh process first;
        a workload projected (from the largest bytes per atom, or for the runtime backends
        per edge of one graph evaluation, measured so far on that backend) to need more
        than :data:`MEMORY_HEADROOM` of the available memory is skipped on that backend, as
        are larger ones after a failure.
    threads: CPU threads of every backend and of the GEMM rate measurement.
    unavailable: backends that cannot run here, with the reason (only reported).
    """
    import torch
    from rich.console import Console
    from rich.progress import Progress

    if repeats < 1 or warmup < 1:
        raise BenchError(f"repeats and warmup must be >= 1, got {repeats} and {warmup}")
    if not specs:
        raise BenchError("no backend can run this model here")
    console = console or Console(stderr=True)
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        cases = sorted(cases, key=lambda case: (case.kind != "fcc", case.size, case.separate))
        structures = {case: case.structures() for case in cases}
        rows = {
            (spec.name, case): Row(
                backend=spec.name,
                case=case.label,
                kind=case.kind,
                n_atoms=sum(len(a) for a in structures[case]),
                n_structures=len(structures[case]),
                n_edges=count_edges(structures[case], model.config.r_max),
                calls=len(structures[case]) if case.separate else 1,
                flops=0,
            )
            for case in cases
            for spec in specs
        }
        for row in rows.values():
            row.flops = gemm_flops(model, row.n_edges, row.calls)
        steps = len(rows) * (warmup + repeats + memory)
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("GEMM rate", total=steps + 2)
            rate = gemm_rate(threads)
            progress.advance(task)
            if memory:
                for spec in specs:
                    _measure_memory(spec, cases, rows, progress, task)
            evaluators = {spec.name: open_backend(spec) for spec in specs}
            for case in cases:
                _time_case(specs, evaluators, case, structures[case], rows, warmup, repeats,
                           progress, task)  # fmt: skip
            # the faster of before and after the timings: a busy moment lowers one of them
            rate = max(rate, gemm_rate(threads))
            progress.advance(task)
    finally:
        torch.set_num_threads(previous_threads)
    return BenchReport(
        model=describe_model(model, source),
        backends=[spec.name for spec in specs],
        unavailable=dict(unavailable or {}),
        threads=threads,
        warmup=warmup,
        repeats=repeats,
        gemm_rate=rate,
        rows=list(rows.values()),
    )


def _measure_memory(
    spec: BackendSpec,
    cases: Sequence[Case],
    rows: dict[tuple[str, Case], Row],
    progress: Any,
    task: Any,
) -> None:
    """Peak memory of ``spec`` on ``cases`` (ascending in atoms), guarded by projection.

    The torch backends evaluate all atoms at once: memory is projected per atom. The runtime
    backends evaluate at most ``DEFAULT_EDGE_BUDGET`` edges per graph (a larger structure
    in pieces of centers): memory is projected per edge of one graph evaluation, plus
    :data:`RUNTIME_HOST_BYTES_PER_EDGE` for all edges.
    """
    from allegro_deploy.runtime.potential import DEFAULT_EDGE_BUDGET

    runtime = spec.name in _RUNTIME_BACKENDS

    def host(row: Row) -> int:
        return RUNTIME_HOST_BYTES_PER_EDGE * row.n_edges if runtime else 0

    def size(row: Row) -> int:
        """What the memory beyond ``host`` grows with."""
        return max(min(row.n_edges, DEFAULT_EDGE_BUDGET), 1) if runtime else row.n_atoms

    per_size = 0.0
    failed = ""
    for case in sorted(cases, key=lambda c: rows[spec.name, c].n_atoms):
        row = rows[spec.name, case]
        progress.update(task, description=f"memory: {spec.label}, {case.label}")
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
        progress.advance(task)


def _time_case(
    specs: Sequence[BackendSpec],
    evaluators: dict[str, Evaluate],
    case: Case,
    structures: list[ase.Atoms],
    rows: dict[tuple[str, Case], Row],
    warmup: int,
    repeats: int,
    progress: Any,
    task: Any,
) -> None:
    """Warm up, check against the baseline, then time the backends in turn, ``repeats``
    rounds; fills the rows of ``case``."""
    calls = {
        spec.name: timed_call(evaluators[spec.name], case, structures)
        for spec in specs
        if not rows[spec.name, case].skipped
    }
    forces = {}
    for name, call in calls.items():
        progress.update(task, description=f"warm-up: {LABELS[name]}, {case.label}")
        forces[name] = call()
        for _ in range(warmup - 1):
            call()
        progress.advance(task, warmup)
    reference = forces.get(specs[0].name)
    if reference is not None:
        scale = max(float(np.abs(reference).max()), 1e-12)
        for name, value in forces.items():
            rows[name, case].force_deviation = float(np.abs(value - reference).max()) / scale
    for repeat in range(repeats):
        for name, call in calls.items():
            progress.update(task, description=f"{LABELS[name]}, {case.label} ({repeat + 1})")
            start = time.perf_counter()
            call()
            rows[name, case].times.append(time.perf_counter() - start)
            progress.advance(task)
    base = rows[specs[0].name, case].median
    for name in calls:
        if base is not None:
            rows[name, case].speedup = base / rows[name, case].median


def load_model(path: str | Path) -> AllegroModel:
    """The torch model of a checkpoint (``.safetensors``), or one built from the config in
    an exported ``.onnx`` file's metadata (random weights: for counting edges and FLOPs)."""
    from allegro_deploy.models import AllegroModel, ModelConfig

    path = Path(path)
    if path.suffix == ".safetensors":
        from allegro_deploy.models.checkpoint import load_checkpoint

        return load_checkpoint(path).model
    if path.suffix == ".onnx":
        from allegro_deploy.runtime.metadata import read_metadata

        config = json.loads(read_metadata(path).raw["model_config"])
        return AllegroModel(ModelConfig.from_dict(config)).eval()
    raise BenchError(f"{path} is neither a checkpoint (.safetensors) nor an exported model (.onnx)")


def backend_specs(
    path: str | Path,
    model: AllegroModel,
    workdir: str | Path,
    threads: int | None = None,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[BackendSpec], dict[str, str]]:
    """The backends that can run ``path`` (a checkpoint or an ``.onnx`` export, whose torch
    model is ``model``) here, in :data:`BACKENDS` order, and the reason for each that cannot.

    From a checkpoint the ONNX backends run an export of ``model`` (in its dtype) written
    to ``workdir``. only: keep just these backend names.
    """
    path = Path(path)
    only = tuple(only or BACKENDS)
    unknown = [name for name in only if name not in BACKENDS]
    if unknown:
        raise BenchError(f"unknown backend(s) {unknown}; choose from {', '.join(BACKENDS)}")
    specs: list[BackendSpec] = []
    unavailable: dict[str, str] = {}
    if path.suffix == ".onnx":
        onnx_path = path
        for name in ("official", "torch"):
            if name in only:
                unavailable[name] = "needs a checkpoint, not an .onnx export"
    else:
        from allegro_deploy.exporters.onnx_export import export_model
        from allegro_deploy.models.checkpoint import file_sha256

        if "official" in only:
            why = nequip_missing() or official_source(path)[1]
            if why:
                unavailable["official"] = why
            else:
                specs.append(BackendSpec("official", str(path), threads))
        if "torch" in only:
            specs.append(BackendSpec("torch", str(path), threads))
        onnx_path = Path(workdir) / f"{path.stem}.onnx"
        if any(name in only for name in _RUNTIME_BACKENDS):
            log(f"exporting {path} ({model.config.model_dtype}) for the ONNX backends")
            export_model(model, onnx_path, checkpoint_sha256=file_sha256(path), log=log)
    files = {name: onnx_path for name in _RUNTIME_BACKENDS}
    if path.suffix != ".onnx" and "tensorrt" in only and _tensorrt_available():
        # TensorRT has no float64: it runs a float32-only export
        files["tensorrt"] = Path(workdir) / f"{path.stem}_no_float64.onnx"
        log(f"exporting {path} float32-only for TensorRT")
        export_model(
            model, files["tensorrt"], float64=False, checkpoint_sha256=file_sha256(path), log=log
        )
    for name in _RUNTIME_BACKENDS:
        if name in only:
            why = runtime_backend_missing(files[name], name)
            if why:
                unavailable[name] = why
            else:
                specs.append(BackendSpec(name, str(files[name]), threads))
    return specs, unavailable
