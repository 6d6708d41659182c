"""report.html (issue 14): one self-contained page, model output shown as text, filters in the URL hash."""

from __future__ import annotations

import base64
import json
import re
import shutil
import stat
import struct
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

import harness.testing.scripted  # noqa: F401 - loaded before any pytester run (see tests/conftest.py)
from harness.report import write_reports
from harness.report.html import FILENAME, json_island, render_html, write_html
from harness.textsafe import visible
from tests.conftest import run_inline, write_suite

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT_BREAK = "</script><script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
ANSI = "\x1b[2J\x1b]0;pwned\x07"
HOSTILE = [SCRIPT_BREAK, IMG, ANSI + " \u2028 \u2029 <!-- &amp; \u202e", '<a href="https://evil.example/">x</a>']


def _case(cid: str, model: str = "m1", suite: str = "capitals", **over: Any) -> dict[str, Any]:
    case = {"suite": suite, "id": cid, "model": model, "nodeid": f"evals/{suite}/cases.jsonl::{cid}",
            "dataset": f"evals/{suite}/cases.jsonl", "line": 1, "prompt": f"Country: {cid}\nCapital:",
            "target": "Paris", "output": " Paris", "extracted": "Paris", "score": 1.0, "passed": True,
            "reason": None, "error": None, "latency_ms": 120.0 + len(cid), "output_tokens": 2, "cached": False,
            "metadata": {}, "data": {}}
    case.update(over)
    return case


def _envelope(cases: list[dict[str, Any]], models: tuple[str, ...] = ("m1",)) -> dict[str, Any]:
    suites = [{"name": "capitals", "model": m, "main_metric": "accuracy",
               "metrics": {"accuracy": 0.5, "accuracy.lower": 0.2, "accuracy.upper": 0.8, "error_rate": 0.1,
                           "latency_p99_ms": 812.0},
               "gates": [{"expr": "accuracy >= 0.8", "metric": "accuracy", "op": ">=", "threshold": 0.8, "value": 0.5,
                          "status": "failed", "reason": "accuracy = 0.5, needs >= 0.8 <b>bold</b>", "passed": False},
                         {"expr": "error_rate == 0", "metric": "error_rate", "op": "==", "threshold": 0.0,
                          "value": 0.0, "status": "passed", "reason": "error_rate = 0 == 0", "passed": True}],
               "cases": 4, "total_cases": 4, "subset": False,
               "tables": {"confusion": {"labels": ["Paris", IMG], "matrix": [[2, 1], [0, 1]]}}}
              for m in models]  # fmt: skip
    run = {"id": "20261204-000000-ab12", "started_at": "2026-12-04T00:00:00+00:00", "duration_s": 3.2,
           "harness_version": "0.1.0", "git_commit": "abc123", "python": "3.11.7",
           "packages": {"pytest-llm-harness": "0.1.0", "vllm": None},
           "pytest_args": ["evals/", "--llm-limit", "5"],
           "models": [{"name": m, "source": "pypi:x==1", "engine": {"kind": "bundled-cpu",
                                                                     "base_url": "http://127.0.0.1:8000/v1"}}
                      for m in models]}  # fmt: skip
    return {"schema": "pytest-llm-harness/report", "version": 1, "run": run, "suites": suites, "cases": cases}


def _hostile_cases() -> list[dict[str, Any]]:
    return [
        _case("ok-1"),
        *[_case(f"bad-{i}", output=text, extracted=text, target=text, score=0.0, passed=False,
                reason=f"expected Paris, got {text!r}", prompt=[{"role": "user", "content": text}])
          for i, text in enumerate(HOSTILE)],
        _case("err-1", output=None, extracted=None, score=None, passed=None, error="TimeoutError: " + SCRIPT_BREAK,
              latency_ms=None),
    ]  # fmt: skip


class _Tags(HTMLParser):
    """Every start tag with its attributes, as a browser's tokenizer sees them (script content is raw text)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Tags()
    parser.feed(page)
    parser.close()
    return parser.tags


def _island(page: str) -> str:
    match = re.search(r'<script type="application/json" id="case-data">(.*?)</script>', page, re.S)
    assert match, "no case data island"
    return match.group(1)


# -- the writer ---------------------------------------------------------------


def test_hostile_output_stays_inside_the_json_island(tmp_path: Path) -> None:
    page = write_html(_envelope(_hostile_cases()), tmp_path).read_text(encoding="utf-8")
    island = _island(page)
    # nothing in the island can end the element, open a comment or split a JS line
    assert not set(island) & {"<", ">", "&", "\u2028", "\u2029"}
    cases = json.loads(island)
    by_id = {c["id"]: c for c in cases}
    for i, text in enumerate(HOSTILE):
        assert by_id[f"bad-{i}"]["output"] == visible(text)
        assert by_id[f"bad-{i}"]["status"] == "failed"
        assert by_id[f"bad-{i}"]["prompt"] == "user: " + visible(text)
    assert by_id["err-1"]["status"] == "error" and by_id["ok-1"]["status"] == "passed"
    # the tokenizer sees exactly the page's two scripts: none injected, none cut short
    scripts = [attrs for tag, attrs in _tags(page) if tag == "script"]
    assert scripts == [{"type": "application/json", "id": "case-data"}, {}]
    assert "alert(" not in page.replace(_island(page), "")
    # the browser script never parses data as HTML
    code = page.split(island, 1)[1]
    assert "innerHTML" not in code and "outerHTML" not in code and "insertAdjacentHTML" not in code


def test_control_characters_are_shown_as_escapes(tmp_path: Path) -> None:
    page = write_html(_envelope(_hostile_cases()), tmp_path).read_text(encoding="utf-8")
    assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e]", page)
    assert "\\\\x1b[2J" in _island(page)  # JSON of the visible text \x1b[2J
    # the heatmap label and a gate reason are page text: escaped by the template, not markup
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page


def test_only_embedded_resources(tmp_path: Path) -> None:
    cases = _hostile_cases()
    report = _envelope([*cases, *({**c, "model": "m2"} for c in cases)], models=("m1", "m2"))
    paths = write_reports(report, tmp_path)
    assert tmp_path / FILENAME in paths and stat.S_IMODE((tmp_path / FILENAME).stat().st_mode) == 0o600
    page = (tmp_path / FILENAME).read_text(encoding="utf-8")
    tags = _tags(page)
    refs = [(tag, name, value) for tag, attrs in tags for name, value in attrs.items() if name in ("src", "href")]
    assert refs and all(value and (value.startswith("data:") or value.startswith("#")) for _, _, value in refs), refs
    assert not [tag for tag, _ in tags if tag in ("link", "iframe", "object", "embed", "base", "form")]
    assert not [name for _, attrs in tags for name in attrs if name.startswith("on")]  # no inline handlers
    assert "url(" not in page.split("</style>", 1)[0] and "@import" not in page
    # every heatmap the run drew is embedded, byte for byte
    pngs = sorted(tmp_path.glob("confusion_*.png"))
    assert len(pngs) == 2
    embedded = [attrs["src"] for tag, attrs in tags if tag == "img"]
    assert len(embedded) == 2
    for png in pngs:
        assert "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode() in embedded
    assert page.count('<svg class="hist"') == 2  # a latency histogram per model


def test_summary_gates_and_metadata(tmp_path: Path) -> None:
    page = write_html(_envelope(_hostile_cases()), tmp_path).read_text(encoding="utf-8")
    summary = page.split('<table id="summary">', 1)[1].split("</table>", 1)[0]
    assert "capitals" in summary and "accuracy = 0.5 [0.2, 0.8]" in summary and "10.0%" in summary
    assert "812.0 ms" in summary and "1 passed" in summary and "1 failed" in summary
    gates = page.split('<table id="gates">', 1)[1].split("</table>", 1)[0]
    assert "accuracy &gt;= 0.8" in gates and "error_rate = 0 == 0" in gates and 'badge failed' in gates
    assert "Gates FAILED: 1 passed, 1 failed, 0 skipped" in page
    assert "pytest evals/ --llm-limit 5" in page and "bundled-cpu" in page and "2026-12-04T00:00:00+00:00" in page
    assert "Showing 6 of 6 cases (all in details/)" in page


def test_cases_are_capped_failures_first(tmp_path: Path) -> None:
    cases = [_case(f"c{i:02d}") for i in range(30)]
    for i in (3, 17, 25, 29):
        cases[i].update(passed=False, score=0.0)
    cases[20].update(error="boom", output=None, passed=None)
    page = write_html(_envelope(cases), tmp_path, max_cases=10).read_text(encoding="utf-8")
    shown = [c["id"] for c in json.loads(_island(page))]
    # every failed and errored case, then the first passed ones; in run order
    assert shown == ["c00", "c01", "c02", "c03", "c04", "c05", "c17", "c20", "c25", "c29"]
    assert "Showing 10 of 30 cases" in page and "all in details/" in page


def test_long_texts_are_clipped(tmp_path: Path) -> None:
    long = "y" * 50_000
    page = write_html(_envelope([_case("long", output=long, prompt="p" * 50_000)]), tmp_path).read_text("utf-8")
    case = json.loads(_island(page))[0]
    assert len(case["output"]) < 9_000 and "the whole text is in details/" in case["output"]
    assert case["prompt"].endswith("p" * 1000)
    assert len(page) < 100_000


def test_json_island_escapes() -> None:
    text = json_island({"a": "</script><!--\u2028\u2029&"})
    assert text == '{"a":"\\u003c/script\\u003e\\u003c!--\\u2028\\u2029\\u0026"}'
    assert json.loads(text) == {"a": "</script><!--\u2028\u2029&"}


def test_comparison_judge_and_training_sections_embed_their_plots(tmp_path: Path) -> None:
    cases = _hostile_cases()
    report = _envelope([*cases, *({**c, "model": "m2"} for c in cases)], models=("m1", "m2"))
    row = {"metric": "accuracy", "kind": "quality", "main": True, "reference": 0.9, "candidate": 0.7, "delta": -0.2,
           "lower": -0.3, "upper": -0.1, "p": 0.01, "p_holm": 0.02, "rho": 0.4, "improved": 1, "regressed": 5,
           "unchanged": 20, "mcnemar_p": 0.2, "discordant": 6, "mde": 0.1, "warning": None}
    report["comparison"] = {
        "reference": {"kind": "model", "name": "m1"}, "resamples": 10000, "confidence": 0.95, "seed": 0,
        "family": {"size": 1, "method": "holm"},
        "pairs": [{"suite": "capitals", "reference": "m1", "candidate": "m2", "matched": 26, "clusters": None,
                   "only_reference": [], "only_candidate": [IMG], "duplicates": [], "changed_input": [],
                   "warnings": [f"fewer than 30 paired cases {SCRIPT_BREAK}"], "refused": None, "rows": [row],
                   "disagreements": []}]}  # fmt: skip
    report["suites"][0]["tables"]["judge"] = {
        "model": "judge-m", "rubric": "correctness", "self_grading": "the judge grades its own answers",
        "agreement": {"n": 24, "accuracy": 0.75, "kappa": 0.5, "missing": 0, "unlabelled": 1}}
    report["training"] = [{
        "job": "sft-tiny", "trainer": "sft", "versions": {"trl": "1.16.0"}, "wall_s": 3.5, "metrics": {"loss": 0.5},
        "gates": [{"expr": "final_loss < 1", "status": "passed", "reason": "0.5 < 1"}],
        "log_history": [{"step": s, "loss": 2.0 / s, "grad_norm": 1.0, "learning_rate": 1e-4} for s in (1, 2, 3)]}]
    paths = write_reports(report, tmp_path)
    page = (tmp_path / FILENAME).read_text(encoding="utf-8")
    assert tmp_path / FILENAME in paths
    drawn = {p.name for p in paths if p.suffix == ".png"}
    assert {"comparison.png", "training_sft-tiny.png"} <= drawn
    embedded = [attrs["src"] for tag, attrs in _tags(page) if tag == "img"]
    assert len(embedded) == len(drawn)  # every plot the run drew
    for name in drawn:
        assert "data:image/png;base64," + base64.b64encode((tmp_path / name).read_bytes()).decode() in embedded
    assert 'id="comparison-h"' in page and "-0.2 [-0.3, -0.1]" in page and "0.01 (0.02)" in page
    assert "&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt;" in page  # a warning: text
    assert 'id="judges-h"' in page and "judge-m" in page and "the judge grades its own answers" in page
    assert 'id="training-h"' in page and "final_loss &lt; 1" in page and "Gates FAILED: 3 passed, 2 failed" in page
    assert [attrs for tag, attrs in _tags(page) if tag == "script"] == [{"type": "application/json", "id": "case-data"},
                                                                         {}]


def test_a_comparison_only_or_empty_envelope_renders() -> None:
    assert "LLM comparison report" in render_html({"comparison": {"pairs": []}})
    assert "No suites" in render_html({})


# -- a real run in a real browser ---------------------------------------------------


def _browser() -> str | None:
    return next((path for name in ("chromium", "chromium-browser", "google-chrome")
                 if (path := shutil.which(name))), None)  # fmt: skip


def _chrome(browser: str, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "chrome-profile"
    profile.mkdir(exist_ok=True)
    return subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           f"--user-data-dir={profile}", "--virtual-time-budget=2000", *args],
                          capture_output=True, text=True, timeout=60)


def _probe(page: Path, tmp_path: Path, script: str) -> str:
    """The URI of a copy of page with script run after the page's own."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", f"<script>{script}</script></body>"),
                     encoding="utf-8")
    return probe.as_uri()


@pytest.mark.skipif(_browser() is None, reason="no chromium, chromium-browser or google-chrome on PATH")
def test_real_run_renders_in_a_browser_filtered_by_the_hash(pytester: pytest.Pytester, tmp_path: Path) -> None:
    browser = _browser()
    assert browser
    cases = [{"id": "good", "input": "question good\nANSWER: Paris", "target": "Paris"},
             {"id": "wrong", "input": "question wrong\nANSWER: Lyon", "target": "Paris"},
             {"id": "hostile-img", "input": f"question img\nANSWER: {IMG}", "target": "Paris"},
             {"id": "hostile-script", "input": f"question s\nANSWER: {SCRIPT_BREAK}", "target": "Paris"}]
    write_suite(pytester.path / "evals", "geo", cases)
    result = run_inline(pytester, "evals")
    assert result.ret == 1  # three cases fail
    page = pytester.path / "out" / FILENAME
    assert page.is_file()

    proc = _chrome(browser, tmp_path, "--dump-dom", page.as_uri() + "#status=failed")
    assert proc.returncode == 0, proc.stderr[-2000:]
    dom = proc.stdout
    tags = _tags(dom)
    assert ("table", {"id": "summary"}) in tags and ">geo<" in dom.split('id="summary"', 1)[1]
    rows = [attrs for tag, attrs in tags if tag == "tr" and "data-status" in attrs]
    assert len(rows) == 3 and {r["data-status"] for r in rows} == {"failed"}
    body = dom.split('id="case-rows"', 1)[1].split("</tbody>", 1)[0]
    assert ">wrong<" in body and ">hostile-img<" in body and ">hostile-script<" in body and ">good<" not in body
    # the hostile outputs are text in the DOM, never elements
    assert "&lt;img src=x onerror=alert(2)&gt;" in body
    assert all(attrs.get("src", "").startswith("data:") for tag, attrs in tags if tag == "img")
    assert [attrs for tag, attrs in tags if tag == "script"] == [{"type": "application/json", "id": "case-data"}, {}]
    assert "3 match the filters" in dom
    proc = _chrome(browser, tmp_path, "--dump-dom", page.as_uri() + "#q=lyon")
    assert proc.returncode == 0 and "1 match the filters" in proc.stdout
    # a row clicked opens its details: prompt, output, target... as text (a probe appended to a copy of the page)
    proc = _chrome(browser, tmp_path, "--dump-dom", _probe(page, tmp_path, (
        "document.querySelector('#case-rows tr.case').click();")) + "#q=hostile-img")
    assert proc.returncode == 0, proc.stderr[-2000:]
    detail = proc.stdout.split('<tr class="detail">', 1)[1].split("</tr>", 1)[0]
    assert "<b>Prompt</b>" in detail and "<b>Target</b>" in detail and "<b>Reason</b>" in detail
    assert detail.count("&lt;img src=x onerror=alert(2)&gt;") >= 2 and "<img" not in proc.stdout.split("<body", 1)[1]
    # a filter changed on the page is written back to the hash
    proc = _chrome(browser, tmp_path, "--dump-dom", _probe(page, tmp_path, (
        "var s = document.getElementById('f-status'); s.value = 'error'; s.dispatchEvent(new Event('change'));"
        "var q = document.getElementById('f-q'); q.value = 'a b&c'; q.dispatchEvent(new Event('input'));"
        "var p = document.createElement('pre'); p.id = 'probe'; p.textContent = location.hash;"
        "document.body.appendChild(p);")) + "#suite=geo")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert '<pre id="probe">#suite=geo&amp;status=error&amp;q=a+b%26c</pre>' in proc.stdout
    assert "0 match the filters" in proc.stdout

    shot = tmp_path / "shot.png"
    proc = _chrome(browser, tmp_path, "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1280,1600",
                   page.as_uri())
    assert proc.returncode == 0, proc.stderr[-2000:]
    data = shot.read_bytes()
    assert data.startswith(PNG_MAGIC) and 10_000 < len(data) < 5_000_000
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1280, 1600)
