"""`runtime bench --profile`: per-node and per-op-type time tables for ORT (and OpenVINO) rows."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import onnx
import pytest
from harness_util import linear_model

from runtime.__main__ import main
from runtime.profile import profile_tables

HAS_OV = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return linear_model(tmp_path_factory.mktemp("prof") / "model.onnx")


def test_tables_are_ranked_and_shares_sum_to_100():
    recs = [
        {"name": "a", "op_type": "Conv", "ms": 3.0},
        {"name": "b", "op_type": "Relu", "ms": 1.0},
        {"name": "c", "op_type": "Conv", "ms": 4.0},
    ]
    t = profile_tables(recs, top=2)
    assert [n["name"] for n in t["nodes"]] == ["c", "a"] and t["total_ms"] == 8.0
    assert [(o["op_type"], o["count"]) for o in t["op_types"]] == [("Conv", 2), ("Relu", 1)]
    assert sum(o["share"] for o in t["op_types"]) == pytest.approx(100.0)
    assert profile_tables([])["op_types"] == []


def test_bench_profile_writes_tables(model, tmp_path):
    backends = "ort,openvino" if HAS_OV else "ort"
    rc = main(
        [
            "bench",
            "--models",
            str(model),
            "--backends",
            backends,
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
            str(tmp_path),
            "--no-progress",
            "--no-plots",
            "--profile",
        ]
    )
    assert rc == 0
    graph_ops = {n.op_type for n in onnx.load(str(model)).graph.node}
    for batch in (1, 4):
        body = json.loads((tmp_path / "profile" / f"{model.parent.name}.model.ort.b{batch}.profile.json").read_text())
        assert body["batch"] == batch and body["backend"] == "ort" and body["node_count"] >= 1
        types = {o["op_type"] for o in body["op_types"]}
        assert types and types <= graph_ops | {"FusedGemm", "FusedConv"}  # onnxruntime may fuse
        assert sum(o["share"] for o in body["op_types"]) == pytest.approx(100.0, abs=0.01)
        assert all(n["ms"] >= 0 for n in body["nodes"]) and len(body["nodes"]) <= 20
        md = (tmp_path / "profile" / f"{model.parent.name}.model.ort.b{batch}.profile.md").read_text()
        assert "## Op types" in md and "Gemm" in md
    if HAS_OV:
        body = json.loads((tmp_path / "profile" / f"{model.parent.name}.model.openvino.b4.profile.json").read_text())
        assert body["op_types"] and body["inference_precision"]
        assert sum(o["share"] for o in body["op_types"]) == pytest.approx(100.0, abs=0.01)


def test_one_slow_call_does_not_move_a_node():
    from runtime.profile import ort_records

    def ev(name, dur):
        return {"cat": "Node", "name": f"{name}_kernel_time", "dur": dur, "args": {"op_name": "Conv"}}

    # five calls: "a" takes 10 µs except one 5 ms hiccup; "b" ran in only two of the five calls
    trace = [ev("a", d) for d in (10, 10, 5000, 10, 12)] + [ev("b", 40), ev("b", 40)]
    recs = {r["name"]: r["ms"] for r in ort_records(trace, runs=5)}
    assert recs["a"] == pytest.approx(0.010)
    assert recs["b"] == 0.0  # the median call did not run it
