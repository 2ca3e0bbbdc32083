"""The official nequip-allegro model as a reference: built or loaded by nequip itself,
under nequip's global state, and run on this package's graphs. Needs the test-only
packages ``nequip`` and ``nequip-allegro``; used by ``allegro-deploy bench`` (its
``official`` implementation), the benchmarks and the parity tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .graph import AtomicGraph


def official_inputs(graph: AtomicGraph) -> dict[str, Any]:
    """nequip's ``AtomicDataDict`` of ``graph``: all structures periodic, or none."""
    from nequip.data import AtomicDataDict as K

    periodic = graph.pbc.all(dim=1)
    if periodic.any() and not periodic.all():
        raise ValueError("the official model is run on all-periodic or all-molecular batches")
    data = {
        K.POSITIONS_KEY: graph.positions,
        K.EDGE_INDEX_KEY: graph.edge_index,
        K.ATOM_TYPE_KEY: graph.species,
        K.BATCH_KEY: graph.structure_index,
        K.NUM_NODES_KEY: torch.bincount(graph.structure_index, minlength=graph.n_structures),
    }
    if periodic.all():
        cells = graph.cell[graph.structure_index[graph.edge_index[0]]]
        shifts = torch.linalg.solve(cells.transpose(1, 2), graph.edge_shifts.unsqueeze(-1))
        data[K.CELL_KEY] = graph.cell
        data[K.PBC_KEY] = graph.pbc
        data[K.EDGE_CELL_SHIFT_KEY] = shifts.squeeze(-1).round()
    return data


_NEQUIP_DYNAMO_FLAGS = ("capture_dynamic_output_shape_ops", "capture_scalar_outputs")
"""The torch.compile flags nequip's ``set_global_state`` sets."""


@contextlib.contextmanager
def nequip_global_state() -> Iterator[None]:
    """nequip's global state, which it requires to build models (float64 default dtype,
    torch.compile flags, seeds, ...); everything it changes in torch, e3nn and the random
    generators is put back afterwards (its torch.compile flags break ``torch.export``)."""
    import random

    import e3nn
    from nequip.utils.global_dtype import _GLOBAL_DTYPE
    from nequip.utils.global_state import set_global_state

    dtype, e3nn_defaults = torch.get_default_dtype(), e3nn.get_optimization_defaults()
    dynamo = {flag: getattr(torch._dynamo.config, flag) for flag in _NEQUIP_DYNAMO_FLAGS}
    sharing = torch.multiprocessing.get_sharing_strategy()
    seeds = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    set_global_state()
    torch.set_default_dtype(_GLOBAL_DTYPE)  # also when nequip's state was set before
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        e3nn.set_optimization_defaults(**e3nn_defaults)
        for flag, value in dynamo.items():
            setattr(torch._dynamo.config, flag, value)
        torch.multiprocessing.set_sharing_strategy(sharing)
        random.setstate(seeds[0])
        np.random.set_state(seeds[1])
        torch.random.set_rng_state(seeds[2])


def load_official(source: str | Path | dict[str, Any]) -> torch.nn.Module:
    """An official model in eval mode: read by nequip's loader from a ``.ckpt`` or
    ``.nequip.zip`` file, or built by nequip from a model config (as in a training YAML;
    its ``seed`` fixes the weights), under :func:`nequip_global_state`."""
    from hydra.utils import get_method
    from nequip.model.saved_models.load_utils import load_saved_model

    with nequip_global_state():
        if isinstance(source, dict):
            config = dict(source)
            official = get_method(config.pop("_target_"))(**config)
        else:
            official = load_saved_model(str(source))
    if isinstance(official, torch.nn.ModuleDict):
        official = official["sole_model"]
    return official.eval()


def official_outputs(official: torch.nn.Module, graph: AtomicGraph) -> dict[str, torch.Tensor]:
    """The official model's outputs (nequip's ``AtomicDataDict`` keys: ``total_energy``,
    ``atomic_energy``, ``forces``, ``stress``, ...) on the edges of ``graph``."""
    return official(official_inputs(graph))
