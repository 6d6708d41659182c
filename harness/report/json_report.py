"""report.json: the envelope verbatim, the source every other format derives from."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Iterator

from harness.report.files import write_atomic

FILENAME = "report.json"
# a comparison's disagreements (up to 500 cases per pair, with both outputs) one per line, as cases are
_COMPARISON_LAYOUT: dict[str, Any] = {"pairs": {"disagreements": None}}


def write_json(report: dict[str, Any], out_dir: Path) -> Path:
    """Write the envelope as UTF-8 JSON, keys in the order given: indented, except that each
    case, and each disagreement of a comparison, takes one line (json's C encoder runs only
    without indent: 5x faster on big runs).

    Streamed: the file gets the text of :func:`dumps_report` piece by piece, so a million cases
    never stand in memory as one text (and its bytes, and their copies) at once."""

    def write(tmp: Path) -> None:
        with tmp.open("wb") as handle:
            batch: list[str] = []
            for piece in _pieces(report):
                batch.append(piece)
                if len(batch) >= _BATCH:
                    handle.write("".join(batch).encode("utf-8", errors="backslashreplace"))
                    batch.clear()
            batch.append("\n")
            handle.write("".join(batch).encode("utf-8", errors="backslashreplace"))

    return write_atomic(Path(out_dir) / FILENAME, write)


_BATCH = 512  # pieces (about one case each) encoded and written together


def dumps_report(report: dict[str, Any]) -> str:
    """The envelope as JSON text: two-space indentation, one line per case and per disagreement."""
    return "".join(_pieces(report))


def _pieces(report: dict[str, Any]) -> Iterator[str]:
    """The text of :func:`dumps_report` in pieces, each whole JSON tokens (one case a piece)."""
    if not report:
        yield "{}"
        return
    yield "{\n"
    for number, (key, value) in enumerate(report.items()):
        yield f"{',' + chr(10) if number else ''}  {_dumps(key)}: "
        if key == "cases" and isinstance(value, Sequence) and not isinstance(value, str) and value:
            yield "[\n"
            for index, case in enumerate(value):
                yield ("    " if not index else ",\n    ") + _dumps(case)
            yield "\n  ]"
        elif key == "comparison" and isinstance(value, dict):
            yield _nested(value, "  ", _COMPARISON_LAYOUT)
        elif key == "cases" and isinstance(value, Sequence) and not isinstance(value, str):
            yield "[]"  # no case (the envelope's rows are a lazy sequence, not a list)
        else:
            yield _dumps(value, indent=2).replace("\n", "\n  ")
    yield "\n}"


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
