"""The versioned bulk writer: every change applied, stale, or dead-lettered — or an error.

Flow for one `write(changes)`::

    changes -> DocumentBuilder -> actions -> bulk requests (<= max_docs, <= max_bytes)
            -> OpenSearch -> per item:
                 2xx               applied
                 409               stale (a newer version is stored; never retried)
                 429, 5xx          retried, only those items, with backoff
                 other 4xx         dead-lettered with OpenSearch's reason

A whole request that fails with 429, 5xx, a timeout or a connection error is
retried the same way. Retries go through `backoff` (exponential, full jitter)
for at most `max_retry_seconds`, after which `OpenSearchUnavailable` is
raised and nothing of the batch should be checkpointed. `write` returns only
once every change is resolved, so the caller may checkpoint exactly the batch
it passed.

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
from typing import Any

from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import TransportError

from sync.config import WriterSettings
from sync.deadletter import DeadLetter, DeadLetterStore
from sync.documents import BulkAction, DocumentBuilder
from sync.errors import DecodeError, OpenSearchUnavailable, TerminalError
from sync.model import Change
from sync.retry import retry_pending
from sync.statics import MergeResult, Outcome, StaticMergeWriter

log = logging.getLogger(__name__)

# Only what classification needs; a large batch's full response costs real time to parse.
_FILTER_PATH = "errors,items.*.status,items.*.error"


@dataclass
class WriteReport:
    """What one `write` did. `bytes` counts each action's NDJSON once (not re-sends)."""

    applied: int = 0
    stale: int = 0
    dead_lettered: int = 0
    retries: int = 0  # backoff waits (whole requests re-sent, with only their failed items)
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


@dataclass(slots=True)
class _Pending:
    action: BulkAction
    lines: bytes


class _ItemOutcome:
    APPLIED = "applied"
    STALE = "stale"
    RETRY = "retry"
    DEAD = "dead"


def classify(status: int) -> str:
    """The writer's decision for one bulk item's HTTP status."""
    if 200 <= status < 300:
        return _ItemOutcome.APPLIED
    if status == 409:
        return _ItemOutcome.STALE
    if status == 429 or status >= 500:
        return _ItemOutcome.RETRY
    return _ItemOutcome.DEAD


def _reason(error: Any) -> str:
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        caused = error.get("caused_by")
        if isinstance(caused, dict):
            text += f" (caused by {caused.get('type')}: {caused.get('reason')})"
        return text
    return str(error)


class BulkWriter:
    """Writes changes to one index with external versions; see the module docstring."""

    def __init__(
        self,
        client: OpenSearch,
        index: str,
        builder: DocumentBuilder,
        dead_letters: DeadLetterStore,
        settings: WriterSettings | None = None,
    ) -> None:
        self.client = client
        self.index = index
        self.builder = builder
        self.dead_letters = dead_letters
        self.settings = settings or WriterSettings()
        self.counters = WriterCounters()
        self._merging = (
            StaticMergeWriter(client, index, builder, self.settings)
            if builder.table.static
            else None
        )

    def write(self, changes: Sequence[Change]) -> WriteReport:
        """Apply `changes`; returns once each is applied, stale or dead-lettered."""
        if self._merging is not None:
            return self._write_merging(self._merging, changes)
        report = WriteReport()
        requests = 0
        try:
            pending, unbuildable = self._build(changes)
            self._put_dead(unbuildable, report)
            for chunk in self._chunks(pending):
                requests += self._write_chunk(chunk, report)
        finally:
            self.counters.add(report, requests)
        return report

    def _write_merging(self, merging: StaticMergeWriter, changes: Sequence[Change]) -> WriteReport:
        """A static table's batch: one outcome per change (`bytes` counts every request)."""
        report = WriteReport()
        result = MergeResult()
        try:
            merging.write(changes, result)
            report.retries, report.bytes = result.retries, result.bytes
            for outcome in result.outcomes.values():
                if outcome is Outcome.APPLIED:
                    report.applied += 1
                elif outcome is Outcome.STALE:
                    report.stale += 1
            self._put_dead(list(result.dead.values()), report)
        finally:
            self.counters.add(report, result.requests)
        return report

    # ---------------------------------------------------------------- build

    def _build(self, changes: Sequence[Change]) -> tuple[list[_Pending], list[DeadLetter]]:
        pending: list[_Pending] = []
        unbuildable: list[DeadLetter] = []
        for change in changes:
            try:
                action = self.builder.action_for(change)
            except (TypeError, ValueError, OverflowError, DecodeError) as exc:
                # A value with no document form is bad input, not a reason to stop.
                reason = f"document could not be built: {exc}"
                unbuildable.append(DeadLetter(change, self._safe_id(change), reason))
                continue
            pending.append(_Pending(action, action.lines()))
        return pending, unbuildable

    def _safe_id(self, change: Change) -> str:
        try:
            return self.builder.doc_id(change.key)
        except (TypeError, ValueError):
            return ""

    def _chunks(self, pending: list[_Pending]) -> list[list[_Pending]]:
        chunks: list[list[_Pending]] = []
        current: list[_Pending] = []
        size = 0
        for item in pending:
            too_big = size + len(item.lines) > self.settings.max_bytes
            if current and (len(current) >= self.settings.max_docs or too_big):
                chunks.append(current)
                current, size = [], 0
            current.append(item)
            size += len(item.lines)
        if current:
            chunks.append(current)
        return chunks

    # ---------------------------------------------------------------- send

    def _write_chunk(self, chunk: list[_Pending], report: WriteReport) -> int:
        """Send one chunk until every item is resolved; returns the requests made."""
        report.bytes += sum(len(item.lines) for item in chunk)
        state = _ChunkState(chunk)
        dead: list[DeadLetter] = []

        def on_backoff(details: Any) -> None:
            report.retries += 1
            log.warning(
                "bulk to %s: %d item(s) to retry after %.2fs (%s)",
                self.index,
                len(state.pending),
                details.get("wait", 0.0),
                state.last_error,
            )

        def attempt() -> list[_Pending]:
            state.pending = self._send(state, dead, report)
            return state.pending

        remaining = retry_pending(attempt, self.settings, on_backoff)
        # Items already refused for their content are stored even if the rest gives up.
        self._put_dead(dead, report)
        if remaining:
            raise OpenSearchUnavailable(
                f"bulk to {self.index}: {len(remaining)} item(s) still failing after "
                f"{self.settings.max_retry_seconds:.0f}s: {state.last_error}",
                hint="check OpenSearch health; the batch was not checkpointed and will be replayed",
            )
        return state.requests

    def _send(
        self, state: _ChunkState, dead: list[DeadLetter], report: WriteReport
    ) -> list[_Pending]:
        """One bulk request of the pending items; returns those to retry."""
        pending = state.pending
        state.requests += 1
        try:
            response = self.client.bulk(
                index=self.index,
                body=b"".join(item.lines for item in pending),
                params={"request_timeout": self.settings.timeout_s, "filter_path": _FILTER_PATH},
            )
        except OSConnectionError as exc:  # includes timeouts
            state.last_error = f"connection: {exc}"
            return pending
        except TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 0
            state.last_error = f"HTTP {exc.status_code}: {exc.error}"
            if status == 429 or status >= 500:
                return pending
            if status == 413 and len(pending) == 1:
                dead.append(self._dead_letter(pending[0], f"request too large: {exc.error}"))
                return []
            raise TerminalError(
                f"bulk to {self.index} refused as a whole: {state.last_error}",
                hint="lower max_bytes" if status == 413 else "check the index name and mapping",
            ) from exc
        if not response.get("errors"):
            report.applied += len(pending)
            return []
        return self._resolve_items(pending, response.get("items", []), state, dead, report)

    def _resolve_items(
        self,
        pending: list[_Pending],
        items: list[dict[str, Any]],
        state: _ChunkState,
        dead: list[DeadLetter],
        report: WriteReport,
    ) -> list[_Pending]:
        if len(items) != len(pending):
            raise TerminalError(
                f"bulk to {self.index}: {len(items)} results for {len(pending)} actions"
            )
        retry: list[_Pending] = []
        for item, result in zip(pending, items, strict=True):
            outcome_body = next(iter(result.values()))
            status = int(outcome_body.get("status", 500))
            outcome = classify(status)
            if outcome == _ItemOutcome.APPLIED:
                report.applied += 1
            elif outcome == _ItemOutcome.STALE:
                report.stale += 1
            elif outcome == _ItemOutcome.RETRY:
                state.last_error = f"item {status}: {_reason(outcome_body.get('error'))}"
                retry.append(item)
            else:
                error = outcome_body.get("error")
                if isinstance(error, dict) and error.get("type") == "index_not_found_exception":
                    raise TerminalError(
                        f"bulk to {self.index}: {_reason(error)}",
                        hint="create the index (ks2os creates it on start) or fix its name",
                    )
                dead.append(self._dead_letter(item, f"{status} {_reason(error)}"))
        return retry

    def _dead_letter(self, item: _Pending, reason: str) -> DeadLetter:
        change = item.action.change
        if change is None:
            raise TerminalError(f"bulk to {self.index}: an action without its change was refused")
        return DeadLetter(change, item.action.doc_id, reason)

    def _put_dead(self, entries: list[DeadLetter], report: WriteReport) -> None:
        if entries:
            self.dead_letters.put(entries)
            report.dead_lettered += len(entries)


class _ChunkState:
    """What one chunk's retry loop carries between attempts."""

    def __init__(self, chunk: list[_Pending]) -> None:
        self.pending = chunk
        self.requests = 0
        self.last_error = ""
