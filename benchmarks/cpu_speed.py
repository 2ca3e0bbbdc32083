"""CPU inference speed against the official nequip-allegro model, in one process run.

    python benchmarks/cpu_speed.py [--threads 2] [--repeats 7] [--repeats-large 5]
        [--sizes 1000,4000,10000,32000,100000] [--out runs/cpu_speed]

1. For the tutorial-size model (``CONFIG`` of ``export_speed.py``, with species H, C, O and
   Cu) and a larger one (l_max 2, 64 scalar / 64 tensor features, allegro MLP 2 x 256,
   readout 1 x 128), with the same
   random weights in the official model (built by nequip from its config, as nequip-train
   builds it), in our torch model (converted by ``model_from_official``) and in our
   float32 ONNX export: energy + forces of 864-atom rattled fcc Cu (a = 3.6 Å, 6 x 6 x 6):
   ms per call, speed-up over the official model, % of the FLOP floor (GEMM FLOPs over the
   float32 GEMM rate measured in this run) and the force deviation from the official model.
2. Tutorial model: one 21-atom molecule (aspirin) per call, and 64 of them in one call
   against 64 calls, all through ``Potential.evaluate`` for ONNX Runtime.
3. Tutorial model on ONNX Runtime CPU: 1k to 100k atoms of fcc Cu, time and peak memory
   (fresh process per size) per atom.
Every call includes the input checks and the neighbor list (see ``allegro_deploy.bench``).
Prints the tables and writes ``cpu_speed.json`` and ``cpu_speed_scaling.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any

from export_speed import CONFIG  # benchmarks/, the script's folder, is on sys.path
from rich.console import Console
from rich.table import Table

from allegro_deploy.bench import BenchModel, BenchReport, Case, Implementation, run_bench
from allegro_deploy.exporters.onnx_export import export_model
from allegro_deploy.models import AllegroModel, ModelConfig
from allegro_deploy.models.checkpoint import save_checkpoint
from allegro_deploy.models.official import model_from_official
from allegro_deploy.models.official_reference import load_official

TUTORIAL = dataclasses.replace(CONFIG, species=("H", "C", "O", "Cu"))
"""``CONFIG`` with species for molecules too (the cost of a Cu cell does not change)."""
LARGE = dataclasses.replace(
    TUTORIAL,
    l_max=2,
    num_tensor_features=64,
    allegro_mlp_hidden_layers_depth=2,
    allegro_mlp_hidden_layers_width=256,
    readout_mlp_hidden_layers_width=128,
)
COPPER = Case("fcc", 864, ("Cu",))


def official_config(config: ModelConfig, seed: int = 0) -> dict[str, Any]:
    """The official model config (as in a training YAML) of ``config``: no ZBL and no
    per-pair cutoffs; unset energy scales/shifts become 1 and 0 as they are here."""
    if config.zbl or config.per_edge_type_cutoff:
        raise ValueError("official_config covers models without ZBL and per-pair cutoffs")
    values = config.to_dict()
    bessel = {k: values.pop(k) for k in ("num_bessels", "bessel_trainable", "polynomial_cutoff_p")}
    species = values.pop("species")
    del values["zbl"]
    values["per_type_energy_scales"] = config.per_type_energy_scales or 1.0
    values["per_type_energy_shifts"] = config.per_type_energy_shifts or 0.0
    return {
        "_target_": "allegro.model.AllegroModel",
        "seed": seed,
        "type_names": list(species),
        "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed", **bessel},
        **{key: value for key, value in values.items() if value is not None},
    }


def same_weights(
    config: ModelConfig, folder: Path, name: str, threads: int
) -> tuple[list[Implementation], AllegroModel]:
    """Official, torch and ONNX Runtime CPU implementations of one set of random weights, and the
    torch model."""
    official = official_config(config)
    ours = model_from_official(official, load_official(official).state_dict())
    checkpoint, onnx_file = folder / f"{name}.safetensors", folder / f"{name}.onnx"
    save_checkpoint(checkpoint, ours)
    print(f"{name}: exporting to ONNX ({config.model_dtype}) ...", flush=True)
    print(export_model(ours, onnx_file, log=lambda _: None).summary(), flush=True)
    specs = [
        Implementation("official", str(checkpoint), threads, official_config=official),
        Implementation("torch", str(checkpoint), threads),
        Implementation("ort-cpu", str(onnx_file), threads),
    ]
    return specs, ours


def summary(reports: dict[str, BenchReport]) -> Table:
    """The benchmark's figures with their goals."""
    table = Table(title="CPU speed goals", title_justify="left")
    for column in ("figure", "measured", "goal"):
        table.add_column(column)

    for name in ("tutorial", "large"):
        ort = next(r for r in reports[name].rows if r.implementation == "ort-cpu")
        fraction = ort.floor_fraction(reports[name].gemm_rate)
        table.add_row(f"{name}: ORT CPU vs official eager, 864 Cu", f"{ort.speedup:.2f}×", "≥ 3×")
        table.add_row(f"{name}: ORT CPU % of FLOP floor", f"{fraction * 100:.0f} %", "≥ 33 %")
        table.add_row(f"{name}: ORT force deviation", f"{ort.force_deviation:.1e}", "≤ 1e-5")
    molecule_rows = [r for r in reports["molecules"].rows if r.implementation == "ort-cpu"]
    one = next(r for r in molecule_rows if r.n_structures == 1)
    batched = [r for r in molecule_rows if r.n_structures > 1]
    together, separate = sorted(batched, key=lambda r: r.calls)
    # The single call runs between the other implementations' calls, with caches cold; the
    # molecules of the separate calls run back to back, as an MD code calls.
    table.add_row("one 21-atom molecule, ms per single call", f"{one.median * 1e3:.2f}", "< 2")
    table.add_row(
        f"one 21-atom molecule, ms per call of {separate.calls} back to back",
        f"{separate.median / separate.calls * 1e3:.2f}",
        "< 2",
    )
    table.add_row(
        f"{together.n_structures} molecules, one call vs {separate.calls} calls",
        f"{separate.median / together.median:.1f}×",
        "≥ 5×",
    )
    scaling = [r for r in reports["scaling"].rows if r.median is not None]
    if scaling:
        first, last = scaling[0], scaling[-1]
        table.add_row(
            f"µs/atom at {first.n_atoms} -> {last.n_atoms} atoms",
            f"{first.per_atom * 1e6:.1f} -> {last.per_atom * 1e6:.1f}",
            "flat",
        )
    for r in reports["scaling"].rows:
        memory = r.skipped or f"{r.memory_per_atom / 1e3:.1f} kB/atom"
        table.add_row(f"peak memory, {r.n_atoms} atoms", memory, "100k atoms in 24 GiB")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7, help="repeats, tutorial model")
    parser.add_argument("--repeats-large", type=int, default=5, help="repeats, larger model")
    parser.add_argument("--sizes", default="1000,4000,10000,32000,100000", help="scaling sizes")
    parser.add_argument("--out", type=Path, default=Path("runs/cpu_speed"))
    args = parser.parse_args()
    console = Console(width=140)
    reports: dict[str, BenchReport] = {}
    with tempfile.TemporaryDirectory(prefix="allegro-cpu-speed-") as folder:
        tutorial, tutorial_model = same_weights(TUTORIAL, Path(folder), "tutorial", args.threads)
        large, large_model = same_weights(LARGE, Path(folder), "large", args.threads)
        common = dict(threads=args.threads)
        for name, specs, model, repeats in (
            ("tutorial", tutorial, tutorial_model, args.repeats),
            ("large", large, large_model, args.repeats_large),
        ):
            reports[name] = run_bench(
                specs, [COPPER], BenchModel.of(model, name), repeats=repeats, memory=False, **common
            )
            console.print(reports[name].table())
        molecules = [Case("molecules", 1, TUTORIAL.species)]
        molecules += [Case("molecules", 64, TUTORIAL.species, s) for s in (False, True)]
        reports["molecules"] = run_bench(
            tutorial, molecules, BenchModel.of(tutorial_model, "tutorial"), repeats=args.repeats,
            memory=False, **common,
        )  # fmt: skip
        console.print(reports["molecules"].table())
        sizes = [Case("fcc", int(n), ("Cu",)) for n in args.sizes.split(",")]
        reports["scaling"] = run_bench(
            tutorial[2:], sizes, BenchModel.of(tutorial_model, "tutorial"), repeats=3,
            memory=True, **common,
        )  # fmt: skip
        console.print(reports["scaling"].table())
    console.print(summary(reports))
    args.out.mkdir(parents=True, exist_ok=True)
    results = {name: report.to_json() for name, report in reports.items()}
    (args.out / "cpu_speed.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
    reports["scaling"].plot(args.out / "cpu_speed_scaling.png")
    console.print(f"wrote {args.out / 'cpu_speed.json'} and {args.out / 'cpu_speed_scaling.png'}")


if __name__ == "__main__":
    main()
