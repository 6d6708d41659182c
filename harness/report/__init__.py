"""Report writers: one envelope dict in, report.json (with the requirements-freeze.txt it names) /
details / report.md / report.xlsx out, plus a confusion_<suite>[_<model>].png heatmap per confusion
matrix, comparison.png, the forest plot of a paired comparison, the training plots, and report.html,
one self-contained page that embeds those PNGs and browses the cases."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Callable

__all__ = ["write_reports", "warm_writers", "ReportsIncomplete"]

# what the writers import lazily and what costs most to import (openpyxl: ~0.15 s)
_HEAVY_IMPORTS = ("openpyxl",)


def _writers() -> list[tuple[str, Callable[[dict[str, Any], Path], Any]]]:
    """Each format's name and writer, in the order write_reports runs them.

    Imported here, not when the package is: a run imports ``harness.report.files`` as it starts (progress.log),
    and the writers bring numpy (``indicators``), which must not delay the run's first request (~0.08 s)."""
    from harness.report.details import write_details
    from harness.report.forest import write_forest_png
    from harness.report.freeze import write_freeze
    from harness.report.heatmap import write_confusion_pngs
    from harness.report.html import write_html
    from harness.report.indicators import write_indicators
    from harness.report.json_report import write_json
    from harness.report.markdown import write_markdown
    from harness.report.training_plots import write_training_pngs
    from harness.report.xlsx import write_xlsx

    return [
        ("report.json", write_json), ("requirements-freeze.txt", write_freeze),
        ("details", write_details), ("indicators", write_indicators),
        ("heatmaps", write_confusion_pngs), ("comparison.png", write_forest_png), ("training plots", write_training_pngs),
        ("report.md", write_markdown),
        ("report.xlsx", write_xlsx),
        ("report.html", write_html),
    ]


def warm_writers() -> None:
    """Import the writers' heavy libraries, compile report.html's template and read the installed packages
    (report.json's versions, requirements-freeze.txt) while requests are in flight, so that writing the reports
    after the last reply waits for none of them.

    In the calling thread, the run's main one, right after the requests start: not on a thread of its own. When
    it was, a run hung once (a CI rehearsal, Python 3.11): its main thread waited forever in ``from openpyxl
    import Workbook`` for a module lock that no live thread held. The likely cause is CPython gh-91351, fixed in
    3.12: an import that a garbage collection interrupts, with finalizers that import in turn, can leave its
    module lock held after the importing thread moved on. A lock the main thread itself holds, it re-enters."""
    from harness.packages import warm_packages
    from harness.report.html import page_template

    _writers()
    for name in _HEAVY_IMPORTS:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the writer reports a missing library itself
            pass
    try:
        page_template()  # about 0.05 s on 2 cores, once per process
    except Exception:  # noqa: BLE001 - compiled again, and reported, when the page is written
        pass
    try:
        warm_packages()
    except Exception:  # noqa: BLE001 - read again, and reported, when the report is built
        pass


class ReportsIncomplete(Exception):
    """Some formats could not be written; the others were. ``paths``: written; ``failures``: why not."""

    def __init__(self, paths: list[Path], failures: list[str]) -> None:
        super().__init__("; ".join(failures))
        self.paths, self.failures = paths, failures


def write_reports(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write every format into out_dir (created 0700 if missing); return the paths written.

    One failing writer never stops the others: when any failed, ReportsIncomplete is raised
    after all have run, naming each failure.

    report.json goes first. The heatmaps, the forest plot and the training plots go before
    report.md, report.xlsx and report.html, which link or embed them.
    """
    from harness.report.files import private_dir

    out_dir = private_dir(Path(out_dir))
    writers = _writers()
    paths: list[Path] = []
    failures: list[str] = []
    for name, writer in writers:
        try:
            written = writer(report, out_dir)
        except Exception as exc:  # noqa: BLE001 - reported to the user, the other formats still written
            failures.append(f"{name} not written: {type(exc).__name__}: {exc}")
            continue
        paths.extend(written if isinstance(written, list) else [written])
    if failures:
        raise ReportsIncomplete(paths, failures)
    return paths
