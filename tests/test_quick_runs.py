"""Quick runs: --llm-limit N and --llm-sample N|P% --llm-seed S take part of each suite, the same part in
every process, and every gate says it judged a sample."""

from __future__ import annotations

import pytest

import harness.generation  # noqa: F401  (loaded once here: pytester's in-process runs drop what they import)
import harness.report  # noqa: F401
import harness.testing.scripted  # noqa: F401
from harness.selection import Selection, parse_selection
from tests.conftest import load_report, run_inline, write_suite


def cases(n: int) -> list[dict[str, str]]:
    return [{"id": f"c{i:02d}", "input": f"q{i}\nANSWER: a", "target": "a"} for i in range(n)]


def two_suites(pytester: pytest.Pytester) -> None:
    write_suite(pytester.path / "evals", "big", cases(40), gates=["accuracy >= 0.5"])
    folder = write_suite(pytester.path / "evals", "split", cases(6), dataset="one.jsonl")
    # a suite of two files: the limit counts across them, in data order
    (folder / "suite.yaml").write_text("name: split\ndataset: [one.jsonl, two.jsonl]\napi: chat\n", encoding="utf-8")
    (folder / "two.jsonl").write_text("".join(
        f'{{"id": "d{i}", "input": "r{i}\\nANSWER: a", "target": "a"}}\n' for i in range(6)), encoding="utf-8")


def ran(report: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for case in report["cases"]:
        out.setdefault(case["suite"], []).append(case["id"])
    return out


@pytest.mark.parametrize("workers", ["0", "2"])
def test_limit_runs_the_first_n_cases_of_each_suite(pytester, workers):
    two_suites(pytester)
    result = run_inline(pytester, "-n", workers, "evals", "--llm-limit", "5")
    result.assert_outcomes(passed=5 + 5 + 1)  # the cases, and big's gate
    report = load_report(pytester)
    assert ran(report) == {"big": [f"c{i:02d}" for i in range(5)], "split": ["c00", "c01", "c02", "c03", "c04"]}
    gate = report["suites"][0]["gates"][0] if report["suites"][0]["name"] == "big" else report["suites"][1]["gates"][0]
    assert gate["status"] == "passed" and gate["reason"].endswith("judged the first 5 of 40 cases (--llm-limit 5)")
    assert report["run"]["selection"]["suites"] == {"big": {"cases": 5, "of": 40}, "split": {"cases": 5, "of": 12}}
    result.stdout.fnmatch_lines(["*quick run (--llm-limit 5): big 5 of 40, split 5 of 12*"])


def test_a_limit_above_a_suites_size_keeps_it_whole_and_says_nothing(pytester):
    write_suite(pytester.path / "evals", "small", cases(3), gates=["accuracy >= 0.5"])
    run_inline(pytester, "evals", "--llm-limit", "10").assert_outcomes(passed=4)
    gate = load_report(pytester)["suites"][0]["gates"][0]
    assert "judged" not in gate["reason"]


def test_a_sample_is_seeded_the_same_in_every_process_and_differs_by_seed(pytester):
    two_suites(pytester)
    drawn = {}
    for workers, seed in (("0", "7"), ("2", "7"), ("0", "8")):
        run_inline(pytester, "-n", workers, "evals", "--llm-sample", "25%", "--llm-seed", seed).assert_outcomes(
            passed=10 + 3 + 1)
        drawn[(workers, seed)] = ran(load_report(pytester))
    assert drawn[("0", "7")] == drawn[("2", "7")]  # xdist workers and the controller draw the same cases
    assert drawn[("0", "7")] != drawn[("0", "8")]
    assert len(drawn[("0", "7")]["big"]) == 10 and len(drawn[("0", "7")]["split"]) == 3  # ceil(25% of 12)
    gate = next(s for s in load_report(pytester)["suites"] if s["name"] == "big")["gates"][0]
    assert gate["reason"].endswith("judged a sample of 10 of 40 cases (--llm-sample 25% --llm-seed 8)")


def test_a_failed_gate_on_a_sample_says_so(pytester):
    rows = cases(10) + [{"id": f"w{i}", "input": f"w{i}\nANSWER: b", "target": "a"} for i in range(10)]
    write_suite(pytester.path / "evals", "half", rows, gates=["accuracy >= 0.9"], **{"pass": "record"})
    result = run_inline(pytester, "evals", "--llm-limit", "12")
    result.assert_outcomes(passed=12, failed=1)
    result.stdout.fnmatch_lines(["*accuracy = 0.8333, needs >= 0.9; judged the first 12 of 20 cases (--llm-limit 12)*"])


@pytest.mark.parametrize("args, message", [
    (["--llm-limit", "5", "--llm-sample", "3"], "give one of them"),
    (["--llm-limit", "0"], "--llm-limit takes a number of cases >= 1"),
    (["--llm-sample", "150%"], "at most 100%"),
    (["--llm-sample", "lots"], "a share such as 10%"),
    (["--llm-sample", "3", "--llm-seed", "x"], "--llm-seed takes a whole number"),
])
def test_bad_quick_run_options_are_usage_errors(pytester, args, message):
    write_suite(pytester.path / "evals", "s", cases(3))
    result = run_inline(pytester, "evals", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_selection_choices():
    keys = list(range(100))
    assert Selection(limit=3).choose(keys, "s") == {0, 1, 2}
    assert Selection().choose(keys, "s") == set(keys)
    sample = Selection(sample=10, seed=1)
    assert sample.choose(keys, "s") == sample.choose(keys, "s") and len(sample.choose(keys, "s")) == 10
    assert sample.choose(keys, "s") != sample.choose(keys, "t")  # each suite its own draw
    assert Selection(share=0.015).choose(keys, "s").__len__() == 2  # rounded up: never an empty suite
    assert parse_selection(None, "10%", None) == Selection(share=0.1, seed=0)
    assert Selection(limit=5).note(5, 5) is None and Selection(limit=5).note(5, 9) == \
        "the first 5 of 9 cases (--llm-limit 5)"
