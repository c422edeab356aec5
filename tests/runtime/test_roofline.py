"""runtime.roofline: MAC counts on hand-checked tiny graphs, the INT8 GEMM peak, and the bench columns."""

from __future__ import annotations

import importlib.util
import json
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime import roofline
from runtime.errors import ArtifactError, ConfigError, PipelineError
from runtime.roofline import MacCount, count_macs, gemm_model, measure_peak, roofline_figures

HAS_OV = importlib.util.find_spec("openvino") is not None


def _model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "t", inputs, outputs, list(inits))
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m


def _w(shape, seed=0, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype == np.int8:
        return rng.integers(-127, 128, size=shape, dtype=np.int8)
    return rng.standard_normal(shape).astype(dtype)


def _x(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def conv_model(cin=3, cout=4, k=3, hw=8, group=1, pads=1, qdq=False, weight_only=False) -> onnx.ModelProto:
    """X [N, cin, hw, hw] -> Conv(W [cout, cin/group, k, k]) -> Y; optionally Q/DQ on X and W."""
    nodes, inits = [], []
    x, w = "X", "W"
    if qdq or weight_only:
        inits += [
            numpy_helper.from_array(_w((cout, cin // group, k, k), dtype=np.int8), "Wq"),
            numpy_helper.from_array(np.array(0.02, np.float32), "ws"),
            numpy_helper.from_array(np.array(0, np.int8), "wz"),
        ]
        nodes.append(helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["W"]))
    else:
        inits.append(numpy_helper.from_array(_w((cout, cin // group, k, k)), "W"))
    if qdq:
        inits += [
            numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
            numpy_helper.from_array(np.array(128, np.uint8), "xz"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["X", "xs", "xz"], ["Xq"]),
            helper.make_node("DequantizeLinear", ["Xq", "xs", "xz"], ["Xd"]),
        ]
        x = "Xd"
    nodes.append(helper.make_node("Conv", [x, w], ["Y"], group=group, pads=[pads] * 4, kernel_shape=[k, k]))
    return _model(nodes, [_x("X", ["N", cin, hw, hw])], [_x("Y", None)], inits)


# --------------------------------------------------------------------------------------------
# count_macs
# --------------------------------------------------------------------------------------------
def test_conv_macs_by_hand():
    # Y [N, 4, 8, 8] (pad 1 keeps 8x8); each output sums 3 channels x 3x3 = 27 products
    for n in (1, 3):
        c = count_macs(conv_model(), n)
        assert (c.batch, c.float_macs, c.int8_macs) == (n, n * 4 * 8 * 8 * 27, 0)
        assert c.total_macs == c.float_macs and c.int8_fraction == 0.0


def test_depthwise_and_grouped_conv_macs():
    # depthwise: 4 groups of one channel, 3x3, no pad -> Y [N, 4, 6, 6], 9 products each
    dw = count_macs(conv_model(cin=4, cout=4, group=4, pads=0), 2)
    assert dw.float_macs == 2 * 4 * 6 * 6 * 9
    # grouped 1x1: 4 -> 6 channels in 2 groups -> each output sums 2 input channels
    gr = count_macs(conv_model(cin=4, cout=6, k=1, group=2, pads=0), 2)
    assert gr.float_macs == 2 * 6 * 8 * 8 * 2
    # the same 1x1 ungrouped sums all 4 channels: twice the MACs
    assert count_macs(conv_model(cin=4, cout=6, k=1, pads=0), 2).float_macs == 2 * gr.float_macs


def test_gemm_matmul_convtranspose_macs():
    gemm = _model(
        [helper.make_node("Gemm", ["A", "B"], ["Y"], transB=1)],
        [_x("A", ["N", 16])],
        [_x("Y", None)],
        [numpy_helper.from_array(_w((10, 16)), "B")],
    )
    assert count_macs(gemm, 5).float_macs == 5 * 10 * 16
    mm = _model(
        [helper.make_node("MatMul", ["A", "B"], ["Y"])],
        [_x("A", ["N", 5, 7])],
        [_x("Y", None)],
        [numpy_helper.from_array(_w((7, 3)), "B")],
    )
    assert count_macs(mm, 2).float_macs == 2 * 5 * 3 * 7
    ct = _model(
        [helper.make_node("ConvTranspose", ["X", "W"], ["Y"], strides=[2, 2], kernel_shape=[2, 2])],
        [_x("X", ["N", 2, 4, 4])],
        [_x("Y", None)],
        [numpy_helper.from_array(_w((2, 3, 2, 2)), "W")],
    )
    # every one of the 2x4x4 input values is multiplied into 3 output channels x 2x2 taps
    assert count_macs(ct, 1).float_macs == 2 * 4 * 4 * 3 * 2 * 2


def test_qdq_conv_is_int8_float_conv_is_float(tmp_path):
    q = count_macs(conv_model(qdq=True), 2)
    assert (q.int8_macs, q.float_macs) == (2 * 4 * 8 * 8 * 27, 0)
    assert q.nodes[0].int8 and q.nodes[0].op_type == "Conv"
    # weight-only quantization: the runtime folds the DequantizeLinear and runs the conv in float
    wo = count_macs(conv_model(weight_only=True), 2)
    assert (wo.int8_macs, wo.float_macs) == (0, 2 * 4 * 8 * 8 * 27)
    # from a file, the same counts
    path = tmp_path / "q.onnx"
    onnx.save(conv_model(qdq=True), str(path))
    assert count_macs(path, 2).int8_macs == q.int8_macs


def test_integer_ops_count_as_int8():
    m = _model(
        [helper.make_node("MatMulInteger", ["A", "B"], ["Y"])],
        [_x("A", ["N", 8], TensorProto.UINT8)],
        [_x("Y", None, TensorProto.INT32)],
        [numpy_helper.from_array(_w((8, 4), dtype=np.int8), "B")],
    )
    c = count_macs(m, 3)
    assert (c.int8_macs, c.float_macs) == (3 * 4 * 8, 0)


def test_model_is_not_modified():
    m = conv_model()
    before = m.SerializeToString()
    count_macs(m, 7)
    assert m.SerializeToString() == before


def test_bad_inputs_raise_pipeline_errors(tmp_path):
    not_onnx = tmp_path / "model.engine"
    not_onnx.write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError, match=r"\.onnx"):
        count_macs(not_onnx)
    with pytest.raises(ArtifactError, match="no such ONNX file"):
        count_macs(tmp_path / "missing.onnx")
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"this is not a protobuf")
    with pytest.raises(ArtifactError):
        count_macs(garbage)
    # a dynamic spatial size leaves the conv without concrete shapes
    dyn = _model(
        [helper.make_node("Conv", ["X", "W"], ["Y"], kernel_shape=[3, 3])],
        [_x("X", ["N", 3, "H", "W"])],
        [_x("Y", None)],
        [numpy_helper.from_array(_w((4, 3, 3, 3)), "W")],
    )
    with pytest.raises(ArtifactError, match="no concrete shape") as err:
        count_macs(dyn)
    assert isinstance(err.value, PipelineError)
    fixed = _model(
        [helper.make_node("Relu", ["X"], ["Y"])],
        [_x("X", [4, 3])],
        [_x("Y", [4, 3])],
    )
    with pytest.raises(ConfigError, match="fixed batch of 4"):
        count_macs(fixed, 2)
    with pytest.raises(ConfigError, match="batch must be >= 1"):
        count_macs(conv_model(), 0)
    with pytest.raises(ConfigError):
        count_macs(12345)


# --------------------------------------------------------------------------------------------
# Peak and the figures
# --------------------------------------------------------------------------------------------
def test_gemm_model_counts_as_int8():
    for form in roofline.FORMS:
        c = count_macs(gemm_model(36, 48, 16, form), None)  # the graph's own fixed shapes
        assert (c.int8_macs, c.float_macs) == (36 * 48 * 16, 0)
        assert c.batch == (36 if form == "matmul" else 1)


@pytest.mark.parametrize(
    "runtime", ["ort", pytest.param("openvino", marks=pytest.mark.skipif(not HAS_OV, reason="openvino not installed"))]
)
def test_measure_peak_small_gemm(runtime):
    roofline.clear_peak_cache()
    p = measure_peak(runtime, 1, m=64, k=64, n=64, seconds=0.05, repeats=2)
    assert math.isfinite(p.macs_per_s) and p.macs_per_s > 0
    assert p.macs_per_s_min <= p.macs_per_s <= p.macs_per_s_max
    assert set(p.forms) == set(roofline.FORMS) and p.form in p.forms
    assert p.forms[p.form]["median"] == max(f["median"] for f in p.forms.values())
    assert p.threads == 1 and p.backend_info.get("threads") == 1
    assert measure_peak(runtime, 1, m=64, k=64, n=64, seconds=0.05, repeats=2) is p  # cached
    d = p.to_dict()
    assert d["key"] == f"{runtime}/1t" and "GMAC/s" in d["description"]
    json.dumps(d)


def test_measure_peak_rejects_unknown_runtime():
    with pytest.raises(ConfigError, match="no INT8 peak measurement"):
        measure_peak("trt", 1)
    with pytest.raises(ConfigError, match="unknown GEMM form"):
        gemm_model(8, 8, 8, "conv3x3")


def test_roofline_figures_arithmetic():
    c = MacCount("m", 1, int8_macs=3_000_000_000, float_macs=1_000_000_000)
    peak = roofline.Peak("ort", 1, "matmul", 8, 8, 8, 300e9, 290e9, 310e9, 3)
    f = roofline_figures(c, 100.0, peak)  # 4 GMAC in 0.1 s
    assert f["achieved_gmacs"] == pytest.approx(40.0)
    assert f["achieved_int8_gmacs"] == pytest.approx(30.0)
    assert f["pct_of_int8_peak"] == pytest.approx(10.0)
    assert roofline_figures(MacCount("m", 1, 0, 5), 1.0, peak)["pct_of_int8_peak"] is None
    assert roofline_figures(c, 1.0, None)["pct_of_int8_peak"] is None
    with pytest.raises(ConfigError):
        roofline_figures(c, 0.0, peak)


# --------------------------------------------------------------------------------------------
# Bench report columns
# --------------------------------------------------------------------------------------------
def test_bench_report_has_roofline_columns(tmp_path, monkeypatch):
    from runtime.bench import BenchConfig, run_bench
    from runtime.report import bench_report, render_markdown

    monkeypatch.setattr(roofline, "PEAK_GEMM", (128, 128, 128))
    monkeypatch.setattr(roofline, "PEAK_SECONDS", 0.1)
    roofline.clear_peak_cache()
    q, f = tmp_path / "conv.int8.onnx", tmp_path / "conv.onnx"
    onnx.save(conv_model(qdq=True), str(q))
    onnx.save(conv_model(), str(f))
    cfg = BenchConfig(
        models=(str(f), str(q)),
        batches=(1, 4),
        backends=("ort",),
        seconds=0.02,
        iterations=3,
        warmup_s=0.0,
        warmup_iterations=1,
        threads=1,
        overhead_batches=(),
    )
    run = run_bench(cfg)
    report = bench_report(run)
    by = {(r.model, r.batch): r for r in report.rows}
    for b in (1, 4):
        ri, rf = by[str(q), b].roofline, by[str(f), b].roofline
        assert ri["int8_macs"] == b * 4 * 8 * 8 * 27 and rf["float_macs"] == ri["int8_macs"]
        assert ri["pct_of_int8_peak"] > 0 and ri["int8_peak_key"] == "ort/1t"
        assert rf["pct_of_int8_peak"] is None and rf["achieved_gmacs"] > 0
        lat = by[str(q), b].latency_ms["p50"]
        assert ri["achieved_int8_gmacs"] == pytest.approx(ri["int8_macs"] / (lat / 1e3) / 1e9)
    assert [p["key"] for p in report.roofline_peaks] == ["ort/1t"]
    assert report.roofline_peaks[0]["m"] == 128
    body = json.loads(json.dumps(report.to_dict()))
    assert body["roofline_peaks"][0]["gmacs"] > 0 and body["rows"][0]["roofline"]["macs"] > 0
    md = render_markdown(report)
    assert "## Roofline" in md and "% of INT8 peak" in md and "ort, 1 thread(s)" in md

    off = run_bench(BenchConfig(**{**cfg.__dict__, "roofline": False, "batches": (1,)}))
    rep = bench_report(off)
    assert all(r.roofline is None for r in rep.rows) and not rep.roofline_peaks
    assert "## Roofline" not in render_markdown(rep)


def test_bench_cli_flag():
    from runtime.__main__ import build_bench_parser

    p = build_bench_parser()
    assert p.parse_args(["--models", "a.onnx"]).roofline is True
    assert p.parse_args(["--models", "a.onnx", "--no-roofline"]).roofline is False
