"""``check_tensorrt``: each rule of TensorRT's documented ONNX parser support on a graph of
a few nodes that breaks it, and the table it checks against."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from allegro_deploy.cli import main
from allegro_deploy.exporters.tensorrt_check import check_tensorrt
from allegro_deploy.exporters.tensorrt_ops import SUPPORT


def model(
    nodes: list[onnx.NodeProto],
    dtype: int = TensorProto.FLOAT,
    initializers: list[onnx.TensorProto] | None = None,
    opset: int = 18,
    functions: list[onnx.FunctionProto] | None = None,
    extra_inputs: list[onnx.ValueInfoProto] | None = None,
) -> onnx.ModelProto:
    """x (n, 4) -> ... -> y, of element type ``dtype``."""
    graph = oh.make_graph(
        nodes,
        "g",
        [oh.make_tensor_value_info("x", dtype, ["n", 4]), *(extra_inputs or [])],
        [oh.make_tensor_value_info("y", dtype, None)],
        initializers or [],
    )
    imports = [oh.make_opsetid("", opset)]
    if functions:
        imports.append(oh.make_opsetid("allegro", 1))
    return oh.make_model(graph, opset_imports=imports, functions=functions or [])


def reasons(proto: onnx.ModelProto) -> list[str]:
    return [str(finding) for finding in check_tensorrt(proto).findings]


def test_a_supported_float_graph_passes() -> None:
    report = check_tensorrt(model([oh.make_node("Sigmoid", ["x"], ["y"], name="s")]))
    assert report.ok and report.nodes == 1
    assert "every node is supported" in report.summary()


def test_double_tensors_are_named_at_inputs_outputs_and_nodes() -> None:
    found = reasons(model([oh.make_node("Sigmoid", ["x"], ["y"], name="s")], TensorProto.DOUBLE))
    assert found == [
        "input x (graph input): DOUBLE (TensorRT has no float64)",
        "output y (graph output): DOUBLE (TensorRT has no float64)",
        "s (Sigmoid): x is DOUBLE (TensorRT has no float64); it takes BFLOAT16, FLOAT, FLOAT16",
    ]


def test_a_cast_to_double_is_named() -> None:
    cast = oh.make_node("Cast", ["x"], ["d"], name="c", to=TensorProto.DOUBLE)
    back = oh.make_node("Cast", ["d"], ["y"], name="b", to=TensorProto.FLOAT)
    found = reasons(model([cast, back]))
    assert len(found) == 2 and all("d is DOUBLE" in f for f in found)


def test_unsupported_and_unknown_ops_are_named() -> None:
    found = reasons(model([oh.make_node("Det", ["x"], ["y"], name="det")]))
    assert found == ["det (Det): not supported by TensorRT 10.1"]
    found = reasons(model([oh.make_node("Swish", ["x"], ["y"], name="s")], opset=24))
    assert found == [
        "graph (opset): opset 24 is outside 9-20",
        "s (Swish): not in TensorRT 10.1's operator table",
    ]


def test_scatter_nd_with_a_reduction_is_refused_scatter_elements_is_not() -> None:
    indices = numpy_helper.from_array(np.zeros((1, 1), np.int64), "i")
    updates = numpy_helper.from_array(np.ones((1, 4), np.float32), "u")
    scatter_nd = oh.make_node("ScatterND", ["x", "i", "u"], ["y"], name="nd", reduction="add")
    assert reasons(model([scatter_nd], initializers=[indices, updates])) == [
        "nd (ScatterND): attribute reduction is not supported"
    ]
    elements = oh.make_node(
        "ScatterElements", ["x", "i", "u"], ["y"], name="el", reduction="add", axis=0
    )
    assert reasons(model([elements], initializers=[indices, updates])) == []


def test_axes_computed_at_run_time_are_refused() -> None:
    shape = oh.make_node("Shape", ["x"], ["s"], name="shape", start=1)
    axes = oh.make_node("Sub", ["s", "four"], ["axes"], name="sub")
    reduce = oh.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum")
    four = numpy_helper.from_array(np.array([4], np.int64), "four")
    assert reasons(model([shape, axes, reduce], initializers=[four])) == [
        "sum (ReduceSum): input axes must be a constant"
    ]
    zero = numpy_helper.from_array(np.array([0], np.int64), "zero")
    assert (
        reasons(model([oh.make_node("ReduceSum", ["x", "zero"], ["y"])], initializers=[zero])) == []
    )


def test_opset_outside_the_parser_range_is_named() -> None:
    found = reasons(model([oh.make_node("Sigmoid", ["x"], ["y"])], opset=21))
    assert found == ["graph (opset): opset 21 is outside 9-20"]


def test_graph_input_of_unknown_rank_is_named() -> None:
    extra = oh.make_tensor_value_info("z", TensorProto.FLOAT, None)
    add = oh.make_node("Add", ["x", "x"], ["y"])
    assert reasons(model([add], extra_inputs=[extra])) == ["input z (graph input): unknown rank"]


def test_function_bodies_are_checked_with_the_call_site_types() -> None:
    body = oh.make_function(
        "allegro",
        "Twice",
        ["a"],
        ["b"],
        [
            oh.make_node("Cast", ["a"], ["d"], to=TensorProto.DOUBLE, name="widen"),
            oh.make_node("Add", ["d", "d"], ["e"], name="add"),
            oh.make_node("CastLike", ["e", "a"], ["b"], name="narrow"),
        ],
        [oh.make_opsetid("", 18)],
    )
    call = oh.make_node("Twice", ["x"], ["y"], domain="allegro", name="twice")
    found = reasons(model([call], functions=[body]))
    assert found and all(f.startswith("twice > Twice.") and "DOUBLE" in f for f in found)
    orphan = oh.make_node("Other", ["x"], ["y"], domain="allegro", name="other")
    assert reasons(model([orphan], functions=[body])) == [
        "other (allegro.Other): custom op with no function body"
    ]


def test_unknown_version_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="TensorRT 9.0; known: 10.1"):
        check_tensorrt(model([oh.make_node("Sigmoid", ["x"], ["y"])]), "9.0")


def test_table_covers_the_ops_the_exporter_emits() -> None:
    table = SUPPORT["10.1"]
    assert table.opsets == (9, 20)
    assert "DOUBLE" not in set().union(*table.op_types.values())
    for op in ("MatMul", "Gather", "ScatterElements", "Sin", "Sigmoid", "Split", "Where"):
        assert "FLOAT" in table.op_types[op]
    assert table.constant_inputs["ReduceSum"] == "axes"


def test_info_tensorrt_exits_1_on_a_failing_file(tmp_path: Path) -> None:
    path = tmp_path / "double.onnx"
    onnx.save(model([oh.make_node("Sigmoid", ["x"], ["y"], name="s")], TensorProto.DOUBLE), path)
    result = CliRunner().invoke(main, ["info", "--tensorrt", str(path)])
    assert result.exit_code == 1 and "3 would fail" in result.output
    result = CliRunner().invoke(main, ["info", "--tensorrt", str(tmp_path / "x.safetensors")])
    assert result.exit_code != 0


def test_exporters_package_reexports_its_api_and_the_check_needs_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from allegro_deploy.exporters import check_tensorrt, TensorRTReport\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "from allegro_deploy.exporters import ExportError, ExportReport, export_checkpoint\n"
        "from allegro_deploy.exporters import export_model\n"
        "assert export_model.__module__ == 'allegro_deploy.exporters.onnx_export'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
