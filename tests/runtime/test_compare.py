"""runtime.compare: tolerance table, planted faults, exact deltas, bad inputs."""

from __future__ import annotations

import numpy as np
import pytest

from runtime.compare import (
    TOLERANCES,
    Precision,
    Tolerance,
    Verdict,
    as_precision,
    compare_outputs,
    paired_drop_interval,
    softmax_kl,
    wilson_interval,
)
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
    assert TOLERANCES[Precision.FP32] == Tolerance(
        min_top1_agreement=0.999, max_accuracy_drop_pts=0.5, max_prob_diff=1e-4
    )
    assert TOLERANCES[Precision.FP16] == Tolerance(
        min_top1_agreement=0.995, max_accuracy_drop_pts=0.5, max_prob_diff=1e-2
    )
    assert TOLERANCES[Precision.INT8] == Tolerance(min_top1_agreement=0.98, max_accuracy_drop_pts=1.0)
    assert TOLERANCES[Precision.INT8].describe() == "agree ≥ 0.98, drop ≤ 1 pt"
    # bfloat16 (a runtime's choice): FP16's probability line x8 (8 significant bits to 11), 1% of answers
    assert TOLERANCES[Precision.BF16] == Tolerance(
        min_top1_agreement=0.99, max_accuracy_drop_pts=0.5, max_prob_diff=8e-2
    )
    assert as_precision("FP16") is Precision.FP16 and as_precision("bf16") is Precision.BF16
    with pytest.raises(ConfigError, match="valid"):
        as_precision("fp8")


def test_bf16_rounding_passes_bf16_bounds_and_fails_fp32_ones():
    ref, y, ids = _data()
    # Round the logits to bfloat16 (keep the top 16 bits of each float32): what a bf16 run adds at the end.
    bits = ref.astype(np.float32).view(np.uint32)
    rounded = ((bits + 0x8000) & 0xFFFF0000).view(np.float32)
    assert _cmp(ref, rounded, y, ids, Precision.BF16).passed
    assert not _cmp(ref, rounded, y, ids, Precision.FP32).passed


def test_identical_outputs_pass_every_precision():
    ref, y, ids = _data()
    for p in Precision:
        r = _cmp(ref, ref.copy(), y, ids, p)
        assert r.passed and r.verdict is Verdict.PASS and r.reasons == () and r.notes == ()
        assert r.top1_agreement == 1.0 and r.max_abs_diff == 0.0 and r.max_prob_diff == 0.0
        assert r.accuracy == r.reference_accuracy and r.accuracy_drop_pts == 0.0 and r.kl_mean == 0.0
        assert r.accuracy_drop_ci_pts == (0.0, 0.0)
        assert r.flipped_ids == () and all(v == 0 for row in r.confusion_delta for v in row)


def test_swapped_classes_fail_with_exact_flips_and_deltas():
    ref, y, ids = _data()
    cand = ref[:, [3, 1, 2, 0]]  # classes a and d swapped
    r = _cmp(ref, cand, y, ids, "fp32")
    pred_ref = ref.argmax(1)
    moved = np.isin(pred_ref, [0, 3])
    assert not r.passed and r.verdict is Verdict.FAIL
    assert any("top-1 agreement" in m for m in r.reasons) and any("probabilities differ" in m for m in r.reasons)
    assert r.flipped_ids == tuple(ids[i] for i in np.flatnonzero(moved))
    assert r.top1_agreement == pytest.approx(1 - moved.mean())
    # What the flips turned into: only a <-> d.
    assert {(a, b) for a, b, _ in r.prediction_shift} == {("a", "d"), ("d", "a")}
    assert sum(v for *_, v in r.prediction_shift) == int(moved.sum())
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
    assert not r8.passed and any("accuracy drops" in m for m in r8.reasons)


def test_logit_scale_does_not_decide_the_verdict():
    """A model with large logits and FP16-sized rounding passes; an absolute logit bound would fail it."""
    ref, y, ids = _data(n=560)
    big = ref * 20  # logits in the tens
    rng = np.random.default_rng(1)
    cand = big + rng.normal(0, 0.004, big.shape)  # |Δlogit| up to ~0.015: the demo's FP16 failed 0.01
    r = _cmp(big, cand, y, ids, "fp16")
    assert r.max_abs_diff > 0.01 and r.max_prob_diff < 1e-2 and r.verdict is Verdict.PASS
    # The optional raw-logit bound still exists for users who want it.
    strict = Tolerance(max_abs_diff=1e-2)
    assert not _cmp(big, cand, y, ids, "fp16", tolerance=strict).passed


def test_a_constant_logit_shift_passes_every_precision():
    ref, y, ids = _data()
    cand = ref + np.float32(1e-3)
    for p in Precision:  # a shift does not move the softmax: no bound is about logit offsets
        r = _cmp(ref, cand, y, ids, p)
        assert r.verdict is Verdict.PASS and r.max_prob_diff < 1e-6 and r.kl_mean < 1e-12


def test_one_image_in_560_is_not_a_verdict():
    ref, y, ids = _data(n=560)
    cand = ref.copy()
    i = int(np.flatnonzero(ref.argmax(1) == y)[0])
    cand[i] = np.roll(cand[i], 1)  # one correct prediction flipped
    r = _cmp(ref, cand, y, ids, "fp32", tolerance=Tolerance(min_top1_agreement=0.999, max_accuracy_drop_pts=0.1))
    # 0.9982 < 0.999 and a 0.18-pt drop > 0.1 at the point estimate, but both intervals reach the bounds.
    assert r.verdict is Verdict.UNCERTAIN and r.passed and r.reasons == () and len(r.notes) == 2
    lo, hi = r.top1_agreement_ci
    assert lo < r.top1_agreement < 0.999 < hi
    assert r.accuracy_drop_ci_pts[0] < 0.1 < r.accuracy_drop_pts
    assert "too few samples" in r.notes[0]


def test_int8_rules_agreement_and_accuracy_drop():
    ref, y, ids = _data(n=1000)
    correct = np.flatnonzero(ref.argmax(1) == y)
    cand = ref.copy()
    # Flip 10 correct predictions: agreement 0.99 (>= 0.98), drop 1.0 pt (<= 1): pass.
    for i in correct[:10]:
        cand[i] = np.roll(cand[i], 1)
    r = _cmp(ref, cand, y, ids, "int8")
    assert (
        r.verdict is Verdict.PASS
        and r.top1_agreement == pytest.approx(0.99)
        and r.accuracy_drop_pts == pytest.approx(1.0)
    )
    assert r.max_prob_diff > 0.1  # no probability bound for int8
    # 60 flips of correct predictions: agreement 0.94 (CI well below 0.98), drop 6 pts: both rules fail.
    for i in correct[10:60]:
        cand[i] = np.roll(cand[i], 1)
    r = _cmp(ref, cand, y, ids, "int8")
    assert r.verdict is Verdict.FAIL and len(r.reasons) == 2 and r.accuracy_drop_pts == pytest.approx(6.0)
    assert "50 of 1000" not in r.reasons[0] and "60 of 1000 predictions changed class" in r.reasons[0]
    # An explicit tolerance overrides the table.
    assert _cmp(ref, cand, y, ids, "int8", tolerance=Tolerance(min_top1_agreement=0.9, max_accuracy_drop_pts=8)).passed


def test_wilson_and_paired_intervals():
    lo, hi = wilson_interval(556, 560)
    assert 0.98 < lo < 0.9929 < hi < 0.998  # 4 flips of 560, the demo's INT8 CPU form
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)
    a = np.array([True] * 100)
    b = a.copy()
    b[:3] = False
    drop, lo, hi = paired_drop_interval(a, b)
    assert drop == pytest.approx(3.0) and lo < 0 < 3.0 < hi  # 3 of 100 one way: not significant (McNemar p=0.25)
    b[:10] = False
    drop, lo, hi = paired_drop_interval(a, b)
    assert drop == pytest.approx(10.0) and 0 < lo < 10.0 < hi
    assert paired_drop_interval(a, a) == (0.0, 0.0, 0.0)


def test_unlabelled_samples_judge_agreement_only():
    ref, _, ids = _data()
    cand = ref[:, [3, 1, 2, 0]]
    r = _cmp(ref, cand, None, ids, "int8")
    assert not r.labelled and r.accuracy is None and r.accuracy_drop_pts is None and r.accuracy_drop_ci_pts is None
    assert r.verdict is Verdict.FAIL and len(r.reasons) == 1 and "top-1 agreement" in r.reasons[0]
    assert _cmp(ref, ref.copy(), None, ids, "int8").verdict is Verdict.PASS
    assert r.to_dict()["accuracy"] is None


def test_fp16_agreement_bound():
    ref, y, ids = _data(n=2000)
    cand = ref.astype(np.float16)
    r = _cmp(ref, cand, y, ids, "fp16")
    assert r.max_prob_diff < 1e-2 and r.top1_agreement >= 0.999 and r.verdict is Verdict.PASS
    cand = ref.copy()
    cand[:40] = cand[:40, ::-1]  # ~40 flips of 2000: agreement ~0.98, CI entirely below 0.995
    r = _cmp(ref, cand, y, ids, "fp16")
    assert r.verdict is Verdict.FAIL and r.top1_agreement_ci[1] < 0.995


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


def test_ran_precision_is_the_files_or_the_lower_float_the_runtime_chose():
    from runtime.compare import ran_precision

    assert ran_precision("fp32", "bf16") is Precision.BF16 and ran_precision("fp16", "bf16") is Precision.BF16
    assert ran_precision("fp32", "f16") is Precision.FP16
    assert ran_precision("fp32", "f32") is Precision.FP32 and ran_precision("fp32", None) is Precision.FP32
    assert ran_precision("int8", "bf16") is Precision.INT8  # INT8 kernels; its float parts do not change the judgement
    assert ran_precision("fp16", "f32") is Precision.FP16
