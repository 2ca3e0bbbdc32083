"""GEMM FLOPs of an evaluation and the machine's float32 GEMM rate: the FLOP floor."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

import ase
import ase.build

from allegro_deploy.runtime.neighbors import neighbor_list

if TYPE_CHECKING:
    from allegro_deploy.models import AllegroModel


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
