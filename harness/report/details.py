"""details/<suite>.jsonl: one line per case in the InternBootcamp layout users already parse.

A suite whose cases come from several files (a list or a glob of datasets) gets one file per source
file instead, ``details/<suite>__<file>.jsonl``, the file named by its path below the folder its
suite's data files share (``data/a.jsonl`` and ``data/b.jsonl``: ``<suite>__a``, ``<suite>__b``).
"""

from __future__ import annotations

import json
import re
from array import array
from pathlib import Path, PurePosixPath
from typing import Any

from harness.report.files import private_dir, write_atomic

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
    rows: dict[tuple[str, str], array[int]] = {}  # (suite, source file) -> its cases, by index
    names: dict[tuple[str, str], str] = {}
    for suite, files in _sources(report).items():
        for file, name in (_file_names(suite, files) if files else {"": suite}).items():
            rows[(suite, file)] = array("q")
            names[(suite, file)] = name
    for index, case in enumerate(cases):
        rows[(str(case.get("suite")), str(case.get("dataset") or ""))].append(index)

    paths: list[Path] = []
    used: set[str] = set()
    for key, indices in rows.items():
        candidate = unique_stem(safe_filename(names[key]), used)
        path = ddir / f"{candidate}.jsonl"
        # streamed, a batch of lines at a time: a million cases never stand in memory as one text
        write_atomic(path, lambda tmp, indices=indices: _write_rows(tmp, cases, indices))
        paths.append(path)
    return paths


_BATCH = 512  # lines encoded and written together


def _write_rows(path: Path, cases: list[dict[str, Any]], indices: array[int]) -> None:
    with path.open("wb") as handle:
        batch: list[str] = []
        for index in indices:
            batch.append(json.dumps(detail_line(cases[index]), ensure_ascii=False, default=str) + "\n")
            if len(batch) >= _BATCH:
                handle.write("".join(batch).encode("utf-8", errors="backslashreplace"))
                batch.clear()
        handle.write("".join(batch).encode("utf-8", errors="backslashreplace"))
