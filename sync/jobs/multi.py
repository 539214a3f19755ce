"""Several tables in one process: each table's job in its own log context, under one policy.

The jobs stay one table each; this module only runs them side by side or in
turn and keeps what became of each (a `TableRun`: its result, or its error).

- `follow_tables`: every table's follower at once, one thread each, sharing
  one stop event (SIGTERM/SIGINT stops them all; each flushes, checkpoints
  and releases its leases), one `Metrics` (every series is labelled by
  table) and one server on `follow.metrics_port`. Its `/readyz` is ready
  while every table's follower is (each problem line starts with its
  table); its `/healthz` is 200 while any table's follower works.
- `one_after_another`: a job over the tables in turn: `backfill` (each
  table's scan has `backfill.workers` threads, so a process never scans more
  than that many ranges at once; to load tables side by side, run one
  process per table with `--table`), `verify`, `cleanup`. `backfill_tables`
  serves one `backfill.metrics_port` for the whole run.

When a table's job fails (`on_table_failure`):

- `"continue"` (the default): the other tables go on. The failure is logged
  at once (with the table), `ks2os_table_failed{table}` turns 1 and
  `/readyz` names it; the table stays stopped until the process restarts.
  The run's result keeps the error, so the exit code says a table failed.
- `"stop"`: the first failure ends the run: running followers stop as on
  SIGTERM, tables not begun are not begun.

Each table's job runs inside `sync.logs.table_context`, so every line it
logs, in its threads too, carries the field `table`.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from sync.config import Config
from sync.errors import Ks2osError, one_line
from sync.logs import ContextThread, table_context
from sync.mapping import TableMapping
from sync.metrics import Metrics, MetricsServer, Readiness
from sync.tables import table_name

if TYPE_CHECKING:
    from sync.jobs.backfill import BackfillSummary
    from sync.jobs.follow import Follower, FollowSummary

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class TableRun(Generic[T]):
    """What became of one table's job: not begun, its result, or the error it stopped on."""

    mapping: TableMapping
    begun: bool = False
    result: T | None = None
    error: Exception | None = None

    @property
    def table(self) -> str:
        return table_name(self.mapping)

    @property
    def failed(self) -> bool:
        return self.error is not None

    def error_line(self) -> str:
        """The error on one line (a `Ks2osError` with its hint; anything else is a bug)."""
        exc = self.error
        if exc is None:
            return ""
        if isinstance(exc, Ks2osError):
            return one_line(exc)
        return f"unexpected {type(exc).__name__}: {exc} (a bug in ks2os: the log has its traceback)"


def _run(
    run: TableRun[T],
    body: Callable[[TableMapping], T],
    metrics: Metrics | None,
    several: bool,
) -> None:
    """`body` on one table, in its log context; its result or error kept in `run`."""
    run.begun = True
    with table_context(run.table):
        if metrics is not None:
            metrics.table(run.table).job_started()
        try:
            run.result = body(run.mapping)
        except Exception as exc:
            run.error = exc
            if metrics is not None:
                metrics.table(run.table).job_failed()
            if several:  # alone, its error is the run's: the CLI says it (or shows the bug)
                _log_failure(run, exc)


def _log_failure(run: TableRun[T], exc: Exception) -> None:
    if isinstance(exc, Ks2osError):
        log.error("table %s stopped: %s", run.table, one_line(exc))
    else:
        log.exception("table %s stopped on a bug", run.table)


def one_after_another(
    mappings: Sequence[TableMapping],
    body: Callable[[TableMapping], T],
    *,
    on_failure: str,
    stop: threading.Event,
    metrics: Metrics | None = None,
) -> list[TableRun[T]]:
    """`body` on each table in turn; see the module docstring for `on_failure`.

    Tables after a stop (`stop` set, or a failure under `"stop"`) are not begun.
    """
    runs: list[TableRun[T]] = [TableRun(m) for m in mappings]
    _in_turn(runs, body, on_failure, stop, metrics)
    return runs


def _in_turn(
    runs: Sequence[TableRun[T]],
    body: Callable[[TableMapping], T],
    on_failure: str,
    stop: threading.Event,
    metrics: Metrics | None,
) -> None:
    for run in runs:
        if stop.is_set():
            return
        _run(run, body, metrics, several=len(runs) > 1)
        if run.failed and on_failure == "stop":
            return


def backfill_tables(
    cfg: Config,
    mappings: Sequence[TableMapping],
    *,
    stop: threading.Event,
    restart: bool = False,
    require_cdc: bool = True,
    metrics: Metrics | None = None,
) -> list[TableRun[BackfillSummary]]:
    """`run_backfill` of each table in turn, one metrics server for the whole run."""
    from sync.jobs.backfill import run_backfill

    metrics = metrics or Metrics()
    runs: list[TableRun[BackfillSummary]] = [TableRun(m) for m in mappings]
    server = None
    if cfg.backfill.metrics_port:
        board = _Board(runs, followers=False)
        server = MetricsServer(
            metrics,
            cfg.backfill.metrics_port,
            board.healthy,
            host=cfg.backfill.metrics_host,
            ready=board.readiness,
            setting="backfill.metrics_port",
        ).start()
    # Each table's backfill would serve the port itself; this run serves it once for all.
    each = dataclasses.replace(cfg, backfill=dataclasses.replace(cfg.backfill, metrics_port=None))

    def backfill(mapping: TableMapping) -> BackfillSummary:
        return run_backfill(
            each, mapping, restart=restart, stop=stop, require_cdc=require_cdc, metrics=metrics
        )

    try:
        _in_turn(runs, backfill, cfg.on_table_failure, stop, metrics)
    finally:
        if server is not None:
            server.stop()
    return runs


def follow_tables(
    cfg: Config,
    mappings: Sequence[TableMapping],
    *,
    stop: threading.Event,
    metrics: Metrics | None = None,
    server_started: Callable[[MetricsServer], None] | None = None,
) -> list[TableRun[FollowSummary]]:
    """Every table's follower at once until `stop` is set (or each has failed).

    `server_started` is told the metrics server once it listens (tests read its port).
    """
    from sync.jobs.follow import run_follow

    metrics = metrics or Metrics()
    runs: list[TableRun[FollowSummary]] = [TableRun(m) for m in mappings]
    board = _Board(runs, followers=True)
    server = None
    if cfg.follow.metrics_port:
        # Before any table starts: a port in use is one line, and nothing has run.
        server = MetricsServer(
            metrics,
            cfg.follow.metrics_port,
            board.healthy,
            host=cfg.follow.metrics_host,
            ready=board.readiness,
        ).start()
        if server_started is not None:
            server_started(server)
    each = dataclasses.replace(cfg, follow=dataclasses.replace(cfg.follow, metrics_port=None))
    several = len(runs) > 1

    def follow(run: TableRun[FollowSummary]) -> None:
        def body(mapping: TableMapping) -> FollowSummary:
            return run_follow(
                each,
                mapping,
                stop=stop,
                metrics=metrics,
                on_start=lambda follower: board.started(run.table, follower),
            )

        _run(run, body, metrics, several)
        if run.failed and cfg.on_table_failure == "stop":
            stop.set()  # the others stop as on SIGTERM: flush, checkpoint, release

    threads = [
        ContextThread(target=follow, args=(run,), name=f"ks2os-follow-{run.table}", daemon=True)
        for run in runs
    ]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            # In slices: the main thread must stay free to run the signal handlers.
            while thread.is_alive():
                thread.join(timeout=1.0)
    finally:
        if server is not None:
            server.stop()
    return runs


class _Board:
    """What the one metrics server says about every table: `/healthz` and `/readyz`."""

    def __init__(self, runs: Sequence[TableRun[T]], *, followers: bool) -> None:
        self._runs = runs
        self._with_followers = followers  # a table is ready once its follower is
        self._followers: dict[str, Follower] = {}
        self._lock = threading.Lock()

    def started(self, table: str, follower: Follower) -> None:
        with self._lock:
            self._followers[table] = follower

    def _follower(self, table: str) -> Follower | None:
        with self._lock:
            return self._followers.get(table)

    def healthy(self) -> bool:
        """Some table's job works (none failed, for a run of one)."""
        for run in list(self._runs):
            follower = self._follower(run.table)
            if not run.failed and (follower is None or follower.healthy):
                return True
        return False

    def readiness(self) -> Readiness:
        problems: list[str] = []
        for run in list(self._runs):
            if run.failed:
                problems.append(f"{run.table}: stopped on an error: {run.error_line()}")
                continue
            if not self._with_followers:
                continue
            follower = self._follower(run.table)
            if follower is not None:
                problems.extend(f"{run.table}: {p}" for p in follower.readiness().problems)
            elif run.result is None:
                problems.append(f"{run.table}: starting")
        return Readiness(tuple(problems))
