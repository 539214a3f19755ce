"""`ks2os status`: where a table's sync stands, read from the state index and the stream.

Per table: the alias and the index behind it; each stream the follower began
(its label, ENABLED or DISABLED, drained or not) and its shards (checkpoint,
finished, lease owner and whether the lease is live, lag), and the shards of
the stream no follower began yet; the live workers; the backfill run of each
`<alias>_v<N>` index (the CLI's or the Spark driver's: they share the state
documents); the gaps recorded; the dead-letter count; a rebuild (`ks2os
reindex`) in progress.

**Lag** means what `sync.metrics` means by it, and is computed with its
`ShardLag`: 0 when nothing follows the shard's checkpoint in the stream (at
the tip, or at the end of a closed shard), else now minus `createdAt` of the
first record after the checkpoint: the oldest change not yet acknowledged.
Status reads that record with one GetRecords per unfinished shard
(`sync.sources.streams.peek_after`); it takes no lease.

**It writes nothing**: no state index, no index, no dead-letter index is
created, no lease taken, no heartbeat. A table that left nothing in the state
index (or with no state index at all) has never run, and says so. The first
requests (the alias, ListStreams) are not retried, so an unreachable
OpenSearch or Streams endpoint is one line at once (exit 1).

`build_status` gathers a `TableStatus`; its `text()` is for a person, its
`to_json()` for `--json` (one line per table, as every command prints).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from opensearchpy import OpenSearch

from sync.clients import opensearch_client, streams_client
from sync.config import DEAD_LETTER_INDEX, Config
from sync.indices import alias_targets, index_versions
from sync.jobs import dead_letter_store
from sync.jobs.follow import ROLE as FOLLOW_ROLE
from sync.mapping import TableMapping
from sync.metrics import ShardLag, wall_clock_ms
from sync.retry import RetryPolicy
from sync.sources.streams import (
    StreamDescription,
    StreamGone,
    describe_stream,
    list_streams_of,
    peek_after,
)
from sync.state import BackfillRun, GapRecord, Rebuild, ShardState, StateStore, StreamState
from sync.tables import table_name

# The Spark driver's heartbeat role (sync.spark.driver.RUNNER_ROLE; not imported: that
# module needs PySpark's extras) and the owner prefix of the ranges its tasks lease.
SPARK_ROLE = "backfill-spark"
SPARK_OWNER_PREFIX = "spark:"
NEVER_RUN = "never run: nothing of this table in the state index"


@dataclass(frozen=True)
class ShardStatus:
    """One shard the follower began: its checkpoint, its lease, its lag."""

    shard_id: str
    checkpoint: str | None  # the last sequence number acknowledged (None: nothing yet)
    finished: bool
    owner: str | None
    lease_live: bool
    lag_s: float | None  # None: finished, or nothing known
    lost: bool = False  # the stream no longer holds what follows the checkpoint
    gaps: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "shard_id": self.shard_id,
            "checkpoint": self.checkpoint,
            "finished": self.finished,
            "owner": self.owner,
            "lease_live": self.lease_live,
            "lag_s": self.lag_s,
            "lost": self.lost,
            "gaps": self.gaps,
        }


@dataclass(frozen=True)
class StreamStatus:
    """One stream of the table: as Keyspaces lists it, and as far as the follower read it."""

    label: str
    stream_arn: str
    status: str  # ENABLED, DISABLED, ...; GONE when Keyspaces no longer has it
    begun: bool  # a follower began it (it has a stream document)
    drained: bool  # a DISABLED stream read to its end
    shards: tuple[ShardStatus, ...] = ()
    not_begun: int = 0  # listed shards no follower began yet

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "stream_arn": self.stream_arn,
            "status": self.status,
            "begun": self.begun,
            "drained": self.drained,
            "shards": [s.to_json() for s in self.shards],
            "shards_not_begun": self.not_begun,
        }


@dataclass(frozen=True)
class BackfillStatus:
    """The backfill run of one index (the alias's, or one a reindex fills)."""

    index: str
    run_id: str
    ranges: int
    ranges_done: int
    rows: int
    started_at_ms: int
    finished: bool
    runner: str  # "ks2os backfill", or "spark" when Spark tasks leased its ranges
    workers: tuple[str, ...]  # owners of its live range leases

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "run_id": self.run_id,
            "ranges": self.ranges,
            "ranges_done": self.ranges_done,
            "rows": self.rows,
            "started_at": _iso(self.started_at_ms),
            "finished": self.finished,
            "runner": self.runner,
            "workers": list(self.workers),
        }


@dataclass(frozen=True)
class RebuildStatus:
    """A `ks2os reindex` of the table: its phase, the new index, and the new index's fill."""

    phase: str
    old_index: str
    new_index: str
    started_at_ms: int
    owner: str | None
    lease_live: bool
    backfill: BackfillStatus | None  # the snapshot filling the new index

    @property
    def in_progress(self) -> bool:
        return self.phase in ("building", "swapped")

    def to_json(self) -> dict[str, Any]:
        fill = self.backfill
        return {
            "phase": self.phase,
            "old_index": self.old_index,
            "new_index": self.new_index,
            "started_at": _iso(self.started_at_ms),
            "owner": self.owner,
            "lease_live": self.lease_live,
            "ranges": None if fill is None else fill.ranges,
            "ranges_done": None if fill is None else fill.ranges_done,
            "rows": None if fill is None else fill.rows,
        }


@dataclass
class TableStatus:
    """Where one table's sync stands; see the module docstring."""

    table: str
    alias: str
    indexes: tuple[str, ...]  # behind the alias (normally one)
    never_run: bool
    streams: list[StreamStatus] = field(default_factory=list)
    workers: dict[str, tuple[str, ...]] = field(default_factory=dict)  # role -> live workers
    backfills: list[BackfillStatus] = field(default_factory=list)
    gaps: list[GapRecord] = field(default_factory=list)
    dead_letters: int = 0
    dead_letter_store: str = ""
    rebuild: RebuildStatus | None = None
    at_ms: int = 0

    @property
    def index(self) -> str | None:
        return self.indexes[-1] if self.indexes else None

    def to_json(self) -> dict[str, Any]:
        """The report as `ks2os status --json` prints it, after `table`, `alias`, `outcome`."""
        return {
            "index": self.index,
            "never_run": self.never_run,
            "streams": [s.to_json() for s in self.streams],
            "max_lag_s": self.max_lag_s(),
            "workers": {role: list(names) for role, names in self.workers.items()},
            "backfills": [b.to_json() for b in self.backfills],
            "gaps": [_gap_json(g) for g in self.gaps],
            "dead_letters": self.dead_letters,
            "rebuild": None if self.rebuild is None else self.rebuild.to_json(),
            "at": _iso(self.at_ms),
        }

    def max_lag_s(self) -> float | None:
        known = [s.lag_s for st in self.streams for s in st.shards if s.lag_s is not None]
        return max(known) if known else None

    def text(self) -> str:
        """The report for a person: compact, aligned, one thing per line."""
        index = self.index or "none"
        lines = [f"status {self.table}: alias {self.alias} -> {index}"]
        if self.never_run:
            lines.append(f"  {NEVER_RUN} (ks2os backfill and follow have not run)")
        lines += self._stream_lines()
        lines += self._worker_lines()
        lines += self._backfill_lines()
        lines += self._rebuild_lines()
        lines += self._gap_lines()
        lines.append(f"  dead letters  {self.dead_letters} ({self.dead_letter_store})")
        return "\n".join(lines)

    def _stream_lines(self) -> list[str]:
        if not self.streams:
            return ["  stream        none (CDC is off and no stream is left)"]
        lines: list[str] = []
        for stream in self.streams:
            finished = sum(1 for s in stream.shards if s.finished)
            reading = "drained" if stream.drained else "following" if stream.begun else "not begun"
            lines.append(
                f"  stream        {stream.label}  {stream.status}  {reading}; "
                f"{len(stream.shards)} shards begun ({finished} finished), "
                f"{stream.not_begun} not begun"
            )
            if stream.shards:
                lines += _table(
                    ("shard", "checkpoint", "state", "lease", "lag"),
                    [_shard_row(s) for s in stream.shards],
                    indent="    ",
                )
        return lines

    def _worker_lines(self) -> list[str]:
        shown = [f"{role}: {', '.join(names)}" for role, names in self.workers.items() if names]
        return [f"  workers       {'; '.join(shown) if shown else 'none live'}"]

    def _backfill_lines(self) -> list[str]:
        if not self.backfills:
            return ["  backfill      none"]
        return [f"  backfill      {_backfill_text(b)}" for b in self.backfills]

    def _rebuild_lines(self) -> list[str]:
        r = self.rebuild
        if r is None or not r.in_progress:
            last = "" if r is None else f" (last: {r.phase}, {r.new_index})"
            return [f"  rebuild       none in progress{last}"]
        owner = _lease_text(r.owner, r.lease_live)
        fill = "not begun" if r.backfill is None else _fill_text(r.backfill)
        return [
            f"  rebuild       {r.phase}: {r.old_index} -> {r.new_index}, since "
            f"{_iso(r.started_at_ms)}, by {owner}; new index {fill}"
        ]

    def _gap_lines(self) -> list[str]:
        if not self.gaps:
            return ["  gaps          none"]
        lines = [f"  gaps          {len(self.gaps)}"]
        for gap in self.gaps:
            where = f"shard {gap.shard_id}" if gap.shard_id else "between streams"
            after = f" after {gap.after}" if gap.after else ""
            lines.append(
                f"    {gap.kind}  {where}{after}  found {_iso(gap.found_at_ms)}  "
                f"on_gap={gap.policy}"
            )
        return lines


def _shard_row(shard: ShardStatus) -> tuple[str, ...]:
    if shard.finished:
        state, lag = "finished", "-"
    elif shard.lost:
        state, lag = "records lost", "?"
    else:
        state = "reading"
        lag = "?" if shard.lag_s is None else f"{shard.lag_s:.1f} s"
    return (
        shard.shard_id,
        shard.checkpoint or "-",
        state,
        _lease_text(shard.owner, shard.lease_live),
        lag,
    )


def _lease_text(owner: str | None, live: bool) -> str:
    if owner is None:
        return "free"
    return f"{owner} ({'live' if live else 'expired'})"


def _fill_text(run: BackfillStatus) -> str:
    return f"{run.ranges_done}/{run.ranges} ranges, {run.rows} rows"


def _backfill_text(run: BackfillStatus) -> str:
    state = "finished" if run.finished else "running" if run.workers else "stopped"
    workers = f" by {', '.join(run.workers)}" if run.workers else ""
    return (
        f"{run.index}  run {run.run_id} ({run.runner}): {_fill_text(run)}, started "
        f"{_iso(run.started_at_ms)}, {state}{workers}"
    )


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], indent: str) -> list[str]:
    """Rows aligned under their heading, columns two spaces apart."""
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]

    def line(cells: Sequence[str]) -> str:
        return indent + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return [line(head), *(line(r) for r in rows)]


def _gap_json(gap: GapRecord) -> dict[str, Any]:
    return {
        "kind": gap.kind,
        "stream_arn": gap.stream_arn,
        "shard_id": gap.shard_id,
        "after": gap.after,
        "found_at": _iso(gap.found_at_ms),
        "policy": gap.policy,
    }


def _iso(epoch_ms: int | None) -> str | None:
    if epoch_ms is None:
        return None
    moment = dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


# ---- gathering --------------------------------------------------------------------------


def run_status(
    cfg: Config, mapping: TableMapping, *, stop: threading.Event | None = None
) -> TableStatus:
    """The status of the mapping's table, with clients of its own (closed after)."""
    client = opensearch_client(cfg)
    try:
        return build_status(cfg, mapping, client, streams_client(cfg), stop=stop)
    finally:
        client.close()


def build_status(
    cfg: Config,
    mapping: TableMapping,
    client: OpenSearch,
    streams: Any,
    *,
    stop: threading.Event | None = None,
    clock_ms: Callable[[], int] = wall_clock_ms,
) -> TableStatus:
    """Read everything `TableStatus` shows; see the module docstring. Writes nothing."""
    table = table_name(mapping)
    # Not retried: an unreachable OpenSearch is one line at once.
    indexes = tuple(alias_targets(client, mapping.alias))
    # The same for the Streams endpoint: ListStreams first, without patience.
    listed = list_streams_of(streams, mapping.keyspace, mapping.table, stop, patient=False)
    store = StateStore(
        client,
        cfg.state.index,
        lease_seconds=cfg.state.lease_seconds,
        policy=RetryPolicy.for_opensearch(cfg.writer, stop or threading.Event()),
        clock=clock_ms,
    )
    dead = dead_letter_store(cfg, client, mapping)
    status = TableStatus(
        table,
        mapping.alias,
        indexes,
        never_run=not store.exists(),
        dead_letters=dead.count,
        dead_letter_store=_dead_letter_place(cfg, mapping),
        at_ms=clock_ms(),
    )
    now = status.at_ms
    if status.never_run:
        status.streams = [
            _stream_status(streams, s.stream_arn, s.label, None, [], now, stop) for s in listed
        ]
        return status
    shards = store.list_shards(table)
    begun = {s.stream_arn: s for s in store.list_stream_states(table)}
    labels = {s.stream_arn: s.label for s in listed}
    for arn, state in begun.items():
        labels.setdefault(arn, state.label)
    for arn in sorted(labels, key=lambda a: (labels[a], a)):
        mine = [s for s in shards if s.stream_arn == arn]
        status.streams.append(
            _stream_status(streams, arn, labels[arn], begun.get(arn), mine, now, stop)
        )
    status.workers = {
        FOLLOW_ROLE: tuple(sorted(store.live_workers(FOLLOW_ROLE, table))),
    }
    versions = index_versions(client, mapping.alias)
    for index in sorted(set(versions) | set(indexes), key=lambda i: (versions.get(i, 0), i)):
        run = store.get_run(f"{table}->{index}")
        if run is not None:
            status.backfills.append(_backfill_status(store, run, index, now))
            spark = store.live_workers(SPARK_ROLE, f"{table}->{index}")
            if spark:
                status.workers[SPARK_ROLE] = tuple(sorted(spark))
    status.gaps = store.list_gaps(table)
    rebuild = store.get_rebuild(table)
    if rebuild is not None:
        status.rebuild = _rebuild_status(rebuild, status.backfills, now)
    # The state index is shared by every table: this one has run once it left anything there.
    status.never_run = not (shards or begun or status.backfills or status.gaps or rebuild)
    return status


def _stream_status(
    streams: Any,
    arn: str,
    label: str,
    state: StreamState | None,
    shards: list[ShardState],
    now_ms: int,
    stop: threading.Event | None,
) -> StreamStatus:
    try:
        described: StreamDescription | None = describe_stream(streams, arn, stop)
    except StreamGone:
        described = None
    begun_ids = {s.shard_id for s in shards}
    listed = set() if described is None else set(described.shards)
    rows = tuple(
        _shard_status(streams, arn, s, now_ms, stop, gone=described is None)
        for s in sorted(shards, key=lambda s: s.shard_id)
    )
    return StreamStatus(
        label=label,
        stream_arn=arn,
        status="GONE" if described is None else described.status,
        begun=state is not None,
        drained=bool(state is not None and state.finished),
        shards=rows,
        not_begun=len(listed - begun_ids),
    )


def _shard_status(
    streams: Any,
    arn: str,
    state: ShardState,
    now_ms: int,
    stop: threading.Event | None,
    *,
    gone: bool,
) -> ShardStatus:
    lease_live = state.lease.owner is not None and now_ms <= state.lease.expires_at_ms
    lag_s: float | None = None
    lost = False
    if not state.finished:
        if gone:
            lost = True
        else:
            peek = peek_after(streams, arn, state.shard_id, state.sequence_number, stop)
            lost = peek.lost
            if not lost:
                # The follower's own rule (sync.metrics): the oldest record not yet
                # acknowledged, or 0 when nothing follows the checkpoint.
                lag = ShardLag(
                    oldest_unacknowledged_ms=peek.oldest_ms,
                    at_tip=peek.oldest_ms is None,
                    answered_ms=now_ms,
                )
                ms = lag.lag_ms(now_ms)
                lag_s = None if ms is None else ms / 1000
    return ShardStatus(
        state.shard_id,
        state.sequence_number,
        state.finished,
        state.lease.owner,
        lease_live,
        lag_s,
        lost,
        state.gaps,
    )


def _backfill_status(
    store: StateStore, run: BackfillRun, index: str, now_ms: int
) -> BackfillStatus:
    ranges = store.list_ranges(run)
    owners = {
        r.lease.owner
        for r in ranges
        if r.lease.owner is not None and not r.done and now_ms <= r.lease.expires_at_ms
    }
    spark = any((r.lease.owner or "").startswith(SPARK_OWNER_PREFIX) for r in ranges)
    workers = sorted({o.split("#", 1)[0] for o in owners if o})
    return BackfillStatus(
        index=index,
        run_id=run.run_id,
        ranges=run.range_count,
        ranges_done=sum(1 for r in ranges if r.done),
        rows=sum(r.rows for r in ranges),
        started_at_ms=run.started_at_ms,
        finished=run.finished,
        runner="spark" if spark else "ks2os backfill",
        workers=tuple(workers),
    )


def _rebuild_status(
    rebuild: Rebuild, backfills: list[BackfillStatus], now_ms: int
) -> RebuildStatus:
    fill = next((b for b in backfills if b.index == rebuild.new_index), None)
    return RebuildStatus(
        phase=rebuild.phase,
        old_index=rebuild.old_index,
        new_index=rebuild.new_index,
        started_at_ms=rebuild.started_ms,
        owner=rebuild.lease.owner,
        lease_live=rebuild.lease.owner is not None and now_ms <= rebuild.lease.expires_at_ms,
        backfill=fill,
    )


def _dead_letter_place(cfg: Config, mapping: TableMapping) -> str:
    if cfg.dead_letter == DEAD_LETTER_INDEX:
        return f"index {mapping.alias}-deadletter"
    return f"file {cfg.dead_letter}"
