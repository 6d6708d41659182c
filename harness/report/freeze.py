"""requirements-freeze.txt: every installed distribution, ``name==version`` sorted, as ``pip freeze``
lists them; report.json names it (``run.packages_freeze``) beside the versions that matter
(``run.packages``). Read from importlib.metadata in this process: no pip, no subprocess."""

from __future__ import annotations

from pathlib import Path, PurePath
from typing import Any

from harness.packages import freeze_text
from harness.report.files import write_text


def write_freeze(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Write the freeze file report.json names; nothing for an envelope that names none (a comparison
    report of stored runs: its packages are not this process's)."""
    name = (report.get("run") or {}).get("packages_freeze")
    if not isinstance(name, str) or not name:
        return []
    # a file of the report folder, never a path elsewhere
    return [write_text(Path(out_dir) / (PurePath(name).name or "requirements-freeze.txt"), freeze_text())]
