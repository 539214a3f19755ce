"""`follow`: read the table's CDC stream for ever and apply its changes to the index.

Flow::

    coordinator (every few seconds, or at once when a shard ends):
        GetStream -> shard graph -> readable shards (every parent finished)
        -> lease up to a fair share (live followers share the stream)
        -> one reader thread per leased shard
    reader thread, per shard:
        GetRecords -> versions (sync/version.py) -> batch (count/bytes/time)
        -> BulkWriter.write -> checkpoint (sequence number + version), conditional
           on the lease -> ... -> at the shard's end: final version, lease freed

A checkpoint covers only what `write` returned for, so a crash replays at
most one batch, with the same versions. A follower that lost a lease cannot
checkpoint (409 -> `LeaseLost`) and drops the shard. A dead follower's
shards are taken over when their leases expire. On `stop`, every reader
flushes, checkpoints and releases its lease, and `run_follow` returns.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sync.clients import streams_client
from sync.config import Config, FollowConfig
from sync.errors import ConfigError
from sync.jobs import Job
from sync.keyspaces import no_cdc_message
from sync.mapping import TableMapping
from sync.metrics import Metrics, MetricsServer
from sync.model import Change
from sync.sources.streams import (
    ReadResult,
    RowLookup,
    Shard,
    ShardProgress,
    ShardReader,
    StreamDescription,
    StreamGap,
    describe_stream,
    fair_share,
    find_stream_arn,
    readable_shards,
    require_readable,
    start_version,
)
from sync.state import LeaseLost, ShardState, StateStore
from sync.writer import BulkWriter

log = logging.getLogger(__name__)

ROLE = "follow"
RELIST_S = 3.0  # how often the shard graph is read again when nothing ends
SHUTDOWN_S = 30.0  # how long a stop waits for readers to flush and release
MAX_SHARD_THREADS = 64
CHECKPOINT_S = 1.0  # a shard's checkpoint is written at most this often while reading
# A rough in-memory size of a change, to bound a batch in bytes without
# serialising it twice (the writer measures the real bulk bytes).
_CHANGE_OVERHEAD = 200
_BYTES_PER_COLUMN = 64


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


# ---- batching and pacing (pure) -----------------------------------------------------------


@dataclass
class Batch:
    """Changes read but not yet written, and the checkpoint they lead to."""

    changes: list[Change] = field(default_factory=list)
    approx_bytes: int = 0
    first_at: float | None = None  # monotonic time the oldest unwritten record was read
    last_sequence: str | None = None
    last_version: int | None = None
    last_created_at_ms: int | None = None

    def add(self, result: ReadResult, now: float) -> None:
        if result.last_sequence is None:
            return
        if self.first_at is None:
            self.first_at = now
        self.changes.extend(result.changes)
        self.approx_bytes += sum(_approx_size(c) for c in result.changes)
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
            len(self.changes) >= settings.max_batch_records
            or self.approx_bytes >= settings.max_batch_bytes
            or (now - self.first_at) * 1000 >= settings.flush_interval_ms
        )


def _approx_size(change: Change) -> int:
    return _CHANGE_OVERHEAD + _BYTES_PER_COLUMN * (len(change.image) if change.image else 0)


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


class ShardWorker(threading.Thread):
    """Reads one leased shard until it ends, we are halted, or the lease is lost."""

    def __init__(self, follower: Follower, state: ShardState, reader: ShardReader) -> None:
        super().__init__(name=f"ks2os-shard-{state.shard_id[-12:]}", daemon=True)
        self.follower = follower
        self.state = state
        self.reader = reader
        self.halt = threading.Event()
        self.abandoned = False  # halted as if the process died: no flush, no release
        self.error: BaseException | None = None
        self.writer = follower.new_writer()
        # Written to OpenSearch but not yet checkpointed: (sequence number, version).
        self._written: tuple[str, int] | None = None
        self._stored_at = time.monotonic()  # when the state document was last written

    @property
    def shard_id(self) -> str:
        return self.state.shard_id

    def run(self) -> None:
        try:
            self._follow()
        except LeaseLost:
            log.warning("lost the lease on shard %s; dropping it", self.shard_id)
        except BaseException as exc:
            self.error = exc
        finally:
            self.follower.wake()

    def _follow(self) -> None:
        settings = self.follower.settings
        store = self.follower.store
        metrics = self.follower.metrics
        batch = Batch()
        pacer = IdlePacer(settings.idle_poll_ms)
        while not self.halt.is_set():
            result = self.reader.read()
            now = time.monotonic()
            if result.gap:
                batch = self._flush(batch, checkpoint=True)
                self._gap()
                continue
            metrics.add(self.shard_id, records_read=result.records)
            batch.add(result, now)
            if result.closed:
                self._flush(batch, checkpoint=True)
                self._finish()
                return
            # At the tip nothing more is coming for a while: waiting to fill the
            # batch would only add latency.
            if batch.due(now, settings) or (result.at_tip and batch.pending):
                batch = self._flush(batch)
            if now - self._stored_at >= store.renew_interval_s:
                if self._written is not None:
                    self._flush(Batch(), checkpoint=True)  # a checkpoint renews the lease too
                else:
                    self.state = store.renew_shard(self.state)
                    self._stored_at = now
            if result.at_tip and not result.records:
                self.halt.wait(pacer.idle())
            else:
                pacer.busy()
        if self.abandoned:
            return
        # Halted (stop, or a rebalance): write what was read, checkpoint, let go.
        self._flush(batch, checkpoint=True)
        self.follower.store.release_shard(self.state)
        log.info("released shard %s", self.shard_id)

    def _flush(self, batch: Batch, *, checkpoint: bool = False) -> Batch:
        """Write the batch; checkpoint it now if asked, else at most every CHECKPOINT_S.

        Only what `write` returned for is ever checkpointed. Checkpointing less
        often than every batch costs a crash at most CHECKPOINT_S of replay
        (same versions, so harmless) and saves a state write per batch.
        """
        if batch.pending:
            assert batch.last_sequence is not None and batch.last_version is not None
            if batch.changes:
                report = self.writer.write(batch.changes)
                self.follower.metrics.add(
                    self.shard_id,
                    applied=report.applied,
                    stale=report.stale,
                    dead_lettered=report.dead_lettered,
                )
            self._written = (batch.last_sequence, batch.last_version)
            self.follower.metrics.applied_up_to(self.shard_id, batch.last_created_at_ms)
            batch = Batch()
        now = time.monotonic()
        if self._written is not None and (checkpoint or now - self._stored_at >= CHECKPOINT_S):
            sequence, version = self._written
            self.state = self.follower.store.checkpoint_shard(self.state, sequence, version)
            self._written, self._stored_at = None, now
        return batch

    def _finish(self) -> None:
        final = self.reader.previous
        self.state = self.follower.store.finish_shard(self.state, final)
        log.info("shard %s ended (final version %d)", self.shard_id, final)

    def _gap(self) -> None:
        self.follower.metrics.add(self.shard_id, gaps=1)
        where = self.state.sequence_number or "its start"
        message = (
            f"shard {self.shard_id}: records after {where} were trimmed from the stream "
            "before they were read; the index is missing changes"
        )
        log.error(message, extra={"shard": self.shard_id})
        if self.follower.settings.on_gap == "stop":
            raise StreamGap(message, hint="run `ks2os reindex` to rebuild the index from the table")
        self.follower.reindex_needed = True
        self.reader.restart_at_trim_horizon()
        self.state = self.follower.store.restart_shard(self.state, self.reader.previous)
        log.error("continuing shard %s from its trim horizon; a reindex is needed", self.shard_id)


# ---- the follower ------------------------------------------------------------------------------


class Follower:
    """Leases shards of one stream and runs a reader per leased shard; see the module docstring."""

    def __init__(
        self,
        job: Job,
        streams: Any,
        stream_arn: str,
        *,
        metrics: Metrics | None = None,
        max_shards: int = MAX_SHARD_THREADS,
    ) -> None:
        self.job = job
        self.streams = streams
        self.stream_arn = stream_arn
        self.settings = job.cfg.follow
        self.store: StateStore = job.store
        self.table = job.info.qualified_name
        self.worker_id = job.worker_id
        self.metrics = metrics or Metrics()
        self.max_shards = max_shards
        self.workers: dict[str, ShardWorker] = {}
        self.shards_finished = 0
        self.reindex_needed = False
        self._wake = threading.Event()
        self._abandoned = False
        self._lookup: RowLookup | None = None
        self._writer: BulkWriter | None = None
        self.healthy = True

    def new_writer(self) -> BulkWriter:
        # One writer for every shard: it is thread-safe and keeps one set of counters.
        if self._writer is None:
            self._writer = self.job.new_writer()
        return self._writer

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Follow until `stop` is set; raises the first reader's terminal error."""
        relist = min(RELIST_S, self.store.renew_interval_s)
        try:
            while not stop.is_set() and not self._abandoned:
                self._reap()
                self._plan()
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
        for worker in list(self.workers.values()):
            worker.abandoned = True
            worker.halt.set()
        self.wake()

    def _active(self) -> list[str]:
        return [k for k, w in self.workers.items() if not w.halt.is_set()]

    def _reap(self) -> None:
        for shard_id, worker in list(self.workers.items()):
            if worker.is_alive():
                continue
            del self.workers[shard_id]
            if worker.error is not None:
                self.healthy = False
                raise worker.error
            if worker.state.finished:
                self.shards_finished += 1

    def _plan(self) -> None:
        self.store.heartbeat(ROLE, self.table, self.worker_id)
        stream = describe_stream(self.streams, self.stream_arn)
        require_readable(stream, self.job.info)
        progress, states = self._progress(stream)
        ready = readable_shards(stream.shards, progress)
        live = self.store.live_workers(ROLE, self.table) | {self.worker_id}
        share = min(fair_share(len(ready), len(live)), self.max_shards)
        self._shed(len(self._active()) - share)
        for shard_id in ready:
            if len(self._active()) >= share:
                break
            if shard_id in self.workers:
                continue
            state = states.get(shard_id)
            if state is not None and not state.lease.free_for(self.worker_id, self.store.now_ms()):
                continue
            self._start(stream, stream.shards[shard_id], progress)

    def _progress(
        self, stream: StreamDescription
    ) -> tuple[dict[str, ShardProgress], dict[str, ShardState]]:
        ids = set(stream.shards) | {p for s in stream.shards.values() for p in s.parents}
        states = self.store.get_shards(self.table, self.stream_arn, ids)
        progress = {k: ShardProgress(s.finished, s.final_version) for k, s in states.items()}
        return progress, states

    def _shed(self, excess: int) -> None:
        """Give back shards above our fair share, so a follower that just joined gets some."""
        if excess <= 0:
            return
        for shard_id in sorted(self._active())[-excess:]:
            log.info("releasing shard %s to another follower", shard_id)
            self.workers[shard_id].halt.set()

    def _start(
        self, stream: StreamDescription, shard: Shard, progress: dict[str, ShardProgress]
    ) -> None:
        state = self.store.acquire_shard(
            self.table,
            self.stream_arn,
            shard.shard_id,
            self.worker_id,
            start_version=start_version(shard, progress),
        )
        if state is None:
            return
        reader = ShardReader(
            self.streams,
            self.job.info,
            self.stream_arn,
            shard.shard_id,
            view_type=stream.view_type,
            after=state.sequence_number,
            previous=state.version,
            limit=self.settings.get_records_limit,
            skip_replication=self.settings.skip_replication,
            lookup=self._row_lookup(stream.view_type),
        )
        worker = ShardWorker(self, state, reader)
        self.workers[shard.shard_id] = worker
        log.info(
            "reading shard %s from %s", shard.shard_id, state.sequence_number or "its trim horizon"
        )
        worker.start()

    def _row_lookup(self, view_type: str) -> RowLookup | None:
        if view_type in ("NEW_AND_OLD_IMAGES", "NEW_IMAGE"):
            return None
        if self._lookup is None:
            self._lookup = RowLookup(self.job.session, self.job.info)
        return self._lookup

    def _shutdown(self) -> None:
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
        if not self._abandoned:
            self.store.leave(ROLE, self.table, self.worker_id)

    def summary(self, seconds: float) -> FollowSummary:
        m = self.metrics
        return FollowSummary(
            records_read=m.total("records_read"),
            applied=m.total("applied"),
            stale=m.total("stale"),
            dead_lettered=m.total("dead_lettered"),
            gaps=m.total("gaps"),
            shards_finished=self.shards_finished,
            reindex_needed=self.reindex_needed,
            seconds=seconds,
        )


def run_follow(
    cfg: Config,
    mapping: TableMapping,
    *,
    stop: threading.Event | None = None,
    job: Job | None = None,
    metrics: Metrics | None = None,
) -> FollowSummary:
    """Follow the mapping's table until `stop` is set; see the module docstring."""
    stop = stop or threading.Event()
    own_job = job is None
    job = job or Job(cfg, mapping)
    started = time.monotonic()
    server: MetricsServer | None = None
    try:
        log.info(job.info.version_rule())
        streams = streams_client(cfg)
        if not job.info.cdc_enabled:
            raise ConfigError(no_cdc_message(job.info.keyspace, job.info.name))
        stream_arn = find_stream_arn(streams, job.info)
        follower = Follower(job, streams, stream_arn, metrics=metrics)
        if cfg.follow.metrics_port:
            server = MetricsServer(
                follower.metrics, cfg.follow.metrics_port, lambda: follower.healthy
            ).start()
        follower.run(stop)
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
        if server is not None:
            server.stop()
        if own_job:
            job.close()
