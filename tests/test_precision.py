"""Reduced precision: rounding, emulated products, error ordering, export and metadata."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import onnxscript.optimizer
import pytest
import torch
from exported_models import copper, file_metadata, small_model

from allegro_deploy.exporters.onnx_export import ExportError, export_model, model_in_dtype
from allegro_deploy.exporters.targets import structures_inputs
from allegro_deploy.exporters.verify import ort_session
from allegro_deploy.models import AllegroModel, AtomicGraph
from allegro_deploy.models.mlp import ScalarMLP
from allegro_deploy.models.precision import MatmulPolicy, matmul_precision, round_tf32
from allegro_deploy.runtime.metadata import MetadataError, ModelMetadata, read_metadata

REDUCED = {"tf32": 13, "bf16": 16}
"""Low float32 mantissa bits each format drops (fp16 also narrows the exponent: numpy)."""


def round_bits(x: np.ndarray, drop: int) -> np.ndarray:
    """float32 rounded to nearest (ties to even) with the low ``drop`` mantissa bits cleared."""
    bits = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    half = np.uint64(1 << (drop - 1)) - np.uint64(1)
    bits = (bits + half + ((bits >> np.uint64(drop)) & np.uint64(1))) & ~np.uint64((1 << drop) - 1)
    return bits.astype(np.uint32).view(np.float32)


def round_to(x: np.ndarray, precision: str) -> np.ndarray:
    if precision == "fp16":
        return x.astype(np.float16).astype(np.float32)
    return round_bits(x, REDUCED[precision])


def test_round_tf32_is_round_to_nearest_even() -> None:
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(200_000) * np.exp(rng.uniform(-30, 30, 200_000))).astype(np.float32)
    ties = (x.view(np.uint32) & ~np.uint32(0x1FFF)) | np.uint32(0x1000)
    x = np.concatenate([x, ties.view(np.float32), [0.0, -0.0, 1.0, -3.5]]).astype(np.float32)
    got = round_tf32(torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(got, round_bits(x, 13))
    assert (got != x).mean() > 0.9  # it rounds


def _onnx_product(policy: MatmulPolicy, a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """``policy.matmul(a, b)`` exported as the model exporter does, run by ONNX Runtime."""

    class Product(torch.nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return policy.matmul(a, b)

    program = torch.onnx.export(
        Product().eval(), (a, b), dynamo=True, optimize=False, verbose=False
    )
    onnxscript.optimizer.optimize_ir(program.model, inline=False)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(program.model_proto.SerializeToString(), options)
    return session.run(None, {"a": a.numpy(), "b": b.numpy()})[0]


@pytest.mark.parametrize("where", ["torch", "onnxruntime"])
@pytest.mark.parametrize("precision", ["tf32", "fp16", "bf16"])
def test_emulated_product_equals_a_direct_reference(precision: str, where: str) -> None:
    """Inputs rounded to the format, float32 accumulation, fp16/bf16 products rounded;
    ONNX Runtime keeps every rounding (nothing folded away)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((64, 16)).astype(np.float32)
    b = rng.standard_normal((16, 8)).astype(np.float32)
    policy = MatmulPolicy(precision, "emulated")
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    got = policy.matmul(ta, tb).numpy() if where == "torch" else _onnx_product(policy, ta, tb)
    exact = round_to(a, precision).astype(np.float64) @ round_to(b, precision).astype(np.float64)
    unrounded = (a.astype(np.float64) @ b).astype(np.float32)
    assert not np.array_equal(got, unrounded)
    if precision == "tf32":
        np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-6)
        return
    expected = round_to(exact.astype(np.float32), precision)
    ulp = np.abs(expected) * 2.0 ** -(10 if precision == "fp16" else 7)
    assert (np.abs(got - expected) <= ulp).all()
    assert (got == expected).mean() > 0.98  # float32 vs float64 accumulation: rare ties


def nonzero_model(dtype: str = "float32") -> AllegroModel:
    """The small test model without ZBL, so the network carries all of the forces."""
    reference = small_model("float64")
    model = AllegroModel(dataclasses.replace(reference.config, zbl=False))
    model.load_state_dict(reference.state_dict(), strict=False)
    return model_in_dtype(model.eval(), dtype)


def relative_force_error(model: AllegroModel, graph: AtomicGraph, expected: torch.Tensor) -> float:
    forces = model(graph)["forces"].detach()
    return float((forces - expected).norm() / expected.norm())


def test_errors_are_nonzero_and_ordered_in_both_modes() -> None:
    model = nonzero_model()
    atoms = [copper(2, 0.1, seed) for seed in range(2)]
    graph = AtomicGraph.from_atoms(atoms, model.config.atomic_numbers, model.config.r_max)
    expected = nonzero_model("float64")(graph)["forces"].detach()
    errors = {"fp32": relative_force_error(model, graph, expected)}
    for precision in ("tf32", "fp16", "bf16"):
        for mode in ("real", "emulated"):
            with matmul_precision(model, precision, mode):
                errors[precision, mode] = relative_force_error(model, graph, expected)
    assert errors["fp32"] < 1e-5
    assert errors["tf32", "real"] == errors["fp32"]  # TF32 belongs to the engine, not the graph
    emulated = {p: errors[p, "emulated"] for p in ("tf32", "fp16", "bf16")}
    assert 30 * errors["fp32"] < emulated["tf32"] < emulated["bf16"] / 4
    assert 30 * errors["fp32"] < emulated["fp16"] < emulated["bf16"] / 4
    assert 1e-4 < emulated["fp16"] < 1e-2 and 1e-3 < emulated["bf16"] < 1e-1
    for precision in ("fp16", "bf16"):  # real and emulated: the same error scale
        assert 0.5 < errors[precision, "real"] / emulated[precision] < 2


def test_policy_is_off_by_default_and_restored() -> None:
    model = nonzero_model()
    graph = AtomicGraph.from_atoms([copper(1, 0.1)], model.config.atomic_numbers, 4.0)
    before = model(graph)["forces"].detach()
    with matmul_precision(model, "fp32"):
        torch.testing.assert_close(model(graph)["forces"].detach(), before, rtol=0, atol=0)
    with matmul_precision(model, "bf16", "emulated"):
        assert not torch.equal(model(graph)["forces"].detach(), before)
    assert not any("matmul_policy" in vars(m) for m in model.modules())
    torch.testing.assert_close(model(graph)["forces"].detach(), before, rtol=0, atol=0)
    mlp = ScalarMLP(4, 2)
    x = torch.randn(3, 4)
    torch.testing.assert_close(mlp(x), x @ (mlp.weights[0] * mlp.alphas[0]), rtol=0, atol=0)


def test_bad_precisions_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precision fp16 is for float32 models"):
        with matmul_precision(small_model("float64"), "fp16"):
            pass
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        MatmulPolicy("fp8")
    with pytest.raises(ValueError, match="unknown precision mode"):
        MatmulPolicy("fp16", "fast")
    with pytest.raises(ExportError, match="precision fp16 needs a float32 export, not float64"):
        export_model(small_model(), tmp_path / "m.onnx", dtype="float64", precision="fp16")
    with pytest.raises(ExportError, match="precision fp64 needs a float64 export"):
        export_model(small_model(), tmp_path / "m.onnx", dtype="float32", precision="fp64")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def fp16_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (strongly typed) fp16 export of the small model (~25 s)."""
    path = tmp_path_factory.mktemp("fp16") / "fp16.onnx"
    report = export_model(small_model(), path, precision="fp16")
    assert report.verified == "the file" and report.precision_mode == "real"
    return path


def _elem_types(proto: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(proto)
    graph = inferred.graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input]}
    types.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        for attribute in node.attribute:
            if node.op_type == "Constant" and attribute.type == onnx.AttributeProto.TENSOR:
                types[node.output[0]] = attribute.t.data_type
    return types


class _CountingPolicy(MatmulPolicy):
    def __init__(self) -> None:
        super().__init__("fp32")
        self.products = 0

    def matmul(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return super().matmul(a, b)


def _mlp_products(model: AllegroModel) -> int:
    """Matrix products the MLPs of ``model`` make in one forward pass."""
    policy = _CountingPolicy()
    for module in model.modules():
        if isinstance(module, ScalarMLP):
            module.matmul_policy = policy
    model(AtomicGraph.from_atoms([copper(2, 0.1)], model.config.atomic_numbers, model.config.r_max))
    return policy.products


def test_real_fp16_file_is_strongly_typed_forward_and_backward(fp16_file: Path) -> None:
    proto = onnx.load(fp16_file)
    types = _elem_types(proto)
    f16 = onnx.TensorProto.FLOAT16
    matmuls = [n for n in proto.graph.node if n.op_type in ("MatMul", "Gemm")]
    # every MLP product (one per input block and output block of each layer): forward and
    # input gradient in float16; the rest (0/1 selections spreading irreps into channels,
    # sums over a leading axis as products with ones) stay in float32 or, in the geometry,
    # float64
    input_types = [{types.get(name) for name in n.input} for n in matmuls]
    assert input_types.count({f16}) == 2 * _mlp_products(small_model("float32"))
    exact = ({onnx.TensorProto.FLOAT}, {onnx.TensorProto.DOUBLE})
    assert all(t == {f16} or t in exact for t in input_types)
    custom = [n for n in proto.graph.node if n.domain == "allegro"]
    assert len(custom) == 4 and all(types.get(name) == f16 for n in custom for name in n.input)
    meta = file_metadata(proto)
    assert (meta.dtype, meta.precision, meta.precision_mode) == ("float32", "fp16", "real")
    runtime = read_metadata(fp16_file)
    assert (runtime.precision, runtime.precision_mode) == ("fp16", "real")


def test_real_fp16_file_runs_in_onnx_runtime_near_float32(fp16_file: Path) -> None:
    model = small_model("float32")
    graph = AtomicGraph.from_atoms(
        [copper(2, 0.1)], model.config.atomic_numbers, model.config.r_max
    )
    names = ("positions", "species", "edge_index", "edge_shifts", "structure_index", "n_structures")
    feeds = {n: t.numpy() for n, t in zip(names, structures_inputs(graph), strict=True)}
    forces = ort_session(fp16_file).run(feeds, ["forces"])["forces"]
    expected = model(graph)["forces"].detach().numpy()
    error = np.abs(forces - expected).max() / np.abs(expected).max()
    assert 1e-7 < error < 1e-3


def test_metadata_without_precision_is_the_dtype_precision(fp16_file: Path) -> None:
    props = dict(read_metadata(fp16_file).raw)
    for dtype, precision in (("float32", "fp32"), ("float64", "fp64")):
        old = {
            k: v
            for k, v in props.items()
            if not k.startswith("precision") and k not in ("float64", "energy_shifts")
        } | {"dtype": dtype, "format_version": "1"}
        meta = ModelMetadata.from_props(old, "old.onnx")
        assert (meta.format_version, meta.precision, meta.precision_mode) == (1, precision, "real")
        assert meta.float64 and meta.energy_shifts == ()
    with pytest.raises(MetadataError, match="unknown precision 'fp16'"):
        ModelMetadata.from_props(props | {"dtype": "float64"}, "bad.onnx")
    with pytest.raises(MetadataError, match="unknown precision 'fp8'"):
        ModelMetadata.from_props(props | {"precision": "fp8"}, "bad.onnx")
