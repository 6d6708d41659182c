"""SQLite as the harness uses it: WAL mode, so several processes read while one writes.

The databases hold prompts and replies: folders the harness creates for them are 0700 and a
database file it creates is 0600, as are SQLite's side files (-wal, -shm, -journal), which SQLite
creates with the mode of their database file.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from harness.private import FILE_MODE, private_dir

SIDE_SUFFIXES = ("-wal", "-shm", "-journal")


def open_wal(path: Path, durable: bool = True) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit) with WAL journaling.

    ``durable=False``: for a database deleted when its run ends (the xdist board). Nothing is flushed to the
    disk then (no fsync), neither while the run writes it nor when the last connection's close copies the log
    into the file (about 15 ms of a 1,000-case run's end); what a crash of the machine could lose is gone anyway."""
    private_dir(Path(path).parent)
    _create_private(path)
    db = sqlite3.connect(str(path), timeout=60, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL" if durable else "PRAGMA synchronous=OFF")
    except BaseException:
        db.close()
        raise
    return db


def _create_private(path: Path) -> None:
    """Create the database file 0600 before SQLite does, so that it and its side files are private."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
    except FileExistsError:
        return
    os.close(fd)
    os.chmod(path, FILE_MODE)
