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

An `observer` (the job's metrics) is told of every retry and its reason as
it happens, and after every `write` what it cost (bulk request durations)
and which changes OpenSearch acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opensearchpy import OpenSearch

from sync.bulk import Action, Bulk, Document, Reader, Traffic, Verdict
from sync.config import WriterSettings
from sync.deadletter import DeadLetterStore, Outcome
from sync.documents import DocumentBuilder
from sync.errors import DecodeError, TerminalError
from sync.mapping import Shape
from sync.model import Change
from sync.partitions import PartitionWriter
from sync.retry import RetryPolicy
from sync.statics import MergeReport, StaticMerge, StaticsCheck
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


class BulkWriter:
    """Writes changes to one index with external versions; see the module docstring.

    `stop`, when given, is the job's stop event: a retry wait ends as soon as
    it is set, and the write then fails with `OpenSearchUnavailable`.
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
    ) -> None:
        self.client = client
        self.index = index
        self.builder = builder
        self.dead_letters = dead_letters
        self.settings = settings or WriterSettings()
        self.counters = WriterCounters()
        self.max_age_ms = max_age_ms  # None: any age (tests writing made-up versions)
        self.observer = observer
        self._clock = clock_ms
        policy = RetryPolicy.for_opensearch(self.settings, stop)
        self.bulk = Bulk(
            client,
            index,
            policy,
            max_docs=self.settings.max_docs,
            max_bytes=self.settings.max_bytes,
            timeout_s=self.settings.timeout_s,
        )
        self._merge: StaticMerge | PartitionWriter | None = None
        reader = Reader(
            client,
            index,
            policy,
            page_size=self.settings.max_docs,
            timeout_s=self.settings.timeout_s,
        )
        if builder.mapping.document.shape is Shape.PARTITION:
            self._merge = PartitionWriter(self.bulk, reader, builder)
        elif builder.table.static:
            self._merge = StaticMerge(self.bulk, reader, builder)

    def write(self, changes: Sequence[Change]) -> WriteReport:
        """Apply `changes`; returns once each is applied, stale or dead-lettered.

        Raises `ChangeTooOld`, writing nothing, when a change is older than `max_age_ms`.
        """
        self._refuse_too_old(changes)
        report = WriteReport()
        traffic = Traffic(on_retry=None if self.observer is None else self.observer.retried)
        acknowledged: Sequence[Change] = ()
        try:
            if self._merge is not None:
                merged = self._merge.write(changes, traffic)
                if isinstance(merged, MergeReport):
                    outcomes, report.checks = merged.outcomes, merged.checks
                else:
                    outcomes = merged
            else:
                outcomes = self._write_versioned(changes, traffic)
                self._mark_versioned([o.change for o in outcomes if _rejected(o)], traffic)
            self._count(outcomes, report)
            acknowledged = changes
        finally:
            report.retries, report.bytes = traffic.retries, traffic.bytes
            self.counters.add(report, traffic.requests)
            if self.observer is not None:
                self.observer.wrote(acknowledged, traffic)
        return report

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

    def _write_versioned(self, changes: Sequence[Change], traffic: Traffic) -> list[Outcome]:
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
        for outcome, result in zip(sent, self.bulk.send(actions, traffic), strict=True):
            if result.verdict is Verdict.REJECTED:
                outcome.reject(outcome.doc_id, f"{result.status} {result.reason}")
            else:
                outcome.settle(result.verdict)
        return outcomes

    def mark(self, changes: Sequence[Change]) -> None:
        """Mark the documents of changes that were dead-lettered, at each change's version.

        A change only needs its key, version, source and `static_only` here (a
        delete stands for a record that could not be decoded whole).
        """
        if not changes:
            return
        traffic = Traffic()
        try:
            if isinstance(self._merge, StaticMerge):
                self._merge.mark(changes, traffic)
            elif self._merge is None:
                self._mark_versioned(changes, traffic)
        finally:
            self._add_traffic(traffic)

    def drop_expired_statics(self, partitions: Mapping[str, str | None], now_ms: int) -> int:
        """Remove static values whose TTL ran out from these partitions (id -> routing) and
        their rows; returns the partition documents rewritten (static tables only)."""
        if not isinstance(self._merge, StaticMerge) or not partitions:
            return 0
        traffic = Traffic()
        try:
            return self._merge.drop_expired(partitions, now_ms, traffic)
        finally:
            self._add_traffic(traffic)

    def show_current_statics(self, rows: Sequence[Document]) -> None:
        """Bring these stored rows' statics up to their partitions' (static tables only)."""
        if not isinstance(self._merge, StaticMerge) or not rows:
            return
        traffic = Traffic()
        try:
            self._merge.show_current_statics(rows, traffic)
        finally:
            self._add_traffic(traffic)

    def _add_traffic(self, traffic: Traffic) -> None:
        self.counters.add(
            WriteReport(retries=traffic.retries, bytes=traffic.bytes), traffic.requests
        )

    def _mark_versioned(self, changes: Sequence[Change], traffic: Traffic) -> None:
        """A mark per change at its version: refused (409) where a newer state is stored."""
        actions = []
        for change in changes:
            try:
                doc_id, routing = self.builder.doc_id(change.key), self.builder.routing(change.key)
            except (TypeError, ValueError):
                continue  # no id can be made for it: there is no document to mark
            body = self.builder.mark_body(change)
            actions.append(Action(doc_id, body, routing=routing, version=change.version))
        self.bulk.send(actions, traffic)

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
