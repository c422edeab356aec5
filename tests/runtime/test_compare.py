"""runtime.compare: tolerance table, planted faults, exact deltas, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.compare import TOLERANCES, Precision, Tolerance, as_precision, compare_outputs, softmax_kl
from runtime.errors import ConfigError, DataError

NAMES = ("a", "b", "c", "d")


def _data(n=400, seed=0):
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((n, 4)).astype(np.float32) * 3
    labels = ref.argmax(1).astype(np.int64)
    labels[: n // 4] = rng.integers(0, 4, n // 4)  # ~81% accurate reference
    ids = [f"s{i}" for i in range(n)]
    return ref, labels, ids


def _cmp(ref, cand, labels, ids, precision, **kw):
    return compare_outputs(ref, cand, labels, precision=precision, class_names=NAMES, sample_ids=ids, **kw)


def test_table_matches_the_contract():
    assert TOLERANCES[Precision.FP32] == Tolerance(max_abs_diff=1e-4, min_top1_agreement=1.0)
    assert TOLERANCES[Precision.FP16] == Tolerance(max_abs_diff=1e-2, min_top1_agreement=0.999)
    assert TOLERANCES[Precision.INT8] == Tolerance(min_top1_agreement=0.99, max_accuracy_drop_pts=1.0)
    assert as_precision("FP16") is Precision.FP16
    with pytest.raises(ConfigError, match="valid"):
        as_precision("bf16")


def test_identical_outputs_pass_every_precision():
    ref, y, ids = _data()
    for p in Precision:
        r = _cmp(ref, ref.copy(), y, ids, p)
        assert r.passed and r.reasons == () and r.top1_agreement == 1.0 and r.max_abs_diff == 0.0
        assert r.accuracy == r.reference_accuracy and r.accuracy_drop_pts == 0.0 and r.kl_mean == 0.0
        assert r.flipped_ids == () and all(v == 0 for row in r.confusion_delta for v in row)


def test_swapped_classes_fail_with_exact_flips_and_deltas():
    ref, y, ids = _data()
    cand = ref[:, [3, 1, 2, 0]]  # classes a and d swapped
    r = _cmp(ref, cand, y, ids, "fp32")
    pred_ref = ref.argmax(1)
    moved = np.isin(pred_ref, [0, 3])
    assert not r.passed
    assert any("top-1 agreement" in m for m in r.reasons) and any("max |logit diff|" in m for m in r.reasons)
    assert r.flipped_ids == tuple(ids[i] for i in np.flatnonzero(moved))
    assert r.top1_agreement == pytest.approx(1 - moved.mean())
    # Confusion delta: predictions of a and d exchange columns.
    cm_ref = np.zeros((4, 4), int)
    np.add.at(cm_ref, (y, pred_ref), 1)
    cm_cand = cm_ref[:, [3, 1, 2, 0]]
    assert np.array_equal(np.asarray(r.confusion_delta), cm_cand - cm_ref)
    assert np.array_equal(np.asarray(r.reference_confusion), cm_ref)
    support = cm_ref.sum(1)
    expected = (np.diag(cm_cand) - np.diag(cm_ref)) / support
    assert np.allclose(r.per_class_accuracy_delta, expected)
    assert r.per_class_accuracy_delta[1] == 0.0 and r.per_class_accuracy_delta[2] == 0.0
    assert r.kl_mean > 0.1
    # Swapped classes also fail INT8's rules (agreement and accuracy drop).
    r8 = _cmp(ref, cand, y, ids, "int8")
    assert not r8.passed and any("accuracy drop" in m for m in r8.reasons)


def test_tiny_constant_bias_fails_fp32_only():
    ref, y, ids = _data()
    cand = ref + np.float32(1e-3)
    r32 = _cmp(ref, cand, y, ids, "fp32")
    assert not r32.passed and len(r32.reasons) == 1 and "max |logit diff|" in r32.reasons[0]
    assert r32.top1_agreement == 1.0 and r32.max_abs_diff == pytest.approx(1e-3, rel=1e-3)
    assert r32.kl_mean < 1e-12  # a constant shift does not move the softmax
    assert _cmp(ref, cand, y, ids, "fp16").passed
    assert _cmp(ref, cand, y, ids, "int8").passed


def test_int8_rules_agreement_and_accuracy_drop():
    ref, y, ids = _data(n=1000)
    correct = np.flatnonzero(ref.argmax(1) == y)
    cand = ref.copy()
    # Flip 5 correct predictions: agreement 0.995 (>= 0.99), drop 0.5 pts (<= 1): pass.
    for i in correct[:5]:
        cand[i] = np.roll(cand[i], 1)
    r = _cmp(ref, cand, y, ids, "int8")
    assert r.passed and r.top1_agreement == pytest.approx(0.995) and r.accuracy_drop_pts == pytest.approx(0.5)
    assert r.max_abs_diff > 1e-2  # no logit bound for int8
    # 15 flips of correct predictions: agreement 0.985 and drop 1.5 pts: both rules fail.
    for i in correct[5:15]:
        cand[i] = np.roll(cand[i], 1)
    r = _cmp(ref, cand, y, ids, "int8")
    assert not r.passed and len(r.reasons) == 2 and r.accuracy_drop_pts == pytest.approx(1.5)
    # An explicit tolerance overrides the table.
    assert _cmp(ref, cand, y, ids, "int8", tolerance=Tolerance(min_top1_agreement=0.98, max_accuracy_drop_pts=2)).passed


def test_fp16_agreement_bound():
    ref, y, ids = _data(n=2000)
    cand = ref.astype(np.float16)
    r = _cmp(ref, cand, y, ids, "fp16")
    assert r.max_abs_diff < 1e-2 and r.top1_agreement >= 0.999 and r.passed
    cand = ref.copy()
    cand[:3] = cand[:3, ::-1]  # 3 flips of 2000: agreement 0.9985 < 0.999
    flips = int((cand.argmax(1) != ref.argmax(1)).sum())
    r = _cmp(ref, cand, y, ids, "fp16")
    assert not r.passed and r.top1_agreement == pytest.approx(1 - flips / 2000)


def test_statistics_match_numpy():
    ref, y, ids = _data()
    rng = np.random.default_rng(5)
    cand = ref + rng.normal(0, 1e-3, ref.shape).astype(np.float32)
    r = _cmp(ref, cand, y, ids, "fp16")
    d = np.abs(cand.astype(np.float64) - ref)
    assert r.max_abs_diff == pytest.approx(d.max()) and r.mean_abs_diff == pytest.approx(d.mean())
    assert r.p99_abs_diff == pytest.approx(np.percentile(d, 99))
    r64, c64 = ref.astype(np.float64), cand.astype(np.float64)
    p = np.exp(r64 - r64.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(c64 - c64.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    assert r.kl_mean == pytest.approx(np.mean(np.sum(p * np.log(p / q), 1)), rel=1e-6)
    assert np.all(softmax_kl(ref, cand) >= 0)
    d = r.to_dict()
    assert d["precision"] == "fp16" and set(d["per_class_accuracy_delta"]) == set(NAMES)


def test_nan_candidate_fails_cleanly():
    ref, y, ids = _data()
    cand = ref.copy()
    cand[7, 2] = np.nan
    r = _cmp(ref, cand, y, ids, "fp16")
    assert not r.passed and "NaN/inf" in r.reasons[0] and np.isfinite(r.max_abs_diff)


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda ref, cand, y, ids: (ref, cand[:, :3], y, ids), "shape"),
        (lambda ref, cand, y, ids: (ref, cand[:-1], y, ids), "shape"),
        (lambda ref, cand, y, ids: (ref, cand.astype(np.int32), y, ids), "floating"),
        (lambda ref, cand, y, ids: (ref[0], cand[0], y, ids), "2-D"),
        (lambda ref, cand, y, ids: (ref, cand, y[:-1], ids), "labels"),
        (lambda ref, cand, y, ids: (ref, cand, y.astype(np.float32), ids), "labels"),
        (lambda ref, cand, y, ids: (ref, cand, y, ids[:-1]), "sample ids"),
        (lambda ref, cand, y, ids: (ref, cand, y + 10, ids), "labels in"),
    ],
)
def test_bad_inputs_raise_data_error(mutate, match):
    ref, y, ids = _data(n=20)
    args = mutate(ref, ref.copy(), y, ids)
    with pytest.raises(DataError, match=match):
        _cmp(*args, "fp32")


def test_class_name_count_must_match():
    ref, y, ids = _data(n=20)
    with pytest.raises(DataError, match="class names"):
        compare_outputs(ref, ref, y, precision="fp32", class_names=("a", "b"), sample_ids=ids)
