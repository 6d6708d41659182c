"""A report people look at (issue 14): report.xlsx's summary one row per suite, model and metric; the
package versions in report.json (``run.packages``) and report.md, every installed distribution in
requirements-freeze.txt; the tool-call bad cases' dialogue history; Chinese kept readable in the JSON
the reports write and in the ``tojson`` of prompt templates."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

# Loaded before any pytester run (see tests/conftest.py): an in-process run would import them again.
import jinja2
import openpyxl
import pytest

import harness.testing.scripted  # noqa: F401
from harness.packages import FREEZE_FILENAME, PACKAGES, freeze_text, installed_distributions, package_versions
from harness.report import write_reports
from harness.report.indicators import ROBUSTNESS, write_indicators
from harness.report.markdown import render_markdown
from harness.report.xlsx import SUMMARY_COLUMNS, TOOL_BAD_COLUMNS
from harness.templates import template
from tests.conftest import load_report, run_inline, write_suite

TOOLS = [{"name": "getWeather", "description": "查询<城市>的天气 & 温度", "parameters": {"city": "城市名"}}]
SYSTEM = "你是货运助手。可用工具: {{ record.tools | tojson }}"


def call(name: str, **params: Any) -> dict[str, Any]:
    return {"toolName": name, "paramList": params}


def dialogue(question: str, answer: str, city: str) -> list[dict[str, str]]:
    """Two turns of history, then the user message whose directive makes the scripted model call a tool."""
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer},
            {"role": "user", "content": f'TOOL:getWeather:{{"city": "{city}"}}'}]


def _rows(ws: Any) -> list[tuple]:
    return list(ws.iter_rows(values_only=True))


def _installed(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


@pytest.fixture()
def tool_run(pytester: pytest.Pytester) -> Path:
    """A tool-call suite with a system prompt, run in this process on the scripted engine; the report folder."""
    cases = [
        {"id": "ok", "input": dialogue("北京天气?", "好的", "北京"), "target": [call("getWeather", city="北京")],
         "tools": TOOLS},
        {"id": "bad", "input": dialogue("上海天气?", "请稍等", "北京"), "target": [call("getWeather", city="上海")],
         "tools": TOOLS},
    ]
    write_suite(pytester.path / "evals", "tools", cases, scorer="tool_calls", extract=["json"],
                prompt={"system": SYSTEM}, **{"pass": "record"})
    result = run_inline(pytester, "--llm-cache", "off", "evals")
    assert result.ret == 0, result.stdout.str()
    return pytester.path / "out"


# -- the summary sheet ----------------------------------------------------------------------------


def test_summary_sheet_is_one_row_per_suite_model_and_metric(tool_run: Path, pytester: pytest.Pytester) -> None:
    report = load_report(pytester)
    metrics = report["suites"][0]["metrics"]
    header, *rows = _rows(openpyxl.load_workbook(tool_run / "report.xlsx")["summary"])
    assert header == tuple(SUMMARY_COLUMNS)
    assert header[:6] == ("suite", "model", "metric", "value", "lower", "upper")
    by_metric = {row[2]: dict(zip(header, row)) for row in rows}
    assert [row[:2] for row in rows] == [("tools", "stub")] * len(rows)
    # the main metric first, its interval in its own row
    assert rows[0][2] == "f1" and by_metric["f1"]["main"] is True
    assert (by_metric["f1"]["value"], by_metric["f1"]["lower"], by_metric["f1"]["upper"]) == pytest.approx(
        (metrics["f1"], metrics["f1.lower"], metrics["f1.upper"]))
    # every metric has its row, no bound has one of its own
    assert set(by_metric) == {m for m in metrics if not m.endswith((".lower", ".upper"))}
    assert by_metric["strict_match"]["lower"] == pytest.approx(metrics["strict_match.lower"])
    assert all(row["cases"] == 2 and row["total_cases"] == 2 and row["gates_total"] == 0 for row in by_metric.values())


# -- package versions and the freeze file ---------------------------------------------------------


def test_report_records_package_versions_and_a_freeze_file(tool_run: Path, pytester: pytest.Pytester) -> None:
    run = load_report(pytester)["run"]
    assert list(run["packages"]) == list(PACKAGES)
    assert run["packages"] == {name: _installed(name) for name in PACKAGES}
    assert run["packages"]["pytest"] == pytest.__version__
    assert run["packages"]["pytest-llm-harness"] == run["harness_version"]

    assert run["packages_freeze"] == FREEZE_FILENAME == "requirements-freeze.txt"
    lines = (tool_run / run["packages_freeze"]).read_text(encoding="utf-8").splitlines()
    assert f"pytest=={pytest.__version__}" in lines and f"openpyxl=={openpyxl.__version__}" in lines
    assert all(line.count("==") == 1 for line in lines)
    assert lines == sorted(lines, key=lambda line: line.split("==")[0].lower().replace("_", "-"))

    repro = (tool_run / "report.md").read_text(encoding="utf-8").split("## Reproducibility\n")[1]
    assert f"| pytest | `{pytest.__version__}` |" in repro
    assert "[requirements-freeze.txt](requirements-freeze.txt)" in repro


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_report_records_the_commit_and_whether_a_tracked_file_changed(pytester: pytest.Pytester) -> None:
    # asked while the requests are in flight (harness.metadata.GitProbe), read when the reports are written
    write_suite(pytester.path / "evals", "geo", [{"id": "c1", "input": "ANSWER: Paris", "target": "Paris"}])
    (pytester.path / "notes.txt").write_text("v1\n")

    def git(*args: str) -> str:
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=pytester.path,
                              check=True, capture_output=True, text=True).stdout.strip()

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "suite")
    head = git("rev-parse", "HEAD")
    for workers, dirty in (("2", False), ("0", True)):
        result = run_inline(pytester, "-n", workers, "--llm-cache", "off", "evals")
        assert result.ret == 0, result.stdout.str()
        run = load_report(pytester)["run"]
        assert (run["git_commit"], run["git_dirty"]) == (head, dirty), workers
        (pytester.path / "notes.txt").write_text("v2\n")  # a tracked file changed: the next run is dirty
    git("commit", "-q", "-am", "notes")  # untracked files (the reports, the models file) do not count
    assert run_inline(pytester, "--llm-cache", "off", "evals").ret == 0
    run = load_report(pytester)["run"]
    assert (run["git_commit"], run["git_dirty"]) == (git("rev-parse", "HEAD"), False)


def test_package_versions_read_metadata_and_never_import_the_packages() -> None:
    assert package_versions(("pytest", "no-such-distribution-here")) == {
        "pytest": pytest.__version__, "no-such-distribution-here": None}
    # importing torch to ask its version would take seconds: metadata only
    code = ("import sys; from harness.packages import freeze_text, package_versions; package_versions(); freeze_text(); "
            "print(sorted(m for m in ('torch', 'transformers', 'trl', 'vllm', 'numpy', 'openai', 'aiohttp') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.strip() == "[]"


def test_installed_distributions_match_importlib_metadata() -> None:
    from importlib.metadata import distributions

    found = dict(installed_distributions())
    assert {n.lower() for n in found} == {d.metadata["Name"].lower() for d in distributions() if d.metadata["Name"]}
    assert all(found[name] == version(name) for name in found)  # the first found on the path, as Python imports
    assert found["pytest"] == pytest.__version__
    assert freeze_text().splitlines() == [f"{name}=={v}" for name, v in installed_distributions()]


def test_no_freeze_file_for_an_envelope_that_names_none(tmp_path: Path) -> None:
    paths = write_reports({"run": {"id": "r"}, "suites": [], "cases": []}, tmp_path)
    assert not (tmp_path / FREEZE_FILENAME).exists() and tmp_path / "report.json" in paths
    md = render_markdown({"run": {"id": "r"}, "suites": [], "cases": []})
    assert "### Packages" not in md


# -- the tool-call bad cases ----------------------------------------------------------------------


def test_tool_bad_cases_show_the_dialogue_history_without_the_system_prompt(tool_run: Path) -> None:
    header, *rows = _rows(openpyxl.load_workbook(tool_run / "report.xlsx")["badcases_tools"])
    assert header == tuple(TOOL_BAD_COLUMNS)
    assert [row[0] for row in rows] == ["bad"]
    bad = dict(zip(header, rows[0]))
    assert bad["history"] == "user: 上海天气?\nassistant: 请稍等"  # not the system prompt
    assert bad["query"] == 'TOOL:getWeather:{"city": "北京"}'
    assert json.loads(bad["label"]) == [call("getWeather", city="上海")]


# -- Chinese kept readable ------------------------------------------------------------------------


def test_prompts_and_report_json_keep_chinese_readable(tool_run: Path, pytester: pytest.Pytester) -> None:
    report = load_report(pytester)
    system = report["cases"][0]["prompt"][0]
    # tojson in the prompt: readable Chinese and <, >, & as written (no \uXXXX: a prompt is not HTML)
    assert system == {"role": "system", "content": "你是货运助手。可用工具: " + json.dumps(TOOLS, ensure_ascii=False,
                                                                                        sort_keys=True)}
    assert "查询<城市>的天气 & 温度" in system["content"]
    text = (tool_run / "report.json").read_text(encoding="utf-8")
    assert "查询<城市>的天气 & 温度" in text and "\\u" not in text
    details = (tool_run / "details" / "tools.jsonl").read_text(encoding="utf-8")
    assert "上海天气?" in details and "\\u" not in details


def test_tojson_writes_readable_json_for_a_model() -> None:
    value = {"城市": "北京", "note": "<b> & it's", "a": [1, None]}
    rendered = template("{{ value | tojson }}").render(value=value)
    assert rendered == '{"a": [1, null], "note": "<b> & it\'s", "城市": "北京"}'  # keys sorted, as Jinja sorts them
    assert json.loads(rendered) == value
    assert template("{{ value | tojson(indent=2) }}").render(value={"k": "值"}) == '{\n  "k": "值"\n}'
    with pytest.raises(jinja2.UndefinedError, match="no attribute 'tools'"):  # a typo is named, not a TypeError
        template("{{ record.tools | tojson }}").render(record={})


def test_indicator_files_keep_chinese_readable(tmp_path: Path) -> None:
    suite = {"name": "intent", "model": "m", "main_metric": "f1",
             "metrics": {"cases": 4, "perturbed_cases": 8, "success_rate": 0.25, "class_f1.退款_drop": 0.1}}
    report = {"run": {"suites_config": [{"name": "intent", "robustness": {"attacks": ["typos"],
                                                                          "metric": "class_f1.退款"}}]},
              "suites": [suite], "cases": []}
    write_indicators(report, tmp_path)
    text = (tmp_path / ROBUSTNESS).read_text(encoding="utf-8")
    assert '"metric": "class_f1.退款"' in text
    assert json.loads(text)["f1_drop"] == 0.1
