"""Mapping files: how one Keyspaces table becomes one OpenSearch index.

A mapping file is TOML::

    [source]
    keyspace = "demo"            # required
    table = "products"           # required

    [index]
    alias = "demo-products"      # required; searches use the alias
    settings = { ... }           # merged over ks2os defaults
    mappings = { ... }           # OpenSearch mappings (dynamic, properties...)

    [document]
    id = ["sku", "shop"]         # every primary-key column, any order; default: key order
    include = ["name", "price"]  # only these columns (key columns always kept)
    exclude = ["secret"]         # never these columns
    rename = { name = "title" }  # column -> field name
    routing = "none"             # "none" | "partition"
    timestamps = "iso8601"       # "iso8601" | "epoch_millis"
    big_numbers = "string"       # "string" | "number" (decimal and varint)
    nulls = "omit"               # "omit" | "explicit"
    hook = "shop_hooks:product"  # module:function(row, document) -> body or None
    shape = "row"                # "row" | "partition" (one document per partition)
    rows_field = "rows"          # partition shape: the nested field holding the rows
    max_rows = 1000              # partition shape: live rows one document may hold

    [document.filter]            # which rows are indexed (a condition, see below)
    and = [{ column = "active", eq = true }, { column = "stock", gt = 0 }]

    [document.computed]          # fields derived from the row
    label = { concat = ["brand", "name"], separator = " " }
    month = { format_date = "updated_at", format = "%Y-%m" }
    catalog = { constant = "spring" }
    title_exact = { copy = "name" }
    words = { split = "name" }

A condition is a test of one column (`column` and one or more of `eq ne in
not_in lt lte gt gte contains is_null`) or `and = [...]`, `or = [...]`,
`not = {...}`. Literals stay as written here: `sync.shaping` types them
against the table's columns when a job starts (docs/mapping.md).

With `shape = "partition"` the rows field must be a `nested` property of
`[index.mappings.properties]`, and `max_rows` may not exceed the index's
`mapping.nested_objects.limit` (OpenSearch's cap on nested objects per
document); `sync.partitions` writes those documents.

`load_mapping` validates everything and raises `ConfigError` whose one-line
message names the file, the key and the form expected. `propose_mapping`
writes a starting file from a table's columns. The reference for users is
docs/mapping.md; `sync.mapping_check` checks a file against its table.
"""

from __future__ import annotations

import copy
import enum
import json
import math
import re
import tomllib
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from sync.errors import ConfigError

DEFAULT_SETTINGS: Mapping[str, Any] = {
    "index": {"number_of_shards": 1, "number_of_replicas": 1, "refresh_interval": "1s"}
}


class Routing(enum.Enum):
    NONE = "none"
    PARTITION = "partition"


class Timestamps(enum.Enum):
    ISO8601 = "iso8601"
    EPOCH_MILLIS = "epoch_millis"


class BigNumbers(enum.Enum):
    STRING = "string"
    NUMBER = "number"


class Nulls(enum.Enum):
    OMIT = "omit"
    EXPLICIT = "explicit"


class Shape(enum.Enum):
    ROW = "row"  # one document per row
    PARTITION = "partition"  # one document per partition, its rows nested in it


DEFAULT_ROWS_FIELD = "rows"
DEFAULT_MAX_ROWS = 1000
# OpenSearch's default `index.mapping.nested_objects.limit`: nested objects per document.
NESTED_OBJECTS_LIMIT = 10_000


@dataclass(frozen=True)
class DocumentSpec:
    """How a row becomes a document."""

    id: tuple[str, ...] | None = None  # None: the primary key in order
    include: tuple[str, ...] | None = None  # None: every column
    exclude: tuple[str, ...] = ()
    rename: Mapping[str, str] = field(default_factory=dict, hash=False)
    routing: Routing = Routing.NONE
    timestamps: Timestamps = Timestamps.ISO8601
    big_numbers: BigNumbers = BigNumbers.STRING
    nulls: Nulls = Nulls.OMIT
    filter: Condition | None = field(default=None, hash=False)  # None: every row
    computed: tuple[ComputedField, ...] = field(default=(), hash=False)
    hook: str | None = None  # "module:function", imported when a job starts
    shape: Shape = Shape.ROW
    rows_field: str = DEFAULT_ROWS_FIELD  # partition shape: the nested field of the rows
    max_rows: int = DEFAULT_MAX_ROWS  # partition shape: live rows per document, at most


# ---------------------------------------------------------- shaping specs
# What the file says, checked for form only: typing literals and naming
# columns needs the table's layout, which `sync.shaping` has when a job starts.

FILTER_TESTS = ("eq", "ne", "in", "not_in", "lt", "lte", "gt", "gte", "contains", "is_null")


@dataclass(frozen=True)
class ColumnCheck:
    """`column <op> value`: one test of one column, with the literal as written."""

    column: str
    op: str  # one of FILTER_TESTS
    key: str  # where the file says it (document.filter.and[0].gte), for errors
    value: Any = field(hash=False)


@dataclass(frozen=True)
class AllOf:
    conditions: tuple[Condition, ...]
    key: str


@dataclass(frozen=True)
class AnyOf:
    conditions: tuple[Condition, ...]
    key: str


@dataclass(frozen=True)
class Not:
    condition: Condition
    key: str


Condition = ColumnCheck | AllOf | AnyOf | Not


@dataclass(frozen=True)
class Concat:
    """The columns' text forms (nulls left out) joined by `separator`."""

    name: str
    columns: tuple[str, ...]
    separator: str = ""


@dataclass(frozen=True)
class FormatDate:
    """A timestamp or date column through `strftime(format)`, in `timezone` (default UTC)."""

    name: str
    column: str
    format: str
    timezone: str | None = None


@dataclass(frozen=True)
class Constant:
    name: str
    value: Any = field(hash=False)


@dataclass(frozen=True)
class Copy:
    """The column's document form again, under another field name."""

    name: str
    column: str


@dataclass(frozen=True)
class Split:
    """A text column's tokens: split on `separator` (default: runs of whitespace)."""

    name: str
    column: str
    separator: str | None = None


ComputedField = Concat | FormatDate | Constant | Copy | Split
COMPUTE_KINDS: Mapping[str, frozenset[str]] = {
    # kind -> the options it takes beside itself
    "concat": frozenset({"separator"}),
    "format_date": frozenset({"format", "timezone"}),
    "constant": frozenset(),
    "copy": frozenset(),
    "split": frozenset({"separator"}),
}


@dataclass(frozen=True)
class TableMapping:
    """One mapping file, validated."""

    keyspace: str
    table: str
    alias: str
    settings: Mapping[str, Any] = field(hash=False)  # already merged over the defaults
    mappings: Mapping[str, Any] = field(hash=False)
    document: DocumentSpec = field(default_factory=DocumentSpec)
    path: str = "<memory>"
    # The file's own [index.settings] (nested under "index"), without the defaults: what a
    # live index is compared with (`sync.drift`), so a setting changed by hand that the
    # file never named is left alone.
    stated_settings: Mapping[str, Any] = field(default_factory=dict, hash=False)


_SECTIONS: Mapping[str, frozenset[str]] = {
    "source": frozenset({"keyspace", "table"}),
    "index": frozenset({"alias", "settings", "mappings"}),
    "document": frozenset(
        {
            "id",
            "include",
            "exclude",
            "rename",
            "routing",
            "timestamps",
            "big_numbers",
            "nulls",
            "filter",
            "computed",
            "hook",
            "shape",
            "rows_field",
            "max_rows",
        }
    ),
}
# OpenSearch index names: lowercase, no spaces or \/*?"<>|,# and not starting with -_+.
_INDEX_NAME = re.compile(r"[a-z0-9][a-z0-9_\-.]*")
_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_HOOK_REF = re.compile(f"{_DOTTED}:{_DOTTED}")
_FIELD_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]*")


def load_mapping(path: str | Path) -> TableMapping:
    """Read and validate one mapping file."""
    where = str(path)
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read the mapping file: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{where}: not valid TOML: {exc}", hint="see https://toml.io for the syntax"
        ) from exc
    return mapping_from_dict(data, where)


def mapping_from_dict(data: Mapping[str, Any], where: str = "<memory>") -> TableMapping:
    """Validate a parsed mapping file (exposed for tests and generated files)."""
    checker = _Checker(where)
    for section in data:
        if section not in _SECTIONS:
            checker.fail(section, f"one of the sections {', '.join(sorted(_SECTIONS))}")
    source = checker.section(data, "source", required=True)
    index = checker.section(data, "index", required=True)
    document = checker.section(data, "document", required=False)
    alias = checker.string(index, "index", "alias", required=True)
    if not _INDEX_NAME.fullmatch(alias):
        checker.fail("index.alias", 'a lowercase index name such as "demo-products"')
    stated = checker.table(index, "index", "settings")
    settings = merge_settings(DEFAULT_SETTINGS, stated)
    mappings = checker.table(index, "index", "mappings")
    return TableMapping(
        keyspace=checker.string(source, "source", "keyspace", required=True),
        table=checker.string(source, "source", "table", required=True),
        alias=alias,
        settings=settings,
        mappings=mappings,
        document=_document_spec(checker, document, mappings, settings),
        path=where,
        stated_settings=merge_settings({}, stated),
    )


def _document_spec(
    checker: _Checker,
    section: Mapping[str, Any],
    mappings: Mapping[str, Any],
    settings: Mapping[str, Any],
) -> DocumentSpec:
    rename = checker.table(section, "document", "rename")
    for column, name in rename.items():
        if not isinstance(name, str) or not name:
            checker.fail(f"document.rename.{column}", "a field name string")
    include = checker.names(section, "include")
    shape = checker.choice(section, "shape", Shape, Shape.ROW)
    rows_field, max_rows = _partition_keys(checker, section, shape, settings)
    # Computed fields go where the rows' fields go: into each nested row of a partition.
    entry_mappings, entry_path = mappings, "index.mappings.properties"
    if shape is Shape.PARTITION:
        entry_mappings = _rows_mapping(checker, mappings, rows_field)
        entry_path = f"index.mappings.properties.{rows_field}.properties"
    return DocumentSpec(
        id=checker.names(section, "id"),
        include=include,
        exclude=checker.names(section, "exclude") or (),
        rename=dict(rename),
        routing=checker.choice(section, "routing", Routing, Routing.NONE),
        timestamps=checker.choice(section, "timestamps", Timestamps, Timestamps.ISO8601),
        big_numbers=checker.choice(section, "big_numbers", BigNumbers, BigNumbers.STRING),
        nulls=checker.choice(section, "nulls", Nulls, Nulls.OMIT),
        filter=None if "filter" not in section else _condition(checker, section["filter"]),
        computed=_computed_fields(
            checker, checker.table(section, "document", "computed"), entry_mappings, entry_path
        ),
        hook=_hook(checker, section.get("hook")),
        shape=shape,
        rows_field=rows_field,
        max_rows=max_rows,
    )


def _partition_keys(
    checker: _Checker, section: Mapping[str, Any], shape: Shape, settings: Mapping[str, Any]
) -> tuple[str, int]:
    """`rows_field` and `max_rows`: only for the partition shape, checked for form."""
    if shape is Shape.ROW:
        for key in ("rows_field", "max_rows"):
            if key in section:
                checker.fail(f"document.{key}", 'it only beside shape = "partition" (remove it)')
        return DEFAULT_ROWS_FIELD, DEFAULT_MAX_ROWS
    rows_field = section.get("rows_field", DEFAULT_ROWS_FIELD)
    if not isinstance(rows_field, str) or not _FIELD_NAME.fullmatch(rows_field):
        checker.fail(
            "document.rows_field", "a field name: letters, digits, _ and -, not starting with _"
        )
    max_rows = section.get("max_rows", DEFAULT_MAX_ROWS)
    if not isinstance(max_rows, int) or isinstance(max_rows, bool) or max_rows < 1:
        checker.fail("document.max_rows", "a whole number of rows, at least 1", max_rows)
    limit = _nested_objects_limit(checker, settings)
    if max_rows > limit:
        checker.fail(
            "document.max_rows",
            f"at most index.mapping.nested_objects.limit ({limit}), the nested objects "
            "OpenSearch takes in one document (raise that setting in [index.settings] first)",
            max_rows,
        )
    return rows_field, max_rows


def _nested_objects_limit(checker: _Checker, settings: Mapping[str, Any]) -> int:
    value: Any = settings.get("index", {})
    for part in ("mapping", "nested_objects", "limit"):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return NESTED_OBJECTS_LIMIT
    try:
        return int(value)
    except (TypeError, ValueError):
        checker.fail("index.settings.mapping.nested_objects.limit", "a whole number", value)


def _rows_mapping(
    checker: _Checker, mappings: Mapping[str, Any], rows_field: str
) -> dict[str, Any]:
    """The nested property the rows go in (its `dynamic` inherited): a one-line error if none."""
    properties = mappings.get("properties")
    spec = properties.get(rows_field) if isinstance(properties, Mapping) else None
    if not isinstance(spec, Mapping) or spec.get("type") != "nested":
        checker.fail(
            f"index.mappings.properties.{rows_field}",
            f'{rows_field} = {{ type = "nested", properties = {{ ... }} }}: document.shape = '
            '"partition" puts each row of a partition there as a nested object',
            spec,
        )
    return {"dynamic": spec.get("dynamic", mappings.get("dynamic")), **spec}


_CONDITION_FORM = (
    'a condition: { column = "c", eq = 1 } (tests: '
    + ", ".join(FILTER_TESTS)
    + "), { and = [...] }, { or = [...] } or { not = {...} }"
)
_COMBINATORS = ("and", "or", "not")


def _condition(checker: _Checker, value: Any, key: str = "document.filter") -> Condition:
    if not isinstance(value, Mapping) or not value:
        checker.fail(key, _CONDITION_FORM, value)
    combinators = [name for name in _COMBINATORS if name in value]
    if not combinators:
        return _column_tests(checker, value, key)
    if len(value) != 1:
        checker.fail(key, f"{combinators[0]} alone in its table (nest the others)", sorted(value))
    name = combinators[0]
    inner, inner_key = value[name], f"{key}.{name}"
    if name == "not":
        return Not(_condition(checker, inner, inner_key), inner_key)
    if not isinstance(inner, list) or not inner:
        checker.fail(inner_key, "a non-empty list of conditions", inner)
    conditions = tuple(
        _condition(checker, item, f"{inner_key}[{i}]") for i, item in enumerate(inner)
    )
    return AllOf(conditions, inner_key) if name == "and" else AnyOf(conditions, inner_key)


def _column_tests(checker: _Checker, value: Mapping[str, Any], key: str) -> Condition:
    column = value.get("column")
    if not isinstance(column, str) or not column:
        checker.fail(f"{key}.column", "a column name", column)
    for name in value:
        if name != "column" and name not in FILTER_TESTS:
            checker.fail(f"{key}.{name}", f"column or one of the tests {', '.join(FILTER_TESTS)}")
    tests = [
        _test(checker, column, name, value[name], f"{key}.{name}")
        for name in FILTER_TESTS
        if name in value
    ]
    if not tests:
        checker.fail(key, f"a test beside column: one of {', '.join(FILTER_TESTS)}")
    return tests[0] if len(tests) == 1 else AllOf(tuple(tests), key)


def _test(checker: _Checker, column: str, op: str, value: Any, key: str) -> ColumnCheck:
    if op == "is_null":
        if not isinstance(value, bool):
            checker.fail(key, "true or false", value)
    elif op in ("in", "not_in"):
        if not isinstance(value, list) or not value or not all(_is_scalar(v) for v in value):
            checker.fail(key, "a non-empty list of values", value)
        value = tuple(value)
    elif not _is_scalar(value):
        checker.fail(key, "one value (a string, number, boolean, date or time)", value)
    return ColumnCheck(column, op, key, value)


def _is_scalar(value: Any) -> bool:
    return value is not None and not isinstance(value, list | dict)


def _computed_fields(
    checker: _Checker,
    section: Mapping[str, Any],
    mappings: Mapping[str, Any],
    properties_path: str = "index.mappings.properties",
) -> tuple[ComputedField, ...]:
    strict = mappings.get("dynamic") == "strict"
    properties = mappings.get("properties")
    known = properties if isinstance(properties, Mapping) else {}
    fields = []
    for name, spec in section.items():
        key = f"document.computed.{name}"
        if not name or name.startswith("_"):
            checker.fail(key, "a field name that does not start with _ (OpenSearch's own)")
        if strict and "." not in name and name not in known:
            checker.fail(key, f"a property of that name in [{properties_path}] (dynamic is strict)")
        fields.append(_computed(checker, name, spec, key))
    return tuple(fields)


def _computed(checker: _Checker, name: str, spec: Any, key: str) -> ComputedField:
    kinds = sorted(COMPUTE_KINDS)
    if not isinstance(spec, Mapping):
        checker.fail(key, f"a table with one of {', '.join(kinds)}", spec)
    chosen = [kind for kind in kinds if kind in spec]
    if len(chosen) != 1:
        checker.fail(key, f"exactly one of {', '.join(kinds)}", sorted(spec))
    kind = chosen[0]
    for option in spec:
        if option != kind and option not in COMPUTE_KINDS[kind]:
            allowed = sorted(COMPUTE_KINDS[kind]) or ["nothing else"]
            checker.fail(f"{key}.{option}", f"for {kind}: {', '.join(allowed)}")
    value = spec[kind]
    if kind == "constant":
        problem = json_problem(value)
        if problem:
            checker.fail(
                f"{key}.constant", f"a JSON value (string, number, boolean, list, table): {problem}"
            )
        return Constant(name, value)
    if kind == "concat":
        columns = _column_list(checker, value, f"{key}.concat")
        return Concat(name, columns, _optional_text(checker, spec, "separator", key) or "")
    column = _column_name(checker, value, f"{key}.{kind}")
    if kind == "copy":
        return Copy(name, column)
    if kind == "split":
        separator = _optional_text(checker, spec, "separator", key)
        if separator == "":
            checker.fail(f"{key}.separator", "a non-empty string (leave it out to split on spaces)")
        return Split(name, column, separator)
    date_format = _optional_text(checker, spec, "format", key)
    if not date_format:
        checker.fail(f"{key}.format", 'a strftime format such as "%Y-%m-%d" (it is missing)')
    timezone = _optional_text(checker, spec, "timezone", key)
    if timezone is not None:
        _check_timezone(checker, timezone, f"{key}.timezone")
    return FormatDate(name, column, date_format, timezone)


def _column_name(checker: _Checker, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        checker.fail(key, "a column name", value)
    return value


def _column_list(checker: _Checker, value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        checker.fail(key, "a non-empty list of column names", value)
    return tuple(_column_name(checker, item, key) for item in value)


def _optional_text(checker: _Checker, spec: Mapping[str, Any], option: str, key: str) -> str | None:
    value = spec.get(option)
    if value is not None and not isinstance(value, str):
        checker.fail(f"{key}.{option}", "a string", value)
    return value


def _check_timezone(checker: _Checker, name: str, key: str) -> None:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        checker.fail(key, 'an IANA time zone such as "Europe/Paris"', name)


def _hook(checker: _Checker, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _HOOK_REF.fullmatch(value):
        checker.fail("document.hook", '"module:function", such as "shop_hooks:product"', value)
    return value


def json_problem(value: Any, where: str = "") -> str:
    """Why `value` is not JSON-ready (str, finite float, 64-bit int, bool, None, list, dict
    with str keys), naming the place; "" when it is."""
    if value is None or isinstance(value, str | bool):
        return ""
    if isinstance(value, int):
        return "" if -(2**63) <= value < 2**64 else f"{where or 'value'}: an integer beyond 64 bits"
    if isinstance(value, float):
        return "" if math.isfinite(value) else f"{where or 'value'}: {value!r} is not a JSON number"
    if isinstance(value, list):
        for i, item in enumerate(value):
            problem = json_problem(item, f"{where}[{i}]")
            if problem:
                return problem
        return ""
    if isinstance(value, dict):
        for name, item in value.items():
            if not isinstance(name, str):
                return f"{where or 'value'}: a key of type {type(name).__name__}"
            problem = json_problem(item, f"{where}.{name}" if where else name)
            if problem:
                return problem
        return ""
    return f"{where or 'value'}: a {type(value).__name__}"


class _Checker:
    """Reads one file's values, raising one-line `ConfigError`s that name the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, expected: str, got: Any = None) -> NoReturn:
        got_text = "" if got is None else f", got {got!r}"
        raise ConfigError(
            f"{self.where}: {key}: expected {expected}{got_text}",
            hint="see the mapping file format in docs/mapping.md, or `ks2os mapping generate`",
        )

    def section(self, data: Mapping[str, Any], name: str, required: bool) -> Mapping[str, Any]:
        value = data.get(name)
        if value is None:
            if required:
                self.fail(f"[{name}]", "this section to be present")
            return {}
        if not isinstance(value, Mapping):
            self.fail(f"[{name}]", "a table", value)
        for key in value:
            if key not in _SECTIONS[name]:
                self.fail(f"{name}.{key}", f"one of {', '.join(sorted(_SECTIONS[name]))}")
        return dict(value)

    def string(self, section: Mapping[str, Any], name: str, key: str, required: bool) -> str:
        value = section.get(key)
        if value is None and required:
            self.fail(f"{name}.{key}", "a non-empty string (it is missing)")
        if not isinstance(value, str) or not value:
            self.fail(f"{name}.{key}", "a non-empty string", value)
        return str(value)

    def table(self, section: Mapping[str, Any], name: str, key: str) -> dict[str, Any]:
        value = section.get(key, {})
        if not isinstance(value, Mapping):
            self.fail(f"{name}.{key}", "a table", value)
        return dict(value)

    def names(self, section: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
        value = section.get(key)
        if value is None:
            return None
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(item, str) and item for item in value)
        ):
            self.fail(f"document.{key}", "a non-empty list of column names", value)
        if len(set(value)) != len(value):
            self.fail(f"document.{key}", "column names without repeats", value)
        return tuple(value)

    def choice(
        self, section: Mapping[str, Any], key: str, kind: type[enum.Enum], default: Any
    ) -> Any:
        value = section.get(key)
        if value is None:
            return default
        allowed = [member.value for member in kind]
        if value not in allowed:
            self.fail(f"document.{key}", " or ".join(json.dumps(a) for a in allowed), value)
        return kind(value)


def merge_settings(defaults: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """User settings over defaults; dotted keys (`index.refresh_interval`) are nested first."""
    merged = _under_index(_nested(defaults))
    _deep_update(merged, _under_index(_nested(overrides)))
    return merged


def _under_index(settings: dict[str, Any]) -> dict[str, Any]:
    # OpenSearch reads `number_of_shards` and `index.number_of_shards` alike;
    # one spelling lets a user's value replace the default's.
    if not settings:
        return {}
    inner: dict[str, Any] = {}
    for key, value in settings.items():
        _deep_update(inner, value if key == "index" and isinstance(value, dict) else {key: value})
    return {"index": inner}


def _nested(settings: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in settings.items():
        parts = key.split(".")
        target = result
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        leaf = _nested(value) if isinstance(value, Mapping) else value
        if isinstance(leaf, dict) and isinstance(target.get(parts[-1]), dict):
            _deep_update(target[parts[-1]], leaf)
        else:
            target[parts[-1]] = leaf
    return result


def _deep_update(target: dict[str, Any], source: Mapping[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, Mapping) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


# ----------------------------------------------------------------- proposals

_SCALAR_FIELDS: Mapping[str, Mapping[str, Any]] = {
    "text": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
    "ascii": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
    "varchar": {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}},
    "uuid": {"type": "keyword"},
    "timeuuid": {"type": "keyword"},
    "inet": {"type": "ip"},
    "tinyint": {"type": "byte"},
    "smallint": {"type": "short"},
    "int": {"type": "integer"},
    "bigint": {"type": "long"},
    "counter": {"type": "long"},
    "varint": {"type": "keyword"},  # exact text by default (big_numbers = "string")
    "decimal": {"type": "keyword"},
    "float": {"type": "float"},
    "double": {"type": "double"},
    "boolean": {"type": "boolean"},
    "timestamp": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
    "date": {"type": "date", "format": "strict_date||epoch_millis"},
    # Documents hold time as fixed-width HH:MM:SS.fffffffff, which sorts as a keyword.
    "time": {"type": "keyword"},
    "duration": {"type": "keyword"},
    "blob": {"type": "binary"},
}


def field_for_cql_type(cql_type: str) -> dict[str, Any]:
    """The OpenSearch field a column of this CQL type gets in a proposed mapping."""
    name, args = split_cql_type(cql_type.strip())
    if name == "frozen":
        return field_for_cql_type(args[0])
    if name in ("list", "set"):
        return field_for_cql_type(args[0])  # OpenSearch fields hold arrays natively
    if name == "map":
        return {"type": "flat_object"}
    if name == "tuple":
        return {"type": "keyword"}
    scalar = _SCALAR_FIELDS.get(name)
    if scalar is not None:
        return copy.deepcopy(dict(scalar))
    # A user-defined type: its fields are not known here, so let them in dynamically.
    return {"type": "object", "dynamic": True}


def split_cql_type(text: str) -> tuple[str, list[str]]:
    """`map<text, frozen<list<int>>>` -> ("map", ["text", "frozen<list<int>>"])."""
    if "<" not in text:
        return text.lower().strip('"'), []
    name, rest = text.split("<", 1)
    inner = rest.rsplit(">", 1)[0]
    args: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(inner):
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        elif char == "," and depth == 0:
            args.append(inner[start:i].strip())
            start = i + 1
    args.append(inner[start:].strip())
    return name.strip().lower(), args


# Proposed for key columns instead of their CQL type's field: ids are matched
# exactly, never analysed as words (text), and binary fields cannot be searched.
_KEY_FIELD_OVERRIDES = {"text": "keyword", "binary": "keyword"}
_KEY_KINDS = {"partition_key": "partition key", "clustering": "clustering column"}
FIELD_TYPES_URL = "https://docs.opensearch.org/latest/mappings/supported-field-types/"


def default_alias(keyspace: str, table: str) -> str:
    """`<keyspace>-<table>` in lowercase, made a valid index name."""
    return re.sub(r"[^a-z0-9_\-]", "-", f"{keyspace}-{table}".lower()).lstrip("-_")


def proposed_field(cql_type: str, kind: str) -> dict[str, Any]:
    """The field a column of `cql_type` and `kind` (as system_schema spells it) is proposed."""
    proposed = field_for_cql_type(cql_type)
    if kind in _KEY_KINDS and proposed["type"] in _KEY_FIELD_OVERRIDES:
        return {"type": _KEY_FIELD_OVERRIDES[proposed["type"]]}
    return proposed


def propose_mapping(
    keyspace: str,
    table: str,
    columns: Sequence[tuple[str, str, str]],
    alias: str | None = None,
) -> str:
    """A starting mapping file (TOML text) for a table's `(name, cql_type, kind)` columns.

    `alias` defaults to `<keyspace>-<table>` in lowercase. Comments list the
    choices each section offers; the text loads with `load_mapping` as it is.
    """
    primary_key = [name for name, _, kind in columns if kind in _KEY_KINDS]
    others = [name for name, _, kind in columns if kind not in _KEY_KINDS]
    alias = alias or default_alias(keyspace, table)
    lines = [
        f"# Mapping of {keyspace}.{table} to OpenSearch, proposed by `ks2os mapping generate`.",
        "# Review the field types before the first backfill: they are guesses from the CQL",
        "# types. Every key is described in docs/mapping.md.",
        "",
        "[source]",
        f"keyspace = {_toml_value(keyspace)}",
        f"table = {_toml_value(table)}",
        "",
        "[index]",
        "# Searches use this alias; ks2os writes to <alias>_v<N> behind it.",
        f"alias = {_toml_value(alias)}",
        "",
        "[index.settings]",
        "# Any OpenSearch index setting, merged over the ks2os defaults:",
        *(f"# {line}" for line in _settings_lines(DEFAULT_SETTINGS)),
        "number_of_shards = 1",
        "",
        "[index.mappings]",
        '# dynamic: "strict" refuses a document with a field that has no property below',
        "# (it goes to the dead-letter store: a column added to the table later must get a",
        "# property first); true maps new fields by guessing; false keeps them unsearchable.",
        'dynamic = "strict"',
        "",
        "[index.mappings.properties]",
        "# One property per field. Common types: keyword (exact values), text (full text;",
        '# add fields = { keyword = { type = "keyword" } } to sort and aggregate too),',
        "# integer, long, double, date, boolean, ip, binary, flat_object, object, nested.",
        f"# All types: {FIELD_TYPES_URL}",
        "# Key columns are keyword (or their exact type): ids are matched exactly.",
    ]
    for name, cql_type, kind in columns:
        role = _KEY_KINDS.get(kind, "static" if kind == "static" else "")
        note = f"{cql_type}, {role}" if role else cql_type
        field_text = _toml_value(proposed_field(cql_type, kind))
        lines.append(f"{_toml_key(name)} = {field_text}  # {note}")
    lines += ["", "[document]", *_document_lines(primary_key, others), ""]
    return "\n".join(lines)


def _settings_lines(settings: Mapping[str, Any]) -> list[str]:
    index = settings.get("index", {})
    return [f"{key} = {_toml_value(value)}" for key, value in index.items()]


def _choices(kind: type[enum.Enum]) -> str:
    return " or ".join(json.dumps(member.value) for member in kind)


def _document_lines(primary_key: list[str], others: list[str]) -> list[str]:
    example = others[:2] or ["column"]
    return [
        "# The columns forming the document id, primary-key columns only (default: the",
        "# whole primary key, in order).",
        f"id = {_toml_value(primary_key)}",
        "# Only these columns go into documents (key columns always do); default: all.",
        f"# include = {_toml_value(example)}",
        "# Never these columns.",
        f"# exclude = {_toml_value(example[-1:])}",
        "# A field name for a column (its property then goes under the new name).",
        f"# rename = {{ {_toml_key(example[0])} = {_toml_value(example[0] + '_renamed')} }}",
        f"# routing: {_choices(Routing)} (a partition's rows share an OpenSearch shard).",
        f"routing = {json.dumps(Routing.NONE.value)}",
        f"# timestamps: {_choices(Timestamps)}.",
        f"timestamps = {json.dumps(Timestamps.ISO8601.value)}",
        f"# big_numbers (decimal, varint): {_choices(BigNumbers)} (a JSON number may lose",
        "# digits in OpenSearch).",
        f"big_numbers = {json.dumps(BigNumbers.STRING.value)}",
        f"# nulls: {_choices(Nulls)} (a null column is left out, or written as null).",
        f"nulls = {json.dumps(Nulls.OMIT.value)}",
        f"# shape: {_choices(Shape)} (one document per partition, its rows in a nested",
        "# property named by rows_field, at most max_rows of them: see docs/mapping.md).",
        f"shape = {json.dumps(Shape.ROW.value)}",
    ]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }" if items else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")
