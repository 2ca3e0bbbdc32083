"""Torch-free inference side: exported models for MD hosts, neighbor lists, structure checks.

Depends only on numpy, vesin, onnxruntime and ase; never imports torch, e3nn,
``allegro_deploy.models`` or ``allegro_deploy.exporters``.

    from allegro_deploy.runtime import AllegroCalculator, Potential, Profile, Structure, Result

The names below are imported on first use, so importing a submodule such as
``allegro_deploy.runtime.neighbors`` does not load ONNX Runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .lazy import lazy_exports

if TYPE_CHECKING:
    from .backends import Profile
    from .calculator import AllegroCalculator
    from .potential import Potential, Result, Structure

__all__ = ["AllegroCalculator", "Potential", "Profile", "Result", "Structure"]

_MODULES = {
    "AllegroCalculator": ".calculator",
    "Profile": ".backends",
    "Potential": ".potential",
    "Result": ".potential",
    "Structure": ".potential",
}

__getattr__ = lazy_exports(__name__, _MODULES)
