"""What a child process forked from one that used a store must not inherit: the parent's
pooled connections (two processes on one keep-alive connection read each other's answers),
thread pools (a fork copies no thread: a task sent to the parent's pool would never run), and
locks another thread held at the moment of the fork.

An object that holds such things registers with :func:`watch` and has an ``_after_fork()``
method, called in the child before anything else runs there (``os.register_at_fork``).
Spawned processes (``spawn``, ``forkserver`` workers importing afresh, ``subprocess``) start
clean and need none of it.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Protocol

log = logging.getLogger("cloudtrack")


class ForkAware(Protocol):
    def _after_fork(self) -> None: ...


_WATCHED: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def watch(obj: ForkAware) -> None:
    """Call ``obj._after_fork()`` in every child forked while ``obj`` is alive."""
    _WATCHED.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_WATCHED):
        try:
            obj._after_fork()
        except Exception as e:  # the child's first use then fails, and says why
            log.warning("cloudtrack: %r could not let go of what it shares with the parent "
                        "process after a fork: %r", obj, e)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
