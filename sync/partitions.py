"""One document per partition (`document.shape = "partition"`): its rows nested, merged row by row.

A partition's document holds the partition key's fields and the partition's
static values at the top, and its live rows as an array of nested objects
(the mapping's `rows_field`, an OpenSearch `nested` property), in clustering
order::

    {
      "shop": "north",                       partition key
      "banner": "Spring sale",               statics
      "rows": [ {"sku": "a", ...}, ... ],    clustering and regular columns, computed fields
      "_ks2os": {
        "kind": "grouped", "partition": "north", "version": <newest merged>,
        "static_version": <the statics'>, "deleted": <no live row and no static value>,
        "expires_at"?: <when its last row expires, if every row has a TTL and no statics>,
        "rows": {"live": [{"id", "version", "key", "expires_at"?}, ...],   one per nested row
                 "gone": {<row id>: <version>, ...}}                        the deleted rows
      }
    }

The document id is the partition id (the partition key's components, as in
a row document's id). Row changes arrive from several shards with no order
between them, and a backfill's pages and resumed ranges repeat rows, so the
document keeps each row's own version and every write merges row by row:

- an upsert replaces its row only if its version is higher than the row's
  stored one, live or deleted; a delete (or a row the mapping's filter or
  hook leaves out) removes the row and keeps a **tombstone** (row id and
  version, stored, not searchable) so an older replay cannot bring it back;
- statics are replaced only by a higher static version (the statics' own
  line: static-only records and snapshot rows, as in `sync.statics`);
- a partition with no live row and no static value keeps its document (its
  tombstones) with `deleted: true`, which the alias filter hides.

Each merge is a read-modify-write: the stored document is read in real time
(`Reader.get`), the batch's changes of that partition merged into it, and
the result written only if the document is still the one read
(`if_seq_no`/`if_primary_term`, or `create` when there was none). A 409
there means another writer changed it: read again and merge again. Merging
is idempotent and order-free, so duplicates, replays after a crash and
racing writers converge on the newest state of every row.

**Wide partitions** are bounded by `document.max_rows` live rows: a change
that would add a row past it is dead-lettered with the reason (the rest of
the partition is written); rows already held, deletes, and updates of held
rows always go through. Never a silent truncation.

**A document OpenSearch refuses** (a value its mapping cannot take) would
take every change merged into it down with it, so the partition's changes
are then written one at a time, and only the change whose merge is refused
is dead-lettered.

Tombstones older than `TOMBSTONE_HORIZON_MS` (twice the stream's 24-hour
retention) are dropped at the next write of their document: no replay that
old exists. docs/versions.md ("The partition shape") has the argument.
"""

from __future__ import annotations

import decimal
import ipaddress
import math
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from cassandra.util import Date, Time

from sync.bulk import Action, Bulk, Document, Reader, Traffic, Verdict
from sync.deadletter import Outcome
from sync.documents import META_FIELD, DocumentBuilder, epoch_millis, text_form
from sync.errors import DecodeError, OpenSearchUnavailable, TerminalError
from sync.mapping import split_cql_type
from sync.model import Change, Op
from sync.schema import TableLayout
from sync.version import base

GROUPED_KIND = "grouped"
# A tombstone guards against replays of older changes of its row; the stream keeps
# records 24 hours and a snapshot row is always newer, so two days is ample.
TOMBSTONE_HORIZON_MS = 48 * 3600 * 1000
# Conflicts mean another writer made progress, so they are retried at once; the
# bound only stops a pathological livelock (the batch is then replayed).
MAX_CONFLICT_ROUNDS = 100


# ------------------------------------------------------------ clustering order


@dataclass(frozen=True)
class _KeyForm:
    """How one clustering column's values are stored (JSON) and compared (loaded)."""

    store: Callable[[Any], Any]
    load: Callable[[Any], Any]


def _int_form(value: Any) -> Any:
    return value if -(2**63) <= value < 2**63 else str(value)  # a varint past 64 bits


def _float_form(value: Any) -> Any:
    return value if math.isfinite(value) else repr(value)


def _uuid_order(text: Any) -> Any:
    # Cassandra's UUIDType: by version, then a time-based UUID by its time, then bytes.
    value = uuid.UUID(str(text))
    version = value.version or 0
    return (version, value.time if version == 1 else 0, value.bytes)


def _timeuuid_order(text: Any) -> Any:
    value = uuid.UUID(str(text))
    return (value.time, value.bytes)


def _inet_form(value: Any) -> str:
    return ipaddress.ip_address(value).packed.hex()


def _days(value: Any) -> int:
    return int(value.days_from_epoch) if isinstance(value, Date) else int(value)


def _nanos(value: Any) -> int:
    return int(value.nanosecond_time) if isinstance(value, Time) else int(value)


_INTEGER = _KeyForm(_int_form, int)
_TEXT = _KeyForm(str, str)
_FORMS: Mapping[str, _KeyForm] = {
    **dict.fromkeys(("tinyint", "smallint", "int", "bigint", "counter", "varint"), _INTEGER),
    **dict.fromkeys(("text", "varchar", "ascii"), _TEXT),  # code-point order = UTF-8 bytes
    "decimal": _KeyForm(str, decimal.Decimal),
    "float": _KeyForm(_float_form, float),
    "double": _KeyForm(_float_form, float),
    "boolean": _KeyForm(bool, bool),
    "timestamp": _KeyForm(epoch_millis, int),
    "date": _KeyForm(_days, int),
    "time": _KeyForm(_nanos, int),
    "uuid": _KeyForm(str, _uuid_order),
    "timeuuid": _KeyForm(str, _timeuuid_order),
    "blob": _KeyForm(lambda value: bytes(value).hex(), str),  # hex keeps byte order
    "inet": _KeyForm(_inet_form, str),
}
# Frozen collections, tuples and UDTs: ordered by their canonical text (an approximation).
_OTHER = _KeyForm(text_form, str)


def _form_of(cql_type: str | None) -> _KeyForm:
    if cql_type is None:
        return _OTHER
    name, args = split_cql_type(cql_type.strip())
    if name == "frozen" and args:
        return _form_of(args[0])
    return _FORMS.get(name, _OTHER)


class _Descending:
    """A comparable value in reverse (a `DESC` clustering column)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __lt__(self, other: _Descending) -> bool:
        return bool(other.value < self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Descending) and bool(self.value == other.value)

    def __hash__(self) -> int:
        return hash(self.value)


class ClusteringOrder:
    """A row's clustering key as stored in the document, and its place in clustering order.

    The stored form is JSON (a list, one value per clustering column) so the
    order of rows already in a document can be known without their Python
    values: integers, floats, booleans, text as they are, timestamps in epoch
    milliseconds, dates in days, times in nanoseconds, decimals and big
    varints as exact text, UUIDs as text (compared as Cassandra does), blobs
    and addresses as hex. `DESC` columns (`TableLayout.descending`) compare in
    reverse.
    """

    def __init__(self, table: TableLayout) -> None:
        self._first = len(table.partition_key)
        self._columns = tuple(
            (_form_of(table.cql_type(name)), name in table.descending) for name in table.clustering
        )

    def stored(self, key: tuple[Any, ...]) -> list[Any]:
        """The stored form of a full primary key's clustering part."""
        values = key[self._first :]
        return [form.store(value) for (form, _), value in zip(self._columns, values, strict=True)]

    def sort_key(self, stored: Sequence[Any]) -> tuple[Any, ...]:
        """What `sorted` compares for a row whose stored key is `stored`."""
        return tuple(
            _Descending(form.load(value)) if descending else form.load(value)
            for (form, descending), value in zip(self._columns, stored, strict=True)
        )


# ---------------------------------------------------------- the document's state


@dataclass(frozen=True, slots=True)
class Row:
    """One live row of a partition document: its nested object and its version."""

    row_id: str
    version: int
    key: list[Any]  # the clustering key's stored form (ClusteringOrder)
    fields: dict[str, Any]
    expires_at: int | None = None

    def meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"id": self.row_id, "version": self.version, "key": self.key}
        if self.expires_at is not None:
            meta["expires_at"] = self.expires_at
        return meta


@dataclass(slots=True)
class PartitionState:
    """What a partition document says: its live rows, tombstones and statics."""

    live: dict[str, Row] = field(default_factory=dict)
    gone: dict[str, int] = field(default_factory=dict)  # row id -> the delete's version
    statics: dict[str, Any] = field(default_factory=dict)
    static_version: int = 0
    version: int = 0  # the newest change merged so far
    source: str = ""

    @classmethod
    def of(
        cls, document: Document | None, rows_field: str, static_fields: Iterable[str]
    ) -> PartitionState:
        """The state a stored document holds (empty for none)."""
        if document is None:
            return cls()
        body = document.body
        meta = body.get(META_FIELD)
        rows_meta = meta.get("rows") if isinstance(meta, dict) else None
        entries = body.get(rows_field, [])
        if not isinstance(meta, dict) or not isinstance(rows_meta, dict):
            raise _not_ours(document)
        live_meta = rows_meta.get("live", [])
        if not isinstance(entries, list) or len(entries) != len(live_meta):
            raise _not_ours(document)
        live = {}
        for item, fields in zip(live_meta, entries, strict=True):
            row = Row(item["id"], item["version"], item["key"], fields, item.get("expires_at"))
            live[row.row_id] = row
        return cls(
            live=live,
            gone=dict(rows_meta.get("gone", {})),
            statics={name: body[name] for name in static_fields if name in body},
            static_version=int(meta.get("static_version", 0)),
            version=int(meta.get("version", 0)),
            source=str(meta.get("source", "")),
        )

    def has_statics(self) -> bool:
        return any(value is not None for value in self.statics.values())

    def deleted(self) -> bool:
        """No live row and no static value: Keyspaces returns nothing for the partition."""
        return not self.live and not self.has_statics()

    def expires_at(self) -> int | None:
        """When the last row expires, if every row expires and no static value holds it up."""
        if not self.live or self.has_statics():
            return None
        expiries = [row.expires_at for row in self.live.values()]
        return None if any(e is None for e in expiries) else max(e for e in expiries if e)

    def prune(self, now_ms: int) -> None:
        """Drop tombstones too old for any replay to be older still."""
        horizon = base(max(now_ms - TOMBSTONE_HORIZON_MS, 1))
        self.gone = {row_id: v for row_id, v in self.gone.items() if v >= horizon}


def _not_ours(document: Document) -> TerminalError:
    return TerminalError(
        f"document {document.doc_id} is not a partition document of this mapping "
        "(its rows and their versions do not match)",
        hint="the index holds documents of another mapping: run `ks2os reindex`",
    )


# -------------------------------------------------------------------- planning


@dataclass(slots=True)
class RowChange:
    """The newest change of one row in a batch: its entry, or None for a tombstone."""

    outcome: Outcome
    row_id: str
    version: int
    row: Row | None
    source: str


@dataclass(slots=True)
class StaticsChange:
    """The newest static values a batch states for a partition, at their version."""

    outcome: Outcome
    counted: bool  # a static-only change; a snapshot row's outcome is its row's
    version: int
    values: dict[str, Any]
    source: str


@dataclass(slots=True)
class PartitionPlan:
    """What one batch merges into one partition document."""

    doc_id: str
    routing: str | None
    key_fields: dict[str, Any]
    rows: dict[str, RowChange] = field(default_factory=dict)
    statics: StaticsChange | None = None
    conflicts: int = 0
    token: str | None = None  # `_ks2os.token`: the partition's token, for verify

    def outcomes(self) -> list[Outcome]:
        """Every change the plan writes, once."""
        found = [row.outcome for row in self.rows.values()]
        if self.statics is not None:
            found.append(self.statics.outcome)
        return list(dict.fromkeys(found))

    def singles(self) -> list[PartitionPlan]:
        """One plan per change (a snapshot row keeps the statics it brought)."""
        plans = []
        for row in self.rows.values():
            own = self.statics if self.statics and self.statics.outcome is row.outcome else None
            plans.append(
                PartitionPlan(
                    self.doc_id,
                    self.routing,
                    self.key_fields,
                    {row.row_id: row},
                    own,
                    0,
                    self.token,
                )
            )
        if self.statics is not None and all(
            row.outcome is not self.statics.outcome for row in self.rows.values()
        ):
            plans.append(
                PartitionPlan(
                    self.doc_id, self.routing, self.key_fields, {}, self.statics, 0, self.token
                )
            )
        return plans


def _keep_newer_row(plan: PartitionPlan, change: RowChange) -> None:
    held = plan.rows.get(change.row_id)
    if held is None or change.version > held.version:
        plan.rows[change.row_id] = change
        loser = held
    else:
        loser = change
    if loser is not None:
        loser.outcome.settle(Verdict.STALE)


def _keep_newer_statics(plan: PartitionPlan, change: StaticsChange) -> None:
    held = plan.statics
    if held is None or change.version > held.version:
        plan.statics = change
        loser = held
    else:
        loser = change
    if loser is not None and loser.counted:
        loser.outcome.settle(Verdict.STALE)


# --------------------------------------------------------------------- merging


@dataclass
class Merged:
    """A partition's state after a plan's changes, and what became of each change."""

    state: PartitionState
    changed: bool = False
    applied: list[Outcome] = field(default_factory=list)
    stale: list[Outcome] = field(default_factory=list)
    over_limit: list[tuple[Outcome, str]] = field(default_factory=list)

    def settle(self) -> None:
        """Give each change its verdict: only once the merged document is stored."""
        for outcome in self.applied:
            outcome.settle(Verdict.APPLIED)
        for outcome in self.stale:
            outcome.settle(Verdict.STALE)
        for outcome, reason in self.over_limit:
            outcome.reject(outcome.doc_id, reason)


def merge(
    stored: PartitionState,
    plan: PartitionPlan,
    order: ClusteringOrder,
    max_rows: int,
    now_ms: int,
) -> Merged:
    """The state after merging `plan` into `stored`, row by row and statics by their version.

    Removals and updates of held rows go first, then new rows in clustering
    order while fewer than `max_rows` rows are live; the rest are over the
    limit. Pure: `stored` is not changed.
    """
    state = PartitionState(
        dict(stored.live),
        dict(stored.gone),
        dict(stored.statics),
        stored.static_version,
        stored.version,
        stored.source,
    )
    merged = Merged(state)
    statics = plan.statics
    if statics is not None:
        if statics.version > state.static_version:
            state.statics, state.static_version = dict(statics.values), statics.version
            _merged_version(merged, statics.version, statics.source)
            if statics.counted:
                merged.applied.append(statics.outcome)
        elif statics.counted:
            merged.stale.append(statics.outcome)
    additions = []
    for change in plan.rows.values():
        held = state.live.get(change.row_id)
        held_version = held.version if held is not None else state.gone.get(change.row_id, 0)
        if change.version <= held_version:
            merged.stale.append(change.outcome)
        elif change.row is None:
            state.live.pop(change.row_id, None)
            state.gone[change.row_id] = change.version
            _applied(merged, change)
        elif held is not None:
            state.live[change.row_id] = change.row
            _applied(merged, change)
        else:
            additions.append(change)
    additions.sort(key=lambda change: order.sort_key(change.row.key if change.row else []))
    for change in additions:
        assert change.row is not None  # only upserts are additions
        if len(state.live) >= max_rows:
            merged.over_limit.append((change.outcome, _over_limit(plan.doc_id, max_rows)))
            continue
        state.live[change.row_id] = change.row
        state.gone.pop(change.row_id, None)
        _applied(merged, change)
    if merged.changed:
        state.prune(now_ms)
    return merged


def _applied(merged: Merged, change: RowChange) -> None:
    merged.applied.append(change.outcome)
    _merged_version(merged, change.version, change.source)


def _merged_version(merged: Merged, version: int, source: str) -> None:
    merged.changed = True
    if version > merged.state.version:
        merged.state.version, merged.state.source = version, source


def _over_limit(partition: str, max_rows: int) -> str:
    return (
        f"partition {partition} already holds document.max_rows = {max_rows} rows, so this "
        "row was not indexed: raise document.max_rows (up to the index's "
        'mapping.nested_objects.limit) and reindex, or index the table with shape = "row"'
    )


# ---------------------------------------------------------------------- writing


class PartitionWriter:
    """Writes one table's changes as partition documents to one index; see the module docstring."""

    def __init__(
        self,
        bulk: Bulk,
        reader: Reader,
        builder: DocumentBuilder,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.bulk = bulk
        self.reader = reader
        self.builder = builder
        self.index = bulk.index
        self.clock = clock
        table = builder.table
        spec = builder.mapping.document
        self.rows_field = spec.rows_field
        self.max_rows = spec.max_rows
        self.order = ClusteringOrder(table)
        self._partition_key_count = len(table.partition_key)
        self._key_fields = frozenset(spec.rename.get(c, c) for c in table.partition_key)

    def write(self, changes: Sequence[Change], traffic: Traffic) -> list[Outcome]:
        """The outcome of every change, once each is applied, stale or rejected."""
        outcomes = [Outcome(change) for change in changes]
        # One plan at a time per partition: two writes of one document would conflict.
        queues = {plan.doc_id: deque([plan]) for plan in self._plan(outcomes)}
        while queues:
            done, refused = self._round([queue[0] for queue in queues.values()], traffic)
            for plan in refused:  # several changes in a refused document: one at a time now
                queues[plan.doc_id].popleft()
                queues[plan.doc_id].extendleft(reversed(plan.singles()))
            for plan in done:
                queue = queues[plan.doc_id]
                queue.popleft()
                if not queue:
                    del queues[plan.doc_id]
        return outcomes

    # ------------------------------------------------------------------ plan

    def _plan(self, outcomes: list[Outcome]) -> list[PartitionPlan]:
        """Per partition, the newest change of each row and of the statics; older ones stale."""
        plans: dict[str, PartitionPlan] = {}
        for outcome in outcomes:
            change = outcome.change
            try:
                doc_id = self.builder.partition_id(change.key)
                plan = plans.get(doc_id)
                if plan is None:
                    plan = PartitionPlan(
                        doc_id,
                        self.builder.routing(change.key),
                        self._key_of(change),
                        token=self.builder.token(change.key),
                    )
                outcome.doc_id = doc_id
                statics, row = self._changes_of(outcome)
            except (TypeError, ValueError, OverflowError, DecodeError) as exc:
                outcome.reject(outcome.doc_id, f"document could not be built: {exc}")
                continue
            plans[doc_id] = plan
            if statics is not None:
                _keep_newer_statics(plan, statics)
            if row is not None:
                _keep_newer_row(plan, row)
        return list(plans.values())

    def _key_of(self, change: Change) -> dict[str, Any]:
        """The partition key's document fields."""
        names = self.builder.table.partition_key
        image = dict(zip(names, change.key[: self._partition_key_count], strict=True))
        fields = self.builder.row_fields(image)
        return {name: value for name, value in fields.items() if name in self._key_fields}

    def _changes_of(self, outcome: Outcome) -> tuple[StaticsChange | None, RowChange | None]:
        builder = self.builder
        change = outcome.change
        source = builder.source_kind(change)
        statics = None
        if builder.carries_statics(change):
            values = builder.static_values(change.image or {})
            statics = StaticsChange(outcome, change.static_only, change.version, values, source)
        if change.static_only:
            return statics, None
        written, fields = builder.row_document(change)  # filter and hook: None -> a delete
        row_id = self._row_id(change.key)
        row = None
        if written.op is Op.UPSERT:
            entry = {name: value for name, value in fields.items() if name not in self._key_fields}
            key = self.order.stored(change.key)
            row = Row(row_id, change.version, key, entry, change.expires_at_ms)
        return statics, RowChange(outcome, row_id, change.version, row, source)

    def _row_id(self, key: tuple[Any, ...]) -> str:
        """The clustering key's canonical text, percent-encoded, joined with `:`."""
        return ":".join(
            quote(text_form(value), safe="") for value in key[self._partition_key_count :]
        )

    # ----------------------------------------------------------------- write

    def _round(
        self, plans: list[PartitionPlan], traffic: Traffic
    ) -> tuple[list[PartitionPlan], list[PartitionPlan]]:
        """Read, merge and write each plan's document once: (plans done, plans to split).

        A plan whose write conflicted is in neither list (read again next
        round). A plan whose document OpenSearch refused is to be split into
        its changes, unless it holds one, which is then rejected.
        """
        stored = self.reader.get({plan.doc_id: plan.routing for plan in plans}, traffic)
        now_ms = int(self.clock() * 1000)
        done: list[PartitionPlan] = []
        refused: list[PartitionPlan] = []
        attempts: list[tuple[PartitionPlan, Merged, Document | None]] = []
        static_fields = self.builder.static_fields
        for plan in plans:
            document = stored.get(plan.doc_id)
            state = PartitionState.of(document, self.rows_field, static_fields)
            merged = merge(state, plan, self.order, self.max_rows, now_ms)
            if merged.changed:
                attempts.append((plan, merged, document))
            else:
                merged.settle()
                done.append(plan)
        actions = [self._action(plan, merged.state, doc) for plan, merged, doc in attempts]
        for (plan, merged, _), result in zip(
            attempts, self.bulk.send(actions, traffic), strict=True
        ):
            if result.verdict is Verdict.APPLIED:
                merged.settle()
                done.append(plan)
            elif result.verdict is Verdict.STALE:
                self._conflicted(plan)
            elif len(plan.outcomes()) == 1:
                reason = f"partition document refused: {result.status} {result.reason}"
                for outcome in plan.outcomes():
                    outcome.reject(plan.doc_id, reason)
                done.append(plan)
            else:
                refused.append(plan)
        return done, refused

    def _conflicted(self, plan: PartitionPlan) -> None:
        plan.conflicts += 1
        if plan.conflicts >= MAX_CONFLICT_ROUNDS:
            raise OpenSearchUnavailable(
                f"partition document {plan.doc_id} in {self.index}: still conflicting after "
                f"{MAX_CONFLICT_ROUNDS} rounds",
                hint="another writer keeps changing the same document; "
                "the batch was not checkpointed and will be replayed",
            )

    def _action(
        self, plan: PartitionPlan, state: PartitionState, stored: Document | None
    ) -> Action:
        body = self.body(plan.doc_id, plan.key_fields, state, plan.token)
        if stored is None:
            return Action(plan.doc_id, body, routing=plan.routing, create=True)
        return Action(plan.doc_id, body, routing=plan.routing, expect=stored.stamp)

    def body(
        self,
        partition: str,
        key_fields: Mapping[str, Any],
        state: PartitionState,
        token: str | None = None,
    ) -> dict[str, Any]:
        """The document for a partition's state: key, statics, rows in clustering order."""
        rows = sorted(state.live.values(), key=lambda row: self.order.sort_key(row.key))
        meta: dict[str, Any] = {
            "kind": GROUPED_KIND,
            "partition": partition,
            "version": state.version,
            "source": state.source,
            "static_version": state.static_version,
            "deleted": state.deleted(),
            "rows": {"live": [row.meta() for row in rows], "gone": state.gone},
        }
        expires_at = state.expires_at()
        if expires_at is not None:
            meta["expires_at"] = expires_at
        if token is not None:
            meta["token"] = token
        return {
            **key_fields,
            **state.statics,
            self.rows_field: [row.fields for row in rows],
            META_FIELD: meta,
        }
