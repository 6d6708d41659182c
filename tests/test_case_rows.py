"""report.json's cases as the envelope hands them to the writers: built from the run's results
(harness.envelope.CaseRows), once and kept up to KEPT_ROWS cases, else one at a time and never all held
as dicts. Every writer must give the same files from them as from a list of the same dicts."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from harness import envelope
from harness.envelope import CaseRows
from harness.report import write_reports
from harness.report.json_report import dumps_report
from harness.results import CaseResult
from tests.test_report_writers import report  # noqa: F401 - the writers' shared report fixture

SECRET = "s3cr3t-token-value"


def _rows(cases: list[dict[str, Any]]) -> CaseRows:
    return CaseRows([CaseResult.from_dict(c) for c in cases], [SECRET])


def _files(folder: Path) -> dict[str, bytes]:
    # report.xlsx is a zip with timestamps inside: its cells are compared by the xlsx tests
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix != ".xlsx"}


@pytest.mark.parametrize("kept", [True, False], ids=["kept", "built-on-each-read"])
def test_case_rows_read_like_a_list_and_mask_secrets(report: dict[str, Any], kept: bool,  # noqa: F811
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # up to KEPT_ROWS cases each dict is built once and copied on each read; above, built on each read
    monkeypatch.setattr(envelope, "KEPT_ROWS", len(report["cases"]) if kept else len(report["cases"]) - 1)
    cases = report["cases"]
    cases[0]["error"] = f"connection refused: http://user:{SECRET}@127.0.0.1:9/v1"
    rows = _rows(cases)
    assert len(rows) == len(cases) and bool(rows) and not _rows([])
    listed = list(rows)
    assert [c["id"] for c in listed] == [c["id"] for c in cases]
    assert rows[1] == listed[1] and rows[-1] == listed[-1] and rows[1:3] == listed[1:3]
    assert rows == listed and rows != listed[:-1]
    assert SECRET not in repr(listed) and "connection refused" in listed[0]["error"]
    # each read builds a new dict: a writer that changes one does not change what the next one reads
    rows[0]["output"] = "changed"
    assert rows[0]["output"] == listed[0]["output"] != "changed"
    assert (rows._kept is not None) is kept


def test_every_writer_gives_the_same_files_from_rows_as_from_a_list(report: dict[str, Any],  # noqa: F811
                                                                     tmp_path: Path) -> None:
    lazy = copy.deepcopy(report)
    lazy["cases"] = _rows(report["cases"])
    eager = copy.deepcopy(report)
    eager["cases"] = list(lazy["cases"])
    assert dumps_report(lazy) == dumps_report(eager)
    write_reports(lazy, tmp_path / "lazy")
    write_reports(eager, tmp_path / "eager")
    lazy_files, eager_files = _files(tmp_path / "lazy"), _files(tmp_path / "eager")
    assert {"report.json", "report.md", "report.html"} <= set(lazy_files)
    assert any(name.startswith("details/") for name in lazy_files)
    assert any(name.startswith("indicators/") for name in lazy_files)
    assert lazy_files == eager_files
    assert (tmp_path / "lazy" / "report.xlsx").stat().st_size > 0


def test_a_run_without_cases_writes_an_empty_list(tmp_path: Path) -> None:
    text = dumps_report({"run": {"id": "r"}, "suites": [], "cases": _rows([])})
    assert '"cases": []' in text
