"""The partition shape (`document.shape = "partition"`): one document per partition.

What a user relies on: a partition's document holds its statics and its live
rows as nested objects in clustering order, whatever order, duplication and
interleaving of row and static changes arrive in; a deleted row never comes
back from an older replay; an empty partition is not found; the filter and
the hook decide per row; a partition past `document.max_rows` dead-letters
the rows it cannot take, never dropping one silently. Pure tests of the
merge and the clustering order first, then the writer against osmem.
"""

from __future__ import annotations

import datetime as dt
import decimal
import itertools
import random
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cassandra.util import Date
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opensearchpy import OpenSearch

from sync.bulk import Verdict
from sync.deadletter import FileDeadLetters, Outcome
from sync.documents import DocumentBuilder
from sync.indices import ensure_index
from sync.mapping import mapping_from_dict
from sync.model import Change, Op, ScanRead, StreamRead
from sync.partitions import (
    TOMBSTONE_HORIZON_MS,
    ClusteringOrder,
    PartitionPlan,
    PartitionState,
    Row,
    RowChange,
    StaticsChange,
    merge,
)
from sync.schema import TableLayout
from sync.version import base
from sync.writer import BulkWriter, WriterSettings

TABLE = TableLayout(
    "demo",
    "items",
    ("p",),
    ("c",),
    ("s",),
    {"p": "int", "c": "int", "a": "text", "b": "int", "s": "text"},
)
FAST = WriterSettings(initial_backoff=0.01, max_backoff=0.05, max_retry_seconds=10.0)
# Versions near the present: tombstones older than the horizon are pruned on write.
NOW_MS = int(time.time() * 1000)
V0 = base(NOW_MS)
_names = itertools.count(1)


def stream(version: int) -> StreamRead:
    return StreamRead("arn:test", "shardId-0001", f"{version:024d}", NOW_MS)


SCAN = ScanRead(0, 1, NOW_MS)


def upsert(p: int, c: int, version: int, a: str | None = None, b: int | None = None) -> Change:
    """A stream row record (no static cells: Keyspaces sends those as records of their own).

    Every helper's `version` counts from V0 (the present)."""
    image: dict[str, Any] = {"p": p, "c": c}
    if a is not None:
        image["a"] = a
    if b is not None:
        image["b"] = b
    return Change(Op.UPSERT, (p, c), image, V0 + version, stream(version))


def delete(p: int, c: int, version: int) -> Change:
    return Change(Op.DELETE, (p, c), None, V0 + version, stream(version))


def static(p: int, version: int, s: str | None) -> Change:
    image: dict[str, Any] = {"p": p} if s is None else {"p": p, "s": s}
    return Change(Op.UPSERT, (p,), image, V0 + version, stream(version), static_only=True)


def snapshot(p: int, c: int, version: int, a: str, s: str | None) -> Change:
    """A row read by the scan: its partition's statics come with it."""
    image: dict[str, Any] = {"p": p, "c": c, "a": a}
    if s is not None:
        image["s"] = s
    return Change(Op.UPSERT, (p, c), image, V0 + version, SCAN)


# ------------------------------------------------------------------ pure: order


@pytest.mark.unit
def test_rows_sort_in_cassandras_clustering_order_from_their_stored_form() -> None:
    table = TableLayout(
        "demo",
        "events",
        ("p",),
        ("day", "at", "id", "price", "name"),
        column_types={
            "p": "int",
            "day": "date",
            "at": "timestamp",
            "id": "timeuuid",
            "price": "decimal",
            "name": "text",
        },
        descending=frozenset({"day"}),
    )
    order = ClusteringOrder(table)
    early = uuid.UUID("00000000-0000-1000-8000-000000000000")  # a time-based UUID, time 0
    late = uuid.uuid1()
    day1, day2 = Date(19723), Date(19724)
    t1, t2 = dt.datetime(2024, 1, 1, 0, 0, 0), dt.datetime(2024, 1, 1, 0, 0, 0, 1000)
    keys = [
        (1, day1, t1, early, decimal.Decimal("10"), "b"),
        (1, day1, t1, early, decimal.Decimal("9.5"), "z"),
        (1, day1, t1, late, decimal.Decimal("1"), "a"),
        (1, day1, t2, early, decimal.Decimal("1"), "a"),
        (1, day2, t2, late, decimal.Decimal("100"), "é"),
        (1, day1, t1, early, decimal.Decimal("10"), "ä"),
    ]
    # Through JSON, as the document stores them.
    stored = [orjson.loads(orjson.dumps(order.stored(key))) for key in keys]
    ranked = sorted(range(len(keys)), key=lambda i: order.sort_key(stored[i]))
    # day DESC first; then at, id (by time), price (by value), name (by code point).
    assert ranked == [4, 1, 0, 5, 2, 3]


@pytest.mark.unit
def test_integers_beyond_64_bits_blobs_and_addresses_keep_their_order() -> None:
    table = TableLayout(
        "demo",
        "t",
        ("p",),
        ("n", "raw", "ip"),
        column_types={"p": "int", "n": "varint", "raw": "blob", "ip": "inet"},
    )
    order = ClusteringOrder(table)
    keys = [
        (0, 10**30, b"\x01", "10.0.0.2"),
        (0, -(10**30), b"\xff", "10.0.0.1"),
        (0, 10**30, b"\x00\xff", "10.0.0.1"),
        (0, 10**30, b"\x01", "10.0.0.10"),
    ]
    stored = [orjson.loads(orjson.dumps(order.stored(key))) for key in keys]
    assert sorted(range(4), key=lambda i: order.sort_key(stored[i])) == [1, 2, 0, 3]


# ------------------------------------------------------------------ pure: merge


def _row(c: int, version: int, **fields: Any) -> RowChange:
    change = upsert(1, c, version)
    row = Row(str(c), change.version, [c], fields)
    return RowChange(Outcome(change), str(c), change.version, row, "stream")


def _tombstone(c: int, version: int) -> RowChange:
    change = delete(1, c, version)
    return RowChange(Outcome(change), str(c), change.version, None, "stream")


def _statics(version: int, s: str | None, counted: bool = True) -> StaticsChange:
    change = static(1, version, s)
    return StaticsChange(Outcome(change), counted, change.version, {"s": s}, "stream")


def _plan(*changes: RowChange, statics: StaticsChange | None = None) -> PartitionPlan:
    return PartitionPlan("1", None, {"p": 1}, {c.row_id: c for c in changes}, statics)


ORDER = ClusteringOrder(TABLE)


def _merge(state: PartitionState, plan: PartitionPlan, max_rows: int = 10) -> PartitionState:
    merged = merge(state, plan, ORDER, max_rows, NOW_MS)
    merged.settle()
    return merged.state


@pytest.mark.unit
def test_a_row_is_replaced_only_by_a_newer_version_and_a_delete_leaves_a_tombstone() -> None:
    state = _merge(PartitionState(), _plan(_row(1, 10, a="x"), _row(2, 10, a="y")))
    assert {k: r.fields for k, r in state.live.items()} == {"1": {"a": "x"}, "2": {"a": "y"}}

    older, newer = _row(1, 9, a="old"), _row(2, 11, a="new")
    merged = merge(state, _plan(older, newer), ORDER, 10, NOW_MS)
    assert merged.stale == [older.outcome] and merged.applied == [newer.outcome]
    assert state.live["2"].fields == {"a": "y"}  # the stored state is left as it was
    state = merged.state
    assert {k: r.fields for k, r in state.live.items()} == {"1": {"a": "x"}, "2": {"a": "new"}}

    state = _merge(state, _plan(_tombstone(1, 20)))
    assert set(state.live) == {"2"} and state.gone == {"1": V0 + 20}
    replay = _row(1, 15, a="resurrected?")
    merged = merge(state, _plan(replay), ORDER, 10, NOW_MS)
    assert not merged.changed and merged.stale == [replay.outcome]
    state = _merge(state, _plan(_row(1, 21, a="back")))
    assert state.live["1"].fields == {"a": "back"} and state.gone == {}


@pytest.mark.unit
def test_statics_follow_their_own_version_line() -> None:
    state = _merge(PartitionState(), _plan(_row(1, 50), statics=_statics(10, "ten")))
    assert (state.statics, state.static_version) == ({"s": "ten"}, V0 + 10)
    older = _statics(5, "five")
    merged = merge(state, _plan(statics=older), ORDER, 10, NOW_MS)
    assert merged.stale == [older.outcome] and not merged.changed
    # A row newer than the statics does not touch them; newer statics replace them.
    state = _merge(state, _plan(_row(2, 60), statics=_statics(11, None)))
    assert (state.statics, state.static_version) == ({"s": None}, V0 + 11)
    assert not state.has_statics() and not state.deleted()
    state = _merge(state, _plan(_tombstone(1, 70), _tombstone(2, 70)))
    assert state.deleted()


@pytest.mark.unit
def test_rows_past_the_limit_are_refused_after_removals_and_in_clustering_order() -> None:
    state = _merge(PartitionState(), _plan(_row(5, 10), _row(6, 10)))
    gone, update = _tombstone(5, 20), _row(6, 20, a="updated")
    late, early, middle = _row(9, 20), _row(1, 20), _row(7, 20)
    merged = merge(state, _plan(late, gone, early, update, middle), ORDER, 3, NOW_MS)
    assert set(merged.applied) == {gone.outcome, update.outcome, early.outcome, middle.outcome}
    assert [outcome for outcome, _ in merged.over_limit] == [late.outcome]
    assert "document.max_rows = 3" in merged.over_limit[0][1]
    assert set(merged.state.live) == {"1", "6", "7"}
    merged.settle()
    assert late.outcome.verdict is Verdict.REJECTED


@pytest.mark.unit
def test_tombstones_older_than_the_horizon_are_dropped_on_the_next_write() -> None:
    old = base(NOW_MS - TOMBSTONE_HORIZON_MS - 1)
    recent = base(NOW_MS - TOMBSTONE_HORIZON_MS + 60_000)
    state = PartitionState(gone={"1": old, "2": recent})
    stale = RowChange(Outcome(upsert(1, 2, 0)), "2", recent, None, "stream")
    untouched = merge(state, _plan(stale), ORDER, 10, NOW_MS)
    assert untouched.state.gone == {"1": old, "2": recent}  # nothing written, nothing pruned
    assert _merge(state, _plan(_row(3, 1))).gone == {"2": recent}


@pytest.mark.unit
def test_a_document_expires_when_its_last_row_does_if_nothing_else_holds_it() -> None:
    state = PartitionState(
        live={
            "1": Row("1", 10, [1], {}, expires_at=NOW_MS + 5),
            "2": Row("2", 10, [2], {}, expires_at=NOW_MS + 9),
        }
    )
    assert state.expires_at() == NOW_MS + 9
    state.live["3"] = Row("3", 10, [3], {})
    assert state.expires_at() is None
    del state.live["3"]
    state.statics = {"s": "holds it"}
    assert state.expires_at() is None


# ------------------------------------------------------------ the writer, on osmem


def shaped_mapping(alias: str, **document: Any) -> dict[str, Any]:
    return {
        "source": {"keyspace": "demo", "table": "items"},
        "index": {
            "alias": alias,
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "p": {"type": "integer"},
                    "s": {"type": "keyword"},
                    "rows": {
                        "type": "nested",
                        "properties": {
                            "c": {"type": "integer"},
                            "a": {"type": "keyword"},
                            "b": {"type": "integer"},
                            "label": {"type": "keyword"},
                            "parity": {"type": "keyword"},
                        },
                    },
                },
            },
        },
        "document": {"shape": "partition", **document},
    }


class Setup:
    """An index behind its alias for the items table in the partition shape, and a writer."""

    def __init__(
        self, client: OpenSearch, tmp_path: Path, table: TableLayout = TABLE, **document: Any
    ) -> None:
        self.alias = f"items{next(_names)}"
        self.mapping = mapping_from_dict(shaped_mapping(self.alias, **document), "items.toml")
        self.client = client
        self.index = ensure_index(client, self.mapping)
        self.builder = DocumentBuilder(self.mapping, table)
        self.dead = FileDeadLetters(tmp_path / f"{self.alias}-dead.ndjson")
        self.writer = self.new_writer()

    def new_writer(self, settings: WriterSettings = FAST) -> BulkWriter:
        return BulkWriter(self.client, self.index, self.builder, self.dead, settings)

    def visible(self) -> dict[str, dict[str, Any]]:
        """Documents found through the alias, by id, without ks2os's metadata."""
        self.client.indices.refresh(index=self.alias)
        hits = self.client.search(index=self.alias, body={"size": 1000})["hits"]["hits"]
        return {
            hit["_id"]: {k: v for k, v in hit["_source"].items() if k != "_ks2os"} for hit in hits
        }

    def stored(self, doc_id: str) -> dict[str, Any]:
        body: dict[str, Any] = self.client.get(index=self.index, id=doc_id)["_source"]
        return body

    def dead_letters(self) -> list[dict[str, Any]]:
        path = self.dead.path
        return (
            [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []
        )


def test_a_partition_is_one_document_with_its_statics_and_rows_in_clustering_order(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    report = setup.writer.write(
        [
            upsert(1, 3, 10, "c", 3),
            upsert(1, 1, 11, "a", 1),
            static(1, 12, "sale"),
            upsert(1, 2, 13, "b"),
            upsert(2, 1, 10, "other"),
        ]
    )
    assert (report.applied, report.stale, report.dead_lettered) == (5, 0, 0)
    assert setup.visible() == {
        "1": {
            "p": 1,
            "s": "sale",
            "rows": [{"c": 1, "a": "a", "b": 1}, {"c": 2, "a": "b"}, {"c": 3, "a": "c", "b": 3}],
        },
        "2": {"p": 2, "rows": [{"c": 1, "a": "other"}]},
    }
    meta = setup.stored("1")["_ks2os"]
    assert (meta["kind"], meta["partition"], meta["static_version"]) == ("grouped", "1", V0 + 12)
    assert [(r["id"], r["version"] - V0) for r in meta["rows"]["live"]] == [
        ("1", 11),
        ("2", 13),
        ("3", 10),
    ]
    # Nested: both conditions must hold in one row (a = "a" and b = 3 do not).
    both = {
        "nested": {
            "path": "rows",
            "query": {"bool": {"filter": [{"term": {"rows.a": "a"}}, {"term": {"rows.b": 3}}]}},
        }
    }
    assert opensearch.search(index=setup.alias, body={"query": both})["hits"]["hits"] == []
    one = {"nested": {"path": "rows", "query": {"term": {"rows.a": "c"}}}}
    hits = opensearch.search(index=setup.alias, body={"query": one})["hits"]["hits"]
    assert [hit["_id"] for hit in hits] == ["1"]


def test_descending_clustering_columns_list_rows_in_reverse(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    table = TableLayout(
        "demo", "items", ("p",), ("c",), ("s",), TABLE.column_types, frozenset({"c"})
    )
    setup = Setup(opensearch, tmp_path, table)
    setup.writer.write([upsert(1, c, 10 + c) for c in (2, 5, 1)])
    setup.writer.write([upsert(1, 3, 20)])
    assert [row["c"] for row in setup.visible()["1"]["rows"]] == [5, 3, 2, 1]


def test_a_deleted_row_stays_deleted_whatever_older_change_comes_late(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([upsert(1, 1, 10, "a"), upsert(1, 2, 10, "b")])
    setup.writer.write([delete(1, 1, 20)])
    report = setup.writer.write([upsert(1, 1, 15, "replayed"), upsert(1, 1, 10, "a")])
    assert (report.applied, report.stale) == (0, 2)
    assert setup.visible() == {"1": {"p": 1, "rows": [{"c": 2, "a": "b"}]}}
    setup.writer.write([upsert(1, 1, 21, "again")])
    assert setup.visible()["1"]["rows"][0] == {"c": 1, "a": "again"}


def test_an_empty_partition_is_not_found_and_its_statics_alone_are(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([upsert(1, 1, 10, "a"), upsert(2, 1, 10, "b"), static(2, 11, "kept")])
    setup.writer.write([delete(1, 1, 20), delete(2, 1, 20)])
    assert setup.visible() == {"2": {"p": 2, "s": "kept", "rows": []}}
    assert setup.stored("1")["_ks2os"]["deleted"] is True  # its tombstone is kept
    setup.writer.write([static(2, 30, None)])
    assert setup.visible() == {}
    setup.writer.write([static(3, 5, "statics first")])  # a partition with statics only
    assert setup.visible() == {"3": {"p": 3, "s": "statics first", "rows": []}}


def test_a_snapshot_row_brings_statics_only_a_newer_static_record_overrides(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([static(1, 30, "newer"), snapshot(1, 1, 20, "a", "older")])
    assert setup.visible()["1"]["s"] == "newer"
    setup.writer.write([snapshot(1, 2, 40, "b", "from the scan")])
    doc = setup.visible()["1"]
    assert doc["s"] == "from the scan" and [row["c"] for row in doc["rows"]] == [1, 2]


def test_the_filter_the_hook_and_computed_fields_decide_per_row(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(
        opensearch,
        tmp_path,
        filter={"column": "a", "ne": "hidden"},
        computed={"label": {"concat": ["p", "c", "a"], "separator": "/"}},
        hook="tests.sync.shaping_hooks:only_even_b",
    )
    setup.writer.write(
        [upsert(1, 1, 10, "x", 2), upsert(1, 2, 10, "hidden", 2), upsert(1, 3, 10, "y", 3)]
    )
    assert setup.visible() == {
        "1": {"p": 1, "rows": [{"c": 1, "a": "x", "b": 2, "label": "1/1/x", "parity": "even"}]}
    }
    # A row that stops matching leaves its document, like a delete; matching again, it is back.
    setup.writer.write([upsert(1, 1, 20, "hidden", 2), upsert(1, 3, 20, "y", 4)])
    assert [row["c"] for row in setup.visible()["1"]["rows"]] == [3]
    setup.writer.write([upsert(1, 1, 15, "x", 2)])  # older than the row's leaving: stale
    setup.writer.write([upsert(1, 2, 30, "shown", 6)])
    assert [row["c"] for row in setup.visible()["1"]["rows"]] == [2, 3]
    assert setup.stored("1")["_ks2os"]["rows"]["gone"] == {"1": V0 + 20}


def test_a_hook_that_raises_dead_letters_exactly_its_change(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path, hook="tests.sync.shaping_hooks:boom_on_a")
    report = setup.writer.write(
        [upsert(1, 1, 10, "fine"), upsert(1, 2, 10, "boom"), upsert(1, 3, 10, "fine too")]
    )
    assert (report.applied, report.dead_lettered) == (2, 1)
    assert [row["c"] for row in setup.visible()["1"]["rows"]] == [1, 3]
    [letter] = setup.dead_letters()
    assert letter["key"] == [1, 2] and letter["doc_id"] == "1"
    assert "hook tests.sync.shaping_hooks:boom_on_a raised RuntimeError" in letter["reason"]


def test_a_row_opensearch_refuses_is_dead_lettered_and_the_rest_of_its_partition_written(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    refused = upsert(1, 2, 10, "fine", 3)
    assert refused.image is not None
    refused = Change(Op.UPSERT, (1, 2), {**refused.image, "b": "not a number"}, 10, stream(10))
    report = setup.writer.write(
        [upsert(1, 1, 10, "a"), refused, static(1, 11, "sale"), upsert(1, 3, 10, "c")]
    )
    assert (report.applied, report.dead_lettered) == (3, 1)
    assert setup.visible() == {
        "1": {"p": 1, "s": "sale", "rows": [{"c": 1, "a": "a"}, {"c": 3, "a": "c"}]}
    }
    [letter] = setup.dead_letters()
    assert letter["key"] == [1, 2] and "partition document refused: 400" in letter["reason"]


def test_a_partition_past_max_rows_dead_letters_the_rows_it_cannot_hold(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path, max_rows=3)
    report = setup.writer.write([upsert(1, c, 10, f"r{c}") for c in (5, 1, 4, 2, 3)])
    assert (report.applied, report.dead_lettered) == (3, 2)
    assert [row["c"] for row in setup.visible()["1"]["rows"]] == [1, 2, 3]
    letters = setup.dead_letters()
    assert sorted(letter["key"][1] for letter in letters) == [4, 5]
    assert all("already holds document.max_rows = 3 rows" in x["reason"] for x in letters)
    # Updates of held rows and deletes always go through, and a delete makes room.
    report = setup.writer.write([upsert(1, 1, 20, "updated"), delete(1, 2, 20), upsert(1, 5, 21)])
    assert (report.applied, report.dead_lettered) == (3, 0)
    assert [row["c"] for row in setup.visible()["1"]["rows"]] == [1, 3, 5]


class BeforeBulk:
    """The real client, running a chosen action just before its next bulk request."""

    def __init__(self, client: OpenSearch, action: Callable[[], Any]) -> None:
        self._client = client
        self._action: Callable[[], Any] | None = action
        self.bulks = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def bulk(self, *args: Any, **kwargs: Any) -> Any:
        self.bulks += 1
        action, self._action = self._action, None
        if action is not None:
            action()
        return self._client.bulk(*args, **kwargs)


def test_a_write_losing_the_race_for_its_document_reads_it_again_and_merges(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([upsert(1, 1, 10, "a")])
    # Between this writer's read and its write, another writer changes the document.
    client = BeforeBulk(opensearch, lambda: setup.writer.write([upsert(1, 2, 12, "b")]))
    racing = BulkWriter(client, setup.index, setup.builder, setup.dead, FAST)  # type: ignore[arg-type]
    report = racing.write([upsert(1, 3, 11, "c"), static(1, 11, "s")])
    assert (report.applied, report.stale) == (2, 0)
    assert client.bulks == 2  # the conditional write that lost, then the one on the new read
    assert setup.visible() == {
        "1": {
            "p": 1,
            "s": "s",
            "rows": [{"c": 1, "a": "a"}, {"c": 2, "a": "b"}, {"c": 3, "a": "c"}],
        }
    }


def test_writers_racing_on_one_partition_converge(opensearch: OpenSearch, tmp_path: Path) -> None:
    """Like followers on several shards: every write is a read-modify-write of one document."""
    setup = Setup(opensearch, tmp_path)
    rng = random.Random(7)
    lanes: list[list[Change]] = [[], [], []]
    version = itertools.count(100)
    for _ in range(90):
        c = rng.randrange(6)
        roll = rng.random()
        change = (
            static(1, next(version), f"s{rng.randrange(9)}")
            if roll < 0.2
            else delete(1, c, next(version))
            if roll < 0.4
            else upsert(1, c, next(version), f"a{rng.randrange(9)}")
        )
        lanes[rng.randrange(3)].append(change)
    errors: list[BaseException] = []

    def run(lane: list[Change]) -> None:
        writer = setup.new_writer()
        try:
            for start in range(0, len(lane), 4):
                writer.write(lane[start : start + 4])
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(lane,)) for lane in lanes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert setup.visible() == _model([change for lane in lanes for change in lane])


def _model(changes: list[Change]) -> dict[str, dict[str, Any]]:
    """The documents a search must find, from the changes alone: per row its newest change,
    per partition its newest statics (static-only changes and snapshot rows state them)."""
    rows: dict[tuple[int, int], Change] = {}
    statics: dict[int, tuple[int, str | None]] = {}
    for change in changes:
        p = change.key[0]
        if change.static_only or isinstance(change.provenance, ScanRead):
            assert change.image is not None
            if change.version > statics.get(p, (0, None))[0]:
                statics[p] = (change.version, change.image.get("s"))
        if not change.static_only and change.version > getattr(rows.get(change.key), "version", 0):
            rows[change.key] = change
    expected: dict[str, dict[str, Any]] = {}
    for p in sorted({key[0] for key in rows} | set(statics)):
        live = sorted(
            (c, {k: v for k, v in change.image.items() if k not in ("p", "s")})
            for (q, c), change in rows.items()
            if q == p and change.image is not None
        )
        s = statics.get(p, (0, None))[1]
        if live or s is not None:
            doc: dict[str, Any] = {"p": p, "rows": [fields for _, fields in live]}
            if s is not None:
                doc["s"] = s
            expected[str(p)] = doc
    return expected


_event = st.tuples(
    st.sampled_from(["static", "row", "snapshot", "delete"]),
    st.sampled_from([1, 2]),  # partition
    st.sampled_from([1, 2, 3]),  # row
    st.one_of(st.none(), st.sampled_from(["red", "blue"])),  # static value
    st.sampled_from(["x", "y", "z"]),  # a
)


def _change(kind: str, p: int, c: int, s: str | None, a: str, version: int) -> Change:
    if kind == "static":
        return static(p, version, s)
    if kind == "snapshot":
        return snapshot(p, c, version, a, s)
    if kind == "delete":
        return delete(p, c, version)
    return upsert(p, c, version, a)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(events=st.lists(_event, min_size=1, max_size=14), data=st.data())
def test_any_order_and_duplication_of_row_and_static_changes_converges(
    opensearch: OpenSearch,
    tmp_path: Path,
    events: list[tuple[str, int, int, str | None, str]],
    data: Any,
) -> None:
    # Distinct versions: along one row or one partition's statics, no two changes tie.
    versions = data.draw(
        st.lists(st.integers(1, 10_000), min_size=len(events), max_size=len(events), unique=True)
    )
    changes = [_change(*event, version) for event, version in zip(events, versions, strict=True)]
    delivery = data.draw(
        st.lists(st.sampled_from(changes), max_size=len(changes))
        .map(lambda extra: extra + changes)
        .flatmap(st.permutations)
    )
    cuts = sorted(data.draw(st.sets(st.integers(0, len(delivery)), max_size=4)))
    setup = Setup(opensearch, tmp_path)  # one index per example
    for start, end in itertools.pairwise([0, *cuts, len(delivery)]):
        if start < end:
            setup.writer.write(delivery[start:end])
    assert setup.visible() == _model(changes)
