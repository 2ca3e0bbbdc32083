"""Export cost of the tutorial-size model, and its ONNX Runtime CPU speed against torch eager.

Model: l_max 1, 2 layers, 64 scalar / 32 tensor features, MLPs 1 x 64, readout 1 x 64,
float32, r_max 5 Å, random weights. Prints the export's phases, file size and op census,
then times energy + forces of 864-atom rattled fcc Cu (a = 3.6 Å, 6 x 6 x 6 conventional
cells, ~37k directed edges) in both implementations in this one process with
``allegro_deploy.bench`` (interleaved repeats, medians, % of the FLOP floor). A quick
check: the comparison with the official model and the larger model is ``cpu_speed.py``.

    python benchmarks/export_speed.py [--repeats 15] [--threads 2] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console

from allegro_deploy.bench import BenchModel, Case, Implementation, run_bench
from allegro_deploy.exporters.onnx_export import export_model
from allegro_deploy.models import AllegroModel, ModelConfig
from allegro_deploy.models.checkpoint import save_checkpoint

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="keep the checkpoint and exported file here")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = AllegroModel(CONFIG).eval()
    folder = args.out or Path(tempfile.mkdtemp(prefix="allegro-export-"))
    checkpoint, path = folder / "tutorial.safetensors", folder / "tutorial_float32.onnx"
    save_checkpoint(checkpoint, model)

    start = time.perf_counter()
    report = export_model(model, path, log=print)
    print(report.summary())
    print(
        f"export total {time.perf_counter() - start:.1f} s, file {report.size_bytes / 1e6:.2f} MB, "
        "nodes by op type: " + ", ".join(f"{op} {n}" for op, n in report.op_counts.items())
    )
    specs = [
        Implementation("torch", str(checkpoint), args.threads),
        Implementation("ort-cpu", str(path), args.threads),
    ]
    copper = Case("fcc", 864, ("Cu",))
    console = Console(width=140)
    bench = run_bench(
        specs, [copper], BenchModel.of(model, "tutorial"), repeats=args.repeats, memory=False,
        threads=args.threads,
    )  # fmt: skip
    console.print(bench.table())


if __name__ == "__main__":
    main()
