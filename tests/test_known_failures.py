"""The known-failures ledger: listed cases run as xfail(strict=True), a fixed one fails the run
naming the ledger, unmatched entries are reported, a malformed ledger is a usage error, and the
suite's metrics and gates do not change. pytest runs in this process on the scripted engine."""

from __future__ import annotations

import textwrap

import pytest

from tests.conftest import answer_cases, load_report, run_inline, write_suite

CASES = answer_cases([("c1", "Paris", "Paris"), ("c2", "Rome", "Rome"), ("c3", "Oslo", "Bern")])
GATES = ["accuracy >= 0.5", "error_rate == 0"]
LEDGER = "known_failures.yaml"


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


def ledger(pytester: pytest.Pytester, text: str, name: str = LEDGER) -> str:
    path = pytester.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return name


def run(pytester: pytest.Pytester, *args: str, workers: str = "0", **kwargs: str) -> pytest.RunResult:
    return run_inline(pytester, "-n", workers, "evals", *args, **kwargs)


def _quality(suite: dict) -> tuple:
    """A suite's figures that depend on the replies only (timing varies from run to run)."""
    timing = ("latency", "throughput", "wall_s", "tokens_per_s", "cached", "ttft", "tpot")
    metrics = {k: v for k, v in suite["metrics"].items() if not any(t in k for t in timing)}
    return metrics, [(g["expr"], g["status"], g["value"]) for g in suite["gates"]], suite["cases"]


def test_a_failing_listed_case_is_xfailed_and_still_counts_in_the_metrics(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES)
    plain = run(pytester, workers=workers)
    plain.assert_outcomes(passed=4, failed=1)
    before = load_report(pytester)
    ledger(pytester, """
        - {suite: geo, id: c3, reason: "answers the wrong capital"}
    """)
    result = run(pytester, "--llm-known-failures", LEDGER, "-rx", workers=workers)
    result.assert_outcomes(passed=4, xfailed=1)
    assert result.ret == 0
    result.stdout.fnmatch_lines(["*XFAIL*c3*known failure (known_failures.yaml, entry 1 (line 2)): "
                                 "answers the wrong capital*"])
    after = load_report(pytester)
    # the xfailed case is scored like any other: same metrics, same gate values, same case count
    assert _quality(after["suites"][0]) == _quality(before["suites"][0])
    assert after["suites"][0]["metrics"]["accuracy"] == pytest.approx(2 / 3)
    rows = {c["id"]: c for c in after["cases"]}
    assert rows["c3"]["passed"] is False and rows["c3"]["metadata"] == {"known_failure": "answers the wrong capital"}
    assert "known_failure" not in rows["c1"]["metadata"]


def test_a_listed_case_that_fails_a_gate_still_fails_it(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=["accuracy >= 0.9"])
    ledger(pytester, "- {suite: geo, id: c3, reason: known}\n")
    result = run(pytester, "--llm-known-failures", LEDGER, workers=workers)
    result.assert_outcomes(passed=2, xfailed=1, failed=1)
    result.stdout.fnmatch_lines(["*accuracy = 0.6667, needs >= 0.9*"])


def test_a_listed_case_that_passes_is_a_strict_xpass_naming_the_ledger(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES)
    ledger(pytester, """
        - {suite: geo, id: c3, reason: "answers the wrong capital"}
        - {suite: geo, id: c1, reason: "said Lyon once"}
    """)
    result = run(pytester, "--llm-known-failures", LEDGER, workers=workers)
    assert result.ret == 1
    result.assert_outcomes(passed=3, xfailed=1, failed=1)
    result.stdout.fnmatch_lines(["*[[]XPASS(strict)[]] geo/c1 passes now: it is fixed, remove it from the "
                                 "known-failures ledger known_failures.yaml (entry 2 (line 3): said Lyon once)*"])
    # the passing case counts as passed in its suite: the gates are unchanged
    assert load_report(pytester)["suites"][0]["metrics"]["accuracy"] == pytest.approx(2 / 3)


def test_entries_matching_no_collected_case_are_reported(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES)
    write_suite(pytester.path / "evals", "notes", CASES, gates=["error_rate == 0"], **{"pass": "record"})
    ledger(pytester, """
        - {suite: geo, id: c3, reason: known}
        - {suite: geo, id: gone, reason: removed from the data}
        - {suite: nosuch, id: c1, reason: typo in the suite}
        - {suite: notes, id: c3, reason: record-only}
    """)
    result = run(pytester, "--llm-known-failures", LEDGER, workers=workers)
    assert result.ret == 0
    result.assert_outcomes(passed=8, xfailed=1)
    # once, whatever the number of workers (each collects the same items); other warnings (a CI
    # environment's own) are not this test's business
    assert sum("KnownFailuresWarning" in line for line in result.outlines) == 1
    result.stdout.fnmatch_lines([
        "*KnownFailuresWarning: known-failures ledger known_failures.yaml: 3 entries matched no case of this run: "
        "geo/gone (entry 2 (line 3)): suite 'geo' has no case 'gone'; "
        "nosuch/c1 (entry 3 (line 4)): no suite 'nosuch' was collected; "
        "notes/c3 (entry 4 (line 5)): suite 'notes' only records (pass: record), its cases never fail*"])


def test_a_model_entry_applies_to_that_model_only(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES)
    ledger(pytester, "- {suite: geo, id: c3, reason: only b, model: stub-b}\n")
    result = run(pytester, "--llm-known-failures", LEDGER, workers=workers, models="models2.yaml")
    result.assert_outcomes(passed=8, failed=1, xfailed=1)
    result.stdout.fnmatch_lines(["FAILED evals/geo/cases.jsonl::c3[[]stub[]]*"])


def test_a_csv_ledger_named_by_the_ini_is_relative_to_the_rootdir(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES)
    pytester.makeini("[pytest]\nllm_known_failures = ci/known.csv\n")
    ledger(pytester, 'suite,id,reason,model\ngeo,c3,"wrong, as ever",\n', name="ci/known.csv")
    result = run(pytester, workers=workers)
    result.assert_outcomes(passed=4, xfailed=1)
    assert result.ret == 0


@pytest.mark.parametrize(("text", "problem"), [
    ("{suite: geo, id: c3, reason: x}\n", "must be a list of entries"),
    ("- {suite: geo, id: c3, reason: x}\n- {suite: geo, id: c1}\n", "entry 2 (line 2): missing 'reason'"),
    ("- {suite: geo, id: c3, reason: x, modle: stub}\n", "entry 1 (line 1): unknown key 'modle'"),
    ("- just a string\n", "entry 1 (line 1): must be a mapping"),
    ("- {suite: geo, id: c3, reason: [a]}\n", "entry 1 (line 1): reason must be a string"),
    ("- {suite: geo, id: c3, reason: x}\n- {suite: geo, id: c3, reason: y, model: stub}\n",
     "entry 2 (line 2): geo/c3 [stub] is already listed by entry 1 (line 1)"),
    ("- {suite: geo, id: c3, reason: x\n", "not valid YAML"),
], ids=["mapping", "missing-key", "unknown-key", "not-a-mapping", "bad-type", "duplicate", "bad-yaml"])
def test_a_malformed_ledger_is_a_usage_error_naming_the_file_and_entry(pytester, workers, text, problem):
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES)
    ledger(pytester, text)
    result = run(pytester, "--llm-known-failures", LEDGER, workers=workers)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"known-failures ledger {LEDGER}" in result.stderr.str()
    assert problem in result.stderr.str()


def test_a_missing_ledger_is_a_usage_error(pytester, workers):
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES)
    result = run(pytester, "--llm-known-failures", "nope.yaml", workers=workers)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*known-failures ledger nope.yaml: no such file*"])


def test_an_empty_ledger_changes_nothing(pytester):
    write_suite(pytester.path / "evals", "geo", CASES, gates=GATES)
    ledger(pytester, "# nothing known to fail\n")
    run(pytester, "--llm-known-failures", LEDGER).assert_outcomes(passed=4, failed=1)
