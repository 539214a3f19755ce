"""What a running job tells its operators: Prometheus series, `/healthz` and `/readyz`.

One `Metrics` per process holds a `prometheus_client` registry of its own
(several jobs in one process, a follower beside a rebuild's backfill, share
it; tests get a fresh one each). Jobs write through `TableMetrics`, one per
table: every series carries the `table` label, and the follower's lag also
`shard`. Counters are per table, not per shard, because shards come and go
with every split and merge and a months-long process would pile up series;
the lag exists only for the shards this process owns now. No label ever
holds a secret or an unbounded value (a key, a reason text). Every series,
its type, labels and meaning: docs/metrics.md.

**Lag** is what an alert on a follower must read. Per owned shard: 0 while
the shard is at its tip (GetRecords said `iteratorPosition = AT_TIP`, within
the last `TIP_FRESH_MS`) and nothing read is waiting for OpenSearch;
otherwise now minus `createdAt` of the oldest record read and not yet
acknowledged, or, when nothing waits but the shard is behind its tip, of the
last record read (the next one is no older). A reader at its tip that has
had no answer for longer than `TIP_FRESH_MS` (the Streams API unreachable or
throttling, the reader stuck) may be missing anything written since its last
answer: its lag is the time since then. So an idle, healthy follower reads
0, one draining a backlog reads how far behind it is, and one whose writes
or reads are stuck reads a growing age.

**The endpoint** (`MetricsServer`): `/metrics` is `prometheus_client`'s own
WSGI app (text or OpenMetrics, gzip), beside it `/healthz` (the process
works: 200, or 503 once a job failed) and `/readyz` (200 only while the
job's readiness check passes; its body names what does not). A port that
cannot be listened on is a `ConfigError` naming the setting.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.registry import Collector

from sync.bulk import RETRY_REASONS, Traffic
from sync.errors import ConfigError
from sync.model import Change, StreamPosition

# Every counter would get a `_created` twin (its creation time) by default:
# twice the series for nothing an alert or a dashboard here reads.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

# createdAt -> acknowledged: from tens of ms at the tip to hours for a backlog.
CHANGE_LATENCY_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
)  # fmt: skip
BULK_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# An idle shard is polled every follow.idle_poll_ms (250 ms by default): an
# answer older than this means the reader is not getting through.
TIP_FRESH_MS = 10_000


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


# ---- per shard: where its reader is ------------------------------------------------------------


@dataclass
class ShardLag:
    """What the lag of one owned shard is computed from (see the module docstring)."""

    oldest_unacknowledged_ms: int | None = None  # createdAt of the oldest record waiting
    last_read_ms: int | None = None  # createdAt of the last record read
    at_tip: bool = False
    answered_ms: int | None = None  # when the last GetRecords answered (this host's clock)

    def lag_ms(self, now_ms: int) -> int | None:
        """None while nothing is known (the shard's first read has not come back)."""
        if self.oldest_unacknowledged_ms is not None:
            return max(now_ms - self.oldest_unacknowledged_ms, 0)
        if self.at_tip:
            silent = now_ms - (self.answered_ms if self.answered_ms is not None else now_ms)
            return 0 if silent <= TIP_FRESH_MS else silent
        if self.last_read_ms is not None:
            return max(now_ms - self.last_read_ms, 0)
        return None


@dataclass
class FollowTotals:
    """A follower's counts so far (also what its summary and status line show)."""

    records_read: int = 0
    applied: int = 0
    stale: int = 0
    dead_lettered: int = 0
    gaps: int = 0


@dataclass
class BackfillProgress:
    """Where a backfill run is: ranges, rows, rate, share of the token ring done."""

    ranges: int = 0
    ranges_done: int = 0
    rows: int = 0
    rows_per_second: float = 0.0
    done_ratio: float = 0.0


@dataclass
class _Table:
    """Plain numbers beside the Prometheus children, for summaries and the status line."""

    follow: FollowTotals = field(default_factory=FollowTotals)
    shards: dict[str, ShardLag] = field(default_factory=dict)  # owned now
    backfill: BackfillProgress | None = None


class Metrics:
    """Every series of one process, in its own registry; see the module docstring."""

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self.clock_ms = clock_ms or wall_clock_ms
        self.registry = CollectorRegistry(auto_describe=True)
        self._lock = threading.Lock()
        self._tables: dict[str, _Table] = {}
        r, by_table = self.registry, ["table"]
        self.records_read = Counter(
            "ks2os_follow_records_read", "CDC records read from the stream", by_table, registry=r
        )
        self.applied = Counter(
            "ks2os_follow_applied", "changes OpenSearch applied", by_table, registry=r
        )
        self.stale = Counter(
            "ks2os_follow_stale",
            "changes OpenSearch refused as older than what it holds (409): never retried",
            by_table,
            registry=r,
        )
        self.dead_lettered = Counter(
            "ks2os_follow_dead_lettered",
            "changes OpenSearch refused for their content, and records that could not "
            "become changes, stored in the dead-letter store",
            by_table,
            registry=r,
        )
        self.gaps = Counter(
            "ks2os_follow_gaps",
            "gaps met: changes the index needed that the stream no longer holds",
            by_table,
            registry=r,
        )
        self.change_latency = Histogram(
            "ks2os_follow_change_latency_seconds",
            "from a stream record's createdAt to OpenSearch acknowledging its change",
            by_table,
            buckets=CHANGE_LATENCY_BUCKETS,
            registry=r,
        )
        self.bulk_latency = Histogram(
            "ks2os_bulk_request_duration_seconds",
            "duration of one bulk request of documents to OpenSearch (failed ones too)",
            by_table,
            buckets=BULK_LATENCY_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "ks2os_retries",
            "OpenSearch requests of documents retried after a wait, by reason: "
            + ", ".join(RETRY_REASONS),
            ["table", "reason"],
            registry=r,
        )
        self.state_write_errors = Counter(
            "ks2os_state_write_errors",
            "requests to the state index (checkpoints, leases) that failed, retried or not",
            by_table,
            registry=r,
        )
        self.dead_letter_write_errors = Counter(
            "ks2os_dead_letter_write_errors",
            "writes to the dead-letter store that failed, retried or not",
            by_table,
            registry=r,
        )
        self.backfill_rows = Counter(
            "ks2os_backfill_rows_read", "rows the backfill read", by_table, registry=r
        )
        self.backfill_applied = Counter(
            "ks2os_backfill_applied", "rows the backfill wrote to OpenSearch", by_table, registry=r
        )
        self.backfill_stale = Counter(
            "ks2os_backfill_stale",
            "rows OpenSearch already held newer (409): the follower got there first",
            by_table,
            registry=r,
        )
        self.backfill_dead_lettered = Counter(
            "ks2os_backfill_dead_lettered",
            "rows OpenSearch refused for their content, stored in the dead-letter store",
            by_table,
            registry=r,
        )
        self.backfill_ranges = Gauge(
            "ks2os_backfill_ranges", "token ranges in the backfill run", by_table, registry=r
        )
        self.backfill_ranges_done = Gauge(
            "ks2os_backfill_ranges_done", "token ranges of the run done", by_table, registry=r
        )
        self.backfill_rate = Gauge(
            "ks2os_backfill_rows_per_second",
            "rows read per second since this process began the run",
            by_table,
            registry=r,
        )
        self.backfill_done = Gauge(
            "ks2os_backfill_done_ratio",
            "share of the token ring done (0 to 1)",
            by_table,
            registry=r,
        )
        self.table_failed = Gauge(
            "ks2os_table_failed",
            "1 once this table's job stopped on an error while the process goes on with its "
            "other tables (on_table_failure = continue); 0 while it runs",
            by_table,
            registry=r,
        )
        self.registry.register(_ShardCollector(self))

    def table(self, name: str) -> TableMetrics:
        """The series of one table (made at first use; the same object for every caller)."""
        with self._lock:
            self._tables.setdefault(name, _Table())
        return TableMetrics(self, name)

    def exposition(self) -> str:
        """The Prometheus text format of every series (what `/metrics` answers)."""
        return prometheus_client.generate_latest(self.registry).decode()

    # ---- read under the lock, for the collector and the tables ------------------------

    def _with_table(self, name: str, action: Callable[[_Table], Any]) -> Any:
        with self._lock:
            return action(self._tables.setdefault(name, _Table()))

    def _shard_lags(self) -> tuple[int, list[tuple[str, str, int | None]], dict[str, int]]:
        now = self.clock_ms()
        with self._lock:
            lags = [
                (table, shard, lag.lag_ms(now))
                for table, entry in sorted(self._tables.items())
                for shard, lag in sorted(entry.shards.items())
            ]
            owned = {table: len(entry.shards) for table, entry in self._tables.items()}
        return now, lags, owned


class _ShardCollector(Collector):
    """The gauges computed at scrape time: lag (it depends on now) and shards owned."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterable[Metric]:
        return list(self._families([], {}))

    def collect(self) -> Iterable[Metric]:
        _, lags, owned = self._metrics._shard_lags()
        return list(self._families(lags, owned))

    @staticmethod
    def _families(
        lags: list[tuple[str, str, int | None]], owned: dict[str, int]
    ) -> Iterator[Metric]:
        lag = GaugeMetricFamily(
            "ks2os_follow_lag_seconds",
            "0 while the shard is at its tip with nothing waiting; else now minus createdAt "
            "of the oldest record not yet acknowledged by OpenSearch",
            labels=["table", "shard"],
        )
        for table, shard, ms in lags:
            if ms is not None:
                lag.add_metric([table, shard], ms / 1000)
        yield lag
        shards = GaugeMetricFamily(
            "ks2os_follow_shards_owned", "shards this process holds the lease of", labels=["table"]
        )
        for table, count in sorted(owned.items()):
            shards.add_metric([table], count)
        yield shards


class TableMetrics:
    """One table's series; thread-safe. Also the writers' `WriteObserver`."""

    def __init__(self, metrics: Metrics, table: str) -> None:
        self.metrics = metrics
        self.name = table

    # ---- the follower --------------------------------------------------------------

    def shard_taken(self, shard: str) -> None:
        self.metrics._with_table(self.name, lambda t: t.shards.setdefault(shard, ShardLag()))

    def shard_dropped(self, shard: str) -> None:
        """Finished, released or lost: no longer this process's, so no lag series."""
        self.metrics._with_table(self.name, lambda t: t.shards.pop(shard, None))

    def read(
        self,
        shard: str,
        records: int,
        first_created_ms: int | None,
        last_created_ms: int | None,
        at_tip: bool,
    ) -> None:
        """One GetRecords answer: `records` read, the first's and last's `createdAt`."""
        now = self.metrics.clock_ms()

        def update(table: _Table) -> None:
            table.follow.records_read += records
            lag = table.shards.setdefault(shard, ShardLag())
            lag.answered_ms, lag.at_tip = now, at_tip
            if records and lag.oldest_unacknowledged_ms is None:
                lag.oldest_unacknowledged_ms = first_created_ms or last_created_ms
            if last_created_ms is not None:
                lag.last_read_ms = last_created_ms

        self.metrics._with_table(self.name, update)
        if records:
            self.metrics.records_read.labels(self.name).inc(records)

    def acknowledged(self, shard: str, applied: int, stale: int, dead_lettered: int) -> None:
        """Everything read from `shard` so far is written (or stored as a dead letter)."""
        self.written(applied, stale, dead_lettered)
        self.shard_acknowledged(shard, None)

    def written(self, applied: int, stale: int, dead_lettered: int) -> None:
        """Changes resolved: applied, stale (409), stored as dead letters."""

        def update(table: _Table) -> None:
            table.follow.applied += applied
            table.follow.stale += stale
            table.follow.dead_lettered += dead_lettered

        self.metrics._with_table(self.name, update)
        m = self.metrics
        m.applied.labels(self.name).inc(applied)
        m.stale.labels(self.name).inc(stale)
        m.dead_lettered.labels(self.name).inc(dead_lettered)

    def shard_acknowledged(self, shard: str, waiting_since_ms: int | None) -> None:
        """What `shard` read is resolved up to a point: `waiting_since_ms` is `createdAt` of
        its oldest record still waiting for OpenSearch (None: none waits)."""

        def update(table: _Table) -> None:
            lag = table.shards.get(shard)
            if lag is not None:
                lag.oldest_unacknowledged_ms = waiting_since_ms

        self.metrics._with_table(self.name, update)

    def gap(self) -> None:
        def update(table: _Table) -> None:
            table.follow.gaps += 1

        self.metrics._with_table(self.name, update)
        self.metrics.gaps.labels(self.name).inc()

    def totals(self) -> FollowTotals:
        def copy(table: _Table) -> FollowTotals:
            return FollowTotals(**vars(table.follow))

        totals: FollowTotals = self.metrics._with_table(self.name, copy)
        return totals

    def lags_s(self) -> dict[str, float | None]:
        """Each owned shard's lag in seconds (None: not read yet)."""
        now = self.metrics.clock_ms()

        def read(table: _Table) -> dict[str, float | None]:
            out: dict[str, float | None] = {}
            for shard, lag in table.shards.items():
                ms = lag.lag_ms(now)
                out[shard] = None if ms is None else ms / 1000
            return out

        lags: dict[str, float | None] = self.metrics._with_table(self.name, read)
        return lags

    def job_started(self) -> None:
        """The table's job runs: `ks2os_table_failed` is 0 (and the series exists)."""
        self.metrics.table_failed.labels(self.name).set(0)

    def job_failed(self) -> None:
        """The table's job stopped on an error (the process may go on with other tables)."""
        self.metrics.table_failed.labels(self.name).set(1)

    # ---- writers (WriteObserver) and the stores --------------------------------------------

    def retried(self, reason: str) -> None:
        """A writer waits to send documents again, for `reason` (`sync.bulk.retry_reason`)."""
        self.metrics.retries.labels(self.name, reason).inc()

    def wrote(self, acknowledged: Sequence[Change], traffic: Traffic) -> None:
        """After a `BulkWriter.write`: request durations, change latencies."""
        m = self.metrics
        bulk = m.bulk_latency.labels(self.name)
        for seconds in traffic.bulk_seconds:
            bulk.observe(seconds)
        now = m.clock_ms()
        latency = m.change_latency.labels(self.name)
        for change in acknowledged:
            source = change.source
            if isinstance(source, StreamPosition) and source.created_at_ms:
                latency.observe(max(now - source.created_at_ms, 0) / 1000)

    def state_write_failed(self, requests: int = 1) -> None:
        if requests:
            self.metrics.state_write_errors.labels(self.name).inc(requests)

    def dead_letter_write_failed(self, requests: int = 1) -> None:
        if requests:
            self.metrics.dead_letter_write_errors.labels(self.name).inc(requests)

    # ---- the backfill ---------------------------------------------------------------

    def backfill_read(self, rows: int) -> None:
        if rows:
            self.metrics.backfill_rows.labels(self.name).inc(rows)

    def backfill_wrote(self, applied: int, stale: int, dead_lettered: int) -> None:
        m = self.metrics
        m.backfill_applied.labels(self.name).inc(applied)
        m.backfill_stale.labels(self.name).inc(stale)
        m.backfill_dead_lettered.labels(self.name).inc(dead_lettered)

    def backfill_progress(self, progress: BackfillProgress) -> None:
        m = self.metrics
        m.backfill_ranges.labels(self.name).set(progress.ranges)
        m.backfill_ranges_done.labels(self.name).set(progress.ranges_done)
        m.backfill_rate.labels(self.name).set(progress.rows_per_second)
        m.backfill_done.labels(self.name).set(progress.done_ratio)

        def update(table: _Table) -> None:
            table.backfill = progress

        self.metrics._with_table(self.name, update)


# ---- the status line -------------------------------------------------------------------------


def status_line(
    table: str,
    now: FollowTotals,
    before: FollowTotals,
    seconds: float,
    lags: dict[str, float | None],
) -> tuple[str, dict[str, Any]]:
    """The follower's periodic line: message and structured fields (pure)."""
    span = max(seconds, 1e-9)
    read_rate = (now.records_read - before.records_read) / span
    applied_rate = (now.applied - before.applied) / span
    known = [lag for lag in lags.values() if lag is not None]
    max_lag = max(known) if known else None
    lag_text = "unknown" if max_lag is None else f"{max_lag:.1f} s"
    message = (
        f"follow {table}: {now.records_read} records read ({read_rate:.1f}/s), "
        f"{now.applied} applied ({applied_rate:.1f}/s), {now.stale} stale, "
        f"{now.dead_lettered} dead-lettered, {now.gaps} gaps; lag {lag_text} max; "
        f"{len(lags)} shards owned"
    )
    fields: dict[str, Any] = {
        "table": table,
        "records_read": now.records_read,
        "records_per_s": round(read_rate, 1),
        "applied": now.applied,
        "applied_per_s": round(applied_rate, 1),
        "stale": now.stale,
        "dead_lettered": now.dead_lettered,
        "gaps": now.gaps,
        "max_lag_s": None if max_lag is None else round(max_lag, 3),
        "shards_owned": len(lags),
    }
    return message, fields


# ---- readiness and the endpoint ----------------------------------------------------------------


@dataclass(frozen=True)
class Readiness:
    """The answer of `/readyz`: ready, or the reasons it is not (one line each)."""

    problems: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        return not self.problems


class MetricsServer:
    """Serves `/metrics`, `/healthz` and `/readyz` on `host:port` (0: any free port).

    `healthy` says whether the process works; `ready` whether it is doing its
    job (connected, leases held, lag under the threshold). A port that cannot
    be listened on (in use, or privileged) is a `ConfigError` naming it and
    `setting`, raised here, before the job runs.
    """

    def __init__(
        self,
        metrics: Metrics,
        port: int,
        healthy: Callable[[], bool],
        *,
        host: str = "0.0.0.0",
        ready: Callable[[], Readiness] | None = None,
        setting: str = "follow.metrics_port",
    ) -> None:
        app = _App(make_wsgi_app(metrics.registry), healthy, ready or _always_ready)
        server_class = _IPv6Server if ":" in host else ThreadingWSGIServer
        try:
            self._server = make_server(host, port, app, server_class, _QuietHandler)
        except OSError as exc:
            variable = "KS2OS_" + setting.replace(".", "_").upper()
            raise ConfigError(
                f"cannot serve metrics on {host} port {port}: {exc.strerror or exc}",
                hint=f"free the port, or set {setting} ({variable}) to another",
            ) from None
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ks2os-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def _always_ready() -> Readiness:
    return Readiness()


class _App:
    """The WSGI app: the health paths here, everything else to prometheus_client's app."""

    def __init__(
        self,
        metrics_app: Callable[..., Iterable[bytes]],
        healthy: Callable[[], bool],
        ready: Callable[[], Readiness],
    ) -> None:
        self._metrics_app = metrics_app
        self._healthy = healthy
        self._ready = ready

    def __call__(self, environ: dict[str, Any], respond: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/healthz":
            ok = self._healthy()
            return _text(respond, ok, "ok\n" if ok else "unhealthy: the job failed\n")
        if path == "/readyz":
            answer = self._ready()
            body = "ready\n" if answer.ready else "".join(f"{p}\n" for p in answer.problems)
            return _text(respond, answer.ready, body)
        if path in ("/metrics", "/"):
            return self._metrics_app(environ, respond)
        respond("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: /metrics, /healthz, /readyz\n"]


def _text(respond: Callable[..., Any], ok: bool, body: str) -> list[bytes]:
    data = body.encode()
    status = "200 OK" if ok else "503 Service Unavailable"
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(data)))]
    respond(status, headers)
    return [data]


class _IPv6Server(ThreadingWSGIServer):
    """For a bind address like `::` (every IPv6 and, on most systems, IPv4 address)."""

    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # scrapes and probes every few seconds would flood the job's log
