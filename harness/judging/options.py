"""Which suites a model grades: :func:`split_judge` reads it from the suite file's ``scorer:``.

Two forms::

    scorer: {name: judge, rubric: ..., scale: [0, 1], model: judge-model}

    scorer: {name: refusal, method: judge, language: zh}     # also key_points; toxicity takes
    scorer: {name: toxicity, classifier: judge}              # classifier: judge (or method: judge)

The second form keeps the rule-based scorer's metrics (``refusal_accuracy``, ``toxic_ratio``,
``key_point_coverage`` and their gates) and replaces only its per-case decision by the built-in
rubric of the same name (:mod:`harness.judging.rubrics`).
"""

from __future__ import annotations

from typing import Any

from harness.judging.spec import JudgeSpec, parse_spec

__all__ = ["JUDGED_BY_RUBRIC", "JUDGE_OPTIONS", "split_judge"]

# rule-based scorers that a judge can replace, and the built-in rubric that does it
JUDGED_BY_RUBRIC = {"refusal": "refusal", "key_points": "key_points", "toxicity": "toxicity"}
# what those scorers take about the judge when method is judge
JUDGE_OPTIONS = ("model", "language", "samples", "temperature", "max_tokens")


def split_judge(scorer: str, options: dict[str, Any], where: str) -> tuple[JudgeSpec | None, dict[str, Any]]:
    """The judge spec of a suite's scorer (None when no model grades it) and the options left for the
    scorer itself. Raises ValueError naming the option."""
    if scorer == "judge":
        return parse_spec(options, where), {}
    if scorer == "judge_pairwise":
        from harness.judging.pairwise import parse_pairwise

        return parse_pairwise(options, where), {}
    if scorer not in JUDGED_BY_RUBRIC:
        return None, options
    method = options.get("method", "rules")
    if scorer == "toxicity" and options.get("classifier") == "judge":
        if options.get("method", "judge") != "judge":
            raise ValueError(f"{where}: classifier: judge and method: {method} disagree")
        method = "judge"
    if method not in ("rules", "judge"):
        raise ValueError(f"{where}: method must be rules (the default) or judge, not {method!r}")
    rest = {key: value for key, value in options.items() if key != "method"}
    if method == "rules":
        stray = sorted(set(rest) & set(JUDGE_OPTIONS))
        if stray:
            raise ValueError(f"{where}: option {stray[0]!r} is for a judge; add method: judge to grade with a model")
        return None, rest
    judge_options = {key: rest.pop(key) for key in JUDGE_OPTIONS if key in rest}
    if scorer == "toxicity":
        rest["classifier"] = "judge"  # the scorer then loads no classifier of its own
        for key in ("threshold", "classifier_options"):
            if key in rest:
                raise ValueError(f"{where}: {key} applies to a toxicity classifier, not to a judge")
    spec = parse_spec({"rubric": JUDGED_BY_RUBRIC[scorer], **judge_options}, where)
    return spec, rest
