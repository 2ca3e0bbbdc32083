"""The ``allegro-deploy`` command line.

Importing this module must stay cheap: torch, e3nn and the model code are imported
inside the command functions, so ``allegro-deploy --help`` never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from allegro_deploy import __version__
from allegro_deploy.models.labels import LABELS  # numpy and ase, no torch
from allegro_deploy.runtime.backends import BACKENDS  # numpy and onnxruntime, no torch
from allegro_deploy.runtime.metadata import DTYPES, PRECISIONS, TARGETS


def _parse_floats(ctx: click.Context, param: click.Parameter, value: str) -> tuple[float, ...]:
    """``"300,600"`` -> ``(300.0, 600.0)``."""
    try:
        return tuple(float(item) for item in value.split(","))
    except ValueError as error:
        raise click.BadParameter("expected comma-separated numbers, e.g. 300,600") from error


def _parse_alloy(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> dict[str, float] | None:
    """``"Cu:0.5,Au:0.5"`` -> ``{"Cu": 0.5, "Au": 0.5}``."""
    if value is None:
        return None
    try:
        pairs = (item.split(":") for item in value.split(","))
        return {symbol.strip(): float(fraction) for symbol, fraction in pairs}
    except ValueError as error:
        raise click.BadParameter("expected ELEMENT:FRACTION,... e.g. Cu:0.5,Au:0.5") from error


_threads_option = click.option(
    "--threads", type=click.IntRange(min=1), help="CPU threads (default: one per core)."
)


def _runtime_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--backend`` and ``--threads``, the options of every command that runs an export."""
    command = _threads_option(command)
    return click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="auto",
        show_default=True,
        help="Where the model runs (allegro_deploy.runtime.backends).",
    )(command)


def _label_key_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--energy-key``, ``--forces-key``, ``--stress-key``: where a data file keeps its
    labels (for files that label with other names, e.g. REF_energy)."""
    for kind in reversed(LABELS):
        command = click.option(
            f"--{kind}-key",
            default=kind,
            show_default=True,
            help=f"Name of the {kind} label in the data file, e.g. REF_{kind}.",
        )(command)
    return command


_EXTRAS = {
    "torch": "train",
    "e3nn": "train",
    "safetensors": "train",
    "yaml": "train",
    "onnx": "export",
    "onnxscript": "export",
    "onnx_ir": "export",
    "openvino": "openvino",
    "nequip": "test",
    "allegro": "test",
}
"""The extra that brings each optional package (pyproject.toml's optional-dependencies)."""


class _Commands(click.Group):
    """Reports bad input (``ValueError``, which every error type of the package for bad
    data, configurations, checkpoints or structures derives from, and missing files) as a
    one-line message and exit status 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (ValueError, FileNotFoundError) as error:
            raise click.ClickException(str(error)) from error
        except ModuleNotFoundError as error:
            package = (error.name or "").split(".")[0]
            if package not in _EXTRAS:
                raise
            raise click.ClickException(
                f"this command needs {package}, which this installation lacks: "
                f"pip install 'allegro-deploy[{_EXTRAS[package]}]'"
            ) from error


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="allegro-deploy")
def main() -> None:
    """Train, export and run the Allegro machine-learned interatomic potential."""


@main.group()
def data() -> None:
    """Make training data."""


@data.command("generate")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--element", default="Cu", show_default=True, help="fcc metal EMT supports.")
@click.option(
    "--supercell",
    nargs=3,
    type=click.IntRange(min=1),
    default=(3, 3, 3),
    show_default=True,
    help="Repetitions of the 4-atom cubic fcc cell.",
)
@click.option(
    "--temperatures",
    callback=_parse_floats,
    default="300,600,900",
    show_default=True,
    help="MD temperatures in K, comma-separated.",
)
@click.option(
    "--frames", type=click.IntRange(min=1), default=60, show_default=True, help="Frames in total."
)
@click.option(
    "--interval",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="MD steps of 5 fs between frames.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option(
    "--alloy",
    callback=_parse_alloy,
    help="Random alloy instead of --element, e.g. Cu:0.5,Au:0.5.",
)
def data_generate(
    out: Path,
    element: str,
    supercell: tuple[int, int, int],
    temperatures: tuple[float, ...],
    frames: int,
    interval: int,
    seed: int,
    alloy: dict[str, float] | None,
) -> None:
    """Write EMT-labelled MD frames (energy, forces, stress) of an fcc metal to OUT (extxyz)."""
    from allegro_deploy.models.datagen import generate_emt_dataset

    written = generate_emt_dataset(
        out,
        element=element,
        supercell=supercell,
        temperatures=temperatures,
        n_frames=frames,
        interval=interval,
        seed=seed,
        alloy=alloy,
    )
    click.echo(f"wrote {written} frames to {out}")


@main.command()
@click.argument("config", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--resume",
    type=click.Path(exists=True, path_type=Path),
    help="The last.safetensors of the run in the configured output directory, to continue it.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the checkpoints and metrics of an earlier run in the output directory.",
)
def train(config: Path, resume: Path | None, overwrite: bool) -> None:
    """Train a model as described by the YAML file CONFIG."""
    from allegro_deploy.models.train import train_from_config

    train_from_config(config, resume=resume, overwrite=overwrite)


@main.command()
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--tensorrt",
    is_flag=True,
    help="Check every node of an .onnx file against TensorRT's ONNX parser; exit 1 if any "
    "would fail.",
)
@click.option(
    "--tensorrt-version",
    default="10.1",
    show_default=True,
    help="TensorRT version whose documented parser support --tensorrt checks against.",
)
def info(path: Path, tensorrt: bool, tensorrt_version: str) -> None:
    """Describe the checkpoint or exported .onnx model at PATH."""
    if tensorrt and path.suffix != ".onnx":
        raise click.ClickException(f"--tensorrt checks an .onnx file, not {path}")
    if path.suffix == ".onnx":
        try:
            from allegro_deploy.exporters.inspect import describe_onnx
        except ImportError as error:  # a runtime-only install: the metadata, no op census
            from allegro_deploy.runtime.metadata import read_metadata

            if tensorrt:
                raise click.ClickException(
                    f"--tensorrt needs the {error.name} package: pip install "
                    "'allegro-deploy[export]'"
                ) from None
            click.echo(f"model {path} ({path.stat().st_size / 1e6:.2f} MB)")
            click.echo("\n".join(read_metadata(path).describe()))
            click.echo(f"(node census: pip install 'allegro-deploy[export]' for {error.name})")
            return
        try:
            click.echo(describe_onnx(path))
        except ValueError as error:
            raise click.ClickException(str(error)) from error
        if tensorrt:
            from allegro_deploy.exporters.tensorrt_check import check_tensorrt

            report = check_tensorrt(path, tensorrt_version)
            click.echo(report.summary())
            if not report.ok:
                raise SystemExit(1)
        return
    from allegro_deploy.models.checkpoint import describe

    click.echo(describe(path))


@main.command("import")
@click.argument("official_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Checkpoint to write.",
)
def import_(official_file: Path, output: Path) -> None:
    """Import an official nequip-allegro .ckpt or .nequip.zip as a checkpoint, exactly."""
    from allegro_deploy.models.official import save

    provenance = save(official_file, output)
    source = provenance["imported_from"]
    versions = ", ".join(f"{k} {v}" for k, v in source["versions"].items())
    click.echo(f"imported {source['format']} ({versions}; {source['weights']} weights) to {output}")


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs/quickstart"),
    show_default=True,
    help="Folder for the data, checkpoints and exported models.",
)
def quickstart(workdir: Path) -> None:
    """Run the whole pipeline on a small built-in example."""
    from allegro_deploy.quickstart import run

    run(workdir)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--address",
    required=True,
    help="Where i-PI listens: HOST:PORT, or unix:NAME for i-PI's socket /tmp/ipi_NAME.",
)
@click.option(
    "--structure",
    "structure_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Structure i-PI starts from (any ASE-readable file): atomic numbers in i-PI's order.",
)
@_runtime_options
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="Seconds to keep trying to connect while i-PI starts.",
)
@click.option(
    "--reconnect",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Seconds to keep trying to reconnect after losing i-PI without EXIT.",
)
def ipi(
    model: Path,
    address: str,
    structure_file: Path,
    backend: str,
    threads: int | None,
    wait: float,
    reconnect: float,
) -> None:
    """Serve the exported MODEL (a structures export) to an i-PI server until it sends EXIT."""
    from allegro_deploy.models.labels import read_structure
    from allegro_deploy.runtime.ipi import Address, IPIClient, IPIProtocolError
    from allegro_deploy.runtime.potential import Potential

    where = Address.parse(address)
    atoms = read_structure(structure_file, 0)
    potential = Potential.load(model, backend, threads=threads)
    client = IPIClient(potential, atoms.numbers, atoms.pbc)
    click.echo(f"serving {potential} to i-PI at {where}", err=True)
    try:
        evaluations = client.serve(where, wait=wait, reconnect=reconnect)
    except (ConnectionError, TimeoutError, IPIProtocolError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"i-PI sent EXIT after {evaluations} evaluations", err=True)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("structure", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--ensemble",
    type=click.Choice(["nve", "nvt"]),
    default="nvt",
    show_default=True,
    help="nve: velocity Verlet; nvt: Langevin thermostat.",
)
@click.option(
    "--timestep",
    type=click.FloatRange(min=0, min_open=True),
    default=1.0,
    show_default=True,
    help="Time step in fs.",
)
@click.option(
    "--temperature",
    type=click.FloatRange(min=0),
    default=300.0,
    show_default=True,
    help="K: thermostat and initial Maxwell-Boltzmann velocities.",
)
@click.option(
    "--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="MD steps."
)
@click.option(
    "--friction",
    type=click.FloatRange(min=0),
    default=0.01,
    show_default=True,
    help="Langevin friction in 1/fs.",
)
@click.option(
    "--trajectory",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write frames to this .traj or .extxyz file.",
)
@click.option(
    "--thermo",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write step, time, potential/kinetic/total energy, temperature and pressure to "
    "this CSV file.",
)
@click.option(
    "--interval",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Steps between trajectory frames and energy samples.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of velocities and noise."
)
@_runtime_options
def md(
    model: Path,
    structure: Path,
    ensemble: str,
    timestep: float,
    temperature: float,
    steps: int,
    friction: float,
    trajectory: Path | None,
    thermo: Path | None,
    interval: int,
    seed: int,
    backend: str,
    threads: int | None,
) -> None:
    """Run ASE molecular dynamics of STRUCTURE (any ASE-readable file, its last frame)
    with MODEL (a structures export, or a checkpoint, exported first), and report the
    speed."""
    import tempfile

    from allegro_deploy.models.labels import read_structure
    from allegro_deploy.runtime.calculator import AllegroCalculator
    from allegro_deploy.runtime.md import run_md

    for option, output in (("--trajectory", trajectory), ("--thermo", thermo)):
        if output is not None and output.resolve() in (structure.resolve(), model.resolve()):
            raise click.ClickException(f"{option} {output} is an input of this run")
    atoms = read_structure(structure)
    with tempfile.TemporaryDirectory(prefix="allegro-md-") as folder:
        if model.suffix == ".safetensors":
            model = _export_for_run(model, Path(folder))
        calculator = AllegroCalculator(model, backend, threads=threads)
    click.echo(f"{len(atoms)} atoms, {calculator.potential}", err=True)
    report = run_md(
        atoms,
        calculator,
        ensemble=ensemble,
        timestep_fs=timestep,
        temperature_K=temperature,
        steps=steps,
        friction_per_fs=friction,
        trajectory=trajectory,
        thermo=thermo,
        interval=interval,
        seed=seed,
    )
    click.echo(report.summary())


def _export_for_run(checkpoint: Path, folder: Path) -> Path:
    """``checkpoint`` exported (``structures``, its own dtype) into ``folder``, saying so."""
    try:
        from allegro_deploy.exporters.onnx_export import export_checkpoint
    except ImportError as error:
        raise click.ClickException(
            f"{checkpoint} is a checkpoint, which runs after an export; install "
            f"allegro-deploy[export] or pass an .onnx export ({error.name} is missing)"
        ) from None
    path = folder / f"{checkpoint.stem}.onnx"
    click.echo(
        f"{checkpoint} is a checkpoint: exporting it first (to skip this next time: "
        f"allegro-deploy export {checkpoint} -o {checkpoint.stem}.onnx)",
        err=True,
    )
    export_checkpoint(checkpoint, path, log=lambda _: None)
    return path


@main.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="ONNX file to write.",
)
@click.option(
    "--dtype",
    type=click.Choice(DTYPES),
    help="Precision of the network body (default: the checkpoint's).",
)
@click.option(
    "--target",
    type=click.Choice(TARGETS),
    default="structures",
    show_default=True,
    help="structures: ASE, i-PI, batches; pairs: LAMMPS ML-IAP.",
)
@click.option(
    "--precision",
    type=click.Choice(list(PRECISIONS)),
    help="Matrix products of the MLPs and tensor products (default: the dtype's full "
    "precision); tf32, fp16 and bf16 export float32 with float32 accumulation.",
)
@click.option(
    "--emulate",
    is_flag=True,
    help="Round in float32 instead of a strongly typed reduced graph (for CPUs).",
)
@click.option(
    "--no-float64",
    "no_float64",
    is_flag=True,
    help="A float32-only file (for TensorRT and OpenVINO): the runtime computes edge "
    "vectors, energy shifts and sums over atoms in float64 outside the graph.",
)
def export(
    checkpoint: Path,
    output: Path,
    dtype: str | None,
    target: str,
    precision: str | None,
    emulate: bool,
    no_float64: bool,
) -> None:
    """Export CHECKPOINT's energy, forces and virial to ONNX, verified with ONNX Runtime."""
    from allegro_deploy.exporters.onnx_export import ExportError, export_checkpoint
    from allegro_deploy.models.checkpoint import CheckpointError

    try:
        report = export_checkpoint(
            checkpoint,
            output,
            target=target,
            dtype=dtype,
            precision=precision,
            emulate=emulate,
            float64=not no_float64,
            log=click.echo,
        )
    except (ExportError, CheckpointError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(report.summary())


@main.command("compile")
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="EP-context .onnx file to write (the engine embedded).",
)
@click.option("--max-atoms", type=click.IntRange(min=1), default=4096, show_default=True)
@click.option(
    "--max-neighbors",
    type=click.IntRange(min=1),
    default=96,
    show_default=True,
    help="Edges per atom; the engine takes max-atoms x max-neighbors edges.",
)
@click.option("--device-id", type=click.IntRange(min=0), default=0, show_default=True)
def compile_engine_command(
    model: Path, output: Path, max_atoms: int, max_neighbors: int, device_id: int
) -> None:
    """Build MODEL's TensorRT engine on this GPU into an EP-context file that loads
    without rebuilding (MODEL: a --no-float64 export)."""
    from allegro_deploy.exporters.compile import compile_engine
    from allegro_deploy.runtime.backends import Profile

    profile = Profile(max_atoms, max_neighbors)
    compile_engine(model, output, profile=profile, device_id=device_id, log=click.echo)


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--data",
    "data_file",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Structures (any ASE-readable file); its energy/forces/stress labels are used too.",
)
@click.option(
    "--precisions",
    help=f"For a checkpoint: comma-separated, of {','.join(PRECISIONS)} (default: all).",
)
@click.option(
    "--reference",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="For an .onnx MODEL: checkpoint or float64 export giving the float64 reference.",
)
@click.option("--max-structures", type=click.IntRange(min=1), help="Check the first N only.")
@click.option(
    "--md-steps",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="NVE steps (1 fs, 300 K) from the largest structure per precision, for the drift.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("check"),
    show_default=True,
    help="Folder for report.json, report.md and the figures.",
)
@click.option(
    "--threshold",
    "thresholds",
    multiple=True,
    help="METRIC=VALUE, repeatable, e.g. force_rmse=5 (meV/Å): fail above it. Metrics: "
    "energy_mae energy_max (meV/atom), force_mae force_rmse force_max (meV/Å), "
    "force_relative, stress_mae stress_max (meV/Å³), drift (meV/atom/ps).",
)
@_label_key_options
def check(
    model: Path,
    data_file: Path,
    precisions: str | None,
    reference: Path | None,
    max_structures: int | None,
    md_steps: int,
    out: Path,
    thresholds: tuple[str, ...],
    energy_key: str,
    forces_key: str,
    stress_key: str,
) -> None:
    """Errors of MODEL (a checkpoint or an .onnx export) at reduced precisions against a
    float64 reference and the labels of --data; exit status 1 when a threshold is exceeded.

    A checkpoint is exported at each precision; without a GPU, tf32/fp16/bf16 are emulated
    on CPU (every matrix-product input rounded to the format, float32 accumulation).
    """
    from allegro_deploy.check import parse_threshold, run_check
    from allegro_deploy.models.labels import LabelKeys

    report = run_check(
        model,
        data_file,
        out,
        keys=LabelKeys(energy_key, forces_key, stress_key),
        precisions=None if precisions is None else [p.strip() for p in precisions.split(",")],
        reference=reference,
        max_structures=max_structures,
        md_steps=md_steps,
        thresholds=dict(parse_threshold(t) for t in thresholds),
    )
    click.echo(
        f"wrote {out / 'report.json'}, {out / 'report.md'} and {len(report.figures)} figures"
    )
    if report.failures:
        raise click.ClickException("threshold exceeded: " + "; ".join(report.failures))


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("data", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("evaluate"),
    show_default=True,
    help="Folder for predictions.extxyz, structures.csv, metrics.json/.md and parity.png.",
)
@_runtime_options
@_label_key_options
@click.option("--index", default=":", show_default=True, help="ASE frame selection, e.g. ::10.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
def evaluate(
    model: Path,
    data: Path,
    out: Path,
    backend: str,
    threads: int | None,
    energy_key: str,
    forces_key: str,
    stress_key: str,
    index: str,
    batch_size: int,
) -> None:
    """Predictions of MODEL (a checkpoint or an .onnx export) on DATA (any ASE-readable
    file) beside its labels: errors per structure and per species, and parity plots."""
    from allegro_deploy.evaluate import evaluate as run
    from allegro_deploy.models.labels import LabelKeys

    evaluation = run(
        model,
        data,
        backend=backend,
        threads=threads,
        keys=LabelKeys(energy_key, forces_key, stress_key),
        index=index,
        batch_size=batch_size,
    )
    paths = evaluation.write(out)
    click.echo(evaluation.markdown().split("\n\n", 1)[1].strip())
    click.echo("wrote " + ", ".join(str(path) for path in paths))


def _parse_sizes(ctx: click.Context, param: click.Parameter, value: str) -> tuple[int, ...]:
    """``"108,864"`` -> ``(108, 864)``, each at least 1."""
    try:
        sizes = tuple(int(item) for item in value.split(","))
    except ValueError as error:
        raise click.BadParameter("expected comma-separated atom counts, e.g. 108,864") from error
    if min(sizes) < 1:
        raise click.BadParameter(f"sizes must be at least 1 atom, got {value}")
    return sizes


@main.command()
@click.argument("model", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--sizes",
    callback=_parse_sizes,
    default="108,864,4000",
    show_default=True,
    help="Atoms of each fcc cell (rounded to the nearest 4·n1·n2·n3), comma-separated.",
)
@click.option(
    "--element",
    help="Pure fcc cells of this metal (default: the training data's composition and "
    "neighbour density, else the model's first metal).",
)
@click.option(
    "--molecules",
    type=click.IntRange(min=0),
    default=64,
    show_default=True,
    help="21-atom molecules timed in one call and in one call each (0: none).",
)
@click.option(
    "--implementations",
    help="Comma-separated subset of official, torch, ort-cpu, openvino, ort-cuda, tensorrt "
    "to compare (default: all that run here).",
)
@click.option("--repeats", type=click.IntRange(min=1), default=5, show_default=True)
@click.option(
    "--warmup",
    type=click.IntRange(min=1),
    help="Untimed calls before the timed ones [default: 2, ONNX Runtime's steady state].",
)
@_threads_option
@click.option(
    "--memory/--no-memory",
    default=True,
    show_default=True,
    help="Measure peak memory in a fresh process per backend and workload.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write bench.json and bench_scaling.png here.",
)
def bench(
    model: Path,
    sizes: tuple[int, ...],
    element: str | None,
    molecules: int,
    implementations: str | None,
    repeats: int,
    warmup: int | None,
    threads: int | None,
    memory: bool,
    out: Path | None,
) -> None:
    """Time energy + forces of MODEL (checkpoint or .onnx) in every implementation here."""
    import tempfile

    from allegro_deploy.bench import (
        WARMUP,
        BenchModel,
        default_cases,
        implementations_here,
        run_bench,
    )
    from allegro_deploy.runtime.progress import output_console

    console = output_console()
    bench_model = BenchModel.read(model)
    training = None if element else bench_model.training
    cases = default_cases(bench_model.species, sizes, molecules, element, training)
    if training is not None:
        console.print(f"workload: {training.describe()} (--element X for pure X instead)")
    with tempfile.TemporaryDirectory(prefix="allegro-bench-") as workdir:
        only = [name.strip() for name in implementations.split(",")] if implementations else None
        specs, unavailable = implementations_here(
            model, workdir, threads, only, log=lambda line: console.print(line)
        )
        report = run_bench(
            specs,
            cases,
            bench_model,
            repeats=repeats,
            warmup=WARMUP if warmup is None else warmup,
            memory=memory,
            threads=threads,
            unavailable=unavailable,
        )
    console.print(report.table())
    for name, why in report.unavailable.items():
        console.print(f"not run: {name}: {why}")
    if out is not None:
        for path in report.write(out):
            console.print(f"wrote {path}")
