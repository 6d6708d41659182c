"""Unit tests of the pure parts: gates, extraction, metrics, scorers, prompts, suite files.

No server, no model: every test here is a pure function over values or small temp files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.gates import OPS, Gate, evaluate_gate, parse_gate, unjudged_gate
from harness.prompts import CHAT_TEMPLATES, render, render_messages
from harness.results import CaseResult
from harness.scoring.extract import (
    ExtractionError,
    build_step,
    first_json_object,
    first_line,
    json_block,
    last_paragraph,
    parse_json,
    regex,
    run_pipeline,
    strip_think,
    validate_steps,
)
from harness.scoring.metrics import classification_metrics, percentile
from harness.scoring.stats import wilson
from harness.scoring.scorers import Score, Scorer, as_score, get_scorer, known_scorers, normalize, scorer
from harness.suite import LINE_ID, Case, SuiteError, file_digest, load_cases, load_suite

FAST = settings(max_examples=150, deadline=None)


# --------------------------------------------------------------------------------------
# gates
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "metric", "op", "threshold"),
    [
        ("f1 >= 0.75", "f1", ">=", 0.75),
        ("latency_p99_ms<=300", "latency_p99_ms", "<=", 300.0),
        ("error_rate == 0", "error_rate", "==", 0.0),
        ("class_f1.positive > .5", "class_f1.positive", ">", 0.5),
        ("x != 1e-3", "x", "!=", 0.001),
        ("  accuracy < -2.5E+1  ", "accuracy", "<", -25.0),
        ("class_f1.正面 >= 1.", "class_f1.正面", ">=", 1.0),
    ],
)
def test_parse_gate_accepts(expr: str, metric: str, op: str, threshold: float) -> None:
    gate = parse_gate(expr)
    assert gate == Gate(expr.strip(), metric, op, threshold)
    assert isinstance(gate.threshold, float)


@pytest.mark.parametrize("expr", ["f1 >=", "f1 => 0.7", "0.7 <= f1", "import os", "", "f1 >= 0.7 and x < 1",
                                  "f1 >= nan", "f1 = 0.7", "f1 >= 0.7abc", "1f >= 0.7"])
def test_parse_gate_rejects_with_a_message_saying_what_is_expected(expr: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_gate(expr)
    message = str(info.value)
    assert repr(expr) in message
    assert "expected '<metric> <op> <number>'" in message
    for op in OPS:
        assert op in message


@FAST
@given(
    metric=st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,12}", fullmatch=True),
    op=st.sampled_from(sorted(OPS)),
    number=st.floats(allow_nan=False, allow_infinity=False),
    spaces=st.sampled_from(["", " ", "  "]),
)
def test_parse_gate_round_trips_any_metric_op_and_number(metric: str, op: str, number: float, spaces: str) -> None:
    gate = parse_gate(f"{metric}{spaces}{op}{spaces}{number!r}")
    assert (gate.metric, gate.op, gate.threshold) == (metric, op, number)


@pytest.mark.parametrize(
    ("op", "value", "holds"),
    [(">=", 0.75, True), (">=", 0.7499, False), (">", 0.75, False), ("<=", 0.75, True), ("<", 0.75, False),
     ("==", 0.75, True), ("!=", 0.75, False), ("!=", 0.5, True)],
)
def test_gate_holds_uses_its_operator(op: str, value: float, holds: bool) -> None:
    assert parse_gate(f"m {op} 0.75").holds(value) is holds


def test_judge_passed_records_value_and_threshold() -> None:
    result = evaluate_gate(parse_gate("f1 >= 0.75"), {"f1": 0.8, "accuracy": 0.9})
    assert result.status == "passed"
    assert result.passed is True
    assert (result.expr, result.metric, result.op, result.threshold, result.value) == ("f1 >= 0.75", "f1", ">=", 0.75, 0.8)
    assert result.reason == "f1 = 0.8 >= 0.75"


def test_judge_failed_says_what_was_needed() -> None:
    result = evaluate_gate(parse_gate("latency_p99_ms <= 300"), {"latency_p99_ms": 412.5})
    assert result.status == "failed"
    assert result.passed is False
    assert result.value == 412.5
    assert result.threshold == 300.0
    assert result.reason == "latency_p99_ms = 412.5, needs <= 300"


def test_judge_unknown_metric_fails_and_lists_the_known_metrics() -> None:
    result = evaluate_gate(parse_gate("f1 >= 0.5"), {"accuracy": 1.0, "error_rate": 0.0})
    assert result.status == "failed"
    assert result.value is None
    assert "unknown metric 'f1'" in result.reason
    assert "accuracy, error_rate" in result.reason


@pytest.mark.parametrize("value", [None, float("nan")])
def test_judge_metric_without_value_fails(value: float | None) -> None:
    result = evaluate_gate(parse_gate("f1 >= 0.5"), {"f1": value})
    assert result.status == "failed"
    assert "no value" in result.reason


def test_an_unjudged_gate_is_skipped_with_its_reason_and_value() -> None:
    result = unjudged_gate(parse_gate("f1 >= 0.75"), 0.1, "only 3 of 40 cases ran (-k)")
    assert result.status == "skipped"
    assert result.passed is None
    assert result.reason == "only 3 of 40 cases ran (-k)"
    assert result.value == 0.1


def test_judge_equality_gate_on_zero() -> None:
    assert evaluate_gate(parse_gate("error_rate == 0"), {"error_rate": 0.0}).status == "passed"
    assert evaluate_gate(parse_gate("error_rate == 0"), {"error_rate": 0.05}).status == "failed"


# --------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------


def test_strip_think_drops_up_to_the_last_close_tag() -> None:
    assert strip_think("<think>a</think>b</think> answer") == " answer"
    assert strip_think("no reasoning here") == "no reasoning here"
    assert strip_think("<think>unfinished") == "<think>unfinished"


def test_json_block_takes_the_last_json_fence() -> None:
    text = 'first ```json\n{"a": 1}\n``` then ```python\nx=1\n``` and ```JSON\n  {"b": 2}\n```'
    assert json_block(text) == '{"b": 2}'
    assert json_block("plain text {}") == "plain text {}"


def test_last_paragraph_and_first_line() -> None:
    assert last_paragraph("one\ntwo\n\n  three  \n \n\n") == "three"
    assert last_paragraph("only\nparagraph") == "only\nparagraph"
    assert first_line("\n   \n  yes, it is  \nno") == "yes, it is"
    for step in (last_paragraph, first_line):
        with pytest.raises(ExtractionError):
            step(" \n\t\n ")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('pre {"a": {"b": {"c": 1}}} mid {"d": 2}', '{"a": {"b": {"c": 1}}}'),
        ('x {"s": "}{ }", "t": 1} y', '{"s": "}{ }", "t": 1}'),
        (r'{"s": "say \"}\" now", "n": 2} tail', r'{"s": "say \"}\" now", "n": 2}'),
        (r'{"s": "back\\"} rest', r'{"s": "back\\"}'),
        ('{ never closed {"ok": true}', '{"ok": true}'),
    ],
)
def test_first_json_object(text: str, expected: str) -> None:
    assert first_json_object(text) == expected
    json.loads(expected)


@pytest.mark.parametrize("text", ["", "no braces", "{ open", '{"s": "}"'])
def test_first_json_object_without_one_raises(text: str) -> None:
    with pytest.raises(ExtractionError):
        first_json_object(text)


def test_parse_json_fallbacks() -> None:
    assert parse_json('```json\n{"a": 1}\n```\n```json\n{"a": 2}\n```') == {"a": 2}
    assert parse_json(' [1, 2, "x"] ') == [1, 2, "x"]
    assert parse_json('Sure! Here it is: {"name": "Tom", "n": {"k": []}}. Anything else?') == {
        "name": "Tom", "n": {"k": []}}
    already = {"a": 1}
    assert parse_json(already) is already


@pytest.mark.parametrize("text", ["not json at all", "{bad json}", "```json\nnope\n```", ""])
def test_parse_json_failure_is_an_extraction_error(text: str) -> None:
    with pytest.raises(ExtractionError):
        parse_json(text)


def test_regex_step_group_no_group_flags_and_last_match() -> None:
    text = "Answer: foo\nthinking...\nANSWER: bar\n"
    assert regex(r"answer:\s*(\w+)", flags="i")(text) == "bar"
    with pytest.raises(ExtractionError):
        regex(r"answer:\s*(\w+)")(text)  # case-sensitive: "Answer"/"ANSWER" do not match
    assert regex(r"\d+")("a1 b22 c333x") == "333"
    assert regex(r"(\w+)=(\d+)", group=2)("a=1 b=2") == "2"
    assert regex(r"(?P<key>\w+)=(?P<val>\d+)", group="key")("a=1 b=2") == "b"
    assert regex(r"^x (\w+)$", flags="m")("x one\nx two\ny") == "two"
    assert regex(r"<a>(.*)</a>", flags="s")("<a>1\n2</a>") == "1\n2"
    with pytest.raises(ExtractionError, match="did not match"):
        regex(r"\d+")("no digits")


def test_regex_unknown_flag() -> None:
    with pytest.raises(ValueError, match="unknown regex flag 'x'"):
        regex("a", flags="ix")


def test_run_pipeline_chains_steps() -> None:
    output = '<think>maybe {"a": 0}</think>Here:\n```json\n{"a": 1, "b": [1, 2]}\n```'
    assert run_pipeline(("strip_think", "json_block", "json"), output) == {"a": 1, "b": [1, 2]}
    assert run_pipeline(("strip_think", "last_paragraph", {"regex": r"label:\s*(\w+)", "flags": "i"}),
                        "<think>label: no</think>Some text.\n\nLabel: positive\n") == "positive"
    assert run_pipeline((), " untouched ") == " untouched "
    assert run_pipeline(("strip", "first_line"), "\n  a \n b") == "a"


def test_run_pipeline_text_step_after_json_is_an_extraction_error() -> None:
    with pytest.raises(ExtractionError, match="needs text, got dict"):
        run_pipeline(("json", "first_line"), '{"a": 1}')


def test_run_pipeline_failures_are_extraction_errors() -> None:
    with pytest.raises(ExtractionError):
        run_pipeline(("strip_think", "json"), "<think>{}</think> sorry, no JSON")
    with pytest.raises(ExtractionError):
        run_pipeline(({"regex": r"ANSWER: (\d+)"},), "ANSWER: none")


def test_regex_group_that_did_not_take_part_is_an_extraction_error() -> None:
    # `(yes)|no` matching "no" leaves group 1 empty: no prediction, not a None prediction
    with pytest.raises(ExtractionError):
        run_pipeline(({"regex": "(yes)|no"},), "no")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown extraction step 'nope'; known: strip_think, json_block, last_paragraph, first_line, "
                 "strip, first_json_object, json, normalize, number, regex, first_of"),
        ({"first_of": []}, "first_of needs a non-empty list"),
        ({"first_of": ["json", ["strip", "nope"]]}, "unknown extraction step 'nope'"),
        ({"first_of": ["json"], "x": 1}, "first_of takes no options"),
        ({"regex": "(unclosed"}, "bad regex '(unclosed'"),
        ({"regex": "a", "grp": 1}, "unknown regex option 'grp'"),
        ({"regex": "a", "flags": "q"}, "unknown regex flag 'q'"),
        ({"regex": "(a)", "group": 2}, "group"),
        ({"regex": "(?P<x>a)", "group": "y"}, "group"),
        (5, "bad extraction step 5"),
        ({"pattern": "a"}, "bad extraction step"),
    ],
)
def test_build_step_errors(spec: Any, message: str) -> None:
    with pytest.raises(ValueError) as info:
        build_step(spec)
    assert message in str(info.value)
    with pytest.raises(ValueError):
        validate_steps(["strip", spec])


_STEPS = st.sampled_from(
    ["strip_think", "json_block", "last_paragraph", "first_line", "strip", "first_json_object", "json",
     {"regex": r"(\d+)"}, {"regex": r"[a-z]+", "flags": "i"}, {"regex": r"(yes)|(no)", "group": 2},
     {"regex": r"(?P<v>\w+)=", "group": "v"}]
)
_TOKENS = list('{}[]":,\\ \n\tab01=<>/`') + ["yes", "no", "</think>", "```json\n", "```", "\n\n", "{}", '"}"']
_TEXT = st.lists(st.sampled_from(_TOKENS), max_size=30).map("".join)


@FAST
@given(specs=st.lists(_STEPS, max_size=4).map(tuple), text=_TEXT)
def test_run_pipeline_raises_only_extraction_error_on_text(specs: tuple[Any, ...], text: str) -> None:
    try:
        run_pipeline(specs, text)
    except ExtractionError:
        pass


@FAST
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                    max_leaves=10),
       st.text(alphabet="abc xyz.\n", max_size=20), st.text(alphabet="abc xyz.\n", max_size=20))
def test_first_json_object_finds_an_embedded_object(value: Any, before: str, after: str) -> None:
    obj = {"v": value}
    encoded = json.dumps(obj)
    assert parse_json(before + encoded + after) == obj
    assert first_json_object(before + encoded + after) == encoded


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------


def test_percentile_by_hand() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 99) == 7.0
    assert percentile([4, 1, 3, 2], 50) == 2.5
    assert percentile([10, 20, 30, 40, 50], 90) == pytest.approx(46.0)
    assert percentile([10, 20, 30, 40, 50], 0) == 10
    assert percentile([10, 20, 30, 40, 50], 100) == 50


@FAST
@given(values=st.lists(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), min_size=1, max_size=40),
       q=st.floats(min_value=0, max_value=100))
def test_percentile_equals_numpy_linear(values: list[float], q: float) -> None:
    expected = float(numpy.percentile(numpy.array(values), q, method="linear"))
    assert percentile(values, q) == pytest.approx(expected, rel=1e-9, abs=1e-6)


WORKED_PAIRS = [
    ("a", "a"), ("a", "a"), ("a", "b"),
    ("b", "b"), ("b", "c"), ("b", "zzz"),
    ("c", "c"), ("c", None),
]


def test_classification_metrics_worked_example() -> None:
    # tp a=2 b=1 c=1; fp a=0 b=1 c=1 ("zzz" and None are no class); fn a=1 b=2 c=1
    # precision a=1 b=1/2 c=1/2; recall a=2/3 b=1/3 c=1/2; F1 a=4/5 b=2/5 c=1/2
    m = classification_metrics(WORKED_PAIRS, ["a", "b", "c"])
    expected = {
        "accuracy": 4 / 8,
        "precision_macro": (1 + 1 / 2 + 1 / 2) / 3,
        "recall_macro": (2 / 3 + 1 / 3 + 1 / 2) / 3,
        "f1_macro": (4 / 5 + 2 / 5 + 1 / 2) / 3,
        "precision_micro": 4 / 6,
        "recall_micro": 4 / 8,
        "f1_micro": 4 / 7,
        "class_f1.a": 4 / 5,
        "class_f1.b": 2 / 5,
        "class_f1.c": 1 / 2,
    }
    assert set(expected) <= set(m)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value), key
    # weighted by support (a=3, b=3, c=2): F1 (4/5*3 + 2/5*3 + 1/2*2) / 8
    assert m["f1_weighted"] == pytest.approx((4 / 5 * 3 + 2 / 5 * 3 + 1 / 2 * 2) / 8)


def test_classification_metrics_classes_are_targets_and_predictions_when_none_given() -> None:
    # scikit-learn's rule: an out-of-set prediction ("zzz") is a class of its own (F1 0); None is no class
    m = classification_metrics(WORKED_PAIRS)
    assert "class_f1.zzz" in m and m["class_f1.zzz"] == 0.0
    assert m["f1_macro"] == pytest.approx((4 / 5 + 2 / 5 + 1 / 2 + 0) / 4)


def test_classification_out_of_label_prediction_is_a_miss_only() -> None:
    for bad in (None, "maybe"):
        m = classification_metrics([("pos", "pos"), ("neg", bad)], ["pos", "neg"])
        assert m["class_f1.pos"] == 1.0  # no false positive for pos
        assert m["precision_micro"] == 1.0
        assert m["recall_micro"] == 0.5
        assert m["class_f1.neg"] == 0.0
        assert m["accuracy"] == 0.5


def test_classification_metrics_empty_input() -> None:
    m = classification_metrics([], ["a", "b"])
    assert m["accuracy"] is None
    assert m["f1_macro"] is None and m["f1_micro"] is None
    assert all(v is None for v in m.values())


@FAST
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from("abcd")), min_size=1, max_size=40))
def test_micro_f1_equals_accuracy_when_predictions_are_labels(pairs: list[tuple[str, str]]) -> None:
    m = classification_metrics(pairs, list("abcd"))
    assert m["f1_micro"] == pytest.approx(m["accuracy"])
    assert m["precision_micro"] == pytest.approx(m["accuracy"])
    assert m["recall_micro"] == pytest.approx(m["accuracy"])
    assert all(0.0 <= v <= 1.0 for v in m.values())


@FAST
@given(st.lists(st.tuples(st.sampled_from("abc"), st.sampled_from(["a", "b", "c", "x", None])), min_size=1,
                max_size=40))
def test_micro_precision_is_never_below_micro_recall_with_out_of_label_predictions(
        pairs: list[tuple[str, str | None]]) -> None:
    m = classification_metrics(pairs, list("abc"))
    misses = sum(p not in ("a", "b", "c") for _, p in pairs)
    assert m["recall_micro"] == pytest.approx(m["accuracy"])
    if misses:
        assert m["precision_micro"] >= m["recall_micro"]


# --------------------------------------------------------------------------------------
# scorers
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ＡＢＣ　１２３", "abc 123"),  # full-width letters, digits and space
        ("  Hello \t\n World  ", "hello world"),
        ("Paris.", "paris"),
        ('"Paris!"', "paris"),
        ("（北京）。", "北京"),
        ("《三体》", "三体"),
        ("“你好”！", "你好"),
        ("答案：是，", "答案:是"),  # NFKC turns the full-width colon into ":"
        ("ＯＫ！", "ok"),
        (42, "42"),
        ("3.14", "3.14"),  # punctuation inside an answer is kept
        ("Hello, World!", "hello, world"),
    ],
)
def test_normalize(text: Any, expected: str) -> None:
    assert normalize(text) == expected


def test_normalize_case_sensitive_keeps_case() -> None:
    assert normalize(" Paris. ", case_sensitive=True) == "Paris"
    assert normalize("STRASSE") == normalize("straße")  # casefold, not lower


def test_normalize_does_not_merge_different_numbers() -> None:
    assert normalize("3.14") != normalize("3,14")
    assert normalize("-5") != normalize("5")
    assert normalize(".5") != normalize("5")
    assert [normalize(x) for x in ("-5.", "(-.5)", "+5", "(5)", "$5")] == ["-5", "-.5", "+5", "5", "5"]


def _case() -> Any:
    return None


def test_exact_match() -> None:
    em = get_scorer("exact_match")
    assert em.score("  paris. ", "Paris", _case()).value == 1.0
    assert em.score("Ｐａｒｉｓ", "paris", _case()).value == 1.0
    assert em.score("Lyon", ["Paris", "Lyon"], _case()).value == 1.0
    miss = em.score("Rome", ["Paris", "Lyon"], _case())
    assert miss.value == 0.0
    assert miss.reason == "'Rome' != ['Paris', 'Lyon']"
    assert get_scorer("exact_match", {"case_sensitive": True}).score("paris", "Paris", _case()).value == 0.0
    raw = get_scorer("exact_match", {"normalize": False})
    assert raw.score("Paris ", "Paris", _case()).value == 0.0
    assert raw.score(1, "1", _case()).value == 1.0


def test_contains() -> None:
    c = get_scorer("contains")
    assert c.score("The capital is PARIS.", "paris", _case()).value == 1.0
    assert c.score("It is Lyon", ["Paris", "lyon"], _case()).value == 1.0
    miss = c.score("Rome", "Paris", _case())
    assert miss.value == 0.0 and "not in output" in miss.reason
    assert get_scorer("contains", {"case_sensitive": True}).score("PARIS", "paris", _case()).value == 0.0


def test_regex_scorer() -> None:
    r = get_scorer("regex")
    assert r.score(" 42 ", r"\d+", _case()).value == 1.0
    assert r.score("answer 42", r"\d+", _case()).value == 0.0  # fullmatch by default
    assert get_scorer("regex", {"fullmatch": False}).score("answer 42", r"\d+", _case()).value == 1.0
    assert r.score("YES", "yes", _case()).value == 1.0
    assert get_scorer("regex", {"ignore_case": False}).score("YES", "yes", _case()).value == 0.0
    pattern = get_scorer("regex", {"pattern": r"[A-D]"})
    assert pattern.score("c", "ignored target", _case()).value == 1.0
    assert pattern.score("E", "E", _case()).reason == "does not match /[A-D]/"


def test_json_valid_basic() -> None:
    jv = get_scorer("json_valid", {"required_keys": ["name", "city"]})
    ok = jv.score('{"name": "Tom", "city": "Boston"}', None, _case())
    assert (ok.value, ok.reason, ok.data) == (1.0, None, {"json_ok": True, "keys_ok": True})
    assert jv.score({"name": "Tom", "city": "X"}, None, _case()).value == 1.0
    missing = jv.score('{"name": "Tom"}', None, _case())
    assert (missing.value, missing.reason, missing.data) == (0.0, "missing keys: city", {"json_ok": True,
                                                                                        "keys_ok": False})
    bad = jv.score("{nope", None, _case())
    assert bad.value == 0.0 and bad.reason.startswith("not JSON") and bad.data == {"json_ok": False}
    arr = jv.score("[1, 2]", None, _case())
    assert arr.value == 0.0 and arr.reason == "JSON list, not an object"


def test_json_valid_compare_target_share_and_aggregate() -> None:
    jv = get_scorer("json_valid", {"compare_target": True})
    target = {"name": "Tom", "city": "Boston", "age": 30}
    half = jv.score({"name": "tom", "city": "NYC", "age": "30"}, target, _case())
    assert half.value == pytest.approx(2 / 3)
    assert half.reason == "wrong fields: city"
    assert half.data["fields_share"] == pytest.approx(2 / 3)
    full = jv.score({"name": "Tom", "city": "Boston", "age": 30}, target, _case())
    assert full.value == 1.0 and full.reason is None
    none = jv.score({}, target, _case())
    assert none.value == 0.0 and none.reason == "wrong fields: name, city, age"

    results = [_result(score=s.value, data=s.data) for s in (half, full, none)]
    results.append(_result(score=0.0, data={"json_ok": False}))
    agg = jv.aggregate(results)
    points = {k: v for k, v in agg.items() if not k.endswith((".lower", ".upper"))}
    assert points == pytest.approx({"json_ok": 3 / 4, "keys_ok": 3 / 4, "field_accuracy": (2 / 3 + 1 + 0) / 4,
                                    "exact": 1 / 4})
    # proportions get Wilson intervals; field_accuracy (not 0/1 per case) a bootstrap one
    assert agg["json_ok.lower"] == pytest.approx(wilson(3, 4)[0])
    for name, value in points.items():
        assert agg[f"{name}.lower"] <= value <= agg[f"{name}.upper"]
    assert get_scorer("json_valid").aggregate([])["json_ok"] is None


def _result(score: float | None = None, data: dict[str, Any] | None = None, target: Any = None) -> CaseResult:
    return CaseResult(suite="s", id="1", model="m", nodeid="n", dataset="d.jsonl", line=1, prompt="p",
                      target=target, score=score, data=data or {})


def test_classification_f1_score_with_labels() -> None:
    cf = get_scorer("classification_f1", {"labels": ["Positive", "Negative"]})
    hit = cf.score(" POSITIVE. ", "positive", _case())
    assert (hit.value, hit.data) == (1.0, {"pred": "positive", "label": "positive"})
    wrong = cf.score("negative", "positive", _case())
    assert wrong.value == 0.0 and wrong.reason == "predicted 'negative', expected 'positive'"
    outside = cf.score("neutral", "positive", _case())
    assert outside.value == 0.0
    assert "not a known label" in outside.reason
    assert outside.data == {"pred": "neutral", "label": "positive"}


def test_classification_f1_aggregate_macro_and_micro() -> None:
    cases = [(t, p) for t, p in WORKED_PAIRS]

    def run(options: dict[str, Any]) -> dict[str, Any]:
        cf = get_scorer("classification_f1", options)
        results = []
        for target, pred in cases:
            if pred is None:  # an errored case: no prediction recorded
                results.append(_result(score=None, target=target))
            else:
                s = cf.score(pred, target, _case())
                results.append(_result(score=s.value, data=s.data, target=target))
        return cf.aggregate(results)

    macro = run({"labels": ["A", "B", "C"]})
    assert macro["f1"] == pytest.approx((4 / 5 + 2 / 5 + 1 / 2) / 3)
    assert macro["f1_micro"] == pytest.approx(4 / 7)
    assert macro["class_f1.a"] == pytest.approx(4 / 5)
    micro = run({"labels": ["A", "B", "C"], "average": "micro"})
    assert micro["f1"] == pytest.approx(4 / 7)
    assert micro["accuracy"] == pytest.approx(0.5)
    # no labels: scikit-learn's classes, targets and predictions ("zzz" is a class with F1 0)
    assert run({})["f1"] == pytest.approx((4 / 5 + 2 / 5 + 1 / 2 + 0) / 4)
    weighted = run({"labels": ["A", "B", "C"], "average": "weighted"})
    assert weighted["f1"] == pytest.approx((4 / 5 * 3 + 2 / 5 * 3 + 1 / 2 * 2) / 8)
    # every metric has its interval, and the point value lies inside it
    assert macro["f1.lower"] <= macro["f1"] <= macro["f1.upper"]
    assert macro["accuracy.lower"] <= 0.5 <= macro["accuracy.upper"]
    with pytest.raises(ValueError, match="average must be one of"):
        get_scorer("classification_f1", {"average": "samples"})


def test_scorer_decorator_registers_a_function_scorer() -> None:
    @scorer("units_starts_with")
    def starts_with(prediction: Any, target: Any, case: Any, min_len: int = 1, strict: bool = False) -> Any:
        if strict and len(str(prediction)) < min_len:
            return Score(0.0, "too short", {"len": len(str(prediction))})
        return str(prediction).startswith(str(target))

    assert starts_with("abc", "a", None) is True  # the function itself is returned
    assert "units_starts_with" in known_scorers()
    s = get_scorer("units_starts_with")
    assert s.opts == {"min_len": 1, "strict": False}
    assert s.main_metric == "units_starts_with"
    assert s.score("abc", "a", None) == Score(1.0)
    assert s.score("abc", "b", None) == Score(0.0)
    strict = get_scorer("units_starts_with", {"strict": True, "min_len": 5})
    assert strict.score("abc", "a", None) == Score(0.0, "too short", {"len": 3})
    assert strict.aggregate([_result(score=1.0), _result(score=0.0), _result(score=None)]) == {
        "units_starts_with": pytest.approx(1 / 3), "units_starts_with.lower": pytest.approx(wilson(1, 3)[0]),
        "units_starts_with.upper": pytest.approx(wilson(1, 3)[1])}
    with pytest.raises(ValueError, match="unknown option 'minlen'"):
        get_scorer("units_starts_with", {"minlen": 2})


def test_scorer_decorator_float_and_bad_returns() -> None:
    @scorer("units_half", main_metric="half_rate")
    def half(prediction: Any, target: Any, case: Any) -> Any:
        return {"0.5": 0.5, "1": 1, "bad": "yes"}[prediction]

    s = get_scorer("units_half")
    assert s.main_metric == "half_rate"
    assert s.score("0.5", None, None) == Score(0.5)
    assert s.score("1", None, None).value == 1.0
    with pytest.raises(TypeError, match="not str"):
        s.score("bad", None, None)


def test_scorer_decorator_on_a_class() -> None:
    @scorer("units_len", main_metric="mean_len")
    class Length(Scorer):
        options = {"unit": 1}

        def score(self, prediction: Any, target: Any, case: Any) -> Score:
            return Score(len(prediction) / self.opts["unit"])

    assert get_scorer("units_len", {"unit": 2}).score("abcd", None, None) == Score(2.0)
    assert get_scorer("units_len").main_metric == "mean_len"


def test_as_score() -> None:
    assert as_score(True) == Score(1.0)
    assert as_score(False) == Score(0.0)
    assert as_score(0) == Score(0.0)
    given_score = Score(0.3, "why")
    assert as_score(given_score) is given_score
    with pytest.raises(TypeError):
        as_score(None)


def test_get_scorer_unknown_name_lists_known_scorers() -> None:
    with pytest.raises(ValueError) as info:
        get_scorer("exact")
    message = str(info.value)
    assert "unknown scorer 'exact'" in message
    for name in ("classification_f1", "contains", "exact_match", "json_valid", "regex"):
        assert name in message


def test_unknown_option_error_names_the_options() -> None:
    with pytest.raises(ValueError) as info:
        get_scorer("exact_match", {"casesensitive": True})
    assert str(info.value) == ("scorer 'exact_match': unknown option 'casesensitive' "
                               "(options: normalize, case_sensitive, numbers)")


# --------------------------------------------------------------------------------------
# suite files
# --------------------------------------------------------------------------------------


def _write(folder: Path, suite_yaml: str, files: dict[str, str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (files if files is not None else {"cases.jsonl": '{"id": 1, "input": "q", "target": "a"}\n'}
                       ).items():
        (folder / name).write_text(text, encoding="utf-8")
    path = folder / "suite.yaml"
    path.write_text(suite_yaml, encoding="utf-8")
    return path


def _suite_error(path: Path) -> SuiteError:
    with pytest.raises(SuiteError) as info:
        load_suite(path)
    return info.value


def _assert_at(error: SuiteError, path: Path, line: int, *fragments: str) -> None:
    assert error.line == line
    assert str(error).startswith(f"{path}:{line}: "), str(error)
    for fragment in fragments:
        assert fragment in str(error), str(error)


def test_load_suite_defaults(tmp_path: Path) -> None:
    path = _write(tmp_path / "capitals", "dataset: cases.jsonl\n")
    suite = load_suite(path)
    assert suite.name == "capitals"
    assert suite.datasets == ((tmp_path / "capitals" / "cases.jsonl").resolve(),)
    assert suite.api == "chat"
    assert suite.chat_template == "raw"
    assert suite.scorer == "exact_match" and suite.scorer_options == {}
    assert suite.pass_rule == "score >= 1"
    assert suite.gates == ()
    assert suite.prompt.template == "{{ input }}"
    assert suite.fields == {"id": "id", "input": "input", "target": "target", "metadata": "metadata",
                            "cluster": "cluster"}


def test_load_suite_full(tmp_path: Path) -> None:
    path = _write(tmp_path / "s", """\
name: sentiment
datasets: [a.jsonl, b.jsonl]
api: completion
chat_template: gemma
prompt:
  system: Classify.
  template: "Review: {{ input }}"
  few_shot:
    - {input: good, output: positive}
generation: {max_tokens: 3, temperature: 0}
extract: first_line
scorer:
  name: classification_f1
  labels: [positive, negative]
pass: record
gates: f1 >= 0.7
markers: slow
""", {"a.jsonl": "", "b.jsonl": ""})
    suite = load_suite(path)
    assert suite.name == "sentiment"
    assert [d.name for d in suite.datasets] == ["a.jsonl", "b.jsonl"]
    assert suite.extract == ("first_line",)
    assert suite.scorer == "classification_f1"
    assert suite.scorer_options == {"labels": ["positive", "negative"]}
    assert suite.pass_rule is None
    assert suite.gates == ("f1 >= 0.7",)
    assert suite.markers == ("slow",)
    assert suite.prompt.few_shot == ({"input": "good", "output": "positive"},)
    assert suite.generation == {"max_tokens": 3, "temperature": 0}


def test_unknown_top_level_key_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "s", "name: s\ndataset: cases.jsonl\n\ngate:\n  - f1 >= 0.5\n")
    _assert_at(_suite_error(path), path, 4, "unknown key 'gate'", "gates")


def test_invalid_yaml_names_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "s", "name: s\ndataset: cases.jsonl\nprompt:\n  template: [unclosed\napi: chat\n")
    error = _suite_error(path)
    assert "invalid YAML" in str(error)
    assert error.line is not None and 4 <= error.line <= 5
    assert str(error).startswith(f"{path}:{error.line}: ")

    tab = _write(tmp_path / "t", "name: s\ndataset: cases.jsonl\n\tapi: chat\n")
    _assert_at(_suite_error(tab), tab, 3, "invalid YAML")


def test_suite_file_that_is_not_a_mapping(tmp_path: Path) -> None:
    path = _write(tmp_path / "s", "- a\n- b\n")
    _assert_at(_suite_error(path), path, 1, "must be a YAML mapping")


def test_bad_gate_expression_names_the_gates_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "s", "dataset: cases.jsonl\ngates:\n  - f1 >= 0.5\n  - f1 => 0.7\n")
    _assert_at(_suite_error(path), path, 2, "bad gate 'f1 => 0.7'", "expected '<metric> <op> <number>'")


@pytest.mark.parametrize(("rule", "fragment"), [("score >=", "bad pass rule"),
                                                 ("accuracy >= 1", "a pass rule judges 'score'")])
def test_bad_pass_rule(tmp_path: Path, rule: str, fragment: str) -> None:
    path = _write(tmp_path / "s", f"dataset: cases.jsonl\npass: {rule}\n")
    _assert_at(_suite_error(path), path, 2, fragment)


def test_unknown_chat_template(tmp_path: Path) -> None:
    path = _write(tmp_path / "s", "dataset: cases.jsonl\napi: completion\nchat_template: llama9\n")
    _assert_at(_suite_error(path), path, 3, "unknown chat_template 'llama9'", "raw, chatml, qwen, r1, gemma")


def test_bad_api_and_extract_and_prompt(tmp_path: Path) -> None:
    api = _write(tmp_path / "a", "dataset: cases.jsonl\napi: completions\n")
    _assert_at(_suite_error(api), api, 2, "'api' must be one of chat, completion")
    extract = _write(tmp_path / "e", "dataset: cases.jsonl\nextract: [strip, frist_line]\n")
    _assert_at(_suite_error(extract), extract, 2, "unknown extraction step 'frist_line'")
    template = _write(tmp_path / "t", "dataset: cases.jsonl\nprompt:\n  template: '{{ input '\n")
    _assert_at(_suite_error(template), template, 2, "prompt.template: template error")
    shots = _write(tmp_path / "f", "dataset: cases.jsonl\nprompt:\n  few_shot: [hello]\n")
    _assert_at(_suite_error(shots), shots, 2, "few_shot")


def test_dataset_not_found(tmp_path: Path) -> None:
    path = _write(tmp_path / "s", "name: s\ndataset: missing.jsonl\n")
    _assert_at(_suite_error(path), path, 2, "dataset 'missing.jsonl' not found")


def test_dataset_in_a_list_not_found_names_the_datasets_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "s", "name: s\ndatasets:\n  - cases.jsonl\n  - missing.jsonl\n")
    _assert_at(_suite_error(path), path, 2, "dataset 'missing.jsonl' not found")


def test_dataset_must_lie_in_the_suite_folder_or_below(tmp_path: Path) -> None:
    (tmp_path / "other.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "s" / "sub").mkdir(parents=True)
    (tmp_path / "s" / "sub" / "cases.jsonl").write_text("", encoding="utf-8")
    path = _write(tmp_path / "s", "dataset: ../other.jsonl\n")
    _assert_at(_suite_error(path), path, 1, "lies outside the suite folder")
    below = _write(tmp_path / "s", "dataset: sub/cases.jsonl\n")
    assert load_suite(below).datasets == ((tmp_path / "s" / "sub" / "cases.jsonl").resolve(),)


def test_dataset_must_be_jsonl(tmp_path: Path) -> None:
    path = _write(tmp_path / "s", "dataset: cases.csv\n", {"cases.csv": ""})
    _assert_at(_suite_error(path), path, 1, "must be a .jsonl file")


def test_missing_dataset_key(tmp_path: Path) -> None:
    error = _suite_error(_write(tmp_path / "s", "name: s\n"))
    assert "missing 'dataset'" in str(error)


def test_unknown_field_in_fields(tmp_path: Path) -> None:
    path = _write(tmp_path / "s", "dataset: cases.jsonl\nfields: {question: q}\n")
    _assert_at(_suite_error(path), path, 2, "unknown field 'question'")


def _suite_with(tmp_path: Path, jsonl: str, extra: str = "") -> tuple[Any, Path]:
    folder = tmp_path / "s"
    path = _write(folder, f"name: s\ndataset: cases.jsonl\n{extra}", {"cases.jsonl": jsonl})
    return load_suite(path), (folder / "cases.jsonl").resolve()


def _cases_error(tmp_path: Path, jsonl: str, extra: str = "") -> tuple[SuiteError, Path]:
    suite, dataset = _suite_with(tmp_path, jsonl, extra)
    with pytest.raises(SuiteError) as info:
        load_cases(suite, dataset)
    return info.value, dataset


def test_load_cases_reads_every_non_blank_line(tmp_path: Path) -> None:
    jsonl = ('{"id": "a", "input": "q1", "target": "x", "metadata": {"lang": "en"}}\n'
             "\n"
             '{"id": 7, "input": [{"role": "user", "content": "hi"}], "target": ["y", "z"], "extra": 1}\n')
    suite, dataset = _suite_with(tmp_path, jsonl)
    first, second = load_cases(suite, dataset)
    assert (first.id, first.input, first.target, first.metadata, first.line) == ("a", "q1", "x", {"lang": "en"}, 1)
    assert (second.id, second.target, second.metadata, second.line) == ("7", ["y", "z"], {}, 3)
    assert second.input == [{"role": "user", "content": "hi"}]
    assert second.record["extra"] == 1
    assert first.dataset == dataset


@pytest.mark.parametrize(
    ("jsonl", "line", "fragment"),
    [
        ('{"id": 1, "input": "q", "target": "a"}\n\n{"id": 2, "input": "q", "target": "a"}\n{"id": 3, "input": \n',
         4, "malformed JSON"),
        ('{"id": 1, "input": "q", "target": "a"}\n{"input": "q", "target": "a"}\n', 2, "missing id field 'id'"),
        ('{"id": "x", "input": "q", "target": "a"}\n{"id": "y", "input": "q", "target": "a"}\n'
         '{"id": "x", "input": "q", "target": "b"}\n', 3, "duplicate id 'x' (first on line 1)"),
        ('{"id": 1, "target": "a"}\n', 1, "missing input field 'input'"),
        ('{"id": 1, "input": "q"}\n', 1, "missing target field 'target'"),
        ('{"id": 1, "input": "q", "target": "a"}\n[1, 2]\n', 2, "each line must be a JSON object"),
        ('"just a string"\n', 1, "each line must be a JSON object"),
        ('{"id": 1, "input": 5, "target": "a"}\n', 1, "input must be a string or a list of chat messages"),
        ('{"id": 1, "input": {"text": "q"}, "target": "a"}\n', 1, "input must be a string or a list"),
        ('{"id": 1, "input": ["hi"], "target": "a"}\n', 1, "list of {role, content} objects"),
        ('{"id": 1, "input": [{"role": "user"}], "target": "a"}\n', 1, "list of {role, content} objects"),
        ('{"id": "", "input": "q", "target": "a"}\n', 1, "must be a non-empty string or an integer"),
        ('{"id": true, "input": "q", "target": "a"}\n', 1, "must be a non-empty string or an integer"),
        ('{"id": 1, "input": "q", "target": "a", "metadata": [1]}\n', 1, "metadata must be a JSON object"),
        ('{"id": 1, "input": "q", "target": "a", "cluster": {"doc": 1}}\n', 1, "must be a string or an integer"),
    ],
)
def test_load_cases_errors_name_file_and_line(tmp_path: Path, jsonl: str, line: int, fragment: str) -> None:
    error, dataset = _cases_error(tmp_path, jsonl)
    _assert_at(error, dataset, line, fragment)


def test_malformed_json_error_gives_column(tmp_path: Path) -> None:
    error, dataset = _cases_error(tmp_path, '{"id": 1, "input": "q", "target": "a"}\n{"id": 2 "input": "q"}\n')
    _assert_at(error, dataset, 2, "malformed JSON: Expecting ',' delimiter (column 10)")


def test_field_mapping_with_chinese_keys(tmp_path: Path) -> None:
    jsonl = ('{"qid": "q-1", "当前query": "今天天气怎么样", "label": "天气"}\n'
             '{"qid": "q-2", "当前query": "播放音乐", "label": "音乐"}\n')
    suite, dataset = _suite_with(tmp_path, jsonl, "fields: {id: qid, input: 当前query, target: label}\n")
    assert suite.fields == {"id": "qid", "input": "当前query", "target": "label", "metadata": "metadata",
                            "cluster": "cluster"}
    cases = load_cases(suite, dataset)
    assert [(c.id, c.input, c.target) for c in cases] == [("q-1", "今天天气怎么样", "天气"), ("q-2", "播放音乐", "音乐")]
    error, _ = _cases_error(tmp_path / "x", '{"qid": 1, "input": "q", "label": "a"}\n',
                            "fields: {id: qid, input: 当前query, target: label}\n")
    assert "missing input field '当前query'" in str(error)


def test_line_ids(tmp_path: Path) -> None:
    jsonl = '{"input": "a", "target": "1"}\n\n{"input": "b", "target": "2", "id": 1}\n'
    suite, dataset = _suite_with(tmp_path, jsonl, f"fields: {{id: '{LINE_ID}'}}\n")
    assert [c.id for c in load_cases(suite, dataset)] == ["1", "3"]


def test_file_digest(tmp_path: Path) -> None:
    data = '{"id": 1}\n\n  \n{"id": "二"}\n{"id": 3}'.encode()
    path = tmp_path / "d.jsonl"
    path.write_bytes(data)
    assert file_digest(path) == (hashlib.md5(data).hexdigest(), 3)
    empty = tmp_path / "e.jsonl"
    empty.write_bytes(b"")
    assert file_digest(empty) == (hashlib.md5(b"").hexdigest(), 0)


def test_suite_error_without_line() -> None:
    error = SuiteError("x/suite.yaml", None, "boom")
    assert str(error) == "x/suite.yaml: boom"
    assert str(SuiteError(Path("x/d.jsonl"), 12, "bad")) == "x/d.jsonl:12: bad"


# --------------------------------------------------------------------------------------
# prompts
# --------------------------------------------------------------------------------------


def _prompt_suite(tmp_path: Path, body: str) -> Any:
    return load_suite(_write(tmp_path / "p", "name: p\ndataset: cases.jsonl\n" + body))


def _make_case(input_: Any, target: Any = "t", record: dict[str, Any] | None = None) -> Case:
    return Case("c1", input_, target, {"lang": "en"}, record or {}, Path("cases.jsonl"), 1)


def test_render_chat_mode_with_system_few_shot_and_template(tmp_path: Path) -> None:
    suite = _prompt_suite(tmp_path, """\
prompt:
  system: "Answer in {{ metadata.lang }}."
  template: "Q: {{ input }}\\nA:"
  few_shot:
    - {input: "2+2", output: "4"}
    - input: capital of France
      output: {"city": "Paris", "note": "首都"}
""")
    assert render(suite, _make_case("3+3")) == [
        {"role": "system", "content": "Answer in en."},
        {"role": "user", "content": "Q: 2+2\nA:"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "Q: capital of France\nA:"},
        {"role": "assistant", "content": '{"city": "Paris", "note": "首都"}'},
        {"role": "user", "content": "Q: 3+3\nA:"},
    ]


def test_render_chat_mode_template_sees_record_and_id(tmp_path: Path) -> None:
    suite = _prompt_suite(tmp_path, "prompt: '[{{ id }}] {{ record.topic }}: {{ input }} ({{ target }})'\n")
    assert render(suite, _make_case("hello", record={"topic": "greeting"})) == [
        {"role": "user", "content": "[c1] greeting: hello (t)"}]


def test_render_chat_mode_passes_messages_input_through(tmp_path: Path) -> None:
    suite = _prompt_suite(tmp_path, "prompt:\n  system: Be brief.\n  template: 'IGNORED {{ input }}'\n")
    turns = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
             {"role": "user", "content": 42, "name": "extra"}]
    assert render(suite, _make_case(turns)) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "42"},
    ]


COMPLETION_EXPECTED = {
    "raw": "Be terse.\n\nQ: Why?",
    "chatml": "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nQ: Why?<|im_end|>\n<|im_start|>assistant\n",
    "qwen": "<|im_start|>system\nBe terse.<|im_end|>\n<|im_start|>user\nQ: Why?<|im_end|>\n<|im_start|>assistant\n",
    "r1": "<｜begin▁of▁sentence｜>Be terse.<｜User｜>Q: Why?<｜Assistant｜><think>\n",
    "gemma": "<bos><start_of_turn>user\nBe terse.\n\nQ: Why?<end_of_turn>\n<start_of_turn>model\n",
}


@pytest.mark.parametrize("template", sorted(COMPLETION_EXPECTED))
def test_render_completion_mode_with_each_chat_template(tmp_path: Path, template: str) -> None:
    suite = _prompt_suite(tmp_path, f"api: completion\nchat_template: {template}\n"
                                    "prompt:\n  system: Be terse.\n  template: 'Q: {{ input }}'\n")
    assert render(suite, _make_case("Why?")) == COMPLETION_EXPECTED[template]


def test_every_chat_template_is_covered() -> None:
    assert set(CHAT_TEMPLATES) == set(COMPLETION_EXPECTED)


def test_chat_templates_without_system_and_with_replies() -> None:
    user_only = [{"role": "user", "content": "U"}]
    assert CHAT_TEMPLATES["qwen"](user_only) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n")
    assert CHAT_TEMPLATES["chatml"](user_only) == "<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    assert CHAT_TEMPLATES["raw"](user_only) == "U"
    assert CHAT_TEMPLATES["gemma"](user_only) == "<bos><start_of_turn>user\nU<end_of_turn>\n<start_of_turn>model\n"
    assert CHAT_TEMPLATES["r1"](user_only) == "<｜begin▁of▁sentence｜><｜User｜>U<｜Assistant｜><think>\n"

    exchange = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                {"role": "user", "content": "Q2"}]
    assert CHAT_TEMPLATES["gemma"](exchange) == (
        "<bos><start_of_turn>user\nQ1<end_of_turn>\n<start_of_turn>model\nA1<end_of_turn>\n"
        "<start_of_turn>user\nQ2<end_of_turn>\n<start_of_turn>model\n")
    assert CHAT_TEMPLATES["r1"](exchange) == (
        "<｜begin▁of▁sentence｜><｜User｜>Q1<｜Assistant｜>A1<｜end▁of▁sentence｜><｜User｜>Q2<｜Assistant｜><think>\n")
    assert CHAT_TEMPLATES["chatml"](exchange) == (
        "<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n")


def test_qwen_keeps_a_given_system_prompt_and_does_not_mutate_input() -> None:
    messages = [{"role": "user", "content": "U"}]
    CHAT_TEMPLATES["qwen"](messages)
    CHAT_TEMPLATES["gemma"]([{"role": "system", "content": "S"}, *messages])
    assert messages == [{"role": "user", "content": "U"}]


def test_template_with_unknown_field_raises(tmp_path: Path) -> None:
    import jinja2

    suite = _prompt_suite(tmp_path, "prompt: '{{ input }} {{ qestion }}'\n")
    with pytest.raises(jinja2.UndefinedError, match="qestion"):
        render_messages(suite, _make_case("x"))
    system = _prompt_suite(tmp_path / "sys", "prompt:\n  system: '{{ metadata.missing_key.deeper }}'\n")
    with pytest.raises(jinja2.UndefinedError):
        render_messages(system, _make_case("x"))
