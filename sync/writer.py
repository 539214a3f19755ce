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
in per-partition documents. `write` chooses by the table; its contract (every
change applied, stale or dead-lettered when it returns) is the same.

One `BulkWriter` may be shared by several threads, each writing its own
batches: per-call state is local, the cumulative counters take a lock, and
opensearch-py's client is thread-safe.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from opensearchpy import OpenSearch

from sync.bulk import Action, Bulk, Reader, Traffic, Verdict
from sync.config import WriterSettings
from sync.deadletter import DeadLetterStore, Outcome
from sync.documents import DocumentBuilder
from sync.errors import DecodeError, TerminalError
from sync.model import Change
from sync.retry import RetryPolicy
from sync.statics import StaticMerge

log = logging.getLogger(__name__)


@dataclass
class WriteReport:
    """What one `write` did. `bytes` counts each action's NDJSON once (not re-sends)."""

    applied: int = 0
    stale: int = 0
    dead_lettered: int = 0
    retries: int = 0  # backoff waits (requests re-sent, with only their failed items)
    bytes: int = 0

    def add(self, other: WriteReport) -> None:
        self.applied += other.applied
        self.stale += other.stale
        self.dead_lettered += other.dead_lettered
        self.retries += other.retries
        self.bytes += other.bytes


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
            return {**asdict(self._totals), "requests": self.requests}


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
    ) -> None:
        self.client = client
        self.index = index
        self.builder = builder
        self.dead_letters = dead_letters
        self.settings = settings or WriterSettings()
        self.counters = WriterCounters()
        policy = RetryPolicy.for_opensearch(self.settings, stop)
        self.bulk = Bulk(
            client,
            index,
            policy,
            max_docs=self.settings.max_docs,
            max_bytes=self.settings.max_bytes,
            timeout_s=self.settings.timeout_s,
        )
        self._merge: StaticMerge | None = None
        if builder.table.static:
            reader = Reader(
                client,
                index,
                policy,
                page_size=self.settings.max_docs,
                timeout_s=self.settings.timeout_s,
            )
            self._merge = StaticMerge(self.bulk, reader, builder)

    def write(self, changes: Sequence[Change]) -> WriteReport:
        """Apply `changes`; returns once each is applied, stale or dead-lettered."""
        report = WriteReport()
        traffic = Traffic()
        try:
            if self._merge is not None:
                outcomes = self._merge.write(changes, traffic)
            else:
                outcomes = self._write_versioned(changes, traffic)
            self._count(outcomes, report)
        finally:
            report.retries, report.bytes = traffic.retries, traffic.bytes
            self.counters.add(report, traffic.requests)
        return report

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
