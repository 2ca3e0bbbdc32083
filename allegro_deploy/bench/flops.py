"""GEMM FLOPs of an evaluation and the machine's float32 GEMM rate: the FLOP floor."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import ase
import numpy as np
from threadpoolctl import threadpool_limits

from allegro_deploy.runtime.neighbors import neighbor_list


@dataclass(frozen=True)
class GemmFlops:
    """Matrix-product FLOPs of a model's energy + forces evaluations (see
    :meth:`allegro_deploy.models.AllegroModel.gemm_flops` for what is counted)."""

    per_edge: int
    per_call: int

    def of(self, n_edges: int, n_calls: int = 1) -> int:
        """FLOPs of ``n_calls`` evaluations of ``n_edges`` edges in all."""
        return n_edges * self.per_edge + n_calls * self.per_call


def gemm_rate(threads: int | None = None, size: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of a large float32 matrix product (size × size @ size × size) in numpy's BLAS
    on ``threads`` threads (None: the BLAS default), best of ``repeats`` after a warm-up:
    the machine's practical peak for the GEMMs of a model (within a few % of torch's on
    the same machine)."""
    generator = np.random.default_rng(0)
    a, b = (generator.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    with threadpool_limits(threads, user_api="blas"):
        a @ b
        seconds = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            seconds.append(time.perf_counter() - start)
    return 2 * size**3 / min(seconds)


def count_edges(structures: Sequence[ase.Atoms], r_max: float) -> int:
    """Directed edges within ``r_max`` (Å) of ``structures`` in all."""
    return sum(
        len(neighbor_list(a.positions, a.cell.array, a.pbc, r_max).centers) for a in structures
    )
