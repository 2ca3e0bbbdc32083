"""Allegro in torch + e3nn: the model, its configuration, data, training and checkpoints.

    from allegro_deploy.models import AllegroModel, AtomicGraph, ModelConfig

The names below are imported on first use, so the torch-free modules of this package
(:mod:`.labels`) load without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from allegro_deploy.runtime.lazy import lazy_exports

if TYPE_CHECKING:
    from .allegro import AllegroModel
    from .config import ConfigError, ModelConfig
    from .graph import AtomicGraph

__all__ = ["AllegroModel", "AtomicGraph", "ConfigError", "ModelConfig"]

_MODULES = {
    "AllegroModel": ".allegro",
    "AtomicGraph": ".graph",
    "ConfigError": ".config",
    "ModelConfig": ".config",
}

__getattr__ = lazy_exports(__name__, _MODULES)
