"""Speed of the ONNX runtime (ORT CPU, float32) against the torch model, in one process.

    python benchmarks/runtime_speed.py [--threads 2] [--md-steps 20]

Model: tutorial size (l_max 1, 2 layers, 64 scalar / 32 tensor features, MLPs 1×64,
readout 1×64, r_max 5 Å; species H, C, O, Cu; untrained, float32). Figures:
1. ASE molecular dynamics (Langevin, 300 K, 1 fs) of 864 Cu atoms (6×6×6 cubic cells,
   a = 3.6 Å): atom-steps/s through ``AllegroCalculator`` vs a torch calculator;
2. per-call latency of one 21-atom molecule (aspirin, C9H8O4), both ways;
3. throughput of 64 such molecules (each rattled) in one batched call vs 64 calls.
Times are medians; the ratios are the figures to compare across machines.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import ase
import numpy as np
import torch
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes

from allegro_deploy.exporters.onnx_export import export_model
from allegro_deploy.models import AllegroModel, AtomicGraph, ModelConfig
from allegro_deploy.runtime import AllegroCalculator, Potential
from allegro_deploy.runtime.md import run_md
from allegro_deploy.runtime.neighbors import neighbor_list

CONFIG = ModelConfig(
    species=("H", "C", "O", "Cu"),
    r_max=5.0,
    l_max=1,
    num_layers=2,
    num_scalar_features=64,
    num_tensor_features=32,
    scalar_embed_mlp_hidden_layers_width=64,
    allegro_mlp_hidden_layers_width=64,
    readout_mlp_hidden_layers_width=64,
    avg_num_neighbors=40.0,
    model_dtype="float32",
)


class TorchCalculator(Calculator):
    """ASE calculator on the torch model (energy, forces, stress), for comparison."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, model: AllegroModel) -> None:
        super().__init__()
        self.model = model

    def calculate(
        self,
        atoms: ase.Atoms | None = None,
        properties: Sequence[str] = ("energy",),
        system_changes: Sequence[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        output = evaluate_torch(self.model, [self.atoms])
        stress = output["stress"][0].numpy()
        self.results = {
            "energy": output["energy"].item(),
            "free_energy": output["energy"].item(),
            "forces": output["forces"].numpy(),
            "stress": stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]],
        }


def evaluate_torch(model: AllegroModel, structures: Sequence[ase.Atoms]) -> dict[str, torch.Tensor]:
    c = model.config
    graph = AtomicGraph.from_atoms(structures, c.atomic_numbers, c.r_max)
    return {k: v.detach() for k, v in model(graph).items()}


def aspirin() -> ase.Atoms:
    """Acetylsalicylic acid (C9H8O4, 21 atoms) from standard bond lengths and angles (Å):
    planar ring and carboxylic acid, acetyl ester twisted out of the ring plane."""
    angles = np.radians(np.arange(6) * 60.0)
    radial = np.stack([np.cos(angles), np.sin(angles), np.zeros(6)], 1)
    up = np.array([0.0, 0.0, 1.0])

    def turned(vector: np.ndarray, degrees: float) -> np.ndarray:
        """``vector`` rotated about z."""
        a = np.radians(degrees)
        return np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]]) @ vector

    symbols = ["C"] * 6 + ["H"] * 4
    positions = [*(1.39 * radial), *(2.47 * radial[2:])]
    # carboxylic acid on ring carbon 0
    carboxyl = 2.87 * radial[0]
    hydroxyl = carboxyl + 1.34 * turned(radial[0], -60)
    symbols += ["C", "O", "O", "H"]
    positions += [carboxyl, carboxyl + 1.22 * turned(radial[0], 60), hydroxyl]
    positions += [hydroxyl + 0.97 * radial[0]]
    # acetyl ester on ring carbon 1, in the plane of the ring normal
    out = radial[1]
    ester = 2.75 * out
    carbonyl = ester + 1.36 * (0.5 * out + 0.866 * up)
    axis = -0.5 * out + 0.866 * up
    methyl = carbonyl + 1.50 * axis
    symbols += ["O", "C", "O", "C", "H", "H", "H"]
    positions += [ester, carbonyl, carbonyl + 1.20 * out, methyl]
    across, side = 0.866 * out + 0.5 * up, np.cross(out, up)
    for phi in np.radians([0.0, 120.0, 240.0]):
        direction = 0.334 * axis + 0.943 * (np.cos(phi) * across + np.sin(phi) * side)
        positions.append(methyl + 1.09 * direction)
    return ase.Atoms(symbols, positions=np.array(positions))


def median_seconds(function: Callable[[], object], repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for both (2 cores)")
    parser.add_argument("--md-steps", type=int, default=20, help="MD steps per engine")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per latency")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = AllegroModel(CONFIG).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "tutorial_float32.onnx"
        report = export_model(model, path, dtype="float32", log=lambda _: None)
        print(f"exported ({report.size_bytes / 1e6:.2f} MB), max error {report.max_error:.1e}")
        potential = Potential.load(path, "cpu", threads=args.threads)

    copper = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(6)
    n_edges = len(neighbor_list(copper.positions, copper.cell, True, CONFIG.r_max).centers)
    print(f"\n1. ASE MD, {len(copper)} Cu atoms ({n_edges} edges), {args.md_steps} steps")
    speeds = {}
    for name, calculator in (
        ("runtime", AllegroCalculator(potential)),
        ("torch", TorchCalculator(model)),
    ):
        md = run_md(copper.copy(), calculator, steps=args.md_steps, interval=5, progress=False)
        speeds[name] = md.atom_steps_per_second
        speed = f"{md.atom_steps_per_second:10.0f} atom-steps/s  {md.ns_per_day:.3g} ns/day"
        print(f"   {name:8s} {speed}")
    print(f"   runtime / torch: {speeds['runtime'] / speeds['torch']:.2f}x")

    molecule = aspirin()
    rng = np.random.default_rng(0)
    batch = [molecule.copy() for _ in range(64)]
    for atoms in batch:
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
    formula = molecule.get_chemical_formula()
    print(f"\n2. one {formula} molecule ({len(molecule)} atoms), median of {args.repeats}")
    runtime_call = median_seconds(lambda: potential.evaluate(molecule), args.repeats)
    torch_call = median_seconds(lambda: evaluate_torch(model, [molecule]), args.repeats)
    print(f"   runtime  {runtime_call * 1e3:8.2f} ms/call")
    print(f"   torch    {torch_call * 1e3:8.2f} ms/call")
    print(f"   torch / runtime: {torch_call / runtime_call:.2f}x")

    repeats = max(3, args.repeats // 10)
    print(f"\n3. 64 molecules, median of {repeats}")
    together = median_seconds(lambda: potential.evaluate(batch), repeats)
    one_by_one = median_seconds(lambda: [potential.evaluate(a) for a in batch], repeats)
    torch_batched = median_seconds(lambda: evaluate_torch(model, batch), repeats)
    for name, seconds in (
        ("runtime, one batched call", together),
        ("runtime, 64 calls", one_by_one),
        ("torch, one batched call", torch_batched),
    ):
        print(f"   {name:26s} {seconds * 1e3:8.1f} ms  {64 / seconds:8.0f} molecules/s")
    print(f"   batched / one-by-one throughput: {one_by_one / together:.2f}x")


if __name__ == "__main__":
    main()
