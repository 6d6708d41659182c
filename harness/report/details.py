"""details/<suite>.jsonl: one line per case in the InternBootcamp layout users already parse."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

DIRNAME = "details"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str) -> str:
    """A file-system-safe stem for a suite name (never empty, never hidden)."""
    return _UNSAFE.sub("_", name).strip("._") or "suite"


def detail_line(case: dict[str, Any]) -> dict[str, Any]:
    """One case in the InternBootcamp key order (the order is part of the format)."""
    return {
        "id": case.get("id"),
        "model": case.get("model"),
        "prompt": case.get("prompt"),
        "output": case.get("output"),
        "output_len": case.get("output_tokens"),
        "ground_truth": case.get("target"),
        "score": case.get("score"),
        "extracted_output": case.get("extracted"),
        "latency_ms": case.get("latency_ms"),
        "error": case.get("error"),
        "passed": case.get("passed"),
        "reason": case.get("reason"),
    }


def write_details(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write one JSONL file per suite (all models' cases in it); return the paths."""
    ddir = Path(out_dir) / DIRNAME
    ddir.mkdir(parents=True, exist_ok=True)
    cases: list[dict[str, Any]] = report.get("cases") or []

    # Suites with no judged cases still get an (empty) file, so the set of files
    # always matches the set of suites.
    lines: dict[str, list[str]] = {}
    for suite in report.get("suites") or []:
        lines.setdefault(str(suite.get("name")), [])
    for case in cases:
        row = json.dumps(detail_line(case), ensure_ascii=False, default=str)
        lines.setdefault(str(case.get("suite")), []).append(row)

    paths: list[Path] = []
    used: set[str] = set()
    for name, rows in lines.items():
        stem = safe_filename(name)
        # two names may sanitise alike ("a b", "a/b"); never let one overwrite the other
        candidate, n = stem, 2
        while candidate.lower() in used:
            candidate, n = f"{stem}-{n}", n + 1
        used.add(candidate.lower())
        path = ddir / f"{candidate}.jsonl"
        path.write_text("".join(r + "\n" for r in rows), encoding="utf-8", newline="\n")
        paths.append(path)
    return paths
