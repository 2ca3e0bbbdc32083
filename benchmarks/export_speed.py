"""Export cost and ONNX Runtime CPU speed of the tutorial-size model against torch eager.

Model: l_max 1, 2 layers, 64 scalar / 32 tensor features, MLPs 1 x 64, readout 1 x 64,
float32, r_max 5 Å, random weights. Structure: 864-atom fcc Cu (a = 3.6 Å, 6 x 6 x 6
conventional cells) rattled by 0.05 Å, ~37k directed edges. One call = energy + forces
(+ virial) from a prebuilt neighbor list. Both backends run with 2 threads in this one
process; repeats are interleaved and the median is reported, with the ratio. The model is
exported twice: sums over atoms as ScatterElements (the default) and as ScatterND.

    python benchmarks/export_speed.py [--repeats 15] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import ase.build
import numpy as np
import torch

from allegro_deploy.exporters.onnx_export import export_model, ort_session, structures_inputs
from allegro_deploy.models import AllegroModel, AtomicGraph, ModelConfig

CONFIG = ModelConfig(
    species=("Cu",),
    r_max=5.0,
    l_max=1,
    num_layers=2,
    num_scalar_features=64,
    num_tensor_features=32,
    scalar_embed_mlp_hidden_layers_depth=1,
    scalar_embed_mlp_hidden_layers_width=64,
    allegro_mlp_hidden_layers_depth=1,
    allegro_mlp_hidden_layers_width=64,
    readout_mlp_hidden_layers_depth=1,
    readout_mlp_hidden_layers_width=64,
    avg_num_neighbors=42.0,
    per_type_energy_shifts=-3.5,
    model_dtype="float32",
)


def fcc_cell(seed: int = 0) -> ase.Atoms:
    """864-atom rattled fcc Cu."""
    atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True).repeat((6, 6, 6))
    atoms.rattle(stdev=0.05, seed=seed)
    return atoms


def gemm_flops(model: AllegroModel, n_edges: int) -> float:
    """FLOPs of the GEMMs and tensor products of one energy + input-gradient evaluation.

    Forward: every MLP layer (2·in·out per edge) and tensor product (2·U·I·J·K per edge);
    the input-gradient backward costs one more GEMM per MLP layer and two more
    contractions per tensor product.
    """
    mlp = sum(
        2 * w.shape[0] * w.shape[1]
        for name, w in model.named_parameters()
        if "weights." in name and w.dim() == 2
    )
    tp = sum(
        2 * m.channels * m.cg.shape[1] * m.cg.shape[2] * m.cg.shape[3]
        for m in model.tensor_products
    )
    return n_edges * (2 * mlp + 3 * tp)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="keep the exported files here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = AllegroModel(CONFIG).eval()
    folder = args.out or Path(tempfile.mkdtemp(prefix="allegro-export-"))

    paths = {}
    for scatter in ("elements", "nd"):
        paths[scatter] = folder / f"tutorial_float32_structures_{scatter}.onnx"
        start = time.perf_counter()
        report = export_model(model, paths[scatter], scatter=scatter, log=print)
        print(report.summary())
        print(
            f"scatter={scatter}: export total {time.perf_counter() - start:.1f} s, "
            f"file {report.size_bytes / 1e6:.2f} MB, nodes by op type: "
            + ", ".join(f"{op} {n}" for op, n in report.op_counts.items())
        )

    atoms = fcc_cell()
    graph = AtomicGraph.from_atoms([atoms], CONFIG.atomic_numbers, CONFIG.r_max)
    print(f"structure: {graph.n_atoms} atoms, {graph.n_edges} edges")
    inputs = [t.numpy() for t in structures_inputs(graph)]
    runs = {}
    for scatter, path in paths.items():
        session = ort_session(path, threads=args.threads)
        feeds = {i.name: x for i, x in zip(session.get_inputs(), inputs, strict=True)}
        runs[f"onnxruntime ({scatter})"] = functools.partial(
            lambda s, f: s.run(["energy", "forces"], f)[1], session, feeds
        )
    runs["torch eager"] = lambda: model(graph)["forces"].detach().numpy()

    reference = runs["torch eager"]()
    for name, run in runs.items():  # warm-up and agreement
        error = np.abs(run() - reference).max() / np.abs(reference).max()
        print(f"forces, {name} vs torch eager: {error:.1e} relative")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    flops = gemm_flops(model, graph.n_edges)
    medians = {name: statistics.median(values) for name, values in times.items()}
    print(f"energy + forces, {args.threads} threads, median of {args.repeats} interleaved:")
    for name, seconds in medians.items():
        print(
            f"  {name:<24} {seconds * 1e3:8.1f} ms  x{medians['torch eager'] / seconds:4.2f} "
            f"vs eager  ({flops / seconds / 1e9:5.1f} GFLOP/s of {flops / 1e9:.2f} GFLOP)"
        )


if __name__ == "__main__":
    main()
