"""`ks2os cleanup` against keyspaces_local and osmem (sync/jobs/cleanup.py).

What users rely on: cleanup removes exactly what is past its window —
tombstones older than the stream's retention plus the margin, rows whose
TTL ran out long ago and whose TTL record never came, finished shards' state
the stream no longer lists, dead workers' heartbeats — and nothing else; a
late replay inside the window is still refused by the tombstone, and a
write older than the window is refused by the writer, so a purged delete is
never undone; a document rewritten after cleanup read it is left alone.
The window is controlled by writing documents with versions of a chosen age
and by passing cleanup its clock.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.bulk import Stamp
from sync.config import Config
from sync.jobs import Job
from sync.jobs.cleanup import Cleaner, prunable_shards, run_cleanup
from sync.model import Change, Op, StreamRead
from sync.sources.streams import Shard, describe_stream, list_table_streams
from sync.state import FREE, ShardState, StateStore, wall_clock_ms
from sync.version import base
from sync.writer import BulkWriter, ChangeTooOld
from tests.sync.jobs.follow_helpers import Table, orders_mapping

HOUR_MS = 3_600_000
NOW = 1_800_000_000_000  # a fixed service time for the test's clock
WINDOW_MS = 25 * HOUR_MS  # retention 24 h + cleanup.margin_s 3600 (the default)
EXPIRED_AFTER_MS = 24 * HOUR_MS  # cleanup.expired_after_s (the default)


# ---- pure: which shard states may go ------------------------------------------------------------


def _state(shard_id: str, finished: bool) -> ShardState:
    return ShardState("ks.t", "arn", shard_id, None, 0, finished, 7 if finished else None, 0,
                      FREE, Stamp(0, 1))  # fmt: skip


@pytest.mark.unit
def test_a_finished_shard_goes_once_unlisted_and_every_listed_child_is_finished() -> None:
    states = [
        _state("parent-done", True),  # unlisted; its listed child finished
        _state("child-done", True),  # listed: kept while the stream lists it
        _state("parent-waiting", True),  # unlisted; a listed child not finished (or not begun)
        _state("child-running", False),
        _state("orphan", False),  # unlisted, unfinished: a follower still reads it
        _state("old-leaf", True),  # unlisted, no listed child
    ]
    listed = {
        "child-done": Shard("child-done", ("parent-done",)),
        "child-running": Shard("child-running", ("parent-waiting",)),
        "not-begun": Shard("not-begun", ("parent-waiting",)),
    }
    chosen = {s.shard_id for s in prunable_shards(states, listed, stream_finished=False)}
    assert chosen == {"parent-done", "old-leaf"}
    # A stream read to its end keeps its final version in its own document: every
    # finished shard of it may go; a stream gone but not finished: nothing (yet).
    every = {s.shard_id for s in prunable_shards(states, None, stream_finished=True)}
    assert every == {"parent-done", "child-done", "parent-waiting", "old-leaf"}
    assert prunable_shards(states, None, stream_finished=False) == []


@pytest.mark.unit
def test_a_versions_time_is_read_back_through_one_helper() -> None:
    from sync.version import next_stream_version, version_ms

    assert version_ms(base(NOW)) == NOW
    tied = next_stream_version(NOW, base(NOW))  # a second change in the same millisecond
    assert version_ms(tied) == NOW


@pytest.mark.unit
def test_a_margin_too_small_for_the_writers_retries_is_refused() -> None:
    from sync.config import load_config
    from sync.errors import ConfigError

    with pytest.raises(ConfigError) as refused:
        load_config(None, env={"KS2OS_CLEANUP_MARGIN_S": "600"})
    assert "cleanup.margin_s" in str(refused.value) and "660" in str(refused.value)
    cfg = load_config(None, env={})
    assert cfg.cleanup.purge_after_ms == WINDOW_MS
    assert cfg.cleanup.write_max_age_ms == WINDOW_MS - HOUR_MS // 2


# ---- against the servers ---------------------------------------------------------------------


def _at(age_ms: int) -> int:
    """The version of a change made `age_ms` before NOW."""
    return base(NOW - age_ms)


def _stream(age_ms: int) -> StreamRead:
    return StreamRead("arn", "shardId-x", str(age_ms), NOW - age_ms)


def _upsert(key: int, version: int, expires_at_ms: int | None = None) -> Change:
    image = {"customer": key, "order": key, "state": "new", "amount": key}
    return Change(Op.UPSERT, (key, key), image, version, _stream(0), expires_at_ms)


def _delete(key: int, version: int) -> Change:
    return Change(Op.DELETE, (key, key), None, version, _stream(0))


def _plain_writer(job: Job) -> BulkWriter:
    """A writer without the age check: the test writes documents of any age directly."""
    return BulkWriter(job.client, job.index, job.builder, job.dead_letters)


def _stored(client: OpenSearch, index: str) -> dict[str, dict[str, Any]]:
    client.indices.refresh(index=index)
    hits = client.search(index=index, body={"query": {"match_all": {}}, "size": 1000})
    return {hit["_id"]: hit["_source"]["_ks2os"] for hit in hits["hits"]["hits"]}


@pytest.fixture
def job(cql: Any, keyspace: str, make_config: Callable[..., Config]) -> Any:
    Table(cql, keyspace)
    with Job(make_config(), orders_mapping(keyspace)) as job:
        yield job


def test_cleanup_purges_exactly_the_documents_past_the_window(
    job: Job, opensearch: OpenSearch
) -> None:
    writer = _plain_writer(job)
    old_expiry = NOW - EXPIRED_AFTER_MS - HOUR_MS
    writer.write(
        [
            _delete(1, _at(WINDOW_MS + 60_000)),  # a tombstone just past the window: purged
            _delete(2, _at(WINDOW_MS - 60_000)),  # a tombstone just inside it: kept
            _upsert(3, _at(30 * 24 * HOUR_MS)),  # a live row a month old: kept
            _upsert(4, _at(WINDOW_MS + HOUR_MS), old_expiry),  # expired long ago: removed
            _upsert(5, _at(WINDOW_MS + HOUR_MS), NOW - EXPIRED_AFTER_MS + HOUR_MS),  # kept
            _upsert(6, _at(WINDOW_MS - HOUR_MS), old_expiry),  # version inside the window: kept
            _upsert(7, _at(0)),  # a row written now: kept
        ]
    )
    summary = run_cleanup(job.cfg, job.mapping, job=job, now_ms=lambda: NOW)
    assert (summary.tombstones, summary.expired, summary.changed) == (1, 1, 0)
    assert sorted(_stored(opensearch, job.index)) == ["2:2", "3:3", "5:5", "6:6", "7:7"]

    # A late replay inside the window meets the tombstone and loses.
    report = writer.write([_upsert(2, _at(WINDOW_MS - 60_000) - 1)])
    assert report.stale == 1 and _stored(opensearch, job.index)["2:2"]["deleted"] is True

    # A replay older than the window cannot meet its tombstone any more; a job's
    # writer refuses it before anything is sent.
    guarded = BulkWriter(
        job.client,
        job.index,
        job.builder,
        job.dead_letters,
        max_age_ms=job.cfg.cleanup.write_max_age_ms,
        clock_ms=lambda: NOW,
    )
    with pytest.raises(ChangeTooOld):
        guarded.write([_upsert(7, _at(0)), _upsert(1, _at(WINDOW_MS + 60_000) - 1)])
    assert "1:1" not in _stored(opensearch, job.index)
    assert guarded.write([_upsert(8, _at(WINDOW_MS // 2))]).applied == 1  # young enough


def test_a_snapshot_row_read_longer_ago_than_the_window_is_never_written(job: Job) -> None:
    from sync.model import ScanRead

    guarded = BulkWriter(
        job.client,
        job.index,
        job.builder,
        job.dead_letters,
        max_age_ms=job.cfg.cleanup.write_max_age_ms,
        clock_ms=lambda: NOW,
    )
    read_at = NOW - job.cfg.cleanup.write_max_age_ms - 1000
    row = {"customer": 1, "order": 1, "state": "read long ago", "amount": 1}
    stale_read = Change(Op.UPSERT, (1, 1), row, base(read_at), ScanRead(0, 1, read_at))
    with pytest.raises(ChangeTooOld) as refused:
        guarded.write([stale_read])
    assert "run the job again" in refused.value.hint


def test_cleanup_leaves_a_document_rewritten_after_it_was_read(
    job: Job, opensearch: OpenSearch
) -> None:
    writer = _plain_writer(job)
    writer.write([_delete(1, _at(WINDOW_MS + HOUR_MS)), _delete(2, _at(WINDOW_MS + HOUR_MS))])
    cleaner = Cleaner(job.client, job.policy, job.cfg.cleanup, lambda: NOW)
    found = cleaner.tombstones(job.index)
    assert sorted(doc.doc_id for doc in found) == ["1:1", "2:2"]
    # Another worker writes key 1 again between cleanup's read and its delete.
    writer.write([_upsert(1, _at(0))])
    removed = cleaner.purge(job.index, found)
    assert (removed.removed, removed.changed) == (1, 1)
    stored = _stored(opensearch, job.index)
    assert "2:2" not in stored and stored["1:1"]["deleted"] is False


def test_a_dry_run_counts_and_removes_nothing(job: Job, opensearch: OpenSearch) -> None:
    _plain_writer(job).write([_delete(1, _at(WINDOW_MS + HOUR_MS))])
    summary = run_cleanup(job.cfg, job.mapping, job=job, now_ms=lambda: NOW, dry_run=True)
    assert summary.tombstones == 1 and summary.dry_run
    assert "1:1" in _stored(opensearch, job.index)


def test_cleanup_prunes_finished_unlisted_shards_and_dead_workers_only(
    job: Job, streams: Any
) -> None:
    table = job.info.qualified_name
    store: StateStore = job.store
    (stream,) = list_table_streams(streams, job.info)
    listed = sorted(describe_stream(streams, stream.stream_arn).shards)

    def shard(shard_id: str, finished: bool) -> ShardState:
        state = store.acquire_shard(table, stream.stream_arn, shard_id, "w1")
        assert state is not None
        return store.finish_shard(state, 42) if finished else state

    shard(listed[0], finished=True)  # listed: kept
    shard("shardId-gone-finished", finished=True)  # unlisted, finished, no children: pruned
    shard("shardId-gone-unread", finished=False)  # an orphan a follower still reads: kept
    store.heartbeat("follow", table, "alive")
    an_hour_ago = wall_clock_ms() - HOUR_MS
    dead = StateStore(job.client, store.index, lease_seconds=5, clock=lambda: an_hour_ago)
    dead.heartbeat("follow", table, "long-dead")  # expired an hour ago by the store's clock
    summary = run_cleanup(job.cfg, job.mapping, job=job, now_ms=lambda: NOW, streams=streams)
    assert (summary.shards, summary.workers) == (1, 1)
    left = {s.shard_id for s in store.list_shards(table)}
    assert left == {listed[0], "shardId-gone-unread"}
    assert store.live_workers("follow", table) == {"alive"}
    remaining = store.worker_documents(table, expired_before_ms=wall_clock_ms() + HOUR_MS)
    assert [doc.body["owner"] for doc in remaining] == ["alive"]


def test_the_cleanup_command_runs_and_prints_its_summary(
    job: Job, make_config: Callable[..., Config], tmp_path: Any, keyspace: str
) -> None:
    import subprocess
    import sys

    import orjson

    mapping = tmp_path / "orders.toml"
    mapping.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "orders"\n'
        f'[index]\nalias = "{keyspace.lower()}-orders"\n'
    )
    make_config(str(mapping))  # writes tmp_path / ks2os.toml
    run = subprocess.run(
        [sys.executable, "-m", "sync", "--config", str(tmp_path / "ks2os.toml"), "cleanup"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"},
    )
    assert run.returncode == 0, run.stderr
    summary = orjson.loads(run.stdout)
    assert summary["tombstones"] == 0 and summary["dry_run"] is False
