"""Writes for tables with static columns: partition documents and optimistic merges.

In Keyspaces a static column belongs to the partition. A write touching only
statics arrives as a record of its own (`Change.static_only`), possibly in
another shard than the partition's rows and unordered against them; a row
write that does not touch statics arrives without them. Yet a search hit for
a row must show its partition's *current* static values.

A row document therefore depends on two version lines (the row's and the
partition's statics), which one external version cannot order, and osmem has
no scripted updates. So, for these tables only (`BulkWriter` chooses), one
batch is written in five steps, in this order (`StaticMerge.write`):

1. **Plan**: the newest change per partition's statics and per row; the
   older ones of the batch are stale.
2. **Partition documents** `!p:<partition id>`: the newest static values, as
   `_ks2os.statics`, written with external version = their version (a 1-D
   state: a stale static write gets a 409 like any stale write).
3. **Row documents** carry `_ks2os.version` (the row's), `_ks2os.static_version`
   (the statics shown) and `_ks2os.partition`; they are written with
   optimistic concurrency (`if_seq_no`/`if_primary_term`, or `create`), after
   reading the stored row and its partition document: stale when the stored
   row version is not lower, and the statics shown are the newest of the
   partition document's, the stored row's and the change's own. A conflict
   (409 on a conditional write) means someone else wrote: re-read, recompute,
   write again, without waiting.
4. **Fan-out**: after writing partition documents, refresh and scan the
   partitions' live rows whose `static_version` is below the partition
   document's version, and merge the statics into each (optimistically).
5. **Closing the race**: after writing rows, re-read their partition
   documents and merge into any row written with older statics. A concurrent
   static write either happened before that re-read (then it is seen) or after
   the row write (then its refresh + scan finds the row).

Every step is idempotent and driven by what is stored, so a replay after a
crash repairs what the crash left (the fan-out runs even when the partition
document write is stale). docs/versions.md ("Static columns") has the
argument. Every request goes through `sync.bulk`, which retries 429/5xx and
lost connections through the one retry policy.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from sync.bulk import Action, Bulk, Document, Reader, Traffic, Verdict
from sync.deadletter import Outcome
from sync.documents import META_FIELD, PARTITION_KIND, DocumentBuilder
from sync.errors import DecodeError, OpenSearchUnavailable
from sync.model import Change, Op

log = logging.getLogger(__name__)

# Conflicts mean another writer made progress, so they are retried at once;
# the bound only stops a pathological livelock (the batch is then replayed).
MAX_CONFLICT_ROUNDS = 100
# A bool query's clause limit is 1024 by default; two clauses per partition.
_PARTITIONS_PER_SCAN = 200


@dataclass(frozen=True, slots=True)
class Statics:
    """A partition's static values (document fields) at a version; version 0 = none known."""

    version: int
    values: Mapping[str, Any]


@dataclass(slots=True)
class PartitionWrite:
    """The static values one change states for its partition: a partition document to write."""

    outcome: Outcome  # of the change that stated them
    counted: bool  # True for a static-only change; a snapshot row's outcome is its row's
    partition: str
    routing: str | None
    statics: Statics
    read_from: str  # "scan" or "stream"

    @property
    def version(self) -> int:
        return self.statics.version


@dataclass(slots=True)
class RowWrite:
    """One change's row document to write: its fields, and the statics it brought, if any."""

    counted: ClassVar[bool] = True

    outcome: Outcome
    # The change as its row document is written: the outcome's own, or a delete of the
    # same key at the same version when the mapping's filter or hook leaves the row out.
    change: Change
    doc_id: str
    partition: str
    routing: str | None
    fields: dict[str, Any]  # the row's fields without statics; empty for a delete
    own_statics: Statics | None

    @property
    def version(self) -> int:
        return self.change.version


@dataclass(slots=True)
class WrittenRow:
    """A live row document as this batch left it, to check against its partition's statics."""

    outcome: Outcome
    document: Document
    partition: str

    @property
    def shown(self) -> int:
        """The version of the statics the row shows."""
        return _meta_int(self.document, "static_version")


@dataclass(slots=True)
class Merge:
    """Bring one row document's statics up to `target`, if it still shows older ones."""

    doc_id: str
    routing: str | None
    target: Statics
    blamed: list[Outcome]  # the changes that asked for it: rejected if OpenSearch refuses it
    stored: Document | None = None  # the row as last read; None: read it (again) first

    def needed(self) -> bool:
        """Is the stored row live and showing statics older than the target?"""
        if self.stored is None or _meta(self.stored).get("deleted"):
            return False  # gone: a re-insert reads the partition document itself
        return _meta_int(self.stored, "static_version") < self.target.version


@dataclass(slots=True)
class _Attempt:
    """A row write in one round: the body sent, conditional on the row as read before."""

    write: RowWrite
    body: dict[str, Any]
    stored: Document | None  # None: there was no row, so create it

    def action(self) -> Action:
        write, stored = self.write, self.stored
        expect = None if stored is None else stored.stamp
        return Action(
            write.doc_id, self.body, routing=write.routing, expect=expect, create=stored is None
        )


class StaticMerge:
    """Writes one static table's changes to one index; see the module docstring."""

    def __init__(self, bulk: Bulk, reader: Reader, builder: DocumentBuilder) -> None:
        self.bulk = bulk
        self.reader = reader
        self.builder = builder
        self.index = bulk.index
        self._static_fields = builder.static_fields
        # What a row shows before any static value is known (explicit nulls, if so mapped).
        self._no_statics = Statics(0, builder.static_values({}))

    def write(self, changes: Sequence[Change], traffic: Traffic) -> list[Outcome]:
        """The outcome of every change, once each is applied, stale or rejected."""
        outcomes = [Outcome(change) for change in changes]
        partitions, rows = self._plan(outcomes)
        self._write_partitions(partitions, traffic)
        written = self._write_rows(rows, traffic)
        self._fan_out(partitions, traffic)
        self._close_late_statics(written, traffic)
        return outcomes

    # ---------------------------------------------------------------- 1. plan

    def _plan(self, outcomes: list[Outcome]) -> tuple[list[PartitionWrite], list[RowWrite]]:
        """The newest write per partition (statics) and per row; older ones' changes are stale."""
        partitions: dict[str, PartitionWrite] = {}
        rows: dict[str, RowWrite] = {}
        for outcome in outcomes:
            try:
                partition_write, row_write = self._writes_for(outcome)
            except (TypeError, ValueError, OverflowError, DecodeError) as exc:
                outcome.reject("", f"document could not be built: {exc}")
                continue
            if partition_write is not None:
                _keep_newest(partitions, partition_write.partition, partition_write)
            if row_write is not None:
                _keep_newest(rows, row_write.doc_id, row_write)
        return list(partitions.values()), list(rows.values())

    def _writes_for(self, outcome: Outcome) -> tuple[PartitionWrite | None, RowWrite | None]:
        builder = self.builder
        change = outcome.change
        partition = builder.partition_id(change.key)
        routing = builder.routing(change.key)
        partition_write = None
        if builder.carries_statics(change):
            statics = Statics(change.version, builder.static_values(change.image or {}))
            read_from = builder.source_kind(change)
            partition_write = PartitionWrite(
                outcome, change.static_only, partition, routing, statics, read_from
            )
        if change.static_only:
            return partition_write, None
        # A row the mapping's filter or hook leaves out comes back as a delete (a tombstone).
        row_change, fields = builder.row_document(change)
        own = partition_write.statics if partition_write is not None else None
        doc_id = builder.doc_id(change.key)
        return partition_write, RowWrite(
            outcome, row_change, doc_id, partition, routing, fields, own
        )

    # -------------------------------------------------- 2. partition documents

    def _write_partitions(self, writes: list[PartitionWrite], traffic: Traffic) -> None:
        """Each partition document at its statics' version (an older one: 409, stale)."""
        results = self.bulk.send([self._partition_action(w) for w in writes], traffic)
        for write, result in zip(writes, results, strict=True):
            if result.verdict is Verdict.REJECTED:
                doc_id = self.builder.partition_doc_id(write.partition)
                write.outcome.reject(doc_id, result.reason)
            elif write.counted:
                write.outcome.settle(result.verdict)

    def _partition_action(self, write: PartitionWrite) -> Action:
        body = {
            META_FIELD: {
                "kind": PARTITION_KIND,
                "partition": write.partition,
                "version": write.version,
                "statics": dict(write.statics.values),
                "source": write.read_from,
                "deleted": False,
            }
        }
        doc_id = self.builder.partition_doc_id(write.partition)
        return Action(doc_id, body, routing=write.routing, version=write.version)

    # -------------------------------------------------------- 3. row documents

    def _write_rows(self, writes: list[RowWrite], traffic: Traffic) -> list[WrittenRow]:
        """Write rows optimistically; returns the live rows written (or found written)."""
        written: list[WrittenRow] = []
        pending = writes
        rounds = 0
        while pending:
            rounds = self._next_round(rounds, "row documents")
            stored = self.reader.get(self._rows_and_partitions(pending), traffic)
            attempts: list[_Attempt] = []
            for write in pending:
                row = stored.get(write.doc_id)
                if row is not None and _meta_int(row, "version") >= write.version:
                    write.outcome.settle(Verdict.STALE)
                    if not _meta(row).get("deleted"):
                        # Maybe our own write before a crash or a lost answer: the check
                        # for newer statics it may have missed still has to run.
                        written.append(WrittenRow(write.outcome, row, write.partition))
                    continue
                partition = stored.get(self.builder.partition_doc_id(write.partition))
                attempts.append(_Attempt(write, self._row_body(write, row, partition), row))
            results = self.bulk.send([attempt.action() for attempt in attempts], traffic)
            pending = []
            for attempt, result in zip(attempts, results, strict=True):
                write = attempt.write
                if result.verdict is Verdict.STALE:
                    pending.append(write)  # another writer changed the row: read it again
                elif result.verdict is Verdict.REJECTED:
                    write.outcome.reject(write.doc_id, result.reason)
                else:
                    write.outcome.settle(Verdict.APPLIED)
                    if write.change.op is Op.UPSERT and result.stamp is not None:
                        now = Document(write.doc_id, attempt.body, result.stamp, write.routing)
                        written.append(WrittenRow(write.outcome, now, write.partition))
        return written

    def _rows_and_partitions(self, writes: list[RowWrite]) -> dict[str, str | None]:
        """The ids (with routing) of the rows and of their partition documents."""
        ids = {write.doc_id: write.routing for write in writes}
        for write in writes:
            ids[self.builder.partition_doc_id(write.partition)] = write.routing
        return ids

    def _row_body(
        self, write: RowWrite, row: Document | None, partition: Document | None
    ) -> dict[str, Any]:
        change = write.change
        meta: dict[str, Any] = {
            "version": change.version,
            "source": self.builder.source_kind(change),
            "partition": write.partition,
        }
        if change.op is Op.DELETE:
            # A tombstone keeps the row's version, so an older write stays refused.
            meta["static_version"] = 0
            meta["deleted"] = True
            return {META_FIELD: meta}
        stored = None if partition is None else _statics_of_partition(partition)
        candidates = [write.own_statics, self._statics_of_row(row), stored]
        shown = _newest(candidates, self._no_statics)
        body = {**write.fields, **shown.values}
        meta["static_version"] = shown.version
        if change.expires_at_ms is not None:
            meta["expires_at"] = change.expires_at_ms
        meta["deleted"] = False
        body[META_FIELD] = meta
        return body

    def _statics_of_row(self, row: Document | None) -> Statics | None:
        if row is None or _meta(row).get("deleted"):
            return None  # a tombstone shows no statics
        values = {name: row.body[name] for name in self._static_fields if name in row.body}
        return Statics(_meta_int(row, "static_version"), values)

    # ---------------------------------------------------------------- 4. fan-out

    def _fan_out(self, writes: list[PartitionWrite], traffic: Traffic) -> None:
        """Merge the partitions' stored statics into their live rows that show older ones.

        The partition documents are read again (they may hold newer statics than
        this batch's, and a crash may have cut an earlier fan-out short); then
        the index is refreshed, so the scan, from one point in time after it,
        sees every row written before the partition documents were.
        """
        if not writes:
            return
        by_partition = {write.partition: write for write in writes}
        routings = {partition: write.routing for partition, write in by_partition.items()}
        targets = self._stored_statics(routings, traffic)
        self.reader.refresh(traffic)
        partitions = sorted(targets)
        for start in range(0, len(partitions), _PARTITIONS_PER_SCAN):
            group = {p: targets[p] for p in partitions[start : start + _PARTITIONS_PER_SCAN]}
            scan = self.reader.scan(
                _rows_showing_older(group), page_size=self.bulk.max_docs, traffic=traffic
            )
            with closing(scan) as pages:
                for page in pages:
                    merges = []
                    for row in page:
                        partition = str(_meta(row).get("partition"))
                        blamed = [by_partition[partition].outcome]
                        merges.append(Merge(row.doc_id, row.routing, group[partition], blamed, row))
                    self._merge(merges, traffic)

    # ------------------------------------------------------ 5. the late statics

    def _close_late_statics(self, written: list[WrittenRow], traffic: Traffic) -> None:
        """Re-read the partition documents of the rows written; merge where newer ones landed."""
        if not written:
            return
        routings = {row.partition: row.document.routing for row in written}
        current = self._stored_statics(routings, traffic)
        late = [
            Merge(row.document.doc_id, row.document.routing, statics, [row.outcome], row.document)
            for row in written
            if (statics := current.get(row.partition)) is not None and statics.version > row.shown
        ]
        self._merge(late, traffic)

    # ------------------------------------------------- shared by steps 4 and 5

    def _stored_statics(
        self, routings: Mapping[str, str | None], traffic: Traffic
    ) -> dict[str, Statics]:
        """The statics stored in these partitions' documents (partition -> statics)."""
        doc_ids = {self.builder.partition_doc_id(p): p for p in routings}
        stored = self.reader.get({doc_id: routings[p] for doc_id, p in doc_ids.items()}, traffic)
        return {
            partition: _statics_of_partition(stored[doc_id])
            for doc_id, partition in doc_ids.items()
            if doc_id in stored
        }

    def _merge(self, merges: list[Merge], traffic: Traffic) -> None:
        """Give each row its merge's target statics, unless it already shows newer ones.

        A conflict means the row changed since it was read: read it again and
        decide again. A refusal rejects every change that asked for the merge.
        """
        pending = _newest_per_row(merges)
        rounds = 0
        while pending:
            rounds = self._next_round(rounds, "static merges")
            unread = {m.doc_id: m.routing for m in pending if m.stored is None}
            if unread:
                fresh = self.reader.get(unread, traffic)
                for merge in pending:
                    if merge.stored is None:
                        merge.stored = fresh.get(merge.doc_id)
            due = [merge for merge in pending if merge.needed()]
            results = self.bulk.send([self._merged(merge) for merge in due], traffic)
            pending = []
            for merge, result in zip(due, results, strict=True):
                if result.verdict is Verdict.STALE:
                    merge.stored = None
                    pending.append(merge)
                elif result.verdict is Verdict.REJECTED:
                    reason = f"static values refused for row {merge.doc_id}: {result.reason}"
                    for outcome in merge.blamed:
                        outcome.reject(merge.doc_id, reason)

    def _merged(self, merge: Merge) -> Action:
        stored = merge.stored
        assert stored is not None  # only needed merges are sent, and those were read
        body = {k: v for k, v in stored.body.items() if k not in self._static_fields}
        body.update(merge.target.values)
        body[META_FIELD] = {**_meta(stored), "static_version": merge.target.version}
        return Action(merge.doc_id, body, routing=merge.routing, expect=stored.stamp)

    def _next_round(self, rounds: int, what: str) -> int:
        """Count one more read-and-write round; stop a livelock."""
        if rounds >= MAX_CONFLICT_ROUNDS:
            raise OpenSearchUnavailable(
                f"{what} in {self.index}: still conflicting after {MAX_CONFLICT_ROUNDS} rounds",
                hint="another writer keeps changing the same documents; "
                "the batch was not checkpointed and will be replayed",
            )
        return rounds + 1


class _Planned(Protocol):
    @property
    def outcome(self) -> Outcome: ...

    @property
    def version(self) -> int: ...

    @property
    def counted(self) -> bool: ...


W = TypeVar("W", bound=_Planned)


def _keep_newest(newest: dict[str, W], key: str, write: W) -> None:
    """Keep the higher-versioned write under `key`; the other's change is stale (if counted)."""
    held = newest.get(key)
    if held is None or write.version > held.version:
        newest[key] = write
        loser = held
    else:
        loser = write
    if loser is not None and loser.counted:
        loser.outcome.settle(Verdict.STALE)


def _newest_per_row(merges: list[Merge]) -> list[Merge]:
    """One merge per row: the newest target, blaming every change that asked for one."""
    best: dict[str, Merge] = {}
    for merge in merges:
        held = best.get(merge.doc_id)
        if held is None:
            best[merge.doc_id] = merge
            continue
        blamed = list(dict.fromkeys([*held.blamed, *merge.blamed]))
        if merge.target.version > held.target.version:
            best[merge.doc_id] = merge
        best[merge.doc_id].blamed = blamed
    return list(best.values())


def _rows_showing_older(targets: Mapping[str, Statics]) -> dict[str, Any]:
    """The query for live rows of these partitions whose statics are older than the target."""
    should = [
        {
            "bool": {
                "filter": [
                    {"term": {f"{META_FIELD}.partition": partition}},
                    {"range": {f"{META_FIELD}.static_version": {"lt": statics.version}}},
                ]
            }
        }
        for partition, statics in targets.items()
    ]
    return {
        "bool": {
            "filter": [{"bool": {"should": should, "minimum_should_match": 1}}],
            "must_not": [
                {"term": {f"{META_FIELD}.kind": PARTITION_KIND}},
                {"term": {f"{META_FIELD}.deleted": True}},
            ],
        }
    }


def _meta(document: Document) -> Mapping[str, Any]:
    meta = document.body.get(META_FIELD)
    return meta if isinstance(meta, dict) else {}


def _meta_int(document: Document, key: str) -> int:
    value = _meta(document).get(key)
    return value if isinstance(value, int) else 0


def _statics_of_partition(partition: Document) -> Statics:
    values = _meta(partition).get("statics")
    return Statics(_meta_int(partition, "version"), values if isinstance(values, dict) else {})


def _newest(candidates: Sequence[Statics | None], none_known: Statics) -> Statics:
    """The statics with the highest version (the first of equals)."""
    best = none_known
    for candidate in candidates:
        if candidate is not None and candidate.version > best.version:
            best = candidate
    return best
