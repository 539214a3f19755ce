"""Nothing lost silently: gaps across splits and merges, late followers, stream switches.

What users rely on: when the stream no longer holds changes the index needs,
whatever the shard lineage did meanwhile, the follower says so (a gap under
`follow.on_gap`, recorded in the state store) instead of carrying on with a
stale index; a follower started long after the backfill proves the stream
still holds every change since, or reports a gap; when CDC is switched off and
on, the old stream is read to its end before the new one, the new stream's
changes win, and the window no stream recorded is a gap of its own; with CDC
off for good, the follower applies what the stream holds and stops saying so.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.config import Config
from sync.errors import ConfigError
from sync.jobs.backfill import run_backfill
from sync.jobs.follow import run_follow
from sync.keyspaces import describe_table
from sync.sources.streams import StreamGap, list_table_streams
from sync.state import GapRecord, StateStore
from tests.sync.jobs.follow_helpers import (
    Table,
    following,
    indexed,
    orders_mapping,
    stopped_by,
    until,
    wait_for,
)

# This module moves the emulator clock ahead by days (retention), which would
# skew every later test of the session.
OWN_EMULATOR: dict[str, Any] = {}

DAY_S = 24 * 3600
ROWS = 16


def _arns(streams: Any, cql: Any, keyspace: str) -> list[str]:
    return [
        s.stream_arn for s in list_table_streams(streams, describe_table(cql, keyspace, "orders"))
    ]


def _gaps(opensearch: OpenSearch, keyspace: str) -> list[GapRecord]:
    return StateStore(opensearch).list_gaps(f"{keyspace}.orders")


def _reshape(emulator: Any, arn: str, how: str) -> None:
    """Split every open shard, or merge them pairwise (neighbours in hash order)."""
    (stream,) = [s for s in emulator.control.streams() if s["streamArn"] == arn]
    shards = stream["openShardIds"]
    if how == "split":
        for shard in shards:
            emulator.control.split_shard(arn, shard)
    else:
        for left, right in zip(shards[::2], shards[1::2], strict=True):
            emulator.control.merge_shards(arn, left, right)


def _indexed_and_outage(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    cfg: Config,
    client_timestamps: bool = False,
) -> Table:
    """A follower indexes ROWS rows and stops cleanly."""
    table = Table(cql, keyspace, client_timestamps=client_timestamps)
    mapping = orders_mapping(keyspace)
    with following(cfg, mapping):
        for n in range(ROWS):
            table.insert(n, n, "seen", n)
        wait_for(opensearch, mapping.alias, table.model)
    return table


# ---- 1. a gap across a split or a merge -------------------------------------------------------


@pytest.mark.parametrize("reshape", ["split", "merge"])
def test_a_gap_across_a_reshape_while_the_follower_is_down_stops_it_and_is_recorded(
    reshape: str,
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
    streams: Any,
    client_timestamps: bool,
) -> None:
    cfg = make_config()  # on_gap = "stop"
    table = _indexed_and_outage(cql, keyspace, opensearch, cfg, client_timestamps)
    (arn,) = _arns(streams, cql, keyspace)
    for n in range(ROWS):
        table.update(n, n, "while down")
    _reshape(emulator, arn, reshape)
    for n in range(ROWS):
        table.update(n, n, f"after the {reshape}")
    emulator.control.advance_clock(DAY_S + 3600)  # past the retention of all of it

    error = stopped_by(cfg, orders_mapping(keyspace))

    assert isinstance(error, StreamGap), error
    assert "trimmed" in str(error) and error.hint
    gaps = _gaps(opensearch, keyspace)
    # The parents were read up to a checkpoint and are no longer listed: the
    # gap starts after the checkpoint, in a shard the listing does not show.
    assert gaps and all(g.stream_arn == arn and g.policy == "stop" for g in gaps)
    assert all(g.kind == "trimmed" and g.after is not None for g in gaps)
    listed = {s["shardId"] for s in streams.get_stream(streamArn=arn)["shards"]}
    assert not {g.shard_id for g in gaps} & listed


def test_after_a_gap_across_a_merge_the_follower_goes_on_under_continue(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
    streams: Any,
) -> None:
    cfg = make_config(follow={"on_gap": "continue"})
    table = _indexed_and_outage(cql, keyspace, opensearch, cfg)
    (arn,) = _arns(streams, cql, keyspace)
    for n in range(ROWS):
        table.update(n, n, "while down")
    _reshape(emulator, arn, "merge")
    for n in range(ROWS):
        table.update(n, n, "after the merge")
    emulator.control.advance_clock(DAY_S + 3600)

    mapping = orders_mapping(keyspace)
    with following(cfg, mapping) as summary:
        table.insert(100, 100, "after the gap", 1)
        until(lambda: "100:100" in indexed(opensearch, mapping.alias), "the new row arrives")
        until(lambda: len(_gaps(opensearch, keyspace)) >= 3, "the parents' and children's gaps")

    assert summary[0].gaps >= 3 and summary[0].reindex_needed
    kinds = {g.kind for g in _gaps(opensearch, keyspace)}
    # The merged parents lost what followed their checkpoints; the merge
    # child, read from its start, had lost its first records.
    assert kinds == {"trimmed", "start-trimmed"}


def test_only_shards_that_lost_records_are_gaps_even_when_the_listing_forgot_them(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
    streams: Any,
) -> None:
    cfg = make_config(follow={"on_gap": "continue"})
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    with following(cfg, mapping):
        table.insert(1, 1, "seen", 1)  # one row: one shard with records, three without
        wait_for(opensearch, mapping.alias, table.model)
    (arn,) = _arns(streams, cql, keyspace)
    store = StateStore(opensearch)
    parents = store.list_shards(f"{keyspace}.orders", arn)
    (busy,) = [s.shard_id for s in parents if s.sequence_number is not None]
    table.update(1, 1, "while down")
    _reshape(emulator, arn, "split")
    table.update(1, 1, "after the split")
    emulator.control.advance_clock(DAY_S + 3600)

    def parents_settled() -> bool:
        done = {s.shard_id for s in store.list_shards(f"{keyspace}.orders", arn) if s.finished}
        return {p.shard_id for p in parents} <= done

    with following(cfg, mapping):
        until(parents_settled, "every forgotten parent is read to its end")
        until(lambda: len(_gaps(opensearch, keyspace)) == 2, "both gaps are recorded")
    # Empty parents prove their (kept) start and end cleanly; so do the empty
    # children. The busy parent lost its tail, and the child that got the last
    # update lost its start.
    trimmed, start = sorted(_gaps(opensearch, keyspace), key=lambda g: g.kind, reverse=True)
    assert (trimmed.kind, trimmed.shard_id) == ("trimmed", busy)
    children = {s["shardId"] for s in streams.get_stream(streamArn=arn)["shards"]}
    assert start.kind == "start-trimmed" and start.shard_id in children


# ---- 2. a follower started a retention period after the backfill ------------------------------


def _backfilled_then_updated(
    cql: Any, keyspace: str, cfg: Config, client_timestamps: bool = False
) -> Table:
    table = Table(cql, keyspace, client_timestamps=client_timestamps)
    for n in range(ROWS):
        table.insert(n, n, "backfilled", n)
    summary = run_backfill(cfg, orders_mapping(keyspace))
    assert summary.complete
    for n in range(ROWS):
        table.update(n, n, "after the backfill")
    return table


def test_a_follower_started_a_day_after_the_backfill_reports_the_changes_it_cannot_get(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
    client_timestamps: bool,
) -> None:
    cfg = make_config()
    _backfilled_then_updated(cql, keyspace, cfg, client_timestamps)
    emulator.control.advance_clock(DAY_S + 60)

    error = stopped_by(cfg, orders_mapping(keyspace))

    assert isinstance(error, StreamGap), error
    gaps = _gaps(opensearch, keyspace)
    assert gaps and {g.kind for g in gaps} == {"start-trimmed"}
    assert all(g.after is None and g.shard_id for g in gaps)


def test_a_follower_started_within_a_day_of_the_backfill_gets_every_change(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
) -> None:
    cfg = make_config()
    table = _backfilled_then_updated(cql, keyspace, cfg)
    emulator.control.advance_clock(DAY_S - 3600)

    mapping = orders_mapping(keyspace)
    with following(cfg, mapping) as summary:
        wait_for(opensearch, mapping.alias, table.model)
    assert summary[0].gaps == 0 and not summary[0].reindex_needed
    assert _gaps(opensearch, keyspace) == []


# ---- 3. stream switches ------------------------------------------------------------------------


def _tail_in_the_old_stream(table: Table, emulator: Any, arn: str) -> None:
    """Changes the follower has not read, across a split and a merge of the old stream."""
    for n in range(ROWS):
        table.update(n, n, "old stream")
    (stream,) = [s for s in emulator.control.streams() if s["streamArn"] == arn]
    first, _, third, fourth = stream["openShardIds"]
    emulator.control.split_shard(arn, first)
    emulator.control.merge_shards(arn, third, fourth)
    for n in range(0, ROWS, 2):
        table.update(n, n, "old stream, reshaped")


def test_a_stream_switch_while_down_reads_the_old_stream_to_its_end_first(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
    streams: Any,
    client_timestamps: bool,
) -> None:
    cfg = make_config(follow={"on_gap": "continue"})
    table = _indexed_and_outage(cql, keyspace, opensearch, cfg, client_timestamps)
    (old,) = _arns(streams, cql, keyspace)
    _tail_in_the_old_stream(table, emulator, old)
    table.set_cdc(False)
    table.set_cdc(True, "NEW_IMAGE")  # a view-type change always takes a new stream
    for n in range(0, ROWS, 4):
        table.update(n, n, "new stream")  # keys the old stream's tail changed too
    table.delete(ROWS - 1, ROWS - 1)
    new = _arns(streams, cql, keyspace)[-1]
    assert new != old

    mapping = orders_mapping(keyspace)
    with following(cfg, mapping) as summary:
        wait_for(opensearch, mapping.alias, table.model)

    # The window between the disable and the re-enable reached no stream: one gap.
    assert summary[0].gaps == 1 and summary[0].reindex_needed
    (gap,) = _gaps(opensearch, keyspace)
    assert gap.kind == "stream-switch" and gap.stream_arn == new and gap.shard_id is None
    assert gap.window_start_ms is not None and gap.window_end_ms is not None
    assert gap.window_start_ms <= gap.window_end_ms
    # Every version from the new stream lies above every version of the old one.
    store = StateStore(opensearch)
    old_state = store.get_streams(f"{keyspace}.orders", [old])[old]
    assert old_state.finished and old_state.final_version
    new_versions = _versions(opensearch, mapping.alias, [f"{n}:{n}" for n in range(0, ROWS, 4)])
    assert min(new_versions) > old_state.final_version


def _versions(client: OpenSearch, alias: str, ids: list[str]) -> list[int]:
    reply = client.mget(index=alias, body={"ids": ids})
    return [int(doc["_version"]) for doc in reply["docs"]]


def test_a_stream_switch_under_stop_applies_the_old_stream_then_stops(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
    streams: Any,
) -> None:
    cfg = make_config()  # on_gap = "stop"
    table = _indexed_and_outage(cql, keyspace, opensearch, cfg)
    (old,) = _arns(streams, cql, keyspace)
    _tail_in_the_old_stream(table, emulator, old)
    table.set_cdc(False)
    table.set_cdc(True)

    error = stopped_by(cfg, orders_mapping(keyspace))

    assert isinstance(error, StreamGap) and "reached no stream" in str(error), error
    assert indexed(opensearch, orders_mapping(keyspace).alias) == table.model
    assert [g.kind for g in _gaps(opensearch, keyspace)] == ["stream-switch"]


def test_an_old_stream_that_expired_during_the_outage_is_a_gap_then_the_new_one_is_followed(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
    streams: Any,
) -> None:
    cfg = make_config(follow={"on_gap": "continue"})
    table = _indexed_and_outage(cql, keyspace, opensearch, cfg)
    (old,) = _arns(streams, cql, keyspace)
    for n in range(ROWS):
        table.update(n, n, "old stream, never read")
    table.set_cdc(False)
    table.set_cdc(True)
    for n in range(ROWS):
        table.update(n, n, "new stream, trimmed")
    emulator.control.advance_clock(DAY_S + 3600)  # the old stream is gone, not only trimmed
    (new,) = _arns(streams, cql, keyspace)

    mapping = orders_mapping(keyspace)
    with following(cfg, mapping):
        table.insert(100, 100, "after the outage", 1)
        until(lambda: "100:100" in indexed(opensearch, mapping.alias), "the new row arrives")

    gaps = _gaps(opensearch, keyspace)
    gone = [g for g in gaps if g.kind == "shard-gone"]
    # Every shard of the old stream was begun and none read to its end.
    assert len(gone) == 4 and {g.stream_arn for g in gone} == {old}
    assert [g.stream_arn for g in gaps if g.kind == "stream-switch"] == [new]
    assert {g.stream_arn for g in gaps if g.kind == "start-trimmed"} == {new}
    old_state = StateStore(opensearch).get_streams(f"{keyspace}.orders", [old])[old]
    assert old_state.finished


def test_a_running_follower_that_meets_a_disabled_stream_goes_on_with_the_new_one(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    with following(make_config(follow={"on_gap": "continue"}), mapping) as summary:
        for n in range(ROWS):
            table.insert(n, n, "first", n)
        wait_for(opensearch, mapping.alias, table.model)
        # Hold the readers (not the coordinator) while CDC goes off and on, so the
        # follower meets the DISABLED stream with its tail still unread.
        emulator.control.set_faults(throttle_rates={"GetRecords": 1.0})
        try:
            for n in range(ROWS):
                table.update(n, n, "old stream")
            table.set_cdc(False)
            table.set_cdc(True)
            for n in range(0, ROWS, 3):
                table.update(n, n, "new stream")
        finally:
            emulator.control.set_faults(throttle_rates={})
        wait_for(opensearch, mapping.alias, table.model)
    assert summary[0].gaps == 1
    assert [g.kind for g in _gaps(opensearch, keyspace)] == ["stream-switch"]


def test_with_cdc_off_the_follower_applies_the_disabled_stream_then_says_cdc_is_off(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    stop = threading.Event()
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            run_follow(make_config(), mapping, stop=stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        for n in range(ROWS):
            table.insert(n, n, "first", n)
        wait_for(opensearch, mapping.alias, table.model)
        for n in range(ROWS):
            table.update(n, n, "last before the disable")
        table.set_cdc(False)
        thread.join(timeout=60)
        assert not thread.is_alive(), "the follower kept running with CDC off"
    finally:
        stop.set()
        thread.join(timeout=60)

    (error,) = errors
    assert isinstance(error, ConfigError)
    assert "CDC is off" in str(error) and "every change up to" in str(error)
    assert "ALTER TABLE" in error.hint
    assert indexed(opensearch, mapping.alias) == table.model
    assert _gaps(opensearch, keyspace) == []
