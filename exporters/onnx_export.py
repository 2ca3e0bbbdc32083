"""Export an Allegro model's energy, forces and virial to one ONNX file.

Recipe: the per-atom energy and its gradient with respect to the edge
vectors are traced into one flat graph by ``make_fx`` (weights passed as inputs through
``torch.func.functional_call``; duck shaping off; ``silu_backward`` decomposed stably),
with the tensor products routed through the custom ops of
:mod:`allegro_deploy.exporters.custom_ops`. That graph, holding the weights as buffers, goes
through ``torch.export`` with dynamic atom and edge counts and ``torch.onnx`` with the
translations of :mod:`allegro_deploy.exporters.onnx_functions`; the ``allegro`` function
bodies and the metadata are attached; ONNX Runtime checks the file against the torch
model on fresh structures before it is put in place.

Targets (N atoms, E directed edges, S structures; all sizes dynamic):

``structures`` (ASE, i-PI, batched evaluation). Inputs:
    positions        (N, 3)  float64  Å
    species          (N,)    int64    index into the model's species
    edge_index       (2, E)  int64    rows (center i, neighbor j)
    edge_shifts      (E, 3)  float64  Å, r_ij = positions[j] - positions[i] + edge_shifts
    structure_index  (N,)    int64    structure of each atom, in [0, S)
    n_structures     ()      int64    S
  Outputs:
    energy           (S,)       float64  eV
    atomic_energies  (N,)       float64  eV
    forces           (N, 3)     float64  eV/Å, -dE/dr
    virial           (S, 3, 3)  float64  eV, -dE/dε for a symmetric strain ε
    atomic_virials   (N, 3, 3)  float64  eV, each edge's -sym(r_ij ⊗ dE/dr_ij) split half
                                         to its center, half to its neighbor (as LAMMPS)

``pairs`` (LAMMPS ``pair_style mliap unified``). Inputs:
    edge_vectors     (E, 3)  float64  Å, r_ij = x_j - x_i
    species          (N,)    int64    species index of every local and ghost atom
    edge_index       (2, E)  int64    rows (center i, local; neighbor j, local or ghost)
    n_local          ()      int64    number of local atoms (the first n_local)
  Outputs:
    atomic_energies  (n_local,)  float64  eV
    pair_forces      (E, 3)      float64  eV/Å, ∂E/∂r_ij of E = Σ local atomic energies

Geometry inputs are float64 in both dtypes, as in the official code: positions, shifts
and edge vectors are subtracted and normalized (lengths, r/r_max, the radial basis and
the spherical harmonics) in float64, so that a float32 model does not lose the
difference of two large coordinates; the float32 body begins after the radial
basis/spherical harmonics. Per-species scale/shift, every sum over atoms and all outputs
are float64.

Float32-only files (``float64=False``; for TensorRT, which has no float64, and other
runtimes that compute float64 as float32) hold no float64 tensor at all. What float64
buys moves to the runtime: it computes the edge vectors from float64 positions, adds the
per-species energy shifts (metadata ``energy_shifts``) and sums pair forces into forces
and virials in float64. Both targets then take float32 edge vectors and return the
atomic energies less their shifts and the pair forces (see
:func:`allegro_deploy.runtime.metadata.tensor_specs`).

Constant subgraphs (splits and transposes of weights) are folded into initializers:
OpenVINO 2026.4 multiplies by the untransposed weight when one weight feeds a MatMul both
directly and through a Transpose, as the forward and backward of every linear layer do.

The tensor products appear as ``allegro.TensorProduct`` / ``allegro.TensorProductBackward``
nodes (or their ``EnvFirst`` or ``Center`` forms, chosen per layer from the static shapes)
with model-local function bodies; sums over atoms (``index_add`` and the backward
of indexing) over the edges' centers as a gather into a padded (atoms, neighbors, ...)
table summed by a product with its 0/1 occupancy, the other sums over atoms as
``ScatterElements(reduction="add")`` (see :mod:`allegro_deploy.exporters.onnx_functions`):
standard ops that ONNX Runtime runs fast and TensorRT parses. Edges grouped by center, as
neighbor lists emit them, keep the table at (atoms, most neighbors); any order is exact.

Reduced precision (:mod:`allegro_deploy.models.precision`): a float32 export can run the
matrix products of its MLPs and tensor products in ``tf32``, ``fp16`` or ``bf16``. Real
files (the default) are strongly typed graphs with explicit Casts, for TensorRT (a ``tf32``
file is the ``fp32`` graph; the engine enables TF32); emulated files round in float32
for CPUs without the reduced matrix units.

Metadata (``metadata_props``; structured values are JSON): ``format``
(``allegro-deploy-onnx``), ``format_version``, ``species``, ``atomic_numbers``,
``r_max`` (Å), ``pair_cutoffs`` (Å, [center][neighbor]), ``dtype``, ``precision`` (fp64,
fp32, tf32, fp16 or bf16), ``precision_mode`` (real or emulated), ``target``,
``inputs`` and ``outputs`` (name, dtype, shape, unit, description), ``model_config``,
``exporter`` (``allegro-deploy``), ``exporter_version``, ``torch_version``,
``checkpoint_sha256`` (of the source file; empty when exported from memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np
import onnx
import onnxruntime as ort
import onnxscript.optimizer
import torch
from onnx.reference import ReferenceEvaluator
from torch._decomp import core_aten_decompositions
from torch.fx.experimental.proxy_tensor import make_fx

from allegro_deploy import __version__
from allegro_deploy.models.allegro import AllegroModel, pair_forces_to_atoms, pair_virial
from allegro_deploy.models.graph import AtomicGraph
from allegro_deploy.models.graph import edge_vectors as graph_edge_vectors
from allegro_deploy.models.precision import dtype_precision, get_precision, matmul_precision
from allegro_deploy.runtime.backends import Session, open_session
from allegro_deploy.runtime.metadata import (
    DTYPES,
    EDGE_INDEX,
    FORMAT,
    FORMAT_VERSION,
    TARGETS,
    tensor_specs,
)

from .custom_ops import custom_tensor_products
from .onnx_functions import (
    DOMAIN,
    DOMAIN_VERSION,
    OPSET_VERSION,
    function_protos,
    translation_table,
)

TOLERANCES = {"float64": 1e-10, "float32": 1e-5}
"""Largest relative error (max |onnx - torch| / max |torch| per output) verification accepts."""
REDUCED_TOLERANCES = {"tf32": 2e-3, "fp16": 3e-3, "bf16": 3e-2}
"""The same for reduced precisions. ONNX Runtime and torch apply the same roundings but
accumulate in other orders, so some values round to neighbouring representable numbers:
measured up to 3.4e-4 (tf32) on a trained silicon model, about a third of the error of
the precision itself."""
MAX_WEIGHT_BYTES = 2**31 - 2**26
"""Weights above this do not fit one protobuf file (2 GiB, less room for the graph)."""

_log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    """The model cannot be exported, or the exported file failed verification."""


@dataclass
class ExportReport:
    """What :func:`export_model` did.

    precision, precision_mode: see :mod:`allegro_deploy.models.precision`.
    verified: what ONNX Runtime ran, ``the file`` or ``its emulated twin`` (a real bf16
        file: ONNX Runtime has no CPU kernels for bfloat16).
    errors: per verification sample, the relative error of every output.
    seconds: wall time of each phase (``export``: trace, export, convert and check;
        ``verify``: ONNX Runtime against torch).
    """

    path: Path
    target: str
    dtype: str
    precision: str
    precision_mode: str
    verified: str
    tolerance: float
    size_bytes: int
    op_counts: dict[str, int]
    errors: dict[str, dict[str, float]]
    seconds: dict[str, float]

    @property
    def max_error(self) -> float:
        return max((e for sample in self.errors.values() for e in sample.values()), default=0.0)

    def summary(self) -> str:
        """Human-readable verification table and totals."""
        lines = [
            f"verification against torch of {self.verified} ({self.precision}, "
            f"{self.precision_mode}; tolerance {self.tolerance:.0e} relative):"
        ]
        for sample, errors in self.errors.items():
            cells = "  ".join(f"{name} {error:.1e}" for name, error in errors.items())
            lines.append(f"  {sample}: {cells}")
        timing = ", ".join(f"{phase} {s:.1f} s" for phase, s in self.seconds.items())
        lines.append(
            f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, "
            f"{sum(self.op_counts.values())} nodes; {timing})"
        )
        return "\n".join(lines)


# --------------------------------------------------------------------------- functions


def structures_outputs(
    atomic_energies: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    positions: torch.Tensor,
    species: torch.Tensor,
    edge_index: torch.Tensor,
    edge_shifts: torch.Tensor,
    structure_index: torch.Tensor,
    n_structures: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Outputs of the ``structures`` target (see the module docstring), in order.

    ``atomic_energies(edge_vectors, species, edge_index) -> (N,)`` is the model's.
    """
    n_frames = n_structures.item()
    torch._check(n_frames >= 0)
    n_atoms = positions.shape[0]
    center, neighbor = edge_index[0], edge_index[1]
    edge_vectors = graph_edge_vectors(positions, edge_index, edge_shifts).detach()
    with torch.enable_grad():
        edge_vectors.requires_grad_(True)
        atomic = atomic_energies(edge_vectors, species, edge_index)
        (pair_gradient,) = torch.autograd.grad(
            atomic.sum(), edge_vectors, allow_unused=True, materialize_grads=True
        )
    edge_vectors, atomic = edge_vectors.detach(), atomic.detach()
    energy = torch.zeros(n_frames, dtype=atomic.dtype, device=atomic.device)
    energy = energy.index_add(0, structure_index, atomic)
    forces = pair_forces_to_atoms(pair_gradient, edge_index, n_atoms)
    atomic_virials = 0.5 * (
        pair_virial(pair_gradient, edge_vectors, center, n_atoms)
        + pair_virial(pair_gradient, edge_vectors, neighbor, n_atoms)
    )
    # summed over atoms rather than over edges: 9 N additions instead of 9 E
    virial = torch.zeros((n_frames, 3, 3), dtype=atomic.dtype, device=atomic.device)
    virial = virial.index_add(0, structure_index, atomic_virials)
    return energy, atomic, forces, virial, atomic_virials


def pairs_outputs(
    atomic_energies: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    edge_vectors: torch.Tensor,
    species: torch.Tensor,
    edge_index: torch.Tensor,
    n_local: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of the ``pairs`` target: local atomic energies (n_local,), ∂E/∂r_ij (E, 3)."""
    n = n_local.item()
    torch._check(n >= 0)
    torch._check(n <= species.shape[0])
    edge_vectors = edge_vectors.detach()
    with torch.enable_grad():
        edge_vectors.requires_grad_(True)
        atomic = atomic_energies(edge_vectors, species, edge_index)[:n]
        (pair_gradient,) = torch.autograd.grad(
            atomic.sum(), edge_vectors, allow_unused=True, materialize_grads=True
        )
    return atomic.detach(), pair_gradient


def edges_outputs(
    atomic_energies: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    edge_vectors: torch.Tensor,
    species: torch.Tensor,
    edge_index: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs of a float32-only ``structures`` file: atomic energies (N,), ∂E/∂r_ij (E, 3)."""
    edge_vectors = edge_vectors.detach()
    with torch.enable_grad():
        edge_vectors.requires_grad_(True)
        atomic = atomic_energies(edge_vectors, species, edge_index)
        (pair_gradient,) = torch.autograd.grad(
            atomic.sum(), edge_vectors, allow_unused=True, materialize_grads=True
        )
    return atomic.detach(), pair_gradient


def _output_function(target: str, float64: bool) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The outputs of a ``target`` file (see :func:`tensor_specs`) from the model's
    ``atomic_energies`` and the file's inputs."""
    if target == "pairs":
        return pairs_outputs
    return structures_outputs if float64 else edges_outputs


class _AtomicEnergies(torch.nn.Module):
    """``model.atomic_energies`` as a module forward, for ``functional_call``."""

    def __init__(self, model: AllegroModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, edge_vectors: torch.Tensor, species: torch.Tensor, edge_index: torch.Tensor
    ) -> torch.Tensor:
        # a float32-only model leaves the float64 energy shifts to the runtime
        return self.model.atomic_energies(
            edge_vectors, species, edge_index, shifted=self.model.float64
        )


class _TracedGraph(torch.nn.Module):
    """The ``make_fx`` graph with the model's weights as buffers, for ``torch.export``."""

    def __init__(self, graph: torch.fx.GraphModule, state: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.graph_module = graph
        self.n_state = len(state)
        for i, tensor in enumerate(state):
            self.register_buffer(f"state_{i}", tensor.detach().clone())

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        state = [getattr(self, f"state_{i}") for i in range(self.n_state)]
        return self.graph_module(*inputs, *state)


def _stable_silu_backward(grad_output: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``silu_backward`` through ``sigmoid`` (no ``1 / (1 + exp(-x))`` overflow), as nequip.

    Written with the forward's ``sigmoid(x)`` and ``x * sigmoid(x)``, which the runtime's
    common-subexpression elimination shares, so it costs four elementwise passes, not five.
    """
    sigmoid = torch.sigmoid(x)
    silu = x * sigmoid
    return grad_output * (sigmoid + silu * (1 - sigmoid))


def _select_backward_by_concat(
    grad_output: torch.Tensor, input_sizes: Sequence[int], dim: int, index: int
) -> torch.Tensor:
    """``select_backward`` as one concatenation of the gradient with zeros along ``dim``.

    The stock decomposition is a ``where`` over a mask broadcast against the whole input,
    which ONNX Runtime runs element by element; a concatenation copies contiguous blocks.
    The new axis is a ``reshape``, not an ``unsqueeze``: ONNX Runtime's transpose optimizer
    moves a transpose of the gradient past an ``Unsqueeze``, turning a (E, U) -> (U, E)
    transpose (1 ns per element) into (E, 1, U) -> (U, 1, E) (~100 ns per element).
    """
    dim %= len(input_sizes)
    index %= input_sizes[dim]
    grad = grad_output.reshape(*input_sizes[:dim], 1, *input_sizes[dim + 1 :])
    parts = []
    for size in (index, input_sizes[dim] - index - 1):
        zeros = list(input_sizes)
        zeros[dim] = size
        parts.append(grad.new_zeros(zeros) if size else None)
    return torch.cat([p for p in (parts[0], grad, parts[1]) if p is not None], dim)


def _sum_leading_axis_by_product(
    x: torch.Tensor,
    dim: Sequence[int] | None,
    keepdim: bool = False,
    *,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """A sum over the first axis only of an array of rank >= 2 as a product with a row of
    ones, ``(1, n) @ (n, rest)``; other sums are left to the stock decomposition.

    Autograd makes such sums for the gradient of every broadcast along a leading axis (the
    spherical harmonics and the Bessel basis against channels). ONNX Runtime's
    ``ReduceSum`` over axis 0 of a (32, 4, E) array takes 4.1 ms; the product 0.32 ms.
    """
    if list(dim or ()) != [0] or x.dim() < 2 or not x.is_floating_point() or dtype is not None:
        return NotImplemented
    ones = x.new_ones((1, x.shape[0]))
    total = torch.matmul(ones, x.reshape(x.shape[0], -1)).reshape(1, *x.shape[1:])
    return total if keepdim else total.reshape(x.shape[1:])


@contextlib.contextmanager
def _no_duck_shaping() -> Iterator[None]:
    """Give equal sizes separate symbols, so no dynamic size is tied to a weight shape."""
    config = torch.fx.experimental._config
    previous = config.use_duck_shape
    config.use_duck_shape = False
    try:
        yield
    finally:
        config.use_duck_shape = previous


def _mark_center_sums(graph: torch.fx.GraphModule, edge_index: torch.fx.Node) -> None:
    """Turn the sums of edge rows onto their centers (accumulating ``index_put`` over
    ``edge_index[0]``: the environment sums and the backward of gathering them) into
    ``allegro::center_sum``, which exports as a padded gather instead of a scatter
    (see :func:`onnx_functions.translation_table`)."""

    def is_center(index: object) -> bool:
        return (
            isinstance(index, torch.fx.Node)
            and index.target == torch.ops.aten.select.int
            and index.args == (edge_index, 0, 0)
        )

    for node in graph.graph.find_nodes(op="call_function", target=torch.ops.aten.index_put.default):
        base, indices, values, *accumulate = node.args
        if not (accumulate and accumulate[0] and len(indices) == 1 and is_center(indices[0])):
            continue
        with graph.graph.inserting_after(node):
            center_sum = graph.graph.call_function(
                torch.ops.allegro.center_sum.default, (base, indices[0], values)
            )
        center_sum.meta = dict(node.meta)
        node.replace_all_uses_with(center_sum)
        graph.graph.erase_node(node)
    graph.recompile()


def trace(model: AllegroModel, target: str, inputs: Sequence[torch.Tensor]) -> torch.nn.Module:
    """Energy and its input gradients of ``target`` as one flat graph module.

    inputs: example inputs of the target (see the module docstring); sizes should be >= 2.
    Returns a module taking the target's inputs, with the weights as buffers.
    """
    wrapper = _AtomicEnergies(model)
    names = [name for name, _ in wrapper.named_parameters()]
    names += [name for name, _ in wrapper.named_buffers()]
    state = [t.detach() for t in wrapper.parameters()] + list(wrapper.buffers())
    outputs = _output_function(target, model.float64)
    n_inputs = len(inputs)

    def function(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        weights = dict(zip(names, args[n_inputs:], strict=True))

        def atomic_energies(*edges: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(wrapper, weights, edges)

        return outputs(atomic_energies, *args[:n_inputs])

    decompositions = dict(core_aten_decompositions())
    decompositions[torch.ops.aten.silu_backward.default] = _stable_silu_backward
    decompositions[torch.ops.aten.select_backward.default] = _select_backward_by_concat
    decompositions[torch.ops.aten.sum.dim_IntList] = _sum_leading_axis_by_product
    with custom_tensor_products(model), _no_duck_shaping():
        graph = make_fx(
            function,
            decomposition_table=decompositions,
            tracing_mode="symbolic",
            _allow_non_fake_inputs=True,
        )(*inputs, *state)
    edge_index = list(graph.graph.find_nodes(op="placeholder"))[
        [spec.name for spec in tensor_specs(target, model.float64)[0]].index(EDGE_INDEX)
    ]
    _mark_center_sums(graph, edge_index)
    return _TracedGraph(graph, state)


# --------------------------------------------------------------------------- samples


def _lattice(
    rng: np.random.Generator,
    n_species: int,
    shape: tuple[int, int, int],
    spacing: float,
    periodic: bool,
) -> ase.Atoms:
    """Rattled simple-cubic block of random species (numbers are species indices + 1).

    The rattle (σ = 5% of the spacing) keeps atoms well apart.
    """
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), -1).reshape(-1, 3)
    positions = (grid + rng.normal(0.0, 0.05, grid.shape)) * spacing
    numbers = rng.integers(1, n_species + 1, len(positions))
    cell = np.diag(np.array(shape) * spacing) if periodic else None
    return ase.Atoms(numbers, positions=positions, cell=cell, pbc=periodic)


def sample_structures(
    n_species: int, r_max: float, seed: int, kinds: Sequence[str]
) -> list[ase.Atoms]:
    """Random structures for tracing and verification (numbers are species indices + 1).

    kinds: ``small_cell`` (8 atoms, periodic; for r_max >= 3.3 Å a cell edge of 0.9 r_max,
    so atoms see their own images), ``cell`` (18 atoms, periodic), ``molecule`` (7 atoms),
    ``cluster`` (5 atoms), ``isolated`` (2 atoms, no edges), ``single`` (1 atom). Atoms are
    at least ~0.75 Å apart.
    """
    rng = np.random.default_rng(seed)
    spacing = max(0.45 * r_max, 1.5)
    make = {
        "small_cell": lambda: _lattice(rng, n_species, (2, 2, 2), spacing, True),
        "cell": lambda: _lattice(rng, n_species, (3, 3, 2), spacing, True),
        "molecule": lambda: _lattice(rng, n_species, (1, 7, 1), max(0.3 * r_max, 1.5), False),
        "cluster": lambda: _lattice(rng, n_species, (1, 5, 1), spacing, False),
        "isolated": lambda: _lattice(rng, n_species, (2, 1, 1), 3.0 * r_max, False),
        "single": lambda: _lattice(rng, n_species, (1, 1, 1), spacing, False),
    }
    return [make[kind]() for kind in kinds]


def graph_of(model: AllegroModel, structures: Sequence[ase.Atoms]) -> AtomicGraph:
    """Graph of structures whose atomic numbers are species indices + 1."""
    numbers = range(1, len(model.config.species) + 1)
    return AtomicGraph.from_atoms(structures, numbers, model.config.r_max)


def structures_inputs(graph: AtomicGraph) -> tuple[torch.Tensor, ...]:
    """Inputs of the ``structures`` target for ``graph``."""
    return (
        graph.positions,
        graph.species,
        graph.edge_index,
        graph.edge_shifts,
        graph.structure_index,
        torch.tensor(graph.n_structures),
    )


def pairs_inputs(graph: AtomicGraph) -> tuple[torch.Tensor, ...]:
    """Inputs of the ``pairs`` target for ``graph`` with periodic images as ghost atoms.

    Every edge that crosses the cell gets its own ghost copy of the neighbor (appended
    after the local atoms), as LAMMPS would provide.
    """
    n_local = graph.n_atoms
    center, neighbor = graph.edge_index.clone()
    crossing = graph.edge_shifts.abs().sum(1) > 0
    ghosts = neighbor[crossing]
    neighbor[crossing] = n_local + torch.arange(len(ghosts))
    return (
        graph.edge_vectors(),
        torch.cat([graph.species, graph.species[ghosts]]),
        torch.stack([center, neighbor]),
        torch.tensor(n_local),
    )


def target_inputs(graph: AtomicGraph, target: str, float64: bool = True) -> list[torch.Tensor]:
    """Inputs of a ``target`` file for ``graph``, in the file's dtypes (a float32-only
    ``structures`` file takes the edge vectors, computed in float64, of all atoms)."""
    if target == "pairs":
        inputs = pairs_inputs(graph)
    elif float64:
        inputs = structures_inputs(graph)
    else:
        inputs = (graph.edge_vectors(), graph.species, graph.edge_index)
    specs = tensor_specs(target, float64)[0]
    return [t.to(getattr(torch, s.dtype)) for s, t in zip(specs, inputs, strict=True)]


_TRACE_SAMPLE = ("cell", "cluster")
VERIFY_SAMPLES: dict[str, tuple[str, ...]] = {
    "small periodic cell": ("small_cell",),
    "molecule": ("molecule",),
    "isolated atoms": ("isolated",),
    "single atom": ("single",),
    "mixed batch": ("small_cell", "single", "molecule", "isolated", "cell", "small_cell"),
}
"""Verification structures, of other atom and edge counts than the traced ones."""


# --------------------------------------------------------------------------- export


def model_in_dtype(model: AllegroModel, dtype: str, float64: bool = True) -> AllegroModel:
    """``model`` itself, or a copy built in ``dtype`` (and with ``float64`` geometry, see
    :class:`AllegroModel`) with its weights cast (never ``.to``)."""
    if dtype == model.config.model_dtype and float64 == model.float64:
        return model
    config = dataclasses.replace(model.config, model_dtype=dtype)
    copy = AllegroModel(config, float64=float64)
    copy.load_state_dict(model.state_dict())
    return copy.eval()


def _weight_bytes(model: torch.nn.Module) -> int:
    tensors = [*model.parameters(), *model.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


@contextlib.contextmanager
def _quiet_torch_onnx() -> Iterator[None]:
    """Silence the optional-dependency and deprecation chatter of torch.onnx and onnx_ir."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def to_onnx(model: AllegroModel, target: str) -> onnx.ModelProto:
    """Trace, export and convert ``model`` (in its own dtype) for ``target``, no metadata.

    Returns the model with the ``allegro`` function bodies attached.
    """
    inputs_spec, outputs_spec = tensor_specs(target, model.float64)
    c = model.config
    trace_graph = graph_of(model, sample_structures(len(c.species), c.r_max, 0, _TRACE_SAMPLE))
    example = tuple(target_inputs(trace_graph, target, model.float64))
    traced = trace(model, target, example)
    sizes = {"atoms": torch.export.Dim("atoms"), "edges": torch.export.Dim("edges")}
    dynamic = tuple(
        {axis: sizes[size] for axis, size in enumerate(s.shape) if isinstance(size, str)} or None
        for s in inputs_spec
    )
    with _quiet_torch_onnx():
        exported = torch.export.export(traced, example, dynamic_shapes=(dynamic,), strict=False)
        program = torch.onnx.export(
            exported,
            dynamo=True,
            opset_version=OPSET_VERSION,
            optimize=False,
            verbose=False,
            custom_translation_table=translation_table(),
            input_names=[s.name for s in inputs_spec],
            output_names=[s.name for s in outputs_spec],
        )
        # constant folding, CSE and onnxscript's rewrites, keeping the allegro nodes
        onnxscript.optimizer.optimize_ir(program.model, inline=False)
    proto = fold_constants(program.model_proto)
    used = {n.op_type for n in proto.graph.node if n.domain == DOMAIN}
    proto.functions.extend(f for f in function_protos() if f.name in used)
    if not any(o.domain == DOMAIN for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    return proto


def fold_constants(proto: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every main-graph node whose inputs are all initializers (the splits and
    transposes of weights that onnxscript's optimizer leaves) by initializers holding its
    outputs; returns ``proto``, changed in place.

    Runtimes fold these themselves, except where they go wrong: OpenVINO 2026.4's CPU
    plugin multiplies by the untransposed weight when one weight feeds a MatMul both
    directly and through a Transpose (``tests/test_runtimes.py`` keeps the reproducer).
    """
    graph = proto.graph
    values = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    kept = []
    for node in graph.node:
        inputs = [name for name in node.input if name]
        if node.domain or not inputs or any(name not in values for name in inputs):
            kept.append(node)
            continue
        single = onnx.helper.make_model(
            onnx.helper.make_graph(
                [node],
                "constant",
                [onnx.helper.make_empty_tensor_value_info(name) for name in inputs],
                [onnx.helper.make_empty_tensor_value_info(name) for name in node.output],
            ),
            opset_imports=[onnx.helper.make_opsetid("", OPSET_VERSION)],
        )
        results = ReferenceEvaluator(single).run(None, {name: values[name] for name in inputs})
        values.update(zip(node.output, results, strict=True))
    used = {name for node in kept for name in node.input} | {o.name for o in graph.output}
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(
        onnx.numpy_helper.from_array(np.asarray(value), name)
        for name, value in values.items()
        if name in used
    )
    return proto


def metadata(
    model: AllegroModel,
    target: str,
    checkpoint_sha256: str,
    precision: str | None = None,
    precision_mode: str = "real",
) -> dict[str, str]:
    """``metadata_props`` of an exported file (see the module docstring); ``precision``
    defaults to the full precision of the model dtype."""
    c = model.config
    inputs_spec, outputs_spec = tensor_specs(target, model.float64)
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "species": json.dumps(list(c.species)),
        "atomic_numbers": json.dumps(list(c.atomic_numbers)),
        "r_max": repr(float(c.r_max)),
        "pair_cutoffs": json.dumps(c.pair_cutoffs()),
        "energy_shifts": json.dumps(c.per_species("per_type_energy_shifts", 0.0)),
        "dtype": c.model_dtype,
        "float64": json.dumps(model.float64),
        "precision": precision or dtype_precision(c.model_dtype),
        "precision_mode": precision_mode,
        "target": target,
        "inputs": json.dumps([dataclasses.asdict(s) for s in inputs_spec], ensure_ascii=False),
        "outputs": json.dumps([dataclasses.asdict(s) for s in outputs_spec], ensure_ascii=False),
        "model_config": json.dumps(c.to_dict()),
        "exporter": "allegro-deploy",
        "exporter_version": __version__,
        "torch_version": torch.__version__,
        "checkpoint_sha256": checkpoint_sha256,
    }


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
    outputs = _output_function(target, model.float64)(_AtomicEnergies(model), *inputs)
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


def op_counts(proto: onnx.ModelProto) -> dict[str, int]:
    """Graph nodes by op type (``domain.op`` outside the default domain), most frequent first."""
    counts = Counter(f"{n.domain}.{n.op_type}" if n.domain else n.op_type for n in proto.graph.node)
    return dict(counts.most_common())


def export_model(
    model: AllegroModel,
    path: str | Path,
    *,
    target: str = "structures",
    dtype: str | None = None,
    precision: str | None = None,
    emulate: bool = False,
    float64: bool = True,
    checkpoint_sha256: str = "",
    tolerance: float | None = None,
    log: Callable[[str], None] = _log.info,
) -> ExportReport:
    """Export ``model`` to ``path`` for ``target`` and verify it with ONNX Runtime.

    dtype: float32 or float64 (default: the model's own, the precision's, or float32 for
        ``float64=False``); a model of another dtype is rebuilt in that dtype with its
        weights cast.
    precision: fp64 (float64 only), fp32, tf32, fp16 or bf16 (float32 only) for the matrix
        products of the MLPs and tensor products (default: the dtype's full precision).
    emulate: round in float32 instead of running the products in the reduced type (see
        :mod:`allegro_deploy.models.precision`; no effect on fp64 and fp32). The file is
        verified against the torch model with the same roundings; a real bf16 file, which
        ONNX Runtime cannot run on CPU, through its emulated twin.
    float64: False writes a float32-only file (float32 dtype only; see the module
        docstring), verified against the torch model computing the same in float32.
    tolerance: largest accepted relative error (default :data:`TOLERANCES` of the dtype,
        :data:`REDUCED_TOLERANCES` of a reduced precision).
    The file is written to a temporary name next to ``path``, checked, verified and only
    then renamed to ``path``. Raises :class:`ExportError` when the model is too large,
    or when verification fails (the temporary file is deleted; an existing ``path`` is
    left as it was).
    """
    path = Path(path)
    if target not in TARGETS:
        raise ExportError(f"unknown target {target!r}; choose one of {TARGETS}")
    if precision is not None:
        needed = get_precision(precision).dtype
        if dtype not in (None, needed):
            raise ExportError(
                f"precision {precision} needs a {needed} export, not {dtype} (use --dtype {needed})"
            )
        dtype = needed
    dtype = dtype or ("float32" if not float64 else model.config.model_dtype)
    if dtype not in DTYPES:
        raise ExportError(f"unknown dtype {dtype!r}; choose one of {DTYPES}")
    if not float64 and dtype != "float32":
        raise ExportError(
            f"a float32-only export (no float64) needs dtype float32, not {dtype} "
            "(use --dtype float32 or a float32 precision)"
        )
    precision = precision or dtype_precision(dtype)
    reduced = precision in REDUCED_TOLERANCES
    mode = "emulated" if emulate and reduced else "real"
    if tolerance is None:
        tolerance = REDUCED_TOLERANCES[precision] if reduced else TOLERANCES[dtype]
    model = model_in_dtype(model, dtype, float64).eval()
    weight_bytes = _weight_bytes(model)
    if weight_bytes > MAX_WEIGHT_BYTES:
        raise ExportError(
            f"the weights take {weight_bytes / 2**30:.2f} GiB; one ONNX file holds at most "
            f"{MAX_WEIGHT_BYTES / 2**30:.2f} GiB of weights (2 GiB protobuf limit) and "
            "external-data export is not supported"
        )

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    what = f"{precision}, {mode}" + ("" if float64 else ", float32-only")
    log(f"tracing {target} energy + gradients ({what}) and converting to ONNX ...")
    with matmul_precision(model, precision, mode):
        proto = to_onnx(model, target)
    props = metadata(model, target, checkpoint_sha256, precision, mode)
    onnx.helper.set_model_props(proto, props)
    proto.producer_name, proto.producer_version = "allegro-deploy", __version__
    onnx.checker.check_model(proto, full_check=True)
    # ONNX Runtime has no CPU kernels for bfloat16: verify the emulated twin instead.
    verified_mode = "emulated" if precision == "bf16" else mode
    twin = proto
    if verified_mode != mode:
        log("converting the emulated twin for verification ...")
        with matmul_precision(model, precision, verified_mode):
            twin = to_onnx(model, target)
    seconds["export"] = time.perf_counter() - start

    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    twin_file = path.with_name(f".{path.name}.{os.getpid()}.emulated.tmp")
    try:
        onnx.save_model(proto, temporary)
        start = time.perf_counter()
        log("verifying with ONNX Runtime on fresh structures ...")
        if twin is not proto:
            onnx.save_model(twin, twin_file)
        session = ort_session(temporary if twin is proto else twin_file)
        with matmul_precision(model, precision, verified_mode):
            errors = verify(session, model, target)
        seconds["verify"] = time.perf_counter() - start
        report = ExportReport(
            path=path,
            target=target,
            dtype=dtype,
            precision=precision,
            precision_mode=mode,
            verified="the file" if twin is proto else "its emulated twin",
            tolerance=tolerance,
            size_bytes=temporary.stat().st_size,
            op_counts=op_counts(proto),
            errors=errors,
            seconds=seconds,
        )
        if not report.max_error <= tolerance:
            raise ExportError(
                f"{report.summary()}\nverification failed: ONNX Runtime differs from torch "
                f"by {report.max_error:.2e} relative (tolerance {tolerance:.0e}); "
                f"no file was written to {path}"
            )
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
        twin_file.unlink(missing_ok=True)
    return report


def export_checkpoint(
    checkpoint: str | Path,
    path: str | Path,
    *,
    target: str = "structures",
    dtype: str | None = None,
    precision: str | None = None,
    emulate: bool = False,
    float64: bool = True,
    tolerance: float | None = None,
    log: Callable[[str], None] = _log.info,
) -> ExportReport:
    """Load an allegro-deploy checkpoint and :func:`export_model` it, recording its SHA-256."""
    from allegro_deploy.models.checkpoint import file_sha256, load_checkpoint, refuse_overwriting

    refuse_overwriting(path, checkpoint)
    model = load_checkpoint(checkpoint).model
    return export_model(
        model,
        path,
        target=target,
        dtype=dtype,
        precision=precision,
        emulate=emulate,
        float64=float64,
        checkpoint_sha256=file_sha256(checkpoint),
        tolerance=tolerance,
        log=log,
    )
