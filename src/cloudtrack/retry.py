"""Bounded retries with exponential backoff and full jitter, for operations safe to repeat."""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

from cloudtrack.errors import TransientError

log = logging.getLogger("cloudtrack.retry")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a :class:`TransientError`."""

    attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay * 4)
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(0, cap)


DEFAULT_POLICY = RetryPolicy()


def retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds a ``Retry-After`` header asks for (a number or an HTTP date), if any."""
    if not headers:
        return None
    raw = headers.get("Retry-After") or headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def call_with_retry(
    fn: Callable[[int], T],
    *,
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn(attempt)`` until it returns or raises something other than TransientError.

    ``attempt`` starts at 0, so a conditional write can tell a first try from a retry (a retry
    that meets "already exists" may be looking at its own earlier, unacknowledged write).
    """
    attempt = 0
    while True:
        try:
            return fn(attempt)
        except TransientError as e:
            attempt += 1
            if attempt >= policy.attempts:
                raise
            delay = policy.delay(attempt, e.retry_after)
            log.info("%s failed transiently (%s); retry %d in %.2fs", what, e, attempt, delay)
            sleep(delay)
