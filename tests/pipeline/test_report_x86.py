"""The pipeline report's x86 lines: the quantize stage's runtime pick and the bench stage's roofline."""

from __future__ import annotations

from pipeline.markdown import render_report

REPORTS = {"parity": "parity/parity.md", "bench": "bench/bench.md"}
ROW = {"title": "INT8 x86", "file": "model.ort.cpu.int8.onnx", "backend": "ort", "batch": 1, "precision": "int8"}


def test_roofline_line_names_each_int8_row_and_its_share_of_the_peak() -> None:
    rows = [
        dict(ROW, roofline={"achieved_int8_gmacs": 149.2, "pct_of_int8_peak": 39.4}),
        dict(ROW, batch=32, roofline={"achieved_int8_gmacs": 130.0, "pct_of_int8_peak": 34.2}),
        dict(ROW, title="ONNX FP32", file="model.onnx", roofline={"achieved_gmacs": 60.0, "pct_of_int8_peak": None}),
    ]
    md = render_report({"reports": REPORTS, "rows": rows})
    line = next(ln for ln in md.splitlines() if ln.startswith("INT8 rows against this CPU's INT8 limit"))
    assert "INT8 x86 [ort] b1: 149 GMAC/s, **39%**" in line and "INT8 x86 [ort] b32: 130 GMAC/s, **34%**" in line
    assert "ONNX FP32" not in line  # no INT8 MACs: nothing to hold to the INT8 peak
    assert "[bench/bench.md](bench/bench.md)" in line
    assert "INT8 rows against" not in render_report({"reports": REPORTS, "rows": [dict(ROW)]})


def test_summary_names_the_x86_runtime_the_quantize_stage_picked() -> None:
    pick = {"fastest": "openvino", "note": "openvino is fastest at equal accuracy (1.26x onnxruntime)"}
    body = {
        "reports": REPORTS,
        "quantized": [
            {"file": "model.ort.cpu.int8.onnx", "title": "INT8 x86", "sidecar": {"runtime": pick}},
            {"file": "model.nncf.int8.onnx", "title": "INT8 NNCF", "sidecar": {}},
        ],
    }
    md = render_report(body)
    assert "| x86 runtime for `model.ort.cpu.int8.onnx` | **openvino** (openvino is fastest" in md
    assert "x86 runtime for `model.nncf.int8.onnx`" not in md
