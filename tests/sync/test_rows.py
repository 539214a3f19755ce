"""A scanned row and a CDC record of the same row state give the same `Change`.

The row holds what cassandra-driver returns (each value put through the
driver's own serialiser and deserialiser for its column type); the record
holds the emulator's documented text forms. Both must decode to an equal key
and image, for every CQL type.
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from collections import namedtuple
from typing import Any

import pytest
from cassandra import cqltypes
from cassandra.util import Date, Duration, Time
from hypothesis import given
from hypothesis import strategies as st

from sync.errors import DecodeError
from sync.model import Op, ScanRead, StreamRead
from sync.schema import TableLayout
from sync.sources.records import decode_record
from sync.sources.rows import decode_row, expiry_ms, ttl_alias

pytestmark = pytest.mark.unit

T = cqltypes._cqltypes
ADDRESS = cqltypes.UserType.make_udt_class(
    "demo", "address", ["street", "zip"], [T["text"], T["int"]]
)
UUID = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
SCAN = ScanRead(-100, 100, 1_700_000_000_000)
STREAM = StreamRead("arn:s", "shardId-00000001-aaaa", "0" * 21, 1_700_000_000_000)


def p(name: str, *params: Any) -> Any:
    return T[name].apply_parameters(list(params))


# column -> (CQL type, value written, the record's cell value)
COLUMNS: dict[str, tuple[Any, Any, dict[str, Any]]] = {
    "shop": (T["text"], "s/1:ü", {"textT": "s/1:ü"}),
    "region": (T["int"], 7, {"intT": "7"}),
    "sku": (T["timeuuid"], UUID, {"timeuuidT": str(UUID)}),
    "banner": (T["text"], "Sale", {"textT": "Sale"}),
    "a_ascii": (T["ascii"], "plain", {"asciiT": "plain"}),
    "a_bigint": (T["bigint"], -(2**63), {"bigintT": str(-(2**63))}),
    "a_blob": (T["blob"], b"\x00\x01", {"blobT": base64.b64encode(b"\x00\x01").decode()}),
    "a_boolean": (T["boolean"], False, {"boolT": False}),
    "a_date": (T["date"], Date(19723), {"dateT": "2024-01-01"}),
    "a_decimal": (T["decimal"], decimal.Decimal("0.10"), {"decimalT": "0.10"}),
    "a_double": (T["double"], 2.5, {"doubleT": "2.5"}),
    "a_duration": (T["duration"], Duration(1, 2, 3), {"durationT": "1mo2d3ns"}),
    "a_float": (T["float"], 1.1, {"floatT": "1.1"}),
    "a_inet": (T["inet"], "::ffff:1.2.3.4", {"inetT": "::ffff:1.2.3.4"}),
    "a_smallint": (T["smallint"], -3, {"smallintT": "-3"}),
    "a_time": (T["time"], Time(1), {"timeT": "1"}),
    "a_timestamp": (
        T["timestamp"],
        dt.datetime(2024, 1, 2, 3, 4, 5, 678000),
        {"timestampT": "1704164645678"},
    ),
    "a_tinyint": (T["tinyint"], 1, {"tinyintT": "1"}),
    "a_uuid": (T["uuid"], UUID, {"uuidT": str(UUID)}),
    "a_varchar": (T["varchar"], "v", {"varcharT": "v"}),
    "a_varint": (T["varint"], 10**30, {"varintT": str(10**30)}),
    "a_list": (
        p("list", T["text"]),
        ["b", "a", "b"],
        {
            "listT": [
                {"value": {"textT": "b"}},
                {"value": {"textT": "a"}},
                {"value": {"textT": "b"}},
            ]
        },
    ),
    "a_set": (
        p("set", T["int"]),
        {3, 1},
        {"setT": [{"value": {"intT": "1"}}, {"value": {"intT": "3"}}]},
    ),
    "a_map": (
        p("map", T["text"], T["int"]),
        {"a": 1, "b": 2},
        {
            "mapT": [
                {"key": {"textT": "a"}, "value": {"intT": "1"}},
                {"key": {"textT": "b"}, "value": {"intT": "2"}},
            ]
        },
    ),
    "a_tuple": (
        p("tuple", T["int"], T["text"]),
        (1, "x"),
        {"tupleT": [{"value": {"intT": "1"}}, {"value": {"textT": "x"}}]},
    ),
    "a_udt": (
        ADDRESS,
        ("Main", 1),
        {"udtT": {"street": {"value": {"textT": "Main"}}, "zip": {"value": {"intT": "1"}}}},
    ),
}
TABLE = TableLayout("demo", "everything", ("shop", "region"), ("sku",), ("banner",))


def driver_row() -> dict[str, Any]:
    return {name: t.from_binary(t.to_binary(v, 4), 4) for name, (t, v, _) in COLUMNS.items()}


def record() -> dict[str, Any]:
    cells = {name: {"value": cell} for name, (_, _, cell) in COLUMNS.items()}
    return {
        "partitionKeys": {"shop": cells["shop"]["value"], "region": cells["region"]["value"]},
        "clusteringKeys": {"sku": cells["sku"]["value"]},
        "newImage": {
            "valueCells": {n: c for n, c in cells.items() if n != "banner"},
            "staticCells": {"banner": cells["banner"]},
        },
    }


def test_both_decoders_agree_for_every_cql_type() -> None:
    from_scan = decode_row(driver_row(), TABLE, SCAN, 10)
    from_stream = decode_record(record(), TABLE, STREAM, 10)
    assert from_scan.op is from_stream.op is Op.UPSERT
    assert from_scan.key == from_stream.key == ("s/1:ü", 7, UUID)
    assert from_scan.image is not None and from_stream.image is not None
    assert from_scan.image.keys() == from_stream.image.keys()
    for name in COLUMNS:
        assert from_scan.image[name] == from_stream.image[name], name
        assert from_stream.image[name] == from_scan.image[name], name


def test_a_driver_namedtuple_row_works_like_a_dict() -> None:
    values = driver_row()
    row = namedtuple("Row", list(values))(*values.values())
    assert decode_row(row, TABLE, SCAN, 1) == decode_row(values, TABLE, SCAN, 1)


def test_null_columns_are_left_out_like_a_cdc_image_leaves_them_out() -> None:
    row = {"shop": "s", "region": 1, "sku": UUID, "banner": None, "a_list": None}
    change = decode_row(row, TABLE, SCAN, 1)
    assert change.image == {"shop": "s", "region": 1, "sku": UUID}


def test_a_row_without_its_key_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="region"):
        decode_row({"shop": "s", "sku": UUID}, TABLE, SCAN, 1)
    no_statics = TableLayout("demo", "plain", ("shop",), ("sku",))
    with pytest.raises(DecodeError, match="sku"):
        decode_row({"shop": "s"}, no_statics, SCAN, 1)


def test_a_partitions_static_row_is_a_static_only_change_like_its_stream_record() -> None:
    # CQL returns a partition with statics and no rows as one row, clustering columns null.
    row = {"shop": "s", "region": 1, "sku": None, "banner": "Sale", "a_int": None}
    change = decode_row(row, TABLE, SCAN, 10)
    static_record = {
        "partitionKeys": {"shop": {"textT": "s"}, "region": {"intT": "1"}},
        "newImage": {"staticCells": {"banner": {"value": {"textT": "Sale"}}}},
    }
    from_stream = decode_record(static_record, TABLE, STREAM, 10)
    assert change.static_only and from_stream.static_only
    assert change.key == from_stream.key == ("s", 1)
    assert change.image == from_stream.image == {"shop": "s", "region": 1, "banner": "Sale"}


def test_expiry_from_selected_ttls() -> None:
    base = {"shop": "s", "region": 1, "sku": UUID, "banner": "static, no ttl"}
    row = {**base, "a_int": 1, "a_text": "t", ttl_alias("a_int"): 10, ttl_alias("a_text"): 30}
    change = decode_row(row, TABLE, SCAN, 1, ttl_columns=["a_int", "a_text"])
    assert change.expires_at_ms == SCAN.read_at_ms + 30_000
    assert change.image is not None and ttl_alias("a_int") not in change.image


def test_one_column_without_ttl_keeps_the_row_alive() -> None:
    row = {
        "shop": "s",
        "region": 1,
        "sku": UUID,
        "a_int": 1,
        "a_text": "t",
        ttl_alias("a_int"): 10,
        ttl_alias("a_text"): None,
    }
    assert decode_row(row, TABLE, SCAN, 1, ttl_columns=["a_int", "a_text"]).expires_at_ms is None
    row = {
        "shop": "s",
        "region": 1,
        "sku": UUID,
        "a_int": 1,
        "a_list": ["x"],
        ttl_alias("a_int"): 10,
    }
    assert decode_row(row, TABLE, SCAN, 1, ttl_columns=["a_int"]).expires_at_ms is None


def test_no_expiry_without_ttl_columns() -> None:
    row = {"shop": "s", "region": 1, "sku": UUID, "a_int": 1}
    assert decode_row(row, TABLE, SCAN, 1).expires_at_ms is None


def test_static_ttls_and_earlier_column_ttls_are_value_expiries() -> None:
    row = {
        "shop": "s",
        "region": 1,
        "sku": UUID,
        "banner": "sale",
        "a_int": 1,
        "a_text": "t",
        ttl_alias("banner"): 5,
        ttl_alias("a_int"): 10,
        ttl_alias("a_text"): 30,
    }
    change = decode_row(row, TABLE, SCAN, 1, ttl_columns=["banner", "a_int", "a_text"])
    read = SCAN.read_at_ms
    assert change.expires_at_ms == read + 30_000  # statics never keep a row alive
    assert change.value_expiry == {"a_int": read + 10_000, "banner": read + 5_000}


@given(
    expires_s=st.integers(1_700_000_001, 1_800_000_000),
    before_ms=st.integers(1, 10**6),
    read_took_ms=st.integers(0, 5_000),
)
def test_an_expiry_read_from_ttl_is_never_later_than_the_real_one(
    expires_s: int, before_ms: int, read_took_ms: int
) -> None:
    """TTL() is the expiry second less the server's whole second when it reads the row."""
    clock_read = expires_s * 1000 - before_ms  # the service clock, read just before the row
    row_read = clock_read + read_took_ms
    if row_read >= expires_s * 1000:
        return  # by then the value is gone: no TTL to read
    ttl = expires_s - row_read // 1000
    assert expiry_ms(clock_read, ttl) <= expires_s * 1000
    assert expiry_ms(clock_read, ttl) > expires_s * 1000 - 1000 - read_took_ms


def test_a_looked_up_row_dates_its_expiry_by_the_read_not_the_record() -> None:
    """The stream's row lookup decodes with the same code: the expiry counts from the
    service clock before the lookup, whatever the record's own time."""
    row = {"shop": "s", "region": 1, "sku": UUID, "a_int": 1, ttl_alias("a_int"): 60}
    change = decode_row(row, TABLE, STREAM, 9, ttl_columns=["a_int"], read_at_ms=5_000_000)
    assert change.expires_at_ms == 5_060_000
    assert change.provenance == STREAM and change.version == 9
    with pytest.raises(ValueError, match="time of the read"):
        decode_row(row, TABLE, STREAM, 9, ttl_columns=["a_int"])


def test_a_partition_with_only_statics_is_a_static_only_change_like_the_streams() -> None:
    """A scanned partition with statics and no rows (null clustering keys) decodes as the
    stream's static-only record of the same state does: partition key and statics."""
    row = {
        "shop": "s",
        "region": 1,
        "sku": None,
        "banner": "Sale",
        "a_int": None,
        ttl_alias("a_int"): None,
    }
    from_scan = decode_row(row, TABLE, SCAN, 10, ttl_columns=["a_int"])
    record = {
        "partitionKeys": {"shop": {"textT": "s"}, "region": {"intT": "1"}},
        "newImage": {"staticCells": {"banner": {"value": {"textT": "Sale"}}}},
    }
    from_stream = decode_record(record, TABLE, STREAM, 10)
    assert from_scan.static_only and from_stream.static_only
    assert from_scan.op is from_stream.op is Op.UPSERT
    assert from_scan.key == from_stream.key == ("s", 1)
    assert from_scan.image == from_stream.image == {"shop": "s", "region": 1, "banner": "Sale"}
    assert from_scan.expires_at_ms is None
