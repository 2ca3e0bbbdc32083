"""Inference sessions on ONNX Runtime (CPU, CUDA, TensorRT) and OpenVINO (numpy only, no
torch).

A :class:`Session` is created once per model file and reused for every call; it takes
and returns numpy arrays by tensor name. ``"auto"`` picks ONNX Runtime's CUDA execution
provider when onnxruntime-gpu and a usable GPU are present, else the CPU one.
``"tensorrt"`` runs a float32-only file through ONNX Runtime's TensorRT execution provider
(onnxruntime-gpu with NVIDIA's TensorRT 10 libraries), CUDA behind it; ``"tensorrt-rtx"``
through TensorRT-RTX's plugin execution provider (GeForce/RTX GPUs). The GPU backends are
built to ONNX Runtime's documented options and have not yet run on a GPU here.
``"openvino"`` runs the file on OpenVINO's CPU device (the optional extra
``allegro-deploy[openvino]``), with the ``allegro`` functions inlined at load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from .metadata import ModelMetadata, TensorSpec, read_metadata

BACKENDS = ("auto", "cpu", "cuda", "tensorrt", "tensorrt-rtx", "openvino")
_CPU, _CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"
_TENSORRT = "TensorrtExecutionProvider"
_TENSORRT_RTX = "NvTensorRTRTXExecutionProvider"
TENSORRT_RTX_CAPABILITIES = ("7.5", "8.6", "8.9", "12.0")
"""Compute capabilities NVIDIA lists for TensorRT-RTX on Linux (GeForce/RTX GPUs)."""
DEFAULT_CACHE = Path.home() / ".cache" / "allegro-deploy" / "tensorrt"
"""Where TensorRT engines and timing caches are kept unless the caller names a folder."""


class BackendError(ValueError):
    """A backend that cannot run here; the message names what is missing."""


class Session:
    """One model file loaded on one backend, for repeated evaluation.

    backend: one of :data:`BACKENDS` but ``auto``, the backend actually in use.
    input_names, output_names: the graph's tensor names in order.
    profile: the sizes a TensorRT engine takes (None: any).
    """

    def __init__(
        self,
        session: ort.InferenceSession,
        backend: str,
        path: Path,
        profile: Profile | None = None,
    ) -> None:
        self._session = session
        self.backend = backend
        self.path = path
        self.profile = profile
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
        self.profile = None
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


@dataclass(frozen=True)
class Profile:
    """The sizes a TensorRT engine is built for (one optimization profile).

    max_atoms: most atoms of one graph evaluation (the centers and the ghost atoms their
        edges reach, of all structures evaluated together).
    max_neighbors: edges per atom on average; the engine takes up to
        ``max_atoms * max_neighbors`` edges (fcc Cu at 5 Å: 42 edges per atom).
    TensorRT tunes its kernels for ``opt`` sizes, half of the largest.
    """

    max_atoms: int = 4096
    max_neighbors: int = 96

    def __post_init__(self) -> None:
        if self.max_atoms < 1 or self.max_neighbors < 1:
            raise BackendError(
                f"a TensorRT profile needs max_atoms and max_neighbors >= 1, got "
                f"{self.max_atoms} and {self.max_neighbors}"
            )

    @classmethod
    def of(cls, metadata: ModelMetadata) -> Profile:
        """The profile a compiled file's engine was built for (its ``compiled_for``
        metadata), else the default one."""
        compiled = json.loads(metadata.raw.get("compiled_for", "{}"))
        if "max_atoms" not in compiled:
            return cls()
        return cls(int(compiled["max_atoms"]), int(compiled["max_neighbors"]))

    @property
    def max_edges(self) -> int:
        return self.max_atoms * self.max_neighbors

    def provider_options(self, inputs: Sequence[TensorSpec], prefix: str = "trt") -> dict[str, str]:
        """``{prefix}_profile_{min,opt,max}_shapes`` for the dynamic ``inputs`` of a file
        (``trt``: TensorRT's execution provider, ``nv``: TensorRT-RTX's)."""
        sizes = {
            "min": {"atoms": 1, "edges": 1},
            "opt": {"atoms": max(1, self.max_atoms // 2), "edges": max(1, self.max_edges // 2)},
            "max": {"atoms": self.max_atoms, "edges": self.max_edges},
        }
        dynamic = [spec for spec in inputs if any(isinstance(d, str) for d in spec.shape)]
        return {
            f"{prefix}_profile_{kind}_shapes": ",".join(
                f"{spec.name}:" + "x".join(str(size.get(d, d)) for d in spec.shape)
                for spec in dynamic
            )
            for kind, size in sizes.items()
        }


def provider_options(
    backend: str,
    metadata: ModelMetadata | None = None,
    *,
    device_id: int = 0,
    cache_dir: str | Path | None = None,
    profile: Profile | None = None,
) -> list[tuple[str, dict[str, str]]]:
    """ONNX Runtime's ``providers=[(name, options)]`` for running ``metadata``'s file on
    ``backend`` (``cpu``, ``cuda``, ``tensorrt`` or ``tensorrt-rtx``), from the file's own
    precision (``cpu`` needs no metadata).

    cuda: TF32 matrix units only for a ``tf32`` file (``use_tf32``), CPU behind it.
    tensorrt: the TensorRT execution provider, then CUDA and CPU for anything TensorRT
        declines; FP16/BF16 enabled for real fp16/bf16 files (TensorRT 10's builder flags;
        the files' explicit Casts say the same to a strongly typed TensorRT 11), the
        engine and timing caches in ``cache_dir`` (default :data:`DEFAULT_CACHE`),
        the dynamic sizes of ``profile`` (default :class:`Profile`). The custom
        ``allegro`` nodes reach TensorRT as their function bodies unless a plugin of that
        name is registered (``trt_extra_plugin_lib_paths``). TensorRT builds with TF32 by
        default, and the execution provider has no option to clear it: an fp32 file's
        products run in TF32 on GPUs that have it.
    tensorrt-rtx: TensorRT-RTX's plugin execution provider alone (its options only; it is
        registered with :func:`open_session`), the profile's sizes and its runtime cache in
        ``cache_dir``; TensorRT-RTX builds strongly typed networks, so the file's types
        alone set the precision.
    """
    cpu = (_CPU, {})
    if backend == "cpu":
        return [cpu]
    if metadata is None:
        raise BackendError(f"backend {backend!r} needs the model file's metadata")
    cuda = (
        _CUDA,
        {"device_id": str(device_id), "use_tf32": "1" if metadata.precision == "tf32" else "0"},
    )
    if backend == "cuda":
        return [cuda, cpu]
    cache = str(cache_dir if cache_dir is not None else DEFAULT_CACHE)
    profile = profile or Profile.of(metadata)
    if backend == "tensorrt-rtx":
        rtx = {"nv_runtime_cache_path": cache, **profile.provider_options(metadata.inputs, "nv")}
        return [(_TENSORRT_RTX, rtx)]
    if backend != "tensorrt":
        raise BackendError(f"backend {backend!r} has no ONNX Runtime execution providers")
    real = metadata.precision_mode == "real"
    tensorrt = {
        "device_id": str(device_id),
        "trt_fp16_enable": "1" if real and metadata.precision == "fp16" else "0",
        "trt_bf16_enable": "1" if real and metadata.precision == "bf16" else "0",
        "trt_engine_cache_enable": "1",
        "trt_engine_cache_path": cache,
        "trt_timing_cache_enable": "1",
        "trt_timing_cache_path": cache,
        **profile.provider_options(metadata.inputs),
    }
    return [(_TENSORRT, tensorrt), cuda, cpu]


def open_session(
    path: str | Path,
    backend: str = "auto",
    *,
    threads: int | None = None,
    device_id: int = 0,
    session_options: ort.SessionOptions | None = None,
    cache_dir: str | Path | None = None,
    profile: Profile | None = None,
) -> Session:
    """Load the ONNX file at ``path`` on ``backend`` (one of :data:`BACKENDS`); the one
    place that opens an ONNX Runtime session.

    threads: CPU intra-op threads (None: one per physical core).
    device_id: CUDA device ordinal for ``cuda`` and ``tensorrt`` (and ``auto``).
    session_options: ONNX Runtime options to use instead of the defaults (all graph
        optimizations on); ``threads``, when given, is set on them.
    cache_dir, profile: ``tensorrt`` only, see :func:`provider_options`.
    ``auto`` picks ``cuda`` when onnxruntime-gpu finds a usable GPU, else ``cpu``.
    Raises :class:`BackendError` when the backend cannot run here (the message names
    the missing package, library or device) and ``FileNotFoundError`` for a missing file.
    """
    path = Path(path)
    if backend not in BACKENDS:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} does not exist")
    if threads is not None and threads < 1:
        raise BackendError(f"threads must be >= 1, got {threads}")
    if backend == "openvino":
        return OpenVINOSession(path, threads)
    options = _options(threads, session_options)
    if backend == "cpu" or (backend == "auto" and _CUDA not in ort.get_available_providers()):
        return Session(_ort_session(path, options, provider_options("cpu")), "cpu", path)
    metadata = read_metadata(path)
    if backend == "tensorrt":
        return _tensorrt_session(path, options, metadata, device_id, cache_dir, profile)
    if backend == "tensorrt-rtx":
        return _tensorrt_rtx_session(path, options, metadata, device_id, cache_dir, profile)
    try:
        return _cuda_session(path, options, metadata, device_id)
    except BackendError:
        if backend == "cuda":
            raise
    return Session(_ort_session(path, options, provider_options("cpu")), "cpu", path)


def _options(threads: int | None, base: ort.SessionOptions | None) -> ort.SessionOptions:
    if base is None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    else:
        options = base
    if threads is not None:
        options.intra_op_num_threads = threads
    return options


def _ort_session(
    path: Path,
    options: ort.SessionOptions,
    providers: list[tuple[str, dict[str, str]]] | None,
    failed: str = "",
    fell_back: str = "",
) -> ort.InferenceSession:
    """The one place an ONNX Runtime session is created: ``path`` on ``providers`` (None:
    the plugin execution providers already added to ``options`` for their devices). For a
    GPU provider, a :class:`BackendError` saying ``failed`` (with ONNX Runtime's error)
    when the session cannot be created, or ``fell_back`` when ONNX Runtime dropped the
    first provider."""
    arguments = {} if providers is None else {"providers": providers}
    try:
        session = ort.InferenceSession(str(path), options, **arguments)
    except Exception as error:  # ORT raises its own untyped errors when a GPU provider fails
        if not failed:
            raise
        raise BackendError(f"{failed}: {error}") from error
    if providers and fell_back and session.get_providers()[0] != providers[0][0]:
        raise BackendError(fell_back)
    return session


def _cuda_session(
    path: Path, options: ort.SessionOptions, metadata: ModelMetadata, device_id: int
) -> Session:
    """A session on ONNX Runtime's CUDA execution provider, or :class:`BackendError`."""
    available = ort.get_available_providers()
    if _CUDA not in available:
        raise BackendError(
            f"backend 'cuda' needs onnxruntime-gpu, but the installed onnxruntime "
            f"{ort.__version__} only has {', '.join(available)}; install onnxruntime-gpu "
            "(instead of onnxruntime) on a machine with an NVIDIA GPU, or use backend='cpu'"
        )
    session = _ort_session(
        path,
        options,
        provider_options("cuda", metadata, device_id=device_id),
        failed=f"ONNX Runtime's CUDA provider could not start on GPU {device_id}",
        fell_back=f"onnxruntime-gpu is installed but found no usable CUDA GPU {device_id} "
        "(no NVIDIA driver or device, or a CUDA/cuDNN version mismatch); use backend='cpu'",
    )
    return Session(session, "cuda", path)


def _tensorrt_session(
    path: Path,
    options: ort.SessionOptions,
    metadata: ModelMetadata,
    device_id: int,
    cache_dir: str | Path | None,
    profile: Profile | None,
) -> Session:
    """A session on ONNX Runtime's TensorRT execution provider, or :class:`BackendError`
    naming what is missing: a float32-only file, onnxruntime-gpu, TensorRT's libraries
    or a GPU."""
    _refuse_float64(path, metadata, "tensorrt")
    available = ort.get_available_providers()
    if _TENSORRT not in available:
        raise BackendError(
            f"backend 'tensorrt' needs onnxruntime-gpu (ONNX Runtime's TensorRT execution "
            f"provider), but the installed onnxruntime {ort.__version__} only has "
            f"{', '.join(available)}; install onnxruntime-gpu and NVIDIA TensorRT 10 on a "
            "machine with an NVIDIA GPU, or use backend='cuda' or 'cpu'"
        )
    profile = profile or Profile.of(metadata)
    providers = provider_options(
        "tensorrt", metadata, device_id=device_id, cache_dir=cache_dir, profile=profile
    )
    Path(providers[0][1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)
    session = _ort_session(
        path,
        options,
        providers,
        failed=f"ONNX Runtime's TensorRT provider could not build {path} on GPU {device_id}",
        fell_back="onnxruntime-gpu could not start TensorRT (NVIDIA's TensorRT 10 libraries, "
        f"libnvinfer, not found on the library path, or no usable GPU {device_id}); use "
        "backend='cuda' or 'cpu'",
    )
    return Session(session, "tensorrt", path, profile)


def _refuse_float64(path: Path, metadata: ModelMetadata, backend: str) -> None:
    if metadata.float64:
        raise BackendError(
            f"{path} holds float64 tensors, which TensorRT does not have; export a "
            f"float32-only file (allegro-deploy export --no-float64) for backend '{backend}'"
        )


_registered: set[str] = set()
"""Plugin execution provider libraries registered with ONNX Runtime in this process."""


def _tensorrt_rtx_session(
    path: Path,
    options: ort.SessionOptions,
    metadata: ModelMetadata,
    device_id: int,
    cache_dir: str | Path | None,
    profile: Profile | None,
) -> Session:
    """A session on TensorRT-RTX's plugin execution provider (PyPI
    ``onnxruntime-ep-nv-tensorrt-rtx-cu13``, registered through ONNX Runtime's plugin-EP
    API), or :class:`BackendError` naming what is missing: a float32-only file, the
    package, an NVIDIA driver or a supported GPU."""
    _refuse_float64(path, metadata, "tensorrt-rtx")
    try:
        import onnxruntime_ep_nv_tensorrt_rtx as rtx
    except ImportError:
        raise BackendError(
            "backend 'tensorrt-rtx' needs the TensorRT-RTX plugin for ONNX Runtime "
            "(pip install onnxruntime-ep-nv-tensorrt-rtx-cu13, which ships its own TensorRT-RTX "
            "libraries), or use backend='tensorrt', 'cuda' or 'cpu'"
        ) from None
    name = rtx.get_ep_name()
    if name not in _registered:
        try:
            ort.register_execution_provider_library(name, rtx.get_library_path())
        except Exception as error:  # ORT's own untyped error, e.g. libcuda.so.1 missing
            raise BackendError(
                f"ONNX Runtime could not load the TensorRT-RTX plugin (no NVIDIA driver?): {error}"
            ) from error
        _registered.add(name)
    devices = [device for device in ort.get_ep_devices() if device.ep_name == name]
    if device_id >= len(devices):
        raise BackendError(
            f"TensorRT-RTX found {len(devices)} GPUs it supports, so no GPU {device_id} "
            "(NVIDIA lists GeForce/RTX compute capabilities "
            f"{', '.join(TENSORRT_RTX_CAPABILITIES)} on Linux); use backend 'tensorrt' on "
            "data-centre GPUs such as the H100"
        )
    profile = profile or Profile.of(metadata)
    ((_, rtx_options),) = provider_options(
        "tensorrt-rtx", metadata, cache_dir=cache_dir, profile=profile
    )
    Path(rtx_options["nv_runtime_cache_path"]).mkdir(parents=True, exist_ok=True)
    options.add_provider_for_devices([devices[device_id]], rtx_options)
    session = _ort_session(path, options, None, failed=f"TensorRT-RTX could not build {path}")
    return Session(session, "tensorrt-rtx", path, profile)
