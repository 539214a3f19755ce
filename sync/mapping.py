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

`load_mapping` validates everything and raises `ConfigError` whose one-line
message names the file, the key and the form expected. `propose_mapping`
writes a starting file from a table's columns.
"""

from __future__ import annotations

import copy
import enum
import json
import re
import tomllib
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


_SECTIONS: Mapping[str, frozenset[str]] = {
    "source": frozenset({"keyspace", "table"}),
    "index": frozenset({"alias", "settings", "mappings"}),
    "document": frozenset(
        {"id", "include", "exclude", "rename", "routing", "timestamps", "big_numbers", "nulls"}
    ),
}
# OpenSearch index names: lowercase, no spaces or \/*?"<>|,# and not starting with -_+.
_INDEX_NAME = re.compile(r"[a-z0-9][a-z0-9_\-.]*")


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
    settings = checker.table(index, "index", "settings")
    mappings = checker.table(index, "index", "mappings")
    return TableMapping(
        keyspace=checker.string(source, "source", "keyspace", required=True),
        table=checker.string(source, "source", "table", required=True),
        alias=alias,
        settings=merge_settings(DEFAULT_SETTINGS, settings),
        mappings=mappings,
        document=_document_spec(checker, document),
        path=where,
    )


def _document_spec(checker: _Checker, section: Mapping[str, Any]) -> DocumentSpec:
    rename = checker.table(section, "document", "rename")
    for column, name in rename.items():
        if not isinstance(name, str) or not name:
            checker.fail(f"document.rename.{column}", "a field name string")
    include = checker.names(section, "include")
    return DocumentSpec(
        id=checker.names(section, "id"),
        include=include,
        exclude=checker.names(section, "exclude") or (),
        rename=dict(rename),
        routing=checker.choice(section, "routing", Routing, Routing.NONE),
        timestamps=checker.choice(section, "timestamps", Timestamps, Timestamps.ISO8601),
        big_numbers=checker.choice(section, "big_numbers", BigNumbers, BigNumbers.STRING),
        nulls=checker.choice(section, "nulls", Nulls, Nulls.OMIT),
    )


class _Checker:
    """Reads one file's values, raising one-line `ConfigError`s that name the key."""

    def __init__(self, where: str) -> None:
        self.where = where

    def fail(self, key: str, expected: str, got: Any = None) -> NoReturn:
        got_text = "" if got is None else f", got {got!r}"
        raise ConfigError(
            f"{self.where}: {key}: expected {expected}{got_text}",
            hint="see the mapping file format in sync/mapping.py or `ks2os mapping generate`",
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
    name, args = _split_type(cql_type.strip())
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


def _split_type(text: str) -> tuple[str, list[str]]:
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


def propose_mapping(
    keyspace: str,
    table: str,
    columns: Sequence[tuple[str, str, str]],
    alias: str | None = None,
) -> str:
    """A starting mapping file (TOML text) for a table's `(name, cql_type, kind)` columns.

    `alias` defaults to `<keyspace>-<table>` in lowercase.
    """
    key_kinds = ("partition_key", "clustering")
    primary_key = [name for name, _, kind in columns if kind in key_kinds]
    if not alias:
        alias = re.sub(r"[^a-z0-9_\-]", "-", f"{keyspace}-{table}".lower()).lstrip("-_")
    lines = [
        f"# Proposed by ks2os for {keyspace}.{table}: review the field types before use.",
        "",
        "[source]",
        f"keyspace = {_toml_value(keyspace)}",
        f"table = {_toml_value(table)}",
        "",
        "[index]",
        f"alias = {_toml_value(alias)}",
        "",
        "[index.settings]",
        "number_of_shards = 1",
        "",
        "[index.mappings]",
        'dynamic = "strict"',
        "",
        "[index.mappings.properties]",
    ]
    for name, cql_type, _kind in columns:
        lines.append(f"{_toml_key(name)} = {_toml_value(field_for_cql_type(cql_type))}")
    lines += [
        "",
        "[document]",
        f"id = {_toml_value(primary_key)}",
        'routing = "none"',
        'timestamps = "iso8601"',
        'big_numbers = "string"',
        'nulls = "omit"',
        "",
    ]
    return "\n".join(lines)


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
