"""The ``judge`` scorer: a model grades each reply against a rubric (see :mod:`harness.judging`).

Its per-case score comes from the judge's reply, which generation attaches to the case's reply
(:mod:`harness.judging.stage`), so case scoring reads it (:func:`harness.judging.scores.judge_score`)
instead of calling :meth:`Judge.score`. Suite metric: ``judge_score``, the mean score with its
interval; the judge's agreement with people and with itself are added for every judged suite
(:mod:`harness.judging.quality`).
"""

from __future__ import annotations

from typing import Any, Sequence

from harness.results import CaseResult
from harness.scoring.base import Score, Scorer, ScorerUnavailable, register


@register
class Judge(Scorer):
    """A rubric graded by a judge model; the suite's judge spec holds the options."""

    name = "judge"
    main_metric = "judge_score"
    options: dict[str, Any] = {}

    def score(self, prediction: Any, target: Any, case: Any) -> Score:
        raise ScorerUnavailable("scorer 'judge' grades from the judge model's reply; this case has none "
                                "(score it through a run, not by calling the scorer)")


@register
class JudgePairwise(Scorer):
    """Which of two models' answers is better, asked of a judge in both orders (harness.judging.pairwise).

    Metrics of a compared model: ``win_rate`` (a win 1, a tie 0.5, a loss 0; with its interval),
    ``win_share``, ``tie_share``, ``loss_share``. The reference model's cases are not judged: its
    metrics are None."""

    name = "judge_pairwise"
    main_metric = "win_rate"
    options: dict[str, Any] = {}

    def score(self, prediction: Any, target: Any, case: Any) -> Score:
        raise ScorerUnavailable("scorer 'judge_pairwise' grades from the judge model's replies; this case has none")

    def aggregate(self, results: Sequence[CaseResult]) -> dict[str, float | None]:
        from harness.scoring.stats import mean_interval, wilson, with_interval

        compared = list(results)
        if not compared or any((r.data or {}).get("pairwise") == "reference" for r in compared):
            # the reference's run: its cases are what the others are judged against
            return {"win_rate": None, "win_share": None, "tie_share": None, "loss_share": None}
        scores = [r.score or 0.0 for r in compared]
        metrics: dict[str, float | None] = {"win_rate": sum(scores) / len(scores)}
        with_interval(metrics, "win_rate", mean_interval(scores))
        for outcome in ("win", "tie", "loss"):
            count = sum((r.data or {}).get("pairwise") == outcome for r in compared)
            metrics[f"{outcome}_share"] = count / len(compared)
            with_interval(metrics, f"{outcome}_share", wilson(count, len(compared)))
        return metrics
