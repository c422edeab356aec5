"""runtime.report and runtime.env: JSON schema, Markdown tables, PNGs, Pareto front, environment probes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.bench import BenchConfig, BenchRow, BenchRun, OverheadResult, spread_of
from runtime.compare import Precision, compare_outputs
from runtime.env import capture_environment, cpu_info, gpu_info, jetson_info, summary_line
from runtime.errors import ArtifactError
from runtime.latency import summarize
from runtime.parity import ModelInfo, ParityRow, ParityRun
from runtime.preprocess import PreprocessSpec
from runtime.report import (
    SCHEMA,
    bench_report,
    load_report,
    pareto_front,
    parity_report,
    render_markdown,
    row_key,
    write_report,
)

NAMES = ("a", "b", "c")
ROW_KEYS = {
    "model",
    "label",
    "backend",
    "precision",
    "batch",
    "accuracy",
    "macro_f1",
    "top1_agreement",
    "max_abs_diff",
    "latency_ms",
    "throughput_ips",
}


def _parity_run() -> ParityRun:
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((30, 3)).astype(np.float32)
    y = ref.argmax(1)
    ids = [f"id{i}" for i in range(30)]
    good = compare_outputs(ref, ref, y, precision="fp32", class_names=NAMES, sample_ids=ids)
    bad = compare_outputs(ref, ref[:, [1, 0, 2]], y, precision="int8", class_names=NAMES, sample_ids=ids)
    info = ModelInfo("runs/x/checkpoint.pt", "checkpoint", "m", NAMES, PreprocessSpec(), sha256="r" * 64)
    rows = (
        ParityRow(
            info.path, "x/checkpoint.pt", "torch", Precision.FP32, "checkpoint", "", "r" * 64, good, is_reference=True
        ),
        ParityRow("runs/x/model.onnx", "x/model.onnx", "ort", Precision.FP32, "graph", "", "a" * 64, good),
        ParityRow(
            "runs/x/model.int8.onnx", "x/model.int8.onnx", "ort", Precision.INT8, "sidecar", "nncf", "b" * 64, bad
        ),
        ParityRow(
            "runs/x/model.int8.onnx",
            "x/model.int8.onnx",
            "trt",
            Precision.INT8,
            "sidecar",
            "nncf",
            "b" * 64,
            None,
            error="ArtifactError: engine build failed",
        ),
    )
    return ParityRun(info, "torch", "synthetic val", 30, NAMES, rows, {"ort-cuda": "no CUDA"})


def _bench_run() -> BenchRun:
    rng = np.random.default_rng(1)
    rows, over = [], []
    for rep in range(2):
        for sha, label, prec, scale in (
            ("a" * 64, "x/model.onnx", Precision.FP32, 2.0),
            ("b" * 64, "x/model.int8.onnx", Precision.INT8, 1.0),
        ):
            for b in (1, 8):
                st = summarize(rng.lognormal(np.log(scale * b), 0.05, 60), batch=b)
                rows.append(BenchRow(f"runs/{label}", label, "ort", prec, "graph", sha, b, rep, st))
    h, bare = summarize(rng.normal(2.01, 0.01, 50), batch=1), summarize(rng.normal(2.0, 0.01, 50), batch=1)
    over.append(OverheadResult("runs/x/model.onnx", "ort", 1, h, bare, 0.5, 10.0, (0.01, 0.005, 0.015)))
    return BenchRun(tuple(rows), tuple(over), spread_of(rows), BenchConfig(models=("runs/x/model.onnx",)))


def test_parity_report_json_markdown_and_plots(tmp_path):
    rep = parity_report(_parity_run(), command="python -m runtime parity ...", environment={"python": "3.11"})
    assert not rep.passed and rep.failing == ("x/model.int8.onnx [ort, int8]", "x/model.int8.onnx [trt, int8]")
    paths = write_report(rep, tmp_path)
    body = load_report(paths["json"])
    assert body["schema"] == SCHEMA and body["kind"] == "parity" and body["passed"] is False
    for row in body["rows"]:
        assert ROW_KEYS <= set(row)
    assert body["rows"][3]["error"].startswith("ArtifactError") and body["rows"][3]["accuracy"] is None
    det = body["details"][2]
    assert det["method"] == "nncf" and det["flipped_ids"] and set(det["per_class_accuracy_delta"]) == set(NAMES)
    assert np.asarray(det["confusion_delta"]).sum() == 0  # counts move between cells, never appear
    md = paths["markdown"].read_text()
    assert "| x/model.onnx | ort | fp32 |" in md and "**FAIL**" in md and "engine build failed" in md
    assert "Per-class accuracy delta" in md and "Flipped samples" in md and "ort-cuda: no CUDA" in md
    assert paths["confusion"].read_bytes()[:4] == b"\x89PNG"
    assert "pareto" not in paths  # no latency in a parity-only report


def test_bench_report_join_and_plots(tmp_path):
    parity = parity_report(_parity_run()).to_dict()
    rep = bench_report(_bench_run(), command="python -m runtime bench ...", parity=parity)
    assert rep.passed and len(rep.rows) == 4  # first repeat only; repeats feed the spread table
    r = {(x.label, x.batch): x for x in rep.rows}
    assert r[("x/model.onnx", 1)].accuracy == 1.0 and r[("x/model.int8.onnx", 8)].top1_agreement < 1.0
    assert r[("x/model.onnx", 8)].latency_ms["p50"] == pytest.approx(16.0, rel=0.05)
    assert set(r[("x/model.onnx", 1)].latency_ms) >= {"p50", "p90", "p99", "mean", "p50_ci", "p99_ci"}
    paths = write_report(rep, tmp_path, stem="b")
    body = json.loads(paths["json"].read_text())
    assert len(body["spread"]) == 4 and body["overhead"][0]["within_2pct"] is True
    assert body["overhead"][0]["paired_diff_ms"] == [0.01, 0.005, 0.015]
    for name in ("pareto", "latency"):
        assert paths[name].read_bytes()[:4] == b"\x89PNG"
    md = paths["markdown"].read_text()
    assert "Harness overhead" in md and "Run-to-run spread" in md and "p50 ms [95% CI]" in md
    assert render_markdown(rep) == md  # pure and deterministic
    assert row_key(rep.rows[0]) in rep.samples_ms


def test_spread_of_flags_disagreeing_runs():
    a = summarize(np.full(50, 1.0) + np.linspace(0, 0.01, 50), batch=1)
    b = summarize(np.full(50, 2.0) + np.linspace(0, 0.01, 50), batch=1)
    rows = [BenchRow("m", "m", "ort", Precision.FP32, "graph", "s", 1, i, st) for i, st in enumerate((a, b))]
    (s,) = spread_of(rows)
    assert not s.agree and s.spread_pct == pytest.approx(100.0, rel=0.01)
    (s,) = spread_of([rows[0], BenchRow("m", "m", "ort", Precision.FP32, "graph", "s", 1, 1, a)])
    assert s.agree and s.spread_pct == 0.0


def test_pareto_front():
    pts = [(1.0, 80.0), (2.0, 85.0), (3.0, 84.0), (0.5, 70.0), (2.0, 60.0)]
    assert sorted(pareto_front(pts)) == [0, 1, 3]


def test_load_report_rejects_foreign_json(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"schema": "other"}')
    with pytest.raises(ArtifactError, match="ferdeploy-report/1"):
        load_report(p)


def test_environment_probes_with_fakes():
    cpuinfo = (
        "processor\t: 0\nmodel name\t: Fake CPU 9000\nphysical id\t: 0\ncore id\t: 0\n\n"
        "processor\t: 1\nmodel name\t: Fake CPU 9000\nphysical id\t: 0\ncore id\t: 0\n\n"
    )
    files = {
        "/proc/cpuinfo": cpuinfo,
        "/proc/meminfo": "MemTotal: 1024 kB\n",
        "/etc/nv_tegra_release": "# R36 (release), REVISION: 4.3\n",
        "/proc/device-tree/model": "NVIDIA Jetson AGX Orin\x00",
    }
    outputs = {
        "nvidia-smi --query-gpu=name,driver_version,compute_cap,memory.total,clocks.sm,clocks.max.sm,power.limit,pstate "
        "--format=csv,noheader,nounits": "NVIDIA H100, 570.1, 9.0, 81559, 1980, 1980, 700.00, P0\n",
        "nvidia-smi": "| NVIDIA-SMI 570.1   Driver Version: 570.1   CUDA Version: 12.8 |",
        "nvpmodel -q": "NV Power Mode: MAXN\n0\n",
    }
    read = files.get
    run = lambda cmd: outputs.get(" ".join(cmd))  # noqa: E731 - a one-line stand-in
    cpu = cpu_info(read)
    assert cpu["model"] == "Fake CPU 9000" and cpu["physical_cores"] == 1
    (gpu,) = gpu_info(run)
    assert gpu["name"] == "NVIDIA H100" and gpu["compute_cap"] == "9.0" and gpu["cuda_driver_version"] == "12.8"
    jet = jetson_info(run, read)
    assert jet["power_mode"] == "NV Power Mode: MAXN 0" and jet["model"] == "NVIDIA Jetson AGX Orin"
    assert jet["l4t_release"].startswith("# R36")
    env = capture_environment(run, read)
    assert env["memory_bytes"] == 1024 * 1024 and env["versions"]["numpy"]
    line = summary_line(env)
    assert "Fake CPU 9000" in line and "NVIDIA H100" in line and "MAXN" in line


def test_environment_off_jetson_and_without_gpu():
    assert gpu_info(lambda cmd: None) == []
    assert jetson_info(lambda cmd: None, lambda p: None) is None or __import__("shutil").which("nvpmodel")
    env = capture_environment()
    assert env["cpu"]["logical_cores"] >= 1 and "onnxruntime" in env["versions"]
