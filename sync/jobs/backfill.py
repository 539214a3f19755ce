"""`backfill`: snapshot the table over CQL and bulk-index every row.

Flow::

    plan (a run: N token ranges, in the state store) -> W worker threads
      each: lease a few ranges -> scan them page by page into one buffer
            -> BulkWriter.write(full requests of writer.max_docs changes)
            -> once the writer acknowledged a range's last row: mark it done
            -> every third of a lease: record the last token acknowledged

A worker's buffer spans range boundaries, so a range's end costs no small
bulk request, and its state writes (ranges done, progress, lease renewals,
new leases) go together in one conditional bulk request to the state index.
A range is marked done only after the writer acknowledged all its rows, and
the recorded token of a range never runs ahead of what was acknowledged.

A run survives the process: started again, the job resumes the table's
unfinished run from the last token each range recorded (`restart=True` plans
a new run). Several processes, on several machines, may run the same
backfill at once: each range is leased by one worker, and a crashed worker's
ranges are taken over once their leases expire. The job returns when every
range of the run is done (or `stop` is set).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TextIO

from sync.config import Config
from sync.errors import ConfigError
from sync.jobs import Job
from sync.keyspaces import no_cdc_message
from sync.mapping import TableMapping
from sync.model import Change
from sync.sources.cql import SnapshotScanner, TokenRange, split_ring
from sync.state import BackfillRun, LeaseLost, RangeState, StateStore
from sync.writer import WriteReport

log = logging.getLogger(__name__)

RING = 2**64 - 1
# How long an idle worker waits before looking again for a range another
# worker holds (it may crash, and its lease then expires).
_RECHECK_S = 1.0
_IDLE_POLL_S = 0.05
# At most this many ranges leased in one request.
_MAX_LEASE = 8


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
        # entry just fails its conditional write. Saves a read per lease.
        self._seen: dict[int, RangeState] = {r.number: r for r in ranges}

    def halted(self) -> bool:
        return self.stop.is_set() or self.failed.is_set()

    def work(self, number: int) -> None:
        """One worker thread: lease ranges until none is left or we are stopped."""
        try:
            _Worker(self, number).run()
        except BaseException as exc:
            with self._lock:
                self.errors.append(exc)
            self.failed.set()

    def pending(self) -> list[RangeState]:
        """Ranges not done as this process last saw them, in range order."""
        with self._lock:
            return sorted((s for s in self._seen.values() if not s.done), key=lambda s: s.number)

    def refresh(self) -> None:
        self.saw(*self.job.store.list_ranges(self.run))

    def saw(self, *states: RangeState) -> None:
        with self._lock:
            for state in states:
                self._seen[state.number] = state

    def idle(self) -> None:
        """Wait a while for a range another worker holds (it may crash, and its lease expire)."""
        deadline = time.monotonic() + _RECHECK_S
        while time.monotonic() < deadline and not self.all_done.is_set():
            if self.stop.wait(_IDLE_POLL_S) or self.failed.is_set():
                return

    def add(self, report: WriteReport) -> None:
        with self._lock:
            self.report.add(report)


@dataclass
class _Held:
    """A range one worker leased: as stored, and what the writer acknowledged of it."""

    state: RangeState
    last_token: int | None  # the last token whose rows are all acknowledged
    rows: int
    complete: bool = False  # scanned to its end and every row acknowledged


@dataclass(frozen=True, slots=True)
class _Mark:
    """Where a page of a range ends in the worker's stream of changes."""

    position: int  # changes the worker had buffered in all, this page included
    number: int
    last_token: int | None
    rows: int
    end: bool  # the range's last page


class _Worker:
    """One worker thread's leases, its bulk buffer, and what of it is acknowledged.

    Pages of every range the worker holds go into one buffer, sent in full
    requests of `writer.max_docs` changes, so range ends cost no small bulk
    requests. A `_Mark` per page says which range got how far once the writer
    acknowledged everything up to it; a range is marked done only when its
    last mark is acknowledged. State writes go in one conditional bulk request
    (`StateStore.update_ranges`) per checkpoint: the done ranges, the progress
    and lease renewal of the held ones, and new leases, together.
    """

    def __init__(self, backfill: _Backfill, number: int) -> None:
        self.b = backfill
        self.store = backfill.job.store
        self.number = number
        # Each thread leases under its own name: a lease held by "this
        # process" would let two of its threads take the same range.
        self.name = f"{backfill.job.worker_id}#{number}"
        self.writer = backfill.job.new_writer()
        self.max_docs = max(backfill.job.cfg.writer.max_docs, 1)
        self.workers = max(backfill.job.cfg.backfill.workers, 1)
        self.held: dict[int, _Held] = {}
        self.todo: list[int] = []  # held ranges not scanned yet
        self.buffer: list[Change] = []
        self.buffered = 0  # changes ever put into the buffer
        self.acknowledged = 0  # of those, changes the writer acknowledged
        self.marks: deque[_Mark] = deque()
        self.checkpointed = time.monotonic()

    def run(self) -> None:
        b = self.b
        while not b.halted() and not b.all_done.is_set():
            if not self.todo and not self._lease():
                if self.held or self.buffer:
                    # Nothing to take: write and record what we hold, then look
                    # again at once (those may have been the last ranges).
                    self._flush(everything=True)
                    self._checkpoint()
                elif not b.all_done.is_set():
                    b.idle()
                continue
            self._scan(self.todo.pop(0))
        if self.held and not b.failed.is_set():
            self._flush(everything=True)
            self._checkpoint(release=b.halted())

    # ---- leases ---------------------------------------------------------------

    def _lease(self) -> bool:
        """Lease more ranges (and checkpoint what is due in the same request)."""
        for fresh in (False, True):
            if fresh:
                self.b.refresh()
            pending = [s for s in self.b.pending() if s.number not in self.held]
            if not pending and not self.held:
                self.b.all_done.set()  # done is final: nothing can become pending again
                return False
            now = self.store.now_ms()
            free = [s for s in pending if s.lease.free_for(self.name, now)]
            if not free:
                continue
            # Several ranges per request while many are left, one each near the end
            # (so the last ranges spread over the workers). Threads start looking
            # at different places so they rarely race for the same ranges.
            limit = max(1, min(_MAX_LEASE, len(free) // (2 * self.workers)))
            offset = self.number * len(free) // self.workers
            leases = self.store.range_leases(free[offset:] + free[:offset], self.name, limit)
            if self._checkpoint(leases):
                return True
        return False

    def _checkpoint(
        self,
        leases: list[tuple[RangeState, RangeState]] | None = None,
        *,
        release: bool = False,
    ) -> list[RangeState]:
        """One state request: every held range's progress (done ones finished), plus `leases`.

        Returns the ranges newly leased. A held range whose write fails was
        taken over: it is dropped (its buffered rows are still written: harmless).
        """
        pairs: list[tuple[RangeState, RangeState]] = []
        for held in self.held.values():
            if held.complete:
                new = self.store.finished(held.state, held.rows)
            elif held.last_token != held.state.last_token or held.rows != held.state.rows:
                new = self.store.progressed(held.state, held.last_token, held.rows)
            else:
                new = self.store.renewed(held.state)
            pairs.append((held.state, self.store.released(new) if release else new))
        pairs += leases or []
        if not pairs:
            return []
        results = self.store.update_ranges(pairs)
        self.checkpointed = time.monotonic()
        leased: list[RangeState] = []
        for (old, _), result in zip(pairs, results, strict=True):
            if result is not None:
                self.b.saw(result)
            if old.number not in self.held:  # a new lease
                if result is not None:
                    leased.append(result)
                    self.held[result.number] = _Held(result, result.last_token, result.rows)
                    self.todo.append(result.number)
            elif result is None:
                log.warning("lost the lease on range %d; dropping it", old.number)
                self._drop(old.number)
            elif result.done or release:
                if result.done:
                    self.b.progress.update(result.number, 1.0)
                self._drop(result.number)
            else:
                self.held[result.number].state = result
        return leased

    def _drop(self, number: int) -> None:
        self.held.pop(number, None)
        with contextlib.suppress(ValueError):
            self.todo.remove(number)

    def _due(self) -> bool:
        """A checkpoint is due: a range is complete, or a third of a lease went by."""
        return any(h.complete for h in self.held.values()) or (
            time.monotonic() - self.checkpointed >= self.store.renew_interval_s
        )

    # ---- scanning and writing ---------------------------------------------------

    def _scan(self, number: int) -> None:
        held = self.held[number]
        whole = TokenRange(held.state.range_start, held.state.range_end)
        rows, last_token = held.rows, held.last_token
        for page in self.b.scanner.scan(whole.resume_from(held.state.last_token)):
            if page.last_token is not None:
                rows, last_token = rows + page.rows, page.last_token
                self.b.progress.update(number, whole.fraction_done(last_token), page.rows)
            self._buffer(page.changes, number, last_token, rows, end=False)
            if self.b.halted():
                return
            self._flush()
            if self._due():
                if not any(h.complete for h in self.held.values()):
                    # Only the timer: write everything so the checkpoint records it all.
                    self._flush(everything=True)
                self._checkpoint()
            if number not in self.held:  # the lease was lost
                return
        self._buffer([], number, last_token, rows, end=True)
        self.b.progress.update(number, 1.0)
        if self._due():
            self._checkpoint()

    def _buffer(
        self, changes: list[Change], number: int, last_token: int | None, rows: int, *, end: bool
    ) -> None:
        self.buffer.extend(changes)
        self.buffered += len(changes)
        self.marks.append(_Mark(self.buffered, number, last_token, rows, end))
        self._acknowledge()

    def _flush(self, *, everything: bool = False) -> None:
        """Send full requests from the buffer (`everything`: the rest too)."""
        while len(self.buffer) >= self.max_docs or (everything and self.buffer):
            batch = self.buffer[: self.max_docs]
            del self.buffer[: self.max_docs]
            self.b.add(self.writer.write(batch))
            self.acknowledged += len(batch)
            self._acknowledge()

    def _acknowledge(self) -> None:
        """Move held ranges' acknowledged progress up to what the writer acknowledged."""
        while self.marks and self.marks[0].position <= self.acknowledged:
            mark = self.marks.popleft()
            held = self.held.get(mark.number)
            if held is None:
                continue  # dropped
            held.last_token, held.rows = mark.last_token, mark.rows
            held.complete = mark.end


def run_backfill(
    cfg: Config,
    mapping: TableMapping,
    *,
    restart: bool = False,
    stop: threading.Event | None = None,
    job: Job | None = None,
    require_cdc: bool = False,
) -> BackfillSummary:
    """Backfill the mapping's table into its index; see the module docstring.

    A table without CDC is refused when `require_cdc` (the CLI's default, since
    nothing would follow the changes made after the snapshot), else warned about.
    """
    stop = stop or threading.Event()
    own_job = job is None
    job = job or Job(cfg, mapping)
    started = time.monotonic()
    try:
        _check_cdc(job, require_cdc)
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


def _check_cdc(job: Job, require_cdc: bool) -> None:
    if job.info.cdc_enabled:
        return
    table = job.info.qualified_name
    if require_cdc:
        raise ConfigError(
            f"table {table} has no CDC stream, so nothing would follow the changes made "
            "after this backfill",
            hint=no_cdc_message(job.info.keyspace, job.info.name).split(": ", 1)[1]
            + "; or pass --no-cdc to load a snapshot only",
        )
    log.warning(
        "table %s has no CDC stream: this backfill loads a snapshot, and later changes "
        "will not be followed",
        table,
    )


def _finish(store: StateStore, run: BackfillRun) -> None:
    current = store.get_run(run.table)
    if current is None or current.run_id != run.run_id or current.finished:
        return
    if current.range_count != run.range_count:
        # A Spark run split ranges since we listed them: ranges this worker never saw
        # may be unread. Whoever lists them all done (the Spark driver, a resume) finishes.
        return
    # LeaseLost: another worker marked it finished at the same moment.
    with contextlib.suppress(LeaseLost):
        store.finish_run(current)
