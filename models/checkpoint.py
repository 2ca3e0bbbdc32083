"""Self-describing model checkpoints: safetensors weights plus a JSON header, no pickle.

Layout: a safetensors file whose metadata key ``allegro_deploy`` holds the JSON header
(format, format_version, model config, species, r_max, dtype, dataset statistics,
metrics, provenance, package versions, a SHA-256 of all tensors and, for resumable
checkpoints, the JSON part of the training state). Tensors are named ``model.<name>``
(the model's state_dict) and ``training_state.<path>`` (tensors of the training state,
e.g. optimizer moments, referenced from the JSON by ``{"__tensor__": name}``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import e3nn
import safetensors.torch
import torch

from .allegro import AllegroModel
from .config import ConfigError, ModelConfig

FORMAT = "allegro-deploy-checkpoint"
FORMAT_VERSION = 1
METADATA_KEY = "allegro_deploy"
MODEL_PREFIX = "model."
STATE_PREFIX = "training_state."
_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
_HEADER_KEYS = ("config", "statistics", "metrics", "provenance", "package_versions")
"""Header entries every checkpoint has (besides format, version and checksum)."""


class CheckpointError(ValueError):
    """A file that is not a readable allegro-deploy checkpoint; the message says why."""


@dataclass
class Checkpoint:
    """A loaded checkpoint. ``model`` is in eval mode; ``training_state`` is None unless
    the file was saved with one (tensors restored in place of their references)."""

    model: AllegroModel
    config: ModelConfig
    statistics: dict[str, Any]
    metrics: dict[str, Any]
    provenance: dict[str, Any]
    package_versions: dict[str, str]
    format_version: int
    training_state: dict[str, Any] | None


def package_versions() -> dict[str, str]:
    """Versions of the packages that determine a checkpoint's numbers."""
    from allegro_deploy import __version__

    return {
        "allegro-deploy": __version__,
        "torch": torch.__version__,
        "e3nn": e3nn.__version__,
        "python": platform.python_version(),
    }


def save_checkpoint(
    path: str | Path,
    model: AllegroModel,
    *,
    statistics: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    training_state: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model`` (weights as they are now) and its description to ``path``.

    statistics, metrics, provenance: JSON-serializable mappings stored in the header.
    training_state: nested dicts/lists of JSON values and tensors (e.g. optimizer state);
        dict keys must be strings.
    The file is written to a temporary name in the same folder and renamed, so an
    interrupted save never leaves a partial checkpoint at ``path``.
    """
    path = Path(path)
    tensors = {MODEL_PREFIX + name: _storable(value) for name, value in model.state_dict().items()}
    header: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "species": list(model.config.species),
        "atomic_numbers": list(model.config.atomic_numbers),
        "r_max": model.config.r_max,
        "model_dtype": model.config.model_dtype,
        "statistics": dict(statistics or {}),
        "metrics": dict(metrics or {}),
        "provenance": dict(provenance or {}),
        "package_versions": package_versions(),
    }
    if training_state is not None:
        header["training_state"] = _flatten(dict(training_state), STATE_PREFIX[:-1], tensors)
    header["tensor_sha256"] = _checksum(tensors)
    data = safetensors.torch.save(tensors, metadata={METADATA_KEY: json.dumps(header)})
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises ``FileNotFoundError`` for a missing file and ``CheckpointError`` for a file that
    is not ours, is from a newer format version, or is truncated or corrupted.
    """
    path = Path(path)
    data = path.read_bytes()
    header = _read_header(path, data)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as error:  # safetensors raises its own error type for bad layouts
        raise CheckpointError(f"{path} is corrupted: {error}") from error
    if _checksum(tensors) != header.get("tensor_sha256"):
        raise CheckpointError(f"{path} is corrupted: its tensors do not match their checksum")
    missing = [key for key in _HEADER_KEYS if key not in header]
    if missing:
        raise CheckpointError(f"{path} is corrupted: its header lacks {missing}")
    try:
        config = ModelConfig.from_dict(header["config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(f"{path} holds an invalid model configuration: {error}") from None
    model = AllegroModel(config)
    weights = {
        name[len(MODEL_PREFIX) :]: value
        for name, value in tensors.items()
        if name.startswith(MODEL_PREFIX)
    }
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:  # torch's missing, unexpected or mis-shaped weights
        first = str(error).strip().splitlines()[-1].strip()
        raise CheckpointError(
            f"{path} is corrupted: its weights do not fit its model configuration ({first})"
        ) from None
    model.to(map_location).eval()
    training_state = header.get("training_state")
    if training_state is not None:
        training_state = _unflatten(training_state, tensors, torch.device(map_location))
    return Checkpoint(
        model=model,
        config=config,
        statistics=header["statistics"],
        metrics=header["metrics"],
        provenance=header["provenance"],
        package_versions=header["package_versions"],
        format_version=header["format_version"],
        training_state=training_state,
    )


def describe(path: str | Path) -> str:
    """Human-readable summary of a checkpoint, as printed by ``allegro-deploy info``."""
    path = Path(path)
    checkpoint = load_checkpoint(path)
    c = checkpoint.config
    lines = [
        f"allegro-deploy checkpoint {path} (format {checkpoint.format_version}, "
        f"{path.stat().st_size / 1e6:.2f} MB)",
        "species: "
        + ", ".join(f"{s} (Z={z})" for s, z in zip(c.species, c.atomic_numbers, strict=True)),
        f"r_max: {c.r_max} Å    model dtype: {c.model_dtype}",
        f"architecture: l_max {c.l_max}, parity {c.parity}, {c.num_layers} layer(s), "
        f"{c.num_scalar_features} scalar / {c.num_tensor_features} tensor features, "
        f"ZBL {'on' if c.zbl else 'off'}",
        f"normalization: avg_num_neighbors {_format(c.avg_num_neighbors)}, "
        f"energy scales {_format(c.per_type_energy_scales)} eV, "
        f"energy shifts {_format(c.per_type_energy_shifts)} eV",
        f"parameters: {checkpoint.model.parameter_count:,}",
        "training state: "
        + (
            f"present (epoch {checkpoint.training_state.get('epoch')}), resumable"
            if checkpoint.training_state is not None
            else "absent"
        ),
    ]
    for title, section in (
        ("dataset statistics (training split)", checkpoint.statistics),
        ("training metrics", checkpoint.metrics),
        ("provenance", checkpoint.provenance),
        ("package versions", checkpoint.package_versions),
    ):
        lines.append(f"{title}:" + ("" if section else " none"))
        lines.extend(_indented(section, "  "))
    return "\n".join(lines)


def _read_header(path: Path, data: bytes) -> dict[str, Any]:
    """Our JSON header from the raw file, or a ``CheckpointError`` saying what the file is."""
    if len(data) < 8:
        detail = "is empty" if not data else f"has only {len(data)} bytes"
        raise CheckpointError(f"{path} {detail}: not an allegro-deploy checkpoint (truncated?)")
    length = int.from_bytes(data[:8], "little")
    if length > _MAX_HEADER_BYTES or length < 2 or data[8:9] != b"{":
        raise CheckpointError(
            f"{path} is not an allegro-deploy checkpoint: it is {_foreign_kind(data)}"
        )
    if 8 + length > len(data):
        raise CheckpointError(
            f"{path} is truncated: its safetensors header needs {8 + length} bytes, "
            f"the file has {len(data)}"
        )
    try:
        layout = json.loads(data[8 : 8 + length])
        metadata = layout.pop("__metadata__", None) or {}
        header = json.loads(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path} is corrupted: unreadable header ({error})") from error
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not an allegro-deploy checkpoint: it is a safetensors file "
            f"({len(layout)} tensors) without an allegro-deploy header"
        )
    version = header.get("format_version")
    if not isinstance(version, int):
        raise CheckpointError(f"{path} is corrupted: format_version is {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version}, but this allegro-deploy "
            f"reads format version {FORMAT_VERSION}; upgrade allegro-deploy to load it"
        )
    try:
        end = 8 + length + max((entry["data_offsets"][1] for entry in layout.values()), default=0)
    except (KeyError, IndexError, TypeError) as error:
        raise CheckpointError(f"{path} is corrupted: bad tensor table ({error!r})") from error
    if end > len(data):
        raise CheckpointError(f"{path} is truncated: {len(data)} bytes of the expected {end}")
    return header


def _foreign_kind(data: bytes) -> str:
    """A short guess at what a non-safetensors file is, from its first bytes."""
    if data.startswith(b"PK\x03\x04"):
        return (
            "a zip archive (a torch.save file such as a nequip .ckpt, or a packaged model); "
            "convert official nequip-allegro files with `allegro-deploy import`"
        )
    if data[:1] == b"\x80" and data[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a pickle file (legacy torch.save format)"
    if data.startswith(b"\x89HDF"):
        return "an HDF5 file"
    if data.startswith(b"\x1f\x8b"):
        return "a gzip-compressed file"
    start = data[:64]
    try:
        text = start.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.reason != "unexpected end of data":
            return "an unrecognized binary file"
        text = start[: error.start].decode("utf-8")
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return f"a text file starting with {text.splitlines()[0][:40]!r}"
    return "an unrecognized binary file"


def _storable(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy that shares no memory with other tensors."""
    return tensor.detach().to("cpu", copy=True).contiguous()


def _checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def refuse_overwriting(output: str | Path, source: str | Path) -> None:
    """Raise ``ValueError`` when ``output`` is the file ``source``: a command never writes
    over its own input."""
    if Path(output).resolve() == Path(source).resolve():
        raise ValueError(f"{output} is also the input file; choose another output file")


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _flatten(value: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON structure of ``value`` with every tensor moved to ``tensors[name...]``."""
    if isinstance(value, torch.Tensor):
        tensors[name] = _storable(value)
        return {"__tensor__": name}
    if isinstance(value, Mapping):
        bad = [key for key in value if not isinstance(key, str)]
        if bad:
            raise TypeError(f"training_state keys must be strings, got {bad!r} under {name}")
        return {key: _flatten(item, f"{name}.{key}", tensors) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_flatten(item, f"{name}.{i}", tensors) for i, item in enumerate(value)]
    return value


def _unflatten(value: Any, tensors: Mapping[str, torch.Tensor], device: torch.device) -> Any:
    """Inverse of :func:`_flatten`."""
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            return tensors[value["__tensor__"]].to(device)
        return {key: _unflatten(item, tensors, device) for key, item in value.items()}
    if isinstance(value, list):
        return [_unflatten(item, tensors, device) for item in value]
    return value


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_format(v) for v in value) + "]"
    return str(value)


def _indented(section: Mapping[str, Any], indent: str) -> list[str]:
    """``key: value`` lines, nested mappings indented below their key; unset (None)
    entries are left out."""
    lines = []
    for key, value in section.items():
        if value is None:
            continue
        if isinstance(value, Mapping) and value:
            lines.append(f"{indent}{key}:")
            lines.extend(_indented(value, indent + "  "))
        else:
            lines.append(f"{indent}{key}: {_format(value)}")
    return lines
