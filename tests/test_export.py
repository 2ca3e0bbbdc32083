"""ONNX export: file validity, custom ops, metadata, agreement with torch, failure path, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import ase
import ase.build
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from e3nn import o3
from exported_models import file_metadata
from torch.utils._python_dispatch import TorchDispatchMode

from allegro_deploy.cli import main
from allegro_deploy.exporters import onnx_export, tracing
from allegro_deploy.exporters.custom_ops import (
    center_first,
    center_tensor_product_backward_op,
    center_tensor_product_op,
    custom_tensor_products,
    tensor_product_backward_op,
    tensor_product_op,
)
from allegro_deploy.exporters.inspect import describe_onnx
from allegro_deploy.exporters.onnx_export import ExportError, export_model, model_in_dtype
from allegro_deploy.exporters.onnx_functions import (
    DOMAIN,
    OPSET_VERSION,
    env_first,
    function_protos,
    translation_table,
)
from allegro_deploy.exporters.targets import pairs_inputs, structures_inputs
from allegro_deploy.exporters.verify import ort_session
from allegro_deploy.models import AllegroModel, AtomicGraph, ModelConfig
from allegro_deploy.models.checkpoint import save_checkpoint
from allegro_deploy.models.precision import matmul_precision
from allegro_deploy.models.tensor_product import ChannelwiseTensorProduct
from allegro_deploy.runtime.metadata import ModelMetadata

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}


def make_model() -> AllegroModel:
    """Small float64 model; l_max 2 and per-pair cutoffs exercise every code path."""
    torch.manual_seed(0)
    config = ModelConfig(
        species=("Cu", "Au"),
        r_max=4.0,
        l_max=2,
        num_layers=2,
        num_scalar_features=16,
        num_tensor_features=4,
        scalar_embed_mlp_hidden_layers_width=16,
        allegro_mlp_hidden_layers_width=16,
        readout_mlp_hidden_layers_width=8,
        per_edge_type_cutoff={"Au": {"Cu": 3.5}},
        avg_num_neighbors=12.0,
        per_type_energy_scales=0.7,
        per_type_energy_shifts={"Cu": -3.5, "Au": -2.9},
        model_dtype="float64",
    )
    return AllegroModel(config).eval()


@pytest.fixture(scope="module")
def model() -> AllegroModel:
    return make_model()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory, model: AllegroModel) -> Path:
    path = tmp_path_factory.mktemp("checkpoint") / "model.safetensors"
    save_checkpoint(path, model)
    return path


@pytest.fixture(scope="module")
def cli_export(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path) -> tuple[str, Path]:
    """``allegro-deploy export`` of the float64 checkpoint, structures target."""
    path = tmp_path_factory.mktemp("cli") / "model.onnx"
    args = ["export", str(checkpoint), "-o", str(path), "--dtype", "float64"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output, path


class Exports:
    """Exported files by (dtype, target), each made on first use (~25 s) and kept."""

    def __init__(self, folder: Path, model: AllegroModel, cli_file: Path) -> None:
        self.folder, self.model = folder, model
        self.files = {("float64", "structures"): cli_file}

    def __getitem__(self, key: tuple[str, str]) -> Path:
        if key not in self.files:
            dtype, target = key
            path = self.folder / f"{target}_{dtype}.onnx"
            export_model(self.model, path, target=target, dtype=dtype)
            self.files[key] = path
        return self.files[key]


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, model: AllegroModel, cli_export: tuple[str, Path]
) -> Exports:
    return Exports(tmp_path_factory.mktemp("exports"), model, cli_export[1])


FILES = [("float64", "structures"), ("float32", "structures"), ("float64", "pairs")]


def rattled_alloy(rng: np.random.Generator, repeat: tuple[int, int, int]) -> ase.Atoms:
    atoms = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True).repeat(repeat)
    atoms.numbers = rng.choice([29, 79], len(atoms))
    atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
    atoms.cell[1, 0] += 0.4  # triclinic
    return atoms


def molecule(rng: np.random.Generator, n_atoms: int) -> ase.Atoms:
    """Random cluster in a 4.5 Å box, atoms at least 1.5 Å apart."""
    positions: list[np.ndarray] = []
    while len(positions) < n_atoms:
        candidate = rng.uniform(0.0, 4.5, 3)
        if all(np.linalg.norm(candidate - p) > 1.5 for p in positions):
            positions.append(candidate)
    return ase.Atoms(rng.choice([29, 79], n_atoms), positions=positions)


def isolated_atoms() -> ase.Atoms:
    return ase.Atoms("CuAuCu", positions=[[0, 0, 0], [10, 0, 0], [0, 10, 0]])


def shuffled(graph: AtomicGraph, rng: np.random.Generator) -> AtomicGraph:
    """The same graph with its edges in random order (centers no longer sorted)."""
    order = torch.as_tensor(rng.permutation(graph.n_edges))
    graph.edge_index, graph.edge_shifts = graph.edge_index[:, order], graph.edge_shifts[order]
    return graph


def cases(seed: int) -> dict[str, list[ase.Atoms]]:
    """Fresh structures, none with the atom or edge counts of the traced example."""
    rng = np.random.default_rng(seed)
    return {
        "small periodic cell": [rattled_alloy(rng, (1, 1, 1))],
        "periodic cell": [rattled_alloy(rng, (2, 2, 1))],
        "molecule": [molecule(rng, 9)],
        "isolated atoms": [isolated_atoms()],
        "single atom": [ase.Atoms("Au", positions=[[1.0, 2.0, 3.0]])],
        "mixed batch": [
            molecule(rng, 4),
            ase.Atoms("Cu"),
            rattled_alloy(rng, (1, 2, 1)),
            isolated_atoms(),
            molecule(rng, 11),
        ],
    }


def graph_of(model: AllegroModel, structures: list[ase.Atoms]) -> AtomicGraph:
    return AtomicGraph.from_atoms(structures, model.config.atomic_numbers, model.config.r_max)


def run(path: Path, inputs: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    session = ort_session(path)
    feeds = {name: t.numpy() for name, t in zip(session.input_names, inputs, strict=True)}
    return session.run(feeds)


def assert_rel(actual: np.ndarray, expected: np.ndarray, tol: float) -> None:
    assert actual.shape == expected.shape
    scale = max(np.abs(expected).max(initial=0.0), 1e-8)
    assert np.abs(actual - expected).max(initial=0.0) / scale <= tol


# --------------------------------------------------------------------------- file


@pytest.mark.parametrize("key", FILES, ids="-".join)
def test_file_passes_full_check_and_keeps_custom_nodes(exported, key) -> None:
    proto = onnx.load(exported[key])
    onnx.checker.check_model(proto, full_check=True)
    custom = [n for n in proto.graph.node if n.domain == DOMAIN]
    # layer 0 (9 x 9 -> 9) contracts the environment per atom, layer 1 (9 x 9 -> 1) per edge
    names = [
        "CenterTensorProduct",
        "CenterTensorProductBackward",
        "TensorProductEnvFirst",
        "TensorProductEnvFirstBackward",
    ]
    assert sorted({n.op_type for n in custom}) == names
    assert len(custom) == 4  # forward and backward of 2 layers
    for node in custom:
        attributes = {a.name: a.s.decode() for a in node.attribute}
        assert attributes["plugin_namespace"] == "allegro"
    functions = {(f.domain, f.name): f for f in proto.functions}
    assert set(functions) == {(DOMAIN, name) for name in names}
    for function in functions.values():
        assert function.node and all(n.domain == "" for n in function.node)
        assert [(o.domain, o.version) for o in function.opset_import] == [("", OPSET_VERSION)]
    assert {(o.domain, o.version) for o in proto.opset_import} == {
        ("", OPSET_VERSION),
        (DOMAIN, 1),
    }

    # TensorRT rejects ScatterND with a reduction; sums onto centers are padded gathers
    def reductions(op_type: str) -> set[bytes]:
        return {
            onnx.helper.get_attribute_value(a)
            for n in proto.graph.node
            if n.op_type == op_type
            for a in n.attribute
            if a.name == "reduction"
        }

    assert reductions("ScatterND") <= {b"none"}
    assert {b"min", b"none"} <= reductions("ScatterElements") <= {b"add", b"min", b"none"}
    assert "ReduceMax" in [n.op_type for n in proto.graph.node]
    meta = file_metadata(proto)
    assert (meta.dtype, meta.target) == key
    names = list(meta.input_names), list(meta.output_names)
    graph_names = [i.name for i in proto.graph.input], [o.name for o in proto.graph.output]
    assert names == graph_names


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_silu_backward_is_the_derivative_without_overflow(dtype) -> None:
    x = torch.linspace(-120.0, 120.0, 2001, dtype=dtype, requires_grad=True)
    grad = torch.linspace(-1.0, 1.0, 2001, dtype=dtype)
    (expected,) = torch.autograd.grad(torch.nn.functional.silu(x), x, grad)
    actual = tracing._stable_silu_backward(grad, x.detach())
    assert torch.isfinite(actual).all()
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("key", FILES, ids="-".join)
def test_no_sum_over_the_leading_axis(exported, key) -> None:
    """ONNX Runtime's ReduceSum over axis 0 is ~13x slower than a product with ones."""
    proto = onnx.load(exported[key])
    constants = {i.name: onnx.numpy_helper.to_array(i) for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            constants[node.output[0]] = onnx.numpy_helper.to_array(node.attribute[0].t)
    axes = [constants[n.input[1]].tolist() for n in proto.graph.node if n.op_type == "ReduceSum"]
    assert [0] not in axes
    ones_rows = [
        constants[n.input[0]]
        for n in proto.graph.node
        if n.op_type == "MatMul" and n.input[0] in constants
    ]
    # the gradients of the harmonics (3 sums over channels) and of the Bessel basis (2)
    assert sum(a.shape[0] == 1 and bool((a == 1).all()) for a in ones_rows) == 5


@pytest.mark.parametrize(
    ("shape", "keepdim"), [((5, 3, 7), True), ((5, 3, 7), False), ((4, 9), True)]
)
def test_leading_axis_sum_is_a_product_with_ones(shape, keepdim) -> None:
    x = torch.randn(shape, dtype=torch.float64)
    total = tracing._sum_leading_axis_by_product(x, [0], keepdim)
    torch.testing.assert_close(total, x.sum(0, keepdim=keepdim), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize(
    ("x", "dim"),
    [
        (torch.ones(5, 3), [1]),
        (torch.ones(5, 3), [0, 1]),
        (torch.ones(5), [0]),
        (torch.ones(5, 3, dtype=torch.int64), [0]),
    ],
)
def test_other_sums_keep_the_stock_decomposition(x, dim) -> None:
    assert tracing._sum_leading_axis_by_product(x, dim) is NotImplemented


def test_float64_file_holds_no_float32_tensor(exported) -> None:
    """Scalars such as sqrt(3) must not be rounded through float32 in a float64 export."""
    proto = onnx.load(exported["float64", "structures"])
    tensors = list(proto.graph.initializer) + [
        a.t for n in proto.graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    assert tensors and all(t.data_type != onnx.TensorProto.FLOAT for t in tensors)


def test_metadata(exported, model: AllegroModel, checkpoint: Path) -> None:
    meta = file_metadata(onnx.load(exported["float64", "structures"], load_external_data=False))
    raw = meta.raw
    assert raw["format"] == "allegro-deploy-onnx" and meta.format_version == 2
    assert meta.species == ("Cu", "Au") and meta.atomic_numbers == (29, 79)
    assert raw["float64"] == "true"
    assert list(meta.energy_shifts) == model.config.per_species("per_type_energy_shifts", 0.0)
    assert meta.r_max == 4.0
    assert meta.pair_cutoffs == ((4.0, 4.0), (3.5, 4.0))
    assert meta.dtype == "float64" and meta.target == "structures"
    assert raw["checkpoint_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert raw["exporter"] == "allegro-deploy" and raw["exporter_version"]
    assert json.loads(raw["model_config"]) == json.loads(json.dumps(model.config.to_dict()))
    units = {s.name: (s.dtype, s.unit) for s in meta.inputs + meta.outputs}
    assert units["positions"] == ("float64", "Å") and units["forces"] == ("float64", "eV/Å")
    assert units["virial"] == ("float64", "eV") and units["n_structures"] == ("int64", "")
    assert list(units) == [
        "positions",
        "species",
        "edge_index",
        "edge_shifts",
        "structure_index",
        "n_structures",
        "energy",
        "atomic_energies",
        "forces",
        "virial",
        "atomic_virials",
    ]


def test_metadata_props_round_trip(exported) -> None:
    meta = file_metadata(onnx.load(exported["float32", "pairs"], load_external_data=False))
    provenance = {k: v for k, v in meta.raw.items() if k not in meta.to_props()}
    assert set(provenance) == {
        "model_config",
        "parameters",
        "gemm_flops_per_edge",
        "gemm_flops_per_call",
        "exporter",
        "exporter_version",
        "torch_version",
        "checkpoint_sha256",
    }
    assert meta.to_props(**provenance) == dict(meta.raw)
    assert ModelMetadata.from_props(meta.to_props()) == meta


def test_runtime_reads_the_metadata(exported) -> None:
    runtime_metadata = pytest.importorskip("allegro_deploy.runtime.metadata")
    meta = runtime_metadata.read_metadata(exported["float64", "structures"])
    assert meta.species == ("Cu", "Au") and meta.target == "structures"
    assert meta.input_names[0] == "positions" and meta.output_names[-1] == "atomic_virials"


def test_pairs_metadata_names_the_ml_iap_tensors(exported) -> None:
    meta = file_metadata(onnx.load(exported["float64", "pairs"]))
    assert list(meta.input_names) == [
        "edge_vectors",
        "species",
        "edge_index",
        "n_local",
    ]
    assert list(meta.output_names) == ["atomic_energies", "pair_forces"]
    assert meta.inputs[0].dtype == "float64" and meta.outputs[1].unit == "eV/Å"


# --------------------------------------------------------------------------- agreement


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_onnx_runtime_matches_torch_on_fresh_structures(exported, model, dtype: str) -> None:
    reference = model_in_dtype(model, dtype)
    tol = TOLERANCE[dtype]
    rng = np.random.default_rng(7)
    for name, structures in cases(seed=3).items():
        graph = shuffled(graph_of(reference, structures), rng)
        out = run(exported[dtype, "structures"], structures_inputs(graph))
        expected = {k: v.detach().numpy() for k, v in reference(graph).items()}
        for key in ("energy", "atomic_energies", "forces", "virial"):
            assert_rel(out[key], expected[key], tol), (name, key)
        assert out["atomic_energies"].dtype == np.float64 and out["forces"].dtype == np.float64
        # per-atom virials: half of every edge to each end, summing to the virial
        per_structure = np.zeros_like(out["virial"])
        np.add.at(per_structure, graph.structure_index.numpy(), out["atomic_virials"])
        assert_rel(per_structure, expected["virial"], tol)
        assert np.allclose(out["atomic_virials"], out["atomic_virials"].transpose(0, 2, 1))


def test_pair_forces_fold_onto_structures_forces(exported, model) -> None:
    """LAMMPS ML-IAP view: periodic images are ghost atoms; folding pair forces onto
    atoms (fij added to i, subtracted from j, ghosts mapped to their owners) gives the
    structures target's forces, and -Σ sym(r_ij ⊗ fij) its virial."""
    rng = np.random.default_rng(11)
    for structures in ([rattled_alloy(rng, (2, 1, 1))], [molecule(rng, 6)], [isolated_atoms()]):
        graph = graph_of(model, structures)
        reference = run(exported["float64", "structures"], structures_inputs(graph))
        inputs = pairs_inputs(graph)
        edge_vectors, species, edge_index, n_local = inputs
        owner = torch.cat(
            [torch.arange(graph.n_atoms), graph.edge_index[1][graph.edge_shifts.abs().sum(1) > 0]]
        )
        assert len(species) == len(owner)
        out = run(exported["float64", "pairs"], inputs)
        fij = out["pair_forces"]
        forces = np.zeros((graph.n_atoms, 3))
        np.add.at(forces, edge_index[0].numpy(), fij)
        np.add.at(forces, owner[edge_index[1]].numpy(), -fij)
        assert_rel(forces, reference["forces"], 1e-10)
        assert_rel(out["atomic_energies"], reference["atomic_energies"], 1e-10)
        outer = np.einsum("ei,ej->ij", edge_vectors.numpy(), fij)
        assert_rel(-0.5 * (outer + outer.T), reference["virial"][0], 1e-10)


def test_pairs_target_returns_local_atoms_only(exported, model) -> None:
    rng = np.random.default_rng(5)
    graph = graph_of(model, [rattled_alloy(rng, (1, 1, 1))])
    edge_vectors, species, edge_index, n_local = pairs_inputs(graph)
    out = run(exported["float64", "pairs"], (edge_vectors, species, edge_index, n_local))
    assert out["atomic_energies"].shape == (int(n_local),) and len(species) > int(n_local)
    assert out["pair_forces"].shape == tuple(edge_vectors.shape)


@pytest.mark.slow
@pytest.mark.parametrize(("target", "dtype"), [("structures", "float64"), ("pairs", "float32")])
def test_model_variants_export_and_verify(tmp_path: Path, target: str, dtype: str) -> None:
    """ZBL, one layer, no parity, shared path weights, three species, float32 weights."""
    torch.manual_seed(3)
    config = ModelConfig(
        species=("H", "C", "O"),
        r_max=3.0,
        l_max=1,
        parity=False,
        num_layers=1,
        num_scalar_features=8,
        num_tensor_features=4,
        scalar_embed_mlp_hidden_layers_width=8,
        allegro_mlp_hidden_layers_width=8,
        readout_mlp_hidden_layers_width=8,
        tp_path_channel_coupling=False,
        avg_num_neighbors={"H": 3.0, "C": 5.0, "O": 4.0},
        zbl=True,
        model_dtype="float32",
    )
    path = tmp_path / "variant.onnx"
    report = export_model(AllegroModel(config).eval(), path, target=target, dtype=dtype)
    assert report.max_error <= TOLERANCE[dtype] and path.exists()
    assert file_metadata(onnx.load(path)).species == ("H", "C", "O")


# --------------------------------------------------------------------------- ops


@pytest.mark.parametrize(
    "irreps", [("0e+1o+2e", "0e+1o+2e", "0e+1o+2e"), ("0e+1o+2e", "0e+1o+2e", "0e")]
)
def test_custom_ops_match_the_model_tensor_product_and_its_gradients(
    irreps: tuple[str, str, str],
) -> None:
    torch.manual_seed(1)
    tp = _product(irreps).double().requires_grad_(False)
    n_atoms, center = 4, torch.tensor([2, 0, 2, 3, 0, 2, 3])  # atom 1 has no edges
    x1 = torch.randn(7, tp.channels, tp.cg.shape[1], dtype=torch.float64, requires_grad=True)
    env = torch.randn(n_atoms, tp.channels, tp.cg.shape[2], dtype=torch.float64)
    env.requires_grad_(True)
    with custom_tensor_products(tp):
        out = tp(x1, env, center)
    assert "forward" not in vars(tp)  # restored
    expected = tp(x1, env, center)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x1, env), grad)
    want = torch.autograd.grad(expected, (x1, env), grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    weights = tp.path_weights().detach()
    assert torch.autograd.gradcheck(
        lambda a, b: center_tensor_product_op(a, b, center[:3], weights, tp.cg),
        (x1[:3], env),
    )
    assert torch.autograd.gradcheck(
        lambda a, b: tensor_product_op(a, b, weights, tp.cg), (x1[:2], env[:2])
    )
    weights.requires_grad_(True)
    with pytest.raises(NotImplementedError, match="not the path weights"):
        tensor_product_op(x1, env[center], weights, tp.cg).sum().backward()
    with pytest.raises(NotImplementedError, match="not the path weights"):
        center_tensor_product_op(x1, env, center, weights, tp.cg).sum().backward()


_RANKS = {
    "x1": 3,
    "x2": 3,
    "env": 3,
    "slot_edge": 2,
    "edge_slot": 1,
    "grad": 3,
    "path_weights": 2,
    "cg": 4,
}


def _function_model(name: str, inputs: list[str], outputs: list[str], dtype: int) -> bytes:
    """A model with one ``allegro`` node and its function body, for ONNX Runtime."""
    node = onnx.helper.make_node(name, inputs, outputs, domain=DOMAIN, plugin_namespace="allegro")
    graph = onnx.helper.make_graph(
        [node],
        name,
        [
            onnx.helper.make_tensor_value_info(
                n,
                onnx.TensorProto.INT64 if n in ("slot_edge", "edge_slot") else dtype,
                [None] * _RANKS[n],
            )
            for n in inputs
        ],
        [onnx.helper.make_tensor_value_info(n, dtype, [None] * 3) for n in outputs],
    )
    model = onnx.helper.make_model(
        graph,
        opset_imports=[
            onnx.helper.make_opsetid("", OPSET_VERSION),
            onnx.helper.make_opsetid(DOMAIN, 1),
        ],
        functions=function_protos(),
    )
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _product(irreps: tuple[str, str, str]) -> ChannelwiseTensorProduct:
    return ChannelwiseTensorProduct(*(o3.Irreps(i) for i in irreps), channels=3)


def test_env_first_where_the_output_is_no_larger_than_the_environment() -> None:
    assert env_first((3, 4, 4, 1)) and env_first((11, 9, 9, 9)) and env_first((9, 7, 4, 4))
    assert not env_first((9, 4, 4, 7))


@pytest.mark.parametrize("n_edges", [0, 1, 13])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "irreps",
    [
        ("0e+1o+2e", "0e+1o+2e", "0e"),  # (I, J, K) = (9, 9, 1)
        ("0e+1o+2e", "0e+1o+2e", "0e+1o+2e"),  # (9, 9, 9)
        ("0e+1o", "0e+1o", "0e+1o+1e"),  # (4, 4, 7)
    ],
)
@pytest.mark.parametrize("env_first_body", [False, True])
def test_function_bodies_match_the_custom_ops(
    n_edges: int, dtype: torch.dtype, irreps: tuple[str, str, str], env_first_body: bool
) -> None:
    torch.manual_seed(2)
    tp = _product(irreps)
    cg = tp.cg.to(dtype)
    weights = torch.randn(tp.channels, cg.shape[0], dtype=dtype)
    x1 = torch.randn(n_edges, tp.channels, cg.shape[1], dtype=dtype)
    x2 = torch.randn(n_edges, tp.channels, cg.shape[2], dtype=dtype)
    grad = torch.randn(n_edges, tp.channels, cg.shape[3], dtype=dtype)
    onnx_dtype = onnx.TensorProto.DOUBLE if dtype == torch.float64 else onnx.TensorProto.FLOAT
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    feeds = {"x1": x1, "x2": x2, "path_weights": weights, "cg": cg, "grad": grad}
    forward = "TensorProductEnvFirst" if env_first_body else "TensorProduct"
    for name, inputs, outputs, expected in (
        (
            forward,
            ["x1", "x2", "path_weights", "cg"],
            ["out"],
            [tensor_product_op(x1, x2, weights, cg)],
        ),
        (
            f"{forward}Backward",
            ["grad", "x1", "x2", "path_weights", "cg"],
            ["grad_x1", "grad_x2"],
            list(tensor_product_backward_op(grad, x1, x2, weights, cg)),
        ),
    ):
        session = ort.InferenceSession(_function_model(name, inputs, outputs, onnx_dtype))
        got = session.run(None, {n: feeds[n].numpy() for n in inputs})
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(torch.from_numpy(a), b, **tol)


def _center_tables(center: np.ndarray, n_atoms: int) -> tuple[np.ndarray, np.ndarray]:
    """slot_edge (N, W) and edge_slot (E,) of the CenterTensorProduct nodes, in numpy."""
    edges = np.arange(len(center))
    first = np.full(n_atoms, len(center))
    np.minimum.at(first, center, edges)
    slot = edges - first[center]
    width = int(slot.max(initial=-1)) + 1
    edge_slot = center * width + slot
    slot_edge = np.full(n_atoms * width, len(center))
    slot_edge[edge_slot] = edges
    return slot_edge.reshape(n_atoms, width), edge_slot


def test_center_first_where_the_per_edge_rows_are_large() -> None:
    assert center_first((11, 9, 9, 9)) and center_first((9, 4, 4, 7))
    assert not center_first((3, 4, 4, 1)) and not center_first((11, 9, 9, 1))
    assert not center_first((5, 4, 4, 4))


class _OpNames(TorchDispatchMode):
    """Records the name of every op dispatched in the block."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        self.names.add(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    ("precision", "op"),
    [
        ("fp32", "allegro.center_tensor_product.default"),
        ("tf32", "allegro.center_tensor_product.default"),
        ("fp16", "allegro.tensor_product.default"),
        ("bf16", "allegro.tensor_product.default"),
    ],
)
def test_fp16_and_bf16_sum_the_environment_gradient_per_edge(precision: str, op: str) -> None:
    tp = _product(("0e+1o+2e", "0e+1o+2e", "0e+1o+2e")).float()
    assert center_first(tp.cg.shape)
    x1 = torch.randn(5, tp.channels, 9)
    env, center = torch.randn(2, tp.channels, 9), torch.tensor([0, 0, 1, 1, 1])
    with matmul_precision(tp, precision), custom_tensor_products(tp), _OpNames() as ops:
        tp(x1, env, center)
    products = {"allegro.center_tensor_product.default", "allegro.tensor_product.default"}
    assert products & ops.names == {op}


@pytest.mark.parametrize(
    "center",
    [
        [],
        [1],
        [0, 0, 2, 2, 2, 3, 3, 3, 3],  # grouped, atom 1 without edges
        [3, 0, 2, 3, 0, 2, 3, 2, 3, 0, 1, 1, 0],  # any order
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "irreps",
    [("0e+1o+2e", "0e+1o+2e", "0e+1o+2e"), ("0e+1o", "0e+1o", "0e+1o+1e")],
)
def test_center_function_bodies_match_the_custom_ops(
    center: list[int], dtype: torch.dtype, irreps: tuple[str, str, str]
) -> None:
    torch.manual_seed(3)
    tp = _product(irreps)
    cg = tp.cg.to(dtype)
    n_atoms, center_index = 4, torch.tensor(center, dtype=torch.int64)
    n_edges = len(center)
    weights = torch.randn(tp.channels, cg.shape[0], dtype=dtype)
    x1 = torch.randn(n_edges, tp.channels, cg.shape[1], dtype=dtype)
    env = torch.randn(n_atoms, tp.channels, cg.shape[2], dtype=dtype)
    grad = torch.randn(n_edges, tp.channels, cg.shape[3], dtype=dtype)
    slot_edge, edge_slot = _center_tables(np.array(center, dtype=np.int64), n_atoms)
    onnx_dtype = onnx.TensorProto.DOUBLE if dtype == torch.float64 else onnx.TensorProto.FLOAT
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    feeds = {
        "x1": x1.numpy(),
        "env": env.numpy(),
        "slot_edge": slot_edge,
        "edge_slot": edge_slot,
        "path_weights": weights.numpy(),
        "cg": cg.numpy(),
        "grad": grad.numpy(),
    }
    inputs = ["x1", "env", "slot_edge", "edge_slot", "path_weights", "cg"]
    for name, names, outputs, expected in (
        (
            "CenterTensorProduct",
            inputs,
            ["out"],
            [center_tensor_product_op(x1, env, center_index, weights, cg)],
        ),
        (
            "CenterTensorProductBackward",
            ["grad", *inputs],
            ["grad_x1", "grad_env"],
            list(center_tensor_product_backward_op(grad, x1, env, center_index, weights, cg)),
        ),
    ):
        session = ort.InferenceSession(_function_model(name, names, outputs, onnx_dtype))
        got = session.run(None, {n: feeds[n] for n in names})
        for a, b in zip(got, expected, strict=True):
            torch.testing.assert_close(torch.from_numpy(a), b, **tol)


class _Scatter(torch.nn.Module):
    """index_add along axis 0 and an accumulating index_put along axis 2."""

    def forward(
        self, src: torch.Tensor, index: torch.Tensor, column: torch.Tensor, n: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n_rows = n.item()
        torch._check(n_rows >= 0)
        rows = torch.zeros((n_rows, *src.shape[1:]), dtype=src.dtype)
        columns = torch.zeros((*src.shape[:2], 3), dtype=src.dtype)
        columns = torch.ops.aten.index_put(columns, [None, None, column], src, True)
        return rows.index_add(0, index, src), columns


def _export_for_test(
    module: torch.nn.Module, example: tuple, dynamic: tuple
) -> ort.InferenceSession:
    exported = torch.export.export(module, example, dynamic_shapes=dynamic)
    program = torch.onnx.export(
        exported,
        dynamo=True,
        custom_translation_table=translation_table(),
        opset_version=OPSET_VERSION,
    )
    assert "ScatterND" not in [n.op_type for n in program.model_proto.graph.node]
    return ort.InferenceSession(program.model_proto.SerializeToString())


def _run(session: ort.InferenceSession, inputs: tuple) -> list[np.ndarray]:
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {k: v.numpy() for k, v in zip(names, inputs, strict=True)})


def test_scatter_add_sums_repeated_indices() -> None:
    module = _Scatter()
    edges = torch.export.Dim("edges")
    example = (
        torch.randn(6, 2, 4, dtype=torch.float64),
        torch.tensor([0, 2, 2, 0, 2, 1]),
        torch.tensor([2, 0, 2, 2]),
        torch.tensor(4),
    )
    session = _export_for_test(module, example, ({0: edges}, {0: edges}, None, None))
    inputs = (
        torch.randn(7, 2, 4, dtype=torch.float64),
        torch.tensor([1, 1, 1, 3, 0, 1, 1]),  # repeated, unsorted, row 2 never hit
        torch.tensor([1, 1, 0, 1]),
        torch.tensor(5),
    )
    for a, b in zip(_run(session, inputs), module(*inputs), strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-14, atol=1e-14)


class _CenterSum(torch.nn.Module):
    """``allegro::center_sum`` onto a base of ``n`` rows."""

    def forward(self, values: torch.Tensor, center: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        n_rows = n.item()
        torch._check(n_rows >= 0)
        base = torch.ones((n_rows, *values.shape[1:]), dtype=values.dtype)
        return torch.ops.allegro.center_sum(base, center, values)


@pytest.mark.parametrize(
    "center",
    [
        [0, 0, 0, 1, 1, 3, 3, 3, 3],  # grouped, row 2 never hit
        [3, 0, 1, 3, 0, 3, 1, 0, 3],  # any order is summed exactly
        [2] * 9,
        [],
    ],
    ids=["grouped", "unordered", "one-row", "no-edges"],
)
def test_center_sum_is_index_add_in_any_order(center: list[int]) -> None:
    module = _CenterSum()
    edges = torch.export.Dim("edges")
    example = (torch.randn(6, 2, 4, dtype=torch.float64), torch.tensor([0, 0, 1, 2, 2, 2]))
    session = _export_for_test(module, (*example, torch.tensor(3)), ({0: edges}, {0: edges}, None))
    index = torch.tensor(center, dtype=torch.int64)
    inputs = (torch.randn(len(center), 2, 4, dtype=torch.float64), index, torch.tensor(5))
    (got,) = _run(session, inputs)
    np.testing.assert_allclose(got, module(*inputs).numpy(), rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------- failure


@pytest.fixture
def converted(exported, monkeypatch) -> None:
    """Make ``to_onnx`` return the graphs already exported (skips the slow conversion)."""

    def to_onnx(model: AllegroModel, target: str) -> onnx.ModelProto:
        return onnx.load(exported[model.config.model_dtype, target])

    monkeypatch.setattr(onnx_export, "to_onnx", to_onnx)


def test_failed_verification_leaves_no_file(tmp_path: Path, model, converted) -> None:
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match="verification failed"):
        export_model(model, path, target="structures", tolerance=1e-300)
    assert list(tmp_path.iterdir()) == []


def test_oversized_weights_are_refused_before_tracing(tmp_path: Path, model, monkeypatch) -> None:
    monkeypatch.setattr(onnx_export, "MAX_WEIGHT_BYTES", 1000)
    monkeypatch.setattr(onnx_export, "to_onnx", lambda *a: pytest.fail("traced"))
    with pytest.raises(ExportError, match="2 GiB protobuf limit"):
        export_model(model, tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- CLI


def test_cli_export_reports_errors_and_info_describes_the_file(cli_export) -> None:
    output, path = cli_export
    assert "verification against torch" in output and "mixed batch" in output
    assert path.exists()
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code == 0, result.output
    for text in (
        "allegro-deploy-onnx",
        "target: structures",
        "Cu (Z=29)",
        "positions",
        "eV/Å",
        "allegro.TensorProductEnvFirstBackward",
        "plugin_namespace=allegro",
        "ScatterElements",
    ):
        assert text in result.output
    assert result.output == describe_onnx(path) + "\n"


def test_cli_export_fails_with_nonzero_exit_and_no_file(
    tmp_path: Path, checkpoint, converted, monkeypatch
) -> None:
    monkeypatch.setitem(onnx_export.TOLERANCES, "float64", 1e-300)
    path = tmp_path / "model.onnx"
    result = CliRunner().invoke(main, ["export", str(checkpoint), "-o", str(path)])
    assert result.exit_code != 0
    assert "verification failed" in result.output
    assert not path.exists()


def test_info_refuses_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    result = CliRunner().invoke(main, ["info", str(path)])
    assert result.exit_code != 0 and "is not an ONNX file" in result.output
