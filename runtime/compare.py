"""Pure parity comparison of a candidate's logits against a reference's, judged by precision.

One tolerance table (`TOLERANCES`) keyed by precision decides the verdict; docs/tolerances.md
gives the reasoning. Every bound is about what a classifier's user cares about, and none depends
on the model's logit scale:

- **top-1 agreement**: the share of samples whose predicted class equals the reference's;
- **accuracy drop** in percentage points (only where labels exist);
- **probability error**: the largest |softmax(candidate) - softmax(reference)| over all samples
  and classes. Probabilities live in [0, 1] whatever the logit scale, so one bound serves every
  model (an absolute logit bound failed a good FP16 file of a model with large logits).

Counts are judged with their sampling uncertainty: agreement with a 95% Wilson interval and the
accuracy drop with a paired (McNemar) 95% interval. A bound *fails* only when the whole interval
lies on the wrong side of it, so one image in 560 is not a verdict; when the point estimate misses
the bound but the interval still reaches it, the row passes as *uncertain* and says how many more
samples would settle it. Non-finite candidate outputs always fail.

`compare_outputs` takes arrays (and explicit names/ids) and returns a frozen `ParityResult`;
it never reads files, never logs results and never prints.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import ConfigError, DataError
from runtime.metrics import classification_metrics

Z95 = 1.959963984540054  # two-sided 95% normal quantile


class Precision(str, enum.Enum):
    """Numeric precision a model file was prepared for."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"  # not a file precision: a runtime's choice (OpenVINO runs float layers in bf16 where the CPU has it)
    INT8 = "int8"


class Verdict(str, enum.Enum):
    """Outcome of one parity row.

    PASS: every bound holds at its point estimate. UNCERTAIN: a point estimate misses a bound but
    the 95% interval still reaches it (too few samples to tell; counts as passed). FAIL: a bound
    is missed with 95% confidence, a deterministic bound (probability error) is exceeded, or the
    candidate produced NaN/inf.
    """

    PASS = "pass"
    UNCERTAIN = "uncertain"
    FAIL = "fail"


def as_precision(value: str | Precision) -> Precision:
    """``"fp16"`` -> `Precision.FP16`; unknown names raise `ConfigError` listing the valid ones."""
    try:
        return Precision(str(getattr(value, "value", value)).lower())
    except ValueError:
        raise ConfigError(f"unknown precision {value!r}; valid: {[p.value for p in Precision]}") from None


@dataclass(frozen=True)
class Tolerance:
    """Pass/fail bounds of one precision; None disables a bound.

    Attributes:
        min_top1_agreement: Smallest allowed share of samples whose argmax matches the reference
            (judged with a 95% Wilson interval).
        max_accuracy_drop_pts: Largest allowed accuracy drop (reference - candidate) in
            percentage points (judged with a paired 95% interval; labelled data only).
        max_prob_diff: Largest allowed |softmax(candidate) - softmax(reference)| over all samples
            and classes (deterministic: the arrays are what they are).
        max_abs_diff: Optional bound on the raw logit difference. Off in the table (it depends on
            the model's logit scale); kept for users who want it, e.g. FP32 bit-parity checks.
    """

    min_top1_agreement: float | None = None
    max_accuracy_drop_pts: float | None = None
    max_prob_diff: float | None = None
    max_abs_diff: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {
            "min_top1_agreement": self.min_top1_agreement,
            "max_accuracy_drop_pts": self.max_accuracy_drop_pts,
            "max_prob_diff": self.max_prob_diff,
            "max_abs_diff": self.max_abs_diff,
        }

    def describe(self) -> str:
        """The bounds in one short line, e.g. ``agree ≥ 0.98, drop ≤ 1 pt, Δp ≤ 0.01``."""
        parts = []
        if self.min_top1_agreement is not None:
            parts.append(f"agree ≥ {self.min_top1_agreement:g}")
        if self.max_accuracy_drop_pts is not None:
            parts.append(f"drop ≤ {self.max_accuracy_drop_pts:g} pt")
        if self.max_prob_diff is not None:
            parts.append(f"Δp ≤ {self.max_prob_diff:g}")
        if self.max_abs_diff is not None:
            parts.append(f"Δlogit ≤ {self.max_abs_diff:g}")
        return ", ".join(parts) or "no bounds"


# The one tolerance table (docs/tolerances.md explains each number).
TOLERANCES: Mapping[Precision, Tolerance] = {
    # The same maths in another runtime: probabilities agree to rounding, decisions are identical
    # up to exact ties.
    Precision.FP32: Tolerance(min_top1_agreement=0.999, max_accuracy_drop_pts=0.5, max_prob_diff=1e-4),
    # Half-precision rounding moves probabilities by ~1e-3 on these models; 1e-2 is the line
    # beyond which something other than rounding (an overflow, a lost reduction) is at work.
    Precision.FP16: Tolerance(min_top1_agreement=0.995, max_accuracy_drop_pts=0.5, max_prob_diff=1e-2),
    # bfloat16 keeps 8 significant bits to FP16's 11: its rounding unit is 8x coarser, so the FP16
    # probability line scales by 8; more near-ties flip, so up to 1% of answers may change.
    Precision.BF16: Tolerance(min_top1_agreement=0.99, max_accuracy_drop_pts=0.5, max_prob_diff=8e-2),
    # Quantisation moves probabilities by design, so no probability bound: judged by decisions.
    Precision.INT8: Tolerance(min_top1_agreement=0.98, max_accuracy_drop_pts=1.0),
}


def ran_precision(file_precision: str | Precision, chosen: str | None) -> Precision:
    """The precision a row is judged as: the file's, or the lower float precision the runtime chose
    for it (``chosen``: OpenVINO's ``inference_precision``, bf16 on CPUs that have it)."""
    p = as_precision(file_precision)
    if p in (Precision.FP32, Precision.FP16) and chosen == "bf16":
        return Precision.BF16
    if p is Precision.FP32 and chosen == "f16":
        return Precision.FP16
    return p


def tolerance_for(precision: str | Precision) -> Tolerance:
    """The table's tolerance for ``precision``."""
    return TOLERANCES[as_precision(precision)]


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (well-behaved at 0 and n)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_drop_interval(
    ref_correct: np.ndarray, cand_correct: np.ndarray, z: float = Z95
) -> tuple[float, float, float]:
    """Accuracy drop (reference - candidate) in points with a paired 95% interval.

    Only discordant samples (one right, the other wrong) carry information; the variance is the
    McNemar one, ``(b + c - (b - c)^2 / n) / n^2``. With no discordant sample the interval is the
    point. Returns (drop_pts, low_pts, high_pts).
    """
    n = int(ref_correct.size)
    b = int(np.sum(ref_correct & ~cand_correct))
    c = int(np.sum(~ref_correct & cand_correct))
    drop = (b - c) / n
    var = max(0.0, (b + c) - (b - c) ** 2 / n) / (n * n)
    # Continuity: with a handful of discordant pairs the normal interval is too narrow; widen it
    # by half a sample on each side (the usual continuity correction).
    half = z * math.sqrt(var) + (0.5 / n if b + c else 0.0)
    return drop * 100.0, (drop - half) * 100.0, (drop + half) * 100.0


def samples_to_settle(agreement: float, bound: float, z: float = Z95) -> int | None:
    """Roughly how many samples an interval needs to separate ``agreement`` from ``bound``."""
    gap = abs(bound - agreement)
    if gap <= 0:
        return None
    p = min(max(agreement, 1e-6), 1 - 1e-6)
    return int(math.ceil(z * z * p * (1 - p) / (gap * gap)))


@dataclass(frozen=True)
class ParityResult:
    """How a candidate's outputs compare with the reference's on one set of samples.

    Attributes:
        precision: The precision the candidate was judged as.
        verdict: PASS, UNCERTAIN (passes; too few samples to tell) or FAIL.
        passed: True unless the verdict is FAIL.
        reasons: One sentence per failed bound (empty unless FAIL).
        notes: One sentence per bound whose point estimate misses but whose interval reaches it.
        count: Number of samples.
        labelled: Whether labels were given (accuracy fields are None otherwise).
        accuracy, macro_f1: Candidate metrics (fractions), None without labels.
        reference_accuracy, reference_macro_f1: Reference metrics (fractions), None without labels.
        accuracy_drop_pts: (reference - candidate) accuracy in percentage points, None without labels.
        accuracy_drop_ci_pts: Paired 95% interval of the drop, None without labels.
        top1_agreement: Fraction of samples whose argmax matches the reference's.
        top1_agreement_ci: 95% Wilson interval of the agreement.
        max_prob_diff, mean_prob_diff: Over all samples and classes, |softmax difference|.
        max_abs_diff, mean_abs_diff, p99_abs_diff: Over all logits |candidate - reference|.
        kl_mean: Mean over samples of KL(softmax(reference) || softmax(candidate)), in nats.
        per_class_accuracy_delta: Candidate minus reference recall per class (empty without labels).
        confusion_delta: Candidate minus reference confusion matrix (rows true, columns predicted).
        flipped_ids: Sample ids whose top-1 differs from the reference's.
        class_names: Class names in logit order.
        tolerance: The bounds applied.
        reference_confusion: The reference's confusion matrix.
        prediction_shift: Reference class -> candidate class -> count, for the flipped samples
            (what a flip turned into; useful without labels).
    """

    precision: Precision
    passed: bool
    reasons: tuple[str, ...]
    count: int
    accuracy: float | None
    macro_f1: float | None
    reference_accuracy: float | None
    reference_macro_f1: float | None
    accuracy_drop_pts: float | None
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    p99_abs_diff: float
    kl_mean: float
    per_class_accuracy_delta: tuple[float, ...]
    confusion_delta: tuple[tuple[int, ...], ...]
    flipped_ids: tuple[str, ...]
    class_names: tuple[str, ...]
    tolerance: Tolerance
    reference_confusion: tuple[tuple[int, ...], ...] = ()
    verdict: Verdict = Verdict.PASS
    notes: tuple[str, ...] = ()
    labelled: bool = True
    top1_agreement_ci: tuple[float, float] = (0.0, 1.0)
    accuracy_drop_ci_pts: tuple[float, float] | None = None
    max_prob_diff: float = float("nan")
    mean_prob_diff: float = float("nan")
    prediction_shift: tuple[tuple[str, str, int], ...] = ()

    @property
    def flipped(self) -> int:
        return len(self.flipped_ids)

    def bound_text(self) -> str:
        """The bounds this row was held to, for reports."""
        return self.tolerance.describe()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; per-class deltas keyed by class name."""
        return {
            "precision": self.precision.value,
            "verdict": self.verdict.value,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "notes": list(self.notes),
            "count": self.count,
            "labelled": self.labelled,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "reference_accuracy": self.reference_accuracy,
            "reference_macro_f1": self.reference_macro_f1,
            "accuracy_drop_pts": self.accuracy_drop_pts,
            "accuracy_drop_ci_pts": list(self.accuracy_drop_ci_pts) if self.accuracy_drop_ci_pts else None,
            "top1_agreement": self.top1_agreement,
            "top1_agreement_ci": list(self.top1_agreement_ci),
            "flipped": self.flipped,
            "max_prob_diff": self.max_prob_diff,
            "mean_prob_diff": self.mean_prob_diff,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "p99_abs_diff": self.p99_abs_diff,
            "kl_mean": self.kl_mean,
            "per_class_accuracy_delta": dict(zip(self.class_names, self.per_class_accuracy_delta)),
            "confusion_delta": [list(r) for r in self.confusion_delta],
            "reference_confusion": [list(r) for r in self.reference_confusion],
            "flipped_ids": list(self.flipped_ids),
            "prediction_shift": [list(t) for t in self.prediction_shift],
            "class_names": list(self.class_names),
            "tolerance": self.tolerance.to_dict(),
            "bounds": self.bound_text(),
        }


def _log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax_kl(reference_logits: np.ndarray, candidate_logits: np.ndarray) -> np.ndarray:
    """Per-sample KL(softmax(reference) || softmax(candidate)) in nats (float64, >= 0)."""
    lp = _log_softmax(np.asarray(reference_logits, dtype=np.float64))
    lq = _log_softmax(np.asarray(candidate_logits, dtype=np.float64))
    kl = (np.exp(lp) * (lp - lq)).sum(axis=1)
    return np.maximum(kl, 0.0)  # rounding can give -1e-17


def _check_logits(name: str, x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise DataError(f"{name} must be 2-D (samples, classes), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{name} must be floating point logits, got dtype {arr.dtype}")
    return arr


def compare_outputs(
    reference_logits: np.ndarray,
    candidate_logits: np.ndarray,
    labels: np.ndarray | None,
    *,
    precision: str | Precision,
    class_names: Sequence[str],
    sample_ids: Sequence[str],
    tolerance: Tolerance | None = None,
) -> ParityResult:
    """Compare candidate logits with reference logits on the same samples.

    Args:
        reference_logits: (N, C) logits of the reference (e.g. PyTorch or ORT FP32).
        candidate_logits: (N, C) logits of the candidate (any float dtype; compared in float64).
        labels: (N,) integer ground-truth class indices, or None for unlabelled samples (then
            only agreement and output errors are judged).
        precision: The candidate's precision; picks the bounds from `TOLERANCES`.
        class_names: C class names in logit order.
        sample_ids: N sample ids (reported for flipped predictions).
        tolerance: Explicit bounds overriding the table's.

    Returns:
        A frozen `ParityResult`.

    Raises:
        DataError: when shapes, dtypes, label range or id counts do not match.
        ConfigError: for an unknown precision.
    """
    prec = as_precision(precision)
    tol = tolerance if tolerance is not None else TOLERANCES[prec]
    ref = _check_logits("reference_logits", reference_logits)
    cand = _check_logits("candidate_logits", candidate_logits)
    if ref.shape != cand.shape:
        raise DataError(
            f"reference logits have shape {ref.shape} but candidate logits have {cand.shape}; "
            "both must be (samples, classes) from the same inputs"
        )
    n, c = ref.shape
    if n == 0:
        raise DataError("no samples to compare")
    names = tuple(str(s) for s in class_names)
    if len(names) != c:
        raise DataError(f"{len(names)} class names for {c} logits per sample")
    labelled = labels is not None
    if labelled:
        y = np.asarray(labels)
        if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"labels must be a 1-D integer array of length {n}, got shape {y.shape} dtype {y.dtype}")
    ids = tuple(str(s) for s in sample_ids)
    if len(ids) != n:
        raise DataError(f"{len(ids)} sample ids for {n} samples")

    ref64, cand64 = ref.astype(np.float64), cand.astype(np.float64)
    finite = bool(np.all(np.isfinite(cand64)))
    if not np.all(np.isfinite(ref64)):
        raise DataError("reference logits contain NaN or inf; the reference must be trustworthy")
    diff = np.abs(cand64 - ref64)
    # NaN would poison every statistic: judge on finite entries, and fail the row separately.
    fin = diff[np.isfinite(diff)]
    max_d = float(fin.max()) if fin.size else float("nan")
    mean_d = float(fin.mean()) if fin.size else float("nan")
    p99_d = float(np.percentile(fin, 99)) if fin.size else float("nan")
    safe_cand = np.where(np.isfinite(cand64), cand64, 0.0)
    lp, lq = _log_softmax(ref64), _log_softmax(safe_cand)  # once, for both the KL and the probability error
    p_ref, p_cand = np.exp(lp), np.exp(lq)
    kl = float(np.maximum((p_ref * (lp - lq)).sum(axis=1), 0.0).mean())  # as `softmax_kl`
    pdiff = np.abs(p_cand - p_ref)
    max_p, mean_p = float(pdiff.max()), float(pdiff.mean())

    ref_pred = ref64.argmax(axis=1)
    cand_pred = safe_cand.argmax(axis=1)
    agree = ref_pred == cand_pred
    k = int(agree.sum())
    agreement = k / n
    agree_ci = wilson_interval(k, n)

    reasons: list[str] = []
    notes: list[str] = []
    if not finite:
        reasons.append(
            f"the candidate produced {int((~np.isfinite(cand64)).sum())} NaN/inf outputs "
            "(an overflow: for FP16 keep the overflowing nodes in FP32)"
        )
    if tol.max_prob_diff is not None and not (max_p <= tol.max_prob_diff):
        reasons.append(f"class probabilities differ by up to {max_p:.3g}, above the bound {tol.max_prob_diff:g}")
    if tol.max_abs_diff is not None and not (max_d <= tol.max_abs_diff):
        reasons.append(f"max |logit diff| {max_d:.3g} > {tol.max_abs_diff:g}")
    if tol.min_top1_agreement is not None and agreement < tol.min_top1_agreement:
        what = (
            f"top-1 agreement {agreement:.4f} (95% CI {agree_ci[0]:.4f}–{agree_ci[1]:.4f}) is below the bound "
            f"{tol.min_top1_agreement:g}: {n - k} of {n} predictions changed class"
        )
        if agree_ci[1] < tol.min_top1_agreement:
            reasons.append(what)
        else:
            more = samples_to_settle(agreement, tol.min_top1_agreement)
            notes.append(what + f"; too few samples to tell (about {more} would)" if more else what)

    metrics: dict[str, Any] = {}
    drop_ci: tuple[float, float] | None = None
    if labelled:
        m_ref = classification_metrics(y, ref_pred, c)
        m_cand = classification_metrics(y, cand_pred, c)
        drop_pts, lo, hi = paired_drop_interval(ref_pred == y, cand_pred == y)
        drop_ci = (lo, hi)
        if tol.max_accuracy_drop_pts is not None and drop_pts > tol.max_accuracy_drop_pts:
            what = (
                f"accuracy drops {drop_pts:.2f} pts (95% CI {lo:.2f} to {hi:.2f}), above the bound "
                f"{tol.max_accuracy_drop_pts:g} pts"
            )
            (reasons if lo > tol.max_accuracy_drop_pts else notes).append(what)
        cm_ref, cm_cand = np.asarray(m_ref.confusion), np.asarray(m_cand.confusion)
        metrics = {
            "accuracy": m_cand.accuracy,
            "macro_f1": m_cand.macro_f1,
            "reference_accuracy": m_ref.accuracy,
            "reference_macro_f1": m_ref.macro_f1,
            "accuracy_drop_pts": float(drop_pts),
            "per_class_accuracy_delta": tuple(
                float(a - b) for a, b in zip(m_cand.per_class_accuracy, m_ref.per_class_accuracy)
            ),
            "confusion_delta": tuple(tuple(int(v) for v in row) for row in (cm_cand - cm_ref)),
            "reference_confusion": m_ref.confusion,
        }
    else:
        metrics = {
            "accuracy": None,
            "macro_f1": None,
            "reference_accuracy": None,
            "reference_macro_f1": None,
            "accuracy_drop_pts": None,
            "per_class_accuracy_delta": (),
            "confusion_delta": (),
            "reference_confusion": (),
        }

    shift: dict[tuple[int, int], int] = {}
    for i in np.flatnonzero(~agree):
        key = (int(ref_pred[i]), int(cand_pred[i]))
        shift[key] = shift.get(key, 0) + 1
    verdict = Verdict.FAIL if reasons else (Verdict.UNCERTAIN if notes else Verdict.PASS)
    return ParityResult(
        precision=prec,
        passed=verdict is not Verdict.FAIL,
        reasons=tuple(reasons),
        count=n,
        top1_agreement=agreement,
        max_abs_diff=max_d,
        mean_abs_diff=mean_d,
        p99_abs_diff=p99_d,
        kl_mean=kl,
        flipped_ids=tuple(ids[i] for i in np.flatnonzero(~agree)),
        class_names=names,
        tolerance=tol,
        verdict=verdict,
        notes=tuple(notes),
        labelled=labelled,
        top1_agreement_ci=agree_ci,
        accuracy_drop_ci_pts=drop_ci,
        max_prob_diff=max_p,
        mean_prob_diff=mean_p,
        prediction_shift=tuple((names[a], names[b], v) for (a, b), v in sorted(shift.items(), key=lambda kv: -kv[1])),
        **metrics,
    )
