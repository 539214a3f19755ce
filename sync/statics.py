"""Writes for tables with static columns: partition documents and optimistic merges.

In Keyspaces a static column belongs to the partition. A write touching only
statics arrives as a record of its own (`Change.static_only`), possibly in
another shard than the partition's rows and unordered against them; a row
write that does not touch statics arrives without them. Yet a search hit for
a row must show its partition's *current* static values.

A row document therefore depends on two version lines (the row's and the
partition's statics), which one external version cannot order, and osmem has
no scripted updates. So, for these tables only (`BulkWriter` chooses):

- **Partition document** `!p:<partition id>`: the newest static values, as
  `_ks2os.statics`, written with external version = their version (a 1-D
  state: a stale static write gets a 409 like any stale write).
- **Row documents** carry `_ks2os.version` (the row's), `_ks2os.static_version`
  (the statics shown) and `_ks2os.partition`; they are written with
  optimistic concurrency (`if_seq_no`/`if_primary_term`, or `create`), after
  reading the stored row and its partition document: stale when the stored
  row version is not lower, and the statics shown are the newest of the
  partition document's, the stored row's and the change's own. A conflict
  (409 on a conditional write) means someone else wrote: re-read, recompute,
  write again, without waiting.
- **Fan-out**: after writing partition documents, refresh and search the
  partitions' live rows whose `static_version` is below the partition
  document's version, and merge the statics into each (optimistically).
- **Closing the race**: after writing rows, re-read their partition
  documents and merge into any row written with older statics. A concurrent
  static write either happened before that re-read (then it is seen) or after
  the row write (then its refresh + search finds the row).

Every step is idempotent and driven by what is stored, so a replay after a
crash repairs what the crash left (the fan-out runs even when the partition
document write is stale). docs/versions.md ("Static columns") has the
argument; 429/5xx and connection errors are retried with backoff like the
external-version path, for at most `max_retry_seconds`.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as OSConnectionError
from opensearchpy.exceptions import TransportError

from sync.config import WriterSettings
from sync.deadletter import DeadLetter
from sync.documents import META_FIELD, PARTITION_KIND, DocumentBuilder
from sync.errors import DecodeError, OpenSearchUnavailable, TerminalError
from sync.model import Change, Op
from sync.retry import retry_pending

log = logging.getLogger(__name__)

# Conflicts mean another writer made progress, so they are retried at once;
# the bound only stops a pathological livelock (the batch is then replayed).
MAX_CONFLICT_ROUNDS = 100
# A bool query's clause limit is 1024 by default; two clauses per partition.
_PARTITIONS_PER_SEARCH = 200
_BULK_FILTER = "items.*.status,items.*.error,items.*._seq_no,items.*._primary_term"

T = TypeVar("T")
R = TypeVar("R")


class Outcome(enum.Enum):
    APPLIED = "applied"
    STALE = "stale"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Statics:
    """A partition's static values (document fields) at a version; version 0 = none known."""

    version: int
    values: Mapping[str, Any]


@dataclass(slots=True)
class Stored:
    """A document as read, with the token a conditional write must match."""

    source: dict[str, Any]
    seq_no: int
    primary_term: int

    @property
    def meta(self) -> Mapping[str, Any]:
        meta = self.source.get(META_FIELD)
        return meta if isinstance(meta, dict) else {}


@dataclass(slots=True)
class _Write:
    """One bulk item: external-versioned, conditional (if_seq_no) or create-only."""

    doc_id: str
    routing: str | None
    body: dict[str, Any]
    external_version: int | None = None
    expect: Stored | None = None  # conditional on this stored state; None -> create

    def lines(self) -> bytes:
        meta: dict[str, Any] = {"_id": self.doc_id}
        if self.routing is not None:
            meta["routing"] = self.routing
        op = "index"
        if self.external_version is not None:
            meta["version"] = self.external_version
            meta["version_type"] = "external"
        elif self.expect is not None:
            meta["if_seq_no"] = self.expect.seq_no
            meta["if_primary_term"] = self.expect.primary_term
        else:
            op = "create"
        return orjson.dumps({op: meta}) + b"\n" + orjson.dumps(self.body) + b"\n"


@dataclass(frozen=True, slots=True)
class _ItemResult:
    status: int
    reason: str
    seq_no: int | None
    primary_term: int | None


@dataclass(slots=True)
class _StaticTask:
    """Static values a change states for its partition (static-only change or snapshot row)."""

    owner: int  # index of the change in the batch
    counted: bool  # False for a snapshot row's statics: the row's outcome is the change's
    partition: str
    routing: str | None
    statics: Statics
    source_kind: str


@dataclass(slots=True)
class _RowTask:
    owner: int
    doc_id: str
    partition: str
    routing: str | None
    change: Change
    fields: dict[str, Any]  # row fields without statics; empty for a delete
    own_statics: Statics | None


@dataclass(slots=True)
class _Merge:
    """Bring one row document's statics up to `target` (if it still shows older ones)."""

    doc_id: str
    routing: str | None
    target: Statics
    owners: tuple[int, ...]  # changes blamed if the merged document is refused
    stored: Stored | None = None  # None: read it first


@dataclass(slots=True)
class _Round(Generic[T]):
    retry_now: list[T] = field(default_factory=list)  # conflicts: someone else wrote
    retry_later: list[T] = field(default_factory=list)  # 429/5xx/connection: back off


@dataclass(slots=True)
class _Settling(Generic[T]):
    """What one `_settle` loop carries between attempts."""

    pending: list[T]
    conflicts: int = 0
    error: str = ""


class _Transient(Exception):
    """A whole request failed in a way worth retrying after a pause."""


@dataclass
class MergeResult:
    """Per-change outcomes of one batch (indexes into the batch) and the dead letters."""

    outcomes: dict[int, Outcome] = field(default_factory=dict)
    dead: dict[int, DeadLetter] = field(default_factory=dict)
    retries: int = 0
    bytes: int = 0
    requests: int = 0


class StaticMergeWriter:
    """Writes one static table's changes to one index; see the module docstring."""

    def __init__(
        self,
        client: OpenSearch,
        index: str,
        builder: DocumentBuilder,
        settings: WriterSettings,
    ) -> None:
        self.client = client
        self.index = index
        self.builder = builder
        self.settings = settings
        self._static_fields = builder.static_fields
        # What a row shows before any static value is known (explicit nulls, if so mapped).
        self._no_statics = Statics(0, builder.static_values({}))

    def write(self, changes: Sequence[Change], result: MergeResult | None = None) -> MergeResult:
        """Resolve every change; returns once each is applied, stale or refused.

        `result` (fresh if not given) is filled in as the work goes, so the
        caller still has the request count when an error interrupts it.
        """
        result = result if result is not None else MergeResult()
        statics, rows = self._plan(changes, result)
        self._write_partitions(statics, changes, result)
        written = self._write_rows(rows, result)
        self._fan_out(statics, changes, result)
        self._late_statics(written, changes, result)
        return result

    # ---------------------------------------------------------------- plan

    def _plan(
        self, changes: Sequence[Change], result: MergeResult
    ) -> tuple[list[_StaticTask], list[_RowTask]]:
        """Tasks for the newest change per partition (statics) and per row; older ones are stale."""
        newest_statics: dict[str, _StaticTask] = {}
        newest_rows: dict[str, _RowTask] = {}
        for owner, change in enumerate(changes):
            try:
                static_task, row_task = self._tasks(owner, change)
            except (TypeError, ValueError, OverflowError, DecodeError) as exc:
                self._refuse(result, owner, change, "", f"document could not be built: {exc}")
                continue
            if static_task is not None:
                self._keep_newest(newest_statics, static_task.partition, static_task, result)
            if row_task is not None:
                self._keep_newest(newest_rows, row_task.doc_id, row_task, result)
        return list(newest_statics.values()), list(newest_rows.values())

    def _tasks(self, owner: int, change: Change) -> tuple[_StaticTask | None, _RowTask | None]:
        builder = self.builder
        partition = builder.partition_id(change.key)
        routing = builder.routing(change.key)
        static_task = None
        if builder.carries_statics(change):
            image = change.image or {}
            static_task = _StaticTask(
                owner,
                counted=change.static_only,
                partition=partition,
                routing=routing,
                statics=Statics(change.version, builder.static_values(image)),
                source_kind=builder.source_kind(change),
            )
        if change.static_only:
            return static_task, None
        # A row the mapping's filter or hook leaves out comes back as a delete (a tombstone).
        row_change, fields = builder.row_document(change)
        own = static_task.statics if static_task is not None else None
        row_task = _RowTask(
            owner, builder.doc_id(change.key), partition, routing, row_change, fields, own
        )
        return static_task, row_task

    def _keep_newest(
        self,
        newest: dict[str, Any],
        key: str,
        task: _StaticTask | _RowTask,
        result: MergeResult,
    ) -> None:
        held = newest.get(key)
        if held is None or _version_of(task) > _version_of(held):
            newest[key] = task
            loser = held
        else:
            loser = task
        if loser is not None and _counted(loser):
            result.outcomes[loser.owner] = Outcome.STALE

    # ---------------------------------------------------- partition documents

    def _write_partitions(
        self, tasks: list[_StaticTask], changes: Sequence[Change], result: MergeResult
    ) -> None:
        def run(pending: list[_StaticTask]) -> _Round[_StaticTask]:
            writes = [self._partition_write(task) for task in pending]
            outcome: _Round[_StaticTask] = _Round()
            for task, item in zip(pending, self._bulk(writes, result), strict=True):
                if 200 <= item.status < 300 or item.status == 409:
                    if task.counted:
                        applied = item.status != 409
                        result.outcomes[task.owner] = Outcome.APPLIED if applied else Outcome.STALE
                elif _transient_status(item.status):
                    outcome.retry_later.append(task)
                else:
                    doc_id = self.builder.partition_doc_id(task.partition)
                    self._refuse(result, task.owner, changes[task.owner], doc_id, item.reason)
            return outcome

        self._settle(tasks, run, "partition documents", result)

    def _partition_write(self, task: _StaticTask) -> _Write:
        body = {
            META_FIELD: {
                "kind": PARTITION_KIND,
                "partition": task.partition,
                "version": task.statics.version,
                "statics": dict(task.statics.values),
                "source": task.source_kind,
                "deleted": False,
            }
        }
        doc_id = self.builder.partition_doc_id(task.partition)
        return _Write(doc_id, task.routing, body, external_version=task.statics.version)

    # -------------------------------------------------------- row documents

    def _write_rows(self, tasks: list[_RowTask], result: MergeResult) -> list[_Merge]:
        """Write rows optimistically; returns the live rows written (or found written)."""
        written: list[_Merge] = []

        def run(pending: list[_RowTask]) -> _Round[_RowTask]:
            stored = self._read(
                [(t.doc_id, t.routing) for t in pending]
                + [(self.builder.partition_doc_id(t.partition), t.routing) for t in pending],
                result,
            )
            writes: list[_RowTask] = []
            bodies: list[_Write] = []
            for task in pending:
                row = stored.get(task.doc_id)
                if row is not None and _int(row.meta.get("version")) >= task.change.version:
                    result.outcomes[task.owner] = Outcome.STALE
                    if not row.meta.get("deleted"):
                        # Maybe our own write before a crash or a failed request: the
                        # check for newer statics it may have missed still has to run.
                        written.append(self._as_written(task, row))
                    continue
                partition = stored.get(self.builder.partition_doc_id(task.partition))
                writes.append(task)
                bodies.append(self._row_write(task, row, partition))
            outcome: _Round[_RowTask] = _Round()
            for task, write, item in zip(writes, bodies, self._bulk(bodies, result), strict=True):
                if 200 <= item.status < 300:
                    result.outcomes[task.owner] = Outcome.APPLIED
                    if task.change.op is Op.UPSERT and item.seq_no is not None:
                        now = Stored(write.body, item.seq_no, item.primary_term or 0)
                        written.append(self._as_written(task, now))
                elif item.status == 409:
                    outcome.retry_now.append(task)
                elif _transient_status(item.status):
                    outcome.retry_later.append(task)
                else:
                    self._refuse(result, task.owner, task.change, task.doc_id, item.reason)
            return outcome

        self._settle(tasks, run, "row documents", result)
        return written

    def _row_write(self, task: _RowTask, row: Stored | None, partition: Stored | None) -> _Write:
        change = task.change
        meta: dict[str, Any] = {
            "version": change.version,
            "source": self.builder.source_kind(change),
            "partition": task.partition,
        }
        if change.op is Op.DELETE:
            # A tombstone keeps the row's version, so an older write stays refused.
            meta["static_version"] = 0
            meta["deleted"] = True
            body: dict[str, Any] = {META_FIELD: meta}
        else:
            candidates = [
                task.own_statics,
                self._statics_of_row(row),
                self._statics_of_partition(partition),
            ]
            shown = _newest(candidates, self._no_statics)
            body = {**task.fields, **shown.values}
            meta["static_version"] = shown.version
            if change.expires_at_ms is not None:
                meta["expires_at"] = change.expires_at_ms
            meta["deleted"] = False
            body[META_FIELD] = meta
        return _Write(task.doc_id, task.routing, body, expect=row)

    @staticmethod
    def _as_written(task: _RowTask, stored: Stored) -> _Merge:
        """A stored live row, as a candidate for the check against its partition's statics."""
        shown = _int(stored.meta.get("static_version"))
        return _Merge(task.doc_id, task.routing, Statics(shown, {}), (task.owner,), stored)

    def _statics_of_row(self, row: Stored | None) -> Statics | None:
        if row is None or row.meta.get("deleted"):
            return None  # a tombstone shows no statics
        values = {name: row.source[name] for name in self._static_fields if name in row.source}
        return Statics(_int(row.meta.get("static_version")), values)

    @staticmethod
    def _statics_of_partition(partition: Stored | None) -> Statics | None:
        if partition is None:
            return None
        values = partition.meta.get("statics")
        return Statics(
            _int(partition.meta.get("version")), values if isinstance(values, dict) else {}
        )

    # ------------------------------------------------------------- fan-out

    def _late_statics(
        self, written: list[_Merge], changes: Sequence[Change], result: MergeResult
    ) -> None:
        """Merge into rows just written with statics older than their partition's now."""
        if not written:
            return
        routings = {self._partition_of(m): m.routing for m in written}
        partitions = self._once(
            "partition documents",
            result,
            functools.partial(self._partition_statics, routings, result),
        )
        late: list[_Merge] = []
        for merge in written:
            current = partitions.get(self._partition_of(merge))
            if current is not None and current.version > merge.target.version:
                late.append(
                    _Merge(merge.doc_id, merge.routing, current, merge.owners, merge.stored)
                )
        self._merge(late, changes, result, set())

    def _fan_out(
        self, tasks: list[_StaticTask], changes: Sequence[Change], result: MergeResult
    ) -> None:
        """Merge the partitions' stored statics into their live rows that show older ones.

        Page by page: a merged row no longer matches the search, so after a
        refresh the next page is simply the first one again (no sort order or
        cursor needed); rows whose merge was refused are left out by id.
        """
        if not tasks:
            return
        owners = {task.partition: task.owner for task in tasks}
        routings = {task.partition: task.routing for task in tasks}

        targets = self._once(
            "static fan-out", result, functools.partial(self._partition_statics, routings, result)
        )
        partitions = sorted(targets)
        refused: set[str] = set()
        for start in range(0, len(partitions), _PARTITIONS_PER_SEARCH):
            chunk = {p: targets[p] for p in partitions[start : start + _PARTITIONS_PER_SEARCH]}
            while True:
                search = functools.partial(self._older_rows, chunk, refused, result)
                hits = self._once("static fan-out", result, search)
                merges = []
                for hit in hits:
                    stored = Stored(hit["_source"], hit["_seq_no"], hit["_primary_term"])
                    partition = str(stored.meta.get("partition"))
                    merges.append(
                        _Merge(
                            hit["_id"],
                            hit.get("_routing"),
                            chunk[partition],
                            (owners[partition],),
                            stored,
                        )
                    )
                self._merge(merges, changes, result, refused)
                if len(hits) < self.settings.max_docs:
                    break

    def _partition_statics(
        self, routings: Mapping[str, str | None], result: MergeResult
    ) -> dict[str, Statics]:
        doc_ids = {self.builder.partition_doc_id(p): p for p in routings}
        stored = self._read([(doc_id, routings[p]) for doc_id, p in doc_ids.items()], result)
        found: dict[str, Statics] = {}
        for doc_id, partition in doc_ids.items():
            statics = self._statics_of_partition(stored.get(doc_id))
            if statics is not None:
                found[partition] = statics
        return found

    def _older_rows(
        self, targets: Mapping[str, Statics], refused: set[str], result: MergeResult
    ) -> list[dict[str, Any]]:
        """One page of live rows whose statics are older than their partition's target."""
        if not targets:
            return []
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
        must_not: list[dict[str, Any]] = [
            {"term": {f"{META_FIELD}.kind": PARTITION_KIND}},
            {"term": {f"{META_FIELD}.deleted": True}},
        ]
        if refused:
            must_not.append({"ids": {"values": sorted(refused)}})
        body = {
            "query": {
                "bool": {
                    "filter": [{"bool": {"should": should, "minimum_should_match": 1}}],
                    "must_not": must_not,
                }
            },
            "size": self.settings.max_docs,
            "seq_no_primary_term": True,
        }
        self._call(result, self.client.indices.refresh, index=self.index)
        page = self._call(result, self.client.search, index=self.index, body=body)
        hits: list[dict[str, Any]] = page["hits"]["hits"]
        return hits

    # --------------------------------------------------------------- merges

    def _merge(
        self,
        merges: list[_Merge],
        changes: Sequence[Change],
        result: MergeResult,
        refused: set[str],
    ) -> None:
        """Replace each row's statics by its target's, unless it already shows newer ones.

        Rows whose merged document OpenSearch refuses are added to `refused`.
        """
        merges = _newest_merge_per_row(merges)

        def run(pending: list[_Merge]) -> _Round[_Merge]:
            unread = [(m.doc_id, m.routing) for m in pending if m.stored is None]
            fresh = self._read(unread, result) if unread else {}
            writes: list[_Merge] = []
            bodies: list[_Write] = []
            for merge in pending:
                stored = merge.stored if merge.stored is not None else fresh.get(merge.doc_id)
                if stored is None or stored.meta.get("deleted"):
                    continue  # gone: a re-insert reads the partition document itself
                if _int(stored.meta.get("static_version")) >= merge.target.version:
                    continue
                writes.append(merge)
                bodies.append(self._merged(merge, stored))
            outcome: _Round[_Merge] = _Round()
            for merge, item in zip(writes, self._bulk(bodies, result), strict=True):
                if 200 <= item.status < 300:
                    continue
                merge.stored = None  # whatever happened, read it again before retrying
                if item.status == 409:
                    outcome.retry_now.append(merge)
                elif _transient_status(item.status):
                    outcome.retry_later.append(merge)
                else:
                    refused.add(merge.doc_id)
                    reason = f"static values refused for row {merge.doc_id}: {item.reason}"
                    for owner in merge.owners:
                        self._refuse(result, owner, changes[owner], merge.doc_id, reason)
            return outcome

        self._settle(merges, run, "static merges", result)

    def _merged(self, merge: _Merge, stored: Stored) -> _Write:
        body = {k: v for k, v in stored.source.items() if k not in self._static_fields}
        body.update(merge.target.values)
        body[META_FIELD] = {**stored.meta, "static_version": merge.target.version}
        return _Write(merge.doc_id, merge.routing, body, expect=stored)

    def _partition_of(self, merge: _Merge) -> str:
        assert merge.stored is not None
        return str(merge.stored.meta.get("partition"))

    # ------------------------------------------------------- OpenSearch I/O

    def _settle(
        self,
        pending: list[T],
        run: Callable[[list[T]], _Round[T]],
        what: str,
        result: MergeResult,
    ) -> None:
        """Run rounds until nothing is left: conflicts at once, transient failures with backoff."""
        if not pending:
            return
        state = _Settling(pending)

        def attempt() -> list[T]:
            while state.pending:
                try:
                    outcome = run(state.pending)
                except _Transient as exc:
                    state.error = str(exc)
                    return list(state.pending)
                state.pending = outcome.retry_later + outcome.retry_now
                if outcome.retry_later:
                    state.error = f"{len(outcome.retry_later)} item(s) pushed back"
                    return list(state.pending)
                if outcome.retry_now:
                    state.conflicts += 1
                    if state.conflicts > MAX_CONFLICT_ROUNDS:
                        raise OpenSearchUnavailable(
                            f"{what} in {self.index}: still conflicting after "
                            f"{MAX_CONFLICT_ROUNDS} rounds",
                            hint="another writer keeps changing the same documents; "
                            "the batch was not checkpointed and will be replayed",
                        )
            return []

        def on_backoff(details: Any) -> None:
            result.retries += 1
            log.warning(
                "%s in %s: retrying after %.2fs (%s)",
                what,
                self.index,
                details.get("wait", 0.0),
                state.error,
            )

        remaining = retry_pending(attempt, self.settings, on_backoff)
        if remaining:
            raise OpenSearchUnavailable(
                f"{what} in {self.index}: {len(remaining)} item(s) still failing after "
                f"{self.settings.max_retry_seconds:.0f}s: {state.error}",
                hint="check OpenSearch health; the batch was not checkpointed and will be replayed",
            )

    def _once(self, what: str, result: MergeResult, request: Callable[[], R]) -> R:
        """`request` (whose failures worth retrying raise `_Transient`), retried with backoff."""
        answer: list[R] = []

        def run(pending: list[None]) -> _Round[None]:
            answer[:] = [request()]
            return _Round()

        self._settle([None], run, what, result)
        return answer[0]

    def _call(self, result: MergeResult, request: Callable[..., Any], **arguments: Any) -> Any:
        """One request; a failure worth retrying becomes `_Transient`, others terminal."""
        result.requests += 1
        try:
            return request(**arguments)
        except OSConnectionError as exc:  # includes timeouts
            raise _Transient(f"connection: {exc}") from exc
        except TransportError as exc:
            status = exc.status_code if isinstance(exc.status_code, int) else 0
            if _transient_status(status):
                raise _Transient(f"HTTP {status}: {exc.error}") from exc
            raise TerminalError(
                f"request to {self.index} refused: HTTP {exc.status_code}: {exc.error}",
                hint="check the index name and mapping",
            ) from exc

    def _read(self, docs: list[tuple[str, str | None]], result: MergeResult) -> dict[str, Stored]:
        """The stored documents among `docs` (id, routing), read in real time."""
        unique = dict(docs)
        found: dict[str, Stored] = {}
        ids = list(unique)
        for start in range(0, len(ids), self.settings.max_docs):
            chunk = ids[start : start + self.settings.max_docs]
            body = {"docs": [_mget_doc(doc_id, unique[doc_id]) for doc_id in chunk]}
            response = self._call(result, self.client.mget, index=self.index, body=body)
            for doc in response.get("docs", []):
                if "error" in doc:
                    reason = _reason(doc["error"])
                    if "index_not_found" in reason:
                        raise TerminalError(f"reading {self.index}: {reason}")
                    raise _Transient(f"mget {doc.get('_id')}: {reason}")
                if doc.get("found"):
                    found[doc["_id"]] = Stored(doc["_source"], doc["_seq_no"], doc["_primary_term"])
        return found

    def _bulk(self, writes: list[_Write], result: MergeResult) -> list[_ItemResult]:
        """Send `writes` in requests of at most max_docs/max_bytes; one result per write."""
        results: list[_ItemResult] = []
        chunk: list[bytes] = []
        size = 0
        for write in writes:
            lines = write.lines()
            if chunk and (
                len(chunk) >= self.settings.max_docs or size + len(lines) > self.settings.max_bytes
            ):
                results.extend(self._send(chunk, result))
                chunk, size = [], 0
            chunk.append(lines)
            size += len(lines)
        if chunk:
            results.extend(self._send(chunk, result))
        return results

    def _send(self, chunk: list[bytes], result: MergeResult) -> list[_ItemResult]:
        body = b"".join(chunk)
        result.bytes += len(body)
        params = {"request_timeout": self.settings.timeout_s, "filter_path": _BULK_FILTER}
        response = self._call(result, self.client.bulk, index=self.index, body=body, params=params)
        items = response.get("items", [])
        if len(items) != len(chunk):
            raise TerminalError(
                f"bulk to {self.index}: {len(items)} results for {len(chunk)} actions"
            )
        return [_item_result(next(iter(item.values()))) for item in items]

    def _refuse(
        self, result: MergeResult, owner: int, change: Change, doc_id: str, reason: str
    ) -> None:
        error_type = reason.split(":", 1)[0]
        if "index_not_found" in error_type:
            raise TerminalError(
                f"bulk to {self.index}: {reason}",
                hint="create the index (ks2os creates it on start) or fix its name",
            )
        result.outcomes[owner] = Outcome.DEAD
        if owner not in result.dead:
            result.dead[owner] = DeadLetter(change, doc_id, reason)


def _mget_doc(doc_id: str, routing: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": doc_id}
    if routing is not None:
        doc["routing"] = routing
    return doc


def _item_result(body: Mapping[str, Any]) -> _ItemResult:
    status = int(body.get("status", 500))
    seq_no = body.get("_seq_no")
    term = body.get("_primary_term")
    return _ItemResult(
        status,
        _reason(body.get("error")),
        seq_no if isinstance(seq_no, int) else None,
        term if isinstance(term, int) else None,
    )


def _reason(error: Any) -> str:
    if error is None:
        return ""
    if isinstance(error, dict):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        caused = error.get("caused_by")
        if isinstance(caused, dict):
            text += f" (caused by {caused.get('type')}: {caused.get('reason')})"
        return text
    return str(error)


def _transient_status(status: int) -> bool:
    return status == 429 or status >= 500 or status == 0


def _int(value: Any) -> int:
    return value if isinstance(value, int) else 0


def _newest(candidates: Iterable[Statics | None], none_known: Statics) -> Statics:
    """The statics with the highest version (the first of equals)."""
    best = none_known
    for candidate in candidates:
        if candidate is not None and candidate.version > best.version:
            best = candidate
    return best


def _version_of(task: _StaticTask | _RowTask) -> int:
    return task.statics.version if isinstance(task, _StaticTask) else task.change.version


def _counted(task: _StaticTask | _RowTask) -> bool:
    return task.counted if isinstance(task, _StaticTask) else True


def _newest_merge_per_row(merges: list[_Merge]) -> list[_Merge]:
    """One merge per row: the newest target, blaming every change that asked for one."""
    best: dict[str, _Merge] = {}
    for merge in merges:
        held = best.get(merge.doc_id)
        if held is None:
            best[merge.doc_id] = merge
            continue
        owners = tuple(dict.fromkeys(held.owners + merge.owners))
        if merge.target.version > held.target.version:
            best[merge.doc_id] = merge
        best[merge.doc_id].owners = owners
    return list(best.values())
