"""The one retry policy (sync/retry.py): pure unit tests, no server.

What callers rely on: only what is left is tried again, the policy gives up
when its budget is spent (returning or raising what is left), and a set stop
event ends a wait at once, however long the wait was meant to be.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import pytest

from sync.config import WriterSettings
from sync.retry import RetryPolicy

pytestmark = pytest.mark.unit

QUICK = RetryPolicy(initial_s=0.001, longest_s=0.002, budget_s=30.0)


def test_until_done_tries_again_only_what_is_left() -> None:
    seen: list[list[str]] = []

    def attempt(items: Sequence[str]) -> list[str]:
        seen.append(list(items))
        return list(items[1:])  # one item goes through per attempt

    waits: list[float] = []
    left = QUICK.until_done(attempt, ["a", "b", "c"], lambda s, last: waits.append(s))
    assert left == []
    assert seen == [["a", "b", "c"], ["b", "c"], ["c"]]
    assert len(waits) == 2 and all(0 <= wait <= 0.002 for wait in waits)


def test_until_done_returns_what_is_left_when_the_budget_is_spent() -> None:
    policy = RetryPolicy(initial_s=0.001, longest_s=0.002, budget_s=0.05)
    attempts: list[int] = []

    def never(items: Sequence[str]) -> Sequence[str]:
        attempts.append(1)
        return items

    assert policy.until_done(never, ["a"]) == ["a"]
    assert len(attempts) >= 2
    assert policy.why_given_up() == "still failing after 0.05 s of retries"


def test_call_retries_only_what_it_is_told_to() -> None:
    failures = [ConnectionError("down"), ConnectionError("down")]

    def request() -> str:
        if failures:
            raise failures.pop(0)
        return "ok"

    assert QUICK.call(request, ConnectionError) == "ok"

    def refused() -> str:
        raise ValueError("bad input")

    with pytest.raises(ValueError):
        QUICK.call(refused, ConnectionError)
    calls: list[int] = []

    def permanent() -> str:
        calls.append(1)
        raise ConnectionError("gone for good")

    with pytest.raises(ConnectionError):
        QUICK.call(permanent, ConnectionError, give_up=lambda exc: "good" in str(exc))
    assert calls == [1]


def test_a_stop_ends_a_long_wait_at_once() -> None:
    # Waits of an hour: only the stop event can end them within the test's deadline.
    stop = threading.Event()
    policy = RetryPolicy(initial_s=3600, longest_s=3600, budget_s=7200, stop=stop)
    waiting = threading.Event()
    outcome: list[Any] = []

    def run() -> None:
        outcome.append(
            policy.until_done(lambda items: items, ["x"], lambda seconds, last: waiting.set())
        )

    runner = threading.Thread(target=run)
    runner.start()
    assert waiting.wait(timeout=60)
    stop.set()
    runner.join(timeout=60)
    assert not runner.is_alive()
    assert outcome == [["x"]]
    assert policy.why_given_up() == "gave up retrying: the job is stopping"


def test_a_stopped_policy_tries_once_and_does_not_wait() -> None:
    stop = threading.Event()
    stop.set()
    policy = RetryPolicy(initial_s=3600, longest_s=3600, budget_s=7200, stop=stop)
    calls: list[int] = []

    def failing() -> str:
        calls.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        policy.call(failing, ConnectionError)
    assert calls == [1]


def test_the_opensearch_policy_comes_from_the_writer_settings() -> None:
    stop = threading.Event()
    settings = WriterSettings(initial_backoff=0.5, max_backoff=4.0, max_retry_seconds=60.0)
    policy = RetryPolicy.for_opensearch(settings, stop)
    assert (policy.initial_s, policy.longest_s, policy.budget_s) == (0.5, 4.0, 60.0)
    assert policy.stop is stop
    assert RetryPolicy().stopping_on(stop).stop is stop
