"""report.xlsx's data rows written as SpreadsheetML (harness.report.sheet_rows): read back by openpyxl as the
values given, text never a formula, every row in order across chunks, the rest of the workbook untouched."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Any

import numpy
import pytest
from openpyxl import Workbook, load_workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

from harness.report.sheet_rows import RowSplicer, column_letter
from harness.report.xlsx import _cleaner


class Size(enum.IntEnum):
    LARGE = 3


def _save(path: Path, sheets: dict[str, list[list[Any]]]) -> RowSplicer:
    wb = Workbook(write_only=True)
    splicer = RowSplicer(_cleaner(ILLEGAL_CHARACTERS_RE))
    for title, rows in sheets.items():
        ws = wb.create_sheet(title)
        ws.append(["head", "er"])
        ws.append(splicer.placeholder(rows, 2))
        ws.auto_filter.ref = f"A1:B{len(rows) + 1}"
    splicer.save(wb, path)
    return splicer


def test_values_read_back_as_given(tmp_path: Path) -> None:
    values = ["=1+1", "=HYPERLINK(\"http://x\")", " lead", "trail ", "a\nb", "<b>&amp;</b> ]]>", "中文 😀", "tab\tx",
              0, -7, 2**53, 1.5, 1e-7, 123.45678901234567, True, False, numpy.float64(0.25), Size.LARGE]
    path = tmp_path / "r.xlsx"
    _save(path, {"s": [[v, "x"] for v in values] + [[None, "y"], ["", "z"]]})
    ws = load_workbook(path)["s"]
    got = [row for row in ws.iter_rows(values_only=True)]
    assert got[0] == ("head", "er")
    assert [row[0] for row in got[1:-2]] == values
    assert [type(row[0]) for row in got[1:-2]] == [type(v) for v in values[:-2]] + [float, int]
    assert got[-2:] == [(None, "y"), (None, "z")]  # None and "" are empty cells, as openpyxl writes them
    assert all(ws.cell(row=r, column=1).data_type != "f" for r in range(2, len(values) + 2))
    assert ws.auto_filter.ref == f"A1:B{len(values) + 3}"


def test_control_characters_and_lone_surrogates_are_cleaned_not_written(tmp_path: Path) -> None:
    path = tmp_path / "r.xlsx"
    _save(path, {"s": [["ok\x07\x1b[2J", "A\ud83dB"], [float("nan"), float("inf")]]})
    rows = list(load_workbook(path)["s"].iter_rows(min_row=2, values_only=True))
    assert "\x07" not in rows[0][0] and "\x1b" not in rows[0][0] and rows[0][0].startswith("ok")
    assert rows[0][1] == "A\\ud83dB"
    assert rows[1] == ("nan", "inf")  # Excel has no NaN or infinity: text


def test_many_rows_in_order_on_several_sheets(tmp_path: Path) -> None:
    path = tmp_path / "r.xlsx"
    first = [[f"c{i}", i] for i in range(5003)]  # more than one chunk
    _save(path, {"one": first, "two": [["only", 1]]})
    wb = load_workbook(path, read_only=True)
    assert wb.sheetnames == ["one", "two"]
    assert [list(r) for r in wb["one"].iter_rows(min_row=2, values_only=True)] == first
    assert list(wb["two"].iter_rows(values_only=True)) == [("head", "er"), ("only", 1)]


def test_a_workbook_without_placeholders_is_saved_as_openpyxl_writes_it(tmp_path: Path) -> None:
    wb = Workbook(write_only=True)
    wb.create_sheet("s").append(["a", 1])
    RowSplicer(_cleaner(ILLEGAL_CHARACTERS_RE)).save(wb, tmp_path / "r.xlsx")
    assert list(load_workbook(tmp_path / "r.xlsx")["s"].iter_rows(values_only=True)) == [("a", 1)]


def test_a_placeholder_that_never_reached_the_file_fails_the_save(tmp_path: Path) -> None:
    wb = Workbook(write_only=True)
    wb.create_sheet("s").append(["a"])
    splicer = RowSplicer(_cleaner(ILLEGAL_CHARACTERS_RE))
    splicer.placeholder([["lost"]], 2)  # never appended
    with pytest.raises(RuntimeError, match="1 sheet"):
        splicer.save(wb, tmp_path / "r.xlsx")


@pytest.mark.parametrize("index, letters", [(0, "A"), (25, "Z"), (26, "AA"), (51, "AZ"), (52, "BA"), (701, "ZZ"),
                                            (702, "AAA"), (16383, "XFD")])
def test_column_letters(index: int, letters: str) -> None:
    assert column_letter(index) == letters
