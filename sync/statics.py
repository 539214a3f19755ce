"""Writes for tables with static columns: partition documents and optimistic merges.

In Keyspaces a static column belongs to the partition. A write touching only
statics arrives as a record of its own (`Change.static_only`), possibly in
another shard than the partition's rows and unordered against them; a row
write that does not touch statics arrives without them. Yet a search hit for
a row must show its partition's *current* static values.

A row document therefore depends on two version lines (the row's and the
partition's statics), which one external version cannot order, and osmem has
no scripted updates. So, for these tables only (`BulkWriter` chooses), one
batch is written in six steps, in this order (`StaticMerge.write`):

1. **Plan**: the newest change per row (the older ones of the batch are
   stale); every change that states statics, grouped by partition.
2. **Partition documents** `!p:<partition id>`: the static values, merged
   **column by column**: each static column keeps the version of the change
   that last stated it (`_ks2os.static_versions`), and a change sets (or
   deletes) a column only when its version is higher. So static records
   from several shards, in any order, and records naming only the columns a
   write touched, converge on the newest value of every column. Each value's
   TTL travels with it (`value_expiry`). The document's `version` is its
   **revision**: it rises with every change of what the document shows
   (`max(revision + 1, change version)`). Written read-modify-write with
   optimistic concurrency (`if_seq_no`/`if_primary_term`, or `create`); a
   conflict means someone else wrote: re-read, merge again, without waiting.
3. **Row documents** carry `_ks2os.version` (the row's), `_ks2os.static_version`
   (the revision of the statics shown) and `_ks2os.partition`; they are
   written with optimistic concurrency after reading the stored row and its
   partition document: stale when the stored row version is not lower, and
   the statics shown are the newer of the partition document's and the
   stored row's.
4. **Fan-out**: after writing partition documents, refresh and scan the
   partitions' live rows whose `static_version` is below the partition
   document's revision, and merge the statics into each (optimistically).
5. **Closing the race**: after writing rows, re-read their partition
   documents and merge into any row written with older statics. A concurrent
   static write either happened before that re-read (then it is seen) or after
   the row write (then its refresh + scan finds the row).
6. **Marks**: a row whose change was dead-lettered gets a mark at the
   change's version (`DocumentBuilder.mark_body`), hidden by the alias
   filter, so its older state is not found as if current; a static change
   the rows refuse marks the partition document.

Every step is idempotent and driven by what is stored, so a replay after a
crash repairs what the crash left (the fan-out runs even when the partition
document write is stale). The merge also reports the partitions whose
statics the job should read again over CQL (`StaticsCheck`): Keyspaces sends
no record for the statics a partition delete removes. `drop_expired` removes
static values whose TTL ran out (the expiry sweep). docs/versions.md
("Static columns") has the argument. Every request goes through `sync.bulk`,
which retries 429/5xx and lost connections through the one retry policy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sync.bulk import Action, Bulk, Document, Reader, Traffic, Verdict
from sync.deadletter import Outcome
from sync.documents import (
    DEAD_LETTER,
    KEY_CELLS,
    META_FIELD,
    PARTITION_KIND,
    VALUE_EXPIRES_AT,
    VALUE_EXPIRY,
    DocumentBuilder,
    expiry_meta,
)
from sync.errors import DecodeError, OpenSearchUnavailable
from sync.model import Change, Op, ScanRead, StreamRead
from sync.version import last_of_millisecond

log = logging.getLogger(__name__)

# Conflicts mean another writer made progress, so they are retried at once;
# the bound only stops a pathological livelock (the batch is then replayed).
MAX_CONFLICT_ROUNDS = 100
# A bool query's clause limit is 1024 by default; two clauses per partition.
_PARTITIONS_PER_SCAN = 200


@dataclass(frozen=True, slots=True)
class Statics:
    """A partition's static values (document fields) at a revision; revision 0 = none known.

    `expiry` maps a static column to when its value stops being readable.
    """

    version: int
    values: Mapping[str, Any]
    expiry: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class StaticsCheck:
    """Read this partition's statics over CQL again, and state them all at `version`.

    `version` is above every change made in the same millisecond as the one
    whose record the read comes after (a row delete, or a row written into a
    partition that showed statics), so the read reflects every static change
    it beats, and a static change made later (after the read) beats it.
    """

    partition_key: tuple[Any, ...]
    version: int
    change: Change  # the change that asked: its source is the read's


@dataclass
class MergeReport:
    """What one `StaticMerge.write` did: each change's outcome, and the checks it asks for."""

    outcomes: list[Outcome]
    checks: list[StaticsCheck] = field(default_factory=list)


@dataclass(slots=True)
class PartitionWrite:
    """The static values one change states for its partition."""

    outcome: Outcome  # of the change that stated them
    counted: bool  # True for a static-only change; a snapshot row's outcome is its row's
    partition: str
    routing: str | None
    version: int
    columns: frozenset[str]  # the static columns stated: set when in `values`, else deleted
    values: Mapping[str, Any]  # field -> value
    expiry: Mapping[str, int]  # static column -> epoch ms
    read_from: str  # "scan" or "stream"
    token: str | None = None  # the partition's token as text (sync.tokens)


@dataclass(slots=True)
class PartitionState:
    """A partition document as stored (or none yet), parsed: every column with its version."""

    revision: int
    values: dict[str, Any]  # field -> value
    versions: dict[str, int]  # static column -> version of the change that last stated it
    expiry: dict[str, int]  # static column -> epoch ms
    source: str = "stream"
    dead_letter: bool = False
    token: str | None = None  # the partition's token as text (sync.tokens)

    def statics(self) -> Statics:
        return Statics(self.revision, dict(self.values), dict(self.expiry))

    def body(self, partition: str) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "kind": PARTITION_KIND,
            "partition": partition,
            "version": self.revision,
            "statics": dict(self.values),
            "static_versions": dict(self.versions),
            "source": self.source,
            "deleted": False,
        }
        meta.update(expiry_meta(self.expiry))
        if self.dead_letter:
            meta[DEAD_LETTER] = True
        if self.token is not None:
            meta["token"] = self.token
        return {META_FIELD: meta}


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
    own_expiry: dict[str, int]  # the row's own values expiring before it (column -> ms)
    token: str | None = None  # the partition's token as text (sync.tokens)

    @property
    def version(self) -> int:
        return self.change.version


@dataclass(slots=True)
class WrittenRow:
    """A live row document as this batch left it, to check against its partition's statics."""

    outcome: Outcome | None
    document: Document
    partition: str

    @property
    def shown(self) -> int:
        """The revision of the statics the row shows."""
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
        if _meta(self.stored).get(DEAD_LETTER):
            return False  # a mark shows nothing; the row's next change reads the statics
        return _meta_int(self.stored, "static_version") < self.target.version


@dataclass(slots=True)
class _Attempt:
    """A conditional write in one round: the body sent, conditional on the document as read."""

    doc_id: str
    routing: str | None
    body: dict[str, Any]
    stored: Document | None  # None: there was no document, so create it

    def action(self) -> Action:
        expect = None if self.stored is None else self.stored.stamp
        return Action(
            self.doc_id, self.body, routing=self.routing, expect=expect, create=self.stored is None
        )


class StaticMerge:
    """Writes one static table's changes to one index; see the module docstring."""

    def __init__(self, bulk: Bulk, reader: Reader, builder: DocumentBuilder) -> None:
        self.bulk = bulk
        self.reader = reader
        self.builder = builder
        self.index = bulk.index
        self._static_fields = builder.static_fields
        self._static_columns = frozenset(builder.table.static)
        # What a row shows before any static value is known (explicit nulls, if so mapped).
        self._no_statics = Statics(0, builder.static_values({}))

    def write(self, changes: Sequence[Change], traffic: Traffic) -> MergeReport:
        """The outcome of every change, once each is applied, stale or rejected."""
        report = MergeReport([Outcome(change) for change in changes])
        partitions, rows = self._plan(report.outcomes)
        routings = self._write_partitions(partitions, traffic)
        report.checks.extend(self._static_checks(partitions))
        written = self._write_rows(rows, traffic, report.checks)
        self._fan_out(routings, _blame(partitions), traffic)
        self._close_late_statics(written, traffic)
        self._mark_rejected(report.outcomes, traffic)
        return report

    # ---------------------------------------------------------------- 1. plan

    def _plan(self, outcomes: list[Outcome]) -> tuple[list[PartitionWrite], list[RowWrite]]:
        """Every statement of statics, and the newest write per row (older ones are stale)."""
        partitions: list[PartitionWrite] = []
        rows: dict[str, RowWrite] = {}
        for outcome in outcomes:
            try:
                partition_write, row_write = self._writes_for(outcome)
            except (TypeError, ValueError, OverflowError, DecodeError) as exc:
                reason = f"document could not be built: {exc}"
                outcome.reject(self._doc_id_of(outcome.change), reason)
                continue
            if partition_write is not None:
                partitions.append(partition_write)
            if row_write is not None:
                _keep_newest(rows, row_write.doc_id, row_write)
        return partitions, list(rows.values())

    def _doc_id_of(self, change: Change) -> str:
        try:
            if change.static_only:
                return self.builder.partition_doc_id(self.builder.partition_id(change.key))
            return self.builder.doc_id(change.key)
        except (TypeError, ValueError):
            return ""

    def _writes_for(self, outcome: Outcome) -> tuple[PartitionWrite | None, RowWrite | None]:
        builder = self.builder
        change = outcome.change
        partition = builder.partition_id(change.key)
        routing = builder.routing(change.key)
        token = builder.token(change.key)
        partition_write = None
        if builder.carries_statics(change):
            partition_write = self._partition_write(outcome, partition, routing, token)
        if change.static_only:
            return partition_write, None
        # A row the mapping's filter or hook leaves out comes back as a delete (a tombstone).
        row_change, fields = builder.row_document(change)
        own = builder.value_expiry(row_change)
        doc_id = builder.doc_id(change.key)
        return partition_write, RowWrite(
            outcome, row_change, doc_id, partition, routing, fields, own, token
        )

    def _partition_write(
        self, outcome: Outcome, partition: str, routing: str | None, token: str | None
    ) -> PartitionWrite:
        change = outcome.change
        image = change.image or {}
        columns = self.builder.stated_statics(change)
        expiry = {
            column: at
            for column, at in (change.value_expiry or {}).items()
            if column in columns and column in image
        }
        return PartitionWrite(
            outcome,
            change.static_only,
            partition,
            routing,
            change.version,
            columns,
            self.builder.static_values(image),
            expiry,
            self.builder.source_kind(change),
            token,
        )

    # -------------------------------------------------- 2. partition documents

    def _write_partitions(
        self, writes: list[PartitionWrite], traffic: Traffic
    ) -> dict[str, str | None]:
        """Merge each partition's statements into its document; returns partition -> routing."""
        by_partition: dict[str, list[PartitionWrite]] = {}
        for write in writes:
            by_partition.setdefault(write.partition, []).append(write)
        routings = {partition: group[0].routing for partition, group in by_partition.items()}
        pending = list(by_partition)
        rounds = 0
        while pending:
            rounds = self._next_round(rounds, "partition documents")
            stored = self._read_partitions({p: routings[p] for p in pending}, traffic)
            attempts: list[tuple[str, set[int], _Attempt]] = []
            for partition in pending:
                document = stored.get(partition)
                state = self._partition_state(document)
                owners = self._apply(state, by_partition[partition])
                if not owners:
                    _settle(by_partition[partition], owners)  # nothing newer: all stale
                    continue
                doc_id = self.builder.partition_doc_id(partition)
                attempt = _Attempt(doc_id, routings[partition], state.body(partition), document)
                attempts.append((partition, owners, attempt))
            results = self.bulk.send([attempt.action() for *_, attempt in attempts], traffic)
            pending = []
            for (partition, owners, attempt), result in zip(attempts, results, strict=True):
                group = by_partition[partition]
                if result.verdict is Verdict.STALE:
                    pending.append(partition)  # another writer changed it: read it again
                elif result.verdict is Verdict.REJECTED:
                    for write in group:
                        write.outcome.reject(attempt.doc_id, result.reason)
                else:
                    _settle(group, owners)
        return routings

    def _read_partitions(
        self, routings: Mapping[str, str | None], traffic: Traffic
    ) -> dict[str, Document]:
        """The stored partition documents of these partitions (partition -> document)."""
        doc_ids = {self.builder.partition_doc_id(p): p for p in routings}
        stored = self.reader.get({doc_id: routings[p] for doc_id, p in doc_ids.items()}, traffic)
        return {doc_ids[doc_id]: document for doc_id, document in stored.items()}

    def _partition_state(self, document: Document | None) -> PartitionState:
        if document is None:
            return PartitionState(0, {}, {}, {})
        meta = _meta(document)
        revision = _meta_int(document, "version")
        values = meta.get("statics")
        versions = meta.get("static_versions")
        if not isinstance(versions, dict):
            # Written before statics were merged column by column: all at the document's version.
            versions = dict.fromkeys(self._static_columns, revision)
        expiry = meta.get(VALUE_EXPIRY)
        return PartitionState(
            revision,
            dict(values) if isinstance(values, dict) else {},
            {str(k): int(v) for k, v in versions.items()},
            {str(k): int(v) for k, v in expiry.items()} if isinstance(expiry, dict) else {},
            str(meta.get("source", "stream")),
            bool(meta.get(DEAD_LETTER)),
            meta.get("token") if isinstance(meta.get("token"), str) else None,
        )

    def _apply(self, state: PartitionState, writes: Iterable[PartitionWrite]) -> set[int]:
        """Merge the statements into `state`, oldest first; returns id()s of the writes that
        still own a column afterwards (the others were stale, here or against the stored).
        """
        owners: dict[str, PartitionWrite] = {}
        shown_before = (dict(state.values), dict(state.expiry))
        newest = state.revision
        for write in sorted(writes, key=lambda w: w.version):
            for column in write.columns:
                if write.version <= state.versions.get(column, 0):
                    continue
                state.versions[column] = write.version
                owners[column] = write
                self._set_column(state, column, write)
                newest = max(newest, write.version)
                state.source = write.read_from
                state.token = write.token or state.token
        if not owners:
            return set()
        state.dead_letter = False  # a newer statement of the statics replaces a mark
        if (state.values, state.expiry) != shown_before:
            state.revision = max(state.revision + 1, newest)
        return {id(write) for write in owners.values()}

    def _set_column(self, state: PartitionState, column: str, write: PartitionWrite) -> None:
        field_name = self.builder.static_field.get(column)
        if field_name is not None:
            if field_name in write.values:
                state.values[field_name] = write.values[field_name]
            else:
                state.values.pop(field_name, None)
        if column in write.expiry:
            state.expiry[column] = write.expiry[column]
        else:
            state.expiry.pop(column, None)

    # -------------------------------------------------------- 3. row documents

    def _write_rows(
        self, writes: list[RowWrite], traffic: Traffic, checks: list[StaticsCheck]
    ) -> list[WrittenRow]:
        """Write rows optimistically; returns the live rows written (or found written)."""
        written: list[WrittenRow] = []
        pending = writes
        rounds = 0
        while pending:
            rounds = self._next_round(rounds, "row documents")
            stored = self.reader.get(self._rows_and_partitions(pending), traffic)
            attempts: list[tuple[RowWrite, _Attempt]] = []
            for write in pending:
                row = stored.get(write.doc_id)
                partition = stored.get(self.builder.partition_doc_id(write.partition))
                if row is not None and _meta_int(row, "version") >= write.version:
                    write.outcome.settle(Verdict.STALE)
                    if _meta_int(row, "version") == write.version:
                        # Maybe our own write before a crash or a lost answer: what it
                        # would have asked for after its write still has to happen.
                        self._ask_check(write, partition, None, checks)
                    if _is_live(row):
                        written.append(WrittenRow(write.outcome, row, write.partition))
                    continue
                self._ask_check(write, partition, row, checks)
                body = self._row_body(write, row, partition)
                attempts.append((write, _Attempt(write.doc_id, write.routing, body, row)))
            results = self.bulk.send([attempt.action() for _, attempt in attempts], traffic)
            pending = []
            for (write, attempt), result in zip(attempts, results, strict=True):
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

    def _ask_check(
        self,
        write: RowWrite,
        partition: Document | None,
        row: Document | None,
        checks: list[StaticsCheck],
    ) -> None:
        """Ask the job to read the partition's statics again, where a record may be missing.

        Keyspaces sends one record per row a partition delete removes, and
        none for the statics it removes; a partition holding statics alone
        sends nothing at all. So after a stream row delete, and before a row
        enters a partition whose document shows statics (where no live row
        was), the statics may be gone from the table.
        """
        change = write.outcome.change
        if isinstance(change.provenance, ScanRead) or change.static_only:
            return  # a snapshot row read the statics itself
        if change.op is Op.DELETE:
            wanted = True
        else:
            showing = partition is not None and bool(_meta(partition).get("statics"))
            wanted = showing and (row is None or not _is_live(row))
        if wanted:
            checks.append(self._check(change))

    def _check(self, change: Change) -> StaticsCheck:
        """Read the statics of `change`'s partition again, at the top of its millisecond.

        Above every static change made in the same millisecond: those came
        before the read too (it happens after this record was read from the
        stream), and their order against this record is not known.
        """
        at = change.version
        if isinstance(change.provenance, StreamRead):
            at = max(at, last_of_millisecond(change.provenance.created_at_ms))
        count = len(self.builder.table.partition_key)
        return StaticsCheck(change.key[:count], at, change)

    def _static_checks(self, writes: list[PartitionWrite]) -> list[StaticsCheck]:
        """A static record may come after a partition delete that sent no record (a
        partition holding statics alone sends none): read the statics again after it."""
        return [
            self._check(write.outcome.change)
            for write in writes
            if write.counted
            and isinstance(write.outcome.change.provenance, StreamRead)
            and write.outcome.verdict is not Verdict.REJECTED
        ]

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
        if write.token is not None:
            meta["token"] = write.token
        if change.op is Op.DELETE:
            # A tombstone keeps the row's version, so an older write stays refused.
            meta["static_version"] = 0
            meta["deleted"] = True
            return {META_FIELD: meta}
        stored = None if partition is None else self._partition_state(partition).statics()
        shown = _newest([self._statics_of_row(row), stored], self._no_statics)
        body = {**write.fields, **shown.values}
        meta["static_version"] = shown.version
        if change.expires_at_ms is not None:
            meta["expires_at"] = change.expires_at_ms
        meta["deleted"] = False
        meta.update(expiry_meta({**write.own_expiry, **shown.expiry}))
        if write.own_expiry:
            meta[KEY_CELLS] = self.builder.key_cells(change.key)
        body[META_FIELD] = meta
        return body

    def _statics_of_row(self, row: Document | None) -> Statics | None:
        if row is None or not _is_live(row):
            return None  # a tombstone or a mark shows no statics
        values = {name: row.body[name] for name in self._static_fields if name in row.body}
        expiry = {c: at for c, at in _expiry_of(row).items() if c in self._static_columns}
        return Statics(_meta_int(row, "static_version"), values, expiry)

    # ---------------------------------------------------------------- 4. fan-out

    def _fan_out(
        self,
        routings: Mapping[str, str | None],
        blame: Mapping[str, list[Outcome]],
        traffic: Traffic,
    ) -> None:
        """Merge the partitions' stored statics into their live rows that show older ones.

        The partition documents are read again (they may hold newer statics than
        this batch's, and a crash may have cut an earlier fan-out short); then
        the index is refreshed, so the scan, from one point in time after it,
        sees every row written before the partition documents were.
        """
        if not routings:
            return
        targets = {p: state.statics() for p, state in self._stored_states(routings, traffic)}
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
                        blamed = list(blame.get(partition, ()))
                        merges.append(Merge(row.doc_id, row.routing, group[partition], blamed, row))
                    self._merge(merges, traffic)

    # ------------------------------------------------------ 5. the late statics

    def _close_late_statics(self, written: list[WrittenRow], traffic: Traffic) -> None:
        """Re-read the partition documents of the rows written; merge where newer ones landed."""
        if not written:
            return
        routings = {row.partition: row.document.routing for row in written}
        current = {p: state.statics() for p, state in self._stored_states(routings, traffic)}
        late = [
            Merge(
                row.document.doc_id,
                row.document.routing,
                statics,
                [row.outcome] if row.outcome is not None else [],
                row.document,
            )
            for row in written
            if (statics := current.get(row.partition)) is not None and statics.version > row.shown
        ]
        self._merge(late, traffic)

    # ------------------------------------------------------------------- 6. marks

    def _mark_rejected(self, outcomes: list[Outcome], traffic: Traffic) -> None:
        """Mark the documents of dead-lettered changes (see the module docstring)."""
        rejected = [o.change for o in outcomes if o.verdict is Verdict.REJECTED]
        if rejected:
            self.mark(rejected, traffic)

    def mark(self, changes: Sequence[Change], traffic: Traffic) -> None:
        """Mark each change's document as dead-lettered at the change's version.

        A row gets a mark in place of its document, unless it already holds
        that version or a newer one; a static-only change marks its partition
        document (which the alias hides anyway: the rows keep the statics they
        showed, and `verify` finds the mark).
        """
        rows: dict[str, Change] = {}
        partitions: dict[str, str | None] = {}
        for change in changes:
            try:
                partition = self.builder.partition_id(change.key)
                if change.static_only:
                    partitions[partition] = self.builder.routing(change.key)
                else:
                    held = rows.get(self.builder.doc_id(change.key))
                    if held is None or change.version > held.version:
                        rows[self.builder.doc_id(change.key)] = change
            except (TypeError, ValueError):
                continue  # no id can be made for it: there is no document to mark
        self._mark_rows(rows, traffic)
        self._mark_partitions(partitions, traffic)

    def _mark_rows(self, rows: dict[str, Change], traffic: Traffic) -> None:
        pending = dict(rows)
        rounds = 0
        while pending:
            rounds = self._next_round(rounds, "dead-letter marks")
            ids = {doc_id: self.builder.routing(c.key) for doc_id, c in pending.items()}
            stored = self.reader.get(ids, traffic)
            attempts = []
            for doc_id, change in pending.items():
                row = stored.get(doc_id)
                if row is not None and _meta_int(row, "version") >= change.version:
                    continue  # it holds this change's version or a newer one
                body = self.builder.mark_body(change)
                body[META_FIELD]["partition"] = self.builder.partition_id(change.key)
                body[META_FIELD]["static_version"] = 0
                attempts.append(_Attempt(doc_id, ids[doc_id], body, row))
            results = self.bulk.send([attempt.action() for attempt in attempts], traffic)
            pending = {
                attempt.doc_id: pending[attempt.doc_id]
                for attempt, result in zip(attempts, results, strict=True)
                if result.verdict is Verdict.STALE
            }

    def _mark_partitions(self, routings: dict[str, str | None], traffic: Traffic) -> None:
        pending = dict(routings)
        rounds = 0
        while pending:
            rounds = self._next_round(rounds, "dead-letter marks")
            stored = self._read_partitions(pending, traffic)
            attempts = []
            for partition, document in stored.items():
                state = self._partition_state(document)
                state.dead_letter = True
                attempts.append((partition, self._rewrite(partition, state, document, pending)))
            results = self.bulk.send([attempt.action() for _, attempt in attempts], traffic)
            pending = {
                partition: routings[partition]
                for (partition, _), result in zip(attempts, results, strict=True)
                if result.verdict is Verdict.STALE
            }

    # ------------------------------------------------------------ expiry sweep

    def _rewrite(
        self,
        partition: str,
        state: PartitionState,
        document: Document,
        routings: Mapping[str, str | None],
    ) -> _Attempt:
        """A partition document rewritten as `state`, conditional on the one read."""
        doc_id = self.builder.partition_doc_id(partition)
        return _Attempt(doc_id, routings[partition], state.body(partition), document)

    def drop_expired(
        self, partitions: Mapping[str, str | None], now_ms: int, traffic: Traffic
    ) -> int:
        """Remove the static values whose TTL ran out by `now_ms` from these partition
        documents, then from their rows; returns how many documents were rewritten.

        A column keeps the version of the change that set it: a replay of that
        change is still refused (not newer), a newer change still wins.
        """
        pending = dict(partitions)
        rewritten = 0
        rounds = 0
        while pending:
            rounds = self._next_round(rounds, "expired statics")
            stored = self._read_partitions(pending, traffic)
            attempts = []
            for partition, document in stored.items():
                state = self._partition_state(document)
                due = [column for column, at in state.expiry.items() if at <= now_ms]
                if not due:
                    continue
                for column in due:
                    state.expiry.pop(column)
                    field_name = self.builder.static_field.get(column)
                    if field_name is not None:
                        state.values.pop(field_name, None)
                state.revision += 1
                attempts.append((partition, self._rewrite(partition, state, document, pending)))
            results = self.bulk.send([attempt.action() for _, attempt in attempts], traffic)
            rewritten += sum(1 for r in results if r.verdict is Verdict.APPLIED)
            pending = {
                partition: partitions[partition]
                for (partition, _), result in zip(attempts, results, strict=True)
                if result.verdict is Verdict.STALE
            }
        self._fan_out(partitions, {}, traffic)
        return rewritten

    def show_current_statics(self, rows: Sequence[Document], traffic: Traffic) -> None:
        """Merge their partitions' current statics into these rows, where those are newer."""
        written = [
            WrittenRow(None, row, str(_meta(row).get("partition")))
            for row in rows
            if _meta(row).get("partition") is not None
        ]
        self._close_late_statics(written, traffic)

    # ------------------------------------------------- shared by steps 4 and 5

    def _stored_states(
        self, routings: Mapping[str, str | None], traffic: Traffic
    ) -> list[tuple[str, PartitionState]]:
        """The stored partition documents of these partitions, parsed."""
        stored = self._read_partitions(routings, traffic)
        return [(p, self._partition_state(document)) for p, document in stored.items()]

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
        meta = {k: v for k, v in _meta(stored).items() if k not in (VALUE_EXPIRY, VALUE_EXPIRES_AT)}
        meta["static_version"] = merge.target.version
        own = {c: at for c, at in _expiry_of(stored).items() if c not in self._static_columns}
        meta.update(expiry_meta({**own, **merge.target.expiry}))
        body[META_FIELD] = meta
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


def _keep_newest(newest: dict[str, RowWrite], key: str, write: RowWrite) -> None:
    """Keep the higher-versioned write under `key`; the other's change is stale."""
    held = newest.get(key)
    if held is None or write.version > held.version:
        newest[key] = write
        loser = held
    else:
        loser = write
    if loser is not None:
        loser.outcome.settle(Verdict.STALE)


def _settle(writes: Iterable[PartitionWrite], owners: set[int]) -> None:
    """A static-only change that still owns a column was applied; the others were stale."""
    for write in writes:
        if write.counted:
            write.outcome.settle(Verdict.APPLIED if id(write) in owners else Verdict.STALE)


def _blame(writes: Iterable[PartitionWrite]) -> dict[str, list[Outcome]]:
    """Per partition, the changes a refused merge of its statics is blamed on: those whose
    statics were not stale."""
    blame: dict[str, list[Outcome]] = {}
    for write in writes:
        if write.outcome.verdict is not Verdict.STALE:
            blame.setdefault(write.partition, []).append(write.outcome)
    return blame


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
                {"term": {f"{META_FIELD}.{DEAD_LETTER}": True}},
            ],
        }
    }


def _meta(document: Document) -> Mapping[str, Any]:
    meta = document.body.get(META_FIELD)
    return meta if isinstance(meta, dict) else {}


def _meta_int(document: Document, key: str) -> int:
    value = _meta(document).get(key)
    return value if isinstance(value, int) else 0


def _is_live(row: Document) -> bool:
    """A row document that shows a row: not a tombstone, not a dead-letter mark."""
    meta = _meta(row)
    return not meta.get("deleted") and not meta.get(DEAD_LETTER)


def _expiry_of(document: Document) -> dict[str, int]:
    expiry = _meta(document).get(VALUE_EXPIRY)
    if not isinstance(expiry, dict):
        return {}
    return {str(k): int(v) for k, v in expiry.items() if isinstance(v, int)}


def _newest(candidates: Sequence[Statics | None], none_known: Statics) -> Statics:
    """The statics with the highest revision (the first of equals)."""
    best = none_known
    for candidate in candidates:
        if candidate is not None and candidate.version > best.version:
            best = candidate
    return best
