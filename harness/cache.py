"""The persistent response cache: never pay twice for the same answer.

SQLite in WAL mode, safe with several processes writing at once. A key covers the model's
identity (name, engine kind, weights sha256 when known), the full request (messages or
prompt, every sampling setting, extra fields), the sample index and the cache format, so two
models, two prompts or two settings never share an entry. Only successful replies are stored.

A cache file that SQLite finds corrupt is moved aside (``<name>.corrupt-<time>``, its side files
with it) with a warning, and the run goes on with a fresh cache; a path that cannot hold the
cache (a folder, no permission) is a usage error. The file is private to its owner (0600).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

import pytest

from harness.engines.client import Request
from harness.sqlite import SIDE_SUFFIXES, open_wal

CACHE_FORMAT = 1
MODES = ("off", "read", "write", "read-write")
_CORRUPT = (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
SQLITE_HEADER = b"SQLite format 3\x00"
T = TypeVar("T")


class CacheError(pytest.UsageError):
    """The cache path cannot hold the cache: a folder, a file where a folder should be, no permission."""


class CacheWarning(UserWarning):
    """The cache file was corrupt: moved aside, and a fresh cache started."""


def cache_warner(hook: Any = None) -> Callable[[str], None]:
    """How the cache warns: into pytest's warnings summary through ``hook`` (pytest catches no
    warning while the run's requests start, outside any test), or as a Python warning."""
    def python_warning(message: str) -> None:
        warnings.warn(message, CacheWarning, stacklevel=4)

    def pytest_warning(message: str) -> None:
        record = warnings.WarningMessage(CacheWarning(message), CacheWarning, __file__, 0)
        hook.pytest_warning_recorded.call_historic(
            kwargs={"warning_message": record, "when": "runtest", "nodeid": "", "location": None})

    return python_warning if hook is None else pytest_warning


def _is_corrupt(exc: sqlite3.DatabaseError) -> bool:
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _CORRUPT


def cache_key(model_identity: dict[str, Any], request: Request, sample: int = 0) -> str:
    payload = {"format": CACHE_FORMAT, "model": model_identity, "api": request.api, "body": request.body(),
               "sample": sample}
    # surrogatepass: a lone surrogate ("\ud83d" in a dataset is valid JSON) keys like any text; other
    # text encodes as before, so existing keys stay valid
    text = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class ResponseCache:
    def __init__(self, path: Path, mode: str, warn: Callable[[str], None] | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"cache mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.moved_to: list[Path] = []  # where corrupt cache files went
        self._warn = warn or cache_warner()
        self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        if self.path.is_dir():
            raise CacheError(f"llm-harness: the response cache path {self.path} is a folder; --llm-cache-path "
                             f"names the cache file, e.g. {self.path / 'responses.sqlite'}")
        if self._foreign():
            # seen before SQLite opens it: closing a connection to it would delete its -wal file
            self._move_aside("file is not a database")
            return self._connect()
        try:
            return self._connect()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise CacheError(f"llm-harness: cannot open the response cache {self.path}: {exc}") from exc
            self._move_aside(str(exc))
        return self._connect()

    def _foreign(self) -> bool:
        """Whether the cache file holds bytes that are no SQLite database (an empty file is a new one)."""
        try:
            with self.path.open("rb") as handle:
                head = handle.read(len(SQLITE_HEADER))
        except OSError:
            return False  # no file yet, or unreadable: SQLite says which
        return bool(head) and head != SQLITE_HEADER

    def _connect(self) -> sqlite3.Connection:
        try:
            db = open_wal(self.path)
        except OSError as exc:  # a file where a folder should be, no permission
            raise CacheError(f"llm-harness: cannot create the response cache {self.path}: {exc}") from exc
        try:
            db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                       "reply TEXT NOT NULL, created REAL NOT NULL)")
        except BaseException:
            db.close()
            raise
        return db

    def _move_aside(self, problem: str) -> None:
        """Rename the corrupt file and its side files out of the way; say so."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target, n = self.path.with_name(f"{self.path.name}.corrupt-{stamp}"), 2
        while target.exists():
            target, n = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}"), n + 1
        os.replace(self.path, target)
        for suffix in SIDE_SUFFIXES:  # a stale -wal beside a fresh file would be read as its log
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                os.replace(side, Path(f"{target}{suffix}"))
        self.moved_to.append(target)
        self._warn(f"llm-harness: the response cache {self.path} is corrupt ({problem}): moved to {target.name}; "
                   "this run starts a fresh cache")

    def _guarded(self, operation: Callable[[], T]) -> T:
        """Run a query; a cache found corrupt only now is moved aside and the query runs on a fresh one."""
        try:
            return operation()
        except sqlite3.DatabaseError as exc:
            if not _is_corrupt(exc):
                raise
            self._db.close()
            self._move_aside(str(exc))
            self._db = self._connect()
        return operation()

    @property
    def readable(self) -> bool:
        return self.mode in ("read", "read-write")

    @property
    def writable(self) -> bool:
        return self.mode in ("write", "read-write")

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        if not self.readable:
            return {}
        unique = list(dict.fromkeys(keys))

        def lookup() -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
                chunk = unique[start:start + 500]
                rows = self._db.execute(f"SELECT key, reply FROM replies WHERE key IN ({','.join('?' * len(chunk))})",
                                        chunk).fetchall()
                found.update((key, json.loads(reply)) for key, reply in rows)
            return found

        return self._guarded(lookup)

    def put_many(self, entries: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """Store (key, model, reply) for successful replies; failures are never cached."""
        rows = [(key, model, json.dumps(reply), time.time()) for key, model, reply in entries
                if reply.get("error") is None]
        if not self.writable or not rows:
            return

        def insert() -> None:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)", rows)

        self._guarded(insert)

    def count(self, model: str | None = None) -> int:
        if model is None:
            return int(self._guarded(lambda: self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0]))
        return int(self._guarded(
            lambda: self._db.execute("SELECT COUNT(*) FROM replies WHERE model=?", (model,)).fetchone()[0]))

    def close(self) -> None:
        self._db.close()
