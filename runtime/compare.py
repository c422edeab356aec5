"""Pure parity comparison of a candidate's logits against a reference's, judged by precision.

One tolerance table (`TOLERANCES`) keyed by precision decides pass/fail:

- ``fp32``: the same maths in another runtime; logits within 1e-4 and every top-1 identical.
- ``fp16``: half-precision rounding; logits within 1e-2, top-1 agreement >= 99.9%.
- ``int8``: quantisation moves logits by design, so no logit bound; judged by top-1 agreement
  >= 99% and an accuracy drop of at most 1 percentage point.

`compare_outputs` takes arrays (and explicit names/ids) and returns a frozen `ParityResult`;
it never reads files, never logs results and never prints.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.errors import ConfigError, DataError
from runtime.metrics import classification_metrics


class Precision(str, enum.Enum):
    """Numeric precision a model file was prepared for."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


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
        max_abs_diff: Largest allowed |candidate - reference| over all logits.
        min_top1_agreement: Smallest allowed fraction of samples whose argmax matches.
        max_accuracy_drop_pts: Largest allowed accuracy drop (reference - candidate) in
            percentage points.
    """

    max_abs_diff: float | None = None
    min_top1_agreement: float | None = None
    max_accuracy_drop_pts: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        return {
            "max_abs_diff": self.max_abs_diff,
            "min_top1_agreement": self.min_top1_agreement,
            "max_accuracy_drop_pts": self.max_accuracy_drop_pts,
        }


TOLERANCES: Mapping[Precision, Tolerance] = {
    Precision.FP32: Tolerance(max_abs_diff=1e-4, min_top1_agreement=1.0),
    Precision.FP16: Tolerance(max_abs_diff=1e-2, min_top1_agreement=0.999),
    Precision.INT8: Tolerance(min_top1_agreement=0.99, max_accuracy_drop_pts=1.0),
}


def tolerance_for(precision: str | Precision) -> Tolerance:
    """The table's tolerance for ``precision``."""
    return TOLERANCES[as_precision(precision)]


@dataclass(frozen=True)
class ParityResult:
    """How a candidate's outputs compare with the reference's on one labelled set.

    Attributes:
        precision: The precision the candidate was judged as.
        passed: True when every bound of ``tolerance`` holds and all logits are finite.
        reasons: One sentence per failed bound (empty when passed).
        count: Number of samples.
        accuracy, macro_f1: Candidate metrics (fractions).
        reference_accuracy, reference_macro_f1: Reference metrics (fractions).
        accuracy_drop_pts: (reference - candidate) accuracy in percentage points.
        top1_agreement: Fraction of samples whose argmax matches the reference's.
        max_abs_diff, mean_abs_diff, p99_abs_diff: Over all logits |candidate - reference|.
        kl_mean: Mean over samples of KL(softmax(reference) || softmax(candidate)), in nats.
        per_class_accuracy_delta: Candidate minus reference recall per class, in class order.
        confusion_delta: Candidate minus reference confusion matrix (rows true, columns predicted).
        flipped_ids: Sample ids whose top-1 differs from the reference's.
        class_names: Class names in logit order.
        tolerance: The bounds applied.
        reference_confusion: The reference's confusion matrix.
    """

    precision: Precision
    passed: bool
    reasons: tuple[str, ...]
    count: int
    accuracy: float
    macro_f1: float
    reference_accuracy: float
    reference_macro_f1: float
    accuracy_drop_pts: float
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

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form; per-class deltas keyed by class name."""
        return {
            "precision": self.precision.value,
            "passed": self.passed,
            "reasons": list(self.reasons),
            "count": self.count,
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "reference_accuracy": self.reference_accuracy,
            "reference_macro_f1": self.reference_macro_f1,
            "accuracy_drop_pts": self.accuracy_drop_pts,
            "top1_agreement": self.top1_agreement,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "p99_abs_diff": self.p99_abs_diff,
            "kl_mean": self.kl_mean,
            "per_class_accuracy_delta": dict(zip(self.class_names, self.per_class_accuracy_delta)),
            "confusion_delta": [list(r) for r in self.confusion_delta],
            "reference_confusion": [list(r) for r in self.reference_confusion],
            "flipped_ids": list(self.flipped_ids),
            "class_names": list(self.class_names),
            "tolerance": self.tolerance.to_dict(),
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
    labels: np.ndarray,
    *,
    precision: str | Precision,
    class_names: Sequence[str],
    sample_ids: Sequence[str],
    tolerance: Tolerance | None = None,
) -> ParityResult:
    """Compare candidate logits with reference logits on labelled samples.

    Args:
        reference_logits: (N, C) logits of the reference (e.g. PyTorch or ORT FP32).
        candidate_logits: (N, C) logits of the candidate (any float dtype; compared in float64).
        labels: (N,) integer ground-truth class indices.
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
    kl = float(softmax_kl(ref64, safe_cand).mean())

    ref_pred = ref64.argmax(axis=1)
    cand_pred = safe_cand.argmax(axis=1)
    agree = ref_pred == cand_pred
    agreement = float(agree.mean())
    m_ref = classification_metrics(y, ref_pred, c)
    m_cand = classification_metrics(y, cand_pred, c)
    drop_pts = (m_ref.accuracy - m_cand.accuracy) * 100.0

    reasons: list[str] = []
    if not finite:
        reasons.append(f"candidate logits contain {int((~np.isfinite(cand64)).sum())} NaN/inf values")
    if tol.max_abs_diff is not None and not (max_d <= tol.max_abs_diff):
        reasons.append(f"max |logit diff| {max_d:.3g} > {tol.max_abs_diff:g}")
    if tol.min_top1_agreement is not None and agreement < tol.min_top1_agreement:
        reasons.append(
            f"top-1 agreement {agreement:.4f} < {tol.min_top1_agreement:g} ({int((~agree).sum())} of {n} flipped)"
        )
    if tol.max_accuracy_drop_pts is not None and drop_pts > tol.max_accuracy_drop_pts:
        reasons.append(f"accuracy drop {drop_pts:.2f} pts > {tol.max_accuracy_drop_pts:g} pts")

    cm_ref, cm_cand = np.asarray(m_ref.confusion), np.asarray(m_cand.confusion)
    return ParityResult(
        precision=prec,
        passed=not reasons,
        reasons=tuple(reasons),
        count=n,
        accuracy=m_cand.accuracy,
        macro_f1=m_cand.macro_f1,
        reference_accuracy=m_ref.accuracy,
        reference_macro_f1=m_ref.macro_f1,
        accuracy_drop_pts=float(drop_pts),
        top1_agreement=agreement,
        max_abs_diff=max_d,
        mean_abs_diff=mean_d,
        p99_abs_diff=p99_d,
        kl_mean=kl,
        per_class_accuracy_delta=tuple(
            float(a - b) for a, b in zip(m_cand.per_class_accuracy, m_ref.per_class_accuracy)
        ),
        confusion_delta=tuple(tuple(int(v) for v in row) for row in (cm_cand - cm_ref)),
        flipped_ids=tuple(ids[i] for i in np.flatnonzero(~agree)),
        class_names=names,
        tolerance=tol,
        reference_confusion=m_ref.confusion,
    )
