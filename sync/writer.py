"""The versioned bulk writer: every change applied, stale, or dead-lettered — or an error.

Flow for one `write(changes)`::

    changes -> DocumentBuilder -> actions (external version) -> sync.bulk -> per change:
                 APPLIED      counted
                 STALE        counted (a newer version is stored; never retried)
                 REJECTED     dead-lettered with OpenSearch's reason
    a change whose document cannot be built (a value with no document form,
    a DecodeError) is dead-lettered too, and the rest of the batch goes on.

The transport (`sync.bulk`) retries 429/5xx, timeouts and lost connections
through the one retry policy (the `writer.*` settings; the waits end at once
when the job stops), then raises `OpenSearchUnavailable`, and nothing of the
batch should be checkpointed. `write` returns only once every change is
resolved, so the caller may checkpoint exactly the batch it passed.

Tables with static columns take another path (`sync.statics`): a row
document there depends on two version lines (the row's and its partition's
statics), so rows are written with optimistic concurrency and statics kept
in per-partition documents. A mapping with `document.shape = "partition"`
takes a third (`sync.partitions`): one document per partition, its rows
nested and merged row by row with optimistic concurrency. `write` chooses by
the mapping and the table; its contract (every change applied, stale or
dead-lettered when it returns) is the same. The static path may also ask the
job to read some partitions' statics again over CQL (`WriteReport.checks`,
see `sync.statics.StaticsCheck`): the writer never talks CQL.

A dead-lettered change leaves a **mark** in place of its document, at the
change's version (`DocumentBuilder.mark_body`; the alias filter hides it), so
a search never returns the row's older state as if it were current; a newer
change replaces the mark. `mark` does the same for changes the caller could
not even build (raw stream records that failed to decode, by their key).
(The partition shape keeps its rows inside one document: no marks there.)

One `BulkWriter` may be shared by several threads, each writing its own
batches: per-call state is local, the cumulative counters take a lock, and
opensearch-py's client is thread-safe.

**Too old to write.** `ks2os cleanup` purges tombstones once no replay can
bring back an older write (docs/versions.md, "Cleanup"). That holds only if
no writer writes a change older than the purge window, so a job's writer is
given `max_age_ms` (the window less a margin) and refuses, before sending
anything, a batch holding a change whose version stands for an older time:
`ChangeTooOld`, a terminal error, so nothing is checkpointed and the change
is read again (a backfill range from its last acknowledged token; a stream
record from the checkpoint, or reported as a gap when the stream no longer
holds it).

**Several indexes.** While a rebuild lasts the job's `WriteTargets` name two
indexes, and each `write` goes to both: each index has its own transport and
its own merge (a static table's merge reads that index's stored documents),
and a change's outcome combines both: rejected if either index refused it
(dead-lettered once, the reason saying in which index), else applied if
either applied it, else stale (a 409 in one index says nothing of the
other). So the caller checkpoints only what both acknowledged. Before
writing to one of several indexes the writer checks that it exists (a bulk
write would create a deleted index anew); a missing one is dropped when the
targets no longer want it (`WriteTargets.recheck`: a rebuild aborted or
done), else the write fails.

An `observer` (the job's metrics) is told of every retry and its reason as
it happens, and after every `write` what it cost (bulk request durations)
and which changes OpenSearch acknowledged.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from opensearchpy import OpenSearch

from sync.bulk import Action, Bulk, Document, Reader, Traffic, Verdict, call
from sync.config import WriterSettings
from sync.deadletter import DeadLetterStore, Outcome
from sync.documents import DocumentBuilder
from sync.errors import DecodeError, OpenSearchRefused, TerminalError
from sync.mapping import Shape
from sync.model import Change
from sync.partitions import PartitionWriter
from sync.retry import RetryPolicy
from sync.statics import MergeReport, StaticMerge, StaticsCheck
from sync.targets import WriteTargets
from sync.version import version_ms

log = logging.getLogger(__name__)


@dataclass
class WriteReport:
    """What one `write` did. `bytes` counts each action's NDJSON once (not re-sends)."""

    applied: int = 0
    stale: int = 0
    dead_lettered: int = 0
    retries: int = 0  # backoff waits (requests re-sent, with only their failed items)
    bytes: int = 0
    # Partitions whose statics the job should read again over CQL (static tables only).
    checks: list[StaticsCheck] = field(default_factory=list, compare=False, repr=False)

    def add(self, other: WriteReport) -> None:
        self.applied += other.applied
        self.stale += other.stale
        self.dead_lettered += other.dead_lettered
        self.retries += other.retries
        self.bytes += other.bytes

    def counts(self) -> dict[str, int]:
        return {
            "applied": self.applied,
            "stale": self.stale,
            "dead_lettered": self.dead_lettered,
            "retries": self.retries,
            "bytes": self.bytes,
        }


class ChangeTooOld(TerminalError):
    """A change older than the cleanup window: its tombstone may be purged, so never write it."""


class WriteObserver(Protocol):
    """Told of each retry as it happens (its reason: `sync.bulk.retry_reason`), and after
    each `write` what it cost and the changes OpenSearch acknowledged (none if it failed)."""

    def retried(self, reason: str) -> None: ...

    def wrote(self, acknowledged: Sequence[Change], traffic: Traffic) -> None: ...


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class WriterCounters:
    """Cumulative totals over every `write`, safe to read from a metrics thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = WriteReport()
        self.requests = 0

    def add(self, report: WriteReport, requests: int) -> None:
        with self._lock:
            self._totals.add(report)
            self.requests += requests

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {**self._totals.counts(), "requests": self.requests}


@dataclass(frozen=True, slots=True)
class _Lane:
    """One index's transport and, for static and partition tables, its merge."""

    index: str
    bulk: Bulk
    merge: StaticMerge | PartitionWriter | None


class BulkWriter:
    """Writes changes with external versions to the job's indexes; see the module docstring.

    `index` is the one it writes unless `targets` (the job's, shared by its
    writers) says otherwise. `stop`, when given, is the job's stop event: a
    retry wait ends as soon as it is set, and the write then fails with
    `OpenSearchUnavailable`.
    """

    def __init__(
        self,
        client: OpenSearch,
        index: str,
        builder: DocumentBuilder,
        dead_letters: DeadLetterStore,
        settings: WriterSettings | None = None,
        *,
        stop: threading.Event | None = None,
        max_age_ms: int | None = None,
        observer: WriteObserver | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
        targets: WriteTargets | None = None,
    ) -> None:
        self.client = client
        self.index = index
        self.builder = builder
        self.dead_letters = dead_letters
        self.settings = settings or WriterSettings()
        self.counters = WriterCounters()
        self.max_age_ms = max_age_ms  # None: any age (tests writing made-up versions)
        self.observer = observer
        self.targets = targets or WriteTargets((index,))
        self._clock = clock_ms
        self._policy = RetryPolicy.for_opensearch(self.settings, stop)
        self._lanes: dict[str, _Lane] = {}
        self._lanes_lock = threading.Lock()
        self.bulk = self._lane(index).bulk

    def _lane(self, index: str) -> _Lane:
        with self._lanes_lock:
            lane = self._lanes.get(index)
            if lane is None:
                lane = self._lanes[index] = self._new_lane(index)
            return lane

    def _new_lane(self, index: str) -> _Lane:
        settings = self.settings
        bulk = Bulk(
            self.client,
            index,
            self._policy,
            max_docs=settings.max_docs,
            max_bytes=settings.max_bytes,
            timeout_s=settings.timeout_s,
        )
        reader = Reader(
            self.client,
            index,
            self._policy,
            page_size=settings.max_docs,
            timeout_s=settings.timeout_s,
        )
        merge: StaticMerge | PartitionWriter | None = None
        if self.builder.mapping.document.shape is Shape.PARTITION:
            merge = PartitionWriter(bulk, reader, self.builder)
        elif self.builder.table.static:
            merge = StaticMerge(bulk, reader, self.builder)
        return _Lane(index, bulk, merge)

    def write(self, changes: Sequence[Change]) -> WriteReport:
        """Apply `changes` to every target; returns once each is applied, stale or dead-lettered.

        Raises `ChangeTooOld`, writing nothing, when a change is older than `max_age_ms`.
        """
        self._refuse_too_old(changes)
        report = WriteReport()
        traffic = Traffic(on_retry=None if self.observer is None else self.observer.retried)
        acknowledged: Sequence[Change] = ()
        try:
            each: dict[str, list[Outcome]] = {}
            with self.targets.writing() as indexes:
                for lane in self._present_lanes(indexes, traffic):
                    with self._unless_dropped(lane.index):
                        each[lane.index], checks = self._write_lane(lane, changes, traffic)
                        report.checks.extend(checks)
            self._count(_combined(changes, each), report)
            acknowledged = changes
        finally:
            report.retries, report.bytes = traffic.retries, traffic.bytes
            self.counters.add(report, traffic.requests)
            if self.observer is not None:
                self.observer.wrote(acknowledged, traffic)
        return report

    def _write_lane(
        self, lane: _Lane, changes: Sequence[Change], traffic: Traffic
    ) -> tuple[list[Outcome], list[StaticsCheck]]:
        """Each change's outcome in one index (rejected ones marked there), and its checks."""
        if lane.merge is None:
            outcomes = self._write_versioned(lane.bulk, changes, traffic)
            self._mark_versioned(lane.bulk, [o.change for o in outcomes if _rejected(o)], traffic)
            return outcomes, []
        merged = lane.merge.write(changes, traffic)
        if isinstance(merged, MergeReport):
            return merged.outcomes, merged.checks
        return merged, []

    def _present_lanes(self, indexes: tuple[str, ...], traffic: Traffic) -> list[_Lane]:
        """The lanes of `indexes`; of several, only those that exist (see `_unless_dropped`)."""
        lanes = []
        for index in indexes:
            with self._unless_dropped(index):
                if len(indexes) > 1:
                    # A bulk write creates a missing index anew: a deleted one must not be.
                    self._require(index, traffic)
                lanes.append(self._lane(index))
        return lanes

    def _require(self, index: str, traffic: Traffic) -> None:
        exists = functools.partial(self.client.indices.exists, index=index)
        if not call(self._policy, f"checking index {index}", exists, traffic):
            raise OpenSearchRefused(
                f"index {index} does not exist",
                hint="a rebuild still names it: record the rebuild aborted (or done) before "
                "deleting its index, then start the follower again",
                status=404,
                error_type="index_not_found_exception",
            )

    @contextmanager
    def _unless_dropped(self, index: str) -> Iterator[None]:
        """Let a missing index pass when the targets no longer want it; else raise."""
        try:
            yield
        except OpenSearchRefused as exc:
            if exc.error_type != "index_not_found_exception" or not self.targets.recheck(index):
                raise
            log.warning("index %s is gone and no longer wanted: not writing it any more", index)

    def _refuse_too_old(self, changes: Sequence[Change]) -> None:
        if self.max_age_ms is None or not changes:
            return
        oldest = min(changes, key=lambda change: change.version)
        age_ms = self._clock() - version_ms(oldest.version)
        if age_ms > self.max_age_ms:
            raise ChangeTooOld(
                f"a change of {self.builder.table.qualified_name} (key {oldest.key!r}) is "
                f"{age_ms / 3_600_000:.1f} h old, older than cleanup may keep tombstones "
                f"({self.max_age_ms / 3_600_000:.1f} h): not written, so no purged delete "
                "can be undone",
                hint="run the job again: it reads the change anew (a backfill resumes its "
                "ranges, a follower its checkpoints, and reports a gap if the stream lost it)",
            )

    def _write_versioned(
        self, bulk: Bulk, changes: Sequence[Change], traffic: Traffic
    ) -> list[Outcome]:
        """One external-versioned action per change (a tombstone for a delete)."""
        outcomes = [Outcome(change) for change in changes]
        sent: list[Outcome] = []
        actions: list[Action] = []
        for outcome in outcomes:
            try:
                action = self.builder.action_for(outcome.change)
            except (TypeError, ValueError, OverflowError, DecodeError) as exc:
                # A value with no document form is bad input, not a reason to stop.
                reason = f"document could not be built: {exc}"
                outcome.reject(self._safe_id(outcome.change), reason)
                continue
            outcome.doc_id = action.doc_id or ""
            sent.append(outcome)
            actions.append(action)
        for outcome, result in zip(sent, bulk.send(actions, traffic), strict=True):
            if result.verdict is Verdict.REJECTED:
                outcome.reject(outcome.doc_id, f"{result.status} {result.reason}")
            else:
                outcome.settle(result.verdict)
        return outcomes

    def mark(self, changes: Sequence[Change]) -> None:
        """Mark the documents of changes that were dead-lettered, at each change's version,
        in every target.

        A change only needs its key, version, source and `static_only` here (a
        delete stands for a record that could not be decoded whole).
        """
        if not changes:
            return
        traffic = Traffic()
        try:
            with self.targets.writing() as indexes:
                for lane in self._present_lanes(indexes, traffic):
                    with self._unless_dropped(lane.index):
                        if isinstance(lane.merge, StaticMerge):
                            lane.merge.mark(changes, traffic)
                        elif lane.merge is None:
                            self._mark_versioned(lane.bulk, changes, traffic)
        finally:
            self._add_traffic(traffic)

    def drop_expired_statics(self, partitions: Mapping[str, str | None], now_ms: int) -> int:
        """Remove static values whose TTL ran out from these partitions (id -> routing) and
        their rows; returns the partition documents rewritten (static tables only).

        For a writer of one index (the expiry sweep reads the documents of one index).
        """
        merge = self._lane(self.index).merge
        if not isinstance(merge, StaticMerge) or not partitions:
            return 0
        traffic = Traffic()
        try:
            return merge.drop_expired(partitions, now_ms, traffic)
        finally:
            self._add_traffic(traffic)

    def show_current_statics(self, rows: Sequence[Document]) -> None:
        """Bring these stored rows' statics up to their partitions' (static tables only;
        the rows were read from `index`)."""
        merge = self._lane(self.index).merge
        if not isinstance(merge, StaticMerge) or not rows:
            return
        traffic = Traffic()
        try:
            merge.show_current_statics(rows, traffic)
        finally:
            self._add_traffic(traffic)

    def _add_traffic(self, traffic: Traffic) -> None:
        self.counters.add(
            WriteReport(retries=traffic.retries, bytes=traffic.bytes), traffic.requests
        )

    def _mark_versioned(self, bulk: Bulk, changes: Sequence[Change], traffic: Traffic) -> None:
        """A mark per change at its version: refused (409) where a newer state is stored."""
        actions = []
        for change in changes:
            try:
                doc_id, routing = self.builder.doc_id(change.key), self.builder.routing(change.key)
            except (TypeError, ValueError):
                continue  # no id can be made for it: there is no document to mark
            body = self.builder.mark_body(change)
            actions.append(Action(doc_id, body, routing=routing, version=change.version))
        bulk.send(actions, traffic)

    def _safe_id(self, change: Change) -> str:
        try:
            return self.builder.doc_id(change.key)
        except (TypeError, ValueError):
            return ""

    def _count(self, outcomes: list[Outcome], report: WriteReport) -> None:
        """Count the outcomes and store the rejected changes as dead letters."""
        dead = []
        for outcome in outcomes:
            if outcome.verdict is Verdict.APPLIED:
                report.applied += 1
            elif outcome.verdict is Verdict.STALE:
                report.stale += 1
            elif outcome.verdict is Verdict.REJECTED:
                dead.append(outcome.dead_letter())
            else:
                raise TerminalError(f"bulk to {self.index}: a change was left unresolved")
        if dead:
            self.dead_letters.put(dead)
            report.dead_lettered += len(dead)


def _rejected(outcome: Outcome) -> bool:
    return outcome.verdict is Verdict.REJECTED


def _combined(changes: Sequence[Change], each: Mapping[str, list[Outcome]]) -> list[Outcome]:
    """One outcome per change over the indexes written (see the module docstring)."""
    if len(each) == 1:
        return next(iter(each.values()))
    if not each:
        raise TerminalError("no index left to write: every target is gone")
    combined = []
    for position, change in enumerate(changes):
        outcomes = {index: found[position] for index, found in each.items()}
        verdicts = {outcome.verdict for outcome in outcomes.values()}
        outcome = Outcome(change)
        refused = {index: o for index, o in outcomes.items() if _rejected(o)}
        if refused:
            doc_id = next(iter(refused.values())).doc_id
            outcome.reject(doc_id, "; ".join(f"in {i}: {o.reason}" for i, o in refused.items()))
        elif None in verdicts:
            pass  # unresolved in one index: `_count` says so
        elif Verdict.APPLIED in verdicts:
            outcome.settle(Verdict.APPLIED)
        else:
            outcome.settle(Verdict.STALE)
        combined.append(outcome)
    return combined
