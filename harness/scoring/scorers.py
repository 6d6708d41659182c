"""The built-in per-case scorers and the suite metrics each one aggregates (the registry: :mod:`harness.scoring.base`).

A scorer judges one prediction against one target and returns a :class:`Score`; its
``aggregate`` turns all of a suite's case results into suite metrics. Register your own
from a ``conftest.py``::

    @harness.scorer("starts_with")
    def starts_with(prediction, target, case):
        return str(prediction).startswith(str(target))
"""

from __future__ import annotations

import re
from typing import Any, Sequence

from harness.results import CaseResult
from harness.scoring.base import Score, Scorer, as_score, get_scorer, known_scorers, register, scorer
from harness.scoring.normalize import normalize

__all__ = ["Score", "Scorer", "register", "scorer", "as_score", "get_scorer", "known_scorers", "normalize"]


def _targets(target: Any) -> list[Any]:
    return list(target) if isinstance(target, list) else [target]


@register
class ExactMatch(Scorer):
    """Normalised exact match; a list target accepts any of its answers.

    ``numbers`` (default on) compares numbers by value: "1,000" = "1000" = "1000.0"."""

    name = "exact_match"
    options = {"normalize": True, "case_sensitive": False, "numbers": True}

    def score(self, prediction: Any, target: Any, case: Any) -> Score:
        if self.opts["normalize"]:
            sensitive, numbers = self.opts["case_sensitive"], self.opts["numbers"]
            pred = normalize(prediction, sensitive, numbers)
            hit = any(pred == normalize(t, sensitive, numbers) for t in _targets(target))
        else:
            hit = any(str(prediction) == str(t) for t in _targets(target))
        return Score(1.0) if hit else Score(0.0, f"{str(prediction)[:80]!r} != {target!r}")


@register
class Contains(Scorer):
    """The target (or any of a list of targets) appears in the prediction, both normalised."""

    name = "contains"
    options = {"case_sensitive": False, "numbers": True}

    def score(self, prediction: Any, target: Any, case: Any) -> Score:
        sensitive, numbers = self.opts["case_sensitive"], self.opts["numbers"]
        pred = normalize(prediction, sensitive, numbers)
        hit = any(normalize(t, sensitive, numbers) in pred for t in _targets(target))
        return Score(1.0) if hit else Score(0.0, f"{target!r} not in output")


@register
class RegexMatch(Scorer):
    """The prediction matches the target as a regular expression (or the `pattern` option)."""

    name = "regex"
    options = {"pattern": None, "fullmatch": True, "ignore_case": True}

    def score(self, prediction: Any, target: Any, case: Any) -> Score:
        pattern = self.opts["pattern"] or str(target)
        flags = re.IGNORECASE if self.opts["ignore_case"] else 0
        text = str(prediction).strip()
        match = re.fullmatch(pattern, text, flags) if self.opts["fullmatch"] else re.search(pattern, text, flags)
        return Score(1.0) if match else Score(0.0, f"does not match /{pattern}/")


@register
class JsonValid(Scorer):
    """The prediction is a JSON object (use the `json` extraction step), with the required keys
    and, given a JSON Schema (``schema`` inline or ``schema_file`` beside the suite), valid.

    With ``compare_target``, the score is the share of the target's keys whose values match."""

    name = "json_valid"
    main_metric = "json_ok"
    options = {"required_keys": [], "compare_target": False, "schema": None, "schema_file": None}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._validator = _schema_validator(self.opts["schema"], self.opts["schema_file"])

    def score(self, prediction: Any, target: Any, case: Any) -> Score:
        import json

        value = prediction
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                return Score(0.0, f"not JSON: {exc.msg}", {"json_ok": False})
        if not isinstance(value, dict):
            return Score(0.0, f"JSON {type(value).__name__}, not an object", {"json_ok": False})
        missing = [k for k in self.opts["required_keys"] if k not in value]
        data: dict[str, Any] = {"json_ok": True, "keys_ok": not missing}
        if self._validator is not None:
            error = next(iter(sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))), None)
            data["schema_ok"] = error is None
            if error is not None:
                return Score(0.0, f"schema: {error.message} at {error.json_path}", data)
        if missing:
            return Score(0.0, f"missing keys: {', '.join(missing)}", data)
        if self.opts["compare_target"] and isinstance(target, dict) and target:
            wrong = [k for k in target if normalize(value.get(k, "")) != normalize(target[k])]
            share = 1 - len(wrong) / len(target)
            data["fields_share"] = share
            return Score(share, f"wrong fields: {', '.join(wrong)}" if wrong else None, data)
        return Score(1.0, None, data)

    def aggregate(self, results: Sequence[CaseResult]) -> dict[str, float | None]:
        from harness.scoring.stats import mean_interval, with_interval

        names = ["json_ok", "keys_ok"]
        if self._validator is not None:
            names.append("schema_ok")
        if not results:
            return {name: None for name in [*names, "score"]}
        per_case = {name: [float(bool(r.data.get(name))) for r in results] for name in names}
        if self.opts["compare_target"]:
            per_case["field_accuracy"] = [r.data.get("fields_share", 0.0) for r in results]
            per_case["exact"] = [float((r.score or 0) >= 1) for r in results]
        metrics: dict[str, float | None] = {}
        for name, values in per_case.items():
            metrics[name] = sum(values) / len(values)
            with_interval(metrics, name, mean_interval(values))
        return metrics


def _schema_validator(schema: Any, schema_file: Any) -> Any:
    """A jsonschema validator for the inline schema or the schema file; ValueError when bad."""
    if schema is None and schema_file is None:
        return None
    import json

    import jsonschema

    if schema is not None and schema_file is not None:
        raise ValueError("scorer 'json_valid': give 'schema' or 'schema_file', not both")
    if schema_file is not None:
        try:
            with open(schema_file, encoding="utf-8") as handle:
                schema = json.load(handle)
        except OSError as exc:
            raise ValueError(f"scorer 'json_valid': cannot read schema_file {schema_file}: {exc}") from exc
        except json.JSONDecodeError as exc:
            raise ValueError(f"scorer 'json_valid': {schema_file}:{exc.lineno}: not JSON: {exc.msg}") from exc
    if not isinstance(schema, dict):
        raise ValueError("scorer 'json_valid': 'schema' must be a JSON Schema object")
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"scorer 'json_valid': invalid JSON Schema: {exc.message}") from exc
    return cls(schema)


@register
class ClassificationF1(Scorer):
    """Label classification, as scikit-learn defines it; suite metrics: accuracy, precision/recall/F1
    micro, macro and weighted, per class, each with its confidence interval.

    ``f1`` is the macro average by default (``average: micro|weighted`` to change it). Classes
    are the ``labels`` option (a prediction outside them is wrong and counts for no class) or,
    when absent, every label seen as a target or a prediction."""

    name = "classification_f1"
    main_metric = "f1"
    options = {"labels": None, "average": "macro", "case_sensitive": False}

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.opts["average"] not in ("macro", "micro", "weighted"):
            raise ValueError(f"scorer {self.name!r}: average must be one of macro, micro, weighted")

    def _norm(self, value: Any) -> str:
        return normalize(value, self.opts["case_sensitive"], numbers=True)

    def score(self, prediction: Any, target: Any, case: Any) -> Score:
        pred, label = self._norm(prediction), self._norm(target)
        labels = self.opts["labels"]
        if labels is not None and pred not in {self._norm(x) for x in labels}:
            return Score(0.0, f"prediction {str(prediction)[:40]!r} is not a known label", {"pred": pred, "label": label})
        if pred == label:
            return Score(1.0, None, {"pred": pred, "label": label})
        return Score(0.0, f"predicted {pred!r}, expected {label!r}", {"pred": pred, "label": label})

    def aggregate(self, results: Sequence[CaseResult]) -> dict[str, float | None]:
        from harness.scoring.classification import classification_intervals, classification_metrics
        from harness.scoring.stats import with_interval

        pairs = self._pairs(results)
        labels = self._labels()
        metrics = classification_metrics(pairs, labels)
        average = self.opts["average"]
        for name in ("f1", "precision", "recall"):
            metrics[name] = metrics[f"{name}_{average}"]
        intervals = classification_intervals(pairs, labels)
        for name in ("f1", "precision", "recall"):
            intervals[name] = intervals.get(f"{name}_{average}", (None, None))
        for name, interval in intervals.items():
            with_interval(metrics, name, interval)
        return metrics

    def _pairs(self, results: Sequence[CaseResult]) -> list[tuple[str, str | None]]:
        return [(self._norm(r.target), r.data.get("pred")) for r in results]

    def _labels(self) -> list[str] | None:
        return [self._norm(x) for x in self.opts["labels"]] if self.opts["labels"] else None

    def tables(self, results: Sequence[CaseResult]) -> dict[str, Any]:
        """The confusion matrix (rows: target, columns: prediction), for the reports."""
        from harness.scoring.classification import confusion_matrix

        return {"confusion": confusion_matrix(self._pairs(results), self._labels())}


@register
class ToolCalls(Scorer):
    """Tool calls (seed 001): labels and predictions are lists of ``{"toolName", "paramList"}``.

    The prediction is the reply's OpenAI ``tool_calls`` when it has them, else JSON text in
    the seed's shape (use an extraction step such as ``json``). A case scores 1 when its calls
    match strictly. Suite metrics: tool- and parameter-level precision/recall/F1, micro and
    macro, and the strict match rates; ``f1`` is the tool-level micro F1. ``negative: true``
    counts empty lists as the ``__NEGATIVE__`` pseudo-tool."""

    name = "tool_calls"
    main_metric = "f1"
    options = {"negative": False}

    def score(self, prediction: Any, target: Any, case: Any) -> Score:
        from harness.scoring.toolcalls import parse_tool_calls, strict_match

        try:
            label = parse_tool_calls(target)
        except ValueError as exc:
            raise ValueError(f"case {getattr(case, 'id', '?')}: target is not a tool-call list: {exc}") from exc
        reason = None
        try:
            pred = parse_tool_calls(prediction if prediction not in (None, "") else [])
        except ValueError as exc:
            pred, reason = [], f"prediction is not a tool-call list: {exc}"
        matched = strict_match([label], [pred])["strict_match"]
        value = 1.0 if matched == 1.0 or (matched is None and not pred) else 0.0
        if value < 1 and reason is None:
            import json

            shown = json.dumps(pred, ensure_ascii=False, default=str)
            reason = f"calls differ from the label: got {shown[:300]}"
        return Score(value, reason, {"label": label, "pred": pred})

    def _samples(self, results: Sequence[CaseResult]) -> tuple[list[Any], list[Any]]:
        from harness.scoring.toolcalls import parse_tool_calls

        labels, preds = [], []
        for r in results:
            labels.append(r.data["label"] if "label" in r.data else parse_tool_calls(r.target))
            preds.append(r.data.get("pred", []))  # an errored case predicted nothing
        return labels, preds

    def aggregate(self, results: Sequence[CaseResult]) -> dict[str, float | None]:
        from harness.scoring.stats import wilson, with_interval
        from harness.scoring.toolcalls import toolcall_report

        if not results:
            return {"f1": None}
        labels, preds = self._samples(results)
        report = toolcall_report(labels, preds, negative=self.opts["negative"])
        metrics: dict[str, float | None] = {k: v for k, v in report.items() if not isinstance(v, (dict, list))}
        for stat in ("precision", "recall", "f1"):
            metrics[stat] = metrics[f"tool_{stat}_micro"]
        counts = report["strict_counts"]
        with_interval(metrics, "strict_match", wilson(counts["single_hits"] + counts["multi_hits"],
                                                      counts["single_total"] + counts["multi_total"]))
        for name, interval in _tool_micro_intervals(labels, preds, self.opts["negative"]).items():
            with_interval(metrics, name, interval)
        return metrics

    def tables(self, results: Sequence[CaseResult]) -> dict[str, Any]:
        from harness.scoring.toolcalls import toolcall_report

        if not results:
            return {}
        labels, preds = self._samples(results)
        report = toolcall_report(labels, preds, negative=self.opts["negative"])
        return {"tool_metrics": report["per_tool"], "param_metrics": report["per_param_tool"]}


def _tool_micro_intervals(labels: list[Any], preds: list[Any], negative: bool) -> dict[str, tuple[Any, Any]]:
    """Bootstrap intervals of the tool-level micro P/R/F1: they depend on each case's (hits,
    predicted, label count) only, so cases are resampled as counts of those triples."""
    import numpy as np

    from harness.scoring.stats import draw_counts, percentile_interval
    from harness.scoring.toolcalls import tool_metrics

    triples: dict[tuple[int, int, int], int] = {}
    for label, pred in zip(labels, preds):
        micro = tool_metrics([label], [pred], negative=negative)["micro"]
        key = (int(micro["hits"]), int(micro["predicted"]), int(micro["support"]))
        triples[key] = triples.get(key, 0) + 1
    kinds = np.array(list(triples), dtype=float)
    draws = draw_counts(list(triples.values())) @ kinds
    hits, predicted, support = draws[:, 0], draws[:, 1], draws[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, hits / predicted, 0.0)
        recall = np.where(support > 0, hits / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    intervals = {"tool_precision_micro": percentile_interval(precision),
                 "tool_recall_micro": percentile_interval(recall), "tool_f1_micro": percentile_interval(f1)}
    intervals.update({"precision": intervals["tool_precision_micro"], "recall": intervals["tool_recall_micro"],
                      "f1": intervals["tool_f1_micro"]})
    return intervals

