"""The channel-wise Clebsch–Gordan tensor product at the heart of each Allegro layer.

Every edge carries ``U`` channels of tensor features laid out as the concatenation of
single-multiplicity irreps, ``(n_edges, U, irreps.dim)``. A layer couples them, channel by
channel, with the center atom's environment embedding of the same layout.

:func:`tensor_product` is the functional core (inputs, CG coefficients, weights -> output)
that the exporter turns into a custom ONNX op; :class:`ChannelwiseTensorProduct` owns the
weights and the CG coefficients of one layer.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3

from .precision import FULL_PRECISION, MatmulPolicy


def tensor_product(
    x1: torch.Tensor, x2: torch.Tensor, path_weights: torch.Tensor, cg: torch.Tensor
) -> torch.Tensor:
    """Channel-wise CG product ``out[e,u,k] = Σ_p w[u,p] Σ_ij cg[p,i,j,k] x1[e,u,i] x2[e,u,j]``.

    x1: (n_edges, U, I) edge tensor features.
    x2: (n_edges, U, J) environment embedding of each edge's center atom.
    path_weights: (U, P) weight of each path in each channel.
    cg: (P, I, J, K) normalized Clebsch–Gordan coefficients of each path.
    Returns (n_edges, U, K).
    """
    n_edges, channels, dim1 = x1.shape
    dim2, dim_out = cg.shape[2], cg.shape[3]
    coupled = torch.einsum("up,pijk->uijk", path_weights, cg).reshape(
        channels, dim1 * dim2, dim_out
    )
    outer = (x1.unsqueeze(-1) * x2.unsqueeze(-2)).reshape(n_edges, channels, dim1 * dim2)
    return torch.bmm(outer.transpose(0, 1), coupled).transpose(0, 1)


def _path_exists(irreps1: o3.Irreps, irreps2: o3.Irreps, ir_out: o3.Irrep) -> bool:
    return any(ir_out in ir1 * ir2 for _, ir1 in irreps1 for _, ir2 in irreps2)


def layer_irreps(l_max: int, parity: bool, num_layers: int) -> list[o3.Irreps]:
    """Irreps of the tensor track entering each layer, and leaving the last one.

    The environment embedding has the irreps of the spherical harmonics. Each layer may
    produce every allowed irrep reachable from its inputs; the last produces only ``0e``;
    then, going backwards, irreps that cannot reach a later layer's output are pruned.
    Ordering follows the official code so that weights import one to one.

    Returns ``num_layers + 1`` irreps, the first being the spherical harmonics.
    """
    sh = o3.Irreps.spherical_harmonics(l_max, p=-1)
    if parity:
        allowed = o3.Irreps([(1, (deg, p)) for deg in range(l_max + 1) for p in (1, -1)])
    else:
        allowed = sh
    env = o3.Irreps([(1, ir) for _, ir in sh])

    irreps = [env]
    for layer in range(num_layers):
        candidates = o3.Irreps("0e") if layer == num_layers - 1 else allowed
        irreps.append(
            o3.Irreps([(m, ir) for m, ir in candidates if _path_exists(irreps[-1], env, ir)])
        )

    pruned = [irreps[-1]]
    for arg in reversed(irreps[:-1]):
        kept = [
            (m, ir1)
            for m, ir1 in arg
            if any(any(ir in pruned[-1] for ir in ir1 * ir2) for _, ir2 in env)
        ]
        pruned.append(o3.Irreps(kept))
    return list(reversed(pruned))


def clebsch_gordan_paths(
    irreps1: o3.Irreps, irreps2: o3.Irreps, irreps_out: o3.Irreps
) -> tuple[list[tuple[int, int, int]], torch.Tensor]:
    """All paths ``(i1, i2, i_out)`` with ``ir_out ∈ ir1 ⊗ ir2`` and their CG coefficients.

    Returns the paths (ordered by output, then first, then second input) and a
    (n_paths, irreps1.dim, irreps2.dim, irreps_out.dim) float64 tensor holding
    ``wigner_3j · sqrt(2 l_out + 1)`` ("component" normalization) in each path's block.
    """
    paths = [
        (i1, i2, i_out)
        for i_out, (_, ir_out) in enumerate(irreps_out)
        for i1, (_, ir1) in enumerate(irreps1)
        for i2, (_, ir2) in enumerate(irreps2)
        if ir_out in ir1 * ir2
    ]
    if not paths:
        raise ValueError(f"no tensor-product paths from {irreps1} x {irreps2} to {irreps_out}")
    cg = torch.zeros(len(paths), irreps1.dim, irreps2.dim, irreps_out.dim, dtype=torch.float64)
    s1, s2, s_out = irreps1.slices(), irreps2.slices(), irreps_out.slices()
    for p, (i1, i2, i_out) in enumerate(paths):
        l1, l2, l_out = irreps1[i1].ir.l, irreps2[i2].ir.l, irreps_out[i_out].ir.l
        w3j = o3.wigner_3j(l1, l2, l_out, dtype=torch.float64)
        cg[p, s1[i1], s2[i2], s_out[i_out]] = w3j * math.sqrt(2 * l_out + 1)
    return paths, cg


class ChannelwiseTensorProduct(torch.nn.Module):
    """One layer's tensor product: ``irreps_in ⊗ irreps_env -> irreps_out`` in ``U`` channels.

    With ``path_channel_coupling`` the weights are (U, n_paths), one per channel and path;
    without it they are (n_paths,) and shared by all channels. Parameters and the CG buffer
    take the default dtype at construction. The product follows ``matmul_policy`` (see
    :mod:`~allegro_deploy.models.precision`): its inputs x1, x2, path weights and CG
    coefficients are its operands.
    """

    matmul_policy: MatmulPolicy = FULL_PRECISION

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_env: o3.Irreps,
        irreps_out: o3.Irreps,
        channels: int,
        path_channel_coupling: bool = True,
    ) -> None:
        super().__init__()
        self.irreps_in, self.irreps_env, self.irreps_out = irreps_in, irreps_env, irreps_out
        self.channels = channels
        self.paths, cg = clebsch_gordan_paths(irreps_in, irreps_env, irreps_out)
        self.register_buffer("cg", cg.to(torch.get_default_dtype()))
        shape = (channels, len(self.paths)) if path_channel_coupling else (len(self.paths),)
        self.weights = torch.nn.Parameter(torch.empty(shape).uniform_(-math.sqrt(3), math.sqrt(3)))

    def path_weights(self) -> torch.Tensor:
        """(U, n_paths) weights, broadcast over channels when they are shared."""
        return self.weights.expand(self.channels, len(self.paths))

    def forward(self, x1: torch.Tensor, env: torch.Tensor, center: torch.Tensor) -> torch.Tensor:
        """Couple each edge's features with the environment of its center atom.

        x1: (n_edges, U, irreps_in.dim) edge tensor features.
        env: (n_atoms, U, irreps_env.dim) environment embedding of every atom.
        center: (n_edges,) int64 center atom of each edge.
        Returns (n_edges, U, irreps_out.dim).
        """
        policy = self.matmul_policy
        x2 = env.index_select(0, center)
        return policy.result(tensor_product(*policy.operands(x1, x2, self.path_weights(), self.cg)))

    def extra_repr(self) -> str:
        return (
            f"{self.irreps_in} x {self.irreps_env} -> {self.irreps_out} | "
            f"{self.channels} channels | {len(self.paths)} paths"
        )
