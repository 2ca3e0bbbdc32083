"""Official nequip-allegro model configs translated into :class:`ModelConfig`, refusing by
name every option that has no exact counterpart here (see ``models/official.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from ase.data import atomic_numbers as _ATOMIC_NUMBERS

from .config import ConfigError, ModelConfig

_ALLEGRO_TARGETS = ("allegro.model.AllegroModel", "allegro.model.allegro_models.AllegroModel")
_FULL_TARGETS = ("allegro.model.FullAllegroModel", "allegro.model.allegro_models.FullAllegroModel")
_MODIFY_TARGETS = ("nequip.model.modify", "nequip.model.modify_utils.modify")
_BESSEL_TARGETS = (
    "allegro.nn.TwoBodyBesselScalarEmbed",
    "allegro.nn.scalarembed.TwoBodyBesselScalarEmbed",
)
_ZBL_TARGETS = ("nequip.nn.pair_potential.ZBL", "nequip.nn.ZBL")
_TYPE_MAPPER = "ChemicalSpeciesToAtomTypeMapper"
_HARMLESS_MODIFIERS = (
    "modify_PerTypeScaleShift",
    "enable_ForceStressOutput",
    "disable_ForceStressOutput",
    "enable_TritonContracter",
    "enable_CuEquivarianceContracter",
)
_NONLINEARITIES = {None: None, "None": None, "null": None, "silu": "silu", "mish": "mish",
                   "gelu": "gelu", "tanh": "tanh"}  # fmt: skip
# official defaults of FullAllegroModel / TwoBodyBesselScalarEmbed that have an equivalent here
_DEFAULTS: dict[str, Any] = {
    "radial_chemical_embed_dim": None,
    "per_edge_type_cutoff": None,
    "scalar_embed_mlp_hidden_layers_depth": 1,
    "scalar_embed_mlp_hidden_layers_width": 64,
    "scalar_embed_mlp_nonlinearity": "silu",
    "num_layers": 2,
    "num_scalar_features": 64,
    "num_tensor_features": 16,
    "allegro_mlp_hidden_layers_depth": 1,
    "allegro_mlp_hidden_layers_width": 64,
    "allegro_mlp_nonlinearity": "silu",
    "tp_path_channel_coupling": True,
    "readout_mlp_hidden_layers_depth": 1,
    "readout_mlp_hidden_layers_width": 32,
    "readout_mlp_nonlinearity": "silu",
}
_BESSEL_DEFAULTS = {"num_bessels": 8, "bessel_trainable": False, "polynomial_cutoff_p": 6}
# options that do not change the energy model
_IGNORED = ("_target_", "seed", "compile_mode", "do_derivatives", "type_names", "model_dtype",
            "per_type_energy_scales_trainable", "per_type_energy_shifts_trainable")  # fmt: skip
_KNOWN = set(_DEFAULTS) | set(_IGNORED) | {
    "r_max", "l_max", "parity", "irreps_edge_sh", "tensor_track_allowed_irreps",
    "radial_chemical_embed", "avg_num_neighbors", "per_type_energy_scales",
    "per_type_energy_shifts", "pair_potential", "weight_individual_irreps", "forward_normalize",
}  # fmt: skip


class OfficialImportError(ValueError):
    """An official file that cannot be imported exactly, or cannot be read at all."""


def refuse(option: str, value: Any, why: str) -> OfficialImportError:
    return OfficialImportError(f"unsupported official option {option}={value!r}: {why}")


def unwrap_modifiers(model_config: dict[str, Any]) -> dict[str, Any]:
    """The inner model config of ``nequip.model.modify``, refusing math-changing modifiers."""
    target = model_config.get("_target_")
    if target not in _MODIFY_TARGETS:
        return model_config
    modifiers = model_config.get("modifiers") or []
    if isinstance(modifiers, dict):
        if set(modifiers) - {"sole_model"}:
            raise refuse("modifiers", sorted(modifiers), "only a single model is supported")
        modifiers = modifiers.get("sole_model") or []
    for modifier in modifiers:
        name = modifier.get("modifier") if isinstance(modifier, dict) else modifier
        if name not in _HARMLESS_MODIFIERS:
            raise refuse(
                "modifier", name, f"only {list(_HARMLESS_MODIFIERS)} are known to keep the energy"
            )
    inner = model_config.get("model")
    if not isinstance(inner, dict):
        raise refuse("model", inner, "nequip.model.modify must wrap a model config")
    return unwrap_modifiers(dict(inner))


def _element_map(
    type_names: list[str], model_config: dict[str, Any], data_config: dict[str, Any]
) -> list[str]:
    """Chemical symbol of each official type, from the ZBL and type-mapper settings."""
    candidates: list[set[str]] = [set() for _ in type_names]
    pair = model_config.get("pair_potential") or {}
    species = pair.get("chemical_species") if isinstance(pair, dict) else None
    if species is not None:
        if len(species) != len(type_names):
            raise refuse("pair_potential.chemical_species", species, "one per type expected")
        for found, symbol in zip(candidates, species, strict=True):
            found.add(symbol)
    for mapping in _type_maps(data_config):
        for index, name in enumerate(type_names):
            symbols = [s for s, t in mapping.items() if t == name]
            if len(symbols) > 1:
                raise refuse(
                    "chemical_species_to_atom_type_map",
                    mapping,
                    f"type {name!r} stands for several elements {symbols}; one species here "
                    "is one element",
                )
            candidates[index].update(symbols)
    elements = []
    for name, found in zip(type_names, candidates, strict=True):
        if not found and name in _ATOMIC_NUMBERS:
            found = {name}
        if len(found) != 1:
            raise refuse(
                "type_names",
                type_names,
                f"type {name!r} "
                + (
                    "maps to several elements " + str(sorted(found))
                    if found
                    else "is not a chemical symbol and the file does not say which element it is"
                ),
            )
        (symbol,) = found
        if symbol not in _ATOMIC_NUMBERS or _ATOMIC_NUMBERS[symbol] < 1:
            raise refuse("type_names", type_names, f"{symbol!r} is not a chemical symbol")
        elements.append(symbol)
    if len(set(elements)) != len(elements):
        raise refuse(
            "type_names",
            type_names,
            f"types map to repeated elements {elements}; one species here is one element",
        )
    return elements


def _type_maps(config: Any) -> Iterator[dict[str, str]]:
    """Every ``ChemicalSpeciesToAtomTypeMapper`` map (symbol -> type name) in a config."""
    if isinstance(config, dict):
        if str(config.get("_target_", "")).endswith(_TYPE_MAPPER):
            mapping = config.get("chemical_species_to_atom_type_map")
            names = config.get("model_type_names") or []
            yield dict(mapping) if mapping is not None else {n: n for n in names}
        for value in config.values():
            yield from _type_maps(value)
    elif isinstance(config, list):
        for value in config:
            yield from _type_maps(value)


def _per_type(value: Any, option: str, rename: dict[str, str]) -> Any:
    """A float or per-type dict, with type names replaced by chemical symbols."""
    if isinstance(value, dict):
        if set(value) != set(rename):
            raise refuse(option, value, f"must name exactly the types {list(rename)}")
        return {rename[k]: float(v) for k, v in value.items()}
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise refuse(option, value, "expected a number or a dict per type")


def irreps_layout(model_config: dict[str, Any]) -> tuple[int, bool]:
    """``(l_max, parity)`` of AllegroModel, or of a FullAllegroModel that matches it."""
    from e3nn import o3

    target = model_config.get("_target_")
    if target in _ALLEGRO_TARGETS:
        if "l_max" not in model_config:
            raise refuse("l_max", None, "AllegroModel needs l_max")
        return int(model_config["l_max"]), bool(model_config.get("parity", True))
    if target not in _FULL_TARGETS:
        raise refuse(
            "_target_", target, "only allegro.model.AllegroModel and FullAllegroModel are supported"
        )
    sh_value, allowed_value = (
        model_config.get("irreps_edge_sh"),
        model_config.get("tensor_track_allowed_irreps"),
    )
    try:
        sh = (
            o3.Irreps.spherical_harmonics(sh_value)
            if isinstance(sh_value, int)
            else o3.Irreps(sh_value)
        )
        allowed = o3.Irreps(allowed_value)
    except (ValueError, TypeError, AssertionError) as error:
        raise refuse("irreps_edge_sh", sh_value, f"unreadable irreps ({error})") from None
    l_max = sh.lmax
    if sh != o3.Irreps.spherical_harmonics(l_max, p=-1):
        raise refuse("irreps_edge_sh", sh_value, "only spherical harmonics with p=-1 (1o, 2e, ...)")
    for parity in (True, False):
        expected = (
            o3.Irreps([(1, (deg, p)) for deg in range(l_max + 1) for p in (1, -1)])
            if parity
            else sh
        )
        if allowed == expected:
            return l_max, parity
    raise refuse(
        "tensor_track_allowed_irreps",
        allowed_value,
        "only the layouts AllegroModel builds (all irreps up to l_max in the order 0e 0o 1e 1o "
        "..., or the spherical harmonics) import exactly",
    )


def translate_config(
    model_config: dict[str, Any],
    weights: dict[str, torch.Tensor],
    data_config: dict[str, Any],
) -> ModelConfig:
    """Our :class:`ModelConfig` for an official model config, refusing what differs."""
    unknown = sorted(set(model_config) - _KNOWN - {"modifiers", "model"})
    if unknown:
        raise refuse(
            unknown[0],
            model_config[unknown[0]],
            "not an option of the official Allegro models known here",
        )
    l_max, parity = irreps_layout(model_config)
    for option, supported in (("weight_individual_irreps", True), ("forward_normalize", True)):
        if model_config.get(option, True) is not supported:
            raise refuse(option, model_config[option], f"only {supported} is implemented here")
    dtype = model_config.get("model_dtype")
    if dtype not in ("float32", "float64"):
        raise refuse("model_dtype", dtype, "only float32 and float64")

    type_names = list(model_config.get("type_names") or [])
    if not type_names:
        raise refuse("type_names", type_names, "the model names no types")
    elements = _element_map(type_names, model_config, data_config)
    rename = dict(zip(type_names, elements, strict=True))

    values: dict[str, Any] = {
        key: model_config.get(key, default) for key, default in _DEFAULTS.items()
    }
    for name in ("scalar_embed", "allegro", "readout"):
        key = f"{name}_mlp_nonlinearity"
        if values[key] not in _NONLINEARITIES:
            raise refuse(key, values[key], "only silu, mish, gelu, tanh or None")
        values[key] = _NONLINEARITIES[values[key]]

    embed = model_config.get("radial_chemical_embed")
    if not isinstance(embed, dict) or embed.get("_target_") not in _BESSEL_TARGETS:
        target = embed.get("_target_") if isinstance(embed, dict) else embed
        raise refuse("radial_chemical_embed", target, "only allegro.nn.TwoBodyBesselScalarEmbed")
    extra = sorted(set(embed) - set(_BESSEL_DEFAULTS) - {"_target_"})
    if extra:
        raise refuse(f"radial_chemical_embed.{extra[0]}", embed[extra[0]], "unknown option")
    bessel = {key: embed.get(key, default) for key, default in _BESSEL_DEFAULTS.items()}

    cutoffs = values.pop("per_edge_type_cutoff")
    if cutoffs is not None:
        if not isinstance(cutoffs, dict) or set(cutoffs) - set(rename):
            raise refuse("per_edge_type_cutoff", cutoffs, f"keys must be types {type_names}")
        cutoffs = {
            rename[center]: (
                {rename[n]: float(c) for n, c in entry.items()}
                if isinstance(entry, dict)
                else float(entry)
            )
            for center, entry in cutoffs.items()
        }
    avg = model_config.get("avg_num_neighbors")
    if avg is None:
        raise refuse("avg_num_neighbors", avg, "required by the official model as well")

    return _model_config(
        species=tuple(elements),
        r_max=float(model_config["r_max"]),
        l_max=l_max,
        parity=parity,
        num_bessels=int(bessel["num_bessels"]),
        bessel_trainable=bool(bessel["bessel_trainable"]),
        polynomial_cutoff_p=_number(bessel["polynomial_cutoff_p"]),
        per_edge_type_cutoff=cutoffs,
        avg_num_neighbors=_per_type(avg, "avg_num_neighbors", rename),
        per_type_energy_scales=_scale_shift(weights, "scales", elements),
        per_type_energy_shifts=_scale_shift(weights, "shifts", elements),
        zbl=_zbl(model_config.get("pair_potential")),
        model_dtype=dtype,
        **values,
    )


def _number(value: Any) -> int | float:
    """``6.0`` -> ``6``: integral values as ints, so that equal configs compare equal."""
    return int(value) if float(value).is_integer() else float(value)


def _model_config(**values: Any) -> ModelConfig:
    try:
        return ModelConfig(**values)
    except (ConfigError, TypeError) as error:
        raise OfficialImportError(
            f"the official hyperparameters are not valid here: {error}"
        ) from None


def _scale_shift(
    weights: dict[str, torch.Tensor], which: str, elements: list[str]
) -> float | dict[str, float] | None:
    """Per-type energy scales or shifts as stored in the weights (trained values included)."""
    value = weights.get(f"per_type_energy_scale_shift.{which}")
    if value is None:
        raise OfficialImportError(f"the weights lack per_type_energy_scale_shift.{which}")
    flat = value.detach().to(torch.float64).reshape(-1).tolist()
    if not flat:
        return None
    if len(flat) == 1:
        return flat[0]
    if len(flat) != len(elements):
        raise OfficialImportError(
            f"per_type_energy_scale_shift.{which} has {len(flat)} values for {len(elements)} types"
        )
    return dict(zip(elements, flat, strict=True))


def _zbl(pair: Any) -> bool:
    if pair is None:
        return False
    target = pair.get("_target_") if isinstance(pair, dict) else pair
    if target not in _ZBL_TARGETS:
        raise refuse("pair_potential", target, "only nequip.nn.pair_potential.ZBL is implemented")
    units = pair.get("units")
    if units != "metal":
        raise refuse("pair_potential.units", units, "only LAMMPS metal units (eV, Å)")
    cutoff_p = pair.get("polynomial_cutoff_p", 6)
    if float(cutoff_p) != 6.0:
        raise refuse("pair_potential.polynomial_cutoff_p", cutoff_p, "the ZBL cutoff here has p=6")
    extra = sorted(set(pair) - {"_target_", "units", "chemical_species", "polynomial_cutoff_p"})
    if extra:
        raise refuse(f"pair_potential.{extra[0]}", pair[extra[0]], "unknown ZBL option")
    return True
