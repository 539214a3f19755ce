"""`run_backfill` against keyspaces_local and osmem, plus its progress arithmetic.

What users rely on: after a backfill the alias holds exactly the table's
rows; a stopped backfill resumes where it stopped (the same run, fewer rows
read); `restart=True` plans a new run; progress and ETA make sense.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.config import Config
from sync.jobs.backfill import Progress, render_bar, run_backfill
from sync.mapping import TableMapping, mapping_from_dict
from sync.sources.cql import RANDOM_RING, split_ring
from tests.conftest import table_options

# ---- pure -----------------------------------------------------------------------------


def test_progress_counts_done_ranges_and_the_share_of_current_ones() -> None:
    ranges = dict(enumerate(split_ring(4)))
    progress = Progress(ranges)
    progress.start(100.0)
    progress.update(0, 1.0, rows=500)
    progress.update(1, 0.5, rows=250)
    fraction, rate, eta = progress.estimate(110.0)
    assert fraction == pytest.approx(0.375, abs=1e-9)
    assert rate == pytest.approx(75.0)
    assert eta == pytest.approx(10.0 * 0.625 / 0.375)


def test_progress_of_a_resumed_run_rates_only_this_run() -> None:
    ranges = dict(enumerate(split_ring(2)))
    progress = Progress(ranges)
    progress.update(0, 1.0)  # done by an earlier run
    progress.start(0.0)
    fraction, rate, eta = progress.estimate(5.0)
    assert fraction == pytest.approx(0.5, abs=1e-9) and rate == 0.0 and eta is None
    progress.update(1, 0.5, rows=100)
    fraction, _, eta = progress.estimate(5.0)
    assert fraction == pytest.approx(0.75, abs=1e-9)
    assert eta == pytest.approx(5.0)


def test_progress_is_a_share_of_the_ring_the_ranges_cover_whichever_partitioner() -> None:
    progress = Progress(dict(enumerate(split_ring(4, RANDOM_RING))))
    progress.start(0.0)
    progress.update(0, 1.0, rows=500)
    progress.update(1, 0.5, rows=250)
    assert progress.estimate(10.0)[0] == pytest.approx(0.375, abs=1e-9)


def test_the_bar_shows_percent_rate_and_eta() -> None:
    line = render_bar(0.5, 1234.0, 61.0, width=10)
    assert line.startswith("[#####.....]")
    assert "50.0%" in line and "1,234 rows/s" in line and "ETA 00:01:01" in line


# ---- against keyspaces_local and osmem -----------------------------------------------------


def _mapping(keyspace: str) -> TableMapping:
    return mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": "products"},
            "index": {"alias": f"{keyspace.lower()}-products"},
        }
    )


def _create_rows(
    cql: Any, keyspace: str, count: int, cdc: bool = False, client_timestamps: bool = False
) -> dict[str, dict[str, Any]]:
    """Writes `count` rows; returns the model the index must equal (doc id -> fields)."""
    view_type = "NEW_AND_OLD_IMAGES" if cdc else None
    cql.execute(
        f'CREATE TABLE "{keyspace}"."products" ("shop" int, "sku" text, "price" int, '
        '"title" text, PRIMARY KEY ("shop", "sku"))'
        + table_options(view_type=view_type, client_timestamps=client_timestamps)
    )
    insert = cql.prepare(
        f'INSERT INTO "{keyspace}"."products" ("shop", "sku", "price", "title") VALUES (?, ?, ?, ?)'
    )
    model: dict[tuple[int, str], dict[str, Any]] = {}
    for n in range(count):
        shop, sku = n % 37, f"sku-{n}"
        cql.execute(insert, (shop, sku, n * 10, f"product {n}"))
        model[(shop, sku)] = {"shop": shop, "sku": sku, "price": n * 10, "title": f"product {n}"}
    return {f"{shop}:{sku}": row for (shop, sku), row in model.items()}


def _indexed(client: OpenSearch, alias: str) -> dict[str, dict[str, Any]]:
    client.indices.refresh(index=alias)
    reply = client.search(index=alias, body={"query": {"match_all": {}}, "size": 10_000})
    return {
        hit["_id"]: {k: v for k, v in hit["_source"].items() if k != "_ks2os"}
        for hit in reply["hits"]["hits"]
    }


def test_a_backfill_leaves_exactly_the_table_in_the_index(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
    partitioner: str,
) -> None:
    """On every partitioner's ring: a Murmur3 split of a Random ring reads a 2**-64 share."""
    model = _create_rows(cql, keyspace, 300, client_timestamps=client_timestamps)
    mapping = _mapping(keyspace)
    cfg = make_config(backfill={"ranges": 8, "workers": 3, "page_size": 40})
    summary = run_backfill(cfg, mapping)
    assert summary.complete and summary.ranges == 8
    assert summary.rows_read == 300 and summary.written == 300 and summary.dead_lettered == 0
    assert _indexed(opensearch, mapping.alias) == model


def test_a_stopped_backfill_resumes_its_run(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    partitioner: str,
) -> None:
    from sync.jobs import Job

    model = _create_rows(cql, keyspace, 400)
    mapping = _mapping(keyspace)
    # Small bulk requests, so ranges are done (and the stop comes) before the end.
    cfg = make_config(
        backfill={"ranges": 16, "workers": 1, "page_size": 5}, writer={"max_docs": 10}
    )
    stop = threading.Event()
    with Job(cfg, mapping) as job:

        def stop_after_first_range() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not stop.is_set():
                run = job.store.get_run(f"{job.info.qualified_name}->{job.index}")
                if run and any(r.done for r in job.store.list_ranges(run)):
                    stop.set()
                    return
                time.sleep(0.02)  # polling an observable condition, with a deadline

        watcher = threading.Thread(target=stop_after_first_range)
        watcher.start()
        try:
            first = run_backfill(cfg, mapping, stop=stop, job=job)
        finally:
            stop.set()
            watcher.join()
        assert not first.complete

        second = run_backfill(cfg, mapping, job=job)
        assert second.complete and second.run_id == first.run_id
        assert second.rows_read < 400  # done ranges were not read again

        third = run_backfill(cfg, mapping, restart=True, job=job)
        assert third.run_id != first.run_id and third.rows_read == 400
        assert third.written + third.stale == 400
    assert _indexed(opensearch, mapping.alias) == model


def test_a_finished_run_is_not_resumed(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    _create_rows(cql, keyspace, 20)
    mapping = _mapping(keyspace)
    cfg = make_config(backfill={"ranges": 2, "workers": 2})
    first = run_backfill(cfg, mapping)
    second = run_backfill(cfg, mapping)
    assert second.run_id != first.run_id and second.rows_read == 20


def test_two_backfill_processes_share_one_run(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    model = _create_rows(cql, keyspace, 300)
    mapping = _mapping(keyspace)
    configs = [
        make_config(backfill={"ranges": 12, "workers": 2, "page_size": 20}, state={"worker_id": w})
        for w in ("host-a", "host-b")
    ]
    # Created up front: two processes creating the index at the same instant
    # race inside ensure_index (reported; not what this test is about).
    from sync.indices import ensure_index

    ensure_index(opensearch, mapping)
    summaries: list[Any] = []
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(cfg: Config) -> None:
        try:
            start.wait()
            summaries.append(run_backfill(cfg, mapping))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(cfg,)) for cfg in configs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert len({s.run_id for s in summaries}) == 1 and all(s.complete for s in summaries)
    assert sum(s.rows_read for s in summaries) == 300  # every range read once, by one of them
    assert _indexed(opensearch, mapping.alias) == model


def test_a_backfill_racing_the_follower_and_live_writes_converges_to_the_table(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    """Snapshot rows and stream records of the same rows race; the newest state wins."""
    from sync.jobs.follow import run_follow

    model = _create_rows(cql, keyspace, 200, cdc=True, client_timestamps=client_timestamps)
    mapping = _mapping(keyspace)
    cfg = make_config(backfill={"ranges": 8, "workers": 2, "page_size": 10})
    update = cql.prepare(
        f'UPDATE "{keyspace}"."products" SET "price" = ? WHERE "shop" = ? AND "sku" = ?'
    )
    delete = cql.prepare(f'DELETE FROM "{keyspace}"."products" WHERE "shop" = ? AND "sku" = ?')
    writing_done = threading.Event()

    def live_writes() -> None:
        for round_ in range(3):
            for n in range(0, 200, 3):
                doc_id = f"{n % 37}:sku-{n}"
                if round_ == 2 and n % 9 == 0:
                    cql.execute(delete, (n % 37, f"sku-{n}"))
                    model.pop(doc_id, None)
                elif doc_id in model:
                    cql.execute(update, (round_ * 1000 + n, n % 37, f"sku-{n}"))
                    model[doc_id]["price"] = round_ * 1000 + n
        writing_done.set()

    from sync.indices import ensure_index

    ensure_index(opensearch, mapping)  # see test_two_backfill_processes_share_one_run
    stop = threading.Event()
    follower = threading.Thread(target=lambda: run_follow(cfg, mapping, stop=stop))
    follower.start()
    writer = threading.Thread(target=live_writes)
    try:
        writer.start()
        summary = run_backfill(cfg, mapping)
        writer.join(timeout=60)
        assert summary.complete and writing_done.is_set()
        deadline = time.monotonic() + 30
        while _indexed(opensearch, mapping.alias) != model and time.monotonic() < deadline:
            time.sleep(0.1)  # polling an observable condition, with a deadline
        assert _indexed(opensearch, mapping.alias) == model
    finally:
        stop.set()
        follower.join(timeout=60)


# ---- one worker's buffer and checkpoints, with a fake scan and writer -----------------------


class _Fakes:
    """A scan of `sizes[n]` rows in range n (evenly spread over its tokens), pages of
    `page` rows; a writer that records its batches and, at each one, checks that no
    range records more than was acknowledged by earlier batches."""

    def __init__(self, store: Any, run: Any, sizes: list[int], page: int) -> None:
        self.store, self.run, self.sizes, self.page = store, run, sizes, page
        self.ranges = split_ring(len(sizes))
        self.ends = {r.end: n for n, r in enumerate(self.ranges)}
        self.batches: list[list[tuple[int, int]]] = []
        self.acknowledged: set[tuple[int, int]] = set()

    def token(self, number: int, row: int) -> int:
        whole = self.ranges[number]
        return whole.start + whole.width // (self.sizes[number] + 1) * (row + 1)

    def scan(self, token_range: Any) -> Any:
        from sync.sources.cql import ScanPage

        number = self.ends[token_range.end]
        rows = [
            (number, i)
            for i in range(self.sizes[number])
            if self.token(number, i) > token_range.start
        ]
        for first in range(0, len(rows), self.page) or [0]:
            chunk = rows[first : first + self.page]
            last = self.token(*chunk[-1]) if chunk else None
            yield ScanPage(chunk, last, len(chunk))  # type: ignore[arg-type]

    def check(self) -> None:
        """Every row a range's state says is written was acknowledged."""
        for state in self.store.list_ranges(self.run):
            n = state.number
            written = [
                i
                for i in range(self.sizes[n])
                if state.done
                or (state.last_token is not None and self.token(n, i) <= state.last_token)
            ]
            assert all((n, i) in self.acknowledged for i in written)

    def write(self, batch: list[tuple[int, int]]) -> Any:
        from sync.writer import WriteReport

        self.check()
        self.batches.append(list(batch))
        self.acknowledged.update(batch)
        return WriteReport(applied=len(batch))


def _fake_backfill(
    store: Any, run: Any, fakes: _Fakes, monkeypatch: pytest.MonkeyPatch, stop: threading.Event
) -> Any:
    """A `_Backfill` of one worker over the fake scan and writer, the real state store."""
    from types import SimpleNamespace

    import sync.jobs.backfill as backfill

    monkeypatch.setattr(backfill, "SnapshotScanner", lambda *a, **k: fakes)
    cfg = SimpleNamespace(
        backfill=SimpleNamespace(workers=1, page_size=4, snapshot_margin_ms=0),
        keyspaces=SimpleNamespace(read_consistency="ONE"),
        writer=SimpleNamespace(max_docs=10),
    )
    job = SimpleNamespace(
        cfg=cfg, store=store, session=None, info=None, worker_id="host", new_writer=lambda: fakes
    )
    return backfill._Backfill(job, run, stop)  # type: ignore[arg-type]


SIZES = [7, 0, 12, 3, 25, 9, 1, 0, 14, 6, 11, 5]


def test_pages_of_many_ranges_share_full_bulk_requests_and_ranges_end_only_when_written(
    opensearch: OpenSearch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sync.jobs.backfill import plan_run
    from sync.state import StateStore

    sizes = SIZES
    store = StateStore(opensearch, ".ks2os-state", lease_seconds=300)
    run = plan_run(store, "ks.t->t_v1", len(sizes), restart=False)
    fakes = _Fakes(store, run, sizes, page=4)
    leases_per_request: list[int] = []  # ranges newly leased, per state request
    update_ranges = store.update_ranges

    def counted(pairs: list[Any]) -> Any:
        leases_per_request.append(sum(old.lease.owner != "host#0" for old, _ in pairs))
        return update_ranges(pairs)

    monkeypatch.setattr(store, "update_ranges", counted)
    work = _fake_backfill(store, run, fakes, monkeypatch, threading.Event())
    work.work(0)

    assert not work.errors and work.all_done.is_set()
    # One buffer across range ends: every request full but the last.
    assert [len(b) for b in fakes.batches] == [10] * 9 + [3]
    assert sorted(fakes.acknowledged) == [
        (n, i) for n, size in enumerate(sizes) for i in range(size)
    ]
    assert sum(len(b) for b in fakes.batches) == sum(sizes)  # nothing written twice
    stored = store.list_ranges(run)
    assert all(s.done and s.lease.owner is None for s in stored)
    assert [s.rows for s in stored] == sizes
    # Several ranges leased per request while many are left; otherwise one state
    # request per bulk request at most (each done range is recorded with others).
    assert max(leases_per_request) > 1 and sum(leases_per_request) == len(sizes)
    leasing = sum(1 for n in leases_per_request if n)
    assert len(leases_per_request) - leasing <= len(fakes.batches)
    assert work.progress.estimate(time.monotonic())[0] == pytest.approx(1.0)


def test_a_stopped_worker_records_only_what_was_written_and_frees_its_ranges(
    opensearch: OpenSearch, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sync.jobs.backfill import plan_run
    from sync.state import StateStore

    store = StateStore(opensearch, ".ks2os-state", lease_seconds=300)
    run = plan_run(store, "ks.t->t_v1", len(SIZES), restart=False)
    fakes = _Fakes(store, run, SIZES, page=4)
    stop = threading.Event()
    write = fakes.write

    def write_then_stop(batch: list[tuple[int, int]]) -> Any:
        if len(fakes.batches) == 2:
            stop.set()  # the third request: the worker stops after it
        return write(batch)

    monkeypatch.setattr(fakes, "write", write_then_stop)
    first = _fake_backfill(store, run, fakes, monkeypatch, stop)
    first.work(0)
    assert not first.errors and not first.all_done.is_set()

    stored = store.list_ranges(run)
    assert any(s.done for s in stored) and not all(s.done for s in stored)
    assert all(s.lease.owner is None for s in stored)  # released: others may go on at once
    fakes.check()  # recorded progress never runs ahead of what the writer acknowledged
    assert any(s.last_token is not None and not s.done for s in stored)  # a partial range

    second = _fake_backfill(store, run, fakes, monkeypatch, threading.Event())
    second.work(0)
    assert not second.errors and second.all_done.is_set()
    assert all(s.done for s in store.list_ranges(run))
    assert sorted(fakes.acknowledged) == [
        (n, i) for n, size in enumerate(SIZES) for i in range(size)
    ]
    # Done ranges were not read again: fewer rows written than twice the table.
    assert sum(len(b) for b in fakes.batches) < 2 * sum(SIZES)


def test_an_unfinished_run_split_for_another_partitioners_ring_is_planned_again(
    opensearch: OpenSearch,
) -> None:
    """The account's partitioner changed between two runs: resuming the old ranges would
    read almost nothing of the new ring, so a new run is planned over it."""
    from sync.jobs.backfill import plan_run
    from sync.sources.cql import MURMUR3_RING, TokenRange, covers
    from sync.state import StateStore

    store = StateStore(opensearch, ".ks2os-state", lease_seconds=300)
    murmur3 = plan_run(store, "ks.t->t_v1", 4, restart=False, ring=MURMUR3_RING)
    random = plan_run(store, "ks.t->t_v1", 4, restart=False, ring=RANDOM_RING)
    assert random.run_id != murmur3.run_id
    stored = [TokenRange(r.range_start, r.range_end) for r in store.list_ranges(random)]
    assert covers(RANDOM_RING, stored)  # 128-bit tokens survive the state store
    assert plan_run(store, "ks.t->t_v1", 4, restart=False, ring=RANDOM_RING).run_id == random.run_id
