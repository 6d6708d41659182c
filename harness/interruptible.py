"""Waits that Ctrl-C can interrupt.

A signal sent to the process may be delivered to any of its threads. When it lands on another thread
(the request loop's, a writer's), Python runs its handler in the main thread only once that thread
returns to Python code: a main thread blocked without a timeout (``Event.wait()``, ``Future.result()``,
``Thread.join()``) would not see Ctrl-C until what it waits for happens, which may be minutes away (a
model's first reply on a loaded machine). These waits wake every ``WAKE_S`` seconds instead.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import TypeVar

T = TypeVar("T")

WAKE_S = 0.2


def wait_event(event: threading.Event) -> None:
    """``event.wait()``, interruptible."""
    while not event.wait(WAKE_S):
        pass


def wait_future(future: concurrent.futures.Future[T], timeout: float | None = None) -> T:
    """``future.result(timeout)``, interruptible."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not future.done():
        left = WAKE_S if deadline is None else min(WAKE_S, deadline - time.monotonic())
        if left <= 0:
            raise TimeoutError
        concurrent.futures.wait([future], timeout=left)
    return future.result()


def join_thread(thread: threading.Thread) -> None:
    """``thread.join()``, interruptible."""
    while thread.is_alive():
        thread.join(WAKE_S)
