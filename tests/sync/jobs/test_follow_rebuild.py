"""A follower while `ks2os reindex` rebuilds the index: it writes both indexes until the swap.

What users (and the reindex) rely on (issue 12, the follower's side):

- while the table's rebuild record says `building` or `swapped`, every change
  reaches the old and the new index, and a shard's checkpoint passes a record
  only once both indexes acknowledged it;
- the follower's heartbeat names the indexes it writes (`writes_to`), so the
  rebuild can wait until every follower writes its new index: a rebuild
  begun while the follower runs is picked up without a restart;
- after `done` and the alias swap, changes go to the new index alone; after
  `aborted` (its index deleted), to the old one, without an error and without
  the deleted index coming back;
- a static table's rows show their partition's statics in both indexes (each
  index's merge reads its own documents);
- a change one index refuses is dead-lettered once, saying which index.

The rebuild itself (snapshot, catch-up, swap) is `ks2os reindex`'s; here the
test plays its part through the same state store calls and index helpers.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.clients import streams_client
from sync.config import Config
from sync.deadletter import FileDeadLetters
from sync.documents import META_FIELD, PARTITION_KIND, DocumentBuilder
from sync.errors import OpenSearchRefused
from sync.indices import alias_filter, create_next_index, current_target, swap_alias
from sync.jobs import Job
from sync.jobs.follow import ROLE, Follower
from sync.mapping import TableMapping, mapping_from_dict
from sync.model import Change, Op, StreamPosition
from sync.schema import TableKey
from sync.sources.records import record_key
from sync.sources.streams import describe_stream
from sync.state import Rebuild, StateStore
from sync.targets import WriteTargets
from sync.writer import BulkWriter, WriterSettings
from tests.sync.faults import HttpProxy
from tests.sync.jobs.follow_helpers import Table, following, orders_mapping, until
from tests.sync.jobs.test_statics_follow import Shelves

REINDEX = "reindex-under-test"


# ---- the reindex's part, played by the test -------------------------------------------------


def begin_rebuild(client: OpenSearch, store: StateStore, mapping: TableMapping) -> Rebuild:
    """A new `<alias>_v<N+1>` and the rebuild record naming it (the reindex may record it
    first: see the test of a record made before its index)."""
    old = current_target(client, mapping).index
    new = create_next_index(client, mapping)
    table = f"{mapping.keyspace}.{mapping.table}"
    return store.begin_rebuild(table, mapping.alias, old, new, REINDEX)


def finish(client: OpenSearch, store: StateStore, rebuild: Rebuild) -> Rebuild:
    """`swapped` recorded before the alias moves, then `done`."""
    swapped = store.update_rebuild(rebuild, replace(rebuild, phase="swapped"))
    swap_alias(client, rebuild.alias, rebuild.new_index)
    return store.update_rebuild(swapped, replace(swapped, phase="done"))


def state_store(client: OpenSearch, cfg: Config) -> StateStore:
    return StateStore(client, cfg.state.index, lease_seconds=cfg.state.lease_seconds)


def writes_to(store: StateStore, table: str) -> set[frozenset[str]]:
    """What every live follower's heartbeat says it writes."""
    return set(store.live_worker_targets(ROLE, table).values())


def visible_in(client: OpenSearch, index: str) -> dict[str, dict[str, Any]]:
    """One index's documents as searches through the alias would show them."""
    client.indices.refresh(index=index)
    body = {"query": alias_filter(), "size": 10_000}
    hits = client.search(index=index, body=body)["hits"]["hits"]
    return {
        hit["_id"]: {k: v for k, v in hit["_source"].items() if k != META_FIELD} for hit in hits
    }


def holds(client: OpenSearch, index: str, model: dict[str, dict[str, Any]]) -> Callable[[], bool]:
    return lambda: visible_in(client, index) == model


# ---- plain tables ---------------------------------------------------------------------------


def test_a_follower_started_during_a_rebuild_writes_both_indexes_from_its_first_write(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    table = Table(cql, keyspace, client_timestamps=client_timestamps)
    mapping = orders_mapping(keyspace)
    cfg = make_config()
    store = state_store(opensearch, cfg)
    rebuild = begin_rebuild(opensearch, store, mapping)
    with following(cfg, mapping):
        for n in range(20):
            table.insert(n % 4, n, "new", n)
        for n in range(0, 20, 3):
            table.update(n % 4, n, "paid")
        for n in range(0, 20, 5):
            table.delete(n % 4, n)
        until(holds(opensearch, rebuild.old_index, table.model), "the old index holds the table")
        until(holds(opensearch, rebuild.new_index, table.model), "the new index holds the table")
        both = frozenset(rebuild.targets)
        assert writes_to(store, rebuild.table) == {both}


def test_a_rebuild_begun_while_following_is_picked_up_and_acknowledged(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    table = Table(cql, keyspace, client_timestamps=client_timestamps)
    mapping = orders_mapping(keyspace)
    cfg = make_config()
    store = state_store(opensearch, cfg)
    with following(cfg, mapping):
        table.insert(1, 1, "before", 1)
        old = current_target(opensearch, mapping).index
        until(holds(opensearch, old, table.model), "the first row is indexed")
        rebuild = begin_rebuild(opensearch, store, mapping)
        until(
            lambda: writes_to(store, rebuild.table) == {frozenset(rebuild.targets)},
            "the follower's heartbeat names both indexes",
        )
        # From the acknowledgement on, every change reaches the new index too (what
        # came before is the reindex snapshot's to copy).
        table.update(1, 1, "after")
        table.insert(2, 1, "after", 2)
        until(holds(opensearch, old, table.model), "the old index has the new changes")
        until(holds(opensearch, rebuild.new_index, table.model), "so has the new index")


def test_after_the_swap_new_changes_go_to_the_new_index_alone(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    table = Table(cql, keyspace, client_timestamps=client_timestamps)
    mapping = orders_mapping(keyspace)
    cfg = make_config()
    store = state_store(opensearch, cfg)
    rebuild = begin_rebuild(opensearch, store, mapping)
    with following(cfg, mapping):
        table.insert(1, 1, "during", 1)
        until(holds(opensearch, rebuild.new_index, table.model), "the new index has the row")
        old_state = copy.deepcopy(table.model)
        done = finish(opensearch, store, rebuild)
        until(
            lambda: writes_to(store, done.table) == {frozenset({done.new_index})},
            "the follower's heartbeat names the new index alone",
        )
        table.update(1, 1, "after")
        table.insert(2, 2, "after", 2)
        until(holds(opensearch, done.new_index, table.model), "the new index has the changes")
        # The old index (kept for its grace period) no longer follows the table.
        assert visible_in(opensearch, done.old_index) == old_state
        # The new index is the follower's own now: it records what the index needs.
        assert store.get_coverage(done.table, done.new_index) is not None


def test_a_follower_that_never_saw_a_rebuild_begin_follows_the_alias_once_it_is_done(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    # A follower paused past its heartbeat's expiry: the rebuild went on without it.
    Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    cfg = make_config()
    with Job(cfg, mapping) as job:
        follower = Follower(job, streams_client(cfg))
        old = job.index
        rebuild = begin_rebuild(opensearch, job.store, mapping)
        done = finish(opensearch, job.store, rebuild)
        follower.follow_rebuild()  # its next plan
        assert follower.targets.indexes == (done.new_index,) and job.index == done.new_index
        assert old == done.old_index


def test_after_an_abort_the_follower_goes_on_with_the_old_index_alone(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    cfg = make_config()
    store = state_store(opensearch, cfg)
    rebuild = begin_rebuild(opensearch, store, mapping)
    with following(cfg, mapping):
        table.insert(1, 1, "during", 1)
        until(holds(opensearch, rebuild.new_index, table.model), "the new index has the row")
        # The harshest abort: the index deleted at once, before the follower read the record.
        store.update_rebuild(rebuild, replace(rebuild, phase="aborted"))
        opensearch.indices.delete(index=rebuild.new_index)
        for n in range(2, 12):
            table.insert(n, n, "after", n)
        until(holds(opensearch, rebuild.old_index, table.model), "the old index has the changes")
        until(
            lambda: writes_to(store, rebuild.table) == {frozenset({rebuild.old_index})},
            "the follower's heartbeat names the old index alone",
        )
        assert not opensearch.indices.exists(index=rebuild.new_index)  # never made anew
    # `following` re-raises the follower's error, had it stopped with one.


def test_a_rebuild_recorded_before_its_index_exists_is_acknowledged_once_it_does(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    cfg = make_config()
    store = state_store(opensearch, cfg)
    old = current_target(opensearch, mapping).index
    new = f"{mapping.alias}_v2"
    rebuild = store.begin_rebuild(f"{keyspace}.orders", mapping.alias, old, new, REINDEX)
    with following(cfg, mapping):
        table.insert(1, 1, "before", 1)
        until(holds(opensearch, old, table.model), "the row reaches the old index")
        assert writes_to(store, rebuild.table) == {frozenset({old})}
        assert not opensearch.indices.exists(index=new)  # not made by a write either
        create_next_index(opensearch, mapping)
        until(
            lambda: writes_to(store, rebuild.table) == {frozenset({old, new})},
            "the follower names the new index once it exists",
        )
        table.update(1, 1, "after")
        until(holds(opensearch, new, table.model), "changes reach it")


def test_a_new_index_deleted_while_the_rebuild_still_names_it_stops_the_follower(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    cfg = make_config()
    store = state_store(opensearch, cfg)
    rebuild = begin_rebuild(opensearch, store, mapping)
    with pytest.raises(OpenSearchRefused) as stopped, following(cfg, mapping):
        until(
            lambda: writes_to(store, rebuild.table) == {frozenset(rebuild.targets)},
            "the follower writes both indexes",
        )
        opensearch.indices.delete(index=rebuild.new_index)  # still `building`
        table.insert(1, 1, "lost?", 1)
        until(lambda: not writes_to(store, rebuild.table), "the follower stopped")
    assert rebuild.new_index in str(stopped.value)
    assert "record the rebuild aborted" in stopped.value.hint
    assert not opensearch.indices.exists(index=rebuild.new_index)  # not made anew


# ---- checkpoints wait for both indexes ------------------------------------------------------


@pytest.fixture
def proxy(osmem_clone: Any) -> Iterator[HttpProxy]:
    front = HttpProxy(osmem_clone.url)
    try:
        yield front
    finally:
        front.close()


ORDERS = TableKey("", "orders", ("customer",), ("order",), (), {"customer": "int", "order": "int"})


def record_of(cfg: Config, table: str, key: tuple[int, int]) -> tuple[str, str]:
    """The shard holding the (last) record of the row `key`, and its sequence number."""
    client = streams_client(cfg)
    keyspace, name = table.split(".")
    arn = client.list_streams(keyspaceName=keyspace, tableName=name)["streams"][0]["streamArn"]
    found = []
    for shard_id in describe_stream(client, arn).shards:
        iterator = client.get_shard_iterator(
            streamArn=arn, shardId=shard_id, shardIteratorType="TRIM_HORIZON"
        )["shardIterator"]
        for record in client.get_records(shardIterator=iterator)["changeRecords"]:
            if record_key(record, ORDERS)[0] == key:
                found.append((shard_id, record["sequenceNumber"]))
    assert len(found) == 1, found  # the row was written once
    return found[0]


def checkpoint(store: StateStore, table: str, shard_id: str) -> str | None:
    shards = {s.shard_id: s for s in store.list_shards(table)}
    return shards[shard_id].sequence_number if shard_id in shards else None


def test_a_shard_checkpoints_a_record_only_once_both_indexes_have_it(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    proxy: HttpProxy,
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    cfg = make_config(opensearch={"hosts": [proxy.url]})
    store = state_store(opensearch, cfg)
    rebuild = begin_rebuild(opensearch, store, mapping)
    with following(cfg, mapping):
        table.insert(1, 1, "first", 1)
        until(holds(opensearch, rebuild.new_index, table.model), "both indexes have a row")
        proxy.hold_index = rebuild.new_index
        table.insert(1, 2, "second", 2)
        shard, sequence = record_of(cfg, rebuild.table, (1, 2))
        until(holds(opensearch, rebuild.old_index, table.model), "the old index has the change")
        until(lambda: proxy.held >= 3, "the new index refused it three times")
        held = checkpoint(store, rebuild.table, shard)
        assert held is None or int(held) < int(sequence)
        proxy.hold_index = None
        until(holds(opensearch, rebuild.new_index, table.model), "the new index has it at last")
        until(lambda: checkpoint(store, rebuild.table, shard) == sequence, "then checkpointed")


# ---- static columns -------------------------------------------------------------------------


def partition_statics(client: OpenSearch, index: str) -> dict[str, dict[str, Any]]:
    """Each partition document's static values, by partition."""
    client.indices.refresh(index=index)
    query = {"term": {f"{META_FIELD}.kind": PARTITION_KIND}}
    hits = client.search(index=index, body={"query": query, "size": 1000})["hits"]["hits"]
    return {
        hit["_source"][META_FIELD]["partition"]: hit["_source"][META_FIELD]["statics"]
        for hit in hits
    }


def test_a_static_tables_rows_and_partition_documents_are_right_in_both_indexes(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    table = Shelves(cql, keyspace, client_timestamps, seed=12)
    cfg = make_config()
    store = state_store(opensearch, cfg)
    rebuild = begin_rebuild(opensearch, store, table.mapping)
    with following(cfg, table.mapping):
        table.fill()
        for _ in range(30):
            table.touch_statics()
            table.touch_rows()
        for index in rebuild.targets:
            until(lambda i=index: visible_in(opensearch, i) == table.rows(), f"{index} is right")
        assert partition_statics(opensearch, rebuild.old_index) == partition_statics(
            opensearch, rebuild.new_index
        )


# ---- the writer: one dead letter for a change one index refuses ------------------------------

ITEMS = TableKey("demo", "items", ("id",), (), (), {"id": "text", "n": "text"})
FAST = WriterSettings(initial_backoff=0.01, max_backoff=0.05, max_retry_seconds=10.0)


def items_mapping(alias: str, n_type: str) -> TableMapping:
    properties = {"id": {"type": "keyword"}, "n": {"type": n_type}}
    return mapping_from_dict(
        {
            "source": {"keyspace": "demo", "table": "items"},
            "index": {"alias": alias, "mappings": {"dynamic": "strict", "properties": properties}},
        }
    )


def test_a_change_one_index_refuses_is_dead_lettered_once_naming_that_index(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    old_mapping = items_mapping("items", "keyword")
    old = current_target(opensearch, old_mapping).index
    new = create_next_index(opensearch, items_mapping("items", "integer"))  # a changed mapping
    dead = FileDeadLetters(tmp_path / "dead.ndjson")
    builder = DocumentBuilder(old_mapping, ITEMS)
    writer = BulkWriter(opensearch, old, builder, dead, FAST, targets=WriteTargets((old, new)))
    where = StreamPosition("arn:test", "shardId-1", "1", 1_700_000_000_000)
    changes = [
        Change(Op.UPSERT, ("a",), {"id": "a", "n": "7"}, 5, where),
        Change(Op.UPSERT, ("b",), {"id": "b", "n": "seven"}, 5, where),  # no integer
    ]
    report = writer.write(changes)
    assert (report.applied, report.dead_lettered) == (1, 1)
    entries = [json.loads(line) for line in (tmp_path / "dead.ndjson").read_text().splitlines()]
    assert [e["doc_id"] for e in entries] == ["b"]
    assert entries[0]["reason"].startswith(f"in {new}: ") and old not in entries[0]["reason"]
    assert set(visible_in(opensearch, old)) == {"a", "b"}
    assert set(visible_in(opensearch, new)) == {"a"}  # b is marked there, hidden
