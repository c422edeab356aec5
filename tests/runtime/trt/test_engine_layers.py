"""Realized precision from engine-inspector JSON, TensorRT 10.x and 11.x schemas.

The fixtures are authored from the documented formats (see fixtures/ and runtime/trt/engine_layers.py):
no engine could be built here to capture real output. Both describe the same LANMSFF-like INT8
engine: six conv/GEMM layers, four in INT8, the stem conv and the attention Gemm in FP16.
"""

from __future__ import annotations

import json

import pytest

from runtime.trt.compat import TrtError
from runtime.trt.engine_layers import (
    DEFAULT_MIN_SHARE,
    PrecisionNotRealizedError,
    check_precision,
    dtype_of,
    parse_engine_information,
    require_precision,
)

SCHEMAS = {"10": "inspector_trt10_lanmsff_int8.json", "11": "inspector_trt11_lanmsff_int8.json"}


@pytest.fixture(params=sorted(SCHEMAS))
def report(request, fixtures_dir):
    text = (fixtures_dir / SCHEMAS[request.param]).read_text()
    rep = parse_engine_information(text)
    assert rep.schema == request.param
    return rep


def test_both_schemas_give_the_same_layers(report):
    assert len(report.layers) == 11
    assert report.io_tensors == ("input", "logits")
    compute = {
        layer.name.split(" + ")[1] if " + " in layer.name else layer.name: layer.precision
        for layer in report.compute_layers
    }
    assert compute == {
        "/stem/Conv": "fp16",
        "/block1/dw/Conv": "int8",
        "/block1/pw/Conv": "int8",
        "/massatt/fc1/Gemm": "fp16",
        "/block2/Conv": "int8",
        "/head/fc/Gemm": "int8",
    }
    assert report.counts() == {"fp16": 2, "int8": 4}
    assert report.share("int8") == pytest.approx(4 / 6)
    # Reformat, Q/DQ scale, pooling and pointwise layers are not counted.
    kinds = {layer.layer_type for layer in report.layers if not layer.compute}
    assert kinds == {"Reformat", "Scale", "CaskPooling", "PointWiseV2"}


def test_int8_passes_default_threshold_and_fails_a_stricter_one(report):
    ok = require_precision(report, "int8")
    assert ok.passed and ok.min_share == DEFAULT_MIN_SHARE["int8"] and ok.compute_layers == 6
    strict = check_precision(report, "int8", min_share=0.8)
    assert not strict.passed
    assert sorted(strict.offenders) == [
        "massatt.fc1.weight + /massatt/fc1/Gemm + /massatt/Relu (fp16)",
        "stem.weight + /stem/Conv + /stem/Relu (fp16)",
    ]
    with pytest.raises(PrecisionNotRealizedError, match=r"requested int8 but int8 realized in 67% of 6") as err:
        require_precision(report, "int8", 0.8)
    assert "Q/DQ" in str(err.value) and err.value.check.share == pytest.approx(4 / 6)


def test_requesting_fp16_of_an_int8_engine_fails(report):
    check = check_precision(report, "fp16")
    assert not check.passed and check.share == pytest.approx(2 / 6)
    assert "fp16 realized in 33%" in check.summary()


def test_names_only_engine_is_an_error(fixtures_dir):
    with pytest.raises(TrtError, match="without detailed profiling verbosity"):
        parse_engine_information((fixtures_dir / "inspector_trt10_names_only.json").read_text())


@pytest.mark.parametrize("bad,match", [("not json", "not JSON"), ("{}", "no 'Layers'"), ("42", "object or list")])
def test_malformed_output(bad, match):
    with pytest.raises(TrtError, match=match):
        parse_engine_information(bad)


def test_layer_list_without_wrapper_and_schema_guess():
    layers = [
        {
            "Name": "c",
            "LayerType": "CaskConvolution",
            "ParameterType": "Convolution",
            "Inputs": [{"Name": "x", "Dimensions": [1], "Format/Datatype": "Row major linear FP32"}],
            "Outputs": [],
        }
    ]
    rep = parse_engine_information(json.dumps(layers))
    assert rep.schema == "10" and rep.share("fp32") == 1.0
    layers[0]["Inputs"] = [{"Name": "x", "Dimensions": [1], "Format": "kLINEAR", "Datatype": "Half"}]
    rep = parse_engine_information(layers)
    assert rep.schema == "11" and rep.share("fp16") == 1.0


def test_precision_falls_back_to_weights_then_outputs():
    layer = {
        "Name": "g",
        "LayerType": "gemm",
        "Inputs": [],
        "Weights": {"Type": "Int8", "Count": 4},
        "Outputs": [{"Name": "y", "Format/Datatype": "Row major linear FP32"}],
    }
    assert parse_engine_information([layer]).layers[0].precision == "int8"
    del layer["Weights"]
    assert parse_engine_information([layer]).layers[0].precision == "fp32"


def test_no_compute_layers_never_passes():
    rep = parse_engine_information([{"Name": "r", "LayerType": "Reformat", "Inputs": [], "Outputs": []}])
    assert not check_precision(rep, "fp32").passed


def test_bad_threshold_and_precision():
    rep = parse_engine_information([{"Name": "c", "LayerType": "CaskConvolution", "Inputs": [], "Outputs": []}])
    with pytest.raises(TrtError, match="in \\[0, 1\\]"):
        check_precision(rep, "fp16", 1.5)
    with pytest.raises(TrtError, match="unknown precision"):
        check_precision(rep, "fp8")


@pytest.mark.parametrize(
    "text,dtype",
    [
        ("Row major linear FP32", "fp32"),
        ("Channel major FP16 format where channel % 8 == 0", "fp16"),
        ("Thirty-two wide channel vectorized row major Int8 format", "int8"),
        ("Channel major INT8 format where channel % 16 == 0", "int8"),
        ("Row major linear UInt8 format", "uint8"),
        ("Channel major BFloat16 format where channel % 8 == 0", "bf16"),
        ("Row major linear FP8 format", "fp8"),
        ("Half", "fp16"),
        ("Float", "fp32"),
        ("Int8", "int8"),
        ("Int32", "int32"),
        ("kLINEAR", "unknown"),
        (None, "unknown"),
    ],
)
def test_dtype_of(text, dtype):
    assert dtype_of(text) == dtype


# ---- TensorRT for RTX: the build log's per-layer listing ------------------------------------------------
# Captured from a real TensorRT for RTX 1.7.1 build (no GPU) of an NNCF INT8 lanmsff_tiny with
# ProfilingVerbosity.DETAILED: the VERBOSE "Layers:" message, one line per engine layer.
RTX_LOG = "rtx_build_layers_lanmsff_tiny_int8.txt"


def test_rtx_build_log_gives_per_layer_precision(fixtures_dir):
    from runtime.trt.engine_layers import parse_build_log, precision_table_markdown

    rep = parse_build_log(["Engine generation completed", (fixtures_dir / RTX_LOG).read_text(), "Adding 1 engine(s)"])
    assert rep.schema == "rtx-log" and len(rep.layers) > len(rep.compute_layers) > 30
    by_type = {}
    for layer in rep.compute_layers:
        by_type.setdefault(layer.layer_type, set()).add(layer.precision)
    # Convolutions ("correlation") mostly run Int8; the ConvTransposes ("deconv") read Float.
    assert "int8" in by_type["correlation"] and by_type["deconv"] == {"fp32"}
    assert not any(layer.compute for layer in rep.layers if layer.layer_type == "kgen")
    for layer in rep.compute_layers:
        if layer.precision == "int8":  # an Int8 convolution has Int8 weights among its constants
            assert "int8" in layer.constant_dtypes, layer
        assert layer.onnx_nodes and any(n.endswith(("Conv", "ConvTranspose", "Gemm")) for n in layer.onnx_nodes)
    check = check_precision(rep, "int8")
    assert check.passed and sum(check.counts.values()) == check.compute_layers
    assert len(check.offenders) == check.compute_layers - check.counts["int8"]
    assert any("ConvTranspose" in o for o in check.offenders)
    md = precision_table_markdown(rep, check, title="t")
    assert md.count("| **int8** |") == check.counts["int8"] and "## Other layers" in md


def test_rtx_build_log_line_parsing():
    from runtime.trt.engine_layers import parse_build_log

    line = (
        "Name: /a/Conv_myl0_2, LayerType: correlation, Inputs: [ { Name: x, Dimensions: [-1,4,8,8], Strides: [1], "
        "StrideOrder: [0], Datatype: Half, Format: (NHWC) Channel major format }], Constants: [ { Name: w, "
        "Dimensions: [4,4,3,3], Datatype: Half, Format: (Linear) Row major linear format }], Outputs: [ { Name: y, "
        "Dimensions: [-1,4,8,8], Datatype: Half, Format: (Linear) Row major linear format }], TacticName: t, "
        "StreamId: 0, Metadata: [ONNX Layer: /a/Conv][ONNX Layer: /a/Relu]"
    )
    fused = line.replace("/a/Conv_myl0_2, LayerType: correlation", "__myl_FcAdd_myl0_3, LayerType: runtime_fusion")
    rep = parse_build_log(
        "Layers:\n" + line + "\n" + fused + "\nName: s, LayerType: shape_call, Inputs: [], "
        "Constants: [], Outputs: [], TacticName: , StreamId: 0, Metadata: \n"
    )
    conv, fc, shape = rep.layers
    assert (conv.precision, conv.compute, conv.onnx_nodes) == ("fp16", True, ("/a/Conv", "/a/Relu"))
    assert fc.compute and fc.layer_type == "runtime_fusion"  # a GEMM compiled with its epilogue
    assert not shape.compute and shape.precision == "unknown"
    with pytest.raises(TrtError, match="no 'Layers:' listing"):
        parse_build_log(["Engine generation completed in 0.4 seconds."])
    with pytest.raises(TrtError, match="has no line of the form"):
        parse_build_log("Layers:\nsomething else entirely")
