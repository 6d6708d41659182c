"""SQLite as the harness uses it: WAL mode, so several processes read while one writes."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def open_wal(path: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with WAL journaling."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db
