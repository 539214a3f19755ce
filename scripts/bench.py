"""`make bench`: ks2os's own cost, against limits measured in the same run, as ratios.

Absolute rates move threefold between machines (and with the load of a shared
one), so every goal is a ratio to a limit measured beside it; the absolute
figures are printed next to the ratios. It starts the local stack
(keyspaces_local as a subprocess, osmem-server), loads a bench table, and
measures, in this order:

1. keyspaces_local itself: single-row prepared INSERTs/s (with their CDC
   records counted back over the Streams API) and rows/s of a paged
   token-range scan;
2. the backfill ceilings: a bare cassandra-driver parallel token-range scan,
   and a bare opensearch-py bulk loop of the same documents (1,000 a request:
   the backfill's batch shape);
3. `run_backfill` on the same table, as a ratio to the lower ceiling;
4. backfill peak RSS on a table of N/4 rows and one of N rows (subprocesses);
5. `ks2os follow` (a subprocess) draining a backlog of inserts, updates and
   deletes: records/s against the bulk ceiling of 2., and records per
   CPU-second of the process; then the read side alone, and the sink's ceiling
   with one bulk per GetRecords page (the shape the follower sent before its
   writer stage; the latency section drives writes at half of it);
6. GetRecords bodies (the emulator's real replies) -> bulk bytes on one core,
   against `orjson.loads` of the same bodies (the parse limit: the least any
   Python consumer pays that materialises the records), stage by stage;
7. `ks2os backfill` and a bare driver scan of the same table, each a process:
   rows per CPU-second;
8. write-acknowledged -> document-readable latency with `ks2os follow`
   running as a subprocess, at half the sink's ceiling of 5. (and at a light
   rate first), then the follower's idle polling (Streams API requests/s with
   nothing written, counted by a proxy process in front of the emulator).

No figure is divided by osmem-server's own ceiling any more except where the
goal names the sink (the drain against the bulk ceiling, the latency rate):
osmem is slow and the old "follower / min(read, bulk)" ratio measured osmem.
The bench never asserts: a piece that is missing or fails is reported as
"not measured: <why>". The results are printed as a table, then the goals as
a Markdown table, then as one JSON line (also written to `.bench/results.json`,
whose top-level keys are the goals' figures and the absolute ones behind them).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import logging
import os
import platform
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
import bench_procs
import bench_stack
from bench_stack import Stack

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".bench" / "results.json"

ITEMS, QUARTER, EVENTS, LATENCY = "items", "items_quarter", "events", "latency"
BACKFILL_CEILING = "backfill ceiling = min(a, b)"
BULK_CEILING = "(b) bare opensearch-py bulk of the same documents"
DRAIN_TO_BULK = "follower drain / bare bulk ceiling (backfill's batch shape)"
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
        BULK_CEILING,
        bulk_rate,
        "docs/s",
        note=f"{workers} threads, {cfg.writer.max_docs} docs per request, NDJSON "
        "pre-serialised, external versions",
    )
    section.add(BACKFILL_CEILING, min(scan_rate, bulk_rate), "rows/s")


def _bulk_bodies(bench: Bench, pages: list[list[Any]], per_request: int) -> list[bytes]:
    """The backfill's own documents for the scanned rows, as NDJSON bulk bodies."""
    from sync.bulk import bulk_lines
    from sync.documents import DocumentBuilder
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


FOLLOW_SINK_CEILING = "(b) sink ceiling: bare opensearch-py bulk, one request per GetRecords page"
DRAIN_RATE = "ks2os follow draining the backlog"
FOLLOW_PER_CPU = "ks2os follow: records per CPU-second"


def measure_follow_drain(bench: Bench, section: Section) -> None:
    backlog = write_backlog(bench)
    mapping_path = bench_data.write_mapping(bench.scratch, EVENTS, "bench-events")
    with _dropped_after(bench, "bench-events"):
        drain = _drain_in_process(bench, mapping_path, backlog)
        section.add(
            DRAIN_RATE,
            drain.rate,
            "records/s",
            note=f"{backlog.changes} changes ({backlog.inserts} inserts, "
            f"{len(backlog.updates)} updates, {len(backlog.deletes)} deletes) in "
            f"{drain.seconds:.1f} s after set-up ({drain.setup_s:.1f} s of start-up and set-up "
            "before); a subprocess, timed from outside through its /metrics",
        )
        section.add(
            FOLLOW_PER_CPU,
            backlog.changes / drain.cpu_s if drain.cpu_s else None,
            "records/CPU-s",
            note=f"{drain.cpu_s:.2f} CPU-s (user + system, all threads) from the end of set-up "
            f"to the last change resolved; {drain.setup_cpu_s:.2f} CPU-s of start-up before "
            f"(with it: {backlog.changes / (drain.cpu_s + drain.setup_cpu_s):,.0f}/CPU-s)",
        )
        _check_events(bench, section, "bench-events", backlog)
    if drain.profile is not None and drain.profile.exists():
        top = bench_procs.top_functions(drain.profile)
        section.figures[1].note += "; self time (py-spy): " + ", ".join(
            f"{name} {share:.0%}" for name, share in top
        )
    mapping = bench.mapping(EVENTS, "bench-events")
    read_rate, bulk_rate, records = _follow_ceilings(bench, mapping)
    section.add(
        "(a) read side alone: ShardReader (GetRecords, orjson) + DocumentBuilder",
        read_rate,
        "records/s",
        note=f"one thread per shard, get_records(maxResults=1000), {records} records",
    )
    section.add(
        FOLLOW_SINK_CEILING,
        bulk_rate,
        "docs/s",
        note="one thread per shard, one request per GetRecords page, in stream order; "
        "the latency section drives writes at half of this",
    )
    section.add(
        "follower drain / (b), the same documents",
        ratio(drain.rate, bulk_rate),
        "x",
        note="the backlog's own inserts, updates and deletes, where the ceiling below is "
        "fresh inserts; measured after the drain",
    )
    bulk_ceiling = bench.section_value("ceilings", BULK_CEILING)
    section.add(
        DRAIN_TO_BULK,
        ratio(drain.rate, bulk_ceiling),
        "x",
        at_least=0.8,
        note="" if bulk_ceiling else "section 2 did not measure the bulk ceiling",
    )


@dataclass
class _Drain:
    rate: float  # records/s after set-up
    seconds: float
    setup_s: float
    cpu_s: float  # after set-up
    setup_cpu_s: float
    profile: Path | None = None


def _drain_in_process(bench: Bench, mapping_path: Path, backlog: bench_data.Backlog) -> _Drain:
    """`ks2os follow` as a subprocess until its /metrics show every change resolved.

    Set-up ends when /metrics first answers (the job is set up; reading starts
    next). Its own state index, so no checkpoint of an earlier run is found.
    """
    port = bench_procs.free_port()
    config = bench.cfg_path(
        {"follow": {"metrics_port": port}, "state": {"index": ".ks2os-state-bench-drain"}}
    )
    log_path = bench.scratch / "follow-drain.log"
    profile = RESULTS.parent / "follow-drain-profile.txt" if bench.args.profile else None
    with (
        bench_procs.ks2os(ROOT, config, "follow", mapping_path, log_path) as run,
        bench_procs.profiled(run.process.pid, profile),
    ):
        pid = run.process.pid
        setup_at: float | None = None
        setup_cpu = 0.0
        deadline = run.started + bench.args.deadline
        while True:
            if run.process.poll() is not None:
                raise NotMeasured(f"`ks2os follow` exited {run.process.returncode}: {run.tail()}")
            metrics = bench_procs.scrape(port)
            now = time.monotonic()
            if metrics is not None:
                if setup_at is None:
                    setup_at, setup_cpu = now, bench_procs.cpu_seconds(pid)
                if bench_procs.resolved(metrics) >= backlog.changes:
                    cpu = bench_procs.cpu_seconds(pid)
                    break
            if now > deadline:
                got = "none (no /metrics)" if metrics is None else bench_procs.resolved(metrics)
                raise NotMeasured(
                    f"the follower resolved {got} of {backlog.changes} changes "
                    f"within {bench.args.deadline:.0f} s"
                )
            time.sleep(
                0.25
            )  # polling /metrics (each scrape costs the follower CPU), not a sync point
    assert setup_at is not None
    seconds = now - setup_at
    return _Drain(
        backlog.changes / seconds,
        seconds,
        setup_at - run.started,
        cpu - setup_cpu,
        setup_cpu,
        profile,
    )


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
    from sync.bulk import bulk_lines
    from sync.documents import DocumentBuilder
    from sync.keyspaces import describe_table
    from sync.sources.streams import ShardReader

    info = describe_table(bench.stack.session, bench_data.KEYSPACE, EVENTS)
    builder = DocumentBuilder(mapping, info.key)
    arn = bench_stack.stream_arn(bench.stack.streams(), EVENTS)
    shards: queue.Queue[str] = queue.Queue()
    for shard in bench_stack.shard_ids(bench.stack.streams(), arn):
        shards.put(shard)
    shard_count = shards.qsize()
    per_shard: queue.Queue[tuple[int, list[bytes]]] = queue.Queue()
    view = info.view_type or "NEW_AND_OLD_IMAGES"

    def reader() -> None:
        shard = shards.get_nowait()
        shard_reader = ShardReader(
            bench.stack.streams(), info, arn, shard, view_type=view, after=None, previous=0
        )
        total, bodies = 0, []
        while True:
            result = shard_reader.read()
            if result.changes:
                bodies.append(bulk_lines([builder.action_for(c) for c in result.changes]))
            total += result.records
            if result.closed or (result.at_tip and not result.records):
                break
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


# ------------------------------------------------------- 6. record -> bytes


PARSE_LIMIT = "parse limit: orjson.loads of the GetRecords bodies"
TRANSFORM = "GetRecords body -> bulk bytes (parse_body + ShardReader.decode + action_for)"
TRANSFORM_TO_LIMIT = "record -> bytes / parse limit"


def measure_codec(bench: Bench, section: Section) -> None:
    """Raw GetRecords bodies -> bulk bytes on one core, against orjson.loads of the same bodies.

    CPU time of this thread (so other processes on the machine do not count), best pass of
    several. The bodies are the emulator's real replies, kept as they came through boto3.
    """
    import orjson
    from botocore.parsers import create_parser

    from sync.bulk import bulk_lines
    from sync.documents import DocumentBuilder
    from sync.keyspaces import describe_table
    from sync.sources.getrecords import parse_body
    from sync.sources.streams import ShardReader

    table = EVENTS if bench.backlog is not None else ITEMS
    _need_table(bench, table)
    info = describe_table(bench.stack.session, bench_data.KEYSPACE, table)
    builder = DocumentBuilder(bench.mapping(table, f"bench-codec-{table}"), info.key)
    streams = bench.stack.streams()
    arn = bench_stack.stream_arn(streams, table)
    bodies = bench_stack.raw_bodies(streams, arn, bench.args.codec_records)
    if not bodies:
        raise NotMeasured(f"no CDC records in the {table} stream")
    records = sum(len(orjson.loads(body)["changeRecords"]) for body in bodies)
    view = info.view_type or "NEW_AND_OLD_IMAGES"
    # Long-lived objects of the bench itself stay out of the collector's way, as a
    # follower's start-up objects would; both loops below run under the same collector.
    gc.collect()
    gc.freeze()

    def loads() -> int:
        for body in bodies:
            orjson.loads(body)
        return 0

    def new_reader() -> Any:
        return ShardReader(
            streams, info, arn, "shardId-bench", view_type=view, after=None, previous=0
        )

    def transform() -> int:
        reader, size = new_reader(), 0
        for body in bodies:
            changes = reader.decode(parse_body(body)["changeRecords"]).changes
            size += len(bulk_lines([builder.action_for(change) for change in changes]))
        return size

    seconds = bench.args.codec_seconds
    # Interleaved, so the limit and the path share whatever the machine is doing meanwhile.
    (limit, _), (rate, size) = _paired_loops(loads, transform, records, 2 * seconds)
    sizes = f"{len(bodies)} bodies, {sum(map(len, bodies)) / records:,.0f} bytes a record"
    section.add(PARSE_LIMIT, limit, "records/s", note=f"{records} real records of {table}; {sizes}")
    section.add(
        TRANSFORM,
        rate,
        "records/s",
        note=f"{size / records:.0f} bulk bytes a record, one bulk body per page",
    )
    section.add(TRANSFORM_TO_LIMIT, ratio(rate, limit), "x", at_least=0.5)

    # What the follower paid before: botocore's shape parser, on the first body alone.
    model = streams.meta.service_model
    parser = create_parser(model.metadata["protocol"])
    shape = model.operation_model("GetRecords").output_shape
    first = len(orjson.loads(bodies[0])["changeRecords"])

    def botocore_parse() -> int:
        parser.parse({"status_code": 200, "headers": {}, "body": bodies[0]}, shape)
        return 0

    section.add(
        "  botocore's shape parser, the body the follower no longer parses",
        _tight_loop(botocore_parse, first, 0.0)[0],
        "records/s",
        note=f"one body of {first} records, one pass",
    )

    # The same work stage by stage, to show where the time goes.
    parsed = [parse_body(body)["changeRecords"] for body in bodies]
    gc.collect()
    gc.freeze()  # the parsed pages are fixtures here: the collector need not walk them
    changes: list[Any] = []

    def parse_only() -> int:
        for body in bodies:
            parse_body(body)
        return 0

    def decode_only() -> int:
        reader = new_reader()
        changes[:] = [c for page in parsed for c in reader.decode(page).changes]
        return 0

    actions: list[Any] = []

    def build_only() -> int:
        actions[:] = [builder.action_for(change) for change in changes]
        return 0

    def serialise_only() -> int:
        return sum(len(bulk_lines(actions[i : i + 1000])) for i in range(0, len(actions), 1000))

    for name, work in (
        ("  stage: parse_body (orjson + createdAt as botocore gives it)", parse_only),
        ("  stage: ShardReader.decode (versions, positions, decode_record)", decode_only),
        ("  stage: DocumentBuilder.action_for", build_only),
        ("  stage: bulk_lines", serialise_only),
    ):
        section.add(name, _tight_loop(work, records, seconds / 3)[0], "records/s")
    _row_to_bytes(bench, section, table, info, builder)


def _row_to_bytes(bench: Bench, section: Section, table: str, info: Any, builder: Any) -> None:
    from sync.bulk import bulk_lines
    from sync.model import ScanPosition
    from sync.sources.rows import decode_row
    from sync.version import snapshot_version

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
            if len(actions) == 1000:
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


def _paired_loops(
    first: Callable[[], int], second: Callable[[], int], items: int, seconds: float
) -> tuple[tuple[float, int], tuple[float, int]]:
    """`_tight_loop` of two works, their passes alternating, for about `seconds` of CPU time
    in all; each one's best pass (items per CPU-second) and output bytes."""
    results = [(0.0, 0), (0.0, 0)]
    until = time.thread_time() + seconds
    while True:
        for index, work in enumerate((first, second)):
            best, _ = results[index]
            started = time.thread_time()
            size = work()
            elapsed = max(time.thread_time() - started, 1e-9)
            results[index] = (max(best, items / elapsed), size)
        if time.thread_time() >= until:
            return results[0], results[1]


def _tight_loop(work: Callable[[], int], items: int, seconds: float) -> tuple[float, int]:
    """Repeat `work` for about `seconds` of this thread's CPU time; the best pass's items per
    CPU-second and its output bytes."""
    best, size = 0.0, 0
    until = time.thread_time() + seconds
    while True:
        started = time.thread_time()
        size = work()
        elapsed = max(time.thread_time() - started, 1e-9)
        best = max(best, items / elapsed)
        if time.thread_time() >= until:
            return best, size


# ------------------------------------------------------ 7. backfill CPU per row

BACKFILL_PER_CPU = "ks2os backfill: rows per CPU-second"
SCAN_PER_CPU = "bare cassandra-driver paged scan: rows per CPU-second"
BACKFILL_CPU_TO_DRIVER = "backfill / bare scan, rows per CPU-second"

_SCAN_CHILD = r"""
import json, queue, sys, threading
sys.path.insert(0, "scripts")
import bench_stack

host, port, table, workers, ranges, page_size = sys.argv[1:7]
cluster = bench_stack.new_cluster(host, int(port))
session = cluster.connect()
statements = bench_stack.range_statements(session, table, fetch_size=int(page_size))
todo = queue.Queue()
for token_range in bench_stack.split_ring(int(ranges)):
    todo.put(token_range)
counts = []

def worker():
    rows = 0
    while True:
        try:
            token_range = todo.get_nowait()
        except queue.Empty:
            counts.append(rows)
            return
        for page in bench_stack.scan_range(session, statements, token_range):
            rows += len(page)

threads = [threading.Thread(target=worker) for _ in range(int(workers))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
cluster.shutdown()
print(json.dumps({"rows": sum(counts)}))
"""


def measure_backfill_cpu(bench: Bench, section: Section) -> None:
    """`ks2os backfill` and a bare driver scan of the same table, each a process; CPU per row.

    Both with everything included: interpreter start, imports, connecting, the
    scan; for ks2os also documents, bulk requests and state writes.
    """
    _need_table(bench, ITEMS)
    expected = bench.loaded[ITEMS]
    cfg = bench.cfg()
    scan = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SCAN_CHILD,
            bench.stack.cql_host,
            str(bench.stack.cql_port),
            ITEMS,
            str(cfg.backfill.workers),
            str(cfg.backfill.ranges),
            str(cfg.backfill.page_size),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    scan_cpu = bench_procs.wait_cpu(scan, 600)
    out, err = scan.communicate()
    if scan.returncode != 0:
        raise NotMeasured(f"the bare scan process exited {scan.returncode}: {err.strip()[-300:]}")
    scanned = json.loads(out.strip().splitlines()[-1])["rows"]
    section.add(
        SCAN_PER_CPU,
        scanned / scan_cpu,
        "rows/CPU-s",
        note=f"{scanned} rows, {scan_cpu:.2f} CPU-s; {cfg.backfill.workers} threads, "
        f"{cfg.backfill.ranges} ranges, fetch_size {cfg.backfill.page_size}",
    )

    alias = "bench-items-cpu"
    mapping_path = bench_data.write_mapping(bench.scratch, ITEMS, alias)
    config = bench.cfg_path({"state": {"index": ".ks2os-state-bench-cpu"}})
    log_path = bench.scratch / "backfill-cpu.log"
    profile = RESULTS.parent / "backfill-profile.txt" if bench.args.profile else None
    with (
        _dropped_after(bench, alias),
        bench_procs.ks2os(ROOT, config, "backfill", mapping_path, log_path) as run,
    ):
        with bench_procs.profiled(run.process.pid, profile):
            cpu = bench_procs.wait_cpu(run.process, 900)
        wall = time.monotonic() - run.started
    if run.process.returncode != 0:
        raise NotMeasured(f"`ks2os backfill` exited {run.process.returncode}: {run.tail()}")
    summary = _last_json_line(log_path)
    rows = int(summary.get("rows_read", 0))
    if rows != expected:
        raise NotMeasured(f"`ks2os backfill` read {rows} of {expected} rows")
    section.add(
        BACKFILL_PER_CPU,
        rows / cpu,
        "rows/CPU-s",
        note=f"{rows} rows, {cpu:.2f} CPU-s in {wall:.1f} s, default settings",
    )
    if profile is not None and profile.exists():
        top = bench_procs.top_functions(profile)
        section.figures[-1].note += "; self time (py-spy): " + ", ".join(
            f"{name} {share:.0%}" for name, share in top
        )
    section.add(BACKFILL_CPU_TO_DRIVER, ratio(rows / cpu, scanned / scan_cpu), "x", at_least=0.5)


def _last_json_line(path: Path) -> dict[str, Any]:
    for line in reversed(path.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            found: dict[str, Any] = json.loads(line)
            return found
    return {}


# ---------------------------------------------------------------- 8. latency


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


LATENCY_P50 = "ack -> readable p50"
LATENCY_P99 = "ack -> readable p99"
IDLE_RATE = "idle polling: Streams API requests/s"


def measure_latency(bench: Bench, section: Section) -> None:
    """Writes at half the sink's ceiling (one request per GetRecords page, section 5), then the
    idle polling cost. The follower's Streams API traffic goes through a counting proxy (a
    process of its own) in front of the emulator."""
    ceiling = bench.section_value("follow", FOLLOW_SINK_CEILING)
    rate = bench.args.rate or (ceiling / 2 if ceiling else None)
    if not rate:
        raise NotMeasured("the sink's ceiling was not measured (section 5) and no --rate given")
    session = bench.stack.session
    bench_stack.create_table(session, LATENCY, cdc=True)
    alias = "bench-latency"
    mapping_path = bench_data.write_mapping(bench.scratch, LATENCY, alias)
    log_path = bench.scratch / "follow-latency.log"
    with bench_procs.proxy_process(bench.stack.streams_url) as proxy:
        config = bench.cfg_path({"keyspaces": {"streams_endpoint": proxy.url}})
        with bench_procs.ks2os(ROOT, config, "follow", mapping_path, log_path) as follower:
            insert = session.prepare(bench_data.insert_cql(LATENCY))
            index = _wait_until_following(bench, session, insert, alias, follower)
            # A light load first: the pipeline's own latency, before any backlog can build.
            light_rate = min(bench.args.light_rate, rate)
            light = _latency_run(bench, insert, index, light_rate, 5.0, "light")
            full = _latency_run(bench, insert, index, rate, bench.args.latency_seconds, "lat")
            idle = _idle_requests(proxy, bench.args.idle_seconds)
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
        note=f"target {full.rate:,.0f}/s "
        + (
            "(--rate)"
            if bench.args.rate
            else f"= half the sink's ceiling of {ceiling:,.0f} docs/s (section 5)"
        )
        + f" for {bench.args.latency_seconds:.0f} s; 1 in {_SAMPLE_EVERY} writes sampled",
    )
    for name, q, goal in (("p50", 0.50, 100), ("p95", 0.95, None), ("p99", 0.99, 500)):
        section.add(f"ack -> readable {name}", _percentile(found, q), "ms", at_most=goal)
    section.add(
        "ack -> readable max",
        found[-1],
        "ms",
        note=f"{len(found)} samples; {full.missing} never readable within "
        f"{bench.args.latency_timeout:.0f} s; readable = realtime GET (mget) by id",
    )
    if full.missing:
        section.figures[-1].met = False
    light_found = light.sorted_ms()
    for name, q in (("p50", 0.50), ("p99", 0.99)):
        section.add(
            f"  at {light.rate:.0f} writes/s: ack -> readable {name}",
            _percentile(light_found, q),
            "ms",
            note="" if name == "p50" else f"{len(light_found)} samples over 5 s",
        )
    per_op = ", ".join(f"{op} {n / idle.seconds:.1f}/s" for op, n in sorted(idle.counts.items()))
    section.add(
        IDLE_RATE,
        sum(idle.counts.values()) / idle.seconds,
        "requests/s",
        note=f"over {idle.seconds:.0f} s with nothing written, "
        f"{bench.stack.shard_count} shards: {per_op or 'none'}",
    )


@dataclass
class _Idle:
    seconds: float
    counts: dict[str, int]


def _idle_requests(proxy: Any, seconds: float) -> _Idle:
    """Streams API requests the follower makes while nothing changes (after the runs)."""
    time.sleep(2.0)  # let the last polls at the runs' tail pass
    before = proxy.counts()
    started = time.monotonic()
    time.sleep(seconds)  # measuring a rate over a span of time, not waiting for an event
    after = proxy.counts()
    spent = time.monotonic() - started
    return _Idle(
        spent, {op: n - before.get(op, 0) for op, n in after.items() if n > before.get(op, 0)}
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


def _wait_until_following(
    bench: Bench, session: Any, insert: Any, alias: str, follower: bench_procs.Ks2os
) -> str:
    """Write one warm-up row and wait until it is readable; returns the concrete index."""
    client = bench.stack.opensearch
    warm = bench_data.row(10**9, prefix="warm")
    session.execute(insert, warm)
    doc = bench_data.doc_id(warm[0], warm[1])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if follower.process.poll() is not None:
            raise NotMeasured(
                f"`ks2os follow` exited {follower.process.returncode}: {follower.tail()}"
            )
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


def measure_partition_shape(bench: Bench, section: Section) -> None:
    """run_backfill of the items table as one document per partition, beside one per row.

    Both runs read the same table one after the other, so their ratio holds on a noisy
    machine; the partition shape writes each partition's document read-modify-write
    (a real-time read, then a conditional write of the whole document).
    """
    from sync.mapping import mapping_from_dict

    _need_table(bench, ITEMS)
    cfg = bench.cfg()
    rows_alias, partitions_alias = "bench-items-by-row", "bench-items-by-partition"
    with _dropped_after(bench, rows_alias):
        row_rate, _ = _timed_backfill(bench, cfg, bench.mapping(ITEMS, rows_alias))
    nested = {name: spec for name, spec in bench_data.FIELDS.items() if name != "shop"}
    properties = {
        "shop": bench_data.FIELDS["shop"],
        "rows": {"type": "nested", "properties": nested},
    }
    mapping = mapping_from_dict(
        {
            "source": {"keyspace": bench_data.KEYSPACE, "table": ITEMS},
            "index": {
                "alias": partitions_alias,
                "settings": {"number_of_shards": 1, "number_of_replicas": 0},
                "mappings": {"properties": properties},
            },
            "document": {"shape": "partition"},
        },
        "bench: the items table by partition",
    )
    with _dropped_after(bench, partitions_alias):
        partition_rate, seconds = _timed_backfill(bench, cfg, mapping)
        documents = _alias_count(bench, partitions_alias)
    section.add("row shape: run_backfill", row_rate, "rows/s")
    section.add(
        "partition shape: run_backfill",
        partition_rate,
        "rows/s",
        note=f"{bench.loaded[ITEMS]} rows into {documents} documents "
        f"({bench_data.ROWS_PER_PARTITION} rows each) in {seconds:.1f} s",
    )
    section.add("partition shape / row shape", ratio(partition_rate, row_rate), "x")


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
    ("follow", "5. follower drain (a subprocess)", measure_follow_drain),
    ("codec", "6. record -> bytes against the parse limit, one core", measure_codec),
    ("cpu", "7. backfill CPU per row against a bare driver scan", measure_backfill_cpu),
    ("latency", "8. ack -> readable latency at half the sink's ceiling", measure_latency),
    ("partitions", "9. partition shape: backfill throughput", measure_partition_shape),
)


@dataclass(frozen=True)
class Headline:
    """A top-level result: a ratio (or latency) with its goal and the figures behind it."""

    key: str
    what: str
    section: str
    figure: str
    goal: str  # ">= 0.5", "<= 100"
    behind: tuple[tuple[str, str, str], ...]  # (json key, section, figure name)


HEADLINES: tuple[Headline, ...] = (
    Headline(
        "transform_to_parse_limit",
        "GetRecords body -> bulk bytes / orjson.loads of the bodies, one core",
        "codec",
        TRANSFORM_TO_LIMIT,
        ">= 0.5",
        (
            ("transform_records_per_s", "codec", TRANSFORM),
            ("parse_limit_records_per_s", "codec", PARSE_LIMIT),
        ),
    ),
    Headline(
        "follow_cpu_to_parse_limit",
        "ks2os follow records per CPU-second / parse limit",
        "",
        "",
        ">= 0.3",
        (
            ("follow_records_per_cpu_s", "follow", FOLLOW_PER_CPU),
            ("parse_limit_records_per_s", "codec", PARSE_LIMIT),
        ),
    ),
    Headline(
        "backfill_cpu_to_driver_limit",
        "ks2os backfill rows per CPU-second / bare driver scan's",
        "cpu",
        BACKFILL_CPU_TO_DRIVER,
        ">= 0.5",
        (
            ("backfill_rows_per_cpu_s", "cpu", BACKFILL_PER_CPU),
            ("driver_scan_rows_per_cpu_s", "cpu", SCAN_PER_CPU),
        ),
    ),
    Headline(
        "follow_drain_to_bulk_ceiling",
        "follower draining a backlog / bare bulk ceiling (backfill's batch shape)",
        "follow",
        DRAIN_TO_BULK,
        ">= 0.8",
        (
            ("follow_drain_records_per_s", "follow", DRAIN_RATE),
            ("bulk_ceiling_docs_per_s", "ceilings", BULK_CEILING),
        ),
    ),
    Headline(
        "latency_p50_ms_at_half_ceiling",
        "ack in Keyspaces -> readable, p50, at half the sink's ceiling",
        "latency",
        LATENCY_P50,
        "<= 100",
        (
            ("latency_writes_per_s", "latency", "write rate achieved"),
            ("sink_ceiling_follower_shape_docs_per_s", "follow", FOLLOW_SINK_CEILING),
        ),
    ),
    Headline(
        "latency_p99_ms_at_half_ceiling",
        "ack in Keyspaces -> readable, p99, at half the sink's ceiling",
        "latency",
        LATENCY_P99,
        "<= 500",
        (),
    ),
    Headline(
        "backfill_ratio",
        "backfill / min(bare driver scan, bare bulk loop)",
        "backfill",
        "backfill / ceiling",
        ">= 0.9",
        (
            ("backfill_rows_per_s", "backfill", "run_backfill"),
            ("backfill_ceiling_rows_per_s", "ceilings", BACKFILL_CEILING),
        ),
    ),
    Headline(
        "backfill_rss_4x_over_1x",
        "backfill peak RSS, table 4x larger",
        "memory",
        "peak RSS 4N / N",
        "<= 1.1",
        (),
    ),
    Headline(
        "idle_streams_requests_per_s",
        "Streams API requests/s of an idle follower",
        "latency",
        IDLE_RATE,
        "",
        (),
    ),
)


def headline_values(bench: Bench) -> tuple[dict[str, float | None], dict[str, str]]:
    """The top-level numbers and, for each one missing, why it was not measured."""
    values: dict[str, float | None] = {}
    why: dict[str, str] = {}

    def take(key: str, section: str, figure: str) -> float | None:
        found = bench.section_value(section, figure)
        values[key] = found
        if found is None and key not in why:
            part = bench.sections.get(section)
            if part is None:
                why[key] = f"section {section} did not run"
            else:
                why[key] = part.not_measured or f"{figure!r} was not measured"
        return found

    for line in HEADLINES:
        for key, section, figure in line.behind:
            take(key, section, figure)
        if line.section:
            take(line.key, line.section, line.figure)
    follow_cpu = values.get("follow_records_per_cpu_s")
    limit = values.get("parse_limit_records_per_s")
    values["follow_cpu_to_parse_limit"] = ratio(follow_cpu, limit)
    if values["follow_cpu_to_parse_limit"] is None:
        why["follow_cpu_to_parse_limit"] = why.get("follow_records_per_cpu_s") or why.get(
            "parse_limit_records_per_s", "not measured"
        )
    return values, why


def goal_met(goal: str, value: float | None) -> bool | None:
    if not goal or value is None:
        return None
    sign, _, bound = goal.partition(" ")
    return value >= float(bound) if sign == ">=" else value <= float(bound)


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def print_headlines(values: dict[str, float | None], why: dict[str, str]) -> None:
    """The goals as a Markdown table (what README's "Measured" section shows)."""
    print("\n| goal | result | figures behind it | |")
    print("| --- | --- | --- | --- |")
    for line in HEADLINES:
        value = values.get(line.key)
        met = goal_met(line.goal, value)
        verdict = "" if met is None else ("met" if met else "**missed**")
        shown = f"not measured: {why.get(line.key, '?')}" if value is None else _fmt(value)
        behind = ", ".join(
            f"{key} {_fmt(v)}" for key, _, _ in line.behind if (v := values.get(key)) is not None
        )
        goal = f" ({line.goal})" if line.goal else ""
        print(f"| {line.what}{goal} | {shown} | {behind} | {verdict} |")


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
    values, why = headline_values(bench)
    return {
        "bench": "ks2os",
        "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        "machine": machine(),
        "options": {k: v for k, v in vars(bench.args).items() if k != "verbose"},
        "cpus": os.cpu_count(),
        **values,
        "goals": {
            line.key: {"goal": line.goal, "met": goal_met(line.goal, values.get(line.key))}
            for line in HEADLINES
            if line.goal
        },
        "not_measured": why,
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
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="writes/s of the latency run (default: half the sink's ceiling from section 5)",
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=10.0, help="span of the idle polling count"
    )
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
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the draining follower and the backfill with py-spy (.bench/*-profile.txt)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="tracebacks of failures")
    args = parser.parse_args(argv)
    if args.quick:
        args.rows = min(args.rows, 4000)
        args.latency_seconds = min(args.latency_seconds, 3.0)
        args.codec_records = min(args.codec_records, 2000)
        args.codec_seconds = min(args.codec_seconds, 1.0)
        args.idle_seconds = min(args.idle_seconds, 3.0)
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
    print(f"\nmachine: {json.dumps(results['machine'])}")
    print_headlines(*headline_values(bench))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, separators=(",", ":")))
    print(f"bench: written to {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
