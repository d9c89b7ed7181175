"""cloudtrack.retry: attempts and a deadline bound every operation; each retry logs one line;
the error raised once retries run out names the operation, the URI and the cause, and ends
with the caller's advice.

A scripted clock stands in for time (no service can be made to take exactly this long); the
waits against real services are in tests/blobs/test_waits.py.
"""

from __future__ import annotations

import logging

import pytest

from cloudtrack.errors import BlobNotFound, TransientError
from cloudtrack.retry import RetryPolicy, call_with_retry

WHAT = "PUT s3://bkt/p/runs/a.json"
ADVICE = "Run `cloudtrack doctor s3://bkt/p` to see why."


class Clock:
    """Time that passes only when an attempt says it took some, or when the retry sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def failing(clock: Clock, seconds: float, *, retry_after: float | None = None,
            calls: list[int] | None = None) -> object:
    """An attempt that takes ``seconds`` and fails transiently (its cause an SDK error)."""

    def attempt(n: int) -> None:
        if calls is not None:
            calls.append(n)
        clock.now += seconds
        try:
            raise OSError("Read timed out. (read timeout=10)")
        except OSError as sdk:
            raise TransientError(f"{WHAT} failed: the connection to http://e failed (Read "
                                 "timed out); cloudtrack retries this", "s3://bkt/p/runs/a.json",
                                 retry_after=retry_after,
                                 cause="the connection to http://e failed (Read timed out)",
                                 brief="read timeout: no answer in time") from sdk

    return attempt


def run(policy: RetryPolicy, attempt: object, clock: Clock) -> object:
    return call_with_retry(attempt, what=WHAT, policy=policy,  # type: ignore[arg-type]
                           sleep=clock.sleep, clock=clock, advice=ADVICE)


def test_an_endpoint_that_never_answers_costs_the_deadline_not_attempts_times_timeouts(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    calls: list[int] = []
    policy = RetryPolicy(attempts=10, base_delay=0.1, max_delay=0.1, deadline=30.0,
                         attempt_timeout=15.0)
    caplog.set_level(logging.WARNING)
    with pytest.raises(TransientError) as e:
        run(policy, failing(clock, 10.0, calls=calls), clock)
    # 10 s hung, retried (10 + wait + 15 fits in 30); 10 more, and a third could not end in
    # time: two attempts, not ten, and never past the deadline.
    assert calls == [0, 1]
    assert clock.now <= 30.0
    message = str(e.value)
    assert message.startswith(f"{WHAT} failed after 2 attempts in ")
    assert "(another attempt could end past the 30s retry deadline)" in message
    assert "the connection to http://e failed (Read timed out)" in message
    assert "cloudtrack retries this" not in message, "no promise of retries once they ended"
    assert message.endswith(f"(Read timed out). {ADVICE}")
    assert isinstance(e.value.__cause__, OSError), "the SDK's error stays the cause"
    assert e.value.attempts == 2
    records = [r for r in caplog.records if r.name == "cloudtrack.retry"]
    assert len(records) == 1, "one line per retry"
    (record,) = records
    assert record.levelno == logging.WARNING and record.exc_info is None
    line = record.getMessage()
    assert "\n" not in line
    assert line.startswith(f"{WHAT}: attempt 1 of 10 failed (read timeout: no answer in time);"
                           " retrying in 0.")


def test_a_transfer_that_made_progress_counts_only_its_last_timeout() -> None:
    clock = Clock()
    calls: list[int] = []
    policy = RetryPolicy(attempts=3, base_delay=0.0, max_delay=0.0, deadline=30.0,
                         attempt_timeout=15.0)

    def long_upload(n: int) -> str:
        calls.append(n)
        if n == 0:
            failing(clock, 300.0)(n)  # type: ignore[operator]
        return "v2"

    assert run(policy, long_upload, clock) == "v2"
    assert calls == [0, 1], "five minutes of progress did not use up the deadline"


def test_quick_failures_use_every_attempt() -> None:
    clock = Clock()
    calls: list[int] = []
    policy = RetryPolicy(attempts=4, base_delay=0.1, max_delay=0.1, deadline=30.0,
                         attempt_timeout=15.0)
    with pytest.raises(TransientError) as e:
        run(policy, failing(clock, 0.01, calls=calls), clock)
    assert calls == [0, 1, 2, 3]
    assert str(e.value).startswith(f"{WHAT} failed after 4 attempts in 0.")
    assert "deadline" not in str(e.value)


def test_a_retry_after_past_the_deadline_ends_at_once() -> None:
    clock = Clock()
    policy = RetryPolicy(attempts=5, deadline=30.0, attempt_timeout=15.0)
    with pytest.raises(TransientError) as e:
        run(policy, failing(clock, 0.01, retry_after=20.0), clock)
    assert clock.sleeps == []
    assert "(the service asked to wait 20s, past the 30s retry deadline)" in str(e.value)
    assert e.value.retry_after == 20.0


def test_without_a_deadline_attempts_alone_bound_it() -> None:
    clock = Clock()
    calls: list[int] = []
    with pytest.raises(TransientError):
        run(RetryPolicy(attempts=3, base_delay=0.0), failing(clock, 100.0, calls=calls), clock)
    assert calls == [0, 1, 2]


def test_other_errors_are_not_retried_nor_rewritten() -> None:
    clock = Clock()
    error = BlobNotFound("GET s3://bkt/k failed: no such object", "s3://bkt/k")

    def missing(n: int) -> None:
        raise error

    with pytest.raises(BlobNotFound) as e:
        run(RetryPolicy(deadline=30.0), missing, clock)
    assert e.value is error
