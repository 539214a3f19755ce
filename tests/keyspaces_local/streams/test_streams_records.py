"""Change-record rendering: every CQL type into the cell-value union, images per view type,
cell metadata, static-only records. Pure logic: no server."""

from __future__ import annotations

import base64
import datetime
import uuid
from decimal import Decimal
from ipaddress import ip_address
from typing import Any

import pytest
from cassandra import cqltypes
from cassandra.util import Date, Duration

from keyspaces_local.cdc import Cell, RowChange, RowImage
from keyspaces_local.schema import Column, ColumnKind, TableOptions, TableSchema, ViewType
from keyspaces_local.streams.records import ValueRenderer, build_record, format_duration

R = ValueRenderer()


def render(cql_type: Any, value: Any) -> Any:
    return R.value(cql_type, cql_type.to_binary(value, 4), None)


@pytest.mark.parametrize(
    ("cql_type", "value", "expected"),
    [
        (cqltypes.AsciiType, "abc", {"asciiT": "abc"}),
        (cqltypes.UTF8Type, "zoë", {"textT": "zoë"}),
        (cqltypes.VarcharType, "v", {"varcharT": "v"}),
        (cqltypes.LongType, -(2**63), {"bigintT": "-9223372036854775808"}),
        (cqltypes.CounterColumnType, 7, {"counterT": "7"}),
        (cqltypes.Int32Type, -5, {"intT": "-5"}),
        (cqltypes.ShortType, 300, {"smallintT": "300"}),
        (cqltypes.ByteType, -1, {"tinyintT": "-1"}),
        (cqltypes.IntegerType, 10**30 + 1, {"varintT": str(10**30 + 1)}),
        (cqltypes.DecimalType, Decimal("-12.3400"), {"decimalT": "-12.3400"}),
        (cqltypes.FloatType, 1.5, {"floatT": "1.5"}),
        (cqltypes.DoubleType, 0.1, {"doubleT": "0.1"}),
        (cqltypes.BooleanType, True, {"boolT": True}),
        (cqltypes.BooleanType, False, {"boolT": False}),
        (cqltypes.BytesType, b"\x00\xff", {"blobT": base64.b64encode(b"\x00\xff").decode()}),
        (
            cqltypes.UUIDType,
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            {"uuidT": "12345678-1234-5678-1234-567812345678"},
        ),
        (
            cqltypes.TimeUUIDType,
            uuid.UUID("A0EEBC99-9C0B-11EF-8000-000000000001"),
            {"timeuuidT": "a0eebc99-9c0b-11ef-8000-000000000001"},
        ),
        (cqltypes.InetAddressType, "10.1.2.3", {"inetT": "10.1.2.3"}),
        (cqltypes.InetAddressType, "::1", {"inetT": str(ip_address("::1"))}),
        (
            cqltypes.DateType,
            datetime.datetime(2024, 1, 2, 3, 4, 5, 678000),
            {"timestampT": "1704164645678"},
        ),
        (cqltypes.SimpleDateType, datetime.date(2024, 1, 1), {"dateT": "2024-01-01"}),
        (cqltypes.SimpleDateType, datetime.date(1969, 12, 31), {"dateT": "1969-12-31"}),
        (cqltypes.TimeType, datetime.time(1, 2, 3, 4), {"timeT": "3723000004000"}),
        (
            cqltypes.DurationType,
            Duration(14, 2, 3_723_004_005_006),
            {"durationT": "1y2mo2d1h2m3s4ms5us6ns"},
        ),
    ],
)
def test_scalar_text_forms(cql_type: Any, value: Any, expected: Any) -> None:
    assert render(cql_type, value) == expected


@pytest.mark.parametrize(
    ("months", "days", "ns", "text"),
    [
        (0, 0, 0, "0s"),
        (1, 2, 0, "1mo2d"),
        (0, 0, 1_000, "1us"),
        (-1, -2, -3, "-1mo2d3ns"),
        (0, 0, 90 * 60 * 10**9, "1h30m"),
    ],
)
def test_duration_is_cassandras_text_form(months: int, days: int, ns: int, text: str) -> None:
    assert format_duration(months, days, ns) == text


def test_collections_and_nesting() -> None:
    text, int_ = cqltypes.UTF8Type, cqltypes.Int32Type
    lst = cqltypes.ListType.apply_parameters([int_])
    assert render(lst, [3, 1]) == {"listT": [{"value": {"intT": "3"}}, {"value": {"intT": "1"}}]}
    st = cqltypes.SetType.apply_parameters([text])
    assert render(st, {"a"}) == {"setT": [{"value": {"textT": "a"}}]}
    mp = cqltypes.MapType.apply_parameters([text, int_])
    assert render(mp, {"k": 1}) == {"mapT": [{"key": {"textT": "k"}, "value": {"intT": "1"}}]}
    tup = cqltypes.TupleType.apply_parameters([int_, text])
    assert render(tup, (1, None)) == {"tupleT": [{"value": {"intT": "1"}}, {}]}
    udt = cqltypes.UserType.make_udt_class("ks", "addr", ("street", "zip"), (text, int_))
    assert render(udt, ("Main", None)) == {
        "udtT": {"street": {"value": {"textT": "Main"}}, "zip": {}}
    }
    frozen_list = cqltypes.FrozenType.apply_parameters([lst])
    nested = cqltypes.MapType.apply_parameters([text, frozen_list])
    assert render(nested, {"x": [7]}) == {
        "mapT": [{"key": {"textT": "x"}, "value": {"listT": [{"value": {"intT": "7"}}]}}]
    }
    assert render(frozen_list, []) == {"listT": []}


def test_element_metadata_only_for_non_frozen_collections() -> None:
    meta = {"writeTime": "5"}
    lst = cqltypes.ListType.apply_parameters([cqltypes.Int32Type])
    b = lst.to_binary([1], 4)
    assert R.value(lst, b, meta) == {"listT": [{"value": {"intT": "1"}, "metadata": meta}]}
    frozen = cqltypes.FrozenType.apply_parameters([lst])
    assert R.value(frozen, b, meta) == {"listT": [{"value": {"intT": "1"}}]}


def _table(view: ViewType, cst: bool = False) -> TableSchema:
    columns = [
        Column("pk", cqltypes.UTF8Type, ColumnKind.PARTITION_KEY),
        Column("ck", cqltypes.Int32Type, ColumnKind.CLUSTERING),
        Column("v", cqltypes.UTF8Type, ColumnKind.REGULAR),
        Column("s", cqltypes.UTF8Type, ColumnKind.STATIC),
    ]
    opts = TableOptions(cdc_enabled=True, view_type=view, client_side_timestamps=cst)
    return TableSchema("ks", "t", {c.name: c for c in columns}, opts)


def _cell(t: Any, v: Any, wt: int = 1_700_000_000_000_000, exp: int | None = None) -> Cell:
    return Cell(t.to_binary(v, 4), wt, exp)


def _row(v: str, exp: int | None = None) -> RowImage:
    cells = {
        "pk": _cell(cqltypes.UTF8Type, "p"),
        "ck": _cell(cqltypes.Int32Type, 1),
        "v": _cell(cqltypes.UTF8Type, v, exp=exp),
    }
    return RowImage(cells, {}, exp)


def _change(table: TableSchema, old: RowImage | None, new: RowImage | None) -> RowChange:
    return RowChange(table, 42, (b"p",), (cqltypes.Int32Type.to_binary(1, 4),), old, new, "USER", 0)


@pytest.mark.parametrize(
    ("view", "has_new", "has_old"),
    [
        (ViewType.NEW_AND_OLD_IMAGES, True, True),
        (ViewType.NEW_IMAGE, True, False),
        (ViewType.OLD_IMAGE, False, True),
        (ViewType.KEYS_ONLY, False, False),
    ],
)
def test_images_per_view_type(view: ViewType, has_new: bool, has_old: bool) -> None:
    record = build_record(_change(_table(view), _row("a"), _row("b")), view, 1_700_000_000_123)
    assert record["partitionKeys"] == {"pk": {"textT": "p"}}
    assert record["clusteringKeys"] == {"ck": {"intT": "1"}}
    assert record["createdAt"] == 1_700_000_000.123
    assert record["eventVersion"] == "1.1" and record["origin"] == "USER"
    assert ("newImage" in record) is has_new
    assert ("oldImage" in record) is has_old
    if has_new:
        # key columns repeat in valueCells (facts §5: assume yes)
        assert record["newImage"]["valueCells"]["v"] == {"value": {"textT": "b"}}
        assert record["newImage"]["valueCells"]["pk"] == {"value": {"textT": "p"}}


def test_insert_and_delete_shapes() -> None:
    table = _table(ViewType.NEW_AND_OLD_IMAGES)
    insert = build_record(_change(table, None, _row("a")), table.options.view_type, 0)
    assert "newImage" in insert and "oldImage" not in insert
    delete = build_record(_change(table, _row("a"), None), table.options.view_type, 0)
    assert "oldImage" in delete and "newImage" not in delete


def test_write_time_only_with_client_side_timestamps() -> None:
    off = build_record(_change(_table(ViewType.NEW_IMAGE), None, _row("a")), ViewType.NEW_IMAGE, 0)
    assert "metadata" not in off["newImage"]["valueCells"]["v"]
    on_table = _table(ViewType.NEW_IMAGE, cst=True)
    on = build_record(_change(on_table, None, _row("a")), ViewType.NEW_IMAGE, 0)
    assert on["newImage"]["valueCells"]["v"]["metadata"] == {"writeTime": "1700000000000000"}


def test_expiration_time_on_cells_and_row() -> None:
    table = _table(ViewType.NEW_IMAGE)
    record = build_record(_change(table, None, _row("a", exp=1_800_000_000)), ViewType.NEW_IMAGE, 0)
    assert record["newImage"]["valueCells"]["v"]["metadata"] == {"expirationTime": "1800000000"}
    assert record["newImage"]["rowMetadata"] == {"expirationTime": "1800000000"}


def test_static_only_record_has_partition_keys_and_static_cells_only() -> None:
    table = _table(ViewType.NEW_AND_OLD_IMAGES)
    image = RowImage({}, {"s": _cell(cqltypes.UTF8Type, "st")})
    change = RowChange(table, 42, (b"p",), None, None, image, "USER", 0)
    record = build_record(change, table.options.view_type, 0)
    assert "clusteringKeys" not in record
    assert record["newImage"] == {"staticCells": {"s": {"value": {"textT": "st"}}}}


ROUND_TRIP = [
    (cqltypes.AsciiType, "abc"),
    (cqltypes.UTF8Type, "zoë"),
    (cqltypes.LongType, -(2**63)),
    (cqltypes.CounterColumnType, 7),
    (cqltypes.Int32Type, -5),
    (cqltypes.ShortType, 300),
    (cqltypes.ByteType, -1),
    (cqltypes.IntegerType, 10**30 + 1),
    (cqltypes.DecimalType, Decimal("-12.3400")),
    (cqltypes.FloatType, 1.1),
    (cqltypes.DoubleType, 0.1),
    (cqltypes.BooleanType, False),
    (cqltypes.BytesType, b"\x00\xff"),
    (cqltypes.UUIDType, uuid.UUID("a756fd52-03ad-45a7-85da-a73f551d835b")),
    (cqltypes.TimeUUIDType, uuid.UUID("1f42ce1e-e7f9-11f1-b0b0-02fc00000001")),
    (cqltypes.InetAddressType, "::1"),
    (cqltypes.InetAddressType, "10.0.0.1"),
    (cqltypes.DateType, datetime.datetime(2024, 1, 2, 3, 4, 5, 678000)),
    (cqltypes.DateType, datetime.datetime(1900, 1, 1)),
    (cqltypes.SimpleDateType, datetime.date(2024, 1, 1)),
    (cqltypes.SimpleDateType, Date(-1_000_000_000)),  # beyond Python's dates
    (cqltypes.TimeType, 3_723_000_004_005),
    (cqltypes.DurationType, Duration(14, 2, 3_723_004_005_006)),
    (cqltypes.DurationType, Duration(-1, -2, -3)),
    (cqltypes.DurationType, Duration(0, 0, 0)),
    (cqltypes.ListType.apply_parameters([cqltypes.Int32Type]), [3, 1]),
    (cqltypes.SetType.apply_parameters([cqltypes.UTF8Type]), {"b", "a"}),
    (
        cqltypes.MapType.apply_parameters(
            [
                cqltypes.UTF8Type,
                cqltypes.FrozenType.apply_parameters(
                    [cqltypes.ListType.apply_parameters([cqltypes.Int32Type])]
                ),
            ]
        ),
        {"x": [7]},
    ),
    (cqltypes.TupleType.apply_parameters([cqltypes.Int32Type, cqltypes.UTF8Type]), (1, "a")),
]


@pytest.mark.parametrize(("cql_type", "value"), ROUND_TRIP)
def test_text_forms_round_trip_through_the_sync_decoder(cql_type: Any, value: Any) -> None:
    """The contract with ks2os: what the emulator emits, sync.values decodes back to exactly
    what cassandra-driver returns for the same serialised value."""
    from sync.values import decode_cell

    serialised = cql_type.to_binary(value, 4)
    assert decode_cell(R.value(cql_type, serialised, None), "c") == cql_type.from_binary(
        serialised, 4
    )
