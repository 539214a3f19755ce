"""Shards: split and merge lineage, per-key order across both, closed-shard ends, the
lagging-parent fault, and the HTTP control endpoints, read through the real boto3 client."""

from __future__ import annotations

import itertools
import random
import urllib.error
import urllib.request
from collections import defaultdict
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keyspaces_local.clock import Clock
from keyspaces_local.streams.faults import LaggingParentClose
from keyspaces_local.streams.store import HASH_SPACE, StreamStore


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(url, data=orjson.dumps(body), method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        return orjson.loads(response.read())


def _value(record: dict[str, Any]) -> str:
    return str(record["newImage"]["valueCells"]["v"]["value"]["textT"])


def _key(record: dict[str, Any]) -> tuple[str, str]:
    return record["partitionKeys"]["pk"]["textT"], record["clusteringKeys"]["ck"]["intT"]


def read_in_lineage_order(stack: Any, arn: str) -> list[tuple[str, dict[str, Any]]]:
    """Read every shard to its end, each only after all of its parents (as a consumer must)."""
    shards = {s["shardId"]: s for s in stack.shards(arn)}
    done: set[str] = set()
    out: list[tuple[str, dict[str, Any]]] = []
    while len(done) < len(shards):
        ready = [
            sid
            for sid, s in shards.items()
            if sid not in done and all(p in done or p not in shards for p in s["parentShardIds"])
        ]
        assert ready, "the lineage has a cycle"
        sid = random.Random(len(done)).choice(ready)  # any order among ready shards is valid
        out += [(sid, r) for r in stack.read_shard(arn, sid)]
        done.add(sid)
    return out


def test_split_lineage(stack: Any, make_table: Any) -> None:
    table = make_table()
    arn = stack.store.enable_stream(table)
    ch = stack.changes(table)
    for i in range(40):
        stack.store.record(ch.change("p", i, None, {"v": "x"}))
    parent = stack.store.open_shard_ids(arn)[0]
    parent_records = stack.read_shard(arn, parent)
    children = stack.control.split_shard(arn, parent, 3)
    assert len(children) == 3
    shards = {s["shardId"]: s for s in stack.shards(arn)}
    closed = shards[parent]["sequenceNumberRange"]
    expected_end = (
        parent_records[-1]["sequenceNumber"] if parent_records else closed["startingSequenceNumber"]
    )
    assert closed["endingSequenceNumber"] == expected_end
    for child in children:
        assert shards[child]["parentShardIds"] == [parent]
        assert "endingSequenceNumber" not in shards[child]["sequenceNumberRange"]
        assert (
            shards[child]["sequenceNumberRange"]["startingSequenceNumber"]
            > closed["endingSequenceNumber"]
        )
    filtered = stack.client.get_stream(
        streamArn=arn, shardFilter={"type": "CHILD_SHARDS", "shardId": parent}
    )["shards"]
    assert [s["shardId"] for s in filtered] == children


def test_merge_lineage(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    first, second, third, _ = stack.store.open_shard_ids(arn)  # hash-range order
    child = stack.control.merge_shards(arn, first, second)
    shards = {s["shardId"]: s for s in stack.shards(arn)}
    assert shards[child]["parentShardIds"] == [first, second]
    assert "endingSequenceNumber" in shards[first]["sequenceNumberRange"]
    assert "endingSequenceNumber" in shards[second]["sequenceNumberRange"]
    with pytest.raises(ValueError, match="not adjacent"):
        stack.control.merge_shards(arn, child, stack.store.open_shard_ids(arn)[-1])
    assert stack.store.open_shard_ids(arn) == [child, third, stack.store.open_shard_ids(arn)[-1]]


def test_drained_closed_shard_has_no_next_iterator(stack: Any, make_table: Any) -> None:
    table = make_table()
    arn = stack.store.enable_stream(table)
    ch = stack.changes(table)
    for i in range(30):
        stack.store.record(ch.change("p", i, None, {"v": str(i)}))
    busy = max(stack.store.open_shard_ids(arn), key=lambda sid: len(stack.read_shard(arn, sid)))
    total = len(stack.read_shard(arn, busy))
    assert total > 2
    stack.control.split_shard(arn, busy)
    page = stack.client.get_records(shardIterator=stack.iterator(arn, busy), maxResults=total - 1)
    assert (
        page["nextShardIterator"]
        and page["iteratorDescription"]["iteratorPosition"] == "BEHIND_TIP"
    )
    last = stack.client.get_records(shardIterator=page["nextShardIterator"], maxResults=1000)
    assert len(last["changeRecords"]) == 1
    assert "nextShardIterator" not in last
    # LATEST on a closed shard ends at once; so does a closed shard that never had a record
    latest = stack.client.get_records(shardIterator=stack.iterator(arn, busy, "LATEST"))
    assert latest["changeRecords"] == [] and "nextShardIterator" not in latest
    quiet = stack.store.enable_stream(make_table("quiet"))
    never_written = stack.store.open_shard_ids(quiet)[0]
    stack.control.split_shard(quiet, never_written)
    (shard,) = [s for s in stack.shards(quiet) if s["shardId"] == never_written]
    seq_range = shard["sequenceNumberRange"]
    assert seq_range["endingSequenceNumber"] == seq_range["startingSequenceNumber"]
    ended = stack.client.get_records(shardIterator=stack.iterator(quiet, never_written))
    assert ended["changeRecords"] == [] and "nextShardIterator" not in ended


def test_rows_of_one_partition_spread_over_shards(stack: Any, make_table: Any) -> None:
    table = make_table()
    arn = stack.store.enable_stream(table)
    ch = stack.changes(table)
    for i in range(50):
        stack.store.record(ch.change("one-partition", i, None, {"v": "x"}))
    holding = [sid for sid in stack.store.open_shard_ids(arn) if stack.read_shard(arn, sid)]
    assert len(holding) > 1


def test_static_only_changes_of_a_partition_share_a_shard(stack: Any, make_table: Any) -> None:
    table = make_table()
    arn = stack.store.enable_stream(table)
    ch = stack.changes(table)
    for i in range(10):
        stack.store.record(ch.change("p", None, None, None, new_statics={"s": str(i)}))
    holding = {sid: stack.read_shard(arn, sid) for sid in stack.store.open_shard_ids(arn)}
    (records,) = [r for r in holding.values() if r]
    assert [r["newImage"]["staticCells"]["s"]["value"]["textT"] for r in records] == [
        str(i) for i in range(10)
    ]


def test_per_key_order_across_splits_and_merges(make_stack: Any, make_table: Any) -> None:
    stack = make_stack(shard_count=2)
    table = make_table()
    arn = stack.store.enable_stream(table)
    ch = stack.changes(table)
    rng = random.Random(11)
    keys = [(f"p{p}", c) for p in range(8) for c in range(8)]
    rounds = 8
    for r in range(rounds):
        for pk, ck in rng.sample(keys, len(keys)):
            old = None if r == 0 else {"v": str(r - 1)}
            stack.store.record(ch.change(pk, ck, old, {"v": str(r)}))
        open_ids = stack.store.open_shard_ids(arn)
        if r in (1, 3, 5):
            stack.control.split_shard(arn, rng.choice(open_ids), rng.choice([2, 3]))
        elif r in (2, 4, 6) and len(open_ids) > 1:
            i = rng.randrange(len(open_ids) - 1)
            stack.control.merge_shards(arn, open_ids[i], open_ids[i + 1])
    shards = stack.shards(arn)
    assert any(len(s["parentShardIds"]) == 2 for s in shards)
    assert any(len(s["parentShardIds"]) == 1 for s in shards)
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    for _, record in read_in_lineage_order(stack, arn):
        seen[_key(record)].append(_value(record))
    assert len(seen) == len(keys)
    expected = [str(r) for r in range(rounds)]
    assert all(values == expected for values in seen.values())


def test_lagging_parent_close_for_a_number_of_get_stream_calls(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    stack.control.set_faults(lagging_parent_close=LaggingParentClose(get_stream_calls=2))
    parent = stack.store.open_shard_ids(arn)[0]
    children = stack.control.split_shard(arn, parent)

    def view() -> dict[str, Any]:
        return {s["shardId"]: s for s in stack.client.get_stream(streamArn=arn)["shards"]}

    for _ in range(2):
        shards = view()
        assert set(children) <= set(shards)
        assert "endingSequenceNumber" not in shards[parent]["sequenceNumberRange"]
    assert "endingSequenceNumber" in view()[parent]["sequenceNumberRange"]
    # the shard itself is closed all along: reading it ends
    ended = stack.client.get_records(shardIterator=stack.iterator(arn, parent))
    assert "nextShardIterator" not in ended


def test_lagging_parent_close_for_clock_seconds(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    _post(stack.api.url + "/_control/faults", {"lagging_parent_close": {"seconds": 30}})
    parent = stack.store.open_shard_ids(arn)[0]
    stack.control.split_shard(arn, parent)
    for _ in range(3):
        shards = {s["shardId"]: s for s in stack.client.get_stream(streamArn=arn)["shards"]}
        assert "endingSequenceNumber" not in shards[parent]["sequenceNumberRange"]
    _post(stack.api.url + "/_control/advance_clock", {"seconds": 30})
    shards = {s["shardId"]: s for s in stack.client.get_stream(streamArn=arn)["shards"]}
    assert "endingSequenceNumber" in shards[parent]["sequenceNumberRange"]


def test_control_endpoints_split_and_merge_over_http(stack: Any, make_table: Any) -> None:
    arn = stack.store.enable_stream(make_table())
    control = stack.api.url + "/_control"
    (listed,) = _post(control + "/streams", {})["streams"]
    assert listed["streamArn"] == arn and len(listed["openShardIds"]) == 4
    children = _post(control + "/split", {"streamArn": arn, "shardId": listed["openShardIds"][0]})
    assert len(children["shardIds"]) == 2
    merged = _post(control + "/merge", {"streamArn": arn, "shardIds": children["shardIds"]})
    shards = {s["shardId"]: s for s in stack.shards(arn)}
    assert shards[merged["shardId"]]["parentShardIds"] == children["shardIds"]
    before = stack.clock.now_ms()
    after = _post(control + "/advance_clock", {"seconds": 100})["nowMs"]
    assert after - before >= 100_000
    with pytest.raises(urllib.error.HTTPError) as err:
        _post(control + "/split", {"streamArn": arn, "shardId": listed["openShardIds"][0]})
    assert err.value.code == 400
    assert orjson.loads(err.value.read())["__type"].endswith("#ValidationException")
    err.value.close()


operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 11)),
        st.tuples(st.just("split"), st.integers(0, 50), st.integers(2, 4)),
        st.tuples(st.just("merge"), st.integers(0, 50)),
    ),
    min_size=1,
    max_size=80,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(ops=operations, read_seed=st.integers(0, 2**16), page=st.integers(1, 7))
def test_lineage_order_gives_every_key_its_changes_once_in_commit_order(
    make_table: Any, make_changes: Any, ops: list[tuple[Any, ...]], read_seed: int, page: int
) -> None:
    """Any interleaving of writes, splits and merges; any reading order that respects
    lineage; any page size: each key's records come exactly once and in commit order,
    sequence numbers rise within every shard, and the open shards always tile the hash
    space."""
    clock = Clock()
    store = StreamStore(clock, shard_count=2)
    table = make_table()
    changes = make_changes(table, clock)
    arn = store.enable_stream(table)
    keys = [(f"p{i % 3}", i) for i in range(12)]
    written: dict[tuple[str, str], list[str]] = defaultdict(list)
    for n, op in enumerate(ops):
        open_ids = store.open_shard_ids(arn)
        if op[0] == "write":
            pk, ck = keys[op[1]]
            store.record(changes.change(pk, ck, None, {"v": str(n)}))
            written[(pk, str(ck))].append(str(n))
        elif op[0] == "split":
            store.split_shard(arn, open_ids[op[1] % len(open_ids)], op[2])
        elif len(open_ids) > 1:
            i = op[1] % (len(open_ids) - 1)
            store.merge_shards(arn, open_ids[i], open_ids[i + 1])
        ranges = sorted((s.lo, s.hi) for s in store._streams[arn].open_shards)
        assert ranges[0][0] == 0 and ranges[-1][1] == HASH_SPACE
        assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))

    shards = {s["shardId"]: s for s in store.get_stream(arn)["shards"]}  # type: ignore[union-attr]
    rng = random.Random(read_seed)
    done: set[str] = set()
    seen: dict[tuple[str, str], list[str]] = defaultdict(list)
    while len(done) < len(shards):
        ready = [
            sid
            for sid, s in shards.items()
            if sid not in done and all(p in done for p in s["parentShardIds"])
        ]
        sid = rng.choice(ready)
        seqs: list[str] = []
        iterator: str | None = store.get_shard_iterator(arn, sid, "TRIM_HORIZON", None)
        while iterator is not None:
            result = store.get_records(iterator, page)
            for payload in result.payloads:
                record = orjson.loads(payload)
                seqs.append(record["sequenceNumber"])
                seen[_key(record)].append(_value(record))
            iterator = result.next_iterator
            if result.at_tip and not result.payloads:
                break  # an open shard, caught up
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        done.add(sid)
    assert seen == written
