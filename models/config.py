"""Allegro hyperparameters, named as in the official ``nequip-allegro`` code."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ase.data import atomic_numbers as _ATOMIC_NUMBERS

NONLINEARITIES = ("silu", "mish", "gelu", "tanh", None)
DTYPES = ("float32", "float64")

PerSpecies = float | dict[str, float]
PairCutoffs = dict[str, float | dict[str, float]]


class ConfigError(ValueError):
    """A model or training configuration that cannot be built."""


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
        object.__setattr__(self, "species", tuple(self.species))
        unknown = [s for s in self.species if s not in _ATOMIC_NUMBERS]
        if unknown:
            raise ConfigError(f"species {unknown} are not chemical symbols")
        if len(set(self.species)) != len(self.species):
            raise ConfigError(f"species {list(self.species)} contain duplicates")
        if self.model_dtype not in DTYPES:
            raise ConfigError(f"model_dtype must be one of {DTYPES}, got {self.model_dtype!r}")
        if not (self.r_max > 0 and math.isfinite(self.r_max)):
            raise ConfigError(f"r_max must be a positive length in Å, got {self.r_max}")
        if self.l_max < 0 or self.num_layers < 1:
            raise ConfigError("l_max must be >= 0 and num_layers >= 1")
        p = self.polynomial_cutoff_p
        if isinstance(p, bool) or not isinstance(p, int) or p < 1:
            raise ConfigError(f"polynomial_cutoff_p must be an integer >= 1, got {p!r}")
        if self.embed_dim % 2:
            raise ConfigError(f"radial_chemical_embed_dim must be even, got {self.embed_dim}")
        for name in ("scalar_embed", "allegro", "readout"):
            nonlinearity = getattr(self, f"{name}_mlp_nonlinearity")
            if nonlinearity not in NONLINEARITIES:
                raise ConfigError(
                    f"{name}_mlp_nonlinearity {nonlinearity!r} is not one of {NONLINEARITIES}"
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
                if not 0 < float(cutoff) <= self.r_max:
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
