"""report.xlsx's case rows: openpyxl's cell writer against harness.report.sheet_rows, the same rows.

Each side writes one sheet of N case rows (the case sheet's 14 columns, cleaned as report.xlsx cleans
them) with a bold header to a file; the median of --repeat runs, interleaved. Also the whole
``write_xlsx`` of an N-case report, for scale.

    python benchmarks/xlsx_rows.py --cases 1000 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness.report.sheet_rows import RowSplicer  # noqa: E402
from harness.report.xlsx import CASE_COLUMNS, _cleaner, _row, write_xlsx  # noqa: E402


def case(i: int) -> dict[str, Any]:
    return {"suite": "bench", "id": f"c{i}", "model": "stub", "prompt": f'[{{"role":"user","content":"q{i}"}}]',
            "output": f"a{i}", "extracted": f"a{i}", "target": f"a{i}", "score": 1.0, "passed": True, "error": None,
            "reason": None, "latency_ms": 52.3 + i % 13 / 7, "output_tokens": 12, "attempts": 1, "ttft_ms": None}


def rows_of(cases: list[dict[str, Any]]) -> list[list[Any]]:
    return [[c.get(k) for k in CASE_COLUMNS] for c in cases]


def with_openpyxl(rows: list[list[Any]], path: Path) -> None:
    from openpyxl import Workbook

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("bench")
    ws.append(_row(ws, CASE_COLUMNS, bold=True))
    for row in rows:
        ws.append(_row(ws, row))
    wb.save(path)


def with_splicer(rows: list[list[Any]], path: Path) -> None:
    from openpyxl import Workbook
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    wb = Workbook(write_only=True)
    ws = wb.create_sheet("bench")
    splicer = RowSplicer(_cleaner(ILLEGAL_CHARACTERS_RE))
    ws.append(_row(ws, CASE_COLUMNS, bold=True))
    ws.append(splicer.placeholder(rows, 2))
    splicer.save(wb, path)


def timed(write: Callable[[Path], Any], folder: Path) -> float:
    start = time.perf_counter()
    write(folder)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import openpyxl  # noqa: F401 - imported once, outside the timings

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print(f"{'cases':>8} {'openpyxl s':>11} {'spliced s':>10} {'ratio':>6} {'write_xlsx s':>13}")
        for n in args.cases:
            cases = [case(i) for i in range(n)]
            rows = rows_of(cases)
            report = {"suites": [{"name": "bench", "model": "stub", "metrics": {}, "gates": []}], "cases": cases}
            plain, spliced, whole = [], [], []
            for _ in range(args.repeat):
                plain.append(timed(lambda d: with_openpyxl(rows, d / "a.xlsx"), folder))
                spliced.append(timed(lambda d: with_splicer(rows, d / "b.xlsx"), folder))
                whole.append(timed(lambda d: write_xlsx(report, d / "whole"), folder))
            a, b = statistics.median(plain), statistics.median(spliced)
            print(f"{n:8d} {a:11.3f} {b:10.3f} {a / b:6.1f} {statistics.median(whole):13.3f}")


if __name__ == "__main__":
    main()
