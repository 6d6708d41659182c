"""The run's board: generated replies keyed by item node id, read by the case items, and gate
verdicts keyed by gate node id, read by the gate items.

Generation posts replies as they arrive while items already run, so an item waits only for
its own reply. Without xdist the board is a dict in memory; with xdist it is SQLite in WAL
mode, written by the controller and polled by the workers. Either way an item stops waiting
when generation has finished without its reply (a cancelled run), never on a fixed timeout:
a reply far down the queue may take as long as the queue ahead of it.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Protocol

from harness.engines.managed import pid_alive
from harness.sqlite import open_wal


class Board(Protocol):
    def plan(self, nodeids: Iterable[str]) -> None: ...
    def is_planned(self, nodeid: str) -> bool: ...
    def put_many(self, replies: Iterable[tuple[str, dict[str, Any]]]) -> None: ...
    def finish(self, reason: str | None = None) -> None: ...
    def wait(self, nodeid: str) -> dict[str, Any] | None: ...
    def put_verdicts(self, verdicts: Iterable[tuple[str, dict[str, Any]]]) -> None: ...
    def wait_verdict(self, nodeid: str) -> dict[str, Any] | None: ...
    def close(self) -> None: ...


class MemoryBoard:
    """The board of a run without xdist: generation's thread writes, the main thread reads."""

    def __init__(self) -> None:
        self._replies: dict[str, dict[str, Any]] = {}
        self._verdicts: dict[str, dict[str, Any]] = {}
        self._planned: set[str] = set()
        self._finished = False
        self.reason: str | None = None
        self._cond = threading.Condition()

    def plan(self, nodeids: Iterable[str]) -> None:
        self._planned.update(nodeids)

    def is_planned(self, nodeid: str) -> bool:
        return nodeid in self._planned

    def put_many(self, replies: Iterable[tuple[str, dict[str, Any]]]) -> None:
        with self._cond:
            self._replies.update(replies)
            self._cond.notify_all()

    def finish(self, reason: str | None = None) -> None:
        with self._cond:
            self._finished = True
            self.reason = reason
            self._cond.notify_all()

    def wait(self, nodeid: str) -> dict[str, Any] | None:
        with self._cond:
            while nodeid not in self._replies and not self._finished:
                self._cond.wait(1.0)
            return self._replies.get(nodeid)

    def put_verdicts(self, verdicts: Iterable[tuple[str, dict[str, Any]]]) -> None:
        with self._cond:
            self._verdicts.update(verdicts)
            self._cond.notify_all()

    def wait_verdict(self, nodeid: str) -> dict[str, Any] | None:
        # the controller judges in this process: every selected gate gets a verdict
        with self._cond:
            while nodeid not in self._verdicts:
                self._cond.wait(1.0)
            return self._verdicts[nodeid]

    def close(self) -> None:
        pass


class SqliteBoard:
    """The board shared by the xdist controller (writer) and its workers (readers)."""

    def __init__(self, path: Path, owner_pid: int | None = None) -> None:
        self.path = path
        self.owner_pid = owner_pid
        self.reason: str | None = None
        self._db = open_wal(path, durable=False)  # in the run's own folder, removed at its end
        # one connection, used by the controller's threads (generation, gate-only scoring, main):
        # sqlite3 lets a second thread open a transaction inside the first's, and then raises
        self._lock = threading.RLock()
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (nodeid TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS planned (nodeid TEXT PRIMARY KEY)")
        self._db.execute("CREATE TABLE IF NOT EXISTS finished (reason TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS verdicts (nodeid TEXT PRIMARY KEY, verdict TEXT NOT NULL)")

    def plan(self, nodeids: Iterable[str]) -> None:
        """Record which items the controller will generate, so items know to wait for them."""
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR IGNORE INTO planned VALUES (?)", ((n,) for n in nodeids))

    def is_planned(self, nodeid: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM planned WHERE nodeid=?", (nodeid,)).fetchone() is not None

    def put_many(self, replies: Iterable[tuple[str, dict[str, Any]]]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?)",
                                 ((n, json.dumps(r)) for n, r in replies))

    def finish(self, reason: str | None = None) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.execute("INSERT INTO finished VALUES (?)", (reason,))

    def get(self, nodeid: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE nodeid=?", (nodeid,)).fetchone()
        return json.loads(row[0]) if row else None

    def _finished(self) -> bool:
        with self._lock:
            row = self._db.execute("SELECT reason FROM finished LIMIT 1").fetchone()
        if row is not None:
            self.reason = row[0]
            return True
        # a controller killed outright never says it finished
        return self.owner_pid is not None and not pid_alive(self.owner_pid)

    def wait(self, nodeid: str) -> dict[str, Any] | None:
        """The reply for an item, polled until it arrives or generation has ended without it."""
        delay = 0.002
        while True:
            reply = self.get(nodeid)
            if reply is not None:
                return reply
            if self._finished():
                return self.get(nodeid)
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def put_verdicts(self, verdicts: Iterable[tuple[str, dict[str, Any]]]) -> None:
        with self._lock, self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO verdicts VALUES (?, ?)",
                                 ((n, json.dumps(v)) for n, v in verdicts))

    def wait_verdict(self, nodeid: str) -> dict[str, Any] | None:
        """A gate's verdict, polled until the controller has judged its suite; None if the controller died."""
        delay = 0.005
        while True:
            with self._lock:
                row = self._db.execute("SELECT verdict FROM verdicts WHERE nodeid=?", (nodeid,)).fetchone()
            if row is not None:
                return json.loads(row[0])
            if self.owner_pid is not None and not pid_alive(self.owner_pid):
                return None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def close(self) -> None:
        with self._lock:
            self._db.close()

