"""The indexes a job's writers write every change to: changed between writes, never during one.

Normally one, the index behind the alias. While a rebuild lasts (`ks2os
reindex`, `sync.state.Rebuild` in phase `building` or `swapped`), two: the
old index and the new one, so a change reaches both and versions decide in
each (docs/versions.md, "Rebuilds"). The follower sets them from the rebuild
record (`set`); every `BulkWriter` of a job takes them when a write begins
(`writing`), and that write goes whole to the indexes current then.

`writes_to` is what the follower's heartbeat names: the current indexes and
any index a write still under way goes to. So

- an index appears there only once every write begun from then on goes to
  it: a change read before was either written to it too, or is in a write
  begun before, i.e. read before the heartbeat and so before a rebuild that
  waited for that heartbeat began its snapshot (which then holds it);
- an index disappears only once no write of this process goes to it any
  more, so a rebuild may delete an index once no live follower names it.

`refresh`, when set, says where to write now (the follower: the rebuild
record, then the alias). A writer that finds one of several indexes missing
calls `recheck`, which asks `refresh` and tells whether the index is still
wanted: a rebuild aborted (its new index deleted) or done (the old one
deleted after the swap) is then simply no longer written.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager


class WriteTargets:
    """Where writes go now; safe to share between a job's threads. See the module docstring."""

    def __init__(
        self, indexes: Sequence[str], refresh: Callable[[], Sequence[str]] | None = None
    ) -> None:
        self._indexes = _checked(indexes)
        self.refresh = refresh
        self._lock = threading.Lock()
        self._in_use: collections.Counter[str] = collections.Counter()

    @property
    def indexes(self) -> tuple[str, ...]:
        """The indexes a write begun now goes to, the alias's (or the old one) first."""
        with self._lock:
            return self._indexes

    def set(self, indexes: Sequence[str]) -> bool:
        """Write `indexes` from the next write on; True when that changed anything."""
        new = _checked(indexes)
        with self._lock:
            changed = new != self._indexes
            self._indexes = new
        return changed

    @contextmanager
    def writing(self) -> Iterator[tuple[str, ...]]:
        """The indexes for one write, counted as in use until the block ends."""
        with self._lock:
            indexes = self._indexes
            self._in_use.update(indexes)
        try:
            yield indexes
        finally:
            with self._lock:
                self._in_use.subtract(indexes)
                self._in_use += collections.Counter()  # drop the zeros

    def writes_to(self) -> frozenset[str]:
        """Every index this process may still write: the current ones and those in use."""
        with self._lock:
            return frozenset(self._indexes) | frozenset(self._in_use)

    def recheck(self, missing: str) -> bool:
        """`missing` was not found: True when it is no longer wanted (and is no longer written)."""
        if self.refresh is None:
            return False
        self.set(self.refresh())
        return missing not in self.indexes


def _checked(indexes: Sequence[str]) -> tuple[str, ...]:
    ordered = tuple(dict.fromkeys(indexes))
    if not ordered:
        raise ValueError("a job writes at least one index")
    return ordered
