"""Accuracy control for the onnxruntime method (`--method ort --max-drop`): a file within the bound is kept.

The case where the bound is missed and the ranking returns nodes to float runs on an outside model
whose INT8 really loses agreement: tests/e2e/test_accuracy_control.py.
"""

from __future__ import annotations

import json

from quantize.__main__ import main as cli
from quantize.report import report_paths
from runtime.artifacts import read_sidecar


def test_within_bound_nothing_changes(lanmsff_tiny_onnx, tmp_path):
    out = tmp_path / "model.ort.int8.onnx"
    args = ["int8", "--onnx", str(lanmsff_tiny_onnx), "--out", str(out), "--method", "ort", "--ignore", "none"]
    assert cli([*args, "--calib-size", "14", "--min-calib-size", "8", "--no-latency", "--max-drop", "100"]) == 0
    ac = read_sidecar(out)["accuracy_control"]
    assert ac["max_drop_pts"] == 100 and ac["reached"] and ac["reverted_to_float"] == []
    assert ac["how"].startswith("explain ranking")
    report = json.loads(report_paths(out)[0].read_text())
    assert report["parity"]["tolerance"]["max_accuracy_drop_pts"] == 100
