"""A tool-call suite end to end: OpenAI tool_calls from a real stub process, and JSON text."""

from __future__ import annotations

import json

from tests.conftest import load_report, run_inline, write_suite


def call(name: str, **params) -> dict:
    return {"toolName": name, "paramList": params}


def test_tool_call_suite_scores_openai_tool_calls_and_json_text(pytester, stub_url):
    cases = [
        # the stub answers a tool call (content null) named and shaped as the directive says
        {"id": "weather", "input": 'TOOL:getWeather:{"city": "Beijing"}',
         "target": [call("getWeather", city="Beijing")]},
        {"id": "wrong_param", "input": 'TOOL:getWeather:{"city": "Shanghai"}',
         "target": [call("getWeather", city="Beijing")]},
        {"id": "wrong_tool", "input": 'TOOL:playMusic:{"song": "x"}', "target": [call("getWeather", city="Beijing")]},
        # a text answer in the seed's JSON shape, two calls
        {"id": "two", "input": "ANSWER: " + json.dumps([call("a", x=1), call("b", y=[1, 2])]),
         "target": [call("b", y=[1, 2]), call("a", x=1)]},
        {"id": "garbage", "input": "ANSWER: not json", "target": [call("a", x=1)]},
    ]
    write_suite(pytester.path / "evals", "tools", cases, scorer="tool_calls", extract=["json"],
                gates=["f1 >= 0.5", "strict_match.lower >= 0.9"], **{"pass": "record"})
    result = run_inline(pytester, "--llm-cache", "off", "evals")
    assert result.ret == 1  # the lower bound of the strict match rate over 5 cases is far below 0.9
    report = load_report(pytester)
    cases_by_id = {c["id"]: c for c in report["cases"]}
    assert cases_by_id["weather"]["score"] == 1.0 and cases_by_id["weather"]["error"] is None
    assert cases_by_id["wrong_param"]["score"] == 0.0 and cases_by_id["wrong_tool"]["score"] == 0.0
    assert cases_by_id["two"]["score"] == 1.0  # the order of the calls does not matter
    assert cases_by_id["garbage"]["score"] == 0.0 and cases_by_id["garbage"]["reason"]
    metrics = report["suites"][0]["metrics"]
    # names: label getWeather x3, a x2, b x1; predicted getWeather x2, playMusic, a, b; hits 2 + 1 + 1 = 4
    assert metrics["tool_precision_micro"] == 4 / 5 and metrics["tool_recall_micro"] == 4 / 6
    assert metrics["f1"] == metrics["tool_f1_micro"] == 2 * (4 / 5) * (4 / 6) / (4 / 5 + 4 / 6)
    assert metrics["strict_match"] == 2 / 5
    assert metrics["f1.lower"] <= metrics["f1"] <= metrics["f1.upper"]
    tables = report["suites"][0]["tables"]
    assert tables["tool_metrics"]["getWeather"]["hits"] == 2 and "getWeather-city" in tables["param_metrics"]
    indicator = json.loads((pytester.path / "out" / "accuracy_f1.json").read_text())
    assert indicator == {"indicator": "accuracy_f1", "precision": 4 / 5, "recall": 4 / 6, "f1": metrics["f1"],
                         "samples": 5}
