"""OpenVINO backend: matches ORT on FP32 and runs Q/DQ INT8, reports threads and precision, parity/bench rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from harness_util import linear_model

from runtime.__main__ import main
from runtime.backends import available_backends, get_backend
from runtime.backends.ort import OrtBackend
from runtime.errors import ConfigError

HAS_OV = importlib.util.find_spec("openvino") is not None
needs_ov = pytest.mark.skipif(not HAS_OV, reason="openvino is not installed (pip install '.[openvino]')")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ov")
    return {"fp32": linear_model(d / "model.onnx"), "int8": linear_model(d / "model.int8.onnx", qdq=True)}


def _x(n: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, 1, 8, 8), dtype=np.float32)


def test_registered_and_unavailable_reason_names_the_extra(monkeypatch):
    cls = get_backend("openvino")
    assert cls.name == "openvino" and not cls.default_sweep
    if not HAS_OV:
        assert "pip install '.[openvino]'" in available_backends(("openvino",))["openvino"]
    with pytest.raises(ConfigError, match="precision"):
        cls("x.onnx", precision="int4")
    with pytest.raises(ConfigError, match="unknown openvino backend option"):
        cls("x.onnx", provider="cuda")


@needs_ov
def test_fp32_matches_ort_and_reports_threads_and_precision(models):
    x = _x()
    with OrtBackend(models["fp32"], threads=1) as ort_be:
        want = ort_be.infer({"input": x})["logits"]
    with get_backend("openvino")(models["fp32"], threads=2, precision="f32") as be:
        got = be.infer({"input": x})
        info = be.describe()
        assert set(got) == {"logits"} and got["logits"].shape == (5, 7)
        np.testing.assert_allclose(got["logits"], want, atol=1e-4, rtol=1e-4)
        # a different batch on the same compiled (dynamic-batch) model
        assert be.infer({"input": _x(2, 1)})["logits"].shape == (2, 7)
    assert info["threads"] == 2 and info["inference_precision"] == "f32" and info["precision_requested"] == "f32"
    assert info["openvino"]


@needs_ov
def test_each_batch_size_gets_its_own_static_compilation(models):
    with (
        get_backend("openvino")(models["int8"], threads=1, precision="f32") as be,
        get_backend("openvino")(models["int8"], threads=1, precision="f32", static_batch=False) as dyn,
    ):
        assert be.input_specs[0].is_dynamic(0)  # the harness still sees the file's dynamic batch
        for n in (1, 3, 1):
            x = _x(n, n)
            np.testing.assert_allclose(be.infer({"input": x})["logits"], dyn.infer({"input": x})["logits"], atol=1e-5)
        assert sorted(be._by_batch) == [1, 3] and not dyn._by_batch
        assert be.describe()["shapes"].startswith("compiled per batch") and dyn.describe()["shapes"].startswith(
            "as read"
        )
        for n in range(2, 12):  # at most 8 compiled shapes are kept
            be.infer({"input": _x(n)})
        assert len(be._by_batch) == 8


@needs_ov
def test_default_precision_is_stated(models):
    with get_backend("openvino")(models["fp32"], threads=1) as be:
        info = be.describe()
        y = be.infer({"input": _x()})["logits"]
    # OpenVINO's own choice: bf16 on CPUs with AVX-512 BF16/AMX, f32 elsewhere; either way it is named.
    assert info["inference_precision"] in ("f32", "bf16", "f16")
    assert info["inference_precision"] in info["precision_note"] and np.isfinite(y).all()


@needs_ov
def test_qdq_int8_file_runs_close_to_ort(models):
    x = _x(8, 3)
    with OrtBackend(models["int8"], threads=1) as ort_be:
        want = ort_be.infer({"input": x})["logits"]
    with get_backend("openvino")(models["int8"], threads=1, precision="f32") as be:
        got = be.infer({"input": x})["logits"]
    assert got.shape == want.shape and np.isfinite(got).all()
    # input quantized to 1/255 steps by both runtimes: same argmax, logits close
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.875
    assert np.abs(got - want).max() < 0.1


@needs_ov
def test_bad_file_and_feeds(tmp_path, models):
    from runtime.errors import ArtifactError, InferenceError

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    with pytest.raises(ArtifactError, match="OpenVINO cannot read"):
        get_backend("openvino")(bad).load()
    with get_backend("openvino")(models["fp32"]) as be, pytest.raises(InferenceError, match="dtype"):
        be.infer({"input": _x().astype(np.float64)})


@needs_ov
def test_parity_and_bench_rows(models, tmp_path):
    rc = main(
        [
            "parity",
            "--reference",
            str(models["fp32"]),
            "--candidates",
            str(models["fp32"]),
            str(models["int8"]),
            "--backends",
            "ort,openvino",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "p"),
            "--no-progress",
            "--no-plots",
        ]
    )
    body = json.loads((tmp_path / "p" / "parity.json").read_text())
    rows = {(r["label"].split("/")[-1], r["backend"]): r for r in body["rows"]}
    assert {("model.onnx", "openvino"), ("model.int8.onnx", "openvino"), ("model.onnx", "ort")} <= set(rows)
    ov = rows[("model.onnx", "openvino")]
    assert ov["passed"], ov
    # a bf16 run of an FP32 file is judged by the bf16 bounds (Δprob 0.08), an f16 run by the FP16
    # ones (0.01); an f32 run by the FP32 ones
    detail = next(d for d in body["details"] if d["backend"] == "openvino" and d["label"].endswith("/model.onnx"))
    chosen = detail["backend_info"]["inference_precision"]
    if chosen in ("bf16", "f16"):
        assert ov["precision"] == f"fp32 (ran {chosen})"
        assert ("0.08" if chosen == "bf16" else "0.01") in ov["bounds"]
    else:
        assert ov["precision"] == "fp32" and "0.0001" in ov["bounds"]
    assert f"(ran {chosen})" in (tmp_path / "p" / "parity.md").read_text() or chosen == "f32"
    assert rc == 0
    rc = main(
        [
            "bench",
            "--models",
            str(models["fp32"]),
            str(models["int8"]),
            "--backends",
            "ort,openvino",
            "--batch",
            "1,4",
            "--seconds",
            "0",
            "--iterations",
            "3",
            "--warmup",
            "0",
            "--threads",
            "1",
            "--out",
            str(tmp_path / "b"),
            "--no-progress",
            "--no-plots",
        ]
    )
    assert rc == 0
    bench = json.loads((tmp_path / "b" / "bench.json").read_text())
    ov_rows = [r for r in bench["rows"] if r["backend"] == "openvino"]
    assert len(ov_rows) == 4 and all(r["latency_ms"]["count"] >= 3 for r in ov_rows)


def test_default_sweep_leaves_openvino_out(models):
    from runtime.parity import backends_for

    names, _ = backends_for(str(models["fp32"]))
    assert "openvino" not in names and "ort" in names
    if HAS_OV:
        assert "openvino" in backends_for(str(models["fp32"]), ["ort", "openvino"])[0]
