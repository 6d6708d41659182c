"""The run's in-flight limit: a hard ceiling that backs off when the server says 429.

Additive increase, multiplicative decrease (TCP's rule): each 429 halves the limit (at most
once per ``cooldown_s``, so one burst of 429s counts once), each success adds ``1/limit``, so
the limit climbs back by one request per window of successful requests. The ceiling is
``--llm-concurrency`` and is never exceeded. The floor is ``max(1, ceiling // 8)`` by default:
three halvings from the ceiling, enough to take the pressure off a server that throttles,
while a server that 429s everything (a quota spent, a long ``Retry-After``) cannot starve the
run down to one request at a time; its 429s are retried with back-off or failed by the client.
All methods run on the request loop.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator


class Slot:
    """One attempt's hold on the limit; mark ``throttled`` when the server answered 429."""

    __slots__ = ("throttled",)

    def __init__(self) -> None:
        self.throttled = False


class AdaptiveLimit:
    def __init__(self, maximum: int, cooldown_s: float = 1.0, floor: int | None = None) -> None:
        self.maximum = max(1, maximum)
        self.floor = min(self.maximum, max(1, self.maximum // 8 if floor is None else floor))
        self.limit = float(self.maximum)
        self.cooldown_s = cooldown_s
        self.in_flight = 0
        self.peak_in_flight = 0
        self.lowest_limit = self.maximum
        self.throttles = 0
        self._last_cut = float("-inf")
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def allowed(self) -> int:
        return max(self.floor, int(self.limit))

    async def acquire(self) -> None:
        """A slot, first come first served: while anyone waits, a newcomer queues behind them (a
        request that just finished cannot take its slot back ahead of a judge request waiting for one)."""
        if self.in_flight < self.allowed and not self._waiters:
            self._take()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # resolved by _wake, which took the slot for this waiter
        except asyncio.CancelledError:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self.in_flight -= 1  # handed a slot, but cancelled before using it: pass it on
                self._wake()
            raise

    def _take(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.allowed:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._take()
                waiter.set_result(None)

    def release(self, throttled: bool) -> None:
        self.in_flight -= 1
        if throttled:
            now = time.monotonic()
            if now - self._last_cut >= self.cooldown_s:
                self._last_cut = now
                self.limit = max(float(self.floor), self.limit / 2)
                self.lowest_limit = min(self.lowest_limit, self.allowed)
                self.throttles += 1
        else:
            self.limit = min(float(self.maximum), self.limit + 1 / self.limit)
        self._wake()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        await self.acquire()
        slot = Slot()
        try:
            yield slot
        finally:
            self.release(slot.throttled)

    def stats(self) -> dict[str, int]:
        return {"limit": self.maximum, "floor": self.floor, "lowest_limit": self.lowest_limit,
                "throttled": self.throttles, "peak_in_flight": self.peak_in_flight}
