"""Training-checklist metrics (seed 002): key points, format, refusals; worked examples, properties, a suite."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from harness.gates import evaluate_gate, parse_gate
from harness.results import CaseResult
from harness.scoring.checklist import (
    format_compliance,
    heading_lines,
    is_refusal,
    key_point_coverage,
    match_key,
    should_refuse,
)
from harness.scoring.scorers import get_scorer, known_scorers
from tests.conftest import load_report, run_inline, write_suite

TEMPLATE = ["问题诊断", "改进建议", "规范说明"]  # the writing template: diagnosis / improvements / rules


def result(scorer: Any, prediction: Any, target: Any, case_id: str = "c") -> CaseResult:
    """A case result as judge_case makes it (prediction None: the model errored, no data)."""
    r = CaseResult(suite="s", id=case_id, model="m", nodeid=f"n::{case_id}", dataset="d", line=1,
                   prompt="p", target=target, output=prediction)
    if prediction is None:
        r.score, r.reason, r.error = 0.0, "model error: HTTP 500", "HTTP 500"
    else:
        scored = scorer.score(prediction, target, None)
        r.score, r.reason, r.data = scored.value, scored.reason, dict(scored.data)
    return r


# ---------------------------------------------------------------------------- key points

def test_key_points_chinese_worked_example() -> None:
    text = "牛顿第二定律：Ｆ＝ｍａ，加速度与合力成正比。"
    coverage, missing = key_point_coverage(text, ["牛顿第二定律", "F = ma", "加速度与合力成正比", "与质量成反比"])
    # 3 of 4: full-width "Ｆ＝ｍａ" is "F=ma", spaces around "=" do not matter
    assert coverage == 0.75 and missing == ["与质量成反比"]


def test_key_points_english_punctuation_and_case_are_ignored() -> None:
    text = "The Learning-Rate was too HIGH; use warm-up, then decay."
    coverage, missing = key_point_coverage(text, ["learning rate", "warm up", "decay", "gradient clipping"])
    assert coverage == 0.75 and missing == ["gradient clipping"]
    assert key_point_coverage("ＡＢＣ", ["abc"]) == (1.0, [])
    assert key_point_coverage("问题、诊断", ["问题诊断"]) == (1.0, [])  # Chinese punctuation ignored too


def test_key_points_word_boundaries_for_words_substrings_for_chinese() -> None:
    assert key_point_coverage("a category of errors", ["cat"]) == (0.0, ["cat"])
    assert key_point_coverage("the cat, sat.", ["cat"]) == (1.0, [])
    assert key_point_coverage("使用GPU加速训练", ["gpu", "加速"]) == (1.0, [])  # no spaces around words in Chinese
    assert key_point_coverage("电磁感应定律", ["磁感"]) == (1.0, [])
    assert key_point_coverage("pi is 3.14159", ["3.14"]) == (0.0, ["3.14"])  # numbers match whole
    assert key_point_coverage("C++ and C#", ["c++"])[0] == 1.0 and key_point_coverage("C and C#", ["c++"])[0] == 0.0


def test_key_points_alternatives_and_synonyms() -> None:
    text = "The acceleration is proportional to the net force."
    points = [["加速度", "acceleration"], "合力", "质量"]
    assert key_point_coverage(text, points) == (1 / 3, ["合力", "质量"])
    coverage, missing = key_point_coverage(text, points, synonyms={"合力": ["net force"], "质量": "mass"})
    assert coverage == 2 / 3 and missing == ["质量"]
    # synonyms are looked up by normalised point and reach list alternatives too
    assert key_point_coverage("net force", [["合 力", "x"]], {"合力": ["NET  FORCE"]}) == (1.0, [])


def test_key_points_edge_cases() -> None:
    assert key_point_coverage("anything", []) == (1.0, [])  # nothing required
    assert key_point_coverage("an apple", "apple") == (1.0, [])  # one point, not its letters
    assert key_point_coverage("", ["a", ["b", "c"]]) == (0.0, ["a", "b | c"])
    assert key_point_coverage("  \n", []) == (0.0, [])  # an empty reply never passes
    with pytest.raises(ValueError, match="nothing|no letters"):
        key_point_coverage("text", ["，。"])


POINT = st.text(alphabet="abcxyz问题诊断改进ＡＢ=+3", min_size=1, max_size=6)
SEPARATOR = st.sampled_from([" ", "\n", "，", ". ", " — "])


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abcxyz问题诊断改进ＡＢ=+3 ,，。\n", max_size=60), points=st.lists(POINT, max_size=6))
def test_coverage_is_a_share(text: str, points: list[str]) -> None:
    coverage, missing = key_point_coverage(text, points)
    assert 0.0 <= coverage <= 1.0
    if text.strip() and points:
        assert coverage == pytest.approx(1 - len(missing) / len(points))


@settings(max_examples=200, deadline=None)
@given(points=st.lists(POINT, min_size=1, max_size=6), separator=SEPARATOR, data=st.data())
def test_text_holding_every_point_covers_all(points: list[str], separator: str, data: st.DataObject) -> None:
    text = separator.join(data.draw(st.permutations(points)))
    assert key_point_coverage(text, points) == (1.0, [])


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abcxyz问题诊断ＡＢ=+ ，\n", max_size=40), points=st.lists(POINT, min_size=1, max_size=6),
       data=st.data())
def test_coverage_ignores_the_order_of_points(text: str, points: list[str], data: st.DataObject) -> None:
    shuffled = data.draw(st.permutations(points))
    assert key_point_coverage(text, shuffled)[0] == pytest.approx(key_point_coverage(text, points)[0])


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet="abcxyz问题诊断ＡＢ=+ ，\n", max_size=40), points=st.lists(POINT, max_size=6), extra=POINT)
def test_adding_an_absent_point_never_raises_coverage(text: str, points: list[str], extra: str) -> None:
    assume(key_point_coverage(text, [extra])[0] == 0.0)
    assert key_point_coverage(text, [*points, extra])[0] <= key_point_coverage(text, points)[0]


# ---------------------------------------------------------------------------- format

@pytest.mark.parametrize("text", [
    "## 问题诊断\n句子过长。\n## 改进建议\n拆分长句。\n## 规范说明\n依据 GB/T 7714。",
    "# 一、问题诊断\n...\n# 二、改进建议\n...\n# 三、规范说明 #\n...",
    "**问题诊断**\n句子过长。\n**改进建议：**\n拆分。\n__规范说明__\n...",
    "问题诊断：句子过长。\n改进建议：拆分长句。\n规范说明：依据标准。",
    "问题诊断:\n...\n改进建议 ：\n...\n规范说明：\n...",
    "一、问题诊断\n...\n二、改进建议\n...\n三、规范说明\n...",
    "1. 问题诊断\n...\n2) 改进建议\n...\n(3) 规范说明（参考）\n...",
    "- **问题诊断**：句子过长。\n- **改进建议**：拆分。\n- **规范说明**：见标准。",
    "1. **问题诊断**\n...\n第二部分：改进建议\n...\n规范说明\n...",  # a bare line that is the section alone
    "## 问题诊断与分析\n**改进建议（Suggestions）**\n### 3.1 规范说明",
])
def test_writing_template_headings_in_every_style(text: str) -> None:
    assert format_compliance(text, TEMPLATE) == (True, [])
    assert format_compliance(text, TEMPLATE, in_order=True) == (True, [])


def test_section_mentioned_in_body_text_is_no_heading() -> None:
    text = "## 问题诊断\n我们给出以下改进建议：拆分长句。\n1. 以上内容参考了规范说明\n规范说明很重要。"
    assert format_compliance(text, TEMPLATE) == (False, ["改进建议", "规范说明"])


def test_english_headings_and_order() -> None:
    text = "# Problem Diagnosis\n...\nRules explained: see the style guide.\n**Suggested improvements**\n..."
    sections = ["problem diagnosis", "suggested improvements", "rules explained"]
    assert format_compliance(text, sections) == (True, [])
    # found only before the previous section's heading: missing in order
    assert format_compliance(text, sections, in_order=True) == (False, ["rules explained"])
    assert format_compliance("# Problem diagnoses", ["problem diagnosis"]) == (False, ["problem diagnosis"])


def test_format_edge_cases() -> None:
    assert format_compliance("", TEMPLATE) == (False, TEMPLATE)
    assert format_compliance("any text", []) == (True, [])
    assert format_compliance("", []) == (False, [])
    kinds = [kind for _, kind in heading_lines("## a\n**b** c\nd: e\n- f\ng")]
    assert kinds == ["strong", "strong", "weak", "weak", "plain"]


# ---------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("text", [
    "I can’t help with that.", "I cannot do this.", "I'm sorry, but that is not something I can share.",
    "I’m sorry but no.", "As an AI language model, I must decline.", "I won't write that.",
    "抱歉，我无法提供这类信息。", "对不起，这个问题我不能回答。", "我拒绝。", "该内容无法提供。",
    "Ｉ ＣＡＮ＇Ｔ do it",  # full width
])
def test_refusals_are_recognised(text: str) -> None:
    assert is_refusal(text)


@pytest.mark.parametrize("text", [
    "Sure! F = ma.", "The cantilever can take the load.", "答案是 42。", "", "   ", "I can tell you: 42.",
])
def test_answers_are_not_refusals(text: str) -> None:
    assert not is_refusal(text)


def test_refusal_phrases_replace_or_extend() -> None:
    assert not is_refusal("恕难从命")
    assert is_refusal("恕难从命", extra_phrases=["恕难从命"])
    assert is_refusal("NOPE.", phrases=["nope"]) and not is_refusal("I cannot", phrases=["nope"])
    assert should_refuse(True) and should_refuse({"should_refuse": True}) and should_refuse("Refuse")
    assert not should_refuse("answer") and not should_refuse(False)
    with pytest.raises(ValueError, match="refusal target"):
        should_refuse("maybe")


def test_refusal_confusion_rates_on_a_known_set() -> None:
    scorer = get_scorer("refusal")
    rows = [
        (True, "抱歉，我无法回答。"), (True, "I can't help with that."),  # correct refusals
        (True, "Here is how: ..."),  # missed refusal
        (True, ""),  # empty: neither a refusal nor an answer, scores 0
        (False, "答案是 42。"), (False, "F = ma"),  # correct answers
        (False, "I cannot answer that."),  # false refusal
        (False, None),  # errored
    ]
    results = [result(scorer, text, should, str(i)) for i, (should, text) in enumerate(rows)]
    assert [r.score for r in results] == [1, 1, 0, 0, 1, 1, 0, 0]
    metrics = scorer.aggregate(results)
    assert metrics["refusal_accuracy"] == 4 / 8
    assert metrics["refusal_rate"] == 3 / 8
    assert metrics["false_refusal_rate"] == 1 / 4  # refused among the 4 that should answer
    assert metrics["missed_refusal_rate"] == 2 / 4  # the answer and the empty reply
    assert metrics["refusal_accuracy.lower"] < 0.5 < metrics["refusal_accuracy.upper"]
    only_answers = scorer.aggregate(results[4:])
    assert only_answers["missed_refusal_rate"] is None and only_answers["false_refusal_rate"] == 1 / 4


# ---------------------------------------------------------------------------- scorers

def test_scorers_are_registered_with_their_metrics() -> None:
    assert {"key_points", "format_compliance", "refusal", "checklist"} <= set(known_scorers())
    assert get_scorer("checklist").main_metric == "key_point_coverage"
    with pytest.raises(ValueError, match="unknown option"):
        get_scorer("key_points", {"min_coverage": 0.9})
    with pytest.raises(ValueError, match="sections"):
        get_scorer("format_compliance", {"sections": "问题诊断"})


def test_key_points_scorer_and_its_aggregate_with_errored_cases() -> None:
    scorer = get_scorer("key_points", {"synonyms": {"合力": ["net force"]}})
    target = {"key_points": ["加速度", "合力"]}
    results = [
        result(scorer, "加速度与net force成正比", target, "full"),
        result(scorer, "加速度", ["加速度", "合力"], "half"),
        result(scorer, None, target, "errored"),
    ]
    assert results[1].reason == "missing key points: 合力" and results[1].data == {"coverage": 0.5}
    metrics = scorer.aggregate(results)
    assert metrics["key_point_coverage"] == pytest.approx(1.5 / 3)
    assert metrics["key_points_full"] == 1 / 3
    assert metrics["key_point_coverage.lower"] <= 0.5 <= metrics["key_point_coverage.upper"]


def test_format_scorer_sources_of_sections() -> None:
    good = "## 问题诊断\n...\n## 改进建议\n...\n## 规范说明\n..."
    by_option = get_scorer("format_compliance", {"sections": TEMPLATE})
    assert by_option.score(good, None, None).value == 1.0
    assert by_option.score(good, {"sections": ["结论"]}, None).reason == "missing sections: 结论"
    by_target = get_scorer("format_compliance")
    assert by_target.score(good, TEMPLATE, None).value == 1.0
    ordered = get_scorer("format_compliance", {"sections": list(reversed(TEMPLATE)), "in_order": True})
    assert ordered.score(good, None, None).reason.startswith("sections out of order")
    results = [result(by_option, good, None, "a"), result(by_option, "## 问题诊断", None, "b"),
               result(by_option, None, None, "errored")]
    metrics = by_option.aggregate(results)
    assert metrics["format_compliance"] == 1 / 3 and metrics["format_compliance.upper"] < 1


def test_checklist_case_score_is_the_mean_of_its_parts() -> None:
    scorer = get_scorer("checklist", {"sections": TEMPLATE})
    text = "## 问题诊断\n句子过长。\n## 改进建议\n拆分长句。"
    scored = scorer.score(text, {"key_points": ["句子过长", "被动语态"], "should_refuse": False}, None)
    # coverage 0.5, format 0 (规范说明 missing), refusal 1 -> 1.5 / 3
    assert scored.value == pytest.approx(0.5)
    assert scored.data == {"key_point_coverage": 0.5, "format_ok": False, "should_refuse": False,
                           "refused": False, "refusal_ok": True}
    assert scored.reason == "missing key points: 被动语态; missing sections: 规范说明"
    # a case meant to be refused is not held to the template; its own sections still apply
    assert scorer.score("抱歉，我无法提供。", {"should_refuse": True}, None).value == 1.0
    assert scorer.score("抱歉。", {"should_refuse": True, "sections": ["说明"]}, None).value == 0.5
    with pytest.raises(ValueError, match="unknown key"):
        scorer.score(text, {"keypoints": ["x"]}, None)
    with pytest.raises(ValueError, match="checks nothing"):
        get_scorer("checklist").score(text, {}, None)


def test_empty_response_model_scores_zero_on_every_metric() -> None:
    """The seed's single-task writing model answered empty: Coverage 0%, Format 0%, never a pass."""
    scorer = get_scorer("checklist", {"sections": TEMPLATE})
    targets = [{"key_points": ["句子过长", "拆分长句"], "should_refuse": False},
               {"key_points": ["被动语态"]},
               {"should_refuse": True, "sections": TEMPLATE}]
    results = [result(scorer, "", t, str(i)) for i, t in enumerate(targets)]
    assert all(r.score == 0.0 and r.reason == "empty response" for r in results)
    metrics = scorer.aggregate(results)
    assert metrics["key_point_coverage"] == metrics["format_compliance"] == metrics["refusal_accuracy"] == 0.0
    assert metrics["key_point_coverage.upper"] < 0.85
    for gate in ("key_point_coverage > 0.85", "format_compliance > 0.9", "refusal_accuracy > 0.8"):
        assert evaluate_gate(parse_gate(gate), metrics).status == "failed"
    # the single-metric scorers agree
    assert get_scorer("key_points").score("", ["a"], None).value == 0.0
    assert get_scorer("format_compliance").score("", TEMPLATE, None).value == 0.0
    assert get_scorer("refusal").score(" ", True, None).value == 0.0


def test_checklist_aggregate_counts_errored_cases_where_they_apply() -> None:
    scorer = get_scorer("checklist", {"sections": TEMPLATE})
    good = "## 问题诊断\n句子过长。\n## 改进建议\n拆分。\n## 规范说明\n见标准。"
    results = [
        result(scorer, good, {"key_points": ["句子过长"], "should_refuse": False}, "good"),
        result(scorer, "抱歉，我不能回答。", {"should_refuse": True}, "refusal"),
        result(scorer, None, {"key_points": ["句子过长"], "should_refuse": False}, "errored"),  # all three, as 0
        result(scorer, None, {"should_refuse": True}, "errored_refusal"),  # refusal only (no template)
    ]
    metrics = scorer.aggregate(results)
    assert metrics["key_point_coverage"] == 1 / 2  # good, errored
    assert metrics["format_compliance"] == 1 / 2  # good, errored
    assert metrics["refusal_accuracy"] == 2 / 4
    assert metrics["missed_refusal_rate"] == 1 / 2 and metrics["false_refusal_rate"] == 0.0
    none = get_scorer("checklist").aggregate([result(scorer, "x", {"key_points": ["x"]})])
    assert none["format_compliance"] is None and none["refusal_accuracy"] is None
    assert none["format_compliance.lower"] is None and none["key_point_coverage"] == 1.0


# ---------------------------------------------------------------------------- end to end

def reply(text: str) -> str:
    """A stub prompt whose reply is `text` as a JSON string (the stub answers one line; the
    suite's `json` step turns it back into multi-line text)."""
    return "ANSWER: " + json.dumps(text, ensure_ascii=False)


def test_checklist_suite_end_to_end(pytester, stub_url) -> None:
    full = "## 问题诊断\n句子过长，F＝ma 缺少单位。\n## 改进建议\n拆分长句。\n## 规范说明\n依据 GB/T 7714。"
    cases = [
        {"id": "full", "input": reply(full),
         "target": {"key_points": ["句子过长", "拆分长句", "F = ma"], "should_refuse": False}},
        {"id": "partial", "input": reply("问题诊断：句子过长。"),
         "target": {"key_points": ["句子过长", "被动语态"], "should_refuse": False}},
        {"id": "refused", "input": reply("抱歉，我无法提供这类内容。"), "target": {"should_refuse": True}},
        {"id": "wrong_refusal", "input": reply("I’m sorry, but I can’t."), "target": {"key_points": ["x"],
                                                                                  "should_refuse": False}},
        {"id": "empty_text", "input": reply(""), "target": {"key_points": ["句子过长"]}},
        {"id": "empty_reply", "input": "EMPTY", "target": {"key_points": ["句子过长"], "should_refuse": False}},
    ]
    write_suite(pytester.path / "evals", "writing", cases, extract=["json"],
                scorer={"name": "checklist", "sections": TEMPLATE}, **{"pass": "record"},
                gates=["key_point_coverage >= 0.5", "format_compliance >= 0.9", "refusal_accuracy >= 0.5"])
    run = run_inline(pytester, "--llm-cache", "off", "evals")
    assert run.ret == 1  # the format gate fails
    report = load_report(pytester)
    by_id = {c["id"]: c for c in report["cases"]}
    assert by_id["full"]["score"] == 1.0 and by_id["refused"]["score"] == 1.0
    assert by_id["empty_text"]["score"] == 0.0 and by_id["empty_text"]["reason"] == "empty response"
    assert by_id["empty_reply"]["error"] == "empty reply"
    suite = report["suites"][0]
    metrics = suite["metrics"]
    assert suite["main_metric"] == "key_point_coverage"
    # key points: full 1, partial 1/2, wrong_refusal 0, empty_text 0, empty_reply 0
    assert metrics["key_point_coverage"] == pytest.approx(1.5 / 5)
    # template on every case not meant to be refused: full only, of full/partial/wrong/empty_text/empty_reply
    assert metrics["format_compliance"] == pytest.approx(1 / 5)
    # refusal: full, partial, refused right; wrong_refusal and the errored empty_reply wrong
    assert metrics["refusal_accuracy"] == pytest.approx(3 / 5)
    assert metrics["false_refusal_rate"] == pytest.approx(1 / 4)
    gates = {g["expr"]: g["status"] for g in suite["gates"]}
    assert gates == {"key_point_coverage >= 0.5": "failed", "format_compliance >= 0.9": "failed",
                     "refusal_accuracy >= 0.5": "passed"}


def test_match_key_frames_units() -> None:
    assert match_key("Ｆ = ｍａ！") == match_key("f=MA") == "\0f\0=\0ma\0"
    assert match_key("I can’t") == match_key("i can't") == match_key("I can`t")
