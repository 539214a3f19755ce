"""The one vocabulary every source and job speaks: a `Change`.

A change is an upsert or a delete of one row (or, for a static-only change,
of one partition's static columns), with its primary key, its row image, its
version and where it came from. Sources produce changes, the document
builder and the writer consume them. This module imports nothing of ours.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class Op(enum.Enum):
    UPSERT = "upsert"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class ScanPosition:
    """A change read by the CQL snapshot scan."""

    token_start: int  # exclusive
    token_end: int  # inclusive
    read_at_ms: int  # service clock when the range read began


@dataclass(frozen=True, slots=True)
class StreamPosition:
    """A change read from a CDC stream; sequence numbers order one shard only."""

    stream_arn: str
    shard_id: str
    sequence_number: str
    created_at_ms: int
    origin: str = "USER"  # USER | REPLICATION | TTL


Provenance = ScanPosition | StreamPosition


@dataclass(frozen=True, slots=True)
class Change:
    """One row-level change, the same whichever source produced it.

    `key` holds the primary-key values in schema order (partition-key columns,
    then clustering columns) as the driver's native Python types. `image` maps
    column name to value (driver-native types) for an upsert and is None for
    a delete. `static_only` marks a change to a partition's static columns
    alone: its key is the partition key and its image the static columns.
    """

    op: Op
    key: tuple[Any, ...]
    image: Mapping[str, Any] | None
    version: int
    source: Provenance
    expires_at_ms: int | None = None  # when the row stops being readable (TTL)
    static_only: bool = False

    def __post_init__(self) -> None:
        if self.op is Op.DELETE and self.image is not None:
            raise ValueError("a delete carries no image")
        if self.op is Op.UPSERT and self.image is None:
            raise ValueError("an upsert carries an image")
        if self.version <= 0:
            raise ValueError(f"version must be positive, got {self.version}")
