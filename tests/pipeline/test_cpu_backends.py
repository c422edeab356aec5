"""``parity.cpu_backends`` / ``bench.cpu_backends``: OpenVINO rows in the pipeline's parity and bench.

The config is validated when it loads; every ONNX file gets a row per listed CPU runtime; a listed
runtime missing here is skipped with its reason and the install command (the stage still runs);
the report names the runtime and the float precision it chose. The real-stage tests run the parity
and bench stages on a torch-free linear classifier (tests/runtime/harness_util.py) in a second or two.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

import pipeline as P
import pipeline.stages as S
from pipeline.context import Context
from pipeline.markdown import render_report
from pipeline.runner import Layout
from runtime.errors import ConfigError

HAS_OV = importlib.util.find_spec("openvino") is not None
NOT_HERE = "openvino is not installed (planted by the test)"


def _harness_util():
    """tests/runtime/harness_util.py (tiny contract-carrying ONNX models), imported by path."""
    if "harness_util" not in sys.modules:
        path = Path(__file__).resolve().parents[1] / "runtime" / "harness_util.py"
        spec = importlib.util.spec_from_file_location("harness_util", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["harness_util"] = module
        spec.loader.exec_module(module)
    return sys.modules["harness_util"]


def _config(out: Path, cpu: list[str], **bench) -> P.PipelineConfig:
    return P.config_from_mapping(
        {
            "pipeline": {"out": str(out)},
            "quantize": {"methods": ["ort"], "cpu_methods": ["ort"], "fp16": True},
            "parity": {"cpu_backends": cpu},
            "bench": {
                "batches": [1],
                "seconds": 0.0,
                "iterations": 2,
                "warmup_s": 0.0,
                "warmup_iterations": 1,
                "threads": 1,
                "torch": False,
                "cpu_backends": cpu,
                **bench,
            },
        },
        "test.yaml",
    )


REPORTS = {"parity": "parity/parity.md", "bench": "bench/bench.md"}


def _ctx(cfg: P.PipelineConfig) -> Context:
    return Context(cfg=cfg, layout=Layout(cfg.out), progress=False, command="test")


@pytest.fixture()
def ov_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """OpenVINO reads as not installed, whether or not it is."""
    from runtime.backends.openvino import OpenVinoBackend

    monkeypatch.setattr(OpenVinoBackend, "_probe", classmethod(lambda cls: NOT_HERE))


@pytest.fixture()
def tiny_run(tmp_path: Path) -> Path:
    """An output folder holding model.onnx and a Q/DQ INT8 model.ort.cpu.int8.onnx (the cpu-form file)."""
    h = _harness_util()
    out = tmp_path / "run"
    h.linear_model(out / "model.onnx")
    h.linear_model(out / "model.ort.cpu.int8.onnx", qdq=True)
    return out


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------
def test_cpu_backends_are_validated_when_the_config_loads() -> None:
    cfg = P.config_from_mapping({}, "x.yaml")
    assert cfg.parity.cpu_backends == ("ort",) and cfg.bench.cpu_backends == ("ort",)
    cfg = P.config_from_mapping({"bench": {"cpu_backends": ["ort", "openvino"]}}, "x.yaml")
    assert cfg.bench.cpu_backends == ("ort", "openvino") and cfg.parity.cpu_backends == ("ort",)
    with pytest.raises(
        ConfigError, match=r"bench\.cpu_backends: unknown CPU runtime\(s\) \['openvn'\]; valid: \['ort', 'openvino'\]"
    ):
        P.config_from_mapping({"bench": {"cpu_backends": ["ort", "openvn"]}}, "x.yaml")
    with pytest.raises(ConfigError, match=r"parity\.cpu_backends must include ort"):
        P.config_from_mapping({"parity": {"cpu_backends": ["openvino"]}}, "x.yaml")
    with pytest.raises(ConfigError, match="each runtime once"):
        P.config_from_mapping({"parity": {"cpu_backends": ["ort", "openvino", "ort"]}}, "x.yaml")
    with pytest.raises(ConfigError, match="unknown CPU runtime"):  # trt is not a CPU runtime: tensorrt: decides it
        P.config_from_mapping({"parity": {"cpu_backends": ["ort", "trt"]}}, "x.yaml")


def test_demo_config_lists_openvino() -> None:
    cfg = P.load_pipeline_config(Path(__file__).resolve().parents[2] / "configs" / "demo.yaml")
    assert "openvino" in cfg.parity.cpu_backends and "openvino" in cfg.bench.cpu_backends


# --------------------------------------------------------------------------------------------
# Which files run on which runtime
# --------------------------------------------------------------------------------------------
def test_groups_give_the_x86_forms_an_openvino_row_when_listed(tmp_path: Path) -> None:
    ctx = _ctx(_config(tmp_path / "run", ["ort", "openvino"]))
    L = ctx.layout
    plain = S._groups(ctx, False, torch_ref=True)
    assert "openvino" not in {b for _f, bs in plain for b in bs}
    groups = S._groups(ctx, False, torch_ref=True, cpu_backends=("ort", "openvino"))
    by_file = {f.name: set(bs) for files, bs in groups for f in files}
    assert by_file == {
        "checkpoint.pt": {"torch"},
        "model.onnx": {"ort", "openvino"},
        "model.fp16.onnx": {"ort"},  # made for TensorRT: onnxruntime is its CPU reference
        "model.ort.int8.onnx": {"ort"},
        "model.ort.cpu.int8.onnx": {"ort", "openvino"},
    }
    with_trt = {
        f.name: set(bs)
        for files, bs in S._groups(ctx, True, torch_ref=False, cpu_backends=("ort", "openvino"))
        for f in files
    }
    assert with_trt["model.ort.int8.onnx"] == {"ort", "trt"}
    assert with_trt["model.onnx"] == {"ort", "openvino", "trt"}
    assert with_trt["model.ort.cpu.int8.onnx"] == {"ort", "openvino"}  # asymmetric UINT8: never TensorRT
    # Parity against model.onnx on onnxruntime: OpenVINO reading model.onnx is a candidate row too.
    jobs = S.parity_jobs(ctx, L.onnx, False, ("ort", "openvino"))
    pairs = {(f.name, b) for files, bs in jobs for f in files for b in bs}
    assert ("model.onnx", "openvino") in pairs and ("model.onnx", "ort") not in pairs
    assert ("model.ort.cpu.int8.onnx", "openvino") in pairs and ("model.fp16.onnx", "ort") in pairs
    assert all(
        b == "ort"
        for _f, b in {
            (f.name, b) for files, bs in S.parity_jobs(ctx, L.onnx, False, ("ort",)) for f in files for b in bs
        }
    )


def test_a_missing_runtime_is_dropped_with_its_reason_and_install_command(ov_missing) -> None:
    usable, skipped = S.cpu_backends_here(("ort", "openvino"))
    assert usable == ("ort",)
    assert set(skipped) == {"openvino"} and NOT_HERE in skipped["openvino"]
    assert "pip install '.[openvino]'" in skipped["openvino"]


# --------------------------------------------------------------------------------------------
# The real parity and bench stages on a tiny model
# --------------------------------------------------------------------------------------------
def _only_cpu_variant(cfg: P.PipelineConfig) -> P.PipelineConfig:
    import dataclasses

    return dataclasses.replace(cfg, quantize=dataclasses.replace(cfg.quantize, methods=(), fp16=False))


def test_stages_skip_a_missing_runtime_and_say_how_to_install(tiny_run: Path, ov_missing) -> None:
    ctx = _ctx(_only_cpu_variant(_config(tiny_run, ["ort", "openvino"])))
    S.run_bench(ctx, False)
    S.run_parity(ctx, ctx.layout.onnx, False)
    bench = json.loads((tiny_run / "bench" / "bench.json").read_text())
    parity = json.loads((tiny_run / "parity" / "parity.json").read_text())
    for body in (bench, parity):
        assert {r["backend"] for r in body["rows"]} == {"ort"}
        assert NOT_HERE in body["skipped"]["openvino"] and "pip install '.[openvino]'" in body["skipped"]["openvino"]
    assert {(Path(r["model"]).name, r["batch"]) for r in bench["rows"]} == {
        ("model.onnx", 1),
        ("model.ort.cpu.int8.onnx", 1),
    }
    md = render_report(
        {
            "reports": REPORTS,
            "skipped_backends": {**parity["skipped"], **bench["skipped"]},
            "config": {"parity": {"cpu_backends": ["ort", "openvino"]}, "bench": {"cpu_backends": ["ort", "openvino"]}},
        }
    )
    assert "**`openvino` rows skipped**" in md and "pip install '.[openvino]'" in md


@pytest.mark.skipif(not HAS_OV, reason="openvino is not installed (pip install '.[openvino]')")
def test_stages_add_openvino_rows_that_name_their_precision(tiny_run: Path) -> None:
    ctx = _ctx(_only_cpu_variant(_config(tiny_run, ["ort", "openvino"])))
    S.run_bench(ctx, False)
    S.run_parity(ctx, ctx.layout.onnx, False)
    bench = json.loads((tiny_run / "bench" / "bench.json").read_text())
    parity = json.loads((tiny_run / "parity" / "parity.json").read_text())
    have = {(Path(r["model"]).name, r["backend"]) for r in bench["rows"]}
    assert have == {(f, b) for f in ("model.onnx", "model.ort.cpu.int8.onnx") for b in ("ort", "openvino")}
    rows = {(Path(r["model"]).name, r["backend"]): r for r in parity["rows"]}
    assert set(rows) == have and rows[("model.onnx", "ort")]["is_reference"]
    assert "openvino" not in bench.get("skipped", {})
    ov_fp32 = rows[("model.onnx", "openvino")]
    # The runtime's float choice is in the row (fp32, or "fp32 (ran bf16)" on a CPU with bf16).
    assert ov_fp32["precision"].startswith("fp32") and ov_fp32["top1_agreement"] is not None
    body = {
        "reports": REPORTS,
        "rows": [dict(r, title=Path(r["model"]).name, file=Path(r["model"]).name) for r in bench["rows"]],
        "parity_rows": [dict(r, title=Path(r["model"]).name) for r in parity["rows"]],
    }
    md = render_report(body)
    ran = ov_fp32["precision"].partition(" ")[2]  # "(ran bf16)" or ""
    assert f"| openvino{' ' + ran if ran else ''} |" in md
    assert ("Rows marked *ran bf16*" in md) == bool(ran)


def test_render_names_a_runtime_that_ran_bf16() -> None:
    row = {
        "title": "ONNX FP32",
        "file": "model.onnx",
        "backend": "openvino",
        "batch": 1,
        "precision": "fp32 (ran bf16)",
    }
    md = render_report({"reports": REPORTS, "rows": [row, dict(row, backend="ort", precision="fp32")]})
    assert "| openvino (ran bf16) |" in md and "| ort |" in md
    assert (
        "Rows marked *ran bf16*" in md and "AVX-512 BF16 or AMX" in md and "bf16: agreement ≥ 0.99, Δprob ≤ 0.08" in md
    )
    assert "Rows marked" not in render_report(
        {"reports": REPORTS, "rows": [dict(row, backend="ort", precision="fp32")]}
    )
