"""The snapshot scan: read a table over CQL as token ranges, page by page, as `Change`s.

The account's partitioner (`system.local.partitioner`) decides the token ring:
Murmur3Partitioner's bigint tokens (-2**63 .. 2**63-1), or RandomPartitioner's
and Keyspaces' DefaultPartitioner's varint tokens (0 .. 2**127, ring minimum -1).
The ring is split into ranges (start exclusive, end inclusive); each range is
read with one prepared statement restricted on `token(<partition key>)`, page
by page with the driver's paging state. Before each page the service clock is
read over CQL, and every row of the page gets
`snapshot_version(read_at, margin)`: lower than any stream record the read
could have missed, so the follower always wins over a snapshot row it did not
see (sync/version.py). Write times are never selected. Every read is at
LOCAL_QUORUM and selects TTL()s and decodes rows as `sync.sources.rows` says
(shared with the stream's row lookup); a partition holding only static values
comes out as a static-only change.

Memory is bounded: one page of rows (and the changes built from it) per
worker at a time. A scan can resume from the token of the last row of the
last page it wrote: rows of one partition may span pages, so it resumes *at*
that token, reading that partition again (harmless: same versions or lower).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from sync.errors import ConfigError
from sync.keyspaces import (
    KEYSPACES_DEFAULT_PARTITIONER,
    MURMUR3_PARTITIONER,
    RANDOM_PARTITIONER,
    TableInfo,
    cql_errors,
    qualified,
    quote,
    service_now_ms,
)
from sync.model import Change, ScanRead
from sync.sources.rows import READ_CONSISTENCY, decode_row, expiring_columns, select_list
from sync.version import snapshot_version

log = logging.getLogger(__name__)

MIN_TOKEN = -(2**63)  # the Murmur3 ring
MAX_TOKEN = 2**63 - 1


@dataclass(frozen=True, slots=True)
class Ring:
    """A partitioner's token ring: every partition's token t has minimum < t <= maximum."""

    minimum: int  # the exclusive start of the ring's first range
    maximum: int

    @property
    def width(self) -> int:
        return self.maximum - self.minimum


MURMUR3_RING = Ring(MIN_TOKEN, MAX_TOKEN)
# RandomPartitioner: |MD5 as a signed 128-bit integer|, 0 .. 2**127; its minimum token is -1.
RANDOM_RING = Ring(-1, 2**127)
RINGS = {
    MURMUR3_PARTITIONER: MURMUR3_RING,
    RANDOM_PARTITIONER: RANDOM_RING,
    KEYSPACES_DEFAULT_PARTITIONER: RANDOM_RING,  # the same token() results as Random
}
# Any range of any ring lies within these (a stored range does not say its ring).
_LOWEST = min(ring.minimum for ring in RINGS.values())
_HIGHEST = max(ring.maximum for ring in RINGS.values())


def ring_for(partitioner: str) -> Ring:
    """The token ring of the account's partitioner, or a ConfigError naming it."""
    ring = RINGS.get(partitioner)
    if ring is None:
        raise ConfigError(
            f"partitioner {partitioner} (system.local) has no known token ring; ks2os scans "
            f"{', '.join(RINGS)}: choose one with UPDATE system.local SET partitioner = "
            "'<name>' WHERE key = 'local'"
        )
    return ring


# Result columns we add after the table's own: the row's token, then TTL()s.
TOKEN_COLUMN = "ks2os_token"


@dataclass(frozen=True, slots=True)
class TokenRange:
    """Tokens t with start < t <= end; the first range of a ring also holds its minimum."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not _LOWEST <= self.start < self.end <= _HIGHEST:
            raise ValueError(f"not a token range: ({self.start}, {self.end}]")

    @property
    def width(self) -> int:
        return self.end - self.start

    def fraction_done(self, last_token: int | None) -> float:
        """How far a scan that reached `last_token` is through this range, 0..1."""
        if last_token is None:
            return 0.0
        done = min(max(last_token, self.start), self.end) - self.start
        return done / self.width

    def resume_from(self, last_token: int | None) -> TokenRange:
        """The part still to read when the scan reached `last_token` (read it again)."""
        if last_token is None or last_token <= self.start:
            return self
        if last_token - 1 <= self.start:
            return self
        return TokenRange(min(last_token - 1, self.end - 1), self.end)


def split_ring(count: int, ring: Ring = MURMUR3_RING) -> list[TokenRange]:
    """The whole ring as `count` contiguous ranges of (nearly) equal width."""
    if count < 1:
        raise ValueError("at least one range")
    bounds = [ring.minimum + ring.width * i // count for i in range(count)] + [ring.maximum]
    return [TokenRange(bounds[i], bounds[i + 1]) for i in range(count)]


def covers(ring: Ring, ranges: list[TokenRange]) -> bool:
    """Whether contiguous `ranges`, in order, are exactly the whole `ring`."""
    return bool(ranges) and (ranges[0].start, ranges[-1].end) == (ring.minimum, ring.maximum)


@dataclass(frozen=True, slots=True)
class ScanPage:
    """One page of a range scan, decoded; `last_token` is where a resumed scan starts."""

    changes: list[Change]
    last_token: int | None  # None: the page held no rows
    rows: int
    tokens: tuple[int, ...] = ()  # each change's partition token, as the server gave it


class SnapshotScanner:
    """Prepared statements and settings for scanning one table; safe to share by threads."""

    def __init__(
        self,
        session: Session,
        info: TableInfo,
        *,
        page_size: int = 1000,
        margin_ms: int = 5000,
    ) -> None:
        self._session = session
        self.info = info
        self.page_size = page_size
        self.margin_ms = margin_ms
        self.ring = ring_for(info.partitioner)
        # TTL() of static and regular columns (key columns have none): the row's expiry
        # and the expiry of each value that leaves before the row does.
        self.ttl_columns: tuple[str, ...] = expiring_columns(info)
        self.selected: tuple[str, ...] = info.columns
        partition = ", ".join(quote(c) for c in info.layout.partition_key)
        token_term = f"token({partition}) AS {quote(TOKEN_COLUMN)}"
        select = select_list(self.selected, self.ttl_columns, extra=[token_term])
        token = f"token({', '.join(quote(c) for c in info.layout.partition_key)})"
        table = qualified(info.keyspace, info.name)
        where = f"FROM {table} WHERE {token} {{op}} ? AND {token} <= ?"
        self._after: PreparedStatement = self._prepare(f"SELECT {select} {where.format(op='>')}")
        # Only a ring's first range must include the ring's minimum itself.
        self._from: PreparedStatement = self._prepare(f"SELECT {select} {where.format(op='>=')}")

    def _prepare(self, cql: str) -> PreparedStatement:
        with cql_errors(f"preparing the scan of {self.info.qualified_name}"):
            statement: PreparedStatement = self._session.prepare(cql)
        statement.consistency_level = READ_CONSISTENCY
        statement.fetch_size = self.page_size
        return statement

    def scan(self, token_range: TokenRange) -> Iterator[ScanPage]:
        """Read the range page by page; each page is decoded before the next is fetched."""
        statement = self._from if token_range.start == self.ring.minimum else self._after
        params = (token_range.start, token_range.end)
        paging_state: bytes | None = None
        while True:
            read_at_ms = service_now_ms(self._session)
            with cql_errors(f"scanning {self.info.qualified_name}"):
                result = self._session.execute(statement, params, paging_state=paging_state)
            rows = result.current_rows
            yield self._decode_page(rows, token_range, read_at_ms)
            paging_state = result.paging_state
            if paging_state is None:
                return

    def _decode_page(self, rows: list[Any], token_range: TokenRange, read_at_ms: int) -> ScanPage:
        position = ScanRead(token_range.start, token_range.end, read_at_ms)
        version = snapshot_version(read_at_ms, self.margin_ms)
        changes: list[Change] = []
        tokens: list[int] = []
        last: int | None = None
        for row in rows:
            fields = _as_dict(row)
            last = int(fields.pop(TOKEN_COLUMN))
            changes.append(
                decode_row(fields, self.info.layout, position, version, self.ttl_columns)
            )
            tokens.append(last)
        return ScanPage(changes, last, len(rows), tuple(tokens))


def _as_dict(row: Any) -> dict[str, Any]:
    if isinstance(row, dict):
        return row
    fields: dict[str, Any] = row._asdict()
    return fields
