"""Inference sessions on ONNX Runtime (CPU, CUDA) and the TensorRT slot (numpy only, no torch).

A :class:`Session` is created once per model file and reused for every call; it takes
and returns numpy arrays by tensor name. ``"auto"`` picks ONNX Runtime's CUDA execution
provider when onnxruntime-gpu and a usable GPU are present, else the CPU one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

BACKENDS = ("auto", "cpu", "cuda", "tensorrt")
_CPU, _CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


class BackendError(ValueError):
    """A backend that cannot run here; the message names what is missing."""


class Session:
    """One model file loaded on one backend, for repeated evaluation.

    backend: ``cpu`` or ``cuda``, the backend actually in use.
    input_names, output_names: the graph's tensor names in order.
    """

    def __init__(self, session: ort.InferenceSession, backend: str, path: Path) -> None:
        self._session = session
        self.backend = backend
        self.path = path
        self.input_names = tuple(i.name for i in session.get_inputs())
        self.output_names = tuple(o.name for o in session.get_outputs())

    @property
    def providers(self) -> tuple[str, ...]:
        """ONNX Runtime execution providers in use, in priority order."""
        return tuple(self._session.get_providers())

    def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Evaluate the graph: every input by name in, ``outputs`` (default: all) by name
        out. Only the nodes the requested outputs need are run."""
        names = list(self.output_names if outputs is None else outputs)
        return dict(zip(names, self._session.run(names, dict(inputs)), strict=True))

    def __repr__(self) -> str:
        return f"Session({str(self.path)!r}, backend={self.backend!r})"


def open_session(
    path: str | Path,
    backend: str = "auto",
    *,
    threads: int | None = None,
    device_id: int = 0,
    session_options: ort.SessionOptions | None = None,
) -> Session:
    """Load the ONNX file at ``path`` on ``backend`` (one of :data:`BACKENDS`).

    threads: ONNX Runtime intra-op threads (None: one per physical core).
    device_id: CUDA device ordinal for ``cuda`` (and ``auto`` when it picks CUDA).
    session_options: ONNX Runtime options to use instead of the defaults (all graph
        optimizations on); ``threads``, when given, is set on them.
    Raises :class:`BackendError` when the backend cannot run here (the message names
    the missing package or device) and ``FileNotFoundError`` for a missing file.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if backend == "tensorrt":
        _refuse_tensorrt(path)
    options = _options(threads, session_options)
    if backend == "cpu" or (backend == "auto" and _CUDA not in ort.get_available_providers()):
        return _cpu_session(path, options)
    try:
        return _cuda_session(path, options, device_id)
    except BackendError:
        if backend == "cuda":
            raise
    return _cpu_session(path, options)


def _options(threads: int | None, base: ort.SessionOptions | None) -> ort.SessionOptions:
    if base is None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    else:
        options = base
    if threads is not None:
        if threads < 1:
            raise BackendError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
    return options


def _cpu_session(path: Path, options: ort.SessionOptions) -> Session:
    session = ort.InferenceSession(str(path), options, providers=[_CPU])
    return Session(session, "cpu", path)


def _cuda_session(path: Path, options: ort.SessionOptions, device_id: int) -> Session:
    """A session on ONNX Runtime's CUDA execution provider, or :class:`BackendError`."""
    available = ort.get_available_providers()
    if _CUDA not in available:
        raise BackendError(
            f"backend 'cuda' needs onnxruntime-gpu, but the installed onnxruntime "
            f"{ort.__version__} only has {', '.join(available)}; install onnxruntime-gpu "
            "(instead of onnxruntime) on a machine with an NVIDIA GPU, or use backend='cpu'"
        )
    providers: list[str | tuple[str, dict[str, str]]] = [
        (_CUDA, {"device_id": str(device_id)}),
        _CPU,
    ]
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as error:  # ORT raises its own untyped errors when CUDA fails
        raise BackendError(
            f"ONNX Runtime's CUDA provider could not start on GPU {device_id}: {error}"
        ) from error
    if session.get_providers()[0] != _CUDA:
        raise BackendError(
            f"onnxruntime-gpu is installed but found no usable CUDA GPU {device_id} "
            "(no NVIDIA driver or device, or a CUDA/cuDNN version mismatch); use backend='cpu'"
        )
    return Session(session, "cuda", path)


def _refuse_tensorrt(path: Path) -> None:
    """The TensorRT slot: say clearly why it cannot run ``path`` (never returns)."""
    try:
        import tensorrt
    except ImportError:
        raise BackendError(
            "backend 'tensorrt' needs NVIDIA TensorRT's Python package `tensorrt`, which is "
            "not installed (pip install tensorrt on a machine with an NVIDIA GPU); "
            "use backend='cuda' or 'cpu'"
        ) from None
    raise BackendError(
        f"backend 'tensorrt' (TensorRT {tensorrt.__version__}) is not yet supported for the "
        f"ONNX file {path}; use backend='cuda' or 'cpu'"
    )
