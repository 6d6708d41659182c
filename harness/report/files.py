"""How report files reach the disk: whole or not at all, readable by their owner only.

A writer that fails half-way (a full disk, a value no format can hold) must not leave a
truncated report.json behind, and a report holds every prompt and reply of the run: files are
written to a temporary name beside the target, made 0600, then renamed over it; folders the
harness creates are 0700.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable

from harness.private import FILE_MODE, private_dir

__all__ = ["private_dir", "write_atomic", "write_text"]


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Let write fill a temporary file beside path, then rename it to path (0600)."""
    path = Path(path)
    private_dir(path.parent)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        os.chmod(tmp, FILE_MODE)
        write(Path(tmp))
        os.chmod(tmp, FILE_MODE)  # some writers recreate the file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: Path, text: str) -> Path:
    """Write text as UTF-8, atomically. A lone surrogate (valid in JSON, not in UTF-8) is written
    as its ``\\udXXX`` escape: inside a JSON string that is the same value, elsewhere a visible mark."""
    data = text.encode("utf-8", errors="backslashreplace")
    return write_atomic(path, lambda tmp: tmp.write_bytes(data))
