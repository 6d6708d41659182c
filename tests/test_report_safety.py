"""Reports survive any text a model or a dataset can produce, are written whole, and are private."""

from __future__ import annotations

import copy
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook

from harness.report import ReportsIncomplete, write_reports
from harness.report.files import write_atomic
from harness.textsafe import visible

# what a model may answer: a lone surrogate (valid JSON, invalid UTF-8), a clear-screen and
# window-title escape, a hidden hyperlink, a right-to-left override, a bell, a formula
HOSTILE = "A\ud83dB \x1b[2J\x1b]0;pwned\x07 \x1b]8;;http://evil/\x1b\\click\x1b]8;;\x1b\\ \u202egnp.exe $x^$"


def _report(output: str) -> dict[str, Any]:
    case = {"suite": "s", "id": "c1", "model": "m", "nodeid": "evals/s/cases.jsonl::c1",
            "dataset": "evals/s/cases.jsonl", "line": 1, "prompt": [{"role": "user", "content": output}],
            "target": "positive", "output": output, "extracted": output, "score": 0.0, "passed": False,
            "reason": f"expected 'positive', got {output!r}", "error": None, "latency_ms": 5.0,
            "output_tokens": 3, "metadata": {}, "data": {}}
    suite = {"name": "s", "model": "m", "main_metric": "accuracy", "metrics": {"accuracy": 0.0, "error_rate": 0.0},
             "gates": [], "cases": 1, "total_cases": 1, "subset": False,
             # a confusion matrix whose predicted label is the hostile text: drawn into the heatmap
             "tables": {"confusion": {"labels": ["positive", output], "matrix": [[0, 1], [0, 0]]}}}
    return {"schema": "x", "version": 1, "run": {"id": "r1"}, "suites": [suite], "cases": [case]}


def test_every_format_is_written_and_json_keeps_the_exact_text(tmp_path: Path) -> None:
    report = _report(HOSTILE)
    original = copy.deepcopy(report)
    paths = write_reports(report, tmp_path)
    names = {p.name for p in paths}
    assert {"report.json", "report.md", "report.xlsx"} <= names
    # the lone surrogate is kept as its JSON escape: the same value read back, not a replacement
    assert json.loads((tmp_path / "report.json").read_text(encoding="utf-8")) == original
    detail = (tmp_path / "details" / "s.jsonl").read_text(encoding="utf-8")
    assert json.loads(detail.splitlines()[0])["output"] == HOSTILE


def test_markdown_and_xlsx_show_escapes_not_control_characters(tmp_path: Path) -> None:
    write_reports(_report(HOSTILE), tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "\x1b" not in md and "\x07" not in md and "\u202e" not in md
    assert "\\x1b[2J" in md and "\\u202e" in md and "\\ud83d" in md
    cells = [c for row in load_workbook(tmp_path / "report.xlsx")["s"].iter_rows(values_only=True) for c in row]
    text = [c for c in cells if isinstance(c, str) and "pwned" in c]
    assert text and not any("\x1b" in c or "\u202e" in c for c in text)
    assert any(c.startswith("A\\ud83dB \\x1b[2J\\x1b]0;pwned") for c in text)  # the output cell


def test_visible_escapes_only_what_acts_on_a_reader() -> None:
    assert visible("tab\tnew\nline 中文 é") == "tab\tnew\nline 中文 é"
    assert visible("a\rb\x00c\x9bd\u2066e") == "a\\x0db\\x00c\\x9bd\\u2066e"
    assert visible("x\ny", keep_newlines=False) == "x\\ny"


def test_a_failing_format_still_writes_the_others_and_names_itself(tmp_path: Path) -> None:
    (tmp_path / "report.xlsx").mkdir()  # nothing can be renamed over a folder
    with pytest.raises(ReportsIncomplete) as info:
        write_reports(_report("fine"), tmp_path)
    assert len(info.value.failures) == 1 and info.value.failures[0].startswith("report.xlsx not written:")
    assert {p.name for p in info.value.paths} >= {"report.json", "report.md"}
    assert (tmp_path / "report.md").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_writer_that_fails_half_way_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_text('{"previous": true}\n')

    def half(tmp: Path) -> None:
        tmp.write_text('{"trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half)
    assert json.loads(target.read_text()) == {"previous": True}
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_reports_are_private_to_their_owner(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "run1"
    paths = write_reports(_report("fine"), out)
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "reports").stat().st_mode) == 0o700
    assert paths and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in paths)


def test_a_hostile_reply_reaches_neither_the_terminal_nor_the_reports_raw(pytester: pytest.Pytester) -> None:
    from tests.conftest import load_report, run_inline, write_suite

    reply = "A\ud83dB\x1b[2J\x1b]0;pwned\x07\u202e"
    folder = write_suite(pytester.path / "evals", "hostile", [], gates=["accuracy >= 0"])
    # JSON escapes (ensure_ascii): the lone surrogate is valid JSON, though no UTF-8 file holds it raw
    (folder / "cases.jsonl").write_text(json.dumps({"id": "c1", "input": f"q\nANSWER: {reply}", "target": "x"}) + "\n")
    result = run_inline(pytester, "evals")
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert "\x1b[2J" not in out and "\x1b]0;pwned" not in out and "\u202e" not in out
    assert "\\x1b[2J\\x1b]0;pwned\\x07" in out  # shown, escaped, in the failure
    case = load_report(pytester)["cases"][0]
    assert case["output"] == reply  # report.json keeps exactly what the model sent
    md = (pytester.path / "out" / "report.md").read_text(encoding="utf-8")
    assert "\x1b" not in md and "\\ud83d" in md
