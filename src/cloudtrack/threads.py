"""Work on a thread of its own, for work that waits on a pool's tasks (a task of that pool
must not: with every worker waiting, nothing it waits for would run)."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def on_own_thread(work: Callable[[], T], name: str) -> concurrent.futures.Future[T]:
    """``work()`` on a daemon thread named ``name``, as a future that holds its result or
    its exception (raised where the future is waited for)."""
    out: concurrent.futures.Future[T] = concurrent.futures.Future()

    def run() -> None:
        try:
            out.set_result(work())
        except BaseException as e:  # raised where the future is waited for
            out.set_exception(e)

    threading.Thread(target=run, name=name, daemon=True).start()
    return out
