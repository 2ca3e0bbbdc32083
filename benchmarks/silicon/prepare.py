"""Prepare the PyXtal silicon benchmark data (filter + seeded train/val split).

Usage (from the repository root)::

    python benchmarks/silicon/prepare.py --out runs/silicon

Input: ``../shared/data/si_pyxtal.extxyz.gz`` (6887 periodic Si cells, 1-16
atoms, DFT total energy in eV and forces in eV/A, no stress; see
``../shared/data/README.md``).  ``info['source_index']`` (the index in the
original PyXtal_FF ``Si.json``) is carried through to the outputs.

Filter (explicit, applied before splitting)
-------------------------------------------
A structure is kept iff BOTH hold:

* ``E/N - min(E/N) <= 2.0 eV/atom`` (``--max-energy-above-min``), with
  ``min(E/N) = -5.425 eV/atom`` (diamond Si), i.e. ``E/N <= -3.425 eV/atom``;
* ``max |F_i,alpha| <= 15.0 eV/A`` over all force components
  (``--max-force-component``).

Why these values (distribution of the full set, printed by this script):

* E/N above the minimum: median 0.76, 75% 1.32, 90% 2.56, 95% 5.15,
  99% 11.3, max 39.9 eV/atom.  Up to ~2 eV/atom the structures are physical
  crystals: the median shortest Si-Si distance stays at 2.26-2.48 A (the
  diamond bond is 2.35 A) and the 5% quantile at >= 1.95 A; this band holds
  the near-equilibrium relaxations (<0.5 eV/atom), distorted / high-pressure
  polymorphs (0.5-1.5 eV/atom) and expanded low-density cells (1.5-2 eV/atom,
  median volume 33 A^3/atom).  Above 2 eV/atom the cells are increasingly
  collapsed (median volume 7-13 A^3/atom vs 20 for diamond) with atoms far too
  close (median shortest distance 2.07 -> 1.5 A, down to 1.09 A): the
  pathological random structures mentioned in the data README.  They would
  dominate an MSE loss (E/N up to +34 eV/atom) while being irrelevant to
  near-equilibrium simulation.
* max |F component|: median 0.14, 90% 1.95, 95% 4.5, 99% 14.0, max 138 eV/A.
  Inside the energy window only ~0.1% of the structures exceed 15 eV/A (5953 ->
  5950); the force cut removes a handful of isolated extreme-force outliers
  (close contacts at moderate average energy) that would otherwise dominate the
  force MSE.

With these thresholds 5950 of 6887 structures (86%) are kept.

Split and subsampling
---------------------
The filtered set is shuffled with ``numpy.random.default_rng(seed)`` (seed 0)
and split 90/10 into train/validation.  Because the official nequip run must
finish in ~30 min on one CPU thread (see README.md), the two splits can then be
subsampled with the same generator: the first ``--n-train`` entries of the
shuffled train split and the first ``--n-val`` entries of the shuffled val
split are written (defaults chosen from the measured time per epoch; see
README.md).  Pass ``--n-train 0 --n-val 0`` to keep the full splits.  The
unused filtered indices are recorded in ``split.json``.

Outputs (in ``--out``): ``train.extxyz``, ``val.extxyz`` (energy and forces
as extxyz labels via a SinglePointCalculator; ``info['source_index']`` kept)
and ``split.json`` (thresholds, counts, source indices of each split).
"""

import argparse
import json
import os

import ase.io
import numpy as np
from ase.calculators.singlepoint import SinglePointCalculator

DEFAULT_DATA = os.path.join("..", "shared", "data", "si_pyxtal.extxyz.gz")
QUANTILES = [0.0, 0.01, 0.05, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0]


def _fmt_q(values):
    qs = np.quantile(values, QUANTILES)
    return "  ".join(f"q{int(q * 100):d}={v:.3f}" for q, v in zip(QUANTILES, qs, strict=True))


def summarize(name, e_per_atom, fmax, natoms):
    print(f"--- {name}: {len(e_per_atom)} structures, {int(natoms.sum())} atoms")
    print(f"  E/N (eV/atom):            {_fmt_q(e_per_atom)}")
    print(f"  E/N - min (eV/atom):      {_fmt_q(e_per_atom - e_per_atom.min())}")
    print(f"  max |F component| (eV/A): {_fmt_q(fmax)}")
    counts = np.bincount(natoms.astype(int))
    hist = ", ".join(f"{n}:{c}" for n, c in enumerate(counts) if c > 0)
    print(f"  atoms per structure (N:count): {hist}")


def clean_atoms(atoms):
    """Fresh Atoms with only structure, energy/forces labels and source_index."""
    energy = float(atoms.get_potential_energy())
    forces = np.array(atoms.get_forces(), dtype=np.float64)
    out = atoms.__class__(
        numbers=atoms.numbers,
        positions=atoms.positions,
        cell=atoms.cell,
        pbc=atoms.pbc,
    )
    out.info["source_index"] = int(atoms.info["source_index"])
    out.calc = SinglePointCalculator(out, energy=energy, forces=forces)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="input extxyz(.gz)")
    p.add_argument("--out", default=os.path.join("runs", "silicon"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument(
        "--max-energy-above-min",
        type=float,
        default=2.0,
        help="keep E/N - min(E/N) <= this (eV/atom)",
    )
    p.add_argument(
        "--max-force-component",
        type=float,
        default=15.0,
        help="keep max |F component| <= this (eV/A)",
    )
    p.add_argument(
        "--n-train", type=int, default=2000, help="subsample the train split to this many (0 = all)"
    )
    p.add_argument(
        "--n-val", type=int, default=300, help="subsample the val split to this many (0 = all)"
    )
    args = p.parse_args(argv)

    frames = ase.io.read(args.data, index=":")
    natoms = np.array([len(a) for a in frames])
    e_per_atom = np.array([a.get_potential_energy() / len(a) for a in frames])
    fmax = np.array([np.abs(a.get_forces()).max() for a in frames])
    summarize("all data", e_per_atom, fmax, natoms)

    e_min = float(e_per_atom.min())
    keep_e = (e_per_atom - e_min) <= args.max_energy_above_min
    keep_f = fmax <= args.max_force_component
    keep = keep_e & keep_f
    print(
        f"filter: E/N - {e_min:.4f} <= {args.max_energy_above_min} eV/atom "
        f"(drops {int((~keep_e).sum())}), max|F| <= "
        f"{args.max_force_component} eV/A (drops {int((~keep_f).sum())}); "
        f"kept {int(keep.sum())} / {len(frames)}"
    )
    kept_idx = np.flatnonzero(keep)  # positions in the file
    summarize("filtered", e_per_atom[kept_idx], fmax[kept_idx], natoms[kept_idx])

    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(kept_idx)
    n_val_full = int(round(args.val_fraction * len(perm)))
    val_full, train_full = perm[:n_val_full], perm[n_val_full:]
    # subsample: take a prefix of each (already randomly shuffled) split
    train_pos = train_full[: args.n_train] if args.n_train > 0 else train_full
    val_pos = val_full[: args.n_val] if args.n_val > 0 else val_full
    unused_pos = np.setdiff1d(kept_idx, np.concatenate([train_pos, val_pos]))
    print(
        f"split (seed {args.seed}): train {len(train_full)} / val {len(val_full)}"
        f" -> written train {len(train_pos)} / val {len(val_pos)}"
        f" (unused filtered: {len(unused_pos)})"
    )

    src = np.array([int(a.info["source_index"]) for a in frames])
    os.makedirs(args.out, exist_ok=True)
    for name, pos in [("train", train_pos), ("val", val_pos)]:
        sel = [clean_atoms(frames[i]) for i in pos]
        path = os.path.join(args.out, f"{name}.extxyz")
        ase.io.write(path, sel, format="extxyz")
        summarize(f"{name} ({path})", e_per_atom[pos], fmax[pos], natoms[pos])

    split = {
        "data": args.data,
        "seed": args.seed,
        "filter": {
            "max_energy_above_min_eV_per_atom": args.max_energy_above_min,
            "min_energy_per_atom_eV": e_min,
            "max_energy_per_atom_eV": e_min + args.max_energy_above_min,
            "max_abs_force_component_eV_per_A": args.max_force_component,
        },
        "counts": {
            "before_filter": len(frames),
            "dropped_by_energy": int((~keep_e).sum()),
            "dropped_by_force": int((~keep_f).sum()),
            "after_filter": int(keep.sum()),
            "train_full_split": len(train_full),
            "val_full_split": len(val_full),
            "train": len(train_pos),
            "val": len(val_pos),
            "unused_filtered": len(unused_pos),
        },
        "subsample": {"n_train": args.n_train, "n_val": args.n_val},
        "train_source_index": src[train_pos].tolist(),
        "val_source_index": src[val_pos].tolist(),
        "unused_filtered_source_index": src[unused_pos].tolist(),
    }
    with open(os.path.join(args.out, "split.json"), "w") as f:
        json.dump(split, f, indent=1)
    print(f"wrote {args.out}/train.extxyz, val.extxyz, split.json")


if __name__ == "__main__":
    main()
