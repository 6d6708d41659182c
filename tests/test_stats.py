"""Confidence intervals and classification metrics: against scipy and scikit-learn, and by property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from harness.scoring.classification import classification_intervals, classification_metrics, confusion_matrix
from harness.scoring.stats import bootstrap_mean, draw_counts, mean_interval, percentile_interval, wilson
from tests.conftest import run_inline, write_suite

FAST = settings(max_examples=60, deadline=None)
LABELS = ["pos", "neg", "neu"]
label = st.sampled_from(LABELS)
prediction = st.sampled_from([*LABELS, "junk", "other"])


@FAST
@given(st.integers(0, 500), st.integers(1, 500))
def test_wilson_equals_scipy(successes, n):
    successes = min(successes, n)
    expected = binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson(successes, n)
    assert low == pytest.approx(expected.low, abs=1e-9) and high == pytest.approx(expected.high, abs=1e-9)
    assert low <= successes / n <= high


def test_wilson_of_nothing_is_none():
    assert wilson(0, 0) == (None, None)


@FAST
@given(st.lists(st.tuples(label, prediction), min_size=1, max_size=60), st.booleans())
def test_classification_equals_scikit_learn(pairs, given_labels):
    truth, pred = [t for t, _ in pairs], [p for _, p in pairs]
    labels = LABELS if given_labels else None
    ours = classification_metrics(pairs, labels)
    for average in ("micro", "macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(truth, pred, labels=labels, average=average, zero_division=0)
        assert ours[f"precision_{average}"] == pytest.approx(p, abs=1e-12)
        assert ours[f"recall_{average}"] == pytest.approx(r, abs=1e-12)
        assert ours[f"f1_{average}"] == pytest.approx(f, abs=1e-12)
    classes = labels or sorted(set(truth) | set(pred))
    p, r, f, _ = precision_recall_fscore_support(truth, pred, labels=classes, average=None, zero_division=0)
    for i, c in enumerate(classes):
        assert (ours[f"class_precision.{c}"], ours[f"class_recall.{c}"], ours[f"class_f1.{c}"]) == \
            pytest.approx((p[i], r[i], f[i]), abs=1e-12)
    table = confusion_matrix(pairs, labels)
    assert table["labels"] == classes
    assert table["matrix"] == sk_confusion(truth, pred, labels=classes).tolist()


@FAST
@given(st.lists(st.tuples(label, prediction), min_size=1, max_size=60))
def test_classification_metrics_properties(pairs):
    m = classification_metrics(pairs)
    assert all(0.0 <= v <= 1.0 for v in m.values())
    assert m["f1_micro"] == pytest.approx(m["accuracy"])  # every prediction is a class without given labels
    shuffled = list(reversed(pairs))
    assert classification_metrics(shuffled) == pytest.approx(m)  # the order of cases does not matter
    perfect = classification_metrics([(t, t) for t, _ in pairs])
    assert perfect["f1_macro"] == perfect["accuracy"] == 1.0


def test_counts_bootstrap_matches_resampling_cases_one_by_one():
    # the multinomial shortcut and resampling the case list give the same interval
    rng = np.random.default_rng(7)
    scores = rng.choice([0.0, 0.5, 1.0], size=400, p=[0.3, 0.2, 0.5])
    fast = bootstrap_mean(scores, resamples=20_000, seed=1)
    direct = rng.choice(scores, size=(20_000, scores.size)).mean(axis=1)
    slow = percentile_interval(direct)
    assert fast[0] == pytest.approx(slow[0], abs=0.01) and fast[1] == pytest.approx(slow[1], abs=0.01)
    # and the interval is about the normal one for a mean: +-1.96 standard errors
    half = 1.96 * scores.std() / np.sqrt(scores.size)
    assert fast[1] - fast[0] == pytest.approx(2 * half, rel=0.1)


def test_bootstrap_is_seeded_and_binning_many_values_keeps_the_interval():
    rng = np.random.default_rng(5)
    values = rng.random(20_000)  # more distinct values than MAX_KINDS: binned
    assert bootstrap_mean(values, resamples=2000, seed=3) == bootstrap_mean(values, resamples=2000, seed=3)
    binned = bootstrap_mean(values, resamples=4000, seed=3)
    direct = percentile_interval(rng.choice(values, size=(4000, values.size)).mean(axis=1))
    assert binned == pytest.approx(direct, abs=0.002)
    assert draw_counts([5, 5], resamples=3, seed=0).sum(axis=1).tolist() == [10, 10, 10]


def test_mean_interval_is_wilson_for_zero_one_scores():
    assert mean_interval([1, 0, 1, 1]) == wilson(3, 4)
    assert mean_interval([]) == (None, None)


def test_classification_intervals_contain_the_values():
    rng = np.random.default_rng(0)
    truth = rng.choice(LABELS, size=2000)
    pred = np.where(rng.random(2000) < 0.8, truth, rng.choice(LABELS, size=2000))
    pairs = list(zip(truth.tolist(), pred.tolist()))
    metrics, intervals = classification_metrics(pairs), classification_intervals(pairs)
    for name, (low, high) in intervals.items():
        assert low <= metrics[name] <= high, name
        assert high - low < 0.1  # 2,000 cases: a few points wide


def test_a_gate_on_a_lower_bound(pytester, stub_url):
    cases = [{"id": f"c{i}", "input": f"q{i}\nANSWER: {'pos' if i % 10 else 'neg'}", "target": "pos"}
             for i in range(40)]  # 36 of 40 right
    write_suite(pytester.path / "evals", "bounds", cases, scorer={"name": "classification_f1",
                                                                  "options": {"labels": ["pos", "neg"]}},
                gates=["accuracy >= 0.85", "accuracy.lower >= 0.85"], **{"pass": "record"})
    result = run_inline(pytester, "--llm-cache", "off", "evals")
    # 0.9 clears 0.85, but its Wilson lower bound over 40 cases (0.77) does not: the noisy pass is caught
    assert result.ret == 1
    result.stdout.fnmatch_lines(["FAILED evals/bounds/suite.yaml::gate?accuracy.lower >= 0.85?*", "*1 failed*"])
