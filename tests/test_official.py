"""Importing official nequip / nequip-allegro models reproduces them exactly.

Every official model here is built and written by the official code: models of several
architectures through ``allegro.model.AllegroModel``, and one real ``.ckpt`` and
``.nequip.zip`` through ``nequip-train`` and ``nequip-package build`` (once per module).
The largest deviations per configuration are printed as a table at the end of the module.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import ase
import ase.build
import numpy as np
import pytest
import torch

pytest.importorskip("nequip")
pytest.importorskip("allegro")

from allegro_deploy.models import AllegroModel, AtomicGraph  # noqa: E402
from allegro_deploy.models.checkpoint import load_checkpoint  # noqa: E402
from allegro_deploy.models.official import (  # noqa: E402
    OfficialImportError,
    import_official,
    model_from_official,
    save,
)
from allegro_deploy.models.official_reference import (  # noqa: E402
    load_official,
    official_outputs,
)

TOLERANCE = {"float64": 1e-10, "float32": 1e-5}
OUTPUTS = (
    ("energy", "total_energy"),
    ("atomic_energies", "atomic_energy"),
    ("forces", "forces"),
    ("stress", "stress"),
)
DEVIATIONS: dict[tuple[str, str], dict[str, float]] = {}
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module", autouse=True)
def nequip_state(request: pytest.FixtureRequest):
    """The official global state (float64 default dtype, ...), undone after the module;
    prints the table of the largest deviations."""
    import e3nn
    from nequip.utils.global_state import set_global_state

    dtype, e3nn_defaults = torch.get_default_dtype(), e3nn.get_optimization_defaults()
    sharing = torch.multiprocessing.get_sharing_strategy()
    set_global_state()
    yield
    torch.set_default_dtype(dtype)
    e3nn.set_optimization_defaults(**e3nn_defaults)
    torch.multiprocessing.set_sharing_strategy(sharing)
    if not DEVIATIONS:
        return
    lines = [
        "",
        "largest relative deviation, imported vs official (max|Δ| / max|x|)",
        f"{'configuration':34s} {'dtype':8s}" + "".join(f"{k:>16s}" for k, _ in OUTPUTS),
    ]
    for (name, dtype_name), errors in sorted(DEVIATIONS.items()):
        row = "".join(f"{errors.get(k, float('nan')):16.1e}" for k, _ in OUTPUTS)
        lines.append(f"{name:34s} {dtype_name:8s}{row}")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print("\n".join(lines))


# --------------------------------------------------------------------------- helpers


def structures(symbols: list[str]) -> dict[str, ase.Atoms]:
    """A periodic triclinic crystal and a non-periodic cluster, species drawn from symbols."""
    rng = np.random.default_rng(0)
    crystal = ase.build.bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 1, 1)
    crystal.cell[1, 0] += 0.4
    crystal.positions += rng.normal(0.0, 0.12, crystal.positions.shape)
    crystal.numbers = rng.choice([ase.data.atomic_numbers[s] for s in symbols], len(crystal))
    cluster = ase.Atoms(rng.choice(symbols, 7), positions=rng.uniform(0.0, 3.5, (7, 3)), pbc=False)
    return {"periodic": crystal, "cluster": cluster}


def compare(name: str, official: torch.nn.Module, ours: AllegroModel, dtype: str) -> None:
    """Assert that ``ours`` reproduces ``official`` and record the largest deviations."""
    worst: dict[str, float] = {}
    for atoms in structures(list(ours.species)).values():
        graph = AtomicGraph.from_atoms([atoms], ours.config.atomic_numbers, ours.config.r_max)
        reference = official_outputs(official, graph)
        result = ours(graph)
        for key, official_key in OUTPUTS:
            if key == "stress" and not atoms.pbc.all():
                continue
            expected = reference[official_key].detach().double().reshape(result[key].shape)
            error = float((result[key].detach() - expected).abs().max() / expected.abs().max())
            worst[key] = max(worst.get(key, 0.0), error)
    DEVIATIONS[name, dtype] = worst
    assert max(worst.values()) <= TOLERANCE[dtype], worst


def base_config(dtype: str = "float64", **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "_target_": "allegro.model.AllegroModel",
        "seed": 3,
        "model_dtype": dtype,
        "type_names": ["Si"],
        "r_max": 4.0,
        "l_max": 1,
        "radial_chemical_embed": {"_target_": "allegro.nn.TwoBodyBesselScalarEmbed"},
        "num_layers": 2,
        "num_scalar_features": 8,
        "num_tensor_features": 4,
        "scalar_embed_mlp_hidden_layers_width": 8,
        "allegro_mlp_hidden_layers_width": 8,
        "readout_mlp_hidden_layers_width": 8,
        "avg_num_neighbors": 20.0,
        "per_type_energy_scales": 1.7,
        "per_type_energy_shifts": -3.1,
    }
    config.update(overrides)
    return config


THREE = ["Si", "O", "C"]
CONFIGS: dict[str, dict[str, Any]] = {
    "l2-parity-coupled-2layers": dict(l_max=2),
    "l1-noparity-3layers": dict(parity=False, num_layers=3),
    "l1-uncoupled-1layer": dict(tp_path_channel_coupling=False, num_layers=1),
    "l2-3species-paircut-zbl": dict(
        l_max=2,
        type_names=THREE,
        r_max=4.5,
        per_edge_type_cutoff={"Si": {"O": 3.0}, "C": 3.5},
        avg_num_neighbors={"Si": 20.0, "O": 11.0, "C": 14.0},
        per_type_energy_shifts={"Si": -3.0, "O": -1.5, "C": -2.2},
        per_type_energy_scales_trainable=True,
        pair_potential={
            "_target_": "nequip.nn.pair_potential.ZBL",
            "units": "metal",
            "chemical_species": THREE,
        },
    ),
    "l1-renamed-types-uncoupled-3layers": dict(
        type_names=["silicon", "oxygen", "carbon"],
        parity=False,
        num_layers=3,
        tp_path_channel_coupling=False,
        radial_chemical_embed_dim=12,
        per_edge_type_cutoff={"oxygen": 3.2},
        pair_potential={
            "_target_": "nequip.nn.pair_potential.ZBL",
            "units": "metal",
            "chemical_species": THREE,
        },
    ),
    "linear-mlps-bessel-p4-zbl": dict(
        allegro_mlp_nonlinearity=None,
        allegro_mlp_hidden_layers_depth=2,
        readout_mlp_nonlinearity="mish",
        pair_potential={
            "_target_": "nequip.nn.pair_potential.ZBL",
            "units": "metal",
            "chemical_species": ["Si"],
        },
        scalar_embed_mlp_nonlinearity="tanh",
        scalar_embed_mlp_hidden_layers_depth=2,
        radial_chemical_embed={
            "_target_": "allegro.nn.TwoBodyBesselScalarEmbed",
            "num_bessels": 6,
            "bessel_trainable": True,
            "polynomial_cutoff_p": 4,
        },
    ),
    "full-model-in-modify": dict(
        _target_="nequip.model.modify",
        modifiers=[
            {"modifier": "modify_PerTypeScaleShift", "shifts": {"Si": -7.25}},
            {"modifier": "enable_ForceStressOutput"},
        ],
        model={
            "_target_": "allegro.model.allegro_models.FullAllegroModel",
            "irreps_edge_sh": "1x0e+1x1o+1x2e",
            "tensor_track_allowed_irreps": "1x0e+1x1o+1x2e",
            "readout_mlp_nonlinearity": "gelu",
        },
    ),
}


def official_model_and_config(name: str, dtype: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    overrides = dict(CONFIGS[name])
    if overrides.get("_target_") == "nequip.model.modify":
        inner = base_config(dtype, **overrides.pop("model"))
        inner.pop("l_max")  # FullAllegroModel takes irreps instead
        config = {**overrides, "model": inner}
    else:
        config = base_config(dtype, **overrides)
    official = load_official(config)
    if isinstance(official, torch.nn.ModuleDict):
        official = official["sole_model"]
    with torch.no_grad():  # move trainable "values" away from their initial state
        for key, parameter in official.named_parameters():
            if "bessel_weights" in key or "scales" in key:
                parameter.add_(0.1 * torch.rand_like(parameter))
    return official, config


# --------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_reproduces_official_model(name: str, dtype: str) -> None:
    official, config = official_model_and_config(name, dtype)
    ours = model_from_official(config, official.state_dict())
    assert ours.config.model_dtype == dtype
    compare(name, official, ours, dtype)


def test_type_names_become_chemical_symbols() -> None:
    official, config = official_model_and_config("l1-renamed-types-uncoupled-3layers", "float64")
    ours = model_from_official(config, official.state_dict())
    assert ours.species == ("Si", "O", "C")
    assert ours.config.per_edge_type_cutoff == {"O": 3.2}


def test_type_names_mapped_by_the_data_transform() -> None:
    config = base_config(type_names=["A", "B"])
    data = {
        "transforms": [
            {
                "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
                "model_type_names": ["A", "B"],
                "chemical_species_to_atom_type_map": {"Cu": "A", "Au": "B"},
            }
        ]
    }
    ours = model_from_official(config, load_official(config).state_dict(), data)
    assert ours.species == ("Cu", "Au")


# --------------------------------------------------------------------------- refusals

LJ = {"_target_": "nequip.nn.pair_potential.LennardJones", "lj_sigma": 2.0, "lj_epsilon": 0.1}
REFUSED: dict[str, tuple[dict[str, Any], str]] = {
    "spline-embedding": (
        dict(radial_chemical_embed={"_target_": "allegro.nn.TwoBodySplineScalarEmbed"}),
        "TwoBodySplineScalarEmbed",
    ),
    "lennard-jones": (dict(pair_potential=LJ), "LennardJones"),
    "simple-lennard-jones": (
        dict(
            pair_potential={
                "_target_": "nequip.nn.pair_potential.SimpleLennardJones",
                "lj_sigma": 2.0,
                "lj_epsilon": 0.1,
            }
        ),
        "SimpleLennardJones",
    ),
    "zbl-real-units": (
        dict(
            pair_potential={
                "_target_": "nequip.nn.pair_potential.ZBL",
                "units": "real",
                "chemical_species": ["Si"],
            }
        ),
        "pair_potential.units='real'",
    ),
    "zbl-cutoff-p": (
        dict(
            pair_potential={
                "_target_": "nequip.nn.pair_potential.ZBL",
                "units": "metal",
                "chemical_species": ["Si"],
                "polynomial_cutoff_p": 4,
            }
        ),
        "pair_potential.polynomial_cutoff_p=4",
    ),
    "backward-normalized": (dict(forward_normalize=False), "forward_normalize=False"),
    "shared-irrep-weights": (
        dict(weight_individual_irreps=False),
        "weight_individual_irreps=False",
    ),
    "ssp-nonlinearity": (dict(allegro_mlp_nonlinearity="ssp"), "allegro_mlp_nonlinearity='ssp'"),
    "types-not-elements": (dict(type_names=["A"]), "is not a chemical symbol"),
    "two-types-one-element": (
        dict(
            type_names=["Si1", "Si2"],
            pair_potential={
                "_target_": "nequip.nn.pair_potential.ZBL",
                "units": "metal",
                "chemical_species": ["Si", "Si"],
            },
        ),
        "repeated elements",
    ),
    "reordered-full-irreps": (
        dict(
            _target_="allegro.model.allegro_models.FullAllegroModel",
            irreps_edge_sh="1x0e+1x1o",
            tensor_track_allowed_irreps="1x0e+1x0o+1x1o+1x1e",
        ),
        "tensor_track_allowed_irreps",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_unsupported_official_option_is_refused_by_name(case: str) -> None:
    overrides, expected = REFUSED[case]
    config = base_config(**overrides)
    if config["_target_"].endswith("FullAllegroModel"):
        config.pop("l_max")
    # the official code builds these; SimpleLennardJones does not take the `type_names` the
    # official builder passes, so its config is refused with the weights of a plain model
    official = load_official(base_config() if case == "simple-lennard-jones" else config)
    with pytest.raises(OfficialImportError, match="unsupported official option") as error:
        model_from_official(config, official.state_dict())
    assert expected in str(error.value)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"_target_": "nequip.model.NequIPGNNModel"}, "NequIPGNNModel"),
        (
            {"_target_": "nequip.model.ModelFromPackage", "package_path": "x.nequip.zip"},
            "ModelFromPackage",
        ),
        (
            {
                "_target_": "nequip.model.modify",
                "modifiers": [{"modifier": "enable_OpenEquivarianceTensorProductScatter"}],
                "model": base_config(),
            },
            "enable_OpenEquivarianceTensorProductScatter",
        ),
    ],
)
def test_other_model_classes_and_modifiers_are_refused(config: dict, expected: str) -> None:
    with pytest.raises(OfficialImportError, match=expected):
        model_from_official(config, {})


@pytest.mark.parametrize(
    ("rename", "expected"),
    [
        (("mlp.0.weight", "mlp.0.bias"), "mlp.0.bias"),
        (("mlp.0.weight", "mlp.0.parametrizations.weight.original"), "parametrizations"),
    ],
)
def test_weights_without_counterpart_are_refused(rename: tuple[str, str], expected: str) -> None:
    config = base_config()
    state = load_official(config).state_dict()
    key = "model.func.scalar_embed_mlp.mlp_module.mlp.0.weight"
    state[key.replace(*rename)] = state.pop(key)
    with pytest.raises(OfficialImportError, match="has no counterpart") as error:
        model_from_official(config, state)
    assert expected in str(error.value)


# --------------------------------------------------------------------------- real files

TRAIN_CONFIG = """
run: [train]
seed: 1
cutoff_radius: 4.0
model_type_names: [Cu, Ni, Al]
data:
  _target_: nequip.data.datamodule.ASEDataModule
  seed: ${seed}
  split_dataset: {file_path: DATA, train: 4, val: 2}
  transforms:
    - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
      model_type_names: ${model_type_names}
      chemical_species_to_atom_type_map: ${list_to_identity_dict:${model_type_names}}
    - _target_: nequip.data.transforms.NeighborListTransform
      r_max: ${cutoff_radius}
  train_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 2}
  val_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 2}
  stats_manager:
    _target_: nequip.data.CommonDataStatisticsManager
    type_names: ${model_type_names}
trainer:
  _target_: lightning.Trainer
  max_epochs: 1
  accelerator: cpu
  enable_progress_bar: false
  enable_model_summary: false
  logger: false
  callbacks:
    - {_target_: lightning.pytorch.callbacks.ModelCheckpoint, dirpath: OUT, save_last: true}
training_module:
  _target_: nequip.train.EMALightningModule
  ema_decay: 0.5
  loss:
    _target_: nequip.train.EnergyForceLoss
    per_atom_energy: true
    coeffs: {total_energy: 1.0, forces: 1.0}
  val_metrics:
    _target_: nequip.train.EnergyForceMetrics
    coeffs: {total_energy_mae: 1.0, forces_mae: 1.0}
  optimizer: {_target_: torch.optim.Adam, lr: 0.01}
  model:
    _target_: allegro.model.AllegroModel
    seed: ${seed}
    model_dtype: float64
    type_names: ${model_type_names}
    r_max: ${cutoff_radius}
    per_edge_type_cutoff: {Ni: 3.5, Al: {Cu: 3.0}}
    l_max: 1
    radial_chemical_embed: {_target_: allegro.nn.TwoBodyBesselScalarEmbed, num_bessels: 8}
    num_layers: 2
    num_scalar_features: 8
    num_tensor_features: 4
    allegro_mlp_hidden_layers_width: 8
    readout_mlp_hidden_layers_width: 8
    scalar_embed_mlp_hidden_layers_width: 8
    avg_num_neighbors: ${training_data_stats:num_neighbors_mean}
    per_type_energy_shifts: ${training_data_stats:per_atom_energy_mean}
    per_type_energy_scales: ${training_data_stats:forces_rms}
    pair_potential:
      _target_: nequip.nn.pair_potential.ZBL
      units: metal
      chemical_species: ${model_type_names}
"""

# nequip-train, then nequip-package build, in one interpreter to pay the imports once
RUN_OFFICIAL_TOOLS = """
import sys
from nequip.scripts import package, train
workdir = sys.argv[1]
sys.argv = ["nequip-train", "-cp", workdir, "-cn", "config", "hydra.run.dir=" + workdir]
try:
    train.main()
except SystemExit as exit:
    if exit.code:
        raise
package.main(["build", workdir + "/last.ckpt", workdir + "/model.nequip.zip"])
"""


@pytest.fixture(scope="module")
def official_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A ``.ckpt`` from a 2-step ``nequip-train`` run on EMT data and its ``.nequip.zip``."""
    from ase.calculators.emt import EMT

    workdir = tmp_path_factory.mktemp("official")
    rng = np.random.default_rng(0)
    frames = []
    for index in range(6):
        atoms = ase.build.bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.numbers[:2] = [28, 13] if index % 2 else [29, 29]
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces()
        frames.append(atoms)
    ase.io.write(workdir / "data.xyz", frames, format="extxyz")
    config = TRAIN_CONFIG.replace("DATA", str(workdir / "data.xyz")).replace("OUT", str(workdir))
    (workdir / "config.yaml").write_text(config)
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RUN_OFFICIAL_TOOLS), str(workdir)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    return {"ckpt": workdir / "last.ckpt", "package": workdir / "model.nequip.zip"}


def test_checkpoint_and_package_import_identically(official_files: dict[str, Path]) -> None:
    import hashlib

    import allegro
    import nequip

    from_ckpt, provenance = import_official(official_files["ckpt"])
    from_package, package_provenance = import_official(official_files["package"])
    assert from_ckpt.config == from_package.config
    assert from_ckpt.species == ("Cu", "Ni", "Al") and from_ckpt.config.zbl
    a, b = from_ckpt.state_dict(), from_package.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)

    source = provenance["imported_from"]
    assert source["path"] == str(official_files["ckpt"].resolve())
    assert source["sha256"] == hashlib.sha256(official_files["ckpt"].read_bytes()).hexdigest()
    assert source["format"] == "nequip-lightning-checkpoint" and source["weights"] == "ema"
    assert source["versions"]["nequip"] == nequip.__version__
    assert source["versions"]["allegro"] == allegro.__version__
    assert package_provenance["imported_from"]["format"] == "nequip-package"
    assert package_provenance["imported_from"]["versions"]["allegro"] == allegro.__version__


def test_checkpoint_import_matches_official_loader_with_ema(
    official_files: dict[str, Path],
) -> None:
    from nequip.model.saved_models.load_utils import load_saved_model

    raw = torch.load(official_files["ckpt"], weights_only=True)["state_dict"]
    assert not torch.equal(  # the EMA weights are not the raw ones, so choosing matters
        raw["ema.ema_weight_0"],
        raw["model.sole_model.model.func.radial_chemical_embed.type_embed.center_embed.weight"],
    )
    ours, _ = import_official(official_files["ckpt"])
    for kind in ("ckpt", "package"):
        official = load_saved_model(str(official_files[kind]))
        compare(f"nequip-train .{kind} (EMA)", official, ours, "float64")


def test_save_writes_checkpoint_with_provenance(
    official_files: dict[str, Path], tmp_path: Path
) -> None:
    from click.testing import CliRunner

    from allegro_deploy.cli import main

    provenance = save(official_files["package"], tmp_path / "saved.safetensors")
    loaded = load_checkpoint(tmp_path / "saved.safetensors")
    assert loaded.provenance == provenance
    result = CliRunner().invoke(
        main, ["import", str(official_files["ckpt"]), "-o", str(tmp_path / "cli.safetensors")]
    )
    assert result.exit_code == 0, result.output
    from_cli = load_checkpoint(tmp_path / "cli.safetensors")
    assert from_cli.config == loaded.config
    a, b = from_cli.model.state_dict(), loaded.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert from_cli.provenance["imported_from"]["format"] == "nequip-lightning-checkpoint"


# --------------------------------------------------------------------------- damaged files


def _rewrite_checkpoint(source: Path, target: Path, edit) -> Path:
    checkpoint = torch.load(source, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, target)
    return target


def _rewrite_package(source: Path, target: Path, replace: dict[str, bytes | None]) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for item in old.infolist():
            suffix = next((s for s in replace if item.filename.endswith(s)), None)
            if suffix is None:
                new.writestr(item, old.read(item))
            elif replace[suffix] is not None:
                new.writestr(item, replace[suffix])
    return target


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_damaged_files_fail_clearly(official_files: dict[str, Path], tmp_path: Path) -> None:
    ckpt, package = official_files["ckpt"], official_files["package"]
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    cut_package = tmp_path / "cut.nequip.zip"
    cut_package.write_bytes(package.read_bytes()[:5000])

    def drop_weight(checkpoint: dict) -> None:
        del checkpoint["state_dict"]["model.sole_model.model.func.allegro.tps.0.weights"]

    def drop_weight_and_ema(checkpoint: dict) -> None:
        drop_weight(checkpoint)
        for key in [k for k in checkpoint["state_dict"] if k.startswith("ema.")]:
            del checkpoint["state_dict"][key]

    def old_nequip(checkpoint: dict) -> None:
        checkpoint["hyper_parameters"]["info_dict"]["versions"]["nequip"] = "0.6.1"

    cases = {
        truncated: "not a readable nequip checkpoint",
        garbage: "not a readable nequip checkpoint",
        tmp_path / "missing.ckpt": "no such file",
        cut_package: "not a readable .nequip.zip package",
        _rewrite_package(package, tmp_path / "nomodel.nequip.zip", {"eager_model.pkl": None}):
            "damaged or incomplete nequip package",
        _rewrite_checkpoint(ckpt, tmp_path / "noweight.ckpt", drop_weight):
            "its 15 EMA weights do not line up with the model's 14 parameters",
        _rewrite_checkpoint(ckpt, tmp_path / "noema.ckpt", drop_weight_and_ema):
            r"do not fit the hyperparameters .* no value for \['tensor_products.0.weights'\]",
        _rewrite_checkpoint(ckpt, tmp_path / "old.ckpt", old_nequip):
            "written with nequip 0.6.1; only nequip 0.19.x",
    }  # fmt: skip
    for path, expected in cases.items():
        with pytest.raises(OfficialImportError, match=expected) as error:
            import_official(path)
        assert path.name in str(error.value)


def test_code_in_files_is_never_run(official_files: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    def plant(checkpoint: dict) -> None:
        checkpoint["hyper_parameters"]["model"]["seed"] = _RunsCode(marker)
        checkpoint["callbacks"] = _RunsCode(marker)

    evil_ckpt = _rewrite_checkpoint(official_files["ckpt"], tmp_path / "evil.ckpt", plant)
    with pytest.raises(OfficialImportError, match="model.seed holds a posix.system object"):
        import_official(evil_ckpt)
    evil_package = _rewrite_package(
        official_files["package"],
        tmp_path / "evil.nequip.zip",
        {"eager_model.pkl": pickle.dumps(_RunsCode(marker), protocol=3)},
    )
    with pytest.raises(OfficialImportError, match="not a module"):
        import_official(evil_package)
    assert not marker.exists()


def test_packaged_module_without_counterpart_is_refused(
    official_files: dict[str, Path], tmp_path: Path
) -> None:
    with zipfile.ZipFile(official_files["package"]) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith("/model/eager_model.pkl")]
        pickled = archive.read(name)
    silu = b"torch.nn.modules.activation\nSiLU\n"
    assert silu in pickled
    relu = _rewrite_package(
        official_files["package"],
        tmp_path / "relu.nequip.zip",
        {"eager_model.pkl": pickled.replace(silu, b"torch.nn.modules.activation\nReLU\n")},
    )
    with pytest.raises(
        OfficialImportError, match="contains module torch.nn.modules.activation.ReLU"
    ):
        import_official(relu)


def test_imported_official_model_exports_and_onnx_runtime_reproduces_it(
    official_files: dict[str, Path], tmp_path: Path
) -> None:
    """Official .ckpt -> import -> ONNX (float64) -> torch-free runtime == official model."""
    from nequip.model.saved_models.load_utils import load_saved_model

    from allegro_deploy.exporters.onnx_export import export_checkpoint
    from allegro_deploy.runtime import Potential

    checkpoint = tmp_path / "imported.safetensors"
    save(official_files["ckpt"], checkpoint)
    export_checkpoint(checkpoint, tmp_path / "imported.onnx", dtype="float64", log=lambda _: None)
    potential = Potential.load(tmp_path / "imported.onnx", backend="cpu")
    official = load_saved_model(str(official_files["ckpt"]))
    ours = load_checkpoint(checkpoint).model
    for atoms in structures(list(ours.species)).values():
        graph = AtomicGraph.from_atoms([atoms], ours.config.atomic_numbers, ours.config.r_max)
        reference = official_outputs(official, graph)
        result = potential.evaluate(atoms)
        for value, key in [
            (result.energy, "total_energy"),
            (result.atomic_energies, "atomic_energy"),
            (result.forces, "forces"),
        ]:
            expected = reference[key].detach().double().numpy().reshape(np.shape(value))
            assert np.abs(value - expected).max() <= 1e-10 * np.abs(expected).max(), key
