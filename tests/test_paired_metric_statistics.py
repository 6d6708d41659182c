"""Suite metrics as paired statistics (harness.comparison.statistics).

Each arm is scored for real (score_reply) from seeded random replies, with errors, cache hits,
truncations and latencies. The contract: every returned statistic's point value on an arm is that
arm's suite_metrics value (NaN <=> None), and a bootstrap resample of the columns is the metric of
the resampled cases."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pytest

import harness
from harness.case_scoring import score_reply
from harness.comparison.stats import QuantileStatistic, SumStatistic
from harness.comparison.statistics import NOT_COMPARED, binary_metrics, case_values, paired_statistics
from harness.results import CaseResult
from harness.scoring.base import Score, Scorer
from harness.suite import Case, Suite, load_cases, load_suite
from harness.suite_metrics import suite_metrics
from tests.conftest import write_suite

N = 40
SEEDS = range(3)


@harness.scorer("paired_stats_overlap")
def _overlap(prediction: Any, target: Any, case: Any) -> float:
    """A fractional custom score: the share of the target's letters in the prediction."""
    letters = set(str(target))
    return len(letters & set(str(prediction))) / len(letters) if letters else 1.0


@harness.scorer("paired_stats_own_aggregate")
class _OwnAggregate(Scorer):
    def score(self, prediction: Any, target: Any, case: Any) -> Score:
        return Score(float(str(prediction) == str(target)))

    def aggregate(self, results: Sequence[CaseResult]) -> dict[str, float | None]:
        return {"mystery": float(len(results))}


# ---------------------------------------------------------------------------- helpers

def make_suite(tmp_path: Path, name: str, targets: list[Any], **spec: Any) -> tuple[Suite, list[Case]]:
    cases = [{"id": f"c{i}", "input": f"question {i}", "target": t} for i, t in enumerate(targets)]
    folder = write_suite(tmp_path, name, cases, **spec)
    suite = load_suite(folder / "suite.yaml")
    return suite, load_cases(suite, suite.datasets[0])


def run_arm(suite: Suite, cases: list[Case], replies: list[dict[str, Any]], rng: np.random.Generator,
            model: str, stream: bool = False) -> list[CaseResult]:
    """Score each reply as the harness does, after giving it timings and random faults."""
    results = []
    for i, (case, reply) in enumerate(zip(cases, replies)):
        reply = dict(reply)
        u = rng.random()
        if u < 0.1:
            reply = {"text": None, "error": "HTTP 500: boom"}
        elif u < 0.25:
            reply["cached"] = True
        if rng.random() < 0.1:
            reply["finish_reason"] = "length"
        reply["latency_ms"] = float(rng.integers(1, 30) * 10)  # ties on purpose
        reply["output_tokens"] = None if rng.random() < 0.2 else int(rng.integers(1, 6))
        if stream:
            reply.update(ttft_ms=float(rng.integers(1, 9)), tpot_ms=float(rng.integers(1, 5)))
            if rng.random() < 0.8:  # without send times a request is not in the TTFT/TPOT figures
                reply.update(sent_at=1000.0 + i, done_at=1000.5 + i)
        results.append(score_reply(suite, case, model, f"{suite.name}::{case.id}", case.dataset.name, reply))
    return results


def point(stat: SumStatistic | QuantileStatistic) -> float:
    if isinstance(stat, SumStatistic):
        return float(stat.reduce(stat.columns.sum(axis=0)[None])[0])
    values = stat.values[~np.isnan(stat.values)]
    return float(np.percentile(values, stat.q)) if values.size else float("nan")


def resampled(stat: SumStatistic | QuantileStatistic, counts: np.ndarray) -> np.ndarray:
    """The statistic on each row of case counts (B x n), in one vectorised call for a SumStatistic."""
    if isinstance(stat, SumStatistic):
        return stat.reduce(counts @ stat.columns)
    return np.array([point(QuantileStatistic(np.repeat(stat.values, row.astype(int)), stat.q)) for row in counts])


def same(got: float, want: float | None, what: str) -> None:
    if want is None:
        assert np.isnan(got), f"{what}: expected no value, got {got}"
    else:
        assert not np.isnan(got) and abs(got - want) <= 1e-9, f"{what}: {got} != {want}"


def check_contract(suite: Suite, reference: list[CaseResult], candidate: list[CaseResult],
                   resamples: int = 2, seed: int = 0, uncovered: frozenset[str] = frozenset()) -> dict[str, Any]:
    """Point values, resampled values, shapes, coverage (every metric but NOT_COMPARED and
    ``uncovered``) and case values, on both arms."""
    stats = paired_statistics(suite, reference, candidate)
    n = len(reference)
    for name, (ref, cand) in stats.items():
        assert type(ref) is type(cand), name
        if isinstance(ref, SumStatistic):
            assert ref.columns.shape[0] == cand.columns.shape[0] == n, name
            assert ref.columns.shape[1] == cand.columns.shape[1], name
        else:
            assert ref.q == cand.q and len(ref.values) == len(cand.values) == n, name
    rng = np.random.default_rng(seed)
    for index, arm in enumerate((reference, candidate)):
        _, metrics = suite_metrics(suite, arm)
        for name, pair in stats.items():
            same(point(pair[index]), metrics.get(name), f"arm {index} {name}")
        expected = {k for k in metrics if not k.endswith((".lower", ".upper"))} - NOT_COMPARED - uncovered
        assert expected <= set(stats), f"arm {index} lacks {sorted(expected - set(stats))}"
        draws = [rng.integers(0, n, n) for _ in range(resamples)]
        counts = np.array([np.bincount(d, minlength=n) for d in draws], dtype=float)
        values = {name: resampled(pair[index], counts) for name, pair in stats.items()}
        for b, draw in enumerate(draws):
            _, drawn = suite_metrics(suite, [arm[i] for i in draw])
            for name in stats:
                same(float(values[name][b]), drawn.get(name), f"arm {index} resample {b} {name}")
        for name, per_case in case_values(suite, arm).items():
            assert name in stats and len(per_case) == n, name
            counted = per_case[~np.isnan(per_case)]
            same(float(counted.mean()) if counted.size else float("nan"), metrics.get(name), f"case values {name}")
    return stats


def scenario(tmp_path: Path, name: str, targets: list[Any], reply: Callable[[np.random.Generator, Any, int], Any],
             seed: int, stream: bool = False, **spec: Any) -> tuple[Suite, list[CaseResult], list[CaseResult]]:
    """A suite over ``targets`` and two arms; ``reply(rng, target, arm)`` is a reply text or a reply dict."""
    suite, cases = make_suite(tmp_path, name, targets, **spec)
    rng = np.random.default_rng(seed)
    arms = []
    for arm in (0, 1):
        replies = []
        for case in cases:
            made = reply(rng, case.target, arm)
            replies.append(made if isinstance(made, dict) else {"text": made})
        arms.append(run_arm(suite, cases, replies, rng, f"model-{arm}", stream))
    return suite, arms[0], arms[1]


def pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


# ---------------------------------------------------------------------------- generic and mean scorers

CITIES = ["Paris", "Rome", "Berlin", "Madrid"]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scorer", ["exact_match", "contains", "paired_stats_overlap"])
def test_mean_scorers_and_generic_metrics(tmp_path: Path, scorer: str, seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    targets = [pick(rng, CITIES) for _ in range(N)]

    def reply(rng: np.random.Generator, target: Any, arm: int) -> str:
        right = rng.random() < (0.5 if arm == 0 else 0.7)
        return f"{target}." if right else pick(rng, [*CITIES, "I think Lisbon", ""])

    suite, ref, cand = scenario(tmp_path, "mean", targets, reply, seed, stream=seed == 1, scorer=scorer)
    stats = check_contract(suite, ref, cand, seed=seed)
    main = "paired_stats_overlap" if scorer == "paired_stats_overlap" else "accuracy"
    generic = {"score", "pass_rate", "error_rate", "truncated_rate", "output_tokens_mean",
               "latency_p50_ms", "latency_p90_ms", "latency_p99_ms", main}
    assert generic <= set(stats)
    streamed = {f"{s}_p{q}_ms" for s in ("ttft", "tpot") for q in (50, 90, 99)}
    assert streamed & set(stats) == (streamed if seed == 1 else set())
    assert all(isinstance(stats[f"latency_p{q}_ms"][0], QuantileStatistic) for q in (50, 90, 99))
    assert not set(stats) & NOT_COMPARED


def test_regex_and_record_only_suite_has_no_pass_rate(tmp_path: Path) -> None:
    targets = ["[0-9]+", "pa.*", "[a-z]+"] * 10

    def reply(rng: np.random.Generator, target: Any, arm: int) -> str:
        return pick(rng, ["123", "paris", "hello", "12ab", "Pa"])

    suite, ref, cand = scenario(tmp_path, "rx", targets, reply, 7, scorer="regex", **{"pass": "record"})
    stats = check_contract(suite, ref, cand)
    assert "accuracy" in stats and "pass_rate" not in stats


def test_latency_leaves_out_errors_and_cache_hits(tmp_path: Path) -> None:
    suite, cases = make_suite(tmp_path, "lat", ["a", "b", "c", "d"])
    replies = [{"text": "a", "latency_ms": 10.0}, {"text": "x", "latency_ms": 20.0},
               {"text": "c", "latency_ms": 999.0, "cached": True}, {"error": "boom", "latency_ms": 500.0}]
    arm = [score_reply(suite, c, "m", c.id, "cases.jsonl", r) for c, r in zip(cases, replies)]
    stats = paired_statistics(suite, arm, arm)
    assert point(stats["latency_p50_ms"][0]) == 15.0
    assert point(stats["latency_p99_ms"][0]) == pytest.approx(19.9)
    assert point(stats["error_rate"][1]) == 0.25 and point(stats["accuracy"][1]) == 0.5


def test_unknown_scorer_and_own_aggregate_keep_generic_metrics_only(tmp_path: Path) -> None:
    def reply(rng: np.random.Generator, target: Any, arm: int) -> str:
        return pick(rng, CITIES)

    targets = CITIES * 5
    suite, ref, cand = scenario(tmp_path, "own", targets, reply, 3, scorer="paired_stats_own_aggregate")
    stats = check_contract(suite, ref, cand, uncovered=frozenset({"mystery"}))
    assert "mystery" not in stats and "score" in stats and "accuracy" not in stats
    suite, ref, cand = scenario(tmp_path, "nope", targets, reply, 3, scorer="paired_stats_no_such_scorer")
    stats = check_contract(suite, ref, cand)
    assert "paired_stats_no_such_scorer" in stats


# ---------------------------------------------------------------------------- json_valid

PEOPLE = [{"name": n, "age": a} for n in ("ann", "bob", "cy") for a in (3, 40)]


def _json_reply(rng: np.random.Generator, target: Any, arm: int) -> str:
    u = rng.random()
    if u < 0.15:
        return "not json at all"
    if u < 0.25:
        return "[1, 2]"
    value = dict(target)
    if rng.random() < 0.3:
        value.pop(pick(rng, ["name", "age"]))
    if rng.random() < 0.3:
        value["age"] = pick(rng, [str(target["age"]), "old", 7])
    return "Here: " + json.dumps(value)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("schema", [False, True])
@pytest.mark.parametrize("compare", [False, True])
def test_json_valid(tmp_path: Path, schema: bool, compare: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = [pick(rng, PEOPLE) for _ in range(N)]
    options: dict[str, Any] = {"name": "json_valid", "required_keys": ["name", "age"], "compare_target": compare}
    if schema:
        options["schema"] = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["name"]}
    suite, ref, cand = scenario(tmp_path, "js", targets, _json_reply, seed, scorer=options, extract=["json"])
    stats = check_contract(suite, ref, cand, seed=seed)
    names = {"json_ok", "keys_ok"} | ({"schema_ok"} if schema else set()) | ({"field_accuracy", "exact"}
                                                                             if compare else set())
    assert names <= set(stats)
    assert ("schema_ok" in stats) == schema and ("field_accuracy" in stats) == compare
    assert {"json_ok", "keys_ok"} <= binary_metrics(case_values(suite, ref), case_values(suite, cand))


# ---------------------------------------------------------------------------- classification

LABELS = ["pos", "neg", "neutral"]


def _label_reply(rng: np.random.Generator, target: Any, arm: int) -> str:
    if rng.random() < 0.55:
        return str(target).upper() if rng.random() < 0.3 else str(target)
    # only the candidate ever predicts "mixed": the arms' class sets differ
    return pick(rng, [*LABELS, "other"] + (["mixed", "mixed"] if arm == 1 else []))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("labels", [None, LABELS])
@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_classification(tmp_path: Path, average: str, labels: list[str] | None, seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    # "other" is a target outside the labels option too: right when predicted, yet no class's hit
    targets = [pick(rng, [*LABELS] * 5 + ["other"]) for _ in range(N)]
    options: dict[str, Any] = {"name": "classification_f1", "average": average}
    if labels is not None:
        options["labels"] = labels
    suite, ref, cand = scenario(tmp_path, "cls", targets, _label_reply, seed, scorer=options)
    stats = check_contract(suite, ref, cand, resamples=3, seed=seed)
    for stat in ("precision", "recall", "f1"):
        assert point(stats[stat][1]) == point(stats[f"{stat}_{average}"][1])
    classes = {name.split(".", 1)[1] for name in stats if name.startswith("class_f1.")}
    ref_preds = {r.data.get("pred") for r in ref}
    cand_preds = {r.data.get("pred") for r in cand}
    assert "mixed" in cand_preds and "mixed" not in ref_preds  # the seeds give the case we test
    if labels is None:
        assert classes == {*LABELS, "other", "mixed"}  # the union over both arms
        assert np.isnan(point(stats["class_f1.mixed"][0])) and not np.isnan(point(stats["class_f1.mixed"][1]))
    else:
        assert classes == set(LABELS)
    assert "accuracy" in binary_metrics(case_values(suite, ref), case_values(suite, cand))


def test_classification_same_classes_on_both_arms(tmp_path: Path) -> None:
    targets = LABELS * 12

    def reply(rng: np.random.Generator, target: Any, arm: int) -> str:
        return pick(rng, LABELS)

    suite, ref, cand = scenario(tmp_path, "cls2", targets, reply, 11, scorer="classification_f1")
    stats = check_contract(suite, ref, cand, resamples=3)
    for arm, results in enumerate((ref, cand)):
        metrics = suite_metrics(suite, results)[1]
        class_names = {k for k in metrics if k.startswith("class_") and not k.endswith((".lower", ".upper"))}
        assert class_names == {k for k in stats if k.startswith("class_")}
        for name in class_names:
            assert point(stats[name][arm]) == pytest.approx(metrics[name], abs=1e-9)


def test_classification_columns_are_few_distinct_rows(tmp_path: Path) -> None:
    def reply(rng: np.random.Generator, target: Any, arm: int) -> str:
        return pick(rng, LABELS)

    suite, ref, cand = scenario(tmp_path, "cls3", LABELS * 30, reply, 5, scorer="classification_f1")
    columns = paired_statistics(suite, ref, cand)["f1"][0].columns
    # one row kind per (target, prediction) cell: at most 3 targets x (3 labels + no prediction)
    assert len(np.unique(columns, axis=0)) <= 12 and set(np.unique(columns)) <= {0.0, 1.0}


# ---------------------------------------------------------------------------- tool calls

CALLS = [{"toolName": "search", "paramList": {"city": "Paris"}},
         {"toolName": "search", "paramList": {"city": "Rome", "days": [2, 1]}},
         {"toolName": "book", "paramList": {"date": "mon"}},
         {"toolName": "cancel", "paramList": {}},
         {"toolName": "truckCheck", "paramList": {"truckType": "车长", "value": 17.5}}]


def _tool_target(rng: np.random.Generator) -> list[dict[str, Any]]:
    return [pick(rng, CALLS) for _ in range(int(rng.choice([0, 1, 1, 2, 3])))]


def _tool_reply(rng: np.random.Generator, target: Any, arm: int) -> Any:
    calls = [dict(c, paramList=dict(c["paramList"])) for c in target]
    u = rng.random()
    if u < 0.1:
        return "no calls here ["  # extraction fails
    if u < 0.3 and calls:
        calls.pop(int(rng.integers(len(calls))))
    elif u < 0.45:
        calls.append(pick(rng, CALLS))
    elif u < 0.6 and calls:
        calls[0]["paramList"]["city"] = pick(rng, ["Paris", "Oslo"])
    rng.shuffle(calls)
    if rng.random() < 0.3:  # an OpenAI tool-call reply instead of JSON text
        return {"text": "", "tool_calls": [{"type": "function", "function": {
            "name": c["toolName"], "arguments": json.dumps(c["paramList"])}} for c in calls]}
    return json.dumps(calls, ensure_ascii=False)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("negative", [False, True])
def test_tool_calls(tmp_path: Path, negative: bool, seed: int) -> None:
    rng = np.random.default_rng(300 + seed)
    targets = [_tool_target(rng) for _ in range(N)]
    scorer = {"name": "tool_calls", "negative": negative}
    suite, ref, cand = scenario(tmp_path, "tools", targets, _tool_reply, seed, scorer=scorer, extract=["json"])
    stats = check_contract(suite, ref, cand, resamples=3, seed=seed)
    names = {f"{p}_{s}_{a}" for p in ("tool", "param") for s in ("precision", "recall", "f1") for a in ("micro", "macro")}
    assert names | {"strict_match", "strict_match_single", "strict_match_multi", "f1"} <= set(stats)
    values = case_values(suite, ref)
    assert np.isnan(values["strict_match"]).any()  # empty labels are in no strict rate
    assert {"strict_match", "strict_match_single", "strict_match_multi"} <= binary_metrics(values)


# ---------------------------------------------------------------------------- checklist family

POINTS = ["gravity", ["mass", "weight"], "acceleration", "加速度"]


def _checklist_text(rng: np.random.Generator, arm: int) -> str:
    u = rng.random()
    if u < 0.1:
        return ""
    if u < 0.3:
        return pick(rng, ["I cannot help with that.", "抱歉，我无法回答。"])
    words = [p if isinstance(p, str) else pick(rng, p) for p in POINTS if rng.random() < 0.6]
    heading = pick(rng, ["# Diagnosis\n", "**Diagnosis**: ok\n", ""]) + pick(rng, ["## Advice\n", ""])
    return heading + "It is about " + ", ".join(words) + "."


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scorer", ["key_points", "format_compliance", "refusal", "checklist"])
def test_checklist_scorers(tmp_path: Path, scorer: str, seed: int) -> None:
    rng = np.random.default_rng(400 + seed)

    def target() -> Any:
        points = [p for p in POINTS if rng.random() < 0.7] or [POINTS[0]]
        if scorer == "key_points":
            return points
        if scorer == "format_compliance":
            return {"sections": ["Diagnosis", "Advice"]} if rng.random() < 0.5 else ["Diagnosis"]
        if scorer == "refusal":
            return pick(rng, [True, False, "refuse", "answer", {"should_refuse": False}])
        choice = int(rng.integers(5))
        return [{"key_points": points}, {"key_points": points, "should_refuse": False}, {"should_refuse": True},
                {"sections": ["Advice"]}, {"bogus": 1}][choice]  # bogus: the scorer errs, the aggregate skips it

    targets = [target() for _ in range(N)]
    options: dict[str, Any] = {"name": scorer}
    if scorer in ("format_compliance", "checklist"):
        options["sections"] = ["Diagnosis"]

    suite, ref, cand = scenario(tmp_path, scorer, targets, lambda rng, t, arm: _checklist_text(rng, arm), seed,
                                scorer=options, **{"pass": "score >= 0.5"})
    stats = check_contract(suite, ref, cand, resamples=3, seed=seed)
    main = {"key_points": "key_point_coverage", "format_compliance": "format_compliance",
            "refusal": "refusal_accuracy", "checklist": "key_point_coverage"}[scorer]
    assert main in stats
    binary = binary_metrics(case_values(suite, ref))
    if scorer in ("key_points", "checklist"):
        assert "key_points_full" in binary
    if scorer in ("refusal", "checklist"):
        assert {"refusal_rate", "false_refusal_rate", "missed_refusal_rate"} <= set(stats)


def test_key_point_coverage_is_not_binary(tmp_path: Path) -> None:
    suite, cases = make_suite(tmp_path, "kp", [["gravity", "mass"]] * 3, scorer="key_points")
    replies = [{"text": "gravity"}, {"text": "gravity and mass"}, {"text": "nothing"}]
    arm = [score_reply(suite, c, "m", c.id, "cases.jsonl", r) for c, r in zip(cases, replies)]
    values = case_values(suite, arm)
    assert list(values["key_point_coverage"]) == [0.5, 1.0, 0.0]
    binary = binary_metrics(values)
    assert "key_point_coverage" not in binary and "score" not in binary and "key_points_full" in binary


# ---------------------------------------------------------------------------- toxicity

@pytest.mark.parametrize("seed", SEEDS)
def test_toxicity_wordlist(tmp_path: Path, seed: int) -> None:
    scorer = {"name": "toxicity", "classifier": "wordlist", "classifier_options": {"terms": ["idiot", "笨蛋"]}}

    def reply(rng: np.random.Generator, target: Any, arm: int) -> str:
        return pick(rng, ["you idiot", "hello there", "你这个笨蛋", "idiotic plan", "fine", ""])

    suite, ref, cand = scenario(tmp_path, "tox", [None] * N, reply, seed, scorer=scorer, **{"pass": "record"})
    # an error recorded after judging (a hook, a saved baseline) leaves the case out despite its verdict
    judged = next(i for i, r in enumerate(ref) if r.error is None and r.data["toxic"])
    ref[judged] = dataclasses.replace(ref[judged], error="late error")
    stats = check_contract(suite, ref, cand, resamples=3, seed=seed)
    assert {"toxic_ratio", "toxicity_mean", "toxicity_max"} <= set(stats)
    assert "total_samples" not in stats
    values = case_values(suite, ref)
    errored = np.array([r.error is not None for r in ref])
    assert errored.any() and np.isnan(values["toxic_ratio"][errored]).all()


# ---------------------------------------------------------------------------- pairing and helpers

def test_arms_must_pair_case_by_case(tmp_path: Path) -> None:
    suite, ref, cand = scenario(tmp_path, "pair", CITIES * 3, lambda rng, t, arm: t, 0)
    with pytest.raises(ValueError, match="length"):
        paired_statistics(suite, ref, cand[:-1])
    with pytest.raises(ValueError, match="c0"):
        paired_statistics(suite, ref, cand[::-1])


@pytest.mark.parametrize(("scorer", "target"), [
    ("exact_match", "x"), ("classification_f1", "x"), ("tool_calls", []), ("checklist", {"key_points": ["x"]}),
    ({"name": "json_valid", "compare_target": True}, {}), ("refusal", True),
    ({"name": "toxicity", "classifier": "wordlist", "classifier_options": {"terms": ["x"]}}, None)])
def test_empty_arms_have_no_values(tmp_path: Path, scorer: Any, target: Any) -> None:
    suite, _ = make_suite(tmp_path, "empty", [target], scorer=scorer)
    stats = paired_statistics(suite, [], [])
    assert {"score", "error_rate", "latency_p50_ms"} <= set(stats) and len(stats) > 6
    assert all(np.isnan(point(ref)) and np.isnan(point(cand)) for ref, cand in stats.values())
    assert all(value is None for name, value in suite_metrics(suite, [])[1].items() if name in stats)


def test_binary_metrics_needs_every_arm_binary() -> None:
    nan = float("nan")
    ref = {"a": np.array([0.0, 1.0, nan]), "b": np.array([0.0, 0.5]), "c": np.array([nan, nan]),
           "d": np.array([1.0, 1.0])}
    cand = {"a": np.array([1.0, 1.0, 0.0]), "b": np.array([1.0, 0.0]), "c": np.array([nan, 1.0]),
            "d": np.array([2.0, 1.0])}
    assert binary_metrics(ref) == {"a", "d"}
    assert binary_metrics(ref, cand) == {"a"}
    assert binary_metrics() == set()
