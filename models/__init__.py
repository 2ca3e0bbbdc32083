"""Allegro in torch + e3nn: the model, its configuration, data, training and checkpoints.

    from allegro_deploy.models import AllegroModel, AtomicGraph, ModelConfig

The names below are imported on first use, so the torch-free modules of this package
(:mod:`.labels`) load without torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name], __name__), name)
