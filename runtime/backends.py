"""Inference sessions on ONNX Runtime (CPU, CUDA), OpenVINO and the TensorRT slot (numpy
only, no torch).

A :class:`Session` is created once per model file and reused for every call; it takes
and returns numpy arrays by tensor name. ``"auto"`` picks ONNX Runtime's CUDA execution
provider when onnxruntime-gpu and a usable GPU are present, else the CPU one.
``"openvino"`` runs the file on OpenVINO's CPU device (the optional extra
``allegro-deploy[openvino]``), with the ``allegro`` functions inlined at load.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

BACKENDS = ("auto", "cpu", "cuda", "tensorrt", "openvino")
_CPU, _CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


class BackendError(ValueError):
    """A backend that cannot run here; the message names what is missing."""


class Session:
    """One model file loaded on one backend, for repeated evaluation.

    backend: ``cpu``, ``cuda`` or ``openvino``, the backend actually in use.
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


class OpenVINOSession(Session):
    """A model file compiled for OpenVINO's CPU device; the same calls as :class:`Session`.

    The graph is compiled with ``INFERENCE_PRECISION_HINT`` f32: OpenVINO's default on
    CPUs with bfloat16 units is bf16 for every product, which a model file expresses in
    its own tensor types instead. OpenVINO computes float64 as float32, so files with a
    float64 network body are refused.
    """

    def __init__(self, path: Path, threads: int | None) -> None:
        try:
            import onnx
            import onnx.inliner
            import openvino
        except ImportError as error:
            raise BackendError(
                f"backend 'openvino' needs the packages openvino and onnx ({error.name} is "
                "missing); pip install 'allegro-deploy[openvino]', or use backend='cpu'"
            ) from None
        from .metadata import read_metadata

        if read_metadata(path).dtype == "float64":
            raise BackendError(
                f"{path} has a float64 network body, which OpenVINO would compute in float32; "
                "export a float32 file (allegro-deploy export --dtype float32, or "
                "--no-float64) to run it on backend 'openvino'"
            )
        # OpenVINO does not expand model-local functions in a custom domain
        proto = onnx.inliner.inline_local_functions(onnx.load(path))
        core = openvino.Core()
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
        if threads is not None:
            config["INFERENCE_NUM_THREADS"] = threads
        compiled = core.compile_model(
            core.read_model(proto.SerializeToString(), b""), "CPU", config
        )
        self._request = compiled.create_infer_request()
        self.backend = "openvino"
        self.path = path
        self.input_names = tuple(i.get_any_name() for i in compiled.inputs)
        self.output_names = tuple(o.get_any_name() for o in compiled.outputs)

    @property
    def providers(self) -> tuple[str, ...]:
        return ("OpenVINO CPU",)

    def run(
        self, inputs: Mapping[str, np.ndarray], outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        self._request.infer(dict(inputs))
        names = self.output_names if outputs is None else outputs
        return {name: self._request.get_tensor(name).data.copy() for name in names}


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
    if backend == "openvino":
        if threads is not None and threads < 1:
            raise BackendError(f"threads must be >= 1, got {threads}")
        return OpenVINOSession(path, threads)
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
