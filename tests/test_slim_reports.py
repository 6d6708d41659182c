"""The controller slims the case items' test reports it keeps (harness/slim_reports.py): what pytest
shows and writes stays the same, with and without xdist."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from tests.conftest import answer_cases, outcome, run_inline, write_suite

CASES = answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome"), ("c3", "Oslo", "Bern")])

# what the terminal reporter holds at the end, as seen by a plugin's terminal summary
STATS_PROBE = """
import json

def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput"):
        return
    kept = {key: [[rep.nodeid, getattr(rep, "when", None), dict(getattr(rep, "keywords", {})), type(rep).__name__,
                   list(rep.location), rep.duration >= 0] for rep in reports]
            for key, reports in terminalreporter.stats.items() if key in ("", "passed", "failed")}
    with open("stats.json", "w") as out:
        json.dump(kept, out)
"""


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


def test_slimmed_reports_keep_summary_junitxml_and_last_failed(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy >= 0.5"])
    pytester.makeconftest(STATS_PROBE)
    result = run_inline(pytester, "-n", workers, "evals", "-rA", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=3, failed=1)  # 2 cases + the gate pass, c3 fails
    assert [outcome(result, f"cases.jsonl::{case}") for case in ("c1", "c2", "c3")] == ["PASSED", "PASSED", "FAILED"]
    assert "reason:    'Oslo' != 'Bern'" in result.stdout.str()  # the failure section, from the kept call report

    stats = json.loads((pytester.path / "stats.json").read_text())
    # the case items' passed setup and teardown reports are not kept; the gate's are, whole
    assert [(nodeid.rsplit("::", 1)[1], when) for nodeid, when, *_ in stats.get("", [])] == [
        ("gate[accuracy >= 0.5]", "setup"), ("gate[accuracy >= 0.5]", "teardown")]
    assert all(keywords for _, _, keywords, *_ in stats[""])
    # the case items' call reports are kept without their keyword names; the gate's keep them
    calls = {nodeid.rsplit("::", 1)[1]: keywords for key in ("passed", "failed") for nodeid, when, keywords, *_ in stats[key]}
    assert calls["c1"] == calls["c2"] == calls["c3"] == {}
    assert "llm_gate" in calls["gate[accuracy >= 0.5]"]
    # a passed case's call report is kept compact (five values), with the same node id, head line and duration;
    # the failed case's (its longrepr is shown) and the gate's stay whole
    kinds = {row[0].rsplit("::", 1)[1]: row[3:] for key in ("passed", "failed") for row in stats[key]}
    # its location (the dataset, the case's line counted from 0, suite::case) is made again from the plan's case
    assert kinds["c1"] == ["CompactReport", ["evals/geo/cases.jsonl", 0, "geo::c1"], True]
    assert kinds["c2"] == ["CompactReport", ["evals/geo/cases.jsonl", 1, "geo::c2"], True]
    assert kinds["c3"][0] == kinds["gate[accuracy >= 0.5]"][0] == "TestReport"
    assert "PASSED evals/geo/cases.jsonl::c1" in result.stdout.str()  # -rA's line, from the compact report

    # junitxml saw every report whole, as it arrived
    cases = {case.get("name"): case for case in ET.parse(pytester.path / "junit.xml").getroot().iter("testcase")}
    assert sorted(cases) == ["c1", "c2", "c3", "gate[accuracy >= 0.5]"]
    assert cases["c3"].find("failure") is not None and "'Oslo' != 'Bern'" in cases["c3"].find("failure").get("message")
    assert all(cases[name].find("failure") is None for name in ("c1", "c2", "gate[accuracy >= 0.5]"))
    assert {case.get("classname") for case in cases.values()} == {"evals.geo.cases.jsonl", "evals.geo.suite.yaml"}

    # the --lf cache recorded the failed case
    rerun = run_inline(pytester, "-n", workers, "evals", "--lf", "-rA")
    rerun.assert_outcomes(failed=1)
    assert outcome(rerun, "cases.jsonl::c3") == "FAILED"


def test_durations_keep_setup_and_teardown_reports(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy >= 0.5"])
    pytester.makeconftest(STATS_PROBE)
    result = run_inline(pytester, "-n", workers, "evals", "--durations=0", "--durations-min=0")
    result.assert_outcomes(passed=3, failed=1)
    stats = json.loads((pytester.path / "stats.json").read_text())
    # --durations lists every kept report: none is dropped
    assert sorted(when for _, when, *_ in stats[""]) == ["setup"] * 4 + ["teardown"] * 4
    assert "setup" in result.stdout.str() and "teardown" in result.stdout.str()
