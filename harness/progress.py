"""The live generation line: done/total, rate, errors and ETA."""

from __future__ import annotations

import time
from typing import Any


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class ProgressLine:
    """Redraws one line on a terminal; elsewhere prints a line per 10% so CI logs stay short."""

    def __init__(self, writer: Any, total: int, label: str) -> None:
        self.writer = writer
        self.total = total
        self.label = label
        self.started = time.monotonic()
        self.live = bool(getattr(writer, "isatty", False)) and writer is not None
        self._last_decile = -1
        self._width = 0

    def text(self, done: int, errors: int) -> str:
        elapsed = time.monotonic() - self.started
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else None
        share = done / self.total if self.total else 1.0
        return (f"{self.label}: {done}/{self.total} ({share:.0%}) {rate:.1f} req/s, "
                f"{errors} errors, elapsed {_clock(elapsed)}, ETA {_clock(eta) if eta is not None else '?'}")

    def update(self, done: int, errors: int) -> None:
        if self.writer is None:
            return
        line = self.text(done, errors)
        if self.live:
            self.writer.write("\r" + line.ljust(self._width))
            self._width = len(line)
            self.writer.flush()
            return
        decile = int(10 * done / self.total) if self.total else 10
        if decile > self._last_decile:
            self._last_decile = decile
            self.writer.line(line)

    def close(self, done: int, errors: int) -> None:
        if self.writer is None:
            return
        if self.live:
            self.update(done, errors)
            self.writer.line("")
        elif self._last_decile < 10:
            self.writer.line(self.text(done, errors))
