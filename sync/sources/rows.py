"""Decode one CQL row read by the snapshot scan into an UPSERT `Change`.

The driver's values go into the image unchanged, so the change equals the one
`decode_record` makes from a CDC record of the same row state. Null columns
are left out of the image, as a CDC image leaves them out.

Expiry: a scan that wants it selects `TTL("col") AS "<ttl_alias(col)>"` for
scalar (or frozen) regular and static columns and passes those column names
as `ttl_columns`. TTL() counts whole seconds from the server's current second,
so a value read at `read_at_ms` expires at `expiry_ms(read_at_ms, ttl)` =
`floor(read_at_ms / 1000) * 1000 + ttl * 1000`, never later than it really
does (the clock was read before the row). A row stops being readable when
its last cell expires, so it expires at the latest of those when every
regular column it has set carries a TTL; one set column without a TTL (or
one whose TTL the scan could not select, such as a non-frozen collection)
keeps it alive -> no expiry. The values that expire before the row does go
into `Change.value_expiry`: regular ones with an earlier TTL, and every
static value with a TTL (statics never keep a row alive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sync.errors import DecodeError
from sync.keyspaces import TableInfo
from sync.model import Change, Op, Provenance, ScanPosition
from sync.schema import TableKey

_TTL_PREFIX = "ks2os_ttl_"


def ttl_alias(column: str) -> str:
    """The result column name the scan gives `TTL(column)`: `ks2os_ttl_<column>`."""
    return _TTL_PREFIX + column


def ttl_capable(cql_type: str | None) -> bool:
    """TTL() works on scalars and frozen values, not on non-frozen collections."""
    text = (cql_type or "").strip().lower()
    return not text.startswith(("list<", "set<", "map<"))


def expiring_columns(info: TableInfo) -> tuple[str, ...]:
    """The static and regular columns whose TTL() a read selects (none without TTL on)."""
    if not info.ttl_enabled:
        return ()
    columns = info.key.static + info.regular
    return tuple(c for c in columns if ttl_capable(info.key.cql_type(c)))


def decode_row(
    row: Mapping[str, Any] | Any,
    table: TableKey,
    position: Provenance,
    version: int,
    ttl_columns: Sequence[str] = (),
    *,
    read_at_ms: int | None = None,
) -> Change:
    """The UPSERT a row read over CQL stands for; `row` is a dict or a driver namedtuple.

    `read_at_ms` (the service clock before the read) dates the selected TTLs;
    a scanned row's defaults to its position's.
    """
    fields = _as_mapping(row)
    ttl_names = {ttl_alias(column) for column in ttl_columns}
    image = {
        name: value for name, value in fields.items() if value is not None and name not in ttl_names
    }
    missing = [name for name in table.key_columns if image.get(name) is None]
    if missing:
        raise DecodeError(
            f"{table.qualified_name}: scanned row lacks key column(s) {', '.join(missing)}",
            hint="the scan must select every primary-key column",
        )
    key = tuple(image[name] for name in table.key_columns)
    if read_at_ms is None and isinstance(position, ScanPosition):
        read_at_ms = position.read_at_ms
    if ttl_columns and read_at_ms is None:
        raise ValueError("TTL() was selected, but the time of the read is not known")
    expiries = _value_expiries(fields, image, ttl_columns, read_at_ms or 0)
    row_expiry = _row_expiry_ms(image, table, ttl_columns, expiries)
    return Change(
        Op.UPSERT,
        key,
        image,
        version,
        position,
        expires_at_ms=row_expiry,
        value_expiry={
            name: at
            for name, at in expiries.items()
            if name in table.static or row_expiry is None or at < row_expiry
        },
    )


def expiry_ms(read_at_ms: int, ttl_s: int) -> int:
    """When a value whose TTL() read `ttl_s` at service time `read_at_ms` stops being readable.

    TTL() is the expiry second less the server's current whole second, so
    counting from the read's whole second is never late.
    """
    return (read_at_ms // 1000 + int(ttl_s)) * 1000


def _as_mapping(row: Mapping[str, Any] | Any) -> Mapping[str, Any]:
    if isinstance(row, Mapping):
        return row
    as_dict = getattr(row, "_asdict", None)
    if as_dict is None:
        raise TypeError(f"a row must be a mapping or a namedtuple, got {type(row).__name__}")
    result: Mapping[str, Any] = as_dict()
    return result


def _value_expiries(
    fields: Mapping[str, Any], image: Mapping[str, Any], ttl_columns: Sequence[str], read_at_ms: int
) -> dict[str, int]:
    """Column -> expiry of each value read with a TTL."""
    expiries = {}
    for name in ttl_columns:
        ttl = fields.get(ttl_alias(name))
        if ttl is not None and name in image:
            expiries[name] = expiry_ms(read_at_ms, ttl)
    return expiries


def _row_expiry_ms(
    image: Mapping[str, Any],
    table: TableKey,
    ttl_columns: Sequence[str],
    expiries: Mapping[str, int],
) -> int | None:
    if not ttl_columns:
        return None
    regular = [name for name in image if not table.is_key(name) and name not in table.static]
    if not regular:
        return None
    latest = 0
    for name in regular:
        at = expiries.get(name)
        if at is None:
            return None  # no TTL (or none the read could select): the row lives on
        latest = max(latest, at)
    return latest
