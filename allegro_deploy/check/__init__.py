"""Accuracy of reduced-precision models against a float64 reference (``allegro-deploy check``).

:func:`run_check` evaluates one model at several precisions on the structures of a data
file and compares each with a float64 reference and with the file's labels:

* a checkpoint is exported at every requested precision (``fp64`` is the float64 export)
  to a temporary folder and the files are run through the runtime. Without a GPU, the
  reduced precisions (tf32, fp16, bf16) are emulated exports run on CPU (inputs of every
  matrix product rounded to the format, float32 accumulation; see
  :mod:`allegro_deploy.models.precision`), labelled ``emulated``; with ONNX Runtime's CUDA
  provider, the real files run on the GPU, labelled ``real (cuda)``. The reference is the
  checkpoint's torch model in float64;
* an ``.onnx`` file is run as it is; the reference is a checkpoint (its torch model in
  float64) or a float64 export, or none (errors against the labels only).

Errors (:data:`METRICS`) per precision: energy per atom, forces (MAE, RMSE, largest
component, RMSE relative to the RMS reference force), stress, and the total-energy drift
of a short NVE run from the largest structure. Written to ``--out``: ``report.json``,
``report.md``, ``parity_<precision>.png`` and ``force_error_hist.png``. A threshold on
any metric fails the check for every precision above it.
"""

from __future__ import annotations

from .metrics import METRICS, PrecisionResult, parse_threshold
from .predictions import CheckError, Predictions
from .report import CheckReport
from .run import run_check

__all__ = [
    "METRICS",
    "CheckError",
    "CheckReport",
    "PrecisionResult",
    "Predictions",
    "parse_threshold",
    "run_check",
]
