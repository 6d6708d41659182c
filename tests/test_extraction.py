"""Extraction chains, answer normalisation (full-width, numbers) and JSON-schema validity."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.scoring.extract import ExtractionError, run_pipeline
from harness.scoring.normalize import canonical_number, canonical_numbers, normalize
from harness.scoring.scorers import get_scorer
from harness.suite import SuiteError, load_suite

CHAIN = ({"first_of": [["strip_think", "json_block", "json"], [{"regex": r"answer:\s*(\w+)", "flags": "i"}],
                       "last_paragraph"]},)


def test_first_of_takes_the_first_alternative_that_succeeds() -> None:
    assert run_pipeline(CHAIN, '<think>{"x": 0}</think>```json\n{"a": 1}\n```') == {"a": 1}
    assert run_pipeline(CHAIN, "I think so.\n\nAnswer: Yes") == "Yes"
    assert run_pipeline(CHAIN, "no json\n\nno marker either") == "no marker either"


def test_first_of_failure_names_every_alternative() -> None:
    with pytest.raises(ExtractionError) as info:
        run_pipeline(({"first_of": [["json"], "number"]},), "nothing here")
    assert str(info.value) == ("no alternative succeeded (json: no balanced JSON object in output; "
                               "number: no number in output)")


def test_failed_extraction_scores_zero_with_its_reason(tmp_path: Path) -> None:
    from harness.case_scoring import score_reply
    from harness.suite import load_cases

    (tmp_path / "suite.yaml").write_text(
        "name: s\ndataset: c.jsonl\nextract: [{first_of: [json, number]}]\nscorer: exact_match\n")
    (tmp_path / "c.jsonl").write_text('{"id": "a", "input": "q", "target": "12"}\n')
    suite = load_suite(tmp_path / "suite.yaml")
    case = load_cases(suite, suite.datasets[0])[0]
    result = score_reply(suite, case, "m", "n", "c.jsonl", {"text": "twelve"})
    assert (result.score, result.extracted) == (0.0, "")
    assert result.reason.startswith("extraction failed: no alternative succeeded")
    assert score_reply(suite, case, "m", "n", "c.jsonl", {"text": "It is 12.0 in total."}).score == 1.0


@pytest.mark.parametrize(("text", "expected"), [
    ("The total is 1,234.50 yuan.", "1234.5"),
    ("答案是１２３。", "123"),
    ("from 3 to -0.5", "-0.5"),
    ("version 1.2.3 costs 40", "40"),
])
def test_number_step(text: str, expected: str) -> None:
    assert run_pipeline(("number",), text) == expected


@pytest.mark.parametrize(("a", "b"), [
    ("1,000", "1000"), ("1000.0", "1000"), ("+5", "5"), ("-0.0", "0"), (".5", "0.5"),
    ("１，０００", "1000"), ("ＰＡＲＩＳ", "paris"), ("  Paris\u3000 。", "paris"), ("2.50 apples", "2.5 APPLES"),
])
def test_exact_match_normalises_width_case_punctuation_and_numbers(a: str, b: str) -> None:
    assert get_scorer("exact_match").score(a, b, None).value == 1.0


@pytest.mark.parametrize(("a", "b"), [("3,14", "3.14"), ("007", "7"), ("1.2.3", "1.23"), ("1,00", "100"),
                                      ("-5", "5"), ("12", "1,2")])
def test_numbers_that_differ_stay_different(a: str, b: str) -> None:
    assert get_scorer("exact_match").score(a, b, None).value == 0.0


def test_numbers_option_off_compares_text() -> None:
    assert get_scorer("exact_match", {"numbers": False}).score("1,000", "1000", None).value == 0.0
    assert get_scorer("contains").score("It costs 1,000 yuan", "1000", None).value == 1.0


@given(st.decimals(allow_nan=False, allow_infinity=False, places=3, min_value=-10**9, max_value=10**9))
def test_canonical_number_keeps_the_value(value: Decimal) -> None:
    text = f"{value:,.3f}"
    canonical = canonical_number(text)
    assert canonical is not None and Decimal(canonical) == value
    assert canonical_number(canonical) == canonical  # idempotent
    assert canonical_numbers(f"about {text} units") == f"about {canonical} units"


@given(st.text())
def test_normalize_is_idempotent(text: str) -> None:
    once = normalize(text, numbers=True)
    assert normalize(once, numbers=True) == once


SCHEMA = {"type": "object", "required": ["name", "age"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}


def test_json_schema_validity_per_case_and_suite() -> None:
    from harness.results import CaseResult

    scorer = get_scorer("json_valid", {"schema": SCHEMA})
    good = scorer.score('{"name": "Ann", "age": 3}', None, None)
    wrong_type = scorer.score('{"name": "Ann", "age": "3"}', None, None)
    missing = scorer.score('{"name": "Ann"}', None, None)
    assert (good.value, good.data["schema_ok"]) == (1.0, True)
    assert wrong_type.value == 0.0 and wrong_type.reason == "schema: '3' is not of type 'integer' at $.age"
    assert missing.reason == "schema: 'age' is a required property at $"
    results = []
    for index, score in enumerate([good, wrong_type, missing, scorer.score("nope", None, None)]):
        result = CaseResult("s", str(index), "m", "n", "d", index + 1, "p", None, score=score.value)
        result.data = score.data
        results.append(result)
    metrics = scorer.aggregate(results)
    assert (metrics["json_ok"], metrics["schema_ok"]) == (0.75, 0.25)
    assert metrics["schema_ok.lower"] < 0.25 < metrics["schema_ok.upper"]


def test_bad_schema_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="invalid JSON Schema"):
        get_scorer("json_valid", {"schema": {"type": "banana"}})


def test_schema_file_lies_beside_the_suite(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"id": "a", "input": "q", "target": null}\n')
    (tmp_path / "person.schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "suite.yaml").write_text("dataset: c.jsonl\nscorer: {name: json_valid, "
                                         "schema_file: person.schema.json}\n")
    suite = load_suite(tmp_path / "suite.yaml")
    assert suite.scorer_options["schema_file"] == str(tmp_path / "person.schema.json")
    scorer = get_scorer(suite.scorer, suite.scorer_options)
    reason = scorer.score({"name": "A", "age": -1}, None, None).reason
    assert reason == "schema: -1 is less than the minimum of 0 at $.age"
    (tmp_path / "suite.yaml").write_text("dataset: c.jsonl\nscorer: {name: json_valid, schema_file: gone.json}\n")
    with pytest.raises(SuiteError) as info:
        load_suite(tmp_path / "suite.yaml")
    assert str(info.value) == f"{tmp_path / 'suite.yaml'}:2: scorer option 'schema_file': file 'gone.json' not found"


@given(st.lists(st.one_of(st.dictionaries(st.sampled_from(["name", "age", "x"]), st.integers(-3, 3), max_size=3),
                          st.text(max_size=5), st.lists(st.integers(), max_size=2)), max_size=30))
def test_json_ratios_are_shares_of_the_cases(values: list) -> None:
    from harness.results import CaseResult

    scorer = get_scorer("json_valid", {"schema": SCHEMA, "required_keys": ["name"]})
    results = []
    for index, value in enumerate(values):
        text = json.dumps(value) if not isinstance(value, str) else value
        score = scorer.score(text, None, None)
        result = CaseResult("s", str(index), "m", "n", "d", index + 1, "p", None, score=score.value)
        result.data = score.data
        results.append(result)
    metrics = scorer.aggregate(results)
    if not values:
        assert metrics["json_ok"] is None
        return
    def parsed(value: object) -> object:
        try:
            return json.loads(value) if isinstance(value, str) else value
        except json.JSONDecodeError:
            return None

    objects = [p for p in map(parsed, values) if isinstance(p, dict)]
    assert metrics["json_ok"] == pytest.approx(len(objects) / len(values))
    assert metrics["keys_ok"] == pytest.approx(sum("name" in v for v in objects) / len(values))
    assert metrics["schema_ok"] <= metrics["json_ok"]
    for name in ("json_ok", "keys_ok", "schema_ok"):
        assert metrics[f"{name}.lower"] <= metrics[name] <= metrics[f"{name}.upper"]
