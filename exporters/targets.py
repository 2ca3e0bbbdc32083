"""What each target computes from the model's atomic energies, and the inputs it takes.

The tensors of each target are defined once, in
:func:`allegro_deploy.runtime.metadata.tensor_specs`; this module gives them their
physics: the ``structures`` target sums pair gradients into forces and virials in the
graph, the ``pairs`` target (LAMMPS ML-IAP) returns the pair gradients themselves, and a
float32-only file returns atomic energies and pair gradients, leaving every float64 sum
to the runtime.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from allegro_deploy.models.allegro import AllegroModel, pair_forces_to_atoms, pair_virial
from allegro_deploy.models.graph import AtomicGraph
from allegro_deploy.models.graph import edge_vectors as graph_edge_vectors
from allegro_deploy.runtime.metadata import tensor_specs


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


def output_function(target: str, float64: bool) -> Callable[..., tuple[torch.Tensor, ...]]:
    """The outputs of a ``target`` file (see :func:`tensor_specs`) from the model's
    ``atomic_energies`` and the file's inputs."""
    if target == "pairs":
        return pairs_outputs
    return structures_outputs if float64 else edges_outputs


class AtomicEnergies(torch.nn.Module):
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
