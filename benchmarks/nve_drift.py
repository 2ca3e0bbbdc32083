"""NVE energy drift of a Cu model trained on EMT data, run through the ONNX runtime.

    python benchmarks/nve_drift.py [--workdir runs/nve_drift] [--epochs 25] [--steps 2000]

1. EMT Langevin MD data of 32-atom fcc Cu (300-900 K, random ±1 % strains), as the
   quickstart; 2. a small model (l_max 1, 2 layers, 32 scalar / 8 tensor features,
   r_max 4.5 Å) trained for a fixed number of epochs (a few minutes); 3. float64 and
   float32 ONNX exports (each verified against torch); 4. for each, velocity-Verlet NVE
   of 108 Cu atoms (3×3×3 cubic cells, a = 3.6 Å) from 300 K Maxwell-Boltzmann
   velocities, 1 fs steps, ~2 ps.
Prints the drift (slope of a straight-line fit of the total energy) in meV/atom/ps, the
total-energy range, the mean temperature and the speed.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
from ase.build import bulk

from allegro_deploy.exporters.onnx_export import export_checkpoint
from allegro_deploy.models.checkpoint import load_checkpoint
from allegro_deploy.models.datagen import generate_emt_dataset
from allegro_deploy.models.train import train
from allegro_deploy.quickstart import MODEL
from allegro_deploy.runtime import AllegroCalculator
from allegro_deploy.runtime.md import run_md


def trained_checkpoint(workdir: Path, epochs: int) -> Path:
    """EMT Cu data and a small float32 model trained for ``epochs`` (reproducibly)."""
    data = workdir / "cu_emt.extxyz"
    generate_emt_dataset(data, "Cu", supercell=(2, 2, 2), n_frames=120, interval=10, seed=0)
    output = workdir / "train"
    shutil.rmtree(output, ignore_errors=True)
    return train(
        {
            "data": {"train_file": str(data), "val_fraction": 0.15, "split_seed": 0},
            "model": MODEL,
            "training": {
                "epochs": epochs,
                "batch_size": 4,
                "learning_rate": 0.004,
                "ema_decay": 0.99,
                "lr_patience": 5,
            },
            "output": {"directory": str(output)},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/nve_drift"))
    parser.add_argument("--epochs", type=int, default=25, help="training epochs")
    parser.add_argument("--steps", type=int, default=2000, help="NVE steps of 1 fs")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads")
    args = parser.parse_args()

    best = trained_checkpoint(args.workdir, args.epochs)
    metrics = load_checkpoint(best).metrics
    print(
        f"model: epoch {metrics['epoch']}, validation force MAE "
        f"{metrics['val_force_mae_meV_per_A']:.1f} meV/Å, energy MAE "
        f"{metrics['val_energy_mae_meV_per_atom']:.2f} meV/atom"
    )
    rows = []
    for dtype in ("float64", "float32"):
        path = args.workdir / f"cu_{dtype}.onnx"
        report = export_checkpoint(best, path, dtype=dtype, log=lambda _: None)
        print(f"exported {path}: max relative error vs torch {report.max_error:.1e}")
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(3)
        md = run_md(
            atoms,
            AllegroCalculator(path, "cpu", threads=args.threads),
            ensemble="nve",
            timestep_fs=1.0,
            temperature_K=300.0,
            steps=args.steps,
            interval=10,
            seed=0,
        )
        spread = float(np.ptp(md.total_energies)) / md.n_atoms
        rows.append(
            f"{dtype:8s} {md.n_atoms:5d} {md.steps * md.timestep_fs / 1000:6.2f} "
            f"{md.drift_ev_per_atom_per_ps * 1e3:+15.2e} {spread * 1e3:12.4f} "
            f"{md.temperatures.mean():8.1f} {md.atom_steps_per_second:12.0f}"
        )
    print(
        "\nNVE, velocity Verlet, 1 fs, from 300 K (equipartition halves it)\n"
        f"{'dtype':8s} {'atoms':>5s} {'ps':>6s} {'drift meV/at/ps':>15s} "
        f"{'range meV/at':>12s} {'mean T K':>8s} {'atom-steps/s':>12s}"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
