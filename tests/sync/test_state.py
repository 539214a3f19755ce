"""The state store against a real OpenSearch-compatible server (osmem).

What users rely on: exactly one worker owns a shard or range at a time, a
worker that lost its lease cannot move a checkpoint, a crashed worker's unit
is taken over after its lease expires, and checkpoints carry what a restart
needs (sequence number and version; final versions of finished shards).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from dataclasses import replace

import pytest
from opensearchpy import OpenSearch

from sync.state import LeaseLost, RangeState, StateStore

TABLE = "ks.t"
ARN = "arn:aws:cassandra:us-east-1:111122223333:/keyspace/ks/table/t/stream/2026-01-01T00:00:00.000"


class FakeClock:
    """Epoch ms that a test moves by hand, so leases expire without waiting."""

    def __init__(self, now_ms: int = 1_800_000_000_000) -> None:
        self.now = now_ms

    def __call__(self) -> int:
        return self.now


@pytest.fixture
def client(osmem_clone: object) -> Iterator[OpenSearch]:
    client = OpenSearch(hosts=[osmem_clone.url])  # type: ignore[attr-defined]
    yield client
    client.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def store(client: OpenSearch, clock: FakeClock, lease_seconds: float = 30) -> StateStore:
    return StateStore(client, ".ks2os-state", lease_seconds=lease_seconds, clock=clock)


def test_a_shard_has_one_owner_until_its_lease_expires(
    client: OpenSearch, clock: FakeClock
) -> None:
    a, b = store(client, clock), store(client, clock)
    mine = a.acquire_shard(TABLE, ARN, "shardId-0001", "worker-a", start_version=7)
    assert mine is not None and mine.lease.owner == "worker-a"
    assert mine.version == 7 and mine.sequence_number is None

    assert b.acquire_shard(TABLE, ARN, "shardId-0001", "worker-b") is None
    clock.now += 29_000
    assert b.acquire_shard(TABLE, ARN, "shardId-0001", "worker-b") is None

    clock.now += 2_000  # past expiry: worker-a crashed without releasing
    theirs = b.acquire_shard(TABLE, ARN, "shardId-0001", "worker-b")
    assert theirs is not None and theirs.lease.owner == "worker-b"
    assert theirs.version == 7  # the takeover continues from the stored checkpoint


def test_a_worker_that_lost_its_lease_cannot_move_the_checkpoint(
    client: OpenSearch, clock: FakeClock
) -> None:
    a, b = store(client, clock), store(client, clock)
    zombie = a.acquire_shard(TABLE, ARN, "shardId-0002", "worker-a")
    assert zombie is not None
    zombie = a.checkpoint_shard(zombie, "000000000000000000010", 100)
    clock.now += 31_000
    owner = b.acquire_shard(TABLE, ARN, "shardId-0002", "worker-b")
    assert owner is not None and owner.sequence_number == "000000000000000000010"
    owner = b.checkpoint_shard(owner, "000000000000000000020", 200)

    with pytest.raises(LeaseLost):
        a.checkpoint_shard(zombie, "000000000000000000030", 300)
    with pytest.raises(LeaseLost):
        a.renew_shard(zombie)
    with pytest.raises(LeaseLost):
        a.release_shard(zombie)

    stored = a.get_shards(TABLE, ARN, ["shardId-0002"])["shardId-0002"]
    assert (stored.sequence_number, stored.version, stored.lease.owner) == (
        "000000000000000000020",
        200,
        "worker-b",
    )


def test_release_frees_the_shard_at_once(client: OpenSearch, clock: FakeClock) -> None:
    a, b = store(client, clock), store(client, clock)
    mine = a.acquire_shard(TABLE, ARN, "shardId-0003", "worker-a")
    assert mine is not None
    a.release_shard(a.checkpoint_shard(mine, "000000000000000000005", 55))
    theirs = b.acquire_shard(TABLE, ARN, "shardId-0003", "worker-b")
    assert theirs is not None
    assert (theirs.sequence_number, theirs.version) == ("000000000000000000005", 55)


def test_renew_keeps_the_lease_past_its_first_expiry(client: OpenSearch, clock: FakeClock) -> None:
    a, b = store(client, clock), store(client, clock)
    mine = a.acquire_shard(TABLE, ARN, "shardId-0004", "worker-a")
    assert mine is not None
    for _ in range(5):
        clock.now += int(a.renew_interval_s * 1000)
        mine = a.renew_shard(mine)
    assert b.acquire_shard(TABLE, ARN, "shardId-0004", "worker-b") is None


def test_a_finished_shard_keeps_its_final_version_and_is_never_leased_again(
    client: OpenSearch, clock: FakeClock
) -> None:
    a = store(client, clock)
    mine = a.acquire_shard(TABLE, ARN, "shardId-0005", "worker-a")
    assert mine is not None
    a.finish_shard(mine, final_version=12345, sequence_number="000000000000000000099")
    clock.now += 60_000
    assert a.acquire_shard(TABLE, ARN, "shardId-0005", "worker-b") is None
    states = a.get_shards(TABLE, ARN, ["shardId-0005", "shardId-never"])
    assert set(states) == {"shardId-0005"}
    done = states["shardId-0005"]
    assert done.finished and done.final_version == 12345 and done.lease.owner is None


def test_racing_workers_get_exactly_one_lease(client: OpenSearch, clock: FakeClock) -> None:
    stores = [store(client, clock) for _ in range(6)]
    stores[0].ensure()
    start = threading.Barrier(len(stores))
    winners: list[str] = []
    lock = threading.Lock()

    def race(i: int) -> None:
        start.wait()
        got = stores[i].acquire_shard(TABLE, ARN, "shardId-race", f"worker-{i}")
        if got is not None:
            with lock:
                winners.append(f"worker-{i}")

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1
    stored = stores[0].get_shards(TABLE, ARN, ["shardId-race"])["shardId-race"]
    assert stored.lease.owner == winners[0]


def lease(store: StateStore, states: list[RangeState], worker: str, limit: int = 8) -> list[int]:
    """Lease up to `limit` of `states` the way a backfill worker does; the numbers leased."""
    results = store.update_ranges(store.range_leases(states, worker, limit))
    return [state.number for state in results if state is not None]


def test_one_backfill_run_wins_and_its_ranges_are_leased_once(
    client: OpenSearch, clock: FakeClock
) -> None:
    a, b = store(client, clock), store(client, clock)
    ranges = [(-(2**63), -1), (-1, 2**63 - 1)]
    run = a.start_run(TABLE, "run-1", ranges)
    with pytest.raises(LeaseLost):
        b.start_run(TABLE, "run-2", ranges)
    seen = b.get_run(TABLE)
    assert seen is not None and (seen.run_id, seen.range_count) == ("run-1", 2)

    first, second = a.list_ranges(run)
    assert (first.range_start, first.range_end) == (-(2**63), -1)  # 64-bit tokens survive
    assert lease(a, [first], "worker-a") == [0]
    assert lease(b, [first], "worker-b") == []  # stale view: the conditional write fails
    assert lease(b, b.list_ranges(run)[:1], "worker-b") == []  # fresh view: leased, skipped

    (mine,) = [r for r in a.list_ranges(run) if r.number == 0]
    (mine,) = a.update_ranges([(mine, a.progressed(mine, last_token=-(2**62), rows=10))])
    assert mine is not None
    assert a.update_ranges([(mine, a.finished(mine, rows=25))])[0] is not None
    assert lease(b, [second], "worker-b") == [1]
    (theirs,) = [r for r in b.list_ranges(run) if r.number == 1]
    clock.now += 31_000
    assert lease(a, a.list_ranges(run), "worker-a") == [1]  # taken over; 0 is done
    assert b.update_ranges([(theirs, b.progressed(theirs, last_token=5, rows=1))]) == [None]

    done, resumed = a.list_ranges(run)
    assert done.done and done.rows == 25 and done.last_token == -(2**62)
    assert not resumed.done and resumed.lease.owner == "worker-a"


def test_restart_replaces_the_run_conditionally(client: OpenSearch, clock: FakeClock) -> None:
    a = store(client, clock)
    old = a.start_run(TABLE, "run-1", [(-(2**63), 2**63 - 1)])
    new = a.start_run(TABLE, "run-2", [(-(2**63), 0), (0, 2**63 - 1)], replacing=old)
    assert new.run_id == "run-2"
    with pytest.raises(LeaseLost):
        a.start_run(TABLE, "run-3", [(-(2**63), 2**63 - 1)], replacing=old)
    current = a.get_run(TABLE)
    assert current is not None and current.run_id == "run-2"
    assert len(a.list_ranges(current)) == 2
    assert a.finish_run(current).finished


def test_several_ranges_are_leased_in_one_request_each_conditionally(
    client: OpenSearch, clock: FakeClock
) -> None:
    a, b = store(client, clock), store(client, clock)
    bounds = [-(2**63) + i * 2**61 for i in range(8)] + [2**63 - 1]
    run = a.start_run(TABLE, "run-many", list(itertools.pairwise(bounds)))
    ranges = a.list_ranges(run)
    assert [r.number for r in ranges] == list(range(8))

    assert lease(a, ranges, "worker-a", limit=3) == [0, 1, 2]
    mine = a.list_ranges(run)[:3]
    assert all(r.lease.owner == "worker-a" for r in mine)
    # A stale view of 0..3: the three leased ones fail their condition, 3 is had.
    assert lease(b, ranges[:4], "worker-b") == [3]
    # A fresh view: ranges others hold are skipped (its own one is leased anew).
    assert lease(b, b.list_ranges(run), "worker-b", limit=2) == [3, 4]

    # One request: 0 done, 1 progressed, 2 released; a stale write of 3 is refused.
    done, progressed, released = a.update_ranges(
        [
            (mine[0], a.finished(mine[0], rows=7)),
            (mine[1], a.progressed(mine[1], last_token=-(2**62), rows=3)),
            (mine[2], a.released(mine[2])),
        ]
    )
    assert done is not None and done.done and done.lease.owner is None
    assert progressed is not None and progressed.last_token == -(2**62)
    assert released is not None and released.lease.owner is None
    assert a.update_ranges([(ranges[3], a.renewed(mine[0]))]) == [None]
    # The same request sent again (a retry after a lost reply) finds its own write: no loss.
    again = a.update_ranges([(mine[1], progressed)])
    assert again == [progressed]

    stored = {r.number: r for r in a.list_ranges(run)}
    assert stored[0].done and stored[0].rows == 7
    assert stored[1].rows == 3 and stored[1].lease.owner == "worker-a"
    assert stored[3].lease.owner == "worker-b"
    # Done ranges are never leased again, expired ones are taken over.
    clock.now += 31_000
    assert lease(b, a.list_ranges(run), "worker-b") == [1, 2, 3, 4, 5, 6, 7]


def test_a_state_index_pushing_back_is_retried(osmem_clone: object, clock: FakeClock) -> None:
    """429s and 5xx from the state index are waited out, reads and writes alike."""
    from sync.retry import RetryPolicy
    from tests.sync.faults import HttpProxy

    proxy = HttpProxy(osmem_clone.url)  # type: ignore[attr-defined]
    via_proxy = OpenSearch(hosts=[proxy.url], max_retries=0)
    try:
        quick = RetryPolicy(initial_s=0.01, longest_s=0.05, budget_s=30)
        a = StateStore(via_proxy, ".ks2os-state", clock=clock, policy=quick)
        a.ensure()
        for status in (429, 503):
            proxy.refuse_status, proxy.refuse_any = status, 2
            mine = a.acquire_shard(TABLE, ARN, f"shardId-{status}", "worker-a")  # mget + bulk
            assert mine is not None
            mine = a.checkpoint_shard(mine, "000000000000000000007", 70)
            assert mine.sequence_number == "000000000000000000007"
        assert proxy.refused_any == 4
    finally:
        via_proxy.close()
        proxy.close()


# ---- rebuilds ------------------------------------------------------------------------


def test_one_rebuild_at_a_time_and_its_lease_passes_on_only_when_expired(
    client: OpenSearch, clock: FakeClock
) -> None:
    a, b = store(client, clock), store(client, clock)
    assert a.get_rebuild(TABLE) is None
    begun = a.begin_rebuild(TABLE, "shop", "shop_v1", "shop_v2", "run-a")
    assert begun.phase == "building" and begun.targets == ("shop_v1", "shop_v2")
    with pytest.raises(LeaseLost):
        b.begin_rebuild(TABLE, "shop", "shop_v1", "shop_v3", "run-b")

    seen = b.get_rebuild(TABLE)
    assert seen == begun
    assert b.lease_rebuild(seen, "run-b") is None  # run-a is alive
    clock.now += 31_000
    taken = b.lease_rebuild(seen, "run-b")
    assert taken is not None and taken.lease.owner == "run-b"
    # run-a, back from a pause, cannot move the phase on from what it last saw.
    with pytest.raises(LeaseLost):
        a.update_rebuild(begun, replace(begun, phase="swapped"))


def test_a_finished_rebuild_is_replaced_by_the_next_one(
    client: OpenSearch, clock: FakeClock
) -> None:
    s = store(client, clock)
    first = s.begin_rebuild(TABLE, "shop", "shop_v1", "shop_v2", "run-a")
    done = s.update_rebuild(first, replace(first, phase="done", swapped_ms=clock.now))
    assert done.targets == ()  # followers write the alias's index alone again
    second = s.begin_rebuild(TABLE, "shop", "shop_v2", "shop_v3", "run-b", replacing=done)
    assert s.get_rebuild(TABLE) == second
    assert second.phase == "building" and second.swapped_ms is None


def test_heartbeats_say_which_indexes_each_live_worker_writes(
    client: OpenSearch, clock: FakeClock
) -> None:
    s = store(client, clock)
    s.heartbeat("follow", TABLE, "w1", writes_to=["shop_v1", "shop_v2"])
    s.heartbeat("follow", TABLE, "w2")
    assert s.live_worker_targets("follow", TABLE) == {
        "w1": frozenset({"shop_v1", "shop_v2"}),
        "w2": frozenset(),
    }
    clock.now += 31_000
    assert s.live_worker_targets("follow", TABLE) == {}
