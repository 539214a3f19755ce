"""`backfill`: snapshot the table over CQL and bulk-index every row.

Flow::

    plan (a run: N token ranges, in the state store) -> W worker threads
      each: lease the next range(s) it will scan soon -> scan page by page
            into one buffer -> BulkWriter.write(full requests of writer.max_docs)
    one renewer thread, every PROGRESS_INTERVAL_S (or a third of a lease):
      one state request for every worker: the last token acknowledged of
      every range held, ranges whose rows are all acknowledged marked done,
      and the leases renewed

A worker's buffer spans range boundaries, so a range's end costs no small
bulk request, and its state writes (ranges done, progress, lease renewals,
new leases) go together in one conditional bulk request to the state index.
A range is marked done only after the writer acknowledged all its rows, and
the recorded token of a range never runs ahead of what was acknowledged.

Before it reads anything, a backfill records in the state store since when
the index needs the stream (`StateStore.cover_from`, per table and target
index): its start on the service clock, less the snapshot margin. Every
change before that is in what the scan reads; a follower started later
checks that the stream still holds every change after it.

Leases are renewed from a thread of their own: a worker may wait in a bulk
request to a slow OpenSearch far longer than a lease, and must not lose its
ranges meanwhile. The same thread records progress, so a killed run loses at
most the last few seconds of what OpenSearch acknowledged. Threads of one
process never take each other's ranges, even when a renewal came late (the
holder is alive; only other processes need the lease to tell). A worker
leases only the ranges it expects to scan within about a second (at least
one), and the renewer leases a busy worker's next range in its round, so a
worker seldom stops to lease and a crash leaves few leases unscanned.
Ranges whose rows still sit in a worker's unacknowledged buffer stay leased
until OpenSearch acknowledges them (they must be read again after a crash).

A run survives the process: started again, the job resumes the table's
unfinished run from the last token each range recorded (`restart=True` plans
a new run). A rerun under the same `state.worker_id` takes the leases its
killed predecessor left behind back at once; others wait for them to expire.
Several processes, on several machines, may run the same backfill at once:
each range is leased by one worker, and a crashed worker's ranges are taken
over once their leases expire. The job returns when every range of the run
is done (or `stop` is set).

Progress (ranges done, rows, rows/s, share of the ring) goes to the job's
metrics and, with `backfill.metrics_port`, is served on `/metrics`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

from sync.config import Config
from sync.deadletter import DeadLetterShare
from sync.errors import ConfigError
from sync.jobs import Job
from sync.keyspaces import no_cdc_message, service_now_ms
from sync.logs import ContextThread
from sync.mapping import TableMapping
from sync.metrics import BackfillProgress, Metrics, MetricsServer, Readiness
from sync.model import Change
from sync.progress import Progress, Reporter
from sync.sources.cql import (
    MURMUR3_RING,
    Ring,
    SnapshotScanner,
    TokenRange,
    covers,
    ring_for,
    split_ring,
)
from sync.state import BackfillRun, LeaseLost, RangeState, StateStore
from sync.writer import WriteReport

log = logging.getLogger(__name__)

# What the writer acknowledged reaches the state store within this long (and
# leases are renewed at least every third of a lease).
PROGRESS_INTERVAL_S = 2.0
# How long an idle worker waits before looking again for a range another
# worker holds (it may crash, and its lease then expires).
_RECHECK_S = 1.0
_IDLE_POLL_S = 0.05
# A worker leases the ranges it expects to scan within this long (at least
# one, at most _MAX_LEASE): leases taken far ahead are what others must wait
# out after a crash.
_LEASE_AHEAD_S = 1.0
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


# ---- the run ---------------------------------------------------------------------------


def state_key(job: Job) -> str:
    """Backfill runs are kept per table *and* target index (a reindex fills a new one)."""
    return backfill_key(job.info.qualified_name, job.index)


def backfill_key(table: str, index: str) -> str:
    """The state key of the backfill of `table` into `index` (`state_key` of its job)."""
    return f"{table}->{index}"


def plan_run(
    store: StateStore, key: str, range_count: int, restart: bool, ring: Ring = MURMUR3_RING
) -> BackfillRun:
    """The run to work on: the unfinished current one, or a new one over `ring`."""
    current = store.get_run(key)
    if current is not None and not current.finished and not restart:
        if _run_covers(store, current, ring):
            log.info("resuming backfill run %s (%d ranges)", current.run_id, current.range_count)
            return current
        # Planned under another partitioner: its ranges miss most of this ring.
        log.warning(
            "backfill run %s was split for another partitioner's token ring; starting over",
            current.run_id,
        )
    ranges = [(r.start, r.end) for r in split_ring(range_count, ring)]
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


def _run_covers(store: StateStore, run: BackfillRun, ring: Ring) -> bool:
    stored = sorted(store.list_ranges(run), key=lambda r: r.number)
    return covers(ring, [TokenRange(r.range_start, r.range_end) for r in stored])


class _Backfill:
    def __init__(self, job: Job, run: BackfillRun, stop: threading.Event) -> None:
        self.job, self.run, self.stop = job, run, stop
        settings = job.cfg.backfill
        self.scanner = SnapshotScanner(
            job.session,
            job.info,
            page_size=settings.page_size,
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
        self.workers: list[_Worker] = []
        # Ranges a worker of this process holds: its siblings never take them over,
        # even with an expired lease (the holder is alive, only its renewal is slow).
        self._claimed: set[int] = set()
        # What this process last saw of every range. Leasing tries it first and
        # reads the store again only when nothing in it can be had: a stale
        # entry just fails its conditional write. Saves a read per lease.
        self._seen: dict[int, RangeState] = {r.number: r for r in ranges}

    def halted(self) -> bool:
        return self.stop.is_set() or self.failed.is_set()

    def reclaim(self) -> None:
        """Free the leases an earlier process under our `worker_id` left behind.

        Worker ids are unique among processes running at once, so leases held
        under ours are from a predecessor that was killed before it could
        release them: waiting for them to expire would only delay this run.
        """
        me = self.job.worker_id
        store = self.job.store
        ours = [
            s
            for s in self.pending()
            if s.lease.owner is not None
            and (s.lease.owner == me or s.lease.owner.startswith(f"{me}#"))
        ]
        if not ours:
            return
        results = store.update_ranges([(s, store.released(s)) for s in ours])
        taken = [r for r in results if r is not None]
        self.saw(*taken)
        log.info(
            "took back %d range lease(s) an earlier run as %s left behind; resuming them now",
            len(taken),
            me,
        )

    def work(self, number: int) -> None:
        """One worker thread: lease ranges until none is left or we are stopped."""
        try:
            worker = _Worker(self, number)
            with self._lock:
                self.workers.append(worker)
            worker.run()
        except BaseException as exc:
            self.fail(exc)

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self.errors.append(exc)
        self.failed.set()

    def current_workers(self) -> list[_Worker]:
        with self._lock:
            return sorted(self.workers, key=lambda w: w.number)

    def claim(self, number: int) -> None:
        with self._lock:
            self._claimed.add(number)

    def unclaim(self, number: int) -> None:
        with self._lock:
            self._claimed.discard(number)

    def claimed(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._claimed)

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
        self.job.table_metrics.backfill_wrote(report.applied, report.stale, report.dead_lettered)

    def publish(self, fraction: float, rate: float) -> None:
        """The progress gauges: ranges done as this process last saw them, rows/s, share."""
        done = self.run.range_count - len(self.pending())
        self.job.table_metrics.backfill_progress(
            BackfillProgress(self.run.range_count, done, self.progress.rows, rate, fraction)
        )

    def readiness(self) -> Readiness:
        return Readiness(("a backfill worker failed",) if self.failed.is_set() else ())

    def check_dead_letters(self) -> None:
        """Stop once more than `dead_letter_max_share` of the rows written were dead-lettered.

        Judged over every row written so far, once `dead_letter_window` rows
        were (so a few bad rows first do not decide), then after every write
        and at the end; a backfill writing fewer rows is never stopped for it.
        """
        cfg = self.job.cfg
        with self._lock:
            dead = self.report.dead_lettered
            rows = self.report.applied + self.report.stale + dead
        if not dead or rows < cfg.dead_letter_window:
            return
        if dead / rows > cfg.dead_letter_max_share:
            share = DeadLetterShare(cfg.dead_letter_max_share, rows)
            share.add(rows, dead)
            raise share.error(f"backfill of {self.job.info.qualified_name}")


class _Renewer(ContextThread):
    """Records every worker's acknowledged progress and renews its leases, on its own clock.

    A worker thread can spend longer than a lease inside one bulk request to
    a slow OpenSearch (retries and backoff included); renewing from here
    keeps its ranges while it does. Every worker's ranges go in one state
    request per round (a state write may wait behind the bulk requests in
    OpenSearch's queue: one wait per round, not one per worker), made while
    holding every worker's lock, so it never races a worker's own state write.
    """

    def __init__(self, backfill: _Backfill, interval_s: float) -> None:
        super().__init__(name="ks2os-backfill-renewer", daemon=True)
        self.backfill = backfill
        self.interval_s = interval_s
        self.finished = threading.Event()

    def run(self) -> None:
        while not self.finished.wait(self.interval_s):
            try:
                self.renew()
            except BaseException as exc:
                self.backfill.fail(exc)
                return

    def renew(self) -> None:
        """One state request: the progress and leases of every worker's held ranges.

        A busy worker with nothing more to scan after its current range also
        gets its next range leased here, so it need not stop to lease it.
        """
        workers = self.backfill.current_workers()
        with contextlib.ExitStack() as locks:
            for worker in workers:  # in worker order; a worker only ever takes its own lock
                locks.enter_context(worker.lock)
            batches = [(worker, worker.checkpoint_pairs()) for worker in workers if worker.held]
            taken: set[int] = set()
            for worker, part in batches:
                part += worker.next_lease(taken)
                taken.update(new.number for _, new in part)
            pairs = [pair for _, part in batches for pair in part]
            if not pairs:
                return
            if len({new.doc_id for _, new in pairs}) < len(pairs):
                # Two workers hold one range (only while one is about to learn it lost
                # it): one request each, so each conditional write stands on its own.
                for worker, _ in batches:
                    worker.checkpoint()
                return
            results = self.backfill.job.store.update_ranges(pairs)
            start = 0
            for worker, part in batches:
                worker.apply(part, results[start : start + len(part)])
                start += len(part)


@dataclass
class _Held:
    """A range one worker leased: as stored, and what the writer acknowledged of it."""

    state: RangeState
    last_token: int | None  # the last token whose rows are all acknowledged
    rows: int
    complete: bool = False  # scanned to its end and every row acknowledged

    @property
    def whole(self) -> TokenRange:
        return TokenRange(self.state.range_start, self.state.range_end)


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

    `lock` guards what the renewer thread reads and changes (`held`, `todo`,
    the marks and the stamps of the ranges' states); it is never held across
    a scan or a bulk request, only across state requests.
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
        self.lock = threading.Lock()
        self.held: dict[int, _Held] = {}
        self.todo: list[int] = []  # held ranges not scanned yet
        self.buffer: list[Change] = []  # only the worker thread touches the buffer
        self.buffered = 0  # changes ever put into the buffer
        self.acknowledged = 0  # of those, changes the writer acknowledged
        self.marks: deque[_Mark] = deque()
        self.seconds_per_range: float | None = None  # how fast this worker gets through one

    def run(self) -> None:
        b = self.b
        while not b.halted() and not b.all_done.is_set():
            if not self.todo and not self._lease():
                if self.held or self.buffer:
                    # Nothing to take: write and record what we hold, then look
                    # again at once (those may have been the last ranges).
                    self._flush(everything=True)
                    with self.lock:
                        self.checkpoint()
                elif not b.all_done.is_set():
                    b.idle()
                continue
            with self.lock:  # the renewer may have dropped a range whose lease was lost
                number = self.todo.pop(0) if self.todo else None
            if number is not None:
                self._scan(number)
        if self.held and not b.failed.is_set():
            self._flush(everything=True)
            with self.lock:
                self.checkpoint(release=b.halted())

    # ---- leases ---------------------------------------------------------------

    def _lease(self) -> bool:
        """Lease the next ranges (and checkpoint what is held in the same request)."""
        for fresh in (False, True):
            if fresh:
                self.b.refresh()
            with self.lock:
                pending = self.b.pending()
                if not pending:
                    self.b.all_done.set()  # done is final: nothing can become pending again
                    return False
                now = self.store.now_ms()
                claimed = self.b.claimed()  # held by this process, ours included
                free = [
                    s
                    for s in pending
                    if s.number not in claimed and s.lease.free_for(self.name, now)
                ]
                if not free:
                    continue
                # Threads start looking at different places so they rarely race
                # for the same ranges.
                offset = self.number * len(free) // self.workers
                leases = self.store.range_leases(
                    free[offset:] + free[:offset], self.name, self._lease_count(len(free))
                )
                if self.checkpoint(leases):
                    return True
        return False

    def next_lease(self, taken: set[int]) -> list[tuple[RangeState, RangeState]]:
        """The lease of the range to scan after the current one, while many are left.

        The caller holds `lock`; `taken` are ranges leased in the same request.
        Near the end (fewer free ranges than two per worker) none: idle workers
        lease the last ranges themselves, so they spread.
        """
        if self.todo:
            return []
        claimed = self.b.claimed() | taken
        now = self.store.now_ms()
        free = [
            s
            for s in self.b.pending()
            if s.number not in claimed and s.lease.free_for(self.name, now)
        ]
        if len(free) < 2 * self.workers:
            return []
        offset = self.number * len(free) // self.workers
        return self.store.range_leases(free[offset:] + free[:offset], self.name, 1)

    def _lease_count(self, free: int) -> int:
        """How many ranges to lease: what this worker will scan within about a second.

        At least one; more only for ranges this worker gets through quickly (so
        tiny ranges do not cost a state request each), and one each near the
        end, so the last ranges spread over the workers.
        """
        pace = self.seconds_per_range
        ahead = 1 if pace is None else int(_LEASE_AHEAD_S / max(pace, 1e-3))
        return max(1, min(_MAX_LEASE, ahead, free // (2 * self.workers)))

    def checkpoint(
        self,
        leases: list[tuple[RangeState, RangeState]] | None = None,
        *,
        release: bool = False,
    ) -> list[RangeState]:
        """One state request: every held range's progress (done ones finished), plus `leases`.

        The caller holds `lock`. Returns the ranges newly leased.
        """
        pairs = self.checkpoint_pairs(release=release) + (leases or [])
        if not pairs:
            return []
        return self.apply(pairs, self.store.update_ranges(pairs), release=release)

    def checkpoint_pairs(self, *, release: bool = False) -> list[tuple[RangeState, RangeState]]:
        """(as stored, new) for every held range: done, progressed, or just renewed."""
        pairs: list[tuple[RangeState, RangeState]] = []
        for held in self.held.values():
            if held.complete:
                new = self.store.finished(held.state, held.rows)
            elif held.last_token != held.state.last_token or held.rows != held.state.rows:
                new = self.store.progressed(held.state, held.last_token, held.rows)
            else:
                new = self.store.renewed(held.state)
            pairs.append((held.state, self.store.released(new) if release else new))
        return pairs

    def apply(
        self,
        pairs: list[tuple[RangeState, RangeState]],
        results: list[RangeState | None],
        *,
        release: bool = False,
    ) -> list[RangeState]:
        """Take in the answer to a state request of `pairs`; returns the ranges newly leased.

        The caller holds `lock`. A held range whose write failed was taken over:
        it is dropped (its buffered rows are still written: harmless).
        """
        leased: list[RangeState] = []
        lost: list[RangeState] = []
        for (old, _), result in zip(pairs, results, strict=True):
            if result is not None:
                self.b.saw(result)
            if old.number not in self.held:  # a new lease
                if result is not None:
                    leased.append(result)
                    self.held[result.number] = _Held(result, result.last_token, result.rows)
                    self.todo.append(result.number)
                    self.b.claim(result.number)
            elif result is None:
                lost.append(old)
                self._drop(old.number)
            elif result.done or release:
                if result.done:
                    self.b.progress.update(result.number, 1.0)
                self._drop(result.number)
            else:
                self.held[result.number].state = result
        if lost:
            self._report_lost(lost)
        return leased

    def _report_lost(self, lost: list[RangeState]) -> None:
        """Say, per range whose lease was lost, who has it now and where it goes on from."""
        now = self.store.current_ranges(lost)
        self.b.saw(*now.values())
        for old in lost:
            log.warning(
                "lost the lease on range %d; dropping it: %s",
                old.number,
                _next_for(now.get(old.number)),
            )

    def _drop(self, number: int) -> None:
        if self.held.pop(number, None) is not None:
            self.b.unclaim(number)
        with contextlib.suppress(ValueError):
            self.todo.remove(number)

    # ---- scanning and writing ---------------------------------------------------

    def _scan(self, number: int) -> None:
        with self.lock:
            held = self.held.get(number)
            if held is None:
                return
            whole, rows, last_token = held.whole, held.rows, held.last_token
            resume = whole.resume_from(held.state.last_token)
        started = time.monotonic()
        for page in self.b.scanner.scan(resume):
            if page.last_token is not None:
                rows, last_token = rows + page.rows, page.last_token
                self.b.progress.read(page.rows)
                self.b.job.table_metrics.backfill_read(page.rows)
            self._buffer(page.changes, number, last_token, rows, end=False)
            if self.b.halted():
                return
            self._flush()
            with self.lock:
                if number not in self.held:  # the lease was lost
                    return
        self._buffer([], number, last_token, rows, end=True)
        spent = time.monotonic() - started
        pace = self.seconds_per_range
        self.seconds_per_range = spent if pace is None else (pace + spent) / 2

    def _buffer(
        self, changes: list[Change], number: int, last_token: int | None, rows: int, *, end: bool
    ) -> None:
        self.buffer.extend(changes)
        self.buffered += len(changes)
        with self.lock:
            self.marks.append(_Mark(self.buffered, number, last_token, rows, end))
            self._acknowledge()

    def _flush(self, *, everything: bool = False) -> None:
        """Send full requests from the buffer (`everything`: the rest too)."""
        while len(self.buffer) >= self.max_docs or (everything and self.buffer):
            batch = self.buffer[: self.max_docs]
            del self.buffer[: self.max_docs]
            self.b.add(self.writer.write(batch))
            self.b.check_dead_letters()
            with self.lock:
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
            share = 1.0 if mark.end else held.whole.fraction_done(mark.last_token)
            self.b.progress.update(mark.number, share)


def _next_for(current: RangeState | None) -> str:
    """What happens next to a range whose lease this worker lost, as `current` shows it."""
    if current is None:
        return "its state is gone (a new run replaced this one)"
    if current.done:
        return f"it is done ({current.rows} rows)"
    owner = current.lease.owner or "no one yet"
    start = "its start" if current.last_token is None else f"token {current.last_token}"
    return f"{owner} holds it now; it will be read again from {start}"


def run_backfill(
    cfg: Config,
    mapping: TableMapping,
    *,
    restart: bool = False,
    stop: threading.Event | None = None,
    job: Job | None = None,
    require_cdc: bool = False,
    metrics: Metrics | None = None,
) -> BackfillSummary:
    """Backfill the mapping's table into its index; see the module docstring.

    A table without CDC is refused when `require_cdc` (the CLI's default, since
    nothing would follow the changes made after the snapshot), else warned about.
    """
    stop = stop or threading.Event()
    own_job = job is None
    job = job or Job(cfg, mapping, stop=stop, metrics=metrics)
    started = time.monotonic()
    server: MetricsServer | None = None
    try:
        _check_cdc(job, require_cdc)
        log.info(job.info.version_rule())
        ring = ring_for(job.info.partitioner)
        log.info("token ring of %s: (%d, %d]", job.info.partitioner, ring.minimum, ring.maximum)
        _record_coverage(job)
        run = plan_run(job.store, state_key(job), cfg.backfill.ranges, restart, ring)
        backfill = _Backfill(job, run, stop)
        backfill.reclaim()
        backfill.progress.start(started)
        if cfg.backfill.metrics_port:
            server = MetricsServer(
                job.metrics,
                cfg.backfill.metrics_port,
                lambda: not backfill.failed.is_set(),
                host=cfg.backfill.metrics_host,
                ready=backfill.readiness,
                setting="backfill.metrics_port",
            ).start()
        backfill.publish(*backfill.progress.estimate(time.monotonic())[:2])
        reporter = Reporter(
            backfill.progress, backfill.all_done, "backfill", gauges=backfill.publish
        )
        reporter.start()
        renewer = _Renewer(backfill, min(PROGRESS_INTERVAL_S, job.store.renew_interval_s))
        renewer.start()
        workers = [
            ContextThread(target=backfill.work, args=(i,), name=f"ks2os-backfill-{i}", daemon=True)
            for i in range(max(cfg.backfill.workers, 1))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        renewer.finished.set()
        renewer.join()
        complete = backfill.all_done.is_set() and not backfill.errors
        backfill.all_done.set()  # ends the reporter
        # Wholly: a last round of the reporter landing after the final figures below
        # would leave the gauges showing a run not done.
        reporter.join()
        backfill.publish(*backfill.progress.estimate(time.monotonic())[:2])
        if backfill.errors:
            raise backfill.errors[0]
        backfill.check_dead_letters()
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
        if server is not None:
            server.stop()
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


def _record_coverage(job: Job) -> None:
    """The index needs the stream from this backfill's start on (the earliest start wins).

    Service clock, not this host's; less the snapshot margin, like the
    snapshot versions, so a write in flight when the scan began still counts
    as one the follower must find in the stream.
    """
    began = service_now_ms(job.session) - job.cfg.backfill.snapshot_margin_ms
    job.store.cover_from(job.info.qualified_name, job.index, began)


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
