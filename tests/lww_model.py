"""An independent model of Cassandra's last-write-wins, for checking results against.

It shares no code with ks2os or keyspaces_local: tests drive the same
operations through cassandra-driver and through this model, then compare
what the table (and the index) holds with what the model says is visible.

Semantics modelled (Cassandra 4.0, `Cells.resolveRegular`):
- every regular or static cell, and every element of a non-frozen set, is a
  cell with a write timestamp; the highest timestamp wins; at equal
  timestamps a deletion or an expiring (TTL) value wins over a plain value
  (CASSANDRA-14592), a deletion over an expiring value, the later expiry
  over the earlier, and of two values the larger wins (the row marker alike);
- assigning a whole set (to null too) clears its older elements at T-1, so an
  element added at T survives; `DELETE s` clears at T;
- INSERT writes a row marker, UPDATE does not: a row exists while its marker
  or any regular cell is live;
- a row deletion shadows every cell of the row written at or before it, a
  partition deletion every cell of the partition (statics too), also cells
  written later with an older timestamp;
- equal timestamps with different values only arise with client-side timestamps;
  the model breaks such ties on the Python value, so tests avoid them;
- TTL: a cell (and an INSERT's marker) written with a TTL stops being visible
  when `now >= write second + ttl`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Key = tuple[Hashable, ...]
_DELETED = object()
_NEVER = -(2**63)  # older than any timestamp: no deletion


@dataclass
class _Cell:
    ts: int
    value: Any  # _DELETED for a tombstone
    expires_at: float | None = None

    def beats(self, other: _Cell | None) -> bool:
        if other is None or self.ts > other.ts:
            return True
        if self.ts < other.ts:
            return False
        if self._dying() != other._dying():
            return self._dying()
        if self.value is _DELETED or other.value is _DELETED:
            return self.value is _DELETED and other.value is not _DELETED
        if self.expires_at != other.expires_at:
            return (self.expires_at or 0) > (other.expires_at or 0)
        return bool(_order(self.value) > _order(other.value))

    def _dying(self) -> bool:
        """A tombstone, or a value with a TTL (it becomes one)."""
        return self.value is _DELETED or self.expires_at is not None

    def live(self, now: float) -> bool:
        return self.value is not _DELETED and (self.expires_at is None or now < self.expires_at)


def _order(value: Any) -> Any:
    return (
        (type(value).__name__, repr(value)) if not isinstance(value, int | float | str) else value
    )


@dataclass
class _Row:
    marker: _Cell | None = None
    tombstone_ts: int | None = None
    cells: dict[str, _Cell] = field(default_factory=dict)
    sets: dict[str, dict[Hashable, _Cell]] = field(default_factory=dict)
    set_cleared_ts: dict[str, int] = field(default_factory=dict)  # collection tombstones


@dataclass
class LwwTable:
    """One table: `partition` and `clustering` name the key columns; `sets` the set columns."""

    partition: tuple[str, ...]
    clustering: tuple[str, ...] = ()
    statics: frozenset[str] = frozenset()
    sets: frozenset[str] = frozenset()
    _rows: dict[Key, _Row] = field(default_factory=dict)
    _static: dict[Key, dict[str, _Cell]] = field(default_factory=dict)
    _partition_tombstones: dict[Key, int] = field(default_factory=dict)

    def _split(self, key: Key) -> tuple[Key, Key]:
        return key[: len(self.partition)], key[len(self.partition) :]

    def _put(self, cells: dict[str, _Cell], column: str, cell: _Cell) -> None:
        if cell.beats(cells.get(column)):
            cells[column] = cell

    def _write(
        self, key: Key, values: Mapping[str, Any], ts: int, expires_at: float | None
    ) -> None:
        row = self._rows.setdefault(key, _Row())
        partition, _ = self._split(key)
        for column, value in values.items():
            if column in self.statics:
                self._put(
                    self._static.setdefault(partition, {}),
                    column,
                    _Cell(ts, _or_deleted(value), expires_at),
                )
            elif column in self.sets:
                # Assigning a whole set replaces it: a collection tombstone just below, then
                # the elements (so an element written earlier, even arriving later, is gone).
                row.set_cleared_ts[column] = max(ts - 1, row.set_cleared_ts.get(column, ts - 1))
                for element in value or ():
                    self._put(row.sets.setdefault(column, {}), element, _Cell(ts, True, expires_at))
            else:
                self._put(row.cells, column, _Cell(ts, _or_deleted(value), expires_at))

    def insert(
        self, key: Key, values: Mapping[str, Any], ts: int, ttl: int | None = None, now: float = 0
    ) -> None:
        expires_at = now + ttl if ttl else None
        row = self._rows.setdefault(key, _Row())
        marker = _Cell(ts, True, expires_at)
        if marker.beats(row.marker):
            row.marker = marker
        self._write(key, values, ts, expires_at)

    def update(
        self, key: Key, values: Mapping[str, Any], ts: int, ttl: int | None = None, now: float = 0
    ) -> None:
        self._write(key, values, ts, now + ttl if ttl else None)

    def update_static(
        self,
        partition: Key,
        values: Mapping[str, Any],
        ts: int,
        ttl: int | None = None,
        now: float = 0,
    ) -> None:
        expires_at = now + ttl if ttl else None
        for column, value in values.items():
            cell = _Cell(ts, _or_deleted(value), expires_at)
            self._put(self._static.setdefault(partition, {}), column, cell)

    def set_add(self, key: Key, column: str, elements: Iterable[Hashable], ts: int) -> None:
        row = self._rows.setdefault(key, _Row())
        for element in elements:
            self._put(row.sets.setdefault(column, {}), element, _Cell(ts, True))

    def set_remove(self, key: Key, column: str, elements: Iterable[Hashable], ts: int) -> None:
        row = self._rows.setdefault(key, _Row())
        for element in elements:
            self._put(row.sets.setdefault(column, {}), element, _Cell(ts, _DELETED))

    def delete_columns(self, key: Key, columns: Iterable[str], ts: int) -> None:
        row = self._rows.setdefault(key, _Row())
        for column in columns:
            if column in self.sets:
                # DELETE of a whole collection clears at T itself (an assignment: T-1).
                row.set_cleared_ts[column] = max(ts, row.set_cleared_ts.get(column, ts))
            else:
                self._write(key, {column: None}, ts, None)

    def delete_row(self, key: Key, ts: int) -> None:
        row = self._rows.setdefault(key, _Row())
        row.tombstone_ts = max(ts, row.tombstone_ts or ts)

    def delete_partition(self, partition: Key, ts: int) -> None:
        """`DELETE FROM t WHERE <partition key>`: every row and static of it, at or before ts."""
        current = self._partition_tombstones.get(partition, ts)
        self._partition_tombstones[partition] = max(ts, current)

    def visible(self, now: float = 0) -> dict[Key, dict[str, Any]]:
        """Every live row: key → {column: value} with its partition's static values."""
        result: dict[Key, dict[str, Any]] = {}
        for key, row in self._rows.items():
            partition, clustering = self._split(key)
            shadow = self._shadow(row, partition)
            values = self._live_values(row, now, shadow)
            marker = row.marker is not None and row.marker.ts > shadow and row.marker.live(now)
            if not values and not marker:
                continue
            values.update(
                dict(zip(self.partition + self.clustering, partition + clustering, strict=True))
            )
            values.update(self._live_statics(partition, now))
            result[key] = values
        return result

    def visible_statics(self, now: float = 0) -> dict[Key, dict[str, Any]]:
        """Every partition's live static values, rows or not (a partition with none: absent)."""
        result: dict[Key, dict[str, Any]] = {}
        for partition in self._static:
            values = self._live_statics(partition, now)
            if values:
                result[partition] = values
        return result

    def _live_statics(self, partition: Key, now: float) -> dict[str, Any]:
        shadow = self._partition_tombstones.get(partition, _NEVER)
        return {
            column: cell.value
            for column, cell in self._static.get(partition, {}).items()
            if cell.ts > shadow and cell.live(now)
        }

    def _shadow(self, row: _Row, partition: Key) -> int:
        """The newest deletion covering the row: cells at or before it are gone."""
        row_ts = _NEVER if row.tombstone_ts is None else row.tombstone_ts
        return max(row_ts, self._partition_tombstones.get(partition, _NEVER))

    def _live_values(self, row: _Row, now: float, shadow: int) -> dict[str, Any]:
        values = {
            column: cell.value
            for column, cell in row.cells.items()
            if cell.ts > shadow and cell.live(now)
        }
        for column, elements in row.sets.items():
            cleared = row.set_cleared_ts.get(column)
            live = {
                e
                for e, cell in elements.items()
                if cell.ts > shadow and cell.live(now) and (cleared is None or cell.ts > cleared)
            }
            if live:
                values[column] = live
        return values


def _or_deleted(value: Any) -> Any:
    return _DELETED if value is None else value
