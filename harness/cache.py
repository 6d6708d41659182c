"""The persistent response cache: never pay twice for the same answer.

SQLite in WAL mode, safe with several processes writing at once. A key covers the model's
identity (name, engine kind, weights sha256 when known), the full request (messages or
prompt, every sampling setting, extra fields), the sample index and the cache format, so two
models, two prompts or two settings never share an entry. Only successful replies are stored.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Iterable

from harness.engines.client import Request
from harness.sqlite import open_wal

CACHE_FORMAT = 1
MODES = ("off", "read", "write", "read-write")


def cache_key(model_identity: dict[str, Any], request: Request, sample: int = 0) -> str:
    payload = {"format": CACHE_FORMAT, "model": model_identity, "api": request.api, "body": request.body(),
               "sample": sample}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    def __init__(self, path: Path, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"cache mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.path = path
        self.mode = mode
        self._db = open_wal(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                         "reply TEXT NOT NULL, created REAL NOT NULL)")

    @property
    def readable(self) -> bool:
        return self.mode in ("read", "read-write")

    @property
    def writable(self) -> bool:
        return self.mode in ("write", "read-write")

    def get_many(self, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        if not self.readable:
            return {}
        found: dict[str, dict[str, Any]] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):  # SQLite caps the number of bound parameters
            chunk = unique[start:start + 500]
            rows = self._db.execute(f"SELECT key, reply FROM replies WHERE key IN ({','.join('?' * len(chunk))})",
                                    chunk).fetchall()
            found.update((key, json.loads(reply)) for key, reply in rows)
        return found

    def put_many(self, entries: Iterable[tuple[str, str, dict[str, Any]]]) -> None:
        """Store (key, model, reply) for successful replies; failures are never cached."""
        rows = [(key, model, json.dumps(reply), time.time()) for key, model, reply in entries
                if reply.get("error") is None]
        if not self.writable or not rows:
            return
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO replies VALUES (?, ?, ?, ?)", rows)

    def count(self, model: str | None = None) -> int:
        if model is None:
            return int(self._db.execute("SELECT COUNT(*) FROM replies").fetchone()[0])
        return int(self._db.execute("SELECT COUNT(*) FROM replies WHERE model=?", (model,)).fetchone()[0])

    def close(self) -> None:
        self._db.close()
