"""`follow`: read the table's CDC streams for ever and apply their changes to the index.

Flow::

    coordinator (every few seconds, or at once when a shard ends):
        the table's streams (ListStreams, oldest first, and any the state store
        knows): one lineage, read one stream after another
        -> the first stream not finished: GetStream -> shard graph (+ orphans)
        -> gaps ruled on -> readable shards (every parent finished)
        -> lease up to a fair share (live followers share the stream)
        -> one reader thread per leased shard
        -> a DISABLED stream with every shard finished is finished for good;
           the next stream's shards start above its final version
    reader thread, per shard:
        GetRecords -> versions (sync/version.py) -> batch (count/bytes/time, or at once
        at the tip) -> the writer stage (sync/jobs/stage.py)
        -> checkpoint (sequence number + version) of what the stage acknowledged,
           conditional on the lease
        -> ... -> at the shard's end: everything acknowledged, final version, lease freed
    writer stage, one per follower:
        batches of every shard -> bulk requests of up to writer.max_docs (the
        backfill's shape) -> BulkWriter.write (+ raw bad records to the dead-letter
        store) -> each shard told how far its records are resolved

A checkpoint covers only what the stage acknowledged for that shard (every
record up to it resolved), so a crash replays at most what was in flight,
with the same versions. A follower that lost a lease cannot checkpoint (409
-> `LeaseLost`) and drops the shard. A dead follower's shards are taken over
when their leases expire. On `stop`, every reader hands over what it read,
waits for the stage, checkpoints what was acknowledged and releases its
lease, and `run_follow` returns.

**Nothing lost silently.** The index needs every record created since its
coverage began (`StateStore.cover_from`: the earliest backfill or follower
start). Whatever the stream no longer holds of that is a gap, recorded in the
state store and handled by `follow.on_gap` ("stop": a one-line error;
"continue": go on from what the stream still holds, flag the index for a
rebuild): records after a checkpoint that were trimmed; the first records of
a shard read from its start (proved present with `AT_SEQUENCE_NUMBER` of its
`startingSequenceNumber`, when the coverage reaches back past the retention
period); a shard not read to its end that the stream no longer holds, or a
never-read parent it no longer lists; and the window between two streams,
when CDC was off. A DISABLED stream is read to its end, then its successor;
with no successor the follower stops with a one-line error saying CDC is
off. A record that cannot become a change goes raw to the dead-letter store.

**While a rebuild lasts** (`ks2os reindex`: the table's rebuild record in
phase `building` or `swapped`), every write goes to the old and the new index
(`sync.targets.WriteTargets`, set from the record before each plan and before
the first reader starts), and the heartbeat names both (`writes_to`), so the
rebuild knows when every live follower writes its new index. Once the record
says `done` or `aborted`, the follower writes the alias's index alone (the
new one, or the old one) and follows it from then on.

**What it tells.** Counters and each owned shard's lag go to the job's
metrics (`sync.metrics`: the lag is 0 at the tip), `/readyz` asks
`Follower.readiness`, and a status line is logged every `follow.log_interval_s`.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sync.bulk import Reader, call
from sync.clients import streams_client
from sync.config import Config
from sync.deadletter import DeadLetter, DeadLetterShare
from sync.errors import ConfigError, DecodeError
from sync.indices import Target, current_target
from sync.jobs import Job
from sync.jobs.restate import ExpirySweep, SweepEach, SweepThread, reread_statics
from sync.jobs.stage import Batch, StageAbandoned, WriterStage, first_created_ms
from sync.keyspaces import describe_table, no_cdc_message, service_now_ms
from sync.logs import ContextThread
from sync.mapping import TableMapping
from sync.metrics import FollowTotals, Metrics, MetricsServer, Readiness, status_line
from sync.model import Change, Op
from sync.sources.records import record_key
from sync.sources.streams import (
    BadRecord,
    GapKind,
    RowLookup,
    Shard,
    ShardProgress,
    ShardReader,
    StreamDescription,
    StreamGap,
    StreamGone,
    check_streams,
    describe_stream,
    fair_share,
    label_ms,
    label_of,
    list_table_streams,
    missing_parents,
    orphans,
    readable_shards,
    start_version,
    switch_may_lose_needed,
    trim_may_lose_needed,
)
from sync.state import GapRecord, LeaseLost, ShardState, StateStore, StreamState
from sync.statics import StaticsCheck
from sync.version import TIE_BITS
from sync.writer import BulkWriter

log = logging.getLogger(__name__)

ROLE = "follow"
RELIST_S = 3.0  # how often the shard graph is read again when nothing ends
SHUTDOWN_S = 30.0  # how long a stop waits for readers to flush and release
REBUILD_HINT = (
    "the index lacks changes: rebuild it with `ks2os reindex`, or set "
    'follow.on_gap = "continue" to follow what the stream still holds meanwhile'
)
MAX_SHARD_THREADS = 64
CHECKPOINT_S = 1.0  # a shard's checkpoint is written at most this often while reading
PRESSURE_WAIT_S = 0.1  # a reader waiting on the writer stage looks up this often


class GapRebuild(StreamGap):
    """A gap under `on_gap = "reindex"`: the follower stops, so that `run_follow` rebuilds
    the index (`sync.jobs.reindex`) and follows the new one."""


@dataclass
class FollowSummary:
    records_read: int = 0
    applied: int = 0
    stale: int = 0
    dead_lettered: int = 0
    gaps: int = 0
    shards_finished: int = 0
    reindex_needed: bool = False  # a gap was skipped under on_gap = "continue"
    seconds: float = 0.0


# ---- pacing (pure) -----------------------------------------------------------


class IdlePacer:
    """Waits between polls of a shard at its tip: short at first, doubling to `longest`."""

    def __init__(self, longest_ms: int) -> None:
        self.longest = max(longest_ms, 1) / 1000
        self.shortest = min(0.05, self.longest)
        self._next = self.shortest

    def idle(self) -> float:
        wait = self._next
        self._next = min(self._next * 2, self.longest)
        return wait

    def busy(self) -> None:
        self._next = self.shortest


# ---- one shard ------------------------------------------------------------------------------


class ShardWorker(ContextThread):
    """Reads one leased shard until it ends, we are halted, or the lease is lost.

    Its batches go to the follower's writer stage (`sync.jobs.stage`), which
    tells it how far OpenSearch has acknowledged them; it checkpoints that
    much, never more.
    """

    def __init__(self, follower: Follower, state: ShardState, reader: ShardReader) -> None:
        super().__init__(name=f"ks2os-shard-{state.shard_id[-12:]}", daemon=True)
        self.follower = follower
        self.stage = follower.stage
        self.state = state
        self.reader = reader
        self.halt = threading.Event()
        self.abandoned = False  # halted as if the process died: no flush, no release
        self.error: BaseException | None = None
        # Acknowledged by the stage (set from its threads): (sequence number, version).
        self._acknowledged: tuple[str, int] | None = None
        self._stored: tuple[str, int] | None = None  # what the last checkpoint wrote
        self._stored_at = time.monotonic()  # when the state document was last written

    @property
    def shard_id(self) -> str:
        return self.state.shard_id

    def acknowledged(self, sequence: str, version: int) -> None:
        """The stage: every record up to `sequence` is resolved (called in shard order)."""
        self._acknowledged = (sequence, version)

    def run(self) -> None:
        self.follower.metrics.shard_taken(self.shard_id)
        try:
            self._follow()
        except LeaseLost:
            log.warning("lost the lease on shard %s; dropping it", self.shard_id)
        except StageAbandoned:
            pass  # a simulated crash: nothing more is written
        except BaseException as exc:
            self.error = exc
        finally:
            self.follower.metrics.shard_dropped(self.shard_id)
            self.follower.wake()

    def _follow(self) -> None:
        settings = self.follower.settings
        metrics = self.follower.metrics
        batch = Batch()
        pacer = IdlePacer(settings.idle_poll_ms)
        while not self.halt.is_set():
            if not self.stage.has_room():
                # Back-pressure: OpenSearch is behind; read on once the stage has room.
                self.stage.wait(PRESSURE_WAIT_S)
                self._checkpoint()
                continue
            result = self.reader.read()
            now = time.monotonic()
            if result.gap is not None:
                batch = self._settle(batch)
                if self._gap(result.gap):
                    return
                continue
            metrics.read(
                self.shard_id,
                result.records,
                first_created_ms(result),
                result.last_created_at_ms,
                result.at_tip,
            )
            batch.add(result, now)
            if result.closed:
                self._settle(batch)
                self._finish()
                return
            # At the tip nothing more is coming for a while: waiting to fill the
            # batch would only add latency.
            if batch.due(now, settings) or (result.at_tip and batch.pending):
                self.stage.hand_over(self, batch)
                batch = Batch()
            self._checkpoint()
            if result.at_tip and not result.records:
                self._idle(pacer)
            else:
                pacer.busy()
        if self.abandoned:
            return
        # Halted (stop, or a rebalance): write what was read, checkpoint, let go.
        self._settle(batch)
        self.follower.store.release_shard(self.state)
        log.info("released shard %s", self.shard_id)

    def _idle(self, pacer: IdlePacer) -> None:
        """At the tip with nothing new: poll again once this shard's records in the stage
        are written (a record read sooner would only queue behind them), else after the
        pacer's pause. So a follower whose OpenSearch is behind does not poll idle shards."""
        if self.stage.settled(self):
            self.halt.wait(pacer.idle())
            return
        while not self.halt.is_set() and not self.stage.settled(self):
            self.stage.wait(PRESSURE_WAIT_S)
            self._checkpoint()
        pacer.busy()  # written just now: look for what came meanwhile at once

    def _settle(self, batch: Batch) -> Batch:
        """Hand the batch over, wait until the stage acknowledged everything of this shard,
        and checkpoint it. If the stage broke first, what it did acknowledge is still
        checkpointed, then its error raised."""
        try:
            self.stage.hand_over(self, batch)
            while not self.stage.settled(self):
                if self.abandoned:
                    raise StageAbandoned("abandoned")
                self.stage.wait(PRESSURE_WAIT_S)
                self._checkpoint()  # keeps the lease meanwhile
        except StageAbandoned:
            raise
        except BaseException:
            self._checkpoint(now=True)
            raise
        self._checkpoint(now=True)
        return Batch()

    def _checkpoint(self, *, now: bool = False) -> None:
        """Checkpoint what the stage acknowledged: at once if asked, else at most every
        CHECKPOINT_S; with nothing new, renew the lease every `renew_interval_s`.

        Checkpointing less often than every batch costs a crash at most
        CHECKPOINT_S of replay (same versions, so harmless) and saves state writes.
        """
        store = self.follower.store
        acknowledged = self._acknowledged
        moment = time.monotonic()
        since = moment - self._stored_at
        fresh = acknowledged is not None and acknowledged != self._stored
        if acknowledged is not None and fresh and (now or since >= CHECKPOINT_S):
            sequence, version = acknowledged
            self.state = store.checkpoint_shard(self.state, sequence, version)
            self._stored, self._stored_at = acknowledged, moment
            return
        if since >= store.renew_interval_s:
            self.state = store.renew_shard(self.state)
            self._stored_at = moment

    def _finish(self) -> None:
        final = self.reader.previous
        self.state = self.follower.store.finish_shard(self.state, final)
        log.info("shard %s ended (final version %d)", self.shard_id, final)

    def _gap(self, kind: GapKind) -> bool:
        """Records of this shard are gone from the stream; True when the shard is done.

        The follower rules whether the index needed them (and under
        `on_gap = "stop"` raises). Then a shard the stream no longer holds is
        finished (nothing more can be read from it); any other is read again
        from what the stream still holds, with versions still rising.
        """
        needed = self.follower.shard_gap(self.state, kind)
        if kind is GapKind.SHARD_GONE:
            self._finish()
            return True
        self.reader.restart_at_trim_horizon()
        self.state = self.follower.store.restart_shard(self.state, self.reader.previous, gap=needed)
        log.info("reading shard %s again from its trim horizon", self.shard_id)
        return False


# ---- the lineage of a table's streams ---------------------------------------------------------


@dataclass
class _Stream:
    """One stream of the table, as this follower knows it."""

    arn: str
    label: str
    state: StreamState | None = None  # None: no follower began it yet
    orphans: dict[str, Shard] = field(default_factory=dict)  # unlisted, unfinished shards
    searched: bool = False  # its shard documents were searched for orphans (once per run)
    ruled: set[str] = field(default_factory=set)  # missing parents already ruled on
    draining_logged: bool = False

    @property
    def finished(self) -> bool:
        return self.state is not None and self.state.finished


def _version_ms(version: int) -> int:
    """The `createdAt` (epoch ms) a stream version stands for: versions are `ms << TIE_BITS`."""
    return version >> TIE_BITS


def _iso(epoch_ms: int | None) -> str:
    if epoch_ms is None:
        return "an unknown time"
    moment = dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---- the follower ------------------------------------------------------------------------------


class Follower:
    """Leases shards of the table's streams and runs a reader per leased shard.

    See the module docstring. The streams of the table are read as one
    lineage, oldest first: a stream's shards become readable once every shard
    of the stream before it is finished, and start above its final version.
    """

    def __init__(
        self,
        job: Job,
        streams: Any,
        *,
        max_shards: int = MAX_SHARD_THREADS,
    ) -> None:
        self.job = job
        self.streams = streams
        self.settings = job.cfg.follow
        self.store: StateStore = job.store
        self.table = job.info.qualified_name
        self.worker_id = job.worker_id
        self.metrics = job.table_metrics
        self.max_shards = max_shards
        self.workers: dict[tuple[str, str], ShardWorker] = {}  # (stream ARN, shard id)
        self.lineage: dict[str, _Stream] = {}  # by stream ARN
        self.shards_finished = 0
        self.reindex_needed = False
        self._wake = threading.Event()
        self._abandoned = False
        self._lookup: RowLookup | None = None
        self._writer: BulkWriter | None = None
        self._dead_share = DeadLetterShare(
            job.cfg.dead_letter_max_share, job.cfg.dead_letter_window
        )
        self._sweeper: SweepThread | None = None
        self._sweep_stop = threading.Event()
        self._stop: threading.Event | None = None  # `run`'s: ends Streams retries at once
        self._lock = threading.Lock()
        self._gaps_seen: set[str] = set()
        self._rebuild_for: str | None = None  # a gap under on_gap = "reindex": what it was
        self._trim_check: bool | None = None  # this plan's answer of `trim_matters`
        self.healthy = True
        self.planned = False  # the shard graph was read once: readers are running
        self.targets = job.targets
        self.targets.refresh = self._targets_now
        writer = job.cfg.writer
        self.stage = WriterStage(
            self,
            self.metrics,
            senders=self.settings.bulk_senders,
            max_docs=writer.max_docs,
            max_bytes=writer.max_bytes,
            max_pending_bytes=self.settings.max_pending_bytes,
        )

    def new_writer(self) -> BulkWriter:
        # One writer for every sender of the stage: thread-safe, one set of counters.
        if self._writer is None:
            self._writer = self.job.new_writer()
        return self._writer

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Follow until `stop` is set; raises the first reader's terminal error."""
        relist = min(RELIST_S, self.store.renew_interval_s)
        self._stop = stop
        self.stage.start()
        try:
            self._begin()
            self.follow_rebuild()
            self._start_sweep()
            while not stop.is_set() and not self._abandoned:
                self._reap()
                self._plan()
                self.planned = True
                if self._rebuild_for is not None:
                    raise GapRebuild(self._rebuild_for, hint=REBUILD_HINT)
                self._wake.wait(relist)
                self._wake.clear()
        finally:
            self._shutdown()

    def abandon(self) -> None:
        """Stop at once without flushing, checkpointing or releasing anything.

        What a killed process leaves behind: leases that only expiry frees.
        Tests of takeover use it; `run` returns soon after.
        """
        self._abandoned = True
        self.stage.abandon()
        for worker in list(self.workers.values()):
            worker.abandoned = True
            worker.halt.set()
        self.wake()

    # ---- what the index needs -------------------------------------------------------

    def _begin(self) -> None:
        """Coverage of the index, and every stream of the table: listed or in the state store."""
        begun = self.store.list_shards(self.table)
        coverage = self.store.get_coverage(self.table, self.job.index)
        if coverage is None:
            # No record of since when the index needs the stream. With no
            # checkpoints it needs what comes from now on; with checkpoints of an
            # earlier follower, since an unknown time: every trimmed record counts.
            since = 0 if begun else service_now_ms(self.job.session)
            coverage = self.store.cover_from(self.table, self.job.index, since)
        log.info("the index needs every change since %s", _iso(coverage.since_ms))
        for stream in self.store.list_stream_states(self.table):
            self._known(stream.stream_arn, stream.label).state = stream
        for shard in begun:
            self._known(shard.stream_arn, label_of(shard.stream_arn))
        self._discover()
        if not self.lineage:
            raise ConfigError(no_cdc_message(self.job.info.keyspace, self.job.info.name))

    def _known(self, arn: str, label: str) -> _Stream:
        return self.lineage.setdefault(arn, _Stream(arn, label))

    def _discover(self) -> bool:
        """ListStreams: True when it shows a stream this follower did not know."""
        before = len(self.lineage)
        for summary in list_table_streams(self.streams, self.job.info, self._stop):
            self._known(summary.stream_arn, summary.label)
        return len(self.lineage) > before

    def trim_matters(self) -> bool:
        """Could the stream have trimmed records the index needs? (Coverage vs service clock.)"""
        coverage = self.store.get_coverage(self.table, self.job.index)
        since = 0 if coverage is None else coverage.since_ms
        return trim_may_lose_needed(since, service_now_ms(self.job.session))

    def _trim_matters_now(self) -> bool:
        """`trim_matters`, asked at most once per plan."""
        if self._trim_check is None:
            self._trim_check = self.trim_matters()
        return self._trim_check

    # ---- gaps and dead letters ----------------------------------------------------------

    def met_gap(self, gap: GapRecord, message: str) -> None:
        """A gap the index needed: record it for good, count it, apply `on_gap`."""
        with self._lock:
            first = gap.doc_id not in self._gaps_seen
            self._gaps_seen.add(gap.doc_id)
        self.store.record_gap(gap)
        if first:
            self.metrics.gap()
            log.error(message)
        if self.settings.on_gap == "stop":
            raise StreamGap(message, hint=REBUILD_HINT)
        self.reindex_needed = True
        if self.settings.on_gap == "reindex":
            # Ruled on as under "continue" (a stream switch's new stream is begun, a shard
            # restarted), so the rebuild's follower finds nothing left to rule on; `run`
            # stops after this plan.
            with self._lock:
                self._rebuild_for = self._rebuild_for or message
            self.wake()
        elif first:
            log.error("continuing after the gap (on_gap = continue); the index needs a rebuild")

    def _gap_record(
        self,
        stream_arn: str,
        shard_id: str | None,
        kind: GapKind,
        after: str | None = None,
        window: tuple[int | None, int | None] = (None, None),
    ) -> GapRecord:
        return GapRecord(
            table=self.table,
            stream_arn=stream_arn,
            shard_id=shard_id,
            kind=kind.value,
            after=after,
            found_at_ms=self.store.now_ms(),
            policy=self.settings.on_gap,
            window_start_ms=window[0],
            window_end_ms=window[1],
        )

    def shard_gap(self, state: ShardState, kind: GapKind) -> bool:
        """Records of a shard the stream lost: a gap if the index needed them (True then)."""
        if not self.trim_matters():
            log.info(
                "shard %s: records the stream no longer holds are older than the index needs",
                state.shard_id,
            )
            return False
        where = f"after {state.sequence_number}" if state.sequence_number else "from its start"
        what = {
            GapKind.TRIMMED: "were trimmed from the stream before they were read",
            GapKind.START_TRIMMED: "were trimmed from the stream before they were read",
            GapKind.SHARD_GONE: "are gone: the stream no longer holds the shard",
        }.get(kind, "are gone")
        gap = self._gap_record(state.stream_arn, state.shard_id, kind, state.sequence_number)
        self.met_gap(gap, f"shard {state.shard_id}: records {where} {what}; the index lacks them")
        return True

    def dead_letter(self, shard_id: str, bad: list[BadRecord]) -> None:
        """Raw records that could not become changes: stored with the reason (counted by the
        caller with the batch).

        Where the record's key can be read, its row's document is marked at the
        record's version, so the row's older state is not found as if current.
        """
        self.job.dead_letters.put(
            [DeadLetter.for_record(b.record, b.position, b.reason, b.version) for b in bad]
        )
        marks = []
        for b in bad:
            try:
                key, static_only = record_key(b.record, self.job.info.layout)
            except DecodeError:
                continue  # not even its key: no document can be named
            marks.append(
                Change(Op.DELETE, key, None, b.version, b.position, static_only=static_only)
            )
        self.new_writer().mark(marks)
        for b in bad:
            log.warning(
                "record %s of shard %s dead-lettered: %s",
                b.position.sequence_number,
                shard_id,
                b.reason,
            )

    def count_dead_letters(self, records: int, dead: int) -> None:
        """Stop (a `TooManyDeadLetters`) once too large a share of recent records was refused."""
        self._dead_share.add(records, dead)
        if dead and self._dead_share.exceeded():
            raise self._dead_share.error(f"follow {self.table}")

    # ---- re-reading over CQL ------------------------------------------------------------------

    def reread_statics(self, checks: list[StaticsCheck], writer: BulkWriter) -> None:
        """Read the partitions' statics again over CQL and write them (`sync.jobs.restate`)."""
        reread_statics(checks, self._cql_lookup(), writer, self._stop)

    def _cql_lookup(self) -> RowLookup:
        with self._lock:
            if self._lookup is None:
                self._lookup = RowLookup(self.job.session, self.job.info)
            return self._lookup

    def _start_sweep(self) -> None:
        """With TTL on the table, restate documents whose values expired, in the background."""
        if not self.job.info.ttl_enabled:
            return
        sweep = SweepEach(self.targets, self._sweep_of)
        self._sweeper = SweepThread(sweep, self.settings.sweep_interval_ms / 1000, self._sweep_stop)
        self._sweeper.start()

    def _sweep_of(self, index: str) -> ExpirySweep:
        """The sweep of one index: it restates that index's documents, in that index alone."""
        reader = Reader(self.job.client, index, self.job.policy)
        writer = self.job.new_writer(restates=True, index=index)
        return ExpirySweep(reader, writer, self._cql_lookup())

    # ---- a rebuild (ks2os reindex) --------------------------------------------------------

    def follow_rebuild(self) -> None:
        """Write where the table's rebuild record says (each plan does); see the module
        docstring. The heartbeat after it names the indexes (`WriteTargets.writes_to`)."""
        before = self.targets.indexes
        if not self.targets.set(self._targets_now()):
            return
        now = self.targets.indexes
        log.info("writing every change to %s (was %s)", " and ".join(now), " and ".join(before))
        if len(now) == 1 and now[0] != self.job.index:
            self._take_up(now[0])

    def _targets_now(self) -> tuple[str, ...]:
        """Both indexes while the rebuild record `writes_both`; after it, the alias's index."""
        rebuild = self.store.get_rebuild(self.table)
        now = self.targets.indexes
        if rebuild is not None and rebuild.writes_both:
            if rebuild.new_index not in now and not self._exists(rebuild.new_index):
                # Recorded before it is made: not written, so not named, until it exists.
                return (rebuild.old_index,)
            return rebuild.targets
        if len(now) == 1 and (
            rebuild is None or rebuild.phase == "aborted" or rebuild.new_index in now
        ):
            return now  # no rebuild moved the alias since it was read
        # Done: the alias is on the new index (even if this follower, paused, never saw
        # the rebuild begin); aborted while both were written: it stayed on the old one.
        return (current_target(self.job.client, self.job.mapping).index,)

    def _exists(self, index: str) -> bool:
        exists = functools.partial(self.job.client.indices.exists, index=index)
        return bool(call(self.job.policy, f"checking index {index}", exists))

    def _take_up(self, index: str) -> None:
        """Follow `index` as the job's own from now on (coverage, the expiry sweep)."""
        before = self.store.get_coverage(self.table, self.job.index)
        if self.store.get_coverage(self.table, index) is None and before is not None:
            # The rebuild's snapshot records its own (later) start; without it, the
            # old index's is the safe one: a trimmed record it needed counts as a gap.
            self.store.cover_from(self.table, index, before.since_ms)
        self.job.target = Target(self.job.target.alias, index)

    # ---- planning ---------------------------------------------------------------------------

    def _active(self) -> list[tuple[str, str]]:
        return [k for k, w in self.workers.items() if not w.halt.is_set()]

    def _reap(self) -> None:
        if self._stop is not None and self._stop.is_set():
            return  # stopping: a write cut short by the stop is no failure of the run
        if self.stage.error is not None:
            self.healthy = False
            raise self.stage.error
        for key, worker in list(self.workers.items()):
            if worker.is_alive():
                continue
            del self.workers[key]
            if worker.error is not None:
                self.healthy = False
                raise worker.error
            if worker.state.finished:
                self.shards_finished += 1

    def _plan(self) -> None:
        """Read the first stream of the lineage not finished; past the last, see if CDC is off."""
        self.follow_rebuild()
        self.store.heartbeat(ROLE, self.table, self.worker_id, self.targets.writes_to())
        self._trim_check = None
        floor, previous = 0, None
        for stream in sorted(self.lineage.values(), key=lambda s: (s.label, s.arn)):
            if not stream.finished and not self._plan_stream(stream, previous, floor):
                return
            assert stream.state is not None
            floor = max(floor, stream.state.final_version or 0)
            previous = stream
        self._past_the_last_stream()

    def _plan_stream(self, entry: _Stream, previous: _Stream | None, floor: int) -> bool:
        """Lease readable shards of one stream; True once the whole stream is finished."""
        try:
            stream = describe_stream(self.streams, entry.arn, self._stop)
        except StreamGone:
            return self._stream_gone(entry, floor)
        if entry.state is None:
            # The first follower to reach a stream rules on the switch into it.
            entry.state = self.store.get_streams(self.table, [entry.arn]).get(entry.arn)
        if entry.state is None:
            if previous is not None:
                self._rule_on_switch(previous, entry, stream)
            entry.state = self.store.begin_stream(self.table, entry.arn, entry.label)
        graph, progress, states = self._graph(entry, stream)
        self._rule_on_missing_parents(entry, graph, progress)
        if stream.status == "DISABLED":
            if all(_done(progress, s) for s in graph):
                finals = [p.final_version for p in progress.values() if p.final_version]
                entry.state = self.store.finish_stream(entry.state, max([floor, *finals]))
                log.info("stream %s is read to its end", entry.label)
                return True
            if not entry.draining_logged:
                entry.draining_logged = True
                log.warning("the CDC stream %s is DISABLED: reading it to its end", entry.label)
        self._lease(entry, stream, graph, progress, states, floor)
        return False

    def _graph(
        self, entry: _Stream, stream: StreamDescription
    ) -> tuple[dict[str, Shard], dict[str, ShardProgress], dict[str, ShardState]]:
        """The listed shards plus orphans, and the state of every one of them and their parents."""
        graph = dict(stream.shards)
        if not entry.searched:
            stored = self.store.list_shards(self.table, entry.arn)
            entry.orphans.update(orphans(graph, {s.shard_id: _progress(s) for s in stored}))
            entry.searched = True
        for shard_id, shard in entry.orphans.items():
            graph.setdefault(shard_id, shard)
        ids = set(graph) | {p for s in graph.values() for p in s.parents}
        states = self.store.get_shards(self.table, entry.arn, ids)
        progress = {k: _progress(s) for k, s in states.items()}
        found = orphans(graph, progress)  # unlisted parents still unfinished
        entry.orphans.update(found)
        graph.update(found)
        return graph, progress, states

    def _rule_on_missing_parents(
        self, entry: _Stream, graph: dict[str, Shard], progress: dict[str, ShardProgress]
    ) -> None:
        """Parents gone from the stream before any follower read them: a gap if needed."""
        missing = [p for p in missing_parents(graph, progress) if p not in entry.ruled]
        if missing and self._trim_matters_now():
            for parent in missing:
                self.met_gap(
                    self._gap_record(entry.arn, parent, GapKind.SHARD_GONE),
                    f"shard {parent} of stream {entry.label}: the stream no longer holds it "
                    "and it was never read; the index lacks its records",
                )
        entry.ruled.update(missing)

    def _rule_on_switch(self, previous: _Stream, entry: _Stream, stream: StreamDescription) -> None:
        """Between two streams CDC was off: writes then reached no stream. A gap if needed."""
        end = stream.created_ms if stream.created_ms is not None else label_ms(entry.label)
        coverage = self.store.get_coverage(self.table, self.job.index)
        since = 0 if coverage is None else coverage.since_ms
        if end is not None and not switch_may_lose_needed(since, end):
            return
        final = previous.state.final_version if previous.state is not None else None
        start = _version_ms(final) if final else label_ms(previous.label)
        self.met_gap(
            self._gap_record(entry.arn, None, GapKind.STREAM_SWITCH, window=(start, end)),
            f"CDC of {self.table} was off between stream {previous.label} and stream "
            f"{entry.label}: writes from {_iso(start)} to {_iso(end)} reached no stream",
        )

    def _stream_gone(self, entry: _Stream, floor: int) -> bool:
        """The stream no longer exists: what of it was not read to its end is a gap if needed."""
        stored = self.store.list_shards(self.table, entry.arn)
        unfinished = [s for s in stored if not s.finished]
        if self._trim_matters_now():
            gaps = [
                self._gap_record(entry.arn, s.shard_id, GapKind.SHARD_GONE, s.sequence_number)
                for s in unfinished
            ] or [self._gap_record(entry.arn, None, GapKind.SHARD_GONE)]
            for gap in gaps:
                where = f"shard {gap.shard_id}" if gap.shard_id else "its shards"
                self.met_gap(
                    gap,
                    f"stream {entry.label} no longer exists and {where} was not read to "
                    "its end; the index lacks those records",
                )
        finals = [s.final_version for s in stored if s.final_version]
        for state in unfinished:
            leased = self.store.acquire_shard(self.table, entry.arn, state.shard_id, self.worker_id)
            if leased is None:
                return False  # another follower holds it: it will find the stream gone too
            self.store.finish_shard(leased, leased.version)
            finals.append(leased.version)
        begun = entry.state or self.store.begin_stream(self.table, entry.arn, entry.label)
        entry.state = self.store.finish_stream(begun, max([floor, *finals]))
        log.warning("stream %s no longer exists; going on with the next one", entry.label)
        return True

    def _past_the_last_stream(self) -> None:
        """Every stream is read to its end: go on with a newer one, or say CDC is off."""
        if self._discover():
            self.wake()  # plan the new stream at once
            return
        info = describe_table(self.job.session, self.job.info.keyspace, self.job.info.name)
        if info.cdc_enabled:
            log.info("CDC of %s is on again; waiting for its new stream", self.table)
            return
        raise ConfigError(
            f"CDC is off for {self.table}: every change up to the moment it was disabled "
            "is applied to the index",
            hint=no_cdc_message(info.keyspace, info.name).split(": ", 1)[1]
            + ", then start the follower again",
        )

    def _lease(
        self,
        entry: _Stream,
        stream: StreamDescription,
        graph: dict[str, Shard],
        progress: dict[str, ShardProgress],
        states: dict[str, ShardState],
        floor: int,
    ) -> None:
        ready = readable_shards(graph, progress)
        live = self.store.live_workers(ROLE, self.table) | {self.worker_id}
        share = min(fair_share(len(ready), len(live)), self.max_shards)
        self._shed(len(self._active()) - share)
        for shard_id in ready:
            if len(self._active()) >= share:
                break
            if (entry.arn, shard_id) in self.workers:
                continue
            state = states.get(shard_id)
            if state is not None and not state.lease.free_for(self.worker_id, self.store.now_ms()):
                continue
            self._start(entry, stream.view_type, graph[shard_id], progress, floor)

    def _shed(self, excess: int) -> None:
        """Give back shards above our fair share, so a follower that just joined gets some."""
        if excess <= 0:
            return
        for key in sorted(self._active())[-excess:]:
            log.info("releasing shard %s to another follower", key[1])
            self.workers[key].halt.set()

    def _start(
        self,
        entry: _Stream,
        view_type: str,
        shard: Shard,
        progress: dict[str, ShardProgress],
        floor: int,
    ) -> None:
        state = self.store.acquire_shard(
            self.table,
            entry.arn,
            shard.shard_id,
            self.worker_id,
            start_version=start_version(shard, progress, floor),
            start_sequence=shard.starting_sequence_number,
        )
        if state is None:
            return
        # From its start, a shard must prove nothing of it was trimmed, unless
        # whatever was trimmed is older than the index needs. (A shard restarted
        # after a gap proves it again: a gap already recorded is not recorded twice.)
        verify = state.sequence_number is None and self._trim_matters_now()
        reader = ShardReader(
            self.streams,
            self.job.info,
            entry.arn,
            shard.shard_id,
            view_type=view_type,
            after=state.sequence_number,
            previous=state.version,
            limit=self.settings.get_records_limit,
            skip_replication=self.settings.skip_replication,
            lookup=self._row_lookup(view_type),
            stop=self._stop,
            start_sequence=shard.starting_sequence_number or state.start_sequence,
            verify_start=verify,
        )
        worker = ShardWorker(self, state, reader)
        self.workers[(entry.arn, shard.shard_id)] = worker
        log.info(
            "reading shard %s of stream %s from %s",
            shard.shard_id,
            entry.label,
            state.sequence_number or ("its start" if verify else "its trim horizon"),
        )
        worker.start()

    def _row_lookup(self, view_type: str) -> RowLookup | None:
        if view_type == "NEW_AND_OLD_IMAGES":
            return None
        if view_type == "NEW_IMAGE" and not self.job.info.layout.static:
            return None  # only a static-only record of a NEW_IMAGE stream may need one
        return self._cql_lookup()

    def _shutdown(self) -> None:
        self._sweep_stop.set()
        if self._sweeper is not None:
            self._sweeper.join(timeout=SHUTDOWN_S)
        if self._abandoned:
            for worker in self.workers.values():
                worker.abandoned = True
        for worker in self.workers.values():
            worker.halt.set()
        deadline = time.monotonic() + SHUTDOWN_S
        for worker in self.workers.values():
            worker.join(timeout=max(deadline - time.monotonic(), 0.1))
            if worker.is_alive():
                log.error("shard %s did not stop in time", worker.shard_id)
            elif worker.state.finished:
                self.shards_finished += 1
        self.workers.clear()
        self.stage.close(timeout_s=max(deadline - time.monotonic(), 0.1))
        if not self._abandoned:
            self.store.leave(ROLE, self.table, self.worker_id)

    def readiness(self) -> Readiness:
        """For `/readyz`: started, OpenSearch answering, leases current, lag under the limit.

        A follower holding no shard (more followers than shards: a hot spare) is ready.
        """
        problems: list[str] = []
        if not self.healthy:
            problems.append("a shard reader failed; the follower is stopping")
        if not self.planned:
            problems.append("starting: the streams are not read yet")
        if not _answers(self.job.client, self.store.index):
            problems.append("OpenSearch does not answer")
        now = self.store.now_ms()
        for worker in list(self.workers.values()):
            lease = worker.state.lease
            if not worker.halt.is_set() and lease.owner is not None and now > lease.expires_at_ms:
                problems.append(
                    f"the lease on shard {worker.shard_id} ran out {now - lease.expires_at_ms} ms "
                    "ago: renewing it fails"
                )
        limit = self.settings.ready_max_lag_s
        for shard, lag in sorted(self.metrics.lags_s().items()):
            if lag is not None and lag > limit:
                problems.append(
                    f"shard {shard} lags {lag:.0f} s, more than follow.ready_max_lag_s = {limit:g}"
                )
        return Readiness(tuple(problems))

    def summary(self, seconds: float) -> FollowSummary:
        m = self.metrics.totals()
        return FollowSummary(
            records_read=m.records_read,
            applied=m.applied,
            stale=m.stale,
            dead_lettered=m.dead_lettered,
            gaps=m.gaps,
            shards_finished=self.shards_finished,
            reindex_needed=self.reindex_needed,
            seconds=seconds,
        )


def _answers(client: Any, index: str) -> bool:
    """OpenSearch answers within a probe's patience (False on any failure).

    A HEAD of the state index rather than of `/`: ks2os's IAM policy grants
    the indexes it uses, not the domain's root (docs/aws.md).
    """
    try:
        return bool(client.indices.exists(index=index, params={"request_timeout": 2}))
    except Exception:  # readiness is a yes or no; the job's own requests report the why
        return False


class StatusLogger(ContextThread):
    """Logs the follower's status line every `interval_s` until `stop` is set."""

    def __init__(self, follower: Follower, interval_s: float, stop: threading.Event) -> None:
        super().__init__(name="ks2os-follow-status", daemon=True)
        self._follower, self._interval, self._stop = follower, interval_s, stop

    def run(self) -> None:
        before, then = FollowTotals(), time.monotonic()
        while not self._stop.wait(self._interval):
            metrics = self._follower.metrics
            now, moment = metrics.totals(), time.monotonic()
            message, fields = status_line(
                self._follower.table, now, before, moment - then, metrics.lags_s()
            )
            log.info(message, extra=fields)
            before, then = now, moment


def _progress(state: ShardState) -> ShardProgress:
    return ShardProgress(state.finished, state.final_version, state.start_sequence)


def _done(progress: dict[str, ShardProgress], shard_id: str) -> bool:
    state = progress.get(shard_id)
    return state is not None and state.finished


def _rebuilt(
    cfg: Config,
    mapping: TableMapping,
    job: Job,
    gap: GapRebuild,
    stop: threading.Event,
    metrics: Metrics | None,
) -> Job:
    """After a gap under `on_gap = "reindex"`: rebuild the index, and the job of the new one.

    The follower stopped cleanly first (its shards checkpointed and released,
    its heartbeat gone), so the rebuild follows the stream itself, from those
    checkpoints, until the swap; the new index needs nothing the stream lost.
    """
    from sync.jobs.reindex import RebuildBusy, run_reindex  # it runs a follower: imported here

    log.error("%s; rebuilding the index (follow.on_gap = reindex)", gap)
    try:
        summary = run_reindex(cfg, mapping, stop=stop, metrics=metrics)
    except RebuildBusy as busy:
        # Another follower met the gap first and rebuilds: follow on, as its rebuild asks.
        log.warning("%s; following on meanwhile", busy)
    else:
        log.info(
            "rebuilt %s into %s (%s); following it",
            job.info.qualified_name,
            summary.new_index,
            summary.phase,
        )
    job.close()
    return Job(cfg, mapping, stop=stop, metrics=metrics)


def run_follow(
    cfg: Config,
    mapping: TableMapping,
    *,
    stop: threading.Event | None = None,
    job: Job | None = None,
    metrics: Metrics | None = None,
    on_start: Callable[[Follower], None] | None = None,
) -> FollowSummary:
    """Follow the mapping's table until `stop` is set; see the module docstring.

    `on_start` is called with the follower before it reads (a runner of several
    tables serves their readiness together: `sync.jobs.multi`).
    """
    stop = stop or threading.Event()
    own_job = job is None
    job = job or Job(cfg, mapping, stop=stop, metrics=metrics)
    started = time.monotonic()
    server: MetricsServer | None = None
    status_stop = threading.Event()
    try:
        log.info(job.info.version_rule())
        streams = streams_client(cfg)
        # A wrong endpoint or permission: now, in one line. (CDC may be off: a DISABLED
        # stream is still read to its end; the follower says so once it is.)
        check_streams(streams, job.info, stop)
        follower = Follower(job, streams)
        if on_start is not None:
            on_start(follower)
        if cfg.follow.metrics_port:
            server = MetricsServer(
                job.metrics,
                cfg.follow.metrics_port,
                lambda: follower.healthy,
                host=cfg.follow.metrics_host,
                ready=lambda: follower.readiness(),  # the current one: a rebuild makes another
            ).start()
        StatusLogger(follower, cfg.follow.log_interval_s, status_stop).start()
        while True:
            try:
                follower.run(stop)
                break
            except GapRebuild as gap:
                if not own_job:
                    raise  # a job made elsewhere (a reindex's own follower) has no rebuild
                job = _rebuilt(cfg, mapping, job, gap, stop, job.metrics)
                if stop.is_set():
                    break
                follower = Follower(job, streams)
                if on_start is not None:
                    on_start(follower)
        summary = follower.summary(time.monotonic() - started)
        log.info(
            "follow stopped: %d records read, %d applied, %d stale, %d dead-lettered, %d gaps",
            summary.records_read,
            summary.applied,
            summary.stale,
            summary.dead_lettered,
            summary.gaps,
        )
        return summary
    finally:
        status_stop.set()
        if server is not None:
            server.stop()
        if own_job:
            job.close()
