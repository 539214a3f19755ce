"""One Spark task: scan one token range of a backfill run and write it, recording progress.

Flow of `scan_range` (one range, one task)::

    the range as stored -> lease it (or report it busy / done)
      -> SnapshotScanner pages from its recorded token -> full bulk requests
         of writer.max_docs changes -> the sink (Job.new_writer(): BulkWriter)
      -> every third of a lease: the last token acknowledged, lease renewed
      -> end of the range: done | budget spent: the token reached, lease freed

It is the CLI backfill's worker reduced to one range per task: the same
scanner, version rule, document builder, writer and state documents, so a
run planned by `ks2os backfill` and one driven by Spark are the same run.
A range's recorded token never runs ahead of what the writer acknowledged;
a task that dies anywhere leaves its range to be read again from that token
(harmless: snapshot rows carry versions, and a row written twice is stale
the second time).

`run_partition` is what runs on an executor: it builds its own `Job` (its
own CQL session and OpenSearch client) from the shipped configuration,
scans the partition's ranges, and closes everything in `finally`. A
configuration mistake or a terminal error is returned, not raised, because
Spark retrying it cannot help; anything else is raised so Spark retries the
task (`spark.task.maxFailures`).

A rebuild's snapshot or a verify can use `scan_range` as it is, with
another sink (a writer to the new index, or a comparer that reads documents
back instead of writing them): the range, lease and progress logic does not
know what the sink does with a page.
"""

from __future__ import annotations

import enum
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from sync.config import Config
from sync.errors import ConfigError, TerminalError
from sync.indices import Target
from sync.jobs import Job
from sync.mapping import TableMapping
from sync.model import Change
from sync.sources.cql import ScanPage, SnapshotScanner, TokenRange
from sync.spark.plan import Budget, may_stop
from sync.spark.shipping import on_executor
from sync.state import BackfillRun, RangeState, StateStore
from sync.writer import WriteReport

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where a task's changes go: `BulkWriter` (every change resolved when `write` returns)."""

    def write(self, changes: Sequence[Change]) -> WriteReport: ...


class Outcome(enum.Enum):
    DONE = "done"  # every row of the range written (also: found done already)
    BUDGET = "budget"  # the task's budget ran out; the rest of the range is handed back
    BUSY = "busy"  # another worker holds the range's lease
    LOST = "lost"  # another worker took the range over while this task read it
    FAILED = "failed"  # a terminal error (see `error`); Spark retrying cannot help


@dataclass(frozen=True, slots=True)
class RangeResult:
    """What a task did to one range; small and picklable, collected by the driver."""

    number: int
    outcome: Outcome
    rows_read: int = 0
    written: int = 0
    stale: int = 0
    dead_lettered: int = 0
    resumed_at: int | None = None  # the range's recorded token when this task began
    reached: int | None = None  # the token acknowledged when it ended
    seconds: float = 0.0
    error: str = ""  # FAILED: the error and how to mend it, on one line
    config_error: bool = False  # FAILED by a configuration mistake (exit 2, not 1)


def owner_name(runner: str, number: int) -> str:
    """The lease owner of range `number` for a Spark application.

    Every attempt of a range's task in one application leases under the same
    name, so a retried attempt takes the range at once instead of waiting for
    the lease of the attempt that died.
    """
    return f"{runner}#{number}"


@dataclass
class _Acknowledged:
    """The buffer of one range's changes, and how far the sink has acknowledged them."""

    last_token: int | None
    rows: int
    pending: list[Change] = field(default_factory=list)
    # (changes buffered in all when the page ended, its last token, rows up to it)
    marks: deque[tuple[int, int, int]] = field(default_factory=deque)
    buffered: int = 0
    acknowledged: int = 0
    report: WriteReport = field(default_factory=WriteReport)

    def add(self, page: ScanPage, rows: int) -> None:
        self.pending.extend(page.changes)
        self.buffered += len(page.changes)
        if page.last_token is not None:
            self.marks.append((self.buffered, page.last_token, rows))
        self._move()

    def flush(self, sink: Sink, max_docs: int, *, everything: bool = False) -> None:
        """Send full requests (`everything`: the rest too); move the acknowledged token."""
        while len(self.pending) >= max_docs or (everything and self.pending):
            batch = self.pending[:max_docs]
            del self.pending[:max_docs]
            self.report.add(sink.write(batch))
            self.acknowledged += len(batch)
            self._move()

    def _move(self) -> None:
        while self.marks and self.marks[0][0] <= self.acknowledged:
            _, self.last_token, self.rows = self.marks.popleft()


def scan_range(
    store: StateStore,
    scanner: SnapshotScanner,
    sink: Sink,
    run: BackfillRun,
    number: int,
    owner: str,
    *,
    budget: Budget,
    max_docs: int,
    clock: Callable[[], float] = time.monotonic,
) -> RangeResult:
    """Lease range `number` of `run`, scan it into `sink` within `budget`, record progress."""
    started = clock()
    found = store.get_ranges(run, [number])
    if not found or found[0].done:
        return RangeResult(number, Outcome.DONE)
    pairs = store.range_leases(found, owner, 1)
    held = store.update_ranges(pairs)[0] if pairs else None
    if held is None:
        return RangeResult(number, Outcome.BUSY, resumed_at=found[0].last_token)
    return _Scan(store, scanner, sink, held, budget, max(max_docs, 1), clock, started).run()


class _Scan:
    """One leased range being read: its buffer, its checkpoints, its budget."""

    def __init__(
        self,
        store: StateStore,
        scanner: SnapshotScanner,
        sink: Sink,
        held: RangeState,
        budget: Budget,
        max_docs: int,
        clock: Callable[[], float],
        started: float,
    ) -> None:
        self.store, self.scanner, self.sink = store, scanner, sink
        self.held, self.budget, self.max_docs = held, budget, max_docs
        self.clock, self.started = clock, started
        self.acked = _Acknowledged(held.last_token, held.rows)
        self.checkpointed = clock()
        self.held_rows = held.rows  # rows recorded by earlier tasks (re-reads included)
        self.rows_read = 0

    def run(self) -> RangeResult:
        try:
            return self._read()
        except BaseException:
            self._free()
            raise

    def _free(self) -> None:
        """A task that fails (and can still say so) records what was acknowledged and frees
        its range, so another worker need not wait for the lease to run out. Best effort:
        the error that got us here is the one to report."""
        try:
            self._record(self.store.released(self.store.progressed(*self._progress())))
        except Exception as exc:
            log.warning("could not free backfill range %d: %s", self.held.number, exc)

    def _read(self) -> RangeResult:
        whole = TokenRange(self.held.range_start, self.held.range_end)
        resumed_at = self.held.last_token
        reached: int | None = None
        for page in self.scanner.scan(whole.resume_from(resumed_at)):
            self.rows_read += page.rows
            if page.last_token is not None:
                reached = page.last_token
            self.acked.add(page, self.held_rows + self.rows_read)
            self.acked.flush(self.sink, self.max_docs)
            if self.budget.spent(self.rows_read, self.clock() - self.started) and may_stop(
                resumed_at, reached
            ):
                return self._hand_back(resumed_at)
            if self.clock() - self.checkpointed >= self.store.renew_interval_s:
                # Everything first, so the checkpoint records every row read so far.
                self.acked.flush(self.sink, self.max_docs, everything=True)
                if not self._record(self.store.progressed(*self._progress())):
                    return self._result(Outcome.LOST, resumed_at)
        self.acked.flush(self.sink, self.max_docs, everything=True)
        done = self.store.finished(self.held, self.acked.rows)
        outcome = Outcome.DONE if self._record(done) else Outcome.LOST
        return self._result(outcome, resumed_at)

    def _progress(self) -> tuple[RangeState, int | None, int]:
        return self.held, self.acked.last_token, self.acked.rows

    def _hand_back(self, resumed_at: int | None) -> RangeResult:
        """Budget spent: write what is buffered, record the token reached, free the range."""
        self.acked.flush(self.sink, self.max_docs, everything=True)
        new = self.store.released(self.store.progressed(*self._progress()))
        outcome = Outcome.BUDGET if self._record(new) else Outcome.LOST
        return self._result(outcome, resumed_at)

    def _record(self, new: RangeState) -> bool:
        """One conditional state write; False when another worker changed the range."""
        stored = self.store.update_ranges([(self.held, new)])[0]
        self.checkpointed = self.clock()
        if stored is None:
            log.warning("lost the lease on backfill range %d; leaving it", self.held.number)
            return False
        self.held = stored
        return True

    def _result(self, outcome: Outcome, resumed_at: int | None) -> RangeResult:
        report = self.acked.report
        return RangeResult(
            number=self.held.number,
            outcome=outcome,
            rows_read=self.rows_read,
            written=report.applied,
            stale=report.stale,
            dead_lettered=report.dead_lettered,
            resumed_at=resumed_at,
            reached=self.acked.last_token,
            seconds=self.clock() - self.started,
        )


# ---- on an executor ---------------------------------------------------------------------

# A test's hook around each task's sink (fault injection); None in every real run.
WrapSink = Callable[[Sink, int], Sink]


@dataclass(frozen=True)
class TaskSpec:
    """Everything a task needs, pickled by Spark into each task: no secrets (`for_executors`)."""

    cfg: Config
    mapping: TableMapping
    index: str  # the run's target index (part of its state key), resolved once by the driver
    run: BackfillRun
    runner: str  # this application's name in leases: "spark:<application id>"
    budget: Budget
    wrap_sink: WrapSink | None = None


def run_partition(spec: TaskSpec, numbers: Iterable[int]) -> list[RangeResult]:
    """A Spark partition: scan its ranges (normally one) with its own connections."""
    numbers = list(numbers)
    try:
        # The run is this index's (its state key names it): rows must not follow an
        # alias that a reindex moved while the run was going on.
        target = Target(spec.mapping.alias, spec.index)
        job = Job(on_executor(spec.cfg), spec.mapping, target=target)
    except (ConfigError, TerminalError) as exc:
        return [_failed(n, exc) for n in numbers]
    try:
        settings = job.cfg.backfill
        scanner = SnapshotScanner(
            job.session,
            job.info,
            page_size=settings.page_size,
            margin_ms=settings.snapshot_margin_ms,
        )
        results = []
        for number in numbers:
            sink: Sink = job.new_writer()
            if spec.wrap_sink is not None:
                sink = spec.wrap_sink(sink, number)
            try:
                result = scan_range(
                    job.store,
                    scanner,
                    sink,
                    spec.run,
                    number,
                    owner_name(spec.runner, number),
                    budget=spec.budget,
                    max_docs=job.cfg.writer.max_docs,
                )
            except (ConfigError, TerminalError) as exc:
                result = _failed(number, exc)
            results.append(result)
        return results
    finally:
        job.close()


def _failed(number: int, exc: ConfigError | TerminalError) -> RangeResult:
    text = " ".join(str(exc).split())
    error = f"{text}: {exc.hint}" if exc.hint else text
    return RangeResult(
        number, Outcome.FAILED, error=error, config_error=isinstance(exc, ConfigError)
    )
