"""GetRecords parsed from the raw body gives what botocore's parse gives: the same changes and
byte-identical bulk bodies, for every CQL type, and errors still parsed by botocore.

Two readings of one body are compared everywhere: botocore's own JSON parser
(the real `botocore.parsers`, with the service model's output shape), and
`sync.sources.getrecords.parse_body`. Each is then decoded by the shard
reader and built into bulk bytes by the document builder.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import orjson
import pytest
from botocore.exceptions import ClientError
from botocore.parsers import create_parser
from cassandra.util import Duration

from sync.bulk import bulk_lines
from sync.documents import DocumentBuilder
from sync.errors import TransientError
from sync.keyspaces import TableInfo, describe_table
from sync.mapping import load_mapping
from sync.model import Change
from sync.schema import TableLayout
from sync.sources.getrecords import EVENT, created_at, parse_body, raw_get_records
from sync.sources.streams import ShardReader, list_table_streams
from tests.sync.test_values import EMULATED, SCALARS

ARN = "arn:aws:cassandra:us-east-1:111122223333:/keyspace/ks/table/t/stream/2026-01-01T00:00:00.000"
SHARD = "shardId-00000001700000000000-aaaa"
# The shard reader's decoding needs no server; its client is never called here.
OFFLINE_CLIENT = boto3.client(
    "keyspacesstreams",
    endpoint_url="http://127.0.0.1:9",
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
)


def botocore_parse(body: bytes) -> dict[str, Any]:
    """What boto3's client returns for a 200 GetRecords reply with `body`."""
    model = botocore.session.get_session().get_service_model("keyspacesstreams")
    shape = model.operation_model("GetRecords").output_shape
    parsed: dict[str, Any] = create_parser(model.metadata["protocol"]).parse(
        {"status_code": 200, "headers": {}, "body": body}, shape
    )
    parsed.pop("ResponseMetadata", None)
    return parsed


def decode(info: TableInfo, reply: dict[str, Any], view_type: str) -> list[Change]:
    reader = ShardReader(
        OFFLINE_CLIENT, info, ARN, SHARD, view_type=view_type, after=None, previous=0
    )
    return reader.decode(reply.get("changeRecords") or []).changes


def bulk_bytes(info: TableInfo, changes: list[Change], tmp_path: Path) -> bytes:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text(
        f'[source]\nkeyspace = "{info.keyspace}"\ntable = "{info.name}"\n'
        '[index]\nalias = "getrecords"\n'
    )
    builder = DocumentBuilder(load_mapping(mapping), info.layout)
    return bulk_lines([builder.action_for(c) for c in changes if not c.static_only])


def assert_same_both_ways(
    info: TableInfo, body: bytes, tmp_path: Path, view_type: str = "NEW_AND_OLD_IMAGES"
) -> list[Change]:
    by_botocore = decode(info, botocore_parse(body), view_type)
    by_orjson = decode(info, parse_body(body), view_type)
    assert by_orjson == by_botocore
    for ours, theirs in zip(by_orjson, by_botocore, strict=True):
        assert ours.image is None or ours.image.keys() == theirs.image.keys()  # order too
        assert ours.image is None or [type(v) for v in ours.image.values()] == [
            type(v) for v in theirs.image.values()
        ]
    assert bulk_bytes(info, by_orjson, tmp_path) == bulk_bytes(info, by_botocore, tmp_path)
    return by_orjson


# ------------------------------------------------------------------ pure: every type


def _typed_table(columns: list[str]) -> TableInfo:
    key = TableLayout("ks", "t", ("id",), ("seq",), ())
    return TableInfo(key, tuple(columns), False, True, True, "NEW_AND_OLD_IMAGES", ARN)


def _record(number: int, cells: dict[str, Any], created: float) -> dict[str, Any]:
    return {
        "eventVersion": "1.1",
        "createdAt": created,
        "origin": "USER",
        "partitionKeys": {"id": {"intT": str(number % 3)}},
        "clusteringKeys": {"seq": {"intT": str(number)}},
        "newImage": {
            "valueCells": {name: {"value": value} for name, value in cells.items()},
            "rowMetadata": {"expirationTime": "1800000000"} if number % 2 else {},
        },
        "oldImage": {"valueCells": {"old": {"value": {"textT": "x"}}}},
        "sequenceNumber": f"{number + 1:021d}",
    }


def test_every_emulated_cql_type_decodes_the_same_from_both_parsers(tmp_path: Path) -> None:
    from keyspaces_local.streams.records import _RENDERER

    cells = {}
    for number, (cql_type, value) in enumerate(EMULATED):
        serialised = cql_type.to_binary(value, 4)
        cells[f"c{number}"] = _RENDERER.value(cql_type, serialised, {"writeTime": "1"})
    records = [_record(n, cells, 1_767_225_600.123 + n / 1000) for n in range(4)]
    body = orjson.dumps({"changeRecords": records, "nextShardIterator": "it"})
    changes = assert_same_both_ways(_typed_table(list(cells)), body, tmp_path)
    assert len(changes) == 4 and all(c.image for c in changes)


def test_every_text_form_decodes_the_same_from_both_parsers(tmp_path: Path) -> None:
    cells = {}
    for number, (cell, alternative, _, _) in enumerate(SCALARS):
        cells[f"s{number}"] = cell
        if alternative is not None and not isinstance(alternative.get("blobT"), bytes):
            cells[f"a{number}"] = alternative
    body = orjson.dumps({"changeRecords": [_record(1, cells, 1_767_225_600.5)]})
    assert_same_both_ways(_typed_table(list(cells)), body, tmp_path)


def test_deletes_static_only_and_ttl_records_decode_the_same(tmp_path: Path) -> None:
    key = TableLayout("ks", "t", ("id",), ("seq",), ("banner",))
    info = TableInfo(key, ("body",), False, True, True, "NEW_AND_OLD_IMAGES", ARN)
    records = [
        {  # a row delete
            "createdAt": 1_767_225_600.001,
            "partitionKeys": {"id": {"intT": "1"}},
            "clusteringKeys": {"seq": {"intT": "2"}},
            "oldImage": {"valueCells": {"body": {"value": {"textT": "gone"}}}},
            "sequenceNumber": "000000000000000000001",
        },
        {  # a static-only change
            "createdAt": 1_767_225_600.001,
            "origin": "USER",
            "partitionKeys": {"id": {"intT": "1"}},
            "newImage": {"staticCells": {"banner": {"value": {"textT": "Sale"}}}},
            "sequenceNumber": "000000000000000000002",
        },
        {  # an expiry, nulls where botocore would drop the member
            "createdAt": 1_767_225_601,
            "origin": "TTL",
            "partitionKeys": {"id": {"intT": "1"}},
            "clusteringKeys": {"seq": {"intT": "3"}},
            "newImage": None,
            "oldImage": {"valueCells": {"body": {"value": None}}},
            "sequenceNumber": "000000000000000000003",
        },
    ]
    body = orjson.dumps(
        {"changeRecords": records, "nextShardIterator": None, "iteratorDescription": None}
    )
    changes = assert_same_both_ways(info, body, tmp_path)
    assert [c.static_only for c in changes] == [False, True, False]
    reply = parse_body(body)
    assert reply.keys() == botocore_parse(body).keys() == {"changeRecords"}


@pytest.mark.parametrize(
    "seconds",
    [
        1_767_225_600.123,
        1_767_225_600,
        1_700_000_000.0005,  # sub-millisecond: botocore truncates after rounding to µs
        1_700_000_000.0015,
        1_700_000_000.9999995,
        0.0004,
        "1700000000.25",
        "2026-01-01T00:00:00.123Z",
    ],
)
def test_created_at_converts_as_botocore_does(seconds: Any) -> None:
    body = orjson.dumps({"changeRecords": [{"createdAt": seconds, "sequenceNumber": "1" * 21}]})
    theirs = botocore_parse(body)["changeRecords"][0]["createdAt"]
    ours = parse_body(body)["changeRecords"][0]["createdAt"]
    assert ours == theirs
    assert created_at(seconds) == theirs


def test_a_created_at_nothing_can_read_dead_letters_that_record_alone() -> None:
    """botocore's parser would fail the whole page on it; the reader keeps the others."""
    info = _typed_table(["v"])
    good = _record(1, {"v": {"textT": "kept"}}, 1_767_225_600.5)
    bad = {**_record(2, {"v": {"textT": "lost"}}, 0.0), "createdAt": 1e300}
    later = _record(3, {"v": {"textT": "kept too"}}, 1_767_225_600.6)
    body = orjson.dumps({"changeRecords": [good, bad, later]})
    reader = ShardReader(
        OFFLINE_CLIENT, info, ARN, SHARD, view_type="NEW_AND_OLD_IMAGES", after=None, previous=0
    )
    result = reader.decode(parse_body(body)["changeRecords"])
    assert [c.image["v"] for c in result.changes if c.image] == ["kept", "kept too"]
    assert [b.position.sequence_number for b in result.bad] == [bad["sequenceNumber"]]
    assert "createdAt" in result.bad[0].reason
    versions = [c.version for c in result.changes]
    assert versions[0] < versions[1]


@pytest.mark.parametrize(
    ("body", "complaint"),
    [
        (b"<html>busy</html>", "not JSON"),
        (b"[]", "a list, not an object"),
        (b'{"changeRecords": {}}', "not a list"),
    ],
)
def test_a_body_that_is_not_a_get_records_reply_is_a_transient_error(
    body: bytes, complaint: str
) -> None:
    with pytest.raises(TransientError, match=complaint):
        parse_body(body)


# --------------------------------------------------- the emulator, through real boto3

UDT = 'CREATE TYPE "{ks}"."addr" ("street" text, "zip" int, "tags" frozen<set<text>>)'
EVERY_TYPE = {
    "a_ascii": ("ascii", "plain"),
    "a_bigint": ("bigint", -(2**63)),
    "a_blob": ("blob", b"\x00\xff\x10"),
    "a_boolean": ("boolean", True),
    "a_int": ("int", -7),
    "a_date": ("date", dt.date(2024, 2, 29)),
    "a_decimal": ("decimal", decimal.Decimal("-12.3400")),
    "a_double": ("double", -1.5e-300),
    "a_duration": ("duration", Duration(14, 3, 5_000_000_001)),
    "a_float": ("float", 1.1),
    "a_inet": ("inet", "2001:db8::1"),
    "a_smallint": ("smallint", -32768),
    "a_text": ("text", 'héllo ✓ "quoted" \\ back'),
    "a_time": ("time", 3_723_000_000_009),
    "a_timestamp": ("timestamp", dt.datetime(2026, 1, 2, 3, 4, 5, 678000)),
    "a_timeuuid": ("timeuuid", uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")),
    "a_tinyint": ("tinyint", 127),
    "a_uuid": ("uuid", uuid.UUID("00000000-0000-4000-8000-0000000000ff")),
    "a_varchar": ("varchar", ""),
    "a_varint": ("varint", -(10**40)),
    "a_list": ("list<int>", [3, 1, 3]),
    "a_set": ("set<text>", {"b", "a"}),
    "a_map": ("map<text, frozen<list<timestamp>>>", {"k": [dt.datetime(2020, 1, 1)]}),
    "a_tuple": ("tuple<int, text, boolean>", (1, None, False)),
    "a_udt": ("frozen<addr>", ("Main St", None, {"x", "y"})),
    "a_nested": ("frozen<map<int, frozen<set<uuid>>>>", {1: {uuid.UUID(int=5)}}),
}


@pytest.fixture
def every_type_table(cql: Any, keyspace: str, client_timestamps: bool) -> Iterator[TableInfo]:
    from tests.conftest import table_options

    cql.execute(UDT.format(ks=keyspace))
    columns = ", ".join(f'"{name}" {cql_type}' for name, (cql_type, _) in EVERY_TYPE.items())
    options = table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=client_timestamps)
    cql.execute(
        f'CREATE TABLE "{keyspace}"."every" ("id" int, "seq" int, "banner" text static, '
        f'{columns}, PRIMARY KEY ("id", "seq")) {options}'
    )
    yield describe_table(cql, keyspace, "every")


def _write_every_type(cql: Any, info: TableInfo) -> None:
    """Inserts, updates of a regular and a static column, a row delete, a cell delete."""
    table = f'"{info.keyspace}"."{info.name}"'
    names = ", ".join(f'"{name}"' for name in EVERY_TYPE)
    marks = ", ".join("?" for _ in EVERY_TYPE)
    insert = cql.prepare(f'INSERT INTO {table} ("id", "seq", {names}) VALUES (?, ?, {marks})')
    for number in range(6):
        cql.execute(insert, [number % 2, number, *(value for _, value in EVERY_TYPE.values())])
    where = 'WHERE "id" = 0 AND "seq" = 0'
    cql.execute(f'UPDATE {table} SET "a_text" = %s, "a_set" = %s {where}', ("changed", {"z"}))
    cql.execute(f'UPDATE {table} SET "banner" = %s WHERE "id" = 1', ("Sale",))
    cql.execute(f'DELETE FROM {table} WHERE "id" = 0 AND "seq" = 2')
    cql.execute(f'DELETE "a_map", "a_blob" FROM {table} WHERE "id" = 1 AND "seq" = 3')


def latest_arn(streams: Any, info: TableInfo) -> str:
    return list_table_streams(streams, info)[-1].stream_arn


def _pages(get_records: Any, streams: Any, arn: str) -> Iterator[dict[str, Any]]:
    for shard in streams.get_stream(streamArn=arn)["shards"]:
        iterator = streams.get_shard_iterator(
            streamArn=arn, shardId=shard["shardId"], shardIteratorType="TRIM_HORIZON"
        )["shardIterator"]
        while iterator:
            page = get_records(shardIterator=iterator, maxResults=3)
            yield page
            if not page.get("changeRecords"):
                break
            iterator = page.get("nextShardIterator")


def test_the_emulators_records_of_every_type_give_the_same_changes_and_bytes(
    cql: Any, streams: Any, every_type_table: TableInfo, tmp_path: Path
) -> None:
    info = every_type_table
    _write_every_type(cql, info)
    arn = latest_arn(streams, info)
    ours = list(_pages(raw_get_records(streams), streams, arn))
    theirs = list(_pages(streams.get_records, streams, arn))
    assert len(ours) == len(theirs)
    view = info.view_type or "NEW_AND_OLD_IMAGES"
    ours_changes: list[Change] = []
    theirs_changes: list[Change] = []
    for mine, botos in zip(ours, theirs, strict=True):
        theirs_reply = dict(botos)
        theirs_reply.pop("ResponseMetadata", None)
        assert mine.keys() == theirs_reply.keys()
        # Iterators carry the time they were issued: only their presence can match.
        assert ("nextShardIterator" in mine) == ("nextShardIterator" in theirs_reply)
        assert mine.get("iteratorDescription") == theirs_reply.get("iteratorDescription")
        ours_changes += decode(info, mine, view)
        theirs_changes += decode(info, theirs_reply, view)
    assert ours_changes == theirs_changes
    assert len(ours_changes) == 10
    assert bulk_bytes(info, ours_changes, tmp_path) == bulk_bytes(info, theirs_changes, tmp_path)
    blobs = [c.image["a_blob"] for c in ours_changes if c.image and "a_blob" in c.image]
    assert blobs and all(blob == b"\x00\xff\x10" for blob in blobs)


def test_the_same_client_still_gives_botocores_parse_to_other_callers(
    cql: Any, streams: Any, every_type_table: TableInfo
) -> None:
    _write_every_type(cql, every_type_table)
    arn = latest_arn(streams, every_type_table)
    raw = raw_get_records(streams)
    mine = next(p for p in _pages(raw, streams, arn) if p.get("changeRecords"))
    plain = next(p for p in _pages(streams.get_records, streams, arn) if p.get("changeRecords"))
    assert "ResponseMetadata" in plain and "ResponseMetadata" not in mine
    cell = plain["changeRecords"][0]["newImage"]["valueCells"]["a_blob"]["value"]["blobT"]
    assert isinstance(cell, bytes)  # botocore decoded the Blob shape: it parsed this reply
    raw_cell = mine["changeRecords"][0]["newImage"]["valueCells"]["a_blob"]["value"]["blobT"]
    assert isinstance(raw_cell, str)  # the wire's base64 text: orjson parsed this one


def test_errors_are_parsed_by_botocore_as_before(cql: Any, emulator: Any, streams: Any) -> None:
    raw = raw_get_records(streams)
    with pytest.raises(ClientError) as invalid:
        raw(shardIterator="not-an-iterator", maxResults=10)
    assert invalid.value.response["Error"]["Code"] == "ValidationException"
    assert invalid.value.response["errorCode"] == "InvalidFormat"
    emulator.control.set_faults(throttle_rates={"GetRecords": 1.0})
    try:
        with pytest.raises(ClientError) as throttled:
            raw(shardIterator="not-an-iterator", maxResults=10)
    finally:
        emulator.control.set_faults(throttle_rates={})
    assert throttled.value.response["Error"]["Code"] == "ThrottlingException"


def test_the_shard_reader_hands_botocore_an_empty_body(
    cql: Any, streams: Any, keyspace: str
) -> None:
    from tests.conftest import table_options

    options = table_options(view_type="NEW_IMAGE", client_timestamps=False)
    cql.execute(f'CREATE TABLE "{keyspace}"."t" ("id" int PRIMARY KEY, "v" text) {options}')
    info = describe_table(cql, keyspace, "t")
    for number in range(20):
        cql.execute(f'INSERT INTO "{keyspace}"."t" ("id", "v") VALUES (%s, %s)', (number, "v"))
    arn = latest_arn(streams, info)
    bodies: list[bytes] = []

    def after_ours(response_dict: dict[str, Any], **_: Any) -> None:
        bodies.append(response_dict["body"])

    # Handlers run in the order they were registered: this one after the reader's own,
    # which its first read registers.
    changes: list[Change] = []
    for shard in streams.get_stream(streamArn=arn)["shards"]:
        reader = ShardReader(
            streams, info, arn, shard["shardId"], view_type="NEW_IMAGE", after=None, previous=0
        )
        result = reader.read()
        changes += result.changes
        streams.meta.events.register(EVENT, after_ours, unique_id="test-after-ours")
        while not result.at_tip or result.records:
            result = reader.read()
            changes += result.changes
    assert sorted(c.key for c in changes) == [(n,) for n in range(20)]
    assert bodies and set(bodies) == {b"{}"}


class Wrapped:
    """A client wrapper of the kind tests and users write: it sees botocore's parsed reply."""

    def __init__(self, client: Any) -> None:
        self._client = client
        self.replies: list[dict[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_records(self, **kwargs: Any) -> Any:
        reply = self._client.get_records(**kwargs)
        self.replies.append(reply)
        return reply


def test_a_wrapped_client_still_sees_and_returns_botocores_parse(
    cql: Any, streams: Any, keyspace: str
) -> None:
    from tests.conftest import table_options

    options = table_options(view_type="NEW_IMAGE", client_timestamps=False)
    cql.execute(f'CREATE TABLE "{keyspace}"."w" ("id" int PRIMARY KEY, "v" text) {options}')
    info = describe_table(cql, keyspace, "w")
    cql.execute(f'INSERT INTO "{keyspace}"."w" ("id", "v") VALUES (1, %s)', ("seen",))
    wrapped = Wrapped(streams)
    arn = latest_arn(streams, info)
    changes: list[Change] = []
    for shard in streams.get_stream(streamArn=arn)["shards"]:
        reader = ShardReader(
            wrapped, info, arn, shard["shardId"], view_type="NEW_IMAGE", after=None, previous=0
        )
        changes += reader.read().changes
    assert [c.image["v"] for c in changes if c.image] == ["seen"]
    records = [r for reply in wrapped.replies for r in reply.get("changeRecords", [])]
    assert records and all(isinstance(r["createdAt"], dt.datetime) for r in records)
