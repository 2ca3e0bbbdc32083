"""Allegro in torch + e3nn: the model, its configuration, data, training and checkpoints."""

from .allegro import AllegroModel
from .config import ConfigError, ModelConfig
from .graph import AtomicGraph

__all__ = ["AllegroModel", "AtomicGraph", "ConfigError", "ModelConfig"]
