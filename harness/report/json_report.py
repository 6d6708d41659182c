"""report.json: the envelope verbatim, the source every other format derives from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FILENAME = "report.json"


def write_json(report: dict[str, Any], out_dir: Path) -> Path:
    """Write the envelope as indented UTF-8 JSON, keys in the order given."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / FILENAME
    # default=str: a stray Path or datetime must not cost the whole run its report
    text = json.dumps(report, ensure_ascii=False, indent=2, default=str)
    path.write_text(text + "\n", encoding="utf-8", newline="\n")
    return path
