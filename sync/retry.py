"""The one retry policy: jittered exponential backoff within a time budget, stoppable.

Every retry in ks2os goes through a `RetryPolicy` (OpenSearch documents and
state in `sync.bulk`, the Keyspaces Streams API in `sync.sources.streams`),
built on the `backoff` package. Two forms:

- `until_done(attempt, items)`: call `attempt` with the items, then with
  what it left, until it leaves nothing (the bulk transport re-sends only
  the items that failed); returns what is left when the policy gives up.
- `call(request, retry_on=...)`: call `request` until it does not raise one
  of `retry_on`; re-raises the last one when the policy gives up.

The policy gives up when its budget (`budget_s`) is spent or, at once, when
its `stop` event is set: every wait is a wait on that event, so a job asked
to stop (SIGTERM) never sits out a backoff. `backoff` sleeps what its wait
generator yields; ours waits on the event itself and yields 0, and ends the
retries (StopIteration) when the event is set.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import backoff

from sync.config import WriterSettings

T = TypeVar("T")

# Told, before each wait, how long it will be and what failed (the value or the exception).
OnWait = Callable[[float, Any], None]


def _no_wait_callback(seconds: float, last: Any) -> None:
    pass


@dataclass(frozen=True)
class RetryPolicy:
    """Waits of `initial_s`, doubling up to `longest_s`, fully jittered, for `budget_s` in all."""

    initial_s: float = 0.1
    longest_s: float = 10.0
    budget_s: float = 300.0
    stop: threading.Event | None = field(default=None, compare=False)

    @classmethod
    def for_opensearch(
        cls, settings: WriterSettings, stop: threading.Event | None = None
    ) -> RetryPolicy:
        """The policy of every OpenSearch request, from the `writer.*` settings."""
        return cls(settings.initial_backoff, settings.max_backoff, settings.max_retry_seconds, stop)

    def stopping_on(self, stop: threading.Event | None) -> RetryPolicy:
        """The same policy, giving up as soon as `stop` is set."""
        return replace(self, stop=stop)

    @property
    def stopped(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def why_given_up(self) -> str:
        """Words for a message once the policy gave up: asked to stop, or out of time."""
        if self.stopped:
            return "gave up retrying: the job is stopping"
        return f"still failing after {self.budget_s:g} s of retries"

    def until_done(
        self,
        attempt: Callable[[Sequence[T]], Sequence[T]],
        items: Sequence[T],
        on_wait: OnWait = _no_wait_callback,
    ) -> Sequence[T]:
        """Call `attempt(items)`, then `attempt` of what it left, until it leaves nothing.

        Returns what is left when the policy gives up (empty when all went).
        """
        left = [items]

        def again() -> Sequence[T]:
            left[0] = attempt(left[0])
            return left[0]

        retrying = backoff.on_predicate(
            self._waits(on_wait),
            predicate=bool,  # something is still left to do
            max_time=self.budget_s,
            jitter=None,  # the wait generator jitters, and waits, itself
            logger=None,
        )(again)
        rest: Sequence[T] = retrying()
        return rest

    def call(
        self,
        request: Callable[[], T],
        retry_on: type[Exception] | tuple[type[Exception], ...],
        on_wait: OnWait = _no_wait_callback,
        give_up: Callable[[Exception], bool] | None = None,
    ) -> T:
        """Call `request` until it does not raise `retry_on` (or `give_up` says so)."""
        retrying = backoff.on_exception(
            self._waits(on_wait),
            retry_on,
            giveup=give_up or _never,
            max_time=self.budget_s,
            jitter=None,
            logger=None,
        )(request)
        result: T = retrying()
        return result

    def _waits(self, on_wait: OnWait) -> Callable[[], Generator[float, Any, None]]:
        """A wait generator for `backoff`, started afresh by each retried call."""
        return functools.partial(_stoppable_waits, self, on_wait)


def _stoppable_waits(policy: RetryPolicy, on_wait: OnWait) -> Generator[float, Any, None]:
    """Wait on the stop event for each jittered delay; end (give up) once it is set.

    `backoff` primes the generator with `send(None)`, then sends the failed
    attempt's value or exception before every wait.
    """
    stop = policy.stop or threading.Event()
    started = time.monotonic()
    delay = policy.initial_s
    last = yield 0.0  # primed
    while True:
        left = policy.budget_s - (time.monotonic() - started)
        seconds = min(backoff.full_jitter(delay), max(left, 0.0))
        on_wait(seconds, last)
        if stop.wait(seconds):
            return
        delay = min(delay * 2, policy.longest_s)
        last = yield 0.0  # `backoff` sleeps this long: we have waited already


def _never(exc: Exception) -> bool:
    return False
