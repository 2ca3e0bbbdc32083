"""Allegro hyperparameters, named as in the official ``nequip-allegro`` code."""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ase.data import atomic_numbers as _ATOMIC_NUMBERS

NONLINEARITIES = ("silu", "mish", "gelu", "tanh", None)
DTYPES = ("float32", "float64")

PerSpecies = float | dict[str, float]
PairCutoffs = dict[str, float | dict[str, float]]


class ConfigError(ValueError):
    """A model or training configuration that cannot be built."""


_AT_LEAST = {
    "l_max": 0,
    "num_layers": 1,
    "num_scalar_features": 1,
    "num_tensor_features": 1,
    "num_bessels": 1,
    "polynomial_cutoff_p": 1,
    "radial_chemical_embed_dim": 2,
    "scalar_embed_mlp_hidden_layers_depth": 0,
    "scalar_embed_mlp_hidden_layers_width": 1,
    "allegro_mlp_hidden_layers_depth": 0,
    "allegro_mlp_hidden_layers_width": 1,
    "readout_mlp_hidden_layers_depth": 0,
    "readout_mlp_hidden_layers_width": 1,
}
"""Smallest value of each integer option."""
_FLAGS = ("parity", "bessel_trainable", "tp_path_channel_coupling", "zbl")
_PER_SPECIES = ("avg_num_neighbors", "per_type_energy_scales", "per_type_energy_shifts")


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_options(values: Mapping[str, Any]) -> None:
    """Check the type, sign and finiteness of each model option in ``values`` (any
    subset), before anything is built with it; :class:`ConfigError` names the option."""
    for name, value in values.items():
        if name == "species":
            if isinstance(value, str) or not isinstance(value, Sequence):
                raise ConfigError(
                    f"species must be a list of chemical symbols, e.g. [Cu, O], got {value!r}"
                )
            unknown = [s for s in value if s not in _ATOMIC_NUMBERS]
            if unknown:
                raise ConfigError(f"species {unknown} are not chemical symbols")
            if len(set(value)) != len(value):
                raise ConfigError(f"species {list(value)} contain duplicates")
        elif name == "model_dtype":
            if value not in DTYPES:
                raise ConfigError(f"model_dtype must be one of {DTYPES}, got {value!r}")
        elif name.endswith("_mlp_nonlinearity"):
            if value not in NONLINEARITIES:
                raise ConfigError(f"{name} {value!r} is not one of {NONLINEARITIES}")
        elif name == "r_max":
            if not (_is_number(value) and math.isfinite(value) and value > 0):
                raise ConfigError(f"r_max must be a positive number of Å, got {value!r}")
        elif name in _AT_LEAST:
            if value is None and name == "radial_chemical_embed_dim":
                continue
            integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if not integer or value < _AT_LEAST[name]:
                raise ConfigError(f"{name} must be an integer >= {_AT_LEAST[name]}, got {value!r}")
            if name == "radial_chemical_embed_dim" and value % 2:
                raise ConfigError(f"radial_chemical_embed_dim must be even, got {value}")
        elif name in _FLAGS:
            if not isinstance(value, bool):
                raise ConfigError(f"{name} must be true or false, got {value!r}")
        elif name in _PER_SPECIES and value is not None:
            entries = value.values() if isinstance(value, Mapping) else [value]
            if not all(_is_number(v) and math.isfinite(v) for v in entries):
                raise ConfigError(f"{name} must be a number or a number per species, got {value!r}")
            if name != "per_type_energy_shifts" and not all(v > 0 for v in entries):
                raise ConfigError(f"{name} must be positive, got {value!r}")
        elif name == "per_edge_type_cutoff" and value is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(
                    f"per_edge_type_cutoff must map species to cutoffs, got {value!r}"
                )


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to build an :class:`~allegro_deploy.models.AllegroModel`.

    ``species`` are chemical symbols in the order of the model's species indices
    (``type_names`` in the official code). Lengths are in Å, energies in eV.
    """

    species: tuple[str, ...]
    r_max: float
    l_max: int = 1
    parity: bool = True
    num_layers: int = 2
    num_scalar_features: int = 64
    num_tensor_features: int = 16
    # radial-chemical embedding
    num_bessels: int = 8
    bessel_trainable: bool = False
    polynomial_cutoff_p: int = 6
    radial_chemical_embed_dim: int | None = None
    per_edge_type_cutoff: PairCutoffs | None = None
    # MLPs
    scalar_embed_mlp_hidden_layers_depth: int = 1
    scalar_embed_mlp_hidden_layers_width: int = 64
    scalar_embed_mlp_nonlinearity: str | None = "silu"
    allegro_mlp_hidden_layers_depth: int = 1
    allegro_mlp_hidden_layers_width: int = 64
    allegro_mlp_nonlinearity: str | None = "silu"
    tp_path_channel_coupling: bool = True
    readout_mlp_hidden_layers_depth: int = 1
    readout_mlp_hidden_layers_width: int = 32
    readout_mlp_nonlinearity: str | None = "silu"
    # normalization and per-species energy scale/shift (from dataset statistics)
    avg_num_neighbors: PerSpecies = 1.0
    per_type_energy_scales: PerSpecies | None = None
    per_type_energy_shifts: PerSpecies | None = None
    # ZBL screened-nuclear repulsion (LAMMPS ``metal`` units)
    zbl: bool = False
    model_dtype: str = "float32"

    def __post_init__(self) -> None:
        check_options({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        object.__setattr__(self, "species", tuple(self.species))
        if self.embed_dim % 2:
            raise ConfigError(
                f"radial_chemical_embed_dim (default num_scalar_features) must be even, "
                f"got {self.embed_dim}"
            )
        for name in ("avg_num_neighbors", "per_type_energy_scales", "per_type_energy_shifts"):
            value = getattr(self, name)
            if isinstance(value, dict) and set(value) != set(self.species):
                raise ConfigError(f"{name} must name exactly the species {list(self.species)}")
        self.pair_cutoffs()  # validates per_edge_type_cutoff

    @property
    def embed_dim(self) -> int:
        """Width of the two-body radial-chemical embedding."""
        return self.radial_chemical_embed_dim or self.num_scalar_features

    @property
    def atomic_numbers(self) -> tuple[int, ...]:
        return tuple(_ATOMIC_NUMBERS[s] for s in self.species)

    def per_species(self, name: str, default: float) -> list[float]:
        """``name`` (a float, a per-species dict or None) as one value per species."""
        value = getattr(self, name)
        if value is None:
            value = default
        if isinstance(value, dict):
            return [float(value[s]) for s in self.species]
        return [float(value)] * len(self.species)

    def pair_cutoffs(self) -> list[list[float]]:
        """Cutoff (Å) per (center species, neighbor species), filled with ``r_max``.

        Follows the official partial-dict convention: ``{"H": 2.0}`` sets every pair
        with center H, ``{"C": {"H": 4.0}}`` sets the pair (C, H) only.
        """
        table = [[float(self.r_max)] * len(self.species) for _ in self.species]
        for center, entry in (self.per_edge_type_cutoff or {}).items():
            if center not in self.species:
                raise ConfigError(f"per_edge_type_cutoff names unknown species {center!r}")
            row = self.species.index(center)
            items = entry.items() if isinstance(entry, dict) else [(s, entry) for s in self.species]
            for neighbor, cutoff in items:
                if neighbor not in self.species:
                    raise ConfigError(f"per_edge_type_cutoff names unknown species {neighbor!r}")
                if not (_is_number(cutoff) and 0 < cutoff <= self.r_max):
                    raise ConfigError(
                        f"per_edge_type_cutoff {center}-{neighbor} = {cutoff} must be in "
                        f"(0, r_max={self.r_max}]"
                    )
                table[row][self.species.index(neighbor)] = float(cutoff)
        return table

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["species"] = list(self.species)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a plain dict, refusing keys that are not hyperparameters."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown model option(s) {unknown}; valid options are {sorted(known)}"
            )
        return cls(**values)
