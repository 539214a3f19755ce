"""The versioned bulk writer against a real osmem-server.

What a user relies on: stale writes never win (in any order, with any
duplicates), deletes stay deleted after OpenSearch's gc_deletes window, bad
documents are dead-lettered while the rest of the batch lands, and searches
through the alias never see tombstones, expired rows or a half-swapped alias.
Re-sending only failed items, backoff and giving up are the transport's
(tests/sync/test_bulk.py).
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opensearchpy import OpenSearch

from sync.deadletter import FileDeadLetters, IndexDeadLetters
from sync.documents import DocumentBuilder
from sync.errors import MappingConflict
from sync.indices import (
    alias_targets,
    create_next_index,
    ensure_index,
    index_settings_and_mappings,
    index_versions,
    reconcile_mapping,
    swap_alias,
)
from sync.mapping import TableMapping, mapping_from_dict
from sync.model import Change, Op, StreamPosition
from sync.schema import TableKey
from sync.writer import BulkWriter, WriterSettings

TABLE = TableKey("demo", "items", ("id",), (), (), {"id": "text", "n": "int", "name": "text"})
FAST = WriterSettings(initial_backoff=0.01, max_backoff=0.05, max_retry_seconds=10.0)
_names = itertools.count(1)


def make_mapping(alias: str, **index_settings: Any) -> TableMapping:
    return mapping_from_dict(
        {
            "source": {"keyspace": "demo", "table": "items"},
            "index": {
                "alias": alias,
                "settings": index_settings,
                "mappings": {
                    "dynamic": "strict",
                    "properties": {
                        "id": {"type": "keyword"},
                        "n": {"type": "integer"},
                        "name": {"type": "text"},
                    },
                },
            },
        },
        f"{alias}.toml",
    )


def position(seq: int = 1) -> StreamPosition:
    return StreamPosition("arn:test", "shardId-0001", f"{seq:021d}", 1_700_000_000_000)


def upsert(key: str, version: int, n: Any, expires_at_ms: int | None = None) -> Change:
    image = {"id": key, "n": n}
    return Change(Op.UPSERT, (key,), image, version, position(version), expires_at_ms)


def delete(key: str, version: int) -> Change:
    return Change(Op.DELETE, (key,), None, version, position(version))


class Setup:
    """An index behind its alias, a builder, a file dead-letter store and a writer."""

    def __init__(
        self,
        client: OpenSearch,
        tmp_path: Path,
        writer_settings: WriterSettings = FAST,
        **index_settings: Any,
    ) -> None:
        self.alias = f"items{next(_names)}"
        self.mapping = make_mapping(self.alias, **index_settings)
        self.client = client
        self.index = ensure_index(client, self.mapping)
        self.builder = DocumentBuilder(self.mapping, TABLE)
        self.dead = FileDeadLetters(tmp_path / f"{self.alias}-dead.ndjson")
        self.writer = BulkWriter(client, self.index, self.builder, self.dead, writer_settings)

    def visible(self) -> dict[str, dict[str, Any]]:
        """Documents found through the alias (what a search user sees), by id."""
        self.client.indices.refresh(index=self.alias)
        hits = self.client.search(index=self.alias, body={"size": 1000})["hits"]["hits"]
        return {hit["_id"]: hit["_source"] for hit in hits}


def test_a_stale_write_is_refused_and_counted(opensearch: OpenSearch, tmp_path: Path) -> None:
    setup = Setup(opensearch, tmp_path)
    first = setup.writer.write([upsert("a", 5, 50)])
    second = setup.writer.write([upsert("a", 4, 40), upsert("a", 5, 55)])
    assert (first.applied, first.stale) == (1, 0)
    assert (second.applied, second.stale, second.dead_lettered) == (0, 2, 0)
    assert setup.visible()["a"]["n"] == 50
    assert setup.writer.counters.snapshot()["stale"] == 2


# Per key: a few distinct versions, each an upsert (with its n) or a delete.
_key_histories = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]),
    st.dictionaries(
        st.integers(min_value=1, max_value=50),
        st.one_of(st.none(), st.integers(min_value=0, max_value=1000)),
        min_size=1,
        max_size=4,
    ),
    min_size=1,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(histories=_key_histories, data=st.data())
def test_any_order_and_duplication_converges_to_the_newest_version(
    opensearch: OpenSearch, tmp_path: Path, histories: dict[str, dict[int, int | None]], data: Any
) -> None:
    changes = [
        delete(key, version) if n is None else upsert(key, version, n)
        for key, versions in histories.items()
        for version, n in versions.items()
    ]
    # Any order, any duplication, split into arbitrary batches.
    delivery = data.draw(
        st.lists(st.sampled_from(changes), min_size=len(changes), max_size=3 * len(changes))
        .map(lambda extra: extra + changes)
        .flatmap(st.permutations)
    )
    cuts = sorted(data.draw(st.sets(st.integers(0, len(delivery)), max_size=4)))
    setup = Setup(opensearch, tmp_path)  # one index per example
    for start, end in itertools.pairwise([0, *cuts, len(delivery)]):
        if start < end:
            setup.writer.write(delivery[start:end])

    expected = {}
    for key, versions in histories.items():
        newest = max(versions)
        if versions[newest] is not None:
            expected[key] = (versions[newest], newest)
    seen = {
        doc_id: (source["n"], source["_ks2os"]["version"])
        for doc_id, source in setup.visible().items()
    }
    assert seen == expected


def test_a_tombstone_outlives_gc_deletes_where_a_real_delete_does_not(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    # gc_deletes of 1 s stands in for the 60 s default, which a late replay
    # (stream retention is 24 h) easily outlasts.
    setup = Setup(opensearch, tmp_path, gc_deletes="1s")

    # The hole: a plain versioned delete is forgotten after gc_deletes, and an
    # older write replayed later resurrects the row.
    opensearch.index(
        index=setup.index,
        id="plain",
        body={"id": "plain", "n": 1},
        version=10,
        version_type="external",
    )
    opensearch.delete(index=setup.index, id="plain", version=20, version_type="external")
    resurrected = _retry_until_accepted(opensearch, setup.index, "plain", version=15, within_s=5)
    assert resurrected, "expected the stale write to be accepted once gc_deletes expired"

    # Closed: ks2os deletes with a tombstone document, which keeps its version.
    setup.writer.write([upsert("kept", 10, 1), delete("kept", 20)])
    deleted_at = time.monotonic()
    # Nothing observable marks the end of the gc window for a document that
    # still exists, so wait it out in real time (plus margin) before the replay.
    time.sleep(max(0.0, deleted_at + 1.2 - time.monotonic()))
    replay = setup.writer.write([upsert("kept", 15, 999)])
    assert (replay.applied, replay.stale) == (0, 1)
    visible = setup.visible()
    assert "kept" not in visible
    assert visible["plain"]["n"] == 1  # the hole, for contrast
    stored = opensearch.get(index=setup.index, id="kept")
    assert stored["_version"] == 20 and stored["_source"]["_ks2os"]["deleted"] is True


def _retry_until_accepted(
    client: OpenSearch, index: str, doc_id: str, version: int, within_s: float
) -> bool:
    """Poll the observable condition: does OpenSearch accept the stale write yet?"""
    from opensearchpy.exceptions import ConflictError

    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            client.index(
                index=index,
                id=doc_id,
                body={"id": doc_id, "n": 1},
                version=version,
                version_type="external",
            )
            return True
        except ConflictError:
            time.sleep(0.05)
    return False


def test_bad_documents_are_dead_lettered_and_the_rest_applied(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    report = setup.writer.write(
        [upsert("a", 1, 1), upsert("b", 1, "not a number"), upsert("c", 1, 3)]
    )
    assert (report.applied, report.dead_lettered, report.stale) == (2, 1, 0)
    assert set(setup.visible()) == {"a", "c"}
    assert setup.dead.count == 1
    (line,) = setup.dead.path.read_text().splitlines()
    entry = json.loads(line)
    assert entry["doc_id"] == "b" and entry["version"] == 1 and entry["op"] == "upsert"
    assert entry["image"] == {"id": "b", "n": "not a number"}
    assert "mapper_parsing_exception" in entry["reason"]
    assert entry["source"]["kind"] == "stream"


def test_dead_letters_can_go_to_an_index(opensearch: OpenSearch, tmp_path: Path) -> None:
    setup = Setup(opensearch, tmp_path)
    store = IndexDeadLetters.for_alias(opensearch, setup.alias)
    writer = BulkWriter(opensearch, setup.index, setup.builder, store, FAST)
    writer.write([upsert("x", 1, "text"), upsert("y", 1, 2)])
    assert store.count == 1
    hit = opensearch.search(index=f"{setup.alias}-deadletter")["hits"]["hits"][0]["_source"]
    assert hit["doc_id"] == "x" and "mapper_parsing_exception" in hit["reason"]


def test_an_expired_document_is_not_found_through_the_alias(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    now_ms = int(time.time() * 1000)
    setup.writer.write(
        [
            upsert("gone", 1, 1, expires_at_ms=now_ms - 1000),
            upsert("later", 1, 2, expires_at_ms=now_ms + 3_600_000),
            upsert("never", 1, 3),
        ]
    )
    assert set(setup.visible()) == {"later", "never"}
    assert opensearch.get(index=setup.index, id="gone")["found"]


def test_a_mapping_conflict_is_refused_with_a_clear_message(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    assert reconcile_mapping(opensearch, setup.index, setup.mapping).identical  # same file
    changed = mapping_from_dict(
        {
            "source": {"keyspace": "demo", "table": "items"},
            "index": {
                "alias": setup.alias,
                "mappings": {"properties": {"n": {"type": "keyword"}, "extra": {"type": "long"}}},
            },
        },
        "changed.toml",
    )
    with pytest.raises(MappingConflict) as raised:
        reconcile_mapping(opensearch, setup.index, changed)
    message = str(raised.value)
    assert "\n" not in message
    assert "'n'" in message and "integer" in message and "keyword" in message
    assert "changed.toml" in message


def test_ensure_index_is_idempotent_and_next_index_counts_up(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    assert setup.index == f"{setup.alias}_v1"
    assert ensure_index(opensearch, setup.mapping) == setup.index
    assert create_next_index(opensearch, setup.mapping) == f"{setup.alias}_v2"
    assert create_next_index(opensearch, setup.mapping) == f"{setup.alias}_v3"
    assert alias_targets(opensearch, setup.alias) == [setup.index]


def test_workers_starting_together_converge_on_one_index(opensearch: OpenSearch) -> None:
    """A second worker that finds `_v1` already created (no alias yet) joins it."""
    mapping = make_mapping(f"items{next(_names)}")
    opensearch.indices.create(
        index=f"{mapping.alias}_v1", body=index_settings_and_mappings(mapping)
    )
    assert ensure_index(opensearch, mapping) == f"{mapping.alias}_v1"
    assert ensure_index(opensearch, mapping) == f"{mapping.alias}_v1"
    assert alias_targets(opensearch, mapping.alias) == [f"{mapping.alias}_v1"]
    assert sorted(index_versions(opensearch, mapping.alias)) == [f"{mapping.alias}_v1"]


def test_swap_alias_is_atomic_for_readers(opensearch: OpenSearch, tmp_path: Path) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([upsert(f"old{i}", 1, i) for i in range(3)])
    new_index = create_next_index(opensearch, setup.mapping)
    new_writer = BulkWriter(opensearch, new_index, setup.builder, setup.dead, FAST)
    new_writer.write([upsert(f"new{i}", 1, i) for i in range(5)])
    opensearch.indices.refresh(index=f"{setup.alias}_v*")

    counts: list[int] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            counts.append(opensearch.count(index=setup.alias)["count"])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        while len(counts) < 5:  # the reader is running against the old index
            time.sleep(0.01)
        swap_alias(opensearch, setup.alias, new_index)
        seen_after = len(counts)
        while len(counts) < seen_after + 5:
            time.sleep(0.01)
    finally:
        stop.set()
        reader.join()
    assert set(counts) <= {3, 5}, "a reader saw both indexes or neither"
    assert counts[0] == 3 and counts[-1] == 5
    assert alias_targets(opensearch, setup.alias) == [new_index]
    assert set(setup.visible()) == {f"new{i}" for i in range(5)}


def test_the_example_mapping_accepts_every_demo_type(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    import datetime as dt
    import decimal
    import uuid

    from cassandra.util import Date, OrderedMap, SortedSet

    from sync.mapping import load_mapping
    from sync.model import ScanPosition
    from sync.sources.rows import decode_row

    mapping = load_mapping(Path(__file__).resolve().parents[2] / "mappings" / "example.toml")
    table = TableKey.from_columns(
        "demo",
        "products",
        [
            ("shop", "text", "partition_key"),
            ("region", "text", "partition_key"),
            ("sku", "uuid", "clustering"),
            ("banner", "text", "static"),
            ("name", "text", "regular"),
            ("stock", "int", "regular"),
            ("views", "bigint", "regular"),
            ("price", "decimal", "regular"),
            ("rating", "double", "regular"),
            ("active", "boolean", "regular"),
            ("updated_at", "timestamp", "regular"),
            ("launched_on", "date", "regular"),
            ("tags", "set<text>", "regular"),
            ("stock_by_size", "map<text, int>", "regular"),
            ("images", "list<text>", "regular"),
        ],
    )
    sku = uuid.uuid4()
    row = {
        "shop": "s1",
        "region": "eu",
        "sku": sku,
        "banner": "Sale",
        "name": "Kettle",
        "stock": 3,
        "views": 2**40,
        "price": decimal.Decimal("19.90"),
        "rating": 4.5,
        "active": True,
        "updated_at": dt.datetime(2024, 1, 2, 3, 4, 5, 678000),
        "launched_on": Date(19723),
        "tags": SortedSet(["steel", "tea"]),
        "stock_by_size": OrderedMap([("S", 1), ("M", 0)]),
        "images": ["a.png", "b.png"],
    }
    index = ensure_index(opensearch, mapping)
    builder = DocumentBuilder(mapping, table)
    writer = BulkWriter(opensearch, index, builder, FileDeadLetters(tmp_path / "d.ndjson"), FAST)
    report = writer.write([decode_row(row, table, ScanPosition(0, 1, 1), 1)])
    assert (report.applied, report.dead_lettered) == (1, 0)
    opensearch.indices.refresh(index=mapping.alias)
    query = {
        "query": {
            "bool": {
                "filter": [
                    {"term": {"tags": "tea"}},
                    {"match": {"title": "kettle"}},
                    {"range": {"updated_at": {"gte": "2024-01-02T03:04:05.678Z"}}},
                    {"term": {"launched_on": "2024-01-01"}},
                ]
            }
        }
    }
    hits = opensearch.search(index=mapping.alias, body=query)["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == [f"s1:eu:{sku}"]
    assert hits[0]["_routing"] == "s1:eu"
    assert hits[0]["_source"]["price"] == "19.90"


def test_one_writer_serves_several_threads(opensearch: OpenSearch, tmp_path: Path) -> None:
    setup = Setup(opensearch, tmp_path)
    errors: list[BaseException] = []

    def write_batch(thread: int) -> None:
        try:
            for batch in range(5):
                keys = [f"t{thread}-{batch}-{i}" for i in range(20)]
                setup.writer.write([upsert(key, 1, i) for i, key in enumerate(keys)])
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write_batch, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert setup.writer.counters.snapshot()["applied"] == 4 * 5 * 20
    assert len(setup.visible()) == 400


def test_a_value_with_no_document_form_is_dead_lettered(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    report = setup.writer.write([upsert("odd", 1, complex(1, 2)), upsert("fine", 1, 1)])
    assert (report.applied, report.dead_lettered) == (1, 1)
    assert "no document form for a complex" in setup.dead.path.read_text()
    assert FileDeadLetters(setup.dead.path).count == 1  # the count survives a restart
    assert set(setup.visible()) == {"fine"}


def test_a_static_only_change_for_a_table_without_statics_is_refused(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    from sync.errors import TerminalError

    setup = Setup(opensearch, tmp_path)
    static = Change(Op.UPSERT, ("p",), {"id": "p"}, 1, position(), static_only=True)
    with pytest.raises(TerminalError, match="static-only"):
        setup.writer.write([static])
