"""CDC cell values decode to exactly what cassandra-driver returns for the same CQL value.

The expected values come from the driver itself: each is serialised and
deserialised by the driver's own `cassandra.cqltypes` class for the column's
type, as a CQL read would return it.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from typing import Any

import pytest
from cassandra import cqltypes
from cassandra.util import Date, Duration, OrderedMap, SortedSet, Time

from sync.errors import DecodeError
from sync.values import decode_cell

pytestmark = pytest.mark.unit

T = cqltypes._cqltypes


def driver(cql_type: Any, value: Any) -> Any:
    """What the driver returns when it reads `value` from a column of `cql_type`."""
    return cql_type.from_binary(cql_type.to_binary(value, 4), 4)


def typed(name: str, *params: Any) -> Any:
    return T[name].apply_parameters(list(params)) if params else T[name]


UUID = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")

# (cell as the emulator emits it, an alternative form the facts leave open or None,
#  the CQL type, the value written)
SCALARS: list[tuple[dict[str, Any], dict[str, Any] | None, Any, Any]] = [
    ({"asciiT": "abc"}, None, typed("ascii"), "abc"),
    ({"textT": "héllo ✓"}, None, typed("text"), "héllo ✓"),
    ({"varcharT": ""}, None, typed("varchar"), ""),
    ({"tinyintT": "-128"}, None, typed("tinyint"), -128),
    ({"smallintT": "32767"}, None, typed("smallint"), 32767),
    ({"intT": "5"}, {"intT": "+5"}, typed("int"), 5),
    ({"intT": "-5"}, None, typed("int"), -5),
    ({"bigintT": "9223372036854775807"}, None, typed("bigint"), 2**63 - 1),
    ({"counterT": "42"}, None, typed("counter"), 42),
    (
        {"varintT": "123456789012345678901234567890"},
        None,
        typed("varint"),
        123456789012345678901234567890,
    ),
    ({"floatT": "3.4028235E38"}, None, typed("float"), 3.4028235e38),
    ({"floatT": "0.1"}, None, typed("float"), 0.1),
    ({"doubleT": "-1.5E-300"}, None, typed("double"), -1.5e-300),
    ({"decimalT": "123.4500"}, None, typed("decimal"), decimal.Decimal("123.4500")),
    ({"decimalT": "-1E+3"}, None, typed("decimal"), decimal.Decimal("-1E+3")),
    ({"boolT": True}, {"boolT": "true"}, typed("boolean"), True),
    ({"boolT": False}, None, typed("boolean"), False),
    (
        {"blobT": base64.b64encode(b"\x00\xffab").decode()},
        {"blobT": b"\x00\xffab"},
        typed("blob"),
        b"\x00\xffab",
    ),
    ({"uuidT": str(UUID)}, {"uuidT": str(UUID).upper()}, typed("uuid"), UUID),
    ({"timeuuidT": str(UUID)}, None, typed("timeuuid"), UUID),
    ({"inetT": "192.168.0.1"}, None, typed("inet"), "192.168.0.1"),
    ({"inetT": "2001:db8::1"}, {"inetT": "2001:0DB8:0:0:0:0:0:1"}, typed("inet"), "2001:db8::1"),
    (
        {"timestampT": "1704164645678"},
        {"timestampT": "2024-01-02T03:04:05.678Z"},
        typed("timestamp"),
        dt.datetime(2024, 1, 2, 3, 4, 5, 678000),
    ),
    (
        {"timestampT": "-1000"},
        {"timestampT": "1970-01-01T01:59:59+02:00"},
        typed("timestamp"),
        dt.datetime(1969, 12, 31, 23, 59, 59),
    ),
    ({"dateT": "2024-01-01"}, {"dateT": "19723"}, typed("date"), Date(19723)),
    ({"dateT": "1969-12-31"}, {"dateT": "-1"}, typed("date"), Date(-1)),
    (
        {"timeT": "3723000000009"},
        {"timeT": "01:02:03.000000009"},
        typed("time"),
        Time(3723000000009),
    ),
    ({"timeT": "0"}, {"timeT": "00:00:00"}, typed("time"), Time(0)),
    (
        {"durationT": "1y2mo3w4d5h6m7s8ms9us10ns"},
        {"durationT": "P1Y2M25DT5H6M7.00800901S"},
        typed("duration"),
        Duration(14, 25, 5 * 3600 * 10**9 + 6 * 60 * 10**9 + 7 * 10**9 + 8_000_000 + 9_000 + 10),
    ),
    ({"durationT": "-1mo2d"}, {"durationT": "-P1M2D"}, typed("duration"), Duration(-1, -2, 0)),
    (
        {"durationT": "3h"},
        {"durationT": "PT3H"},
        typed("duration"),
        Duration(0, 0, 3 * 3600 * 10**9),
    ),
    ({"durationT": "2w"}, {"durationT": "P2W"}, typed("duration"), Duration(0, 14, 0)),
]


@pytest.mark.parametrize(("cell", "alternative", "cql_type", "value"), SCALARS)
def test_scalars_decode_as_the_driver_reads_them(
    cell: dict[str, Any], alternative: dict[str, Any] | None, cql_type: Any, value: Any
) -> None:
    expected = driver(cql_type, value)
    decoded = decode_cell(cell, "c")
    assert decoded == expected
    assert type(decoded) is type(expected)
    if alternative is not None:
        assert decode_cell(alternative, "c") == expected


def _cells(*values: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"value": value, "metadata": {"writeTime": "1"}} for value in values]


def test_list_set_map_and_tuple() -> None:
    list_type = typed("list", T["text"])
    assert decode_cell({"listT": _cells({"textT": "b"}, {"textT": "a"})}, "c") == driver(
        list_type, ["b", "a"]
    )
    set_type = typed("set", T["int"])
    decoded_set = decode_cell({"setT": _cells({"intT": "1"}, {"intT": "2"})}, "c")
    assert isinstance(decoded_set, SortedSet)
    assert decoded_set == driver(set_type, {1, 2})
    map_type = typed("map", T["text"], T["int"])
    entries = [
        {"key": {"textT": "a"}, "value": {"intT": "1"}},
        {"key": {"textT": "b"}, "value": {"intT": "2"}, "metadata": {}},
    ]
    decoded_map = decode_cell({"mapT": entries}, "c")
    assert isinstance(decoded_map, dict)  # equal to the driver's OrderedMapSerializedKey
    assert decoded_map == driver(map_type, {"a": 1, "b": 2})
    assert driver(map_type, {"a": 1, "b": 2}) == decoded_map
    assert decoded_map == {"a": 1, "b": 2}
    tuple_type = typed("tuple", T["int"], T["text"], T["timestamp"])
    decoded_tuple = decode_cell(
        {"tupleT": _cells({"intT": "1"}, {"textT": "x"}, {"timestampT": "0"})}, "c"
    )
    assert decoded_tuple == driver(tuple_type, (1, "x", dt.datetime(1970, 1, 1)))


def test_maps_with_unhashable_keys_are_ordered_maps() -> None:
    key_type = typed("frozen", typed("list", T["int"]))
    map_type = typed("map", key_type, T["text"])
    entries = [{"key": {"listT": _cells({"intT": "1"})}, "value": {"textT": "one"}}]
    decoded = decode_cell({"mapT": entries}, "c")
    assert isinstance(decoded, OrderedMap)
    assert decoded == driver(map_type, OrderedMap([([1], "one")]))


def test_empty_collections() -> None:
    assert decode_cell({"listT": []}, "c") == []
    assert decode_cell({"setT": []}, "c") == SortedSet()
    assert decode_cell({"mapT": []}, "c") == {}
    assert decode_cell({"udtT": {}}, "c") == ()


def test_cells_without_a_value_are_nulls() -> None:
    udt = cqltypes.UserType.make_udt_class("demo", "pair", ["a", "b"], [T["int"], T["text"]])
    decoded = decode_cell({"udtT": {"a": {"value": {"intT": "1"}}, "b": {}}}, "c")
    assert decoded == driver(udt, (1, None))
    tuple_type = typed("tuple", T["int"], T["text"])
    assert decode_cell({"tupleT": [{}, {"value": {"textT": "x"}}]}, "c") == driver(
        tuple_type, (None, "x")
    )
    assert decode_cell({"mapT": [{"key": {"textT": "k"}}]}, "c") == {"k": None}


def test_nested_frozen_collections() -> None:
    inner = typed("frozen", typed("list", T["int"]))
    outer = typed("map", T["text"], typed("frozen", typed("set", inner)))
    value = {"k": {(1, 2), (3,)}}
    expected = driver(outer, {"k": [[1, 2], [3]]})
    cell = {
        "mapT": [
            {
                "key": {"textT": "k"},
                "value": {
                    "setT": _cells(
                        {"listT": _cells({"intT": "1"}, {"intT": "2"})},
                        {"listT": _cells({"intT": "3"})},
                    )
                },
            }
        ]
    }
    assert decode_cell(cell, "c") == expected
    assert value  # documents the shape


def test_udt_matches_the_drivers_namedtuple() -> None:
    udt = cqltypes.UserType.make_udt_class(
        "demo", "address", ["street", "zip", "tags"], [T["text"], T["int"], typed("set", T["text"])]
    )
    expected = driver(udt, ("Main St", 12345, {"x"}))
    decoded = decode_cell(
        {
            "udtT": {
                "street": {"value": {"textT": "Main St"}},
                "zip": {"value": {"intT": "12345"}},
                "tags": {"value": {"setT": _cells({"textT": "x"})}},
            }
        },
        "addr",
    )
    assert decoded == expected
    assert decoded._fields == expected._fields
    assert decoded.street == "Main St"


@pytest.mark.parametrize(
    "cell",
    [
        {"intT": "12x"},
        {"intT": 5},
        {"bigintT": ""},
        {"floatT": "fast"},
        {"decimalT": "NaN"},
        {"decimalT": "1,5"},
        {"boolT": "yes"},
        {"blobT": "not base64!"},
        {"uuidT": "not-a-uuid"},
        {"inetT": "300.1.1.1"},
        {"timestampT": "yesterday"},
        {"dateT": "2024-13-01"},
        {"timeT": "86400000000000"},
        {"timeT": "25:00"},
        {"durationT": "5 minutes"},
        {"durationT": "P"},
        {"durationT": ""},
        {"listT": "not a list"},
        {"listT": ["bare"]},
        {"mapT": [{"value": {"intT": "1"}}]},
        {"udtT": []},
        {"geoT": "POINT(1 2)"},
        {},
        {"intT": "1", "textT": "x"},
    ],
)
def test_bad_cells_raise_decode_error_naming_the_column_and_value(cell: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as raised:
        decode_cell(cell, "price")
    message = str(raised.value)
    assert "'price'" in message
    for raw in cell.values():
        if isinstance(raw, str) and raw:
            assert raw in message


# --------------------------------------------- against the emulator's own renderer

ADDRESS = cqltypes.UserType.make_udt_class(
    "demo", "address2", ["street", "zip", "tags"], [T["text"], T["int"], typed("set", T["text"])]
)
EMULATED: list[tuple[Any, Any]] = [
    (T["ascii"], "a"),
    (T["text"], ""),
    (T["bigint"], -(2**63)),
    (T["counter"], 5),
    (T["int"], 2**31 - 1),
    (T["smallint"], -1),
    (T["tinyint"], 127),
    (T["varint"], -(10**40)),
    (T["decimal"], decimal.Decimal("-0.000123")),
    (T["float"], 1.1),
    (T["float"], float("inf")),
    (T["double"], 1e-300),
    (T["boolean"], True),
    (T["blob"], b""),
    (T["blob"], b"\xff\x00"),
    (T["uuid"], UUID),
    (T["timeuuid"], UUID),
    (T["inet"], "10.1.2.3"),
    (T["inet"], "fe80::1"),
    (T["timestamp"], dt.datetime(1900, 1, 1, 0, 0, 0, 1000)),
    (T["timestamp"], dt.datetime(2262, 4, 11, 23, 47, 16, 854000)),
    (T["date"], Date(0)),
    (T["date"], Date(-800_000)),
    (T["date"], Date(3_000_000)),  # beyond year 9999: rendered as a day count
    (T["time"], Time(86_399_999_999_999)),
    (T["duration"], Duration(0, 0, 0)),
    (T["duration"], Duration(-14, -3, -1)),
    (T["duration"], Duration(25, 40, 3_600_000_000_123)),
    (typed("list", T["int"]), [3, 1, 3]),
    (typed("set", T["timestamp"]), {dt.datetime(2020, 1, 1)}),
    (typed("map", T["int"], typed("frozen", typed("list", T["text"]))), {1: ["a"], 2: []}),
    (typed("tuple", T["int"], T["text"], T["boolean"]), (1, None, False)),
    (ADDRESS, ("Main", None, {"x", "y"})),
    (typed("frozen", typed("set", typed("frozen", typed("map", T["text"], T["int"])))), [{"a": 1}]),
]


@pytest.mark.parametrize(("cql_type", "value"), EMULATED)
def test_what_the_emulator_emits_decodes_to_what_the_driver_reads(
    cql_type: Any, value: Any
) -> None:
    renderer = pytest.importorskip("keyspaces_local.streams.records")._RENDERER
    serialised = cql_type.to_binary(value, 4)
    for metadata in (None, {"writeTime": "1700000000000000"}):
        cell = renderer.value(cql_type, serialised, metadata)
        assert decode_cell(cell, "c") == cql_type.from_binary(serialised, 4), cell


# ------------------------------------------------- fast paths = the general path


@pytest.mark.parametrize(
    "text",
    [
        "6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "6BA7B810-9DAD-11D1-80B4-00C04FD430C8",
        "6ba7b8109dad11d180b400c04fd430c8",
        "{6ba7b810-9dad-11d1-80b4-00c04fd430c8}",
        "urn:uuid:6ba7b810-9dad-11d1-80b4-00c04fd430c8",
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
    ],
)
def test_uuid_fast_path_builds_what_uuid_uuid_builds(text: str) -> None:
    decoded = decode_cell({"uuidT": text}, "c")
    expected = uuid.UUID(text)
    assert type(decoded) is uuid.UUID
    assert (decoded, decoded.int, decoded.is_safe, str(decoded)) == (
        expected,
        expected.int,
        expected.is_safe,
        str(expected),
    )


@pytest.mark.parametrize("text", ["6ba7b810-9dad-11d1-80b4-00c04fd430cg", "6ba7b810", "x" * 36])
def test_uuid_fast_path_rejects_what_uuid_uuid_rejects(text: str) -> None:
    with pytest.raises(DecodeError, match="'c'"):
        decode_cell({"uuidT": text}, "c")


@pytest.mark.parametrize(
    "elements",
    [
        ["b", "a", "b", "c"],
        [3, 1, 2, 1, -5],
        [],
        ["a", 1],  # mixed: SortedSet's own insertion
        [True, 1, 2],
        [decimal.Decimal("1.5"), decimal.Decimal("0.5")],
    ],
)
def test_set_fast_path_builds_what_sorted_set_builds(elements: list[Any]) -> None:
    from sync.values import _sorted_set

    built = _sorted_set(list(elements))
    expected = SortedSet(elements)
    assert type(built) is SortedSet
    assert list(built) == list(expected)
    assert built == expected


def test_set_cells_of_text_and_integers_decode_sorted_and_distinct() -> None:
    cell = {"setT": [{"value": {"intT": n}} for n in ("3", "-1", "3", "+2")]}
    decoded = decode_cell(cell, "c")
    assert list(decoded) == [-1, 2, 3]
    assert decoded == driver(typed("set", T["int"]), {3, -1, 2})


def test_map_with_repeated_keys_keeps_the_last_value_in_the_first_position() -> None:
    entries = [("b", "1"), ("a", "2"), ("b", "3")]
    cell = {"mapT": [{"key": {"textT": k}, "value": {"intT": v}} for k, v in entries]}
    decoded = decode_cell(cell, "c")
    assert list(decoded.items()) == list(dict([("b", 1), ("a", 2), ("b", 3)]).items())


def test_timestamp_fast_path_is_exact_at_the_extremes() -> None:
    for millis in (0, 1, 1767225603141, 253402300799999):
        assert decode_cell({"timestampT": str(millis)}, "c") == dt.datetime(
            1970, 1, 1
        ) + dt.timedelta(milliseconds=millis)
    with pytest.raises(DecodeError, match="'c'"):
        decode_cell({"timestampT": "9" * 30}, "c")
