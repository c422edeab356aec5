"""Pure classification metrics on numpy arrays (no torch): accuracy, macro-F1, confusion matrices."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from runtime.errors import DataError


def _labels(y: np.ndarray, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{name} must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}")
    return y


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts; rows are true classes, columns predictions."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise DataError(f"y_true has {t.shape[0]} labels but y_pred has {p.shape[0]}")
    for name, y in (("y_true", t), ("y_pred", p)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{name} holds labels in [{y.min()}, {y.max()}]; expected 0..{num_classes - 1}")
    return np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


@dataclass(frozen=True)
class ClassificationMetrics:
    """Accuracy and macro-F1 as fractions, per-class accuracy (recall), and the confusion matrix."""

    accuracy: float
    macro_f1: float
    per_class_accuracy: tuple[float, ...]
    confusion: tuple[tuple[int, ...], ...]
    count: int

    def to_dict(self, class_names: Sequence[str] | None = None) -> dict:
        names = list(class_names) if class_names else [str(i) for i in range(len(self.per_class_accuracy))]
        return {
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "per_class_accuracy": dict(zip(names, self.per_class_accuracy)),
            "confusion": [list(r) for r in self.confusion],
            "count": self.count,
        }


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> ClassificationMetrics:
    """Accuracy, macro-F1 over classes present in y_true or y_pred, per-class recall, confusion."""
    cm = confusion_matrix(y_true, y_pred, num_classes)
    n = int(cm.sum())
    if n == 0:
        raise DataError("no samples to score")
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    present = (support + predicted) > 0
    denom = support + predicted
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    return ClassificationMetrics(
        accuracy=float(tp.sum() / n),
        macro_f1=float(f1[present].mean()) if present.any() else 0.0,
        per_class_accuracy=tuple(float(v) for v in recall),
        confusion=tuple(tuple(int(v) for v in row) for row in cm),
        count=n,
    )


def grouped_accuracy(y_true: np.ndarray, y_pred: np.ndarray, groups: Sequence[str]) -> dict[str, float]:
    """Accuracy per group label (e.g. per head-pose view), groups in first-seen order."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    g = np.asarray(groups, dtype=object)
    if g.shape != t.shape:
        raise DataError(f"{g.shape[0]} group labels for {t.shape[0]} samples")
    out: dict[str, float] = {}
    for key in dict.fromkeys(g.tolist()):
        m = g == key
        out[str(key)] = float((t[m] == p[m]).mean())
    return out
