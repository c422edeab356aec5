"""runtime.metrics: confusion matrix, accuracy, macro-F1 and per-group accuracy on hand examples."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score

from runtime.errors import DataError
from runtime.metrics import ClassificationMetrics, classification_metrics, confusion_matrix, grouped_accuracy

Y_TRUE = np.array([0, 0, 1, 1, 2, 2])
Y_PRED = np.array([0, 1, 1, 1, 2, 0])


def test_confusion_matrix_hand_example() -> None:
    cm = confusion_matrix(Y_TRUE, Y_PRED, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert cm.shape == (3, 3)
    # Unused classes get zero rows/columns.
    cm5 = confusion_matrix(Y_TRUE, Y_PRED, 5)
    assert cm5.shape == (5, 5)
    np.testing.assert_array_equal(cm5[:3, :3], cm)
    assert cm5[3:].sum() == 0 and cm5[:, 3:].sum() == 0


def test_classification_metrics_hand_example() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, 3)
    assert isinstance(m, ClassificationMetrics)
    assert m.accuracy == pytest.approx(4 / 6)
    # F1 per class: 2·1/(2+2)=0.5, 2·2/(2+3)=0.8, 2·1/(2+1)=2/3
    assert m.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert m.macro_f1 == pytest.approx(f1_score(Y_TRUE, Y_PRED, average="macro"))
    assert m.per_class_accuracy == pytest.approx((0.5, 1.0, 0.5))
    assert m.confusion == ((1, 1, 0), (0, 2, 0), (1, 0, 1))
    assert m.count == 6


def test_macro_f1_ignores_absent_classes_like_sklearn() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, size=200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 5, size=200))
    m = classification_metrics(y_true, y_pred, 7)  # classes 5, 6 never appear
    assert m.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"), abs=1e-12)
    assert m.accuracy == pytest.approx(float((y_true == y_pred).mean()))
    assert m.per_class_accuracy[5:] == (0.0, 0.0)


def test_class_only_predicted_counts_in_macro_f1() -> None:
    y_true, y_pred = np.array([0, 0]), np.array([0, 1])
    m = classification_metrics(y_true, y_pred, 3)
    assert m.macro_f1 == pytest.approx((2 / 3 + 0.0) / 2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert m.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_perfect_and_all_wrong() -> None:
    y = np.array([0, 1, 2, 3])
    perfect = classification_metrics(y, y, 4)
    assert perfect.accuracy == 1.0 and perfect.macro_f1 == 1.0
    wrong = classification_metrics(y, (y + 1) % 4, 4)
    assert wrong.accuracy == 0.0 and wrong.macro_f1 == 0.0


def test_to_dict_with_and_without_names() -> None:
    m = classification_metrics(Y_TRUE, Y_PRED, 3)
    d = m.to_dict(["a", "b", "c"])
    assert d["per_class_accuracy"] == {"a": 0.5, "b": 1.0, "c": 0.5}
    assert d["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert d["count"] == 6
    assert d["accuracy"] == pytest.approx(2 / 3)
    assert list(m.to_dict()["per_class_accuracy"]) == ["0", "1", "2"]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "fragment"),
    [
        (np.array([0.0, 1.0]), np.array([0, 1]), "y_true must be a 1-D integer array, got shape (2,) dtype float64"),
        (np.array([0, 1]), np.array([[0, 1]]), "y_pred must be a 1-D integer array, got shape (1, 2) dtype int64"),
        (np.array([0, 1, 2]), np.array([0, 1]), "y_true has 3 labels but y_pred has 2"),
    ],
)
def test_bad_labels_raise_data_error(y_true, y_pred, fragment: str) -> None:
    with pytest.raises(DataError) as exc:
        confusion_matrix(y_true, y_pred, 3)
    assert fragment in str(exc.value)
    with pytest.raises(DataError):
        classification_metrics(y_true, y_pred, 3)


def test_no_samples_raises() -> None:
    with pytest.raises(DataError, match="no samples to score"):
        classification_metrics(np.array([], dtype=np.int64), np.array([], dtype=np.int64), 3)


def test_out_of_range_label_is_rejected() -> None:
    with pytest.raises(DataError):
        confusion_matrix(np.array([0]), np.array([3]), 3)


def test_grouped_accuracy() -> None:
    y_true = np.array([0, 1, 2, 0, 1])
    y_pred = np.array([0, 0, 2, 1, 1])
    out = grouped_accuracy(y_true, y_pred, ["frontal", "half_left", "frontal", "full_left", "half_left"])
    assert out == {"frontal": 1.0, "half_left": 0.5, "full_left": 0.0}
    assert list(out) == ["frontal", "half_left", "full_left"]  # first-seen order
    assert list(grouped_accuracy(y_true[:3], y_pred[:3], ["z", "a", "z"])) == ["z", "a"]


def test_grouped_accuracy_length_mismatch() -> None:
    with pytest.raises(DataError, match="2 group labels for 3 samples"):
        grouped_accuracy(np.array([0, 1, 2]), np.array([0, 1, 2]), ["a", "b"])
    with pytest.raises(DataError, match="y_pred must be a 1-D integer array"):
        grouped_accuracy(np.array([0]), np.array([0.5]), ["a"])
