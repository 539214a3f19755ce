"""Turn a `RowChange` into a Keyspaces Streams change record (the model's `Record` shape).

A record is built once, when the engine commits the change, and kept as
JSON-ready data; GetRecords only concatenates. Cell values become the
`KeyspacesCellValue` union. The text form of each scalar member is a choice
the emulator makes (AWS does not document them) and is listed in the README:

- timestampT: epoch milliseconds, decimal string
- dateT: ``YYYY-MM-DD`` (outside years 1-9999: signed days since the epoch)
- timeT: nanoseconds since midnight, decimal string
- durationT: Cassandra's text form (``1y2mo3d4h5m6s7ms8us9ns``, ``-`` when negative, ``0s``)
- decimalT / varintT: exact decimal strings; floatT / doubleT: ``repr`` of the Python float
- bigintT intT smallintT tinyintT counterT: decimal strings
- uuidT / timeuuidT: lower-case canonical; inetT: address text; boolT: JSON bool; blobT: base64
"""

from __future__ import annotations

import base64
import datetime
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cassandra import cqltypes

from keyspaces_local.cdc import Cell, RowChange, RowImage
from keyspaces_local.schema import TableSchema, ViewType

JsonDict = dict[str, Any]

EVENT_VERSION = "1.1"
_EPOCH_DAY = datetime.date(1970, 1, 1)
_DATE_OFFSET = 2**31  # CQL `date` is an unsigned day count centred on the epoch


@dataclass(frozen=True)
class CellMeta:
    """The metadata a cell (or a non-frozen collection element) carries."""

    write_time_us: int | None
    expires_at_s: int | None

    def to_json(self) -> JsonDict | None:
        meta: JsonDict = {}
        if self.write_time_us is not None:
            meta["writeTime"] = str(self.write_time_us)
        if self.expires_at_s is not None:
            meta["expirationTime"] = str(self.expires_at_s)
        return meta or None


# --- scalars -------------------------------------------------------------------------------


def _signed(b: bytes) -> str:
    return str(int.from_bytes(b, "big", signed=True))


def _utf8(b: bytes) -> str:
    return b.decode("utf-8")


def _blob(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _uuid(b: bytes) -> str:
    return str(uuid.UUID(bytes=b))


def _date(b: bytes) -> str:
    days = int.from_bytes(b, "big", signed=False) - _DATE_OFFSET
    try:
        return (_EPOCH_DAY + datetime.timedelta(days=days)).isoformat()
    except OverflowError:
        return str(days)  # Python dates stop at years 1 and 9999; CQL dates do not


def _float(b: bytes) -> str:
    return repr(struct.unpack(">f", b)[0])


def _double(b: bytes) -> str:
    return repr(struct.unpack(">d", b)[0])


def _bool(b: bytes) -> bool:
    return b != b"\x00"


def _via_driver(cql_type: Any) -> Callable[[bytes], str]:
    def render(b: bytes) -> str:
        return str(cql_type.from_binary(b, 4))

    return render


def format_duration(months: int, days: int, nanoseconds: int) -> str:
    """Cassandra's own text form of a duration: units largest first, zero units left out."""
    if months == days == nanoseconds == 0:
        return "0s"
    sign = "-" if (months < 0 or days < 0 or nanoseconds < 0) else ""
    months, days, nanoseconds = abs(months), abs(days), abs(nanoseconds)
    parts: list[tuple[int, str]] = [(months // 12, "y"), (months % 12, "mo"), (days, "d")]
    rest = nanoseconds
    for size, unit in (
        (3_600_000_000_000, "h"),
        (60_000_000_000, "m"),
        (1_000_000_000, "s"),
        (1_000_000, "ms"),
        (1_000, "us"),
        (1, "ns"),
    ):
        parts.append((rest // size, unit))
        rest %= size
    return sign + "".join(f"{n}{unit}" for n, unit in parts if n)


def _duration(b: bytes) -> str:
    d = cqltypes.DurationType.from_binary(b, 4)
    return format_duration(d.months, d.days, d.nanoseconds)


# typename -> (union member, render from serialised bytes)
_SCALARS: dict[str, tuple[str, Callable[[bytes], Any]]] = {
    "ascii": ("asciiT", _utf8),
    "text": ("textT", _utf8),
    "varchar": ("varcharT", _utf8),
    "bigint": ("bigintT", _signed),
    "counter": ("counterT", _signed),
    "int": ("intT", _signed),
    "smallint": ("smallintT", _signed),
    "tinyint": ("tinyintT", _signed),
    "varint": ("varintT", _signed),
    "decimal": ("decimalT", _via_driver(cqltypes.DecimalType)),
    "float": ("floatT", _float),
    "double": ("doubleT", _double),
    "boolean": ("boolT", _bool),
    "blob": ("blobT", _blob),
    "uuid": ("uuidT", _uuid),
    "timeuuid": ("timeuuidT", _uuid),
    "inet": ("inetT", _via_driver(cqltypes.InetAddressType)),
    "timestamp": ("timestampT", _signed),
    "date": ("dateT", _date),
    "time": ("timeT", _signed),
    "duration": ("durationT", _duration),
}

# Types whose zero-length serialisation is a real value, not Cassandra's "empty".
_EMPTY_IS_VALUE = {"ascii", "text", "varchar", "blob"}


# --- collections (protocol v4 layouts: [int32 n] then [int32 len][bytes] per element) -------


def _split_elements(b: bytes, count: int | None = None) -> list[bytes | None]:
    """The length-prefixed elements of a serialised collection, tuple or UDT."""
    pos = 0
    if count is None:
        (count,) = struct.unpack_from(">i", b, 0)
        pos = 4
    out: list[bytes | None] = []
    while len(out) < count and pos < len(b):
        (size,) = struct.unpack_from(">i", b, pos)
        pos += 4
        if size < 0:
            out.append(None)
            continue
        out.append(b[pos : pos + size])
        pos += size
    return out


def _unwrap(cql_type: Any) -> tuple[Any, bool]:
    """Strip frozen<> and reversed markers; returns (inner type, was frozen)."""
    frozen = False
    while cql_type.typename == "frozen" or issubclass(cql_type, cqltypes.ReversedType):
        frozen = frozen or cql_type.typename == "frozen"
        cql_type = cql_type.subtypes[0]
    return cql_type, frozen


class ValueRenderer:
    """Renders serialised values of one column type into the cell-value union."""

    def value(self, cql_type: Any, b: bytes | None, meta: JsonDict | None) -> JsonDict | None:
        """The union for one value; `meta` is given to elements of non-frozen collections."""
        if b is None:
            return None
        inner, frozen = _unwrap(cql_type)
        element_meta = None if frozen else meta
        name = inner.typename
        if name in ("list", "set"):
            sub = inner.subtypes[0]
            cells = [self.cell(sub, e, element_meta) for e in _split_elements(b)]
            return {"listT" if name == "list" else "setT": cells}
        if name == "map":
            return {"mapT": self._map(inner, b, element_meta)}
        if name == "tuple":
            parts = _split_elements(b, len(inner.subtypes))
            parts += [None] * (len(inner.subtypes) - len(parts))
            return {
                "tupleT": [
                    self.cell(t, e, None) for t, e in zip(inner.subtypes, parts, strict=True)
                ]
            }
        if issubclass(inner, cqltypes.UserType):
            parts = _split_elements(b, len(inner.subtypes))
            parts += [None] * (len(inner.subtypes) - len(parts))
            fields = zip(inner.fieldnames, inner.subtypes, parts, strict=True)
            return {"udtT": {f: self.cell(t, e, element_meta) for f, t, e in fields}}
        member, render = _SCALARS.get(name, ("blobT", _blob))
        if not b and name not in _EMPTY_IS_VALUE:
            return None  # Cassandra's "empty" value of a non-text type reads as null
        return {member: render(b)}

    def cell(self, cql_type: Any, b: bytes | None, meta: JsonDict | None) -> JsonDict:
        """A `KeyspacesCell`; a null element is a cell without `value`."""
        out: JsonDict = {}
        v = self.value(cql_type, b, meta)
        if v is not None:
            out["value"] = v
        if meta is not None:
            out["metadata"] = meta
        return out

    def _map(self, inner: Any, b: bytes, meta: JsonDict | None) -> list[JsonDict]:
        key_type, value_type = inner.subtypes
        flat = _split_elements(b[4:], 2 * struct.unpack_from(">i", b, 0)[0])
        entries: list[JsonDict] = []
        for k, v in zip(flat[0::2], flat[1::2], strict=True):
            entry: JsonDict = {"key": self.value(key_type, k, None)}
            value = self.value(value_type, v, None)
            if value is not None:
                entry["value"] = value
            if meta is not None:
                entry["metadata"] = meta
            entries.append(entry)
        return entries


_RENDERER = ValueRenderer()


# --- records -----------------------------------------------------------------------------------


def _cells(table: TableSchema, cells: Mapping[str, Cell]) -> JsonDict:
    with_write_time = table.options.client_side_timestamps
    out: JsonDict = {}
    for name, cell in cells.items():
        column = table.columns.get(name)
        if column is None:
            continue  # a column dropped since the change was made
        meta = CellMeta(cell.write_time_us if with_write_time else None, cell.expires_at_s)
        out[name] = _RENDERER.cell(column.cql_type, cell.value, meta.to_json())
    return out


STATIC_SHAPES = ("all", "touched")


def _image(
    table: TableSchema, image: RowImage, static_only: bool, touched: frozenset[str] | None
) -> JsonDict:
    """One image; `touched` (static-only records of the touched shape) keeps only those statics."""
    out: JsonDict = {}
    if not static_only:
        out["valueCells"] = _cells(table, image.cells)
    statics = image.static_cells
    expires_at_s = image.expires_at_s
    if touched is not None:
        statics = {name: cell for name, cell in statics.items() if name in touched}
        expires_at_s = _all_expire_at(statics)
        out["staticCells"] = _cells(table, statics)  # present, if empty: the image exists
    elif statics:
        out["staticCells"] = _cells(table, statics)
    if expires_at_s is not None:
        out["rowMetadata"] = {"expirationTime": str(expires_at_s)}
    return out


def _all_expire_at(cells: Mapping[str, Cell]) -> int | None:
    """When every one of `cells` has expired, if each has a TTL."""
    expiries = [cell.expires_at_s for cell in cells.values()]
    if not expiries or any(e is None for e in expiries):
        return None
    return max(e for e in expiries if e is not None)


def _keys(table: TableSchema, kind: str, values: tuple[bytes, ...]) -> JsonDict:
    columns = table.partition_key if kind == "partition" else table.clustering_key
    out: JsonDict = {}
    for column, b in zip(columns, values, strict=True):
        rendered = _RENDERER.value(column.cql_type, b, None)
        if rendered is not None:
            out[column.name] = rendered
    return out


def build_record(
    change: RowChange, view_type: ViewType, created_at_ms: int, *, static_shape: str = "all"
) -> JsonDict:
    """The change record, without `sequenceNumber` (the shard assigns it).

    `static_shape` is what a static-only record's images hold: "all" the partition's
    static columns, or "touched" only those the write touched (the old image their
    previous values; a static deleted shows in the old image only).
    """
    table = change.table
    static_only = change.clustering_key is None and bool(table.clustering_key)
    touched = change.touched if static_only and static_shape == "touched" else None
    record: JsonDict = {
        "eventVersion": EVENT_VERSION,
        "createdAt": created_at_ms / 1000,
        "origin": change.origin,
        "partitionKeys": _keys(table, "partition", change.partition_key),
    }
    if change.clustering_key is not None and table.clustering_key:
        record["clusteringKeys"] = _keys(table, "clustering", change.clustering_key)
    wants_new = view_type in (ViewType.NEW_AND_OLD_IMAGES, ViewType.NEW_IMAGE)
    wants_old = view_type in (ViewType.NEW_AND_OLD_IMAGES, ViewType.OLD_IMAGE)
    if wants_new and change.new_image is not None:
        record["newImage"] = _image(table, change.new_image, static_only, touched)
    if wants_old and change.old_image is not None:
        record["oldImage"] = _image(table, change.old_image, static_only, touched)
    return record
