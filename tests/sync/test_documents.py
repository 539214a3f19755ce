"""Changes become the documents a search user expects, under stable, URL-safe ids."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import re
import uuid
from collections import namedtuple
from typing import Any

import orjson
import pytest
from cassandra.util import Date, Duration, OrderedMap, SortedSet, Time
from hypothesis import given
from hypothesis import strategies as st

from sync.bulk import bulk_lines
from sync.documents import DocumentBuilder, iso_duration, text_form
from sync.errors import ConfigError, DocumentError, TerminalError
from sync.mapping import TableMapping, mapping_from_dict
from sync.model import Change, Op, ScanRead, StreamRead
from sync.schema import TableLayout
from sync.sources.records import decode_record
from sync.sources.rows import decode_row
from sync.values import decode_cell
from tests.sync import every_type

pytestmark = pytest.mark.unit

TABLE = TableLayout(
    "demo",
    "t",
    ("shop", "day"),
    ("sku",),
    (),
    {"shop": "text", "day": "date", "sku": "uuid", "big": "varint", "n": "bigint", "gone": "text"},
)
SKU = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")
SCAN = ScanRead(0, 10, 1_700_000_000_000)
STREAM = StreamRead("arn:s", "shardId-00000001-aaaa", "0" * 21, 1_700_000_000_000)
ADDRESS = namedtuple("address", ["street", "zip", "note"])


def mapping(**document: Any) -> TableMapping:
    return mapping_from_dict(
        {
            "source": {"keyspace": "demo", "table": "t"},
            "index": {"alias": "t"},
            "document": document,
        }
    )


def builder(**document: Any) -> DocumentBuilder:
    return DocumentBuilder(mapping(**document), TABLE)


def upsert(image: dict[str, Any], key: tuple[Any, ...] = ("s", Date(1), SKU), **kw: Any) -> Change:
    full = {"shop": key[0], "day": key[1], "sku": key[2], **image}
    return Change(Op.UPSERT, key, full, 7, kw.pop("provenance", STREAM), **kw)


def body(change: Change, **document: Any) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(builder(**document).action_for(change).body)
    return result


def test_every_type_converts_to_its_search_form() -> None:
    image = {
        "text": "héllo",
        "n": 2**62,
        "big": 10**30,
        "small_varint": 5,
        "f": 1.5,
        "ok": True,
        "price": decimal.Decimal("19.90"),
        "id2": SKU,
        "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 678000),
        "ts_rounding": dt.datetime(2024, 1, 2, 3, 4, 5, 677999),  # driver float noise
        "d": Date(19723),
        "t": Time(3723000000009),
        "dur": Duration(14, 3, 5 * 3600 * 10**9 + 500),
        "blob": b"\x00\xff",
        "ip": "10.0.0.1",
        "tags": SortedSet(["a", "b"]),
        "list": ["x", "y"],
        "counts": OrderedMap([("a", 1), ("b", 2)]),
        "by_date": OrderedMap([(Date(0), 1)]),
        "address": ADDRESS("Main", 1, None),
        "pair": (1, "x"),
        "nested": [OrderedMap([(1, SortedSet([SKU]))])],
    }
    table = TableLayout("demo", "t", ("shop", "day"), ("sku",), (), {"big": "varint"})
    doc = orjson.loads(DocumentBuilder(mapping(), table).action_for(upsert(image)).body)
    assert doc["text"] == "héllo"
    assert doc["n"] == 2**62
    assert doc["big"] == str(10**30)
    assert doc["small_varint"] == 5  # no type known: an int stays a number
    assert doc["f"] == 1.5 and doc["ok"] is True
    assert doc["price"] == "19.90"
    assert doc["id2"] == str(SKU)
    assert doc["ts"] == "2024-01-02T03:04:05.678Z"
    assert doc["ts_rounding"] == "2024-01-02T03:04:05.678Z"
    assert doc["d"] == "2024-01-01" and doc["day"] == "1970-01-02"
    assert doc["t"] == "01:02:03.000000009"
    assert doc["dur"] == "P1Y2M3DT5H0.0000005S"
    assert doc["blob"] == base64.b64encode(b"\x00\xff").decode()
    assert doc["ip"] == "10.0.0.1"
    assert doc["tags"] == ["a", "b"] and doc["list"] == ["x", "y"]
    assert doc["counts"] == {"a": 1, "b": 2}
    assert doc["by_date"] == {"1970-01-01": 1}
    assert doc["address"] == {"street": "Main", "zip": 1}
    assert doc["pair"] == [1, "x"]
    assert doc["nested"] == [{"1": [str(SKU)]}]
    assert doc["_ks2os"] == {"version": 7, "source": "stream", "deleted": False}


def test_mapping_choices_epoch_millis_numbers_and_explicit_nulls() -> None:
    image = {
        "ts": dt.datetime(1970, 1, 1, 0, 0, 1),
        "big": 10**30,
        "price": decimal.Decimal("1.10"),
    }
    doc = body(upsert(image), timestamps="epoch_millis", big_numbers="number", nulls="explicit")
    assert doc["ts"] == 1000
    raw = builder(big_numbers="number").action_for(upsert(image)).body
    assert b'"price":1.10' in raw  # exact, not through a float
    assert b'"big":' + str(10**30).encode() in raw
    assert doc["gone"] is None and doc["n"] is None  # known columns the row lacks
    assert "gone" not in body(upsert(image))


def test_include_exclude_and_rename() -> None:
    image = {"n": 1, "big": 2, "secret": "x", "name": "k"}
    doc = body(
        upsert(image), include=["n", "name", "secret"], exclude=["secret"], rename={"name": "title"}
    )
    assert set(doc) == {"shop", "day", "sku", "n", "title", "_ks2os"}


def test_expiry_and_source_go_into_the_metadata() -> None:
    doc = body(upsert({}, provenance=SCAN, expires_at_ms=123))
    assert doc["_ks2os"] == {"version": 7, "source": "scan", "expires_at": 123, "deleted": False}


def test_a_delete_is_a_tombstone_at_the_changes_version() -> None:
    change = Change(Op.DELETE, ("s", Date(1), SKU), None, 99, STREAM)
    action = builder().action_for(change)
    assert not action.create and action.version == 99
    assert orjson.loads(action.body) == {
        "_ks2os": {"version": 99, "source": "stream", "deleted": True}
    }
    assert action.doc_id == builder().action_for(upsert({})).doc_id


def test_a_static_only_change_is_no_single_document() -> None:
    """It touches every row of its partition: the merge path (sync/statics.py) writes it."""
    change = Change(Op.UPSERT, ("s", Date(1)), {"banner": "x"}, 1, STREAM, static_only=True)
    with pytest.raises(TerminalError, match="static-only"):
        builder().action_for(change)


def test_ids_are_url_safe_and_unambiguous_for_awkward_keys() -> None:
    b = builder()
    awkward = ["a:b", "a/b?c#d", "100%", " spaced ", "ü✓", "", "a%3Ab"]
    ids = {b.doc_id((shop, Date(0), SKU)) for shop in awkward}
    assert len(ids) == len(awkward)
    for doc_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_.~%:-]*", doc_id), doc_id
        assert doc_id.count(":") == 2  # the separators only
    assert b.doc_id(("a:b", Date(0), SKU)) != b.doc_id(("a", Date(0), SKU))
    assert b.doc_id(("s", Date(19723), SKU)) == f"s:2024-01-01:{SKU}"


def test_ids_and_routing_follow_the_mapping() -> None:
    b = builder(id=["sku", "shop", "day"], routing="partition")
    action = b.action_for(upsert({}, key=("s p", Date(0), SKU)))
    assert action.doc_id == f"{SKU}:s%20p:1970-01-01"
    assert action.routing == "s%20p:1970-01-01"
    assert builder().action_for(upsert({})).routing is None


def test_id_columns_must_be_key_columns() -> None:
    with pytest.raises(ConfigError, match=r"document.id.*'n'"):
        builder(id=["n"])


def test_an_id_of_only_some_key_columns_is_refused_naming_the_missing_ones() -> None:
    """Rows that differ only in a left-out column would share one document, and a delete
    of one would hide the others."""
    with pytest.raises(ConfigError) as caught:
        builder(id=["sku", "shop"])
    message = str(caught.value)
    assert "document.id leaves out primary-key column(s) day of demo.t" in message
    assert "\n" not in message and "shop, day, sku" in caught.value.hint
    with pytest.raises(ConfigError, match=r"column\(s\) day, sku of demo.t"):
        builder(id=["shop"])


def test_any_order_of_the_whole_key_is_an_id() -> None:
    key = ("s", Date(0), SKU)
    assert builder(id=["sku", "day", "shop"]).doc_id(key) == f"{SKU}:1970-01-01:s"
    assert builder().doc_id(key) == f"s:1970-01-01:{SKU}"


def test_key_text_forms_are_canonical() -> None:
    assert text_form(dt.datetime(2024, 1, 2, 3, 4, 5, 678000)) == "2024-01-02T03:04:05.678Z"
    assert text_form(b"\x01\xab") == "0x01ab"
    assert text_form(True) == "true"
    assert text_form(decimal.Decimal("1.50")) == "1.50"
    assert text_form(Time(0)) == "00:00:00.000000000"
    assert text_form((1, "a")) == '[1,"a"]'


@pytest.mark.parametrize(
    ("duration", "text"),
    [
        (Duration(0, 0, 0), "PT0S"),
        (Duration(12, 0, 0), "P1Y"),
        (Duration(-1, -2, -3 * 10**9), "-P1M2DT3S"),
        (Duration(0, 0, 61 * 10**9 + 5 * 10**8), "PT1M1.5S"),
    ],
)
def test_iso_durations(duration: Duration, text: str) -> None:
    assert iso_duration(duration) == text


def test_same_row_from_scan_or_stream_gives_the_same_document() -> None:
    table = TableLayout("demo", "t", ("shop",), ("day",), (), {})
    row = {
        "shop": "s",
        "day": Date(19723),
        "price": decimal.Decimal("2.50"),
        "tags": SortedSet(["x"]),
    }
    record = {
        "partitionKeys": {"shop": {"textT": "s"}},
        "clusteringKeys": {"day": {"dateT": "2024-01-01"}},
        "newImage": {
            "valueCells": {
                "price": {"value": {"decimalT": "2.50"}},
                "tags": {"value": {"setT": [{"value": {"textT": "x"}}]}},
            }
        },
    }
    b = DocumentBuilder(mapping(), table)
    from_scan = b.action_for(decode_row(row, table, SCAN, 5))
    from_stream = b.action_for(decode_record(record, table, STREAM, 5))
    assert from_scan.doc_id == from_stream.doc_id == "s:2024-01-01"
    scan_doc, stream_doc = orjson.loads(from_scan.body), orjson.loads(from_stream.body)
    assert scan_doc.pop("_ks2os")["source"] == "scan"
    assert stream_doc.pop("_ks2os")["source"] == "stream"
    assert scan_doc == stream_doc


def test_bulk_lines_carry_external_versions() -> None:
    b = builder(routing="partition")
    actions = [
        b.action_for(upsert({"n": 1})),
        b.action_for(Change(Op.DELETE, ("x", Date(0), SKU), None, 3, STREAM)),
    ]
    lines = bulk_lines(actions).split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5
    first = orjson.loads(lines[0])
    assert first == {
        "index": {
            "_id": f"s:1970-01-02:{SKU}",
            "version": 7,
            "version_type": "external",
            "routing": "s:1970-01-02",
        }
    }
    assert orjson.loads(lines[2])["index"]["version"] == 3


_key_part = st.text(max_size=8) | st.sampled_from([":", "%", "%3A", "/", ""])


@given(st.lists(st.tuples(_key_part, _key_part), min_size=2, max_size=6, unique=True))
def test_distinct_keys_never_share_an_id(keys: list[tuple[str, str]]) -> None:
    table = TableLayout("demo", "t", ("a", "b"))
    b = DocumentBuilder(mapping(), table)
    ids = [b.doc_id(key) for key in keys]
    assert len(set(ids)) == len(keys)
    assert all(re.fullmatch(r"[A-Za-z0-9_.~%:-]*", doc_id) for doc_id in ids)


_durations = st.integers(0, 2**31 - 1).flatmap(
    lambda months: st.tuples(st.just(months), st.integers(0, 2**31 - 1), st.integers(0, 2**63 - 1))
)


@given(_durations, st.booleans())
def test_iso_durations_read_back_as_the_same_duration(
    parts: tuple[int, int, int], negative: bool
) -> None:
    sign = -1 if negative else 1
    duration = Duration(*(sign * part for part in parts))
    assert decode_cell({"durationT": iso_duration(duration)}, "d") == duration


@given(st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30)))
def test_the_document_timestamp_form_is_iso_timestamp(value: dt.datetime) -> None:
    from sync.documents import _iso_timestamp, iso_timestamp

    assert _iso_timestamp(value) == iso_timestamp(value)
    assert _iso_timestamp(value.replace(microsecond=0)) == iso_timestamp(
        value.replace(microsecond=0)
    )


# ---- shaping: filter, computed fields, hook -------------------------------------------


def _shaped_builder(table: TableLayout = every_type.TABLE, **document: Any) -> DocumentBuilder:
    return DocumentBuilder(mapping(**document), table)


def test_computed_fields_and_a_hook_give_the_documented_body_for_every_cql_type() -> None:
    b = _shaped_builder(computed=every_type.COMPUTED, hook=every_type.HOOK)
    row = every_type.driver_row()
    action = b.action_for(Change(Op.UPSERT, (1,), row, 9, SCAN))
    doc = orjson.loads(action.body)
    assert doc.pop("_ks2os") == {"version": 9, "source": "scan", "deleted": False}
    expected = every_type.expected_body()
    assert set(doc) == set(expected)
    for name, value in expected.items():
        assert doc[name] == value, name


def test_a_row_the_filter_leaves_out_is_a_tombstone_at_the_changes_version() -> None:
    b = builder(filter={"column": "n", "gte": 10})
    kept = b.action_for(upsert({"n": 10}))
    left_out = b.action_for(upsert({"n": 9}))
    no_value = b.action_for(upsert({}))
    assert orjson.loads(kept.body)["n"] == 10
    for action in (left_out, no_value):
        assert orjson.loads(action.body) == {
            "_ks2os": {"version": 7, "source": "stream", "deleted": True}
        }
        assert (action.doc_id, action.version) == (kept.doc_id, kept.version)


def test_a_row_the_hook_leaves_out_is_a_tombstone_and_its_body_replaces_the_document() -> None:
    b = builder(hook="tests.sync.shaping_hooks:only_even_b", include=["n"])
    odd = orjson.loads(b.action_for(upsert({"b": 3, "n": 1})).body)
    even = orjson.loads(b.action_for(upsert({"b": 4, "n": 1})).body)
    assert odd == {"_ks2os": {"version": 7, "source": "stream", "deleted": True}}
    assert even == {
        "shop": "s",
        "day": "1970-01-02",
        "sku": str(SKU),
        "n": 1,
        "parity": "even",
        "_ks2os": {"version": 7, "source": "stream", "deleted": False},
    }


def test_computed_fields_of_null_columns_are_left_out_unless_nulls_are_explicit() -> None:
    computed = {"copy_n": {"copy": "n"}, "joined": {"concat": ["n", "gone"]}}
    assert "copy_n" not in body(upsert({}), computed=computed)
    assert "joined" not in body(upsert({}), computed=computed)
    assert body(upsert({"gone": "x"}), computed=computed)["joined"] == "x"
    explicit = body(upsert({}), computed=computed, nulls="explicit")
    assert explicit["copy_n"] is None and explicit["joined"] is None


def test_a_copy_follows_the_columns_encodings() -> None:
    computed = {"big_again": {"copy": "big"}}
    raw = builder(computed=computed, big_numbers="number").action_for(upsert({"big": 10**30})).body
    assert b'"big_again":' + str(10**30).encode() in raw
    assert body(upsert({"big": 10**30}), computed=computed)["big_again"] == str(10**30)


def test_a_hook_may_not_write_the_metadata_field() -> None:
    with pytest.raises(DocumentError, match="returned the field _ks2os"):
        builder(hook="tests.sync.shaping_hooks:returns_metadata").action_for(upsert({}))


STATIC_TABLE = TableLayout(
    "demo", "st", ("p",), ("c",), ("s",), {"p": "int", "c": "int", "s": "text", "a": "text"}
)


def test_on_a_static_table_the_hook_sees_the_row_without_statics_from_scan_and_stream() -> None:
    b = DocumentBuilder(
        mapping(hook=every_type.HOOK, computed={"a_copy": {"copy": "a"}}), STATIC_TABLE
    )
    scanned = Change(Op.UPSERT, (1, 2), {"p": 1, "c": 2, "s": "x", "a": "y"}, 5, SCAN)
    streamed = Change(Op.UPSERT, (1, 2), {"p": 1, "c": 2, "a": "y"}, 5, STREAM)
    for change in (scanned, streamed):
        written, fields = b.row_document(change)
        assert written is change
        assert fields == {
            "p": 1,
            "c": 2,
            "a": "y",
            "a_copy": "y",
            "received": {"p": "int", "c": "int", "a": "str"},
        }


def test_on_a_static_table_a_row_left_out_is_written_as_a_delete_of_it() -> None:
    b = DocumentBuilder(mapping(filter={"column": "a", "eq": "keep"}), STATIC_TABLE)
    change = Change(Op.UPSERT, (1, 2), {"p": 1, "c": 2, "s": "x", "a": "drop"}, 5, SCAN)
    written, fields = b.row_document(change)
    assert (written.op, written.key, written.version, written.provenance) == (
        Op.DELETE,
        (1, 2),
        5,
        SCAN,
    )
    assert written.image is None and fields == {}
    kept = Change(Op.UPSERT, (1, 2), {"p": 1, "c": 2, "s": "x", "a": "keep"}, 5, SCAN)
    assert b.row_document(kept) == (kept, {"p": 1, "c": 2, "a": "keep"})
    assert b.carries_statics(change)  # the statics it read still count for the partition


def test_a_driver_map_gives_the_bytes_of_the_same_dict() -> None:
    """The driver's OrderedMapSerializedKey (what a CQL read returns) is read by its pairs;
    the document keeps their order, keys' text forms and the values, as a dict would."""
    from cassandra import cqltypes

    types = cqltypes._cqltypes
    read = {}
    for column, (key_type, value) in {
        "counts": (types["text"], {"b": 2, "a": 1, "c": None}),
        "by_day": (types["date"], {Date(1): 10, Date(0): 5}),
        "by_id": (types["uuid"], {SKU: "x"}),
    }.items():
        value_type = types["int"] if column != "by_id" else types["text"]
        cql_type = types["map"].apply_parameters([key_type, value_type])
        written = {k: v for k, v in value.items() if v is not None}
        read[column] = cql_type.from_binary(cql_type.to_binary(written, 4), 4)
        assert type(read[column]).__name__ == "OrderedMapSerializedKey"
    as_dicts = {column: dict(value.items()) for column, value in read.items()}
    driver_doc = builder().action_for(upsert(read)).body
    assert driver_doc == builder().action_for(upsert(as_dicts)).body
    assert orjson.loads(driver_doc)["by_day"] == {"1970-01-01": 5, "1970-01-02": 10}
