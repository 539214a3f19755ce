"""The two shapes of a static-only change record, through cassandra-driver and boto3.

Keyspaces documents that a write touching only static columns yields a record of its own,
but not whether its images hold every static column of the partition or only the ones the
write touched. The emulator makes either (`static_record_shape`), so a consumer can be
tested against both:

- "all" (the default): each image holds every live static column of the partition;
- "touched": each image holds only the static columns the write touched, the old image
  their previous values; a static deleted or set to null is in the old image only.

Which records there are, and which images each has, does not depend on the shape.
This module changes its emulator's settings, so it uses the module's own (`e2e_*`).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import boto3
import orjson
import pytest
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile

from keyspaces_local.server import EmulatorProcess
from keyspaces_local.streams.errors import ValidationError

CDC = (
    "WITH cdc = true AND CUSTOM_PROPERTIES = "
    "{'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}, 'ttl': {'status': 'enabled'}}"
)
TABLE_COLUMNS = (
    "pk text, ck int, v text, s1 text static, s2 text static, tags set<text> static, "
    "PRIMARY KEY (pk, ck)"
)


@pytest.fixture(params=["all", "touched"])
def shape(request: pytest.FixtureRequest, e2e_emulator: Any) -> Iterator[str]:
    e2e_emulator.control.set_static_record_shape(request.param)
    try:
        yield str(request.param)
    finally:
        e2e_emulator.control.set_static_record_shape("all")


def _static_records(streams: Any, keyspace: str, table: str) -> list[dict[str, Any]]:
    """The static-only records (no clustering key) of one partition, in commit order."""
    (stream,) = streams.list_streams(keyspaceName=keyspace, tableName=table)["streams"]
    arn = stream["streamArn"]
    found = []
    for shard in streams.get_stream(streamArn=arn)["shards"]:
        iterator = streams.get_shard_iterator(
            streamArn=arn, shardId=shard["shardId"], shardIteratorType="TRIM_HORIZON"
        )["shardIterator"]
        page = streams.get_records(shardIterator=iterator, maxResults=1000)
        found += [r for r in page["changeRecords"] if "clusteringKeys" not in r]
    return sorted(found, key=lambda r: r["sequenceNumber"])


def _statics(image: dict[str, Any] | None) -> dict[str, Any] | None:
    """An image's static cells as plain values (None: no image)."""
    if image is None:
        return None
    plain = {}
    for name, cell in image.get("staticCells", {}).items():
        ((kind, value),) = cell["value"].items()
        plain[name] = {e["value"]["textT"] for e in value} if kind == "setT" else value
    return plain


# (statement, images in the "all" shape, images in the "touched" shape): (new, old) statics
STEPS = [
    (
        "UPDATE {t} SET s1 = 'a', s2 = 'b' WHERE pk = 'p'",
        ({"s1": "a", "s2": "b"}, None),
        ({"s1": "a", "s2": "b"}, None),
    ),
    (
        "UPDATE {t} SET s1 = 'a2' WHERE pk = 'p'",
        ({"s1": "a2", "s2": "b"}, {"s1": "a", "s2": "b"}),
        ({"s1": "a2"}, {"s1": "a"}),
    ),
    (
        "UPDATE {t} SET s2 = null WHERE pk = 'p'",
        ({"s1": "a2"}, {"s1": "a2", "s2": "b"}),
        ({}, {"s2": "b"}),
    ),
    (
        "UPDATE {t} SET tags = tags + {{'x'}} WHERE pk = 'p'",
        ({"s1": "a2", "tags": {"x"}}, {"s1": "a2"}),
        ({"tags": {"x"}}, {}),
    ),
    (  # a write touching statics and the row: the static part is a record of its own
        "INSERT INTO {t} (pk, ck, v, s1) VALUES ('p', 1, 'row', 'a3')",
        ({"s1": "a3", "tags": {"x"}}, {"s1": "a2", "tags": {"x"}}),
        ({"s1": "a3"}, {"s1": "a2"}),
    ),
    (
        "DELETE s1 FROM {t} WHERE pk = 'p'",
        ({"tags": {"x"}}, {"s1": "a3", "tags": {"x"}}),
        ({}, {"s1": "a3"}),
    ),
    (  # a partition delete touches every static column, in both shapes
        "DELETE FROM {t} WHERE pk = 'p'",
        (None, {"tags": {"x"}}),
        (None, {"tags": {"x"}}),
    ),
]


def test_static_only_records_hold_all_statics_or_only_the_touched_ones(
    shape: str, e2e_cql: Any, e2e_streams: Any, e2e_keyspace: str
) -> None:
    table = f'"{e2e_keyspace}"."statics"'
    e2e_cql.execute(f"CREATE TABLE {table} ({TABLE_COLUMNS}) {CDC}")
    for statement, _, _ in STEPS:
        e2e_cql.execute(statement.format(t=table))
    records = _static_records(e2e_streams, e2e_keyspace, "statics")
    got = [(_statics(r.get("newImage")), _statics(r.get("oldImage"))) for r in records]
    assert got == [all_ if shape == "all" else touched for _, all_, touched in STEPS]
    assert all(set(r["partitionKeys"]) == {"pk"} for r in records)


def test_a_static_expiring_alone_shows_alone_in_the_touched_shape(
    shape: str, e2e_emulator: Any, e2e_cql: Any, e2e_streams: Any, e2e_keyspace: str
) -> None:
    table = f'"{e2e_keyspace}"."expiring"'
    e2e_cql.execute(f"CREATE TABLE {table} ({TABLE_COLUMNS}) {CDC}")
    e2e_cql.execute(f"UPDATE {table} SET s1 = 'stays' WHERE pk = 'p'")
    e2e_cql.execute(f"UPDATE {table} USING TTL 5 SET s2 = 'goes' WHERE pk = 'p'")
    e2e_emulator.control.advance_clock(5 + 2 + 1)  # the TTL, then the TTL record's delay
    e2e_emulator.control.sweep_expired()
    last = _static_records(e2e_streams, e2e_keyspace, "expiring")[-1]
    assert last["origin"] == "TTL"
    images = (_statics(last.get("newImage")), _statics(last.get("oldImage")))
    if shape == "all":
        assert images == ({"s1": "stays"}, {"s1": "stays", "s2": "goes"})
    else:
        assert images == ({}, {"s2": "goes"})


def test_an_unknown_shape_is_refused(e2e_emulator: Any) -> None:
    with pytest.raises(ValidationError, match="all, touched"):
        e2e_emulator.control.set_static_record_shape("some")


def test_the_command_line_flag_and_the_http_control_choose_the_shape() -> None:
    emu = EmulatorProcess.start(static_record_shape="touched")
    try:
        profile = ExecutionProfile(consistency_level=ConsistencyLevel.LOCAL_QUORUM)
        cluster = Cluster(
            [emu.cql_host],
            port=emu.cql_port,
            protocol_version=4,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        )
        streams = boto3.client(
            "keyspacesstreams",
            endpoint_url=emu.streams_url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        try:
            cql = cluster.connect()
            cql.execute("CREATE KEYSPACE sub WITH replication = {'class': 'SingleRegionStrategy'}")
            cql.execute(f"CREATE TABLE sub.t ({TABLE_COLUMNS}) {CDC}")
            cql.execute("UPDATE sub.t SET s1 = 'a', s2 = 'b' WHERE pk = 'p'")
            cql.execute("UPDATE sub.t SET s1 = 'a2' WHERE pk = 'p'")  # the touched shape
            assert _post(emu.control_url + "/static_record_shape", {"shape": "all"}) == {
                "shape": "all"
            }
            cql.execute("UPDATE sub.t SET s1 = 'a3' WHERE pk = 'p'")  # every static again
        finally:
            cluster.shutdown()
        records = _static_records(streams, "sub", "t")
        assert [_statics(r["newImage"]) for r in records[1:]] == [
            {"s1": "a2"},
            {"s1": "a3", "s2": "b"},
        ]
        with pytest.raises(urllib.error.HTTPError) as refused:
            _post(emu.control_url + "/static_record_shape", {"shape": "some"})
        refused.value.close()
        assert refused.value.code == 400
    finally:
        assert emu.stop() == 0


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return orjson.loads(response.read())
