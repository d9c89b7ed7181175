"""Bounded retries with exponential backoff and full jitter, for operations safe to repeat.

Two bounds: a number of attempts, and a deadline on the time one operation spends *waiting* —
on attempts that fail and between them.  A retry starts only while the longest it could wait
(its connect and read timeouts) still fits before the deadline, so an endpoint that accepts
connections and never answers costs at most the deadline, never attempts times timeouts.  A
failed attempt counts at most its timeouts, however long it ran: a large transfer that kept
making progress for minutes before its connection broke only *waited* for its last timeout,
and is retried.

Each retry logs one WARNING line (what, which URI, attempt n of m, the cause in a few words,
the wait) and never a traceback.  When retries run out, one :class:`TransientError` names the
operation, the URI and the cause, and ends with the sentence of advice the caller gives (the
blob layer's is the ``cloudtrack doctor`` command for the store); its ``__cause__`` stays the
SDK's error.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TypeVar

from cloudtrack.errors import TransientError, with_advice

log = logging.getLogger("cloudtrack.retry")

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry a :class:`TransientError`."""

    attempts: int = 5
    base_delay: float = 0.1
    max_delay: float = 5.0
    #: Seconds one operation may spend waiting before it gives up (None: only ``attempts``
    #: bounds it).
    deadline: float | None = None
    #: The longest one attempt waits for an answer that never comes: connect + read timeout.
    #: A retry starts only if this much still fits before the deadline.
    attempt_timeout: float = 0.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number ``attempt`` (1-based)."""
        if retry_after is not None:
            return min(retry_after, self.max_delay * 4)
        cap = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(0, cap)

    def waited(self, seconds: float) -> float:
        """How much of a failed attempt that took ``seconds`` counts as waiting."""
        return min(seconds, self.attempt_timeout) if self.attempt_timeout > 0 else seconds

    def stop(self, attempts: int, waited: float, delay: float,
             retry_after: float | None = None) -> str | None:
        """Why no further attempt is made after ``attempts`` that waited ``waited`` seconds and
        a wait of ``delay`` to come; None to go on."""
        if attempts >= self.attempts:
            return ""
        if self.deadline is None or waited + delay + self.attempt_timeout <= self.deadline:
            return None
        if retry_after is not None and waited + self.attempt_timeout <= self.deadline:
            return (f"the service asked to wait {retry_after:g}s, past the {self.deadline:g}s "
                    "retry deadline")
        return f"another attempt could end past the {self.deadline:g}s retry deadline"


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


def gave_up(error: TransientError, what: str, attempts: int, seconds: float, why: str,
            advice: str | None) -> TransientError:
    """The error an operation ends with once it stops retrying ``error``."""
    cause = error.cause
    if cause.startswith(f"{what} failed: "):
        cause = cause[len(what) + len(" failed: "):]
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    message = with_advice(f"{what} failed after {tries} in {seconds:.1f}s"
                          + (f" ({why})" if why else "") + f": {cause}", advice)
    final = TransientError(message, error.uri, retry_after=error.retry_after, cause=cause,
                           brief=error.brief)
    final.attempts = attempts
    return final


def call_with_retry(
    fn: Callable[[int], T],
    *,
    what: str,
    policy: RetryPolicy = DEFAULT_POLICY,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    advice: str | None = None,
) -> T:
    """Call ``fn(attempt)`` until it returns or raises something other than TransientError.

    ``attempt`` starts at 0, so a conditional write can tell a first try from a retry (a retry
    that meets "already exists" may be looking at its own earlier, unacknowledged write).
    ``what`` names the operation and its URI (``PUT s3://bucket/key``); ``advice`` ends the
    error raised once retries run out.
    """
    attempt = 0
    waited = 0.0
    started = clock()
    while True:
        begun = clock()
        try:
            return fn(attempt)
        except TransientError as e:
            waited += policy.waited(clock() - begun)
            attempt += 1
            delay = policy.delay(attempt, e.retry_after)
            why = policy.stop(attempt, waited, delay, e.retry_after)
            if why is not None:
                # The SDK's error stays the cause: what the service said is read from it.  The
                # errors it was raised while handling (the HTTP library's) are kept, not shown.
                sdk = e.__cause__ or e
                sdk.__suppress_context__ = True
                raise gave_up(e, what, attempt, clock() - started, why, advice) from sdk
            log.warning("%s: attempt %d of %d failed (%s); retrying in %.1fs", what, attempt,
                        policy.attempts, e.brief, delay)
            sleep(delay)
            waited += delay
