"""python -m quantize int8|fp16 end to end on tiny exported LANMSFF and MA-Net models."""

from __future__ import annotations

import json
import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from quantize.__main__ import main as cli
from quantize.calibration import manifest_path
from quantize.report import report_paths
from runtime.artifacts import read_sidecar, sha256_file
from runtime.contract import read_contract, read_metadata
from runtime.qdq_lint import lint_qdq, sensitive_scopes

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

# Tiny sets: 21 training images (3 per class), so the calibration minimum is lowered.
FAST = ["--calib-size", "14", "--min-calib-size", "8", "--no-latency"]


def _int8(src, out, *extra):
    return cli(["int8", "--onnx", str(src), "--out", str(out), *FAST, *extra])


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _assert_contract_kept(src, out, precision):
    assert read_contract(out).to_metadata() == read_contract(src).to_metadata()
    meta = read_metadata(out)
    assert meta["ferdeploy.precision"] == precision


@pytest.mark.parametrize("method", ["nncf", "ort"])
def test_lanmsff_tiny_tensorrt_int8(lanmsff_tiny_onnx, tmp_path, method):
    out = tmp_path / f"model.{method}.int8.onnx"
    assert _int8(lanmsff_tiny_onnx, out, "--method", method, "--ignore", "none") == 0
    rep = lint_qdq(out)
    assert rep.passed, [str(f) for f in rep.errors]
    assert len(rep.int8_ops) >= 10
    _assert_contract_kept(lanmsff_tiny_onnx, out, "int8")
    # Dynamic batch still works, outputs stay float32 logits.
    y = _run(out, np.random.default_rng(0).random((3, 1, 64, 64), dtype=np.float32))
    assert y.shape == (3, 7) and y.dtype == np.float32 and np.isfinite(y).all()

    side = read_sidecar(out)
    assert side["precision"] == "int8" and side["method"] == method and side["target"] == "tensorrt"
    assert side["form"].startswith("S8S8") and side["input"]["sha256"] == sha256_file(lanmsff_tiny_onnx)
    assert side["calibration"]["manifest_sha256"] == sha256_file(manifest_path(out))
    assert side["calibration"]["size"] == 14 and side["versions"]["onnxruntime"]
    assert side["ignored_scope"]["mode"] == "none" and side["lint"]["passed"]
    assert {"quantize_s", "total_s"} <= set(side["timing"])
    manifest = json.loads(manifest_path(out).read_text())
    assert len(manifest["sample_ids"]) == 14 and sum(manifest["class_counts"].values()) == 14

    jpath, mpath = report_paths(out)
    report = json.loads(jpath.read_text())
    parity = report["parity"]
    assert parity["count"] == 21 and set(parity["per_class_accuracy_delta"]) == set(read_contract(out).class_names)
    assert 0.0 <= parity["top1_agreement"] <= 1.0 and parity["max_abs_diff"] >= parity["mean_abs_diff"] >= 0
    assert "Parity against FP32" in mpath.read_text()


def test_second_run_is_skipped_and_force_redoes(lanmsff_tiny_onnx, tmp_path, caplog):
    out = tmp_path / "model.int8.onnx"
    assert _int8(lanmsff_tiny_onnx, out, "--method", "ort", "--ignore", "none") == 0
    before = out.stat().st_mtime_ns
    caplog.set_level(logging.INFO, logger="quantize")
    caplog.clear()
    assert _int8(lanmsff_tiny_onnx, out, "--method", "ort", "--ignore", "none") == 0
    assert "up to date" in caplog.text and out.stat().st_mtime_ns == before
    assert _int8(lanmsff_tiny_onnx, out, "--method", "ort", "--ignore", "none", "--force") == 0
    assert out.stat().st_mtime_ns != before


def test_cpu_target_is_u8s8_and_says_so(lanmsff_tiny_onnx, tmp_path):
    out = tmp_path / "model.cpu.int8.onnx"
    assert _int8(lanmsff_tiny_onnx, out, "--method", "ort", "--target", "cpu", "--ignore", "none") == 0
    side = read_sidecar(out)
    assert side["target"] == "cpu" and side["form"].startswith("U8S8")
    rep = lint_qdq(out)
    assert {"asymmetric-zero-point", "non-int8-type"} <= rep.codes()  # not a TensorRT graph, and the lint says so
    # The report says the TensorRT lint does not apply, instead of listing its "errors".
    md = out.with_name("model.cpu.int8.report.md").read_text()
    assert "not applicable: this is the cpu form" in md and "- error:" not in md
    _assert_contract_kept(lanmsff_tiny_onnx, out, "int8")
    # The cpu target names the x86 runtime that ran the file fastest at equal accuracy, measured.
    from runtime.backends import available_backends

    report = json.loads(report_paths(out)[0].read_text())["runtime"]
    labels = [c["label"] for c in report["candidates"]]
    assert labels == ["onnxruntime", "openvino", "openvino-f32"]
    assert side["runtime"]["fastest"] == report["fastest"] in labels
    ran = {c["label"]: c["available"] for c in report["candidates"]}
    assert ran["onnxruntime"]
    assert ran["openvino"] == (available_backends(("openvino",))["openvino"] == "")
    assert "## Fastest x86 runtime for this file" in md and f"**{report['fastest']}**" in md


def test_explain_ranking_goes_into_the_report(lanmsff_tiny_onnx, tmp_path):
    out = tmp_path / "model.int8.onnx"
    assert _int8(lanmsff_tiny_onnx, out, "--method", "ort", "--ignore", "none", "--explain") == 0
    rep = json.loads(report_paths(out)[0].read_text())["explain"]
    folder = tmp_path / "model.int8.explain"
    assert rep["folder"] == str(folder) and (folder / "explain.json").is_file()
    ranked = json.loads((folder / "explain.json").read_text())
    assert rep["agreement"] == ranked["baseline"]["agreement"]
    assert rep["recommended"] == ranked["recommended"]
    md = report_paths(out)[1].read_text()
    assert "## Which nodes cost the agreement (quantize explain)" in md
    assert "### Nodes ranked by the agreement their return to float recovers" in md
    # the top-ranked node is named in the report's table
    assert f"`{ranked['nodes'][0]['name']}`" in md
    if (folder / "explain.png").is_file():
        assert "![agreement recovered per node](model.int8.explain/explain.png)" in md
    assert "explain_s" in read_sidecar(out)["timing"]


def test_auto_ignored_scope_is_measured_and_recorded(lanmsff_tiny_onnx, tmp_path):
    out = tmp_path / "model.int8.onnx"
    assert _int8(lanmsff_tiny_onnx, out, "--method", "ort") == 0
    scope = read_sidecar(out)["ignored_scope"]
    assert scope["mode"] == "auto" and "validation" not in scope["measured_on"]
    assert {"none", "gates", "pwfs", "heads", "stem"} <= set(scope["measurements"])
    assert set(scope["chosen"]) <= {"gates", "pwfs", "heads", "stem"}
    m = scope["measurements"]["none"]
    assert 0 <= m["top1_agreement"] <= 1 and m["mean_abs_diff"] >= 0


def test_explicit_ignore_keeps_nodes_float(lanmsff_tiny_onnx, tmp_path):
    out = tmp_path / "model.int8.onnx"
    assert _int8(lanmsff_tiny_onnx, out, "--method", "nncf", "--ignore", "heads,stem") == 0
    rep = lint_qdq(out)
    sc = sensitive_scopes(onnx.load(lanmsff_tiny_onnx))
    assert rep.passed and set(rep.float_ops) == {sc.stem[0], sc.heads[0]}
    assert read_sidecar(out)["ignored_scope"]["nodes"] == [*sc.heads, *sc.stem]


def test_max_drop_runs_accuracy_control(lanmsff_tiny_onnx, tmp_path):
    out = tmp_path / "model.int8.onnx"
    assert _int8(lanmsff_tiny_onnx, out, "--method", "nncf", "--ignore", "none", "--max-drop", "0") == 0
    ac = read_sidecar(out)["accuracy_control"]
    assert ac["max_drop_pts"] == 0 and isinstance(ac["reverted_to_float"], list)
    report = json.loads(report_paths(out)[0].read_text())
    assert report["parity"]["tolerance"]["max_accuracy_drop_pts"] == 0
    assert lint_qdq(out).passed


@pytest.mark.parametrize("method", ["nncf", "ort"])
def test_manet_tiny_quantizes_and_passes_lint(manet_tiny_onnx, tmp_path, method):
    out = tmp_path / f"manet.{method}.int8.onnx"
    assert (
        cli(
            [
                "int8",
                "--onnx",
                str(manet_tiny_onnx),
                "--out",
                str(out),
                "--method",
                method,
                "--ignore",
                "none",
                "--calib-size",
                "8",
                "--min-calib-size",
                "8",
                "--no-latency",
                "--val-limit",
                "7",
            ]
        )
        == 0
    )
    rep = lint_qdq(out)
    assert rep.passed, [str(f) for f in rep.errors]
    assert len(rep.int8_ops) >= 15
    _assert_contract_kept(manet_tiny_onnx, out, "int8")


def test_latency_is_side_by_side(lanmsff_tiny_onnx, tmp_path):
    out = tmp_path / "model.int8.onnx"
    assert (
        cli(
            [
                "int8",
                "--onnx",
                str(lanmsff_tiny_onnx),
                "--out",
                str(out),
                "--method",
                "ort",
                "--ignore",
                "none",
                "--calib-size",
                "14",
                "--min-calib-size",
                "8",
                "--latency-batches",
                "1,2",
                "--latency-rounds",
                "2",
                "--latency-seconds",
                "0.02",
            ]
        )
        == 0
    )
    lat = json.loads(report_paths(out)[0].read_text())["latency"]
    assert [r["batch"] for r in lat["rows"]] == [1, 2] and lat["rounds"] == 2
    for r in lat["rows"]:
        assert r["reference"]["count"] >= 10 and r["candidate"]["count"] >= 10
        assert r["speedup_p50"] > 0 and r["reference"]["p50_ci_ms"][0] <= r["reference"]["p50_ms"]


def test_fp16_keeps_io_float32_and_parity(lanmsff_tiny_onnx, tmp_path):
    out = tmp_path / "model.fp16.onnx"
    assert cli(["fp16", "--onnx", str(lanmsff_tiny_onnx), "--out", str(out), "--no-latency"]) == 0
    model = onnx.load(out)
    elem = onnx.TensorProto
    assert model.graph.input[0].type.tensor_type.elem_type == elem.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == elem.FLOAT
    assert sum(i.data_type == elem.FLOAT16 for i in model.graph.initializer) > 10
    _assert_contract_kept(lanmsff_tiny_onnx, out, "fp16")
    x = np.random.default_rng(1).random((4, 1, 64, 64), dtype=np.float32)
    assert np.abs(_run(out, x) - _run(lanmsff_tiny_onnx, x)).max() < 1e-2
    side = read_sidecar(out)
    assert side["precision"] == "fp16" and "ReduceMean" in side["conversion"]["keep_fp32_ops_present"]


def test_bad_inputs_fail_cleanly(lanmsff_tiny_onnx, tmp_path):
    # Exit codes (docs/errors.md): 1 a bad input file or data, 2 bad usage or config.
    assert _int8(tmp_path / "missing.onnx", tmp_path / "o.onnx") == 1
    assert _int8(lanmsff_tiny_onnx, lanmsff_tiny_onnx) == 2  # would overwrite the input
    assert _int8(lanmsff_tiny_onnx, tmp_path / "o.onnx", "--method", "ort", "--max-drop", "-1") == 2
    assert _int8(lanmsff_tiny_onnx, tmp_path / "o.onnx", "--ignore", "no_such_node") == 2
    assert (
        cli(
            [
                "int8",
                "--onnx",
                str(lanmsff_tiny_onnx),
                "--out",
                str(tmp_path / "o.onnx"),
                "--calib-size",
                "4",
                "--no-latency",
            ]
        )
        == 2
    )  # --calib-size below --min-calib-size
    assert not (tmp_path / "o.onnx").exists() and not list(tmp_path.glob(".o.onnx*"))
