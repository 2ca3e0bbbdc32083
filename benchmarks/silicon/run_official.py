"""Run the official nequip/Allegro reference training single-threaded and
evaluate the final EMA model on the validation set.

Usage (from the repository root, after ``prepare.py``)::

    python benchmarks/silicon/run_official.py                # full run
    python benchmarks/silicon/run_official.py --epochs 1 \\
        --run-dir runs/silicon/official_timing               # timing run
    python benchmarks/silicon/run_official.py --eval-only    # re-evaluate

Training is ``nequip-train`` on ``official.yaml`` in a subprocess with
``OMP_NUM_THREADS=MKL_NUM_THREADS=1`` (so torch uses one intra-op thread).
Afterwards the final checkpoint (``last.ckpt``, i.e. the last epoch; nequip's
EMA module hands out the EMA weights for evaluation) is evaluated here, also on
one thread, and ``<run-dir>/metrics.json`` is written with n_train, n_val,
epochs, the training wall time and the validation errors:

* energy MAE (meV/atom): mean over structures of |E_pred - E_ref| / N,
* force MAE / RMSE (meV/A): over all force components of all atoms.

These are the same definitions as nequip's ``per_atom_energy_mae``,
``forces_mae`` and ``forces_rmse`` (``val0_epoch/*`` in the CSV log).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def count_frames(path):
    import ase.io

    return sum(1 for _ in ase.io.iread(path, index=":"))


def train(args):
    ckpts = (
        [f for f in os.listdir(args.run_dir) if f.endswith(".ckpt")]
        if os.path.isdir(args.run_dir)
        else []
    )
    if ckpts:
        sys.exit(
            f"{args.run_dir} already holds checkpoints {ckpts}; remove the "
            "directory (or pick another --run-dir) for a fresh run"
        )
    exe = shutil.which("nequip-train")
    cmd = [exe] if exe else [sys.executable, "-m", "nequip.scripts.train"]
    cmd += [
        "-cp",
        os.path.abspath(os.path.dirname(args.config)),
        "-cn",
        os.path.splitext(os.path.basename(args.config))[0],
        f"hydra.run.dir={args.run_dir}",
        f"train_file={args.train}",
        f"val_file={args.val}",
    ]
    if args.epochs is not None:
        cmd.append(f"max_epochs={args.epochs}")
    cmd += args.overrides
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    print("running:", " ".join(cmd), flush=True)
    t0 = time.time()
    subprocess.run(cmd, env=env, check=True)
    wall = time.time() - t0
    print(f"training wall time: {wall:.1f} s", flush=True)
    return wall


def csv_epoch_info(run_dir):
    """Last logged epoch and its val metrics from the Lightning CSV log."""
    import csv

    path = os.path.join(run_dir, "csv", "version_0", "metrics.csv")
    if not os.path.exists(path):
        return {}
    last = {}
    with open(path) as f:
        for row in csv.DictReader(f):
            if row.get("val0_epoch/weighted_sum"):
                last = {k: float(v) for k, v in row.items() if v not in ("", None)}
    return last


def evaluate(ckpt, val_path, r_max=5.0, batch_size=16):
    import torch

    torch.set_num_threads(1)
    from nequip.data import AtomicDataDict
    from nequip.data.dataset import ASEDataset
    from nequip.data.transforms import (
        ChemicalSpeciesToAtomTypeMapper,
        NeighborListTransform,
    )
    from nequip.model import ModelFromCheckpoint
    from nequip.utils.global_state import set_global_state

    set_global_state()  # float64 default dtype for data, as in nequip-train
    model = ModelFromCheckpoint(ckpt)  # EMA weights (EMALightningModule)
    if isinstance(model, torch.nn.ModuleDict):  # {"sole_model": GraphModel}
        model = model["sole_model"]
    model.eval()
    ds = ASEDataset(
        file_path=val_path,
        transforms=[
            ChemicalSpeciesToAtomTypeMapper(
                model_type_names=["Si"],
                chemical_species_to_atom_type_map={"Si": "Si"},
            ),
            NeighborListTransform(r_max=r_max),
        ],
    )
    de_per_atom, df = [], []
    n = len(ds)
    for start in range(0, n, batch_size):
        batch = AtomicDataDict.batched_from_list(
            [ds[i] for i in range(start, min(start + batch_size, n))]
        )
        ref_e = batch[AtomicDataDict.TOTAL_ENERGY_KEY].reshape(-1).double()
        ref_f = batch[AtomicDataDict.FORCE_KEY].double()
        with torch.enable_grad():
            out = model(batch)
        nat = batch[AtomicDataDict.NUM_NODES_KEY].reshape(-1).double()
        pred_e = out[AtomicDataDict.TOTAL_ENERGY_KEY].detach().reshape(-1).double()
        de_per_atom.append((pred_e - ref_e) / nat)
        df.append(out[AtomicDataDict.FORCE_KEY].detach().double() - ref_f)
    de = torch.cat(de_per_atom)
    df = torch.cat(df).reshape(-1)
    return {
        "val_energy_mae_meV_per_atom": 1000 * de.abs().mean().item(),
        "val_energy_rmse_meV_per_atom": 1000 * de.square().mean().sqrt().item(),
        "val_force_mae_meV_per_A": 1000 * df.abs().mean().item(),
        "val_force_rmse_meV_per_A": 1000 * df.square().mean().sqrt().item(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.path.join(HERE, "official.yaml"))
    p.add_argument("--train", default=os.path.join("runs", "silicon", "train.extxyz"))
    p.add_argument("--val", default=os.path.join("runs", "silicon", "val.extxyz"))
    p.add_argument("--run-dir", default=os.path.join("runs", "silicon", "official"))
    p.add_argument("--epochs", type=int, default=None, help="override max_epochs of the config")
    p.add_argument(
        "--eval-only", action="store_true", help="skip training; evaluate <run-dir>/last.ckpt"
    )
    p.add_argument("overrides", nargs="*", help="extra Hydra overrides")
    args = p.parse_args(argv)

    wall = None
    if not args.eval_only:
        wall = train(args)
    elif os.path.exists(os.path.join(args.run_dir, "metrics.json")):
        with open(os.path.join(args.run_dir, "metrics.json")) as f:
            wall = json.load(f).get("wall_time_s")

    last = csv_epoch_info(args.run_dir)
    epochs = int(last["epoch"]) + 1 if "epoch" in last else args.epochs
    t0 = time.time()
    errs = evaluate(os.path.join(args.run_dir, "last.ckpt"), args.val)
    metrics = {
        "n_train": count_frames(args.train),
        "n_val": count_frames(args.val),
        "epochs": epochs,
        "wall_time_s": wall,
        "wall_time_per_epoch_s": (wall / epochs) if (wall and epochs) else None,
        "threads": 1,
        **errs,
        "eval_time_s": time.time() - t0,
        "checkpoint": os.path.join(args.run_dir, "last.ckpt"),
        "lightning_last_epoch_val": {k: v for k, v in last.items() if k.startswith("val0_epoch/")},
    }
    print(json.dumps(metrics, indent=1))
    with open(os.path.join(args.run_dir, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)


if __name__ == "__main__":
    main()
