"""python -m quantize explain: per-node ranking, float variants, greedy recommendation, bad inputs."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest

from quantize.__main__ import main as cli
from quantize.explain import ExplainConfig, explain, float_variant
from runtime.backends.ort import make_session, predict
from runtime.errors import ArtifactError, ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")

FAST = ["--calib-size", "14", "--min-calib-size", "8", "--no-latency"]


@pytest.fixture(scope="module")
def int8_file(lanmsff_tiny_onnx, tmp_path_factory):
    out = tmp_path_factory.mktemp("explain") / "model.int8.onnx"
    assert (
        cli(["int8", "--onnx", str(lanmsff_tiny_onnx), "--out", str(out), *FAST, "--method", "ort", "--ignore", "none"])
        == 0
    )
    return out


def test_float_variant_of_every_node_equals_fp32(lanmsff_tiny_onnx, int8_file):
    """Returning *every* quantized node to float leaves only graph-input/Q-DQ-free paths: logits near FP32."""
    from runtime.qdq_lint import quantized_ops

    q, f = onnx.load(str(int8_file)), onnx.load(str(lanmsff_tiny_onnx))
    nodes = quantized_ops(q)["int8"]
    variant, sources = float_variant(q, f, nodes)
    onnx.checker.check_model(variant)
    assert set(sources) == set(nodes) and set(sources.values()) == {"fp32"}
    x = np.random.default_rng(0).random((4, 1, 64, 64), dtype=np.float32)
    ref = predict(make_session(f, threads=1), x)
    full = predict(make_session(variant, threads=1), x)
    base = predict(make_session(q, threads=1), x)
    # the variant is much closer to FP32 than the INT8 file (other Q/DQ pairs, e.g. on adds, may remain)
    assert np.abs(full - ref).max() < np.abs(base - ref).max()
    assert len(onnx.load(str(int8_file)).graph.node) == len(q.graph.node)  # the input model is not modified


def test_cli_ranks_nodes_and_writes_reports(lanmsff_tiny_onnx, int8_file, tmp_path, capsys):
    out = tmp_path / "report"
    rc = cli(
        [
            "explain",
            "--fp32",
            str(lanmsff_tiny_onnx),
            "--int8",
            str(int8_file),
            "--out",
            str(out),
            "--target-agreement",
            "1.0",
            "--max-float",
            "3",
        ]
    )
    assert rc == 0
    body = json.loads((out / "explain.json").read_text())
    nodes = body["nodes"]
    int8_names = {n.name for n in onnx.load(str(int8_file)).graph.node}
    assert len(nodes) >= 10 and all(v["name"] in int8_names for v in nodes)
    # ranked: agreement if float never increases down the list
    agree = [v["agreement"] for v in nodes]
    assert agree == sorted(agree, reverse=True)
    base = body["baseline"]["agreement"]
    # returning the top node to float does not lower agreement
    assert nodes[0]["agreement"] >= base
    assert {g["name"] for g in body["groups"]} >= {"stem", "heads"}
    # the recommendation reaches the target or the report says it cannot
    if body["reached"]:
        assert (body["greedy"][-1]["agreement"] if body["greedy"] else base) >= 1.0
    else:
        assert "cannot reach" in body["message"] and len(body["recommended"]) <= 3
    md = (out / "explain.md").read_text()
    assert "Nodes ranked" in md and nodes[0]["name"] in md
    assert (out / "explain.png").read_bytes()[:4] == b"\x89PNG"
    assert "INT8 agreement with FP32" in capsys.readouterr().out


def test_greedy_set_raises_agreement(lanmsff_tiny_onnx, int8_file, tmp_path):
    res = explain(ExplainConfig(fp32=str(lanmsff_tiny_onnx), int8=str(int8_file), target_agreement=1.0, max_float=4))
    steps = [res.baseline.agreement, *(v.agreement for v in res.greedy)]
    assert steps == sorted(steps) and len(res.recommended) == len(res.greedy)
    assert all(v.output_sqnr_db is None or np.isfinite(v.output_sqnr_db) for v in res.nodes)


def test_bad_inputs_are_clear(lanmsff_tiny_onnx, manet_tiny_onnx, int8_file, tmp_path, caplog):
    with pytest.raises(ArtifactError, match="not a Q/DQ INT8 model"):
        explain(ExplainConfig(fp32=str(lanmsff_tiny_onnx), int8=str(lanmsff_tiny_onnx)))
    with pytest.raises(ArtifactError, match="not the same model|quantized from"):
        explain(ExplainConfig(fp32=str(manet_tiny_onnx), int8=str(int8_file)))
    # same graph interface, different file: the INT8 sidecar names the FP32 file it came from
    other = tmp_path / "other.onnx"
    m = onnx.load(str(lanmsff_tiny_onnx))
    m.graph.initializer[0].raw_data = bytes(len(m.graph.initializer[0].raw_data))
    onnx.save(m, str(other))
    with pytest.raises(ArtifactError, match="quantized from a file"):
        explain(ExplainConfig(fp32=str(other), int8=str(int8_file)))
    with pytest.raises(ArtifactError, match="file not found"):
        explain(ExplainConfig(fp32=str(tmp_path / "nope.onnx"), int8=str(int8_file)))
    with pytest.raises(ConfigError, match="target-agreement"):
        ExplainConfig(fp32="a", int8="b", target_agreement=1.5)
    assert (
        cli(
            [
                "explain",
                "--fp32",
                str(lanmsff_tiny_onnx),
                "--int8",
                str(lanmsff_tiny_onnx),
                "--out",
                str(tmp_path / "r"),
            ]
        )
        != 0
    )
    assert "not a Q/DQ INT8 model" in caplog.text


def test_planted_bad_node_is_ranked_first_and_recommended(lanmsff_tiny_onnx, int8_file, tmp_path):
    """Coarsen one conv's INT8 weights: explain must name that node and recover agreement."""
    from onnx import numpy_helper

    from runtime.qdq_lint import GraphIndex, quantized_ops

    m = onnx.load(str(int8_file))
    g = GraphIndex(m)
    planted = quantized_ops(g)["int8"][0]  # the first in graph order: the stem conv, on every path
    node = next(x for x in g.nodes if x.name == planted)
    w_name = g.producer[node.input[1]].input[0]
    init = next(i for i in m.graph.initializer if i.name == w_name)
    w = numpy_helper.to_array(init)
    coarse = np.clip(np.round(w.astype(np.float32) / 32) * 32, -127, 127)  # ~3-bit weights: a badly quantized node
    init.CopyFrom(numpy_helper.from_array(coarse.astype(w.dtype), w_name))
    bad = tmp_path / "planted.int8.onnx"
    onnx.save(m, str(bad))
    res = explain(ExplainConfig(fp32=str(lanmsff_tiny_onnx), int8=str(bad), target_agreement=1.0, max_float=3))
    assert res.nodes[0].name == planted, [(v.name, v.agreement, v.logit_sqnr_db) for v in res.nodes[:3]]
    assert res.nodes[0].logit_sqnr_db > res.baseline.logit_sqnr_db + 10
    assert res.nodes[0].agreement >= res.baseline.agreement
    if res.baseline.agreement < 1.0:
        assert res.recommended and res.recommended[0] == planted
    # the applied recommendation (or the top node alone) is written as a runnable INT8 file with a sidecar
    from quantize.explain import write_explain, write_recommended
    from runtime.artifacts import read_sidecar

    res = dataclasses.replace(res, recommended=(planted,))
    model = write_recommended(res, tmp_path / "rec.int8.onnx")
    from quantize.calibration import build_validation_set
    from runtime.contract import read_contract

    x = build_validation_set(read_contract(lanmsff_tiny_onnx)).tensors  # what explain scored on
    ref = predict(make_session(lanmsff_tiny_onnx, threads=1), x)
    got = predict(make_session(model, threads=1), x)
    base = predict(make_session(bad, threads=1), x)
    from quantize.explain import sqnr_db

    assert sqnr_db(ref, got) == pytest.approx(res.nodes[0].logit_sqnr_db, abs=0.5)
    assert sqnr_db(ref, got) > sqnr_db(ref, base) + 10
    assert planted in read_sidecar(model)["float_nodes"]
    assert "model" in write_explain(res, tmp_path / "rep", plots=False)


def test_rewritten_weights_are_not_taken_from_fp32(lanmsff_tiny_onnx, int8_file):
    """A node whose FP32 twin holds other weights (folded/permuted by a rewrite) keeps its dequantized weight."""
    from onnx import numpy_helper

    from runtime.qdq_lint import quantized_ops

    q, f = onnx.load(str(int8_file)), onnx.load(str(lanmsff_tiny_onnx))
    name = quantized_ops(q)["int8"][1]
    twin = next(n for n in f.graph.node if n.name == name)
    init = next(i for i in f.graph.initializer if i.name == twin.input[1])
    w = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(w[::-1]), init.name))  # output channels permuted
    _, sources = float_variant(q, f, [name, quantized_ops(q)["int8"][2]])
    assert sources[name] == "dequantized" and sources[quantized_ops(q)["int8"][2]] == "fp32"
