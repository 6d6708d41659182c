"""Determinism audit (--llm-audit K): K cases per suite re-sent with the cache off, compared with the
run, and a gate that flips on re-sending failed as unstable. pytest runs in this process on the
scripted engine, whose FLIP: directive answers a re-sent prompt differently (a nondeterministic model)."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from harness.audit import audit_run, select
from harness.engines.client import Reply
from harness.report.markdown import render_markdown
from harness.results import CaseResult, GateResult
from harness.suite import load_suite
from harness.testing.scripted import ScriptedClient, prompt_text
from tests.conftest import answer_cases, load_report, run_inline, write_suite

UNSTABLE_REASON = ("*unstable: accuracy = 0.9 in the run, 0.8 when 10 cases were re-sent with the cache off "
                   "(1 replies changed); a gate that flips on re-sending cannot gate a merge*")


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The prompts the scripted model is sent, in every run of the test (the controller sends, with -n too)."""
    prompts: list[str] = []
    original = ScriptedClient.send

    async def send(self: ScriptedClient, request: Any) -> Reply:
        prompts.append(prompt_text(request))
        return await original(self, request)

    monkeypatch.setattr(ScriptedClient, "send", send)
    return prompts


def steady(n: int = 9) -> list[dict[str, Any]]:
    """n cases the model answers the same way every time: all right but the last."""
    return answer_cases([(f"k{i}", "Paris" if i < n - 1 else "Oslo", "Paris") for i in range(n)])


def flip(case_id: str, options: str, target: str = "Paris") -> dict[str, Any]:
    return {"id": case_id, "input": f"question {case_id}\nFLIP: {options}", "target": target}


def run(pytester: pytest.Pytester, *args: str, workers: str = "0") -> pytest.RunResult:
    return run_inline(pytester, "evals", "-n", workers, *args)


def test_a_deterministic_model_changes_nothing_and_the_gates_stand(pytester, workers, sent):
    write_suite(pytester.path / "evals", "geo", steady(10), gates=["accuracy >= 0.9", "error_rate == 0"],
                **{"pass": "record"})
    result = run(pytester, "--llm-audit", "10", "--llm-cache", "off", workers=workers)
    result.assert_outcomes(passed=12)
    assert result.ret == 0
    report = load_report(pytester)
    assert report["audit"] == [{"suite": "geo", "model": "stub", "cases": 10, "replies_changed": 0,
                                "scores_changed": 0, "changed_cases": 0, "changed_ids": [], "unstable_gates": [],
                                "errors": 0, "error_ids": [], "error": None}]
    assert [g["status"] for g in report["suites"][0]["gates"]] == ["passed", "passed"]
    assert len(sent) == 20  # each case once for the run, once for the audit
    result.stdout.fnmatch_lines(["*determinism audit*", "10 case(s) of 1 suite run(s) re-sent with the cache off: "
                                 "no reply or score changed"])


def test_a_gate_that_flips_on_resending_fails_as_unstable(pytester, workers):
    # accuracy 0.9 in the run (the FLIP case answers Paris), 0.8 re-sent (Rome): right at the threshold
    write_suite(pytester.path / "evals", "geo", [*steady(9), flip("f1", "Paris|Rome")],
                gates=["accuracy >= 0.9", "error_rate == 0"], **{"pass": "record"})
    # the other way round: failed in the run, passes re-sent, and still fails, as unstable
    write_suite(pytester.path / "evals", "cap", [*steady(9), flip("f2", "Rome|Paris")],
                gates=["accuracy >= 0.9"], **{"pass": "record"})
    result = run(pytester, "--llm-audit", "50", workers=workers)
    result.assert_outcomes(passed=20 + 1, failed=2)
    assert result.ret == 1
    result.stdout.fnmatch_lines([UNSTABLE_REASON])
    report = load_report(pytester)
    audit = {entry["suite"]: entry for entry in report["audit"]}
    geo, cap = audit["geo"], audit["cap"]
    assert (geo["cases"], geo["replies_changed"], geo["scores_changed"], geo["changed_ids"]) == (10, 1, 1, ["f1"])
    assert geo["unstable_gates"] == [{"expr": "accuracy >= 0.9", "run_value": pytest.approx(0.9),
                                      "audit_value": pytest.approx(0.8), "run_status": "passed",
                                      "audit_status": "failed"}]
    assert cap["changed_ids"] == ["f2"] and cap["unstable_gates"][0]["run_status"] == "failed"
    gates = {(s["name"], g["expr"]): g for s in report["suites"] for g in s["gates"]}
    assert gates["geo", "accuracy >= 0.9"]["status"] == "failed"
    assert gates["geo", "accuracy >= 0.9"]["value"] == pytest.approx(0.9)  # the run's value, not the audit's
    assert gates["geo", "accuracy >= 0.9"]["reason"].startswith("unstable: ")
    assert gates["geo", "error_rate == 0"]["status"] == "passed"
    assert gates["cap", "accuracy >= 0.9"]["status"] == "failed"
    assert gates["cap", "accuracy >= 0.9"]["reason"].startswith("unstable: accuracy = 0.8 in the run, 0.9 ")
    # the run's own results are what the reports show: the audit's replies replace nothing
    assert {c["id"]: c["output"] for c in report["cases"]}["f1"] == "Paris"
    result.stdout.fnmatch_lines(["geo [[]stub[]]: 1 of 10 replies changed, 1 scores changed (f1); UNSTABLE gate "
                                 "accuracy >= 0.9: 0.9 in the run, 0.8 re-sent"])
    markdown = (pytester.path / "out" / "report.md").read_text(encoding="utf-8")
    assert "## Determinism audit" in markdown and "`f1`" in markdown and "`accuracy >= 0.9` (0.9 → 0.8)" in markdown


def test_k_picks_the_same_cases_whatever_the_worker_count(pytester, workers, sent):
    cases = [*steady(9), *(flip(f"f{i}", "Paris|Rome") for i in range(6))]
    write_suite(pytester.path / "evals", "geo", cases, gates=["accuracy >= 0.1"], **{"pass": "record"})
    result = run(pytester, "--llm-audit", "4", "--llm-cache", "off", workers=workers)
    result.assert_outcomes(passed=16)
    ids = sorted((c["id"] for c in cases), key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:4]
    audited = sent[len(cases):]
    assert sorted(p.splitlines()[0] for p in audited) == sorted(f"question {i}" for i in ids)
    entry = load_report(pytester)["audit"][0]
    assert entry["cases"] == 4 and entry["changed_ids"] == [i for i in [c["id"] for c in cases]
                                                             if i in ids and i.startswith("f")]


def test_audit_off_by_default_sends_no_extra_request(pytester, workers, sent):
    write_suite(pytester.path / "evals", "geo", steady(6), gates=["accuracy >= 0.5"], **{"pass": "record"})
    result = run(pytester, "--llm-cache", "off", workers=workers)
    result.assert_outcomes(passed=7)
    assert len(sent) == 6
    assert "audit" not in load_report(pytester)
    assert "determinism audit" not in result.stdout.str()
    sent.clear()
    run(pytester, "--llm-cache", "off", "--llm-audit", "0", workers=workers).assert_outcomes(passed=7)
    assert len(sent) == 6


def test_the_audit_neither_reads_nor_writes_the_response_cache(pytester, workers, sent):
    write_suite(pytester.path / "evals", "geo", [*steady(4), flip("f1", "Paris|Rome"), flip("f2", "Oslo|Rome")],
                gates=["error_rate == 0"], **{"pass": "record"})
    first = run(pytester, "--llm-audit", "10", workers=workers)
    first.assert_outcomes(passed=7)
    assert len(sent) == 12 and load_report(pytester)["audit"][0]["changed_ids"] == ["f1", "f2"]
    sent.clear()
    # a warm rerun reads only the run's own replies: the audit's (Rome) never reached the cache
    rerun = run(pytester, workers=workers)
    rerun.assert_outcomes(passed=7)
    assert sent == []
    cases = load_report(pytester)["cases"]
    assert all(c["cached"] for c in cases)
    assert {c["id"]: c["output"] for c in cases if c["id"].startswith("f")} == {"f1": "Paris", "f2": "Oslo"}
    # and the audit on a warm cache still sends its cases: it reads nothing from the cache
    audited = run(pytester, "--llm-audit", "3", workers=workers)
    audited.assert_outcomes(passed=7)
    assert len(sent) == 3


@pytest.mark.parametrize("value", ["-1", "two"])
def test_a_bad_audit_size_is_a_usage_error(pytester, value):
    write_suite(pytester.path / "evals", "geo", steady(2), gates=["accuracy >= 0.5"])
    result = run(pytester, "--llm-audit", value)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--llm-audit takes a whole number of cases >= 0*"])


def test_the_ini_key_turns_the_audit_on(pytester, sent):
    pytester.makeini("[pytest]\nllm_audit = 2\n")
    write_suite(pytester.path / "evals", "geo", steady(5), gates=["accuracy >= 0.5"], **{"pass": "record"})
    run(pytester, "--llm-cache", "off").assert_outcomes(passed=6)
    assert len(sent) == 7 and load_report(pytester)["audit"][0]["cases"] == 2


# -- units ------------------------------------------------------------------------------------------


def _result(case_id: str, output: str | None, target: str = "Paris", **fields: Any) -> CaseResult:
    score = float(output == target)
    return CaseResult("geo", case_id, "stub", f"evals/geo/cases.jsonl::{case_id}", "evals/geo/cases.jsonl", 1,
                      None, target, output=output, extracted=output, score=score, **fields)


def test_selection_takes_clean_answered_cases_by_hash_of_the_id_in_any_order():
    results = [_result(f"c{i}", "Paris") for i in range(20)]
    results += [_result("copy", "Paris", attack="typos"), _result("err", None, error="HTTP 503")]
    chosen = [r.id for r in select(results, 5, lambda nodeid: True)]
    assert sorted(chosen) == sorted(r.id for r in select(list(reversed(results)), 5, lambda nodeid: True))
    smallest = sorted((f"c{i}" for i in range(20)), key=lambda i: hashlib.sha256(i.encode()).hexdigest())[:5]
    assert chosen == [r.id for r in results if r.id in smallest]  # listed in the run's order
    assert len(select(results, 100, lambda nodeid: True)) == 20  # the copy and the error are never audited
    assert select(results, 5, lambda nodeid: False) == []  # no request to re-send


class _Broken:
    async def send(self, request: Any) -> Reply:
        raise ConnectionError("gone")


def test_failed_resends_are_left_out_and_the_verdicts_stand(tmp_path):
    suite = load_suite(write_suite(tmp_path, "geo", steady(2), gates=["accuracy >= 0.5"]) / "suite.yaml")
    results = [_result("a", "Paris"), _result("b", "Oslo")]
    gates = [GateResult("accuracy >= 0.5", "accuracy", ">=", 0.5, 0.5, "passed", "accuracy = 0.5 >= 0.5")]

    def score(original: CaseResult, reply: dict[str, Any]) -> CaseResult:
        return _result(original.id, reply["text"], error=reply["error"])

    record, judged = audit_run(suite, "stub", results, gates, 5, lambda nodeid: object(), _Broken, 4, score, None)
    assert (record.cases, record.errors, record.error_ids, record.replies_changed) == (0, 2, ["a", "b"], 0)
    assert judged == gates and record.error is None

    def no_engine() -> Any:
        raise RuntimeError("engine did not start")

    record, judged = audit_run(suite, "stub", results, gates, 5, lambda nodeid: object(), no_engine, 4, score, None)
    assert judged == gates and record.error == "audit not done: RuntimeError: engine did not start"


def test_markdown_section_escapes_names_and_ids():
    entry = {"suite": "a|b<x>", "model": "m$1", "cases": 3, "replies_changed": 1, "scores_changed": 1,
             "changed_cases": 1, "changed_ids": ["id`1|"], "errors": 0, "error_ids": [], "error": None,
             "unstable_gates": [{"expr": "accuracy >= 0.9", "run_value": 0.9, "audit_value": 0.8}]}
    markdown = render_markdown({"run": {}, "suites": [], "cases": [], "audit": [entry]})
    section = markdown.split("## Determinism audit", 1)[1].split("\n## ", 1)[0]
    assert "a\\|b&lt;x>" in section and "m\\$1" in section
    assert "``id`1|``" in section  # a code span that survives the backtick
    assert "## Determinism audit" not in render_markdown({"run": {}, "suites": [], "cases": []})
