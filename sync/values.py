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
_ONE_MS = dt.timedelta(milliseconds=1)
_Decimal = decimal.Decimal
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
        raise _not_one_member(cell, column) from None
    decoder = _DECODERS.get(member)
    if decoder is None:
        raise _unknown_member(cell, member, column)
    if decoder is _text and type(raw) is str:
        return raw  # the commonest cell, on the fast path
    try:
        return decoder(raw, column)
    except DecodeError:
        raise
    except _DECODE_FAILURES as exc:
        raise _cannot_decode(member, raw, column, exc) from exc


def decode_cells(cells: Mapping[str, Any], skip: frozenset[str], into: dict[str, Any]) -> None:
    """Decode a row's `KeyspacesCell`s (name -> {value, metadata}) into `into`.

    Cells named in `skip` are passed over; a cell without a value is a null
    and, like a null in a CQL row, left out. `decode_cell`'s dispatch is
    inlined: this loop runs for every cell of every record.
    """
    decoders = _DECODERS
    text = _text
    integer = _integer
    for name, cell in cells.items():
        if name in skip:
            continue
        try:
            value = cell.get("value")
        except AttributeError:
            raise DecodeError(f"column {name!r}: expected a cell, got {cell!r}") from None
        if value is None:
            continue
        try:
            ((member, raw),) = value.items()
            decoder = decoders[member]
        except (AttributeError, TypeError, ValueError, KeyError):
            into[name] = decode_cell(value, name)  # raises the precise error
            continue
        if type(raw) is str:
            if decoder is text:
                into[name] = raw
                continue
            if decoder is integer and raw.isdigit():
                into[name] = int(raw)
                continue
        try:
            into[name] = decoder(raw, name)
        except DecodeError:
            raise
        except _DECODE_FAILURES as exc:
            raise _cannot_decode(member, raw, name, exc) from exc


_DECODE_FAILURES = (ValueError, TypeError, ArithmeticError, KeyError, binascii.Error)


def _not_one_member(cell: Any, column: str) -> DecodeError:
    return DecodeError(
        f"column {column!r}: a cell value must have exactly one member, got {cell!r}",
        hint="the record does not follow the KeyspacesCellValue shape",
    )


def _unknown_member(cell: Any, member: Any, column: str) -> DecodeError:
    return DecodeError(
        f"column {column!r}: unknown cell type {member!r} in {cell!r}",
        hint="a newer Keyspaces type this version of ks2os does not know",
    )


def _cannot_decode(member: str, raw: Any, column: str, exc: Exception) -> DecodeError:
    return DecodeError(f"column {column!r}: cannot decode {member} value {raw!r}: {exc}")


def _text(raw: Any, column: str) -> str:
    if not isinstance(raw, str):
        raise TypeError(f"expected a string, got {type(raw).__name__}")
    return raw


def _integer(raw: Any, column: str) -> int:
    if type(raw) is str and (raw.isdigit() or _is_integer_text(raw)):
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
    value = _Decimal(raw.strip() if type(raw) is str else _text(raw, column).strip())
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
    if type(raw) is str:
        digits = raw.replace("-", "")
        if len(digits) == 32 and digits.isascii() and digits.isalnum():
            # What uuid.UUID(raw) does for this text (no braces, no urn: prefix),
            # without its argument checks: int(digits, 16) is the whole parse.
            value = _new_object(_UUID)
            _set_uuid_int(value, int(digits, 16))
            _set_uuid_safety(value, _UUID_UNKNOWN_SAFETY)
            return value
    return uuid.UUID(_text(raw, column))


_UUID = uuid.UUID
_UUID_UNKNOWN_SAFETY = uuid.SafeUUID.unknown
_new_object = object.__new__
# The slots' own setters: what UUID.__init__'s object.__setattr__ calls reach.
_set_uuid_int = vars(_UUID)["int"].__set__
_set_uuid_safety = vars(_UUID)["is_safe"].__set__


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
    if type(raw) is str and raw.isdigit():
        return _EPOCH + _ONE_MS * int(raw)  # exact: timedelta times an int
    text = _text(raw, column)
    if _is_integer_text(text):
        return _EPOCH + _ONE_MS * int(text)
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
    if type(raw) is not list and not _is_array(raw):
        raise TypeError(f"expected an array of cells, got {type(raw).__name__}")
    elements = []
    decoders = _DECODERS
    text = _text
    integer = _integer
    for cell in raw:
        # _nested, inlined with decode_cell's text fast path.
        if type(cell) is not dict:
            elements.append(_nested(cell, column))
            continue
        value = cell.get("value")
        if value is None:
            elements.append(None)
            continue
        if type(value) is dict and len(value) == 1:  # _leaf inlined
            ((member, raw_element),) = value.items()
            if type(raw_element) is str:
                decoder = decoders.get(member)
                if decoder is text:
                    elements.append(raw_element)
                    continue
                if decoder is integer and raw_element.isdigit():
                    elements.append(int(raw_element))
                    continue
        elements.append(decode_cell(value, column))
    return elements


def _leaf(value: Any, column: str) -> Any:
    """`decode_cell(value, column)`, with text and plain integers decoded in place."""
    if type(value) is dict and len(value) == 1:
        ((member, raw),) = value.items()
        if type(raw) is str:
            decoder = _DECODERS.get(member)
            if decoder is _text:
                return raw
            if decoder is _integer and raw.isdigit():
                return int(raw)
    return decode_cell(value, column)


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
    return _sorted_set(_elements(raw, column))


def _sorted_set(elements: list[Any]) -> SortedSet:
    """`SortedSet(elements)`, built in one sort when the elements are all text or all ints.

    For those, sorting the distinct elements gives exactly the list that
    SortedSet's element-by-element insertion builds (a total order, and
    `==` is equality of value); anything else goes through SortedSet itself.
    """
    kind = str if not elements else type(elements[0])
    if kind is str or kind is int:
        for element in elements:
            if type(element) is not kind:
                return SortedSet(elements)
        built: SortedSet = _new_object(SortedSet)
        built._items = sorted(set(elements))
        return built
    return SortedSet(elements)


def _tuple(raw: Any, column: str) -> tuple[Any, ...]:
    return tuple(_elements(raw, column))


def _map(raw: Any, column: str) -> Mapping[Any, Any]:
    """A dict (equal to the driver's OrderedMapSerializedKey, and cheaper to build).

    An OrderedMap when a key is unhashable (a frozen collection as key).
    """
    if type(raw) is not list and not _is_array(raw):
        raise TypeError(f"expected an array of map entries, got {type(raw).__name__}")
    decoded: dict[Any, Any] = {}
    decoders = _DECODERS
    text = _text
    for entry in raw:
        if (type(entry) is not dict and not _is_mapping(entry)) or "key" not in entry:
            raise TypeError(f"expected a map entry with a key, got {entry!r}")
        value = entry.get("value")  # absent: a null value (possible in frozen maps)
        if value is not None:
            value = _leaf(value, column)
        key = entry["key"]
        # _leaf inlined for the commonest key, text.
        if type(key) is dict and len(key) == 1:
            ((member, text_value),) = key.items()
            if type(text_value) is str and decoders.get(member) is text:
                key = text_value
            else:
                key = _leaf(key, column)
        else:
            key = _leaf(key, column)
        try:
            decoded[key] = value
        except TypeError:
            if not _is_unhashable(key):
                raise
            return _ordered_map(raw, column)
    return decoded


def _is_unhashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return True
    return False


def _ordered_map(raw: Any, column: str) -> Mapping[Any, Any]:
    entries: list[tuple[Any, Any]] = []
    for entry in raw:
        if not _is_mapping(entry) or "key" not in entry:
            raise TypeError(f"expected a map entry with a key, got {entry!r}")
        value = entry.get("value")
        decoded = None if value is None else decode_cell(value, column)
        entries.append((decode_cell(entry["key"], column), decoded))
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


# ---- the other way: a driver value as a cell value ---------------------------------------


def encode_cell(value: Any) -> dict[str, Any]:
    """A `KeyspacesCellValue` that `decode_cell` turns back into `value` (a driver value).

    Chosen by the Python type, not the CQL type: every integer is a `varintT`,
    every string a `textT` (inet addresses are strings in the driver), every
    float a `doubleT` (a float column's values are exact doubles). ks2os keeps
    keys this way in documents and dead letters, so it can read the row again.
    """
    if value is None:
        raise TypeError("a null has no cell value")
    if isinstance(value, bool):
        return {"boolT": value}
    if isinstance(value, int):
        return {"varintT": str(value)}
    if isinstance(value, float):
        return {"doubleT": repr(value)}
    if isinstance(value, str):
        return {"textT": value}
    if isinstance(value, decimal.Decimal):
        return {"decimalT": str(value)}
    if isinstance(value, uuid.UUID):
        return {"uuidT": str(value)}
    if isinstance(value, dt.datetime):
        naive = value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
        return {"timestampT": str(round((naive - _EPOCH) / _ONE_MS))}
    if isinstance(value, Date):
        return {"dateT": str(value.days_from_epoch)}
    if isinstance(value, Time):
        return {"timeT": str(value.nanosecond_time)}
    if isinstance(value, Duration):
        return {"durationT": _duration_text(value)}
    if isinstance(value, bytes | bytearray):
        return {"blobT": base64.b64encode(bytes(value)).decode("ascii")}
    return _encode_composite(value)


def _encode_composite(value: Any) -> dict[str, Any]:
    if isinstance(value, Mapping | OrderedMap):
        return {"mapT": [_map_entry(k, v) for k, v in value.items()]}
    if hasattr(value, "_fields"):  # a UDT, as the driver returns one (a namedtuple)
        fields = zip(value._fields, value, strict=True)
        return {"udtT": {name: _cell(item) for name, item in fields}}
    if isinstance(value, tuple):
        return {"tupleT": [_cell(item) for item in value]}
    if isinstance(value, list):
        return {"listT": [_cell(item) for item in value]}
    if isinstance(value, SortedSet | set | frozenset):
        return {"setT": [_cell(item) for item in value]}
    raise TypeError(f"no cell value for a {type(value).__name__}")


def _map_entry(key: Any, value: Any) -> dict[str, Any]:
    """A map entry: key and value are bare cell values; no `value` for a null."""
    entry = {"key": encode_cell(key)}
    if value is not None:
        entry["value"] = encode_cell(value)
    return entry


def _cell(value: Any) -> dict[str, Any]:
    """A `KeyspacesCell` inside a collection, tuple or UDT: no `value` for a null."""
    return {} if value is None else {"value": encode_cell(value)}


def _duration_text(value: Duration) -> str:
    # CQL durations have one sign for all three parts.
    negative = value.months < 0 or value.days < 0 or value.nanoseconds < 0
    body = f"{abs(value.months)}mo{abs(value.days)}d{abs(value.nanoseconds)}ns"
    return "-" + body if negative else body
