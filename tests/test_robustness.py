"""Robustness: the seeded perturbations, the suite section, and a robustness suite end to end."""

from __future__ import annotations

import json
import string
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.results import CaseResult
from harness.robustness import parse_robustness, robustness_metrics
from harness.scoring.normalize import normalize
from harness.scoring.perturb import ATTACKS, perturb
from harness.scoring.scorers import get_scorer
from harness.suite import SuiteError, load_suite
from harness.testing.stub_server import reply_for
from tests.conftest import load_report, run_inline, write_suite

PUNCT = set(string.punctuation) | set("。，、；：？！“”‘’（）《》【】…—")
# ASCII letters, digits, CJK, spaces and punctuation: the Unicode oddities of case mapping
# (dotless i, ligatures) are not what these properties are about
ALPHABET = list(string.ascii_letters + string.digits + "  ,.!?'-") + list("电影好看演员，。")
TEXT = st.text(alphabet=st.sampled_from(ALPHABET), max_size=80)


def distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


@given(TEXT, st.sampled_from(ATTACKS), st.integers(0, 3))
def test_a_perturbation_is_a_pure_function_of_seed_attack_and_case(text: str, attack: str, seed: int) -> None:
    assert perturb(text, attack, seed=seed, key="c1") == perturb(text, attack, seed=seed, key="c1")


@given(TEXT)
def test_casing_changes_only_case(text: str) -> None:
    assert perturb(text, "casing", key="k").casefold() == text.casefold()


@given(TEXT)
def test_whitespace_changes_only_whitespace(text: str) -> None:
    assert "".join(perturb(text, "whitespace", key="k").split()) == "".join(text.split())


@given(TEXT)
def test_punctuation_changes_only_punctuation(text: str) -> None:
    out = perturb(text, "punctuation", key="k")
    assert [c for c in out if c not in PUNCT] == [c for c in text if c not in PUNCT]


@given(TEXT)
def test_char_swap_keeps_the_characters(text: str) -> None:
    out = perturb(text, "char_swap", key="k")
    assert sorted(out) == sorted(text) and len(out) == len(text)


@given(TEXT, st.floats(0.05, 1.0))
def test_typos_touch_a_share_of_the_words_one_edit_each(text: str, rate: float) -> None:
    import re

    words = [w for w in re.findall(r"\w+", text) if len(w) >= 3]
    out = perturb(text, "typos", key="k", rate=rate)
    assert distance(text, out) <= max(1, round(rate * len(words))) * 2
    assert (out != text) == bool(words)  # a text with a word to mistype always gets a typo


@given(TEXT)
def test_paraphrase_keeps_the_text_inside_a_template(text: str) -> None:
    assert text in perturb(text, "paraphrase", key="k")


def test_paraphrase_templates_follow_the_language() -> None:
    from harness.scoring.perturb import ZH_TEMPLATES

    wrapped = {perturb("这部电影", "paraphrase", key=str(k)) for k in range(20)}
    assert wrapped <= {t.replace("{input}", "这部电影") for t in ZH_TEMPLATES} and len(wrapped) > 1
    assert perturb("hello", "paraphrase", key="a", templates=["<<{input}>>"]) == "<<hello>>"


@pytest.mark.parametrize(("raw", "message"), [
    ({"attacks": ["typo"]}, "unknown attack 'typo'; known: typos, casing"),
    ({"attacks": []}, "non-empty list"),
    ({"rate": 0}, "robustness.rate must be a number in (0, 1]"),
    ({"seed": "x"}, "robustness.seed must be an integer"),
    ({"templates": ["no placeholder"]}, "each with {input}"),
    ({"attack": ["typos"]}, "unknown robustness key 'attack'"),
    ("yes", "'robustness' must be true or a mapping"),
])
def test_bad_robustness_sections_are_refused(raw: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_robustness(raw)
    assert message in str(info.value)


def test_a_bad_robustness_section_names_the_suite_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "c.jsonl").write_text('{"id": "a", "input": "q", "target": "x"}\n')
    (tmp_path / "suite.yaml").write_text("dataset: c.jsonl\nscorer: exact_match\nrobustness: {attacks: [nope]}\n")
    with pytest.raises(SuiteError) as info:
        load_suite(tmp_path / "suite.yaml")
    assert str(info.value).startswith(f"{tmp_path / 'suite.yaml'}:3: unknown attack 'nope'")
    assert parse_robustness(True).attacks == ATTACKS


def _result(case_id: str, label: str, pred: str, attack: str | None = None) -> CaseResult:
    scorer = get_scorer("classification_f1", {"labels": ["pos", "neg"]})
    score = scorer.score(pred, label, None)
    result = CaseResult("s", case_id, "m", "n", "d", 1, "p", label, extracted=pred, score=score.value, attack=attack)
    result.data = score.data
    return result


def test_classification_drop_is_the_f1_difference_with_a_paired_interval() -> None:
    labels = ["pos", "neg"] * 20
    clean = [_result(str(i), label, label) for i, label in enumerate(labels)]
    # under typos, every fourth case flips
    flipped = [_result(f"{i}~typos", label, ("neg" if label == "pos" else "pos") if i % 4 == 0 else label, "typos")
               for i, label in enumerate(labels)]
    same = [_result(f"{i}~casing", label, label, "casing") for i, label in enumerate(labels)]
    scorer = get_scorer("classification_f1", {"labels": ["pos", "neg"]})
    spec = parse_robustness({"attacks": ["typos", "casing"]})
    metrics = robustness_metrics(spec, scorer, "f1", clean, flipped + same)
    f1_after = scorer.aggregate(flipped)["f1"]
    assert metrics["typos.f1_drop"] == pytest.approx(1.0 - f1_after)
    assert metrics["typos.success_rate"] == 10 / 40 and metrics["typos.changed_rate"] == 10 / 40
    assert (metrics["casing.f1_drop"], metrics["casing.f1_drop.lower"], metrics["casing.f1_drop.upper"]) == (0, 0, 0)
    assert metrics["typos.f1_drop.lower"] < metrics["typos.f1_drop"] < metrics["typos.f1_drop.upper"]
    assert metrics["success_rate"] == 10 / 80 and metrics["perturbed_cases"] == 80
    assert metrics["f1_drop"] == pytest.approx(1.0 - scorer.aggregate(flipped + same)["f1"])


CASES = [("c1", "Paris", "Paris"), ("c2", "blue whale", "blue whale"), ("c3", "Tokyo", "Tokyo"),
         ("c4", "forty two", "forty two"), ("c5", "wrong", "right")]


def _expected(attacks: tuple[str, ...]) -> dict[str, float]:
    """The robustness figures computed independently: perturb, ask the stub's rule, compare."""
    expected: dict[str, float] = {}
    flips_all = correct_all = changed_all = pairs_all = 0
    drop_all = 0.0
    for attack in attacks:
        flips = correct = changed = 0
        drop = 0.0
        for case_id, answer, target in CASES:
            text = f"question {case_id}\nANSWER: {answer}"
            before, after = reply_for(text), reply_for(perturb(text, attack, key=case_id))
            ok_before = normalize(before, numbers=True) == normalize(target, numbers=True)
            ok_after = normalize(after, numbers=True) == normalize(target, numbers=True)
            correct += ok_before
            flips += ok_before and not ok_after
            changed += before != after
            drop += (ok_before - ok_after) / len(CASES)
        expected[f"{attack}.accuracy_drop"] = drop
        expected[f"{attack}.success_rate"] = flips / correct
        expected[f"{attack}.changed_rate"] = changed / len(CASES)
        flips_all, correct_all, changed_all, pairs_all = (flips_all + flips, correct_all + correct,
                                                          changed_all + changed, pairs_all + len(CASES))
        drop_all += drop / len(attacks)
    expected.update({"accuracy_drop": drop_all, "success_rate": flips_all / correct_all,
                     "changed_rate": changed_all / pairs_all})
    return expected


@pytest.mark.parametrize("workers", [[], ["-n", "2"]])
def test_robustness_suite_end_to_end(pytester: pytest.Pytester, stub_url: str, workers: list[str]) -> None:
    cases = [{"id": i, "input": f"question {i}\nANSWER: {answer}", "target": target} for i, answer, target in CASES]
    write_suite(pytester.path / "evals", "qa", cases, robustness={"attacks": list(ATTACKS), "seed": 0},
                gates=["accuracy_drop <= 0.5", "success_rate.upper <= 1"], **{"pass": "record"})
    result = run_inline(pytester, "--llm-cache", "off", "evals", "-q", *workers)
    result.assert_outcomes(passed=len(CASES) * (1 + len(ATTACKS)) + 2)
    report = load_report(pytester)
    metrics = report["suites"][0]["metrics"]
    assert metrics["cases"] == len(CASES) and metrics["perturbed_cases"] == len(CASES) * len(ATTACKS)
    assert metrics["accuracy"] == 4 / 5  # the quality metrics are those of the clean cases
    for name, value in _expected(ATTACKS).items():
        assert metrics[name] == pytest.approx(value), name
    ids = {c["id"] for c in report["cases"]}
    assert {"c1", "c1~typos", "c5~paraphrase"} <= ids
    indicator = json.loads((pytester.path / "out" / "robustness_adv.json").read_text())
    assert indicator["indicator"] == "robustness_adv" and indicator["attack_type"] == "+".join(ATTACKS)
    assert indicator["f1_drop"] == pytest.approx(metrics["accuracy_drop"]) and indicator["metric"] == "accuracy"
    assert indicator["success_rate"] == pytest.approx(metrics["success_rate"])
    assert [a["attack_type"] for a in indicator["attacks"]] == list(ATTACKS)


def test_robustness_copies_can_be_deselected_by_marker(pytester: pytest.Pytester, stub_url: str) -> None:
    cases = [{"id": i, "input": f"ANSWER: {answer}", "target": target} for i, answer, target in CASES]
    write_suite(pytester.path / "evals", "qa", cases, robustness={"attacks": ["typos", "casing"]},
                gates=["accuracy_drop <= 0.5", "accuracy >= 0.5"], **{"pass": "record"})
    result = run_inline(pytester, "--llm-cache", "off", "evals", "-m", "not llm_robustness")
    # the gate on the copies is deselected with them; the clean gate is judged on the clean cases that ran
    result.assert_outcomes(passed=len(CASES) + 1)
    report = json.loads((pytester.path / "out" / "report.json").read_text())
    assert [(g["expr"], g["status"]) for g in report["suites"][0]["gates"]] == [
        ("accuracy_drop <= 0.5", "skipped"), ("accuracy >= 0.5", "passed")]
    assert len(report["cases"]) == len(CASES)
    result = run_inline(pytester, "--collect-only", "-q", "evals", "-k", "typos")
    assert sum("~typos" in line for line in result.outlines) == len(CASES)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["pos", "neg"]), st.sampled_from(["pos", "neg"]),
                          st.sampled_from(["pos", "neg"])), min_size=1, max_size=30))
def test_drop_equals_clean_minus_perturbed_on_random_predictions(rows: list[tuple[str, str, str]]) -> None:
    clean = [_result(str(i), label, before) for i, (label, before, _) in enumerate(rows)]
    after = [_result(f"{i}~typos", label, pred, "typos") for i, (label, _, pred) in enumerate(rows)]
    scorer = get_scorer("classification_f1", {"labels": ["pos", "neg"]})
    metrics = robustness_metrics(parse_robustness({"attacks": ["typos"]}), scorer, "f1", clean, after)
    assert metrics["f1_drop"] == pytest.approx(scorer.aggregate(clean)["f1"] - scorer.aggregate(after)["f1"])
    low, high = metrics["f1_drop.lower"], metrics["f1_drop.upper"]
    assert -1 <= low <= high <= 1


def test_suite_quality_metrics_and_tables_are_the_clean_cases(tmp_path: Path) -> None:
    from harness.suite_metrics import suite_result

    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"id": str(i), "input": "q", "target": label}) + "\n"
                                              for i, label in enumerate(["pos", "neg"] * 3)))
    (tmp_path / "suite.yaml").write_text("dataset: c.jsonl\nscorer: {name: classification_f1, labels: [pos, neg]}\n"
                                         "pass: record\nrobustness: {attacks: [typos]}\ngates: ['f1_drop <= 0.1']\n")
    suite = load_suite(tmp_path / "suite.yaml")
    clean = [_result(str(i), label, label) for i, label in enumerate(["pos", "neg"] * 3)]
    copies = [_result(f"{i}~typos", label, "pos", "typos") for i, label in enumerate(["pos", "neg"] * 3)]
    copies[1].error = "boom"
    result = suite_result(suite, "m", clean + copies, 12)
    assert result.metrics["f1"] == 1.0 and result.metrics["cases"] == 6
    assert result.metrics["error_rate"] == 1 / 12  # operational figures count every request
    assert sum(map(sum, result.tables["confusion"]["matrix"])) == 6
    assert result.gates[0].status == "failed" and result.metrics["f1_drop"] > 0.1


def test_an_unknown_compared_metric_fails_its_gate_naming_the_metrics(tmp_path: Path) -> None:
    from harness.suite_metrics import suite_result

    (tmp_path / "c.jsonl").write_text('{"id": "0", "input": "q", "target": "pos"}\n')
    (tmp_path / "suite.yaml").write_text("dataset: c.jsonl\nscorer: {name: classification_f1}\npass: record\n"
                                         "robustness: {attacks: [typos], metric: f2}\ngates: ['f2_drop <= 0.1']\n")
    suite = load_suite(tmp_path / "suite.yaml")
    result = suite_result(suite, "m", [_result("0", "pos", "pos"), _result("0~typos", "pos", "neg", "typos")], 2)
    gate = result.gates[0]
    assert gate.status == "failed" and gate.reason.startswith("unknown metric 'f2_drop'; this suite has:")
    assert "f1" in gate.reason and result.metrics["perturbed_cases"] == 1
