"""Decode a Keyspaces CDC cell value into the Python value cassandra-driver returns.

A `KeyspacesCellValue` (boto3's parsed dict) has exactly one member naming its
CQL type (`{"intT": "5"}`). Collections nest cells: `listT`/`setT`/`tupleT`
are arrays of `{value, metadata}`, `mapT` an array of `{key, value, metadata}`,
`udtT` an object of field -> `{value, metadata}`. The result is what the
driver gives for the same CQL value, so a change decoded from the stream
equals the change decoded from a CQL read of the same row state:

=============  ===============================================================
asciiT textT   str
varcharT
int family     int (tinyint, smallint, int, bigint, counter, varint)
floatT         float, rounded through 32 bits like the driver's float
doubleT        float
decimalT       decimal.Decimal (exact text)
boolT          bool
blobT          bytes (boto3 already decoded the base64; raw JSON text is decoded)
uuidT          uuid.UUID (timeuuid too)
inetT          str, in the form the driver prints
timestampT     naive UTC datetime.datetime, millisecond precision
dateT          cassandra.util.Date
timeT          cassandra.util.Time
durationT      cassandra.util.Duration
listT          list
setT           cassandra.util.SortedSet
mapT           cassandra.util.OrderedMap (equal to the driver's OrderedMapSerializedKey)
tupleT         tuple
udtT           a namedtuple of the fields, as the driver returns for an
               unregistered UDT (fields in record order)
=============  ===============================================================

Accepted text forms (KEYSPACES_FACTS §5 leaves them open, so both are read):
timestampT epoch milliseconds or ISO 8601; dateT `YYYY-MM-DD` or days since
the epoch; timeT nanoseconds since midnight or `HH:MM:SS[.fffffffff]`;
durationT Cassandra text (`1mo2d3h4m5s6ms7us8ns`, optional `-`) or ISO 8601.
Anything else raises `DecodeError` naming the column and the value.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import ipaddress
import re
import socket
import struct
import uuid
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cassandra.util import Date, Duration, OrderedMap, SortedSet, Time

from sync.errors import DecodeError

_EPOCH = dt.datetime(1970, 1, 1)
_EPOCH_ORDINAL = _EPOCH.toordinal()
_NANOS_PER_DAY = 86_400 * 10**9
_INTEGER = re.compile(r"[+-]?\d+")

_DURATION_UNIT_NANOS = {
    "h": 3_600 * 10**9,
    "m": 60 * 10**9,
    "s": 10**9,
    "ms": 10**6,
    "us": 10**3,
    "µs": 10**3,
    "ns": 1,
}
_CASSANDRA_DURATION = re.compile(r"(\d+)(y|mo|w|d|h|ms|m|s|us|µs|ns)", re.IGNORECASE)
_ISO_DURATION = re.compile(
    r"P(?:(?P<y>\d+)Y)?(?:(?P<mo>\d+)M)?(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<mi>\d+)M)?(?:(?P<s>\d+)(?:\.(?P<f>\d{1,9}))?S)?)?"
)


def _is_mapping(value: Any) -> bool:
    # dict first: the ABC check costs a measurable share of decoding a record.
    return type(value) is dict or isinstance(value, Mapping)


def _is_array(value: Any) -> bool:
    if type(value) is list:
        return True
    return isinstance(value, Sequence) and not isinstance(value, str | bytes)


def decode_cell(cell: Mapping[str, Any], column: str) -> Any:
    """The driver-native Python value of one `KeyspacesCellValue`."""
    try:
        ((member, raw),) = cell.items()
    except (AttributeError, TypeError, ValueError):
        raise DecodeError(
            f"column {column!r}: a cell value must have exactly one member, got {cell!r}",
            hint="the record does not follow the KeyspacesCellValue shape",
        ) from None
    if type(raw) is str and member in _TEXT_MEMBERS:
        return raw  # the commonest cell, on the fast path
    decoder = _DECODERS.get(member)
    if decoder is None:
        raise DecodeError(
            f"column {column!r}: unknown cell type {member!r} in {cell!r}",
            hint="a newer Keyspaces type this version of ks2os does not know",
        )
    try:
        return decoder(raw, column)
    except DecodeError:
        raise
    except (ValueError, TypeError, ArithmeticError, KeyError, binascii.Error) as exc:
        message = f"column {column!r}: cannot decode {member} value {raw!r}: {exc}"
        raise DecodeError(message) from exc


_TEXT_MEMBERS = frozenset({"textT", "varcharT", "asciiT"})


def _text(raw: Any, column: str) -> str:
    if not isinstance(raw, str):
        raise TypeError(f"expected a string, got {type(raw).__name__}")
    return raw


def _integer(raw: Any, column: str) -> int:
    if type(raw) is str and _is_integer_text(raw):
        return int(raw)
    text = _text(raw, column).strip()
    if not _INTEGER.fullmatch(text):
        raise ValueError("not a decimal integer")
    return int(text)


def _double(raw: Any, column: str) -> float:
    return float(_text(raw, column))


def _float32(raw: Any, column: str) -> float:
    # The driver unpacks a 4-byte float; rounding the text through 32 bits
    # yields the very same Python float (3.4028235E38 -> 3.4028234663852886e+38).
    value = float(_text(raw, column))
    return float(struct.unpack(">f", struct.pack(">f", value))[0])


def _decimal(raw: Any, column: str) -> decimal.Decimal:
    value = decimal.Decimal(_text(raw, column).strip())
    if not value.is_finite():
        raise ValueError("CQL decimals are finite")
    return value


def _bool(raw: Any, column: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if raw in ("true", "false"):
        return bool(raw == "true")
    raise ValueError("expected true or false")


def _blob(raw: Any, column: str) -> bytes:
    if isinstance(raw, bytes | bytearray):
        return bytes(raw)  # boto3 decodes the Blob shape's base64 itself
    return base64.b64decode(_text(raw, column), validate=True)


def _uuid(raw: Any, column: str) -> uuid.UUID:
    return uuid.UUID(_text(raw, column))


def _inet(raw: Any, column: str) -> str:
    address = ipaddress.ip_address(_text(raw, column).strip())
    # Format as the driver does (inet_ntoa / inet_ntop of the packed bytes).
    if address.version == 4:
        return socket.inet_ntoa(address.packed)
    return socket.inet_ntop(socket.AF_INET6, address.packed)


def timestamp_from_ms(epoch_ms: int) -> dt.datetime:
    """The naive UTC datetime the driver returns for a CQL timestamp."""
    return _EPOCH + dt.timedelta(milliseconds=epoch_ms)


def _is_integer_text(text: str) -> bool:
    # str.isdigit also accepts non-ASCII digits, which int() takes too; both mean a number.
    return text.isdigit() or (text[:1] in "+-" and text[1:].isdigit())


def _timestamp(raw: Any, column: str) -> dt.datetime:
    text = _text(raw, column)
    if _is_integer_text(text):
        return _EPOCH + dt.timedelta(milliseconds=int(text))
    text = text.strip()
    parsed = dt.datetime.fromisoformat(text)
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(dt.UTC).replace(tzinfo=None)
    # CQL timestamps hold milliseconds; drop what a driver read could never show.
    return parsed.replace(microsecond=parsed.microsecond // 1000 * 1000)


def _date(raw: Any, column: str) -> Date:
    text = _text(raw, column).strip()
    if _INTEGER.fullmatch(text):
        return Date(int(text))
    # Date(days) directly: much cheaper than Date(datetime.date) and the same value.
    return Date(dt.date.fromisoformat(text.removeprefix("+")).toordinal() - _EPOCH_ORDINAL)


def _time(raw: Any, column: str) -> Time:
    text = _text(raw, column).strip()
    if _INTEGER.fullmatch(text):
        nanos = int(text)
        if not 0 <= nanos < _NANOS_PER_DAY:
            raise ValueError("nanoseconds since midnight out of range")
        return Time(nanos)
    if not re.fullmatch(r"\d{2}:\d{2}:\d{2}(\.\d{1,9})?", text):
        raise ValueError("expected HH:MM:SS[.fffffffff]")
    return Time(text)


def _duration(raw: Any, column: str) -> Duration:
    text = _text(raw, column).strip()
    negative = text.startswith("-")
    body = text.removeprefix("-")
    if body.upper().startswith("P"):
        months, days, nanos = _iso_duration(body.upper())
    else:
        months, days, nanos = _cassandra_duration(body)
    sign = -1 if negative else 1
    return Duration(sign * months, sign * days, sign * nanos)


def _cassandra_duration(body: str) -> tuple[int, int, int]:
    parts = _CASSANDRA_DURATION.findall(body)
    if not body or "".join(number + unit for number, unit in parts) != body:
        raise ValueError("expected a duration such as 1mo2d3h4m5s6ms7us8ns or P1Y2M3DT4H")
    months = days = nanos = 0
    for number, unit_text in parts:
        amount, unit = int(number), unit_text.lower()
        if unit == "y":
            months += 12 * amount
        elif unit == "mo":
            months += amount
        elif unit == "w":
            days += 7 * amount
        elif unit == "d":
            days += amount
        else:
            nanos += amount * _DURATION_UNIT_NANOS[unit]
    return months, days, nanos


def _iso_duration(body: str) -> tuple[int, int, int]:
    match = _ISO_DURATION.fullmatch(body)
    if match is None or body in ("P", "PT") or body.endswith("T"):
        raise ValueError("expected an ISO 8601 duration such as P1Y2M3DT4H5M6.5S")
    part = {name: int(value) if value else 0 for name, value in match.groupdict().items()}
    fraction = (match.group("f") or "").ljust(9, "0")
    months = 12 * part["y"] + part["mo"]
    days = 7 * part["w"] + part["d"]
    nanos = (
        part["h"] * _DURATION_UNIT_NANOS["h"]
        + part["mi"] * _DURATION_UNIT_NANOS["m"]
        + part["s"] * _DURATION_UNIT_NANOS["s"]
        + int(fraction)
    )
    return months, days, nanos


def _elements(raw: Any, column: str) -> list[Any]:
    if not _is_array(raw):
        raise TypeError(f"expected an array of cells, got {type(raw).__name__}")
    return [_nested(element, column) for element in raw]


def _nested(cell: Any, column: str) -> Any:
    """A `KeyspacesCell` ({value, metadata}) inside a collection, tuple or UDT.

    A cell without `value` is a null (a tuple or UDT field left unset).
    """
    if not _is_mapping(cell):
        raise TypeError(f"expected a cell, got {cell!r}")
    value = cell.get("value")
    return None if value is None else decode_cell(value, column)


def _list(raw: Any, column: str) -> list[Any]:
    return _elements(raw, column)


def _set(raw: Any, column: str) -> SortedSet:
    return SortedSet(_elements(raw, column))


def _tuple(raw: Any, column: str) -> tuple[Any, ...]:
    return tuple(_elements(raw, column))


def _map(raw: Any, column: str) -> Mapping[Any, Any]:
    """A dict (equal to the driver's OrderedMapSerializedKey, and cheaper to build).

    An OrderedMap when a key is unhashable (a frozen collection as key).
    """
    if not _is_array(raw):
        raise TypeError(f"expected an array of map entries, got {type(raw).__name__}")
    entries: list[tuple[Any, Any]] = []
    for entry in raw:
        if not _is_mapping(entry) or "key" not in entry:
            raise TypeError(f"expected a map entry with a key, got {entry!r}")
        value = entry.get("value")  # absent: a null value (possible in frozen maps)
        decoded = None if value is None else decode_cell(value, column)
        entries.append((decode_cell(entry["key"], column), decoded))
    try:
        return dict(entries)
    except TypeError:
        ordered: Mapping[Any, Any] = OrderedMap(entries)
        return ordered


def _udt(raw: Any, column: str) -> Any:
    if not _is_mapping(raw):
        raise TypeError(f"expected an object of fields, got {type(raw).__name__}")
    names = list(raw)
    # rename=True mirrors the driver, which renames fields that are not identifiers.
    udt_class = _udt_class(tuple(names))
    return udt_class(*(_nested(raw[name], column) for name in names))


_UDT_CLASSES: dict[tuple[str, ...], Any] = {}


def _udt_class(field_names: tuple[str, ...]) -> Any:
    found = _UDT_CLASSES.get(field_names)
    if found is None:
        found = _UDT_CLASSES[field_names] = namedtuple("udt", field_names, rename=True)
    return found


_DECODERS: dict[str, Callable[[Any, str], Any]] = {
    "asciiT": _text,
    "textT": _text,
    "varcharT": _text,
    "tinyintT": _integer,
    "smallintT": _integer,
    "intT": _integer,
    "bigintT": _integer,
    "counterT": _integer,
    "varintT": _integer,
    "floatT": _float32,
    "doubleT": _double,
    "decimalT": _decimal,
    "boolT": _bool,
    "blobT": _blob,
    "uuidT": _uuid,
    "timeuuidT": _uuid,
    "inetT": _inet,
    "timestampT": _timestamp,
    "dateT": _date,
    "timeT": _time,
    "durationT": _duration,
    "listT": _list,
    "setT": _set,
    "tupleT": _tuple,
    "mapT": _map,
    "udtT": _udt,
}
