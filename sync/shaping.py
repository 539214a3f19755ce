"""Row filters, computed fields and a Python hook: the mapping's say over what is indexed.

The mapping file states them (`document.filter`, `document.computed`,
`document.hook`; `sync.mapping` checks their form). When a job starts,
`compile_shaper` checks them against the table's layout — the columns exist
and are not static, each literal fits its column's CQL type, the hook
imports and takes `(row, document)` — and raises a one-line `ConfigError`
naming the key otherwise. What it returns, a `Shaper`, decides one row at a
time and keeps no state:

    row (driver-native values, null columns absent)
      -> matches(row)            False: not indexed (a tombstone at the change's version)
      -> finish(row, document)   computed fields added to the document the mapping
                                 built, then the hook: the body, or None (not indexed)

`sync.documents.DocumentBuilder` runs it for every upsert, so every job that
writes through the builder (backfill, follow) indexes the same rows the same
way; a partition shape can run it once per clustering row.

Static columns. A static change arrives as a record of its own and the writer
merges it into the partition's rows later (`sync.statics`). A filter or a
computed field over a static column would need every row of the partition
re-evaluated at each static change, including rows the index holds only as
tombstones because the filter left them out, so both are refused. The hook
may run on such tables, but it sees the row without its static columns (a
snapshot row carries them, a stream row record does not: with them, one row
state could give two bodies) and the writer adds the partition's statics to
whatever it returns.

Literals are compared in one normal form per type: timestamps as epoch
milliseconds (the driver's datetimes can sit a microsecond off), dates as
days, times as nanoseconds, inet addresses as `ipaddress` objects, float
literals rounded through 32 bits for `float` columns as the driver does.
"""

from __future__ import annotations

import copy
import datetime as dt
import decimal
import importlib
import importlib.machinery
import importlib.util
import inspect
import ipaddress
import math
import operator
import struct
import sys
import uuid
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType, ModuleType
from typing import Any, NoReturn, Protocol

from cassandra.util import Date, Time

from sync.errors import ConfigError, DecodeError, DocumentError
from sync.mapping import (
    AllOf,
    ColumnCheck,
    ComputedField,
    Concat,
    Condition,
    Constant,
    Copy,
    DocumentSpec,
    FormatDate,
    Not,
    Split,
    json_problem,
    split_cql_type,
)
from sync.schema import TableLayout
from sync.values import decode_cell

Row = Mapping[str, Any]
RowPredicate = Callable[[Row], bool]
HookFunction = Callable[[Row, dict[str, Any]], Any]

_EPOCH = dt.datetime(1970, 1, 1)
_ONE_MS = dt.timedelta(milliseconds=1)
_HINT = "see docs/mapping.md"


class ValueForms(Protocol):
    """The document's value forms, which only the builder knows (they follow the mapping)."""

    def text(self, value: Any) -> str:
        """The canonical text of a value (as in document ids)."""
        ...

    def field(self, column: str, value: Any) -> Any:
        """The value as the column's own document field shows it."""
        ...


# ------------------------------------------------------------ typed literals


class _Mistyped(Exception):
    """A literal that does not fit its column's type; `expected` says what would."""

    def __init__(self, expected: str) -> None:
        super().__init__(expected)
        self.expected = expected


@dataclass(frozen=True)
class _Kind:
    """How values of one CQL type are compared: both sides brought to one normal form."""

    parse: Callable[[Any], Any]  # a literal from the file -> normal form, or _Mistyped
    normal: Callable[[Any], Any] | None  # a row value -> normal form; None: as it is
    ordered: bool  # lt, lte, gt and gte make sense


def _integer(bits: int | None) -> Callable[[Any], int]:
    low = -(2 ** (bits - 1)) if bits else None
    high = 2 ** (bits - 1) - 1 if bits else None

    def parse(value: Any) -> int:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if is_int and (low is None or high is None or low <= value <= high):
            return int(value)
        raise _Mistyped("an integer" if bits is None else f"an integer from {low} to {high}")

    return parse


def _number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise _Mistyped("a number")


def _float32(value: Any) -> float:
    # The driver reads a CQL float through 32 bits; 0.1 must mean the same float.
    number = _number(value)
    try:
        result: float = struct.unpack("f", struct.pack("f", number))[0]
    except OverflowError:  # some Pythons refuse to pack it, others give infinity
        result = math.inf
    if math.isinf(result):
        raise _Mistyped("a number within the 32-bit float range")
    return result


def _decimal(value: Any) -> decimal.Decimal:
    if isinstance(value, bool):
        raise _Mistyped('a decimal, written as a string ("19.90") or an integer')
    if isinstance(value, int | float | str):
        try:
            parsed = decimal.Decimal(repr(value) if isinstance(value, float) else value)
        except decimal.InvalidOperation:
            parsed = decimal.Decimal("NaN")
        if parsed.is_finite():
            return parsed
    raise _Mistyped('a decimal, written as a string ("19.90") or an integer')


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _Mistyped("true or false")


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    raise _Mistyped("a string")


def _ascii(value: Any) -> str:
    if isinstance(value, str) and value.isascii():
        return value
    raise _Mistyped("an ASCII string")


def _uuid(value: Any) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise _Mistyped('a UUID string ("6ba7b810-9dad-11d1-80b4-00c04fd430c8")')


def _timeuuid(value: Any) -> uuid.UUID:
    parsed = _uuid(value)
    if parsed.version != 1:
        raise _Mistyped("a version 1 (time-based) UUID string")
    return parsed


def epoch_ms(value: dt.datetime) -> int:
    """Milliseconds since the epoch of a naive-UTC (or aware) datetime."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return round((value - _EPOCH) / _ONE_MS)


def _timestamp(value: Any) -> int:
    expected = 'a TOML date-time, an ISO 8601 string ("2024-01-02T03:04:05Z") or epoch ms'
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError as exc:
            raise _Mistyped(expected) from exc
    if isinstance(value, dt.datetime):
        return epoch_ms(value)  # a date-time without an offset is UTC, as the driver's are
    if isinstance(value, dt.date):
        return epoch_ms(dt.datetime(value.year, value.month, value.day))
    raise _Mistyped(expected)


def _date(value: Any) -> int:
    expected = 'a TOML date or a "YYYY-MM-DD" string'
    if isinstance(value, str):
        try:
            value = dt.date.fromisoformat(value)
        except ValueError as exc:
            raise _Mistyped(expected) from exc
    if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
        days: int = Date(value).days_from_epoch
        return days
    raise _Mistyped(expected)


def _time(value: Any) -> int:
    expected = 'a TOML time or an "HH:MM:SS[.fffffffff]" string'
    if isinstance(value, dt.time | str) and not (isinstance(value, dt.time) and value.tzinfo):
        try:
            nanos: int = Time(value).nanosecond_time
            return nanos
        except ValueError as exc:
            raise _Mistyped(expected) from exc
    raise _Mistyped(expected)


def _inet(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(value, str):
        try:
            return ipaddress.ip_address(value)
        except ValueError:
            pass
    raise _Mistyped('an IPv4 or IPv6 address string ("10.0.0.1")')


def _blob(value: Any) -> bytes:
    if isinstance(value, str) and value[:2].lower() == "0x":
        try:
            return bytes.fromhex(value[2:])
        except ValueError:
            pass
    raise _Mistyped('hex bytes as a string ("0xcafe")')


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return decode_cell({"durationT": value}, "literal")
        except DecodeError:
            pass
    raise _Mistyped('a duration string ("1h30m" or "PT1H30M")')


def _days(value: Any) -> int:
    days: int = value.days_from_epoch
    return days


def _nanos(value: Any) -> int:
    nanos: int = value.nanosecond_time
    return nanos


_NUMERIC = {
    "tinyint": _Kind(_integer(8), None, True),
    "smallint": _Kind(_integer(16), None, True),
    "int": _Kind(_integer(32), None, True),
    "bigint": _Kind(_integer(64), None, True),
    "counter": _Kind(_integer(64), None, True),
    "varint": _Kind(_integer(None), None, True),
    "float": _Kind(_float32, None, True),
    "double": _Kind(_number, None, True),
    "decimal": _Kind(_decimal, None, True),
}
_TEXT_TYPES = frozenset({"text", "varchar", "ascii"})
_KINDS: Mapping[str, _Kind] = {
    **_NUMERIC,
    "text": _Kind(_text, None, True),  # code-point order is CQL's UTF-8 byte order
    "varchar": _Kind(_text, None, True),
    "ascii": _Kind(_ascii, None, True),
    "boolean": _Kind(_boolean, None, False),
    "uuid": _Kind(_uuid, None, False),
    "timeuuid": _Kind(_timeuuid, None, False),
    "timestamp": _Kind(_timestamp, epoch_ms, True),
    "date": _Kind(_date, _days, True),
    "time": _Kind(_time, _nanos, True),
    "inet": _Kind(_inet, ipaddress.ip_address, False),
    "blob": _Kind(_blob, bytes, False),
    "duration": _Kind(_duration, None, False),
}
_ORDER_TESTS: Mapping[str, Callable[[Any, Any], bool]] = {
    "lt": operator.lt,
    "lte": operator.le,
    "gt": operator.gt,
    "gte": operator.ge,
}


def _base_type(cql_type: str) -> tuple[str, list[str]]:
    name, args = split_cql_type(cql_type.strip())
    while name == "frozen" and args:
        name, args = split_cql_type(args[0])
    return name, args


# ------------------------------------------------------------------ filters


@dataclass(frozen=True)
class _Place:
    """Where a mistake is: the file, for one-line errors, and the table the keys name."""

    where: str
    table: TableLayout

    def fail(self, key: str, message: str, hint: str = _HINT) -> NoReturn:
        raise ConfigError(f"{self.where}: {key}: {message}", hint=hint)

    def column_type(self, column: str, key: str, what: str) -> str:
        """The CQL type of a column a filter or computed field may use."""
        table = self.table
        if column in table.static:
            self.fail(
                key,
                f"{column!r} is a static column of {table.qualified_name}: static values arrive "
                f"as records of their own and are merged into rows later, so a {what} over them "
                "would need every row of the partition re-evaluated",
                hint="use key and regular columns here (docs/mapping.md says why)",
            )
        cql_type = table.cql_type(column)
        if cql_type is None:
            known = ", ".join(table.column_types) or "none known"
            self.fail(
                key, f"{column!r} is not a column of {table.qualified_name}", f"columns: {known}"
            )
        return cql_type

    def literal(self, kind: _Kind, value: Any, key: str, cql_type: str) -> Any:
        try:
            return kind.parse(value)
        except _Mistyped as exc:
            self.fail(
                key, f"{value!r} does not fit the column's type {cql_type}: expected {exc.expected}"
            )


def compile_filter(condition: Condition, table: TableLayout, where: str) -> RowPredicate:
    """A predicate over rows for the mapping's condition (raises `ConfigError` if it cannot be)."""
    return _predicate(condition, _Place(where, table))


def _predicate(condition: Condition, place: _Place) -> RowPredicate:
    if isinstance(condition, ColumnCheck):
        return _check(condition, place)
    if isinstance(condition, Not):
        inner = _predicate(condition.condition, place)
        return lambda row: not inner(row)
    parts = tuple(_predicate(part, place) for part in condition.conditions)
    if isinstance(condition, AllOf):
        return lambda row: all(part(row) for part in parts)
    return lambda row: any(part(row) for part in parts)


def _check(check: ColumnCheck, place: _Place) -> RowPredicate:
    column, op, key = check.column, check.op, check.key
    cql_type = place.column_type(column, key, "filter")
    if op == "is_null":
        wanted = bool(check.value)
        return lambda row: (row.get(column) is None) is wanted
    base, args = _base_type(cql_type)
    if base in ("list", "set"):
        return _contains(check, place, cql_type, args[0])
    kind = _KINDS.get(base)
    if kind is None:
        place.fail(key, f"{column!r} is of type {cql_type}: only is_null tests it")
    if op == "contains":
        place.fail(key, f"{column!r} is of type {cql_type}: contains tests list and set columns")
    if op in _ORDER_TESTS and not kind.ordered:
        place.fail(
            key,
            f"{column!r} is of type {cql_type}, which has no order: "
            "use eq, ne, in, not_in or is_null",
        )
    normal = kind.normal
    if op in ("in", "not_in"):
        members = _members(
            [place.literal(kind, v, f"{key}[{i}]", cql_type) for i, v in enumerate(check.value)]
        )
        is_in = _tester(column, normal, lambda value: value in members)
        return is_in if op == "in" else _negated(is_in)
    literal = place.literal(kind, check.value, key, cql_type)
    if op in ("eq", "ne"):
        equal = _tester(column, normal, lambda value: bool(value == literal))
        return equal if op == "eq" else _negated(equal)
    compare = _ORDER_TESTS[op]
    return _tester(column, normal, lambda value: compare(value, literal))


def _contains(check: ColumnCheck, place: _Place, cql_type: str, element_type: str) -> RowPredicate:
    column, key = check.column, check.key
    if check.op != "contains":
        place.fail(key, f"{column!r} is of type {cql_type}: only contains and is_null test it")
    kind = _KINDS.get(_base_type(element_type)[0])
    if kind is None:
        place.fail(key, f"{column!r} is of type {cql_type}: contains tests collections of scalars")
    literal = place.literal(kind, check.value, key, element_type)
    normal = kind.normal or _same

    def test(row: Row) -> bool:
        value = row.get(column)
        return value is not None and any(normal(element) == literal for element in value)

    return test


def _tester(
    column: str, normal: Callable[[Any], Any] | None, test: Callable[[Any], bool]
) -> RowPredicate:
    """`test` of the column's value in normal form; a null (absent) value passes no test."""
    if normal is None:
        return lambda row: (value := row.get(column)) is not None and test(value)
    return lambda row: (value := row.get(column)) is not None and test(normal(value))


def _negated(test: RowPredicate) -> RowPredicate:
    return lambda row: not test(row)


def _members(values: Sequence[Any]) -> frozenset[Any] | tuple[Any, ...]:
    try:
        return frozenset(values)
    except TypeError:  # a Duration does not hash; a tuple still answers `in`
        return tuple(values)


def _same(value: Any) -> Any:
    return value


# ---------------------------------------------------------- computed fields


@dataclass(frozen=True)
class _Computed:
    name: str
    compute: Callable[[Row], Any]  # None: nothing to show (every input null)

    def value(self, row: Row) -> Any:
        try:
            return self.compute(row)
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            raise DocumentError(f"computed field {self.name}: {type(exc).__name__}: {exc}") from exc


def compile_computed(
    fields: Sequence[ComputedField],
    table: TableLayout,
    where: str,
    forms: ValueForms,
    taken: Mapping[str, str] | None = None,
) -> tuple[_Computed, ...]:
    """The computed fields, checked against the table; `taken` maps document fields the
    mapping already fills to their columns (a computed field may not replace one)."""
    place = _Place(where, table)
    compiled = []
    for spec in fields:
        key = f"document.computed.{spec.name}"
        owner = (taken or {}).get(spec.name)
        if owner is not None:
            place.fail(
                key,
                f"{spec.name!r} is already the field of column {owner!r}",
                hint="name the computed field otherwise, or rename or exclude the column",
            )
        compiled.append(_Computed(spec.name, _compute(spec, place, key, forms)))
    return tuple(compiled)


def _compute(
    spec: ComputedField, place: _Place, key: str, forms: ValueForms
) -> Callable[[Row], Any]:
    if isinstance(spec, Constant):
        return _constant(spec.value)
    if isinstance(spec, Concat):
        for column in spec.columns:
            place.column_type(column, f"{key}.concat", "computed field")
        return _concat(spec.columns, spec.separator, forms.text)
    if isinstance(spec, Copy):
        place.column_type(spec.column, f"{key}.copy", "computed field")
        column, field_form = spec.column, forms.field
        return lambda row: None if (v := row.get(column)) is None else field_form(column, v)
    if isinstance(spec, Split):
        cql_type = place.column_type(spec.column, f"{key}.split", "computed field")
        if _base_type(cql_type)[0] not in _TEXT_TYPES:
            place.fail(
                f"{key}.split", f"{spec.column!r} is of type {cql_type}: split takes a text column"
            )
        return _split(spec.column, spec.separator)
    return _format_date(spec, place, key)


def _constant(value: Any) -> Callable[[Row], Any]:
    if isinstance(value, list | dict):
        # A fresh copy per document: a hook may change the one it is given.
        return lambda row: copy.deepcopy(value)
    return lambda row: value


def _concat(
    columns: tuple[str, ...], separator: str, text: Callable[[Any], str]
) -> Callable[[Row], Any]:
    def compute(row: Row) -> str | None:
        parts = [text(value) for column in columns if (value := row.get(column)) is not None]
        return separator.join(parts) if parts else None

    return compute


def _split(column: str, separator: str | None) -> Callable[[Row], Any]:
    def compute(row: Row) -> list[str] | None:
        value = row.get(column)
        if value is None:
            return None
        if separator is None:
            return str(value).split()
        return [token for part in str(value).split(separator) if (token := part.strip())]

    return compute


def _format_date(spec: FormatDate, place: _Place, key: str) -> Callable[[Row], Any]:
    cql_type = place.column_type(spec.column, f"{key}.format_date", "computed field")
    base = _base_type(cql_type)[0]
    if base not in ("timestamp", "date"):
        place.fail(
            f"{key}.format_date",
            f"{spec.column!r} is of type {cql_type}: format_date takes a timestamp or date column",
        )
    if base == "date" and spec.timezone is not None:
        place.fail(f"{key}.timezone", "a date column has no time of day to move: leave it out")
    try:
        dt.datetime(2001, 2, 3, 4, 5, 6).strftime(spec.format)
    except ValueError as exc:
        place.fail(f"{key}.format", f"{spec.format!r} is not a strftime format: {exc}")
    column, date_format = spec.column, spec.format
    if base == "date":
        return lambda row: (
            None if (v := row.get(column)) is None else v.date().strftime(date_format)
        )
    zone = zoneinfo.ZoneInfo(spec.timezone) if spec.timezone else None

    def compute(row: Row) -> str | None:
        value = row.get(column)
        if value is None:
            return None
        if zone is not None:
            aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
            value = aware.astimezone(zone)
        formatted: str = value.strftime(date_format)
        return formatted

    return compute


# --------------------------------------------------------------------- hook


@dataclass(frozen=True)
class Hook:
    """The mapping's `module:function`, called as `function(row, document)`."""

    name: str
    function: HookFunction

    def __call__(self, row: Row, document: dict[str, Any]) -> dict[str, Any] | None:
        """The hook's body (checked to be JSON-ready) or None; `DocumentError` otherwise."""
        try:
            body = self.function(row, document)
        except Exception as exc:  # any failure of user code is this change's bad luck alone
            message = " ".join(str(exc).split())
            raise DocumentError(f"hook {self.name} raised {type(exc).__name__}: {message}") from exc
        if body is None:
            return None
        if not isinstance(body, dict):
            raise DocumentError(
                f"hook {self.name} returned a {type(body).__name__}, not a dict (the document "
                "body) or None"
            )
        problem = json_problem(body)
        if problem:
            raise DocumentError(
                f"hook {self.name} returned a body that is not JSON-ready at {problem} "
                "(use str, int, float, bool, None, list and dict with str keys)"
            )
        return body


def load_hook(reference: str, where: str, search_dir: Path | None = None) -> Hook:
    """Import `module:function` (from sys.path, else from `search_dir`) and check it is callable
    with `(row, document)`; a `ConfigError` naming `document.hook` otherwise."""
    module_name, _, attribute = reference.partition(":")
    key = "document.hook"
    try:
        module = _import(module_name, search_dir)
    except Exception as exc:  # the module's own code may fail any way while it loads
        raise ConfigError(
            f"{where}: {key}: cannot import {module_name!r}: {type(exc).__name__}: "
            + " ".join(str(exc).split()),
            hint="put the module on PYTHONPATH or beside the mapping file",
        ) from exc
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(
                f"{where}: {key}: {module_name!r} has no attribute {attribute!r}",
                hint="name a function defined in that module",
            )
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(
            f"{where}: {key}: {reference} is not a function but a {type(target).__name__} value",
            hint="name a function taking (row, document)",
        )
    _check_arguments(target, reference, where)
    return Hook(reference, target)


def _check_arguments(function: Callable[..., Any], reference: str, where: str) -> None:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return  # some builtins have no signature to read; a wrong call dead-letters
    try:
        signature.bind(None, None)
    except TypeError as exc:
        raise ConfigError(
            f"{where}: document.hook: {reference} must take two arguments (row, document): {exc}",
            hint="def hook(row, document): return document",
        ) from exc


def _import(name: str, search_dir: Path | None) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        top = name.split(".")[0]
        # Only the hook's own module is looked for beside the mapping file; a module
        # it imports and lacks is the hook's problem, reported as it is.
        if search_dir is None or exc.name != top:
            raise
        spec = importlib.machinery.PathFinder.find_spec(top, [str(search_dir)])
        if spec is None or spec.loader is None:
            raise
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[top]
        raise
    return importlib.import_module(name)


# ------------------------------------------------------------------- shaper


@dataclass(frozen=True)
class Shaper:
    """One table's filter, computed fields and hook, compiled; see the module docstring."""

    row_filter: RowPredicate | None = None
    computed: tuple[_Computed, ...] = ()
    hook: Hook | None = None
    explicit_nulls: bool = False

    def matches(self, row: Row) -> bool:
        """Is the row indexed, as far as the filter says?"""
        if self.row_filter is None:
            return True
        try:
            return self.row_filter(row)
        except (TypeError, ValueError, OverflowError, AttributeError) as exc:
            # A value of another type than the column's: bad input of this change.
            raise DocumentError(
                f"the filter cannot test this row: {type(exc).__name__}: {exc}"
            ) from exc

    def finish(self, row: Row, document: dict[str, Any]) -> dict[str, Any] | None:
        """The document with its computed fields, through the hook; None: not indexed.

        `document` is what the mapping made of the row (JSON-ready values); it
        is changed in place and handed to the hook, which may return it.
        """
        explicit_nulls = self.explicit_nulls
        for computed in self.computed:
            value = computed.value(row)
            if value is not None or explicit_nulls:
                document[computed.name] = value
        if self.hook is None:
            return document
        return self.hook(MappingProxyType(dict(row)), document)


def compile_shaper(
    spec: DocumentSpec,
    table: TableLayout,
    where: str,
    forms: ValueForms,
    taken: Mapping[str, str] | None = None,
    explicit_nulls: bool = False,
) -> Shaper | None:
    """The mapping's filter, computed fields and hook for `table`; None when it has none.

    `where` is the mapping file's path: a hook module is also looked for beside it.
    """
    if spec.filter is None and not spec.computed and spec.hook is None:
        return None
    search_dir = Path(where).resolve().parent if Path(where).is_file() else None
    return Shaper(
        row_filter=None if spec.filter is None else compile_filter(spec.filter, table, where),
        computed=compile_computed(spec.computed, table, where, forms, taken),
        hook=None if spec.hook is None else load_hook(spec.hook, where, search_dir),
        explicit_nulls=explicit_nulls,
    )
