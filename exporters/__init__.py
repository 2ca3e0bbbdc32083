"""Export trained Allegro models to ONNX, and check the files for TensorRT.

    from allegro_deploy.exporters import export_checkpoint, check_tensorrt

The names below are imported on first use, so ``allegro-deploy info`` on an ``.onnx`` file
(which needs only onnx) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from allegro_deploy.runtime.lazy import lazy_exports

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

__getattr__ = lazy_exports(__name__, _MODULES)
