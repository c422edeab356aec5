"""`quantize int8 --method ort --max-drop`: explain's ranking returns nodes to float until the bound holds.

On the outside Xception-style model (tests/e2e/own_archs.py) and unlabelled face crops (judged
against FP32's top-1, so every changed prediction counts as a drop), the onnxruntime INT8 file
loses agreement; with ``--max-drop 0`` the nodes the ranking names go back to float and the written
file must then agree with FP32 on every image.
"""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import own_archs as A

from export.__main__ import main as export_cli
from quantize.__main__ import main as quantize_cli
from quantize.report import report_paths
from runtime.artifacts import read_sidecar
from runtime.qdq_lint import quantized_ops

INT8 = ["int8", "--method", "ort", "--target", "cpu", "--ignore", "none", "--no-latency", "--no-runtime-pick"]
CALIB = ["--calib-size", "24", "--min-calib-size", "8"]


def _adopted(tmp: Path) -> Path:
    plain = A.plain_onnx("xception_rgb", tmp / "outside" / "xception_rgb.onnx", batch=None)
    contract = A.write_contract("xception_rgb", tmp / "outside" / "xception_rgb.contract.yaml")
    model = tmp / "run" / "model.onnx"
    assert export_cli(["adopt", "--onnx", str(plain), "--contract", str(contract), "--out", str(model)]) == 0
    return model


def test_max_drop_with_ort_returns_ranked_nodes_to_float(tmp_path):
    faces = A.face_folder(tmp_path / "my_photos", 60, seed=5)
    model = _adopted(tmp_path)
    plain_out, ctl_out = model.with_name("model.plain.int8.onnx"), model.with_name("model.ctl.int8.onnx")
    base = ["--onnx", str(model), "--data", str(faces), *CALIB]
    assert quantize_cli([*INT8, *base, "--out", str(plain_out)]) == 0
    before = json.loads(report_paths(plain_out)[0].read_text())["parity"]
    assert before["top1_agreement"] < 1.0  # the INT8 file really changes some predictions

    assert quantize_cli([*INT8, *base, "--out", str(ctl_out), "--max-drop", "0"]) == 0
    ac = read_sidecar(ctl_out)["accuracy_control"]
    assert ac["drop_before_pts"] > 0 and ac["reached"]
    assert ac["reverted_to_float"]
    assert set(ac["reverted_to_float"]) <= set(quantized_ops(onnx.load(str(ctl_out)))["float"])
    after = json.loads(report_paths(ctl_out)[0].read_text())["parity"]
    assert after["top1_agreement"] == 1.0 and after["accuracy_drop_pts"] <= 0.0
    assert after["passed"]
