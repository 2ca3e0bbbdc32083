"""Check an exported file against the torch model on fresh structures."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from allegro_deploy.models.allegro import AllegroModel
from allegro_deploy.runtime.backends import Session, open_session
from allegro_deploy.runtime.metadata import tensor_specs

from .samples import graph_of, sample_structures
from .targets import AtomicEnergies, output_function, target_inputs

TOLERANCES = {"float64": 1e-10, "float32": 1e-5}
"""Largest relative error (max |onnx - torch| / max |torch| per output) verification accepts."""
REDUCED_TOLERANCES = {"tf32": 2e-3, "fp16": 3e-3, "bf16": 3e-2}
"""The same for reduced precisions. ONNX Runtime and torch apply the same roundings but
accumulate in other orders, so some values round to neighbouring representable numbers:
measured up to 3.4e-4 (tf32) on a trained silicon model, about a third of the error of
the precision itself."""
VERIFY_SAMPLES: dict[str, tuple[str, ...]] = {
    "small periodic cell": ("small_cell",),
    "molecule": ("molecule",),
    "isolated atoms": ("isolated",),
    "single atom": ("single",),
    "mixed batch": ("small_cell", "single", "molecule", "isolated", "cell", "small_cell"),
}
"""Verification structures, of other atom and edge counts than the traced ones."""


def ort_session(path: str | Path) -> Session:
    """The runtime's ONNX Runtime CPU session, all graph optimizations on, quiet."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # no notes on float16 MatMuls it cannot constant-fold
    return open_session(path, "cpu", session_options=options)


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """``max |actual - expected| / max |expected|`` (denominator at least 1e-8)."""
    if expected.size == 0:
        return 0.0 if actual.size == 0 else math.inf
    if actual.shape != expected.shape:
        return math.inf
    scale = max(float(np.abs(expected).max()), 1e-8)
    return float(np.abs(actual - expected).max()) / scale


def reference_outputs(
    model: AllegroModel, target: str, inputs: Sequence[torch.Tensor]
) -> list[np.ndarray]:
    """The target's outputs computed by the torch model in eager mode."""
    outputs = output_function(target, model.float64)(AtomicEnergies(model), *inputs)
    return [t.detach().cpu().numpy() for t in outputs]


def verify(
    session: Session,
    model: AllegroModel,
    target: str,
    seed: int = 1,
    samples: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, dict[str, float]]:
    """Relative error of every output of ``session`` (anything with the runtime
    :class:`~allegro_deploy.runtime.backends.Session`'s ``run(inputs, outputs) -> dict``)
    against ``model`` on each of ``samples`` (default :data:`VERIFY_SAMPLES`: fresh random
    structures, seed ``seed``)."""
    inputs_spec, outputs_spec = tensor_specs(target, model.float64)
    c = model.config
    errors = {}
    for name, kinds in (VERIFY_SAMPLES if samples is None else samples).items():
        graph = graph_of(model, sample_structures(len(c.species), c.r_max, seed, kinds))
        inputs = target_inputs(graph, target, model.float64)
        feeds = {s.name: t.numpy() for s, t in zip(inputs_spec, inputs, strict=True)}
        outputs = session.run(feeds, [s.name for s in outputs_spec])
        actual = [outputs[s.name] for s in outputs_spec]
        expected = reference_outputs(model, target, inputs)
        label = f"{name} ({graph.n_atoms} atoms, {graph.n_edges} edges)"
        errors[label] = {
            s.name: relative_error(a, e)
            for s, a, e in zip(outputs_spec, actual, expected, strict=True)
        }
    return errors
