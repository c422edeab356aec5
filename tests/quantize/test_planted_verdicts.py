"""Parity verdicts on planted faults in real exported files (tiny LANMSFF, random init).

A verdict must mean something a user cares about: an honest INT8/FP16 file passes; an INT8 file
with one conv's weights scaled by 10, a model with two classes swapped and an FP16 file whose
activations overflow all FAIL, each with a reason that names the bound it missed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from quantize.__main__ import main as cli
from runtime.compare import Verdict
from runtime.parity import ParityConfig, run_parity

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")
FAST = ["--calib-size", "14", "--min-calib-size", "8", "--no-latency", "--ignore", "none"]


def _save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _scaled_conv_weight(src: Path, dst: Path, factor: float, which: int = 0) -> Path:
    """Copy of ``src`` with the weights of its ``which``-th Conv multiplied by ``factor``.

    In a Q/DQ file the weight is a DequantizeLinear of an int8 constant: its scale is multiplied
    (the planted fault of a corrupted per-channel scale); in a float file the weight itself.
    """
    model = onnx.load(str(src))
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}
    conv = [n for n in model.graph.node if n.op_type == "Conv"][which]
    w = conv.input[1]
    if w in producers and producers[w].op_type == "DequantizeLinear":
        w = producers[w].input[1]  # the scale
    t = inits[w]
    arr = numpy_helper.to_array(t)
    t.CopyFrom(numpy_helper.from_array((arr.astype(np.float64) * factor).astype(arr.dtype), t.name))
    return _save(model, dst)


def _swapped_classes(src: Path, dst: Path, a: int = 0, b: int = 3) -> Path:
    """Copy with the classifier's rows for classes ``a`` and ``b`` exchanged (a wrong class order)."""
    model = onnx.load(str(src))
    gemm = [n for n in model.graph.node if n.op_type in ("Gemm", "MatMul")][-1]
    inits = {t.name: t for t in model.graph.initializer}
    for name in gemm.input[1:]:
        if name in inits:
            arr = numpy_helper.to_array(inits[name]).copy()
            axis = (
                0
                if arr.ndim == 1 or (gemm.op_type == "Gemm" and any(a.name == "transB" and a.i for a in gemm.attribute))
                else 1
            )
            idx = [slice(None)] * arr.ndim
            idx[axis] = [a, b]
            swapped = [slice(None)] * arr.ndim
            swapped[axis] = [b, a]
            arr[tuple(idx)] = arr[tuple(swapped)]
            inits[name].CopyFrom(numpy_helper.from_array(arr, name))
    return _save(model, dst)


@pytest.fixture(scope="module")
def files(lanmsff_tiny_onnx, tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("planted")
    int8 = d / "model.nncf.int8.onnx"
    assert cli(["int8", "--onnx", str(lanmsff_tiny_onnx), "--out", str(int8), "--method", "nncf", *FAST]) == 0
    fp16 = d / "model.fp16.onnx"
    assert cli(["fp16", "--onnx", str(lanmsff_tiny_onnx), "--out", str(fp16), "--no-latency"]) == 0
    return {"fp32": lanmsff_tiny_onnx, "int8": int8, "fp16": fp16, "dir": d}


def _verdicts(reference: Path, *candidates: Path):
    run = run_parity(
        ParityConfig(
            reference=str(reference),
            candidates=tuple(str(c) for c in candidates),
            backends=("ort",),
            threads=1,
            split="train",
        )
    )
    return {Path(r.model).name: r.result for r in run.rows if not r.is_reference}


def test_honest_conversions_pass(files):
    res = _verdicts(files["fp32"], files["fp16"], files["int8"])
    assert res["model.fp16.onnx"].verdict is Verdict.PASS
    assert res["model.nncf.int8.onnx"].passed


def test_int8_with_one_conv_scaled_by_10_fails_with_a_reason(files):
    bad = _scaled_conv_weight(files["int8"], files["dir"] / "bad.int8.onnx", 10.0)
    r = _verdicts(files["fp32"], files["int8"], bad)["bad.int8.onnx"]
    assert r.verdict is Verdict.FAIL
    assert any(
        "top-1 agreement" in m and "predictions changed class" in m and "below the bound 0.98" in m for m in r.reasons
    ), r.reasons
    assert r.top1_agreement_ci[1] < 0.98


def test_swapped_class_order_fails(files):
    import onnxruntime as ort

    x = np.random.default_rng(0).random((16, 1, 64, 64), dtype=np.float32)
    pred = (
        ort.InferenceSession(str(files["fp32"]), providers=["CPUExecutionProvider"])
        .run(None, {"input": x})[0]
        .argmax(1)
    )
    top = int(np.bincount(pred, minlength=7).argmax())  # swap the class the model predicts most with another
    bad = _swapped_classes(files["fp32"], files["dir"] / "swapped.onnx", a=top, b=(top + 1) % 7)
    r = _verdicts(files["fp32"], bad)["swapped.onnx"]
    assert r.verdict is Verdict.FAIL and r.flipped > 0
    assert any("probabilities differ" in m for m in r.reasons) and any("top-1 agreement" in m for m in r.reasons)


def test_fp16_activation_overflow_fails(files):
    # The stem conv's weights scaled so the largest is 60,000: still inside float16's range (65,504),
    # but its 3x3 sums of them are not; the FP16 graph produces inf/NaN, which no tolerance forgives.
    model = onnx.load(str(files["fp16"]))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == conv.input[1]))
    bad = _scaled_conv_weight(files["fp16"], files["dir"] / "overflow.fp16.onnx", 60000.0 / float(np.abs(w).max()))
    w16 = [t for t in onnx.load(str(bad)).graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert all(np.isfinite(numpy_helper.to_array(t)).all() for t in w16)
    r = _verdicts(files["fp32"], bad)["overflow.fp16.onnx"]
    assert r.verdict is Verdict.FAIL
    assert "NaN/inf outputs (an overflow: for FP16 keep the overflowing nodes in FP32)" in r.reasons[0], r.reasons
