"""One background asyncio loop per process: every request of the process goes through it."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from typing import Any, Coroutine, TypeVar

from harness.interruptible import wait_future

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's request loop, started on first use in a daemon thread."""
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            thread = threading.Thread(target=loop.run_forever, name="llm-harness-loop", daemon=True)
            thread.start()
            _loop = loop
            atexit.register(_stop, loop)
        return _loop


def _stop(loop: asyncio.AbstractEventLoop) -> None:
    if loop.is_running():
        loop.call_soon_threadsafe(loop.stop)


def submit(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Schedule a coroutine on the request loop from any thread."""
    return asyncio.run_coroutine_threadsafe(coro, background_loop())


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run a coroutine on the request loop and wait for it (never from inside that loop)."""
    return wait_future(submit(coro), timeout)


async def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Await a coroutine on the request loop from another event loop (e.g. a pytest-asyncio test)."""
    loop = background_loop()
    if asyncio.get_running_loop() is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
