"""The follower's writer stage: changes of every shard packed into full bulk requests, and
the position each shard may checkpoint once OpenSearch has acknowledged them.

Flow::

    shard readers --Batch of one shard--> Packer (FIFO over every shard, bounded in bytes)
        -> senders (`follow.bulk_senders` threads) each take a Load: up to
           `writer.max_docs` changes from the front, whatever their shards
        -> BulkWriter.write -> statics read again, bad records dead-lettered, counted
        -> Packer.done: per shard, the batches now resolved with every earlier one
        -> the shard's reader is told the (sequence number, version) it may checkpoint

Versions make the order of writes between shards, and between two loads in
flight, irrelevant (docs/versions.md). What keeps its order is each shard's
checkpoint: it passes a record only once that record and every earlier one
of the shard are resolved (applied, stale or dead-lettered). A batch may be
split over several loads; it is acknowledged when every piece of it is, and
only after every earlier batch of its shard.

Back-pressure: a reader does not read another page while the stage holds
more than `follow.max_pending_bytes` (estimated as a batch estimates its
size), so memory stays bounded whatever OpenSearch's pace. A write that
fails (OpenSearch refusing past the retry budget, a change too old, too many
dead letters) breaks the stage: nothing more is acknowledged, every reader
waiting on it gets the error, and the follower stops on it.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Protocol

from sync.config import FollowConfig
from sync.logs import ContextThread
from sync.model import Change, StreamPosition
from sync.sources.streams import BadRecord, ReadResult
from sync.statics import StaticsCheck
from sync.writer import BulkWriter, WriteReport

# A rough in-memory size of a change, to bound batches and the stage in bytes without
# serialising it twice (the writer measures the real bulk bytes): a fixed cost per change
# and per column, plus the length of text and blob values, which make up most of a wide row.
_CHANGE_OVERHEAD = 200
_BYTES_PER_COLUMN = 64


def approx_size(change: Change) -> int:
    size = _CHANGE_OVERHEAD
    if change.image:
        for value in change.image.values():
            size += _BYTES_PER_COLUMN
            if isinstance(value, str | bytes):
                size += len(value)
    return size


@dataclass
class Batch:
    """Changes of one shard read but not yet handed to the stage, and the checkpoint they
    lead to."""

    changes: list[Change] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)  # for the dead-letter store
    approx_bytes: int = 0
    first_at: float | None = None  # monotonic time the oldest unwritten record was read
    first_created_at_ms: int | None = None  # createdAt of the oldest record (for the lag)
    last_sequence: str | None = None
    last_version: int | None = None
    last_created_at_ms: int | None = None

    def add(self, result: ReadResult, now: float) -> None:
        if result.last_sequence is None:
            return
        if self.first_at is None:
            self.first_at = now
            self.first_created_at_ms = first_created_ms(result)
        self.changes.extend(result.changes)
        self.bad.extend(result.bad)
        self.approx_bytes += sum(approx_size(c) for c in result.changes)
        self.last_sequence = result.last_sequence
        self.last_version = result.last_version
        self.last_created_at_ms = result.last_created_at_ms

    @property
    def pending(self) -> bool:
        return self.last_sequence is not None

    def due(self, now: float, settings: FollowConfig) -> bool:
        if not self.pending:
            return False
        assert self.first_at is not None
        return (
            len(self.changes) + len(self.bad) >= settings.max_batch_records
            or self.approx_bytes >= settings.max_batch_bytes
            or (now - self.first_at) * 1000 >= settings.flush_interval_ms
        )


def first_created_ms(result: ReadResult) -> int | None:
    """`createdAt` of the first change read (records come in shard order), for the lag."""
    if result.changes and isinstance(result.changes[0].source, StreamPosition):
        return result.changes[0].source.created_at_ms
    return result.last_created_at_ms


# ---- the bookkeeping (pure) ------------------------------------------------------------------


@dataclass(eq=False)
class Parcel:
    """A batch handed to the stage by one shard, and how far it has gone."""

    shard: Hashable
    batch: Batch
    taken: int = 0  # changes already put into loads
    whole: bool = False  # every change of it is in a load (its last piece was taken)
    out: int = 0  # pieces in loads not yet resolved


@dataclass(frozen=True)
class Piece:
    """Changes `start:end` of a parcel; `last`: the parcel's final piece."""

    parcel: Parcel
    start: int
    end: int
    last: bool

    @property
    def changes(self) -> list[Change]:
        return self.parcel.batch.changes[self.start : self.end]


@dataclass
class Load:
    """What one sender writes at once: pieces of parcels of any shards."""

    pieces: list[Piece]

    def changes(self) -> list[Change]:
        out: list[Change] = []
        for piece in self.pieces:
            out.extend(piece.changes)
        return out

    def bad(self) -> list[tuple[Hashable, list[BadRecord]]]:
        """Bad records of the parcels this load completes, by shard (they go with the
        last piece, so they are stored before any checkpoint passes them)."""
        return [
            (p.parcel.shard, p.parcel.batch.bad)
            for p in self.pieces
            if p.last and p.parcel.batch.bad
        ]


class Packer:
    """Parcels of every shard in arrival order, cut into loads, and each shard's acknowledged
    prefix. Not thread-safe: the stage holds its lock around every call."""

    def __init__(self) -> None:
        self._queue: collections.deque[Parcel] = collections.deque()  # not yet wholly taken
        self._open: dict[Hashable, collections.deque[Parcel]] = {}  # per shard, unacknowledged
        self.held_bytes = 0

    def put(self, shard: Hashable, batch: Batch) -> Parcel:
        parcel = Parcel(shard, batch)
        self._queue.append(parcel)
        self._open.setdefault(shard, collections.deque()).append(parcel)
        self.held_bytes += batch.approx_bytes
        return parcel

    def take(self, max_docs: int, max_bytes: int) -> Load | None:
        """The next load: whole parcels and pieces from the front, up to `max_docs` changes
        and about `max_bytes`; None when nothing waits."""
        pieces: list[Piece] = []
        docs = size = 0
        while self._queue and docs < max_docs and size < max_bytes:
            parcel = self._queue[0]
            changes = parcel.batch.changes
            start = end = parcel.taken
            fits = docs + len(changes) <= max_docs and size + parcel.batch.approx_bytes <= max_bytes
            if start == 0 and fits:  # the common case: the whole batch, without a look inside
                docs, size, end = (
                    docs + len(changes),
                    size + parcel.batch.approx_bytes,
                    len(changes),
                )
            while end < len(changes) and docs < max_docs and size < max_bytes:
                size += approx_size(changes[end])
                docs += 1
                end += 1
            parcel.taken = end
            parcel.whole = end == len(changes)
            parcel.out += 1
            pieces.append(Piece(parcel, start, end, parcel.whole))
            if parcel.whole:
                self._queue.popleft()
        return Load(pieces) if pieces else None

    def done(self, load: Load) -> list[Parcel]:
        """The load is resolved: the parcels now acknowledged, each after every earlier one
        of its shard, in order per shard."""
        shards: list[Hashable] = []
        for piece in load.pieces:
            piece.parcel.out -= 1
            if piece.parcel.shard not in shards:
                shards.append(piece.parcel.shard)
        acknowledged: list[Parcel] = []
        for shard in shards:
            queue = self._open.get(shard)
            while queue and queue[0].whole and queue[0].out == 0:
                parcel = queue.popleft()
                self.held_bytes -= parcel.batch.approx_bytes
                acknowledged.append(parcel)
            if not queue:
                self._open.pop(shard, None)
        return acknowledged

    def settled(self, shard: Hashable) -> bool:
        """Everything the shard handed over is acknowledged."""
        return shard not in self._open

    def waiting_since_ms(self, shard: Hashable) -> int | None:
        """`createdAt` of the shard's oldest record not acknowledged (None: none waits)."""
        queue = self._open.get(shard)
        return queue[0].batch.first_created_at_ms if queue else None

    def waiting(self) -> bool:
        return bool(self._queue)


# ---- the stage ---------------------------------------------------------------------------------


class StageShard(Protocol):
    """A shard reader as the stage knows it (by identity)."""

    def __hash__(self) -> int: ...

    @property
    def shard_id(self) -> str: ...

    def acknowledged(self, sequence: str, version: int) -> None:
        """Every record up to `sequence` (at `version`) is resolved: it may be checkpointed."""


class StageHost(Protocol):
    """What the stage does around a write: the follower's."""

    def new_writer(self) -> BulkWriter: ...

    def reread_statics(self, checks: list[StaticsCheck], writer: BulkWriter) -> None: ...

    def dead_letter(self, shard_id: str, bad: list[BadRecord]) -> None: ...

    def count_dead_letters(self, records: int, dead: int) -> None: ...

    def wake(self) -> None:
        """The stage broke: look at it now rather than at the next plan."""


class StageMetrics(Protocol):
    """Where the stage tells what it wrote (the table's metrics)."""

    def written(self, applied: int, stale: int, dead_lettered: int) -> None: ...

    def shard_acknowledged(self, shard: str, waiting_since_ms: int | None) -> None: ...


class WriterStage:
    """One writer stage for every shard of a follower; see the module docstring."""

    def __init__(
        self,
        host: StageHost,
        metrics: StageMetrics,
        *,
        senders: int,
        max_docs: int,
        max_bytes: int,
        max_pending_bytes: int,
    ) -> None:
        self._host = host
        self._metrics = metrics
        self._max_docs, self._max_bytes = max_docs, max_bytes
        self._budget = max_pending_bytes
        self._packer = Packer()
        self._lock = threading.Condition()
        self._threads = [
            ContextThread(target=self._send, name=f"ks2os-bulk-{n}", daemon=True)
            for n in range(senders)
        ]
        self._closing = False
        self._abandoned = False
        self.error: BaseException | None = None

    def start(self) -> WriterStage:
        for thread in self._threads:
            thread.start()
        return self

    # ---- the readers' side

    def hand_over(self, shard: StageShard, batch: Batch) -> None:
        """Queue a shard's batch to be written; raises the stage's error if it broke."""
        if not batch.pending:
            return
        with self._lock:
            self._raise_if_broken()
            self._packer.put(shard, batch)
            self._lock.notify_all()

    def has_room(self) -> bool:
        """Below the memory budget: a reader may read another page."""
        with self._lock:
            return self._packer.held_bytes < self._budget

    def settled(self, shard: StageShard) -> bool:
        """Everything the shard handed over is acknowledged; raises the stage's error if it
        broke before that."""
        with self._lock:
            if self._packer.settled(shard):
                return True
            self._raise_if_broken()
            return False

    def wait(self, timeout_s: float) -> None:
        """Until the stage makes progress (or fails), at most `timeout_s`."""
        with self._lock:
            self._lock.wait(timeout_s)

    # ---- the follower's side

    def close(self, timeout_s: float) -> None:
        """Write what waits, then stop the senders (after every reader has stopped)."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout=timeout_s)

    def abandon(self) -> None:
        """Stop at once, writing nothing more (a crash, for tests of takeover)."""
        with self._lock:
            self._abandoned = True
            self._lock.notify_all()

    def _raise_if_broken(self) -> None:
        if self.error is not None:
            raise self.error
        if self._abandoned:
            raise StageAbandoned("the follower was abandoned")

    # ---- a sender

    def _send(self) -> None:
        writer = self._host.new_writer()
        while True:
            with self._lock:
                load = self._next_load()
            if load is None:
                return
            try:
                self._write(writer, load)
            except BaseException as exc:
                with self._lock:
                    if self.error is None:
                        self.error = exc
                    self._lock.notify_all()
                self._host.wake()
                return

    def _next_load(self) -> Load | None:
        """Wait for a load to write; None once the stage is closed and empty, or broken."""
        while True:
            if self.error is not None or self._abandoned:
                return None
            load = self._packer.take(self._max_docs, self._max_bytes)
            if load is not None:
                return load
            if self._closing:
                return None
            self._lock.wait()

    def _write(self, writer: BulkWriter, load: Load) -> None:
        """Write the load, resolve its bad records, then acknowledge what it completes."""
        changes = load.changes()
        report = writer.write(changes) if changes else WriteReport()
        if report.checks:
            # Before any checkpoint passes them: a crash replays the changes, and their checks.
            self._host.reread_statics(report.checks, writer)
        dead = report.dead_lettered
        records = len(changes)
        for shard, bad in load.bad():
            self._host.dead_letter(_shard_id(shard), bad)
            dead += len(bad)
            records += len(bad)
        # Too many refused: stop before any of this load is acknowledged (a restart, once
        # the cause is mended, writes it again).
        self._host.count_dead_letters(records, dead)
        with self._lock:
            # Told under the lock, so two senders never tell one shard out of order.
            last: dict[Hashable, Parcel] = {}
            for parcel in self._packer.done(load):
                last[parcel.shard] = parcel
            for shard, parcel in last.items():
                batch = parcel.batch
                assert batch.last_sequence is not None and batch.last_version is not None
                _as_shard(shard).acknowledged(batch.last_sequence, batch.last_version)
            waiting = {shard: self._packer.waiting_since_ms(shard) for shard in last}
            self._lock.notify_all()
        self._metrics.written(report.applied, report.stale, dead)
        for shard in last:
            self._metrics.shard_acknowledged(_shard_id(shard), waiting[shard])


class StageAbandoned(Exception):
    """The stage was abandoned (a simulated crash): a reader stops without a word."""


def _as_shard(shard: Hashable) -> StageShard:
    assert hasattr(shard, "acknowledged")
    return shard  # type: ignore[return-value]


def _shard_id(shard: Hashable) -> str:
    return str(getattr(shard, "shard_id", shard))


__all__ = [
    "Batch",
    "Load",
    "Packer",
    "Parcel",
    "Piece",
    "StageAbandoned",
    "StageHost",
    "StageMetrics",
    "StageShard",
    "WriterStage",
    "approx_size",
    "first_created_ms",
]
