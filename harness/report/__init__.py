"""Report writers: one envelope dict in, report.json / details / report.md / report.xlsx out,
plus a confusion_<suite>[_<model>].png heatmap per confusion matrix."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

from harness.report.details import write_details
from harness.report.heatmap import write_confusion_png, write_confusion_pngs
from harness.report.indicators import write_indicators
from harness.report.json_report import write_json
from harness.report.markdown import write_markdown
from harness.report.xlsx import write_xlsx

__all__ = [
    "write_reports", "write_json", "write_details", "write_indicators", "write_markdown", "write_xlsx",
    "write_confusion_png", "write_confusion_pngs", "warm_writers",
]  # fmt: skip

# what the writers import lazily and what costs most to import (openpyxl: ~0.15 s)
_HEAVY_IMPORTS = ("openpyxl",)


def warm_writers() -> None:
    """Import the writers' heavy libraries on a daemon thread, while requests are in flight,
    so that writing the reports after the last reply does not wait for the import."""

    def load() -> None:
        for name in _HEAVY_IMPORTS:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the writer reports a missing library itself
                pass

    threading.Thread(target=load, name="llm-harness-warm-writers", daemon=True).start()


def write_reports(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write every format into out_dir (created if missing); return the paths written.

    report.json goes first: should a later writer fail, the raw results are kept. The
    heatmaps go before report.md and report.xlsx, which link and embed them.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [
        write_json(report, out_dir),
        *write_details(report, out_dir),
        *write_indicators(report, out_dir),
        *write_confusion_pngs(report, out_dir),
        write_markdown(report, out_dir),
        write_xlsx(report, out_dir),
    ]
