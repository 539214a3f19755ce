"""CQL types for keyspaces_local: type text <-> `cassandra.cqltypes` classes, and orderings.

The emulator never invents its own serialisation: every column carries a
`cassandra.cqltypes` class, so values are encoded exactly as the driver does.
This module turns CQL type text (`frozen<map<text, list<int>>>`, `tuple<int,
text>`, a UDT name) into such a class, turns a class back into the CQL text
that `system_schema` shows, and gives the byte-level sort key Cassandra's
comparators imply (clustering order, set and map element order).
"""

from __future__ import annotations

import datetime
import json
import struct
import uuid
from collections.abc import Callable, Mapping
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from cassandra import cqltypes

# Scalar CQL type names -> driver classes. `varchar` is stored as text, as Cassandra does.
SCALAR_TYPES: dict[str, Any] = {
    "ascii": cqltypes.AsciiType,
    "bigint": cqltypes.LongType,
    "blob": cqltypes.BytesType,
    "boolean": cqltypes.BooleanType,
    "counter": cqltypes.CounterColumnType,
    "date": cqltypes.SimpleDateType,
    "decimal": cqltypes.DecimalType,
    "double": cqltypes.DoubleType,
    "duration": cqltypes.DurationType,
    "float": cqltypes.FloatType,
    "inet": cqltypes.InetAddressType,
    "int": cqltypes.Int32Type,
    "smallint": cqltypes.ShortType,
    "text": cqltypes.UTF8Type,
    "varchar": cqltypes.UTF8Type,
    "time": cqltypes.TimeType,
    "timestamp": cqltypes.DateType,
    "timeuuid": cqltypes.TimeUUIDType,
    "tinyint": cqltypes.ByteType,
    "uuid": cqltypes.UUIDType,
    "varint": cqltypes.IntegerType,
}

UdtLookup = Callable[[str], Any]  # UDT name -> its cqltypes class; raises KeyError


class UnknownTypeError(ValueError):
    """CQL type text that names no type (the engine turns it into Invalid)."""


def _tokenize(text: str) -> list[str]:
    tokens: list[str] = []
    word = ""
    for ch in text:
        if ch in "<>,":
            if word.strip():
                tokens.append(word.strip())
            tokens.append(ch)
            word = ""
        else:
            word += ch
    if word.strip():
        tokens.append(word.strip())
    return tokens


class _TypeReader:
    """Recursive descent over the tiny type language: name [< type, ... >]."""

    def __init__(self, text: str, udts: UdtLookup) -> None:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.udts = udts
        self.text = text

    def read(self) -> Any:
        result = self._type()
        if self.pos != len(self.tokens):
            raise UnknownTypeError(f"bad type {self.text!r}")
        return result

    def _next(self) -> str:
        if self.pos >= len(self.tokens):
            raise UnknownTypeError(f"bad type {self.text!r}")
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def _params(self) -> list[Any]:
        if self.pos < len(self.tokens) and self.tokens[self.pos] == "<":
            self.pos += 1
            params = [self._type()]
            while self._next() == ",":
                params.append(self._type())
            if self.tokens[self.pos - 1] != ">":
                raise UnknownTypeError(f"bad type {self.text!r}")
            return params
        return []

    def _type(self) -> Any:
        raw = self._next()
        name = raw[1:-1].replace('""', '"') if raw.startswith('"') else raw.lower()
        params = self._params()
        return build_type(name, params, self.udts, self.text, quoted=raw.startswith('"'))


def build_type(
    name: str, params: list[Any], udts: UdtLookup, text: str, quoted: bool = False
) -> Any:
    """The cqltypes class for a type name and its already-built parameters."""
    arity = {"list": 1, "set": 1, "map": 2, "frozen": 1}
    if not quoted and name in SCALAR_TYPES and not params:
        return SCALAR_TYPES[name]
    if not quoted and name in arity:
        if len(params) != arity[name]:
            raise UnknownTypeError(f"bad type {text!r}")
        cls = {
            "list": cqltypes.ListType,
            "set": cqltypes.SetType,
            "map": cqltypes.MapType,
            "frozen": cqltypes.FrozenType,
        }[name]
        if name == "frozen":
            inner = params[0]
            if (
                issubclass(inner, cqltypes.FrozenType | cqltypes.TupleType)
                and inner is not cqltypes.TupleType
            ):
                return inner  # tuples and UDTs are frozen already; frozen<frozen<x>> is x
            return cqltypes.FrozenType.apply_parameters(params)
        return cls.apply_parameters(params)
    if not quoted and name == "tuple":
        if not params:
            raise UnknownTypeError(f"bad type {text!r}")
        return cqltypes.TupleType.apply_parameters(params)
    if params:
        raise UnknownTypeError(f"bad type {text!r}")
    try:
        return udts(name)
    except KeyError:
        raise UnknownTypeError(f"Unknown type {name}") from None


def parse_type(text: str, udts: UdtLookup | None = None) -> Any:
    """CQL type text -> cqltypes class; UDT names resolved through `udts`."""

    def no_udts(name: str) -> Any:
        raise KeyError(name)

    return _TypeReader(text, udts or no_udts).read()


def make_udt(keyspace: str, name: str, field_names: list[str], field_types: list[Any]) -> Any:
    """A fresh UDT class (the driver's cache is keyed by keyspace and name)."""
    return cqltypes.UserType.make_udt_class(keyspace, name, tuple(field_names), tuple(field_types))


def is_frozen(cql_type: Any) -> bool:
    return issubclass(cql_type, cqltypes.FrozenType | cqltypes.TupleType)


def unfrozen(cql_type: Any) -> Any:
    """The type under a frozen<> wrapper (tuples and UDTs are returned as they are)."""
    if issubclass(cql_type, cqltypes.FrozenType):
        return cql_type.subtypes[0]
    return cql_type


def is_multicell(cql_type: Any) -> bool:
    """Non-frozen list/set/map: stored as one cell per element."""
    return issubclass(cql_type, cqltypes.ListType | cqltypes.SetType | cqltypes.MapType)


def is_udt(cql_type: Any) -> bool:
    return issubclass(cql_type, cqltypes.UserType)


def quote_name(name: str) -> str:
    plain = name.islower() and name.replace("_", "a").isalnum() and not name[0].isdigit()
    return name if plain else '"' + name.replace('"', '""') + '"'


def to_cql(cql_type: Any) -> str:
    """cqltypes class -> CQL type text as system_schema shows it."""
    if issubclass(cql_type, cqltypes.FrozenType):
        return f"frozen<{to_cql(cql_type.subtypes[0])}>"
    if issubclass(cql_type, cqltypes.UserType):
        return f"frozen<{quote_name(cql_type.typename)}>"
    if issubclass(cql_type, cqltypes.TupleType):
        return "frozen<tuple<" + ", ".join(to_cql(s) for s in cql_type.subtypes) + ">>"
    if issubclass(cql_type, cqltypes.ListType | cqltypes.SetType | cqltypes.MapType):
        return f"{cql_type.typename}<" + ", ".join(_inner_cql(s) for s in cql_type.subtypes) + ">"
    if cql_type is cqltypes.VarcharType:
        return "text"
    return str(cql_type.typename)


def _inner_cql(cql_type: Any) -> str:
    return to_cql(cql_type)


# ---------------------------------------------------------------- orderings

SortKey = Callable[[bytes], Any]


def _signed(b: bytes) -> Any:
    return int.from_bytes(b, "big", signed=True) if b else float("-inf")


def _float(b: bytes) -> Any:
    return struct.unpack(">f", b)[0] if b else float("-inf")


def _double(b: bytes) -> Any:
    return struct.unpack(">d", b)[0] if b else float("-inf")


def _raw(b: bytes) -> Any:
    return b


def _timeuuid(b: bytes) -> Any:
    if len(b) != 16:
        return (0, b)
    return (uuid.UUID(bytes=b).time, b)


def _uuid(b: bytes) -> Any:
    if len(b) != 16:
        return (0, 0, b)
    version = b[6] >> 4
    if version == 1:
        return (version, uuid.UUID(bytes=b).time, b)
    return (version, 0, b)


def _decimal(b: bytes) -> Any:
    return cqltypes.DecimalType.deserialize(b, 4) if b else float("-inf")


_SORT_KEYS: Mapping[Any, SortKey] = {
    cqltypes.Int32Type: _signed,
    cqltypes.LongType: _signed,
    cqltypes.ShortType: _signed,
    cqltypes.ByteType: _signed,
    cqltypes.IntegerType: _signed,
    cqltypes.CounterColumnType: _signed,
    cqltypes.DateType: _signed,
    cqltypes.TimeType: _signed,
    cqltypes.FloatType: _float,
    cqltypes.DoubleType: _double,
    cqltypes.DecimalType: _decimal,
    cqltypes.TimeUUIDType: _timeuuid,
    cqltypes.UUIDType: _uuid,
}


def sort_key(cql_type: Any) -> SortKey:
    """bytes -> a Python value ordered as Cassandra's comparator orders the type.

    Text, ascii, blob, inet, boolean and date (unsigned days) compare as raw
    bytes; frozen collections, tuples and UDTs are approximated by their bytes.
    """
    return _SORT_KEYS.get(cql_type, _raw)


class Desc:
    """Wraps a sort key to reverse its order (DESC clustering columns)."""

    __slots__ = ("v",)

    def __init__(self, v: Any) -> None:
        self.v = v

    def __lt__(self, other: Desc) -> bool:
        return bool(other.v < self.v)

    def __gt__(self, other: Desc) -> bool:
        return bool(other.v > self.v)

    def __le__(self, other: Desc) -> bool:
        return bool(other.v <= self.v)

    def __ge__(self, other: Desc) -> bool:
        return bool(other.v >= self.v)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Desc) and bool(self.v == other.v)

    def __hash__(self) -> int:
        return hash(self.v)


# ---------------------------------------------------------------- collection bytes


def split_collection(b: bytes) -> list[bytes]:
    """A serialised list/set (protocol v3+) -> its element bytes."""
    (n,) = struct.unpack_from(">i", b, 0)
    pos, out = 4, []
    for _ in range(n):
        (size,) = struct.unpack_from(">i", b, pos)
        pos += 4
        out.append(b[pos : pos + size])
        pos += size
    return out


def split_collection_pairs(b: bytes) -> list[tuple[bytes, bytes]]:
    (n,) = struct.unpack_from(">i", b, 0)
    pos, out = 4, []
    for _ in range(n):
        (ks,) = struct.unpack_from(">i", b, pos)
        key = b[pos + 4 : pos + 4 + ks]
        pos += 4 + ks
        (vs,) = struct.unpack_from(">i", b, pos)
        val = b[pos + 4 : pos + 4 + vs]
        pos += 4 + vs
        out.append((key, val))
    return out


def join_collection(items: list[bytes]) -> bytes:
    parts = [struct.pack(">i", len(items))]
    for item in items:
        parts.append(struct.pack(">i", len(item)))
        parts.append(item)
    return b"".join(parts)


def join_map(items: list[tuple[bytes, bytes]]) -> bytes:
    parts = [struct.pack(">i", len(items))]
    for key, val in items:
        parts.append(struct.pack(">i", len(key)))
        parts.append(key)
        parts.append(struct.pack(">i", len(val)))
        parts.append(val)
    return b"".join(parts)


# ---------------------------------------------------------------- timestamps and JSON


def parse_timestamp(text: str) -> datetime.datetime:
    """A CQL timestamp literal ('2024-01-02 03:04:05.678+0000', ISO forms) -> aware datetime."""
    cleaned = text.strip().replace(" ", "T", 1)
    if cleaned.endswith("Z"):
        cleaned = cleaned[:-1] + "+00:00"
    if len(cleaned) > 5 and cleaned[-5] in "+-" and cleaned[-3] != ":" and "T" in cleaned:
        cleaned = cleaned[:-2] + ":" + cleaned[-2:]  # +0000 -> +00:00
    try:
        parsed = datetime.datetime.fromisoformat(cleaned)
    except ValueError:
        raise ValueError(f"Unable to coerce '{text}' to a formatted date (long)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed


_JSON_INTS = (
    cqltypes.Int32Type, cqltypes.LongType, cqltypes.ShortType, cqltypes.ByteType,
    cqltypes.IntegerType, cqltypes.CounterColumnType,
)  # fmt: skip
_JSON_TEXTS = (
    cqltypes.AsciiType,
    cqltypes.UTF8Type,
    cqltypes.VarcharType,
    cqltypes.InetAddressType,
)


def to_json(value: Any, cql_type: Any) -> Any:
    """A deserialised value -> the JSON form Cassandra's toJson() gives it (Decimal kept exact)."""
    t = unfrozen(cql_type)
    if value is None:
        return None
    if t in _JSON_INTS:
        return int(value)
    if t in (cqltypes.FloatType, cqltypes.DoubleType):
        return float(value)
    if t is cqltypes.DecimalType or t is cqltypes.BooleanType:
        return value
    if t is cqltypes.BytesType:
        return "0x" + bytes(value).hex()
    if t is cqltypes.DateType:
        stamp = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        stamp = stamp.astimezone(datetime.UTC)
        return stamp.strftime("%Y-%m-%d %H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"
    if issubclass(t, cqltypes.ListType | cqltypes.SetType):
        return [to_json(v, t.subtypes[0]) for v in value]
    if issubclass(t, cqltypes.MapType):
        kt, vt = t.subtypes
        return {_json_key(k, kt): to_json(v, vt) for k, v in value.items()}
    if issubclass(t, cqltypes.UserType):
        return {
            quote_name(n): to_json(getattr(value, n, None), s)
            for n, s in zip(t.fieldnames, t.subtypes, strict=True)
        }
    if issubclass(t, cqltypes.TupleType):
        return [to_json(v, s) for v, s in zip(value, t.subtypes, strict=False)]
    return str(value)


def _json_key(key: Any, key_type: Any) -> str:
    converted = to_json(key, key_type)
    return (
        converted
        if isinstance(converted, str) and unfrozen(key_type) in _JSON_TEXTS
        else dump_json(converted)
    )


def dump_json(value: Any) -> str:
    """JSON text as Cassandra prints it: ', ' and ': ' separators, exact decimals."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return str(value)
    if isinstance(value, float):
        return json.dumps(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(
                f"{json.dumps(k, ensure_ascii=False)}: {dump_json(v)}" for k, v in value.items()
            )
            + "}"
        )
    return "[" + ", ".join(dump_json(v) for v in value) + "]"


def from_json(value: Any, cql_type: Any) -> Any:
    """A parsed JSON value -> what the type's serialiser accepts (Cassandra's fromJson rules)."""
    t = unfrozen(cql_type)
    if value is None:
        return None
    if t in _JSON_INTS:
        return int(value)
    if t in (cqltypes.FloatType, cqltypes.DoubleType):
        return float(value)
    if t is cqltypes.DecimalType:
        return Decimal(str(value))
    if t is cqltypes.BooleanType:
        return value if isinstance(value, bool) else str(value).lower() == "true"
    if t is cqltypes.BytesType:
        return bytes.fromhex(str(value)[2:])
    if t is cqltypes.DateType:
        return parse_timestamp(value) if isinstance(value, str) else int(value)
    if t in (cqltypes.UUIDType, cqltypes.TimeUUIDType):
        return uuid.UUID(str(value))
    if issubclass(t, cqltypes.ListType | cqltypes.SetType):
        return [from_json(v, t.subtypes[0]) for v in value]
    if issubclass(t, cqltypes.MapType):
        kt, vt = t.subtypes
        text_key = unfrozen(kt) in _JSON_TEXTS
        return {
            from_json(k if text_key else json.loads(k), kt): from_json(v, vt)
            for k, v in value.items()
        }
    if issubclass(t, cqltypes.UserType):
        given = {(k[1:-1] if k.startswith('"') else k.lower()): v for k, v in value.items()}
        return types_namespace(
            {n: from_json(given.get(n), s) for n, s in zip(t.fieldnames, t.subtypes, strict=True)}
        )
    if issubclass(t, cqltypes.TupleType):
        return tuple(from_json(v, s) for v, s in zip(value, t.subtypes, strict=False))
    return value


def types_namespace(fields: dict[str, Any]) -> Any:
    """An object with the UDT's fields as attributes (what UserType.serialize reads)."""
    return SimpleNamespace(**fields)
