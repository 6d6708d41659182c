"""report.xlsx's data rows, written straight as SpreadsheetML into the workbook openpyxl saved.

openpyxl builds every cell as an element and serialises it through its XML writer: 2.5 s for a
10,000-case run's case sheet on a 2-core machine, most of the time from a run's last reply to its
exit. Here a sheet's rows are formatted as text, about ten times faster (benchmarks/xlsx_rows.py),
and streamed into the saved file: openpyxl still writes everything else (each sheet's header row and
its style, widths, frozen pane, filter, the images, the confusion matrices), with one placeholder row
per sheet that :meth:`RowSplicer.save` replaces by the rows. Values are those openpyxl would be given
(``xlsx._cleaner``); every string is an inline string, so text such as ``=1+1`` stays text.
"""

from __future__ import annotations

import io
import re
import uuid
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

if TYPE_CHECKING:
    from openpyxl import Workbook

_TOKEN = "llm-harness-rows-"
_CHUNK_ROWS = 2000  # rows formatted and compressed at a time: a million rows never stand in memory as text
_ESCAPES = re.compile(r"[&<>]")
_ESCAPED = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def column_letter(index: int) -> str:
    """A for 0, Z for 25, AA for 26: the column of a cell reference."""
    letters = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        letters = chr(65 + rest) + letters
    return letters


def _escape(text: str) -> str:
    return _ESCAPES.sub(lambda m: _ESCAPED[m[0]], text) if ("&" in text or "<" in text or ">" in text) else text


def cell_xml(ref: str, value: Any) -> str:
    """One ``<c>`` element for a cleaned value (bool, int, finite float or str); none for None or "" (as
    openpyxl: an empty cell)."""
    if value is None or value == "":
        return ""
    if value is True or value is False:
        return f'<c r="{ref}" t="b"><v>{int(value)}</v></c>'
    if isinstance(value, float):  # float's own repr: numpy's float64 would write "np.float64(0.5)"
        return f'<c r="{ref}" t="n"><v>{float.__repr__(value)}</v></c>'
    if isinstance(value, int):
        return f'<c r="{ref}" t="n"><v>{int.__repr__(value)}</v></c>'
    text = _escape(value)
    space = ' xml:space="preserve"' if value != value.strip() else ""
    return f'<c r="{ref}" t="inlineStr"><is><t{space}>{text}</t></is></c>'


def rows_xml(rows: Iterable[list[Any]], first: int, clean: Callable[[Any], Any]) -> Iterator[bytes]:
    """The ``<row>`` elements of ``rows`` numbered from ``first``, cleaned by ``clean``, in UTF-8 chunks."""
    letters: list[str] = []
    parts: list[str] = []
    number = first
    for row in rows:
        while len(letters) < len(row):
            letters.append(column_letter(len(letters)))
        cells = "".join(cell_xml(f"{letters[i]}{number}", clean(value)) for i, value in enumerate(row))
        parts.append(f'<row r="{number}">{cells}</row>')
        number += 1
        if len(parts) == _CHUNK_ROWS:
            yield "".join(parts).encode("utf-8")
            parts.clear()
    if parts:
        yield "".join(parts).encode("utf-8")


class RowSplicer:
    """The sheets whose data rows are written here: each is given a placeholder row to append through
    openpyxl; :meth:`save` saves the workbook with the rows in place of those placeholders."""

    def __init__(self, clean: Callable[[Any], Any]) -> None:
        self.clean = clean
        self._rows: dict[str, tuple[Iterable[list[Any]], int]] = {}

    def placeholder(self, rows: Iterable[list[Any]], first: int) -> list[str]:
        """The row to append where ``rows`` go (``first``: the row number of the first of them)."""
        token = _TOKEN + uuid.uuid4().hex
        self._rows[token] = (rows, first)
        return [token]

    def save(self, wb: Workbook, path: Path) -> None:
        if not self._rows:
            wb.save(path)
            return
        saved = io.BytesIO()
        wb.save(saved)
        with zipfile.ZipFile(saved) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                data = source.read(info.filename)
                token = self._token_in(info.filename, data)
                if token is None:
                    target.writestr(info, data)
                    continue
                rows, first = self._rows.pop(token)
                at = data.index(token.encode())
                start, end = data.rindex(b"<row ", 0, at), data.index(b"</row>", at) + len(b"</row>")
                with target.open(info.filename, "w") as out:
                    out.write(data[:start])
                    for chunk in rows_xml(rows, first, self.clean):
                        out.write(chunk)
                    out.write(data[end:])
        if self._rows:  # openpyxl changed how it writes a row: better no file than one with a token row
            raise RuntimeError(f"{len(self._rows)} sheet(s) lost their rows")

    def _token_in(self, name: str, data: bytes) -> str | None:
        if not name.startswith("xl/worksheets/") or _TOKEN.encode() not in data:
            return None
        at = data.index(_TOKEN.encode())
        token = data[at:at + len(_TOKEN) + 32].decode()
        return token if token in self._rows else None
