"""Report writers: one envelope dict in, report.json / details / report.md / report.xlsx out,
plus a confusion_<suite>[_<model>].png heatmap per confusion matrix."""

from __future__ import annotations

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
    "write_confusion_png", "write_confusion_pngs",
]  # fmt: skip


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
