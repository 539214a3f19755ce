"""Reading rows over CQL, shared by the snapshot scan and the stream's row lookup.

Both sources read a table's rows the same way, so a row read by either gives
the same `Change`:

- **Consistency**: `READ_CONSISTENCY` (LOCAL_QUORUM) always. It is the only
  read level of Keyspaces that reflects every acknowledged write; a weaker
  read may hit a stale replica, and a stale row written at a newer version
  (a lookup for a delete record, say) brings a deleted row back.
- **Expiry**: a read selects `TTL("col") AS "<ttl_alias(col)>"` for the
  columns `expiring_columns` names (scalar or frozen regular and static
  columns of a table with TTL enabled). TTL() counts whole seconds from the
  server's current second, so a value read at `read_at_ms` (the service clock
  just before the read) expires at `expiry_ms(read_at_ms, ttl)` =
  `floor(read_at_ms / 1000) * 1000 + ttl * 1000`, never later than it really
  does. A row stops being readable when its last cell expires, so it expires
  at the latest of those when every regular column it has set carries a TTL;
  one set column without a TTL (or one whose TTL cannot be selected, such as
  a non-frozen collection) keeps it alive -> no expiry. The values that
  expire before the row does go into `Change.value_expiry`: regular ones with
  an earlier TTL, and every static value with a TTL (statics never keep a
  row alive).
- **Decoding** (`decode_row`): the driver's values go into the image
  unchanged, so the change equals the one `decode_record` makes from a CDC
  record of the same row state. Null columns are left out of the image, as a
  CDC image leaves them out. A row whose clustering columns are all null is a
  partition that holds static values and no rows (`UPDATE t SET s = 'x' WHERE
  p = 2` on an empty partition): it becomes a static-only change, as the
  stream gives one (key = partition key, image = partition key + statics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cassandra import ConsistencyLevel

from sync.errors import DecodeError
from sync.keyspaces import TableInfo, quote
from sync.model import Change, Op, Provenance, ScanRead
from sync.schema import TableLayout

READ_CONSISTENCY: int = ConsistencyLevel.LOCAL_QUORUM

_TTL_PREFIX = "ks2os_ttl_"


def ttl_alias(column: str) -> str:
    """The result column name a read gives `TTL(column)`: `ks2os_ttl_<column>`."""
    return _TTL_PREFIX + column


def ttl_capable(cql_type: str | None) -> bool:
    """TTL() works on scalars and frozen values, not on non-frozen collections."""
    text = (cql_type or "").strip().lower()
    return not text.startswith(("list<", "set<", "map<"))


def expiring_columns(info: TableInfo) -> tuple[str, ...]:
    """The static and regular columns whose TTL() a read selects (none without TTL on).

    Key columns have no TTL. A static value's TTL does not decide the row's
    expiry (statics never keep a row alive), only its own.
    """
    if not info.ttl_enabled:
        return ()
    columns = info.layout.static + info.regular
    return tuple(c for c in columns if ttl_capable(info.layout.cql_type(c)))


def select_list(
    columns: Sequence[str], ttl_columns: Sequence[str] = (), extra: Sequence[str] = ()
) -> str:
    """`"a", "b", <extra>, TTL("b") AS "ks2os_ttl_b"`: what a row read selects."""
    parts = [quote(c) for c in columns]
    parts += extra
    parts += [f"TTL({quote(c)}) AS {quote(ttl_alias(c))}" for c in ttl_columns]
    return ", ".join(parts)


def decode_row(
    row: Mapping[str, Any] | Any,
    table: TableLayout,
    position: Provenance,
    version: int,
    ttl_columns: Sequence[str] = (),
    *,
    read_at_ms: int | None = None,
) -> Change:
    """The UPSERT a row read over CQL stands for; `row` is a dict or a driver namedtuple.

    `read_at_ms` (the service clock before the read) dates the selected TTLs;
    a scanned row's defaults to its position's `read_at_ms`.
    """
    fields = _as_mapping(row)
    ttl_names = {ttl_alias(column) for column in ttl_columns}
    image = {
        name: value for name, value in fields.items() if value is not None and name not in ttl_names
    }
    if read_at_ms is None and isinstance(position, ScanRead):
        read_at_ms = position.read_at_ms
    if ttl_columns and read_at_ms is None:
        raise ValueError("TTL() was selected, but the time of the read is not known")
    expiries = _value_expiries(fields, image, ttl_columns, read_at_ms or 0)
    if any(image.get(name) is None for name in table.key_columns):
        return _static_only(image, table, position, version, expiries)
    key = tuple(image[name] for name in table.key_columns)
    row_expiry = row_expiry_ms(image, table, ttl_columns, expiries)
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


def _static_only(
    image: dict[str, Any],
    table: TableLayout,
    position: Provenance,
    version: int,
    expiries: Mapping[str, int],
) -> Change:
    """A partition with statics and no rows, or a DecodeError when a key column is missing."""
    partition_missing = [name for name in table.partition_key if image.get(name) is None]
    clustering_missing = [name for name in table.clustering if image.get(name) is None]
    static_only = table.static and table.clustering and clustering_missing == list(table.clustering)
    if partition_missing or not static_only:
        missing = partition_missing + clustering_missing
        raise DecodeError(
            f"{table.qualified_name}: row read over CQL lacks key column(s) {', '.join(missing)}",
            hint="the read must select every primary-key column",
        )
    key = tuple(image[name] for name in table.partition_key)
    # Only the partition key and the statics: regular columns are null on such a row.
    statics = {name: image[name] for name in table.partition_key + table.static if name in image}
    # Each static value with a TTL expires on its own (docs/versions.md, "Expiry of every value").
    expiry = {name: at for name, at in expiries.items() if name in table.static}
    return Change(Op.UPSERT, key, statics, version, position, static_only=True, value_expiry=expiry)


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


def row_expiry_ms(
    image: Mapping[str, Any],
    table: TableLayout,
    ttl_columns: Sequence[str],
    expiries: Mapping[str, int],
) -> int | None:
    """When the row read stops being readable (epoch ms), or None; see the module docstring."""
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
