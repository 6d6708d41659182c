"""details/<suite>.jsonl: one line per case in the InternBootcamp layout users already parse.

A suite whose cases come from several files (a list or a glob of datasets) gets one file per source
file instead, ``details/<suite>__<file>.jsonl``, the file named by its path below the folder its
suite's data files share (``data/a.jsonl`` and ``data/b.jsonl``: ``<suite>__a``, ``<suite>__b``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Any

from harness.report.files import private_dir, write_text

DIRNAME = "details"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_filename(name: str) -> str:
    """A file-system-safe stem for a suite name (never empty, never hidden)."""
    return _UNSAFE.sub("_", name).strip("._") or "suite"


def unique_stem(stem: str, used: set[str]) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... if taken (case-insensitively: file systems may fold case);
    the result is added to ``used``. Two names may sanitise alike ("a b", "a/b"): never let one overwrite
    the other."""
    candidate, n = stem, 2
    while candidate.lower() in used:
        candidate, n = f"{stem}-{n}", n + 1
    used.add(candidate.lower())
    return candidate


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


def _sources(report: dict[str, Any]) -> dict[str, list[str]]:
    """Each suite's source files, as its cases name them, in data order (a suite without cases: none)."""
    sources: dict[str, dict[str, None]] = {}
    for suite in report.get("suites") or []:
        sources.setdefault(str(suite.get("name")), {})
    for case in report.get("cases") or []:
        sources.setdefault(str(case.get("suite")), {}).setdefault(str(case.get("dataset") or ""), None)
    return {suite: list(files) for suite, files in sources.items()}


def _file_names(suite: str, files: list[str]) -> dict[str, str]:
    """The details file name (before sanitising) of each source file of a suite."""
    if len(files) <= 1:
        return {file: suite for file in files}
    paths = [PurePosixPath(file) for file in files]
    shared = 0  # leading folders every source file shares
    while all(len(p.parent.parts) > shared for p in paths) and len({p.parts[shared] for p in paths}) == 1:
        shared += 1
    return {file: f"{suite}__" + "/".join(p.parts[shared:]).removesuffix(".jsonl") for file, p in zip(files, paths)}


def write_details(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write one JSONL file per suite, or per source file of a suite of several (all models' cases
    in it); return the paths."""
    ddir = Path(out_dir) / DIRNAME
    private_dir(ddir)
    cases: list[dict[str, Any]] = report.get("cases") or []

    # Suites (and source files) with no judged cases still get an (empty) file, so the set of
    # files always matches the set of suites and their sources.
    lines: dict[tuple[str, str], list[str]] = {}  # (suite, source file) -> its rows
    names: dict[tuple[str, str], str] = {}
    for suite, files in _sources(report).items():
        for file, name in (_file_names(suite, files) if files else {"": suite}).items():
            lines[(suite, file)] = []
            names[(suite, file)] = name
    for case in cases:
        row = json.dumps(detail_line(case), ensure_ascii=False, default=str)
        lines[(str(case.get("suite")), str(case.get("dataset") or ""))].append(row)

    paths: list[Path] = []
    used: set[str] = set()
    for key, rows in lines.items():
        candidate = unique_stem(safe_filename(names[key]), used)
        path = ddir / f"{candidate}.jsonl"
        write_text(path, "".join(r + "\n" for r in rows))
        paths.append(path)
    return paths
