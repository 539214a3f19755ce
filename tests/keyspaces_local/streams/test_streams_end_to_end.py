"""End to end: writes through cassandra-driver, change records through boto3, against the
whole emulator (in-process from the session fixture, and as a subprocess)."""

from __future__ import annotations

import signal
import subprocess
import sys
import urllib.request
from collections import defaultdict
from typing import Any

import boto3
import orjson
import pytest
from botocore.config import Config
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.concurrent import execute_concurrent_with_args

from keyspaces_local.server import EmulatorProcess


def _cdc_table(cql: Any, keyspace: str, name: str, view: str = "NEW_AND_OLD_IMAGES") -> None:
    cql.execute(
        f'CREATE TABLE "{keyspace}"."{name}" (pk text, ck int, v text, s text static, '
        "PRIMARY KEY (pk, ck)) WITH cdc = true AND CUSTOM_PROPERTIES = "
        f"{{'cdc_specification': {{'view_type': '{view}'}}}}"
    )


def _stream_arn(streams: Any, keyspace: str, table: str) -> str:
    (stream,) = streams.list_streams(keyspaceName=keyspace, tableName=table)["streams"]
    return str(stream["streamArn"])


def _all_records(streams: Any, arn: str) -> list[dict[str, Any]]:
    """Every record of every shard, parents before children."""
    shards = streams.get_paginator("get_stream").paginate(streamArn=arn).build_full_result()
    records: list[dict[str, Any]] = []
    for shard in shards["shards"]:
        iterator = streams.get_shard_iterator(
            streamArn=arn, shardId=shard["shardId"], shardIteratorType="TRIM_HORIZON"
        )["shardIterator"]
        while iterator:
            page = streams.get_records(shardIterator=iterator, maxResults=1000)
            records += page["changeRecords"]
            iterator = page.get("nextShardIterator")
            if page["iteratorDescription"]["iteratorPosition"] == "AT_TIP":
                break
    return records


def test_cql_writes_become_change_records(
    e2e_cql: Any, e2e_streams: Any, e2e_keyspace: str
) -> None:
    _cdc_table(e2e_cql, e2e_keyspace, "items")
    table = f'"{e2e_keyspace}"."items"'
    e2e_cql.execute(f"INSERT INTO {table} (pk, ck, v) VALUES ('a', 1, 'x')")
    e2e_cql.execute(f"UPDATE {table} SET v = 'y' WHERE pk = 'a' AND ck = 1")
    e2e_cql.execute(f"UPDATE {table} SET s = 'shared' WHERE pk = 'a'")
    e2e_cql.execute(f"DELETE FROM {table} WHERE pk = 'a' AND ck = 1")
    arn = _stream_arn(e2e_streams, e2e_keyspace, "items")
    records = _all_records(e2e_streams, arn)
    row = [r for r in records if "clusteringKeys" in r]
    assert [("newImage" in r, "oldImage" in r) for r in row] == [
        (True, False),
        (True, True),
        (False, True),
    ]
    assert row[0]["newImage"]["valueCells"]["v"] == {"value": {"textT": "x"}}
    assert row[1]["newImage"]["valueCells"]["v"] == {"value": {"textT": "y"}}
    (static,) = [r for r in records if "clusteringKeys" not in r]
    assert static["partitionKeys"] == {"pk": {"textT": "a"}}
    assert static["newImage"]["staticCells"] == {"s": {"value": {"textT": "shared"}}}
    latest = e2e_cql.execute(
        "SELECT custom_properties FROM system_schema_mcs.tables "
        "WHERE keyspace_name = %s AND table_name = 'items'",
        (e2e_keyspace,),
    ).one()
    assert latest.custom_properties["cdc_specification"]["latest_stream_arn"] == arn


def test_disabling_and_enabling_cdc_over_cql_makes_a_new_stream(
    e2e_cql: Any, e2e_streams: Any, e2e_keyspace: str
) -> None:
    _cdc_table(e2e_cql, e2e_keyspace, "toggled")
    first = _stream_arn(e2e_streams, e2e_keyspace, "toggled")
    e2e_cql.execute(f'ALTER TABLE "{e2e_keyspace}"."toggled" WITH cdc = false')
    assert e2e_streams.get_stream(streamArn=first)["streamStatus"] == "DISABLED"
    e2e_cql.execute(
        f'ALTER TABLE "{e2e_keyspace}"."toggled" WITH cdc = true AND CUSTOM_PROPERTIES = '
        "{'cdc_specification': {'view_type': 'KEYS_ONLY'}}"
    )
    listed = e2e_streams.list_streams(keyspaceName=e2e_keyspace, tableName="toggled")["streams"]
    assert len(listed) == 2 and listed[0]["streamArn"] == first
    second = e2e_streams.get_stream(streamArn=listed[1]["streamArn"])
    assert second["streamStatus"] == "ENABLED" and second["streamViewType"] == "KEYS_ONLY"


def test_concurrent_writes_each_yield_exactly_one_record(
    e2e_cql: Any, e2e_streams: Any, e2e_keyspace: str
) -> None:
    """Many writes in flight at once (as a loaded client sends them) lose no record.

    How fast this goes is measured by `make bench`, not asserted here."""
    _cdc_table(e2e_cql, e2e_keyspace, "fast")
    insert = e2e_cql.prepare(f'INSERT INTO "{e2e_keyspace}"."fast" (pk, ck, v) VALUES (?, ?, ?)')
    rows = [(f"p{i % 100}", i, "value") for i in range(3000)]
    results = execute_concurrent_with_args(e2e_cql, insert, rows, concurrency=64)
    assert all(ok for ok, _ in results)
    records = _all_records(e2e_streams, _stream_arn(e2e_streams, e2e_keyspace, "fast"))
    keys = sorted(
        (r["partitionKeys"]["pk"]["textT"], int(r["clusteringKeys"]["ck"]["intT"])) for r in records
    )
    assert keys == sorted((pk, ck) for pk, ck, _ in rows)


def test_split_under_writes_keeps_each_keys_order(
    e2e_emulator: Any, e2e_cql: Any, e2e_streams: Any, e2e_keyspace: str
) -> None:
    _cdc_table(e2e_cql, e2e_keyspace, "moving")
    update = e2e_cql.prepare(f'UPDATE "{e2e_keyspace}"."moving" SET v = ? WHERE pk = ? AND ck = ?')
    arn = _stream_arn(e2e_streams, e2e_keyspace, "moving")
    keys = [(f"p{i % 5}", i) for i in range(40)]
    for round_ in range(4):
        execute_concurrent_with_args(e2e_cql, update, [(str(round_), pk, ck) for pk, ck in keys])
        shard_id = e2e_emulator.store.open_shard_ids(arn)[0]
        e2e_emulator.control.split_shard(arn, shard_id)
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for record in _all_records(e2e_streams, arn):  # GetStream lists parents before children
        key = (record["partitionKeys"]["pk"]["textT"], record["clusteringKeys"]["ck"]["intT"])
        seen[key].append(record["newImage"]["valueCells"]["v"]["value"]["textT"])
    assert len(seen) == len(keys)
    assert all(values == ["0", "1", "2", "3"] for values in seen.values())


def test_subprocess_emulator_prints_its_endpoints_and_exits_cleanly() -> None:
    emu = EmulatorProcess.start(shard_count=2, credentials={"alice": "secret"})
    try:
        from cassandra.auth import PlainTextAuthProvider

        profile = ExecutionProfile(consistency_level=ConsistencyLevel.LOCAL_QUORUM)
        cluster = Cluster(
            [emu.cql_host],
            port=emu.cql_port,
            protocol_version=4,
            auth_provider=PlainTextAuthProvider("alice", "secret"),
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        )
        try:
            session = cluster.connect()
            session.execute(
                "CREATE KEYSPACE sub WITH replication = {'class': 'SingleRegionStrategy'}"
            )
            _cdc_table(session, "sub", "t")
            session.execute("INSERT INTO sub.t (pk, ck, v) VALUES ('k', 1, 'v')")
        finally:
            cluster.shutdown()
        client = boto3.client(
            "keyspacesstreams",
            endpoint_url=emu.streams_url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
        )
        arn = _stream_arn(client, "sub", "t")
        assert len(client.get_stream(streamArn=arn)["shards"]) == 2
        assert len(_all_records(client, arn)) == 1
        request = urllib.request.Request(emu.control_url + "/health")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert orjson.loads(response.read())["ok"] is True
    finally:
        assert emu.stop() == 0


def test_command_line_help_documents_every_option() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "keyspaces_local", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    for option in (
        "--host",
        "--cql-port",
        "--streams-port",
        "--shards",
        "--retention-seconds",
        "--iterator-lifetime-seconds",
        "--ttl-record-delay-seconds",
        "--throttle-rate",
        "--internal-error-rate",
        "--empty-page-rate",
        "--static-record-shape",
        "--partitioner",
        "--username",
        "--password",
    ):
        assert option in out


def test_ttl_expiry_becomes_a_ttl_record(
    e2e_emulator: Any, e2e_cql: Any, e2e_streams: Any, e2e_keyspace: str
) -> None:
    e2e_cql.execute(
        f'CREATE TABLE "{e2e_keyspace}"."expiring" (pk text, ck int, v text, '
        "PRIMARY KEY (pk, ck)) WITH cdc = true AND CUSTOM_PROPERTIES = "
        "{'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}, 'ttl': {'status': 'enabled'}}"
    )
    e2e_cql.execute(
        f"INSERT INTO \"{e2e_keyspace}\".\"expiring\" (pk, ck, v) VALUES ('a', 1, 'x') USING TTL 60"
    )
    arn = _stream_arn(e2e_streams, e2e_keyspace, "expiring")
    (insert,) = _all_records(e2e_streams, arn)
    expires = int(insert["newImage"]["valueCells"]["v"]["metadata"]["expirationTime"])
    assert abs(expires - (e2e_emulator.clock.now_ms() // 1000 + 60)) <= 2
    assert insert["newImage"]["rowMetadata"]["expirationTime"] == str(expires)
    e2e_emulator.control.advance_clock(60 + 2 + 1)  # TTL, then the record delay (2 s here)
    e2e_emulator.control.sweep_expired()
    records = _all_records(e2e_streams, arn)
    assert [r["origin"] for r in records] == ["USER", "TTL"]
    ttl = records[1]
    assert "newImage" not in ttl
    assert ttl["oldImage"]["valueCells"]["v"]["value"] == {"textT": "x"}


def test_subprocess_options_and_control_over_http() -> None:
    emu = EmulatorProcess.start(iterator_lifetime_s=60, throttle_rate=0.0)
    try:
        client = boto3.client(
            "keyspacesstreams",
            endpoint_url=emu.streams_url,
            region_name="us-east-1",
            aws_access_key_id="x",
            aws_secret_access_key="x",
            config=Config(retries={"total_max_attempts": 1}),
        )
        profile = ExecutionProfile(consistency_level=ConsistencyLevel.LOCAL_QUORUM)
        cluster = Cluster(
            [emu.cql_host],
            port=emu.cql_port,
            protocol_version=4,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        )
        try:
            session = cluster.connect()
            session.execute(
                "CREATE KEYSPACE sub WITH replication = {'class': 'SingleRegionStrategy'}"
            )
            _cdc_table(session, "sub", "t")
        finally:
            cluster.shutdown()
        arn = _stream_arn(client, "sub", "t")
        shard_id = client.get_stream(streamArn=arn)["shards"][0]["shardId"]
        iterator = client.get_shard_iterator(
            streamArn=arn, shardId=shard_id, shardIteratorType="TRIM_HORIZON"
        )["shardIterator"]
        _post(emu.control_url + "/advance_clock", {"seconds": 61})
        with pytest.raises(client.exceptions.ValidationException) as err:
            client.get_records(shardIterator=iterator)
        assert err.value.response["errorCode"] == "ExpiredIterator"
        children = _post(emu.control_url + "/split", {"streamArn": arn, "shardId": shard_id})
        shards = {s["shardId"]: s for s in client.get_stream(streamArn=arn)["shards"]}
        assert all(shards[c]["parentShardIds"] == [shard_id] for c in children["shardIds"])
        _post(emu.control_url + "/faults", {"throttle_rate": 1.0})
        with pytest.raises(client.exceptions.ThrottlingException):
            client.list_streams()
    finally:
        assert emu.stop() == 0


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return orjson.loads(response.read())


def test_command_line_prints_exactly_one_line_and_exits_zero_on_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "keyspaces_local", "--shards", "3"],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        ready = orjson.loads(process.stdout.readline())
        assert set(ready) == {"cql_host", "cql_port", "streams_url", "control_url"}
        assert ready["control_url"] == ready["streams_url"] + "/_control"
        process.send_signal(signal.SIGTERM)
        rest, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert rest == b""
    assert process.returncode == 0
