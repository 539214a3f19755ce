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
class ScanRead:
    """A change read by the CQL snapshot scan."""

    token_start: int  # exclusive
    token_end: int  # inclusive
    read_at_ms: int  # service clock when the range read began
    # Whether the change states its partition's static values (a scan reads them with
    # every row). False for verify's repair of a row whose partition document is right:
    # restating them at a new version would rewrite every row of the partition.
    statics: bool = True


@dataclass(frozen=True, slots=True)
class StreamRead:
    """A change read from a CDC stream; sequence numbers order one shard only."""

    stream_arn: str
    shard_id: str
    sequence_number: str
    created_at_ms: int
    origin: str = "USER"  # USER | REPLICATION | TTL


Provenance = ScanRead | StreamRead


@dataclass(frozen=True, slots=True)
class Change:
    """One row-level change, the same whichever source produced it.

    `key` holds the primary-key values in schema order (partition-key columns,
    then clustering columns) as the driver's native Python types. `image` maps
    column name to value (driver-native types) for an upsert and is None for
    a delete. `static_only` marks a change to a partition's static columns
    alone: its key is the partition key and its image the static columns.

    Expiry: `expires_at_ms` is when the whole row stops being readable (its
    last cell's TTL); `value_expiry` maps a column to when its value stops
    being readable, for the values that expire before the row does (a column
    TTL on a row that lives on, a static value's TTL).

    `static_columns` says which static columns the change states: an image
    value for those it has, deleted (null) for those it lacks; a static column
    it does not name keeps the value it had. None: every static column for a
    static-only change and a snapshot row (which read the partition's statics
    whole), the ones in the image for a stream row record.
    """

    op: Op
    key: tuple[Any, ...]
    image: Mapping[str, Any] | None
    version: int
    provenance: Provenance
    expires_at_ms: int | None = None  # when the row stops being readable (TTL)
    static_only: bool = False
    value_expiry: Mapping[str, int] | None = None  # column -> epoch ms, before the row's
    static_columns: frozenset[str] | None = None

    def __init__(
        self,
        op: Op,
        key: tuple[Any, ...],
        image: Mapping[str, Any] | None,
        version: int,
        provenance: Provenance,
        expires_at_ms: int | None = None,
        static_only: bool = False,
        value_expiry: Mapping[str, int] | None = None,
        static_columns: frozenset[str] | None = None,
    ) -> None:
        # Written out rather than generated: a frozen dataclass's __init__ goes
        # through object.__setattr__ per field, and a change is built per record.
        # The slots' own setters do the same stores at half the cost.
        if image is None:
            if op is Op.UPSERT:
                raise ValueError("an upsert carries an image")
        elif op is Op.DELETE:
            raise ValueError("a delete carries no image")
        if version <= 0:
            raise ValueError(f"version must be positive, got {version}")
        _set_op(self, op)
        _set_key(self, key)
        _set_image(self, image)
        _set_version(self, version)
        _set_provenance(self, provenance)
        _set_expires_at_ms(self, expires_at_ms)
        _set_static_only(self, static_only)
        _set_value_expiry(self, value_expiry or None)
        _set_static_columns(self, static_columns)


_change_slots: Mapping[str, Any] = vars(Change)
_set_op = _change_slots["op"].__set__
_set_key = _change_slots["key"].__set__
_set_image = _change_slots["image"].__set__
_set_version = _change_slots["version"].__set__
_set_provenance = _change_slots["provenance"].__set__
_set_expires_at_ms = _change_slots["expires_at_ms"].__set__
_set_static_only = _change_slots["static_only"].__set__
_set_value_expiry = _change_slots["value_expiry"].__set__
_set_static_columns = _change_slots["static_columns"].__set__
