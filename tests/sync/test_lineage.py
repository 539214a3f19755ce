"""Shard lineage planning, without servers.

What users rely on: a child shard is never read before every one of its
parents is read to its end (splits have one parent, merges several), so each
key's changes are applied in order; a child's versions start above every
parent's last version, and a new stream's above the old stream's; a shard
the state store holds unfinished is read even when the listing forgot it; a
loss is called a gap exactly when the index may have needed what was lost;
followers split the readable shards fairly.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.sources.streams import (
    CLOCK_MARGIN_MS,
    RETENTION_MS,
    Shard,
    ShardProgress,
    children_of,
    fair_share,
    label_ms,
    label_of,
    missing_parents,
    orphans,
    readable_shards,
    sequence_key,
    start_version,
    switch_may_lose_needed,
    trim_may_lose_needed,
)
from sync.version import next_stream_version

pytestmark = pytest.mark.unit

DONE = ShardProgress(finished=True, final_version=100)


def graph(*shards: Shard) -> dict[str, Shard]:
    return {s.shard_id: s for s in shards}


def test_roots_are_readable_and_children_wait_for_their_parent() -> None:
    shards = graph(Shard("a"), Shard("b"), Shard("a1", ("a",)), Shard("a2", ("a",)))
    assert readable_shards(shards, {}) == ["a", "b"]
    assert readable_shards(shards, {"a": DONE}) == ["a1", "a2", "b"]


def test_a_parent_without_ending_sequence_number_still_holds_its_children_back() -> None:
    # The listing may show children while the parent looks open: only the
    # reader seeing the end of the parent releases them.
    shards = graph(Shard("p", (), "1", None), Shard("c", ("p",)))
    assert readable_shards(shards, {"p": ShardProgress(finished=False)}) == ["p"]


def test_a_merge_child_waits_for_every_parent() -> None:
    shards = graph(Shard("x"), Shard("y"), Shard("xy", ("x", "y")))
    assert readable_shards(shards, {"x": DONE}) == ["y"]
    assert readable_shards(shards, {"x": DONE, "y": DONE}) == ["xy"]


def test_a_parent_gone_and_never_read_is_ruled_on_then_holds_nothing_back() -> None:
    shards = graph(Shard("child", ("gone-past-retention",)))
    assert missing_parents(shards, {}) == ["gone-past-retention"]
    assert readable_shards(shards, {}) == ["child"]


def test_a_parent_read_before_is_not_missing_and_a_begun_child_asks_nothing() -> None:
    shards = graph(Shard("child", ("read-and-gone",)), Shard("begun", ("pruned-long-ago",)))
    progress = {"read-and-gone": DONE, "begun": ShardProgress(finished=False)}
    assert missing_parents(shards, progress) == []


def test_an_unfinished_shard_the_listing_forgot_is_an_orphan_that_holds_its_children() -> None:
    listed = graph(Shard("c1", ("p",)), Shard("c2", ("p",)))
    progress = {"p": ShardProgress(finished=False, start_sequence="0" * 21), "old": DONE}
    found = orphans(listed, progress)
    assert list(found) == ["p"] and not found["p"].listed
    assert found["p"].starting_sequence_number == "0" * 21  # it can still prove its start
    assert readable_shards({**listed, **found}, progress) == ["p"]
    assert missing_parents({**listed, **found}, progress) == []


def test_finished_shards_are_not_read_again() -> None:
    shards = graph(Shard("a"), Shard("b", ("a",)))
    assert readable_shards(shards, {"a": DONE, "b": DONE}) == []


def test_a_child_starts_after_the_largest_final_version_of_its_parents() -> None:
    shards = graph(Shard("x"), Shard("y"), Shard("xy", ("x", "y")))
    progress = {
        "x": ShardProgress(True, final_version=5_000),
        "y": ShardProgress(True, final_version=9_000),
    }
    assert start_version(shards["xy"], progress) == 9_000
    assert start_version(shards["x"], progress) == 0
    assert children_of(shards, "x") == ["xy"]


def test_a_new_streams_shards_start_above_the_old_streams_final_version() -> None:
    shards = graph(Shard("root"), Shard("child", ("root",)))
    progress = {"root": ShardProgress(True, final_version=500)}
    assert start_version(shards["root"], progress, stream_floor=7_000) == 7_000
    assert start_version(shards["child"], progress, stream_floor=7_000) == 7_000
    assert start_version(shards["child"], progress, stream_floor=100) == 500


NOW = 1_800_000_000_000


def test_a_trim_matters_only_when_the_index_needs_changes_older_than_the_retention() -> None:
    edge = NOW - RETENTION_MS + CLOCK_MARGIN_MS
    assert trim_may_lose_needed(0, NOW)  # needed since an unknown time: always
    assert trim_may_lose_needed(edge, NOW)
    assert not trim_may_lose_needed(edge + 1, NOW)
    assert not trim_may_lose_needed(NOW - 3600_000, NOW)  # backfilled an hour ago


def test_a_stream_switch_matters_unless_the_index_began_after_the_new_stream() -> None:
    created = NOW - 3600_000
    assert switch_may_lose_needed(created - 1, created)
    assert switch_may_lose_needed(created + CLOCK_MARGIN_MS - 1, created)
    assert not switch_may_lose_needed(created + CLOCK_MARGIN_MS, created)


def test_stream_labels_are_creation_times_that_order_the_streams() -> None:
    arn = (
        "arn:aws:cassandra:us-east-1:123456789012:/keyspace/k/table/t"
        "/stream/2025-07-01T15:52:57.529"
    )
    assert label_of(arn) == "2025-07-01T15:52:57.529"
    assert label_ms(label_of(arn)) == 1_751_385_177_529
    assert label_ms("not a time") is None


@given(
    st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=30),
    st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=30),
    st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=30),
)
def test_versions_rise_along_a_merge_whatever_the_clocks(
    left: list[int], right: list[int], child: list[int]
) -> None:
    """Every change of a key read from a parent is below every change read from the child."""

    def read(created: list[int], previous: int) -> list[int]:
        versions = []
        for ms in created:
            previous = next_stream_version(ms, previous)
            versions.append(previous)
        return versions

    x, y = read(left, 0), read(right, 0)
    shards = graph(Shard("x"), Shard("y"), Shard("xy", ("x", "y")))
    progress = {"x": ShardProgress(True, x[-1]), "y": ShardProgress(True, y[-1])}
    z = read(child, start_version(shards["xy"], progress))
    assert min(z) > max(x + y)
    assert z == sorted(set(z))


@given(st.lists(st.integers(min_value=1, max_value=10**6), min_size=2, max_size=40), st.data())
def test_a_replay_from_any_checkpoint_recomputes_the_same_versions(
    created: list[int], data: st.DataObject
) -> None:
    """A checkpoint stores the last record's version: replaying after it gives equal versions."""
    full, previous = [], 0
    for ms in created:
        previous = next_stream_version(ms, previous)
        full.append(previous)
    cut = data.draw(st.integers(min_value=0, max_value=len(created) - 1))
    previous = full[cut]  # the checkpoint's version
    replay = []
    for ms in created[cut + 1 :]:
        previous = next_stream_version(ms, previous)
        replay.append(previous)
    assert replay == full[cut + 1 :]


def test_fair_share_rounds_up_so_every_shard_has_an_owner() -> None:
    assert fair_share(4, 2) == 2
    assert fair_share(5, 2) == 3
    assert fair_share(1, 3) == 1
    assert fair_share(0, 3) == 0
    assert fair_share(4, 0) == 4


def test_sequence_numbers_order_by_length_then_text() -> None:
    numbers = ["100000000000000000000", "99999999999999999999", "100000000000000000001"]
    assert sorted(numbers, key=sequence_key) == [
        "99999999999999999999",
        "100000000000000000000",
        "100000000000000000001",
    ]
