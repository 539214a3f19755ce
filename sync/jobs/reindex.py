"""`reindex`: build `<alias>_v<N+1>` from the mapping file while changes keep flowing,
check it, and move the alias to it in one atomic call.

Steps, each recorded in the table's rebuild document (`sync.state.Rebuild`), so
a run killed at any point is resumed by the next `ks2os reindex`::

    1 take the rebuild: a new one (`<alias>_v<N+1>` created from the mapping
      file) or the table's unfinished one; its lease is this run's, renewed
      from a thread (a live other run holds it: one line, exit 1)
    2 changes reach the new index: every live follower names it in its
      heartbeat's `writes_to` (waited for: a follower writes both indexes
      while the rebuild record asks it to); with no live follower, this run
      follows the stream itself (`_StreamFollower`: such a follower, in a
      thread) until the swap, under a worker id of its own that shares the
      shards' leases with any `ks2os follow` started meanwhile
    3 `snapshot_from_ms` recorded, and the new index's coverage from then
      (before this run reads the stream, so its gap checks are the new
      index's); then the backfill of the new index (`run_backfill`, state
      key per index: it resumes by itself)
    4 before the swap, waited for and said in the progress line: the snapshot
      complete, the stream lag of every open shard (now - `createdAt` of the
      first record after its checkpoint) under `reindex.max_lag_seconds`,
      and a verify sample of the new index passing (one failing
      `reindex.verify_attempts` times stops the run, everything left as is)
    5 phase `swapped` recorded *before* one `_aliases` call (old index out,
      new in, with the alias filter): idempotent, so a resumed run repeats it
    6 the old index kept until `keep_old_until_ms` (`ks2os cleanup` deletes
      it then) or, with `--delete-old`, deleted once no live follower names
      it any more; phase `done`

`--abort` before the swap: phase `aborted`, then (once no live follower
writes it) the new index and its backfill state deleted; the alias never
moved. After the swap it refuses: the way back is another reindex.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from cassandra.cluster import Session
from opensearchpy import OpenSearch

from sync.clients import opensearch_client, streams_client
from sync.config import Config
from sync.errors import Ks2osError, MappingConflict, OpenSearchRefused, TerminalError, one_line
from sync.indices import (
    Target,
    add_new_fields,
    alias_targets,
    create_index,
    delete_index,
    next_index_name,
    swap_alias,
)
from sync.jobs import Job
from sync.jobs.backfill import BackfillSummary, backfill_key, run_backfill
from sync.jobs.follow import ROLE as FOLLOW_ROLE
from sync.jobs.follow import SHUTDOWN_S, run_follow
from sync.jobs.verify import VerifyReport, run_verify
from sync.keyspaces import service_now_ms
from sync.logs import ContextThread
from sync.mapping import TableMapping
from sync.metrics import Metrics
from sync.retry import RetryPolicy
from sync.sources.streams import (
    StreamGone,
    describe_stream,
    list_table_streams,
    oldest_unread_ms,
)
from sync.state import LeaseLost, Rebuild, StateStore

log = logging.getLogger(__name__)

POLL_S = 1.0  # a waiting step looks again this often
SAY_EVERY_S = 5.0  # and says what it waits for at most this often
# A follower that names no new index after this long may be of a ks2os without rebuilds.
OLD_FOLLOWER_S = 30.0
FOLLOWER_SUFFIX = "#reindex"  # this run's own follower: `<state.worker_id>#reindex`


@dataclass
class ReindexSummary:
    """What one `ks2os reindex` run did. `phase`: the rebuild's phase when it returned
    (`building`: stopped before the swap, run it again to resume)."""

    alias: str
    old_index: str
    new_index: str
    phase: str
    resumed: bool = False
    followed_stream: bool = False  # this run read the stream itself (no live follower)
    rows_read: int = 0
    written: int = 0
    stale: int = 0
    dead_lettered: int = 0
    verify_attempts: int = 0
    verified_rows: int = 0
    old_index_deleted: bool = False
    keep_old_until_ms: int | None = None
    seconds: float = 0.0

    def text(self) -> str:
        """The summary as a person reads it."""
        lines = [f"reindex: {self.old_index} -> {self.new_index} (alias {self.alias})"]
        if self.resumed:
            lines.append("  resumed the unfinished rebuild")
        if self.phase == "aborted":
            lines.append(
                f"  aborted: {self.new_index} deleted; the alias still points at {self.old_index}"
            )
            return "\n".join([*lines, "result: aborted"])
        lines.append(
            f"  snapshot: {self.rows_read} rows read, {self.written} written, {self.stale} "
            f"stale, {self.dead_lettered} dead-lettered"
        )
        follower = "this run (no follower was running)" if self.followed_stream else "followers"
        lines.append(f"  changes meanwhile: written to both indexes by {follower}")
        if self.verify_attempts:
            lines.append(
                f"  verify: a sample of {self.verified_rows} rows matched "
                f"({self.verify_attempts} attempt{'s' if self.verify_attempts > 1 else ''})"
            )
        if self.phase == "done":
            lines.append(f"  alias {self.alias} moved to {self.new_index}")
            if self.old_index_deleted:
                lines.append(f"  old index {self.old_index} deleted")
            elif self.keep_old_until_ms is not None:
                lines.append(
                    f"  old index {self.old_index} kept until {_iso(self.keep_old_until_ms)} "
                    "(ks2os cleanup deletes it then)"
                )
            return "\n".join([*lines, "result: done"])
        lines.append("result: stopped before the swap: run ks2os reindex again to resume")
        return "\n".join(lines)


def _iso(epoch_ms: int) -> str:
    moment = dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


# ---- the rebuild record, leased ------------------------------------------------------------


class _Held:
    """The rebuild record this run leases; every change goes through here, under one lock,
    so the renewer and the steps never race each other's conditional writes."""

    def __init__(self, store: StateStore, rebuild: Rebuild, worker: str) -> None:
        self._store, self._worker = store, worker
        self._lock = threading.Lock()
        self._current = rebuild

    def get(self) -> Rebuild:
        with self._lock:
            return self._current

    def update(self, **changes: Any) -> Rebuild:
        """Write the record with `changes`; `LeaseLost` when another run took it over."""
        with self._lock:
            self._current = self._store.update_rebuild(
                self._current, replace(self._current, **changes)
            )
            return self._current

    def renew(self) -> bool:
        """Extend the lease; False when another run holds it now."""
        with self._lock:
            renewed = self._store.lease_rebuild(self._current, self._worker)
            if renewed is None:
                return False
            self._current = renewed
            return True


class _Renewer(ContextThread):
    """Renews the rebuild's lease every third of a lease; on losing it, stops the run."""

    def __init__(self, held: _Held, interval_s: float, stop: threading.Event) -> None:
        super().__init__(name="ks2os-reindex-lease", daemon=True)
        self.held, self.interval_s, self.stop = held, interval_s, stop
        self.finished = threading.Event()
        self.lost = False

    def run(self) -> None:
        while not self.finished.wait(self.interval_s):
            try:
                renewed = self.held.renew()
            except Ks2osError as exc:  # OpenSearch away for longer than the retries: try again
                log.warning("could not renew the rebuild's lease: %s", one_line(exc))
                continue
            if not renewed:
                self.lost = True
                log.error("another reindex run took over the rebuild; stopping")
                self.stop.set()
                return


def _take(
    store: StateStore,
    client: OpenSearch,
    mapping: TableMapping,
    table: str,
    worker: str,
    *,
    abort: bool,
    stop: threading.Event,
) -> tuple[Rebuild, bool]:
    """The rebuild this run works on, leased: (the record, True if it resumes one)."""
    current = store.get_rebuild(table)
    if current is not None and current.phase in ("building", "swapped"):
        return _lease_unfinished(store, current, worker, stop), True
    if abort:
        raise TerminalError(
            f"no reindex of {table} is in progress: nothing to abort",
            hint="ks2os reindex starts one",
        )
    serving = alias_targets(client, mapping.alias)
    if len(serving) != 1:
        what = "no index" if not serving else f"{len(serving)} indexes ({', '.join(serving)})"
        raise TerminalError(
            f"alias {mapping.alias} points at {what}: a reindex replaces the one index behind it",
            hint="load the table with ks2os backfill first"
            if not serving
            else "point the alias at one index, then run ks2os reindex again",
        )
    new_index = next_index_name(client, mapping.alias)
    try:
        rebuild = store.begin_rebuild(
            table, mapping.alias, serving[0], new_index, worker, replacing=current
        )
    except LeaseLost:
        raise _busy(table, store.get_rebuild(table)) from None
    log.info("rebuilding %s: %s -> %s", table, serving[0], new_index)
    return rebuild, False


def _lease_unfinished(
    store: StateStore, current: Rebuild, worker: str, stop: threading.Event
) -> Rebuild:
    """Take over an unfinished rebuild; a killed run's lease is waited out (once)."""
    leased = store.lease_rebuild(current, worker)
    if leased is None:
        # A killed run's lease runs out by itself; a live run renews it meanwhile.
        wait_s = (current.lease.expires_at_ms - store.now_ms()) / 1000 + 0.5
        log.info(
            "the rebuild of %s is leased by %s for %.0f s more; waiting to see if it renews",
            current.table,
            current.lease.owner,
            wait_s,
        )
        if stop.wait(max(wait_s, 0.0)):
            raise TerminalError(f"stopped while waiting for the rebuild of {current.table}")
        again = store.get_rebuild(current.table)
        leased = None if again is None else store.lease_rebuild(again, worker)
        if leased is None:
            raise _busy(current.table, again)
    log.info(
        "resuming the rebuild of %s into %s (phase %s)",
        current.table,
        leased.new_index,
        leased.phase,
    )
    return leased


class RebuildBusy(TerminalError):
    """Another live run holds the table's rebuild."""


def _busy(table: str, holder: Rebuild | None) -> RebuildBusy:
    who = "another run" if holder is None else f"{holder.lease.owner} (into {holder.new_index})"
    return RebuildBusy(
        f"a reindex of {table} is running: {who} holds it",
        hint="wait for it to end, or stop it first (a killed run's lease runs out after "
        "state.lease_seconds)",
    )


# ---- the stream followed by this run -----------------------------------------------------------


class _StreamFollower:
    """`run_follow` in a thread of this run, as `<state.worker_id>#reindex`: the same
    checkpoints and leases as `ks2os follow`, so a follower started meanwhile shares the
    shards with it. No metrics port of its own (a real follower may hold the port)."""

    def __init__(self, cfg: Config, mapping: TableMapping, worker: str) -> None:
        self.worker_id = f"{worker}{FOLLOWER_SUFFIX}"
        # A gap while rebuilding is a gap of the new index too: no rebuild within a rebuild.
        on_gap = "stop" if cfg.follow.on_gap == "reindex" else cfg.follow.on_gap
        self.cfg = dataclasses.replace(
            cfg,
            state=dataclasses.replace(cfg.state, worker_id=self.worker_id),
            follow=dataclasses.replace(cfg.follow, metrics_port=None, on_gap=on_gap),
        )
        self.mapping = mapping
        self.stop = threading.Event()
        self.errors: list[BaseException] = []
        self.thread: ContextThread | None = None

    @property
    def running(self) -> bool:
        return self.thread is not None

    def start(
        self, rebuild: Rebuild, client: OpenSearch, session: Session, metrics: Metrics | None
    ) -> None:
        try:
            added = add_new_fields(client, rebuild.old_index, self.mapping)
        except OpenSearchRefused as exc:  # a field whose type changed: documents may still fit
            log.warning("could not add the new fields to %s: %s", rebuild.old_index, exc)
        else:
            if added:
                log.info(
                    "mapped %s on %s, so its documents fit", ", ".join(added), rebuild.old_index
                )
        # A follower writes both indexes while the rebuild record says so (it reads the
        # record before its first write); its target, the new index, is the one whose
        # coverage its gap checks use.
        job = Job(
            self.cfg,
            self.mapping,
            target=Target(rebuild.alias, rebuild.new_index),
            stop=self.stop,
            session=session,
            client=client,
            metrics=metrics,
        )
        self.thread = ContextThread(
            target=self._run, args=(job,), name="ks2os-reindex-follow", daemon=True
        )
        log.info(
            "no follower is running: following the stream here (as %s) until the swap",
            self.worker_id,
        )
        self.thread.start()

    def _run(self, job: Job) -> None:
        try:
            run_follow(self.cfg, self.mapping, stop=self.stop, job=job)
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            job.close()

    def check(self) -> None:
        """Raise what stopped the follower (a gap under on_gap = "stop", say)."""
        if self.errors:
            raise self.errors[0]

    def close(self) -> None:
        """Stop cleanly: flush, checkpoint and release every shard."""
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=SHUTDOWN_S + 10)


# ---- the run ---------------------------------------------------------------------------------


class _Say:
    """A waiting step's progress line: what it waits for (`what`, stable while the wait
    lasts) and how (`detail`), logged when `what` changes and every SAY_EVERY_S."""

    def __init__(self, table: str) -> None:
        self.table = table
        self._what = ""
        self._at = 0.0
        self._since = time.monotonic()

    def waited_s(self) -> float:
        """How long the current wait has lasted."""
        return time.monotonic() - self._since

    def __call__(self, what: str, detail: str = "") -> None:
        now = time.monotonic()
        if what != self._what:
            self._since = now
        if what != self._what or now - self._at >= SAY_EVERY_S:
            log.info(
                "reindex %s: %s%s (waiting %.0f s)",
                self.table,
                what,
                f": {detail}" if detail else "",
                now - self._since,
            )
            self._what, self._at = what, now


class _CatchUp:
    """An ETA for the stream lag to fall to a bound, from how fast it fell so far."""

    def __init__(self) -> None:
        self._first: tuple[float, float] | None = None  # (monotonic time, lag)

    def eta(self, lag_s: float, bound_s: float) -> float | None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, lag_s)
            return None
        started, first_lag = self._first
        fallen = first_lag - lag_s
        if fallen <= 0:
            return None
        return (lag_s - bound_s) * (now - started) / fallen


class _Reindex:
    """Steps 2 to 6 of the module docstring, for a rebuild this run holds."""

    def __init__(
        self,
        cfg: Config,
        mapping: TableMapping,
        client: OpenSearch,
        store: StateStore,
        held: _Held,
        stop: threading.Event,
        summary: ReindexSummary,
        metrics: Metrics | None,
    ) -> None:
        self.cfg, self.mapping, self.client, self.store = cfg, mapping, client, store
        self.held, self.stop, self.summary, self.metrics = held, stop, summary, metrics
        self.table = held.get().table
        self.here = _StreamFollower(cfg, mapping, cfg.state.worker_id)
        self.say = _Say(self.table)
        self._streams: Any = None

    def run(self, delete_old: bool) -> None:
        if self.held.get().phase == "building":
            if not self._build():
                return
        else:
            self._swap()  # resumed after phase `swapped`: the alias may not have moved yet
        self._finish_old(delete_old)

    # ---- steps 2 to 4 -----------------------------------------------------------------

    def _build(self) -> bool:
        """Fill the new index and wait until it may serve; False when stopped first."""
        rebuild = self.held.get()
        create_index(self.client, rebuild.new_index, self.mapping)
        with self._new_index_job(rebuild) as job:
            try:
                if not self._changes_reach(job):
                    return False
                if not self._snapshot(job):
                    return False
                if not self._ready(job):
                    return False
                self._swap()
            finally:
                self.here.close()
                self.summary.followed_stream = self.here.running
            self.here.check()
        return True

    def _new_index_job(self, rebuild: Rebuild) -> Job:
        """The job that fills the new index; a resumed run whose mapping file changed since
        the new index was made says how to start over."""
        try:
            return Job(
                self.cfg,
                self.mapping,
                target=Target(rebuild.alias, rebuild.new_index),
                stop=self.stop,
                client=self.client,
                metrics=self.metrics,
            )
        except MappingConflict as exc:
            raise MappingConflict(
                f"the mapping file changed since this rebuild made {rebuild.new_index}: {exc}",
                hint="ks2os reindex --abort, then ks2os reindex builds an index of the file as "
                "it is now",
            ) from None

    def _other_followers(self) -> dict[str, frozenset[str]]:
        live = self.store.live_worker_targets(FOLLOW_ROLE, self.table)
        live.pop(self.here.worker_id, None)
        return live

    def _not_writing_new(self, live: dict[str, frozenset[str]]) -> list[str]:
        new_index = self.held.get().new_index
        return sorted(worker for worker, targets in live.items() if new_index not in targets)

    def _changes_reach(self, job: Job) -> bool:
        """Step 2: every live follower writes the new index, or this run follows the stream."""
        while not self.stop.is_set():
            live = self._other_followers()
            if not live:
                self._record_snapshot_start(job)
                self.here.start(self.held.get(), self.client, job.session, self.metrics)
                return True
            waiting = self._not_writing_new(live)
            if not waiting:
                self._record_snapshot_start(job)
                return True
            late = self.say.waited_s() > OLD_FOLLOWER_S
            self.say(
                f"waiting for follower(s) to write {self.held.get().new_index} too",
                ", ".join(waiting) + (" (one of an older ks2os never does: restart it)" * late),
            )
            self.stop.wait(POLL_S)
        return False

    def _record_snapshot_start(self, job: Job) -> None:
        """Step 3's start: from now on the new index needs every stream record.

        Recorded before this run's follower reads anything, so its gap checks are the
        new index's; less the snapshot margin, as a backfill's own start is.
        """
        rebuild = self.held.get()
        if rebuild.snapshot_from_ms is None:
            since = service_now_ms(job.session) - self.cfg.backfill.snapshot_margin_ms
            rebuild = self.held.update(snapshot_from_ms=since)
        assert rebuild.snapshot_from_ms is not None
        self.store.cover_from(self.table, rebuild.new_index, rebuild.snapshot_from_ms)

    def _snapshot(self, job: Job) -> bool:
        """Step 3: the backfill of the new index (resumed, or already complete)."""
        run = self.store.get_run(backfill_key(self.table, job.index))
        if run is not None and run.finished:
            log.info("the snapshot of %s into %s is complete", self.table, job.index)
            return True
        result: BackfillSummary = run_backfill(
            self.cfg, self.mapping, stop=self.stop, job=job, require_cdc=True
        )
        self.summary.rows_read += result.rows_read
        self.summary.written += result.written
        self.summary.stale += result.stale
        self.summary.dead_lettered += result.dead_lettered
        self.here.check()
        return result.complete

    def _ready(self, job: Job) -> bool:
        """Step 4: wait until the lag is small and a verify sample passes."""
        settings = self.cfg.reindex
        catching_up = _CatchUp()
        while not self.stop.is_set():
            self.here.check()
            live = self._other_followers()
            if not live and not self.here.running:
                # Every follower stopped since step 2: nothing else reads the stream now.
                self.here.start(self.held.get(), self.client, job.session, self.metrics)
            waiting = self._not_writing_new(live)
            if waiting:
                self.say(f"waiting for follower(s) to write {job.index} too", ", ".join(waiting))
                self.stop.wait(POLL_S)
                continue
            lag = self._lag_s(job)
            if lag > settings.max_lag_seconds:
                eta = catching_up.eta(lag, settings.max_lag_seconds)
                self.say(
                    f"waiting for the stream lag to fall under reindex.max_lag_seconds = "
                    f"{settings.max_lag_seconds:g}",
                    f"{lag:.1f} s now, ETA {'?' if eta is None else f'{eta:.0f} s'}",
                )
                self.stop.wait(POLL_S)
                continue
            catching_up = _CatchUp()
            if self._verified(job):
                return True
        return False

    def _verified(self, job: Job) -> bool:
        """A verify sample of the new index; raises after `verify_attempts` failures."""
        settings = self.cfg.reindex
        self.say(f"verifying a sample of {settings.verify_sample} rows of {job.index}")
        report: VerifyReport = run_verify(
            self.cfg,
            self.mapping,
            target=job.target,
            sample=settings.verify_sample,
            settle_s=settings.max_lag_seconds,
            stop=self.stop,
        )
        self.summary.verify_attempts += 1
        self.summary.verified_rows = report.rows
        if report.ok and report.complete:
            return True
        if self.stop.is_set():
            return False
        what = f"{report.divergent} divergent document(s) ({_kinds(report)})"
        if self.summary.verify_attempts >= settings.verify_attempts:
            first = [e.doc_id for found in report.examples.values() for e in found][:3]
            raise TerminalError(
                f"the new index {job.index} differs from the table: a verify sample found "
                f"{what} {self.summary.verify_attempts} times, e.g. {', '.join(first)}; "
                f"the alias still points at {self.held.get().old_index}",
                hint="rows the new mapping refuses are the usual cause (`ks2os deadletter "
                "list`): mend the mapping or the data, then `ks2os reindex --abort` and "
                "`ks2os reindex`; or run ks2os reindex again to check again",
            )
        self.say("the verify sample found differences; trying again", what)
        return False

    def _lag_s(self, job: Job) -> float:
        """The stream lag of the table's open shards, seconds: the largest of now -
        `createdAt` of the first record after a shard's checkpoint (0 at the tip)."""
        if self._streams is None:
            self._streams = streams_client(self.cfg)
        now = service_now_ms(job.session)
        worst = 0
        for summary in list_table_streams(self._streams, job.info, self.stop):
            begun = self.store.get_streams(self.table, [summary.stream_arn])
            state = begun.get(summary.stream_arn)
            if state is not None and state.finished:
                continue
            try:
                stream = describe_stream(self._streams, summary.stream_arn, self.stop)
            except StreamGone:
                continue
            shards = self.store.get_shards(self.table, stream.stream_arn, stream.shards)
            for shard_id in stream.shards:
                shard = shards.get(shard_id)
                if shard is not None and shard.finished:
                    continue
                after = None if shard is None else shard.sequence_number
                created = oldest_unread_ms(
                    self._streams, stream.stream_arn, shard_id, after, self.stop
                )
                if created is not None:
                    worst = max(worst, now - created)
        return worst / 1000

    # ---- steps 5 and 6 --------------------------------------------------------------------

    def _swap(self) -> None:
        """Step 5: phase `swapped` first (followers keep writing both), then the alias."""
        rebuild = self.held.get()
        if rebuild.phase == "building":
            now = self.store.now_ms()
            keep_ms = int(self.cfg.reindex.keep_old_hours * 3_600_000)
            rebuild = self.held.update(
                phase="swapped", swapped_ms=now, keep_old_until_ms=now + keep_ms
            )
        swap_alias(self.client, rebuild.alias, rebuild.new_index)
        log.info("alias %s now points at %s", rebuild.alias, rebuild.new_index)

    def _finish_old(self, delete_old: bool) -> None:
        """Step 6: phase `done`; the old index kept for the grace, or deleted now."""
        rebuild = self.held.get()
        if delete_old:
            # Due at once: should this run die before deleting it, cleanup does.
            rebuild = self.held.update(phase="done", keep_old_until_ms=self.store.now_ms())
            self._wait_unwritten(rebuild.old_index)
            self.summary.old_index_deleted = delete_index(self.client, rebuild.old_index)
            log.info("deleted the old index %s", rebuild.old_index)
        else:
            rebuild = self.held.update(phase="done")
            self.summary.keep_old_until_ms = rebuild.keep_old_until_ms
        self.summary.phase = "done"

    def _wait_unwritten(self, index: str) -> None:
        """Until no live follower names `index` in its heartbeat (a write to a deleted
        index would create it again)."""
        while not self.stop.is_set():
            writing = sorted(w for w, t in self._other_followers().items() if index in t)
            if not writing:
                return
            self.say(f"waiting for follower(s) to stop writing {index}", ", ".join(writing))
            self.stop.wait(POLL_S)


def _kinds(report: VerifyReport) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in report.counts.items() if n) or "none"


def _abort(
    client: OpenSearch,
    store: StateStore,
    held: _Held,
    summary: ReindexSummary,
    stop: threading.Event,
) -> None:
    """`--abort`: before the swap only; the alias never moved, the new index goes."""
    rebuild = held.get()
    if rebuild.phase != "building":
        raise TerminalError(
            f"the alias {rebuild.alias} already points at {rebuild.new_index}: too late to abort",
            hint=f"to go back, restore the mapping file and run ks2os reindex again "
            f"({rebuild.old_index} is kept until {_iso(rebuild.keep_old_until_ms or 0)})",
        )
    held.update(phase="aborted")
    say = _Say(rebuild.table)
    while not stop.is_set():
        live = store.live_worker_targets(FOLLOW_ROLE, rebuild.table)
        writing = sorted(w for w, t in live.items() if rebuild.new_index in t)
        if not writing:
            break
        say(f"waiting for follower(s) to stop writing {rebuild.new_index}", ", ".join(writing))
        stop.wait(POLL_S)
    delete_index(client, rebuild.new_index)
    store.forget_run(backfill_key(rebuild.table, rebuild.new_index))
    summary.phase = "aborted"
    log.info("aborted the rebuild of %s: deleted %s", rebuild.table, rebuild.new_index)


def run_reindex(
    cfg: Config,
    mapping: TableMapping,
    *,
    abort: bool = False,
    delete_old: bool = False,
    stop: threading.Event | None = None,
    metrics: Metrics | None = None,
) -> ReindexSummary:
    """Rebuild the mapping's index and swap the alias to it; see the module docstring."""
    stop = stop or threading.Event()
    started = time.monotonic()
    table = f"{mapping.keyspace}.{mapping.table}"
    worker = cfg.state.worker_id
    client = opensearch_client(cfg)
    try:
        store = StateStore(
            client,
            cfg.state.index,
            lease_seconds=cfg.state.lease_seconds,
            policy=RetryPolicy.for_opensearch(cfg.writer, stop),
        )
        store.ensure()
        rebuild, resumed = _take(store, client, mapping, table, worker, abort=abort, stop=stop)
        summary = ReindexSummary(
            mapping.alias, rebuild.old_index, rebuild.new_index, rebuild.phase, resumed
        )
        held = _Held(store, rebuild, worker)
        renewer = _Renewer(held, store.renew_interval_s, stop)
        renewer.start()
        try:
            if abort:
                _abort(client, store, held, summary, stop)
            else:
                _Reindex(cfg, mapping, client, store, held, stop, summary, metrics).run(delete_old)
        except LeaseLost:
            # Our lease lapsed (a long stall) and another run took the rebuild over.
            raise _busy(table, store.get_rebuild(table)) from None
        finally:
            renewer.finished.set()
            renewer.join()
        if renewer.lost:
            raise _busy(table, store.get_rebuild(table))
        if summary.phase == "building":
            summary.phase = held.get().phase
        summary.seconds = time.monotonic() - started
        return summary
    finally:
        client.close()
