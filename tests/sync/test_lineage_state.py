"""The state store's stream, gap and coverage documents, against osmem.

What users rely on: a stream finished by one follower is finished for every
follower, with one final version; a gap, once found, is kept with where and
when it was first found, however often it is found again; an index's coverage
only ever moves earlier, whichever job records it first.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from opensearchpy import OpenSearch

from sync.state import GapRecord, StateStore

TABLE = "ks.t"
ARN = "arn:aws:cassandra:us-east-1:111122223333:/keyspace/ks/table/t/stream/2026-01-01T00:00:00.000"


@pytest.fixture
def client(osmem_clone: object) -> Iterator[OpenSearch]:
    client = OpenSearch(hosts=[osmem_clone.url])  # type: ignore[attr-defined]
    yield client
    client.close()


def test_a_stream_is_begun_once_and_finished_once_for_every_follower(client: OpenSearch) -> None:
    a, b = StateStore(client), StateStore(client)
    mine = a.begin_stream(TABLE, ARN, "2026-01-01T00:00:00.000")
    theirs = b.begin_stream(TABLE, ARN, "2026-01-01T00:00:00.000")
    assert mine == theirs and not mine.finished and mine.final_version is None

    done = a.finish_stream(mine, 12_345)
    assert b.finish_stream(theirs, 12_345) == done  # the second finds it finished
    assert b.get_streams(TABLE, [ARN, "other"]) == {ARN: done}
    assert done.finished and done.final_version == 12_345
    assert [s.stream_arn for s in b.list_stream_states(TABLE)] == [ARN]


def _gap(found_at_ms: int, after: str | None = "000000000000000000000042") -> GapRecord:
    return GapRecord(TABLE, ARN, "shardId-1", "trimmed", after, found_at_ms, "stop")


def test_a_gap_found_again_keeps_its_first_finding(client: OpenSearch) -> None:
    store = StateStore(client)
    assert store.record_gap(_gap(1_000))
    assert not store.record_gap(_gap(9_000))  # the same gap, found at a restart
    assert store.record_gap(_gap(5_000, after=None))  # another one
    switch = GapRecord(TABLE, ARN, None, "stream-switch", None, 7_000, "continue", 10, 20)
    assert store.record_gap(switch)
    gaps = store.list_gaps(TABLE)
    assert [(g.found_at_ms, g.after) for g in gaps] == [
        (1_000, "000000000000000000000042"),
        (5_000, None),
        (7_000, None),
    ]
    assert gaps[-1] == switch
    assert store.list_gaps("ks.other") == []


def test_coverage_only_moves_earlier_whoever_records_it(client: OpenSearch) -> None:
    store = StateStore(client)
    assert store.get_coverage(TABLE, "alias_v1") is None
    assert store.cover_from(TABLE, "alias_v1", 5_000).since_ms == 5_000
    assert store.cover_from(TABLE, "alias_v1", 9_000).since_ms == 5_000  # a later job
    assert store.cover_from(TABLE, "alias_v1", 4_000).since_ms == 4_000  # an earlier one
    assert store.cover_from(TABLE, "alias_v2", 9_000).since_ms == 9_000  # per index

    # Jobs recording at once: the earliest wins.
    starts = list(range(100_000, 100_008))
    threads = [
        threading.Thread(target=StateStore(client).cover_from, args=(TABLE, "alias_v3", t))
        for t in reversed(starts)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    coverage = store.get_coverage(TABLE, "alias_v3")
    assert coverage is not None and coverage.since_ms == min(starts)
