"""`run_backfill` against keyspaces_local and osmem, plus its progress arithmetic.

What users rely on: after a backfill the alias holds exactly the table's
rows; a stopped backfill resumes where it stopped (the same run, fewer rows
read); `restart=True` plans a new run; progress and ETA make sense.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from opensearchpy import OpenSearch

from sync.config import Config
from sync.jobs.backfill import run_backfill
from sync.mapping import TableMapping, load_mapping, mapping_from_dict
from sync.sources.cql import RANDOM_RING, split_ring
from sync.state import Lease, StateStore
from tests.conftest import table_options

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


def test_a_backfill_serves_its_progress_as_metrics(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from sync.metrics import Metrics

    _create_rows(cql, keyspace, 60)
    mapping = _mapping(keyspace)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = make_config(
        backfill={"ranges": 4, "workers": 2, "metrics_port": port, "metrics_host": "127.0.0.1"}
    )
    metrics = Metrics()
    summary = run_backfill(cfg, mapping, metrics=metrics)
    assert summary.complete
    found = {
        sample.name: sample.value
        for family in text_string_to_metric_families(metrics.exposition())
        for sample in family.samples
        if sample.labels.get("table") == f"{keyspace}.products"
    }
    assert found["ks2os_backfill_ranges"] == 4 and found["ks2os_backfill_ranges_done"] == 4
    assert found["ks2os_backfill_rows_read_total"] == 60
    assert found["ks2os_backfill_applied_total"] == 60
    assert found["ks2os_backfill_done_ratio"] == 1.0 and found["ks2os_backfill_rows_per_second"] > 0
    assert found["ks2os_bulk_request_duration_seconds_count"] >= 1
    with pytest.raises(OSError):  # the endpoint lived as long as the backfill
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)


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


def test_a_partition_with_only_static_values_reaches_its_partition_document(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    """`UPDATE t SET banner = 'x' WHERE shop = 7` on a partition with no rows: the scan
    returns a row with null clustering keys. It used to stop every worker, and every
    resume; its statics now reach the partition document, and no row document is made."""
    cql.execute(
        f'CREATE TABLE "{keyspace}"."shelves" ("shop" int, "sku" text, "n" int, '
        '"banner" text STATIC, PRIMARY KEY ("shop", "sku"))'
        + table_options(view_type=None, client_timestamps=client_timestamps)
    )
    table = f'"{keyspace}"."shelves"'
    model: dict[str, dict[str, Any]] = {}
    for shop in range(5):
        cql.execute(f'UPDATE {table} SET "banner" = %s WHERE "shop" = %s', (f"sale {shop}", shop))
        for n in range(3):
            cql.execute(
                f'INSERT INTO {table} ("shop", "sku", "n") VALUES (%s, %s, %s)', (shop, f"s{n}", n)
            )
            model[f"{shop}:s{n}"] = {"shop": shop, "sku": f"s{n}", "n": n, "banner": f"sale {shop}"}
    for shop in (7, 8):
        cql.execute(f'UPDATE {table} SET "banner" = %s WHERE "shop" = %s', (f"empty {shop}", shop))
    mapping = mapping_from_dict(
        {"source": {"keyspace": keyspace, "table": "shelves"}, "index": {"alias": f"{keyspace}-s"}}
    )
    cfg = make_config(backfill={"ranges": 4, "workers": 2, "page_size": 4})
    summary = run_backfill(cfg, mapping)
    assert summary.complete and summary.dead_lettered == 0
    assert _indexed(opensearch, mapping.alias) == model
    (index,) = opensearch.indices.get_alias(name=mapping.alias)
    for shop in (7, 8):
        partition = opensearch.get(index=index, id=f"!p:{shop}")["_source"]["_ks2os"]
        assert partition["statics"] == {"banner": f"empty {shop}"}
    opensearch.indices.refresh(index=index)
    every = opensearch.search(index=index, body={"query": {"match_all": {}}, "size": 1000})
    ids = {hit["_id"] for hit in every["hits"]["hits"]}
    assert ids == set(model) | {f"!p:{shop}" for shop in (0, 1, 2, 3, 4, 7, 8)}  # no row for 7, 8


@pytest.mark.parametrize("view", ["KEYS_ONLY", "OLD_IMAGE"])
def test_a_follower_that_looks_rows_up_keeps_their_expiry(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    view: str,
) -> None:
    """Streams without new images re-read each row over CQL. That read used to carry no
    TTL, so it erased the expiry the backfill wrote and kept the row searchable after it."""
    from sync.jobs.follow import run_follow
    from sync.keyspaces import service_now_ms

    cql.execute(
        f'CREATE TABLE "{keyspace}"."products" ("shop" int, "sku" text, "price" int, '
        '"title" text, PRIMARY KEY ("shop", "sku")) WITH cdc = true AND CUSTOM_PROPERTIES = '
        f"{{'cdc_specification': {{'view_type': '{view}'}}, 'ttl': {{'status': 'enabled'}}}}"
    )
    insert = cql.prepare(
        f'INSERT INTO "{keyspace}"."products" ("shop", "sku", "price", "title") '
        "VALUES (?, ?, ?, ?) USING TTL 3600"
    )
    before = service_now_ms(cql)
    for n in range(20):
        cql.execute(insert, (n % 3, f"sku-{n}", n, f"product {n}"))
    mapping = _mapping(keyspace)
    cfg = make_config(backfill={"ranges": 2, "workers": 1})
    assert run_backfill(cfg, mapping).complete
    stop = threading.Event()
    follower = threading.Thread(target=lambda: run_follow(cfg, mapping, stop=stop))
    follower.start()
    try:
        # The stream records are newer than the snapshot rows: the lookups replace them.
        _wait_for(
            lambda: {m["source"] for m in _meta(opensearch, mapping.alias).values()} == {"stream"},
            "the follower to rewrite every row",
        )
    finally:
        stop.set()
        follower.join(timeout=60)
    after = service_now_ms(cql)
    metas = _meta(opensearch, mapping.alias)
    assert len(metas) == 20
    for meta in metas.values():
        # Counted from the read's whole second, so never late, and early by at most the
        # second the read may straddle: above the insert's second + 1 h - 1 s.
        assert before + 3_598_000 <= meta.get("expires_at", 0) <= after + 3_600_000


def _meta(client: OpenSearch, alias: str) -> dict[str, dict[str, Any]]:
    client.indices.refresh(index=alias)
    reply = client.search(index=alias, body={"query": {"match_all": {}}, "size": 10_000})
    return {hit["_id"]: hit["_source"]["_ks2os"] for hit in reply["hits"]["hits"]}


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
        writer=SimpleNamespace(max_docs=10),
    )
    from sync.metrics import Metrics

    job = SimpleNamespace(
        cfg=cfg,
        store=store,
        session=None,
        info=None,
        worker_id="host",
        new_writer=lambda: fakes,
        table_metrics=Metrics().table("ks.t"),
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


def test_a_worker_leases_only_what_it_will_scan_within_about_a_second(
    opensearch: OpenSearch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Leases taken far ahead are what a rerun must wait out after a crash."""
    from sync.jobs.backfill import _Worker, plan_run

    store = StateStore(opensearch, ".ks2os-state", lease_seconds=300)
    run = plan_run(store, "ks.t->t_v1", len(SIZES), restart=False)
    worker = _Worker(
        _fake_backfill(store, run, _Fakes(store, run, SIZES, 4), monkeypatch, threading.Event()), 0
    )
    assert worker._lease_count(100) == 1  # its pace not known yet: one range
    worker.seconds_per_range = 5.0
    assert worker._lease_count(100) == 1
    worker.seconds_per_range = 0.3
    assert worker._lease_count(100) == 3
    worker.seconds_per_range = 0.0001
    assert worker._lease_count(100) == 8  # tiny ranges: a few per state request, no more
    assert worker._lease_count(3) == 1  # near the end, one each: the tail spreads


def test_a_lost_lease_says_who_has_the_range_and_where_it_is_read_from_again(
    opensearch: OpenSearch, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from sync.jobs.backfill import _Worker, plan_run

    store = StateStore(opensearch, ".ks2os-state", lease_seconds=300)
    run = plan_run(store, "ks.t->t_v1", len(SIZES), restart=False)
    backfill = _fake_backfill(
        store, run, _Fakes(store, run, SIZES, 4), monkeypatch, threading.Event()
    )
    worker = _Worker(backfill, 0)
    assert worker._lease()
    number, held = next(iter(worker.held.items()))
    # Another process takes the range over (its lease ran out, say) and records progress.
    other = Lease("host-b#1", store.now_ms() + 300_000)
    taken = replace(held.state, last_token=held.state.range_start + 7, rows=3, lease=other)
    assert store.update_ranges([(held.state, taken)])[0] is not None
    with caplog.at_level(logging.WARNING, logger="sync.jobs.backfill"), worker.lock:
        worker.checkpoint()
    assert number not in worker.held and number not in worker.todo
    assert (
        f"lost the lease on range {number}; dropping it: host-b#1 holds it now; it will be "
        f"read again from token {held.state.range_start + 7}"
    ) in caplog.text


def test_a_rerun_under_the_same_worker_id_takes_back_the_leases_its_predecessor_left(
    opensearch: OpenSearch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A killed process cannot release its leases; waiting for them to expire would only
    delay the rerun of the same worker, whose ids are unique among running processes."""
    from sync.jobs.backfill import plan_run

    store = StateStore(opensearch, ".ks2os-state", lease_seconds=300)
    run = plan_run(store, "ks.t->t_v1", 4, restart=False)
    states = store.list_ranges(run)
    owners = ["host#0", "host#1", "host-b#0", None]  # ours twice (two threads), another's
    expiry = store.now_ms() + 300_000
    store.update_ranges(
        [(s, replace(s, lease=Lease(o, expiry))) for s, o in zip(states, owners, strict=True) if o]
    )
    backfill = _fake_backfill(
        store, run, _Fakes(store, run, [1] * 4, 4), monkeypatch, threading.Event()
    )
    backfill.reclaim()
    after = {s.number: s.lease.owner for s in store.list_ranges(run)}
    assert after == {0: None, 1: None, 2: "host-b#0", 3: None}


def test_one_renewal_round_is_one_state_request_and_leases_a_busy_workers_next_range(
    opensearch: OpenSearch, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A state write may wait behind every bulk request queued in OpenSearch: one per
    round, whatever the number of workers, and none for a busy worker's next lease."""
    from sync.jobs.backfill import _Renewer, _Worker, plan_run

    store = StateStore(opensearch, ".ks2os-state", lease_seconds=300)
    run = plan_run(store, "ks.t->t_v1", len(SIZES), restart=False)
    backfill = _fake_backfill(
        store, run, _Fakes(store, run, SIZES, 4), monkeypatch, threading.Event()
    )
    workers = [_Worker(backfill, n) for n in range(2)]
    backfill.workers.extend(workers)
    scanning = []
    for worker in workers:
        assert worker._lease()
        scanning.append(worker.todo.pop(0))  # each is busy with a range, nothing after it
    requests: list[int] = []
    update_ranges = store.update_ranges

    def counted(pairs: list[Any]) -> Any:
        requests.append(len(pairs))
        return update_ranges(pairs)

    monkeypatch.setattr(store, "update_ranges", counted)
    _Renewer(backfill, 1.0).renew()
    assert len(requests) == 1  # both workers' renewals and both next leases
    stored = {s.number: s for s in store.list_ranges(run)}
    nexts = [worker.todo for worker in workers]
    assert all(len(todo) == 1 for todo in nexts) and nexts[0] != nexts[1]
    for worker, current, (following,) in zip(workers, scanning, nexts, strict=True):
        assert stored[current].lease.owner == stored[following].lease.owner == worker.name
        assert following not in scanning


# ---- resume, leases and a slow OpenSearch, through real clients -----------------------------


class GatedProxy:
    """An HTTP proxy in front of osmem that can hold bulk requests to the target index.

    Requests to the state index always pass. Bulk requests to any other index
    are numbered from 0; those numbered in `hold` wait until `open()` (a stuck
    or slow OpenSearch). `holding` is set once one waits; `acknowledged`
    counts the items osmem accepted, `passed` the bulk requests it answered.
    """

    def __init__(self, upstream: str, hold: range) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.hold = hold
        self.gate = threading.Event()
        self.holding = threading.Event()
        self.closing = False
        self.lock = threading.Lock()
        self.bulks = 0
        self.passed = 0
        self.acknowledged = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                answer = proxy.handle(self.command, self.path, body)
                if answer is None:
                    return  # closing: the client is gone
                status, payload = answer
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # a killed client

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def open(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.closing = True
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, bytes] | None:
        data_bulk = path.split("?")[0].endswith("/_bulk") and not path.startswith("/.ks2os-state")
        if data_bulk:
            with self.lock:
                number, self.bulks = self.bulks, self.bulks + 1
            if number in self.hold:
                self.holding.set()
                self.gate.wait(timeout=120)
                if self.closing:
                    return None
        status, payload = self.forward(method, path, body)
        if data_bulk and status == 200:
            items = json.loads(payload)["items"]
            with self.lock:
                self.passed += 1
                self.acknowledged += sum(
                    1 for item in items if 200 <= next(iter(item.values()))["status"] < 300
                )
        return status, payload

    def forward(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {"Content-Type": "application/x-ndjson"} if body else {}
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()


@pytest.fixture
def gated(osmem_clone: Any) -> Iterator[Callable[[range], GatedProxy]]:
    proxies: list[GatedProxy] = []

    def start(hold: range) -> GatedProxy:
        proxies.append(GatedProxy(osmem_clone.url, hold))
        return proxies[-1]

    yield start
    for proxy in proxies:
        proxy.close()


def _wait_for(condition: Callable[[], bool], what: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.05)  # polling an observable condition, with a deadline


def _ranges(opensearch: OpenSearch) -> list[Any]:
    """The backfill ranges of the one run in the state index, as stored now."""
    store = StateStore(opensearch, ".ks2os-state")
    opensearch.indices.refresh(index=".ks2os-state")
    hits = opensearch.search(
        index=".ks2os-state", body={"query": {"term": {"job": "backfill-run"}}}
    )["hits"]["hits"]
    if not hits:
        return []
    run = store.get_run(hits[0]["_source"]["table"])
    return [] if run is None else store.list_ranges(run)


def _in_thread(target: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def call() -> None:
        try:
            out.append(target())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, out


def test_a_lone_backfill_keeps_its_leases_while_opensearch_is_slow(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    gated: Callable[[range], GatedProxy],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bulk request that takes longer than a lease must not cost the worker its
    ranges: the other worker would read them again, and the first one lose them."""
    model = _create_rows(cql, keyspace, 300)
    mapping = _mapping(keyspace)
    proxy = gated(range(0, 1))  # the first bulk request waits
    cfg = make_config(
        opensearch={"hosts": [proxy.url]},
        backfill={"ranges": 8, "workers": 2, "page_size": 10},
        writer={"max_docs": 50},
        state={"lease_seconds": 3},
    )
    with caplog.at_level(logging.INFO):
        thread, out = _in_thread(lambda: run_backfill(cfg, mapping))
        try:
            _wait_for(proxy.holding.is_set, "a bulk request to hold")
            leased = [r.lease.expires_at_ms for r in _ranges(opensearch) if r.lease.owner]
            # Hold it until the leases as they stood have run out, and the other worker
            # (which looks every second) had the chance to take what was not renewed.
            until_ms = max(leased) + 2_000
            _wait_for(lambda: time.time() * 1000 > until_ms, "the leases to run out")
            # They did not run out: renewed all along, while the bulk request waited.
            now_ms = time.time() * 1000
            assert all(r.lease.expires_at_ms > now_ms for r in _ranges(opensearch) if r.lease.owner)
        finally:
            proxy.open()
        thread.join(timeout=120)
    assert not thread.is_alive()
    (summary,) = out
    assert not isinstance(summary, BaseException), summary
    assert summary.complete and summary.rows_read == 300  # every range read once
    assert "lost the lease" not in caplog.text and "taking over" not in caplog.text
    assert all(r.done and r.lease.owner is None for r in _ranges(opensearch))
    assert _indexed(opensearch, mapping.alias) == model


def test_a_killed_backfill_resumes_from_what_was_acknowledged_without_waiting_for_its_leases(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    gated: Callable[[range], GatedProxy],
    tmp_path: Path,
) -> None:
    """Killed while OpenSearch is stuck: what it acknowledged is recorded within seconds
    (progress inside ranges, not only at their end), and a rerun under the same
    worker id reads only the rest, without waiting an hour for its own leases."""
    model = _create_rows(cql, keyspace, 1200)
    mapping_file = tmp_path / "products.toml"
    mapping_file.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "products"\n'
        f'[index]\nalias = "{keyspace.lower()}-products"\n'
    )
    proxy = gated(range(2, 10**6))  # two bulk requests pass; OpenSearch then hangs
    settings: dict[str, dict[str, Any]] = {
        "backfill": {"ranges": 4, "workers": 2, "page_size": 10},
        "writer": {"max_docs": 50},
        "state": {"lease_seconds": 3600, "worker_id": "host-a"},
    }
    make_config(str(mapping_file), opensearch={"hosts": [proxy.url]}, **settings)
    killed_config = tmp_path / "killed.toml"
    (tmp_path / "ks2os.toml").rename(killed_config)
    log_file = tmp_path / "killed.log"
    with log_file.open("w") as log_out:
        process = subprocess.Popen(
            [sys.executable, "-m", "sync", "--config", str(killed_config), "backfill", "--no-cdc"],
            cwd=tmp_path,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            stdout=subprocess.DEVNULL,
            stderr=log_out,
        )
        try:
            _wait_for(
                lambda: proxy.passed == 2 and proxy.holding.is_set(), "two bulks, then a hang"
            )
            acknowledged = proxy.acknowledged
            assert acknowledged == 100

            def recorded() -> int:
                return sum(
                    r.rows for r in _ranges(opensearch) if r.done or r.last_token is not None
                )

            # Page granularity: each worker may hold back part of one page.
            _wait_for(lambda: recorded() >= acknowledged - 2 * 10, "progress to be recorded", 30)
        finally:
            process.kill()
            process.wait()
    at_kill = _ranges(opensearch)
    done_rows = recorded()
    partial = [r for r in at_kill if r.last_token is not None and not r.done]
    assert partial  # progress inside a range, not only at its end
    held = {r.lease.owner for r in at_kill if r.lease.owner is not None}
    assert held and all(owner.startswith("host-a#") for owner in held)  # an hour left on them

    rerun_cfg = make_config(str(mapping_file), **settings)  # same worker id, OpenSearch well
    stop = threading.Event()
    thread, out = _in_thread(lambda: run_backfill(rerun_cfg, load_mapping(mapping_file), stop=stop))
    thread.join(timeout=120)
    if thread.is_alive():  # it waited for its own leases (an hour)
        stop.set()
        thread.join(timeout=60)
        pytest.fail("the rerun waited for the leases its killed predecessor held")
    (summary,) = out
    assert not isinstance(summary, BaseException), summary
    assert summary.complete
    largest_partition = max(sum(1 for k in model if k.startswith(f"{shop}:")) for shop in range(37))
    # It reads what was not recorded, plus at most the partition each partial range stopped in.
    assert summary.rows_read <= 1200 - done_rows + largest_partition * len(partial)
    assert summary.rows_read < 1200
    assert _indexed(opensearch, f"{keyspace.lower()}-products") == model


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


def test_a_partition_with_statics_and_no_rows_is_backfilled_not_a_failure(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    """CQL returns such a partition as one row with null clustering columns: its statics."""
    cql.execute(
        f'CREATE TABLE "{keyspace}"."shelves" ("shop" int, "sku" text, "banner" text static, '
        '"n" int, PRIMARY KEY ("shop", "sku"))'
    )
    cql.execute(f'UPDATE "{keyspace}"."shelves" SET "banner" = \'empty shelf\' WHERE "shop" = 1')
    cql.execute(f'INSERT INTO "{keyspace}"."shelves" ("shop", "sku", "n") VALUES (2, \'x\', 7)')
    mapping = mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": "shelves"},
            "index": {"alias": f"{keyspace.lower()}-shelves"},
        }
    )
    summary = run_backfill(make_config(backfill={"ranges": 2, "workers": 1}), mapping)
    assert summary.complete and summary.rows_read == 2 and summary.dead_lettered == 0
    assert _indexed(opensearch, mapping.alias) == {"2:x": {"shop": 2, "sku": "x", "n": 7}}
    # The statics wait in the partition's document for a row to show them.
    partition = opensearch.get(index=f"{mapping.alias}_v1", id="!p:1")["_source"]
    assert partition["_ks2os"]["statics"] == {"banner": "empty shelf"}
