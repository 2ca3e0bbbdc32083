"""The Allegro potential (Musaelian et al., Nat. Commun. 14, 579 (2023)), as in nequip-allegro 0.8.

Strictly local and edge-based: every quantity lives on a directed edge (center i ->
neighbor j, r_ij < r_max); each layer couples an edge's tensor features with the
environment embedding of its center atom, and no information passes between atoms.
Geometry (edge vectors, lengths, radial basis, spherical harmonics) is computed in float64
and cast to the model dtype; per-species energy scale/shift and all sums over atoms are
float64 (a float32 model built with ``float64=False`` does all of it in float32, for
float32-only exports).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from e3nn import o3

from .config import ModelConfig
from .graph import AtomicGraph
from .mlp import ScalarMLP
from .radial import BesselBasis, polynomial_cutoff
from .tensor_product import ChannelwiseTensorProduct, layer_irreps
from .zbl import zbl_edge_energy


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


class WeightedChannels(torch.nn.Module):
    """Spread single-multiplicity irreps into ``U`` channels with one weight per
    (channel, irrep), edges last: basis ``(D, n_edges)`` and weights
    ``(n_edges, U * n_irreps)`` -> ``(U, D, n_edges)``.

    Each component's weight is picked by a product with a ``(D, n_irreps)`` 0/1 matrix
    rather than by indexing, so its input gradient is a product too (no scatter), and with
    the edges last every broadcast runs along rows of edges.
    """

    def __init__(self, irreps: o3.Irreps, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.num_irreps = len(irreps)
        irrep_of_component = [i for i, (_, ir) in enumerate(irreps) for _ in range(ir.dim)]
        self.register_buffer("irrep_of_component", torch.tensor(irrep_of_component))

    @property
    def weight_numel(self) -> int:
        return self.channels * self.num_irreps

    def forward(self, basis: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        weights = weights.T.reshape(self.channels, self.num_irreps, weights.shape[0])
        expansion = torch.nn.functional.one_hot(self.irrep_of_component, self.num_irreps)
        return basis * torch.matmul(expansion.to(weights.dtype), weights)


class AllegroModel(torch.nn.Module):
    """Energy, forces, virial and stress of a batch of structures.

    Build from a :class:`ModelConfig`; parameters take ``config.model_dtype``.
    float64: geometry, energy scale/shift and sums over atoms in float64 (as the official
        code); False keeps them in the model dtype (a float32 model with no float64 tensor,
        which the float32-only export traces).
    """

    def __init__(self, config: ModelConfig, *, float64: bool = True) -> None:
        super().__init__()
        self.config = config
        self.dtype = getattr(torch, config.model_dtype)
        self.float64 = float64
        self.outer_dtype = torch.float64 if float64 else self.dtype
        with _default_dtype(self.dtype):
            self._build(config)

    def _build(self, c: ModelConfig) -> None:
        n_species = len(c.species)
        scalars, channels = c.num_scalar_features, c.num_tensor_features
        f64 = self.outer_dtype

        cutoffs = torch.tensor(c.pair_cutoffs(), dtype=f64)
        self.register_buffer("pair_cutoff_recip", cutoffs.reciprocal().reshape(-1))

        # two-body scalar embedding
        self.bessel = BesselBasis(
            c.num_bessels, c.bessel_trainable, c.polynomial_cutoff_p, dtype=self.outer_dtype
        )
        self.center_embed = torch.nn.Embedding(n_species, c.embed_dim // 2)
        self.neighbor_embed = torch.nn.Embedding(n_species, c.embed_dim // 2)
        self.basis_linear = ScalarMLP(c.num_bessels, c.embed_dim)
        self.scalar_embed_mlp = ScalarMLP(
            c.embed_dim,
            scalars,
            c.scalar_embed_mlp_hidden_layers_depth,
            c.scalar_embed_mlp_hidden_layers_width,
            c.scalar_embed_mlp_nonlinearity,
        )

        # two-body tensor embedding: weighted spherical harmonics
        self.irreps = layer_irreps(c.l_max, c.parity, c.num_layers)
        self.sh_irreps = o3.Irreps.spherical_harmonics(c.l_max, p=-1)
        self.weighted_channels = WeightedChannels(self.sh_irreps, channels)
        env_weights = self.weighted_channels.weight_numel
        self.tensor_embed_linear = ScalarMLP(scalars, env_weights)

        # Allegro layers
        self.first_layer_projection = ScalarMLP(scalars, scalars + env_weights)
        self.tensor_products = torch.nn.ModuleList(
            ChannelwiseTensorProduct(
                irreps_in, self.irreps[0], irreps_out, channels, c.tp_path_channel_coupling
            )
            for irreps_in, irreps_out in zip(self.irreps[:-1], self.irreps[1:], strict=True)
        )
        self.latents = torch.nn.ModuleList(
            ScalarMLP(
                scalars * (layer + 1) + channels,
                scalars + (env_weights if layer < c.num_layers - 1 else 0),
                c.allegro_mlp_hidden_layers_depth,
                c.allegro_mlp_hidden_layers_width,
                c.allegro_mlp_nonlinearity,
            )
            for layer in range(c.num_layers)
        )
        self.readout = ScalarMLP(
            scalars * (c.num_layers + 1),
            1,
            c.readout_mlp_hidden_layers_depth,
            c.readout_mlp_hidden_layers_width,
            c.readout_mlp_nonlinearity,
        )

        # normalizations and per-species energy scale/shift
        norm = [1.0 / math.sqrt(n) for n in c.per_species("avg_num_neighbors", 1.0)]
        self.register_buffer("env_norm", torch.tensor(norm))
        scales = torch.tensor(c.per_species("per_type_energy_scales", 1.0), dtype=f64)
        shifts = torch.tensor(c.per_species("per_type_energy_shifts", 0.0), dtype=f64)
        self.register_buffer("energy_scales", scales)
        self.register_buffer("energy_shifts", shifts)
        if c.zbl:
            self.register_buffer(
                "zbl_atomic_numbers", torch.tensor(c.atomic_numbers).to(self.dtype)
            )

    @property
    def species(self) -> tuple[str, ...]:
        return self.config.species

    @property
    def parameter_count(self) -> int:
        """Trainable parameters (weights of every MLP, embedding and tensor product)."""
        return sum(p.numel() for p in self.parameters())

    def gemm_flops(self) -> tuple[int, int]:
        """Matrix-product FLOPs of one energy + forces evaluation, (per edge, per call): the
        MLPs and tensor products, forward and input-gradient backward (no weight gradients),
        as ``torch.utils.flop_counter`` counts them for those modules.

        Per edge: every MLP layer (in, out) costs 2·in·out forward and 2·in·out backward;
        every tensor product (U channels, I × J -> K) costs 2·U·I·J·K forward (the outer
        product times the coupled CG tensor) and the same backward. Per call: every tensor
        product couples its (U, P) path weights with the (P, I, J, K) CG tensor, 2·U·P·I·J·K.
        Elementwise work (nonlinearities, outer products, gathers, scatters) and products
        that only move data (by 0/1 matrices) are not counted.
        """
        mlp = sum(
            w.shape[0] * w.shape[1]
            for m in self.modules()
            if isinstance(m, ScalarMLP)
            for w in m.weights
        )
        tps = self.tensor_products
        per_edge = 4 * mlp + 4 * sum(tp.channels * math.prod(tp.cg.shape[1:]) for tp in tps)
        per_call = sum(2 * tp.channels * tp.cg.numel() for tp in tps)
        return per_edge, per_call

    def atomic_energies(
        self,
        edge_vectors: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        *,
        shifted: bool = True,
    ) -> torch.Tensor:
        """Per-atom energies (eV) from the edge geometry.

        edge_vectors: (n_edges, 3) Å in ``outer_dtype``, r_neighbor - r_center.
        species: (n_atoms,) int64 species index of every atom.
        edge_index: (2, n_edges) int64, rows (center, neighbor).
        shifted: add the per-species energy shifts (False: leave them to the caller).
        Returns (n_atoms,) in ``outer_dtype`` (float64 unless built with ``float64=False``).
        """
        c, dtype = self.config, self.dtype
        n_atoms, scalars = species.shape[0], c.num_scalar_features
        center, neighbor = edge_index[0], edge_index[1]
        center_species = species.index_select(0, center)
        neighbor_species = species.index_select(0, neighbor)

        # geometry (float64), per-edge scalars 1-D (see radial.py)
        dx, dy, dz = edge_vectors.unbind(1)
        length = (dx * dx + dy * dy + dz * dz).sqrt()
        pair = center_species * len(c.species) + neighbor_species
        x = length * self.pair_cutoff_recip.index_select(0, pair)
        inverse = length.clamp_min(1e-12).reciprocal()  # as F.normalize in e3nn
        unit = torch.stack((dx * inverse, dy * inverse, dz * inverse), 1)
        sh = o3.spherical_harmonics(self.sh_irreps, unit, False, normalization="component")
        sh_edges_last = sh.to(dtype).T

        # two-body embeddings
        type_embed = torch.cat(
            (self.center_embed(center_species), self.neighbor_embed(neighbor_species)), -1
        )
        twobody = self.scalar_embed_mlp(type_embed * self.basis_linear(self.bessel(x, dtype)))
        # The tensor track is kept edges last, (U, irreps dim, n_edges); the tensor products
        # take and return (n_edges, U, irreps dim) views of it.
        tensor_features = self.weighted_channels(sh_edges_last, self.tensor_embed_linear(twobody))

        # Allegro layers
        env_weights_numel = self.weighted_channels.weight_numel
        first_scalars, env_weights = self.first_layer_projection.forward_split(
            twobody, sizes=(scalars, env_weights_numel)
        )
        scalar_features = [first_scalars]
        env_norm = self.env_norm[species].view(-1, 1, 1)
        for layer, (tp, latent) in enumerate(zip(self.tensor_products, self.latents, strict=True)):
            env_edges = self.weighted_channels(sh_edges_last, env_weights).permute(2, 0, 1)
            env = torch.zeros((n_atoms, *env_edges.shape[1:]), dtype=dtype, device=sh.device)
            env = env.index_add(0, center, env_edges) * env_norm
            tensor_features = tp(tensor_features.permute(2, 0, 1), env, center).permute(1, 2, 0)
            inputs = (*scalar_features, tensor_features[:, 0].T)
            if layer < c.num_layers - 1:
                latents, env_weights = latent.forward_split(
                    *inputs, sizes=(scalars, env_weights_numel)
                )
            else:
                latents = latent(*inputs)
            scalar_features.append(latents)

        # readout: edge energies summed onto centers
        edge_energy = self.readout(*scalar_features)
        atom_energy = torch.zeros((n_atoms, 1), dtype=dtype, device=sh.device)
        atom_energy = atom_energy.index_add(0, center, edge_energy) * env_norm.view(-1, 1)
        atom_energy = (atom_energy / math.sqrt(2.0)).view(-1).to(self.outer_dtype)
        scales = self.energy_scales[species]
        if shifted:
            atom_energy = torch.addcmul(self.energy_shifts[species], scales, atom_energy)
        else:
            atom_energy = scales * atom_energy
        if c.zbl:
            z = self.zbl_atomic_numbers
            edge_zbl = zbl_edge_energy(z[center_species], z[neighbor_species], length)
            edge_zbl = edge_zbl * polynomial_cutoff(x, 6).to(dtype)
            atom_energy = atom_energy.index_add(0, center, edge_zbl)
        return atom_energy

    def forward(
        self, graph: AtomicGraph, *, create_graph: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Evaluate a batch.

        Returns float64 tensors: ``energy`` (n_structures,) eV, ``atomic_energies``
        (n_atoms,) eV, ``forces`` (n_atoms, 3) eV/Å, ``virial`` (n_structures, 3, 3) eV
        (= -dE/dε for a symmetric strain ε) and ``stress`` (n_structures, 3, 3) eV/Å³
        (= -virial / volume, ASE sign: tensile positive; NaN unless fully periodic).
        ``create_graph`` (default: ``self.training``) keeps the force graph for training.
        """
        if create_graph is None:
            create_graph = self.training
        edge_vectors = graph.edge_vectors().detach().requires_grad_(True)
        atomic = self.atomic_energies(edge_vectors, graph.species, graph.edge_index)
        energy = torch.zeros(graph.n_structures, dtype=atomic.dtype, device=atomic.device)
        energy = energy.index_add(0, graph.structure_index, atomic)
        (pair_gradient,) = torch.autograd.grad(
            atomic.sum(),
            edge_vectors,
            create_graph=create_graph,
            allow_unused=True,
            materialize_grads=True,
        )
        forces = pair_forces_to_atoms(pair_gradient, graph.edge_index, graph.n_atoms)
        edge_structure = graph.structure_index[graph.edge_index[0]]
        virial = pair_virial(pair_gradient, edge_vectors, edge_structure, graph.n_structures)
        stress = -virial / graph.volumes().view(-1, 1, 1)
        return {
            "energy": energy,
            "atomic_energies": atomic,
            "forces": forces,
            "virial": virial,
            "stress": stress,
        }


def pair_forces_to_atoms(
    pair_gradient: torch.Tensor, edge_index: torch.Tensor, n_atoms: int
) -> torch.Tensor:
    """Forces (n_atoms, 3) from ``dE/dr_ij`` (n_edges, 3): ``F_i = Σ_(i→j) g - Σ_(k→i) g``."""
    forces = torch.zeros((n_atoms, 3), dtype=pair_gradient.dtype, device=pair_gradient.device)
    return forces.index_add(0, edge_index[0], pair_gradient).index_add(
        0, edge_index[1], pair_gradient, alpha=-1.0
    )


def pair_virial(
    pair_gradient: torch.Tensor,
    edge_vectors: torch.Tensor,
    edge_structure: torch.Tensor,
    n_structures: int,
) -> torch.Tensor:
    """Virial (n_structures, 3, 3) eV: ``-sym(Σ_edges r_ij ⊗ dE/dr_ij)`` per structure."""
    outer = edge_vectors.unsqueeze(-1) * pair_gradient.unsqueeze(-2)
    total = torch.zeros((n_structures, 3, 3), dtype=outer.dtype, device=outer.device)
    total = total.index_add(0, edge_structure, outer)
    return -0.5 * (total + total.transpose(-1, -2))
