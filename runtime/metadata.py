"""The exported file's contract, and its metadata read without loading the graph (no onnx,
no torch).

An exported file (see :mod:`allegro_deploy.exporters.onnx_export`) carries its model
description in the ONNX ``metadata_props``: ``format`` (``allegro-deploy-onnx``),
``format_version``, ``species``, ``atomic_numbers``, ``r_max``, ``pair_cutoffs``,
``energy_shifts``, ``dtype``, ``precision`` and ``precision_mode``, ``float64``,
``target``, ``inputs`` and ``outputs`` (JSON lists of tensor specs), and provenance keys
the runtime does not read (``model_config``, ``parameters``, ``gemm_flops_per_edge`` and
``gemm_flops_per_call``: the matrix-product FLOPs of an energy + forces evaluation, for
``bench``'s FLOP floor; ``exporter``, ``exporter_version``, ``torch_version``,
``checkpoint_sha256``: of the source checkpoint, empty when exported from memory).
:meth:`ModelMetadata.to_props` writes them, :meth:`ModelMetadata.from_props` reads and
checks them.
Files written before ``precision`` existed run at the full precision of their dtype;
files written before ``float64`` existed (format version 1) hold float64 tensors.
:func:`tensor_specs` is the one definition of each target's tensors, for the exporter
that writes them and the runtime that feeds them. :func:`read_metadata` reads the
metadata straight from the protobuf bytes, in milliseconds even for large files, and
checks that this runtime can run the file.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, BinaryIO

FORMAT = "allegro-deploy-onnx"
FORMAT_VERSION = 2
"""Written by this version: 2 added ``float64`` (float32-only files) and ``energy_shifts``."""
SUPPORTED_FORMAT_VERSIONS = (1, 2)
TARGETS = ("structures", "pairs")
DTYPES = ("float32", "float64")
PRECISIONS = {
    "fp64": "float64",
    "fp32": "float32",
    "tf32": "float32",
    "fp16": "float32",
    "bf16": "float32",
}
"""Precision of the matrix products -> the dtype it belongs to; the one list of
precision names."""
FULL_PRECISIONS = {"float64": "fp64", "float32": "fp32"}
"""Model dtype -> its full precision (the others are reduced precisions of float32)."""
PRECISION_MODES = ("real", "emulated")
OP_DOMAIN = "allegro"
"""ONNX domain of the custom tensor-product nodes; their function bodies travel in the file."""

# ONNX ModelProto field numbers (onnx.proto): metadata_props is a repeated
# StringStringEntryProto {key = 1, value = 2}.
_METADATA_PROPS = 14
_KEY, _VALUE = 1, 2
_VARINT, _FIXED64, _LENGTH_DELIMITED, _FIXED32 = 0, 1, 2, 5


class MetadataError(ValueError):
    """A model file this runtime cannot run; the message says why."""


# The graph's tensor names, defined once: :func:`tensor_specs` and the code that feeds
# and reads the tensors use these.
POSITIONS, SPECIES, EDGE_INDEX = "positions", "species", "edge_index"
EDGE_SHIFTS, EDGE_VECTORS = "edge_shifts", "edge_vectors"
STRUCTURE_INDEX, N_STRUCTURES, N_LOCAL = "structure_index", "n_structures", "n_local"
ENERGY, ATOMIC_ENERGIES, FORCES = "energy", "atomic_energies", "forces"
VIRIAL, ATOMIC_VIRIALS = "virial", "atomic_virials"
ATOMIC_ENERGIES_UNSHIFTED, PAIR_FORCES = "atomic_energies_unshifted", "pair_forces"


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as documented in a file's metadata.

    shape: sizes, ints for fixed axes and names (``atoms``, ``edges``, ...) for dynamic ones.
    """

    name: str
    dtype: str
    shape: tuple[str | int, ...]
    unit: str
    description: str


def tensor_specs(
    target: str, float64: bool = True
) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The inputs and outputs of a ``target`` file, in graph order (N atoms, E directed
    edges, S structures; all sizes dynamic).

    float64: the file holds float64 tensors (geometry inputs and all outputs float64).
        Without (a float32-only file, for TensorRT and other runtimes without float64),
        the runtime computes edge vectors, per-species energy shifts and every sum over
        atoms in float64 outside the graph: both targets take edge vectors and return
        the atomic energies less their species' shift (metadata ``energy_shifts``) and
        the pair forces ∂E/∂r_ij, in float32.
    """
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; choose one of {', '.join(TARGETS)}")
    edge_vectors = TensorSpec(
        EDGE_VECTORS, "float64" if float64 else "float32", ("edges", 3), "Å", "r_ij = x_j - x_i"
    )
    species_of = "local + ghost atoms" if target == "pairs" else "each atom"
    species = TensorSpec(SPECIES, "int64", ("atoms",), "", f"species index of {species_of}")
    edge_index = TensorSpec(EDGE_INDEX, "int64", (2, "edges"), "", "rows (center, neighbor)")
    n_local = TensorSpec(N_LOCAL, "int64", (), "", "local atoms, the first n_local")
    if not float64:
        energies = "local_atoms" if target == "pairs" else "atoms"
        inputs = (edge_vectors, species, edge_index)
        return (*inputs, n_local) if target == "pairs" else inputs, (
            TensorSpec(
                ATOMIC_ENERGIES_UNSHIFTED,
                "float32",
                (energies,),
                "eV",
                "per-atom energy less its species' energy_shifts (added in float64 outside)",
            ),
            TensorSpec(PAIR_FORCES, "float32", ("edges", 3), "eV/Å", "∂E/∂r_ij"),
        )
    if target == "pairs":
        return (edge_vectors, species, edge_index, n_local), (
            TensorSpec(ATOMIC_ENERGIES, "float64", ("local_atoms",), "eV", "local atoms"),
            TensorSpec(PAIR_FORCES, "float64", ("edges", 3), "eV/Å", "∂E/∂r_ij"),
        )
    return (
        TensorSpec(POSITIONS, "float64", ("atoms", 3), "Å", "Cartesian positions"),
        species,
        edge_index,
        TensorSpec(
            EDGE_SHIFTS,
            "float64",
            ("edges", 3),
            "Å",
            "r_ij = positions[neighbor] - positions[center] + edge_shifts",
        ),
        TensorSpec(STRUCTURE_INDEX, "int64", ("atoms",), "", "structure of each atom"),
        TensorSpec(N_STRUCTURES, "int64", (), "", "number of structures"),
    ), (
        TensorSpec(ENERGY, "float64", ("structures",), "eV", "total energy"),
        TensorSpec(ATOMIC_ENERGIES, "float64", ("atoms",), "eV", "per-atom energy"),
        TensorSpec(FORCES, "float64", ("atoms", 3), "eV/Å", "-dE/dr"),
        TensorSpec(
            VIRIAL,
            "float64",
            ("structures", 3, 3),
            "eV",
            "-dE/dε (symmetric strain); stress = -virial / volume",
        ),
        TensorSpec(
            ATOMIC_VIRIALS,
            "float64",
            ("atoms", 3, 3),
            "eV",
            "per-atom virial, each edge split half to center, half to neighbor",
        ),
    )


@dataclass(frozen=True)
class ModelMetadata:
    """What a model file says about itself.

    species: chemical symbols in the order of the model's species indices.
    atomic_numbers: (n_species,) atomic numbers in the same order.
    r_max: Å, the largest cutoff.
    pair_cutoffs: Å, ``pair_cutoffs[center][neighbor]`` per species pair (<= r_max).
    dtype: float32 or float64, the precision of the network body.
    precision: fp64, fp32, tf32, fp16 or bf16, the arithmetic of the matrix products of
        the MLPs and tensor products (tf32: the engine must enable TF32).
    precision_mode: ``real`` (products in the reduced type) or ``emulated`` (rounded in
        float32).
    float64: the graph holds float64 tensors; False for a float32-only file (see
        :func:`tensor_specs`).
    energy_shifts: eV, (n_species,) per-species energy shifts, which a float32-only file's
        runtime adds in float64 (empty in files that predate them).
    target: ``structures`` (ASE, i-PI, batched evaluation) or ``pairs`` (LAMMPS ML-IAP).
    format_version: version of the file layout.
    inputs, outputs: the graph's tensors in order.
    raw: every ``metadata_props`` entry as stored (strings).
    """

    species: tuple[str, ...]
    atomic_numbers: tuple[int, ...]
    r_max: float
    pair_cutoffs: tuple[tuple[float, ...], ...]
    dtype: str
    precision: str
    precision_mode: str
    float64: bool
    energy_shifts: tuple[float, ...]
    target: str
    format_version: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    raw: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def cutoff(self) -> float:
        """Å, the largest pair cutoff: no edge beyond it contributes, so neighbor lists
        stop there (r_max itself may be larger)."""
        return max(c for row in self.pair_cutoffs for c in row)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(spec.name for spec in self.outputs)

    def describe(self) -> list[str]:
        """Human-readable lines: format, target, precision, species, cutoffs, provenance
        and the graph's tensors (``allegro-deploy info``)."""
        raw = self.raw
        numbers = zip(self.species, self.atomic_numbers, strict=True)
        lines = [
            f"format: {FORMAT} version {self.format_version}    target: {self.target}    "
            f"dtype: {self.dtype}    precision: {self.precision} ({self.precision_mode})    "
            f"float64 tensors: {str(self.float64).lower()}",
            "species: " + ", ".join(f"{s} (Z={z})" for s, z in numbers),
            f"r_max: {self.r_max} Å    pair cutoffs (Å, rows = center): "
            f"{[list(row) for row in self.pair_cutoffs]}",
            f"exported by {raw.get('exporter')} {raw.get('exporter_version')} "
            f"(torch {raw.get('torch_version')}) from checkpoint sha256 "
            f"{raw.get('checkpoint_sha256') or '(none)'}",
        ]
        for kind, specs in (("inputs", self.inputs), ("outputs", self.outputs)):
            lines.append(f"{kind}:")
            for spec in specs:
                comma = "," if len(spec.shape) == 1 else ""
                shape = "(" + ", ".join(str(d) for d in spec.shape) + comma + ")"
                unit = f" [{spec.unit}]" if spec.unit else ""
                lines.append(
                    f"    {spec.name:<16} {spec.dtype:<8} {shape:<20}{unit} {spec.description}"
                )
        return lines

    def to_props(self, **provenance: str) -> dict[str, str]:
        """``metadata_props`` (key -> string) of a file with this metadata, the inverse of
        :meth:`from_props`; ``provenance`` adds keys the runtime does not read (exporter,
        versions, checkpoint hash, model configuration)."""
        return {
            "format": FORMAT,
            "format_version": str(self.format_version),
            "species": json.dumps(list(self.species)),
            "atomic_numbers": json.dumps(list(self.atomic_numbers)),
            "r_max": repr(float(self.r_max)),
            "pair_cutoffs": json.dumps([list(row) for row in self.pair_cutoffs]),
            "energy_shifts": json.dumps(list(self.energy_shifts)),
            "dtype": self.dtype,
            "float64": json.dumps(self.float64),
            "precision": self.precision,
            "precision_mode": self.precision_mode,
            "target": self.target,
            "inputs": json.dumps([asdict(s) for s in self.inputs], ensure_ascii=False),
            "outputs": json.dumps([asdict(s) for s in self.outputs], ensure_ascii=False),
            **provenance,
        }

    @classmethod
    def from_props(cls, props: Mapping[str, str], source: str = "model") -> ModelMetadata:
        """Parse and check ``metadata_props`` (key -> string) of the file named ``source``.

        Raises :class:`MetadataError` when the file is not an allegro-deploy export, was
        written in a format version this runtime does not read, or names an unknown
        target or dtype.
        """
        found = props.get("format")
        if found != FORMAT:
            what = f"its format is {found!r}" if found else "it has no 'format' metadata"
            raise MetadataError(
                f"{source} is not an allegro-deploy model file ({what}, expected {FORMAT!r}); "
                "export one with `allegro-deploy export`"
            )
        supported = ", ".join(str(v) for v in SUPPORTED_FORMAT_VERSIONS)
        try:
            version = int(props.get("format_version", ""))
        except ValueError:
            raise MetadataError(
                f"{source} has an invalid format_version {props.get('format_version')!r}; "
                f"this runtime reads format version {supported}"
            ) from None
        if version not in SUPPORTED_FORMAT_VERSIONS:
            advice = (
                "upgrade allegro-deploy to run it"
                if version > max(SUPPORTED_FORMAT_VERSIONS)
                else "re-export it with this version of allegro-deploy"
            )
            raise MetadataError(
                f"{source} has format version {version}, but this runtime reads format "
                f"version {supported}; {advice}"
            )
        target, dtype = props.get("target"), props.get("dtype")
        if target not in TARGETS:
            raise MetadataError(
                f"{source} has unknown target {target!r}; this runtime knows {', '.join(TARGETS)}"
            )
        if dtype not in DTYPES:
            raise MetadataError(
                f"{source} has unknown dtype {dtype!r}; this runtime knows {', '.join(DTYPES)}"
            )
        precision = props.get("precision", FULL_PRECISIONS[dtype])
        mode = props.get("precision_mode", "real")
        if PRECISIONS.get(precision) != dtype or mode not in PRECISION_MODES:
            raise MetadataError(
                f"{source} has unknown precision {precision!r} ({mode!r}) for dtype {dtype}; "
                f"this runtime knows {', '.join(PRECISIONS)} (real or emulated)"
            )
        float64 = props.get("float64", "true")
        if float64 not in ("true", "false"):
            raise MetadataError(f"{source} has float64 = {float64!r}; expected true or false")
        if float64 == "false" and dtype != "float32":
            raise MetadataError(f"{source} is float32-only (float64 = false) but of dtype {dtype}")
        try:
            species = tuple(str(s) for s in _json(props, "species"))
            energy_shifts = tuple(float(e) for e in json.loads(props.get("energy_shifts", "[]")))
            atomic_numbers = tuple(int(z) for z in _json(props, "atomic_numbers"))
            pair_cutoffs = tuple(
                tuple(float(c) for c in row) for row in _json(props, "pair_cutoffs")
            )
            inputs = tuple(_spec(s) for s in _json(props, "inputs"))
            outputs = tuple(_spec(s) for s in _json(props, "outputs"))
            r_max = float(props["r_max"])
        except (KeyError, TypeError, ValueError) as error:
            raise MetadataError(f"{source} has incomplete or invalid metadata: {error}") from None
        n = len(species)
        if {len(atomic_numbers), len(pair_cutoffs), *(len(row) for row in pair_cutoffs)} != {n}:
            raise MetadataError(
                f"{source}: species, atomic_numbers and pair_cutoffs disagree in length"
            )
        if len(energy_shifts) != n and (energy_shifts or float64 == "false"):
            raise MetadataError(
                f"{source}: energy_shifts has {len(energy_shifts)} entries for {n} species"
            )
        if not (math.isfinite(r_max) and r_max > 0 and n):
            raise MetadataError(f"{source}: r_max must be a positive number of Å, got {r_max}")
        if not all(math.isfinite(c) and 0 < c <= r_max for row in pair_cutoffs for c in row):
            raise MetadataError(
                f"{source}: every pair cutoff must be in (0, r_max = {r_max}] Å, got "
                f"{[list(row) for row in pair_cutoffs]}"
            )
        if not all(math.isfinite(e) for e in energy_shifts):
            raise MetadataError(f"{source}: energy_shifts must be finite, got {energy_shifts}")
        return cls(
            species=species,
            atomic_numbers=atomic_numbers,
            r_max=r_max,
            pair_cutoffs=pair_cutoffs,
            dtype=dtype,
            precision=precision,
            precision_mode=mode,
            float64=float64 == "true",
            energy_shifts=energy_shifts,
            target=target,
            format_version=version,
            inputs=inputs,
            outputs=outputs,
            raw=MappingProxyType(dict(props)),
        )


def read_metadata(path: str | Path) -> ModelMetadata:
    """Read and check the metadata of the model file at ``path``.

    Only the top-level protobuf fields are walked; the graph and weights are skipped
    over, not read. Raises ``FileNotFoundError`` for a missing file and
    :class:`MetadataError` for a file that is not an ONNX model, not an allegro-deploy
    export, or of an unsupported format version, target or dtype.
    """
    path = Path(path)
    if path.is_dir():
        raise MetadataError(f"{path} is a directory, not a model file")
    with open(path, "rb") as file:
        try:
            props = _metadata_props(file, path.stat().st_size)
        except (ValueError, UnicodeDecodeError):
            raise MetadataError(
                f"{path} is not an ONNX file, so not an allegro-deploy model file"
            ) from None
    return ModelMetadata.from_props(props, str(path))


def _json(props: Mapping[str, str], key: str) -> Any:
    return json.loads(props[key])


def _spec(entry: Mapping[str, Any]) -> TensorSpec:
    return TensorSpec(
        name=str(entry["name"]),
        dtype=str(entry["dtype"]),
        shape=tuple(entry["shape"]),
        unit=str(entry["unit"]),
        description=str(entry["description"]),
    )


def _varint(stream: BinaryIO) -> int:
    """Protobuf base-128 varint read from ``stream``."""
    value = 0
    for shift in range(0, 64, 7):
        byte = stream.read(1)
        if not byte:
            raise ValueError("truncated varint")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    raise ValueError("varint too long")


def _fields(stream: BinaryIO, end: int, wanted: int) -> Iterator[bytes]:
    """Payloads of the length-delimited fields numbered ``wanted`` of the protobuf message
    in ``stream`` up to offset ``end``; other fields are skipped without being read."""
    while stream.tell() < end:
        tag = _varint(stream)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ValueError("field number 0")
        if wire == _VARINT:
            _varint(stream)
        elif wire == _LENGTH_DELIMITED:
            length = _varint(stream)
            if stream.tell() + length > end:
                raise ValueError("truncated field")
            if number == wanted:
                yield stream.read(length)
            else:
                stream.seek(length, io.SEEK_CUR)
        elif wire in (_FIXED64, _FIXED32):
            stream.seek(8 if wire == _FIXED64 else 4, io.SEEK_CUR)
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if stream.tell() != end:
        raise ValueError("truncated message")


def _metadata_props(stream: BinaryIO, size: int) -> dict[str, str]:
    """``metadata_props`` of the serialized ONNX ModelProto of ``size`` bytes in ``stream``."""
    props: dict[str, str] = {}
    for entry in _fields(stream, size, _METADATA_PROPS):
        key = b"".join(_fields(io.BytesIO(entry), len(entry), _KEY)).decode()
        value = b"".join(_fields(io.BytesIO(entry), len(entry), _VALUE)).decode()
        props[key] = value
    return props
