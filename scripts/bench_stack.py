"""The local stack the benchmark measures, and the bare clients it measures with.

`Stack.start()` runs keyspaces_local as a subprocess (so the emulator never
shares the GIL with what is measured) and an osmem-server (its own binary),
and connects a cassandra-driver session, a boto3 `keyspacesstreams` client
and an opensearch-py client to them. The helpers here use those clients the
plain way a user of the libraries would: they are the ceilings' building
blocks and touch nothing of ks2os.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bench_data
import boto3
import botocore.config
from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import RoundRobinPolicy
from opensearchpy import OpenSearch

MIN_TOKEN = -(2**63)
MAX_TOKEN = 2**63 - 1


def dummy_aws_credentials() -> None:
    """boto3 signs every request; the emulator checks no signature."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")


@dataclass
class Stack:
    emulator: Any  # keyspaces_local.server.EmulatorProcess
    osmem: Any  # osmem_server.OsmemServer
    cluster: Cluster
    session: Session
    opensearch: OpenSearch
    _closers: list[Callable[[], Any]] = field(default_factory=list)
    shard_count: int = 4

    @classmethod
    def start(cls, shard_count: int = 4) -> Stack:
        from osmem_server import OsmemServer

        from keyspaces_local.server import EmulatorProcess

        dummy_aws_credentials()
        emulator = EmulatorProcess.start(shard_count=shard_count)
        try:
            osmem = OsmemServer.start(japanese=False)
        except BaseException:
            emulator.stop()
            raise
        try:
            cluster = new_cluster(emulator.cql_host, emulator.cql_port)
            session = cluster.connect()
        except BaseException:
            osmem.close()
            emulator.stop()
            raise
        # One pooled connection per sending thread, so none is opened per request.
        client = OpenSearch(hosts=[osmem.url], timeout=120, http_compress=False, pool_maxsize=32)
        return cls(emulator, osmem, cluster, session, client, shard_count=shard_count)

    @property
    def cql_host(self) -> str:
        return str(self.emulator.cql_host)

    @property
    def cql_port(self) -> int:
        return int(self.emulator.cql_port)

    @property
    def streams_url(self) -> str:
        return str(self.emulator.streams_url)

    @property
    def opensearch_url(self) -> str:
        return str(self.osmem.url)

    def streams(self) -> Any:
        """A new boto3 keyspacesstreams client (one per thread)."""
        return boto3.client(
            "keyspacesstreams",
            endpoint_url=self.streams_url,
            region_name="us-east-1",
            config=botocore.config.Config(retries={"max_attempts": 3, "mode": "standard"}),
        )

    def close(self) -> None:
        for close in (self.cluster.shutdown, self._close_osmem, self.emulator.stop):
            try:
                close()
            except Exception as exc:  # closing must go on to the next server
                print(f"bench: closing the stack: {exc}")

    def _close_osmem(self) -> None:
        self.osmem.close()
        for pipe in (self.osmem.process.stdin, self.osmem.process.stdout):
            if pipe is not None:
                pipe.close()


def new_cluster(host: str, port: int) -> Cluster:
    # Keyspaces takes writes at LOCAL_QUORUM only.
    profile = ExecutionProfile(
        load_balancing_policy=RoundRobinPolicy(),
        consistency_level=ConsistencyLevel.LOCAL_QUORUM,
        request_timeout=60,
    )
    return Cluster(
        [host], port=port, protocol_version=4, execution_profiles={EXEC_PROFILE_DEFAULT: profile}
    )


# ------------------------------------------------------------------- CQL


def create_keyspace(session: Session) -> None:
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {bench_data.q(bench_data.KEYSPACE)} "
        "WITH replication = {'class': 'SingleRegionStrategy'}"
    )


def create_table(session: Session, table: str, *, cdc: bool, timeout_s: float = 60.0) -> None:
    """Create a bench table and wait until Keyspaces reports it ACTIVE (DDL is asynchronous)."""
    session.execute(bench_data.create_table_cql(table, cdc=cdc))
    deadline = time.monotonic() + timeout_s
    while True:
        found = session.execute(
            "SELECT status FROM system_schema_mcs.tables WHERE keyspace_name = %s "
            "AND table_name = %s",
            (bench_data.KEYSPACE, table),
        ).one()
        status = None if found is None else found[0]
        if status in (None, "ACTIVE"):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"table {table} still {status} after {timeout_s} s")
        time.sleep(0.05)


def write_all(session: Session, cql: str, params: list[tuple[Any, ...]], concurrency: int) -> float:
    """Run one prepared statement for every parameter tuple; returns the seconds it took."""
    from cassandra.concurrent import execute_concurrent_with_args

    prepared = session.prepare(cql)
    prepared.consistency_level = ConsistencyLevel.LOCAL_QUORUM
    started = time.perf_counter()
    execute_concurrent_with_args(
        session, prepared, params, concurrency=concurrency, raise_on_first_error=True
    )
    return time.perf_counter() - started


def split_ring(count: int) -> list[tuple[int, int]]:
    """`count` ranges (start exclusive, end inclusive) covering the Murmur3 ring."""
    span = MAX_TOKEN - MIN_TOKEN
    bounds = [MIN_TOKEN + span * i // count for i in range(count)] + [MAX_TOKEN]
    return [(bounds[i], bounds[i + 1]) for i in range(count)]


def range_statements(session: Session, table: str, fetch_size: int) -> tuple[Any, Any]:
    """Prepared token-range SELECTs: `> start` and (for the ring's first range) `>= start`."""
    token = f"token({bench_data.q('shop')})"
    base = f"SELECT * FROM {bench_data.q(bench_data.KEYSPACE)}.{bench_data.q(table)} WHERE "
    after = session.prepare(base + f"{token} > ? AND {token} <= ?")
    first = session.prepare(base + f"{token} >= ? AND {token} <= ?")
    for statement in (after, first):
        statement.fetch_size = fetch_size
        statement.consistency_level = ConsistencyLevel.LOCAL_QUORUM
    return after, first


def scan_range(
    session: Session, statements: tuple[Any, Any], token_range: tuple[int, int]
) -> Iterator[list[Any]]:
    """The range's rows, page by page, with the driver's paging state."""
    after, first = statements
    statement = first if token_range[0] == MIN_TOKEN else after
    paging_state: bytes | None = None
    while True:
        result = session.execute(statement, token_range, paging_state=paging_state)
        yield result.current_rows
        paging_state = result.paging_state
        if paging_state is None:
            return


# --------------------------------------------------------------- streams


def stream_arn(streams: Any, table: str) -> str:
    found = streams.list_streams(keyspaceName=bench_data.KEYSPACE, tableName=table)["streams"]
    if not found:
        raise RuntimeError(f"no CDC stream for {bench_data.KEYSPACE}.{table}")
    # The newest stream (labels are creation times).
    return str(max(found, key=lambda s: s["streamLabel"])["streamArn"])


def shard_ids(streams: Any, arn: str) -> list[str]:
    ids: list[str] = []
    for page in streams.get_paginator("get_stream").paginate(streamArn=arn):
        ids += [shard["shardId"] for shard in page.get("shards", [])]
    return ids


def read_shard(
    streams: Any, arn: str, shard_id: str, limit: int = 1000
) -> Iterator[list[dict[str, Any]]]:
    """Pages of a shard's records from its trim horizon until nothing more is stored."""
    iterator = streams.get_shard_iterator(
        streamArn=arn, shardId=shard_id, shardIteratorType="TRIM_HORIZON"
    )["shardIterator"]
    while iterator:
        page = streams.get_records(shardIterator=iterator, maxResults=limit)
        records = page.get("changeRecords", [])
        if records:
            yield records
        iterator = page.get("nextShardIterator")
        position = page.get("iteratorDescription", {}).get("iteratorPosition")
        if not records and position != "BEHIND_TIP":
            return


def count_records(streams: Any, arn: str) -> int:
    return sum(
        len(records)
        for shard in shard_ids(streams, arn)
        for records in read_shard(streams, arn, shard)
    )


def fetch_records(streams: Any, arn: str, at_most: int) -> list[dict[str, Any]]:
    """Up to `at_most` parsed records, taken from every shard in turn."""
    found: list[dict[str, Any]] = []
    for shard in shard_ids(streams, arn):
        for records in read_shard(streams, arn, shard):
            found += records
            if len(found) >= at_most:
                return found[:at_most]
    return found


def raw_bodies(streams: Any, arn: str, at_most: int) -> list[bytes]:
    """The raw HTTP bodies of GetRecords pages (maxResults 1000) holding up to `at_most`
    records, read through boto3 (a before-parse hook keeps each body as it came)."""
    bodies: list[bytes] = []

    def keep(response_dict: dict[str, Any], **_: Any) -> None:
        if response_dict.get("status_code") == 200:
            bodies.append(bytes(response_dict["body"]))

    streams.meta.events.register("before-parse.keyspacesstreams.GetRecords", keep)
    try:
        records = 0
        for shard in shard_ids(streams, arn):
            for page in read_shard(streams, arn, shard):
                records += len(page)
                if records >= at_most:
                    break
            if records >= at_most:
                break
    finally:
        streams.meta.events.unregister("before-parse.keyspacesstreams.GetRecords", keep)
    # Keep only pages with records (a shard's last page at its tip is empty).
    return [body for body in bodies if b'"sequenceNumber"' in body]
