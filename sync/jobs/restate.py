"""Restating documents from what Keyspaces holds now: the expiry sweep, the statics re-read.

Both write what a CQL read returns, at a version that beats the stored
document and loses to any newer change; the writer never talks CQL, so the
jobs do this.

**The statics re-read** (`reread_statics`). Keyspaces sends one record per
row a partition delete removes and none for the statics it removes. The
static writer therefore asks (`sync.statics.StaticsCheck`) for a partition's
statics to be read again after a row delete, after a static record, and
before a row enters a partition showing statics where no live row was; the
job reads them over CQL and writes them, every static column, at the top of
the asking record's millisecond. The read comes after that record was
created, so it reflects every static change made up to it; a later static
change has a higher version and wins (docs/versions.md, "Static columns").

**The expiry sweep.**

A document whose value expires before its row (a column TTL on a row that
lives on, a static value's TTL) carries `_ks2os.value_expires_at`, and the
alias filter hides it from that moment: no search finds the expired value.
Keyspaces' own TTL record, which would restate the row, comes hours or days
later. The sweep brings the row back within seconds:

- **partition documents** (static tables): the expired static values are
  removed column by column and merged into the partition's rows
  (`BulkWriter.drop_expired_statics`);
- **rows whose own values expired**: the row is read again over CQL (with
  its TTLs) and written through the normal writer at a *derived* version
  (`sync.version.derived_version`: the stored version + 1, below every real
  version newer than the stored one), so the rewrite beats the stored
  document and loses to any newer change, whichever arrives first;
- **rows showing expired statics** whose partition document was already
  swept: their partition's current statics are merged in.

A read that still returns the value (the service's clock a little behind
ours) is not written: the document stays hidden and the next round tries
again. A document whose derived versions are spent (STEP - 1 restatements
since its last real change) stays hidden until its next change.

The follower runs a round in a thread of its own every
`follow.sweep_interval_ms` (`SweepThread`), on tables with TTL enabled: one
`ExpirySweep` per index it writes (`SweepEach`; two while a rebuild lasts),
each reading and restating that index's own documents, since a derived
version is relative to the version stored in that index. The statics
re-read, by contrast, writes through the job's writer to every index: its
version is a real one (the asking record's), which means the same in both.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sync.bulk import Document, Reader
from sync.documents import (
    KEY_CELLS,
    META_FIELD,
    PARTITION_KIND,
    VALUE_EXPIRES_AT,
    VALUE_EXPIRY,
    DocumentBuilder,
)
from sync.errors import DecodeError, Ks2osError, OpenSearchRefused, TransientError
from sync.model import Change, ScanPosition
from sync.sources.streams import LOOKUP_RETRY, RowLookup
from sync.statics import StaticsCheck
from sync.targets import WriteTargets
from sync.values import decode_cell
from sync.version import derived_version
from sync.writer import BulkWriter

log = logging.getLogger(__name__)

_PAGE = 500


@dataclass
class SweepReport:
    """What one round did."""

    partitions: int = 0  # partition documents rewritten without expired statics
    rows: int = 0  # rows read again and restated
    waiting: int = 0  # rows whose read still showed the value: next round
    spent: int = 0  # rows left hidden: no derived version left

    def add(self, other: SweepReport) -> None:
        self.partitions += other.partitions
        self.rows += other.rows
        self.waiting += other.waiting
        self.spent += other.spent


class Sweep(Protocol):
    """What `SweepThread` runs each round: an `ExpirySweep`, or `SweepEach` of several."""

    def run_once(self, now_ms: int | None = None) -> SweepReport: ...


class ExpirySweep:
    """Finds documents with an expired value and restates them; see the module docstring."""

    def __init__(self, reader: Reader, writer: BulkWriter, lookup: RowLookup) -> None:
        self.reader = reader
        self.writer = writer
        self.lookup = lookup
        self.builder: DocumentBuilder = writer.builder
        self._statics = frozenset(self.builder.table.static)

    def run_once(self, now_ms: int | None = None) -> SweepReport:
        """One round: every document with a value expired by `now_ms` (default: now)."""
        now = int(time.time() * 1000) if now_ms is None else now_ms
        report = SweepReport()
        self.reader.refresh()
        if self._statics:
            partitions = {d.doc_id: d for d in self._due(now, partitions=True)}
            routings = {_partition_of(d): d.routing for d in partitions.values()}
            report.partitions = self.writer.drop_expired_statics(routings, now)
        changes: list[Change] = []
        statics_only: list[Document] = []
        for row in self._due(now, partitions=False):
            if self._own_values_due(row, now):
                change = self._restated(row, now, report)
                if change is not None:
                    changes.append(change)
            else:
                statics_only.append(row)
        if changes:
            self.writer.write(changes)
            report.rows = len(changes)
        self.writer.show_current_statics(statics_only)
        return report

    def _due(self, now_ms: int, *, partitions: bool) -> list[Document]:
        """Live documents (of one kind) with a value that expired by `now_ms`, one page."""
        kind = {"term": {f"{META_FIELD}.kind": PARTITION_KIND}}
        query: dict[str, Any] = {
            "bool": {
                "filter": [{"range": {f"{META_FIELD}.{VALUE_EXPIRES_AT}": {"lte": now_ms}}}],
                "must_not": [{"term": {f"{META_FIELD}.deleted": True}}],
            }
        }
        (query["bool"]["filter"] if partitions else query["bool"]["must_not"]).append(kind)
        # One page a round (one request, no point in time to open each second): what
        # is left is the next round's, once these are restated and no longer match.
        return self.reader.search(query, size=_PAGE)

    def _own_values_due(self, row: Document, now_ms: int) -> bool:
        """Did one of the row's own (not static) values expire?"""
        expiry = _meta(row).get(VALUE_EXPIRY)
        if not isinstance(expiry, dict):
            return False
        return any(
            isinstance(at, int) and at <= now_ms and column not in self._statics
            for column, at in expiry.items()
        )

    def _restated(self, row: Document, now_ms: int, report: SweepReport) -> Change | None:
        """The row as Keyspaces holds it now, at a derived version; None: not this round."""
        meta = _meta(row)
        stored = meta.get("version")
        key = _key(meta.get(KEY_CELLS))
        if not isinstance(stored, int) or key is None:
            log.warning("document %s has expired values but no key to read it by", row.doc_id)
            return None
        version = derived_version(stored)
        if version is None:
            report.spent += 1
            log.warning(
                "document %s stays hidden until its next change: its values expired more "
                "often than versions leave room for since its last change",
                row.doc_id,
            )
            return None
        now = self.lookup.row(key, version, ScanPosition(0, 0, now_ms))
        if any(at <= now_ms for at in self.builder.value_expiry(now).values()):
            report.waiting += 1  # the service still shows it: its clock is a little behind
            return None
        # The row's statics are the partition document's business: state none of them.
        return Change(
            now.op,
            now.key,
            now.image,
            now.version,
            now.source,
            now.expires_at_ms,
            False,
            now.value_expiry,
            frozenset(),
        )


class SweepEach:
    """One `ExpirySweep` per index the job writes now (`sweep_of` makes each, once)."""

    def __init__(self, targets: WriteTargets, sweep_of: Callable[[str], ExpirySweep]) -> None:
        self.targets = targets
        self._sweep_of = sweep_of
        self._sweeps: dict[str, ExpirySweep] = {}

    def run_once(self, now_ms: int | None = None) -> SweepReport:
        """A round in every index written now; an index gone and no longer wanted is left."""
        report = SweepReport()
        with self.targets.writing() as indexes:
            for index in indexes:
                sweep = self._sweeps.get(index)
                if sweep is None:
                    sweep = self._sweeps[index] = self._sweep_of(index)
                try:
                    report.add(sweep.run_once(now_ms))
                except OpenSearchRefused as exc:
                    gone = exc.error_type == "index_not_found_exception"
                    if not gone or not self.targets.recheck(index):
                        raise
                    del self._sweeps[index]
        return report


def reread_statics(
    checks: Sequence[StaticsCheck],
    lookup: RowLookup,
    writer: BulkWriter,
    stop: threading.Event | None = None,
) -> int:
    """Read the asked partitions' statics over CQL and write them; returns partitions read.

    One read per partition, at the highest version asked for it (every one
    of them came before the read). Reads that fail for a moment are retried.
    """
    newest: dict[tuple[Any, ...], StaticsCheck] = {}
    for check in checks:
        held = newest.get(check.partition_key)
        if held is None or check.version > held.version:
            newest[check.partition_key] = check
    policy = LOOKUP_RETRY.stopping_on(stop)
    changes = [
        policy.call(
            functools.partial(lookup.statics, c.partition_key, c.version, c.change.source),
            retry_on=TransientError,
            on_wait=_on_retry,
        )
        for c in newest.values()
    ]
    if changes:
        writer.write(changes)
    return len(changes)


def _on_retry(seconds: float, failure: Any) -> None:
    log.warning("reading statics again failed, retrying in %.2f s: %s", seconds, failure)


class SweepThread(threading.Thread):
    """Runs a sweep every `interval_s` until `stop` is set; a failed round is logged."""

    def __init__(self, sweep: Sweep, interval_s: float, stop: threading.Event) -> None:
        super().__init__(name="ks2os-expiry-sweep", daemon=True)
        self.sweep = sweep
        self.interval_s = interval_s
        self.stop = stop
        self.rounds = 0

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                report = self.sweep.run_once()
            except Ks2osError as exc:  # OpenSearch or Keyspaces away: the next round retries
                log.warning("expiry sweep: %s", exc)
                continue
            self.rounds += 1
            if report.partitions or report.rows:
                log.info(
                    "expiry sweep: %d partition(s) and %d row(s) restated without expired values",
                    report.partitions,
                    report.rows,
                )


def _meta(document: Document) -> Mapping[str, Any]:
    meta = document.body.get(META_FIELD)
    return meta if isinstance(meta, dict) else {}


def _partition_of(document: Document) -> str:
    return str(_meta(document).get("partition"))


def _key(cells: Any) -> tuple[Any, ...] | None:
    if not isinstance(cells, list) or not cells:
        return None
    try:
        return tuple(decode_cell(cell, "key") for cell in cells)
    except DecodeError:
        return None
