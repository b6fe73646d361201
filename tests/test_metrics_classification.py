"""Classification metrics against values computed by hand (the arithmetic is written beside each)."""

import math

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score

from rmnet.metrics.classification import (
    balanced_accuracy,
    classification_report,
    cohen_kappa,
    predict_labels,
    roc_auc,
)

# 3 classes, 8 images. Confusion matrix (rows true, columns predicted):
#   [[2, 1, 0],
#    [0, 1, 1],
#    [1, 0, 2]]
Y_TRUE = np.array([0, 0, 0, 1, 1, 2, 2, 2])
Y_PRED = np.array([0, 0, 1, 1, 2, 2, 2, 0])


def test_per_class_precision_sensitivity_specificity_match_hand_computation():
    report = classification_report(Y_TRUE, Y_PRED, class_names=["a", "b", "c"])
    # class a: TP 2, FP 1 (image 7), FN 1 (image 2), TN 8 - 4 = 4
    # class b: TP 1, FP 1 (image 2), FN 1 (image 4), TN 5
    # class c: TP 2, FP 1 (image 4), FN 1 (image 7), TN 4
    expected = {
        "a": (2 / 3, 2 / 3, 4 / 5),
        "b": (1 / 2, 1 / 2, 5 / 6),
        "c": (2 / 3, 2 / 3, 4 / 5),
    }
    for name, (precision, sensitivity, specificity) in expected.items():
        row = report["per_class"][name]
        assert row["precision"] == pytest.approx(precision)
        assert row["sensitivity"] == pytest.approx(sensitivity)
        assert row["specificity"] == pytest.approx(specificity)
    assert report["per_class"]["a"]["support"] == 3 and report["per_class"]["b"]["predicted"] == 2


def test_specificity_counts_false_positives_not_false_negatives():
    # The example above has FP = FN for every class; here they differ. Rows true, columns predicted:
    #   [[1, 2, 1],
    #    [0, 2, 0],
    #    [1, 0, 1]]
    y_true = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 2, 1, 1, 2, 0])
    report = classification_report(y_true, y_pred, class_names=["a", "b", "c"])
    # class a: TP 1, FN 3, FP 1, TN 3 -> specificity TN/(TN+FP) = 3/4 (not TN/(TN+FN) = 3/6)
    # class b: TP 2, FN 0, FP 2, TN 4 -> 4/6 (not 4/4)
    # class c: TP 1, FN 1, FP 1, TN 5 -> 5/6
    expected = {"a": (1 / 2, 1 / 4, 3 / 4), "b": (2 / 4, 2 / 2, 4 / 6), "c": (1 / 2, 1 / 2, 5 / 6)}
    for name, (precision, sensitivity, specificity) in expected.items():
        row = report["per_class"][name]
        assert row["precision"] == pytest.approx(precision), name
        assert row["sensitivity"] == pytest.approx(sensitivity), name
        assert row["specificity"] == pytest.approx(specificity), name
    assert report["mean_specificity"] == pytest.approx((3 / 4 + 4 / 6 + 5 / 6) / 3)  # 3/4


def test_averages_kappa_accuracy_and_confusion_matrix_match_hand_computation():
    report = classification_report(Y_TRUE, Y_PRED, class_names=["a", "b", "c"])
    assert report["mean_precision"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)  # 11/18, the paper's AP
    assert report["mean_sensitivity"] == pytest.approx(11 / 18)
    assert report["mean_specificity"] == pytest.approx((4 / 5 + 5 / 6 + 4 / 5) / 3)  # 73/90
    assert report["accuracy"] == pytest.approx(5 / 8)
    # p0 = 5/8; true counts a = (3, 2, 3), predicted b = (3, 2, 3): pe = (9 + 4 + 9) / 64 = 22/64;
    # kappa = (40/64 - 22/64) / (1 - 22/64) = 18/42 = 3/7
    assert report["kappa"] == pytest.approx(3 / 7)
    assert report["balanced_accuracy"] == pytest.approx(11 / 18)
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 2]]


def test_kappa_counts_a_tied_row_as_a_wrong_prediction():
    # y_pred -1 (tie) for image 1. p0 = 2/4; a = (2, 1, 1), b = (1, 2, 0) + one "none":
    # pe = (2·1 + 1·2 + 1·0) / 16 = 1/4; kappa = (1/2 - 1/4) / (3/4) = 1/3
    assert cohen_kappa(np.array([0, 0, 1, 2]), np.array([0, -1, 1, 1])) == pytest.approx(1 / 3)


SCORES = np.array(
    [
        [0.7, 0.2, 0.1],  # true 0
        [0.4, 0.5, 0.1],  # true 0
        [0.5, 0.3, 0.2],  # true 1
        [0.3, 0.3, 0.4],  # true 2
    ]
)
SCORE_TRUE = np.array([0, 0, 1, 2])


def test_auc_per_class_and_overall_match_pair_counting():
    auc = roc_auc(SCORE_TRUE, SCORES)
    # AUC = share of (positive, negative) pairs ranked right, ties count 1/2.
    # class 0: positives {.7, .4}, negatives {.5, .3}: .7>.5, .7>.3, .4<.5, .4>.3 -> 3/4
    # class 1: positive {.3}, negatives {.2, .5, .3}: win, loss, tie -> 1.5/3
    # class 2: positive {.4}, negatives {.1, .1, .2} -> 1
    np.testing.assert_allclose(auc["per_class"], [0.75, 0.5, 1.0])
    assert auc["macro"] == pytest.approx(0.75)
    # micro: positives {.7, .4, .3, .4} vs the 8 negatives {.2, .1, .5, .1, .5, .2, .3, .3}:
    # .7 beats 8; each .4 beats 6; .3 beats 4 and ties 2 (=5) -> (8 + 6 + 5 + 6) / 32
    assert auc["micro"] == pytest.approx(25 / 32)


def test_predict_labels_takes_the_argmax_and_marks_tied_rows_minus_one():
    np.testing.assert_array_equal(predict_labels(SCORES), [0, 1, 0, 2])
    np.testing.assert_array_equal(predict_labels(np.array([[0.4, 0.4, 0.2], [0.1, 0.2, 0.7]])), [-1, 2])


def test_a_tied_row_is_wrong_for_every_metric():
    y_true, y_score = np.array([0, 1]), np.array([[0.5, 0.5], [0.2, 0.8]])
    report = classification_report(y_true, predict_labels(y_score), y_score, ["x", "y"])
    # image 0 tied: a false negative for class x, a false positive for nobody.
    assert report["accuracy"] == 0.5 and report["ties"] == 1
    assert report["per_class"]["x"]["sensitivity"] == 0.0
    assert report["per_class"]["x"]["precision"] == 0.0  # x occurs but is never predicted
    assert report["per_class"]["y"]["specificity"] == 1.0  # image 0 is a true negative for y
    assert report["balanced_accuracy"] == pytest.approx(0.5)
    assert report["confusion_matrix"] == [[0, 0], [0, 1]]


def test_a_class_absent_from_y_true_is_left_out_of_sensitivity_averages():
    y_true, y_pred = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    report = classification_report(y_true, y_pred, class_names=["a", "b", "c"])
    absent = report["per_class"]["c"]
    assert math.isnan(absent["sensitivity"]) and math.isnan(absent["precision"])
    assert absent["specificity"] == 1.0  # TN 4, FP 0
    # balanced accuracy over the present classes: (1/2 + 2/2) / 2
    assert report["balanced_accuracy"] == pytest.approx(0.75)
    assert report["mean_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert balanced_accuracy(y_true, y_pred, 3) == pytest.approx(balanced_accuracy_score(y_true, y_pred))


def test_a_class_never_predicted_has_precision_zero_not_nan():
    report = classification_report(np.array([0, 1, 2]), np.array([0, 1, 1]), class_names=["a", "b", "c"])
    assert report["per_class"]["c"]["precision"] == 0.0
    assert report["mean_precision"] == pytest.approx((1 + 1 / 2 + 0) / 3)


def test_auc_of_a_class_absent_from_y_true_is_nan_and_left_out_of_the_macro_average():
    y_score = np.array([[0.8, 0.1, 0.1], [0.3, 0.6, 0.1], [0.6, 0.3, 0.1]])
    auc = roc_auc(np.array([0, 1, 0]), y_score)
    assert math.isnan(auc["per_class"][2])
    np.testing.assert_allclose(auc["per_class"][:2], [1.0, 1.0])
    assert auc["macro"] == pytest.approx(1.0)


def test_report_rejects_labels_outside_the_class_range():
    with pytest.raises(ValueError, match="outside"):
        classification_report(np.array([0, 3]), np.array([0, 1]), class_names=["a", "b"])
    with pytest.raises(ValueError, match="y_score must have shape"):
        classification_report(np.array([0, 1]), np.array([0, 1]), np.zeros((2, 3)), ["a", "b"])
