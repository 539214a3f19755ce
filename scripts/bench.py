"""`make bench`: ks2os measured against its ceilings, as figures and ratios taken in one run.

It starts the local stack (keyspaces_local as a subprocess, osmem-server),
loads a bench table, and measures, in this order:

1. keyspaces_local itself: single-row prepared INSERTs/s (with their CDC
   records counted back over the Streams API) and rows/s of a paged
   token-range scan;
2. the backfill ceilings: a bare cassandra-driver parallel token-range scan,
   and a bare opensearch-py bulk loop of the same documents;
3. `run_backfill` on the same table, as a ratio to the lower ceiling;
4. backfill peak RSS on a table of N/4 rows and one of N rows (subprocesses);
5. the follower draining a backlog of inserts, updates and deletes, as a
   ratio to the lower of two bare ceilings: boto3 GetRecords + decode alone,
   and an opensearch-py bulk of the same documents alone;
6. CDC record -> bulk bytes and row -> bulk bytes on one core (and the
   record path stage by stage);
7. write-acknowledged -> document-readable latency at 1,000 writes/s, with
   `ks2os follow` running as a subprocess (and at a light rate first, to
   show the pipeline's own latency apart from any backlog).

Ratios are taken between figures of the same run, so they hold on a noisy
machine; absolute figures vary with it. The bench never asserts: a piece that
is missing or fails is reported as "not measured: <why>". The results are
printed as a table, then as one JSON line (also written to
`.bench/results.json`).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bench_data
import bench_stack
from bench_stack import Stack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".bench" / "results.json"

ITEMS, QUARTER, EVENTS, LATENCY = "items", "items_quarter", "events", "latency"
BACKFILL_CEILING = "backfill ceiling = min(a, b)"
# The diagnostic backfill run: few ranges, so each range's fixed cost is spread thin.
FEW_RANGES = 8
# What the bare loops ask back of a bulk request: the same as ks2os's writer does.
BULK_FILTER = "errors,items.*.status,items.*.error"


# ------------------------------------------------------------------ results


@dataclass
class Figure:
    """One measured figure, with its target when the design names one."""

    name: str
    value: float | None
    unit: str
    target: str = ""  # e.g. ">= 2000"
    met: bool | None = None  # None: no target
    note: str = ""


@dataclass
class Section:
    key: str
    title: str
    figures: list[Figure] = field(default_factory=list)
    not_measured: str | None = None
    seconds: float = 0.0

    def add(
        self,
        name: str,
        value: float | None,
        unit: str,
        *,
        at_least: float | None = None,
        at_most: float | None = None,
        note: str = "",
    ) -> Figure:
        target, met = "", None
        if at_least is not None:
            target = f">= {_fmt(at_least)}"
            met = value is not None and value >= at_least
        elif at_most is not None:
            target = f"<= {_fmt(at_most)}"
            met = value is not None and value <= at_most
        figure = Figure(name, value, unit, target, met, note)
        self.figures.append(figure)
        return figure

    def value(self, name: str) -> float | None:
        return next((f.value for f in self.figures if f.name == name), None)


class NotMeasured(Exception):
    """A section cannot be measured in this run; the message says why."""


@dataclass
class Bench:
    """What the sections share: options, the stack, scratch files, loaded tables."""

    args: argparse.Namespace
    stack: Stack
    scratch: Path
    config_path: Path
    sections: dict[str, Section] = field(default_factory=dict)
    loaded: dict[str, int] = field(default_factory=dict)  # table -> rows written
    backlog: bench_data.Backlog | None = None

    def cfg(self, extra: dict[str, dict[str, Any]] | None = None) -> Any:
        """The ks2os Config of the run (defaults), or with `extra` keys set."""
        from sync.config import load_config

        return load_config(self.cfg_path(extra), env={})

    def cfg_path(self, extra: dict[str, dict[str, Any]] | None = None) -> Path:
        if not extra:
            return self.config_path
        return bench_data.write_config(
            self.scratch,
            cql_host=self.stack.cql_host,
            cql_port=self.stack.cql_port,
            streams_url=self.stack.streams_url,
            opensearch_url=self.stack.opensearch_url,
            name=f"ks2os-{abs(hash(repr(extra)))}.toml",
            extra=extra,
        )

    def mapping(self, table: str, alias: str) -> Any:
        from sync.mapping import load_mapping

        return load_mapping(bench_data.write_mapping(self.scratch, table, alias))

    def section_value(self, key: str, name: str) -> float | None:
        section = self.sections.get(key)
        return None if section is None else section.value(name)


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# ------------------------------------------------------- 1. keyspaces_local


def measure_emulator(bench: Bench, section: Section) -> None:
    session = bench.stack.session
    rows = bench.args.rows
    bench_stack.create_table(session, ITEMS, cdc=True)
    params = list(bench_data.rows(rows))
    # Written in fifths, so a rate that falls as the table grows shows.
    fifth = max(rows // 5, 1)
    chunks = [params[i : i + fifth] for i in range(0, rows, fifth)]
    rates = [
        len(chunk)
        / bench_stack.write_all(
            session, bench_data.insert_cql(ITEMS), chunk, bench.args.concurrency
        )
        for chunk in chunks
    ]
    bench.loaded[ITEMS] = rows
    seconds = sum(len(chunk) / rate for chunk, rate in zip(chunks, rates, strict=True))
    section.add(
        "single-row INSERT (prepared, LOCAL_QUORUM)",
        rows / seconds,
        "writes/s",
        at_least=2000,
        note=f"{rows} rows, {bench.args.concurrency} in flight; first fifth {rates[0]:,.0f}/s, "
        f"last fifth {rates[-1]:,.0f}/s",
    )
    streams = bench.stack.streams()
    started = time.perf_counter()
    records = bench_stack.count_records(streams, bench_stack.stream_arn(streams, ITEMS))
    section.add(
        "CDC records found for those writes",
        records,
        "records",
        note=f"expected {rows}; counted over all shards in {time.perf_counter() - started:.1f} s",
    )
    section.figures[-1].met = records == rows
    section.figures[-1].target = f"= {rows}"

    statements = bench_stack.range_statements(session, ITEMS, fetch_size=5000)
    started = time.perf_counter()
    scanned = 0
    for token_range in bench_stack.split_ring(8):
        for page in bench_stack.scan_range(session, statements, token_range):
            scanned += len(page)
    seconds = time.perf_counter() - started
    section.add(
        "paged token-range scan (8 ranges in turn, fetch_size 5000)",
        scanned / seconds,
        "rows/s",
        at_least=20000,
        note=f"{scanned} rows",
    )


# --------------------------------------------------------- 2. the ceilings


def measure_backfill_ceilings(bench: Bench, section: Section) -> None:
    _need_table(bench, ITEMS)
    cfg = bench.cfg()
    workers, ranges, page_size = cfg.backfill.workers, cfg.backfill.ranges, cfg.backfill.page_size
    session = bench.stack.session
    statements = bench_stack.range_statements(session, ITEMS, fetch_size=page_size)
    todo: queue.Queue[tuple[int, int]] = queue.Queue()
    for token_range in bench_stack.split_ring(ranges):
        todo.put(token_range)
    pages: list[list[Any]] = []

    def scan_worker() -> None:
        while True:
            try:
                token_range = todo.get_nowait()
            except queue.Empty:
                return
            for page in bench_stack.scan_range(session, statements, token_range):
                pages.append(page)  # list.append is atomic; no lock needed

    seconds = _in_threads(scan_worker, workers)
    scanned = sum(len(p) for p in pages)
    scan_rate = scanned / seconds
    section.add(
        "(a) bare cassandra-driver parallel paged scan",
        scan_rate,
        "rows/s",
        note=f"{workers} threads, {ranges} ranges, fetch_size {page_size}, {scanned} rows",
    )

    bodies = _bulk_bodies(bench, pages, cfg.writer.max_docs)
    pages.clear()  # the documents are built; let the rows go
    with _dropped_after(bench, "bench-items-bulk-ceiling"):
        index = _fresh_index(bench, ITEMS, "bench-items-bulk-ceiling")
        bulk_rate = scanned / _bulk_all(bench, index, bodies, workers)
    section.add(
        "(b) bare opensearch-py bulk of the same documents",
        bulk_rate,
        "docs/s",
        note=f"{workers} threads, {cfg.writer.max_docs} docs per request, NDJSON "
        "pre-serialised, external versions",
    )
    section.add(BACKFILL_CEILING, min(scan_rate, bulk_rate), "rows/s")


def _bulk_bodies(bench: Bench, pages: list[list[Any]], per_request: int) -> list[bytes]:
    """The backfill's own documents for the scanned rows, as NDJSON bulk bodies."""
    from sync.documents import DocumentBuilder, bulk_lines
    from sync.keyspaces import describe_table
    from sync.model import ScanPosition
    from sync.sources.rows import decode_row
    from sync.version import snapshot_version

    session = bench.stack.session
    info = describe_table(session, bench_data.KEYSPACE, ITEMS)
    builder = DocumentBuilder(bench.mapping(ITEMS, "bench-items-bulk-ceiling"), info.key)
    read_at = int(time.time() * 1000)  # the version's value does not change the work
    position = ScanPosition(bench_stack.MIN_TOKEN, bench_stack.MAX_TOKEN, read_at)
    version = snapshot_version(read_at, 5000)
    actions = [
        builder.action_for(decode_row(row, info.key, position, version))
        for page in pages
        for row in page
    ]
    return [bulk_lines(actions[i : i + per_request]) for i in range(0, len(actions), per_request)]


@contextlib.contextmanager
def _dropped_after(bench: Bench, alias: str) -> Iterator[None]:
    """Delete the alias's indexes afterwards: osmem keeps every document in memory (tens of
    KiB each), and later sections should not share the machine with earlier ones' data."""
    try:
        yield
    finally:
        client = bench.stack.opensearch
        with contextlib.suppress(Exception):  # nothing was created
            for name in client.indices.get(index=f"{alias}_v*"):
                client.indices.delete(index=name)


def _fresh_index(bench: Bench, table: str, alias: str) -> str:
    """An index with the settings and mappings the jobs would create for this table."""
    from sync.indices import index_settings_and_mappings

    name = f"{alias}_v1"
    body = index_settings_and_mappings(bench.mapping(table, alias))
    bench.stack.opensearch.indices.create(index=name, body=body)
    return name


def _bulk_all(bench: Bench, index: str, bodies: list[bytes], threads: int) -> float:
    """Send every body with `threads` senders; the seconds it took."""
    client = bench.stack.opensearch
    todo: queue.Queue[bytes] = queue.Queue()
    for body in bodies:
        todo.put(body)
    errors: list[str] = []

    def sender() -> None:
        while True:
            try:
                body = todo.get_nowait()
            except queue.Empty:
                return
            answer = client.bulk(
                body=body,
                index=index,
                params={"filter_path": BULK_FILTER},
            )
            if answer.get("errors"):
                errors.append(json.dumps(answer)[:300])

    seconds = _in_threads(sender, threads)
    if errors:
        raise NotMeasured(f"the bare bulk loop got item errors: {errors[0]}")
    return seconds


def _in_threads(target: Callable[[], None], count: int) -> float:
    """Run `target` in `count` threads; the seconds until all end. Re-raises the first error."""
    failures: list[BaseException] = []

    def guarded() -> None:
        try:
            target()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=guarded, daemon=True) for _ in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if failures:
        raise failures[0]
    return seconds


# --------------------------------------------------------------- 3. backfill


def measure_backfill(bench: Bench, section: Section) -> None:
    _need_table(bench, ITEMS)
    with _dropped_after(bench, "bench-items"):
        _backfill_once(bench, section)


def _backfill_once(bench: Bench, section: Section) -> None:
    cfg = bench.cfg()
    mapping = bench.mapping(ITEMS, "bench-items")
    rate, seconds = _timed_backfill(bench, cfg, mapping)
    section.add(
        "run_backfill",
        rate,
        "rows/s",
        note=f"{bench.loaded[ITEMS]} rows in {seconds:.1f} s (job set-up included), "
        f"{cfg.backfill.workers} workers, {cfg.backfill.ranges} ranges",
    )
    ceiling = bench.section_value("ceilings", BACKFILL_CEILING)
    section.add("backfill / ceiling", ratio(rate, ceiling), "x", at_least=0.9)
    count = _alias_count(bench, mapping.alias)
    expected = bench.loaded[ITEMS]
    section.add("documents found through the alias", count, "docs")
    section.figures[-1].met, section.figures[-1].target = count == expected, f"= {expected}"

    # Diagnostic: the same with few ranges tells a fixed cost per range from a cost per row.
    few = bench.cfg({"backfill": {"ranges": FEW_RANGES}})
    few_mapping = bench.mapping(ITEMS, "bench-items-few-ranges")
    with _dropped_after(bench, few_mapping.alias):
        few_rate, _ = _timed_backfill(bench, few, few_mapping)
    section.add(
        f"  same with {FEW_RANGES} ranges / ceiling",
        ratio(few_rate, ceiling),
        "x",
        note=f"{few_rate:,.0f} rows/s",
    )


def _timed_backfill(bench: Bench, cfg: Any, mapping: Any) -> tuple[float, float]:
    """run_backfill of the items table: (rows/s, seconds); NotMeasured unless complete."""
    from sync.jobs.backfill import run_backfill

    started = time.perf_counter()
    summary = run_backfill(cfg, mapping)
    seconds = time.perf_counter() - started
    expected = bench.loaded[ITEMS]
    if summary.rows_read != expected or summary.written != expected:
        raise NotMeasured(
            f"backfill read {summary.rows_read} and wrote {summary.written} of {expected} rows"
        )
    return summary.rows_read / seconds, seconds


def _alias_count(bench: Bench, alias: str, query: dict[str, Any] | None = None) -> int:
    client = bench.stack.opensearch
    client.indices.refresh(index=alias)
    body = {"query": query} if query else None
    return int(client.count(index=alias, body=body)["count"])


# ------------------------------------------------------- 4. backfill memory

# Peak RSS is read from /proc (VmHWM): getrusage's ru_maxrss survives execve, so a child
# forked from this (large) process would report the parent's size.
_MEMORY_CHILD = r"""
import json, logging, sys
from sync.config import load_config
from sync.jobs import Job
from sync.jobs.backfill import run_backfill
from sync.mapping import load_mapping

def peak_kb():
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1])

logging.basicConfig(level=logging.WARNING)
cfg = load_config(sys.argv[1], env={})
mapping = load_mapping(sys.argv[2])
with Job(cfg, mapping) as job:
    set_up_kb = peak_kb()
    summary = run_backfill(cfg, mapping, job=job)
print(json.dumps({"rows": summary.rows_read, "seconds": summary.seconds,
                  "set_up_kb": set_up_kb, "peak_kb": peak_kb()}))
"""


def measure_backfill_memory(bench: Bench, section: Section) -> None:
    _need_table(bench, ITEMS)
    small_rows = max(bench.loaded[ITEMS] // 4, 1)
    bench_stack.create_table(bench.stack.session, QUARTER, cdc=False)
    bench_stack.write_all(
        bench.stack.session,
        bench_data.insert_cql(QUARTER),
        list(bench_data.rows(small_rows, prefix="quarter")),
        bench.args.concurrency,
    )
    bench.loaded[QUARTER] = small_rows
    # Memory is bounded per page, so it is flat only once every page is full: with the
    # default 64 ranges of 1000-row pages a table under 64,000 rows never fills one, and
    # its pages (and memory) grow with the table. Few ranges and pages small enough that
    # the N/4 table fills several per range compare like with like.
    ranges = FEW_RANGES
    page_size = min(max(small_rows // (ranges * 3), 10), 1000)
    config = bench.cfg_path({"backfill": {"ranges": ranges, "page_size": page_size}})
    small = _backfill_child(bench, config, QUARTER, "bench-memory-small")
    large = _backfill_child(bench, config, ITEMS, "bench-memory-large")
    for label, run in (("N", small), ("4N", large)):
        section.add(
            f"peak RSS, table of {label} = {run['rows']} rows",
            run["peak_kb"] / 1024,
            "MiB",
            note=f"after job set-up {run['set_up_kb'] / 1024:.1f} MiB; "
            f"{run['rows'] / run['seconds']:,.0f} rows/s",
        )
    section.add(
        "peak RSS 4N / N",
        ratio(large["peak_kb"], small["peak_kb"]),
        "x",
        at_most=1.10,
        note=f"backfill.ranges = {ranges}, backfill.page_size = {page_size}, so both tables "
        "fill every page; other settings at their defaults",
    )
    growth_small = small["peak_kb"] - small["set_up_kb"]
    growth_large = large["peak_kb"] - large["set_up_kb"]
    section.add(
        "growth over set-up, 4N / N",
        ratio(growth_large, growth_small),
        "x",
        note=f"{growth_small / 1024:.1f} -> {growth_large / 1024:.1f} MiB",
    )


def _backfill_child(bench: Bench, config: Path, table: str, alias: str) -> dict[str, Any]:
    mapping_path = bench_data.write_mapping(bench.scratch, table, alias)
    with _dropped_after(bench, alias):
        done = subprocess.run(
            [sys.executable, "-c", _MEMORY_CHILD, str(config), str(mapping_path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=600,
        )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise NotMeasured(f"the backfill subprocess exited {done.returncode}: {last}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["rows"] != bench.loaded[table]:
        raise NotMeasured(
            f"the backfill subprocess read {result['rows']} of {bench.loaded[table]} rows"
        )
    return result


# ---------------------------------------------------------- 5. follow drain


def write_backlog(bench: Bench) -> bench_data.Backlog:
    """The follower's backlog on the events table, written once (follow not running)."""
    if bench.backlog is not None:
        return bench.backlog
    session = bench.stack.session
    backlog = bench_data.plan_backlog(bench.args.changes)
    bench_stack.create_table(session, EVENTS, cdc=True)
    write = bench_stack.write_all
    n = bench.args.concurrency
    write(
        session,
        bench_data.insert_cql(EVENTS),
        list(bench_data.rows(backlog.inserts, prefix="event")),
        n,
    )
    write(
        session,
        bench_data.update_cql(EVENTS),
        [bench_data.update_params(i, "event") for i in backlog.updates],
        n,
    )
    write(
        session,
        bench_data.delete_cql(EVENTS),
        [bench_data.key_params(i, "event") for i in backlog.deletes],
        n,
    )
    bench.loaded[EVENTS] = backlog.inserts
    bench.backlog = backlog
    return backlog


def measure_follow_drain(bench: Bench, section: Section) -> None:
    backlog = write_backlog(bench)
    mapping = bench.mapping(EVENTS, "bench-events")
    with _dropped_after(bench, mapping.alias):
        rate, seconds = _drain(bench, mapping, backlog)
        section.add(
            "run_follow draining the backlog",
            rate,
            "records/s",
            note=f"{backlog.changes} changes ({backlog.inserts} inserts, "
            f"{len(backlog.updates)} updates, {len(backlog.deletes)} deletes), "
            f"{seconds:.1f} s from start (job set-up included)",
        )
        _check_events(bench, section, mapping.alias, backlog)
    read_rate, bulk_rate, records = _follow_ceilings(bench, mapping)
    section.add(
        "(a) bare boto3 GetRecords + decode_record + DocumentBuilder",
        read_rate,
        "records/s",
        note=f"one thread per shard, get_records(maxResults=1000), {records} records",
    )
    section.add(
        "(b) bare opensearch-py bulk of the same documents",
        bulk_rate,
        "records/s",
        note="one thread per shard, one request per GetRecords page, in stream order",
    )
    ceiling = min(read_rate, bulk_rate)
    section.add("follow ceiling = min(a, b)", ceiling, "records/s")
    section.add("follow / ceiling", ratio(rate, ceiling), "x", at_least=0.8)


def _drain(bench: Bench, mapping: Any, backlog: bench_data.Backlog) -> tuple[float, float]:
    """Run the follower until it resolved every change of the backlog: (records/s, seconds)."""
    from sync.jobs.follow import run_follow
    from sync.metrics import Metrics

    cfg = bench.cfg()
    metrics = Metrics()
    stop = threading.Event()
    failures: list[BaseException] = []

    def follow() -> None:
        try:
            run_follow(cfg, mapping, stop=stop, metrics=metrics)
        except BaseException as exc:
            failures.append(exc)

    def resolved() -> int:
        return sum(metrics.total(name) for name in ("applied", "stale", "dead_lettered"))

    thread = threading.Thread(target=follow, daemon=True)
    started = time.perf_counter()
    thread.start()
    deadline = started + bench.args.deadline
    while resolved() < backlog.changes and thread.is_alive() and time.perf_counter() < deadline:
        time.sleep(0.02)  # polling an observable counter, not standing in for a sync point
    seconds = time.perf_counter() - started
    done = resolved()
    stop.set()
    thread.join(60)
    if failures:
        raise NotMeasured(f"run_follow failed: {type(failures[0]).__name__}: {failures[0]}")
    if done < backlog.changes:
        raise NotMeasured(
            f"the follower resolved {done} of {backlog.changes} changes "
            f"within {bench.args.deadline:.0f} s"
        )
    return backlog.changes / seconds, seconds


def _check_events(bench: Bench, section: Section, alias: str, backlog: bench_data.Backlog) -> None:
    """The index must show the backlog's end state: live rows, and the updates applied."""
    live = _alias_count(bench, alias)
    updated = _alias_count(bench, alias, {"range": {"qty": {"gte": bench_data.UPDATED_QTY_FLOOR}}})
    ok = live == backlog.live_rows and updated == backlog.updated_live_rows
    section.add(
        "end state: live / updated documents",
        live,
        "docs",
        note=f"updated {updated}; expected {backlog.live_rows} live, "
        f"{backlog.updated_live_rows} updated",
    )
    section.figures[-1].met = ok
    section.figures[-1].target = f"= {backlog.live_rows}"


def _follow_ceilings(bench: Bench, mapping: Any) -> tuple[float, float, int]:
    """(a) GetRecords + decode + build alone, (b) bulk of those documents alone: records/s each.

    One thread per shard in both, as the follower runs. Each shard's bodies are sent in
    stream order by that shard's thread, so no item comes back 409.
    """
    from sync.documents import DocumentBuilder, bulk_lines
    from sync.keyspaces import describe_table
    from sync.model import StreamPosition
    from sync.sources.records import decode_record
    from sync.version import next_stream_version

    info = describe_table(bench.stack.session, bench_data.KEYSPACE, EVENTS)
    builder = DocumentBuilder(mapping, info.key)
    arn = bench_stack.stream_arn(bench.stack.streams(), EVENTS)
    shards: queue.Queue[str] = queue.Queue()
    for shard in bench_stack.shard_ids(bench.stack.streams(), arn):
        shards.put(shard)
    shard_count = shards.qsize()
    per_shard: queue.Queue[tuple[int, list[bytes]]] = queue.Queue()

    def reader() -> None:
        streams = bench.stack.streams()
        shard = shards.get_nowait()
        version, total, bodies = 0, 0, []
        for records in bench_stack.read_shard(streams, arn, shard):
            actions = []
            for record in records:
                created_ms = _epoch_ms(record["createdAt"])
                version = next_stream_version(created_ms, version)
                position = StreamPosition(
                    arn, shard, record["sequenceNumber"], created_ms, record.get("origin", "USER")
                )
                change = decode_record(record, info.key, position, version)
                actions.append(builder.action_for(change))
            bodies.append(bulk_lines(actions))
            total += len(records)
        per_shard.put((total, bodies))

    read_seconds = _in_threads(reader, shard_count)
    shard_bodies = [per_shard.get_nowait() for _ in range(shard_count)]
    records = sum(total for total, _ in shard_bodies)
    client = bench.stack.opensearch
    errors: list[str] = []
    with _dropped_after(bench, "bench-events-ceiling"):
        index = _fresh_index(bench, EVENTS, "bench-events-ceiling")
        todo: queue.Queue[list[bytes]] = queue.Queue()
        for _, bodies in shard_bodies:
            todo.put(bodies)

        def sender() -> None:
            for body in todo.get_nowait():
                answer = client.bulk(body=body, index=index, params={"filter_path": BULK_FILTER})
                if answer.get("errors"):
                    errors.append(json.dumps(answer)[:300])

        bulk_seconds = _in_threads(sender, shard_count)
    if errors:
        raise NotMeasured(f"the bare bulk loop got item errors: {errors[0]}")
    return records / read_seconds, records / bulk_seconds, records


def _epoch_ms(value: Any) -> int:
    if isinstance(value, dt.datetime):
        return int(value.timestamp() * 1000)
    return int(float(value) * 1000)


# ------------------------------------------------------- 6. record -> bytes


def measure_codec(bench: Bench, section: Section) -> None:
    from sync.documents import DocumentBuilder, bulk_lines
    from sync.keyspaces import describe_table
    from sync.model import ScanPosition, StreamPosition
    from sync.sources.records import decode_record
    from sync.sources.rows import decode_row
    from sync.version import next_stream_version, snapshot_version

    table = EVENTS if bench.backlog is not None else ITEMS
    _need_table(bench, table)
    info = describe_table(bench.stack.session, bench_data.KEYSPACE, table)
    builder = DocumentBuilder(bench.mapping(table, f"bench-codec-{table}"), info.key)
    streams = bench.stack.streams()
    arn = bench_stack.stream_arn(streams, table)
    records = bench_stack.fetch_records(streams, arn, bench.args.codec_records)
    if not records:
        raise NotMeasured(f"no CDC records in the {table} stream")
    # The fetched records are bench fixtures a follower never holds at once; without
    # this, full collections walk them again and again and the figure measures that.
    gc.collect()
    gc.freeze()
    view = info.view_type or "NEW_AND_OLD_IMAGES"
    shard = "shardId-00000000000000000000-bench"
    per_request = 1000

    def records_to_bytes() -> int:
        version, size, actions = 0, 0, []
        for record in records:
            created_ms = _epoch_ms(record["createdAt"])
            version = next_stream_version(created_ms, version)
            position = StreamPosition(
                arn, shard, record["sequenceNumber"], created_ms, record.get("origin", "USER")
            )
            actions.append(
                builder.action_for(decode_record(record, info.key, position, version, view))
            )
            if len(actions) == per_request:
                size += len(bulk_lines(actions))
                actions = []
        return size + len(bulk_lines(actions))

    rate, size = _tight_loop(records_to_bytes, len(records), bench.args.codec_seconds)
    section.add(
        "CDC record -> bulk bytes (decode_record + action_for + bulk_lines)",
        rate,
        "records/s",
        at_least=50_000,
        note=f"{len(records)} real records of {table} (parsed by boto3), "
        f"{size / len(records):.0f} bulk bytes each, one thread",
    )

    # The same work stage by stage, to show where the time goes.
    changes: list[Any] = []

    def decode_only() -> int:
        changes.clear()
        version = 0
        for record in records:
            created_ms = _epoch_ms(record["createdAt"])
            version = next_stream_version(created_ms, version)
            position = StreamPosition(
                arn, shard, record["sequenceNumber"], created_ms, record.get("origin", "USER")
            )
            changes.append(decode_record(record, info.key, position, version, view))
        return 0

    actions: list[Any] = []

    def build_only() -> int:
        actions[:] = [builder.action_for(change) for change in changes]
        return 0

    def serialise_only() -> int:
        return sum(
            len(bulk_lines(actions[i : i + per_request]))
            for i in range(0, len(actions), per_request)
        )

    stage_seconds = bench.args.codec_seconds / 3
    for name, work in (
        ("  stage: decode_record (+ version, position)", decode_only),
        ("  stage: DocumentBuilder.action_for", build_only),
        ("  stage: bulk_lines", serialise_only),
    ):
        section.add(name, _tight_loop(work, len(records), stage_seconds)[0], "records/s")

    statements = bench_stack.range_statements(bench.stack.session, table, fetch_size=5000)
    rows = [
        r
        for page in bench_stack.scan_range(
            bench.stack.session, statements, (bench_stack.MIN_TOKEN, bench_stack.MAX_TOKEN)
        )
        for r in page
    ][: bench.args.codec_records]
    position = ScanPosition(bench_stack.MIN_TOKEN, bench_stack.MAX_TOKEN, int(time.time() * 1000))
    version = snapshot_version(position.read_at_ms, 5000)

    def rows_to_bytes() -> int:
        size, actions = 0, []
        for row in rows:
            actions.append(builder.action_for(decode_row(row, info.key, position, version)))
            if len(actions) == per_request:
                size += len(bulk_lines(actions))
                actions = []
        return size + len(bulk_lines(actions))

    rate, size = _tight_loop(rows_to_bytes, len(rows), bench.args.codec_seconds)
    section.add(
        "CQL row -> bulk bytes (decode_row + action_for + bulk_lines)",
        rate,
        "rows/s",
        note=f"{len(rows)} driver rows, {size / max(len(rows), 1):.0f} bulk bytes each",
    )


def _tight_loop(work: Callable[[], int], items: int, seconds: float) -> tuple[float, int]:
    """Repeat `work` for about `seconds`; the best pass's items/s and its output bytes."""
    best, size = 0.0, 0
    until = time.perf_counter() + seconds
    while True:
        started = time.perf_counter()
        size = work()
        elapsed = time.perf_counter() - started
        best = max(best, items / elapsed)
        if time.perf_counter() >= until:
            return best, size


# ---------------------------------------------------------------- 7. latency


@dataclass
class _Probe:
    doc_id: str
    acked_at: float  # monotonic
    offset_s: float  # when the write was sent, from the start of the run


@dataclass
class _LatencyRun:
    rate: float
    sent: int
    seconds: float
    errors: int
    samples: list[tuple[float, float]]  # (offset_s, ms), in the order they became readable
    missing: int

    def sorted_ms(self, first_s: float | None = None) -> list[float]:
        return sorted(ms for offset, ms in self.samples if first_s is None or offset < first_s)


def measure_latency(bench: Bench, section: Section) -> None:
    session = bench.stack.session
    bench_stack.create_table(session, LATENCY, cdc=True)
    alias = "bench-latency"
    mapping_path = bench_data.write_mapping(bench.scratch, LATENCY, alias)
    log_path = bench.scratch / "follow-latency.log"
    with _follower_process(bench, mapping_path, log_path) as follower:
        insert = session.prepare(bench_data.insert_cql(LATENCY))
        index = _wait_until_following(bench, session, insert, alias, follower, log_path)
        # A light load first: the pipeline's own latency, before any backlog can build.
        light = _latency_run(bench, insert, index, bench.args.light_rate, 5.0, "light")
        full = _latency_run(
            bench, insert, index, bench.args.rate, bench.args.latency_seconds, "lat"
        )
    for run in (light, full):
        if run.errors:
            raise NotMeasured(f"{run.errors} of {run.sent} writes failed at {run.rate:.0f}/s")
        if not run.samples:
            raise NotMeasured(f"no sampled write became readable at {run.rate:.0f}/s")
    found = full.sorted_ms()
    section.add(
        "write rate achieved",
        full.sent / full.seconds,
        "writes/s",
        note=f"target {full.rate:.0f}/s for {bench.args.latency_seconds:.0f} s; "
        f"1 in {_SAMPLE_EVERY} writes sampled",
    )
    for name, q in (("p50", 0.50), ("p95", 0.95), ("p99", 0.99)):
        section.add(
            f"ack -> readable {name}",
            _percentile(found, q),
            "ms",
            at_most=500 if name == "p99" else None,
        )
    section.add(
        "ack -> readable max",
        found[-1],
        "ms",
        note=f"{len(found)} samples; {full.missing} never readable within "
        f"{bench.args.latency_timeout:.0f} s; readable = realtime GET (mget) by id",
    )
    if full.missing:
        section.figures[-1].met = False
    first = full.sorted_ms(first_s=1.0)
    if first:
        section.add("  p50 of the first second's writes", _percentile(first, 0.5), "ms")
    light_found = light.sorted_ms()
    for name, q in (("p50", 0.50), ("p99", 0.99)):
        section.add(
            f"  at {light.rate:.0f} writes/s: ack -> readable {name}",
            _percentile(light_found, q),
            "ms",
            note="" if name == "p50" else f"{len(light_found)} samples over 5 s",
        )


_SAMPLE_EVERY = 10


def _latency_run(
    bench: Bench, insert: Any, index: str, rate: float, duration: float, prefix: str
) -> _LatencyRun:
    probes: queue.Queue[_Probe | None] = queue.Queue()
    poller = _Poller(bench.stack.opensearch, index, probes, timeout_s=bench.args.latency_timeout)
    poller.start()
    sent, seconds, errors = _paced_writes(
        bench.stack.session, insert, rate, duration, prefix, probes
    )
    probes.put(None)
    poller.join(timeout=bench.args.latency_timeout + 30)
    if poller.error is not None:
        raise NotMeasured(f"polling OpenSearch failed: {poller.error}")
    return _LatencyRun(rate, sent, seconds, errors, poller.samples, poller.missing)


def _percentile(ordered: list[float], q: float) -> float:
    if len(ordered) == 1:
        return ordered[0]
    return statistics.quantiles(ordered, n=1000, method="inclusive")[round(q * 1000) - 1]


@contextlib.contextmanager
def _follower_process(bench: Bench, mapping_path: Path, log_path: Path) -> Iterator[Any]:
    """`ks2os follow` as a subprocess (its own GIL), stopped with SIGTERM."""
    argv = [
        sys.executable,
        "-m",
        "sync",
        "--config",
        str(bench.config_path),
        "--log-level",
        "WARNING",
        "--log-format",
        "text",
        "follow",
        "--mapping",
        str(mapping_path),
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            argv, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        try:
            yield process
        finally:
            process.terminate()
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_following(
    bench: Bench, session: Any, insert: Any, alias: str, follower: Any, log_path: Path
) -> str:
    """Write one warm-up row and wait until it is readable; returns the concrete index."""
    client = bench.stack.opensearch
    warm = bench_data.row(10**9, prefix="warm")
    session.execute(insert, warm)
    doc = bench_data.doc_id(warm[0], warm[1])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if follower.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise NotMeasured(f"`ks2os follow` exited {follower.returncode}: {' '.join(tail)}")
        with contextlib.suppress(Exception):  # the alias does not exist until the job made it
            if client.exists(index=alias, id=doc):
                return str(next(iter(client.indices.get_alias(name=alias))))
        time.sleep(0.05)
    raise NotMeasured("the follower did not index a warm-up write within 60 s")


def _paced_writes(
    session: Any,
    insert: Any,
    rate: float,
    duration: float,
    prefix: str,
    probes: queue.Queue[_Probe | None],
) -> tuple[int, float, int]:
    """Write new rows at `rate`/s; every `_SAMPLE_EVERY`-th acked write becomes a probe."""
    total = int(rate * duration)
    errors: list[int] = []
    done = threading.Semaphore(0)

    def on_ack(_: Any, number: int, offset_s: float) -> None:
        acked_at = time.monotonic()
        if number % _SAMPLE_EVERY == 0:
            doc = bench_data.doc_id(bench_data.shop_of(number, prefix), number)
            probes.put(_Probe(doc, acked_at, offset_s))
        done.release()

    def on_error(_: Any) -> None:
        errors.append(1)
        done.release()

    started = time.monotonic()
    for number in range(total):
        offset_s = number / rate
        pause = started + offset_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)  # pacing the write rate, not waiting for a result
        future = session.execute_async(insert, bench_data.row(number, prefix=prefix))
        future.add_callbacks(on_ack, on_error, callback_args=(number, offset_s))
    for _ in range(total):
        done.acquire(timeout=60)
    return total, time.monotonic() - started, len(errors)


class _Poller(threading.Thread):
    """Polls OpenSearch (one mget of every waiting probe) until each probe's doc is readable."""

    def __init__(
        self,
        client: Any,
        index: str,
        probes: queue.Queue[_Probe | None],
        interval_s: float = 0.02,
        timeout_s: float = 30.0,
    ) -> None:
        super().__init__(name="bench-latency-poller", daemon=True)
        self.client, self.index, self.probes = client, index, probes
        self.interval_s, self.timeout_s = interval_s, timeout_s
        self.samples: list[tuple[float, float]] = []  # (offset_s, ms)
        self.missing = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._poll()
        except BaseException as exc:  # reported by the section, not lost with the thread
            self.error = exc

    def _poll(self) -> None:
        waiting: dict[str, _Probe] = {}
        closed = False
        while not closed or waiting:
            closed = self._take(waiting) or closed
            if waiting:
                answer = self.client.mget(
                    index=self.index, body={"ids": list(waiting)}, params={"_source": "false"}
                )
                seen_at = time.monotonic()
                for doc in answer["docs"]:
                    if doc.get("found"):
                        probe = waiting.pop(doc["_id"])
                        self.samples.append((probe.offset_s, (seen_at - probe.acked_at) * 1000))
                for doc_id, probe in list(waiting.items()):
                    if seen_at - probe.acked_at > self.timeout_s:
                        del waiting[doc_id]
                        self.missing += 1
            time.sleep(self.interval_s)

    def _take(self, waiting: dict[str, _Probe]) -> bool:
        """Move new probes into `waiting`; True once the writer said it is done."""
        while True:
            try:
                probe = self.probes.get_nowait()
            except queue.Empty:
                return False
            if probe is None:
                return True
            waiting[probe.doc_id] = probe


# ------------------------------------------------------------------ running


# ------------------------------------------------------ 3b. backfill on Spark


def measure_spark_backfill(bench: Bench, section: Section) -> None:
    """The Spark backfill (local mode, one core per task slot) beside the CLI's, same table."""
    _need_table(bench, ITEMS)
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise NotMeasured(f"PySpark is not installed (the ks2os[spark] extra): {exc}") from None
    from sync.spark import run_spark_backfill

    cli = bench.section_value("backfill", "run_backfill")
    if cli is None:  # section 3 did not run: measure the CLI here, on its own alias
        with _dropped_after(bench, "bench-items-cli"):
            cli, _ = _timed_backfill(bench, bench.cfg(), bench.mapping(ITEMS, "bench-items-cli"))
    cores = os.cpu_count() or 1
    # Loopback only, and this interpreter (with ks2os installed) for the Python workers.
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ["PYSPARK_PYTHON"] = sys.executable
    started = time.perf_counter()
    spark = (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("ks2os-bench")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    section.add("Spark session start", time.perf_counter() - started, "s", note="not counted")
    mapping = bench.mapping(ITEMS, "bench-items-spark")
    try:
        with _dropped_after(bench, mapping.alias):
            started = time.perf_counter()
            # Planned as a Spark user's run would be: 4 ranges per core (keyspaces_local
            # serves no size estimates); each task pays for its own CQL session.
            summary = run_spark_backfill(spark, bench.cfg(), mapping)
            seconds = time.perf_counter() - started
            expected = bench.loaded[ITEMS]
            if not summary.complete or summary.rows_read < expected:
                raise NotMeasured(f"the Spark backfill read {summary.rows_read} of {expected} rows")
            rate = expected / seconds
            section.add(
                "spark backfill",
                rate,
                "rows/s",
                note=f"{expected} rows in {seconds:.1f} s, local[{cores}], {summary.ranges} "
                f"ranges, {summary.waves} waves, {summary.tasks} tasks",
            )
            section.add(
                "spark backfill / CLI backfill",
                ratio(rate, cli),
                "x",
                note=f"CLI {cli:,.0f} rows/s",
            )
            count = _alias_count(bench, mapping.alias)
            section.add("documents found through the alias", count, "docs")
            section.figures[-1].met, section.figures[-1].target = count == expected, f"= {expected}"
    finally:
        spark.stop()


def _need_table(bench: Bench, table: str) -> None:
    if table not in bench.loaded:
        raise NotMeasured(f"the {table} table was not loaded (section 1 did not run)")


SECTIONS: tuple[tuple[str, str, Callable[[Bench, Section], None]], ...] = (
    ("emulator", "1. keyspaces_local", measure_emulator),
    ("ceilings", "2. backfill ceilings", measure_backfill_ceilings),
    ("backfill", "3. backfill throughput", measure_backfill),
    ("spark", "3b. backfill on Spark", measure_spark_backfill),
    ("memory", "4. backfill memory", measure_backfill_memory),
    ("follow", "5. follower drain", measure_follow_drain),
    ("codec", "6. record -> bytes, one core", measure_codec),
    ("latency", "7. ack -> readable latency", measure_latency),
)


def run_section(
    bench: Bench, key: str, title: str, measure: Callable[[Bench, Section], None]
) -> Section:
    section = Section(key, title)
    bench.sections[key] = section
    print(f"bench: {title} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        measure(bench, section)
    except NotMeasured as exc:
        section.not_measured = str(exc)
    except ImportError as exc:
        section.not_measured = f"code not there yet ({exc})"
    except Exception as exc:
        section.not_measured = f"failed: {type(exc).__name__}: {exc}"
        if bench.args.verbose:
            traceback.print_exc()
    section.seconds = time.perf_counter() - started
    return section


def print_table(sections: list[Section]) -> None:
    width = 64
    for section in sections:
        print(f"\n{section.title}  ({section.seconds:.0f} s)")
        if section.not_measured:
            print(f"  not measured: {section.not_measured}")
        for f in section.figures:
            value = "-" if f.value is None else _fmt(f.value)
            verdict = "" if f.met is None else ("  ok" if f.met else "  BELOW TARGET")
            target = f"  (target {f.target})" if f.target else ""
            print(f"  {f.name:<{width}} {value:>10} {f.unit}{target}{verdict}")
            if f.note:
                print(f"  {'':<{width}}   {f.note}")


def results_json(bench: Bench, started: float) -> dict[str, Any]:
    return {
        "bench": "ks2os",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "options": {k: v for k, v in vars(bench.args).items() if k != "verbose"},
        "cpus": os.cpu_count(),
        "sections": {
            key: {
                "title": s.title,
                "not_measured": s.not_measured,
                "figures": [asdict(f) for f in s.figures],
            }
            for key, s in bench.sections.items()
        },
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--rows", type=int, default=25_000, help="rows of the bench table, N (default 25000)"
    )
    parser.add_argument(
        "--changes",
        type=int,
        default=None,
        help="changes in the follower's backlog (default rows / 2)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="CQL writes in flight")
    parser.add_argument("--rate", type=float, default=1000.0, help="writes/s of the latency run")
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument(
        "--light-rate", type=float, default=200.0, help="writes/s of the light latency run"
    )
    parser.add_argument(
        "--latency-timeout",
        type=float,
        default=30.0,
        help="a sampled write not readable after this long counts as missing",
    )
    parser.add_argument("--codec-records", type=int, default=20_000)
    parser.add_argument("--codec-seconds", type=float, default=3.0)
    parser.add_argument(
        "--deadline",
        type=float,
        default=180.0,
        help="longest wait for the follower to drain its backlog, seconds",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=[k for k, _, _ in SECTIONS],
        help="run only this section (repeatable); 1 always runs to load data",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small smoke run (~1 minute): 4000 rows, shorter loops",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of failures")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 4000)
        args.latency_seconds = min(args.latency_seconds, 3.0)
        args.codec_records = min(args.codec_records, 2000)
        args.codec_seconds = min(args.codec_seconds, 1.0)
    if args.changes is None:
        args.changes = max(args.rows // 2, 10)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    # Expected 404s/409s of the jobs' own requests would bury the report.
    for noisy in ("cassandra", "opensearch"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    started = time.perf_counter()
    print("bench: starting keyspaces_local (subprocess) and osmem-server ...", file=sys.stderr)
    try:
        stack = Stack.start()
    except Exception as exc:
        print(f"bench: not measured: the local stack did not start: {exc}", file=sys.stderr)
        return 1
    try:
        with tempfile.TemporaryDirectory(prefix="ks2os-bench-") as scratch:
            directory = Path(scratch)
            config = bench_data.write_config(
                directory,
                cql_host=stack.cql_host,
                cql_port=stack.cql_port,
                streams_url=stack.streams_url,
                opensearch_url=stack.opensearch_url,
            )
            bench = Bench(args, stack, directory, config)
            bench_stack.create_keyspace(stack.session)
            for key, title, measure in SECTIONS:
                if args.only and key != "emulator" and key not in args.only:
                    continue
                run_section(bench, key, title, measure)
    finally:
        stack.close()
    results = results_json(bench, started)
    print_table(list(bench.sections.values()))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, separators=(",", ":")))
    print(f"bench: written to {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
