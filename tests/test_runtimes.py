"""One exported file, every runtime: ONNX Runtime CPU, the ONNX reference evaluator and
OpenVINO CPU against the torch model on every export variant, the float32-only files
through the runtime's hosts, and what TensorRT's parser would say of each file."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from exported_models import copper, exported, small_model
from onnx import TensorProto, numpy_helper
from onnx import helper as oh
from onnx.reference import ReferenceEvaluator

from allegro_deploy.cli import main
from allegro_deploy.exporters.onnx_export import export_model, model_in_dtype
from allegro_deploy.exporters.tensorrt_check import check_tensorrt
from allegro_deploy.exporters.tracing import fold_constants
from allegro_deploy.exporters.verify import REDUCED_TOLERANCES, TOLERANCES, ort_session, verify
from allegro_deploy.models.precision import matmul_precision
from allegro_deploy.runtime import AllegroCalculator, Potential
from allegro_deploy.runtime.backends import BackendError, open_session
from allegro_deploy.runtime.metadata import read_metadata, tensor_specs

openvino = pytest.importorskip("openvino")

VARIANTS = [
    (target, precision, mode, float64)
    for target in ("structures", "pairs")
    for precision, mode, float64 in [
        ("fp64", "real", True),
        *[(p, "real", f64) for p in ("fp32", "tf32", "fp16", "bf16") for f64 in (True, False)],
        *[
            (p, "emulated", f64)
            for p in ("fp16", "bf16")
            for f64 in (True, False)
            if target == "structures"
        ],
    ]
]
"""(target, precision, precision mode, float64) of every export variant."""
SMALL_SAMPLES = {"molecule": ("molecule",), "small periodic cell": ("small_cell",)}
"""What the (slow, pure numpy) reference evaluator runs."""

_FILES: dict[tuple[str, str, str, bool], Path] = {}


def variant_id(variant: tuple[str, str, str, bool]) -> str:
    target, precision, mode, float64 = variant
    return f"{target}-{precision}-{mode}" + ("" if float64 else "-no-float64")


@pytest.fixture(scope="module", params=VARIANTS, ids=variant_id)
def variant(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """(variant, file): each variant exported once per test session."""
    if request.param not in _FILES:
        target, precision, mode, float64 = request.param
        path = tmp_path_factory.mktemp("variants") / f"{variant_id(request.param)}.onnx"
        export_model(
            small_model(),
            path,
            target=target,
            precision=precision,
            emulate=mode == "emulated",
            float64=float64,
        )
        _FILES[request.param] = path
    return request.param, _FILES[request.param]


class _Reference:
    """The ONNX reference evaluator with the runtime session's ``run(inputs, outputs)``."""

    def __init__(self, path: Path) -> None:
        self.evaluator = ReferenceEvaluator(onnx.load(path))

    def run(self, inputs: dict[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return dict(zip(outputs, self.evaluator.run(list(outputs), inputs), strict=True))


def _errors(session, variant, samples=None) -> float:
    """Largest relative error of ``session`` against the torch model of ``variant``."""
    target, precision, mode, float64 = variant
    dtype = "float64" if precision == "fp64" else "float32"
    model = model_in_dtype(small_model(), dtype, float64)
    with matmul_precision(model, precision, mode):
        errors = verify(session, model, target, samples=samples)
    return max(max(e.values()) for e in errors.values())


def _tolerance(precision: str) -> float:
    return (
        REDUCED_TOLERANCES.get(precision)
        or TOLERANCES["float64" if precision == "fp64" else "float32"]
    )


@pytest.mark.slow
def test_every_variant_agrees_with_torch_on_every_runtime(variant) -> None:
    """ONNX Runtime CPU, the reference evaluator and OpenVINO CPU on the same file, each
    within the precision's tolerance of the torch model with the same roundings."""
    (target, precision, mode, float64), path = variant
    tolerance = _tolerance(precision)
    errors = {"reference evaluator": _errors(_Reference(path), variant[0], SMALL_SAMPLES)}
    if precision == "bf16" and mode == "real":
        with pytest.raises(Exception, match="NOT_IMPLEMENTED"):  # no CPU bfloat16 kernels
            _errors(ort_session(path), variant[0])
    else:
        errors["ONNX Runtime CPU"] = _errors(ort_session(path), variant[0])
    if precision == "fp64":
        with pytest.raises(BackendError, match="float64 network body.*float32"):
            open_session(path, "openvino")
    else:
        errors["OpenVINO CPU"] = _errors(open_session(path, "openvino"), variant[0])
    print(f"{variant_id(variant[0])}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
    assert max(errors.values()) <= tolerance, errors


@pytest.mark.slow
def test_tensorrt_check_passes_float32_only_files_and_names_double_in_others(variant) -> None:
    (_, _, _, float64), path = variant
    report = check_tensorrt(path)
    assert report.ok != float64, report.summary()
    if float64:
        assert all("DOUBLE" in finding.reason for finding in report.findings)
        assert any(f.where.startswith("input ") for f in report.findings)


@pytest.mark.slow
def test_float32_only_files_hold_no_double_and_no_constant_subgraph(variant) -> None:
    (target, _, _, float64), path = variant
    proto = onnx.shape_inference.infer_shapes(onnx.load(path))
    graph = proto.graph
    constants = {t.name for t in graph.initializer}
    assert not [n.name for n in graph.node if n.input and set(n.input) <= constants]
    values = [*graph.input, *graph.output, *graph.value_info]
    doubles = [v.name for v in values if v.type.tensor_type.elem_type == TensorProto.DOUBLE]
    doubles += [t.name for t in graph.initializer if t.data_type == TensorProto.DOUBLE]
    assert bool(doubles) == float64
    meta = read_metadata(path)
    assert meta.float64 == float64
    assert (meta.inputs, meta.outputs) == tensor_specs(target, float64)


# --------------------------------------------------------------------------- OpenVINO


def _two_products(transposed_initializer: bool) -> onnx.ModelProto:
    """a @ W and b @ W^T, with W^T a Transpose of W or an initializer of its own."""
    weight = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32)
    initializers = [numpy_helper.from_array(weight, "W")]
    nodes = [oh.make_node("MatMul", ["a", "W"], ["y1"])]
    if transposed_initializer:
        initializers.append(numpy_helper.from_array(weight.T.copy(), "WT"))
    else:
        nodes.append(oh.make_node("Transpose", ["W"], ["WT"], perm=[1, 0]))
    nodes.append(oh.make_node("MatMul", ["b", "WT"], ["y2"]))
    graph = oh.make_graph(
        nodes,
        "two_products",
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 4]) for n in "ab"],
        [oh.make_tensor_value_info(n, TensorProto.FLOAT, ["n", 4]) for n in ("y1", "y2")],
        initializers,
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", 18)])


def _openvino_outputs(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    core = openvino.Core()
    model = core.read_model(proto.SerializeToString(), b"")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    outputs = compiled(feeds)
    return [outputs[o] for o in compiled.outputs]


def test_openvino_bug_one_weight_used_directly_and_transposed() -> None:
    """OpenVINO 2026.4's CPU plugin computes b @ W instead of b @ W^T when W feeds one
    MatMul directly and another through a Transpose (as a linear layer's forward and
    backward do); :func:`fold_constants` turns the Transpose into an initializer, which
    it gets right. When a release fixes the bug, this test says so."""
    a, b = np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32)
    feeds = {"a": a, "b": b}
    weight = numpy_helper.to_array(_two_products(False).graph.initializer[0])
    expected = [feeds["a"] @ weight, feeds["b"] @ weight.T]
    folded = fold_constants(_two_products(False))
    assert [n.op_type for n in folded.graph.node] == ["MatMul", "MatMul"]
    for proto in (folded, _two_products(True)):
        for actual, wanted in zip(_openvino_outputs(proto, feeds), expected, strict=True):
            np.testing.assert_allclose(actual, wanted, rtol=1e-5, atol=1e-6)
    buggy = _openvino_outputs(_two_products(False), feeds)[1]
    if openvino.__version__.startswith("2026.4"):
        np.testing.assert_allclose(buggy, feeds["b"] @ weight, rtol=1e-5, atol=1e-6)
    else:
        print(
            f"OpenVINO {openvino.__version__}: transposed product off by ",
            np.abs(buggy - expected[1]).max(),
        )


@pytest.fixture(scope="module")
def float32_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The small model's float32 structures exports, with and without float64 tensors."""
    return {
        "default": exported(tmp_path_factory, "float32"),
        "no-float64": exported(tmp_path_factory, "float32", float64=False),
    }


def test_openvino_and_onnx_runtime_forces_agree_on_864_atoms(float32_files) -> None:
    atoms = copper(6, rattle=0.1)
    for name, path in float32_files.items():
        ort_result = Potential.load(path, "cpu").evaluate(atoms)
        ov_result = Potential.load(path, "openvino").evaluate(atoms)
        scale = np.abs(ort_result.forces).max()
        error = np.abs(ov_result.forces - ort_result.forces).max() / scale
        print(f"{name}: OpenVINO vs ONNX Runtime forces {error:.1e} relative")
        assert error <= 1e-5
        assert abs(ov_result.energy - ort_result.energy) / len(atoms) <= 1e-5


def test_openvino_backend_says_which_package_is_missing(float32_files, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(BackendError, match=r"needs the packages openvino and onnx.*\[openvino\]"):
        open_session(float32_files["no-float64"], "openvino")


# --------------------------------------------------------------------------- hosts


def test_float32_only_file_gives_the_float32_file_results(float32_files) -> None:
    """Energies (with the shifts added in float64), forces, virials and stresses of a
    float32-only file match the default float32 file's, also in pieces."""
    structures = [copper(3, rattle=0.1), copper(2, rattle=0.05, seed=3)]
    expected = Potential.load(float32_files["default"], "cpu").evaluate(structures)
    for budget in (100_000, 300):
        potential = Potential.load(float32_files["no-float64"], "cpu", edge_budget=budget)
        for want, got in zip(expected, potential.evaluate(structures), strict=True):
            assert abs(got.energy - want.energy) / len(want.forces) < 1e-5
            np.testing.assert_allclose(got.atomic_energies, want.atomic_energies, atol=1e-5)
            scale = np.abs(want.forces).max()
            assert np.abs(got.forces - want.forces).max() / scale < 1e-5
            assert np.abs(got.virial - want.virial).max() / np.abs(want.virial).max() < 1e-5
            np.testing.assert_allclose(
                got.stress,
                -got.virial
                / abs(
                    np.linalg.det(
                        structures[0].cell if len(got.forces) == 108 else structures[1].cell
                    )
                ),
            )


def test_ase_md_runs_on_a_float32_only_file(float32_files) -> None:
    from ase.md.verlet import VelocityVerlet

    atoms = copper(2, rattle=0.05)
    atoms.calc = AllegroCalculator(float32_files["no-float64"], backend="cpu")
    start = atoms.get_total_energy()
    VelocityVerlet(atoms, timestep=1.0 * 0.09822694788464063).run(20)
    assert abs(atoms.get_total_energy() - start) / len(atoms) < 1e-3


def test_cli_exports_a_float32_only_file_and_info_checks_it_for_tensorrt(tmp_path) -> None:
    from allegro_deploy.models.checkpoint import save_checkpoint

    checkpoint = tmp_path / "small.safetensors"
    save_checkpoint(checkpoint, small_model())
    output = tmp_path / "small.onnx"
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(checkpoint), "-o", str(output), "--no-float64"])
    assert result.exit_code == 0, result.output
    assert read_metadata(output).float64 is False and read_metadata(output).dtype == "float32"
    result = runner.invoke(main, ["info", "--tensorrt", str(output)])
    assert result.exit_code == 0 and "every node is supported" in result.output
    refused = runner.invoke(
        main,
        [
            "export",
            str(checkpoint),
            "-o",
            str(tmp_path / "x.onnx"),
            "--no-float64",
            "--dtype",
            "float64",
        ],
    )
    assert refused.exit_code == 1 and "needs dtype float32" in refused.output
    assert not (tmp_path / "x.onnx").exists()
