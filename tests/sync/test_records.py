"""CDC records (as boto3 parses them) decode into the right `Change`."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sync.errors import DecodeError
from sync.model import Change, Op, StreamRead
from sync.schema import TableLayout
from sync.sources.records import ImageUnavailable, decode_record, is_replicated

pytestmark = pytest.mark.unit

TABLE = TableLayout(
    "demo",
    "products",
    ("shop", "region"),
    ("sku",),
    ("banner",),
)
SKU = uuid.UUID("00000000-0000-0000-0000-000000000007")
POSITION = StreamRead("arn:stream", "shardId-00000001-aaaa", "0" * 20 + "1", 1_700_000_000_000)


def keys(sku: bool = True) -> dict[str, Any]:
    record: dict[str, Any] = {"partitionKeys": {"shop": {"textT": "s1"}, "region": {"intT": "3"}}}
    if sku:
        record["clusteringKeys"] = {"sku": {"uuidT": str(SKU)}}
    return record


def cell(value: dict[str, Any], expires: str | None = None) -> dict[str, Any]:
    metadata = {"expirationTime": expires} if expires else {}
    return {"value": value, "metadata": metadata}


def test_new_image_is_an_upsert_with_keys_from_the_key_maps() -> None:
    record = {
        **keys(),
        "origin": "USER",
        "newImage": {
            "valueCells": {
                # Key columns repeated in valueCells are not trusted.
                "shop": cell({"textT": "WRONG"}),
                "name": cell({"textT": "Kettle"}),
                "price": cell({"decimalT": "19.90"}),
            },
            "staticCells": {"banner": cell({"textT": "Sale"})},
            "rowMetadata": {"expirationTime": "1800000000"},
        },
        "oldImage": {"valueCells": {"name": cell({"textT": "Old"})}},
    }
    change = decode_record(record, TABLE, POSITION, 77)
    assert change.op is Op.UPSERT
    assert change.key == ("s1", 3, SKU)
    assert change.image is not None
    assert change.image["shop"] == "s1"
    assert dict(change.image).keys() == {"shop", "region", "sku", "name", "price", "banner"}
    assert str(change.image["price"]) == "19.90"
    assert change.expires_at_ms == 1_800_000_000_000
    assert change.version == 77 and change.provenance == POSITION
    assert change.static_only is False


def test_no_new_image_is_a_delete() -> None:
    change = decode_record({**keys(), "oldImage": {"valueCells": {}}}, TABLE, POSITION, 5)
    assert change == Change(Op.DELETE, ("s1", 3, SKU), None, 5, POSITION)


def test_a_ttl_expiry_record_is_a_delete() -> None:
    record = {**keys(), "origin": "TTL", "oldImage": {"valueCells": {"name": cell({"textT": "x"})}}}
    position = StreamRead("arn:stream", "shardId-00000001-aaaa", "0" * 21, 1, origin="TTL")
    assert decode_record(record, TABLE, position, 9).op is Op.DELETE


def test_a_record_without_clustering_keys_is_static_only() -> None:
    record = {**keys(sku=False), "newImage": {"staticCells": {"banner": cell({"textT": "New"})}}}
    change = decode_record(record, TABLE, POSITION, 3)
    assert change.static_only is True
    assert change.key == ("s1", 3)
    assert change.image == {"shop": "s1", "region": 3, "banner": "New"}


def test_a_table_without_clustering_columns_is_never_static_only() -> None:
    table = TableLayout("demo", "plain", ("id",))
    change = decode_record(
        {"partitionKeys": {"id": {"intT": "1"}}, "newImage": {"valueCells": {}}}, table, POSITION, 1
    )
    assert change.static_only is False and change.image == {"id": 1}


def test_no_row_expiry_without_row_metadata() -> None:
    record = {**keys(), "newImage": {"valueCells": {"name": cell({"textT": "k"}, "1800000000")}}}
    assert decode_record(record, TABLE, POSITION, 1).expires_at_ms is None


def test_replicated_records_decode_like_user_ones() -> None:
    record = {**keys(), "origin": "REPLICATION", "newImage": {"valueCells": {}}}
    assert is_replicated(record)
    assert not is_replicated({**record, "origin": "USER"})
    assert decode_record(record, TABLE, POSITION, 1).op is Op.UPSERT


@pytest.mark.parametrize("view_type", ["OLD_IMAGE", "KEYS_ONLY"])
def test_old_image_and_keys_only_records_ask_for_a_reread(view_type: str) -> None:
    record = {**keys(), "oldImage": {"valueCells": {}}} if view_type == "OLD_IMAGE" else keys()
    with pytest.raises(ImageUnavailable) as raised:
        decode_record(record, TABLE, POSITION, 1, view_type=view_type)
    assert raised.value.key == ("s1", 3, SKU)
    assert raised.value.static_only is False
    assert view_type in str(raised.value)


def test_missing_key_columns_are_a_decode_error() -> None:
    record = {"partitionKeys": {"shop": {"textT": "s1"}}, "clusteringKeys": {}, "newImage": {}}
    with pytest.raises(DecodeError, match="region"):
        decode_record(record, TABLE, POSITION, 1)


def test_bad_cells_name_their_column() -> None:
    record = {**keys(), "newImage": {"valueCells": {"price": cell({"decimalT": "abc"})}}}
    with pytest.raises(DecodeError, match=r"'price'.*abc"):
        decode_record(record, TABLE, POSITION, 1)


def test_bad_expiration_time_is_a_decode_error() -> None:
    record = {**keys(), "newImage": {"rowMetadata": {"expirationTime": "soon"}}}
    with pytest.raises(DecodeError, match="expirationTime"):
        decode_record(record, TABLE, POSITION, 1)


# ---- expiry of each value, and which statics a static-only record states ----------------

STATICS = TableLayout("demo", "shelves", ("shop",), ("sku",), ("banner", "motto", "owner"))


def test_a_column_ttl_on_a_row_that_lives_on_is_a_value_expiry() -> None:
    record = {
        **keys(),
        "newImage": {
            "valueCells": {
                "name": cell({"textT": "Kettle"}),
                "secret": cell({"textT": "s3cret"}, expires="1800000002"),
            },
            "staticCells": {"banner": cell({"textT": "Sale"}, expires="1800000005")},
        },
    }
    change = decode_record(record, TABLE, POSITION, 7)
    assert change.expires_at_ms is None  # `name` has no TTL: the row lives on
    # Every static TTL counts: statics never keep a row alive.
    assert change.value_expiry == {"secret": 1_800_000_002_000, "banner": 1_800_000_005_000}


def test_values_leaving_with_the_row_are_not_value_expiries() -> None:
    record = {
        **keys(),
        "newImage": {
            "valueCells": {
                "name": cell({"textT": "Kettle"}, expires="1800000009"),
                "early": cell({"textT": "e"}, expires="1800000001"),
            },
            "rowMetadata": {"expirationTime": "1800000009"},
        },
    }
    change = decode_record(record, TABLE, POSITION, 7)
    assert change.expires_at_ms == 1_800_000_009_000
    assert change.value_expiry == {"early": 1_800_000_001_000}


def static_record(new: dict[str, Any] | None, old: dict[str, Any] | None) -> dict[str, Any]:
    record: dict[str, Any] = {"partitionKeys": {"shop": {"textT": "s1"}}}
    if new is not None:
        record["newImage"] = {"staticCells": new}
    if old is not None:
        record["oldImage"] = {"staticCells": old}
    return record


def test_a_static_only_record_states_the_columns_its_images_name() -> None:
    # `motto` was deleted (old image only), `banner` set, `owner` named by neither image.
    record = static_record(
        new={"banner": cell({"textT": "Sale"})},
        old={"banner": cell({"textT": "Old"}), "motto": cell({"textT": "Gone"})},
    )
    change = decode_record(record, STATICS, POSITION, 9)
    assert change.static_only and change.image == {"shop": "s1", "banner": "Sale"}
    assert change.static_columns == frozenset({"banner", "motto"})


def test_a_static_only_record_without_an_old_image_states_what_it_shows() -> None:
    record = static_record(new={"owner": cell({"textT": "Ann"})}, old=None)
    change = decode_record(record, STATICS, POSITION, 9)
    assert change.static_columns == frozenset({"owner"})


def test_a_new_image_static_record_naming_some_statics_asks_for_a_reread() -> None:
    # A NEW_IMAGE stream never shows what was deleted: read the statics over CQL.
    record = static_record(new={"banner": cell({"textT": "Sale"})}, old=None)
    with pytest.raises(ImageUnavailable) as raised:
        decode_record(record, STATICS, POSITION, 9, view_type="NEW_IMAGE")
    assert raised.value.key == ("s1",) and raised.value.static_only


def test_a_new_image_static_record_naming_every_static_states_them_all() -> None:
    every = {name: cell({"textT": name}) for name in STATICS.static}
    change = decode_record(static_record(every, None), STATICS, POSITION, 9, "NEW_IMAGE")
    assert change.static_columns is None  # all of them
    assert change.image is not None and set(change.image) == {"shop", *STATICS.static}
