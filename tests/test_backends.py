"""Provider options, TensorRT profiles and the errors of each backend, without a GPU."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from exported_models import copper, exported

from allegro_deploy.cli import main
from allegro_deploy.exporters.compile import carry_metadata
from allegro_deploy.runtime import Potential
from allegro_deploy.runtime.backends import (
    DEFAULT_CACHE,
    BackendError,
    Profile,
    Session,
    open_session,
    provider_options,
)
from allegro_deploy.runtime.metadata import ModelMetadata, read_metadata, tensor_specs
from allegro_deploy.runtime.validation import StructureError

NO_GPU = pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(),
    reason="onnxruntime-gpu is installed here; the missing-package errors cannot occur",
)


@pytest.fixture(scope="module")
def float32_only(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return exported(tmp_path_factory, "float32", float64=False)


def metadata_of(precision: str, mode: str = "real", float64: bool = False) -> ModelMetadata:
    """Metadata of a float32 ``structures`` file at ``precision``."""
    inputs, outputs = tensor_specs("structures", float64)
    props = {
        "format": "allegro-deploy-onnx",
        "format_version": "2",
        "species": '["Cu"]',
        "atomic_numbers": "[29]",
        "r_max": "4.0",
        "pair_cutoffs": "[[4.0]]",
        "energy_shifts": "[-3.5]",
        "dtype": "float32",
        "precision": precision,
        "precision_mode": mode,
        "float64": "true" if float64 else "false",
        "target": "structures",
        "inputs": "[]",
        "outputs": "[]",
    }
    meta = ModelMetadata.from_props(props, "test.onnx")
    return ModelMetadata(**{**meta.__dict__, "inputs": inputs, "outputs": outputs})


def test_cpu_and_cuda_provider_options_follow_the_file_precision() -> None:
    assert provider_options("cpu") == [("CPUExecutionProvider", {})]
    for precision, tf32 in (("fp32", "0"), ("tf32", "1"), ("fp16", "0"), ("bf16", "0")):
        providers = provider_options("cuda", metadata_of(precision), device_id=1)
        assert providers == [
            ("CUDAExecutionProvider", {"device_id": "1", "use_tf32": tf32}),
            ("CPUExecutionProvider", {}),
        ]


@pytest.mark.parametrize(
    ("precision", "mode", "fp16", "bf16"),
    [
        ("fp32", "real", "0", "0"),
        ("tf32", "real", "0", "0"),
        ("fp16", "real", "1", "0"),
        ("bf16", "real", "0", "1"),
        ("fp16", "emulated", "0", "0"),
    ],
)
def test_tensorrt_provider_options_per_precision(precision, mode, fp16, bf16, tmp_path) -> None:
    providers = provider_options(
        "tensorrt", metadata_of(precision, mode), device_id=2, cache_dir=tmp_path
    )
    assert [name for name, _ in providers] == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    tensorrt = providers[0][1]
    assert tensorrt["device_id"] == "2" and providers[1][1]["device_id"] == "2"
    assert (tensorrt["trt_fp16_enable"], tensorrt["trt_bf16_enable"]) == (fp16, bf16)
    assert tensorrt["trt_engine_cache_enable"] == tensorrt["trt_timing_cache_enable"] == "1"
    assert tensorrt["trt_engine_cache_path"] == tensorrt["trt_timing_cache_path"] == str(tmp_path)
    assert all(isinstance(v, str) for _, options in providers for v in options.values())


def test_tensorrt_profile_shapes_cover_the_dynamic_inputs() -> None:
    options = Profile(max_atoms=1000, max_neighbors=50).provider_options(
        tensor_specs("structures", float64=False)[0]
    )
    assert options == {
        "trt_profile_min_shapes": "edge_vectors:1x3,species:1,edge_index:2x1",
        "trt_profile_opt_shapes": "edge_vectors:25000x3,species:500,edge_index:2x25000",
        "trt_profile_max_shapes": "edge_vectors:50000x3,species:1000,edge_index:2x50000",
    }
    pairs = Profile(max_atoms=10, max_neighbors=4).provider_options(
        tensor_specs("pairs", float64=False)[0]
    )
    assert "n_local" not in pairs["trt_profile_max_shapes"]  # a scalar: no profile
    default = provider_options("tensorrt", metadata_of("fp32"))[0][1]
    assert default["trt_profile_max_shapes"].startswith("edge_vectors:393216x3,species:4096")
    assert default["trt_engine_cache_path"] == str(DEFAULT_CACHE)


def test_profile_refuses_sizes_below_one() -> None:
    with pytest.raises(BackendError, match="max_atoms and max_neighbors >= 1, got 0 and 8"):
        Profile(max_atoms=0, max_neighbors=8)


def test_tensorrt_refuses_a_file_with_float64_tensors(tmp_path_factory) -> None:
    with pytest.raises(BackendError, match="holds float64 tensors.*--no-float64"):
        open_session(exported(tmp_path_factory, "float64"), "tensorrt")


@NO_GPU
def test_tensorrt_says_onnxruntime_gpu_is_missing(float32_only: Path) -> None:
    with pytest.raises(BackendError, match="'tensorrt' needs onnxruntime-gpu .*TensorRT 10"):
        Potential.load(float32_only, "tensorrt")


@NO_GPU
def test_cuda_says_onnxruntime_gpu_is_missing_and_auto_picks_cpu(float32_only: Path) -> None:
    with pytest.raises(BackendError, match="backend 'cuda' needs onnxruntime-gpu"):
        open_session(float32_only, "cuda")
    assert open_session(float32_only, "auto").backend == "cpu"


def test_threads_below_one_are_refused_on_every_backend(float32_only: Path) -> None:
    for backend in ("cpu", "openvino"):
        with pytest.raises(BackendError, match="threads must be >= 1, got 0"):
            open_session(float32_only, backend, threads=0)


def test_a_profile_caps_the_atoms_and_edges_of_each_evaluation(float32_only: Path) -> None:
    """The runtime evaluates under a TensorRT profile's sizes (here on a CPU session
    carrying one), with the same results: a structure whose pieces would reach more atoms
    than the profile takes is cut into smaller pieces, and one whose single atom's edges
    reach too many is refused by name."""
    cpu = open_session(float32_only, "cpu")

    def capped(max_atoms: int) -> Potential:
        session = Session(cpu._session, "cpu", cpu.path, Profile(max_atoms, max_neighbors=8))
        return Potential(session, read_metadata(float32_only))

    assert capped(40).edge_budget == 320
    structures = [copper(1, 0.05, seed) for seed in range(5)]  # 4 atoms, 72 edges each
    structures.append(copper(3, 0.05))  # 108 atoms: pieces of 320 edges reach > 40 atoms
    expected = Potential.load(float32_only, "cpu").evaluate(structures)
    for got, want in zip(capped(40).evaluate(structures), expected, strict=True):
        np.testing.assert_allclose(got.forces, want.forces, rtol=1e-5, atol=1e-6)
        assert got.energy == pytest.approx(want.energy, rel=1e-6)
    # 18 neighbors: one atom and the atoms its edges reach are 19 > 10
    with pytest.raises(StructureError, match=r"structure 0 \(Cu108\).*max_atoms 10.*Profile"):
        capped(10).evaluate([copper(3, 0.05)])


def test_gpu_check_reports_every_gpu_path_skipped_without_a_gpu(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: the GPU paths would run")
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_check.py"
    result = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(report["skipped"]) == {
        "ONNX Runtime CUDA",
        "ONNX Runtime TensorRT",
        "ONNX Runtime TensorRT-RTX",
        "torch CUDA",
        "nequip-allegro CUDA",
    }
    assert "needs onnxruntime-gpu" in report["skipped"]["ONNX Runtime TensorRT"]
    assert report["results"] == {} and "skipped (" in result.stdout


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_gpu_check_runs_our_torch_model_and_the_official_one_on_the_same_weights(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The torch half of gpu_check, on the CPU: the official model (built by nequip) and ours
    (converted from it) agree with the float64 export of ours, so every path runs the same
    weights."""
    pytest.importorskip("allegro")
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    import gpu_check

    report: dict = {"results": {}, "skipped": {}}
    why = {"cuda": "no", "tensorrt": "no", "tensorrt-rtx": "no", "torch": "", "official": ""}
    gpu_check.run_paths(report, why, [32], device="cpu")
    assert report["weights"] == "the official model's, built by nequip with seed 0"
    assert set(report["results"]) == {"torch CUDA float32", "nequip-allegro CUDA float32"}
    for row in report["results"].values():
        assert row["force_error"] < 1e-5 and row["ms_per_call"]["32"] > 0


def test_compile_refuses_a_file_tensorrt_would_not_parse(tmp_path_factory, tmp_path) -> None:
    source = exported(tmp_path_factory, "float64")
    output = tmp_path / "engine.onnx"
    result = CliRunner().invoke(main, ["compile", str(source), "-o", str(output)])
    assert result.exit_code == 1
    assert (
        "nodes would fail in TensorRT 10.1's parser" in result.output and "DOUBLE" in result.output
    )
    assert not output.exists()


def test_compile_never_replaces_its_source(float32_only: Path) -> None:
    result = CliRunner().invoke(main, ["compile", str(float32_only), "-o", str(float32_only)])
    assert result.exit_code == 1 and "must not replace its source" in result.output


@NO_GPU
def test_compile_says_what_is_missing_and_leaves_no_file(float32_only: Path, tmp_path) -> None:
    output = tmp_path / "engine.onnx"
    result = CliRunner().invoke(main, ["compile", str(float32_only), "-o", str(output)])
    assert result.exit_code == 1 and "needs onnxruntime-gpu" in result.output
    assert list(tmp_path.iterdir()) == []


def test_a_compiled_file_keeps_the_metadata_and_its_profile(float32_only: Path, tmp_path) -> None:
    """What ``compile`` writes around ONNX Runtime's EP-context model (here the export
    itself stands in for it): the export's metadata and the engine's profile."""
    compiled = onnx.load(float32_only)
    compiled.ClearField("metadata_props")
    profile = {"backend": "tensorrt", "max_atoms": 500, "max_neighbors": 64}
    carry_metadata(onnx.load(float32_only), compiled, profile)
    path = tmp_path / "compiled.onnx"
    onnx.save(compiled, path)
    meta = read_metadata(path)
    assert meta.float64 is False and meta.species == read_metadata(float32_only).species
    assert Profile.of(meta) == Profile(max_atoms=500, max_neighbors=64)
    assert Profile.of(read_metadata(float32_only)) == Profile()


def test_tensorrt_rtx_provider_options_carry_the_profile_and_cache(tmp_path) -> None:
    providers = provider_options(
        "tensorrt-rtx",
        metadata_of("fp16"),
        cache_dir=tmp_path,
        profile=Profile(max_atoms=10, max_neighbors=4),
    )
    assert providers == [
        (
            "NvTensorRTRTXExecutionProvider",
            {
                "nv_runtime_cache_path": str(tmp_path),
                "nv_profile_min_shapes": "edge_vectors:1x3,species:1,edge_index:2x1",
                "nv_profile_opt_shapes": "edge_vectors:20x3,species:5,edge_index:2x20",
                "nv_profile_max_shapes": "edge_vectors:40x3,species:10,edge_index:2x40",
            },
        )
    ]


def test_tensorrt_rtx_says_what_is_missing(float32_only: Path, tmp_path_factory) -> None:
    with pytest.raises(BackendError, match="holds float64 tensors.*'tensorrt-rtx'"):
        open_session(exported(tmp_path_factory, "float64"), "tensorrt-rtx")
    if importlib.util.find_spec("onnxruntime_ep_nv_tensorrt_rtx") is None:
        with pytest.raises(BackendError, match="onnxruntime-ep-nv-tensorrt-rtx-cu13"):
            open_session(float32_only, "tensorrt-rtx")
