"""The writer stage's bookkeeping (`Packer`), pure: loads, and what each shard may checkpoint.

What the follower relies on: batches of several shards go out together in
loads of at most `max_docs` changes, a batch may be split over loads, and a
shard is told a position only once that batch and every earlier one of the
shard are resolved, whatever order the loads in flight come back in.
"""

from __future__ import annotations

import random

import pytest

from sync.jobs.stage import Batch, Load, Packer, approx_size
from sync.model import Change, Op, StreamPosition
from sync.sources.streams import BadRecord

pytestmark = pytest.mark.unit


def batch(shard: str, first: int, count: int, *, bad: int = 0) -> Batch:
    """Records `first .. first+count-1` of a shard: changes, then `bad` undecodable ones."""
    out = Batch()
    for n in range(first, first + count):
        position = StreamPosition("arn", shard, f"{n:021d}", 1_000 + n)
        out.changes.append(Change(Op.UPSERT, (shard, n), {"n": n}, n + 1, position))
    last = first + count - 1
    for n in range(last + 1, last + 1 + bad):
        position = StreamPosition("arn", shard, f"{n:021d}", 1_000 + n)
        out.bad.append(BadRecord({}, position, "bad", n))
    end = last + bad
    out.last_sequence, out.last_version = f"{end:021d}", end
    out.first_created_at_ms = 1_000 + first
    out.approx_bytes = sum(approx_size(c) for c in out.changes)
    out.first_at = 0.0
    return out


def keys(load: Load) -> list[tuple[str, int]]:
    return [c.key for c in load.changes()]  # type: ignore[misc]


def positions(acknowledged: list[object]) -> list[tuple[object, str | None]]:
    return [(p.shard, p.batch.last_sequence) for p in acknowledged]  # type: ignore[attr-defined]


def test_batches_of_several_shards_go_out_together_up_to_max_docs() -> None:
    packer = Packer()
    packer.put("a", batch("a", 0, 3))
    packer.put("b", batch("b", 0, 3))
    packer.put("c", batch("c", 0, 3))
    first = packer.take(max_docs=5, max_bytes=10**9)
    assert first is not None
    assert keys(first) == [("a", 0), ("a", 1), ("a", 2), ("b", 0), ("b", 1)]
    second = packer.take(max_docs=5, max_bytes=10**9)
    assert second is not None
    assert keys(second) == [("b", 2), ("c", 0), ("c", 1), ("c", 2)]
    assert packer.take(max_docs=5, max_bytes=10**9) is None


def test_a_batch_split_over_two_loads_is_acknowledged_when_both_are() -> None:
    packer = Packer()
    packer.put("a", batch("a", 0, 4))
    packer.put("b", batch("b", 0, 4))
    first = packer.take(max_docs=6, max_bytes=10**9)
    second = packer.take(max_docs=6, max_bytes=10**9)
    assert first is not None and second is not None
    assert positions(packer.done(second)) == []  # b's batch began in the first load
    assert not packer.settled("b")
    assert positions(packer.done(first)) == [("a", f"{3:021d}"), ("b", f"{3:021d}")]
    assert packer.settled("a") and packer.settled("b") and packer.held_bytes == 0


def test_a_later_batch_resolved_first_waits_for_the_earlier_one_of_its_shard() -> None:
    packer = Packer()
    packer.put("a", batch("a", 0, 2))
    early = packer.take(max_docs=2, max_bytes=10**9)
    packer.put("a", batch("a", 2, 2))
    packer.put("b", batch("b", 0, 2))
    late = packer.take(max_docs=4, max_bytes=10**9)
    assert early is not None and late is not None
    # b had nothing earlier: acknowledged at once; a's second batch waits for its first.
    assert positions(packer.done(late)) == [("b", f"{1:021d}")]
    assert packer.waiting_since_ms("a") == 1_000
    assert positions(packer.done(early)) == [("a", f"{1:021d}"), ("a", f"{3:021d}")]
    assert packer.waiting_since_ms("a") is None


def test_a_batch_of_bad_or_skipped_records_only_keeps_its_place_in_line() -> None:
    packer = Packer()
    packer.put("a", batch("a", 0, 2))
    packer.put("a", batch("a", 2, 0, bad=2))  # nothing to write, two records to dead-letter
    load = packer.take(max_docs=10, max_bytes=10**9)
    assert load is not None and keys(load) == [("a", 0), ("a", 1)]
    assert [(shard, len(bad)) for shard, bad in load.bad()] == [("a", 2)]
    assert positions(packer.done(load)) == [("a", f"{1:021d}"), ("a", f"{3:021d}")]


def test_bytes_bound_a_load_and_are_held_until_acknowledged() -> None:
    packer = Packer()
    packer.put("a", batch("a", 0, 10))
    assert packer.held_bytes == 10 * 264  # a change of one small column is estimated at 264
    load = packer.take(max_docs=100, max_bytes=500)
    assert load is not None and len(load.changes()) == 2
    rest = packer.take(max_docs=100, max_bytes=10**9)
    assert rest is not None and len(rest.changes()) == 8
    packer.done(load)
    assert packer.held_bytes == 10 * 264  # the batch is not acknowledged until all of it is
    packer.done(rest)
    assert packer.held_bytes == 0


def test_text_counts_in_the_estimate() -> None:
    position = StreamPosition("arn", "a", "1", 1)
    wide = Change(Op.UPSERT, ("a", 1), {"n": 1, "text": "x" * 10_000}, 1, position)
    assert approx_size(wide) == 200 + 2 * 64 + 10_000


@pytest.mark.parametrize("seed", range(20))
def test_random_loads_resolved_in_any_order_never_pass_an_unresolved_record(seed: int) -> None:
    rng = random.Random(seed)
    packer = Packer()
    shards = ["a", "b", "c"]
    written: dict[str, set[int]] = {s: set() for s in shards}
    told: dict[str, int] = {s: -1 for s in shards}
    ends: dict[str, int] = dict.fromkeys(shards, 0)
    in_flight: list[Load] = []
    for _ in range(60):
        step = rng.random()
        if step < 0.4:
            shard = rng.choice(shards)
            count, bad = rng.randint(0, 5), rng.randint(0, 1)
            if count + bad:
                packer.put(shard, batch(shard, ends[shard], count, bad=bad))
                ends[shard] += count + bad
        elif step < 0.7:
            load = packer.take(max_docs=rng.randint(1, 8), max_bytes=10**9)
            if load is not None:
                in_flight.append(load)
        elif in_flight:
            load = in_flight.pop(rng.randrange(len(in_flight)))
            for change in load.changes():
                shard, n = change.key
                written[shard].add(n)
            for shard, bad in load.bad():
                written[str(shard)].update(b.version for b in bad)
            for parcel in packer.done(load):
                shard = str(parcel.shard)
                position = parcel.batch.last_version
                assert position is not None and position > told[shard]  # in order
                told[shard] = position
                # Every record up to the position told is resolved.
                assert set(range(position + 1)) <= written[shard]
    while (load := packer.take(max_docs=8, max_bytes=10**9)) is not None:
        in_flight.append(load)
    for load in in_flight:
        packer.done(load)
    assert all(packer.settled(s) for s in shards) and packer.held_bytes == 0
