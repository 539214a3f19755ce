"""Decode one CQL row read by the snapshot scan into an UPSERT `Change`.

The driver's values go into the image unchanged, so the change equals the one
`decode_record` makes from a CDC record of the same row state. Null columns
are left out of the image, as a CDC image leaves them out.

Expiry: a scan that wants it selects `TTL("col") AS "<ttl_alias(col)>"` for
scalar (or frozen) regular columns and passes those column names as
`ttl_columns`. A row stops being readable when its last cell expires, so it
expires at `read_at_ms + max(ttl) * 1000` when every regular column it has set
carries a TTL; one set column without a TTL (or one whose TTL the scan could
not select, such as a non-frozen collection) keeps it alive -> no expiry.

A partition that has static values but no rows comes back from a scan as one
row whose clustering columns are all null (as CQL returns it). That row is a
static-only change (key = the partition key, image = the partition key and
the statics), the same as a stream's static-only record of that state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sync.errors import DecodeError
from sync.model import Change, Op, ScanPosition
from sync.schema import TableKey

_TTL_PREFIX = "ks2os_ttl_"


def ttl_alias(column: str) -> str:
    """The result column name the scan gives `TTL(column)`: `ks2os_ttl_<column>`."""
    return _TTL_PREFIX + column


def decode_row(
    row: Mapping[str, Any] | Any,
    table: TableKey,
    position: ScanPosition,
    version: int,
    ttl_columns: Sequence[str] = (),
) -> Change:
    """The UPSERT a scanned row stands for; `row` is a dict or a driver namedtuple."""
    fields = _as_mapping(row)
    ttl_names = {ttl_alias(column) for column in ttl_columns}
    image = {
        name: value for name, value in fields.items() if value is not None and name not in ttl_names
    }
    if _is_static_only(image, table):
        key = tuple(image[name] for name in table.partition_key)
        return Change(Op.UPSERT, key, image, version, position, static_only=True)
    missing = [name for name in table.key_columns if image.get(name) is None]
    if missing:
        raise DecodeError(
            f"{table.qualified_name}: scanned row lacks key column(s) {', '.join(missing)}",
            hint="the scan must select every primary-key column",
        )
    key = tuple(image[name] for name in table.key_columns)
    return Change(
        Op.UPSERT,
        key,
        image,
        version,
        position,
        expires_at_ms=_expiry_ms(fields, image, table, position, ttl_columns),
    )


def _is_static_only(image: Mapping[str, Any], table: TableKey) -> bool:
    """A partition's static row: statics in the table, a full partition key, no clustering."""
    return (
        bool(table.static)
        and bool(table.clustering)
        and all(image.get(name) is not None for name in table.partition_key)
        and all(name not in image for name in table.clustering)
    )


def _as_mapping(row: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    if isinstance(row, Mapping):
        return row
    as_dict = getattr(row, "_asdict", None)
    if as_dict is None:
        raise TypeError(f"a row must be a mapping or a namedtuple, got {type(row).__name__}")
    result: Mapping[str, Any] = as_dict()
    return result


def _expiry_ms(
    fields: Mapping[str, Any],
    image: Mapping[str, Any],
    table: TableKey,
    position: ScanPosition,
    ttl_columns: Sequence[str],
) -> int | None:
    if not ttl_columns:
        return None
    regular = [name for name in image if not table.is_key(name) and name not in table.static]
    if not regular:
        return None
    ttls: list[int] = []
    for name in regular:
        ttl = fields.get(ttl_alias(name)) if name in ttl_columns else None
        if ttl is None:
            return None
        ttls.append(int(ttl))
    return position.read_at_ms + max(ttls) * 1000
