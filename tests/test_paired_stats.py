"""The paired statistics engine (harness.comparison.stats): against scipy, against straightforward
index resampling (within a Monte Carlo tolerance), and by property."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest, norm

from harness.comparison import stats
from harness.comparison.stats import (QuantileStatistic, SumStatistic, correlation, holm, mcnemar,
                                      minimum_detectable_difference, paired_bootstrap)

FAST = settings(max_examples=40, deadline=None)
B = 4000  # resamples for the Monte Carlo comparisons
# an interval endpoint from B resamples wanders by about 0.04 standard deviations of the deltas;
# two independent ones differ by under 0.25 sd with overwhelming probability
TOLERANCE = 0.25
# a percentile's resampled deltas are lumpy (few cases near it): their tails wander further
LUMPY = 0.35


def ratio(sums: np.ndarray) -> np.ndarray:
    return sums[:, 0] / sums[:, 1]


def mean(values: np.ndarray) -> SumStatistic:
    """A mean over the non-NaN values: columns [x, counted]."""
    counted = ~np.isnan(values)
    return SumStatistic(np.column_stack([np.where(counted, values, 0.0), counted.astype(float)]), ratio)


def naive_deltas(ref: np.ndarray, cand: np.ndarray, statistic, resamples: int = B, seed: int = 1,
                 clusters: np.ndarray | None = None) -> np.ndarray:
    """Resample indices (or whole clusters) with replacement, recompute both arms, subtract."""
    rng = np.random.default_rng(seed)
    n = len(ref)
    out = np.empty(resamples)
    members = [np.flatnonzero(clusters == g) for g in np.unique(clusters)] if clusters is not None else None
    for r in range(resamples):
        if members is None:
            index = rng.integers(0, n, n)
        else:
            index = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        out[r] = statistic(cand[index]) - statistic(ref[index])
    return out


def assert_interval_matches(estimate, deltas: np.ndarray, tolerance: float = TOLERANCE) -> None:
    deltas = deltas[np.isfinite(deltas)]
    low, high = np.quantile(deltas, [0.025, 0.975])
    scale = deltas.std()
    assert scale > 0
    assert abs(estimate.lower - low) < tolerance * scale, (estimate, low, high, scale)
    assert abs(estimate.upper - high) < tolerance * scale, (estimate, low, high, scale)


def related(n: int, seed: int, shift: float = 0.03) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ref = rng.random(n)
    return ref, np.clip(ref + rng.normal(shift, 0.15, n), 0, 1)


# ---------------------------------------------------------------------------- McNemar

@FAST
@given(st.lists(st.tuples(st.booleans(), st.booleans()), max_size=80))
def test_mcnemar_equals_binomtest_on_discordant_pairs(pairs):
    ref, cand = [a for a, _ in pairs], [b for _, b in pairs]
    test = mcnemar(ref, cand)
    improved = sum(not a and b for a, b in pairs)
    regressed = sum(a and not b for a, b in pairs)
    assert (test.improved, test.regressed) == (improved, regressed)
    expected = binomtest(improved, improved + regressed, 0.5).pvalue if improved + regressed else 1.0
    assert test.p == pytest.approx(expected, rel=1e-12)


def test_mcnemar_without_discordant_pairs_is_one_and_lengths_must_match():
    assert mcnemar([True, False], [True, False]).p == 1.0
    assert mcnemar([True] * 12, [False] * 12).p < 0.001
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])


# ---------------------------------------------------------------------------- paired bootstrap

@pytest.mark.parametrize("kind", ["binary", "continuous", "with NaN"])
def test_paired_mean_matches_index_resampling(kind):
    ref, cand = related(300, seed=3)
    if kind == "binary":
        ref, cand = (ref > 0.5).astype(float), (cand > 0.5).astype(float)
    elif kind == "with NaN":  # a case a metric does not count (e.g. no tokens), on either arm
        rng = np.random.default_rng(4)
        ref[rng.random(300) < 0.2], cand[rng.random(300) < 0.2] = np.nan, np.nan
    estimate = paired_bootstrap({"m": (mean(ref), mean(cand))}, resamples=B)["m"]
    assert estimate.reference == pytest.approx(np.nanmean(ref)) and estimate.candidate == pytest.approx(np.nanmean(cand))
    assert estimate.delta == pytest.approx(np.nanmean(cand) - np.nanmean(ref))
    assert_interval_matches(estimate, naive_deltas(ref, cand, np.nanmean))


def test_binned_mean_matches_index_resampling(monkeypatch):
    """Past the exact budget a continuous mean is binned by its per-case influence: same interval."""
    monkeypatch.setattr(stats, "EXACT_BUDGET", 0)
    ref, cand = related(20_000, seed=5)
    ref[::7] = np.nan  # a ratio of sums, not a plain mean of differences
    pair = (mean(ref), mean(cand))
    assert stats._Bootstrap({"m": pair}, 20_000, None, 0, B).binned  # the binned path is the one tested
    estimate = paired_bootstrap({"m": pair}, resamples=B)["m"]
    assert estimate.delta == pytest.approx(np.nanmean(cand) - np.nanmean(ref), abs=1e-12)  # points stay exact
    assert_interval_matches(estimate, naive_deltas(ref, cand, np.nanmean, resamples=2500))


def test_pooled_rare_kinds_match_index_resampling():
    """Many distinct rows (every case its own kind): the pool of index draws, exact."""
    ref, cand = related(500, seed=6)
    ref, cand = np.round(ref * 40) / 40, np.round(cand * 300) / 300  # some kinds common, most rare
    estimate = paired_bootstrap({"m": (mean(ref), mean(cand))}, resamples=B)["m"]
    assert_interval_matches(estimate, naive_deltas(ref, cand, np.mean))


def f1_macro(truth: np.ndarray, pred: np.ndarray, classes: int = 3) -> float:
    scores = []
    for c in range(classes):
        tp = np.sum((truth == c) & (pred == c))
        p = tp / max(np.sum(pred == c), 1)
        r = tp / max(np.sum(truth == c), 1)
        scores.append(2 * p * r / (p + r) if p + r else 0.0)
    return float(np.mean(scores))


def one_hot_f1(truth: np.ndarray, pred: np.ndarray, classes: int = 3) -> SumStatistic:
    is_true = (truth[:, None] == np.arange(classes)).astype(float)
    is_pred = (pred[:, None] == np.arange(classes)).astype(float)

    def reduce(sums: np.ndarray) -> np.ndarray:
        support, predicted, tp = np.split(sums, 3, axis=1)
        p = np.where(predicted > 0, tp / np.maximum(predicted, 1), 0)
        r = np.where(support > 0, tp / np.maximum(support, 1), 0)
        return np.where(p + r > 0, 2 * p * r / np.where(p + r > 0, p + r, 1), 0).mean(axis=1)

    return SumStatistic(np.hstack([is_true, is_pred, is_true * is_pred]), reduce)


def test_macro_f1_from_one_hot_columns_matches_index_resampling():
    rng = np.random.default_rng(7)
    truth = rng.integers(0, 3, 400)
    ref = np.where(rng.random(400) < 0.7, truth, rng.integers(0, 4, 400))  # 3: outside the classes
    cand = np.where(rng.random(400) < 0.8, truth, rng.integers(0, 4, 400))
    estimate = paired_bootstrap({"f1": (one_hot_f1(truth, ref), one_hot_f1(truth, cand))}, resamples=B)["f1"]
    assert estimate.reference == pytest.approx(f1_macro(truth, ref))
    assert estimate.candidate == pytest.approx(f1_macro(truth, cand))
    stacked = np.column_stack([truth, ref, cand])
    rng = np.random.default_rng(1)
    deltas = np.empty(B)
    for r in range(B):
        t, a, b = stacked[rng.integers(0, 400, 400)].T
        deltas[r] = f1_macro(t, b) - f1_macro(t, a)
    assert_interval_matches(estimate, deltas)


@pytest.mark.parametrize("q", [50, 90, 99])
def test_quantile_matches_percentile_resampling(q):
    rng = np.random.default_rng(q)
    ref = rng.lognormal(5, 0.6, 600)
    cand = ref * rng.lognormal(0.05, 0.2, 600)
    cand[rng.random(600) < 0.1] = np.nan  # errored or cached requests carry no latency
    ref = np.round(ref)  # ties
    estimate = paired_bootstrap({"p": (QuantileStatistic(ref, q), QuantileStatistic(cand, q))}, resamples=B)["p"]
    assert estimate.reference == np.percentile(ref, q)
    assert estimate.candidate == np.nanpercentile(cand, q)
    assert_interval_matches(estimate, naive_deltas(ref, cand, lambda v: np.nanpercentile(v, q)), LUMPY)


def test_quantile_outside_its_window_is_completed_exactly(monkeypatch):
    """With a window of a few cases most resamples need the exact, case-by-case completion."""
    monkeypatch.setattr(stats, "_WINDOW_SD", 0.0)
    monkeypatch.setattr(stats, "_WINDOW_PAD", 1)
    completed = []
    exact = stats._Quantile.of_weights
    monkeypatch.setattr(stats._Quantile, "of_weights", lambda self, w: completed.append(1) or exact(self, w))
    ref, cand = related(300, seed=8)
    cand[::10] = np.nan
    estimate = paired_bootstrap({"p": (QuantileStatistic(ref, 90), QuantileStatistic(cand, 90))}, resamples=B)["p"]
    assert len(completed) > B  # both arms, most resamples
    assert_interval_matches(estimate, naive_deltas(ref, cand, lambda v: np.nanpercentile(v, 90)), LUMPY)


def test_window_path_and_completion_agree_on_every_resample(monkeypatch):
    """Where a resample's percentile lies in the window, completing it case by case changes nothing."""
    ref, cand = related(400, seed=9)
    ref = np.round(ref * 50)  # ties inside the window
    engine = stats._Bootstrap({"p": (QuantileStatistic(ref, 75), QuantileStatistic(cand, 75))}, 400, None, 0, 50)
    units = engine._draw(50)
    counts = engine._kind_counts(units)
    sums = (counts.astype(float) @ engine.rows)[:, engine.column_of]
    for key, found, outside in engine._quantile_values(counts, sums):
        assert not outside.any()
        for row in range(50):
            assert found[row] == engine.quantiles[key].of_weights(engine._complete(units[row]))


def duplicated(values: np.ndarray, times: int = 5) -> np.ndarray:
    return np.repeat(values, times)


@pytest.mark.parametrize("statistic", ["mean", "p90"])
def test_clusters_of_identical_copies_count_once(statistic):
    ref, cand = related(300, seed=10)
    make = mean if statistic == "mean" else (lambda v: QuantileStatistic(v, 90))
    labels = np.repeat(np.arange(300), 5)
    single = paired_bootstrap({"m": (make(ref), make(cand))}, resamples=B)["m"]
    pair = (make(duplicated(ref)), make(duplicated(cand)))
    clustered = paired_bootstrap({"m": pair}, clusters=labels.tolist(), resamples=B, seed=3)["m"]
    unclustered = paired_bootstrap({"m": pair}, resamples=B)["m"]
    assert clustered.delta == pytest.approx(single.delta)
    width = single.upper - single.lower
    assert clustered.upper - clustered.lower == pytest.approx(width, rel=0.12)
    # about 1/sqrt(5) of it for a mean; a percentile's resamples still step between the 300 values
    assert unclustered.upper - unclustered.lower < (0.6 if statistic == "mean" else 0.75) * width


def test_clustered_mean_matches_cluster_resampling():
    rng = np.random.default_rng(11)
    sizes = rng.integers(1, 8, 120)  # unequal clusters: a resample's case count varies
    labels = np.repeat(np.arange(120), sizes)
    effect = rng.normal(0, 0.2, 120)[labels]  # cases of a cluster move together
    ref = np.clip(0.5 + effect + rng.normal(0, 0.1, labels.size), 0, 1)
    cand = np.clip(ref + rng.normal(0.02, 0.05, labels.size), 0, 1)
    estimate = paired_bootstrap({"m": (mean(ref), mean(cand))}, clusters=labels, resamples=B)["m"]
    assert_interval_matches(estimate, naive_deltas(ref, cand, np.mean, clusters=labels))


def test_clustered_quantile_matches_cluster_resampling():
    rng = np.random.default_rng(12)
    labels = np.repeat(np.arange(100), rng.integers(1, 6, 100))
    ref = rng.lognormal(5, 0.5, labels.size) * rng.lognormal(0, 0.3, 100)[labels]
    cand = ref * rng.lognormal(0.03, 0.1, labels.size)
    pair = (QuantileStatistic(ref, 90), QuantileStatistic(cand, 90))
    estimate = paired_bootstrap({"p": pair}, clusters=[f"doc{g}" for g in labels], resamples=B)["p"]
    assert_interval_matches(estimate, naive_deltas(ref, cand, lambda v: np.percentile(v, 90), clusters=labels), LUMPY)


@FAST
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(0, 3))
def test_identical_arms_give_no_difference(values, seed):
    x = np.array(values)
    estimates = paired_bootstrap({"m": (mean(x), mean(x.copy())),
                                  "p": (QuantileStatistic(x, 90), QuantileStatistic(x.copy(), 90))},
                                 resamples=200, seed=seed)
    for e in estimates.values():
        assert (e.delta, e.lower, e.upper, e.p) == (0.0, 0.0, 0.0, 1.0)


@FAST
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=2, max_size=40))
def test_swapping_the_arms_mirrors_every_resample(pairs):
    """One shared set of resamples: the swapped metric's deltas are exactly the negated ones."""
    a, b = np.array(pairs).T
    estimates = paired_bootstrap({"ab": (mean(a), mean(b)), "ba": (mean(b), mean(a)),
                                  "qab": (QuantileStatistic(a, 50), QuantileStatistic(b, 50)),
                                  "qba": (QuantileStatistic(b, 50), QuantileStatistic(a, 50))}, resamples=300)
    for forward, backward in (("ab", "ba"), ("qab", "qba")):
        f, r = estimates[forward], estimates[backward]
        assert r.delta == -f.delta and r.p == f.p
        assert r.lower == pytest.approx(-f.upper, abs=1e-12) and r.upper == pytest.approx(-f.lower, abs=1e-12)


def test_a_clear_difference_has_a_small_p_and_an_interval_away_from_zero():
    ref, cand = related(400, seed=13, shift=0.05)
    estimate = paired_bootstrap({"m": (mean(ref), mean(cand))})["m"]
    assert estimate.p < 0.01 and estimate.lower > 0
    assert estimate.p >= 1 / (stats.RESAMPLES + 1)  # never 0
    noise = paired_bootstrap({"m": (mean(ref), mean(ref + np.random.default_rng(0).normal(0, 0.1, 400)))})["m"]
    assert noise.p > 0.05 and noise.lower < 0 < noise.upper


def test_p_value_is_the_shift_method():
    """p = (1 + #{|d* - d| >= |d|}) / (1 + B), against a normal approximation of the deltas."""
    ref, cand = related(800, seed=14, shift=0.012)
    estimate = paired_bootstrap({"m": (mean(ref), mean(cand))})["m"]
    deltas = naive_deltas(ref, cand, np.mean, resamples=3000)
    expected = 2 * norm.sf(abs(estimate.delta) / deltas.std())
    assert 0.001 < expected < 0.5  # a p-value the Monte Carlo error does not swamp
    assert estimate.p == pytest.approx(expected, rel=0.3)


def test_same_seed_same_result_other_seed_other_draws():
    ref, cand = related(200, seed=15)
    statistics = {"m": (mean(ref), mean(cand)), "p": (QuantileStatistic(ref, 99), QuantileStatistic(cand, 99))}
    assert paired_bootstrap(statistics, seed=4, resamples=500) == paired_bootstrap(statistics, seed=4, resamples=500)
    assert paired_bootstrap(statistics, seed=5, resamples=500)["m"] != paired_bootstrap(statistics, seed=4, resamples=500)["m"]


def test_no_value_on_an_arm_and_empty_resamples():
    x = np.array([1.0, 0.0, 1.0, 1.0])
    nothing = np.full(4, np.nan)
    estimates = paired_bootstrap({"gone": (mean(x), mean(nothing)),
                                  "gone_q": (QuantileStatistic(nothing, 50), QuantileStatistic(x, 50)),
                                  "rare": (mean(np.array([np.nan, np.nan, np.nan, 1.0])), mean(x))}, resamples=2000)
    assert estimates["gone"] == stats.PairedEstimate(0.75, None, None, None, None, None)
    assert estimates["gone_q"] == stats.PairedEstimate(None, 1.0, None, None, None, None)
    # the reference counts one case: resamples without it (0/0) are left out, not read as 0
    rare = estimates["rare"]
    assert rare.delta == -0.25 and rare.lower is not None and rare.lower >= -1.0 and rare.upper <= 0.0
    assert paired_bootstrap({"m": (mean(x), mean(x))}, resamples=0)["m"].lower is None


def test_case_counts_must_agree():
    with pytest.raises(ValueError):
        paired_bootstrap({"m": (mean(np.zeros(3)), mean(np.zeros(4)))})
    with pytest.raises(ValueError):
        paired_bootstrap({"m": (mean(np.zeros(3)), mean(np.zeros(3)))}, clusters=[1, 2])
    with pytest.raises(ValueError):
        paired_bootstrap({"q": (QuantileStatistic(np.zeros(3), 101), QuantileStatistic(np.zeros(3), 50))})


# ---------------------------------------------------------------------------- Holm

def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.04 (m=4): 0.04, 0.06, 0.06 (monotone), 0.06 -> in the given order
    assert holm([0.03, None, 0.01, 0.04, 0.02]) == pytest.approx([0.06, None, 0.04, 0.06, 0.06])
    assert holm([0.5, 0.6]) == [1.0, 1.0]
    assert holm([None, float("nan")]) == [None, None]
    assert holm([]) == []


@FAST
@given(st.lists(st.one_of(st.none(), st.floats(0, 1)), max_size=12))
def test_holm_properties(pvalues):
    adjusted = holm(pvalues)
    assert [a is None for a in adjusted] == [p is None for p in pvalues]
    kept = [(p, a) for p, a in zip(pvalues, adjusted) if p is not None]
    for p, a in kept:
        assert p <= a <= 1.0
    ordered = sorted(kept)
    assert all(a1 <= a2 for (_, a1), (_, a2) in zip(ordered, ordered[1:]))
    if kept:  # the smallest p-value is multiplied by the family size (None not counted)
        assert ordered[0][1] == pytest.approx(min(1.0, len(kept) * ordered[0][0]))


@FAST
@given(st.lists(st.floats(0, 1), min_size=1, max_size=12))
def test_holm_equals_statsmodels(pvalues):
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    expected = multitest.multipletests(pvalues, method="holm")[1]
    assert holm(pvalues) == pytest.approx(list(expected), abs=1e-12)


# ---------------------------------------------------------------------------- correlation, MDD

@FAST
@given(st.lists(st.tuples(st.integers(-10**6, 10**6), st.integers(-10**6, 10**6)), max_size=30))
def test_correlation_is_pearson(pairs):
    a, b = (np.array(p, dtype=float) for p in zip(*pairs)) if pairs else (np.array([]), np.array([]))
    r = correlation(a, b)
    if len(pairs) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        assert r is None
    else:
        assert r == pytest.approx(np.corrcoef(a, b)[0, 1], abs=1e-9) and -1 <= r <= 1


def test_correlation_leaves_out_nan_cases_and_survives_tiny_values():
    assert correlation([1, 2, np.nan, 4], [2, 4, 5, np.nan]) == pytest.approx(1.0)
    assert correlation([1, 1, 1], [1, 2, 3]) is None
    assert correlation([0.0, 2e-200, 1e-200], [1.0, 3.0, 2.0]) == pytest.approx(1.0)  # squares underflow


def test_minimum_detectable_difference():
    d = np.array([0.0, 1.0, -1.0, 0.0, 1.0, 0.0, 0.0, 1.0])
    expected = (norm.ppf(0.975) + norm.ppf(0.8)) * d.std(ddof=1) / math.sqrt(d.size)
    assert minimum_detectable_difference(d) == pytest.approx(expected)
    assert minimum_detectable_difference(d, alpha=0.01, power=0.9) > expected
    # each case copied 5 times in one cluster: the clusters are the sample, as without copies
    labels = np.repeat(np.arange(d.size), 5).tolist()
    assert minimum_detectable_difference(np.repeat(d, 5), labels) == pytest.approx(expected)
    assert minimum_detectable_difference(np.repeat(d, 5)) < 0.5 * expected
    # no spread, or no sample: None (0 would claim that any difference is detectable)
    assert minimum_detectable_difference(np.zeros(50)) is None
    assert minimum_detectable_difference(np.full(50, 0.1)) is None
    assert minimum_detectable_difference([1.0]) is None
    assert minimum_detectable_difference([1.0, 0.0], ["a", "a"]) is None
    assert minimum_detectable_difference([np.nan, 1.0, 0.0, 1.0]) == pytest.approx(
        minimum_detectable_difference([1.0, 0.0, 1.0]))
