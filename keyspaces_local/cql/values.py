"""CQL terms as values: literals, bind markers, collection and UDT literals, time functions.

`to_bytes` gives a term's serialised value for a receiver type (checking the
size of bound values of fixed-size types), `to_python` the Python value the
driver's serialisers take, `to_int` an integer such as a LIMIT, TTL,
timestamp or token, and `call_function` the value of now(), uuid(),
currentTimestamp() and the other time functions at the statement's time.
"""

from __future__ import annotations

import datetime
import types as pytypes
import uuid
from decimal import Decimal
from typing import Any

from cassandra import cqltypes, util

from keyspaces_local import types
from keyspaces_local.cql import parser as p
from keyspaces_local.cql.api import Invalid
from keyspaces_local.cql.state import Ctx

LONG, INT32, BOOL = cqltypes.LongType, cqltypes.Int32Type, cqltypes.BooleanType
# Bound values of these types must have exactly this many bytes (or none).
FIXED_SIZES = {
    cqltypes.Int32Type: 4,
    cqltypes.LongType: 8,
    cqltypes.ShortType: 2,
    cqltypes.ByteType: 1,
    cqltypes.BooleanType: 1,
    cqltypes.DoubleType: 8,
    cqltypes.FloatType: 4,
    cqltypes.DateType: 8,
    cqltypes.UUIDType: 16,
    cqltypes.TimeUUIDType: 16,
    cqltypes.SimpleDateType: 4,
    cqltypes.TimeType: 8,
    cqltypes.CounterColumnType: 8,
}


def to_bytes(term: Any, cql_type: Any, ctx: Ctx) -> bytes | None:
    """A term's serialised value for a receiver of `cql_type`."""
    if isinstance(term, p.Bind):
        if term.index >= len(ctx.values):
            raise Invalid(
                f"There were {len(ctx.values)} markers(?) in CQL but more values are needed"
            )
        raw = ctx.values[term.index]
        size = FIXED_SIZES.get(cql_type)
        if raw is not None and size is not None and len(raw) not in (0, size):
            raise Invalid(
                f"Expected {size} or 0 byte value for {types.to_cql(cql_type)} ({len(raw)})"
            )
        return raw
    value = to_python(term, cql_type, ctx)
    if value is None:
        return None
    try:
        return bytes(cql_type.to_binary(value, 4))
    except Exception as exc:  # the driver's serialisers raise many kinds
        raise Invalid(f"Invalid value for type {types.to_cql(cql_type)}: {exc}") from None


def to_python(term: Any, cql_type: Any, ctx: Ctx) -> Any:
    """A term as the Python value cqltypes serialises for `cql_type`."""
    t = types.unfrozen(cql_type)
    if isinstance(term, p.Bind):
        raw = to_bytes(term, cql_type, ctx)
        return None if raw is None else cql_type.from_binary(raw, 4)
    if isinstance(term, p.Literal):
        return _coerce_literal(term, t)
    if isinstance(term, p.FuncCall):
        return call_function(term, t, ctx)
    if isinstance(term, p.ListLit | p.SetLit | p.MapLit | p.TupleLit | p.UdtLit):
        return _collection(term, t, ctx)
    raise Invalid(f"Unsupported term {term}")


def _collection(term: Any, t: Any, ctx: Ctx) -> Any:
    if isinstance(term, p.MapLit) and not term.items:  # `{}` is an empty set or map
        return [] if issubclass(t, cqltypes.SetType) else {}
    if issubclass(t, cqltypes.ListType) and isinstance(term, p.ListLit):
        return [to_python(x, t.subtypes[0], ctx) for x in term.items]
    if issubclass(t, cqltypes.SetType) and isinstance(term, p.SetLit):
        values = [to_python(x, t.subtypes[0], ctx) for x in term.items]
        fn = types.sort_key(t.subtypes[0])
        unique = {bytes(t.subtypes[0].to_binary(v, 4)): v for v in values}
        return [unique[k] for k in sorted(unique, key=fn)]
    if issubclass(t, cqltypes.MapType) and isinstance(term, p.MapLit):
        kt, vt = t.subtypes
        return {to_python(k, kt, ctx): to_python(v, vt, ctx) for k, v in term.items}
    if issubclass(t, cqltypes.UserType) and isinstance(term, p.UdtLit):
        given = dict(term.fields)
        unknown = set(given) - set(t.fieldnames)
        if unknown:
            raise Invalid(
                f"Unknown field '{sorted(unknown)[0]}' in value of user defined type {t.typename}"
            )
        fields = {
            name: to_python(given[name], sub, ctx) if name in given else None
            for name, sub in zip(t.fieldnames, t.subtypes, strict=True)
        }
        return pytypes.SimpleNamespace(**fields)
    if issubclass(t, cqltypes.TupleType) and isinstance(term, p.TupleLit):
        if len(term.items) > len(t.subtypes):
            raise Invalid("Too many values in tuple literal")
        return tuple(to_python(x, sub, ctx) for x, sub in zip(term.items, t.subtypes, strict=False))
    raise Invalid(_mismatch(term, t))


_LITERAL_KINDS = {
    p.ListLit: "list",
    p.SetLit: "set",
    p.MapLit: "map",
    p.TupleLit: "tuple",
    p.UdtLit: "user type",
}


def _mismatch(term: Any, t: Any) -> str:
    """Cassandra's refusal of a literal of the wrong kind, with a hint for a known trap."""
    message = f"Invalid {_LITERAL_KINDS[type(term)]} literal for type {types.to_cql(t)}"
    if isinstance(term, p.ListLit) and issubclass(t, cqltypes.TupleType):
        # Cassandra refuses it too; the driver is what wrote a list.
        message += (
            " (cassandra-driver writes a Python tuple parameter of a simple statement as a "
            "list literal: use a prepared statement, or a tuple literal via "
            "session.encoder.mapping[tuple] = session.encoder.cql_encode_tuple)"
        )
    return message


def call_function(term: p.FuncCall, t: Any, ctx: Ctx) -> Any:
    name = term.name
    now = datetime.datetime.fromtimestamp(ctx.now_us / 1_000_000, tz=datetime.UTC)
    if name in ("now", "currenttimeuuid"):
        return util.uuid_from_time(ctx.now_us / 1_000_000)
    if name == "uuid":
        return uuid.uuid4()
    if name in ("currenttimestamp", "totimestamp"):
        return now
    if name in ("tounixtimestamp", "unixtimestampof"):
        return ctx.now_us // 1000
    if name in ("currentdate", "todate"):
        return now.date()
    if name in ("mintimeuuid", "maxtimeuuid"):
        arg = to_python(term.args[0], cqltypes.DateType, ctx)
        seconds = arg.timestamp() if isinstance(arg, datetime.datetime) else arg / 1000
        return (
            util.min_uuid_from_time(seconds)
            if name == "mintimeuuid"
            else util.max_uuid_from_time(seconds)
        )
    raise Invalid(f"Unknown function {name}")


def to_int(term: Any, cql_type: Any, ctx: Ctx, what: str) -> int | None:
    raw = to_bytes(term, cql_type, ctx)
    if raw is None:
        return None
    try:
        return int(cql_type.from_binary(raw, 4))
    except Exception:
        raise Invalid(f"Invalid value for {what}") from None


def _coerce_literal(lit: p.Literal, t: Any) -> Any:
    """A CQL literal as the Python value the receiver type's serialiser accepts."""
    value = lit.value
    if value is None:
        return None
    if t is cqltypes.DecimalType:
        return Decimal(lit.text)
    if t in (cqltypes.FloatType, cqltypes.DoubleType) and isinstance(value, int):
        return float(value)
    if t in (cqltypes.FloatType, cqltypes.DoubleType) and lit.text.lower().lstrip("-") in (
        "nan",
        "infinity",
    ):
        return float(lit.text)
    if t is cqltypes.DateType and isinstance(value, str):
        return _parse_timestamp(value)
    if t in (cqltypes.UUIDType, cqltypes.TimeUUIDType) and isinstance(value, str):
        return uuid.UUID(value)
    if t is cqltypes.BytesType and not isinstance(value, bytes):
        raise Invalid(f"Invalid literal {lit.text} for a blob")
    if t in (cqltypes.UTF8Type, cqltypes.AsciiType, cqltypes.VarcharType) and not isinstance(
        value, str
    ):
        raise Invalid(f"Invalid literal {lit.text} for type text")
    return value


def _parse_timestamp(text: str) -> datetime.datetime:
    try:
        return types.parse_timestamp(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None
