"""Static columns against a real osmem-server (and, at the end, keyspaces_local):
every row shows its partition's current statics.

What a user relies on: a search hit for a row shows its partition's newest
static values, whichever record brought them (a static-only stream record, a
snapshot row), in any order, with duplicates, and with writers racing each
other; an older static record never wins; partition documents never show
up in searches.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opensearchpy import OpenSearch
from opensearchpy.exceptions import TransportError

from sync.config import Config
from sync.deadletter import FileDeadLetters
from sync.documents import DocumentBuilder
from sync.indices import ensure_index
from sync.mapping import mapping_from_dict
from sync.model import Change, Op, ScanRead, StreamRead
from sync.schema import TableLayout
from sync.writer import BulkWriter, WriterSettings

TABLE = TableLayout(
    "demo",
    "shelves",
    ("shop",),
    ("sku",),
    ("banner",),
    {"shop": "text", "sku": "text", "banner": "text", "n": "int"},
)
FAST = WriterSettings(initial_backoff=0.01, max_backoff=0.05, max_retry_seconds=10.0)
_names = itertools.count(1)


def stream(version: int) -> StreamRead:
    return StreamRead("arn:test", "shardId-0001", f"{version:021d}", 1_700_000_000_000)


SCAN = ScanRead(0, 1, 1_700_000_000_000)


def static(shop: str, version: int, banner: str | None) -> Change:
    """A static-only stream record (banner None: the static column was deleted)."""
    image = {"shop": shop} if banner is None else {"shop": shop, "banner": banner}
    return Change(Op.UPSERT, (shop,), image, version, stream(version), static_only=True)


def row(shop: str, sku: str, version: int, n: int) -> Change:
    """A stream row record: no static cells (Keyspaces sends those in their own record)."""
    return Change(Op.UPSERT, (shop, sku), {"shop": shop, "sku": sku, "n": n}, version, stream(1))


def snapshot_row(shop: str, sku: str, version: int, n: int, banner: str | None) -> Change:
    """A row read by the scan: the partition's statics come with it."""
    image: dict[str, Any] = {"shop": shop, "sku": sku, "n": n}
    if banner is not None:
        image["banner"] = banner
    return Change(Op.UPSERT, (shop, sku), image, version, SCAN)


def delete(shop: str, sku: str, version: int) -> Change:
    return Change(Op.DELETE, (shop, sku), None, version, stream(version))


class Setup:
    """An index behind its alias for the static table, and a writer (or more) to it."""

    def __init__(self, client: OpenSearch, tmp_path: Path) -> None:
        self.alias = f"shelves{next(_names)}"
        self.mapping = mapping_from_dict(
            {
                "source": {"keyspace": "demo", "table": "shelves"},
                "index": {
                    "alias": self.alias,
                    "mappings": {
                        "dynamic": "strict",
                        "properties": {
                            "shop": {"type": "keyword"},
                            "sku": {"type": "keyword"},
                            "banner": {"type": "keyword"},
                            "n": {"type": "integer"},
                        },
                    },
                },
                "document": {"routing": "partition"},
            },
            f"{self.alias}.toml",
        )
        self.client = client
        self.index = ensure_index(client, self.mapping)
        self.builder = DocumentBuilder(self.mapping, TABLE)
        self.dead = FileDeadLetters(tmp_path / f"{self.alias}-dead.ndjson")
        self.writer = self.new_writer()

    def new_writer(self) -> BulkWriter:
        return BulkWriter(self.client, self.index, self.builder, self.dead, FAST)

    def visible(self) -> dict[str, dict[str, Any]]:
        """Documents found through the alias (what a search user sees), by id."""
        self.client.indices.refresh(index=self.alias)
        hits = self.client.search(index=self.alias, body={"size": 1000})["hits"]["hits"]
        return {hit["_id"]: hit["_source"] for hit in hits}

    def banners(self) -> dict[str, str | None]:
        return {doc_id: source.get("banner") for doc_id, source in self.visible().items()}


def test_a_static_change_updates_every_row_of_its_partition_and_no_other(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([static("a", 5, "old a"), static("b", 5, "b")])
    setup.writer.write(
        [row("a", sku, 10, i) for i, sku in enumerate("xyz")] + [row("b", "x", 10, 9)]
    )
    assert setup.banners() == {"a:x": "old a", "a:y": "old a", "a:z": "old a", "b:x": "b"}

    report = setup.writer.write([static("a", 20, "new a")])

    assert (report.applied, report.stale, report.dead_lettered) == (1, 0, 0)
    assert setup.banners() == {"a:x": "new a", "a:y": "new a", "a:z": "new a", "b:x": "b"}
    docs = setup.visible()
    assert docs["a:y"]["n"] == 1 and docs["a:y"]["_ks2os"]["version"] == 10
    assert docs["a:y"]["_ks2os"]["static_version"] == 20
    assert docs["b:x"]["_ks2os"]["static_version"] == 5


def test_a_row_inserted_after_the_static_change_shows_it(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([static("a", 20, "sale")])
    report = setup.writer.write([row("a", "x", 10, 1)])  # older than the statics: still fine
    assert (report.applied, report.stale) == (1, 0)
    assert setup.visible()["a:x"] == {
        "shop": "a",
        "sku": "x",
        "n": 1,
        "banner": "sale",
        "_ks2os": {
            "version": 10,
            "static_version": 20,
            "partition": "a",
            "source": "stream",
            "deleted": False,
        },
    }


def test_a_stream_row_without_statics_keeps_the_statics_the_document_had(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([snapshot_row("a", "x", 10, 1, "from the scan")])
    setup.writer.write([row("a", "x", 20, 2)])
    doc = setup.visible()["a:x"]
    assert (doc["n"], doc["banner"]) == (2, "from the scan")
    assert doc["_ks2os"]["version"] == 20


def test_an_older_static_change_is_stale_and_changes_nothing(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([row("a", "x", 10, 1), row("a", "y", 10, 2), static("a", 20, "new")])
    before = setup.visible()

    report = setup.writer.write([static("a", 15, "old"), static("a", 20, "new")])

    assert (report.applied, report.stale, report.dead_lettered) == (0, 2, 0)
    assert setup.visible() == before
    assert setup.banners() == {"a:x": "new", "a:y": "new"}


def test_a_snapshot_row_seeds_statics_only_a_newer_static_record_overrides(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    first = setup.writer.write(
        [snapshot_row("a", "x", 100, 1, "snap"), snapshot_row("a", "y", 100, 2, "snap")]
    )
    assert (first.applied, first.stale) == (2, 0)
    setup.writer.write([row("a", "z", 50, 3)])  # a stream row of the same partition, no statics
    assert setup.banners() == {"a:x": "snap", "a:y": "snap", "a:z": "snap"}

    older = setup.writer.write([static("a", 90, "older")])
    assert (older.applied, older.stale) == (0, 1)
    assert setup.banners() == {"a:x": "snap", "a:y": "snap", "a:z": "snap"}

    newer = setup.writer.write([static("a", 110, "newer")])
    assert newer.applied == 1
    assert setup.banners() == {"a:x": "newer", "a:y": "newer", "a:z": "newer"}

    # A snapshot row read before the newer static record does not bring "snap" back.
    setup.writer.write([snapshot_row("a", "w", 105, 4, "snap")])
    assert setup.banners()["a:w"] == "newer"


def test_row_delete_then_reinsert_keeps_the_current_statics(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([static("a", 10, "first"), row("a", "x", 11, 1), row("a", "y", 11, 2)])
    deleted = setup.writer.write([delete("a", "x", 12)])
    assert deleted.applied == 1
    assert set(setup.visible()) == {"a:y"}

    setup.writer.write([static("a", 13, "second")])  # while a:x is a tombstone
    stale = setup.writer.write([row("a", "x", 11, 1)])  # an old replay stays deleted
    assert (stale.applied, stale.stale) == (0, 1)
    assert set(setup.visible()) == {"a:y"}

    setup.writer.write([row("a", "x", 14, 5)])
    assert setup.banners() == {"a:x": "second", "a:y": "second"}
    assert setup.visible()["a:x"]["n"] == 5


def test_a_deleted_static_column_disappears_from_every_row(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([static("a", 10, "shown"), row("a", "x", 11, 1)])
    setup.writer.write([static("a", 12, None)])
    assert setup.visible()["a:x"]["_ks2os"]["static_version"] == 12
    assert "banner" not in setup.visible()["a:x"]


def test_the_alias_never_shows_partition_documents(opensearch: OpenSearch, tmp_path: Path) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([static("lonely", 3, "no rows here"), static("a", 3, "a")])
    setup.writer.write([row("a", "x", 4, 1)])
    assert set(setup.visible()) == {"a:x"}
    assert opensearch.count(index=setup.alias)["count"] == 1
    query = {"query": {"exists": {"field": "_ks2os.kind"}}}
    assert opensearch.search(index=setup.alias, body=query)["hits"]["hits"] == []
    # The partition documents are there, behind the alias.
    opensearch.indices.refresh(index=setup.index)
    assert opensearch.count(index=setup.index, body=query)["count"] == 2


def test_a_static_value_the_mapping_refuses_is_dead_lettered(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([row("a", "x", 10, 1)])
    # `banner` is a keyword; an object cannot go in, so no row can show it.
    bad = Change(
        Op.UPSERT, ("a",), {"shop": "a", "banner": {"k": 1}}, 20, stream(20), static_only=True
    )
    report = setup.writer.write([bad])
    assert (report.applied, report.dead_lettered) == (0, 1)
    assert setup.dead.count == 1
    assert setup.visible()["a:x"]["n"] == 1


# ------------------------------------------------------- races and orders


def _model(changes: list[Change]) -> dict[str, dict[str, Any]]:
    """What the index must show: per row its newest change, per partition its newest statics.

    Computed from the changes alone: a static-only change and a snapshot row
    both state the partition's statics at their version; a row's newest
    change decides whether it exists and its fields.
    """
    newest_row: dict[tuple[str, str], Change] = {}
    newest_statics: dict[str, tuple[int, str | None]] = {}
    for change in changes:
        shop = change.key[0]
        if change.static_only or isinstance(change.provenance, ScanRead):
            assert change.image is not None
            held = newest_statics.get(shop)
            if held is None or change.version > held[0]:
                newest_statics[shop] = (change.version, change.image.get("banner"))
        if not change.static_only:
            held_row = newest_row.get(change.key)
            if held_row is None or change.version > held_row.version:
                newest_row[change.key] = change
    expected = {}
    for (shop, sku), change in newest_row.items():
        if change.image is None:
            continue
        doc: dict[str, Any] = {"shop": shop, "sku": sku, "n": change.image["n"]}
        banner = newest_statics.get(shop, (0, None))[1]
        if banner is not None:
            doc["banner"] = banner
        expected[f"{shop}:{sku}"] = (doc, change.version)
    return {doc_id: {**doc, "version": version} for doc_id, (doc, version) in expected.items()}


def _seen(setup: Setup) -> dict[str, dict[str, Any]]:
    seen = {}
    for doc_id, source in setup.visible().items():
        meta = source.pop("_ks2os")
        seen[doc_id] = {**source, "version": meta["version"]}
    return seen


def test_racing_static_and_row_writers_converge_to_the_model(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    rounds = 30
    statics = [static("p", 1000 + 2 * i, f"banner {i}") for i in range(rounds)]
    rows = [
        [row("p", f"r{j}", 1001 + 2 * i, 100 * i + j) for j in range(4)]
        + [row("q", "r0", 1001 + 2 * i, i)]
        for i in range(rounds)
    ]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(batches: list[list[Change]]) -> None:
        writer = setup.new_writer()  # like two follower workers on different shards
        try:
            for batch in batches:
                barrier.wait(timeout=30)
                writer.write(batch)
        except BaseException as exc:  # surfaced by the assertion below
            barrier.abort()
            errors.append(exc)

    threads = [
        threading.Thread(target=run, args=([[change] for change in statics],)),
        threading.Thread(target=run, args=(rows,)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    everything = statics + [change for batch in rows for change in batch]
    assert _seen(setup) == _model(everything)
    assert setup.banners()["p:r0"] == f"banner {rounds - 1}"
    assert "banner" not in setup.visible()["q:r0"]


class Interleaving:
    """A real client that runs chosen actions just before chosen requests.

    Fault injection by wrapping the real opensearch-py client: it forces the
    interleavings a thread race only hits by luck, and crashes at chosen
    points. `before["bulk"]` holds one entry per coming bulk request, in
    order (None: nothing); an action may raise to make the request fail.
    """

    def __init__(self, client: OpenSearch) -> None:
        self._client = client
        self.before: dict[str, list[Callable[[], Any] | None]] = {}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _run(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self.calls[name] = self.calls.get(name, 0) + 1
        queue = self.before.get(name)
        if queue:
            action = queue.pop(0)
            if action is not None:
                action()
        return getattr(self._client, name)(*args, **kwargs)

    def bulk(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("bulk", *args, **kwargs)

    def mget(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("mget", *args, **kwargs)

    def search(self, *args: Any, **kwargs: Any) -> Any:
        return self._run("search", *args, **kwargs)

    @property
    def bulks(self) -> int:
        return self.calls.get("bulk", 0)


class Crash(Exception):
    """The process dies here (nothing after it runs)."""


def crash() -> None:
    raise Crash


def _interleaved_writer(
    setup: Setup, settings: WriterSettings = FAST
) -> tuple[BulkWriter, Interleaving]:
    client = Interleaving(setup.client)
    writer = BulkWriter(client, setup.index, setup.builder, setup.dead, settings)  # type: ignore[arg-type]
    return writer, client


def test_a_static_change_landing_between_a_rows_read_and_write_still_reaches_it(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    # The row writer reads the partition document (old statics), then the
    # static writer writes the new ones and fans out before the row exists;
    # the row writer's re-read of the partition after its write must catch up.
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([static("a", 10, "old")])
    rows, client = _interleaved_writer(setup)
    client.before["bulk"] = [lambda: setup.writer.write([static("a", 20, "new")])]
    report = rows.write([row("a", "x", 15, 1)])
    assert client.bulks >= 2  # the row, then its late merge
    assert report.applied == 1
    assert setup.banners() == {"a:x": "new"}
    assert setup.visible()["a:x"]["_ks2os"]["static_version"] == 20


def test_a_row_write_racing_a_static_merge_is_retried_on_the_conflict(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    # Both orders of the same collision: the row write loses the race to a
    # merge, and a merge loses the race to a row write. Each re-reads and wins.
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([static("a", 10, "first"), row("a", "x", 11, 1)])

    rows, row_client = _interleaved_writer(setup)
    row_client.before["bulk"] = [lambda: setup.writer.write([static("a", 12, "second")])]
    assert rows.write([row("a", "x", 13, 2)]).applied == 1
    assert row_client.bulks == 2  # the conflicting write and its retry
    doc = setup.visible()["a:x"]
    assert (doc["n"], doc["banner"], doc["_ks2os"]["version"]) == (2, "second", 13)

    statics, static_client = _interleaved_writer(setup)
    # Bulk 1 writes the partition document; just before bulk 2 (the merge) the row changes.
    static_client.before["bulk"] = [None, lambda: setup.writer.write([row("a", "x", 15, 3)])]
    assert statics.write([static("a", 14, "third")]).applied == 1
    # The merge conflicted; its re-read found the row already showing "third"
    # (the row writer had read the new partition document), so nothing more to send.
    assert static_client.bulks == 2
    doc = setup.visible()["a:x"]
    assert (doc["n"], doc["banner"], doc["_ks2os"]["version"]) == (3, "third", 15)


def test_a_replay_repairs_a_row_left_with_old_statics_by_a_crash(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    # The row writer read the old statics, a static change landed and fanned
    # out before the row existed, the row was written, and the writer died
    # before its re-read of the partition document. The batch was not
    # checkpointed, so it is replayed: the row is stale now, yet the check runs.
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([static("a", 10, "old")])
    rows, client = _interleaved_writer(setup)
    client.before["bulk"] = [lambda: setup.writer.write([static("a", 20, "new")])]
    client.before["mget"] = [None, crash]  # the row phase's read, then the re-read
    with pytest.raises(Crash):
        rows.write([row("a", "x", 15, 1)])
    assert setup.banners() == {"a:x": "old"}  # what the crash left

    replay = setup.new_writer().write([row("a", "x", 15, 1)])
    assert (replay.applied, replay.stale) == (0, 1)
    assert setup.banners() == {"a:x": "new"}


def test_a_replayed_static_change_finishes_a_fan_out_a_crash_cut_short(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    setup.writer.write([static("a", 10, "old"), row("a", "x", 11, 1), row("a", "y", 11, 2)])
    statics, client = _interleaved_writer(setup)
    client.before["search"] = [crash]  # after the partition document, before the fan-out
    with pytest.raises(Crash):
        statics.write([static("a", 20, "new")])
    assert setup.banners() == {"a:x": "old", "a:y": "old"}

    replay = setup.new_writer().write([static("a", 20, "new")])
    assert (replay.applied, replay.stale) == (0, 1)  # the partition document was written
    assert setup.banners() == {"a:x": "new", "a:y": "new"}


def test_a_fan_out_larger_than_a_bulk_request_reaches_every_row(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    small = WriterSettings(max_docs=3, initial_backoff=0.01, max_backoff=0.05)
    writer = BulkWriter(setup.client, setup.index, setup.builder, setup.dead, small)
    writer.write([row("a", f"r{i:02d}", 10, i) for i in range(11)] + [row("b", "r00", 10, 0)])
    report = writer.write([static("a", 20, "everywhere")])
    assert report.applied == 1
    banners = setup.banners()
    assert banners.pop("b:r00") is None
    assert set(banners.values()) == {"everywhere"} and len(banners) == 11


def test_pushback_on_the_merge_path_is_retried_with_backoff(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    setup = Setup(opensearch, tmp_path)
    writer, client = _interleaved_writer(setup)

    def unavailable() -> None:
        raise TransportError(503, "unavailable", {"error": "injected"})

    # Refuse the partition document's first bulk, then the rows' first bulk.
    client.before["bulk"] = [unavailable, None, unavailable]
    report = writer.write([static("a", 20, "up"), row("a", "x", 21, 1), row("a", "y", 21, 2)])
    assert (report.applied, report.stale, report.dead_lettered) == (3, 0, 0)
    assert report.retries == 2
    assert setup.banners() == {"a:x": "up", "a:y": "up"}


_event = st.tuples(
    st.sampled_from(["static", "row", "snapshot", "delete"]),
    st.sampled_from(["a", "b"]),  # partition
    st.sampled_from(["x", "y", "z"]),  # row
    st.one_of(st.none(), st.sampled_from(["red", "blue", "green"])),  # banner
    st.integers(0, 99),  # n
)


def _change(kind: str, shop: str, sku: str, banner: str | None, n: int, version: int) -> Change:
    if kind == "static":
        return static(shop, version, banner)
    if kind == "snapshot":
        return snapshot_row(shop, sku, version, n, banner)
    if kind == "delete":
        return delete(shop, sku, version)
    return row(shop, sku, version, n)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(events=st.lists(_event, min_size=1, max_size=14), data=st.data())
def test_any_order_and_duplication_of_row_and_static_changes_converges(
    opensearch: OpenSearch,
    tmp_path: Path,
    events: list[tuple[str, str, str, str | None, int]],
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
    assert _seen(setup) == _model(changes)


# ------------------------------------------- end to end: CQL -> stream/scan -> index


def test_backfill_and_follower_racing_static_and_row_writes_show_current_statics(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    """Static-only writes over CQL reach every row, through the stream and the scan alike."""
    from sync.jobs.backfill import run_backfill
    from sync.jobs.follow import run_follow

    cql.execute(
        f'CREATE TABLE "{keyspace}"."shelves" ("shop" int, "sku" text, "banner" text static, '
        '"n" int, PRIMARY KEY ("shop", "sku")) WITH cdc = true AND CUSTOM_PROPERTIES = '
        "{'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
    )
    table = f'"{keyspace}"."shelves"'
    insert = cql.prepare(f'INSERT INTO {table} ("shop", "sku", "n") VALUES (?, ?, ?)')
    set_banner = cql.prepare(f'UPDATE {table} SET "banner" = ? WHERE "shop" = ?')
    set_n = cql.prepare(f'UPDATE {table} SET "n" = ? WHERE "shop" = ? AND "sku" = ?')
    rows: dict[tuple[int, str], int] = {}
    banners: dict[int, str] = {}
    for i in range(60):
        shop, sku = i % 6, f"sku-{i}"
        cql.execute(insert, (shop, sku, i))
        rows[(shop, sku)] = i
    for shop in range(6):
        cql.execute(set_banner, (f"banner {shop}", shop))
        banners[shop] = f"banner {shop}"

    def live_writes(rounds: range) -> None:
        for round_ in rounds:
            for shop in range(6):
                cql.execute(set_banner, (f"banner {shop} round {round_}", shop))
                banners[shop] = f"banner {shop} round {round_}"
            for (shop, sku), n in list(rows.items())[round_::4]:
                cql.execute(set_n, (n + 1000 * round_, shop, sku))
                rows[(shop, sku)] = n + 1000 * round_

    mapping = mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": "shelves"},
            "index": {"alias": f"{keyspace.lower()}-shelves"},
            "document": {"routing": "partition"},
        }
    )
    ensure_index(opensearch, mapping)
    cfg = make_config(backfill={"ranges": 4, "workers": 2, "page_size": 7})
    stop = threading.Event()
    failures: list[BaseException] = []

    def follow() -> None:
        try:
            run_follow(cfg, mapping, stop=stop)
        except BaseException as exc:  # surfaced by the assertion below
            failures.append(exc)

    follower = threading.Thread(target=follow)
    follower.start()
    writer = threading.Thread(target=live_writes, args=(range(1, 4),))

    def wait_for_the_model() -> None:
        model = {
            f"{shop}:{sku}": {"shop": shop, "sku": sku, "n": n, "banner": banners[shop]}
            for (shop, sku), n in rows.items()
        }
        deadline = time.monotonic() + 30
        while _indexed(opensearch, mapping.alias) != model and time.monotonic() < deadline:
            time.sleep(0.1)  # polling an observable condition, with a deadline
        assert _indexed(opensearch, mapping.alias) == model

    try:
        writer.start()
        summary = run_backfill(cfg, mapping)  # racing the writes and the follower
        writer.join(timeout=60)
        assert summary.complete and summary.dead_lettered == 0
        wait_for_the_model()
        live_writes(range(4, 6))  # the stream alone now: static records must fan out
        wait_for_the_model()
    finally:
        stop.set()
        follower.join(timeout=60)
    assert failures == []


def _indexed(client: OpenSearch, alias: str) -> dict[str, dict[str, Any]]:
    client.indices.refresh(index=alias)
    reply = client.search(index=alias, body={"size": 10_000})
    return {
        hit["_id"]: {k: v for k, v in hit["_source"].items() if k != "_ks2os"}
        for hit in reply["hits"]["hits"]
    }
