"""Rows, cells and tombstones with Cassandra's last-write-wins rules, for keyspaces_local.

Cells stay in their serialised form (protocol v4 bytes) so a read is mostly
byte copying. Every write carries a timestamp (microseconds); a cell, a row,
a clustering range or a whole partition keeps the newest write or deletion,
whatever order they arrive in:

- a later timestamp wins; on a tie Cassandra 4.0's reconcile decides
  (`Cells.resolveRegular`, CASSANDRA-14592): a tombstone or an expiring
  (TTL) cell beats a plain live cell, a tombstone beats an expiring cell,
  of two expiring cells the later expiry wins, and then the larger value
  (unsigned bytes); row markers follow `LivenessInfo.supersedes` alike;
- Keyspaces' one documented difference: two live values of a frozen
  collection with equal timestamps are not compared, the later write wins;
- assigning a whole non-frozen collection (`SET c = {...}`, `SET c = null`,
  INSERT) deletes the old elements at T-1, so an element added at the same
  T survives; `DELETE c` deletes at T;
- a deletion (row, range, partition) shadows every cell written at or
  before its timestamp, including cells that arrive later with older ones;
- INSERT writes a row marker, UPDATE does not, so a row that only ever had
  UPDATEs disappears when its last regular cell goes;
- non-frozen collections keep one cell per element;
- TTL: a cell lives while its expiry (epoch seconds) is after now; when the
  TTL sweep reports it, it turns into a tombstone of the same timestamp.

Tombstones are never purged (the emulator has no gc_grace), which keeps the
rules exact for any arrival order.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cassandra import cqltypes

from keyspaces_local import types
from keyspaces_local.cdc import Cell, RowImage
from keyspaces_local.partitioners import Partitioner
from keyspaces_local.schema import Column, ColumnKind, TableSchema

# A stored cell: (value or None for a tombstone, write time in µs, expiry in epoch s or None).
StoredCell = tuple[bytes | None, int, int | None]

NO_DELETION = -(2**63)


class ListIndexError(ValueError):
    """`l[i] = v` or `DELETE l[i]` with an index the list does not have."""


def wins(new: StoredCell, old: StoredCell, latest_writer: bool = False) -> bool:
    """Cassandra 4.0's reconcile (`Cells.resolveRegular`): does `new` replace `old`?

    On equal timestamps a cell that is or will become a tombstone (a tombstone,
    or an expiring cell) beats a plain live cell (CASSANDRA-14592), a tombstone
    beats an expiring cell, the later expiry beats the earlier, and only then
    the larger value wins (`latest_writer`: `new`, as Keyspaces does for frozen
    collections). An exact tie keeps `old`.
    """
    (new_value, new_ts, new_exp), (old_value, old_ts, old_exp) = new, old
    if new_ts != old_ts:
        return new_ts > old_ts
    if new_value is None or old_value is None:  # a tombstone beats anything of its time
        return new_value is None and old_value is not None
    if (new_exp is None) != (old_exp is None):  # an expiring cell beats a plain one
        return new_exp is not None
    if new_exp is not None and old_exp is not None and new_exp != old_exp:
        return new_exp > old_exp
    return latest_writer or new_value > old_value


def is_live(cell: StoredCell, now_s: int) -> bool:
    return cell[0] is not None and (cell[2] is None or cell[2] > now_s)


class Coll:
    """A non-frozen collection: element key -> cell, plus the collection's own deletion time."""

    __slots__ = ("deleted_at", "elems")

    def __init__(self) -> None:
        self.deleted_at = NO_DELETION
        self.elems: dict[bytes, StoredCell] = {}

    def shadow(self, ts: int) -> None:
        if ts > self.deleted_at:
            self.deleted_at = ts
            self.elems = {k: c for k, c in self.elems.items() if c[1] > ts}


class Row:
    """A clustering row (or a partition's static row, with ck None)."""

    __slots__ = ("cells", "ck", "colls", "deleted_at", "marker", "marker_expired_at_ts", "sk")

    def __init__(self, ck: tuple[bytes, ...] | None, sk: tuple[Any, ...], deleted_at: int) -> None:
        self.ck = ck
        self.sk = sk
        self.marker: tuple[int, int | None] | None = None
        # The timestamp of a marker the TTL sweep expired: like an expired cell it is a
        # tombstone of that timestamp, so an older INSERT arriving later stays shadowed.
        self.marker_expired_at_ts = -(2**63)
        self.cells: dict[str, StoredCell] = {}
        self.colls: dict[str, Coll] = {}
        self.deleted_at = deleted_at

    def shadow(self, ts: int) -> None:
        """Apply a deletion at `ts` (row, range or partition tombstone)."""
        if ts <= self.deleted_at:
            return
        self.deleted_at = ts
        self.cells = {k: c for k, c in self.cells.items() if c[1] > ts}
        if self.marker is not None and self.marker[0] <= ts:
            self.marker = None
        for coll in self.colls.values():
            coll.shadow(ts)

    def put(self, name: str, cell: StoredCell, latest_writer: bool = False) -> None:
        if cell[1] <= self.deleted_at:
            return
        old = self.cells.get(name)
        if old is None or wins(cell, old, latest_writer):
            self.cells[name] = cell

    def coll(self, name: str) -> Coll:
        coll = self.colls.get(name)
        if coll is None:
            coll = self.colls[name] = Coll()
        return coll

    def put_elem(self, name: str, key: bytes, cell: StoredCell) -> None:
        coll = self.coll(name)
        if cell[1] <= self.deleted_at or cell[1] <= coll.deleted_at:
            return
        old = coll.elems.get(key)
        if old is None or wins(cell, old):
            coll.elems[key] = cell

    def set_marker(self, ts: int, exp: int | None) -> None:
        if ts <= self.deleted_at or ts <= self.marker_expired_at_ts:
            return
        if (
            self.marker is None
            or ts > self.marker[0]
            or (ts == self.marker[0] and _supersedes(exp, self.marker[1]))
        ):
            self.marker = (ts, exp)

    def exists(self, now_s: int) -> bool:
        marker = self.marker
        if marker is not None and (marker[1] is None or marker[1] > now_s):
            return True
        for cell in self.cells.values():
            if cell[0] is not None and (cell[2] is None or cell[2] > now_s):
                return True
        for coll in self.colls.values():
            for cell in coll.elems.values():
                if cell[0] is not None and (cell[2] is None or cell[2] > now_s):
                    return True
        return False


def _supersedes(exp: int | None, old_exp: int | None) -> bool:
    """Between two row markers of one timestamp (`LivenessInfo.supersedes` in 4.0): an
    expiring marker beats a plain one, and of two expiring ones the later expiry wins."""
    if exp is None:
        return False
    return old_exp is None or exp > old_exp


@dataclass(frozen=True)
class Bound:
    """One end of a clustering slice, in sort-key space (DESC columns already reversed)."""

    prefix: tuple[Any, ...]
    inclusive: bool


def above_lower(sk: tuple[Any, ...], lo: Bound | None) -> bool:
    if lo is None:
        return True
    head = sk[: len(lo.prefix)]
    return head > lo.prefix or (lo.inclusive and head == lo.prefix)


def below_upper(sk: tuple[Any, ...], hi: Bound | None) -> bool:
    if hi is None:
        return True
    head = sk[: len(hi.prefix)]
    return head < hi.prefix or (hi.inclusive and head == hi.prefix)


@dataclass(frozen=True)
class RangeTombstone:
    lo: Bound | None
    hi: Bound | None
    ts: int

    def covers(self, sk: tuple[Any, ...]) -> bool:
        return above_lower(sk, self.lo) and below_upper(sk, self.hi)


class Partition:
    __slots__ = ("deleted_at", "pk", "ranges", "rows", "sks", "statics", "token")

    def __init__(self, token: int, pk: tuple[bytes, ...]) -> None:
        self.token = token
        self.pk = pk
        self.deleted_at = NO_DELETION
        self.statics = Row(None, (), NO_DELETION)
        self.rows: list[Row] = []  # in clustering order
        self.sks: list[tuple[Any, ...]] = []  # their sort keys, for bisect
        self.ranges: list[RangeTombstone] = []

    def find(self, sk: tuple[Any, ...]) -> Row | None:
        i = bisect.bisect_left(self.sks, sk)
        if i < len(self.sks) and self.sks[i] == sk:
            return self.rows[i]
        return None

    def add_row(self, ck: tuple[bytes, ...], sk: tuple[Any, ...]) -> Row:
        deleted_at = self.deleted_at
        for rt in self.ranges:
            if rt.ts > deleted_at and rt.covers(sk):
                deleted_at = rt.ts
        row = Row(ck, sk, deleted_at)
        i = bisect.bisect_left(self.sks, sk)
        self.sks.insert(i, sk)
        self.rows.insert(i, row)
        return row

    def slice(self, lo: Bound | None, hi: Bound | None, reverse: bool = False) -> Iterator[Row]:
        """Rows within [lo, hi] in clustering order (or reversed)."""
        start = 0 if lo is None else bisect.bisect_left(self.sks, lo.prefix)
        rows, sks = self.rows, self.sks
        if not reverse:
            for i in range(start, len(rows)):
                sk = sks[i]
                if not below_upper(sk, hi):
                    return
                if above_lower(sk, lo):
                    yield rows[i]
            return
        picked = [
            rows[i]
            for i in range(start, len(rows))
            if above_lower(sks[i], lo) and below_upper(sks[i], hi)
        ]
        yield from reversed(picked)


@dataclass
class RowWrite:
    """Everything one statement writes to one row (or to the static row when ck is None)."""

    pk: tuple[bytes, ...]
    ck: tuple[bytes, ...] | None
    ts: int
    exp: int | None = None  # expiry of the cells written (epoch seconds)
    marker: bool = False  # INSERT writes a row marker
    delete_row: bool = False
    cells: dict[str, bytes | None] = field(default_factory=dict)  # None writes a tombstone
    # Whole-collection assignments (None: `SET c = null`): old elements go at ts - 1.
    coll_set: dict[str, list[tuple[bytes, bytes]] | None] = field(default_factory=dict)
    coll_delete: list[str] = field(default_factory=list)  # `DELETE c`: old elements go at ts
    coll_add: dict[str, list[tuple[bytes, bytes]]] = field(default_factory=dict)
    coll_prepend: dict[str, list[bytes]] = field(default_factory=dict)
    coll_remove: dict[str, list[bytes]] = field(default_factory=dict)  # set/map keys; list values
    list_index: dict[str, list[tuple[int, bytes | None]]] = field(default_factory=dict)


class TableData:
    """All partitions of one table, ordered by (token, partition key) under the partitioner."""

    def __init__(self, schema: TableSchema, partitioner: Partitioner) -> None:
        self.schema = schema
        self.partitioner = partitioner
        self.parts: dict[tuple[int, tuple[bytes, ...]], Partition] = {}
        self.order: list[tuple[int, tuple[bytes, ...]]] = []
        self._list_seq = 0
        self.set_schema(schema)

    def retoken(self, partitioner: Partitioner) -> None:
        """The account's partitioner changed: every partition gets its new token and place."""
        self.partitioner = partitioner
        parts = list(self.parts.values())
        for part in parts:
            part.token = partitioner.token(part.pk)
        self.parts = {(part.token, part.pk): part for part in parts}
        self.order = sorted(self.parts)

    def set_schema(self, schema: TableSchema) -> None:
        self.schema = schema
        self.ck_cols = schema.clustering_key
        self.ck_fns = [(types.sort_key(c.cql_type), c.descending) for c in self.ck_cols]
        self.pk_cols = schema.partition_key
        self.regular = [c for c in schema.columns.values() if c.kind is ColumnKind.REGULAR]
        self.static = [c for c in schema.columns.values() if c.kind is ColumnKind.STATIC]
        # Keyspaces: equal timestamps on these pick the latest writer, not the larger value.
        self.frozen_collections = frozenset(
            c.name
            for c in schema.columns.values()
            if issubclass(c.cql_type, cqltypes.FrozenType)
            and types.is_multicell(types.unfrozen(c.cql_type))
        )

    # ---- keys
    def sort_key(self, ck: tuple[bytes, ...]) -> tuple[Any, ...]:
        return tuple(
            types.Desc(fn(b)) if desc else fn(b)
            for (fn, desc), b in zip(self.ck_fns, ck, strict=False)
        )

    def component_key(self, index: int, value: bytes) -> Any:
        fn, desc = self.ck_fns[index]
        return types.Desc(fn(value)) if desc else fn(value)

    def partition(self, pk: tuple[bytes, ...], create: bool = False) -> Partition | None:
        token = self.partitioner.token(pk)
        key = (token, pk)
        part = self.parts.get(key)
        if part is None and create:
            part = self.parts[key] = Partition(token, pk)
            bisect.insort(self.order, key)
        return part

    def row(
        self, part: Partition, ck: tuple[bytes, ...] | None, create: bool = False
    ) -> Row | None:
        if ck is None:
            return part.statics
        sk = self.sort_key(ck)
        row = part.find(sk)
        if row is None and create:
            row = part.add_row(ck, sk)
        return row

    def partitions_from(self, start: int) -> Iterator[Partition]:
        order, parts = self.order, self.parts
        for i in range(start, len(order)):
            yield parts[order[i]]

    def index_after_token(self, token: int, inclusive: bool) -> int:
        """Index in token order of the first partition with token > (or >=) `token`."""
        return bisect.bisect_left(self.order, (token,) if inclusive else (token + 1,))

    # ---- writes
    def apply(self, w: RowWrite) -> tuple[Partition, Row]:
        """Apply one row write; raises ListIndexError (before changing anything) for a bad index."""
        part = self.partition(w.pk, create=True)
        assert part is not None
        row = self.row(part, w.ck, create=True)
        assert row is not None
        list_targets = self._list_targets(row, w)
        if w.delete_row:
            row.shadow(w.ts)
        if w.marker:
            row.set_marker(w.ts, w.exp)
        for name, value in w.cells.items():
            cell = (value, w.ts, w.exp if value is not None else None)
            row.put(name, cell, name in self.frozen_collections)
        for name in w.coll_delete:
            row.coll(name).shadow(w.ts)
        for name, items in w.coll_set.items():
            # Cassandra's setComplexDeletionTimeForOverwrite: an overwrite, to null
            # too, deletes at ts - 1, so elements written at ts itself survive.
            row.coll(name).shadow(w.ts - 1)
            if items:
                self._add_elems(row, name, items, w)
        for name, items in w.coll_add.items():
            self._add_elems(row, name, items, w)
        for name, values in w.coll_prepend.items():
            for i, value in enumerate(reversed(values)):
                key = b"\x00" + struct.pack(">QI", 2**63 - w.ts, len(values) - i)
                row.put_elem(name, key, (value, w.ts, w.exp))
        for name, keys in w.coll_remove.items():
            self._remove_elems(row, name, keys, w.ts)
        for name, key, value in list_targets:
            row.put_elem(name, key, (value, w.ts, w.exp if value is not None else None))
        return part, row

    def _is_list(self, name: str) -> bool:
        return issubclass(self.schema.columns[name].cql_type, cqltypes.ListType)

    def _add_elems(
        self, row: Row, name: str, items: list[tuple[bytes, bytes]], w: RowWrite
    ) -> None:
        is_list = self._is_list(name)
        for key, value in items:
            if is_list:
                self._list_seq += 1
                key = b"\x01" + struct.pack(">qQ", w.ts, self._list_seq)
            row.put_elem(name, key, (value, w.ts, w.exp))

    def _remove_elems(self, row: Row, name: str, keys: list[bytes], ts: int) -> None:
        if self._is_list(name):
            doomed = set(keys)
            coll = row.coll(name)
            keys = [k for k, c in coll.elems.items() if c[0] in doomed]
        for key in keys:
            row.put_elem(name, key, (None, ts, None))

    def check(self, w: RowWrite) -> None:
        """Raise ListIndexError if `w` would fail; nothing is changed."""
        if not w.list_index:
            return
        part = self.partition(w.pk)
        row = self.row(part, w.ck) if part is not None else None
        self._list_targets(row or Row(w.ck, (), NO_DELETION), w)

    @staticmethod
    def _list_targets(row: Row, w: RowWrite) -> list[tuple[str, bytes, bytes | None]]:
        """(column, element key, new value) for each `l[i] = v`, checked before any change."""
        targets = []
        now_s = w.ts // 1_000_000
        for name, updates in w.list_index.items():
            coll = row.colls.get(name)
            elems = coll.elems.items() if coll is not None else ()
            live = sorted(k for k, c in elems if is_live(c, now_s))
            for index, value in updates:
                if not 0 <= index < len(live):
                    raise ListIndexError(
                        f"List index {index} out of bound, list has size {len(live)}"
                    )
                targets.append((name, live[index], value))
        return targets

    def delete_partition(self, part: Partition, ts: int) -> None:
        if ts <= part.deleted_at:
            return
        part.deleted_at = ts
        part.statics.shadow(ts)
        for row in part.rows:
            row.shadow(ts)

    def delete_range(self, part: Partition, lo: Bound | None, hi: Bound | None, ts: int) -> None:
        rt = RangeTombstone(lo, hi, ts)
        part.ranges.append(rt)
        for row in part.slice(lo, hi):
            row.shadow(ts)

    # ---- reads
    def collection_value(self, col: Column, coll: Coll | None, now_s: int) -> bytes | None:
        if coll is None:
            return None
        live = [
            (k, c)
            for k, c in coll.elems.items()
            if c[0] is not None and (c[2] is None or c[2] > now_s)
        ]
        if not live:
            return None
        cql_type = col.cql_type
        if issubclass(cql_type, cqltypes.ListType):
            live.sort(key=lambda kc: kc[0])
            return types.join_collection([c[0] for _, c in live])  # type: ignore[misc]
        fn = types.sort_key(cql_type.subtypes[0])
        live.sort(key=lambda kc: fn(kc[0]))
        if issubclass(cql_type, cqltypes.SetType):
            return types.join_collection([k for k, _ in live])
        return types.join_map([(k, c[0]) for k, c in live])  # type: ignore[misc]

    def cell_value(self, row: Row, col: Column, now_s: int) -> bytes | None:
        if col.name in row.colls:
            return self.collection_value(col, row.colls[col.name], now_s)
        cell = row.cells.get(col.name)
        if cell is None or cell[0] is None or (cell[2] is not None and cell[2] <= now_s):
            return None
        return cell[0]

    def live_cell(self, row: Row, col: Column, now_s: int) -> Cell | None:
        """A column's value as a cdc.Cell (collections: newest element time, earliest expiry)."""
        if col.name in row.colls:
            value = self.collection_value(col, row.colls[col.name], now_s)
            if value is None:
                return None
            elems = [c for c in row.colls[col.name].elems.values() if is_live(c, now_s)]
            exps = [c[2] for c in elems if c[2] is not None]
            return Cell(value, max(c[1] for c in elems), min(exps) if exps else None)
        cell = row.cells.get(col.name)
        if cell is None or not is_live(cell, now_s):
            return None
        return Cell(cell[0], cell[1], cell[2])  # type: ignore[arg-type]

    def image(self, part: Partition, row: Row, now_s: int) -> RowImage | None:
        """The whole live row as a RowImage; None when the row does not exist at `now_s`."""
        static = row.ck is None
        cols = self.static if static else self.regular
        found: dict[str, Cell] = {}
        for col in cols:
            cell = self.live_cell(row, col, now_s)
            if cell is not None:
                found[col.name] = cell
        if static:
            if not found:
                return None
        elif not row.exists(now_s):
            return None
        times = [c.write_time_us for c in found.values()]
        marker = row.marker if row.marker is not None and not static else None
        if marker is not None and (marker[1] is None or marker[1] > now_s):
            times.append(marker[0])
        key_time = max(times) if times else 0
        cells: dict[str, Cell] = {}
        for col, value in zip(self.pk_cols, part.pk, strict=True):
            cells[col.name] = Cell(value, key_time)
        if not static:
            assert row.ck is not None
            for col, value in zip(self.ck_cols, row.ck, strict=True):
                cells[col.name] = Cell(value, key_time)
        exps: list[int | None] = [c.expires_at_s for c in found.values()]
        if marker is not None:
            exps.append(marker[1])
        row_exp = max(exps) if exps and all(e is not None for e in exps) else None  # type: ignore[type-var]
        if static:
            return RowImage(cells=cells, static_cells=found, expires_at_s=row_exp)
        cells.update(found)
        return RowImage(cells=cells, static_cells={}, expires_at_s=row_exp)

    # ---- TTL
    @staticmethod
    def due_expiry(row: Row, cutoff_s: int) -> int | None:
        """The earliest expiry at or before `cutoff_s` among the row's live cells, if any."""
        due = [
            c[2]
            for c in row.cells.values()
            if c[0] is not None and c[2] is not None and c[2] <= cutoff_s
        ]
        for coll in row.colls.values():
            due += [
                c[2]
                for c in coll.elems.values()
                if c[0] is not None and c[2] is not None and c[2] <= cutoff_s
            ]
        if row.marker is not None and row.marker[1] is not None and row.marker[1] <= cutoff_s:
            due.append(row.marker[1])
        return min(due) if due else None

    @staticmethod
    def expire(row: Row, cutoff_s: int) -> None:
        """Turn cells that expired at or before `cutoff_s` into tombstones of the same timestamp."""
        for name, cell in list(row.cells.items()):
            if cell[0] is not None and cell[2] is not None and cell[2] <= cutoff_s:
                row.cells[name] = (None, cell[1], None)
        for coll in row.colls.values():
            for key, cell in list(coll.elems.items()):
                if cell[0] is not None and cell[2] is not None and cell[2] <= cutoff_s:
                    coll.elems[key] = (None, cell[1], None)
        if row.marker is not None and row.marker[1] is not None and row.marker[1] <= cutoff_s:
            row.marker_expired_at_ts = max(row.marker_expired_at_ts, row.marker[0])
            row.marker = None
