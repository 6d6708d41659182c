"""The run's result board: generated replies keyed by item node id, shared by all processes.

The controller writes replies as they arrive; items (in the controller or in xdist workers)
read theirs. SQLite in WAL mode lets one writer and many readers work at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Iterable

from harness.sqlite import open_wal


class ResultStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = open_wal(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (nodeid TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS planned (nodeid TEXT PRIMARY KEY)")

    def plan(self, nodeids: Iterable[str]) -> None:
        """Record which items the controller will generate, so items know to wait for them."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO planned VALUES (?)", ((n,) for n in nodeids))

    def is_planned(self, nodeid: str) -> bool:
        return self._db.execute("SELECT 1 FROM planned WHERE nodeid=?", (nodeid,)).fetchone() is not None

    def put_many(self, replies: Iterable[tuple[str, dict[str, Any]]]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?)",
                                 ((n, json.dumps(r)) for n, r in replies))

    def get(self, nodeid: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT reply FROM replies WHERE nodeid=?", (nodeid,)).fetchone()
        return json.loads(row[0]) if row else None

    def wait(self, nodeid: str, timeout_s: float) -> dict[str, Any] | None:
        """The reply for an item, polling until it arrives or the timeout passes."""
        deadline = time.monotonic() + timeout_s
        delay = 0.005
        while True:
            reply = self.get(nodeid)
            if reply is not None or time.monotonic() > deadline:
                return reply
            time.sleep(delay)
            delay = min(delay * 2, 0.2)

    def close(self) -> None:
        self._db.close()
