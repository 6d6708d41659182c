"""Judge quality statistics: Cohen's kappa against scikit-learn, bootstrap intervals, pairwise order
swaps, and Fleiss' kappa on the textbook example."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.judging.agreement import (
    agreement,
    combine_pairwise,
    fleiss_kappa,
    position_consistency,
    self_agreement,
)

sklearn_metrics = pytest.importorskip("sklearn.metrics")

FAST = settings(max_examples=60, deadline=None)
HUMAN = ["yes", "yes", "no", "no", "yes", "maybe", "no", "yes", "maybe", "yes", "no", "no"]
JUDGE = ["yes", "no", "no", "no", "yes", "maybe", "yes", "yes", "no", "yes", "no", "maybe"]


def sk_kappa(human, judge, **kwargs) -> float | None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = sklearn_metrics.cohen_kappa_score(human, judge, **kwargs)
    return None if math.isnan(value) else value


def test_kappa_and_accuracy_equal_sklearn_on_a_fixed_example():
    result = agreement(JUDGE, HUMAN, resamples=0)
    assert result["kappa"] == pytest.approx(sk_kappa(HUMAN, JUDGE), abs=1e-12)
    assert result["accuracy"] == pytest.approx(sum(h == j for h, j in zip(HUMAN, JUDGE)) / len(HUMAN))
    assert result["n"] == len(HUMAN) and result["missing"] == 0 and result["note"] is None
    assert result["kappa.lower"] is None and result["accuracy.lower"] is None  # no resamples, no interval


@pytest.mark.parametrize("weights", [None, "linear", "quadratic"])
def test_weighted_kappa_on_an_ordinal_scale_with_explicit_labels(weights):
    human = ["1", "2", "3", "4", "5", "3", "2", "10", "4", "1"]
    judge = ["1", "3", "3", "5", "4", "2", "2", "5", "10", "2"]
    scale = ["1", "2", "3", "4", "5", "10"]  # scale order, not string order
    result = agreement(judge, human, labels=scale, weights=weights, resamples=0)
    assert result["kappa"] == pytest.approx(sk_kappa(human, judge, labels=scale, weights=weights), abs=1e-12)
    assert result["confusion"]["labels"] == scale


def test_labels_outside_the_given_labels_are_dropped_as_sklearn_does():
    human, judge = ["a", "b", "c", "a", "b"], ["a", "b", "a", "c", "a"]
    result = agreement(judge, human, labels=["a", "b"], resamples=0)
    assert result["outside_labels"] == 2 and result["n"] == 3
    assert result["kappa"] == pytest.approx(sk_kappa(human, judge, labels=["a", "b"]), abs=1e-12)


@FAST
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcd")), min_size=1, max_size=40))
def test_kappa_equals_sklearn_on_generated_labels(pairs):
    human, judge = [h for h, _ in pairs], [j for _, j in pairs]
    assert agreement(judge, human, resamples=0)["kappa"] == pytest.approx(sk_kappa(human, judge), abs=1e-12)


@FAST
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=40),
       st.sampled_from(["linear", "quadratic"]))
def test_weighted_kappa_equals_sklearn_on_generated_numeric_labels(pairs, weights):
    human, judge = [h for h, _ in pairs], [j for _, j in pairs]
    ours = agreement(judge, human, weights=weights, resamples=0)["kappa"]
    assert ours == pytest.approx(sk_kappa(human, judge, weights=weights), abs=1e-12)


def test_interval_contains_the_point_and_is_seeded():
    human, judge = HUMAN * 5, JUDGE * 5
    first = agreement(judge, human, resamples=2000, seed=7)
    assert first["kappa.lower"] <= first["kappa"] <= first["kappa.upper"]
    assert first["accuracy.lower"] <= first["accuracy"] <= first["accuracy.upper"]
    assert first["kappa.lower"] < first["kappa.upper"]
    again = agreement(judge, human, resamples=2000, seed=7)
    assert (again["kappa.lower"], again["kappa.upper"]) == (first["kappa.lower"], first["kappa.upper"])
    other = agreement(judge, human, resamples=2000, seed=8)
    assert (other["kappa.lower"], other["kappa.upper"]) != (first["kappa.lower"], first["kappa.upper"])
    wider = agreement(judge, human, resamples=2000, seed=7, alpha=0.01)
    assert wider["kappa.lower"] <= first["kappa.lower"] and wider["kappa.upper"] >= first["kappa.upper"]


def test_default_resamples_and_seed_are_the_harness_defaults():
    from harness.scoring.stats import RESAMPLES, SEED

    assert agreement(JUDGE, HUMAN) == agreement(JUDGE, HUMAN, resamples=RESAMPLES, seed=SEED)


def test_undefined_kappa_is_none_with_a_note_and_json_safe():
    result = agreement(["refuse"] * 4, ["refuse"] * 4, resamples=200)
    assert sk_kappa(["refuse"] * 4, ["refuse"] * 4) is None  # sklearn: NaN
    assert result["kappa"] is None and result["kappa.lower"] is None and result["kappa.upper"] is None
    assert "same label" in result["note"] and "'refuse'" in result["note"]
    assert result["accuracy"] == 1.0
    json.dumps(result, allow_nan=False)
    empty = agreement([None, None], ["a", "b"])
    assert empty["n"] == 0 and empty["missing"] == 2 and empty["kappa"] is None and empty["note"]
    json.dumps(empty, allow_nan=False)


def test_missing_verdicts_are_left_out_and_counted():
    judge = ["yes", None, "no", "yes", None, "no"]
    human = ["yes", "no", "no", "no", "yes", None]
    result = agreement(judge, human, resamples=0)
    assert result["missing"] == 2 and result["unlabelled"] == 1 and result["n"] == 3
    assert result["kappa"] == pytest.approx(sk_kappa(["yes", "no", "no"], ["yes", "no", "yes"]), abs=1e-12)
    assert result["accuracy"] == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="3 judge verdicts vs 2"):
        agreement(["a", "b", "c"], ["a", "b"])


def test_confusion_matrix_rows_are_human_columns_are_judge():
    human = ["answer", "answer", "answer", "refuse"]
    judge = ["refuse", "refuse", "answer", "refuse"]
    confusion = agreement(judge, human, resamples=0)["confusion"]
    assert confusion == {"labels": ["answer", "refuse"], "matrix": [[1, 2], [0, 1]]}
    assert sklearn_metrics.confusion_matrix(human, judge, labels=confusion["labels"]).tolist() == confusion["matrix"]


def test_position_consistency_counts_and_combined_verdicts():
    first = ["A", "A", "B", "tie", "A", None, "B"]
    swapped = ["B", "A", "A", "tie", "tie", "B", "B"]
    result = position_consistency(first, swapped)
    assert result["n"] == 6 and result["missing"] == 1
    assert result["consistent"] == pytest.approx(3 / 6)  # (A,B), (B,A), (tie,tie)
    assert result["counts"]["A"] == {"A": 1, "B": 1, "tie": 1}
    assert result["counts"]["B"] == {"A": 1, "B": 1, "tie": 0}
    assert result["counts"]["tie"] == {"A": 0, "B": 0, "tie": 1}
    assert result["verdicts"] == ["A", "tie", "B", "tie", "tie", None, "tie"]
    json.dumps(result, allow_nan=False)


def test_combine_pairwise_rule():
    assert combine_pairwise("A", "B") == "A" and combine_pairwise("B", "A") == "B"
    assert combine_pairwise("A", "A") == "tie" and combine_pairwise("B", "B") == "tie"  # position bias
    assert combine_pairwise("A", "tie") == "tie" and combine_pairwise("tie", "tie") == "tie"
    with pytest.raises(ValueError, match="pairwise verdict"):
        combine_pairwise("A", "C")


# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories -> kappa 0.210
FLEISS_TABLE = [
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_on_the_textbook_example():
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.20993, abs=5e-5)
    samples = [[category for category, count in enumerate(row) for _ in range(count)] for row in FLEISS_TABLE]
    result = self_agreement(samples)
    assert result["fleiss_kappa"] == pytest.approx(0.20993, abs=5e-5)
    assert result["mean_agreement"] == pytest.approx(0.37802, abs=5e-5)  # Wikipedia's P-bar
    assert result["per_case"][0] == 1.0 and result["samples"] == 14 and result["n"] == 10
    try:
        from statsmodels.stats.inter_rater import fleiss_kappa as sm_fleiss
    except ImportError:
        return
    assert result["fleiss_kappa"] == pytest.approx(sm_fleiss(FLEISS_TABLE), abs=1e-12)


def test_self_agreement_missing_and_undefined():
    result = self_agreement([["a", "a", "b"], ["a", None, "a"], ["b", "b", "b"]])
    assert result["n"] == 2 and result["missing"] == 1
    assert result["per_case"] == [pytest.approx(1 / 3), None, 1.0]
    assert result["mean_agreement"] == pytest.approx(2 / 3)
    constant = self_agreement([["x", "x"], ["x", "x"]])
    assert constant["fleiss_kappa"] is None and "'x'" in constant["note"]
    json.dumps(constant, allow_nan=False)
    with pytest.raises(ValueError, match="different numbers"):
        self_agreement([["a", "b"], ["a"]])
    with pytest.raises(ValueError, match="at least 2"):
        self_agreement([["a"], ["b"]])
