"""The ``judge`` scorer: a model grades each reply against a rubric (see :mod:`harness.judging`).

Its per-case score comes from the judge's reply, which generation attaches to the case's reply
(:mod:`harness.judging.stage`), so case scoring reads it (:func:`harness.judging.scores.judge_score`)
instead of calling :meth:`Judge.score`. Suite metric: ``judge_score``, the mean score with its
interval; the judge's agreement with people and with itself are added for every judged suite
(:mod:`harness.judging.quality`).
"""

from __future__ import annotations

from typing import Any

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
