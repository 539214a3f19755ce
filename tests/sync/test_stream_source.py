"""The CDC shard reader against keyspaces_local's Streams API, through real boto3.

What users rely on: every change of a key comes out once and in order with
rising versions, across splits and merges read in lineage order; a reader
started from a checkpoint recomputes exactly the versions of the first read;
expired iterators and throttling are survived; trimmed records are reported
as a gap; a table without CDC fails with a message saying how to enable it; a
disabled stream stays readable to its end beside its successor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sync.errors import ConfigError
from sync.keyspaces import TableInfo, describe_table
from sync.model import Change, Op
from sync.sources.streams import (
    GapKind,
    ReadResult,
    RowLookup,
    ShardProgress,
    ShardReader,
    StreamDescription,
    describe_stream,
    list_table_streams,
    readable_shards,
    start_version,
)

CDC = "WITH cdc = true AND CUSTOM_PROPERTIES = {{'cdc_specification': {{'view_type': '{view}'}}}}"


# This module moves the emulator clock ahead (up to days, to expire iterators
# and trim records), which would skew every later test of the session.
OWN_EMULATOR: dict[str, Any] = {}


def _create(cql: Any, keyspace: str, view: str = "NEW_AND_OLD_IMAGES") -> TableInfo:
    cql.execute(
        f'CREATE TABLE "{keyspace}"."events" ("id" int, "seq" int, "body" text, '
        f'PRIMARY KEY ("id", "seq")) {CDC.format(view=view)}'
    )
    return describe_table(cql, keyspace, "events")


@pytest.fixture
def table(cql: Any, keyspace: str) -> Iterator[TableInfo]:
    yield _create(cql, keyspace)


class Drain:
    """Reads a stream in lineage order to its current tip, like a follower would."""

    def __init__(self, streams: Any, info: TableInfo, lookup: RowLookup | None = None) -> None:
        self.streams, self.info, self.lookup = streams, info, lookup
        self.arn = latest_arn(streams, info)
        self.progress: dict[str, ShardProgress] = {}
        self.checkpoints: dict[str, tuple[str | None, int]] = {}
        self.changes: list[Change] = []
        self.results: list[ReadResult] = []

    def describe(self) -> StreamDescription:
        return describe_stream(self.streams, self.arn)

    def reader(self, stream: StreamDescription, shard_id: str) -> ShardReader:
        after, previous = self.checkpoints.get(
            shard_id, (None, start_version(stream.shards[shard_id], self.progress))
        )
        return ShardReader(
            self.streams,
            self.info,
            self.arn,
            shard_id,
            view_type=stream.view_type,
            after=after,
            previous=previous,
            limit=7,
            lookup=self.lookup,
        )

    def to_tip(self) -> list[Change]:
        """Every readable shard to its tip (or end), parents before children."""
        read: list[Change] = []
        while True:
            stream = self.describe()
            progressed = False
            for shard_id in readable_shards(stream.shards, self.progress):
                reader = self.reader(stream, shard_id)
                while True:
                    result = reader.read()
                    self.results.append(result)
                    read += result.changes
                    if result.closed:
                        self.progress[shard_id] = ShardProgress(True, reader.previous)
                        progressed = True
                        break
                    if result.at_tip and not result.records:
                        break
                self.checkpoints[shard_id] = (reader.position, reader.previous)
            if not progressed:
                self.changes += read
                return read


def latest_arn(streams: Any, info: TableInfo) -> str:
    return list_table_streams(streams, info)[-1].stream_arn


def _rows(cql: Any, info: TableInfo, writes: list[tuple[str, int, int, str | None]]) -> None:
    table = f'"{info.keyspace}"."{info.name}"'
    for op, key, seq, body in writes:
        if op == "upsert":
            cql.execute(
                f'INSERT INTO {table} ("id", "seq", "body") VALUES (%s, %s, %s)', (key, seq, body)
            )
        else:
            cql.execute(f'DELETE FROM {table} WHERE "id" = %s AND "seq" = %s', (key, seq))


def _final_state(changes: list[Change]) -> dict[tuple[Any, ...], tuple[int, Any]]:
    """Apply changes the way OpenSearch external versions do: the highest version wins."""
    state: dict[tuple[Any, ...], tuple[int, Any]] = {}
    for change in changes:
        current = state.get(change.key)
        if current is None or change.version > current[0]:
            state[change.key] = (change.version, None if change.op is Op.DELETE else change.image)
    return state


def test_the_stream_lists_its_shards_and_view_type(streams: Any, table: TableInfo) -> None:
    stream = describe_stream(streams, latest_arn(streams, table))
    assert stream.status == "ENABLED" and stream.view_type == "NEW_AND_OLD_IMAGES"
    assert len(stream.shards) == 4
    assert readable_shards(stream.shards, {}) == sorted(stream.shards)


def test_changes_of_a_key_come_in_order_with_rising_versions(
    cql: Any, streams: Any, table: TableInfo
) -> None:
    writes = [("upsert", k, s, f"v{n}") for n in range(3) for k in range(6) for s in range(2)]
    writes += [("delete", 2, 0, None), ("upsert", 3, 1, "last")]
    _rows(cql, table, writes)
    drain = Drain(streams, table)
    changes = drain.to_tip()
    assert len(changes) == len(writes)
    per_key: dict[tuple[Any, ...], list[Change]] = {}
    for change in changes:
        per_key.setdefault(change.key, []).append(change)
    for history in per_key.values():
        versions = [c.version for c in history]
        assert versions == sorted(versions) and len(set(versions)) == len(versions)
    final = _final_state(changes)
    assert final[(2, 0)][1] is None
    assert final[(3, 1)][1]["body"] == "last"
    assert final[(5, 1)][1]["body"] == "v2"


def test_a_reader_resumed_from_a_checkpoint_recomputes_the_same_versions(
    cql: Any, streams: Any, table: TableInfo
) -> None:
    _rows(cql, table, [("upsert", k % 3, k, f"b{k}") for k in range(40)])
    first = Drain(streams, table)
    all_changes = first.to_tip()
    stream = first.describe()
    by_shard: dict[str, list[Change]] = {}
    for change in all_changes:
        by_shard.setdefault(change.source.shard_id, []).append(change)  # type: ignore[union-attr]
    shard_id, changes = max(by_shard.items(), key=lambda item: len(item[1]))
    assert len(changes) >= 3
    cut = changes[len(changes) // 2]
    replay = ShardReader(
        streams,
        table,
        first.arn,
        shard_id,
        view_type=stream.view_type,
        after=cut.source.sequence_number,  # type: ignore[union-attr]
        previous=cut.version,
        limit=5,
    )
    again: list[Change] = []
    while True:
        result = replay.read()
        again += result.changes
        if result.at_tip and not result.records:
            break
    assert [c.version for c in again] == [c.version for c in changes[len(changes) // 2 + 1 :]]
    assert [c.key for c in again] == [c.key for c in changes[len(changes) // 2 + 1 :]]


def test_a_split_and_a_merge_lose_and_reorder_nothing(
    cql: Any, streams: Any, table: TableInfo, emulator: Any
) -> None:
    drain = Drain(streams, table)
    _rows(cql, table, [("upsert", k, 0, "before") for k in range(20)])
    drain.to_tip()
    stream = drain.describe()
    parent = sorted(stream.shards)[0]
    children = emulator.control.split_shard(drain.arn, parent)
    _rows(cql, table, [("upsert", k, 0, "after split") for k in range(20)])
    merged = emulator.control.merge_shards(drain.arn, children[0], children[1])
    _rows(cql, table, [("upsert", k, 0, "after merge") for k in range(20)])
    drain.to_tip()

    graph = drain.describe().shards
    assert set(graph[merged].parents) == set(children)
    assert drain.progress[parent].finished and all(drain.progress[c].finished for c in children)
    final = _final_state(drain.changes)
    assert {k: v[1]["body"] for k, v in final.items()} == {(k, 0): "after merge" for k in range(20)}
    # Lineage: the merge child's versions start above both parents' last versions.
    assert start_version(graph[merged], drain.progress) == max(
        drain.progress[c].final_version or 0 for c in children
    )


def test_an_expired_iterator_is_renewed_without_losing_records(
    cql: Any, streams: Any, table: TableInfo, emulator: Any
) -> None:
    _rows(cql, table, [("upsert", 1, 1, "one")])
    drain = Drain(streams, table)
    drain.to_tip()
    stream = drain.describe()
    readers = {s: drain.reader(stream, s) for s in stream.shards}
    for reader in readers.values():
        reader.read()  # holds a live iterator now
    emulator.control.advance_clock(16 * 60)  # iterators live 15 minutes
    _rows(cql, table, [("upsert", 1, 1, "two")])
    got: list[Change] = []
    for reader in readers.values():
        for _ in range(3):
            got += reader.read().changes
    assert [c.image["body"] for c in got if c.image] == ["two"]


def test_throttling_and_server_errors_are_retried(
    cql: Any, streams: Any, table: TableInfo, emulator: Any
) -> None:
    _rows(cql, table, [("upsert", k, 0, "x") for k in range(10)])
    emulator.control.set_faults(throttle_rate=0.2, internal_error_rate=0.05, seed=7)
    try:
        changes = Drain(streams, table).to_tip()
    finally:
        emulator.control.set_faults(throttle_rate=0.0, internal_error_rate=0.0)
    assert {c.key for c in changes} == {(k, 0) for k in range(10)}


def test_trimmed_records_are_reported_as_a_gap(
    cql: Any, streams: Any, table: TableInfo, emulator: Any
) -> None:
    _rows(cql, table, [("upsert", k, 0, "x") for k in range(8)])
    drain = Drain(streams, table)
    stream = drain.describe()
    first = {s: drain.reader(stream, s) for s in stream.shards}
    positions = {}
    for shard_id, reader in first.items():
        result = reader.read()
        if result.records:
            positions[shard_id] = (
                result.changes[0].source.sequence_number,
                result.changes[0].version,
            )  # type: ignore[union-attr]
    _rows(cql, table, [("upsert", k, 0, "y") for k in range(8)])
    emulator.control.advance_clock(25 * 3600)  # past the 24 h retention
    gaps = 0
    for shard_id, (sequence, version) in positions.items():
        reader = ShardReader(
            streams,
            table,
            drain.arn,
            shard_id,
            view_type=stream.view_type,
            after=sequence,
            previous=version,
        )
        result = reader.read()
        if result.gap:
            gaps += 1
            reader.restart_at_trim_horizon()
            after_gap = reader.read()
            assert not after_gap.gap
            assert all(c.version > version for c in after_gap.changes)
    assert gaps == len(positions) > 0


def test_a_shard_of_a_stream_that_no_longer_exists_is_a_gap_not_an_end(
    cql: Any, streams: Any, table: TableInfo, emulator: Any
) -> None:
    _rows(cql, table, [("upsert", k, 0, "x") for k in range(8)])
    drain = Drain(streams, table)
    stream = drain.describe()
    readers = [drain.reader(stream, s) for s in stream.shards]
    cql.execute(f'ALTER TABLE "{table.keyspace}"."{table.name}" WITH cdc = false')
    emulator.control.advance_clock(25 * 3600)  # a DISABLED stream lives 24 h
    for reader in readers:
        result = reader.read()
        assert result.gap == GapKind.SHARD_GONE and not result.closed and not reader.closed


def test_a_shard_read_from_its_start_proves_nothing_was_trimmed(
    cql: Any, streams: Any, table: TableInfo, emulator: Any
) -> None:
    _rows(cql, table, [("upsert", k, 0, "x") for k in range(8)])
    emulator.control.advance_clock(25 * 3600)
    drain = Drain(streams, table)
    stream = drain.describe()

    def first_read(shard_id: str, verify: bool) -> ReadResult:
        shard = stream.shards[shard_id]
        return ShardReader(
            streams,
            table,
            drain.arn,
            shard_id,
            view_type=stream.view_type,
            after=None,
            previous=0,
            start_sequence=shard.starting_sequence_number,
            verify_start=verify,
        ).read()

    proved = {s: first_read(s, verify=True).gap for s in stream.shards}
    assert GapKind.START_TRIMMED in proved.values()  # shards that had records lost them
    for shard_id, gap in proved.items():
        assert gap in (None, GapKind.START_TRIMMED)
        assert first_read(shard_id, verify=False).gap is None  # the trim horizon asks nothing


def test_a_keys_only_stream_reads_the_row_over_cql(cql: Any, streams: Any, keyspace: str) -> None:
    info = _create(cql, keyspace, view="KEYS_ONLY")
    _rows(cql, info, [("upsert", 1, 1, "kept"), ("upsert", 2, 2, "gone"), ("delete", 2, 2, None)])
    lookup = RowLookup(cql, info)
    changes = Drain(streams, info, lookup).to_tip()
    final = _final_state(changes)
    assert final[(1, 1)][1]["body"] == "kept"
    assert final[(2, 2)][1] is None


@pytest.mark.parametrize("view", ["KEYS_ONLY", "OLD_IMAGE"])
def test_a_looked_up_row_carries_its_expiry(
    cql: Any, streams: Any, keyspace: str, view: str
) -> None:
    """Streams without new images re-read the row; the row's TTL must come with it, or a
    row with a TTL stays searchable after it expires (and a backfill's expiry is erased)."""
    from sync.keyspaces import service_now_ms

    cql.execute(
        f'CREATE TABLE "{keyspace}"."events" ("id" int, "seq" int, "body" text, "n" int, '
        'PRIMARY KEY ("id", "seq")) WITH cdc = true AND CUSTOM_PROPERTIES = '
        f"{{'cdc_specification': {{'view_type': '{view}'}}, 'ttl': {{'status': 'enabled'}}}}"
    )
    info = describe_table(cql, keyspace, "events")
    table = f'"{keyspace}"."events"'
    before = service_now_ms(cql)
    cql.execute(
        f'INSERT INTO {table} ("id", "seq", "body", "n") VALUES (1, 1, \'a\', 1) USING TTL 600'
    )
    cql.execute(f'INSERT INTO {table} ("id", "seq", "body", "n") VALUES (2, 2, \'b\', 2)')
    cql.execute(f'INSERT INTO {table} ("id", "seq", "body") VALUES (3, 3, \'c\') USING TTL 900')
    cql.execute(f'UPDATE {table} USING TTL 1200 SET "n" = 3 WHERE "id" = 3 AND "seq" = 3')
    changes = Drain(streams, info, RowLookup(cql, info)).to_tip()
    after = service_now_ms(cql)
    final = {c.key: c for c in changes}  # the lookups read the rows as they are now
    assert final[(1, 1)].image == {"id": 1, "seq": 1, "body": "a", "n": 1}  # no TTL() leaks
    expires = final[(1, 1)].expires_at_ms
    assert expires is not None and before + 599_000 <= expires <= after + 600_000
    assert final[(2, 2)].expires_at_ms is None
    last = final[(3, 3)].expires_at_ms  # the row lives as long as its longest-lived cell
    assert last is not None and before + 1_199_000 <= last <= after + 1_200_000


def test_a_lookup_reads_at_local_quorum_whatever_the_sessions_default(
    streams: Any, keyspace: str, cql: Any, emulator: Any
) -> None:
    """A lookup for a delete record that hit a stale replica would write the deleted row
    back at the delete's version: lookups read at LOCAL_QUORUM, never the driver's LOCAL_ONE."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import Cluster

    info = _create(cql, keyspace, view="KEYS_ONLY")
    _rows(cql, info, [("upsert", 1, 1, "kept"), ("upsert", 2, 2, "gone"), ("delete", 2, 2, None)])
    cql.execute(f'UPDATE "{keyspace}"."events" SET "body" = \'x\' WHERE "id" = 1 AND "seq" = 1')
    cluster = Cluster(["127.0.0.1"], port=emulator.cql_port, protocol_version=4)
    try:
        session = cluster.connect()
        assert session.default_consistency_level == ConsistencyLevel.LOCAL_ONE
        levels: list[int] = []

        def record(future: Any) -> None:
            query = getattr(future.query, "prepared_statement", future.query)
            if '"events"' in str(query.query_string):
                levels.append(future.message.consistency_level)

        session.add_request_init_listener(record)
        changes = Drain(streams, info, RowLookup(session, info)).to_tip()
        assert len(changes) == 4 and len(levels) == 4
        assert set(levels) == {ConsistencyLevel.LOCAL_QUORUM}
    finally:
        cluster.shutdown()


def test_a_table_without_cdc_says_how_to_enable_it(cql: Any, streams: Any, keyspace: str) -> None:
    cql.execute(f'CREATE TABLE "{keyspace}"."plain" ("id" int PRIMARY KEY, "v" text)')
    info = describe_table(cql, keyspace, "plain")
    assert not info.cdc_enabled
    with pytest.raises(ConfigError, match="has no CDC stream: enable it with ALTER TABLE"):
        info.require_stream()


def test_a_disabled_stream_stays_readable_to_its_end_beside_its_successor(
    cql: Any, streams: Any, table: TableInfo
) -> None:
    _rows(cql, table, [("upsert", k, 0, "old stream") for k in range(6)])
    old = latest_arn(streams, table)
    name = f'"{table.keyspace}"."{table.name}"'
    cql.execute(f"ALTER TABLE {name} WITH cdc = false")
    cql.execute(
        f"ALTER TABLE {name} WITH cdc = true AND CUSTOM_PROPERTIES = "
        "{'cdc_specification': {'view_type': 'NEW_IMAGE'}}"
    )
    listed = list_table_streams(streams, table)
    assert len(listed) == 2 and listed[0].stream_arn == old  # oldest first
    assert listed[0].label < listed[1].label
    stream = describe_stream(streams, old)
    assert stream.status == "DISABLED"
    assert all(s.ending_sequence_number for s in stream.shards.values())
    changes = Drain(streams, table).to_tip()  # the new stream: nothing yet
    assert changes == []
    drain = Drain(streams, table)
    drain.arn = old
    assert {c.key for c in drain.to_tip()} == {(k, 0) for k in range(6)}
    assert all(p.finished for p in drain.progress.values())
    assert describe_stream(streams, listed[1].stream_arn).created_ms is not None


def test_replicated_records_are_skipped_but_keep_the_version_chain() -> None:
    """With skip_replication, versions still depend on the stream alone (not on settings)."""
    import datetime as dt

    from sync.schema import TableKey

    key = TableKey("ks", "t", ("id",), column_types={"id": "int", "v": "text"})
    info = TableInfo(key, ("v",), False, False, True, "NEW_IMAGE", "arn")

    def record(n: int, origin: str) -> dict[str, Any]:
        return {
            "sequenceNumber": f"{n:021d}",
            "createdAt": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),  # all in one millisecond
            "origin": origin,
            "partitionKeys": {"id": {"intT": str(n)}},
            "newImage": {"valueCells": {"v": {"value": {"textT": f"v{n}"}}}},
        }

    records = [record(1, "USER"), record(2, "REPLICATION"), record(3, "USER")]

    def read(skip: bool) -> ReadResult:
        reader = ShardReader(
            None,
            info,
            "arn",
            "shard",
            view_type="NEW_IMAGE",
            after=None,
            previous=0,
            skip_replication=skip,
        )
        return reader.decode(records)

    skipping, keeping = read(True), read(False)
    assert [c.key for c in skipping.changes] == [(1,), (3,)]
    assert [c.version for c in skipping.changes] == [
        keeping.changes[0].version,
        keeping.changes[2].version,
    ]
    assert skipping.records == 3 and skipping.last_sequence == f"{3:021d}"
    assert keeping.changes[0].version < keeping.changes[1].version < keeping.changes[2].version


@pytest.mark.unit
def test_streams_errors_become_errors_of_the_tree() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    from sync.errors import ConfigError, StreamsRefused, TransientError
    from sync.retry import RetryPolicy
    from sync.sources.streams import _streams_error

    def client_error(code: str, detail: str = "") -> ClientError:
        response: dict[str, Any] = {"Error": {"Code": code, "Message": "m"}}
        if detail:
            response["errorCode"] = detail
        return ClientError(response, "GetRecords")  # type: ignore[arg-type]

    policy = RetryPolicy(budget_s=300)
    unreachable = _streams_error(
        EndpointConnectionError(endpoint_url="http://x"), "list_streams", policy
    )
    assert isinstance(unreachable, TransientError)
    assert "keyspaces.streams_endpoint" in unreachable.hint
    busy = _streams_error(client_error("ThrottlingException"), "get_records", policy)
    assert isinstance(busy, TransientError) and "after 300 s" in str(busy)
    keys = _streams_error(client_error("UnrecognizedClientException"), "list_streams", policy)
    assert isinstance(keys, ConfigError)
    trimmed = _streams_error(client_error("ValidationException", "TrimmedDataAccess"), "x", policy)
    assert isinstance(trimmed, StreamsRefused)
    assert (trimmed.code, trimmed.detail) == ("ValidationException", "TrimmedDataAccess")


def test_a_lookup_reads_past_empty_pages(cql: Any, keyspace: str, emulator: Any) -> None:
    """Keyspaces may answer a page with no rows and a paging state (its page ends after
    1 MB *read*): a lookup that took the first page for the answer wrote a live row, or a
    partition's statics, as deleted. Found by `make chaos` (its index lost a partition's
    static value after a re-read of the statics)."""
    from sync.model import StreamPosition

    cql.execute(
        f'CREATE TABLE "{keyspace}"."events" ("id" int, "seq" int, "body" text, '
        '"banner" text STATIC, PRIMARY KEY ("id", "seq")) ' + CDC.format(view="NEW_AND_OLD_IMAGES")
    )
    info = describe_table(cql, keyspace, "events")
    cql.execute(f'INSERT INTO "{keyspace}"."events" ("id", "seq", "body") VALUES (1, 1, \'a\')')
    cql.execute(f'UPDATE "{keyspace}"."events" SET "banner" = \'sale\' WHERE "id" = 1')
    lookup = RowLookup(cql, info)
    source = StreamPosition("arn:test", "shardId-0001", "0" * 21, 1_700_000_000_000)
    emulator.engine.empty_page_rate = 0.5
    try:
        rows = [lookup.row((1, 1), 7, source) for _ in range(20)]
        statics = [lookup.statics((1,), 7, source) for _ in range(20)]
    finally:
        emulator.engine.empty_page_rate = 0.0
    assert {(c.op, c.image["body"] if c.image else None) for c in rows} == {(Op.UPSERT, "a")}
    assert {(c.op, c.image["banner"] if c.image else None) for c in statics} == {
        (Op.UPSERT, "sale")
    }
