"""The paired comparison in every report: report.md's section, comparison.png, the workbook's
comparison and disagreements sheets, report.json; and runs without one left as they were."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from harness.report import write_reports
from harness.report.forest import MAX_ROWS, forest_figure, forest_rows
from harness.report.markdown import render_markdown
from harness.report.xlsx import COMPARISON_COLUMNS, DISAGREEMENT_COLUMNS
from tests.test_report_writers import _case, _suite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REF, CAND = "gemma-a", "gemma-b"
# a pipe and a newline (a table cell's end), a tag, mathtext / GitHub math, a lone surrogate
HOSTILE = "id|x\ny<script>alert(1)</script> $x$ \ud83d"


def _row(metric: str, kind: str = "quality", main: bool = False, **over: Any) -> dict[str, Any]:
    row = {
        "metric": metric, "kind": kind, "main": main, "reference": 0.9, "candidate": 0.85, "delta": -0.05,
        "lower": -0.1, "upper": 0.0, "p": 0.21, "p_holm": 0.63, "rho": 0.41, "improved": 2, "regressed": 4,
        "unchanged": 26, "mcnemar_p": 0.69, "discordant": 6, "mde": 0.12, "warning": None,
    }  # fmt: skip
    row.update(over)
    return row


def _pair(suite: str, **over: Any) -> dict[str, Any]:
    pair = {
        "suite": suite, "reference": REF, "candidate": CAND, "matched": 32, "clusters": None,
        "only_reference": [], "only_candidate": [], "duplicates": [], "changed_input": [],
        "warnings": [], "refused": None, "rows": [], "disagreements": [],
    }  # fmt: skip
    pair.update(over)
    return pair


def _comparison() -> dict[str, Any]:
    capitals = _pair(
        "capitals",
        clusters=12,
        only_reference=[f"r{i:02d}" for i in range(25)],
        only_candidate=[HOSTILE],
        duplicates=["dup-1"],
        changed_input=["japan"],
        warnings=["fewer than 30 paired cases (12): the intervals are rough"],
        # latency first and the main metric last: the writers put them in their places
        rows=[
            _row("latency_p50_ms", "latency", reference=512.34, candidate=498.71, delta=-13.63, lower=-30.25,
                 upper=2.94, p=0.31, p_holm=0.93, rho=0.72, improved=None, regressed=None, unchanged=None,
                 mcnemar_p=None, discordant=None, mde=None),
            _row("f1", reference=0.812345, candidate=0.70001, delta=-0.112335, lower=-0.2, upper=-0.02,
                 p=0.032, p_holm=0.19, warning="macro F1 over 2 classes only"),
            _row("accuracy", main=True, reference=0.9375, candidate=0.875, delta=-0.0625, lower=-0.15625,
                 upper=0.03125, p=0.0004, p_holm=0.0048, mcnemar_p=0.6875, discordant=6, mde=0.1234),
        ],
        disagreements=[
            {"id": "japan", "input": [{"role": "user", "content": "Country: Japan\nCapital:"}], "target": "Tokyo",
             "reference_output": "Tokyo", "candidate_output": "Kyoto", "reference_score": 1.0,
             "candidate_score": 0.0},
            {"id": HOSTILE, "input": "Country: $x$", "target": {"answer": "x"}, "reference_output": HOSTILE,
             "candidate_output": "=1+1", "reference_score": 0.0, "candidate_score": 1.0},
        ],
    )  # fmt: skip
    refused = _pair("math", matched=0, refused="fingerprints differ: prompt.template",
                    warnings=["the baseline was written by harness 0.0.9"])
    return {
        "reference": {"kind": "model", "name": REF, "path": None, "reason": None, "created": None,
                      "git_commit": None},
        "resamples": 10000, "confidence": 0.95, "seed": 0, "family": {"size": 12, "method": "holm"},
        "pairs": [capitals, refused],
    }  # fmt: skip


def _envelope(comparison: dict[str, Any] | None = None, suite_names: tuple[str, ...] = ("capitals", "math")) -> dict:
    cases = [_case(s, f"{s}-{i}", m) for s in suite_names for m in (REF, CAND) for i in range(3)]
    suites = [_suite(s, m, "accuracy", [], accuracy=0.9) for s in suite_names for m in (REF, CAND)]
    report = {"schema": "pytest-llm-harness/report", "version": 1, "run": {"id": "r1", "git_commit": "abc"},
              "suites": suites, "cases": cases}
    if comparison is not None:
        report["comparison"] = comparison
    return report


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("comparison")
    return out, write_reports(_envelope(_comparison()), out)


def _section(md: str) -> str:
    return md.split("## Comparison\n", 1)[1].split("\n## ", 1)[0]


def _outside_code(text: str) -> str:
    return re.sub(r"(`+).*?\1", "", text)


# -- report.md --------------------------------------------------------------


def test_markdown_section_has_the_table_with_deltas_intervals_and_p(written: tuple[Path, list[Path]]) -> None:
    out, _ = written
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.index("## Summary") < md.index("## Comparison") < md.index("## Gates")
    section = _section(md)
    assert ("Reference: model **gemma-a** · 10,000 paired bootstrap resamples · 95% intervals · "
            "holm adjustment over 12 p-values · seed 0") in section
    assert "32 paired cases in 12 clusters." in section
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    assert lines[0] == "| metric | gemma-a | gemma-b | Δ [low, high] | p (Holm) | ρ | improved / regressed |"
    # quality first with the main metric on top and marked, latency last; 4 significant digits, ms to 0.1
    assert lines[1] == ("| **accuracy** (main) | 0.9375 | 0.875 | -0.0625 [-0.1562, 0.03125] | <0.001 (0.0048) "
                        "| 0.41 | 2 / 4 |")
    assert lines[2] == "| f1 | 0.8123 | 0.7 | -0.1123 [-0.2, -0.02] | 0.032 (0.19) | 0.41 | 2 / 4 |"
    assert lines[3] == ("| latency_p50_ms | 512.3 ms | 498.7 ms | -13.6 ms [-30.2, 2.9] | 0.31 (0.93) | 0.72 "
                        "| — |")
    assert "- accuracy: McNemar p 0.688, 6 discordant; smallest detectable difference 0.1234" in section


def test_markdown_shows_warnings_ids_and_the_refused_reason(written: tuple[Path, list[Path]]) -> None:
    out, _ = written
    section = _section((out / "report.md").read_text(encoding="utf-8"))
    capitals, math = section.split("### math:")
    # pair warnings and row warnings, each a list item
    assert "- ⚠ fewer than 30 paired cases (12): the intervals are rough" in capitals
    assert "- ⚠ f1: macro F1 over 2 classes only" in capitals
    shown = ", ".join(f"`r{i:02d}`" for i in range(20))
    assert f"Only in reference gemma-a (25): {shown} and 5 more" in capitals
    assert "Duplicate ids (1): `dup-1`" in capitals and "Input changed (1): `japan`" in capitals
    assert "Cases scored differently: 2" in capitals
    # a refused pair: its reason and its warnings, no table
    assert "**Comparison refused**: fingerprints differ: prompt.template" in math
    assert "- ⚠ the baseline was written by harness 0.0.9" in math
    assert "| metric |" not in math
    assert "![forest plot of the quality deltas and their intervals](comparison.png)" in section


def test_markdown_names_a_baseline_reference_with_its_provenance() -> None:
    comparison = _comparison()
    comparison["reference"] = {"kind": "baseline", "name": REF, "path": "baselines/main.json",
                               "reason": "release 1.2 signed off", "created": "2026-11-20T10:00:00+00:00",
                               "git_commit": "abc123"}
    comparison["pairs"][0]["candidate"] = REF  # this run's gemma-a against the baseline's
    section = _section(render_markdown(_envelope(comparison)))
    assert section.startswith(
        "\nReference: baseline `baselines/main.json` (model gemma-a, created 2026-11-20T10:00:00+00:00, "
        "git commit `abc123`); reason: release 1.2 signed off · 10,000"
    )
    assert "| metric | gemma-a (reference) | gemma-a (candidate) | Δ [low, high] |" in section
    # not drawn (or matplotlib missing): no link to a file that is not there
    assert "comparison.png" not in section


def test_hostile_names_and_ids_neither_break_the_table_nor_act(tmp_path: Path) -> None:
    comparison = _comparison()
    pair = comparison["pairs"][0]
    pair["candidate"] = HOSTILE
    pair["rows"][1]["metric"] = HOSTILE
    write_reports(_envelope(comparison), tmp_path)
    section = _section((tmp_path / "report.md").read_text(encoding="utf-8"))
    table = [line for line in section.splitlines() if line.startswith("|")]
    assert len(table) == 5  # header, rule, three rows: no newline split a row
    for line in table:
        assert len(re.findall(r"(?<!\\)\|", line)) == 8  # 7 columns, no pipe taken for a border
    assert "\\ud83d" in section and "\ud83d" not in section
    # outside code spans: no tag, no math; inside them both are literal text
    plain = _outside_code(section)
    assert "<script" not in plain and "$x$" not in plain
    assert "&lt;script>" in plain and "\\$x\\$" in plain
    assert "`id|x\\ny<script>alert(1)</script> $x$ \\ud83d`" in section  # the unmatched id, whole


# -- comparison.png ---------------------------------------------------------


def test_forest_png_is_written_and_valid(written: tuple[Path, list[Path]]) -> None:
    from PIL import Image

    out, paths = written
    png = out / "comparison.png"
    assert png in paths and png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and 300 <= image.width <= 3000 and 200 <= image.height <= 3000


def test_forest_rows_are_quality_only_main_first_and_capped() -> None:
    comparison = _comparison()
    rows, total = forest_rows(_envelope(comparison))
    assert [(r.metric, r.main) for r in rows] == [("accuracy", True), ("f1", False)] and total == 2
    many = [_pair(f"s{i}", rows=[_row("f1"), _row("accuracy", main=True)]) for i in range(30)]
    comparison["pairs"] = many
    rows, total = forest_rows(_envelope(comparison))
    assert total == 60 and len(rows) == MAX_ROWS
    assert all(r.main for r in rows[:30]) and not any(r.main for r in rows[30:])
    figure = forest_figure(rows, total)
    assert figure.axes[0].get_title() == f"Paired comparison (first {MAX_ROWS} of 60 rows)"


def test_forest_labels_are_escaped_and_drawable(tmp_path: Path) -> None:
    comparison = _comparison()
    # short enough to be shown whole; unescaped, "$\frac{$" would make mathtext raise while drawing
    comparison["pairs"][0]["candidate"] = "$x$ \ud83d\n|$\\frac{$"
    rows, total = forest_rows(_envelope(comparison))
    labels = [t.get_text() for t in forest_figure(rows, total).axes[0].get_yticklabels()]
    assert all("\n" not in label and "\ud83d" not in label for label in labels)
    assert all("\\$x\\$" in label and "\\ud83d" in label for label in labels)
    assert not re.search(r"(?<!\\)\$", "".join(labels))
    paths = write_reports(_envelope(comparison), tmp_path)
    assert (tmp_path / "comparison.png").read_bytes()[:8] == PNG_MAGIC and tmp_path / "comparison.png" in paths


# -- report.xlsx ------------------------------------------------------------


def test_xlsx_comparison_and_disagreement_sheets(written: tuple[Path, list[Path]]) -> None:
    import openpyxl

    out, _ = written
    wb = openpyxl.load_workbook(out / "report.xlsx")
    assert wb.sheetnames[:3] == ["summary", "gates", "comparison"]
    assert wb.sheetnames[-2:] == ["bad_cases", "disagreements"]
    ws = wb["comparison"]
    assert ws.freeze_panes == "A2" and all(c.font.bold for c in ws[1])
    assert ws._images  # the forest plot under the table
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0] == tuple(COMPARISON_COLUMNS) == (
        "suite", "reference", "candidate", "metric", "kind", "main", "reference_value", "candidate_value",
        "delta", "lower", "upper", "p", "p_holm", "rho", "improved", "regressed", "unchanged",
        "mcnemar_p", "discordant", "mde", "warning",
    )  # fmt: skip
    by_metric = {(r[0], r[3]): dict(zip(COMPARISON_COLUMNS, r)) for r in rows[1:]}
    assert len(rows) == 1 + 3 + 1  # three metrics, one refused pair
    accuracy = by_metric[("capitals", "accuracy")]
    assert accuracy["main"] is True and accuracy["reference_value"] == 0.9375 and accuracy["candidate_value"] == 0.875
    assert (accuracy["delta"], accuracy["lower"], accuracy["upper"]) == (-0.0625, -0.15625, 0.03125)
    assert (accuracy["p"], accuracy["p_holm"], accuracy["mcnemar_p"], accuracy["discordant"]) == (
        0.0004, 0.0048, 0.6875, 6)
    assert by_metric[("capitals", "f1")]["warning"] == "macro F1 over 2 classes only"
    assert by_metric[("capitals", "latency_p50_ms")]["mcnemar_p"] is None
    refused = by_metric[("math", None)]
    assert refused["warning"] == "comparison refused: fingerprints differ: prompt.template"
    assert refused["delta"] is None

    ws = wb["disagreements"]
    rows = list(ws.iter_rows(values_only=True))
    assert rows[0] == tuple(DISAGREEMENT_COLUMNS) == (
        "suite", "reference", "candidate", "id", "input", "target", "reference_output", "candidate_output",
        "reference_score", "candidate_score",
    )  # fmt: skip
    japan, hostile = (dict(zip(DISAGREEMENT_COLUMNS, r)) for r in rows[1:])
    assert (japan["suite"], japan["reference"], japan["candidate"], japan["id"]) == ("capitals", REF, CAND, "japan")
    assert json.loads(japan["input"]) == [{"role": "user", "content": "Country: Japan\nCapital:"}]
    assert (japan["reference_output"], japan["candidate_output"], japan["reference_score"],
            japan["candidate_score"]) == ("Tokyo", "Kyoto", 1.0, 0.0)
    assert hostile["id"] == HOSTILE.replace("\ud83d", "\\ud83d")  # the surrogate as its escape
    assert json.loads(hostile["target"]) == {"answer": "x"}
    assert hostile["candidate_output"] == "=1+1" and ws["H3"].data_type == "s"  # text, never a formula


def test_xlsx_comparison_names_hold_hostile_text(tmp_path: Path) -> None:
    import openpyxl

    comparison = _comparison()
    comparison["pairs"][0]["candidate"] = HOSTILE
    write_reports(_envelope(comparison), tmp_path)
    rows = list(openpyxl.load_workbook(tmp_path / "report.xlsx")["comparison"].iter_rows(values_only=True))
    assert {r[2] for r in rows[1:4]} == {HOSTILE.replace("\ud83d", "\\ud83d")}


def test_a_suite_named_comparison_keeps_its_sheet_name_unless_the_run_compares(tmp_path: Path) -> None:
    import openpyxl

    names = ("comparison", "disagreements")
    write_reports(_envelope(None, names), tmp_path / "plain")
    sheets = openpyxl.load_workbook(tmp_path / "plain" / "report.xlsx").sheetnames
    assert "comparison@gemma-a" in sheets and "comparison" not in sheets
    write_reports(_envelope(_comparison(), names), tmp_path / "compared")
    sheets = openpyxl.load_workbook(tmp_path / "compared" / "report.xlsx").sheetnames
    assert len({s.lower() for s in sheets}) == len(sheets)
    assert sheets[2] == "comparison" and sheets[-1] == "disagreements"


# -- report.json ------------------------------------------------------------


def test_json_keeps_the_comparison_and_writes_a_disagreement_per_line(written: tuple[Path, list[Path]]) -> None:
    out, _ = written
    text = (out / "report.json").read_text(encoding="utf-8")
    data = json.loads(text)
    assert data == _envelope(_comparison())  # the lone surrogate read back as itself
    assert list(data) == ["schema", "version", "run", "suites", "cases", "comparison"]
    lines = text.splitlines()
    start = lines.index('        "disagreements": [')
    one_per_line = [json.loads(line.strip().rstrip(",")) for line in lines[start + 1:start + 3]]
    assert one_per_line == _comparison()["pairs"][0]["disagreements"]
    assert lines[start + 3] == "        ]"


def test_json_comparison_without_disagreements_is_plain_indented_json(tmp_path: Path) -> None:
    comparison = _comparison()
    for pair in comparison["pairs"]:
        pair["disagreements"] = []
    write_reports(_envelope(comparison), tmp_path)
    text = (tmp_path / "report.json").read_text(encoding="utf-8")
    block = '  "comparison": ' + json.dumps(comparison, ensure_ascii=False, indent=2).replace("\n", "\n  ")
    assert text.endswith(block.encode("utf-8", "backslashreplace").decode("utf-8") + "\n}\n")


# -- runs without a comparison ----------------------------------------------


@pytest.mark.parametrize("comparison", ["absent", None])
def test_no_comparison_writes_no_section_sheet_or_plot(comparison: Any, tmp_path: Path) -> None:
    import openpyxl

    plain = _envelope()
    write_reports(copy.deepcopy(plain), tmp_path / "plain")
    report = copy.deepcopy(plain)
    if comparison is None:
        report["comparison"] = None
    paths = write_reports(report, tmp_path / "run")
    assert not (tmp_path / "run" / "comparison.png").exists() and not [p for p in paths if p.suffix == ".png"]
    md = (tmp_path / "run" / "report.md").read_text(encoding="utf-8")
    assert "Comparison" not in md
    assert md == (tmp_path / "plain" / "report.md").read_text(encoding="utf-8")
    sheets = openpyxl.load_workbook(tmp_path / "run" / "report.xlsx").sheetnames
    assert sheets == ["summary", "gates", "capitals@gemma-a", "capitals@gemma-b", "math@gemma-a", "math@gemma-b",
                      "bad_cases"]
    data = json.loads((tmp_path / "run" / "report.json").read_text(encoding="utf-8"))
    assert data == report  # None written as null; absent stays absent
