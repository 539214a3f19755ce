"""`run_follow` against keyspaces_local and osmem, plus batching, pacing and metrics.

What users rely on: inserts, updates and deletes reach the index; a stopped
follower resumes from its checkpoints without replaying what it applied; a
split or merge mid-stream loses and reorders nothing; two followers share a
stream, and when one dies the other takes its shards over after the lease
expires; the counters and /healthz can be scraped.
"""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.clients import streams_client
from sync.config import Config, FollowConfig
from sync.jobs import Job
from sync.jobs.follow import Batch, Follower, IdlePacer, run_follow
from sync.sources.streams import ReadResult, describe_stream, list_table_streams
from tests.sync.jobs.follow_helpers import (
    Table,
    following,
    indexed,
    orders_mapping,
    until,
    wait_for,
)

# ---- pure ---------------------------------------------------------------------------------


def _read(n: int, seq: str = "000000000000000000001") -> ReadResult:
    from sync.model import Change, Op, StreamRead

    position = StreamRead("arn", "shard", seq, 1)
    changes = [Change(Op.UPSERT, (i,), {"a": i}, i + 1, position) for i in range(n)]
    return ReadResult(changes, n, seq, n, 1)


def test_a_batch_is_due_by_count_bytes_or_age() -> None:
    settings = FollowConfig(max_batch_records=10, max_batch_bytes=10_000, flush_interval_ms=200)
    batch = Batch()
    assert not batch.due(0.0, settings)
    batch.add(_read(3), now=0.0)
    assert not batch.due(0.1, settings) and batch.due(0.2, settings)
    batch.add(_read(7), now=0.1)
    assert batch.due(0.1, settings)  # ten records
    big = Batch()
    big.add(_read(40), now=0.0)
    assert big.due(0.0, FollowConfig(max_batch_records=1000, max_batch_bytes=5_000))


def test_records_without_changes_still_move_the_batch_position() -> None:
    batch = Batch()
    batch.add(ReadResult([], 2, "000000000000000000009", 77, 5), now=0.0)  # skipped records
    assert batch.pending and batch.last_sequence == "000000000000000000009"
    assert batch.last_version == 77 and not batch.changes


def test_idle_polls_back_off_to_the_configured_pause_and_reset_on_records() -> None:
    pacer = IdlePacer(250)
    waits = [pacer.idle() for _ in range(6)]
    assert waits[0] == pytest.approx(0.05) and waits == sorted(waits) and waits[-1] == 0.25
    pacer.busy()
    assert pacer.idle() == pytest.approx(0.05)


# ---- against keyspaces_local and osmem ----------------------------------------------------


# This module moves the emulator clock ahead (up to days, to expire iterators
# and trim records), which would skew every later test of the session.
OWN_EMULATOR: dict[str, Any] = {}


def test_follow_applies_inserts_updates_and_deletes(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    table = Table(cql, keyspace, client_timestamps=client_timestamps)
    mapping = orders_mapping(keyspace)
    port = _free_port()
    with following(make_config(follow={"metrics_port": port}), mapping) as summary:
        for n in range(30):
            table.insert(n % 5, n, "new", n)
        for n in range(0, 30, 3):
            table.update(n % 5, n, "paid")
        for n in range(0, 30, 7):
            table.delete(n % 5, n)
        wait_for(opensearch, mapping.alias, table.model)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz") as reply:
            assert reply.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as reply:
            exposition = reply.read().decode()
    assert summary[0].records_read == table.writes
    assert summary[0].dead_lettered == 0
    read = [
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("ks2os_follow_records_read_total{")
    ]
    assert sum(read) == table.writes
    assert "ks2os_follow_lag_seconds{" in exposition


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.mark.parametrize("view_type", ["KEYS_ONLY", "OLD_IMAGE"])
def test_streams_without_new_images_are_followed_by_reading_rows_over_cql(
    view_type: str,
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
) -> None:
    table = Table(cql, keyspace, view_type)
    mapping = orders_mapping(keyspace)
    with following(make_config(), mapping):
        for n in range(12):
            table.insert(n % 3, n, "new", n)
        for n in range(0, 12, 2):
            table.update(n % 3, n, "paid")
        for n in range(0, 12, 5):
            table.delete(n % 3, n)
        wait_for(opensearch, mapping.alias, table.model)


def test_follow_resumes_from_its_checkpoints_after_a_stop(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    table = Table(cql, keyspace, client_timestamps=client_timestamps)
    mapping = orders_mapping(keyspace)
    cfg = make_config()
    with following(cfg, mapping) as first:
        for n in range(20):
            table.insert(1, n, "new", n)
        wait_for(opensearch, mapping.alias, table.model)
    before = table.writes
    for n in range(10):  # written while no follower runs
        table.update(1, n, "shipped")
    table.delete(1, 19)
    with following(cfg, mapping) as second:
        wait_for(opensearch, mapping.alias, table.model)
    assert first[0].records_read == before
    assert second[0].records_read == table.writes - before  # nothing applied is read again


def test_a_split_and_a_merge_mid_stream_lose_and_reorder_nothing(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
    streams: Any,
    client_timestamps: bool,
) -> None:
    from sync.keyspaces import describe_table

    table = Table(cql, keyspace, client_timestamps=client_timestamps)
    mapping = orders_mapping(keyspace)
    arn = list_table_streams(streams, describe_table(cql, keyspace, "orders"))[-1].stream_arn
    # GetStream keeps listing closed parents as open for a while, as Keyspaces may.
    emulator.control.set_faults(lagging_parent_close={"get_stream_calls": 5})
    try:
        with following(make_config(), mapping):
            for n in range(40):
                table.insert(n % 8, n, "v1", n)
            shard = sorted(s["shardId"] for s in streams.get_stream(streamArn=arn)["shards"])[0]
            children = emulator.control.split_shard(arn, shard)
            for n in range(40):
                table.update(n % 8, n, "v2")
            emulator.control.merge_shards(arn, children[0], children[1])
            for n in range(40):
                table.update(n % 8, n, "v3")
            for n in range(0, 40, 5):
                table.delete(n % 8, n)
            wait_for(opensearch, mapping.alias, table.model)
    finally:
        emulator.control.set_faults(lagging_parent_close=None)


def test_two_followers_share_the_stream_and_one_survives_the_others_death(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    cfg_a = make_config(state={"worker_id": "follower-a", "lease_seconds": 2})
    cfg_b = make_config(state={"worker_id": "follower-b", "lease_seconds": 2})
    job_a, job_b = Job(cfg_a, mapping), Job(cfg_b, mapping)
    arn = list_table_streams(streams_client(cfg_a), job_a.info)[-1].stream_arn
    a = Follower(job_a, streams_client(cfg_a))
    b = Follower(job_b, streams_client(cfg_b))
    stop_a, stop_b = threading.Event(), threading.Event()
    threads = [
        threading.Thread(target=a.run, args=(stop_a,)),
        threading.Thread(target=b.run, args=(stop_b,)),
    ]
    try:
        for thread in threads:
            thread.start()

        def owners() -> set[str]:
            shards = describe_stream(streams_client(cfg_a), arn).shards
            states = job_a.store.get_shards(job_a.info.qualified_name, arn, shards).values()
            now = job_a.store.now_ms()
            return {s.lease.owner for s in states if s.lease.owner and s.lease.expires_at_ms >= now}

        until(lambda: owners() == {"follower-a", "follower-b"}, "both followers own shards")
        for n in range(20):
            table.insert(n, n, "before", n)
        wait_for(opensearch, mapping.alias, table.model)

        a.abandon()  # a crash: no flush, no checkpoint, no release
        threads[0].join(timeout=10)
        for n in range(20):
            table.update(n, n, "after")
        wait_for(opensearch, mapping.alias, table.model)
        until(lambda: owners() == {"follower-b"}, "follower-b owns every shard")
    finally:
        stop_a.set()
        stop_b.set()
        for thread in threads:
            thread.join(timeout=30)
        job_a.close()
        job_b.close()


@pytest.mark.parametrize("policy", ["stop", "continue"])
def test_trimmed_records_are_a_gap_handled_by_policy(
    policy: str,
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
) -> None:
    from sync.sources.streams import StreamGap

    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    cfg = make_config(follow={"on_gap": policy})
    with following(cfg, mapping):
        for n in range(12):
            table.insert(n, n, "seen", n)
        wait_for(opensearch, mapping.alias, table.model)
    for n in range(12):
        table.update(n, n, "never seen")  # trimmed before any follower reads them
    emulator.control.advance_clock(25 * 3600)
    if policy == "stop":
        with pytest.raises(StreamGap, match="trimmed"):
            run_follow(cfg, mapping, stop=threading.Event())
        return
    table.insert(100, 100, "after the gap", 1)
    with following(cfg, mapping) as summary:
        until(lambda: "100:100" in indexed(opensearch, mapping.alias), "the new row arrives")
    assert summary[0].gaps > 0 and summary[0].reindex_needed
