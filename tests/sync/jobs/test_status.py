"""`ks2os status` (sync/jobs/status.py): what an operator reads to know whether sync keeps up.

What a user relies on: after a real backfill and a follower that ran, status
shows the stream and every shard (its checkpoint as the stream numbers it,
finished or not, who holds it, a lag of 0 once all is applied), the shards
no follower began, the backfill run, the gaps recorded and the dead letters;
`--json` is one parseable line per table; a table never synced says so; and
status writes nothing (no index appears, no lease is taken).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from opensearchpy import OpenSearch

from sync.config import Config
from sync.jobs.backfill import run_backfill
from sync.jobs.status import TableStatus, run_status
from sync.mapping import TableMapping, mapping_from_dict
from sync.sources.streams import list_streams_of
from sync.state import GapRecord, StateStore
from tests.sync.jobs.follow_helpers import Table, following, until


def _mapping(keyspace: str) -> TableMapping:
    # `amount` as a byte: an amount above 127 is refused by OpenSearch, so dead-lettered.
    return mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": "orders"},
            "index": {
                "alias": f"{keyspace.lower()}-orders",
                "mappings": {"properties": {"amount": {"type": "byte"}}},
            },
        }
    )


def _indexes(client: OpenSearch) -> set[str]:
    return set(client.indices.get(index="*", params={"expand_wildcards": "all"}))


def _last_sequences(streams: Any, arn: str) -> dict[str, str | None]:
    """Each shard's last record as the stream itself numbers it (None: no record)."""
    last: dict[str, str | None] = {}
    for shard in streams.get_stream(streamArn=arn)["shards"]:
        shard_id = shard["shardId"]
        iterator = streams.get_shard_iterator(
            streamArn=arn, shardId=shard_id, shardIteratorType="TRIM_HORIZON"
        ).get("shardIterator")
        last[shard_id] = None
        while iterator:
            reply = streams.get_records(shardIterator=iterator, maxResults=1000)
            records = reply.get("changeRecords") or []
            if records:
                last[shard_id] = records[-1]["sequenceNumber"]
            if not records:
                break
            iterator = reply.get("nextShardIterator")
    return last


def test_status_after_a_backfill_and_a_follower_shows_where_everything_stands(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
    streams: Any,
) -> None:
    table = Table(cql, keyspace)
    mapping = _mapping(keyspace)
    cfg = make_config(state={"worker_id": "follower-1", "lease_seconds": 30})
    for n in range(6):
        table.insert(n, n, "new", n)
    table.insert(9, 9, "new", 1000)  # refused: dead-lettered by the backfill
    summary = run_backfill(cfg, mapping)
    assert summary.complete and summary.dead_lettered == 1
    table_name = f"{keyspace}.orders"
    (arn,) = [s.stream_arn for s in list_streams_of(streams, keyspace, "orders")]
    shards = sorted(s["shardId"] for s in streams.get_stream(streamArn=arn)["shards"])
    parent = shards[0]

    with following(cfg, mapping):
        for n in range(20):
            table.update(n % 6, n % 6, f"v{n}")
        emulator.control.split_shard(arn, parent)  # the parent is read to its end: finished
        for n in range(20, 30):
            table.update(n % 6, n % 6, f"v{n}")
        expected = _last_sequences(streams, arn)

        def caught_up() -> TableStatus | None:
            status = run_status(cfg, mapping)
            got = {s.shard_id: s for s in status.streams[0].shards}
            done = got.keys() == expected.keys() and all(
                got[k].checkpoint == v and (got[k].finished or got[k].lag_s == 0)
                for k, v in expected.items()
            )
            return status if done and got[parent].finished else None

        until(lambda: caught_up() is not None, "status shows every shard caught up")
        before = _indexes(opensearch)
        status = caught_up()
        assert status is not None
        assert _indexes(opensearch) == before  # status created nothing

    assert status.index == f"{mapping.alias}_v1" and not status.never_run
    (stream,) = status.streams
    assert (stream.stream_arn, stream.status, stream.drained) == (arn, "ENABLED", False)
    assert len(stream.shards) == len(expected) == len(shards) + 2  # two children of the split
    assert stream.not_begun == 0
    finished = [s for s in stream.shards if s.finished]
    assert [s.shard_id for s in finished] == [parent]
    reading = [s for s in stream.shards if not s.finished]
    assert all(s.owner == "follower-1" and s.lease_live for s in reading)
    assert status.workers["follow"] == ("follower-1",)
    (backfill,) = status.backfills
    assert backfill.index == status.index and backfill.finished
    assert backfill.ranges_done == backfill.ranges and backfill.rows == 7
    # Row 9 was refused by the backfill, and again by the follower replaying its insert.
    dead_index = f"{mapping.alias}-deadletter"
    opensearch.indices.refresh(index=dead_index)
    stored = opensearch.count(index=dead_index)["count"]
    assert status.dead_letters == stored >= 1 and status.gaps == []

    # A gap recorded by a follower shows, with its kind; after the follower stopped
    # its leases are free and it is no longer a live worker.
    store = StateStore(opensearch, cfg.state.index)
    gap = GapRecord(table_name, arn, shards[1], "trimmed", "123", 1_700_000_000_000, "stop")
    store.record_gap(gap)
    later = run_status(cfg, mapping)
    assert [(g.kind, g.shard_id) for g in later.gaps] == [("trimmed", shards[1])]
    assert later.workers["follow"] == ()
    assert all(s.owner is None for s in later.streams[0].shards)
    text = later.text()
    assert f"status {table_name}: alias {mapping.alias} -> {mapping.alias}_v1" in text
    assert "trimmed  shard " + shards[1] + " after 123" in text
    assert f"dead letters  {stored} (index {dead_index})" in text
    assert f"{backfill.ranges}/{backfill.ranges} ranges, 7 rows" in text
    for shard in later.streams[0].shards:
        assert shard.shard_id in text and (shard.checkpoint or "-") in text

    assert "rebuild       none in progress" in text

    # With no follower running, a change made since shows as lag on its shard.
    table.update(1, 1, "late")
    behind = {k: v for k, v in _last_sequences(streams, arn).items() if v != expected[k]}
    assert len(behind) == 1
    lagging = {s.shard_id: s for s in run_status(cfg, mapping).streams[0].shards}
    (shard_id,) = behind
    assert lagging[shard_id].lag_s is not None and lagging[shard_id].lag_s > 0
    assert all(s.lag_s in (None, 0) for k, s in lagging.items() if k != shard_id)

    # A reindex under way shows with its phase, both indexes and the new index's fill.
    old, new = f"{mapping.alias}_v1", f"{mapping.alias}_v2"
    store.begin_rebuild(table_name, mapping.alias, old, new, "reindex-1")
    rebuilding = run_status(cfg, mapping)
    assert rebuilding.rebuild is not None and rebuilding.rebuild.in_progress
    assert (rebuilding.rebuild.phase, rebuilding.rebuild.new_index) == ("building", new)
    assert rebuilding.rebuild.owner == "reindex-1" and rebuilding.rebuild.lease_live
    assert f"rebuild       building: {old} -> {new}" in rebuilding.text()

    shown = orjson.loads(orjson.dumps(later.to_json()))
    assert shown["streams"][0]["shards_not_begun"] == 0
    assert shown["gaps"][0]["kind"] == "trimmed" and shown["dead_letters"] == stored


def test_a_table_never_synced_says_so_and_status_creates_nothing(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    Table(cql, keyspace)
    mapping = _mapping(keyspace)
    cfg = make_config()
    before = _indexes(opensearch)
    status = run_status(cfg, mapping)
    assert _indexes(opensearch) == before
    assert status.never_run and status.index is None
    assert status.backfills == [] and status.dead_letters == 0
    (stream,) = status.streams  # the table's stream exists; no follower began it
    assert stream.status == "ENABLED" and not stream.begun and stream.shards == ()
    assert stream.not_begun > 0
    text = status.text()
    assert "never run" in text and f"{stream.not_begun} not begun" in text
