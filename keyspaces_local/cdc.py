"""The seam between the storage engine and the CDC streams.

The engine describes every committed row-level mutation as a `RowChange` and
hands it to a `ChangeSink`; the streams side turns changes into Keyspaces
change records. Neither side knows how the other works.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from keyspaces_local.schema import TableSchema


@dataclass(frozen=True)
class Cell:
    """One live cell as stored."""

    value: bytes  # serialised with the column's cql_type, protocol v4
    write_time_us: int  # the cell's write timestamp (server-assigned or client-side)
    expires_at_s: int | None = None  # epoch seconds when the cell's TTL runs out


@dataclass(frozen=True)
class RowImage:
    """A whole-row state: every live column, not a diff.

    `cells` holds the primary-key columns and the regular columns; `static_cells`
    holds the partition's static columns. An image of a static-only change has
    no clustering columns in `cells`.
    """

    cells: Mapping[str, Cell]
    static_cells: Mapping[str, Cell]
    # Row-level expiry (epoch seconds) when every live cell of the row expires.
    expires_at_s: int | None = None


@dataclass(frozen=True)
class RowChange:
    """One committed row-level mutation, in commit order for its primary key."""

    table: TableSchema
    token: int  # token of the partition key under the account's partitioner
    partition_key: tuple[bytes, ...]  # serialised partition-key values, in key order
    clustering_key: tuple[bytes, ...] | None  # None for a static-only change
    old_image: RowImage | None  # None when the row did not exist before
    new_image: RowImage | None  # None when the row no longer exists after
    origin: str = "USER"  # "USER" or "TTL"
    committed_at_us: int = 0  # emulator clock at commit
    # A static-only change: the static columns the write set, deleted or saw expire
    # (None: all of them, as for a partition delete). Records may show only these.
    touched: frozenset[str] | None = None


class ChangeSink(Protocol):
    """What the storage engine calls; implemented by the streams store."""

    def enable_stream(self, table: TableSchema) -> str:
        """A new stream for a table whose CDC was just enabled; returns its ARN."""
        ...

    def disable_stream(self, keyspace: str, table: str) -> None:
        """CDC was disabled (or the table dropped): close the latest stream."""
        ...

    def record(self, change: RowChange) -> None:
        """Called once per committed row-level change of a CDC table, in commit order."""
        ...
