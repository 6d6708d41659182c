"""Pairwise judging (scorer ``judge_pairwise``) end to end, and ``api: completion`` judges: pytest on
scripted engines (no server, no mocks), in this process; in a subprocess with a timeout where a run
could hang.

How the models are steered: every model of the run is scripted and answers from its own ``replies``
mapping (a prompt substring -> the reply), so ``base`` and ``tuned`` give different answers to the
same case. The judge's needles are written against the built-in pairwise rubric, which shows
"[Answer A]\\n<text>\\n[End of answer A]": a needle "[Answer A]\\nBASE_..." matches only the first
order (the reference shown as A) and "[Answer A]\\nTUNED_..." only the swapped order. The scripted
engine takes the first needle that matches, in the mapping's order, and reads ``FAIL:`` directives
before its ``replies``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# Loaded here, before any pytester run, as tests/conftest.py does for others: pytester drops the
# modules a run imports first, so each in-process run would import these again (seconds each).
import hypothesis  # noqa: F401  (its pytest plugin imports it at every run's end)
import openpyxl  # noqa: F401
import pytest
import yaml

import harness.generation  # noqa: F401
import harness.judging.agreement  # noqa: F401
import harness.judging.pairwise  # noqa: F401
import harness.judging.quality  # noqa: F401
import harness.judging.stage  # noqa: F401
import harness.report  # noqa: F401
import harness.testing.scripted  # noqa: F401
from harness.judging.pairwise import parse_pairwise
from harness.judging.rubric import system_message
from tests.conftest import outcome, load_report, run_inline, write_suite

BASE, TUNED, JUDGE = "base", "tuned", "judge"
PAIRWISE = {"name": "judge_pairwise", "model": JUDGE}
REFERENCE_SKIP = "the reference of a pairwise judge"
NO_REFERENCE_ANSWER = ("pairwise judge: no answer of the reference model 'base' to this case (not selected with "
                       "-k/-m, or generation stopped): nothing to compare")


@pytest.fixture(params=["0", "2"], ids=["n0", "n2"])
def workers(request: pytest.FixtureRequest) -> str:
    return request.param


# -- helpers -------------------------------------------------------------------------------------

def write_models(pytester: pytest.Pytester, answers: dict[str, dict[str, str]], judge: dict[str, str]) -> None:
    """models.yaml: one scripted model per entry of ``answers`` (name -> its replies mapping), in that
    order (the first is the reference), and the scripted judge ``judge`` (role: judge)."""
    entries: list[dict[str, Any]] = [{"name": name, "engine": "scripted", "options": {"replies": replies}}
                                     for name, replies in answers.items()]
    entries.append({"name": JUDGE, "engine": "scripted", "role": "judge", "options": {"replies": judge}})
    (pytester.path / "models.yaml").write_text(yaml.safe_dump(entries, allow_unicode=True, sort_keys=False),
                                               encoding="utf-8")


def answer_of(model: str, case: str) -> str:
    """The distinctive answer of ``model`` to case ``case``."""
    return f"{model.upper()}_ANSWER_{case.upper()}"


def question(case: str) -> str:
    return f"QUESTION_{case.upper()}_NEEDLE"


def cases(*ids: str, **extra: dict[str, Any]) -> list[dict[str, Any]]:
    """One case per id, whose input is its question needle (``extra[id]``: more fields of that case)."""
    return [{"id": i, "input": f"Please answer {question(i)}", "target": None, **extra.get(i, {})} for i in ids]


def model_replies(model: str, *ids: str) -> dict[str, str]:
    return {question(i): answer_of(model, i) for i in ids}


def order(first: str, case: str) -> str:
    """A judge needle matching the order of case ``case`` that shows ``first``'s answer as A."""
    return f"[Answer A]\n{answer_of(first, case)}\n[End of answer A]"


def verdict(label: str) -> str:
    return f"One answer is the better one, or neither.\nVERDICT: {label}"


def judge_prefers(case: str, winner: str, reference: str = BASE, compared: str = TUNED) -> dict[str, str]:
    """Judge replies preferring ``winner``'s answer in both orders of case ``case``."""
    loser = reference if winner == compared else compared
    return {order(winner, case): verdict("A"), order(loser, case): verdict("B")}


# the three outcomes: the judge prefers tuned in both orders, always says A, prefers base in both
OUTCOME_IDS = ("cwin", "cbias", "closs")
OUTCOME_JUDGE = {**judge_prefers("cwin", TUNED), question("cbias"): verdict("A"), **judge_prefers("closs", BASE)}


def outcome_setup(pytester: pytest.Pytester, gates: list[str] | None = None, **extra: dict[str, Any]) -> Path:
    write_models(pytester, {BASE: model_replies(BASE, *OUTCOME_IDS), TUNED: model_replies(TUNED, *OUTCOME_IDS)},
                 OUTCOME_JUDGE)
    return write_suite(pytester.path / "evals", "pair", cases(*OUTCOME_IDS, **extra), scorer=PAIRWISE,
                       **({"gates": gates} if gates else {}))


def run(pytester: pytest.Pytester, *args: str, workers: str = "0") -> pytest.RunResult:
    return run_inline(pytester, "-n", workers, "evals", *args)


def run_subprocess(pytester: pytest.Pytester, *args: str, workers: str = "0",
                   timeout: float = 120) -> pytest.RunResult:
    """As :func:`run`, in a process of its own: a run that hangs raises pytester's TimeoutExpired instead of
    blocking the test session (an in-process run cannot be stopped: a signal's exception fails the item
    it interrupts, and the next item waits again)."""
    return pytester.runpytest_subprocess("--llm-models-file", "models.yaml", "--llm-report-dir", "out",
                                         "--llm-cache-path", "cache.sqlite", "-p", "no:cacheprovider", "-n", workers,
                                         "evals", *args, timeout=timeout)


def suite_of(report: dict[str, Any], name: str, model: str) -> dict[str, Any]:
    return next(s for s in report["suites"] if s["name"] == name and s["model"] == model)


def rows_of(report: dict[str, Any], model: str, suite: str = "pair") -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["cases"] if c["suite"] == suite and c["model"] == model}


def gate_of(report: dict[str, Any], model: str, expr: str, suite: str = "pair") -> dict[str, Any]:
    return next(g for g in suite_of(report, suite, model)["gates"] if g["expr"] == expr)


def markdown(pytester: pytest.Pytester) -> str:
    return (pytester.path / "out" / "report.md").read_text(encoding="utf-8")


def section(text: str, heading: str, until: str = "\n## ") -> str:
    """A report.md section: from ``heading`` to the next heading of the same level."""
    body = text.split(heading, 1)[1]
    return body.split(until, 1)[0]


def test_the_needles_are_not_in_the_built_in_rubric():
    # a needle in the rubric's own text or the system message would match every judge prompt
    spec = parse_pairwise({}, "test")
    fixed = spec.rubric + system_message(spec)
    for case_id in OUTCOME_IDS:
        for needle in (question(case_id), answer_of(BASE, case_id), answer_of(TUNED, case_id)):
            assert needle not in fixed
    assert "[Answer A]\n{{ output_a }}\n[End of answer A]" in spec.rubric  # what order() relies on


# -- 1. both orders, and the three outcomes (under -n 0 and -n 2) ----------------------------------

def test_both_orders_decide_win_tie_and_loss(pytester, workers):
    outcome_setup(pytester, gates=["win_rate >= 0.5"])
    result = run(pytester, "-rA", workers=workers)
    # base: 3 reference cases pass, its gate skips; tuned: win and tie pass, loss fails, its gate passes
    result.assert_outcomes(passed=6, failed=1, skipped=1)
    assert outcome(result, "::cwin[tuned]") == "PASSED"
    assert outcome(result, "::cbias[tuned]") == "PASSED"
    assert outcome(result, "::closs[tuned]") == "FAILED"
    report = load_report(pytester)
    rows = rows_of(report, TUNED)

    win, tie, loss = rows["cwin"], rows["cbias"], rows["closs"]
    assert (win["score"], win["passed"], win["error"], win["reason"]) == (1.0, True, None, None)
    assert win["data"] == {"pairwise": "win", "consistent": True}
    assert (win["judge"]["verdict"], win["judge"]["first"], win["judge"]["swapped"]) == ("win", "B", "A")
    assert win["judge"]["against"] == BASE and win["judge"]["model"] == JUDGE

    # position bias: "A" whichever answer is shown first -> a tie, counted inconsistent
    assert (tie["score"], tie["passed"], tie["error"]) == (0.5, True, None)
    assert tie["data"] == {"pairwise": "tie", "consistent": False}
    assert (tie["judge"]["first"], tie["judge"]["swapped"], tie["judge"]["consistent"]) == ("A", "A", False)
    assert tie["reason"] == "tie (first order: A, swapped order: A; A is the first answer shown)"

    assert (loss["score"], loss["passed"], loss["error"]) == (0.0, False, None)
    assert loss["data"] == {"pairwise": "loss", "consistent": True}
    assert (loss["judge"]["first"], loss["judge"]["swapped"]) == ("A", "B")
    assert loss["reason"] == "judge prefers 'base''s answer in both orders"
    result.stdout.fnmatch_lines(["*judge prefers 'base''s answer in both orders*"])

    # the judge was asked both orders: the reference's answer first, then the compared model's
    for case_id, row in rows.items():
        prompts = row["judge"]["prompt"]
        assert len(prompts) == 2 and len(row["judge"]["raw"]) == 2
        first, swapped = (p[-1]["content"] for p in prompts)
        ref, own = answer_of(BASE, case_id), answer_of(TUNED, case_id)
        assert f"[Answer A]\n{ref}\n[End of answer A]" in first and f"[Answer B]\n{own}\n[End of answer B]" in first
        assert f"[Answer A]\n{own}\n[End of answer A]" in swapped and f"[Answer B]\n{ref}\n[End of answer B]" in swapped
        assert question(case_id) in first and question(case_id) in swapped
        assert row["output"] == own
    assert rows["cwin"]["judge"]["raw"] == [verdict("B"), verdict("A")]

    metrics = suite_of(report, "pair", TUNED)["metrics"]
    assert metrics["win_rate"] == pytest.approx(0.5)
    assert metrics["win_rate.lower"] <= 0.5 <= metrics["win_rate.upper"]
    assert metrics["win_rate.lower"] < metrics["win_rate.upper"]
    for share in ("win_share", "tie_share", "loss_share"):
        assert metrics[share] == pytest.approx(1 / 3)
    assert metrics["judge_position_consistency"] == pytest.approx(2 / 3)
    assert metrics["judge_cases"] == 3 and metrics["judge_error_rate"] == 0
    position = suite_of(report, "pair", TUNED)["tables"]["judge"]["position"]
    assert position["n"] == 3 and position["counts"]["A"]["A"] == 1
    assert position["counts"]["B"]["A"] == 1 and position["counts"]["A"]["B"] == 1
    assert gate_of(report, TUNED, "win_rate >= 0.5")["status"] == "passed"

    # two judge requests per compared case, none for the reference's
    generation = report["run"]["generation"]
    assert generation["requests"] == 6
    assert (generation["judge"]["requests"], generation["judge"]["cases"]) == (6, 3)

    judges = section(markdown(pytester), "## Judges")
    tuned_part = section(judges, "### pair (tuned)", "\n### ")
    assert "Position-swap consistency: 0.6667 of 3 cases" in tuned_part


# -- 2. the reference model: not judged, passes, its judged gates skip with the reason ---------------

def test_the_reference_is_not_judged_and_its_gates_on_judged_metrics_skip(pytester):
    outcome_setup(pytester, gates=["win_rate >= 0.5", "win_share >= 0.9", "error_rate == 0"])
    result = run(pytester, "-rA")
    # base: 3 cases pass, error_rate judged (passes), the two judged gates skip;
    # tuned: loss fails, win_share >= 0.9 fails, win_rate and error_rate pass
    result.assert_outcomes(passed=8, failed=2, skipped=2)
    for case_id in OUTCOME_IDS:
        assert outcome(result, f"::{case_id}[base]") == "PASSED"
    assert outcome(result, "gate[error_rate == 0][base]") == "PASSED"
    assert outcome(result, "gate[win_rate >= 0.5][tuned]") == "PASSED"
    assert outcome(result, "gate[win_share >= 0.9][tuned]") == "FAILED"
    # the skip's reason is printed (pytest groups the two skipped gates under it)
    skipped = [line for line in result.outlines if line.startswith("SKIPPED")]
    assert len(skipped) == 1 and skipped[0].startswith("SKIPPED [2] ") and REFERENCE_SKIP in skipped[0], skipped

    report = load_report(pytester)
    rows = rows_of(report, BASE)
    assert sorted(rows) == sorted(OUTCOME_IDS)
    for case_id, row in rows.items():
        assert (row["score"], row["passed"], row["error"], row["reason"]) == (0.5, None, None, None), row
        assert row["data"] == {"pairwise": "reference"}
        assert row["output"] == answer_of(BASE, case_id)
        assert row["judge"]["reference"] is True and row["judge"]["model"] == JUDGE
        assert "prompt" not in row["judge"] or not row["judge"]["prompt"]
    base = suite_of(report, "pair", BASE)
    for metric in ("win_rate", "win_share", "tie_share", "loss_share"):
        assert base["metrics"][metric] is None
    assert "judge_position_consistency" not in base["metrics"]
    assert base["metrics"]["judge_cases"] == 0 and base["metrics"]["error_rate"] == 0
    for expr in ("win_rate >= 0.5", "win_share >= 0.9"):
        gate = gate_of(report, BASE, expr)
        assert gate["status"] == "skipped" and gate["reason"].startswith(REFERENCE_SKIP), gate
    assert gate_of(report, BASE, "error_rate == 0")["status"] == "passed"
    assert gate_of(report, TUNED, "win_rate >= 0.5")["status"] == "passed"
    assert gate_of(report, TUNED, "win_share >= 0.9")["status"] == "failed"
    assert gate_of(report, TUNED, "win_share >= 0.9")["value"] == pytest.approx(1 / 3)

    text = markdown(pytester)
    worst = section(text, "## Worst cases")
    assert "_No failing cases among 3._" in section(worst, "### pair · base", "\n### ")
    assert "closs" in section(worst, "### pair · tuned", "\n### ")
    judges = section(text, "## Judges")
    assert "pairwise: this model is the reference" in section(judges, "### pair (base)", "\n### ")
    assert "Position-swap consistency" not in section(judges, "### pair (base)", "\n### ")

    # 11. report.json's run.models lists the judge, with its role; the models under test have none
    listed = {m["name"]: m for m in report["run"]["models"]}
    assert set(listed) == {BASE, TUNED, JUDGE}
    assert listed[JUDGE]["role"] == "judge"
    assert "role" not in listed[BASE] and "role" not in listed[TUNED]


def test_the_reference_option_picks_the_model_the_others_are_judged_against(pytester):
    outcome_setup(pytester)
    result = run(pytester, "-rA", "--llm-reference", TUNED)
    # tuned is the reference now: base loses where the judge prefers tuned, and wins where it prefers base
    result.assert_outcomes(passed=5, failed=1)
    assert outcome(result, "::cwin[base]") == "FAILED" and outcome(result, "::closs[base]") == "PASSED"
    report = load_report(pytester)
    assert all(row["data"] == {"pairwise": "reference"} for row in rows_of(report, TUNED).values())
    rows = rows_of(report, BASE)
    assert {i: row["data"]["pairwise"] for i, row in rows.items()} == {"cwin": "loss", "cbias": "tie", "closs": "win"}
    assert all(row["judge"]["against"] == TUNED for row in rows.values())
    first = rows["cwin"]["judge"]["prompt"][0][-1]["content"]
    assert f"[Answer A]\n{answer_of(TUNED, 'cwin')}\n" in first  # the reference is A in the first order
    assert rows["cwin"]["reason"] == "judge prefers 'tuned''s answer in both orders"
    assert suite_of(report, "pair", BASE)["metrics"]["win_rate"] == pytest.approx(0.5)
    assert suite_of(report, "pair", TUNED)["metrics"]["win_rate"] is None


# -- 4. three models: each compared model against the reference only ----------------------------------

def test_with_three_models_each_is_judged_against_the_reference_only(pytester):
    ids = ("cone", "ctwo")
    # the judge's needles name the compared model's answer: t1 wins both orders, t2 loses both
    judge: dict[str, str] = {}
    for case_id in ids:
        judge[f"[Answer B]\n{answer_of('t1', case_id)}\n"] = verdict("B")
        judge[f"[Answer A]\n{answer_of('t1', case_id)}\n"] = verdict("A")
        judge[f"[Answer B]\n{answer_of('t2', case_id)}\n"] = verdict("A")
        judge[f"[Answer A]\n{answer_of('t2', case_id)}\n"] = verdict("B")
    write_models(pytester, {m: model_replies(m, *ids) for m in (BASE, "t1", "t2")}, judge)
    write_suite(pytester.path / "evals", "pair", cases(*ids), scorer=PAIRWISE)
    result = run(pytester, "-rA")
    result.assert_outcomes(passed=4, failed=2)
    report = load_report(pytester)
    assert all(row["data"] == {"pairwise": "reference"} for row in rows_of(report, BASE).values())
    for model, expected in (("t1", "win"), ("t2", "loss")):
        other = "t2" if model == "t1" else "t1"
        for case_id, row in rows_of(report, model).items():
            assert row["judge"]["against"] == BASE
            assert row["data"]["pairwise"] == expected, (model, case_id, row["judge"])
            for messages in row["judge"]["prompt"]:
                content = messages[-1]["content"]
                # the pair is the reference's answer and this model's, never the other compared model's
                assert answer_of(BASE, case_id) in content and answer_of(model, case_id) in content
                assert answer_of(other, case_id) not in content
    assert suite_of(report, "pair", "t1")["metrics"]["win_rate"] == 1.0
    assert suite_of(report, "pair", "t2")["metrics"]["win_rate"] == 0.0
    assert suite_of(report, "pair", BASE)["metrics"]["win_rate"] is None
    assert report["run"]["generation"]["judge"]["requests"] == 8  # 2 compared models x 2 cases x 2 orders


# -- 5. the reference's answer failed -----------------------------------------------------------------

def test_a_failed_reference_answer_makes_the_compared_case_an_error_naming_it(pytester):
    # base's scripted reply to cbroken is empty, which is a model error ("empty reply"); tuned answers it
    ids = ("cok", "cbroken")
    write_models(pytester, {BASE: {**model_replies(BASE, "cok"), question("cbroken"): ""},
                            TUNED: model_replies(TUNED, *ids)},
                 judge_prefers("cok", TUNED))
    write_suite(pytester.path / "evals", "pair", cases(*ids), scorer=PAIRWISE, gates=["error_rate == 0"])
    result = run(pytester, "-rA")
    # base: cok passes, cbroken fails (its own error), its error_rate gate fails;
    # tuned: cok wins, cbroken is an error naming the reference's failure, its error_rate gate fails
    result.assert_outcomes(passed=2, failed=4)
    assert outcome(result, "::cbroken[tuned]") == "FAILED" and outcome(result, "::cok[tuned]") == "PASSED"
    report = load_report(pytester)
    assert rows_of(report, BASE)["cbroken"]["error"] == "empty reply"
    broken = rows_of(report, TUNED)["cbroken"]
    assert broken["error"] == "pairwise judge: the reference model 'base' failed on this case: empty reply"
    assert broken["output"] == answer_of(TUNED, "cbroken")  # the compared model's own answer is kept
    assert broken["judge"]["against"] == BASE and not broken["judge"].get("prompt")
    assert rows_of(report, TUNED)["cok"]["data"]["pairwise"] == "win"
    metrics = suite_of(report, "pair", TUNED)["metrics"]
    assert metrics["error_rate"] == pytest.approx(0.5) and metrics["judge_error_rate"] == pytest.approx(0.5)
    assert report["run"]["generation"]["judge"]["requests"] == 2  # only cok was judged
    result.stdout.fnmatch_lines(["*the reference model 'base' failed on this case: empty reply*"])


# -- 6. -k leaves out the reference's cases ----------------------------------------------------------------

def test_a_case_whose_reference_answer_was_not_selected_is_an_error_and_the_run_ends(pytester, workers):
    outcome_setup(pytester)
    # every tuned case, and base's answer to cwin only; a judgement waiting for an answer that never
    # comes would hang the run: the subprocess's timeout makes that pytester's TimeoutExpired
    result = run_subprocess(pytester, "-rA", "-k", "tuned or cwin", workers=workers)
    result.assert_outcomes(passed=2, failed=2)
    assert outcome(result, "::cwin[base]") == "PASSED" and outcome(result, "::cwin[tuned]") == "PASSED"
    assert outcome(result, "::cbias[tuned]") == "FAILED" and outcome(result, "::closs[tuned]") == "FAILED"
    report = load_report(pytester)
    assert sorted(rows_of(report, BASE)) == ["cwin"]
    rows = rows_of(report, TUNED)
    assert rows["cwin"]["data"]["pairwise"] == "win" and rows["cwin"]["error"] is None
    for case_id in ("cbias", "closs"):
        assert rows[case_id]["error"] == NO_REFERENCE_ANSWER
        assert rows[case_id]["output"] == answer_of(TUNED, case_id)
    generation = report["run"]["generation"]
    assert generation["requests"] == 4 and generation["judge"]["requests"] == 2
    result.stdout.fnmatch_lines(["*no answer of the reference model 'base' to this case (not selected*"])


# -- 7. the response cache ------------------------------------------------------------------------------

def _figures(report: dict[str, Any]) -> list[tuple]:
    return sorted((c["model"], c["id"], c["output"], c["score"], c["passed"], c["error"], c["reason"],
                   json.dumps(c["data"], sort_keys=True), (c["judge"] or {}).get("verdict"),
                   (c["judge"] or {}).get("raw"), (c["judge"] or {}).get("first"), (c["judge"] or {}).get("swapped"))
                  for c in report["cases"])


def test_a_rerun_answers_models_and_the_pairwise_judge_from_the_cache(pytester):
    outcome_setup(pytester, gates=["win_rate >= 0.5"])
    run(pytester).assert_outcomes(passed=6, failed=1, skipped=1)
    first = load_report(pytester)
    assert first["run"]["generation"]["requests"] == 6 and first["run"]["generation"]["judge"]["requests"] == 6

    run(pytester).assert_outcomes(passed=6, failed=1, skipped=1)
    again = load_report(pytester)
    generation = again["run"]["generation"]
    assert generation["requests"] == 0 and generation["cached"] == 6
    assert generation["judge"]["requests"] == 0 and generation["judge"]["cached"] == 6
    assert _figures(again) == _figures(first)
    assert all(row["judge"]["cached"] for row in rows_of(again, TUNED).values())
    figures = ("win_rate", "win_share", "tie_share", "loss_share", "judge_position_consistency")
    assert ([suite_of(again, "pair", TUNED)["metrics"][m] for m in figures]
            == [suite_of(first, "pair", TUNED)["metrics"][m] for m in figures])

    # a rubric of the suite's own (same markers, so the same needles answer) re-asks the judge, not the models
    write_suite(pytester.path / "evals", "pair", cases(*OUTCOME_IDS), scorer={**PAIRWISE, "rubric": CUSTOM_RUBRIC},
                gates=["win_rate >= 0.5"])
    run(pytester).assert_outcomes(passed=6, failed=1, skipped=1)
    third = load_report(pytester)
    generation = third["run"]["generation"]
    assert generation["requests"] == 0 and generation["judge"]["requests"] == 6
    assert _figures(third) == _figures(first)
    content = rows_of(third, TUNED)["cwin"]["judge"]["prompt"][0][-1]["content"]
    assert content.startswith("Request: Please answer QUESTION_CWIN_NEEDLE (no target)\nWhich answer is better?")


CUSTOM_RUBRIC = ("Request: {{ input }} ({{ target if target is not none else 'no target' }})\n"
                 "Which answer is better?{% if metadata %} {{ metadata }}{% endif %}\n"
                 "[Answer A]\n{{ output_a }}\n[End of answer A]\n[Answer B]\n{{ output_b }}\n[End of answer B]\n"
                 "VERDICT: A, B or tie")


# -- 8. collection errors naming the suite file ------------------------------------------------------------

TWO_MODELS = {BASE: {}, TUNED: {}}
BAD_PAIRWISE = {
    "one-model": ({BASE: {}}, PAIRWISE,
                  "scorer 'judge_pairwise' compares two models' answers to each case, and this suite runs on one "
                  "(base): add a model"),
    "samples": (TWO_MODELS, {**PAIRWISE, "samples": 3},
                "(a pairwise judge is asked once per order: samples is not supported)"),
    "no-output-b": (TWO_MODELS, {**PAIRWISE, "rubric": "Is {{ output_a }} good? VERDICT: A, B or tie"},
                    "rubric never shows output_b: a pairwise rubric shows both answers"),
    "single-output": (TWO_MODELS, {**PAIRWISE, "rubric": "{{ output }} vs {{ output_b }}"},
                      "rubric uses undefined variable(s) output;"),
    "judge-not-in-run": (TWO_MODELS, {**PAIRWISE, "model": "gpt-judge"},
                         "judge model 'gpt-judge' is not a model of this run"),
}


def _collection_error(pytester: pytest.Pytester, message: str, items: int, *args: str) -> pytest.RunResult:
    result = run_inline(pytester, "evals", *args)
    assert result.ret == pytest.ExitCode.INTERRUPTED, result.stdout.str()
    output = result.stdout.str()
    collecting = [line for line in result.outlines if "ERROR collecting" in line]
    assert collecting and all("evals/bad/" in line for line in collecting), collecting
    assert f"collected {items} item" in output
    suite_file = pytester.path / "evals" / "bad" / "suite.yaml"
    line = next(n for n, text in enumerate(suite_file.read_text().splitlines(), 1) if text.startswith("scorer:"))
    errors = [text for text in result.outlines if message in text]
    assert errors and all(text.startswith(f"{suite_file}:{line}: ") for text in errors), output
    assert "sending" not in output  # nothing was sent
    return result


@pytest.mark.parametrize("answers, scorer, message", list(BAD_PAIRWISE.values()), ids=list(BAD_PAIRWISE))
def test_a_pairwise_judge_that_cannot_work_is_a_collection_error_naming_the_suite_file(pytester, answers, scorer,
                                                                                        message):
    write_models(pytester, answers, {})
    write_suite(pytester.path / "evals", "bad", cases("c1"), scorer=scorer)
    # a sound suite beside it: the error is the bad suite's, not the run's
    write_suite(pytester.path / "evals", "good", [{"id": "g1", "input": "ANSWER: Paris", "target": "Paris"}])
    _collection_error(pytester, message, len(answers))


def test_a_pairwise_judge_with_a_baseline_is_a_collection_error(pytester):
    write_models(pytester, TWO_MODELS, {})
    write_suite(pytester.path / "evals", "good", [{"id": "g1", "input": "ANSWER: Paris", "target": "Paris"}])
    run_inline(pytester, "evals", "--llm-baseline-save", "baseline.json",
               "--llm-baseline-reason", "test").assert_outcomes(passed=2)
    assert (pytester.path / "baseline.json").exists()
    write_suite(pytester.path / "evals", "bad", cases("c1"), scorer=PAIRWISE)
    _collection_error(pytester, "scorer 'judge_pairwise' compares the answers of models of this run; it cannot "
                                "judge against a saved baseline (--llm-baseline)", 2, "--llm-baseline", "baseline.json")


# -- 9. human labels: the compared model's outcome ---------------------------------------------------------

def test_human_labels_win_tie_loss_measure_the_pairwise_judge(pytester):
    ids = (*OUTCOME_IDS, "cwin2")
    # the judge says win, tie, loss, win; people say win, tie, loss, loss
    labels = {"cwin": "win", "cbias": "tie", "closs": "loss", "cwin2": "Loss"}
    write_models(pytester, {BASE: model_replies(BASE, *ids), TUNED: model_replies(TUNED, *ids)},
                 {**OUTCOME_JUDGE, **judge_prefers("cwin2", TUNED)})
    write_suite(pytester.path / "evals", "pair", cases(*ids, **{i: {"human_label": h} for i, h in labels.items()}),
                scorer=PAIRWISE, gates=["judge_kappa >= 0.6", "judge_kappa >= 0.7"], **{"pass": "record"})
    result = run(pytester, "-rA")
    # 8 recorded cases; tuned: kappa 7/11 passes >= 0.6, fails >= 0.7; base: both gates skip (the reference)
    result.assert_outcomes(passed=9, failed=1, skipped=2)
    assert outcome(result, "gate[judge_kappa >= 0.6][tuned]") == "PASSED"
    assert outcome(result, "gate[judge_kappa >= 0.7][tuned]") == "FAILED"
    report = load_report(pytester)
    tuned = suite_of(report, "pair", TUNED)
    assert {i: r["judge"]["verdict"] for i, r in rows_of(report, TUNED).items()} == {
        "cwin": "win", "cbias": "tie", "closs": "loss", "cwin2": "win"}
    metrics = tuned["metrics"]
    assert metrics["judge_labelled"] == 4
    assert metrics["judge_accuracy"] == pytest.approx(0.75)
    # po = 3/4, pe = (1*2 + 1*1 + 2*1) / 16 = 5/16: kappa = (12/16 - 5/16) / (11/16) = 7/11
    assert metrics["judge_kappa"] == pytest.approx(7 / 11)
    assert metrics["judge_kappa.lower"] <= metrics["judge_kappa"] <= metrics["judge_kappa.upper"]
    agreement = tuned["tables"]["judge"]["agreement"]
    # rows: people, columns: the judge; "Loss" matches loss ignoring case
    assert agreement["confusion"] == {"labels": ["win", "tie", "loss"], "matrix": [[1, 0, 0], [0, 1, 0], [1, 0, 1]]}
    base = suite_of(report, "pair", BASE)["metrics"]
    assert base.get("judge_kappa") is None and base.get("judge_labelled") is None
    assert all(gate_of(report, BASE, g)["status"] == "skipped" for g in ("judge_kappa >= 0.6", "judge_kappa >= 0.7"))
    judges = section(markdown(pytester), "## Judges")
    assert "Agreement with human labels on 4 cases" in section(judges, "### pair (tuned)", "\n### ")


# -- 10. api: completion judges ----------------------------------------------------------------------------

COMPLETION_RUBRIC = ("Each reply either answers the request or refuses it.\n\n"
                     "Request: Where is Paris?\nReply: In France.\nVERDICT: answer\n\n"
                     "Request: {{ input }}\nReply: {{ output }}\nVERDICT:")


def completion_setup(pytester: pytest.Pytester, rubric: str = COMPLETION_RUBRIC, **scorer: Any) -> None:
    entries = [{"name": "stub", "engine": "scripted"},
               {"name": JUDGE, "engine": "scripted", "role": "judge",
                "options": {"replies": {"Reply: Berlin NEEDLE_ANS": " answer", "Reply: No. NEEDLE_REF": " refusal",
                                        "Reply: Rome NEEDLE_FULL": "It answers.\nVERDICT: answer"}}}]
    (pytester.path / "models.yaml").write_text(yaml.safe_dump(entries), encoding="utf-8")
    write_suite(pytester.path / "evals", "base_judge",
                [{"id": "ans", "input": "Capital of Germany?\nANSWER: Berlin NEEDLE_ANS", "target": None},
                 {"id": "ref", "input": "Capital of Spain?\nANSWER: No. NEEDLE_REF", "target": None}],
                scorer={"name": "judge", "model": JUDGE, "api": "completion", "rubric": rubric,
                        "scale": ["refusal", "answer"], "positive": "answer", "max_tokens": 4, **scorer},
                **{"pass": "record"})


def test_a_completion_judge_reads_the_continuation_of_verdict_as_the_verdict(pytester):
    completion_setup(pytester)
    run(pytester).assert_outcomes(passed=2)
    report = load_report(pytester)
    rows = {c["id"]: c for c in report["cases"]}
    ans, ref = rows["ans"], rows["ref"]
    assert (ans["judge"]["verdict"], ans["score"], ans["error"]) == ("answer", 1.0, None)
    assert (ref["judge"]["verdict"], ref["score"], ref["error"]) == ("refusal", 0.0, None)
    assert ans["judge"]["raw"] == [" answer"]
    # a completion request: the rendered rubric alone is the prompt, a string, no system message
    prompt = ans["judge"]["prompt"]
    assert isinstance(prompt, str)
    assert prompt.startswith("Each reply either answers") and prompt.rstrip().endswith("VERDICT:")
    assert "Request: Capital of Germany?\nANSWER: Berlin NEEDLE_ANS\nReply: Berlin NEEDLE_ANS\nVERDICT:" in prompt
    assert "You are an evaluator" not in prompt
    assert report["run"]["generation"]["judge"]["requests"] == 2
    assert suite_of(report, "base_judge", "stub")["metrics"]["judge_error_rate"] == 0
    config = next(s for s in report["run"]["suites_config"] if s["name"] == "base_judge")
    assert "'api': 'completion'" in repr(config) or '"api": "completion"' in json.dumps(config)


def test_a_completion_rubric_not_ending_in_verdict_needs_a_verdict_line(pytester):
    # no "VERDICT:" at the end: nothing is read before the reply, which must hold its own verdict line
    completion_setup(pytester, rubric="Request: {{ input }}\nReply: {{ output }}\nDoes it answer? Say VERDICT: <label>")
    run(pytester).assert_outcomes(passed=2)
    rows = {c["id"]: c for c in load_report(pytester)["cases"]}
    assert rows["ans"]["error"].startswith("judge verdict unreadable: the judge's reply has no 'VERDICT:' line")
    assert rows["ans"]["judge"]["raw"] == [" answer"]


def test_a_completion_judge_request_stops_at_the_end_of_the_verdict_line(tmp_path):
    from harness.judging.spec import parse_spec
    from harness.judging.stage import judge_call
    from harness.suite import Case, load_suite

    folder = write_suite(tmp_path, "s", [{"id": "c", "input": "Q", "target": None}])
    suite = load_suite(folder / "suite.yaml")
    case = Case("c", "Capital of Spain?", None, {}, {}, folder / "cases.jsonl", 1)
    options = {"rubric": COMPLETION_RUBRIC, "scale": ["refusal", "answer"], "api": "completion", "max_tokens": 4}
    call = judge_call(parse_spec(options, "t"), JUDGE, suite, case, "Madrid.")
    assert call is not None and call.error is None and call.prefix == "VERDICT:"
    assert len(call.requests) == 1
    request = call.requests[0]
    assert request.api == "completion" and request.model == JUDGE
    assert isinstance(request.prompt, str) and request.prompt == call.prompt
    assert request.prompt.endswith("Request: Capital of Spain?\nReply: Madrid.\nVERDICT:")
    assert request.params["stop"] == ["\n"] and request.params["max_tokens"] == 4
    # a rubric that does not end in VERDICT: is sent as it is, with no stop and nothing read before the reply
    open_ended = judge_call(parse_spec({**options, "rubric": "Reply: {{ output }}\nGrade it."}, "t"),
                            JUDGE, suite, case, "Madrid.")
    assert open_ended.prefix == "" and "stop" not in open_ended.requests[0].params
    # the chat judge is unchanged: system and user messages
    chat = judge_call(parse_spec({**options, "api": "chat"}, "t"), JUDGE, suite, case, "Madrid.")
    assert chat.requests[0].api == "chat" and [m["role"] for m in chat.prompt] == ["system", "user"]


@pytest.mark.parametrize("scorer, message", [
    ({"name": "judge", "model": JUDGE, "rubric": "refusal", "api": "completion"},
     "api: completion sends the rubric alone, and built-in rubric 'refusal' is written for a chat model"),
    ({"name": "judge", "model": JUDGE, "rubric": COMPLETION_RUBRIC, "scale": ["refusal", "answer"], "api": "base"},
     "api must be one of chat, completion, not 'base'"),
], ids=["builtin-rubric", "unknown-api"])
def test_a_completion_judge_that_cannot_work_is_a_collection_error(pytester, scorer, message):
    (pytester.path / "models.yaml").write_text(yaml.safe_dump(
        [{"name": "stub", "engine": "scripted"}, {"name": JUDGE, "engine": "scripted", "role": "judge"}]),
        encoding="utf-8")
    write_suite(pytester.path / "evals", "bad", [{"id": "c1", "input": "ANSWER: yes", "target": None}], scorer=scorer)
    write_suite(pytester.path / "evals", "good", [{"id": "g1", "input": "ANSWER: Paris", "target": "Paris"}])
    _collection_error(pytester, message, 1)


# -- found while writing these tests (fixed) ----------------------------------------------------------------

def test_a_failing_pairwise_case_shows_the_judge_prompts_of_both_orders(pytester):
    write_models(pytester, {BASE: model_replies(BASE, "closs"), TUNED: model_replies(TUNED, "closs")},
                 judge_prefers("closs", BASE))
    write_suite(pytester.path / "evals", "pair", cases("closs"), scorer=PAIRWISE)
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    failure = result.stdout.str().split("pair::closs[tuned]", 1)[1].split("\n===", 1)[0]
    assert "judge reply 1:" in failure and "judge reply 2:" in failure
    assert "judge prompt:" in failure
    shown = failure.split("judge prompt:", 1)[1]
    # README: "A failing case shows the judge's verdict, raw reply and rendered prompt"
    assert answer_of(BASE, "closs") in shown and answer_of(TUNED, "closs") in shown


# a completion rubric written as a YAML block (rubric: |) renders with a trailing newline: sent as it is,
# the model's continuation would start on the line after 'VERDICT:'
def test_a_completion_prompt_ending_in_verdict_and_a_newline_is_sent_ending_in_verdict(tmp_path):
    from harness.judging.spec import parse_spec
    from harness.judging.stage import judge_call
    from harness.suite import Case, load_suite

    folder = write_suite(tmp_path, "s", [{"id": "c", "input": "Q", "target": None}])
    suite = load_suite(folder / "suite.yaml")
    case = Case("c", "Capital of Spain?", None, {}, {}, folder / "cases.jsonl", 1)
    # what yaml.safe_load gives for `rubric: |` ending in the line "VERDICT:"
    rubric = yaml.safe_load("rubric: |\n  Request: {{ input }}\n  Reply: {{ output }}\n  VERDICT:\n")["rubric"]
    assert rubric.endswith("VERDICT:\n")
    call = judge_call(parse_spec({"rubric": rubric, "scale": ["refusal", "answer"], "api": "completion"}, "t"),
                      JUDGE, suite, case, "Madrid.")
    assert call.prefix == "VERDICT:" and call.requests[0].params["stop"] == ["\n"]
    assert call.requests[0].prompt.endswith("Reply: Madrid.\nVERDICT:")
