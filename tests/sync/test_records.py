"""CDC records (as boto3 parses them) decode into the right `Change`."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from sync.errors import DecodeError
from sync.model import Change, Op, StreamPosition
from sync.schema import TableKey
from sync.sources.records import ImageUnavailable, decode_record, is_replicated

pytestmark = pytest.mark.unit

TABLE = TableKey(
    "demo",
    "products",
    ("shop", "region"),
    ("sku",),
    ("banner",),
)
SKU = uuid.UUID("00000000-0000-0000-0000-000000000007")
POSITION = StreamPosition("arn:stream", "shardId-00000001-aaaa", "0" * 20 + "1", 1_700_000_000_000)


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
    assert change.version == 77 and change.source == POSITION
    assert change.static_only is False


def test_no_new_image_is_a_delete() -> None:
    change = decode_record({**keys(), "oldImage": {"valueCells": {}}}, TABLE, POSITION, 5)
    assert change == Change(Op.DELETE, ("s1", 3, SKU), None, 5, POSITION)


def test_a_ttl_expiry_record_is_a_delete() -> None:
    record = {**keys(), "origin": "TTL", "oldImage": {"valueCells": {"name": cell({"textT": "x"})}}}
    position = StreamPosition("arn:stream", "shardId-00000001-aaaa", "0" * 21, 1, origin="TTL")
    assert decode_record(record, TABLE, position, 9).op is Op.DELETE


def test_a_record_without_clustering_keys_is_static_only() -> None:
    record = {**keys(sku=False), "newImage": {"staticCells": {"banner": cell({"textT": "New"})}}}
    change = decode_record(record, TABLE, POSITION, 3)
    assert change.static_only is True
    assert change.key == ("s1", 3)
    assert change.image == {"shop": "s1", "region": 3, "banner": "New"}


def test_a_table_without_clustering_columns_is_never_static_only() -> None:
    table = TableKey("demo", "plain", ("id",))
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
