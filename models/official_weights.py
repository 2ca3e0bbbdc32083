"""Official nequip-allegro weights mapped onto :class:`AllegroModel` (see
``models/official.py``): renamed, EMA weights put in place, and the buffers recomputed
here checked against the official ones."""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch

from .allegro import AllegroModel
from .official_config import OfficialImportError, refuse

# official weight name (below ``...model.func.``) -> ours; MLP layers are renumbered in order
_MLP_PREFIXES = (
    ("radial_chemical_embed.type_embed.basis_linear.mlp.", "basis_linear"),
    ("scalar_embed_mlp.mlp_module.mlp.", "scalar_embed_mlp"),
    ("tensor_embed.env_embed_linear.mlp.", "tensor_embed_linear"),
    ("allegro.first_layer_env_embed_projection.mlp.", "first_layer_projection"),
    ("edge_readout.mlp_module.mlp.", "readout"),
)
_MLP_LAYER = re.compile(r"(?:(\d+)\.weight|weights\.(\d+))")
_LATENT = re.compile(r"allegro\.latents\.(\d+)\.mlp\.(.+)")
_TP_WEIGHTS = re.compile(r"allegro\.tps\.(\d+)\.weights")
_MODEL_KEY = re.compile(r"(?:model\.)?([^.]+)\.model\.func\.(.+)")
_DERIVED = {  # official buffers recomputed from the config, and checked against it
    "edge_norm._rmax_recip",
    "per_type_energy_scale_shift.scales",
    "per_type_energy_scale_shift.shifts",
    "pair_potential.atomic_numbers",
    "pair_potential._qqr2exesquare",
}
_W3J = re.compile(r"allegro\.tps\.\d+\.w3j")


def _is_parameter(name: str, model_config: dict[str, Any]) -> bool:
    """Whether the official weight ``name`` (below ``model.func.``) is a ``Parameter``."""
    if re.search(r"\.mlp\.(\d+\.weight|weights\.\d+)$", name) or re.search(
        r"(center_embed|neighbor_embed)\.weight$|allegro\.tps\.\d+\.weights$", name
    ):
        return True
    embed = model_config.get("radial_chemical_embed") or {}
    flags = {
        "radial_chemical_embed.bessel_encode.bessel_weights": embed.get("bessel_trainable", False),
        "per_type_energy_scale_shift.scales": model_config.get(
            "per_type_energy_scales_trainable", False
        ),
        "per_type_energy_scale_shift.shifts": model_config.get(
            "per_type_energy_shifts_trainable", False
        ),
    }
    return bool(flags.get(name, False))


def apply_ema(
    weights: OrderedDict[str, torch.Tensor],
    state: dict[str, Any],
    n_ema: int,
    model_config: dict[str, Any],
) -> None:
    """Replace the raw parameters in ``weights`` by the EMA ones, in parameter order."""
    extra_state = state.get("ema._extra_state") or {}
    if not isinstance(extra_state, dict) or not extra_state.get("is_holding_ema_weights", True):
        raise OfficialImportError(
            "the EMA weights were swapped out when the checkpoint was written "
            "(is_holding_ema_weights=False); the checkpoint is corrupted"
        )
    parameters = []
    for key in weights:
        match = _MODEL_KEY.fullmatch(key[len("model.") :])
        if match and _is_parameter(match[2], model_config):
            parameters.append(key)
    ema = [state[f"ema.ema_weight_{i}"] for i in range(n_ema)]
    if not all(isinstance(value, torch.Tensor) for value in ema):
        raise OfficialImportError("the EMA weights are not all tensors")
    if len(parameters) != n_ema or any(
        weights[k].shape != e.shape for k, e in zip(parameters, ema, strict=True)
    ):
        raise OfficialImportError(
            f"its {n_ema} EMA weights do not line up with the model's {len(parameters)} parameters"
        )
    for key, value in zip(parameters, ema, strict=True):
        weights[key] = value


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """Official weights below ``model.func.``; refuses files holding several models."""
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    models = set()
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise OfficialImportError(f"weight {key} is not a tensor")
        if key.startswith("func."):
            out[key[len("func.") :]] = value
            continue
        if key.startswith("model.func."):
            out[key[len("model.func.") :]] = value
            continue
        match = _MODEL_KEY.fullmatch(key)
        if match:
            models.add(match[1])
            out[match[2]] = value
    if len(models) > 1:
        raise refuse("model", sorted(models), "files holding several models are not supported")
    if not out:
        raise OfficialImportError("the file holds no model weights")
    return out


def map_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official weights renamed to ours; refuses weights that have no counterpart."""
    out: dict[str, torch.Tensor] = {}
    mlps: dict[str, list[tuple[int, torch.Tensor]]] = {}
    for key, value in weights.items():
        if key in _DERIVED or _W3J.fullmatch(key):
            continue
        if key == "radial_chemical_embed.bessel_encode.bessel_weights":
            out["bessel.frequencies"] = value.reshape(-1)
            continue
        if key in (
            "radial_chemical_embed.type_embed.center_embed.weight",
            "radial_chemical_embed.type_embed.neighbor_embed.weight",
        ):
            out[key.split(".")[-2] + ".weight"] = value
            continue
        match = _TP_WEIGHTS.fullmatch(key)
        if match:
            out[f"tensor_products.{match[1]}.weights"] = value
            continue
        ours, layer = None, None
        match = _LATENT.fullmatch(key)
        if match:
            ours, layer = f"latents.{match[1]}", _MLP_LAYER.fullmatch(match[2])
        for prefix, name in _MLP_PREFIXES:
            if key.startswith(prefix):
                ours, layer = name, _MLP_LAYER.fullmatch(key[len(prefix) :])
        if ours is None or layer is None:
            raise OfficialImportError(
                f"official weight {key!r} has no counterpart here (MLP biases, "
                "parametrizations, other embeddings or pair potentials are not supported)"
            )
        mlps.setdefault(ours, []).append((int(layer[1] or layer[2]), value))
    for name, layers in mlps.items():
        for index, (_, value) in enumerate(sorted(layers, key=lambda item: item[0])):
            out[f"{name}.weights.{index}"] = value
    return out


def load_weights(model: AllegroModel, weights: dict[str, torch.Tensor]) -> None:
    """Load the official weights; every parameter of ``model`` must receive a value."""
    mapped = map_weights(weights)
    ours = model.state_dict()
    unexpected = sorted(set(mapped) - set(ours))
    missing = sorted({name for name, _ in model.named_parameters()} - set(mapped))
    if unexpected or missing:
        raise OfficialImportError(
            "the weights do not fit the hyperparameters in the file's config "
            f"(no place for {unexpected}, no value for {missing})"
        )
    for name, value in mapped.items():
        if value.numel() != ours[name].numel():
            raise OfficialImportError(
                f"the weights do not fit the hyperparameters in the file's config: {name} has "
                f"shape {tuple(value.shape)} here {tuple(ours[name].shape)}"
            )
        mapped[name] = value.reshape(ours[name].shape)
    model.load_state_dict(mapped, strict=False)


def check_derived(model: AllegroModel, weights: dict[str, torch.Tensor]) -> None:
    """Buffers we recompute from the config must equal the official ones."""
    checks = [("edge_norm._rmax_recip", model.pair_cutoff_recip)]
    if model.config.zbl:
        checks.append(("pair_potential.atomic_numbers", model.zbl_atomic_numbers))
    for key, ours in checks:
        official = weights.get(key)
        if official is None:
            raise OfficialImportError(f"the weights lack {key}")
        official = official.to(torch.float64)
        if not torch.allclose(
            official.expand_as(ours) if official.numel() == 1 else official.reshape(ours.shape),
            ours.to(torch.float64),
            rtol=1e-12,
            atol=0.0,
        ):
            raise OfficialImportError(
                f"{key} in the weights ({official.tolist()}) disagrees with the config "
                f"({ours.tolist()}); the file's config and weights do not belong together"
            )
    if model.config.zbl:
        coulomb = weights.get("pair_potential._qqr2exesquare")
        if coulomb is None or abs(float(coulomb) - 0.5 * 14.399645) > 1e-9:
            raise OfficialImportError(
                "the ZBL constant in the weights is not the LAMMPS metal-units one"
            )
