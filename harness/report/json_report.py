"""report.json: the envelope verbatim, the source every other format derives from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from harness.report.files import write_text

FILENAME = "report.json"
# a comparison's disagreements (up to 500 cases per pair, with both outputs) one per line, as cases are
_COMPARISON_LAYOUT: dict[str, Any] = {"pairs": {"disagreements": None}}


def write_json(report: dict[str, Any], out_dir: Path) -> Path:
    """Write the envelope as UTF-8 JSON, keys in the order given: indented, except that each
    case, and each disagreement of a comparison, takes one line (json's C encoder runs only
    without indent: 5x faster on big runs)."""
    return write_text(Path(out_dir) / FILENAME, dumps_report(report) + "\n")


def dumps_report(report: dict[str, Any]) -> str:
    """The envelope as JSON text: two-space indentation, one line per case and per disagreement."""
    members = []
    for key, value in report.items():
        if key == "cases" and isinstance(value, list) and value:
            text = "[\n" + ",\n".join("    " + _dumps(case) for case in value) + "\n  ]"
        elif key == "comparison" and isinstance(value, dict):
            text = _nested(value, "  ", _COMPARISON_LAYOUT)
        else:
            text = _dumps(value, indent=2).replace("\n", "\n  ")
        members.append(f"  {_dumps(key)}: {text}")
    return "{\n" + ",\n".join(members) + "\n}" if members else "{}"


def _nested(value: Any, pad: str, layout: dict[str, Any] | None) -> str:
    """value indented like the rest of the file, its closing line at pad. ``layout`` names the keys
    whose lists are laid out one item per line (each item by its own layout; None: one line);
    everything else goes through json's indenting encoder, slow but small here."""
    if layout is None:
        return _dumps(value)
    if not isinstance(value, dict) or not value:
        return _dumps(value, indent=2).replace("\n", "\n" + pad)
    inner = pad + "  "
    members = []
    for key, item in value.items():
        if key in layout and isinstance(item, list) and item:
            deeper = inner + "  "
            lines = ",\n".join(deeper + _nested(x, deeper, layout[key]) for x in item)
            text = f"[\n{lines}\n{inner}]"
        else:
            text = _dumps(item, indent=2).replace("\n", "\n" + inner)
        members.append(f"{inner}{_key(key)}: {text}")
    return "{\n" + ",\n".join(members) + f"\n{pad}}}"


def _key(key: Any) -> str:
    # json's own rule for a key that is not a string (1 -> "1", True -> "true")
    return _dumps(key) if isinstance(key, str) else _dumps({key: 0})[1:-4]


def _dumps(value: Any, indent: int | None = None) -> str:
    # default=str: a stray Path or datetime must not cost the whole run its report
    return json.dumps(value, ensure_ascii=False, indent=indent, default=str)
