"""Rows with an expiry time, soonest first, and the sweep that expires them.

Every committed write with an expiry is queued here. A sweep takes the rows
whose expiry plus the record delay has passed (Keyspaces writes its TTL
record some time after the row expires), expires them in storage and, for
a table with CDC on, hands the sink one `RowChange` with origin "TTL".
Rows overwritten, deleted or dropped since they were queued are skipped.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Mapping

from keyspaces_local.cdc import ChangeSink, RowChange
from keyspaces_local.storage import TableData

# (expiry in seconds, tie-breaker, table, partition key, clustering key or None for statics)
_Entry = tuple[int, int, TableData, tuple[bytes, ...], tuple[bytes, ...] | None]


class ExpiryQueue:
    """The rows that will expire, ordered by expiry time."""

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._seq = itertools.count()

    def push(
        self, exp: int, td: TableData, pk: tuple[bytes, ...], ck: tuple[bytes, ...] | None
    ) -> None:
        heapq.heappush(self._heap, (exp, next(self._seq), td, pk, ck))

    def sweep(
        self,
        tables: Mapping[tuple[str, str], TableData],
        sink: ChangeSink,
        now_us: int,
        delay_s: float,
    ) -> int:
        """Expire the rows due `delay_s` before `now_us`; returns the TTL records emitted.

        `tables` is the live tables by (keyspace, name): a row of a table that
        is no longer there was dropped with it.
        """
        now_s = now_us // 1_000_000
        cutoff = math.floor(now_us / 1_000_000 - delay_s)
        emitted = 0
        while self._heap and self._heap[0][0] <= cutoff:
            _, _, td, pk, ck = heapq.heappop(self._heap)
            if tables.get((td.schema.keyspace, td.schema.name)) is not td:
                continue  # the table was dropped
            part = td.partition(pk)
            row = td.row(part, ck) if part is not None else None
            if part is None or row is None:
                continue
            due = td.due_expiry(row, cutoff)
            if due is None:
                continue  # already reported, or overwritten since
            old = td.image(part, row, due - 1)
            td.expire(row, cutoff)
            if not td.schema.options.cdc_enabled or old is None:
                continue
            new = td.image(part, row, now_s)
            expired = None
            if ck is None:  # statics: the columns that expired are what the change touched
                expired = frozenset(old.static_cells) - frozenset(new.static_cells if new else ())
            sink.record(
                RowChange(
                    table=td.schema,
                    token=part.token,
                    partition_key=part.pk,
                    clustering_key=ck,
                    old_image=old,
                    new_image=new,
                    origin="TTL",
                    committed_at_us=now_us,
                    touched=expired,
                )
            )
            emitted += 1
        return emitted
