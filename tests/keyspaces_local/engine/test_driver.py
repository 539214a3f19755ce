"""The engine behind the real wire server, through the real cassandra-driver: cluster
metadata, prepared statements with every type, Keyspaces refusals, paged token-range scans."""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import itertools
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from cassandra import ConsistencyLevel, InvalidRequest
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import RoundRobinPolicy
from cassandra.query import SimpleStatement
from cassandra.util import Date, Time, uuid_from_time

from keyspaces_local.clock import Clock
from keyspaces_local.cql.engine import CqlEngine
from keyspaces_local.cql.server import CqlServer

from .conftest import RecordingSink


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    engine = CqlEngine(Clock(), RecordingSink())
    server = CqlServer(engine, host="127.0.0.1", port=0)
    server.start()
    profile = ExecutionProfile(
        load_balancing_policy=RoundRobinPolicy(), consistency_level=ConsistencyLevel.LOCAL_QUORUM
    )
    cluster = Cluster(
        ["127.0.0.1"],
        port=server.port,
        protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        yield cluster
    finally:
        cluster.shutdown()
        server.stop()


@pytest.fixture(scope="module")
def session(cluster: Cluster) -> Session:
    s = cluster.connect()
    s.execute("CREATE KEYSPACE drv WITH replication = {'class': 'SingleRegionStrategy'}")
    s.execute("CREATE TYPE drv.addr (street text, zip int)")
    s.execute("""
        CREATE TABLE drv.everything (
            p1 int, p2 text, c1 timestamp, c2 uuid, s1 text STATIC,
            a ascii, bi bigint, bl blob, bo boolean, da date, de decimal, db double, fl float,
            ip inet, i int, si smallint, t text, tm time, ts timestamp, tu timeuuid, ti tinyint,
            u uuid, vi varint, l list<int>, st set<text>, m map<text, int>,
            fm frozen<map<text, list<int>>>, tp tuple<int, text>, ad frozen<addr>,
            PRIMARY KEY ((p1, p2), c1, c2)
        ) WITH CLUSTERING ORDER BY (c1 DESC, c2 ASC)""")
    s.execute("CREATE TABLE drv.scan (k int, c int, v text, PRIMARY KEY (k, c))")
    return s


def test_metadata_shows_the_schema(cluster: Cluster, session: Session) -> None:
    cluster.refresh_schema_metadata()
    ks = cluster.metadata.keyspaces["drv"]
    table = ks.tables["everything"]
    assert [c.name for c in table.partition_key] == ["p1", "p2"]
    assert [(c.name, c.is_reversed) for c in table.clustering_key] == [("c1", True), ("c2", False)]
    assert table.columns["s1"].is_static
    assert table.columns["fm"].cql_type == "frozen<map<text, list<int>>>"
    assert table.columns["ad"].cql_type == "frozen<addr>"
    assert set(ks.user_types) == {"addr"}
    assert ks.user_types["addr"].field_names == ["street", "zip"]
    assert "system_schema" in cluster.metadata.keyspaces


def test_every_type_round_trips(session: Session) -> None:
    ts = datetime.datetime(2024, 5, 6, 7, 8, 9, 123000)
    values: dict[str, Any] = {
        "p1": 1,
        "p2": "two",
        "c1": ts,
        "c2": uuid.uuid4(),
        "s1": "static",
        "a": "ascii",
        "bi": 2**40,
        "bl": b"\x00\x01",
        "bo": True,
        "da": Date(datetime.date(2024, 1, 2)),
        "de": decimal.Decimal("12.345"),
        "db": 1.25,
        "fl": 0.5,
        "ip": "10.0.0.1",
        "i": -7,
        "si": 12,
        "t": "text é",
        "tm": Time(3_600_000_000_000),
        "ts": ts,
        "tu": uuid_from_time(1_700_000_000),
        "ti": 3,
        "u": uuid.uuid4(),
        "vi": 10**30,
        "l": [3, 1],
        "st": {"b", "a"},
        "m": {"k": 1},
        "fm": {"x": [1, 2]},
        "tp": (1, "one"),
    }
    cols = list(values)
    insert = session.prepare(
        f"INSERT INTO drv.everything ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"
    )
    session.execute(insert, list(values.values()))
    row = session.execute("SELECT * FROM drv.everything WHERE p1 = 1 AND p2 = 'two'").one()
    got = row._asdict()
    assert got["ip"] == "10.0.0.1" or ipaddress.ip_address(got["ip"]) == ipaddress.ip_address(
        "10.0.0.1"
    )
    for name in cols:
        if name in ("ip", "st", "m", "l"):
            continue
        assert got[name] == values[name], name
    assert list(got["st"]) == ["a", "b"] and dict(got["m"]) == {"k": 1} and got["l"] == [3, 1]


def test_default_consistency_write_is_refused(session: Session) -> None:
    stmt = SimpleStatement(
        "INSERT INTO drv.scan (k, c, v) VALUES (1, 1, 'x')",
        consistency_level=ConsistencyLevel.LOCAL_ONE,
    )
    with pytest.raises(InvalidRequest, match="LOCAL_ONE is not supported"):
        session.execute(stmt)


def test_writetime_is_refused(session: Session) -> None:
    with pytest.raises(InvalidRequest):
        session.execute("SELECT WRITETIME(v) FROM drv.scan")


def test_paged_token_range_scan(session: Session) -> None:
    insert = session.prepare("INSERT INTO drv.scan (k, c, v) VALUES (?, ?, ?)")
    keys = {(k, c) for k in range(300) for c in range(2)}
    for k, c in keys:
        session.execute(insert, (k, c, "v" * 20))
    scan = session.prepare("SELECT k, c FROM drv.scan WHERE token(k) > ? AND token(k) <= ?")
    scan.fetch_size = 50
    bounds = [-(2**63) + i * ((2**64 - 1) // 8) for i in range(8)] + [2**63 - 1]
    seen: Counter[tuple[int, int]] = Counter()
    for lo, hi in itertools.pairwise(bounds):
        for row in session.execute(scan, (lo, hi)):
            seen[(row.k, row.c)] += 1
    assert set(seen) == keys and set(seen.values()) == {1}


def test_schema_change_is_seen_by_the_driver(cluster: Cluster, session: Session) -> None:
    session.execute("CREATE TABLE drv.later (k int PRIMARY KEY, v int)")
    session.execute("ALTER TABLE drv.later ADD w text")
    cluster.refresh_table_metadata("drv", "later")
    assert "w" in cluster.metadata.keyspaces["drv"].tables["later"].columns
    rows = session.execute(
        "SELECT * FROM system_schema_mcs.tables WHERE keyspace_name = %s AND table_name = %s",
        ("drv", "later"),
    )
    assert rows.one().status == "ACTIVE"
