"""MD speed of one model on one cell in each host: ASE, LAMMPS ``fix external`` (serial)
and ``lmp`` with ``pair_style mliap unified`` on 1 and 2 MPI ranks.

    python benchmarks/lammps_speed.py [--atoms 864] [--steps 50] [--cores 2]
        [--out runs/lammps_speed]

The tutorial-size model of ``cpu_speed.py`` (random weights, seed 0, float32 exports:
``structures`` for ASE and ``fix external``, ``pairs`` for ``lmp``), rattled fcc Cu,
NVE at 300 K, 1 fs. Every host uses all ``--cores``: ONNX Runtime threads = cores / ranks.
Each host first runs 5 steps (sessions, neighbor lists, ONNX Runtime's first calls),
then ``--steps`` timed steps (LAMMPS: its own "Loop time"; ASE: the wall time of
``dynamics.run``). Needs ``lmp`` with Python ML-IAP (``bash .ci/build-lammps``).

Prints a table of atom-steps per second and the ratio to ASE, and writes
``lammps_speed.json``, ``lammps_speed.md`` and ``lammps_speed.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Any

import ase
import ase.io
import matplotlib
import numpy as np
import torch
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from cpu_speed import TUTORIAL  # benchmarks/, the script's folder, is on sys.path

from allegro_deploy.bench import fcc_cell
from allegro_deploy.exporters.onnx_export import export_model
from allegro_deploy.models import AllegroModel
from allegro_deploy.runtime import AllegroCalculator, Potential
from allegro_deploy.runtime.lammps import FixExternalBridge, open_lammps
from allegro_deploy.runtime.mliap import AllegroMLIAP

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SCRIPTS = Path(sysconfig.get_path("scripts"))
WARM_UP = 5
SETUP = """
units metal
atom_style atomic
atom_modify map array
newton on
read_data {data}
velocity all create 300 4928459 mom yes rot no dist gaussian
timestep 0.001
thermo 10
"""


def loop_seconds(log: str) -> float:
    """Seconds of the last run in a LAMMPS log ("Loop time of S on P procs for N steps")."""
    return float(re.findall(r"Loop time of ([0-9.eE+-]+) on", log)[-1])


def ase_md(structures: Path, atoms: ase.Atoms, steps: int, threads: int) -> float:
    atoms = atoms.copy()
    atoms.calc = AllegroCalculator(Potential.load(structures, "cpu", threads=threads))
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    dynamics.run(WARM_UP)
    start = time.perf_counter()
    dynamics.run(steps)
    return time.perf_counter() - start


def fix_external(structures: Path, data: Path, folder: Path, steps: int, threads: int) -> float:
    log = folder / "fix_external.log"
    lmp = open_lammps(["-log", str(log), "-screen", "none", "-nocite"])
    try:
        lmp.commands_string(SETUP.format(data=data))
        bridge = FixExternalBridge(lmp, Potential.load(structures, "cpu", threads=threads), ["Cu"])
        bridge.command(f"fix nve all nve\nrun {WARM_UP}\nrun {steps}")
    finally:
        lmp.close()
    return loop_seconds(log.read_text())


def mliap(pairs: Path, data: Path, folder: Path, steps: int, ranks: int, threads: int) -> float:
    folder = folder / f"mliap_{ranks}"
    folder.mkdir()
    AllegroMLIAP(pairs, threads=threads).pickle(folder / "allegro.pkl")
    script = SETUP.format(data=data) + (
        f"pair_style mliap unified allegro.pkl 0\npair_coeff * * Cu\n"
        f"fix nve all nve\nrun {WARM_UP}\nrun {steps}\n"
    )
    (folder / "in.lmp").write_text(script)
    command = [str(SCRIPTS / "lmp"), "-in", "in.lmp", "-nocite", "-screen", "none"]
    if ranks > 1:
        command = [str(SCRIPTS / "mpirun"), "-np", str(ranks), *command]
    environment = {**os.environ, "PATH": f"{SCRIPTS}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(command, cwd=folder, env=environment, check=True, timeout=3600)
    return loop_seconds((folder / "log.lammps").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--atoms", type=int, default=864)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/lammps_speed"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    atoms = fcc_cell(args.atoms, "Cu")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        torch.manual_seed(0)
        model = AllegroModel(TUTORIAL).eval()
        structures, pairs = folder / "structures.onnx", folder / "pairs.onnx"
        for path, target in ((structures, "structures"), (pairs, "pairs")):
            export_model(model, path, target=target, log=lambda _: None)
        print(f"exported the tutorial model ({TUTORIAL.model_dtype}) for both targets", flush=True)
        data = folder / "start.data"
        ase.io.write(data, atoms, format="lammps-data", masses=True, units="metal")
        hosts = {
            "ASE VelocityVerlet": lambda: ase_md(structures, atoms, args.steps, args.cores),
            "LAMMPS fix external (serial)": lambda: fix_external(
                structures, data, folder, args.steps, args.cores
            ),
            "lmp mliap, 1 rank": lambda: mliap(pairs, data, folder, args.steps, 1, args.cores),
            "lmp mliap, 2 ranks": lambda: mliap(
                pairs, data, folder, args.steps, 2, max(args.cores // 2, 1)
            ),
        }
        for name, run in hosts.items():
            seconds = run()
            rows.append(
                {
                    "host": name,
                    "seconds": seconds,
                    "atom_steps_per_s": len(atoms) * args.steps / seconds,
                }
            )
            print(f"{name}: {args.steps} steps in {seconds:.2f} s", flush=True)
    base = rows[0]["atom_steps_per_s"]
    lines = [
        f"{len(atoms)}-atom fcc Cu, tutorial model ({TUTORIAL.model_dtype}), {args.steps} NVE "
        f"steps after {WARM_UP}, {args.cores} cores ({platform.processor() or platform.machine()})",
        "",
        "| host | s | atom-steps/s | vs ASE |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        row["vs_ase"] = row["atom_steps_per_s"] / base
        lines.append(
            f"| {row['host']} | {row['seconds']:.2f} | {row['atom_steps_per_s']:,.0f} | "
            f"{row['vs_ase']:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    (args.out / "lammps_speed.md").write_text(
        "# MD speed per host\n\n`python benchmarks/lammps_speed.py`\n\n" + table + "\n"
    )
    summary = {"atoms": len(atoms), "steps": args.steps, "cores": args.cores, "rows": rows}
    (args.out / "lammps_speed.json").write_text(json.dumps(summary, indent=2) + "\n")
    figure, axis = plt.subplots(figsize=(7, 3))
    axis.barh([r["host"] for r in rows][::-1], [r["atom_steps_per_s"] for r in rows][::-1])
    axis.set_xlabel("atom-steps per second")
    axis.set_title(f"{len(atoms)} Cu atoms, tutorial model, {args.cores} cores")
    figure.tight_layout()
    figure.savefig(args.out / "lammps_speed.png", dpi=120)
    print(f"wrote {args.out}/lammps_speed.{{md,json,png}}")


if __name__ == "__main__":
    main()
