"""report.xlsx: the run as a workbook, for people who triage cases in a spreadsheet.

openpyxl is imported inside write_xlsx only: the plugin imports this package at
pytest start-up, and most runs never open a workbook.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.report.markdown import is_bad

if TYPE_CHECKING:
    from openpyxl.worksheet.worksheet import Worksheet

FILENAME = "report.xlsx"
MAX_CELL_CHARS = 32_000  # Excel refuses cells over 32,767 characters
TRUNCATION_MARK = "…[truncated]"
MAX_TITLE = 31
_BAD_TITLE_CHARS = re.compile(r"[\[\]:*?/\\]")
# names the writer takes itself, plus Excel's reserved "History"
_RESERVED_TITLES = ("summary", "gates", "bad_cases", "history")

CASE_COLUMNS = [
    "id", "model", "prompt", "output", "extracted", "target", "score",
    "passed", "error", "reason", "latency_ms", "output_tokens", "attempts", "ttft_ms",
]  # fmt: skip
GATE_COLUMNS = ["suite", "model", "expr", "metric", "op", "threshold", "value", "status", "reason"]
_WIDTH_SAMPLE_ROWS = 200


def write_xlsx(report: dict[str, Any], out_dir: Path) -> Path:
    """Write summary, gates, per-suite and bad-case sheets; return the path."""
    from openpyxl import Workbook

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suites: list[dict[str, Any]] = report.get("suites") or []
    cases: list[dict[str, Any]] = report.get("cases") or []

    wb = Workbook()
    summary = wb.active
    summary.title = "summary"
    _fill(summary, *_summary_table(suites))
    _fill(wb.create_sheet("gates"), GATE_COLUMNS, _gate_rows(suites))

    groups = _group_cases(suites, cases)
    models = {model for _, model in groups}
    taken: set[str] = set(_RESERVED_TITLES)
    for (suite, model), group in groups.items():
        raw = suite if len(models) <= 1 else f"{suite}@{model}"
        ws = wb.create_sheet(sheet_title(raw, taken))
        _fill(ws, CASE_COLUMNS, [[c.get(k) for k in CASE_COLUMNS] for c in group])

    bad = [c for c in cases if is_bad(c)]
    _fill(
        wb.create_sheet("bad_cases"),
        ["suite", *CASE_COLUMNS],
        [[c.get("suite"), *(c.get(k) for k in CASE_COLUMNS)] for c in bad],
    )

    path = out_dir / FILENAME
    wb.save(path)
    return path


def sheet_title(raw: str, taken: set[str]) -> str:
    """An Excel-valid sheet name for raw, unique (case-insensitively) among taken; records it."""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    base = ILLEGAL_CHARACTERS_RE.sub("", _BAD_TITLE_CHARS.sub("_", raw))
    # Excel rejects names that begin or end with an apostrophe
    base = base[:MAX_TITLE].strip("'") or "sheet"
    title, n = base, 2
    while title.lower() in taken:
        suffix = f"~{n}"
        title = base[: MAX_TITLE - len(suffix)].rstrip("'") + suffix
        n += 1
    taken.add(title.lower())
    return title


def cell_value(value: Any) -> Any:
    """A value openpyxl can store and Excel can open."""
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, float):
        # Excel has no NaN/inf; written raw they corrupt the file
        return value if math.isfinite(value) else str(value)
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    value = ILLEGAL_CHARACTERS_RE.sub("", value)
    if len(value) > MAX_CELL_CHARS:
        value = value[: MAX_CELL_CHARS - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return value


# -- tables -----------------------------------------------------------------


def _summary_table(suites: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    metric_names: list[str] = []
    for s in suites:
        for name in s.get("metrics") or {}:
            if name not in metric_names:
                metric_names.append(name)
    headers = [
        "suite", "model", "main_metric", "cases", "total_cases", "subset",
        "gates_passed", "gates_failed", "gates_skipped", "gates_total", *metric_names,
    ]  # fmt: skip
    rows = []
    for s in suites:
        gates = s.get("gates") or []
        status = [g.get("status") for g in gates]
        metrics = s.get("metrics") or {}
        rows.append(
            [
                s.get("name"), s.get("model"), s.get("main_metric"),
                s.get("cases"), s.get("total_cases"), s.get("subset"),
                status.count("passed"), status.count("failed"), status.count("skipped"),
                len(gates), *(metrics.get(m) for m in metric_names),
            ]  # fmt: skip
        )
    return headers, rows


def _gate_rows(suites: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [s.get("name"), s.get("model"), *(g.get(k) for k in GATE_COLUMNS[2:])]
        for s in suites
        for g in s.get("gates") or []
    ]


def _group_cases(
    suites: list[dict[str, Any]], cases: list[dict[str, Any]]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    # suites first, so a suite with no cases still gets its (empty) sheet in suite order
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for s in suites:
        groups.setdefault((str(s.get("name")), str(s.get("model"))), [])
    for c in cases:
        groups.setdefault((str(c.get("suite")), str(c.get("model"))), []).append(c)
    return groups


def _fill(ws: Worksheet, headers: list[str], rows: list[list[Any]]) -> None:
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    bold = Font(bold=True)
    for col, name in enumerate(headers, start=1):
        ws.cell(row=1, column=col, value=name).font = bold
    for r, row in enumerate(rows, start=2):
        for col, raw in enumerate(row, start=1):
            value = cell_value(raw)
            cell = ws.cell(row=r, column=col, value=value)
            if isinstance(value, str) and value.startswith("="):
                # model output such as "=1+1" must stay text, not become a live formula
                cell.data_type = "s"
    ws.freeze_panes = "A2"
    if rows:
        ws.auto_filter.ref = ws.dimensions

    for col, name in enumerate(headers, start=1):
        sample = [len(name)] + [
            len(str(row[col - 1])) for row in rows[:_WIDTH_SAMPLE_ROWS] if row[col - 1] is not None
        ]
        ws.column_dimensions[get_column_letter(col)].width = min(max(max(sample) + 2, 8), 60)
