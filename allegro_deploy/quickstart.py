"""``allegro-deploy quickstart``: EMT copper data, a small model trained for ~2 minutes."""

from __future__ import annotations

import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

DATA_FILE = "cu_emt.extxyz"
TRAIN_DIRECTORY = "train"
TRAINING_MINUTES = 2.0


def run(workdir: str | Path = "runs/quickstart") -> Path:
    """Generate EMT Cu data in ``workdir``, train a small float32 model, print its errors.

    The dataset is 120 frames of Langevin MD of a 32-atom fcc Cu cell at 300, 600 and
    900 K, each with a random ±3 % strain (energy, forces and stress labels). The model
    (l_max 1, 2 layers, 32 scalar / 8 tensor features, r_max 4.5 Å) trains for about
    two minutes. Results of an earlier quickstart in ``workdir`` are replaced.
    Returns the best checkpoint's path.
    """
    from allegro_deploy.models.checkpoint import load_checkpoint
    from allegro_deploy.models.datagen import generate_emt_dataset
    from allegro_deploy.models.train import train

    console = Console()
    workdir = Path(workdir)
    data = workdir / DATA_FILE
    console.print(f"[bold]1/2[/] generating EMT Cu molecular dynamics data in {data}")
    generate_emt_dataset(
        data,
        element="Cu",
        supercell=(2, 2, 2),
        temperatures=(300.0, 600.0, 900.0),
        n_frames=120,
        interval=10,
        seed=0,
    )
    output = workdir / TRAIN_DIRECTORY
    shutil.rmtree(output, ignore_errors=True)
    console.print(f"[bold]2/2[/] training for about {TRAINING_MINUTES:g} minutes")
    best = train(
        {
            "data": {"train_file": str(data), "val_fraction": 0.15, "split_seed": 0},
            "model": {
                "r_max": 4.5,
                "l_max": 1,
                "num_layers": 2,
                "num_scalar_features": 32,
                "num_tensor_features": 8,
                "scalar_embed_mlp_hidden_layers_width": 32,
                "allegro_mlp_hidden_layers_width": 32,
                "readout_mlp_hidden_layers_width": 16,
                "model_dtype": "float32",
            },
            "training": {
                "seed": 0,
                "epochs": 1000,
                "batch_size": 4,
                "learning_rate": 0.004,
                "ema_decay": 0.99,
                "lr_patience": 5,
                "early_stopping_patience": 20,
                "max_time_minutes": TRAINING_MINUTES,
            },
            "output": {"directory": str(output)},
        }
    )
    metrics = load_checkpoint(best).metrics
    table = Table(title=f"validation errors, epoch {metrics['epoch']}", min_width=40)
    table.add_column("quantity")
    table.add_column("error", justify="right")
    table.add_row("energy MAE", f"{metrics['val_energy_mae_meV_per_atom']:.2f} meV/atom")
    table.add_row("force MAE", f"{metrics['val_force_mae_meV_per_A']:.1f} meV/Å")
    table.add_row("force RMSE", f"{metrics['val_force_rmse_meV_per_A']:.1f} meV/Å")
    if "val_stress_mae_meV_per_A3" in metrics:
        table.add_row("stress MAE", f"{metrics['val_stress_mae_meV_per_A3']:.3f} meV/Å³")
    console.print(table)
    console.print(f"checkpoint: {best}\nmetrics: {output / 'metrics.csv'}")
    console.print(f"inspect it with: allegro-deploy info {best}")
    return best
