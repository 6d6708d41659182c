"""report.xlsx: the run as a workbook, for people who triage cases in a spreadsheet.

Sheets: summary (one row per suite, model and metric, with its interval), gates, in a
comparison run its paired comparison (one row per pair and metric, the forest plot below), one
per suite and model with its cases, after each of those its confusion matrix (with the heatmap
PNG when write_reports drew it) or, for tool-call suites, seed 001's three sheets (tool metrics,
parameter metrics, bad cases), then every bad case of the run, and last a comparison's
disagreements (the cases the two arms scored apart).

The workbook is write-only (streamed): rows are appended once, so each sheet's layout
(frozen header, column widths) is set before its first row. openpyxl is imported inside
the functions only: the plugin imports this package at pytest start-up, and most runs
never open a workbook.
"""

from __future__ import annotations

import functools
import json
import math
import re
from array import array
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

from harness.report.files import private_dir, write_atomic
from harness.report.forest import FILENAME as FOREST_PNG
from harness.report.forest import forest_rows
from harness.report.heatmap import confusion_pngs, confusion_table
from harness.report.formatting import is_bad
from harness.report.sheet_rows import RowSplicer
from harness.report.markdown import tool_table_rows
from harness.report.training_plots import step_table, throughput_pngs, training_pngs
from harness.textsafe import has_unsafe, visible

if TYPE_CHECKING:
    from openpyxl import Workbook
    from openpyxl.worksheet._write_only import WriteOnlyWorksheet

# _fill with the workbook's RowSplicer bound: (sheet, headers, rows)
_Fill = Callable[[Any, list[str], Sequence[list[Any]]], None]

FILENAME = "report.xlsx"
MAX_CELL_CHARS = 32_000  # Excel refuses cells over 32,767 characters
TRUNCATION_MARK = "…[truncated]"
MAX_TITLE = 31
TRAINING_PNG_ROWS = 18  # a training PNG (320 px tall) spans about 16 default rows: the next one goes below
_BAD_TITLE_CHARS = re.compile(r"[\[\]:*?/\\]")
# names the writer takes itself, plus Excel's reserved "History"
_RESERVED_TITLES = ("summary", "gates", "bad_cases", "history")
# taken only in a comparison run, so that other runs name their suite sheets as before
_COMPARISON_TITLES = ("comparison", "disagreements")

CASE_COLUMNS = [
    "id", "model", "prompt", "output", "extracted", "target", "score",
    "passed", "error", "reason", "latency_ms", "output_tokens", "attempts", "ttft_ms",
]  # fmt: skip
# a judge-scored suite's case sheet: what people said, what the judge said, and its raw reply
JUDGE_COLUMNS = ["human_label", "judge_verdict", "judge_reply"]
GATE_COLUMNS = ["suite", "model", "expr", "metric", "op", "threshold", "value", "status", "reason"]
# one row per suite, model and metric (a metric's `.lower`/`.upper` folded into its row), the main
# metric first and marked; the suite's case and gate counts repeated on each row, for filters
SUMMARY_COLUMNS = [
    "suite", "model", "metric", "value", "lower", "upper", "main", "cases", "total_cases",
    "subset", "gates_passed", "gates_failed", "gates_skipped", "gates_total",
]  # fmt: skip
_BOUNDS = (".lower", ".upper")
# seed 001's sheets: 工具指标 (tool metrics), 参数指标 (parameter metrics), badcase
STAT_COLUMNS = ["precision", "recall", "f1", "support", "predicted", "hits"]
TOOL_COLUMNS = ["tool", *STAT_COLUMNS]
PARAM_COLUMNS = ["param", *STAT_COLUMNS]
TOOL_BAD_COLUMNS = ["id", "history", "query", "label", "prediction", "reason"]
COMPARISON_COLUMNS = [
    "suite", "reference", "candidate", "metric", "kind", "main", "reference_value", "candidate_value",
    "delta", "lower", "upper", "p", "p_holm", "rho", "improved", "regressed", "unchanged",
    "mcnemar_p", "discordant", "mde", "warning",
]  # fmt: skip
DISAGREEMENT_COLUMNS = [
    "suite", "reference", "candidate", "id", "input", "target", "reference_output", "candidate_output",
    "reference_score", "candidate_score",
]  # fmt: skip
MATRIX_CORNER = "target \\ predicted"
TOTAL = "total"
IMAGE_MAX_PX = 640
_WIDTH_SAMPLE_ROWS = 200


def write_xlsx(report: dict[str, Any], out_dir: Path) -> Path:
    """Write summary, gates, per-suite, table and bad-case sheets; return the path."""
    from openpyxl import Workbook

    out_dir = private_dir(Path(out_dir))
    suites: list[dict[str, Any]] = report.get("suites") or []
    cases: list[dict[str, Any]] = report.get("cases") or []

    comparison = report.get("comparison")
    pairs = [p for p in comparison.get("pairs") or [] if isinstance(p, dict)] if isinstance(comparison, dict) \
        else None

    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    wb = Workbook(write_only=True)
    rows_to_splice = RowSplicer(_cleaner(ILLEGAL_CHARACTERS_RE))
    fill = functools.partial(_fill, splicer=rows_to_splice)
    taken: set[str] = set(_RESERVED_TITLES) | (set(_COMPARISON_TITLES) if pairs is not None else set())
    fill(wb.create_sheet("summary"), *_summary_table(suites))
    fill(wb.create_sheet("gates"), GATE_COLUMNS, _gate_rows(suites))
    if pairs is not None:
        ws = wb.create_sheet("comparison")
        rows = _comparison_rows(pairs)
        fill(ws, COMPARISON_COLUMNS, rows)
        png = out_dir / FOREST_PNG
        # a stale plot of an earlier run in the same folder must not pass for this one
        if png.is_file() and forest_rows(report)[0]:
            _add_image(ws, png, f"A{len(rows) + 3}")

    groups = _group_cases(suites, cases)
    models = {model for _, model in groups}
    by_key = {(str(s.get("name")), str(s.get("model"))): s for s in suites}
    pngs = {id(suite): out_dir / name for suite, name in confusion_pngs(report)}
    for (suite, model), group in groups.items():
        raw = suite if len(models) <= 1 else f"{suite}@{model}"
        ws = wb.create_sheet(sheet_title(raw, taken))
        judged = any(c.get("judge") for c in group)
        columns = [*CASE_COLUMNS, *JUDGE_COLUMNS] if judged else CASE_COLUMNS
        fill(ws, columns, _Rows(group, lambda c, judged=judged: [*(c.get(k) for k in CASE_COLUMNS),
                                                                  *(_judge_cells(c) if judged else ())]))
        if (s := by_key.get((suite, model))) is not None:
            _table_sheets(wb, fill, s, group, raw, taken, pngs.get(id(s)))

    bad = _Picked(cases, array("q", (i for i, c in enumerate(cases) if is_bad(c))))
    fill(
        wb.create_sheet("bad_cases"),
        ["suite", *CASE_COLUMNS],
        _Rows(bad, lambda c: [c.get("suite"), *(c.get(k) for k in CASE_COLUMNS)]),
    )
    if pairs is not None:
        fill(wb.create_sheet("disagreements"), DISAGREEMENT_COLUMNS, _disagreement_rows(pairs))
    _training_sheets(wb, fill, report, out_dir, taken)

    return write_atomic(out_dir / FILENAME, lambda path: rows_to_splice.save(wb, path))


def _training_sheets(wb: Workbook, fill: _Fill, report: dict[str, Any], out_dir: Path, taken: set[str]) -> None:
    """A ``training_<job>`` sheet per job: one row per logged step (with its throughput and memory when
    the run recorded them), its curves' PNG and below it its throughput PNG beside them when drawn."""
    from openpyxl.utils import get_column_letter

    pngs = {id(entry): out_dir / name for entry, name in training_pngs(report)}
    throughput = {id(entry): out_dir / name for entry, name in throughput_pngs(report)}
    for entry in report.get("training") or []:
        columns, rows = step_table(entry)
        ws = wb.create_sheet(sheet_title(f"training_{entry.get('job')}", taken))
        fill(ws, columns, rows)
        row = 2
        for png in (pngs.get(id(entry)), throughput.get(id(entry))):
            if png is not None and png.is_file():
                _add_image(ws, png, f"{get_column_letter(len(columns) + 2)}{row}")
                row += TRAINING_PNG_ROWS


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


def _cleaner(illegal: re.Pattern[str]) -> Callable[[Any], Any]:
    """Turns a value into one openpyxl can store and Excel can open; ``illegal`` is openpyxl's
    pattern, looked up once per sheet rather than once per cell (the hot path)."""

    def clean(value: Any) -> Any:
        if value is None or isinstance(value, (bool, int)):
            return value
        if isinstance(value, float):
            # Excel has no NaN/inf; written raw they corrupt the file
            return value if math.isfinite(value) else str(value)
        if not isinstance(value, str):
            value = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
        # controls and lone surrogates written as escapes (Excel refuses some, lxml the surrogates)
        value = illegal.sub("", visible(value)) if has_unsafe(value) else value
        if len(value) > MAX_CELL_CHARS:
            value = value[: MAX_CELL_CHARS - len(TRUNCATION_MARK)] + TRUNCATION_MARK
        return value

    return clean


# -- suite tables -----------------------------------------------------------


def _table_sheets(wb: Workbook, fill: _Fill, suite: dict[str, Any], cases: Sequence[dict[str, Any]], raw: str,
                  taken: set[str], png: Path | None) -> None:
    """The suite's confusion matrix sheet, or its three tool-call sheets, when it has them."""
    table = confusion_table(suite)
    if table is not None:
        ws = wb.create_sheet(sheet_title(f"confusion_{raw}", taken))
        _fill_matrix(ws, table["labels"], table["matrix"], png if png is not None and png.is_file() else None)
    tables = suite.get("tables") or {}
    if "tool_metrics" in tables:
        fill(wb.create_sheet(sheet_title(f"tools_{raw}", taken)), TOOL_COLUMNS,
             _stat_rows(tables.get("tool_metrics")))
        fill(wb.create_sheet(sheet_title(f"params_{raw}", taken)), PARAM_COLUMNS,
             _stat_rows(tables.get("param_metrics")))
        bad = [c for c in cases if _is_tool_bad(c)]
        fill(wb.create_sheet(sheet_title(f"badcases_{raw}", taken)), TOOL_BAD_COLUMNS,
             [_tool_bad_row(c) for c in bad])


def _fill_matrix(ws: WriteOnlyWorksheet, labels: list[Any], matrix: list[list[int]], png: Path | None) -> None:
    """Targets down, predictions across, with row and column totals; the heatmap beside it."""
    from openpyxl.utils import get_column_letter

    n = len(labels)
    ws.freeze_panes = "B2"
    ws.column_dimensions["A"].width = min(max([len(MATRIX_CORNER), *(len(str(x)) for x in labels)]) + 2, 40)
    for col, label in enumerate(labels, start=2):
        ws.column_dimensions[get_column_letter(col)].width = min(max(len(str(label)) + 2, 8), 30)
    header = [MATRIX_CORNER, *labels, TOTAL]
    ws.append(_row(ws, header, bold=True))
    for label, row in zip(labels, matrix):
        ws.append([*_row(ws, [label], bold=True), *row, sum(row)])
    column_totals = [sum(row[j] for row in matrix) for j in range(n)]
    ws.append([*_row(ws, [TOTAL], bold=True), *column_totals, sum(column_totals)])
    if png is not None:
        _add_image(ws, png, f"{get_column_letter(n + 4)}2")


def _add_image(ws: WriteOnlyWorksheet, png: Path, anchor: str) -> None:
    from openpyxl.drawing.image import Image

    image = Image(str(png))
    # a 30-label heatmap is 2000 px wide: shrink it to sit beside the table
    scale = min(1.0, IMAGE_MAX_PX / max(image.width, image.height, 1))
    image.width, image.height = int(image.width * scale), int(image.height * scale)
    ws.add_image(image, anchor)


def _stat_rows(table: Any) -> list[list[Any]]:
    return [[name, *(row.get(k) for k in STAT_COLUMNS)] for name, row in tool_table_rows(table)]


def _is_tool_bad(case: dict[str, Any]) -> bool:
    score = case.get("score")
    return is_bad(case) or (isinstance(score, (int, float)) and score < 1)


def _tool_bad_row(case: dict[str, Any]) -> list[Any]:
    history, query = split_prompt(case.get("prompt"))
    prediction = case.get("extracted")
    return [
        case.get("id"), history, query, _json_text(case.get("target")),
        _json_text(prediction if prediction is not None else case.get("output")),
        case.get("error") or case.get("reason"),
    ]  # fmt: skip


def split_prompt(prompt: Any) -> tuple[str, str]:
    """(history, query) as seed 001's bad-case sheet has them: the dialogue turns before the last
    user message as "role: content" lines, and that message's content; a plain prompt is all query.

    The system prompt is no turn of the dialogue: it is the same for every case of the suite (the
    suite's ``prompt.system``, in report.json's ``run.suites_config``), and left out of the history."""
    if not isinstance(prompt, list):
        return "", _json_text(prompt)
    messages = [m if isinstance(m, dict) else {"role": "?", "content": m} for m in prompt]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None:
        return "\n".join(_message_line(m) for m in messages if not _is_system(m)), ""
    history = "\n".join(_message_line(m) for m in messages[:last] if not _is_system(m))
    return history, _json_text(messages[last].get("content"))


def _is_system(message: dict[str, Any]) -> bool:
    # "developer": OpenAI's newer name for the system role
    return message.get("role") in ("system", "developer")


def _message_line(message: dict[str, Any]) -> str:
    content = message.get("content")
    # an assistant turn that only called tools has no content; its calls are what happened
    if content is None and message.get("tool_calls"):
        content = message["tool_calls"]
    return f"{message.get('role')}: {_json_text(content)}"


def _json_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


# -- comparison -------------------------------------------------------------


def _comparison_rows(pairs: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per pair and metric; a refused pair one row with no metric and the reason as its warning."""
    out: list[list[Any]] = []
    for pair in pairs:
        head = [pair.get("suite"), pair.get("reference"), pair.get("candidate")]
        if pair.get("refused"):
            out.append([*head, *[None] * (len(COMPARISON_COLUMNS) - 4), f"comparison refused: {pair['refused']}"])
            continue
        for row in pair.get("rows") or []:
            out.append([*head, row.get("metric"), row.get("kind"), row.get("main"), row.get("reference"),
                        row.get("candidate"), *(row.get(k) for k in COMPARISON_COLUMNS[8:])])
    return out


def _disagreement_rows(pairs: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [pair.get("suite"), pair.get("reference"), pair.get("candidate"),
         *(case.get(k) for k in DISAGREEMENT_COLUMNS[3:])]
        for pair in pairs
        for case in pair.get("disagreements") or []
        if isinstance(case, dict)
    ]


# -- tables -----------------------------------------------------------------


def _summary_table(suites: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Long, not wide: a row per suite, model and metric, ``(suite, model, metric, value, lower,
    upper)`` then whether it is the suite's main metric and the suite's case and gate counts. A
    metric's ``<m>.lower``/``<m>.upper`` fill its row's bounds; a bound without its metric keeps a
    row of its own. A suite without metrics still gets a row (metric empty), for its counts."""
    rows = []
    for s in suites:
        gates = s.get("gates") or []
        status = [g.get("status") for g in gates]
        counts = [s.get("cases"), s.get("total_cases"), s.get("subset"), status.count("passed"),
                  status.count("failed"), status.count("skipped"), len(gates)]
        head = [s.get("name"), s.get("model")]
        for metric, value, lower, upper in summary_metrics(s.get("metrics") or {}, s.get("main_metric")):
            rows.append([*head, metric, value, lower, upper, metric is not None and metric == s.get("main_metric"),
                         *counts])
    return SUMMARY_COLUMNS, rows


def summary_metrics(metrics: dict[str, Any], main: Any = None) -> list[tuple[Any, Any, Any, Any]]:
    """(metric, value, lower, upper) for each metric, its bounds folded in; the main metric first
    (when the suite has it), the others in the suite's order; one empty row for no metrics."""
    names = [name for name in metrics if not _folded(name, metrics)]
    if main in names:
        names.remove(main)
        names.insert(0, main)
    rows = [(name, metrics.get(name), metrics.get(f"{name}.lower"), metrics.get(f"{name}.upper")) for name in names]
    return rows or [(None, None, None, None)]


def _folded(name: Any, metrics: dict[str, Any]) -> bool:
    """A bound (``f1.lower``) of a metric the suite has (``f1``): shown in that metric's row."""
    return isinstance(name, str) and any(name.endswith(b) and name[: -len(b)] in metrics for b in _BOUNDS)


def _gate_rows(suites: list[dict[str, Any]]) -> list[list[Any]]:
    return [
        [s.get("name"), s.get("model"), *(g.get(k) for k in GATE_COLUMNS[2:])]
        for s in suites
        for g in s.get("gates") or []
    ]


def _group_cases(
    suites: list[dict[str, Any]], cases: Sequence[dict[str, Any]]
) -> dict[tuple[str, str], Sequence[dict[str, Any]]]:
    """Each suite and model's cases, as positions in ``cases``: a large run's cases are built when they
    are read (harness.envelope.CaseRows), so a sheet reads each one as it writes its row."""
    # suites first, so a suite with no cases still gets its (empty) sheet in suite order
    groups: dict[tuple[str, str], array[int]] = {}
    for s in suites:
        groups.setdefault((str(s.get("name")), str(s.get("model"))), array("q"))
    for index, c in enumerate(cases):
        groups.setdefault((str(c.get("suite")), str(c.get("model"))), array("q")).append(index)
    return {key: _Picked(cases, picked) for key, picked in groups.items()}


class _Picked(Sequence[dict[str, Any]]):
    """Some of a sequence's items, by position, read when they are read."""

    def __init__(self, items: Sequence[dict[str, Any]], positions: Sequence[int]) -> None:
        self.items, self.positions = items, positions

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.items[i] for i in self.positions[index]]
        return self.items[self.positions[index]]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self.items[i] for i in self.positions)


def _judge_cells(case: dict[str, Any]) -> list[Any]:
    judge = case.get("judge") or {}
    raw = judge.get("raw") or []
    return [case.get("human_label"), judge.get("verdict"), "\n---\n".join(str(r) for r in raw) if raw else None]


class _Rows(Sequence[list[Any]]):
    """A sheet's rows made one at a time as they are written, from its cases: a million cases never
    stand in memory as rows of cells at once."""

    def __init__(self, items: Sequence[Any], make: Callable[[Any], list[Any]]) -> None:
        self.items, self.make = items, make

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.make(item) for item in self.items[index]]
        return self.make(self.items[index])

    def __iter__(self) -> Iterator[list[Any]]:
        return (self.make(item) for item in self.items)


def _fill(ws: WriteOnlyWorksheet, headers: list[str], rows: Sequence[list[Any]], splicer: RowSplicer) -> None:
    """Bold frozen header, filter over the rows, widths from the first rows, text kept as text; the rows
    themselves are written by ``splicer`` when the workbook is saved."""
    from openpyxl.utils import get_column_letter

    # a streamed sheet writes its view and columns before the first row
    ws.freeze_panes = "A2"
    # made once for every column: a sheet's rows are made as they are read (_Rows)
    first_rows = rows[:_WIDTH_SAMPLE_ROWS]
    for col, name in enumerate(headers, start=1):
        sample = [len(name)] + [len(str(row[col - 1])) for row in first_rows if row[col - 1] is not None]
        ws.column_dimensions[get_column_letter(col)].width = min(max(max(sample) + 2, 8), 60)
    ws.append(_row(ws, headers, bold=True))
    if rows:
        ws.append(splicer.placeholder(rows, 2))
        ws.auto_filter.ref = f"A1:{get_column_letter(len(headers))}{len(rows) + 1}"


def _row(ws: WriteOnlyWorksheet, values: Iterable[Any], bold: bool = False) -> list[Any]:
    """Cleaned values; a cell object only where a plain value would not do."""
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
    from openpyxl.styles import Font

    clean = _cleaner(ILLEGAL_CHARACTERS_RE)
    out: list[Any] = []
    for raw in values:
        value = clean(raw)
        is_formula = isinstance(value, str) and value.startswith("=")
        if not (bold or is_formula):
            out.append(value)
            continue
        cell = WriteOnlyCell(ws, value)
        if is_formula:
            # model output such as "=1+1" must stay text, not become a live formula
            cell.data_type = "s"
        if bold:
            cell.font = Font(bold=True)
        out.append(cell)
    return out
