"""One row of every CQL type, and what docs/mapping.md says shaping makes of it.

Shared by the pure document tests (the row as cassandra-driver returns it,
put through the driver's own serialisers) and the end-to-end shaping test
(the row written over CQL, read back by the scan and the stream). Counters
are left out: Keyspaces keeps them in tables of their own.

Per column: its CQL type, the value written, what a hook receives (the
Python type, `namedtuple` for a UDT and `Mapping` for a map, the
documented families), its text form (what `concat` joins) and its document
form (what `copy` and the column's own field show, under the default
encodings).
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from collections import namedtuple
from collections.abc import Mapping
from typing import Any

from cassandra import cqltypes
from cassandra.util import Date, Duration, OrderedMap, SortedSet, Time

from sync.schema import TableLayout

T = cqltypes._cqltypes
ADDRESS_FIELDS = ("street", "zip")
Address = namedtuple("Address", ADDRESS_FIELDS)
UID = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")  # version 1: a timeuuid too
UID4 = uuid.UUID("0b9f4ed7-3cc4-4b69-a2a4-1f32a01e9e52")
TS = dt.datetime(2024, 1, 2, 3, 4, 5, 678000)


def _of(name: str, *params: Any) -> Any:
    return T[name].apply_parameters(list(params))


ADDRESS_TYPE = cqltypes.UserType.make_udt_class(
    "demo", "address", list(ADDRESS_FIELDS), [T["text"], T["int"]]
)

# name -> (CQL type, driver class, value written, hook receives, text form, document form)
COLUMNS: dict[str, tuple[str, Any, Any, str, str, Any]] = {
    "k": ("int", T["int"], 1, "int", "1", 1),
    "a_ascii": ("ascii", T["ascii"], "plain", "str", "plain", "plain"),
    "a_bigint": ("bigint", T["bigint"], -(2**63), "int", str(-(2**63)), -(2**63)),
    "a_blob": (
        "blob",
        T["blob"],
        b"\x00\x01",
        "bytes",
        "0x0001",
        base64.b64encode(b"\x00\x01").decode(),
    ),
    "a_boolean": ("boolean", T["boolean"], False, "bool", "false", False),
    "a_date": ("date", T["date"], Date(19723), "Date", "2024-01-01", "2024-01-01"),
    "a_decimal": ("decimal", T["decimal"], decimal.Decimal("0.10"), "Decimal", "0.10", "0.10"),
    "a_double": ("double", T["double"], 2.5, "float", "2.5", 2.5),
    "a_duration": (
        "duration",
        T["duration"],
        Duration(1, 2, 3),
        "Duration",
        "P1M2DT0.000000003S",
        "P1M2DT0.000000003S",
    ),
    "a_float": ("float", T["float"], 1.5, "float", "1.5", 1.5),
    "a_inet": ("inet", T["inet"], "::ffff:1.2.3.4", "str", "::ffff:1.2.3.4", "::ffff:1.2.3.4"),
    "a_int": ("int", T["int"], 7, "int", "7", 7),
    "a_smallint": ("smallint", T["smallint"], -3, "int", "-3", -3),
    "a_text": (
        "text",
        T["text"],
        "héllo big  world",
        "str",
        "héllo big  world",
        "héllo big  world",
    ),
    "a_time": (
        "time",
        T["time"],
        Time(3723000000009),
        "Time",
        "01:02:03.000000009",
        "01:02:03.000000009",
    ),
    "a_timestamp": (
        "timestamp",
        T["timestamp"],
        TS,
        "datetime",
        "2024-01-02T03:04:05.678Z",
        "2024-01-02T03:04:05.678Z",
    ),
    "a_timeuuid": ("timeuuid", T["timeuuid"], UID, "UUID", str(UID), str(UID)),
    "a_tinyint": ("tinyint", T["tinyint"], 1, "int", "1", 1),
    "a_uuid": ("uuid", T["uuid"], UID4, "UUID", str(UID4), str(UID4)),
    "a_varchar": ("varchar", T["varchar"], "a, b,,c", "str", "a, b,,c", "a, b,,c"),
    "a_varint": ("varint", T["varint"], 10**30, "int", str(10**30), str(10**30)),
    "a_list": (
        "list<text>",
        _of("list", T["text"]),
        ["b", "a", "b"],
        "list",
        '["b","a","b"]',
        ["b", "a", "b"],
    ),
    "a_set": ("set<int>", _of("set", T["int"]), SortedSet([3, 1]), "SortedSet", "[1,3]", [1, 3]),
    "a_map": (
        "map<text, int>",
        _of("map", T["text"], T["int"]),
        OrderedMap([("a", 1), ("b", 2)]),
        "Mapping",
        '{"a":1,"b":2}',
        {"a": 1, "b": 2},
    ),
    "a_tuple": (
        "tuple<int, text>",
        _of("tuple", T["int"], T["text"]),
        (1, "x"),
        "tuple",
        '[1,"x"]',
        [1, "x"],
    ),
    "a_udt": (
        "frozen<address>",
        ADDRESS_TYPE,
        Address("Main", 1),
        "namedtuple",
        '{"street":"Main","zip":1}',
        {"street": "Main", "zip": 1},
    ),
}

TABLE = TableLayout("demo", "every", ("k",), (), (), {name: c[0] for name, c in COLUMNS.items()})


def create_statements(keyspace: str) -> list[str]:
    """The type and the table, over CQL, with CDC on."""
    columns = ", ".join(f'"{name}" {c[0]}' for name, c in COLUMNS.items())
    return [
        f'CREATE TYPE "{keyspace}"."address" (street text, zip int)',
        f'CREATE TABLE "{keyspace}"."every" ({columns}, PRIMARY KEY ("k")) WITH cdc = true '
        "AND CUSTOM_PROPERTIES = {'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}",
    ]


def insert_statement(keyspace: str) -> str:
    names = list(COLUMNS)
    quoted = ", ".join(f'"{name}"' for name in names)
    return f'INSERT INTO "{keyspace}"."every" ({quoted}) VALUES ({", ".join("?" * len(names))})'


def written(k: int = 1) -> list[Any]:
    """The values to bind to `insert_statement`, for row `k`."""
    return [k, *(c[2] for name, c in COLUMNS.items() if name != "k")]


def driver_row(k: int = 1) -> dict[str, Any]:
    """The row as cassandra-driver returns it: each value through the driver's own codec."""
    values = dict(zip(COLUMNS, written(k), strict=True))
    return {
        name: c[1].from_binary(c[1].to_binary(values[name], 4), 4) for name, c in COLUMNS.items()
    }


# The mapping the every-type tests use: each column copied, each column's text, and
# one of each other computed field; the hook reports what it received.
COMPUTED: dict[str, Any] = {
    **{f"copy_{name}": {"copy": name} for name in COLUMNS},
    **{f"text_{name}": {"concat": [name]} for name in COLUMNS},
    "joined": {"concat": ["k", "a_text", "a_int", "a_boolean"], "separator": "|"},
    "day": {"format_date": "a_timestamp", "format": "%Y-%m-%d %H:%M"},
    "day_paris": {
        "format_date": "a_timestamp",
        "format": "%Y-%m-%d %H:%M %Z",
        "timezone": "Europe/Paris",
    },
    "launch": {"format_date": "a_date", "format": "%d/%m/%Y"},
    "words": {"split": "a_text"},
    "letters": {"split": "a_varchar", "separator": ","},
    "catalog": {"constant": {"season": "spring", "tags": ["a", 1]}},
}
HOOK = "tests.sync.shaping_hooks:describe_types"


def expected_body(k: int = 1) -> dict[str, Any]:
    """The document body (without `_ks2os`) of row `k` under COMPUTED and HOOK."""
    body: dict[str, Any] = {name: c[5] for name, c in COLUMNS.items()}
    body["k"] = k
    for name, c in COLUMNS.items():
        body[f"copy_{name}"] = k if name == "k" else c[5]
        body[f"text_{name}"] = str(k) if name == "k" else c[4]
    body.update(
        {
            "joined": f"{k}|héllo big  world|7|false",
            "day": "2024-01-02 03:04",
            "day_paris": "2024-01-02 04:04 CET",
            "launch": "01/01/2024",
            "words": ["héllo", "big", "world"],
            "letters": ["a", "b", "c"],
            "catalog": {"season": "spring", "tags": ["a", 1]},
            "received": {name: c[3] for name, c in COLUMNS.items()},
        }
    )
    return body


def without_meta(source: Mapping[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in source.items() if name != "_ks2os"}
