"""Speed and memory of energy + forces evaluations, per implementation and system size.

``allegro-deploy bench`` (:func:`run_bench`) times one model in every implementation that
can run it here, in one process, over the same workloads:

* ``official``: the official ``nequip-allegro`` model in torch eager mode, loaded with
  nequip's own loader from the file a checkpoint was imported from;
* ``torch``: this package's torch model in eager mode, from a checkpoint;
* ``ort-cpu`` / ``openvino`` / ``ort-cuda`` / ``tensorrt``: an exported ``structures`` model
  through :meth:`allegro_deploy.runtime.Potential.evaluate` on that backend (a float32-only
  export for ``tensorrt``).

Every timed call starts from ``ase.Atoms`` and includes the input checks, the neighbor
list (vesin, the same for all implementations) and the energy, forces and virial of the model
(:data:`TIMED`). Workloads (:class:`Case`) are rattled fcc cells of a metal and batches of
21-atom molecules, evaluated together in one call or one call per molecule. Each
(implementation, workload) is warmed up, then the implementations take turns for each
repeat and the median is reported, with the speed-up over the first (the baseline), the time
per atom, atom-steps/s, the GEMM FLOPs of the evaluation (:class:`GemmFlops`: counted by the
model and recorded in every export, so an ``.onnx`` file is benchmarked without torch)
against the machine's float32 GEMM rate measured in the same run, before and after the
timings, the faster kept (:func:`gemm_rate`), and the peak
memory of one evaluation measured in a fresh process (:func:`peak_memory`).
"""

from __future__ import annotations

from .flops import GemmFlops, gemm_rate
from .implementations import IMPLEMENTATIONS, LABELS, Implementation, implementations_here
from .report import BenchReport, Row
from .run import WARMUP, BenchModel, run_bench
from .workloads import (
    BenchError,
    Case,
    TrainingWorkload,
    aspirin,
    default_cases,
    fcc_cell,
    molecules,
)

__all__ = [
    "IMPLEMENTATIONS",
    "LABELS",
    "WARMUP",
    "BenchError",
    "BenchModel",
    "BenchReport",
    "Case",
    "GemmFlops",
    "Implementation",
    "Row",
    "TrainingWorkload",
    "aspirin",
    "default_cases",
    "fcc_cell",
    "gemm_rate",
    "implementations_here",
    "molecules",
    "run_bench",
]
