"""A small model and its ONNX exports, shared by the runtime and MD tests.

Exporting takes tens of seconds, so each file is exported once per test session (in
pytest's session temporary folder) whichever test module asks first.
"""

from __future__ import annotations

from pathlib import Path

import ase
import ase.build
import numpy as np
import onnx
import pytest
import torch

from allegro_deploy.exporters.onnx_export import export_model, model_in_dtype
from allegro_deploy.models import AllegroModel, ModelConfig
from allegro_deploy.runtime.metadata import ModelMetadata

SPECIES = ("Cu", "O")
"""Model order differs from atomic-number order, so species indexing is exercised."""

_FILES: dict[tuple[str, bool], Path] = {}


def small_model(dtype: str = "float64") -> AllegroModel:
    """Untrained float64 (or float32) model with physically sensible forces for Cu.

    The ZBL repulsion holds fcc Cu at a = 3.6 Å as a compressed, mechanically stable
    crystal (forces of ~0.6 eV/Å RMS at 300 K, phonon periods of ~100 fs, like EMT Cu);
    the untrained network adds a smooth perturbation. The O-O pair cutoff (3 Å, below
    r_max) exercises per-pair cutoffs.
    """
    torch.manual_seed(0)
    config = ModelConfig(
        species=SPECIES,
        r_max=4.0,
        l_max=1,
        num_layers=2,
        num_scalar_features=16,
        num_tensor_features=4,
        scalar_embed_mlp_hidden_layers_width=16,
        allegro_mlp_hidden_layers_width=16,
        readout_mlp_hidden_layers_width=8,
        per_edge_type_cutoff={"O": {"O": 3.0}},
        avg_num_neighbors=30.0,
        per_type_energy_scales=0.5,
        per_type_energy_shifts={"Cu": -3.5, "O": -1.0},
        zbl=True,
        model_dtype="float64",
    )
    return model_in_dtype(AllegroModel(config).eval(), dtype)


def exported(tmp_path_factory: pytest.TempPathFactory, dtype: str, float64: bool = True) -> Path:
    """The ``structures`` export of :func:`small_model` in ``dtype`` (float32-only for
    ``float64=False``), made once per test session."""
    if (dtype, float64) not in _FILES:
        name = f"small_{dtype}" + ("" if float64 else "_no_float64")
        path = tmp_path_factory.mktemp("exported") / f"{name}.onnx"
        export_model(small_model(), path, dtype=dtype, float64=float64)
        _FILES[dtype, float64] = path
    return _FILES[dtype, float64]


def copper(repeat: int = 3, rattle: float = 0.0, seed: int = 0) -> ase.Atoms:
    """Cubic fcc Cu (a = 3.6 Å) repeated ``repeat`` times along each axis, rattled (Å)."""
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat(repeat)
    atoms.positions += np.random.default_rng(seed).normal(0.0, rattle, atoms.positions.shape)
    return atoms


def file_metadata(proto: onnx.ModelProto) -> ModelMetadata:
    """The checked metadata of a loaded ONNX model."""
    return ModelMetadata.from_props({prop.key: prop.value for prop in proto.metadata_props})
