"""Report tables: confusion matrices (sheet, PNG heatmap, Markdown link) and seed 001's tool-call sheets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from harness.report import write_reports
from harness.report.heatmap import confusion_figure, confusion_pngs, write_confusion_png
from harness.report.markdown import render_markdown, tool_table_rows
from harness.report.xlsx import (PARAM_COLUMNS, TOOL_BAD_COLUMNS, TOOL_COLUMNS, split_prompt, summary_metrics,
                                 write_xlsx)
from harness.scoring.classification import confusion_matrix
from harness.scoring.toolcalls import toolcall_report

REPO = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
LABELS = ["negative", "neutral", "positive"]
# target, prediction: 3 right negatives, 1 negative read as positive, ...
PAIRS = [("negative", "negative")] * 3 + [("negative", "positive")] + [("neutral", "neutral")] * 2 \
    + [("neutral", "negative")] + [("positive", "positive")] * 4


def call(name: str, **params: Any) -> dict[str, Any]:
    return {"toolName": name, "paramList": params}


CHAT = [
    {"role": "system", "content": "你是货运助手"},
    {"role": "user", "content": "北京天气?"},
    {"role": "assistant", "content": None, "tool_calls": [{"type": "function",
                                                           "function": {"name": "getWeather"}}]},
    {"role": "tool", "content": "晴"},
    {"role": "user", "content": "那上海呢?"},
]
# (id, prompt, label, prediction, score, error)
TOOL_CASES = [
    ("ok", "weather in Beijing?", [call("getWeather", city="Beijing")], [call("getWeather", city="Beijing")], 1.0,
     None),
    ("chat", CHAT, [call("getWeather", city="Shanghai")], [call("getWeather", city="Beijing")], 0.0, None),
    ("plain", "play a song", [call("playMusic", song="x")], [call("getWeather", city="x")], 0.0, None),
    ("boom", "price?", [call("priceCheck", priceType="总价", value=3)], [], None, "TimeoutError: no answer"),
]


def _case(suite: str, cid: str, model: str = "m", **over: Any) -> dict[str, Any]:
    case = {"suite": suite, "id": cid, "model": model, "prompt": f"q {cid}", "target": "positive",
            "output": "positive", "extracted": "positive", "score": 1.0, "passed": True, "reason": None,
            "error": None, "latency_ms": 10.0, "output_tokens": 1, "data": {}}
    case.update(over)
    return case


def _suite(name: str, model: str = "m", main: str = "f1", tables: dict | None = None, **metrics: Any) -> dict:
    return {"name": name, "model": model, "main_metric": main, "metrics": {"error_rate": 0.0, **metrics},
            "gates": [], "cases": 1, "total_cases": 1, "subset": False, "tables": tables or {}}


def _sentiment(model: str = "m", name: str = "sentiment") -> tuple[dict, list[dict]]:
    suite = _suite(name, model, tables={"confusion": confusion_matrix(PAIRS, LABELS)},
                   f1=0.8, **{"f1.lower": 0.6, "f1.upper": 0.9})
    cases = [_case(name, f"s{i}", model, target=t, extracted=p, score=float(t == p), passed=t == p)
             for i, (t, p) in enumerate(PAIRS)]
    return suite, cases


def _tools() -> tuple[dict, list[dict]]:
    labels = [label for *_, label, _, _, _ in TOOL_CASES]
    preds = [pred for *_, pred, _, _ in TOOL_CASES]
    report = toolcall_report(labels, preds)
    tables = {"tool_metrics": report["per_tool"], "param_metrics": report["per_param_tool"]}
    metrics = {k: v for k, v in report.items() if not isinstance(v, dict)}
    suite = _suite("tools", main="f1", tables=tables, f1=report["tool_f1_micro"], **metrics)
    cases = [
        _case("tools", cid, prompt=prompt, target=label, output=None if err else json.dumps(pred),
              extracted=None if err else pred, score=score, passed=None, error=err,
              reason=None if score == 1 else ("calls differ" if not err else None))
        for cid, prompt, label, pred, score, err in TOOL_CASES
    ]
    return suite, cases


def _report(*parts: tuple[dict, list[dict]]) -> dict[str, Any]:
    return {"run": {"id": "r1"}, "suites": [s for s, _ in parts], "cases": [c for _, cs in parts for c in cs]}


def _rows(ws: Any) -> list[tuple]:
    return list(ws.iter_rows(values_only=True))


# -- confusion matrices -----------------------------------------------------


def test_confusion_sheet_has_the_matrix_with_totals_and_the_heatmap(tmp_path: Path) -> None:
    import openpyxl

    write_reports(_report(_sentiment(), _tools()), tmp_path)
    wb = openpyxl.load_workbook(tmp_path / "report.xlsx")
    assert wb.sheetnames == ["summary", "gates", "sentiment", "confusion_sentiment", "tools", "tools_tools",
                             "params_tools", "badcases_tools", "bad_cases"]
    ws = wb["confusion_sentiment"]
    assert _rows(ws) == [
        ("target \\ predicted", "negative", "neutral", "positive", "total"),
        ("negative", 3, 0, 1, 4),
        ("neutral", 1, 2, 0, 3),
        ("positive", 0, 0, 4, 4),
        ("total", 4, 2, 5, 11),
    ]
    assert ws.freeze_panes == "B2"
    assert all(c.font.bold for c in ws[1]) and all(row[0].font.bold for row in ws.iter_rows(min_row=2))
    assert len(ws._images) == 1  # the PNG, embedded beside the table


def test_confusion_sheet_without_png_and_with_formula_like_labels(tmp_path: Path) -> None:
    import openpyxl

    suite = _suite("cls", tables={"confusion": {"labels": ["=A1", "b"], "matrix": [[1, 0], [2, 3]]}})
    wb = openpyxl.load_workbook(write_xlsx(_report((suite, [])), tmp_path))  # xlsx alone: no PNG drawn
    ws = wb["confusion_cls"]
    assert _rows(ws)[0][1] == "=A1" and ws["B1"].data_type == "s" and ws["A2"].data_type == "s"
    assert _rows(ws)[-1] == ("total", 3, 3, 6)
    assert not ws._images


def test_heatmap_png_is_written_and_valid(tmp_path: Path) -> None:
    from PIL import Image

    paths = write_reports(_report(_sentiment(), _tools()), tmp_path)
    png = tmp_path / "confusion_sentiment.png"
    assert png in paths and [p for p in paths if p.suffix == ".png"] == [png]
    assert png.read_bytes()[:8] == PNG_MAGIC
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and 300 <= image.width <= 3000 and 300 <= image.height <= 3000


def test_heatmap_names_carry_the_model_when_the_run_has_several(tmp_path: Path) -> None:
    report = _report(_sentiment("gemma-3"), _sentiment("qwen/2.5"), _sentiment("gemma-3", name="a b"),
                     _sentiment("gemma-3", name="a/b"))
    paths = write_reports(report, tmp_path)
    names = sorted(p.name for p in paths if p.suffix == ".png")
    assert names == ["confusion_a_b_gemma-3-2.png", "confusion_a_b_gemma-3.png",
                     "confusion_sentiment_gemma-3.png", "confusion_sentiment_qwen_2.5.png"]
    assert all(p.parent == tmp_path and p.read_bytes()[:8] == PNG_MAGIC for p in paths if p.suffix == ".png")


def test_markdown_links_each_heatmap(tmp_path: Path) -> None:
    report = _report(_sentiment("m1"), _sentiment("m2"))
    paths = write_reports(report, tmp_path)
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    pngs = sorted(p.name for p in paths if p.suffix == ".png")
    assert pngs == ["confusion_sentiment_m1.png", "confusion_sentiment_m2.png"]
    for name in pngs:
        assert f"![confusion matrix heatmap: sentiment (m{name[-5]})]({name})" in md
    # each link sits right under its own matrix
    section = md.split("### sentiment (m2)")[1]
    assert section.index("| **negative** | 3 | 0 | 1 |") < section.index("confusion_sentiment_m2.png")
    assert [name for _, name in confusion_pngs(report)] == pngs


def test_counts_are_written_up_to_30_labels_only() -> None:
    def texts(n: int) -> list[str]:
        matrix = [[(i * j) % 7 for j in range(n)] for i in range(n)]
        matrix[1] = [0] * n  # an empty row must not divide by zero
        return [t.get_text() for t in confusion_figure([f"c{i}" for i in range(n)], matrix, "t").axes[0].texts]

    assert texts(3) == ["0", "0", "0", "0", "0", "0", "0", "2", "4"]
    assert len(texts(30)) == 900
    assert texts(31) == []


def test_heatmaps_draw_from_threads(tmp_path: Path) -> None:
    from PIL import Image

    labels = [f"class-{i:02d}-with-a-rather-long-name" for i in range(31)]
    matrix = [[(i * j) % 7 for j in range(31)] for i in range(31)]
    errors: list[BaseException] = []

    def draw(n: int) -> None:
        try:
            write_confusion_png(labels[:n], [row[:n] for row in matrix[:n]], f"t{n}", tmp_path / f"h{n}.png")
        except Exception as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=draw, args=(n,)) for n in (4, 16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for n in (4, 16):
        with Image.open(tmp_path / f"h{n}.png") as image:
            assert image.format == "PNG" and image.width > 300


def test_no_confusion_table_draws_nothing_and_never_imports_matplotlib(tmp_path: Path) -> None:
    code = (
        "import sys, json; from pathlib import Path\n"
        "import harness.plugin\n"
        "from harness.report import write_reports\n"
        "report = json.loads(sys.argv[1])\n"
        "paths = write_reports(report, Path(sys.argv[2]))\n"
        "print(sorted(p.name for p in paths if p.suffix == '.png'), 'matplotlib' in sys.modules)\n"
    )
    report = _report(_tools(), (_suite("plain"), [_case("plain", "p1")]))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(report), str(tmp_path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["[]", "False"]
    assert not list(tmp_path.glob("*.png")) and "Confusion" not in (tmp_path / "report.md").read_text()


# -- tool calls -------------------------------------------------------------


def test_tool_call_sheets(tmp_path: Path) -> None:
    import openpyxl

    suite, cases = _tools()
    wb = openpyxl.load_workbook(write_xlsx(_report((suite, cases)), tmp_path))
    assert wb.sheetnames == ["summary", "gates", "tools", "tools_tools", "params_tools", "badcases_tools",
                             "bad_cases"]

    tools = _rows(wb["tools_tools"])
    assert tools[0] == tuple(TOOL_COLUMNS) == ("tool", "precision", "recall", "f1", "support", "predicted", "hits")
    by_tool = {row[0]: row for row in tools[1:]}
    assert list(by_tool) == ["getWeather", "playMusic", "priceCheck", "micro avg", "macro avg"]
    # labels: getWeather x2, playMusic, priceCheck; predictions: getWeather x3; hits 2
    assert by_tool["getWeather"] == ("getWeather", 2 / 3, 1.0, 0.8, 2, 3, 2)
    assert by_tool["playMusic"][1:] == (0, 0, 0, 1, 0, 0)
    assert by_tool["micro avg"][1:] == (2 / 3, 0.5, pytest.approx(4 / 7), 4, 3, 2)
    assert by_tool["micro avg"][1:4] == pytest.approx(
        [suite["metrics"][f"tool_{s}_micro"] for s in ("precision", "recall", "f1")])
    assert by_tool["macro avg"][1:4] == pytest.approx(
        [suite["metrics"][f"tool_{s}_macro"] for s in ("precision", "recall", "f1")])
    assert by_tool["macro avg"][4:] == (None, None, None)

    params = _rows(wb["params_tools"])
    assert params[0] == tuple(PARAM_COLUMNS) and params[0][0] == "param"
    by_param = {row[0]: row for row in params[1:]}
    assert set(by_param) == {"getWeather-city", "playMusic-song", "priceCheck-priceType", "priceCheck-value",
                             "priceCheck-priceType-总价", "micro avg", "macro avg"}
    assert by_param["getWeather-city"][4:] == (2, 3, 1)
    assert by_param["micro avg"][1:4] == pytest.approx(
        [suite["metrics"][f"param_{s}_micro"] for s in ("precision", "recall", "f1")])

    bad = _rows(wb["badcases_tools"])
    assert bad[0] == tuple(TOOL_BAD_COLUMNS) == ("id", "history", "query", "label", "prediction", "reason")
    rows = {row[0]: dict(zip(TOOL_BAD_COLUMNS, row)) for row in bad[1:]}
    assert list(rows) == ["chat", "plain", "boom"]  # "ok" scored 1
    chat = rows["chat"]
    # the dialogue before the last user message: the system prompt is no turn of it
    assert chat["history"].splitlines() == [
        "user: 北京天气?",
        'assistant: [{"type": "function", "function": {"name": "getWeather"}}]', "tool: 晴",
    ]
    assert chat["query"] == "那上海呢?"
    assert json.loads(chat["label"]) == [call("getWeather", city="Shanghai")]
    assert json.loads(chat["prediction"]) == [call("getWeather", city="Beijing")]
    assert chat["reason"] == "calls differ"
    assert rows["plain"]["history"] is None and rows["plain"]["query"] == "play a song"  # empty cell: no history
    assert rows["boom"]["prediction"] is None and rows["boom"]["reason"] == "TimeoutError: no answer"
    assert "总价" in rows["boom"]["label"]  # JSON kept readable, not \\u-escaped


def test_split_prompt() -> None:
    assert split_prompt("just text") == ("", "just text")
    assert split_prompt(None) == ("", "")
    assert split_prompt([{"role": "user", "content": "hi"}]) == ("", "hi")
    assert split_prompt([{"role": "system", "content": "s"}]) == ("", "")
    # seed 001's records rendered by a template: a system prompt and one user message (the history is in it)
    assert split_prompt([{"role": "system", "content": "You are a helpful assistant."},
                         {"role": "user", "content": "用户: 你好\n当前: 退款"}]) == ("", "用户: 你好\n当前: 退款")
    turns = [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
             {"role": "developer", "content": "d"}, {"role": "user", "content": "c"}]
    assert split_prompt(turns) == ("user: a\nassistant: b", "c")
    parts = [{"type": "text", "text": "look"}]
    assert split_prompt([{"role": "user", "content": parts}]) == ("", json.dumps(parts))


def test_tool_table_rows_accepts_the_nested_shape_too() -> None:
    row = {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1, "predicted": 2, "hits": 1}
    nested = {"per_tool": {"a": row}, "micro": {**row, "f1": 0.1}, "macro": {"precision": 0, "recall": 0, "f1": 0}}
    assert tool_table_rows(nested) == [("a", row), ("micro avg", nested["micro"]), ("macro avg", nested["macro"])]
    assert tool_table_rows({})[0] == ("micro avg", {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0,
                                                    "predicted": 0, "hits": 0})
    assert tool_table_rows(None) == []


def test_markdown_tool_calls_section() -> None:
    md = render_markdown(_report(_tools(), _sentiment()))
    section = md.split("## Tool calls\n")[1].split("\n## ")[0]
    assert "### tools (m)" in section
    lines = [line for line in section.splitlines() if line.startswith("|")]
    assert lines[0] == "| Tool | P | R | F1 | Support |"
    assert "| `getWeather` | 0.6667 | 1 | 0.8 | 2 |" in lines
    assert "| **micro avg** | 0.6667 | 0.5 | 0.5714 | 4 |" in lines
    assert lines[-1].startswith("| **macro avg** |")
    assert "sentiment" not in section  # a classification suite has no tool table


# -- summary ----------------------------------------------------------------


def test_summary_has_a_row_per_suite_model_and_metric_with_its_interval(tmp_path: Path) -> None:
    import openpyxl
    from openpyxl.utils import get_column_letter

    sentiment, _ = _sentiment()
    bare = _suite("bare", main=None, accuracy=0.5)
    no_interval = _suite("nointerval", main="accuracy", accuracy=0.75)
    empty = _suite("empty", main="accuracy")
    empty["metrics"] = {}
    wb = openpyxl.load_workbook(write_xlsx(_report((sentiment, []), (bare, []), (no_interval, []), (empty, [])),
                                           tmp_path))
    header, *rows = _rows(wb["summary"])
    assert header == ("suite", "model", "metric", "value", "lower", "upper", "main", "cases", "total_cases",
                      "subset", "gates_passed", "gates_failed", "gates_skipped", "gates_total")
    # the main metric first (its bounds folded into its row, not rows or columns of their own), then the rest
    assert [row[:7] for row in rows] == [
        ("sentiment", "m", "f1", 0.8, 0.6, 0.9, True),
        ("sentiment", "m", "error_rate", 0, None, None, False),
        ("bare", "m", "error_rate", 0, None, None, False),
        ("bare", "m", "accuracy", 0.5, None, None, False),
        ("nointerval", "m", "accuracy", 0.75, None, None, True),
        ("nointerval", "m", "error_rate", 0, None, None, False),
        ("empty", "m", None, None, None, None, False),  # no metric: its counts still have a row
    ]
    assert all(row[7:] == (1, 1, False, 0, 0, 0, 0) for row in rows)
    assert wb["summary"].auto_filter.ref == f"A1:{get_column_letter(len(header))}{len(rows) + 1}"


def test_summary_rows_repeat_the_suite_counts_and_keep_a_bound_without_its_metric(tmp_path: Path) -> None:
    import openpyxl

    robust = _suite("robust", main="f1", f1=1.0, cases=40.0, **{"kappa.lower": 0.1})  # the clean cases of 280 items
    robust["cases"] = robust["total_cases"] = 280
    robust["subset"] = True
    robust["gates"] = [{"status": "passed"}, {"status": "failed"}, {"status": "skipped"}, {"status": "passed"}]
    wb = openpyxl.load_workbook(write_xlsx(_report((robust, [])), tmp_path))
    header, *rows = _rows(wb["summary"])
    by_metric = {row[2]: dict(zip(header, row)) for row in rows}
    assert list(by_metric) == ["f1", "error_rate", "cases", "kappa.lower"]
    # the metric `cases` (clean cases) is a row; the column `cases` counts every item judged
    assert (by_metric["cases"]["value"], by_metric["cases"]["cases"]) == (40, 280)
    assert by_metric["kappa.lower"]["value"] == 0.1  # a bound whose metric is missing is not lost
    for row in by_metric.values():
        assert (row["total_cases"], row["subset"]) == (280, True)
        assert (row["gates_passed"], row["gates_failed"], row["gates_skipped"], row["gates_total"]) == (2, 1, 1, 4)


def test_summary_metrics() -> None:
    metrics = {"acc": 0.5, "f1.upper": 0.9, "f1": 0.8, "f1.lower": 0.7, "n.lower": 1}
    assert summary_metrics(metrics, "f1") == [("f1", 0.8, 0.7, 0.9), ("acc", 0.5, None, None),
                                              ("n.lower", 1, None, None)]
    assert summary_metrics(metrics)[0] == ("acc", 0.5, None, None)
    assert summary_metrics(metrics, "missing")[0] == ("acc", 0.5, None, None)
    assert summary_metrics({}, "f1") == [(None, None, None, None)]
