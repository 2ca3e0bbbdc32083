"""``allegro-deploy bench``: end to end on a tiny model, the memory probe and the FLOP count.

No timing is asserted: only that every part runs, reports what it should and agrees.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import ase.neighborlist
import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from exported_models import exported, small_model
from torch.utils.flop_counter import FlopCounterMode

from allegro_deploy.bench import (
    BenchModel,
    Case,
    GemmFlops,
    Implementation,
    default_cases,
    run_bench,
)
from allegro_deploy.bench import run as bench_run
from allegro_deploy.bench.implementations import open_implementation
from allegro_deploy.bench.memory import peak_memory
from allegro_deploy.cli import main
from allegro_deploy.models.checkpoint import save_checkpoint
from allegro_deploy.models.mlp import ScalarMLP
from allegro_deploy.models.official import model_from_official
from allegro_deploy.models.official_reference import load_official


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "tiny.safetensors"
    save_checkpoint(path, small_model("float32"))
    return path


def test_bench_from_checkpoint_writes_table_json_and_plot(checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    args = ["bench", str(checkpoint), "--sizes", "32", "--molecules", "2", "--repeats", "1"]
    args += ["--threads", "1", "--no-memory", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "fcc Cu" in result.output and "2× 21-atom clusters" in result.output
    assert "not run: official: model did not come from nequip-allegro" in result.output
    assert "not run: tensorrt: onnxruntime-gpu with NVIDIA TensorRT not installed" in result.output

    report = json.loads((out / "bench.json").read_text())
    assert report["implementations"] == ["torch", "ort-cpu", "openvino"]
    assert report["baseline"] == "torch"
    assert set(report["unavailable"]) == {"official", "ort-cuda", "tensorrt"}
    assert report["machine"]["gemm_float32_flop_per_s"] > 0
    rows = report["rows"]
    assert {(r["implementation"], r["case"]) for r in rows} == {
        (name, case)
        for name in ("torch", "ort-cpu", "openvino")
        for case in ("fcc Cu", "2× 21-atom clusters, 1 call", "2× 21-atom clusters, 2 calls")
    }
    for row in rows:
        assert len(row["times"]) == 1 and row["median_s"] > 0 and row["atom_steps_per_s"] > 0
        assert row["n_atoms"] == (32 if row["kind"] == "fcc" else 42)
        assert row["flops"] > 0 and row["peak_memory"] is None
        assert row["force_deviation"] < 1e-5  # float32 export against float32 torch
    assert (out / "bench_scaling.png").read_bytes().startswith(b"\x89PNG")


def test_floor_uses_the_faster_gemm_rate_of_before_and_after_the_timings(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy moment during one rate measurement must not make the floor look closer."""
    rates = iter([1.0e9, 3.0e9])
    monkeypatch.setattr(bench_run, "gemm_rate", lambda threads: next(rates))
    specs = [Implementation("torch", str(checkpoint), 1)]
    model = BenchModel.of(small_model("float32"))
    report = run_bench(specs, [Case("fcc", 4, ("Cu",))], model, repeats=1, memory=False, threads=1)
    assert report.gemm_rate == 3.0e9 and next(rates, None) is None


def test_timing_starts_after_two_untimed_calls(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ONNX Runtime's first two calls allocate its memory (arena, then memory pattern)."""
    calls = []

    def counting(spec: Implementation) -> Callable:
        evaluate = open_implementation(spec)
        return lambda structures: calls.append(spec.name) or evaluate(structures)

    monkeypatch.setattr(bench_run, "open_implementation", counting)
    specs = [Implementation("torch", str(checkpoint), 1)]
    model = BenchModel.of(small_model("float32"))
    report = run_bench(specs, [Case("fcc", 4, ("Cu",))], model, repeats=1, memory=False, threads=1)
    assert report.warmup == 2 and calls == ["torch"] * 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sizes", "0,32"], "sizes must be at least 1 atom"),
        (["--element", "Au"], "element Au is not one of the model's species (Cu, O)"),
        (["--implementations", "torch,jax"], "unknown implementation(s) ['jax']"),
    ],
)
def test_bad_input_is_refused_in_one_line(checkpoint: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["bench", str(checkpoint), *args])
    assert result.exit_code != 0
    assert message in result.output and "Traceback" not in result.output


def test_unknown_file_type_is_refused(tmp_path: Path) -> None:
    model = tmp_path / "model.pt"
    model.write_bytes(b"\0")
    result = CliRunner().invoke(main, ["bench", str(model)])
    assert result.exit_code == 1
    assert "neither a checkpoint (.safetensors) nor an exported model (.onnx)" in result.output


def test_peak_memory_of_one_call_in_a_fresh_process(checkpoint: Path) -> None:
    spec = Implementation("torch", str(checkpoint), threads=1)
    assert 0 < peak_memory(spec, Case("fcc", 108, ("Cu",))) < 2**30


def counted_flops(module: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> int:
    """FLOPs torch counts for ``module``'s forward and the gradient of its output sum with
    respect to ``inputs`` (made non-leaf: the counter's hooks refuse gradients of leaves)."""
    inputs = tuple(x.requires_grad_(True) * 1.0 for x in inputs)
    with FlopCounterMode(display=False) as counter:
        torch.autograd.grad(module(*inputs).sum(), inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_flops_equal_torch_flop_counter(dtype: str) -> None:
    """The count is the sum over the model's MLPs and tensor products of what torch counts
    for each on the same number of edges (forward + input gradient)."""
    model = small_model(dtype)
    n_edges = 50
    dtype_ = model.dtype
    expected = sum(
        counted_flops(mlp, torch.randn(n_edges, mlp.dims[0], dtype=dtype_))
        for mlp in model.modules()
        if isinstance(mlp, ScalarMLP)
    )
    center = torch.arange(n_edges)  # one atom per edge: the gather is no product
    for tp in model.tensor_products:
        x1 = torch.randn(n_edges, tp.channels, tp.irreps_in.dim, dtype=dtype_)
        env = torch.randn(n_edges, tp.channels, tp.irreps_env.dim, dtype=dtype_)
        expected += counted_flops(lambda x, e, tp=tp: tp(x, e, center), x1, env)
    assert GemmFlops(*model.gemm_flops()).of(n_edges) == expected


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_official_implementation_agrees_with_ours_on_the_same_weights(tmp_path: Path) -> None:
    """The official model (built by nequip from its config) and our conversion of it, on a
    periodic cell and on a batch of molecules, in one and in separate calls."""
    pytest.importorskip("allegro")
    config = {
        "_target_": "allegro.model.AllegroModel",
        "seed": 1,
        "model_dtype": "float64",
        "type_names": ["H", "C", "O"],
        "r_max": 4.0,
        "l_max": 1,
        "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed"},
        "num_layers": 2,
        "num_scalar_features": 8,
        "num_tensor_features": 4,
        "avg_num_neighbors": 10.0,
        "per_type_energy_scales": 1.0,
        "per_type_energy_shifts": 0.0,
    }
    checkpoint = tmp_path / "converted.safetensors"
    ours = model_from_official(config, load_official(config).state_dict())
    save_checkpoint(checkpoint, ours)
    specs = [
        Implementation("official", str(checkpoint), 1, official_config=config),
        Implementation("torch", str(checkpoint), 1),
    ]
    cases = [
        Case("fcc", 4, ("C",)),
        *(Case("molecules", 2, ours.species, s) for s in (False, True)),
    ]
    report = run_bench(specs, cases, BenchModel.of(ours), repeats=1, memory=False, threads=1)
    assert report.baseline == "official"
    for row in report.rows:
        assert row.force_deviation < 1e-10, (row.implementation, row.case)


def test_default_workload_follows_the_training_data(tmp_path: Path) -> None:
    """A Cu/O model trained at 20.7 neighbours gets cells of its composition at that density,
    and says so; --element still gives pure cells."""
    path = tmp_path / "trained.safetensors"
    statistics = {"species_counts": {"Cu": 30, "O": 10}, "avg_num_neighbors": 20.7, "r_max": 4.0}
    save_checkpoint(path, small_model("float32"), statistics=statistics)
    training = BenchModel.read(path).training
    assert training.fractions == {"Cu": 0.75, "O": 0.25} and training.neighbours == 20.7
    (case,) = default_cases(("Cu", "O"), [500], 0, training=training)
    (atoms,) = case.structures()
    counts = np.bincount(ase.neighborlist.neighbor_list("i", atoms, 4.0), minlength=len(atoms))
    assert abs(counts.mean() - 20.7) / 20.7 < 0.15
    assert 0.6 < np.mean(atoms.numbers == 29) < 0.9
    (pure,) = default_cases(("Cu", "O"), [500], 0, element="Cu", training=None)
    assert pure.label == "fcc Cu"
    args = ["bench", str(path), "--sizes", "32", "--molecules", "0", "--repeats", "1"]
    result = CliRunner().invoke(main, [*args, "--implementations", "torch", "--no-memory"])
    assert result.exit_code == 0, result.output
    assert "workload: fcc cells of the training composition (Cu 75%, O 25%)" in result.output
    assert "20.7 neighbours within r_max = 4 Å" in result.output


def test_an_export_carries_what_bench_counts_of_its_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """bench reads an .onnx file without torch: its FLOP count, parameters and configuration
    are those of the torch model it was exported from."""
    path = exported(tmp_path_factory, "float32")
    from_file, from_model = BenchModel.read(path), BenchModel.of(small_model("float32"), path)
    assert from_file.flops == from_model.flops and from_file.flops.per_edge > 0
    assert from_file.parameters == from_model.parameters > 0
    assert (from_file.species, from_file.r_max, from_file.dtype) == (("Cu", "O"), 4.0, "float32")
    assert from_file.config == json.loads(json.dumps(from_model.config))


def test_an_export_without_a_flop_count_is_timed_without_a_floor(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """A file exported before exports recorded FLOP counts: timed, and the floor is said to
    be unknown instead of being computed from a wrong count."""
    proto = onnx.load(exported(tmp_path_factory, "float32"))
    kept = [p for p in proto.metadata_props if not p.key.startswith("gemm_flops")]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    path = tmp_path / "older.onnx"
    onnx.save(proto, path)
    args = ["bench", str(path), "--sizes", "32", "--molecules", "0", "--repeats", "1"]
    args += ["--threads", "1", "--no-memory", "--implementations", "ort-cpu"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "the file records no FLOP count (re-export it to get one)" in result.output
    (row,) = json.loads((tmp_path / "out" / "bench.json").read_text())["rows"]
    assert row["flops"] is None and row["floor_fraction"] is None and row["median_s"] > 0
