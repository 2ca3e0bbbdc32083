"""Describe an exported ONNX file: its metadata and its op census (``allegro-deploy info``).

Needs only ``onnx`` (no torch); the weights are not loaded.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

CUSTOM_DOMAIN = "allegro"
_JSON_KEYS = ("species", "atomic_numbers", "pair_cutoffs", "inputs", "outputs", "model_config")


def read_metadata(model: onnx.ModelProto) -> dict[str, Any]:
    """``metadata_props`` as a dict, JSON-valued entries decoded."""
    metadata: dict[str, Any] = {}
    for prop in model.metadata_props:
        value: Any = prop.value
        if prop.key in _JSON_KEYS:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        metadata[prop.key] = value
    return metadata


def op_census(model: onnx.ModelProto) -> Counter[str]:
    """Main-graph nodes by op type; ops outside the default domain as ``domain.op``."""
    return Counter(
        f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        for node in model.graph.node
    )


def custom_nodes(model: onnx.ModelProto) -> list[tuple[str, str, dict[str, str]]]:
    """``(name, op, string attributes)`` of each node in the ``allegro`` domain."""
    return [
        (
            node.name,
            node.op_type,
            {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING},
        )
        for node in model.graph.node
        if node.domain == CUSTOM_DOMAIN
    ]


def _tensor_line(spec: dict[str, Any]) -> str:
    shape = (
        "("
        + ", ".join(str(d) for d in spec["shape"])
        + ("," if len(spec["shape"]) == 1 else "")
        + ")"
    )
    unit = f" [{spec['unit']}]" if spec.get("unit") else ""
    return f"    {spec['name']:<16} {spec['dtype']:<8} {shape:<20}{unit} {spec['description']}"


def describe_onnx(path: str | Path) -> str:
    """Human-readable summary of an exported file: metadata, inputs/outputs, op census.

    Raises ``ValueError`` when the file is not ONNX.
    """
    path = Path(path)
    try:
        model = onnx.load(path, load_external_data=False)
    except DecodeError as error:
        raise ValueError(f"{path} is not an ONNX file ({error})") from error
    if not model.HasField("graph"):
        raise ValueError(f"{path} is not an ONNX model: it has no graph")
    meta = read_metadata(model)
    lines = [
        f"ONNX model {path} ({path.stat().st_size / 1e6:.2f} MB, "
        f"IR version {model.ir_version}, "
        + ", ".join(f"{o.domain or 'ai.onnx'} opset {o.version}" for o in model.opset_import)
        + ")",
    ]
    if "format" in meta:
        species = meta.get("species", [])
        numbers = meta.get("atomic_numbers", [])
        lines += [
            f"format: {meta['format']} version {meta.get('format_version')}    "
            f"target: {meta.get('target')}    dtype: {meta.get('dtype')}    precision: "
            f"{meta.get('precision', 'full')} ({meta.get('precision_mode', 'real')})    "
            f"float64 tensors: {meta.get('float64', 'true')}",
            "species: " + ", ".join(f"{s} (Z={z})" for s, z in zip(species, numbers, strict=False)),
            f"r_max: {meta.get('r_max')} Å    pair cutoffs (Å, rows = center): "
            f"{meta.get('pair_cutoffs')}",
            f"exported by {meta.get('exporter')} {meta.get('exporter_version')} "
            f"(torch {meta.get('torch_version')}) from checkpoint sha256 "
            f"{meta.get('checkpoint_sha256') or '(none)'}",
        ]
        for kind in ("inputs", "outputs"):
            lines.append(f"{kind}:")
            lines += [_tensor_line(spec) for spec in meta.get(kind, [])]
    else:
        lines.append("no allegro-deploy metadata (not exported by allegro-deploy)")
        lines += [f"  {key}: {value}" for key, value in meta.items()]
    census = op_census(model)
    lines.append(f"nodes: {sum(census.values())}")
    lines += [f"  {op:<30} {count}" for op, count in census.most_common()]
    custom = custom_nodes(model)
    functions = {(f.domain, f.name) for f in model.functions}
    lines.append(f"custom ({CUSTOM_DOMAIN}) nodes: {len(custom)}")
    for name, op, attributes in custom:
        body = "function body" if (CUSTOM_DOMAIN, op) in functions else "NO function body"
        extra = ", ".join(f"{k}={v}" for k, v in attributes.items())
        lines.append(f"  {name}: {op} ({body}; {extra})")
    return "\n".join(lines)
