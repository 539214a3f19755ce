"""`backfill`: snapshot the table over CQL and bulk-index every row.

Flow::

    plan (a run: N token ranges, in the state store) -> W worker threads
      each: lease a range -> scan it page by page -> BulkWriter.write(page)
            -> record the last token reached (conditional on the lease)
            -> mark the range done

A run survives the process: started again, the job resumes the table's
unfinished run from the last token each range reached (`restart=True` plans
a new run). Several processes, on several machines, may run the same
backfill at once: each range is leased by one worker, and a crashed worker's
range is taken over once its lease expires. The job returns when every range
of the run is done (or `stop` is set).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TextIO

from sync.config import Config
from sync.jobs import Job
from sync.mapping import TableMapping
from sync.sources.cql import SnapshotScanner, TokenRange, split_ring
from sync.state import BackfillRun, LeaseLost, RangeState, StateStore
from sync.writer import BulkWriter, WriteReport

log = logging.getLogger(__name__)

RING = 2**64 - 1
# How long an idle worker waits before looking again for a range another
# worker holds (it may crash, and its lease then expires).
_RECHECK_S = 1.0


@dataclass
class BackfillSummary:
    run_id: str
    ranges: int
    rows_read: int = 0
    written: int = 0
    stale: int = 0
    dead_lettered: int = 0
    seconds: float = 0.0
    complete: bool = False  # every range of the run is done (False: stopped early)


# ---- progress (pure) ----------------------------------------------------------------


@dataclass
class Progress:
    """Rows/s and ETA from the share of the ring done (ranges done + the current ranges).

    `ranges` maps range number -> its token range; `update` records how far a
    range got. Thread-safe.
    """

    ranges: dict[int, TokenRange]
    clock: float = field(default_factory=time.monotonic)
    _reached: dict[int, float] = field(default_factory=dict)
    _rows: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _start_fraction: float | None = None

    def update(self, number: int, fraction: float, rows: int = 0) -> None:
        with self._lock:
            self._reached[number] = max(self._reached.get(number, 0.0), min(fraction, 1.0))
            self._rows += rows

    def start(self, now: float) -> None:
        with self._lock:
            self.clock = now
            self._start_fraction = self._fraction()

    def _fraction(self) -> float:
        done = sum(self.ranges[n].width * f for n, f in self._reached.items() if n in self.ranges)
        return done / RING

    def estimate(self, now: float) -> tuple[float, float, float | None]:
        """(fraction of the ring done, rows/s since start, seconds left or None)."""
        with self._lock:
            fraction = self._fraction()
            elapsed = max(now - self.clock, 1e-9)
            rate = self._rows / elapsed
            gained = fraction - (self._start_fraction or 0.0)
            eta = None if gained <= 0 else (1.0 - fraction) * elapsed / gained
            return fraction, rate, eta

    @property
    def rows(self) -> int:
        with self._lock:
            return self._rows


def render_bar(fraction: float, rate: float, eta: float | None, width: int = 30) -> str:
    filled = round(fraction * width)
    eta_text = "--:--" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%  "
        f"{rate:,.0f} rows/s  ETA {eta_text}"
    )


class _Reporter(threading.Thread):
    """A progress bar on a terminal (stderr), a log line every few seconds otherwise."""

    def __init__(self, progress: Progress, done: threading.Event, out: TextIO = sys.stderr) -> None:
        super().__init__(name="ks2os-backfill-progress", daemon=True)
        self._progress, self._done, self._out = progress, done, out
        self._tty = out.isatty()

    def run(self) -> None:
        interval = 0.5 if self._tty else 5.0
        while not self._done.wait(interval):
            fraction, rate, eta = self._progress.estimate(time.monotonic())
            if self._tty:
                self._out.write("\r" + render_bar(fraction, rate, eta))
                self._out.flush()
            else:
                log.info(
                    "backfill %.1f%% done, %.0f rows/s, ETA %s s",
                    fraction * 100,
                    rate,
                    "?" if eta is None else f"{eta:.0f}",
                    extra={"rows": self._progress.rows},
                )
        if self._tty:
            self._out.write("\n")
            self._out.flush()


# ---- the run ---------------------------------------------------------------------------


def state_key(job: Job) -> str:
    """Backfill runs are kept per table *and* target index (a reindex fills a new one)."""
    return f"{job.info.qualified_name}->{job.index}"


def plan_run(store: StateStore, key: str, range_count: int, restart: bool) -> BackfillRun:
    """The run to work on: the unfinished current one, or a new one."""
    current = store.get_run(key)
    if current is not None and not current.finished and not restart:
        log.info("resuming backfill run %s (%d ranges)", current.run_id, current.range_count)
        return current
    ranges = [(r.start, r.end) for r in split_ring(range_count)]
    run_id = uuid.uuid4().hex[:12]
    try:
        run = store.start_run(key, run_id, ranges, replacing=current)
    except LeaseLost:
        # Another worker planned at the same moment: work on its run.
        winner = store.get_run(key)
        if winner is None:
            raise
        return winner
    log.info("started backfill run %s with %d ranges", run.run_id, run.range_count)
    return run


class _Backfill:
    def __init__(self, job: Job, run: BackfillRun, stop: threading.Event) -> None:
        self.job, self.run, self.stop = job, run, stop
        settings = job.cfg.backfill
        self.scanner = SnapshotScanner(
            job.session,
            job.info,
            page_size=settings.page_size,
            consistency=job.cfg.keyspaces.read_consistency,
            margin_ms=settings.snapshot_margin_ms,
        )
        ranges = job.store.list_ranges(run)
        self.progress = Progress({r.number: TokenRange(r.range_start, r.range_end) for r in ranges})
        for r in ranges:
            rng = TokenRange(r.range_start, r.range_end)
            self.progress.update(r.number, 1.0 if r.done else rng.fraction_done(r.last_token))
        self.report = WriteReport()
        self._lock = threading.Lock()
        self.errors: list[BaseException] = []
        self.all_done = threading.Event()
        self.failed = threading.Event()  # one worker failed: the others stop too
        # What this process last saw of every range. Leasing tries it first and
        # reads the store again only when nothing in it can be had: a stale
        # entry just fails its conditional write. Saves a read per range.
        self._seen: dict[int, RangeState] = {r.number: r for r in ranges}

    def halted(self) -> bool:
        return self.stop.is_set() or self.failed.is_set()

    def work(self, number: int) -> None:
        """One worker thread: lease ranges until none is left or we are stopped."""
        # Each thread leases under its own name: a lease held by "this
        # process" would let two of its threads take the same range.
        worker = f"{self.job.worker_id}#{number}"
        writer = self.job.new_writer()
        try:
            while not self.halted() and not self.all_done.is_set():
                state = self._lease_next(worker, number)
                if state is None:
                    self.stop.wait(_RECHECK_S)
                    continue
                try:
                    self._scan(state, writer)
                except LeaseLost:
                    log.warning("lost the lease on range %d; dropping it", state.number)
        except BaseException as exc:
            with self._lock:
                self.errors.append(exc)
            self.failed.set()

    def _lease_next(self, worker: str, number: int) -> RangeState | None:
        store = self.job.store
        for fresh in (False, True):
            if fresh:
                self._saw(*store.list_ranges(self.run))
            with self._lock:
                pending = sorted(
                    (s for s in self._seen.values() if not s.done), key=lambda s: s.number
                )
            if not pending:  # done is final: nothing can become pending again
                self.all_done.set()
                return None
            # Threads start looking at different places so they rarely race for one range.
            offset = number * len(pending) // max(self.job.cfg.backfill.workers, 1)
            for state in pending[offset:] + pending[:offset]:
                if not state.lease.free_for(worker, store.now_ms()):
                    continue
                leased = store.acquire_range(state, worker)
                if leased is not None:
                    self._saw(leased)
                    return leased
        return None

    def _saw(self, *states: RangeState) -> None:
        with self._lock:
            for state in states:
                self._seen[state.number] = state

    def _scan(self, state: RangeState, writer: BulkWriter) -> None:
        store = self.job.store
        whole = TokenRange(state.range_start, state.range_end)
        rows, last_token = state.rows, state.last_token
        recorded = time.monotonic()
        for page in self.scanner.scan(whole.resume_from(state.last_token)):
            if page.changes:
                self._add(writer.write(page.changes))
            if page.last_token is not None:
                rows, last_token = rows + page.rows, page.last_token
                self.progress.update(state.number, whole.fraction_done(last_token), page.rows)
            if self.halted():
                self._saw(store.release_range(self._record(state, last_token, rows)))
                return
            # Progress is recorded (and the lease renewed) every third of a
            # lease, not every page: a resume re-reads at most that much.
            if time.monotonic() - recorded >= store.renew_interval_s:
                state = self._record(state, last_token, rows)
                recorded = time.monotonic()
        self._saw(store.finish_range(state, rows))
        self.progress.update(state.number, 1.0)

    def _record(self, state: RangeState, last_token: int | None, rows: int) -> RangeState:
        """Store how far the range got; conditional on our lease (`LeaseLost` if not ours)."""
        if last_token is None or last_token == state.last_token:
            return self.job.store.renew_range(state)
        return self.job.store.progress_range(state, last_token, rows)

    def _add(self, report: WriteReport) -> None:
        with self._lock:
            self.report.add(report)


def run_backfill(
    cfg: Config,
    mapping: TableMapping,
    *,
    restart: bool = False,
    stop: threading.Event | None = None,
    job: Job | None = None,
) -> BackfillSummary:
    """Backfill the mapping's table into its index; see the module docstring."""
    stop = stop or threading.Event()
    own_job = job is None
    job = job or Job(cfg, mapping)
    started = time.monotonic()
    try:
        log.info(job.info.version_rule())
        run = plan_run(job.store, state_key(job), cfg.backfill.ranges, restart)
        backfill = _Backfill(job, run, stop)
        backfill.progress.start(started)
        reporter = _Reporter(backfill.progress, backfill.all_done)
        reporter.start()
        workers = [
            threading.Thread(
                target=backfill.work, args=(i,), name=f"ks2os-backfill-{i}", daemon=True
            )
            for i in range(max(cfg.backfill.workers, 1))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        complete = backfill.all_done.is_set() and not backfill.errors
        backfill.all_done.set()  # ends the reporter
        reporter.join(timeout=2)
        if backfill.errors:
            raise backfill.errors[0]
        if complete:
            _finish(job.store, run)
        summary = BackfillSummary(
            run_id=run.run_id,
            ranges=run.range_count,
            rows_read=backfill.progress.rows,
            written=backfill.report.applied,
            stale=backfill.report.stale,
            dead_lettered=backfill.report.dead_lettered,
            seconds=time.monotonic() - started,
            complete=complete,
        )
        log.info(
            "backfill %s: %d rows read, %d written, %d stale, %d dead-lettered in %.1f s",
            "complete" if complete else "stopped",
            summary.rows_read,
            summary.written,
            summary.stale,
            summary.dead_lettered,
            summary.seconds,
        )
        return summary
    finally:
        if own_job:
            job.close()


def _finish(store: StateStore, run: BackfillRun) -> None:
    current = store.get_run(run.table)
    if current is None or current.run_id != run.run_id or current.finished:
        return
    # LeaseLost: another worker marked it finished at the same moment.
    with contextlib.suppress(LeaseLost):
        store.finish_run(current)
