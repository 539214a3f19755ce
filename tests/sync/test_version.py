"""The version rule, as pure logic: no server needed.

A small simulated stream (shards that split and merge, per-shard clocks that
disagree, many records in one millisecond) is read the way the follower
reads it, and every key's versions must rise in the order its changes
happened — including after a replay from any checkpoint.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sync.version import (
    TIE_BITS,
    base,
    lineage_floor,
    next_stream_version,
    snapshot_version,
)

pytestmark = pytest.mark.unit


@dataclass
class Shard:
    name: str
    parents: list[str]
    skew_ms: int  # this shard's createdAt clock minus true time
    records: list[tuple[str, int, int]] = field(default_factory=list)  # key, createdAt, change no.


@dataclass
class Stream:
    shards: dict[str, Shard]
    order: list[str]  # creation order, which is a valid lineage order


def simulate(seed: int, writes: int) -> Stream:
    """Writes to 6 keys over shards that split and merge; createdAt clocks skewed per shard."""
    rng = random.Random(seed)
    shards: dict[str, Shard] = {}
    order: list[str] = []

    def new_shard(parents: list[str]) -> str:
        name = f"s{len(shards)}"
        shards[name] = Shard(name, parents, skew_ms=rng.randint(-3000, 3000))
        order.append(name)
        return name

    open_shards = [new_shard([]), new_shard([])]
    route: dict[str, str] = {}
    now = 1_700_000_000_000
    for change in range(writes):
        roll = rng.random()
        if roll < 0.05:
            parent = rng.choice(open_shards)
            open_shards.remove(parent)
            children = [new_shard([parent]), new_shard([parent])]
            open_shards += children
            route = {k: rng.choice(children) if s == parent else s for k, s in route.items()}
        elif roll < 0.08 and len(open_shards) >= 2:
            a, b = rng.sample(open_shards, 2)
            for gone in (a, b):
                open_shards.remove(gone)
            child = new_shard([a, b])
            open_shards.append(child)
            route = {k: child if s in (a, b) else s for k, s in route.items()}
        key = f"k{rng.randrange(6)}"
        shard = shards[route.setdefault(key, rng.choice(open_shards))]
        now += rng.choice([0, 0, 0, 1, 2])  # many changes share a millisecond
        created = now + shard.skew_ms
        if shard.records:  # one shard's createdAt does not run backwards
            created = max(created, shard.records[-1][1])
        shard.records.append((key, created, change))
    return Stream(shards, order)


def read(stream: Stream, start: dict[str, tuple[int, int]] | None = None) -> dict[int, int]:
    """Versions per change number, reading shards in lineage order.

    `start` maps a shard to a checkpoint (records already acknowledged, version of
    the last one): reading resumes after it, as a restarted follower does.
    """
    versions: dict[int, int] = {}
    final: dict[str, int] = {}
    for name in stream.order:
        shard = stream.shards[name]
        previous = lineage_floor(final[p] for p in shard.parents)
        records = shard.records
        if start and name in start:
            done, previous = start[name]
            records = records[done:]
        for _key, created, change in records:
            previous = next_stream_version(created, previous)
            versions[change] = previous
        final[name] = previous
    return versions


def per_key_order(stream: Stream) -> dict[str, list[int]]:
    changes: dict[str, list[tuple[int, str]]] = {}
    for shard in stream.shards.values():
        for key, _created, change in shard.records:
            changes.setdefault(key, []).append((change, key))
    return {k: sorted(c for c, _ in v) for k, v in changes.items()}


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), writes=st.integers(1, 300))
def test_versions_rise_along_every_lineage_even_with_skewed_created_at(
    seed: int, writes: int
) -> None:
    stream = simulate(seed, writes)
    versions = read(stream)
    for key, changes in per_key_order(stream).items():
        ordered = [versions[c] for c in changes]
        assert ordered == sorted(set(ordered)), f"{key}: versions do not rise: {ordered}"


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32), writes=st.integers(2, 200), cut=st.floats(0, 1))
def test_replay_from_a_checkpoint_between_tied_records_reproduces_versions(
    seed: int, writes: int, cut: float
) -> None:
    stream = simulate(seed, writes)
    first = read(stream)
    # Checkpoint every shard somewhere in the middle, as a crash would leave it.
    checkpoints: dict[str, tuple[int, int]] = {}
    for name, shard in stream.shards.items():
        done = int(len(shard.records) * cut)
        if done:
            checkpoints[name] = (done, first[shard.records[done - 1][2]])
    replayed = read(stream, checkpoints)
    assert {c: first[c] for c in replayed} == replayed


def test_the_anchor_rule_fails_hazard_1_and_ours_does_not() -> None:
    """Two changes of one key in one millisecond, a checkpoint between them.

    Data Prepper's stream version is epochSecond * 10**6 + recordsSeenThisSecond with
    the counter in process memory: after a restart at the checkpoint the second
    change is numbered like the first and is refused as stale.
    """
    created = 1_700_000_000_123
    anchor_before_crash = [(created // 1000) * 10**6 + n for n in (1, 2)]
    anchor_after_restart = (created // 1000) * 10**6 + 1  # counter restarted
    assert anchor_after_restart <= anchor_before_crash[0]  # the newer change loses

    first = next_stream_version(created, 0)
    second = next_stream_version(created, first)
    replayed_second = next_stream_version(created, first)  # resumed from the checkpoint
    assert second > first
    assert replayed_second == second


def test_a_zombie_worker_writes_only_what_the_owner_writes() -> None:
    stream = simulate(seed=7, writes=400)
    owner = read(stream)
    name = max(stream.shards, key=lambda n: len(stream.shards[n].records))
    shard = stream.shards[name]
    # The zombie resumed from an older checkpoint than the new owner did.
    zombie = read(stream, {name: (1, owner[shard.records[0][2]])})
    half = len(shard.records) // 2
    taken_over = read(stream, {name: (half, owner[shard.records[half - 1][2]])})
    for change in taken_over:
        assert zombie[change] == taken_over[change] == owner[change]


@settings(max_examples=300, deadline=None)
@given(
    read_at=st.integers(10**12, 4 * 10**12),
    margin=st.integers(1, 600_000),
    later_by=st.integers(0, 10**7),
    previous=st.integers(0, 2**62),
)
def test_snapshot_version_is_below_every_record_the_read_did_not_see(
    read_at: int, margin: int, later_by: int, previous: int
) -> None:
    """A record created at or after the read began always outranks the snapshot row."""
    record_version = next_stream_version(read_at + later_by, previous)
    assert snapshot_version(read_at, margin) < record_version


def test_base_leaves_room_below_each_millisecond() -> None:
    assert base(1) - base(0) == 2**TIE_BITS
    assert next_stream_version(5, base(5)) == base(5) + 1
    assert next_stream_version(6, base(5) + 7) == base(6)
