"""Describe an exported ONNX file: its metadata and its op census (``allegro-deploy info``).

Needs only ``onnx`` (no torch); the weights are not loaded.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from allegro_deploy.runtime.metadata import OP_DOMAIN, MetadataError, ModelMetadata


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    """Main-graph nodes by op type (``domain.op`` outside the default domain), most
    frequent first."""
    counts = Counter(
        f"{node.domain}.{node.op_type}" if node.domain else node.op_type
        for node in model.graph.node
    )
    return dict(counts.most_common())


def custom_nodes(model: onnx.ModelProto) -> list[tuple[str, str, dict[str, str]]]:
    """``(name, op, string attributes)`` of each node in the ``allegro`` domain."""
    return [
        (
            node.name,
            node.op_type,
            {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING},
        )
        for node in model.graph.node
        if node.domain == OP_DOMAIN
    ]


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
    props = {prop.key: prop.value for prop in model.metadata_props}
    lines = [
        f"ONNX model {path} ({path.stat().st_size / 1e6:.2f} MB, "
        f"IR version {model.ir_version}, "
        + ", ".join(f"{o.domain or 'ai.onnx'} opset {o.version}" for o in model.opset_import)
        + ")",
    ]
    try:
        meta = ModelMetadata.from_props(props, str(path))
    except MetadataError as error:
        lines.append(f"not a runnable allegro-deploy model: {error}")
        lines += [f"  {key}: {value}" for key, value in props.items()]
    else:
        lines += meta.describe()
    counts = op_counts(model)
    lines.append(f"nodes: {sum(counts.values())}")
    lines += [f"  {op:<30} {count}" for op, count in counts.items()]
    custom = custom_nodes(model)
    functions = {(f.domain, f.name) for f in model.functions}
    lines.append(f"custom ({OP_DOMAIN}) nodes: {len(custom)}")
    for name, op, attributes in custom:
        body = "function body" if (OP_DOMAIN, op) in functions else "NO function body"
        extra = ", ".join(f"{k}={v}" for k, v in attributes.items())
        lines.append(f"  {name}: {op} ({body}; {extra})")
    return "\n".join(lines)
