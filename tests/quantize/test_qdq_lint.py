"""Q/DQ lint: a clean TensorRT-form graph passes; planted violations are flagged by code."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from quantize.__main__ import main as cli
from runtime.errors import ArtifactError, ConfigError
from runtime.qdq_lint import Severity, lint_qdq, resolve_ignore, sensitive_scopes


def _const(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def qdq_conv(
    *,
    act_zp=0,
    act_dtype=np.int8,
    act_scale=(0.02,),
    quantized_bias=False,
    weight_axis=0,
    conv="Conv",
    float_only_consumer=False,
):
    """input -> Q -> DQ -> Conv(weight DQ, bias) -> output; knobs plant one violation each."""
    cin, cout = 4, 8
    rng = np.random.default_rng(0)
    w_shape = (cout, cin, 3, 3) if conv == "Conv" else (cin, cout, 3, 3)
    w_q = rng.integers(-127, 128, w_shape).astype(np.int8)
    n_scales = w_shape[weight_axis]
    inits = [
        _const(
            "x_scale", np.asarray(act_scale, np.float32).reshape(-1) if len(act_scale) > 1 else np.float32(act_scale[0])
        ),
        _const(
            "x_zp", (np.full(len(act_scale), act_zp) if len(act_scale) > 1 else np.asarray(act_zp)).astype(act_dtype)
        ),
        _const("w_q", w_q),
        _const("w_scale", np.full(n_scales, 0.01, np.float32)),
        _const("w_zp", np.zeros(n_scales, np.int8)),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "x_scale", "x_zp"], ["xq"], name="q_in", axis=1),
        helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zp"], ["xdq"], name="dq_in", axis=1),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zp"], ["w"], name="dq_w", axis=weight_axis),
    ]
    if quantized_bias:
        inits += [
            _const("b_q", np.zeros(cout, np.int32)),
            _const("b_scale", np.full(cout, 2e-4, np.float32)),
            _const("b_zp", np.zeros(cout, np.int32)),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zp"], ["b"], name="dq_b", axis=0))
    else:
        inits.append(_const("b", np.zeros(cout, np.float32)))
    nodes.append(helper.make_node(conv, ["xdq", "w", "b"], ["y"], name="conv", pads=[1, 1, 1, 1]))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if float_only_consumer:
        nodes.append(helper.make_node("Max", ["xdq", "xdq"], ["m"], name="max"))
        outputs.append(helper.make_tensor_value_info("m", TensorProto.FLOAT, None))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, cin, 8, 8])],
        outputs,
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_clean_tensorrt_form_passes():
    rep = lint_qdq(qdq_conv())
    assert rep.passed, [str(f) for f in rep.findings]
    assert rep.int8_ops == ("conv",) and rep.quantize_nodes == 1 and rep.dequantize_nodes == 2
    assert not rep.warnings


def test_clean_conv_transpose_with_axis_1_passes():
    assert lint_qdq(qdq_conv(conv="ConvTranspose", weight_axis=1)).passed


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"act_zp": 3}, "asymmetric-zero-point"),
        ({"quantized_bias": True}, "quantized-bias"),
        ({"act_scale": (0.01, 0.02, 0.03, 0.04)}, "per-channel-activation"),
        ({"act_dtype": np.uint8}, "non-int8-type"),
        ({"conv": "ConvTranspose", "weight_axis": 0}, "weight-axis"),
    ],
)
def test_planted_violations_are_errors(kwargs, code):
    rep = lint_qdq(qdq_conv(**kwargs))
    assert not rep.passed
    assert code in rep.codes(Severity.ERROR), [str(f) for f in rep.findings]


def test_asymmetric_message_names_the_fix():
    rep = lint_qdq(qdq_conv(act_zp=5))
    msg = next(f.message for f in rep.errors if f.code == "asymmetric-zero-point")
    assert "[5]" in msg and "ActivationSymmetric" in msg


def test_float_only_consumer_is_a_warning_not_an_error():
    rep = lint_qdq(qdq_conv(float_only_consumer=True))
    assert rep.passed
    assert "float-only-op-quantized" in rep.codes(Severity.WARNING)
    assert next(f for f in rep.warnings if f.code == "float-only-op-quantized").node == "Max"


def test_float_model_is_not_an_int8_model(lanmsff_tiny_onnx):
    rep = lint_qdq(lanmsff_tiny_onnx)
    assert not rep.passed and "no-int8-ops" in rep.codes(Severity.ERROR)


def test_lint_cli_exit_codes(tmp_path, capsys):
    good, bad = tmp_path / "good.onnx", tmp_path / "bad.onnx"
    onnx.save(qdq_conv(), good)
    onnx.save(qdq_conv(act_zp=7), bad)
    assert cli(["lint", str(good)]) == 0
    assert "PASSED" in capsys.readouterr().out
    assert cli(["lint", str(bad)]) == 1
    assert "asymmetric-zero-point" in capsys.readouterr().out
    assert cli(["lint", str(tmp_path / "missing.onnx")]) == 1


def test_missing_or_garbage_file_raises(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model")
    with pytest.raises(ArtifactError):
        lint_qdq(tmp_path / "missing.onnx")
    with pytest.raises(ArtifactError):
        lint_qdq(junk)


def test_sensitive_scopes_of_lanmsff(lanmsff_tiny_onnx):
    model = onnx.load(lanmsff_tiny_onnx)
    sc = sensitive_scopes(model)
    types = {n.name: n.op_type for n in model.graph.node}
    assert {types[n] for n in sc.gates} >= {"Sigmoid", "Gemm", "ConvTranspose", "ReduceMean", "Mul"}
    assert {types[n] for n in sc.pwfs} >= {"Min", "Max", "Sub"}
    assert [types[n] for n in sc.heads] == ["Gemm"]
    assert [types[n] for n in sc.stem] == ["Conv"]
    groups = resolve_ignore(["gates", "type:Sigmoid", sc.stem[0]], model, sc)
    assert groups["gates"] == sc.gates and all(types[n] == "Sigmoid" for n in groups["type:Sigmoid"])
    with pytest.raises(ConfigError, match="neither a group"):
        resolve_ignore(["no_such_node"], model, sc)
