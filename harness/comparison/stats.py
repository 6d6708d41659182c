"""Paired statistics for comparing two arms on the same cases (Miller 2024, "Adding Error Bars to Evals").

:func:`paired_bootstrap` draws cases with replacement, n per resample (with ``clusters``: G clusters,
each drawn cluster bringing all its cases), and recomputes every metric on both arms from the same
resample: ONE seeded set of resamples shared by every metric. A metric's interval is the percentile
interval of its resampled deltas (candidate minus reference, both recomputed on the same resample);
a resample where either arm has no value (0/0, no non-NaN value) is left out. Its p-value is the
two-sided bootstrap p-value of "delta = 0" by the shift method (Davison & Hinkley 1997, sec. 4.4)::

    p = (1 + #{|delta* - delta| >= |delta|}) / (1 + B)

over the B resamples with a value: how often a resampled delta, centred on the observed one, lies at
least as far from it as the observed delta lies from 0. It is never 0 (at least 1 / (B + 1)), and 1
when the observed delta is 0.

How resamples are drawn. Exact means: the same distribution as drawing case (or cluster) indices.

- Kinds (exact). Cases whose rows agree on every SumStatistic column of both arms, and that hold the
  same place for every QuantileStatistic (below), are one kind; a resample is its counts per kind,
  multinomial with each kind's share of the cases (the trick of :mod:`harness.scoring.stats`, over
  the joint kinds of every metric of both arms). Kinds of at least ``_FREQUENT`` cases are drawn by
  the multinomial, rarer ones pooled and drawn as case indices: a resample costs about (common
  kinds x 8 + cases in rare kinds) draws. A suite's usual mix (rates, token counts, classification
  cells, latency percentiles) leaves most cases kinds of their own: about n draws per resample.
- Quantiles (exact). Only cases near a percentile can be it in a resample: each arm keeps a window
  of +-6 standard deviations of the resample's count below the percentile (clusters widen it)
  around it, its cases kinds of their own values, and everything below it, above it, or NaN counts
  as one kind each. p99 of 100,000 cases keeps about 400 cases per arm, the median about 2,000. A
  resample whose percentile falls outside its window (about 1e-9 of them) is completed case by
  case (which cases of each kind it holds, drawn given its counts) and computed exactly.
- Clusters (exact). The drawn units are clusters: clusters holding the same count of each kind are
  one cluster kind, drawn as above, and a resample's kind counts sum its clusters'.
- Binned (approximate). When the exact draws would cost more than ``EXACT_BUDGET`` (resamples x
  draws per resample, e.g. a continuous score on 100,000 cases), each SumStatistic pair with more
  than ``MAX_BINS`` distinct (reference, candidate) rows is binned: its cases are grouped by their
  influence on the delta (its first-order change per case, from the gradient of ``reduce`` at the
  full-data sums) into ``MAX_BINS`` bins (half equal-width, half equal-count edges; with d binned
  influences, ``MAX_BINS ** (1/d)`` each, at least 4), and a case counts with its bin's mean rows.
  For a mean on both arms (columns ``[x, 1]``) this is a binned bootstrap of the per-case
  differences, as :func:`~harness.scoring.stats.bootstrap_mean`: a resample's delta moves by less
  than one bin's width (at most 1/256 of the differences' range). Metrics sharing the columns of a
  binned pair are binned with it. Binning is kept only where it at least halves the draws (other
  metrics' kinds may keep them many); point values are always exact.

Speed (``benchmarks/paired_speed.py``): 100,000 cases x 10,000 resamples take well under 2 s for a
0/1 mean, a binned continuous mean, a macro F1 from one-hot columns, or a p99.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np

from harness.scoring.stats import CONFIDENCE, RESAMPLES, SEED, percentile_interval

EXACT_BUDGET = 1e8  # draws (resamples x pooled cases, a multinomial kind counting 8) before binning: ~1 s
MAX_BINS = 512  # bins of a binned pair's influence
_FREQUENT = 8  # a kind with this many units is cheaper to draw by the multinomial than by indices
_CELLS = 2_000_000  # counts held at once (resamples x kinds of a chunk)
_WINDOW_SD = 6.0  # a quantile window's half-width, in standard deviations of the resample's rank
_WINDOW_PAD = 8  # ... plus this many cases (ties, small samples)
_BELOW, _ABOVE, _NAN, _INSIDE = 0, 1, 2, 3  # a case's place for a quantile (inside: 3 + value rank)


@dataclass(frozen=True, eq=False)
class SumStatistic:
    """A metric as a function of weighted column sums over the cases.

    ``columns`` has one row per case (n x k); a resample gives each case a weight (how many times it
    was drawn) and the metric is ``reduce(weights @ columns)``. ``reduce`` maps sums of shape
    (B, k) to values of shape (B,): a mean is ``columns = [x, 1]``, ``reduce = s[:, 0] / s[:, 1]``;
    a micro F1 is ``columns = [tp, fp, fn]``; a macro F1 one-hot columns per class. The point value
    is ``reduce(columns.sum(axis=0)[None])[0]``. NaN from reduce means "no value" (e.g. 0/0)."""

    columns: np.ndarray
    reduce: Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True, eq=False)
class QuantileStatistic:
    """A linear-interpolated percentile (numpy's default method) of per-case values; NaN values
    (errored or cached requests) are left out."""

    values: np.ndarray
    q: float  # 0..100


Statistic = SumStatistic | QuantileStatistic


@dataclass(frozen=True)
class PairedEstimate:
    """One metric on both arms: the values, their difference (candidate - reference), its percentile
    bootstrap interval, and a two-sided bootstrap p-value for "no difference"."""

    reference: float | None
    candidate: float | None
    delta: float | None
    lower: float | None
    upper: float | None
    p: float | None


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: ``regressed`` = reference passed and candidate failed, ``improved`` the
    other way; ``p`` = two-sided exact binomial test of the discordant pairs (1.0 when there are none)."""

    improved: int
    regressed: int
    p: float


def paired_bootstrap(statistics: Mapping[str, tuple[Statistic, Statistic]],
                     clusters: Sequence[Hashable] | None = None, resamples: int = RESAMPLES,
                     seed: int = SEED, confidence: float = CONFIDENCE) -> dict[str, PairedEstimate]:
    """Each metric's estimate, from ONE shared set of paired resamples (both arms get the same
    resampled cases, so the metrics' intervals agree). ``statistics[name] = (reference, candidate)``,
    both over the same n cases in the same order. With ``clusters`` (one label per case) whole
    clusters are resampled. See the module docstring for the p-value and what is exact.

    Seeded: the same call gives the same estimates. The draws depend on the cases' kinds over all
    the metrics passed, so a metric's interval moves by Monte Carlo noise when others join the call."""
    n = _case_count(statistics, clusters)
    points = {name: (_point(ref), _point(cand)) for name, (ref, cand) in statistics.items()}
    live = {name: statistics[name] for name, (a, b) in points.items() if a is not None and b is not None}
    draws = _Bootstrap(live, n, clusters, seed, resamples).run() if live and n and resamples > 0 else {}
    out = {}
    for name, (ref, cand) in points.items():
        if name not in live:
            out[name] = PairedEstimate(ref, cand, None, None, None, None)
            continue
        delta = cand - ref
        deltas = draws.get(name, np.empty(0))
        deltas = deltas[np.isfinite(deltas)]
        lower, upper = percentile_interval(deltas, confidence)
        p = None
        if deltas.size:
            beyond = int((np.abs(deltas - delta) >= abs(delta)).sum())
            p = (1 + beyond) / (1 + deltas.size)
        out[name] = PairedEstimate(ref, cand, delta, lower, upper, p)
    return out


def mcnemar(reference: Sequence[bool], candidate: Sequence[bool]) -> McNemar:
    """Exact McNemar test of per-case pass/fail on both arms (see :class:`McNemar`)."""
    ref = np.asarray(reference, dtype=bool)
    cand = np.asarray(candidate, dtype=bool)
    if ref.shape != cand.shape:
        raise ValueError(f"mcnemar: {ref.size} reference vs {cand.size} candidate cases")
    improved, regressed = int((~ref & cand).sum()), int((ref & ~cand).sum())
    if improved + regressed == 0:
        return McNemar(improved, regressed, 1.0)
    from scipy.stats import binomtest  # scipy only where the exact test is asked for

    return McNemar(improved, regressed, min(1.0, float(binomtest(improved, improved + regressed, 0.5).pvalue)))


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values, in the given order (None stays None and is not counted;
    NaN counts as None)."""
    present = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    out: list[float | None] = [None] * len(pvalues)
    m = len(present)
    running = 0.0
    for rank, i in enumerate(sorted(present, key=lambda i: pvalues[i])):  # type: ignore[arg-type,return-value]
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))  # type: ignore[arg-type]
        out[i] = running
    return out


def correlation(reference: Sequence[float], candidate: Sequence[float]) -> float | None:
    """Pearson correlation of per-case values (None when either side is constant or n < 2); a case
    with NaN on either side is left out."""
    a, b = np.asarray(reference, dtype=float), np.asarray(candidate, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"correlation: {a.size} reference vs {b.size} candidate values")
    kept = ~(np.isnan(a) | np.isnan(b))
    a, b = a[kept], b[kept]
    if a.size < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    a, b = a - a.mean(), b - b.mean()
    a, b = a / np.abs(a).max(), b / np.abs(b).max()  # tiny values would underflow when squared
    spread = math.sqrt(float(a @ a) * float(b @ b))
    return max(-1.0, min(1.0, float(a @ b) / spread)) if spread > 0 else None


def minimum_detectable_difference(differences: Sequence[float], clusters: Sequence[Hashable] | None = None,
                                  alpha: float = 0.05, power: float = 0.8) -> float | None:
    """Smallest true mean difference a paired two-sided test at ``alpha`` detects with ``power``,
    for this n and the observed spread of per-case differences:
    ``(z(1 - alpha/2) + z(power)) * se``, ``se = sd(d) / sqrt(n)``. With ``clusters`` the standard
    error is the cluster-robust one of the mean, from cluster sums (effective n = G clusters):
    ``se = sqrt(G / (G - 1) * sum(e_g^2)) / n`` with ``e_g`` = cluster g's sum of ``d - mean(d)``;
    for equal clusters that is ``sd(cluster means) / sqrt(G)``. NaN differences are left out.

    None when there is no spread to judge from (fewer than 2 cases or clusters, or every difference
    alike, e.g. two arms that agree on every case): a spread of 0 would claim that any difference is
    detectable, and any other figure would be a guess at a scale this function does not know."""
    d = np.asarray(differences, dtype=float)
    kept = ~np.isnan(d)
    if clusters is not None and len(clusters) != d.size:
        raise ValueError(f"minimum_detectable_difference: {len(clusters)} cluster labels for {d.size} cases")
    d = d[kept]
    n = d.size
    if n < 2:
        return None
    if clusters is None:
        se = float(np.std(d, ddof=1)) / math.sqrt(n)
    else:
        unit = _labels([c for c, k in zip(clusters, kept) if k])
        groups = int(unit.max()) + 1
        if groups < 2:
            return None
        residual = np.bincount(unit, weights=d - d.mean(), minlength=groups)
        se = math.sqrt(groups / (groups - 1) * float(residual @ residual)) / n
    if not se > 1e-12 * max(1.0, float(np.abs(d).max())):
        return None
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * se


# ---------------------------------------------------------------------------- point values

def _case_count(statistics: Mapping[str, tuple[Statistic, Statistic]], clusters: Sequence[Hashable] | None) -> int:
    sizes = {name: {_size(s) for s in pair} for name, pair in statistics.items()}
    found = set().union(*sizes.values()) if sizes else set()
    if clusters is not None:
        found.add(len(clusters))
    if len(found) > 1:
        raise ValueError(f"paired_bootstrap: statistics and clusters differ in case count: {sizes}"
                         + (f", {len(clusters)} cluster labels" if clusters is not None else ""))
    return found.pop() if found else 0


def _size(statistic: Statistic) -> int:
    if isinstance(statistic, SumStatistic):
        return len(statistic.columns)
    if not 0 <= statistic.q <= 100:
        raise ValueError(f"QuantileStatistic: q={statistic.q} is not in [0, 100]")
    return len(statistic.values)


def _columns(statistic: SumStatistic) -> np.ndarray:
    columns = np.asarray(statistic.columns, dtype=float)
    return columns.reshape(len(columns), -1)


def _point(statistic: Statistic) -> float | None:
    if isinstance(statistic, SumStatistic):
        with np.errstate(all="ignore"):
            value = float(np.asarray(statistic.reduce(_columns(statistic).sum(axis=0)[None]), dtype=float)[0])
    else:
        values = np.asarray(statistic.values, dtype=float)
        values = values[~np.isnan(values)]
        value = float(np.percentile(values, statistic.q)) if values.size else math.nan
    return value if math.isfinite(value) else None


def _labels(labels: Iterable[Hashable]) -> np.ndarray:
    """Each label's index, in order of first appearance."""
    index: dict[Hashable, int] = {}
    return np.fromiter((index.setdefault(label, len(index)) for label in labels), dtype=np.int64)


# ---------------------------------------------------------------------------- kinds

def _codes(values: np.ndarray) -> np.ndarray:
    """A dense integer code per row (equal rows, equal codes)."""
    if values.ndim == 1:
        return np.unique(values, return_inverse=True)[1].reshape(-1)
    return _combine([_codes(column) for column in values.T], len(values))


def _combine(keys: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Dense codes of the joint key (cases equal on every key share a code)."""
    joint = np.zeros(n, dtype=np.int64)
    size = 1
    for key in keys:
        width = int(key.max()) + 1 if key.size else 1
        if size * width >= 2 ** 62:  # re-number before the mixed-radix code overflows
            joint = np.unique(joint, return_inverse=True)[1].reshape(-1)
            size = int(joint.max()) + 1
        joint, size = joint * width + key, size * width
    return np.unique(joint, return_inverse=True)[1].reshape(-1)


class _Quantile:
    """A QuantileStatistic on one arm: each case's place (below, above, NaN, or inside the window)."""

    def __init__(self, statistic: QuantileStatistic, unit: np.ndarray, units: int) -> None:
        values = np.asarray(statistic.values, dtype=float)
        self.values = values
        self.p = float(np.true_divide(statistic.q, 100))
        valid = ~np.isnan(values)
        order = np.flatnonzero(valid)
        self.order = order[np.argsort(values[order], kind="stable")]  # for exact completion
        m = self.order.size
        centre = math.floor(self.p * (m - 1))
        # how far the resample's count below the percentile moves (a cluster moves its cases together)
        below = (values < values[self.order[centre]]) - self.p * valid
        spread = np.bincount(unit, weights=below, minlength=units)
        margin = math.ceil(_WINDOW_SD * math.sqrt(units * float(spread.var()))) + _WINDOW_PAD
        first, last = max(0, centre - margin), min(m - 1, centre + 1 + margin)
        self.place = np.full(values.size, _NAN, dtype=np.int64)
        self.place[self.order[:first]] = _BELOW
        self.place[self.order[last + 1:]] = _ABOVE
        self.inside, rank = np.unique(values[self.order[first:last + 1]], return_inverse=True)
        self.place[self.order[first:last + 1]] = _INSIDE + rank.reshape(-1)

    def index(self, kind_first: np.ndarray) -> np.ndarray:
        """Index the kinds (``kind_first``: a case of each kind): the window's kinds by value; returns
        per kind the columns [not NaN, below the window] (summed with the SumStatistics' columns)."""
        place = self.place[kind_first]
        window = np.flatnonzero(place >= _INSIDE)
        self.window = window[np.argsort(place[window], kind="stable")]
        self.window_values = self.inside[place[self.window] - _INSIDE]
        return np.column_stack([place != _NAN, place == _BELOW]).astype(float)

    def of_counts(self, counts: np.ndarray, sums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values from kind counts (b x kinds) and the sums of :meth:`index`'s columns (b x 2), and
        which rows' percentile lies outside the window."""
        valid, below = sums[:, 0].astype(np.int64), sums[:, 1].astype(np.int64)
        running = np.cumsum(counts[:, self.window], axis=1)
        h = self.p * (valid - 1)
        lo = np.floor(h)
        t = h - lo
        first = lo.astype(np.int64) - below
        second = np.minimum(lo.astype(np.int64) + 1, valid - 1) - below
        covered = (first >= 0) & (second < running[:, -1])
        last = self.window.size - 1
        # the k-th case (from 0) of the window is where the running count first exceeds k
        a = self.window_values[np.minimum((running <= first[:, None]).sum(axis=1), last)]
        b = self.window_values[np.minimum((running <= second[:, None]).sum(axis=1), last)]
        with np.errstate(invalid="ignore"):
            values = np.where(valid > 0, _lerp(a, b, t), np.nan)
        return values, (valid > 0) & ~covered

    def of_weights(self, weights: np.ndarray) -> float:
        """The exact value for per-case weights (a completed resample)."""
        running = np.cumsum(weights[self.order])
        valid = int(running[-1]) if running.size else 0
        if valid == 0:
            return math.nan
        h = self.p * (valid - 1)
        lo = math.floor(h)
        ends = np.searchsorted(running, [lo, min(lo + 1, valid - 1)], side="right")
        a, b = self.values[self.order[ends]]
        return float(_lerp(np.float64(a), np.float64(b), np.float64(h - lo)))


def _lerp(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """numpy's percentile interpolation, written as numpy writes it (same rounding)."""
    diff = b - a
    return np.where(t >= 0.5, b - diff * (1 - t), a + diff * t)


class _Columns:
    """A distinct columns array of the live SumStatistics (metrics sharing one are summed once)."""

    def __init__(self, columns: np.ndarray) -> None:
        self.columns = columns
        self.code = _codes(columns)  # per case: its row's code
        self.start = 0  # where its sums sit in a resample's row of sums


class _Bootstrap:
    """The live metrics compiled against the kinds of their cases: draws resamples, recomputes them."""

    def __init__(self, statistics: Mapping[str, tuple[Statistic, Statistic]], n: int,
                 clusters: Sequence[Hashable] | None, seed: int, resamples: int) -> None:
        self.statistics = statistics
        self.n, self.resamples = n, resamples
        self.unit = _labels(clusters) if clusters is not None else np.arange(n)
        self.units = int(self.unit.max()) + 1
        self.clustered = self.units < n
        self.rng, self.completion_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        arms = {id(s): s for pair in statistics.values() for s in pair}
        self.sums = {key: s for key, s in arms.items() if isinstance(s, SumStatistic)}
        self.quantiles = {key: _Quantile(s, self.unit, self.units)
                          for key, s in arms.items() if isinstance(s, QuantileStatistic)}
        self.columns: dict[int, _Columns] = {}
        for s in self.sums.values():
            if id(s.columns) not in self.columns:
                self.columns[id(s.columns)] = _Columns(_columns(s))
        self.binned: set[int] = set()  # columns (by id) whose kinds are bins
        self.bins: list[np.ndarray] = []
        self._index()
        exact = self.cost
        if exact * resamples > EXACT_BUDGET and self._bin():
            self._index()
            if self.cost > exact / 2:  # other keys keep the kinds many: binning buys little, stay exact
                self.bins, self.binned = [], set()
                self._index()

    # -- kinds and units

    def _index(self) -> None:
        keys = [q.place for q in self.quantiles.values()] + self.bins
        keys += [c.code for key, c in self.columns.items() if key not in self.binned]
        kind = _combine(keys, self.n)
        self.kinds = int(kind.max()) + 1
        _, first = np.unique(kind, return_index=True)
        size = np.bincount(kind, minlength=self.kinds)
        rows, start = [], 0
        for key, c in self.columns.items():
            c.start, start = start, start + c.columns.shape[1]
            if key in self.binned:  # a bin holds unequal rows: it counts with their mean
                rows.append(np.column_stack([np.bincount(kind, weights=col, minlength=self.kinds)
                                             for col in c.columns.T]) / size[:, None])
            else:
                rows.append(c.columns[first])
        self.quantile_start = start
        rows += [q.index(first) for q in self.quantiles.values()]
        # metrics often share columns (a count of cases, a class indicator): sum each distinct one once
        table = np.hstack(rows)
        distinct: dict[bytes, int] = {}
        self.column_of = np.array([distinct.setdefault(column.tobytes(), j) for j, column in enumerate(table.T)])
        kept = np.unique(self.column_of)
        self.rows = table[:, kept]
        self.column_of = np.searchsorted(kept, self.column_of)
        self._units(kind)
        share = np.bincount(self.unit_kind, minlength=self.unit_kinds)
        self.frequent = np.flatnonzero(share >= _FREQUENT)
        self.pool = self.unit_kind[share[self.unit_kind] < _FREQUENT]  # the unit kind of each pooled unit
        self.shares = np.append(share[self.frequent], self.pool.size) / self.units
        self.by_unit_kind = np.argsort(self.unit_kind, kind="stable")
        self.unit_kind_size = share
        nonzero = self.composition[0].size if self.composition is not None else 0
        self.cost = 8 * self.frequent.size + self.pool.size + nonzero  # draws per resample

    def _units(self, kind: np.ndarray) -> None:
        """Units (cases, or clusters) grouped by what they hold: the same count of each kind, one unit kind."""
        self.composition: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        if not self.clustered:
            self.unit_kind, self.unit_kinds = kind, self.kinds
            return
        pair, count = np.unique(self.unit * self.kinds + kind, return_counts=True)
        unit, held = pair // self.kinds, pair % self.kinds
        bounds = np.flatnonzero(np.diff(unit)) + 1
        signatures: dict[bytes, int] = {}
        held_by: list[tuple[np.ndarray, np.ndarray]] = []
        self.unit_kind = np.empty(self.units, dtype=np.int64)
        for u, (h, c) in enumerate(zip(np.split(held, bounds), np.split(count, bounds))):
            signature = h.tobytes() + c.tobytes()
            if signature not in signatures:
                signatures[signature] = len(signatures)
                held_by.append((h, c))
            self.unit_kind[u] = signatures[signature]
        self.unit_kinds = len(held_by)
        # (unit kind, kind, count) triples ordered by kind: a resample's kind counts sum over them
        u = np.repeat(np.arange(len(held_by)), [h.size for h, _ in held_by])
        k = np.concatenate([h for h, _ in held_by])
        c = np.concatenate([c for _, c in held_by])
        by_kind = np.argsort(k, kind="stable")
        self.composition = (u[by_kind], k[by_kind], c[by_kind])

    def _bin(self) -> bool:
        """Bin the pairs with many distinct rows by their influence on the delta; False if none."""
        groups: dict[tuple[int, int], list[tuple[SumStatistic, SumStatistic]]] = {}
        for ref, cand in self.statistics.values():
            if isinstance(ref, SumStatistic) and isinstance(cand, SumStatistic):
                groups.setdefault((id(ref.columns), id(cand.columns)), []).append((ref, cand))
        influences: dict[tuple[int, int], list[np.ndarray]] = {}
        for key, pairs in groups.items():
            a, b = self.columns[key[0]], self.columns[key[1]]
            if int(_combine([a.code, b.code], self.n).max()) + 1 <= MAX_BINS:
                continue
            found = [_influence(ref, cand, a.columns, b.columns) for ref, cand in pairs]
            if all(f is not None for f in found):  # a reduce without a finite gradient here stays exact
                influences[key] = [f for f in found if f is not None]
        dimensions = sum(len(found) for found in influences.values())
        if not dimensions:
            return False
        per = max(4, round(MAX_BINS ** (1 / dimensions)))
        self.bins = [_combine([_bin_codes(f, per) for f in found], self.n) for found in influences.values()]
        self.binned = {c for key in influences for c in key}
        return True

    # -- resampling

    def run(self) -> dict[str, np.ndarray]:
        """Each metric's resampled deltas (candidate minus reference, NaN where either has no value)."""
        resamples = self.resamples
        values = {key: np.empty(resamples) for key in [*self.sums, *self.quantiles]}
        chunk = max(1, min(resamples, _CELLS // max(self.kinds, self.unit_kinds)))
        for start in range(0, resamples, chunk):
            b = min(chunk, resamples - start)
            units = self._draw(b)
            counts = self._kind_counts(units)
            sums = (counts.astype(float) @ self.rows)[:, self.column_of]
            with np.errstate(all="ignore"):
                for key, s in self.sums.items():
                    c = self.columns[id(s.columns)]
                    part = sums[:, c.start:c.start + c.columns.shape[1]]
                    values[key][start:start + b] = np.asarray(s.reduce(part), dtype=float).reshape(b)
            missed: dict[int, list[int]] = {}
            for key, found, outside in self._quantile_values(counts, sums):
                values[key][start:start + b] = found
                for row in np.flatnonzero(outside):
                    missed.setdefault(int(row), []).append(key)
            for row, keys in missed.items():  # complete the resample once, for all its quantiles
                weights = self._complete(units[row])
                for key in keys:
                    values[key][start + row] = self.quantiles[key].of_weights(weights)
        return {name: values[id(cand)] - values[id(ref)] for name, (ref, cand) in self.statistics.items()}

    def _quantile_values(self, counts: np.ndarray, sums: np.ndarray) -> Iterable[tuple[int, np.ndarray, np.ndarray]]:
        """Each quantile's values on a chunk of resamples, and the rows to complete case by case."""
        for i, (key, q) in enumerate(self.quantiles.items()):
            at = self.quantile_start + 2 * i
            yield key, *q.of_counts(counts, sums[:, at:at + 2])

    def _draw(self, b: int) -> np.ndarray:
        """Counts per unit kind (b x unit kinds): multinomial over the common kinds, indices for the pool."""
        drawn = self.rng.multinomial(self.units, self.shares, size=b)
        counts = np.zeros((b, self.unit_kinds), dtype=np.int64)
        if self.pool.size:  # row by row: a flat draw for the chunk costs more in index arithmetic
            for row, taken in enumerate(drawn[:, -1]):
                counts[row] = np.bincount(self.pool[self.rng.integers(0, self.pool.size, taken)],
                                          minlength=self.unit_kinds)
        counts[:, self.frequent] = drawn[:, :-1]  # the pool holds none of the frequent kinds
        return counts

    def _kind_counts(self, units: np.ndarray) -> np.ndarray:
        if self.composition is None:
            return units
        unit_kind, kind, count = self.composition
        starts = np.flatnonzero(np.r_[True, kind[1:] != kind[:-1]])
        counts = np.zeros((len(units), self.kinds), dtype=np.int64)
        counts[:, kind[starts]] = np.add.reduceat(units[:, unit_kind] * count, starts, axis=1)
        return counts

    def _complete(self, unit_counts: np.ndarray) -> np.ndarray:
        """Per-case weights of a resample given its counts per unit kind: which units of each kind it holds."""
        size = self.unit_kind_size
        kinds = np.repeat(np.arange(self.unit_kinds), unit_counts)
        offset = (np.cumsum(size) - size)[kinds]
        picked = self.by_unit_kind[offset + self.completion_rng.integers(0, size[kinds])]
        return np.bincount(picked, minlength=self.units)[self.unit].astype(float)


def _influence(ref: SumStatistic, cand: SumStatistic, ref_columns: np.ndarray,
               cand_columns: np.ndarray) -> np.ndarray | None:
    """Each case's first-order effect on the delta; None where a gradient is not finite."""
    gradients = [_gradient(s.reduce, columns.sum(axis=0)) for s, columns in ((ref, ref_columns), (cand, cand_columns))]
    if gradients[0] is None or gradients[1] is None:
        return None
    return cand_columns @ gradients[1] - ref_columns @ gradients[0]


def _gradient(reduce: Callable[[np.ndarray], np.ndarray], sums: np.ndarray) -> np.ndarray | None:
    step = 1e-6 * np.maximum(np.abs(sums), 1.0)
    k = sums.size
    points = np.vstack([sums + np.diag(step), sums - np.diag(step)])
    with np.errstate(all="ignore"):
        values = np.asarray(reduce(points), dtype=float).reshape(-1)
    gradient = (values[:k] - values[k:]) / (2 * step)
    return gradient if np.all(np.isfinite(gradient)) else None


def _bin_codes(values: np.ndarray, bins: int) -> np.ndarray:
    """Bin codes: edges both equal-width (the tails) and equal-count (the bulk)."""
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return np.zeros(values.size, dtype=np.int64)
    half = max(2, bins // 2)
    inner = np.r_[np.linspace(low, high, half + 1)[1:-1], np.quantile(values, np.linspace(0, 1, half + 1)[1:-1])]
    return np.searchsorted(np.unique(inner), values, side="right").astype(np.int64)
