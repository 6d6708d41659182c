"""Tool-call metrics (seed 001): hand-worked examples, properties, OpenAI mapping."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.scoring.toolcalls import (
    NEGATIVE_TOOL,
    from_openai_tool_calls,
    normalise_value,
    param_keys,
    param_metrics,
    parse_tool_calls,
    strict_match,
    tool_metrics,
    toolcall_report,
)


def call(name: str, **params: Any) -> dict[str, Any]:
    return {"toolName": name, "paramList": params}


def approx_row(row: dict[str, Any], p: float, r: float, f1: float) -> None:
    assert (row["precision"], row["recall"], row["f1"]) == pytest.approx((p, r, f1))


# ---------------------------------------------------------------------------- name level

def test_tool_metrics_counts_repeats_with_min_hits() -> None:
    labels = [
        [call("priceCheck", amount=100), call("priceCheck", amount=200), call("settlementMethod")],
        [call("truckCheck", truckType="车长", value="17.5")],
    ]
    preds = [
        [call("priceCheck", amount=100), call("priceCheck", amount=999),
         call("settlementMethod"), call("settlementMethod")],
        [call("priceCheck", amount=1)],
    ]
    result = tool_metrics(labels, preds)
    rows = result["per_tool"]
    assert list(rows) == ["priceCheck", "settlementMethod", "truckCheck"]
    # priceCheck: label 2, pred 2+1 = 3, hits min(2,2) + min(0,1) = 2 (names only: amounts ignored)
    # P = 2/3, R = 2/2 = 1, F1 = 2*(2/3)*1 / (5/3) = 0.8
    assert (rows["priceCheck"]["support"], rows["priceCheck"]["predicted"], rows["priceCheck"]["hits"]) == (2, 3, 2)
    approx_row(rows["priceCheck"], 2 / 3, 1.0, 0.8)
    # settlementMethod: label 1, pred 2, hits min(1,2) = 1 -> P = 1/2, R = 1, F1 = 1/1.5 = 2/3
    approx_row(rows["settlementMethod"], 0.5, 1.0, 2 / 3)
    # truckCheck: label 1, pred 0, hits 0 -> P = 0/0 := 0, R = 0/1 = 0, F1 = 0
    approx_row(rows["truckCheck"], 0.0, 0.0, 0.0)
    # micro: hits 3, predicted 5, labelled 4 -> P = 3/5, R = 3/4, F1 = 2*.6*.75/1.35 = 2/3
    approx_row(result["micro"], 0.6, 0.75, 2 / 3)
    # macro over 3 tools: P = (2/3 + 1/2 + 0)/3 = 7/18, R = (1+1+0)/3 = 2/3, F1 = (0.8 + 2/3 + 0)/3 = 22/45
    approx_row(result["macro"], 7 / 18, 2 / 3, 22 / 45)


def test_negative_pseudo_tool_for_empty_lists() -> None:
    labels = [[], [], [call("settlementMethod")], []]
    preds = [[], [call("settlementMethod")], [call("settlementMethod")], [call("priceCheck")]]
    result = tool_metrics(labels, preds, negative=True)
    rows = result["per_tool"]
    # __NEGATIVE__: empty labels in samples 0,1,3 -> support 3; empty prediction only in 0 -> predicted 1;
    # both empty in 0 -> hits 1. P = 1/1, R = 1/3, F1 = 2*(1/3)/(4/3) = 0.5
    assert (rows[NEGATIVE_TOOL]["support"], rows[NEGATIVE_TOOL]["predicted"], rows[NEGATIVE_TOOL]["hits"]) == (3, 1, 1)
    approx_row(rows[NEGATIVE_TOOL], 1.0, 1 / 3, 0.5)
    # settlementMethod: label 1, pred 2, hits 1 -> 1/2, 1, 2/3; priceCheck: label 0, pred 1 -> 0, 0, 0
    approx_row(rows["settlementMethod"], 0.5, 1.0, 2 / 3)
    approx_row(rows["priceCheck"], 0.0, 0.0, 0.0)
    # micro: hits 1+1+0 = 2, predicted 1+2+1 = 4, labelled 3+1+0 = 4 -> 0.5, 0.5, 0.5
    approx_row(result["micro"], 0.5, 0.5, 0.5)
    # macro: P = (1 + .5 + 0)/3 = .5, R = (1/3 + 1 + 0)/3 = 4/9, F1 = (.5 + 2/3 + 0)/3 = 7/18
    approx_row(result["macro"], 0.5, 4 / 9, 7 / 18)

    plain = tool_metrics(labels, preds)  # negative=False: empty samples count for nothing
    assert NEGATIVE_TOOL not in plain["per_tool"]
    # micro: hits 1, predicted 3, labelled 1 -> P = 1/3, R = 1, F1 = (2/3)/(4/3) = 0.5
    approx_row(plain["micro"], 1 / 3, 1.0, 0.5)
    # macro over settlementMethod and priceCheck: P = (.5+0)/2, R = (1+0)/2, F1 = (2/3+0)/2
    approx_row(plain["macro"], 0.25, 0.5, 1 / 3)


def test_no_tools_at_all_gives_zero_averages() -> None:
    # seed: 0/0 ratios and an empty macro mean are 0
    result = tool_metrics([[], []], [[], []])
    assert result["per_tool"] == {}
    approx_row(result["micro"], 0.0, 0.0, 0.0)
    approx_row(result["macro"], 0.0, 0.0, 0.0)
    # with the pseudo-tool, two empty-vs-empty samples are two hits of __NEGATIVE__
    approx_row(tool_metrics([[], []], [[], []], negative=True)["macro"], 1.0, 1.0, 1.0)


# ---------------------------------------------------------------------------- normalisation

def test_normalise_value_rules() -> None:
    assert normalise_value("t", "p", "a:b") == "a:b"  # strings as they are
    # lists sorted by (length, string), then json.dumps with its defaults
    assert normalise_value("t", "p", ["bb", "c", "a"]) == '["a", "c", "bb"]'
    assert normalise_value("t", "p", ["周二", "周一"]) == json.dumps(["周一", "周二"])
    assert normalise_value("t", "p", ["周二", "周一"]) == '["\\u5468\\u4e00", "\\u5468\\u4e8c"]'
    # top-level dict keys sorted; a nested dict keeps its order (as in the seed)
    assert normalise_value("t", "p", {"b": 1, "a": {"d": 1, "c": 2}}) == '{"a": {"d": 1, "c": 2}, "b": 1}'
    # other types through str()
    assert [normalise_value("t", "p", v) for v in (True, 3, 2.5, None)] == ["True", "3", "2.5", "None"]
    # non-string list items (the seed's sort key raises on them) sort by their JSON text
    assert normalise_value("t", "p", [10, 9, 1]) == "[1, 9, 10]"
    assert normalise_value("t", "p", [{"a": 1}, {"a": 0}]) == normalise_value("t", "p", [{"a": 0}, {"a": 1}])


def test_param_keys_typed_values() -> None:
    truck = call("truckCheck", truckType="车长", value="17.5")
    assert param_keys(truck) == [("truckCheck-truckType", "车长"), ("truckCheck-value", "17.5"),
                                 ("truckCheck-truckType-车长", "17.5")]
    assert param_keys(call("priceCheck", priceType="总价", value="3000"))[-1] == ("priceCheck-priceType-总价", "3000")
    # a type outside the listed kinds, or no value, adds no typed key
    assert param_keys(call("truckCheck", truckType="颜色", value="红")) == [
        ("truckCheck-truckType", "颜色"), ("truckCheck-value", "红")]
    assert param_keys(call("priceCheck", priceType="到车价")) == [("priceCheck-priceType", "到车价")]
    # the typed keys belong to their tool only
    assert len(param_keys(call("otherTool", truckType="车长", value="17.5"))) == 2
    # no parameters, no keys; a missing paramList is no parameters
    assert param_keys(call("settlementMethod")) == [] == param_keys({"toolName": "settlementMethod"})
    with pytest.raises(ValueError, match="paramList"):
        param_keys({"toolName": "x", "paramList": ["a"]})


# ---------------------------------------------------------------------------- parameter level

def test_param_metrics_worked_example() -> None:
    labels = [[
        call("priceCheck", priceType="总价", value="3000"),
        call("loadTimeCheck", days=["周二", "周一"], opts={"b": 1, "a": 2}),
        call("settlementMethod"),
    ]]
    preds = [[
        call("priceCheck", priceType="到车价", value="3000"),
        call("loadTimeCheck", opts={"a": 2, "b": 1}, days=["周一", "周二"]),
    ]]
    # label keys: priceCheck-priceType:总价, priceCheck-value:3000, priceCheck-priceType-总价:3000,
    #             loadTimeCheck-days:[周一,周二], loadTimeCheck-opts:{a,b}   (settlementMethod: no params)
    # pred keys:  priceCheck-priceType:到车价, priceCheck-value:3000, priceCheck-priceType-到车价:3000,
    #             loadTimeCheck-days:[周一,周二], loadTimeCheck-opts:{a,b}   (list order, key order normalised)
    result = param_metrics(labels, preds)
    rows = result["per_param"]
    assert sorted(rows) == sorted(["priceCheck-priceType", "priceCheck-value", "priceCheck-priceType-总价",
                                   "priceCheck-priceType-到车价", "loadTimeCheck-days", "loadTimeCheck-opts"])
    approx_row(rows["priceCheck-priceType"], 0.0, 0.0, 0.0)  # 总价 vs 到车价: label 1, pred 1, hits 0
    approx_row(rows["priceCheck-value"], 1.0, 1.0, 1.0)  # same bare value ...
    approx_row(rows["priceCheck-priceType-总价"], 0.0, 0.0, 0.0)  # ... but not as a total price: label 1, pred 0
    approx_row(rows["priceCheck-priceType-到车价"], 0.0, 0.0, 0.0)  # label 0, pred 1
    approx_row(rows["loadTimeCheck-days"], 1.0, 1.0, 1.0)
    approx_row(rows["loadTimeCheck-opts"], 1.0, 1.0, 1.0)
    # micro: hits 3, predicted 5, labelled 5 -> 3/5 each; macro over 6 groups: (0+1+0+0+1+1)/6 = 1/2 each
    approx_row(result["micro"], 0.6, 0.6, 0.6)
    approx_row(result["macro"], 0.5, 0.5, 0.5)


def test_param_metrics_repeated_keys_hit_min_count() -> None:
    labels = [[call("A", x=1), call("A", x=1)]]
    preds = [[call("A", x=1), call("B", y=2), call("C", z=3)]]
    # A-x:1 twice in the label, once in the prediction: hits min(2,1) = 1 -> P = 1, R = 1/2, F1 = 2/3.
    # (The seed's loop walks the shorter list and would count 2 hits: P = 2/(2-1) = 2.)
    result = param_metrics(labels, preds)
    approx_row(result["per_param"]["A-x"], 1.0, 0.5, 2 / 3)
    approx_row(result["per_param"]["B-y"], 0.0, 0.0, 0.0)
    # micro: hits 1, predicted 3, labelled 2 -> P = 1/3, R = 1/2, F1 = (1/3)/(5/6) = 0.4
    approx_row(result["micro"], 1 / 3, 0.5, 0.4)
    # macro over A-x, B-y, C-z: P = 1/3, R = (1/2)/3 = 1/6, F1 = (2/3)/3 = 2/9
    approx_row(result["macro"], 1 / 3, 1 / 6, 2 / 9)


def test_param_metrics_typed_key_on_repeated_truck_checks() -> None:
    labels = [[call("truckCheck", truckType="车长", value="17.5"), call("truckCheck", truckType="车型", value="平板")]]
    preds = [[call("truckCheck", truckType="车型", value="17.5"), call("truckCheck", truckType="车长", value="平板")]]
    # bare keys: truckType {车长, 车型} vs {车型, 车长} -> 2 hits of 2; value {17.5, 平板} both sides -> 2 of 2
    # typed keys: 车长:17.5, 车型:平板 vs 车型:17.5, 车长:平板 -> 0 hits; each group label 1, pred 1
    rows = param_metrics(labels, preds)["per_param"]
    approx_row(rows["truckCheck-truckType"], 1.0, 1.0, 1.0)
    approx_row(rows["truckCheck-value"], 1.0, 1.0, 1.0)
    approx_row(rows["truckCheck-truckType-车长"], 0.0, 0.0, 0.0)
    approx_row(rows["truckCheck-truckType-车型"], 0.0, 0.0, 0.0)


# ---------------------------------------------------------------------------- strict match

def test_strict_match_single_and_multi() -> None:
    labels = [
        [call("A", x=1)],  # single
        [call("A", x=1)],  # single
        [call("A", x=1), call("B", y=[1, 2])],  # multi
        [call("A", x=1), call("B", y=2)],  # multi
        [call("A", x=1), call("A", x=2)],  # multi, one tool twice
        [call("A", x=1), call("B", y=[1, 2])],  # multi
        [],  # neither
    ]
    preds = [
        [call("A", x=1)],  # hit
        [call("A", x=1), call("A", x=1)],  # miss: two calls for one
        [call("B", y=[1, 2]), call("A", x=1)],  # hit: call order does not matter
        [call("A", x=1), call("B", y=3)],  # miss: a parameter differs
        [call("A", x=2), call("A", x=1)],  # hit (the seed's name-only sort would miss it)
        [call("A", x=1), call("B", y=[2, 1])],  # miss: raw values, list order counts here
        [call("A", x=1)],  # ignored
    ]
    result = strict_match(labels, preds)
    # single: 1 of 2; multi: 2 of 4; overall (single and multi only): 3 of 6
    assert (result["single_hits"], result["single_total"], result["multi_hits"], result["multi_total"]) == (1, 2, 2, 4)
    assert result["strict_match_single"] == 0.5
    assert result["strict_match_multi"] == 0.5
    assert result["strict_match"] == 0.5


def test_strict_match_compares_whole_calls() -> None:
    # raw dict equality: a missing paramList is not {} (parse_tool_calls canonicalises this away)
    assert strict_match([[{"toolName": "A"}]], [[call("A")]])["strict_match"] == 0.0
    parsed = parse_tool_calls([{"toolName": "A"}])
    assert strict_match([parsed], [from_openai_tool_calls([_openai("A", "")])])["strict_match"] == 1.0


def test_strict_match_rates_none_without_samples() -> None:
    result = strict_match([[], [call("A")]], [[], [call("A")]])
    assert (result["strict_match"], result["strict_match_single"], result["strict_match_multi"]) == (1.0, 1.0, None)
    assert strict_match([[]], [[call("A")]])["strict_match"] is None


# ---------------------------------------------------------------------------- report and errors

def test_report_names() -> None:
    report = toolcall_report([[call("A", x=1)]], [[call("A", x=1)]])
    flat = {f"{prefix}_{stat}_{average}" for prefix in ("tool", "param")
            for stat in ("precision", "recall", "f1") for average in ("micro", "macro")}
    assert set(report) == flat | {"strict_match", "strict_match_single", "strict_match_multi",
                                  "per_tool", "per_param_tool", "strict_counts"}
    assert all(report[name] == 1.0 for name in flat)
    assert report["per_tool"]["A"]["support"] == 1
    assert report["per_param_tool"]["A-x"]["hits"] == 1
    assert report["strict_counts"] == {"single_hits": 1, "single_total": 1, "multi_hits": 0, "multi_total": 0}


@pytest.mark.parametrize("fn", [tool_metrics, param_metrics, strict_match, toolcall_report])
def test_errors(fn: Any) -> None:
    with pytest.raises(ValueError, match="differ in length: 2 vs 1"):
        fn([[], []], [[]])
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match=r"predictions\[0\] must be a list"):
        fn([[]], ["A"])
    with pytest.raises(ValueError, match=r"labels\[0\]\[1\] must be a dict with a string 'toolName'"):
        fn([[call("A"), {"name": "B"}]], [[]])


# ---------------------------------------------------------------------------- properties

TOOLS = ["priceCheck", "truckCheck", "loadTimeCheck", "settlementMethod"]
VALUES = st.one_of(
    st.sampled_from(["车长", "车型", "总价", "到车价", "17.5", "a"]),
    st.integers(0, 3), st.booleans(), st.none(),
    st.lists(st.sampled_from(["x", "yy", "z"]), max_size=3),
    st.lists(st.integers(0, 12), max_size=3),
    st.dictionaries(st.sampled_from(["k", "j"]), st.integers(0, 2), max_size=2),
)
PARAMS = st.dictionaries(st.sampled_from(["truckType", "priceType", "value", "amount"]), VALUES, max_size=3)
CALLS = st.builds(lambda name, params: call(name, **params), st.sampled_from(TOOLS), PARAMS)
SAMPLE = st.lists(CALLS, max_size=3)
PAIRS = st.lists(st.tuples(SAMPLE, SAMPLE), min_size=1, max_size=6)


def _split(pairs: list[tuple[list, list]]) -> tuple[list, list]:
    return [label for label, _ in pairs], [pred for _, pred in pairs]


def _rates(report: dict[str, Any]) -> list[float]:
    values = [v for k, v in report.items() if k.startswith(("tool_", "param_", "strict_match")) and v is not None]
    for table in (report["per_tool"], report["per_param_tool"]):
        values += [row[stat] for row in table.values() for stat in ("precision", "recall", "f1")]
    return values


@settings(max_examples=200, deadline=None)
@given(PAIRS, st.booleans())
def test_all_metrics_in_unit_interval(pairs: list, negative: bool) -> None:
    report = toolcall_report(*_split(pairs), negative=negative)
    assert all(0.0 <= v <= 1.0 for v in _rates(report))
    for table in (report["per_tool"], report["per_param_tool"]):
        assert all(0 <= row["hits"] <= min(row["support"], row["predicted"]) for row in table.values())


@settings(max_examples=200, deadline=None)
@given(st.lists(SAMPLE, min_size=1, max_size=6), st.booleans())
def test_perfect_prediction_scores_one(labels: list, negative: bool) -> None:
    report = toolcall_report(labels, copy.deepcopy(labels), negative=negative)
    has_calls = any(labels) or (negative and not all(labels))
    has_params = any(param_keys(c) for sample in labels for c in sample)
    for stat in ("precision", "recall", "f1"):
        for average in ("micro", "macro"):
            assert report[f"tool_{stat}_{average}"] == (1.0 if has_calls else 0.0)
            assert report[f"param_{stat}_{average}"] == (1.0 if has_params else 0.0)
    for name in ("strict_match", "strict_match_single", "strict_match_multi"):
        assert report[name] in (1.0, None)
    assert report["strict_match"] == (1.0 if any(labels) else None)


@settings(max_examples=200, deadline=None)
@given(PAIRS, st.booleans(), st.data())
def test_invariant_under_sample_order(pairs: list, negative: bool, data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(pairs))
    assert toolcall_report(*_split(shuffled), negative=negative) == toolcall_report(*_split(pairs), negative=negative)


@settings(max_examples=200, deadline=None)
@given(PAIRS, st.booleans(), st.data())
def test_invariant_under_call_order(pairs: list, negative: bool, data: st.DataObject) -> None:
    labels, preds = _split(pairs)
    labels2 = [data.draw(st.permutations(sample)) for sample in labels]
    preds2 = [data.draw(st.permutations(sample)) for sample in preds]
    assert tool_metrics(labels2, preds2, negative) == tool_metrics(labels, preds, negative)
    assert param_metrics(labels2, preds2) == param_metrics(labels, preds)
    assert strict_match(labels2, preds2) == strict_match(labels, preds)  # multiset equality, order-free too


@settings(max_examples=100, deadline=None)
@given(st.lists(SAMPLE, min_size=1, max_size=5), st.lists(SAMPLE, min_size=1, max_size=5))
def test_length_mismatch_raises(labels: list, preds: list) -> None:
    if len(labels) == len(preds):
        preds = preds + [[]]
    for fn in (tool_metrics, param_metrics, strict_match, toolcall_report):
        with pytest.raises(ValueError, match="differ in length"):
            fn(labels, preds)


@pytest.mark.parametrize("fn", [tool_metrics, param_metrics, strict_match, toolcall_report])
def test_empty_input_raises(fn: Any) -> None:
    with pytest.raises(ValueError, match="empty"):
        fn([], [])
    with pytest.raises(ValueError, match="empty"):
        fn((), ())


# ---------------------------------------------------------------------------- input shapes

def _openai(name: str, arguments: Any) -> dict[str, Any]:
    return {"id": "call_1", "type": "function", "function": {"name": name, "arguments": arguments}}


def test_from_openai_tool_calls() -> None:
    assert from_openai_tool_calls(None) == []
    assert from_openai_tool_calls([]) == []
    calls = [
        _openai("priceCheck", '{"priceType": "总价", "value": "3000"}'),
        _openai("settlementMethod", ""),  # no arguments
        _openai("truckCheck", '{"truckType": "车长", "value": '),  # truncated JSON
        _openai("loadTimeCheck", "[1, 2]"),  # valid JSON, not an object
        {"function": {"name": "orderManagementCheck", "arguments": {"id": 7}}},  # already decoded, no type
    ]
    assert from_openai_tool_calls(calls) == [
        {"toolName": "priceCheck", "paramList": {"priceType": "总价", "value": "3000"}},
        {"toolName": "settlementMethod", "paramList": {}},
        {"toolName": "truckCheck", "paramList": {"__raw__": '{"truckType": "车长", "value": '}},
        {"toolName": "loadTimeCheck", "paramList": {"__raw__": "[1, 2]"}},
        {"toolName": "orderManagementCheck", "paramList": {"id": 7}},
    ]


def test_from_openai_tool_calls_bad_structure() -> None:
    with pytest.raises(ValueError, match="no function name"):
        from_openai_tool_calls([{"type": "function", "function": {"arguments": "{}"}}])
    with pytest.raises(ValueError, match="not an OpenAI function call"):
        from_openai_tool_calls([{"type": "function"}])
    with pytest.raises(ValueError, match="list or None"):
        from_openai_tool_calls("[]")  # type: ignore[arg-type]


def test_bad_arguments_still_count_by_name() -> None:
    labels = [[call("truckCheck", truckType="车长", value="17.5")]]
    preds = [from_openai_tool_calls([_openai("truckCheck", "{not json")])]
    report = toolcall_report(labels, preds)
    assert report["tool_f1_micro"] == 1.0
    assert report["param_f1_micro"] == 0.0
    assert report["per_param_tool"]["truckCheck-__raw__"]["predicted"] == 1


def test_parse_tool_calls_shapes() -> None:
    seed = [{"toolName": "priceCheck", "paramList": {"value": "3"}}, {"toolName": "settlementMethod"}]
    canonical = [{"toolName": "priceCheck", "paramList": {"value": "3"}},
                 {"toolName": "settlementMethod", "paramList": {}}]
    assert parse_tool_calls(seed) == canonical
    assert parse_tool_calls(json.dumps(seed, ensure_ascii=False)) == canonical
    assert parse_tool_calls([{"toolName": "A", "paramList": None, "reason": "x"}]) == [call("A")]
    openai = [_openai("priceCheck", '{"value": "3"}')]
    assert parse_tool_calls(openai) == [call("priceCheck", value="3")]
    assert parse_tool_calls(json.dumps(openai)) == [call("priceCheck", value="3")]
    assert parse_tool_calls([]) == parse_tool_calls("[]") == []


@pytest.mark.parametrize("value, message", [
    (None, "got NoneType"),
    ({"toolName": "A"}, "got dict"),
    ("not json", "not valid JSON"),
    ('{"toolName": "A"}', "must be a list, got dict"),
    ([{"name": "A"}], "tool call 0 has neither"),
    (["A"], "tool call 0 has neither"),
    ([{"toolName": 3}], "toolName must be a string"),
    ([{"toolName": "A", "paramList": [1]}], "paramList must be an object"),
])
def test_parse_tool_calls_rejects(value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_tool_calls(value)
