"""Paired comparison end to end: two models of a run, a saved baseline, comparison gates, bad input.

pytest runs in this process on the scripted engine; ``stub-b`` answers some cases wrongly
(its ``replies`` option), so the run has a known regression."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from harness.comparison.compare import PairComparison
from harness.comparison.pairing import Arm, pair_cases
from harness.comparison.runner import Comparisons
from harness.gates import parse_gate
from harness.results import CaseResult
from tests.conftest import answer_cases, load_report, run_inline, write_suite

N = 40
CASES = answer_cases([(f"c{i:02d}", f"A{i}", f"A{i}") for i in range(N)])
WRONG = {f"question c{i:02d}\n": "wrong" for i in range(0, N, 8)}  # 5 of 40 cases answered wrongly by stub-b


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


def models(pytester: pytest.Pytester, **replies: dict[str, str]) -> None:
    """models.yaml: stub (right) ; models2.yaml: stub and stub-b ; any extra name -> a models file of its own."""
    right = {"name": "stub", "engine": "scripted", "options": {}}
    worse = {"name": "stub-b", "engine": "scripted", "options": {"replies": WRONG}}
    (pytester.path / "models.yaml").write_text(yaml.safe_dump([right]), encoding="utf-8")
    (pytester.path / "models2.yaml").write_text(yaml.safe_dump([right, worse]), encoding="utf-8")
    (pytester.path / "worse.yaml").write_text(yaml.safe_dump([worse]), encoding="utf-8")
    for name, table in replies.items():
        spec = {"name": name, "engine": "scripted", "options": {"replies": table}}
        (pytester.path / f"{name}.yaml").write_text(yaml.safe_dump([spec]), encoding="utf-8")


def suite(pytester: pytest.Pytester, gates: list[str], cases: list[dict] = CASES, **extra) -> None:
    write_suite(pytester.path / "evals", "geo", cases, gates=gates, **{"pass": "record", **extra})


def test_two_models_get_a_paired_table_and_comparison_gates(pytester, workers):
    models(pytester)
    suite(pytester, ["accuracy >= 0.5", "delta(accuracy) >= -0.02", "regressed_cases == 0",
                     "mcnemar_p(accuracy) >= 0.05"])
    listed = run_inline(pytester, "evals", "--co", "-q", models="models2.yaml")
    gates = [line for line in listed.outlines if "::gate[" in line]
    # comparison gates judge the candidate; the reference model only gets the suite's own gates
    assert gates == ["evals/geo/suite.yaml::gate[accuracy >= 0.5][stub]",
                     "evals/geo/suite.yaml::gate[accuracy >= 0.5][stub-b]",
                     "evals/geo/suite.yaml::gate[delta(accuracy) >= -0.02][stub-b]",
                     "evals/geo/suite.yaml::gate[regressed_cases == 0][stub-b]",
                     "evals/geo/suite.yaml::gate[mcnemar_p(accuracy) >= 0.05][stub-b]"]
    result = run_inline(pytester, "evals", "-n", workers, models="models2.yaml")
    result.assert_outcomes(passed=2 * N + 3, failed=2)  # record-only cases pass; gates judge
    result.stdout.fnmatch_lines(["*delta(accuracy) = -0.125 [[]*judged on its lower bound*needs >= -0.02*"])
    result.stdout.fnmatch_lines(["*regressed_cases = 5, needs == 0*"])
    result.stdout.fnmatch_lines(["*llm-harness comparison*", "geo: stub-b vs stub, 40 paired",
                                 "*accuracy*1*0.875*-0.125 [[]*", "*McNemar exact p = 0.062 on 5 discordant*"])
    block = load_report(pytester)["comparison"]
    assert block["reference"]["kind"] == "model" and block["reference"]["name"] == "stub"
    (pair,) = block["pairs"]
    assert (pair["reference"], pair["candidate"], pair["matched"]) == ("stub", "stub-b", N)
    row = next(r for r in pair["rows"] if r["metric"] == "accuracy")
    assert row["reference"] == 1.0 and row["candidate"] == pytest.approx(35 / 40)
    assert row["delta"] == pytest.approx(-5 / 40) and row["lower"] < row["delta"] < row["upper"] <= 0
    assert (row["improved"], row["regressed"], row["unchanged"]) == (0, 5, 35)
    assert row["discordant"] == 5 and row["mcnemar_p"] == pytest.approx(0.0625)  # 2 * 0.5**5
    assert row["warning"].startswith("5 discordant pair(s) (fewer than 10): too few to conclude")  # said, not hidden
    result.stdout.fnmatch_lines(["*warning: accuracy: 5 discordant pair(s)*minimum detectable difference*"])
    # exploratory rows (not the main metric, named by no gate) are outside the Holm family and warn nothing
    score = next(r for r in pair["rows"] if r["metric"] == "score")
    assert score["family"] is False and score["p_holm"] is None and score["warning"] is None
    assert {d["id"] for d in pair["disagreements"]} == {f"c{i:02d}" for i in range(0, N, 8)}
    assert block["family"]["size"] == 1  # the main metric only (the gates name it too)


def test_reference_model_can_be_named(pytester):
    models(pytester)
    suite(pytester, ["delta(accuracy) >= -0.02"])
    result = run_inline(pytester, "evals", "--llm-reference", "stub-b", models="models2.yaml")
    result.assert_outcomes(passed=2 * N + 1)  # stub against stub-b: better, the gate passes
    (pair,) = load_report(pytester)["comparison"]["pairs"]
    assert (pair["reference"], pair["candidate"]) == ("stub-b", "stub")
    bad = run_inline(pytester, "evals", "--llm-reference", "nope", models="models2.yaml")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--llm-reference 'nope' is not a model of this run (stub, stub-b)*"])


def test_a_saved_baseline_fails_a_degraded_run_and_passes_the_same_model(pytester, workers):
    models(pytester)
    suite(pytester, ["delta(accuracy) >= -0.02", "accuracy >= 0.5"])
    saved = run_inline(pytester, "evals", "--llm-baseline-save", "base.json", "--llm-baseline-reason",
                       "release 1.0", "-n", workers)
    # without a second model or a baseline, a comparison gate cannot be judged: it says how to fix it
    saved.assert_outcomes(passed=N + 1, failed=1)
    saved.stdout.fnmatch_lines(["*evals/geo/suite.yaml: gate 'delta(accuracy) >= -0.02' compares two arms: run a "
                                "second model*or against a saved run (--llm-baseline PATH)*",
                                "baseline saved: *base.json"])
    document = json.loads((pytester.path / "base.json").read_text())
    assert document["reason"] == "release 1.0" and len(document["cases"]) == N
    assert {"id", "input_sha256", "score", "passed", "latency_ms"} <= document["cases"][0].keys()
    assert document["suites"][0]["datasets"][0]["rows"] == N and document["suites"][0]["path"] == "evals/geo/suite.yaml"
    assert {"git_commit", "git_dirty", "environment"} <= document.keys()

    same = run_inline(pytester, "evals", "--llm-baseline", "base.json", "-n", workers)
    same.assert_outcomes(passed=N + 2)
    (pair,) = load_report(pytester)["comparison"]["pairs"]
    assert pair["reference"] == "baseline:stub" and pair["matched"] == N

    worse = run_inline(pytester, "evals", "--llm-baseline", "base.json", "-n", workers, models="worse.yaml")
    worse.assert_outcomes(passed=N + 1, failed=1)
    worse.stdout.fnmatch_lines(["*delta(accuracy) = -0.125*needs >= -0.02 (stub-b - baseline:stub, 40 paired)*"])
    block = load_report(pytester)["comparison"]
    assert block["reference"]["kind"] == "baseline" and block["reference"]["reason"] == "release 1.0"


def test_a_baseline_of_other_data_or_configuration_is_refused_by_name(pytester):
    models(pytester)
    suite(pytester, ["delta(accuracy) >= -0.02"])
    run_inline(pytester, "evals", "--llm-baseline-save", "base.json", "--llm-baseline-reason", "r")
    suite(pytester, ["delta(accuracy) >= -0.02"], prompt={"template": "Q: {{ input }}"})
    changed = run_inline(pytester, "evals", "--llm-baseline", "base.json")
    changed.assert_outcomes(passed=N, failed=1)
    changed.stdout.fnmatch_lines(["*comparison refused: baseline base.json was made with different data or "
                                  "configuration for suite 'geo': prompt differs*"])
    suite(pytester, ["delta(accuracy) >= -0.02"], cases=CASES[:-1])
    fewer = run_inline(pytester, "evals", "--llm-baseline", "base.json")
    fewer.stdout.fnmatch_lines(["*comparison refused:*data file cases.jsonl differs*rows 40 -> 39*"])
    write_suite(pytester.path / "evals", "other", CASES[:3], gates=["delta(accuracy) >= 0"], **{"pass": "record"})
    other = run_inline(pytester, "evals/other", "--llm-baseline", "base.json")
    other.stdout.fnmatch_lines(["*comparison refused: baseline base.json has no suite 'other' (it holds: geo)*"])


@pytest.mark.parametrize("content, message", [
    ("{not json", "*baseline *base.json is not valid JSON (truncated or corrupt?)*"),
    ('{"schema": "pytest-llm-harness/report", "version": 1}', "*base.json is not a baseline file*"),
    ('{"schema": "pytest-llm-harness/baseline", "version": 1, "suites": [], "cases": [{"id": 1}]}',
     "*base.json: case row 0 lacks suite/id/model/score*"),
])
def test_a_corrupt_or_foreign_baseline_is_a_usage_error_naming_the_file(pytester, content, message):
    models(pytester)
    suite(pytester, ["delta(accuracy) >= 0"])
    (pytester.path / "base.json").write_text(content, encoding="utf-8")
    result = run_inline(pytester, "evals", "--llm-baseline", "base.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_truncated_baseline_and_missing_reason(pytester):
    models(pytester)
    suite(pytester, ["accuracy >= 0"])
    run_inline(pytester, "evals", "--llm-baseline-save", "base.json", "--llm-baseline-reason", "r")
    text = (pytester.path / "base.json").read_text()
    (pytester.path / "cut.json").write_text(text[: len(text) // 2])
    cut = run_inline(pytester, "evals", "--llm-baseline", "cut.json")
    assert cut.ret == pytest.ExitCode.USAGE_ERROR
    cut.stderr.fnmatch_lines(["*cut.json is not valid JSON (truncated or corrupt?)*"])
    unexplained = run_inline(pytester, "evals", "--llm-baseline-save", "b2.json")
    assert unexplained.ret == pytest.ExitCode.USAGE_ERROR
    unexplained.stderr.fnmatch_lines(["*--llm-baseline-save needs --llm-baseline-reason*"])
    assert not (pytester.path / "b2.json").exists()


def test_unknown_metric_in_a_comparison_gate_names_the_gate(pytester):
    models(pytester)
    suite(pytester, ["delta(acurracy) >= 0"])
    result = run_inline(pytester, "evals", models="models2.yaml")
    result.assert_outcomes(passed=2 * N, failed=1)
    result.stdout.fnmatch_lines(["*evals/geo/suite.yaml: gate 'delta(acurracy) >= 0': unknown metric 'acurracy'; "
                                 "this suite compares: *accuracy*"])


def test_cases_on_one_side_only_are_listed_not_dropped(pytester):
    models(pytester)
    suite(pytester, [])
    # stub-b runs only three cases: the others are named in the comparison
    result = run_inline(pytester, "evals", "-k", "stub] or c01 or c02 or c03", models="models2.yaml")
    assert result.ret == 0
    (pair,) = load_report(pytester)["comparison"]["pairs"]
    assert pair["matched"] == 3 and len(pair["only_reference"]) == N - 3
    assert any(w.startswith(f"{N - 3} case(s) only on stub, left out of the comparison: c00") for w in pair["warnings"])
    assert any("only 3 paired cases (fewer than 30)" in w for w in pair["warnings"])


def test_clusters_are_resampled_together(pytester):
    models(pytester)
    clustered = [{**case, "doc": f"d{i // 10}"} for i, case in enumerate(CASES)]
    suite(pytester, ["delta(accuracy) >= -1"], cases=clustered, fields={"cluster": "doc"})
    run_inline(pytester, "evals", models="models2.yaml")
    (pair,) = load_report(pytester)["comparison"]["pairs"]
    assert pair["clusters"] == 4
    assert load_report(pytester)["cases"][0]["cluster"] == "d0"


def test_comparison_cli_makes_one_report_from_saved_runs(pytester):
    models(pytester)
    suite(pytester, ["accuracy >= 0"])
    run_inline(pytester, "evals", "--llm-baseline-save", "runs/stub.json", "--llm-baseline-reason", "matrix stub")
    run_inline(pytester, "evals", "--llm-baseline-save", "runs/stub-b.json", "--llm-baseline-reason", "matrix b",
               models="worse.yaml")
    done = subprocess.run([sys.executable, "-m", "harness.comparison", "report", "runs/stub.json", "runs/stub-b.json",
                           "--out", "cmp"], cwd=pytester.path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "geo: stub-b vs stub, 40 paired" in done.stdout
    block = json.loads((pytester.path / "cmp" / "comparison.json").read_text())
    row = next(r for r in block["pairs"][0]["rows"] if r["metric"] == "accuracy")
    assert row["delta"] == pytest.approx(-0.125) and row["regressed"] == 5
    broken = subprocess.run([sys.executable, "-m", "harness.comparison", "report", "runs/stub.json", "nope.json"],
                            cwd=pytester.path, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 2 and "cannot read baseline nope.json" in broken.stderr


def test_last_failed_comparison_gate_reruns_on_both_models(pytester, workers):
    models(pytester)
    suite(pytester, ["delta(accuracy) >= -0.02"])
    first = run_inline(pytester, "evals", models="models2.yaml")
    first.assert_outcomes(passed=2 * N, failed=1)
    # only the gate is selected: the controller generates both models' cases for it (from the cache)
    rerun = run_inline(pytester, "evals", "--lf", "-n", workers, models="models2.yaml")
    rerun.assert_outcomes(failed=1)
    rerun.stdout.fnmatch_lines(["*delta(accuracy) = -0.125*needs >= -0.02 (stub-b - stub, 40 paired)*"])


def test_latency_is_gated_relative_to_the_baseline_and_skipped_when_cached(pytester):
    models(pytester)
    slow = [{**case, "input": case["input"] + "\nSLEEP:20"} for case in CASES[:10]]
    suite(pytester, ["latency_p99_ms <= baseline * 3", "latency_p99_ms <= baseline * 0.2"], cases=slow)
    run_inline(pytester, "evals", "--llm-cache", "off", "--llm-baseline-save", "base.json",
               "--llm-baseline-reason", "r")
    measured = run_inline(pytester, "evals", "--llm-cache", "off", "--llm-baseline", "base.json")
    # the same model twice: p99 about 20 ms on both sides, a ratio near 1
    measured.assert_outcomes(passed=10 + 1, failed=1)
    measured.stdout.fnmatch_lines(["*ratio(latency_p99_ms) = *, needs <= 0.2 (stub - baseline:stub, 10 paired)*"])
    run_inline(pytester, "evals")  # fills the response cache
    cached = run_inline(pytester, "evals", "--llm-baseline", "base.json")
    cached.assert_outcomes(passed=10, skipped=2)
    gates = load_report(pytester)["suites"][0]["gates"]
    assert all(g["status"] == "skipped" and "not measured on both sides" in g["reason"] for g in gates)


def test_a_different_environment_is_a_warning_not_a_refusal(pytester):
    models(pytester)
    suite(pytester, ["delta(accuracy) >= -0.02"])
    run_inline(pytester, "evals", "--llm-baseline-save", "base.json", "--llm-baseline-reason", "r")
    document = json.loads((pytester.path / "base.json").read_text())
    document["environment"]["packages"]["numpy"] = "0.0.1"
    (pytester.path / "base.json").write_text(json.dumps(document))
    result = run_inline(pytester, "evals", "--llm-baseline", "base.json")
    result.assert_outcomes(passed=N + 1)
    (pair,) = load_report(pytester)["comparison"]["pairs"]
    assert any(w.startswith("environment differs from the baseline: numpy 0.0.1 -> ") for w in pair["warnings"])


def test_two_models_on_the_command_line_print_the_paired_table(pytester, stub_url):
    # the command, against a real server process on 127.0.0.1 serving both names
    suite(pytester, ["delta(accuracy) >= -0.02"], cases=CASES[:12])
    result = pytester.runpytest_inprocess("evals", "--llm-model", "stub", "--llm-model", "stub-b", "--llm-base-url",
                                          stub_url, "--llm-report-dir", "out", "--llm-cache", "off",
                                          "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2 * 12 + 1)
    result.stdout.fnmatch_lines(["*llm-harness comparison*", "geo: stub-b vs stub, 12 paired",
                                 "*accuracy*1*1*0 [[]0, 0[]]*",
                                 "*only 12 paired cases (fewer than 30)*"])


def test_pairing_names_every_case_it_leaves_out():
    def arm(name, rows):
        results = [CaseResult("geo", i, name, f"n::{i}", "d", 0, None, None, score=1.0) for i, _ in rows]
        return Arm(name, results, [h for _, h in rows])

    pairing = pair_cases(arm("a", [("c1", "h1"), ("c2", "h2"), ("c3", "h3"), ("c4", "h4"), ("c4", "h4")]),
                         arm("b", [("c1", "h1"), ("c2", "changed"), ("c5", "h5"), ("c4", "h4")]))
    assert [r.id for r in pairing.reference] == [r.id for r in pairing.candidate] == ["c1"]
    assert pairing.changed_input == ["c2"] and pairing.only_reference == ["c3"]
    assert pairing.only_candidate == ["c5"] and pairing.duplicates == ["c4"] and pairing.unmatched == 4


@pytest.mark.parametrize("expr, status", [
    ("delta(accuracy) >= -0.1", "passed"),     # lower bound -0.05 clears -0.1
    ("delta(accuracy) >= -0.02", "failed"),    # the point -0.01 clears it, the lower bound does not
    ("delta(accuracy) <= 0.01", "failed"),     # judged on the upper bound 0.03
    ("delta(accuracy).lower > 0", "failed"),   # superiority
    ("delta(accuracy) == -0.01", "passed"),    # the point
    ("latency_p99_ms <= baseline * 1.25", "skipped"),  # not measured on one side
])
def test_comparison_gates_judge_the_bound_their_operator_names(expr, status):
    pair = PairComparison("geo", "a", "b", figures={
        "delta(accuracy)": -0.01, "delta(accuracy).lower": -0.05, "delta(accuracy).upper": 0.03,
        "ratio(latency_p99_ms)": None})
    verdict = Comparisons(["a", "b"]).judge(parse_gate(expr), pair, "evals/geo/suite.yaml")
    assert verdict.status == status, verdict.reason
