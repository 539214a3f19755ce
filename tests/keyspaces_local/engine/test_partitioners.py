"""The account's partitioner, through the real cassandra-driver (and boto3 for the stream).

Keyspaces offers Murmur3Partitioner (the default), RandomPartitioner and its own
DefaultPartitioner (RandomPartitioner's tokens), chosen with
`UPDATE system.local SET partitioner = '...' WHERE key = 'local'`. token() must equal what
the driver's own `Murmur3Token`/`MD5Token` compute from its routing key, partitions come in
token order, and token-range scans over the partitioner's ring see every row exactly once.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
from cassandra.metadata import MD5Token, Murmur3Token

MURMUR3 = "org.apache.cassandra.dht.Murmur3Partitioner"
RANDOM = "org.apache.cassandra.dht.RandomPartitioner"
DEFAULT = "com.amazonaws.cassandra.DefaultPartitioner"
# name -> (the driver's token class, the ring's minimum, its maximum)
RINGS = {
    MURMUR3: (Murmur3Token, -(2**63), 2**63 - 1),
    RANDOM: (MD5Token, -1, 2**127),
    DEFAULT: (MD5Token, -1, 2**127),
}

# The partitioner is account-wide: changing it on the shared emulator would change every
# other module's tokens, so this module has an emulator of its own.
OWN_EMULATOR: dict[str, Any] = {}


@pytest.fixture
def partitioner(request: pytest.FixtureRequest, cql: Any) -> Iterator[str]:
    name = str(request.param)
    cql.execute(f"UPDATE system.local SET partitioner = '{name}' WHERE key = 'local'")
    try:
        yield name
    finally:
        cql.execute(f"UPDATE system.local SET partitioner = '{MURMUR3}' WHERE key = 'local'")


def _connect(emulator: Any) -> Cluster:
    profile = ExecutionProfile(consistency_level=ConsistencyLevel.LOCAL_QUORUM)
    return Cluster(
        ["127.0.0.1"],
        port=emulator.cql_port,
        protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )


def _local_partitioner(cql: Any) -> str:
    return str(cql.execute("SELECT partitioner FROM system.local").one().partitioner)


def test_the_partitioner_is_murmur3_until_changed_and_only_that_system_write_is_taken(
    cql: Any, emulator: Any
) -> None:
    assert _local_partitioner(cql) == MURMUR3
    try:
        for name in (RANDOM, DEFAULT):
            cql.execute("UPDATE system.local SET partitioner = %s WHERE key = %s", (name, "local"))
            assert _local_partitioner(cql) == name
            cluster = _connect(emulator)  # a client connecting now sees it, as on Keyspaces
            try:
                cluster.connect()
                assert cluster.metadata.partitioner == name
            finally:
                cluster.shutdown()
        refused = [
            "UPDATE system.local SET partitioner = "
            "'org.apache.cassandra.dht.ByteOrderedPartitioner' WHERE key = 'local'",
            f"UPDATE system.local SET partitioner = '{RANDOM}' WHERE key = 'other'",
            "UPDATE system.local SET cluster_name = 'mine' WHERE key = 'local'",
            f"INSERT INTO system.local (key, partitioner) VALUES ('local', '{RANDOM}')",
            "DELETE FROM system.local WHERE key = 'local'",
            "UPDATE system.peers SET rack = 'r' WHERE peer = '127.0.0.1'",
        ]
        for statement in refused:
            with pytest.raises(InvalidRequest):
                cql.execute(statement)
        assert _local_partitioner(cql) == DEFAULT
    finally:
        cql.execute(f"UPDATE system.local SET partitioner = '{MURMUR3}' WHERE key = 'local'")


@pytest.fixture
def keyed(cql: Any, keyspace: str) -> str:
    """Tables with one partition key column (text) and with two (int, text)."""
    cql.execute(f'CREATE TABLE "{keyspace}".one (k text, c int, v int, PRIMARY KEY (k, c))')
    cql.execute(f'CREATE TABLE "{keyspace}".two (a int, b text, v int, PRIMARY KEY ((a, b)))')
    return keyspace


@pytest.mark.parametrize("partitioner", list(RINGS), indirect=True)
def test_token_is_what_the_driver_computes_from_its_routing_key(
    cql: Any, keyed: str, partitioner: str
) -> None:
    token_class = RINGS[partitioner][0]
    one = cql.prepare(f'INSERT INTO "{keyed}".one (k, c, v) VALUES (?, ?, 1)')
    two = cql.prepare(f'INSERT INTO "{keyed}".two (a, b, v) VALUES (?, ?, 1)')
    expected = {}
    for n in range(40):
        for statement, values in ((one, (f"key-{n}", 0)), (two, (n, f"b{n}"))):
            bound = statement.bind(values)
            cql.execute(bound)
            expected[values] = token_class.hash_fn(bound.routing_key)
    got = {(r.k, 0): r.t for r in cql.execute(f'SELECT k, token(k) AS t FROM "{keyed}".one')}
    got |= {
        (r.a, r.b): r.t for r in cql.execute(f'SELECT a, b, token(a, b) AS t FROM "{keyed}".two')
    }
    assert got == expected
    tokens = [r.t for r in cql.execute(f'SELECT token(k) AS t FROM "{keyed}".one')]
    assert tokens == sorted(tokens)  # partitions come in token order


@pytest.mark.parametrize("partitioner", list(RINGS), indirect=True)
def test_token_range_scans_over_the_ring_see_every_row_exactly_once(
    cql: Any, keyed: str, partitioner: str
) -> None:
    _, low, high = RINGS[partitioner]
    insert = cql.prepare(f'INSERT INTO "{keyed}".one (k, c, v) VALUES (?, ?, ?)')
    rows = {(f"key-{n}", c) for n in range(150) for c in range(2)}
    for k, c in rows:
        cql.execute(insert, (k, c, 1))
    scan = cql.prepare(
        f'SELECT k, c, token(k) AS t FROM "{keyed}".one WHERE token(k) > ? AND token(k) <= ?'
    )
    scan.fetch_size = 13
    bounds = [low + (high - low) * i // 16 for i in range(16)] + [high]
    seen: Counter[tuple[str, int]] = Counter()
    for lo, hi in itertools.pairwise(bounds):
        for row in cql.execute(scan, (lo, hi)):
            assert lo < row.t <= hi
            seen[(row.k, row.c)] += 1
    assert set(seen) == rows and set(seen.values()) == {1}


def test_a_partitioner_change_reorders_tables_and_statements_are_prepared_again(
    cql: Any, keyed: str
) -> None:
    insert = cql.prepare(f'INSERT INTO "{keyed}".one (k, c, v) VALUES (?, 0, 1)')
    for n in range(30):
        cql.execute(insert, (f"key-{n}",))
    select = cql.prepare(f'SELECT k, token(k) AS t FROM "{keyed}".one WHERE token(k) > ?')
    before = {r.k: r.t for r in cql.execute(select, (-(2**63),))}
    assert before == {k: Murmur3Token.hash_fn(k.encode()) for k in before}
    cql.execute(f"UPDATE system.local SET partitioner = '{RANDOM}' WHERE key = 'local'")
    try:
        # The same prepared statement: the driver prepares it again and reads varints.
        after = [(r.k, r.t) for r in cql.execute(select, (-1,))]
        assert dict(after) == {k: MD5Token.hash_fn(k.encode()) for k in before}
        assert [t for _, t in after] == sorted(t for _, t in after)
    finally:
        cql.execute(f"UPDATE system.local SET partitioner = '{MURMUR3}' WHERE key = 'local'")


def test_a_key_keeps_its_shard_and_order_across_a_partitioner_change(
    cql: Any, keyspace: str, streams: Any
) -> None:
    cql.execute(
        f'CREATE TABLE "{keyspace}".t (k text PRIMARY KEY, v int) WITH cdc = true AND '
        "CUSTOM_PROPERTIES = {'cdc_specification': {'view_type': 'NEW_IMAGE'}}"
    )
    update = cql.prepare(f'UPDATE "{keyspace}".t SET v = ? WHERE k = ?')
    try:
        for v, name in enumerate([MURMUR3, RANDOM, DEFAULT, MURMUR3]):
            cql.execute(f"UPDATE system.local SET partitioner = '{name}' WHERE key = 'local'")
            for n in range(20):
                cql.execute(update, (v, f"key-{n}"))
    finally:
        cql.execute(f"UPDATE system.local SET partitioner = '{MURMUR3}' WHERE key = 'local'")
    (stream,) = streams.list_streams(keyspaceName=keyspace, tableName="t")["streams"]
    arn = stream["streamArn"]
    per_key: dict[str, list[tuple[str, int]]] = {}
    for shard in streams.get_stream(streamArn=arn)["shards"]:
        iterator = streams.get_shard_iterator(
            streamArn=arn, shardId=shard["shardId"], shardIteratorType="TRIM_HORIZON"
        )["shardIterator"]
        for record in streams.get_records(shardIterator=iterator, maxResults=1000)["changeRecords"]:
            key = record["partitionKeys"]["k"]["textT"]
            value = int(record["newImage"]["valueCells"]["v"]["value"]["intT"])
            per_key.setdefault(key, []).append((shard["shardId"], value))
    assert len(per_key) == 20
    for records in per_key.values():
        assert len({shard for shard, _ in records}) == 1
        assert [v for _, v in records] == [0, 1, 2, 3]


def test_the_command_line_starts_with_the_partitioner_asked_for() -> None:
    """`--partitioner`: an account that never changed it reports DefaultPartitioner."""
    from keyspaces_local.server import EmulatorProcess

    with EmulatorProcess.start(partitioner=DEFAULT) as emu:
        cluster = _connect(emu)
        try:
            cql = cluster.connect()
            assert _local_partitioner(cql) == DEFAULT
            cql.execute("CREATE KEYSPACE sub WITH replication = {'class': 'SingleRegionStrategy'}")
            cql.execute("CREATE TABLE sub.t (k text PRIMARY KEY)")
            cql.execute("INSERT INTO sub.t (k) VALUES ('a')")
            (token,) = cql.execute("SELECT token(k) FROM sub.t").one()
            assert token == MD5Token.hash_fn(b"a")
        finally:
            cluster.shutdown()
