"""The one retry policy for writes to OpenSearch.

Jittered exponential backoff (the `backoff` package) while some items are
still pending, within `WriterSettings.max_retry_seconds`. The bulk writer and
the static-column merge writer both retry through it, so pushing back on
OpenSearch behaves the same wherever a write comes from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import backoff

from sync.config import WriterSettings

T = TypeVar("T")


def retry_pending(
    attempt: Callable[[], list[T]],
    settings: WriterSettings,
    on_backoff: Callable[[Any], None],
) -> list[T]:
    """Call `attempt` until it returns nothing left to send; what is left when time runs out."""
    retrying = backoff.on_predicate(
        backoff.expo,
        predicate=bool,  # keep going while some items still need sending
        max_time=settings.max_retry_seconds,
        jitter=backoff.full_jitter,
        on_backoff=on_backoff,
        logger=None,
        factor=settings.initial_backoff,
        max_value=settings.max_backoff,
    )(attempt)
    remaining: list[T] = retrying()
    return remaining
