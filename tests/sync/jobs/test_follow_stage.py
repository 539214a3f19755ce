"""The follower's writer stage against keyspaces_local and osmem: checkpoints stay exact.

What users rely on: with every shard's changes packed into shared bulk
requests, a shard's checkpoint never passes a record OpenSearch has not
acknowledged; not while one item of a request is refused and retried, not
across shards whose records share a request, and not when the follower is
stopped meanwhile (a restart then writes the held record). A 409 (already
newer) counts as resolved. OpenSearch sits behind a fault proxy
(tests/sync/faults.py) that refuses one document with 429 until told not to.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.clients import streams_client
from sync.config import Config
from sync.jobs import Job
from sync.jobs.follow import Follower
from sync.sources.streams import describe_stream, list_table_streams, sequence_key
from tests.sync.faults import HttpProxy
from tests.sync.jobs.follow_helpers import Table, following, indexed, orders_mapping, until

HELD = "0:0"  # the document the proxy refuses (429) until released
PLANTED = "7:7"  # already in the index at a far higher version: the follower's write is a 409
PLANTED_VERSION = 2**63 - 1  # above any version the stream gives


@pytest.fixture
def proxy(osmem_clone: Any) -> Iterator[HttpProxy]:
    front = HttpProxy(osmem_clone.url)
    yield front
    front.close()


@dataclass(frozen=True)
class Record:
    shard: str
    sequence: str
    doc_id: str


def stream_records(streams: Any, arn: str) -> list[Record]:
    """Every record of the stream, by shard in order, as the emulator holds them."""
    out = []
    for shard in sorted(describe_stream(streams, arn).shards):
        iterator = streams.get_shard_iterator(
            streamArn=arn, shardId=shard, shardIteratorType="TRIM_HORIZON"
        ).get("shardIterator")
        while iterator:
            page = streams.get_records(shardIterator=iterator, maxResults=1000)
            for record in page.get("changeRecords", []):
                customer = record["partitionKeys"]["customer"]["intT"]
                order = record["clusteringKeys"]["order"]["intT"]
                out.append(Record(shard, record["sequenceNumber"], f"{customer}:{order}"))
            if not page.get("changeRecords"):
                break
            iterator = page.get("nextShardIterator")
    return out


def checkpoints(job: Job, arn: str, shards: set[str]) -> dict[str, str | None]:
    states = job.store.get_shards(job.info.qualified_name, arn, shards)
    return {shard: state.sequence_number for shard, state in states.items()}


def passed_but_missing(
    marks: dict[str, str | None], records: list[Record], present: set[str]
) -> list[Record]:
    """Records at or before their shard's checkpoint whose document is not in the index."""
    return [
        r
        for r in records
        if (mark := marks.get(r.shard)) is not None
        and sequence_key(r.sequence) <= sequence_key(mark)
        and r.doc_id not in present
    ]


def held_config(make_config: Callable[..., Config], proxy: HttpProxy) -> Config:
    """One sender, so every batch read while the held request retries waits behind it."""
    return make_config(
        opensearch={"hosts": [proxy.url]},
        writer={"initial_backoff": 0.05, "max_backoff": 0.1},
        follow={"bulk_senders": 1},
    )


def readable(client: OpenSearch, index: str, ids: set[str]) -> set[str]:
    """The ids among `ids` a realtime GET finds in `index`."""
    reply = client.mget(index=index, body={"ids": sorted(ids)}, params={"_source": "false"})
    return {doc["_id"] for doc in reply["docs"] if doc.get("found")}


@contextmanager
def running(follower: Follower) -> Iterator[Follower]:
    """The follower in a thread, stopped by its job's stop event (which ends write retries
    at once, as a SIGTERM does)."""
    stop = follower.job.stop
    errors: list[BaseException] = []

    def target() -> None:
        try:
            follower.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        yield follower
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the follower did not stop"
    if errors:
        raise errors[0]


class Watch:
    """Reads the checkpoints, then the index, and fails if one passed a missing document."""

    def __init__(
        self, job: Job, client: OpenSearch, arn: str, records: list[Record], index: str
    ) -> None:
        self.job, self.client, self.arn = job, client, arn
        self.records, self.index = records, index
        self.shards = {r.shard for r in records}

    def check(self) -> dict[str, str | None]:
        marks = checkpoints(self.job, self.arn, self.shards)  # first: what they claim...
        present = readable(self.client, self.index, {r.doc_id for r in self.records})
        assert passed_but_missing(marks, self.records, present) == []  # ...is there
        return marks

    def last(self) -> dict[str, str | None]:
        return {r.shard: r.sequence for r in self.records}


def _held_before(marks: dict[str, str | None], held: Record) -> bool:
    mark = marks.get(held.shard)
    return mark is None or sequence_key(mark) < sequence_key(held.sequence)


def held_attempts(proxy: HttpProxy) -> int:
    """Bulk requests so far that carried the held document."""
    return sum(HELD in ids for ids in list(proxy.bulk_ids))


def test_a_checkpoint_never_passes_an_item_being_retried_while_shards_share_requests(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    proxy: HttpProxy,
    streams: Any,
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    cfg = held_config(make_config, proxy)
    table.insert(0, 0, "held", 0)
    for n in range(1, 41):  # a backlog over every shard, read at once when the follower starts
        table.insert(n, n, "new", n)
    # Every item refused until all of them are read: whichever request goes first
    # holds back the others, so some request carries several shards' records.
    proxy.refuse_items = {key: [429] * 100_000 for key in table.model}
    with Job(cfg, mapping, stop=threading.Event()) as job:
        arn = list_table_streams(streams, job.info)[-1].stream_arn
        watch = Watch(job, opensearch, arn, stream_records(streams, arn), job.index)
        held = next(r for r in watch.records if r.doc_id == HELD)
        opensearch.index(
            index=job.index,
            id=PLANTED,
            body={"customer": 7, "order": 7, "state": "newer", "amount": 0},
            params={"version": PLANTED_VERSION, "version_type": "external"},
        )
        follower = Follower(job, streams_client(cfg))
        with running(follower):
            until(lambda: follower.metrics.totals().records_read == table.writes, "all read")
            # Nothing acknowledged, nothing checkpointed.
            assert all(mark is None for mark in watch.check().values())
            with proxy.lock:
                for key, statuses in proxy.refuse_items.items():
                    if key != HELD:
                        statuses.clear()
            # The request holding the held item goes on retrying it alone (with one
            # sender, what waits behind it waits on).
            tried = held_attempts(proxy)
            until(lambda: held_attempts(proxy) >= tried + 5, "the held item is retried on")
            assert _held_before(watch.check(), held)
            with proxy.lock:
                proxy.refuse_items[HELD].clear()
            until(lambda: watch.check() == watch.last(), "every shard checkpointed to its end")
        summary = follower.summary(0)
    shard_of = {r.doc_id: r.shard for r in watch.records}
    assert len(set(shard_of.values())) >= 2
    assert any(len({shard_of[i] for i in ids if i in shard_of}) >= 2 for ids in proxy.bulk_ids), (
        "the records of several shards went out in one request"
    )
    assert summary.stale == 1 and summary.applied == table.writes - 1
    assert opensearch.get(index=job.index, id=PLANTED)["_source"]["state"] == "newer"


def test_a_stop_while_an_item_is_retried_checkpoints_only_what_was_acknowledged(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    proxy: HttpProxy,
    streams: Any,
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    cfg = held_config(make_config, proxy)
    with Job(cfg, mapping, stop=threading.Event()) as job:
        arn = list_table_streams(streams, job.info)[-1].stream_arn
        index = job.index
        with running(Follower(job, streams_client(cfg))) as follower:
            for n in range(1, 13):
                table.insert(n, n, "before", n)
            until(lambda: follower.metrics.totals().applied == table.writes, "first rows written")
            proxy.refuse_items[HELD] = [429] * 100_000
            table.insert(0, 0, "held", 0)
            until(lambda: held_attempts(proxy) > 0, "the held item is sent")
            for n in range(13, 25):
                table.insert(n, n, "after", n)
            tried = held_attempts(proxy)
            until(lambda: held_attempts(proxy) >= tried + 5, "the held item is retried on")
        watch = Watch(job, opensearch, arn, stream_records(streams, arn), index)
        held = next(r for r in watch.records if r.doc_id == HELD)
        assert _held_before(watch.check(), held)  # stopped: nothing past what was acknowledged
        assert HELD not in readable(opensearch, index, {HELD})
    with proxy.lock:
        proxy.refuse_items[HELD].clear()
    with following(cfg, mapping):  # a restart writes the held record, and what followed it
        until(lambda: HELD in indexed(opensearch, mapping.alias), "the held row arrives")
        with Job(cfg, mapping) as again:
            watch.job = again
            until(lambda: watch.check() == watch.last(), "every shard checkpointed to its end")
    assert set(indexed(opensearch, mapping.alias)) == set(table.model)


def test_readers_pause_while_the_stage_holds_more_than_its_budget(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    proxy: HttpProxy,
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    cfg = make_config(
        opensearch={"hosts": [proxy.url]},
        writer={"initial_backoff": 0.05, "max_backoff": 0.1},
        follow={"max_pending_bytes": 1},  # one change waiting is already over it
    )
    proxy.refuse_items[HELD] = [429] * 100_000

    with (
        Job(cfg, mapping, stop=threading.Event()) as job,
        running(Follower(job, streams_client(cfg))) as follower,
    ):
        table.insert(0, 0, "held", 0)
        until(lambda: held_attempts(proxy) > 0, "the held item is sent")
        for n in range(1, 21):
            table.insert(n, n, "new", n)
        tried = held_attempts(proxy)
        until(lambda: held_attempts(proxy) >= tried + 10, "the held item is retried ten times more")
        assert follower.metrics.totals().records_read == 1  # nobody read on meanwhile
        with proxy.lock:
            proxy.refuse_items[HELD].clear()
        until(
            lambda: readable(opensearch, job.index, set(table.model)) == set(table.model),
            "every row is written once the held one is",
        )
