"""Export trained Allegro models to ONNX, and check the files for TensorRT.

    from allegro_deploy.exporters import export_checkpoint, check_tensorrt

The names below are imported on first use, so ``allegro-deploy info`` on an ``.onnx`` file
(which needs only onnx) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .onnx_export import ExportError, ExportReport, export_checkpoint, export_model
    from .tensorrt_check import TensorRTReport, check_tensorrt

__all__ = [
    "ExportError",
    "ExportReport",
    "TensorRTReport",
    "check_tensorrt",
    "export_checkpoint",
    "export_model",
]

_MODULES = {
    "ExportError": ".onnx_export",
    "ExportReport": ".onnx_export",
    "export_checkpoint": ".onnx_export",
    "export_model": ".onnx_export",
    "TensorRTReport": ".tensorrt_check",
    "check_tensorrt": ".tensorrt_check",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_MODULES[name], __name__), name)
