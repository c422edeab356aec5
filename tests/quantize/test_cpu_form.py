"""The cpu INT8 form's graph: what onnxruntime's optimized CPU session runs (structure, not timing).

The speed of the cpu form comes from the INT8 graph staying integer and channels-last between
convolutions. These tests pin the structural properties that make it so on lanmsff_tiny (same
topology as LANMSFF): every MaxPool runs as an integer NhwcMaxPool straight on a QLinearConv's
output, no float Max/Add/Sub/Mul/Reshape is left from PWFS or the channel shuffle, no weight is
dequantized at run time, and few Q/DQ/Transpose nodes remain.
"""

from __future__ import annotations

import collections
import copy
import os
import tempfile

import numpy as np
import onnx
import pytest

from quantize.methods.ort_ptq import quantize_ort
from quantize.targets.cpu import rewrite_for_cpu
from runtime.backends.ort import make_session


def _optimized(model):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "opt.onnx")
        make_session(model, threads=1, optimized_model_path=path)
        return onnx.load(path)


@pytest.fixture(scope="module")
def tiny(lanmsff_tiny_onnx):
    return onnx.load(str(lanmsff_tiny_onnx))


@pytest.fixture(scope="module")
def samples():
    return np.random.default_rng(0).random((48, 1, 64, 64), dtype=np.float32)


@pytest.fixture(scope="module")
def cpu_int8(tiny, samples):
    q, info = quantize_ort(tiny, samples, target="cpu")
    return q, info, _optimized(q)


def test_rewrites_apply_and_keep_fp32_outputs(tiny, samples):
    work = copy.deepcopy(tiny)
    done = rewrite_for_cpu(work, samples[:8])
    assert set(done) == {
        "relu_before_maxpool",
        "pwfs_into_head",
        "fold_channel_shuffle",
        "reduce_mean_as_pool_and_conv",
    }
    assert (
        len(done["relu_before_maxpool"]) == 4
        and len(done["pwfs_into_head"]) == 3
        and len(done["fold_channel_shuffle"]) == 2
    )
    # 2 MassAtt blocks × (spatial + channel mean) + 3 PWFS × 2 means + the last block's mean
    assert len(done["reduce_mean_as_pool_and_conv"]) == 11
    ops = collections.Counter(n.op_type for n in work.graph.node)
    assert ops["Max"] == 0 and ops["Sub"] == 0 and ops["Reshape"] == 0 and ops["Transpose"] == 0
    assert ops["ReduceMean"] == 0 and ops["GlobalAveragePool"] == 9
    x = samples[8:24]
    want = make_session(tiny, threads=1).run(None, {"input": x})[0]
    got = make_session(work, threads=1).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-4 * float(np.abs(want).max()))


def test_rewrite_refuses_a_graph_it_would_change(tiny, samples, monkeypatch):
    import quantize.targets.cpu as cpu

    def broken(model):  # a "rewrite" that changes the function: must be caught and undone
        w = next(t for t in model.graph.initializer if t.name == "fc.bias")
        w.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(w) + 1.0, "fc.bias"))
        return ["fc.bias"]

    monkeypatch.setattr(cpu, "pwfs_into_head", broken)
    work = copy.deepcopy(tiny)
    assert rewrite_for_cpu(work, samples[:4], rewrites=("pwfs_into_head",)) == {}
    assert work == tiny


def test_cpu_form_records_what_it_did(cpu_int8):
    _, info, _ = cpu_int8
    assert info["cpu_rewrites"]["fold_channel_shuffle"]
    assert set(info["float_classifier"]) == {"/fc/Gemm", "/Concat"}
    assert "ConvTranspose" not in info["settings"]["op_types_to_quantize"]


def test_maxpool_runs_in_int8_on_the_conv_output(cpu_int8):
    _, _, opt = cpu_int8
    producer = {o: n for n in opt.graph.node for o in n.output}
    pools = [n for n in opt.graph.node if "MaxPool" in n.op_type]
    assert len(pools) == 4 and all(n.op_type == "NhwcMaxPool" for n in pools)
    assert all(producer[n.input[0]].op_type == "QLinearConv" for n in pools)


def test_no_float_islands_between_convs(cpu_int8):
    _, _, opt = cpu_int8
    ops = collections.Counter(n.op_type for n in opt.graph.node)
    # Nothing of PWFS or the means runs in float; the channel shuffle is folded away.
    for op in (
        "MaxPool",
        "Max",
        "Sub",
        "Add",
        "Mul",
        "Reshape",
        "Conv",
        "FusedConv",
        "ReduceMean",
        "GlobalAveragePool",
    ):
        assert ops[op] == 0, (op, ops)
    # 30 convs + MassAtt's two channel means as 1×1 convs; every spatial mean in INT8.
    assert ops["QLinearConv"] == 32 and ops["QLinearGlobalAveragePool"] == 9
    # No Transpose of the 5-D channel shuffle. The layout Transposes left: the input, the MassAtt
    # float ConvTranspose branch, the PWFS channel Split, and [N, C, 1, 1] pooled vectors.
    transposes = [n for n in opt.graph.node if n.op_type == "Transpose"]
    assert all(len(onnx.helper.get_attribute_value(n.attribute[0])) == 4 for n in transposes)
    assert len(transposes) <= 16
    # Stand-alone Q/DQ (24 Q and 49 DQ before the rewrites on LANMSFF): the input's Q, the
    # ConvTranspose branch's DQ/Q, and DQ of pooled vectors into the float classifier.
    assert ops["QuantizeLinear"] <= 3 and ops["DequantizeLinear"] <= 9


def test_no_weight_dequantized_at_run_time(cpu_int8):
    _, _, opt = cpu_int8
    consts = {t.name for t in opt.graph.initializer}
    dq_of_const = [n.name for n in opt.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in consts]
    assert dq_of_const == []


def test_cpu_form_matches_fp32_closely(tiny, cpu_int8, samples):
    q, _, _ = cpu_int8
    x = samples[:16]
    want = make_session(tiny, threads=1).run(None, {"input": x})[0]
    got = make_session(q, threads=1).run(None, {"input": x})[0]
    assert float(np.abs(got - want).mean()) < 0.1 * float(np.abs(want).mean()) + 0.05


def test_tensorrt_form_is_not_rewritten(tiny, samples):
    q, info = quantize_ort(tiny, samples[:32], target="tensorrt")
    ops = collections.Counter(n.op_type for n in q.graph.node)
    assert ops["Max"] > 0 and ops["Reshape"] > 0  # PWFS and the shuffle as exported
    assert "cpu_rewrites" not in info and info["settings"]["activation_type"] == "QInt8"


def test_pwfs_min_runs_on_the_quantized_tensor(cpu_int8):
    q, info, opt = cpu_int8
    assert len(info["integer_min"]) == 6  # two Mins in each of the 3 PWFS
    producer = {o: n for n in q.graph.node for o in n.output}
    mins = [n for n in q.graph.node if n.op_type == "Min"]
    assert len(mins) == 6
    # Every Min reads integer tensors (the quantized Split outputs, or the previous integer Min), never a DQ.
    assert all(producer[i].op_type in ("QuantizeLinear", "Min") for n in mins for i in n.input)
    assert sum(n.op_type == "Min" for n in opt.graph.node) == 6


def test_integer_min_is_exact(tiny, samples):
    """``min`` commutes with a shared monotonic dequantization: the rewrite changes no output."""
    import quantize.targets.cpu as cpu

    calib = samples[:32]
    with_min, info = quantize_ort(tiny, calib, target="cpu")
    assert info["integer_min"]
    saved = cpu.min_in_integers
    try:
        cpu.min_in_integers = lambda model: []
        without, _ = quantize_ort(tiny, calib, target="cpu")
    finally:
        cpu.min_in_integers = saved
    x = samples[32:48]
    a = make_session(with_min, threads=1).run(None, {"input": x})[0]
    b = make_session(without, threads=1).run(None, {"input": x})[0]
    # Only the requantization of the Min result is skipped (it read the inputs' scale before): the
    # logits move by far less than one quantization step of the pooled features.
    assert float(np.abs(a - b).max()) < 0.02 * float(np.abs(b).max())


@pytest.mark.parametrize("skip", ["relu_before_maxpool", "pwfs_into_head", "all"])
def test_any_subset_of_rewrites_quantizes_to_a_valid_graph(tiny, samples, skip):
    """Regression: without the PWFS fold, the integer Min's new DQ sat after its readers and the
    pruning walk dropped it ("graph rewrite left a cycle or a dangling input at '/Sub'")."""
    import quantize.targets.cpu as cpu

    keep = () if skip == "all" else tuple(r for r in cpu.CPU_REWRITES if r != skip)
    q, info = quantize_ort(tiny, samples[:32], target="cpu", cpu_rewrites=keep)
    onnx.checker.check_model(q, full_check=True)
    assert skip not in info.get("cpu_rewrites", {})
    if skip in ("pwfs_into_head", "all"):
        assert info["integer_min"]  # the Mins of the unfolded PWFS still run on integers
    x = samples[32:48]
    ref = make_session(tiny, threads=1).run(None, {"input": x})[0]
    got = make_session(q, threads=1).run(None, {"input": x})[0]
    assert float(np.mean(got.argmax(1) == ref.argmax(1))) >= 0.75


def test_nncf_cpu_target_gets_the_cpu_rewrites_and_float_classifier(tiny, samples):
    from quantize.methods.nncf_ptq import quantize_nncf
    from runtime.qdq_lint import quantized_ops

    q, info = quantize_nncf(tiny, samples[:32], target="cpu")
    assert set(info["cpu_rewrites"]) == {
        "relu_before_maxpool",
        "pwfs_into_head",
        "fold_channel_shuffle",
        "reduce_mean_as_pool_and_conv",
    }
    assert {"/fc/Gemm", "/Concat"} <= set(info["ignored_scope"])
    status = quantized_ops(q)
    assert "/fc/Gemm" in status["float"] and len(status["int8"]) >= 30
    ops = collections.Counter(n.op_type for n in q.graph.node)
    assert ops["ReduceMean"] == 0 and ops["Transpose"] == 0 and ops["Max"] == 0
    x = samples[32:48]
    want = make_session(tiny, threads=1).run(None, {"input": x})[0]
    got = make_session(q, threads=1).run(None, {"input": x})[0]
    assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.95
