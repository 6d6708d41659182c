"""How far a judge can be trusted, measured in the same run.

- :func:`agreement`: judge verdicts against human labels: accuracy, Cohen's kappa (as scikit-learn's
  ``cohen_kappa_score``, optionally linear/quadratic weighted), seeded percentile bootstrap intervals
  for both, and the confusion matrix (rows = human, columns = judge).
- :func:`position_consistency` / :func:`combine_pairwise`: a pairwise judge asked in both orders.
- :func:`self_agreement` / :func:`fleiss_kappa`: a judge sampled k > 1 times per case.

Every result is JSON-ready: plain Python numbers, ``None`` (never NaN) where a figure is undefined.
numpy is imported inside the functions: importing this module (from the plugin) stays cheap.
"""

from __future__ import annotations

from typing import Hashable, Sequence

Label = Hashable
WEIGHTS = (None, "linear", "quadratic")
PAIRWISE = ("A", "B", "tie")
_MIRROR = {"A": "B", "B": "A", "tie": "tie"}
_CELLS = 2_000_000  # resampled counts held at once (resamples x confusion cells of a chunk)


def agreement(judge: Sequence[Label | None], human: Sequence[Label | None],
              labels: Sequence[Label] | None = None, resamples: int | None = None,
              seed: int | None = None, alpha: float = 0.05, weights: str | None = None) -> dict:
    """Agreement of judge verdicts with human labels, case by case.

    Returns ``{"n", "missing", "unlabelled", "outside_labels", "accuracy", "accuracy.lower",
    "accuracy.upper", "kappa", "kappa.lower", "kappa.upper", "weights", "confusion", "note"}``:

    - ``n``: cases counted; ``missing``: cases left out because the judge verdict is None (a judge
      error); ``unlabelled``: left out because the human label is None; ``outside_labels``: left out
      because a label is not in ``labels`` (scikit-learn drops them likewise).
    - ``kappa``: ``sklearn.metrics.cohen_kappa_score(human, judge, labels=labels, weights=weights)``;
      None where that is NaN (no cases, or both raters used one and the same label), ``note`` says why.
      ``weights`` ("linear"/"quadratic") weigh a disagreement by the distance of the labels' positions
      in ``labels`` (default: the sorted labels, as scikit-learn; pass ``labels`` in scale order
      for string scales such as "1".."10").
    - ``*.lower``/``*.upper``: percentile bootstrap interval at confidence 1 - ``alpha`` over
      ``resamples`` case resamples (default: the harness's RESAMPLES and SEED; 0 resamples: None).
    - ``confusion``: ``{"labels": [...], "matrix": [[...]]}``, ``matrix[i][j]`` = cases the human
      labelled ``labels[i]`` and the judge ``labels[j]``.
    """
    import numpy as np

    from harness.scoring.stats import RESAMPLES, SEED, percentile_interval

    if len(judge) != len(human):
        raise ValueError(f"agreement: {len(judge)} judge verdicts vs {len(human)} human labels")
    if weights not in WEIGHTS:
        raise ValueError(f"agreement: weights must be one of {WEIGHTS}, not {weights!r}")
    missing = sum(j is None for j in judge)
    unlabelled = sum(j is not None and h is None for j, h in zip(judge, human))
    pairs = [(h, j) for j, h in zip(judge, human) if j is not None and h is not None]
    if labels is None:
        scale = sorted({x for pair in pairs for x in pair})
    else:
        scale = list(labels)
        if len(set(scale)) != len(scale):
            raise ValueError(f"agreement: labels repeat a label: {scale!r}")
    index = {label: i for i, label in enumerate(scale)}
    kept = [(index[h], index[j]) for h, j in pairs if h in index and j in index]
    outside = len(pairs) - len(kept)
    size = len(scale)
    matrix = np.zeros((size, size), dtype=np.int64)
    for i, j in kept:
        matrix[i, j] += 1
    n = len(kept)
    result: dict = {
        "n": n, "missing": missing, "unlabelled": unlabelled, "outside_labels": outside,
        "accuracy": None, "accuracy.lower": None, "accuracy.upper": None,
        "kappa": None, "kappa.lower": None, "kappa.upper": None, "weights": weights,
        "confusion": {"labels": [_plain(label) for label in scale], "matrix": matrix.tolist()},
        "note": None,
    }
    if n == 0:
        result["note"] = "no case has both a judge verdict and a human label: agreement is undefined"
        return result

    rows, cols = np.nonzero(matrix)  # the confusion cells that hold cases: the kinds resampled
    cells = matrix[rows, cols]
    positions = np.arange(size, dtype=float)
    distance = positions[:, None] - positions[None, :]
    weight = {None: (distance != 0).astype(float), "linear": np.abs(distance), "quadratic": distance ** 2}[weights]
    agree = (rows == cols).astype(float)
    cell_weight = weight[rows, cols]
    human_of, judge_of = np.eye(size)[rows], np.eye(size)[cols]  # cell -> its row / column label

    def statistics(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Accuracy and kappa of confusion matrices given as counts per occupied cell (B x cells)."""
        counts = counts.astype(float)
        total = counts.sum(axis=1)
        observed = counts @ cell_weight
        expected = ((counts @ human_of) @ weight * (counts @ judge_of)).sum(axis=1) / total
        with np.errstate(divide="ignore", invalid="ignore"):
            kappa = np.where(expected > 0, 1 - observed / expected, np.nan)
        return counts @ agree / total, kappa

    accuracy, kappa = statistics(cells[None, :])
    result["accuracy"] = float(accuracy[0])
    if np.isnan(kappa[0]):
        result["note"] = (f"kappa is undefined: both raters gave every case the same label "
                          f"({_plain(scale[int(rows[0])])!r}), so chance agreement is 1 (scikit-learn "
                          f"returns NaN)")
    else:
        result["kappa"] = float(kappa[0])
    resamples = RESAMPLES if resamples is None else int(resamples)
    if resamples <= 0:
        return result
    rng = np.random.default_rng(SEED if seed is None else seed)
    share = cells / n
    accuracies, kappas = np.empty(resamples), np.empty(resamples)
    chunk = max(1, _CELLS // cells.size)
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        accuracies[start:start + b], kappas[start:start + b] = statistics(rng.multinomial(n, share, size=b))
    confidence = 1 - alpha
    result["accuracy.lower"], result["accuracy.upper"] = percentile_interval(accuracies, confidence)
    if result["kappa"] is not None:
        result["kappa.lower"], result["kappa.upper"] = percentile_interval(kappas, confidence)
    return result


def combine_pairwise(first: str, swapped: str) -> str:
    """One verdict from a pairwise judge asked in both orders (``swapped`` in the swapped order's
    terms): the winner when both orders name the same answer, else "tie"."""
    _check_pairwise(first)
    _check_pairwise(swapped)
    return first if first != "tie" and swapped == _MIRROR[first] else "tie"


def position_consistency(first: Sequence[str | None], swapped: Sequence[str | None]) -> dict:
    """How often a pairwise judge gives the same verdict in both orders.

    Verdicts are "A", "B" or "tie"; ``swapped[i]`` is in the swapped order's terms (a consistent
    judge says "B" there where it said "A" first). Returns ``{"n", "missing", "consistent",
    "counts", "verdicts"}``: ``n`` cases with both verdicts; ``missing`` cases with a None verdict
    (a judge error) in either order, left out; ``consistent`` the fraction of the n cases whose two
    verdicts agree (None when n = 0); ``counts[first][swapped]`` how many cases got that pair (every
    pair listed, zeros included); ``verdicts`` the combined verdict per case (:func:`combine_pairwise`,
    None where missing)."""
    if len(first) != len(swapped):
        raise ValueError(f"position_consistency: {len(first)} first-order vs {len(swapped)} swapped verdicts")
    counts = {a: {b: 0 for b in PAIRWISE} for a in PAIRWISE}
    verdicts: list[str | None] = []
    consistent = 0
    for a, b in zip(first, swapped):
        if a is None or b is None:
            verdicts.append(None)
            continue
        verdict = combine_pairwise(a, b)
        counts[a][b] += 1
        consistent += b == _MIRROR[a]
        verdicts.append(verdict)
    n = sum(v is not None for v in verdicts)
    return {"n": n, "missing": len(verdicts) - n, "consistent": consistent / n if n else None,
            "counts": counts, "verdicts": verdicts}


def self_agreement(samples: Sequence[Sequence[Label | None]]) -> dict:
    """Agreement of a judge with itself over k > 1 samples per case (``samples[case][sample]``).

    Returns ``{"n", "missing", "samples", "mean_agreement", "per_case", "fleiss_kappa", "note"}``:
    ``per_case`` the fraction of agreeing sample pairs of each case (None where left out),
    ``mean_agreement`` their mean over the n counted cases, ``fleiss_kappa`` Fleiss' kappa over them
    (None when undefined: ``note`` says why). A case with a None sample (a judge error) is left out
    and counted as ``missing``; every case must hold the same number k >= 2 of samples."""
    import numpy as np

    ks = {len(case) for case in samples}
    if len(ks) > 1:
        raise ValueError(f"self_agreement: cases hold different numbers of samples: {sorted(ks)}")
    k = ks.pop() if ks else 0
    if samples and k < 2:
        raise ValueError(f"self_agreement: needs at least 2 samples per case, got {k}")
    kept = [list(case) for case in samples if all(s is not None for s in case)]
    scale = sorted({s for case in kept for s in case})
    index = {label: i for i, label in enumerate(scale)}
    table = np.zeros((len(kept), len(scale)), dtype=np.int64)
    for row, case in enumerate(kept):
        for s in case:
            table[row, index[s]] += 1
    agreeing = (table * (table - 1)).sum(axis=1) / (k * (k - 1)) if kept else np.empty(0)
    per_case: list[float | None] = []
    it = iter(agreeing.tolist())
    for case in samples:
        per_case.append(next(it) if all(s is not None for s in case) else None)
    kappa = fleiss_kappa(table) if kept else None
    note = None
    if not kept:
        note = "no case has all its samples: self-agreement is undefined"
    elif kappa is None:
        note = (f"Fleiss' kappa is undefined: every sample of every case is {_plain(scale[0])!r}, "
                f"so chance agreement is 1")
    return {"n": len(kept), "missing": len(samples) - len(kept), "samples": k,
            "mean_agreement": float(agreeing.mean()) if kept else None, "per_case": per_case,
            "fleiss_kappa": kappa, "note": note}


def fleiss_kappa(table: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa of a subjects x categories table of rating counts (each row summing to the
    same number of raters, as statsmodels' ``fleiss_kappa``); None when chance agreement is 1."""
    import numpy as np

    counts = np.asarray(table, dtype=float)
    subjects = counts.shape[0]
    raters = counts[0].sum() if subjects else 0.0
    if subjects == 0 or raters < 2 or np.any(counts.sum(axis=1) != raters):
        raise ValueError("fleiss_kappa: needs subjects rated by the same number (>= 2) of raters")
    share = counts.sum(axis=0) / (subjects * raters)
    observed = ((counts * (counts - 1)).sum(axis=1) / (raters * (raters - 1))).mean()
    chance = float((share ** 2).sum())
    if chance >= 1:
        return None
    return float((observed - chance) / (1 - chance))


def _check_pairwise(verdict: object) -> None:
    if verdict not in _MIRROR:
        raise ValueError(f"pairwise verdict must be one of {PAIRWISE}, not {verdict!r}")


def _plain(value: object) -> object:
    """A numpy scalar as the Python value (JSON-ready); anything else as is."""
    item = getattr(value, "item", None)
    return item() if callable(item) and type(value).__module__ == "numpy" else value
