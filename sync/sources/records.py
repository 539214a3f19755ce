"""Decode one Keyspaces CDC record (boto3's parsed `Record` dict) into a `Change`.

What a record means depends on the stream's view type:

- `NEW_AND_OLD_IMAGES` and `NEW_IMAGE`: a `newImage` is the whole row after
  the change -> UPSERT; no `newImage` -> the row is gone (row delete, or an
  `origin == "TTL"` expiry) -> DELETE.
- `OLD_IMAGE` and `KEYS_ONLY`: the record never says what the row became, so
  it cannot be decoded alone. `decode_record` raises `ImageUnavailable`
  (carrying the key); the job re-reads that row over CQL and writes what it
  finds (or a delete when the row is gone).

Key columns always come from `partitionKeys`/`clusteringKeys`, never from
`valueCells`. A record without `clusteringKeys` on a table that has
clustering columns is a static-only change (key = partition key, image = the
partition-key columns and the static cells). `origin == "REPLICATION"`
records decode like USER ones; `is_replicated` lets the job filter them.

**Which statics a static-only record states.** Whether the service's images
hold every static column of the partition or only the ones the write
touched is not established (KEYSPACES_FACTS §4), so the decoder assumes
neither: a static column is set when the new image has it, deleted when the
old image has it and the new one does not, and left as it was when neither
image names it (`Change.static_columns`). A record without an old image in a
`NEW_AND_OLD_IMAGES` stream had no statics before it. A `NEW_IMAGE` stream
never says what was deleted, so a static-only record there that does not
show every static column is re-read over CQL like a `KEYS_ONLY` record
(`ImageUnavailable`).

**Expiry.** `rowMetadata.expirationTime` is when the row stops being
readable (`expires_at_ms`); a cell's `metadata.expirationTime` is when its
value does, and the values that expire before the row go into
`Change.value_expiry` (a column TTL on a row that lives on; every static value
with a TTL, since statics do not keep a row alive).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sync.errors import DecodeError
from sync.model import Change, Op, StreamRead
from sync.schema import TableLayout
from sync.values import decode_cell, decode_cells

NEW_IMAGE_VIEWS = frozenset({"NEW_AND_OLD_IMAGES", "NEW_IMAGE"})
VIEW_TYPES = NEW_IMAGE_VIEWS | {"OLD_IMAGE", "KEYS_ONLY"}


class ImageUnavailable(DecodeError):
    """The record does not carry the row's new state; re-read the row over CQL.

    Raised for every record of an `OLD_IMAGE` or `KEYS_ONLY` stream. `key`
    holds the decoded primary key (partition key only for a static-only
    record), `static_only` says which.
    """

    def __init__(self, message: str, key: tuple[Any, ...], static_only: bool) -> None:
        super().__init__(
            message,
            hint="enable the stream with view_type NEW_IMAGE or NEW_AND_OLD_IMAGES, "
            "or re-read the row over CQL",
        )
        self.key = key
        self.static_only = static_only


def is_replicated(record: Mapping[str, Any]) -> bool:
    """True when the change reached this Region by multi-Region replication."""
    return record.get("origin") == "REPLICATION"


def decode_record(
    record: Mapping[str, Any],
    table: TableLayout,
    position: StreamRead,
    version: int,
    view_type: str = "NEW_AND_OLD_IMAGES",
    *,
    expiring: bool = True,
) -> Change:
    """The `Change` one CDC record stands for, at the version the caller computed.

    `expiring=False` (a table without TTL, whose cells never expire) skips
    looking for each cell's expiry.
    """
    if view_type not in VIEW_TYPES:
        raise ValueError(f"unknown stream view type {view_type!r}")
    key, static_only = record_key(record, table)
    if view_type not in NEW_IMAGE_VIEWS:
        raise ImageUnavailable(
            f"{table.qualified_name}: a {view_type} record does not carry the new row "
            f"state (key {key!r})",
            key,
            static_only,
        )
    new_image = record.get("newImage")
    if new_image is None:
        return Change(Op.DELETE, key, None, version, position, static_only=static_only)
    image = _image(new_image, table, static_only)
    stated = _stated_statics(record, new_image, table, view_type) if static_only else None
    if static_only and stated is None and not set(table.static) <= image.keys():
        raise ImageUnavailable(
            f"{table.qualified_name}: a {view_type} static-only record names only some "
            f"static columns and never the deleted ones (partition {key!r})",
            key,
            static_only,
        )
    # The key columns come from the key cells (as an update() of the image would).
    for name, value in zip(
        table.partition_key if static_only else table.key_columns, key, strict=True
    ):
        image[name] = value
    expires_at = _expiry_ms(new_image, table)
    return Change(
        Op.UPSERT,
        key,
        image,
        version,
        position,
        expires_at,
        static_only,
        value_expiry=_value_expiry(new_image, table, static_only, expires_at) if expiring else None,
        static_columns=stated,
    )


def record_key(record: Mapping[str, Any], table: TableLayout) -> tuple[tuple[Any, ...], bool]:
    """The record's key (the partition key alone for a static-only record) and whether it is."""
    static_only = bool(table.clustering) and not record.get("clusteringKeys")
    return _key(record, table, static_only), static_only


def _stated_statics(
    record: Mapping[str, Any], new_image: Mapping[str, Any], table: TableLayout, view_type: str
) -> frozenset[str] | None:
    """The static columns a static-only record states: the new image's and the old one's.

    None when the record cannot say which were deleted (a `NEW_IMAGE` stream).
    """
    named = set(new_image.get("staticCells") or ())
    if view_type == "NEW_AND_OLD_IMAGES":
        old_image = record.get("oldImage") or {}
        named |= set(old_image.get("staticCells") or ())
        return frozenset(named) & frozenset(table.static)
    return None


def _key(record: Mapping[str, Any], table: TableLayout, static_only: bool) -> tuple[Any, ...]:
    """The decoded primary key (partition key only for a static-only record), in schema order."""
    partition = record.get("partitionKeys") or {}
    values = []
    for name in table.partition_key:
        cell = partition.get(name)
        if cell is None:
            raise _missing_key(record, table, name)
        values.append(decode_cell(cell, name))
    if not static_only:
        clustering = record.get("clusteringKeys") or {}
        for name in table.clustering:
            cell = clustering.get(name)
            if cell is None:
                raise _missing_key(record, table, name)
            values.append(decode_cell(cell, name))
    return tuple(values)


def _missing_key(record: Mapping[str, Any], table: TableLayout, name: str) -> DecodeError:
    return DecodeError(
        f"{table.qualified_name}: record {record.get('sequenceNumber', '?')} lacks key "
        f"column {name}",
        hint="the table's key layout differs from the stream's; reload the schema",
    )


def _image(row: Mapping[str, Any], table: TableLayout, static_only: bool) -> dict[str, Any]:
    """Decoded cells; a cell without a value is a null and, like a null in a CQL row, left out."""
    image: dict[str, Any] = {}
    if not static_only:
        value_cells = row.get("valueCells")
        if value_cells:
            decode_cells(value_cells, table.key_set, image)
    static_cells = row.get("staticCells")
    if static_cells:
        decode_cells(static_cells, _NO_COLUMNS, image)
    return image


_NO_COLUMNS: frozenset[str] = frozenset()


def _expiry_ms(row: Mapping[str, Any], table: TableLayout) -> int | None:
    metadata = row.get("rowMetadata")
    if not metadata:
        return None
    return _epoch_seconds_ms(metadata.get("expirationTime"), "rowMetadata", table)


def _epoch_seconds_ms(text: Any, where: str, table: TableLayout) -> int | None:
    if text is None or text == "":
        return None
    try:
        # KEYSPACES_FACTS §2: unit undocumented; assumed epoch seconds.
        return int(str(text).strip()) * 1000
    except ValueError as exc:
        raise DecodeError(
            f"{table.qualified_name}: {where}.expirationTime {text!r} is not epoch seconds"
        ) from exc


def _value_expiry(
    row: Mapping[str, Any], table: TableLayout, static_only: bool, row_expiry: int | None
) -> dict[str, int] | None:
    """Column -> expiry (epoch ms) of the values that stop being readable before the row does.

    Every static value with a TTL is one (statics never keep a row alive, and
    a static-only change has no row). A collection cell's expiry is its
    earliest element's (how Keyspaces reports it on the cell), so it is left
    by the first element to expire.
    """
    expiry: dict[str, int] = {}
    if not static_only:
        _cell_expiries(row.get("valueCells"), table, table.key_set, row_expiry, expiry)
    _cell_expiries(row.get("staticCells"), table, _NO_COLUMNS, None, expiry)
    return expiry or None


def _cell_expiries(
    cells: Mapping[str, Any] | None,
    table: TableLayout,
    skip: frozenset[str],
    row_expiry: int | None,
    into: dict[str, int],
) -> None:
    if not cells:
        return
    # Runs for every cell of every record: the cells were decoded already (so each is a
    # mapping), and most carry no expiry, so that is asked first and cheaply.
    for name, cell in cells.items():
        metadata = cell.get("metadata")
        if not metadata:
            continue
        text = metadata.get("expirationTime")
        if text is None or name in skip or cell.get("value") is None:
            continue
        expires = _epoch_seconds_ms(text, name, table)
        if expires is not None and (row_expiry is None or expires < row_expiry):
            into[name] = expires
