"""`cleanup`: remove what no replay and no follower can need any more.

Four kinds of document pile up while ks2os runs for months:

- **tombstones** (deleted rows, `_ks2os.deleted`) in the table's
  `<alias>_v<N>` indexes: removed once their version stands for a time
  older than the stream's retention (24 h) plus `cleanup.margin_s`. Why no
  older write can come back after that: docs/versions.md, "Cleanup"; in
  short, no replay reaches further back than the stream holds, and every
  writer (`sync.writer.ChangeTooOld`) refuses changes older than the
  retention plus half the margin;
- **expired rows** whose TTL record never came: removed once `expires_at`
  is `cleanup.expired_after_s` in the past *and* their version is past the
  tombstone window (so no older write can land where they were either);
- **finished shards' state documents**, once the stream no longer lists the
  shard and every listed child of it is finished too (`prunable_shards`),
  and every finished shard of a stream that is read to its end;
- **dead workers' heartbeats**, expired for longer than a lease;
- **the index a reindex replaced**, once its grace (`reindex.keep_old_hours`,
  recorded in the table's rebuild document as `keep_old_until_ms`) has passed
  and the alias does not point at it (`old_index_due`).

It also runs the follower's expiry sweep once over the alias's index
(`sync.jobs.restate.ExpirySweep`): documents hidden because one of their
values expired are restated without it, should no follower be running.

Every removal is a bulk `delete` conditional on the document's
`_seq_no`/`_primary_term` as read (`sync.bulk.Action.delete_of`): a
document another worker rewrote since (a row written again, a heartbeat
renewed) is left alone and counted as `changed`. So `ks2os cleanup` is safe
while followers and backfills run, and may run from several hosts at once.
Time is the service clock (CQL `now()`), as for versions; leases use the
state store's clock, as the followers do.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from opensearchpy import OpenSearch

from sync.bulk import Action, Bulk, Document, Reader, Verdict
from sync.clients import streams_client
from sync.config import CleanupConfig, Config
from sync.documents import META_FIELD, PARTITION_KIND
from sync.indices import alias_targets, delete_index, index_versions
from sync.jobs import Job
from sync.jobs.restate import ExpirySweep
from sync.keyspaces import service_now_ms
from sync.mapping import TableMapping
from sync.retry import RetryPolicy
from sync.sources.streams import RowLookup, Shard, StreamGone, describe_stream
from sync.state import Rebuild, ShardState, StateStore
from sync.version import base, version_ms

log = logging.getLogger(__name__)


@dataclass
class CleanupSummary:
    tombstones: int = 0  # tombstones purged
    expired: int = 0  # expired rows removed
    shards: int = 0  # finished shards' state documents pruned
    workers: int = 0  # dead workers' heartbeats pruned
    changed: int = 0  # candidates rewritten since they were read: left alone
    restated: int = 0  # documents restated without the values that expired
    old_indexes: int = 0  # indexes a reindex replaced, deleted after their grace
    dry_run: bool = False  # counted, not removed
    seconds: float = 0.0


# ---- what may go (pure) -------------------------------------------------------------------


def prunable_shards(
    states: Iterable[ShardState], listed: Mapping[str, Shard] | None, stream_finished: bool
) -> list[ShardState]:
    """The finished shards of one stream whose state documents no follower needs any more.

    A follower reads a shard's document for its checkpoint (unfinished shards:
    never pruned) and for its final version, which a child not begun yet starts
    from. Children are found in the listing, so a finished shard may go once
    the stream no longer lists it and every listed child of it is finished
    (a child begun has its own start stored). When the stream is read to its
    end (`stream_finished`) its own document keeps its final version, and no
    shard of it is needed. `listed` None: the listing is unknown (the stream is
    gone but not finished: the follower rules on that first), so nothing goes.
    """
    states = list(states)
    finished = {s.shard_id for s in states if s.finished}
    if stream_finished:
        return [s for s in states if s.finished]
    if listed is None:
        return []
    prunable = []
    for state in states:
        if not state.finished or state.shard_id in listed:
            continue
        children = [c.shard_id for c in listed.values() if state.shard_id in c.parents]
        if all(child in finished for child in children):
            prunable.append(state)
    return prunable


def old_index_due(rebuild: Rebuild | None, serving: Iterable[str], now_ms: int) -> str | None:
    """The index a finished reindex replaced, if its grace is over and no search needs it.

    Not while the alias points at it (someone pointed it back by hand), and never
    before the rebuild is `done`: until then the old index may still serve.
    """
    if rebuild is None or rebuild.phase != "done" or rebuild.keep_old_until_ms is None:
        return None
    if now_ms < rebuild.keep_old_until_ms or rebuild.old_index in set(serving):
        return None
    return rebuild.old_index


def tombstone_query(before_version: int) -> dict[str, Any]:
    """Tombstones whose version is below `before_version` (partition documents never)."""
    return {
        "bool": {
            "filter": [
                {"term": {f"{META_FIELD}.deleted": True}},
                {"range": {f"{META_FIELD}.version": {"lt": before_version}}},
            ],
            "must_not": [{"term": {f"{META_FIELD}.kind": PARTITION_KIND}}],
        }
    }


def expired_query(expired_before_ms: int, before_version: int) -> dict[str, Any]:
    """Live rows whose TTL ran out before `expired_before_ms`, versioned below `before_version`."""
    return {
        "bool": {
            "filter": [
                {"range": {f"{META_FIELD}.expires_at": {"lt": expired_before_ms}}},
                {"range": {f"{META_FIELD}.version": {"lt": before_version}}},
            ],
            "must_not": [
                {"term": {f"{META_FIELD}.deleted": True}},
                {"term": {f"{META_FIELD}.kind": PARTITION_KIND}},
            ],
        }
    }


def _older_than(document: Document, cutoff_ms: int) -> bool:
    """Checked again on what was read, through the one reading of a version's time."""
    meta = document.body.get(META_FIELD) or {}
    version = meta.get("version")
    return isinstance(version, int) and version_ms(version) < cutoff_ms


# ---- removing, conditionally ----------------------------------------------------------------


@dataclass
class Removed:
    removed: int = 0
    changed: int = 0  # rewritten since read: kept


def delete_unchanged(bulk: Bulk, documents: Sequence[Document]) -> Removed:
    """Delete each document only if it is still as read; count what went and what changed."""
    outcome = Removed()
    if not documents:
        return outcome
    for result in bulk.send([Action.delete_of(doc) for doc in documents]):
        if result.verdict is Verdict.APPLIED:
            outcome.removed += 1
        elif result.verdict is Verdict.STALE:
            outcome.changed += 1
        # REJECTED (404): gone already, removed by another cleanup
    return outcome


class Cleaner:
    """Finds and removes one table's expired documents and state; see the module docstring.

    `now_ms` is the service clock (injectable, so tests control the window);
    `dry_run` finds and counts without removing.
    """

    def __init__(
        self,
        client: OpenSearch,
        policy: RetryPolicy,
        settings: CleanupConfig,
        now_ms: Callable[[], int],
        *,
        dry_run: bool = False,
    ) -> None:
        self.client = client
        self.policy = policy
        self.settings = settings
        self.now_ms = now_ms
        self.dry_run = dry_run

    def _remove(self, bulk: Bulk, documents: Sequence[Document]) -> Removed:
        if self.dry_run:
            return Removed(removed=len(documents))
        return delete_unchanged(bulk, documents)

    # ---- documents of the table's indexes ---------------------------------------------

    def tombstones(self, index: str) -> list[Document]:
        """Tombstones of `index` past the window (read now; removed by `purge`)."""
        cutoff = self.now_ms() - self.settings.purge_after_ms
        return self._find(index, tombstone_query(base(cutoff)), cutoff)

    def expired(self, index: str) -> list[Document]:
        """Expired rows of `index` whose TTL record never came, past both bounds."""
        now = self.now_ms()
        cutoff = now - self.settings.purge_after_ms
        query = expired_query(now - self.settings.expired_after_s * 1000, base(cutoff))
        return self._find(index, query, cutoff)

    def _find(self, index: str, query: Mapping[str, Any], cutoff_ms: int) -> list[Document]:
        reader = Reader(self.client, index, self.policy)
        reader.refresh()
        return [doc for page in reader.scan(query) for doc in page if _older_than(doc, cutoff_ms)]

    def purge(self, index: str, documents: Sequence[Document]) -> Removed:
        return self._remove(Bulk(self.client, index, self.policy), documents)

    # ---- the state index ----------------------------------------------------------------

    def prune_state(self, store: StateStore, table: str, streams: Any) -> tuple[Removed, Removed]:
        """(finished shards' documents, dead workers' heartbeats) of `table`, removed."""
        bulk = Bulk(self.client, store.index, self.policy)
        shards = self._remove(bulk, self._prunable_shard_documents(store, table, streams))
        dead_before = store.now_ms() - store.lease_ms
        workers = self._remove(bulk, store.worker_documents(table, expired_before_ms=dead_before))
        return shards, workers

    def _prunable_shard_documents(
        self, store: StateStore, table: str, streams: Any
    ) -> list[Document]:
        by_stream: dict[str, list[ShardState]] = {}
        for state in store.list_shards(table):
            by_stream.setdefault(state.stream_arn, []).append(state)
        finished_streams = {s.stream_arn for s in store.list_stream_states(table) if s.finished}
        prunable: list[ShardState] = []
        for arn, states in sorted(by_stream.items()):
            listed: Mapping[str, Shard] | None = None
            if arn not in finished_streams:
                try:
                    listed = describe_stream(streams, arn).shards
                except StreamGone:
                    listed = None
            prunable += prunable_shards(states, listed, arn in finished_streams)
        return [Document(s.doc_id, s.body(), s.stamp) for s in prunable]


def _delete_old_index(job: Job, mapping: TableMapping, dry_run: bool) -> int:
    """Delete the index a reindex replaced once its grace is over (1 if it went)."""
    rebuild = job.store.get_rebuild(job.info.qualified_name)
    serving = alias_targets(job.client, mapping.alias)
    old = old_index_due(rebuild, serving, job.store.now_ms())
    if old is None or old not in index_versions(job.client, mapping.alias):
        return 0
    if dry_run:
        return 1
    log.info("deleting %s: the reindex that replaced it ended its grace", old)
    return 1 if delete_index(job.client, old) else 0


# Each sweep round takes one page of what is due: enough rounds for a large backlog,
# bounded so a document that cannot be restated yet (its read still shows the value)
# does not keep cleanup going.
_SWEEP_ROUNDS = 100


def _restate_expired(job: Job) -> int:
    """Restate the index's documents whose values expired (as the follower's sweep does)."""
    if not job.info.ttl_enabled:
        return 0
    sweep = ExpirySweep(
        Reader(job.client, job.index, job.policy),
        job.new_writer(restates=True),
        RowLookup(job.session, job.info),
    )
    restated = 0
    for _ in range(_SWEEP_ROUNDS):
        report = sweep.run_once()
        if not report.partitions and not report.rows:
            break
        restated += report.partitions + report.rows
    return restated


def run_cleanup(
    cfg: Config,
    mapping: TableMapping,
    *,
    dry_run: bool = False,
    stop: threading.Event | None = None,
    job: Job | None = None,
    streams: Any = None,
    now_ms: Callable[[], int] | None = None,
) -> CleanupSummary:
    """Remove the table's expired tombstones, rows and state; see the module docstring."""
    stop = stop or threading.Event()
    own_job = job is None
    job = job or Job(cfg, mapping, stop=stop)
    started = time.monotonic()
    try:
        session = job.session
        clock = now_ms or (lambda: service_now_ms(session))
        cleaner = Cleaner(job.client, job.policy, cfg.cleanup, clock, dry_run=dry_run)
        summary = CleanupSummary(dry_run=dry_run)
        summary.old_indexes = _delete_old_index(job, mapping, dry_run)
        for index in sorted(index_versions(job.client, mapping.alias)):
            tombstones = cleaner.purge(index, cleaner.tombstones(index))
            expired = cleaner.purge(index, cleaner.expired(index))
            summary.tombstones += tombstones.removed
            summary.expired += expired.removed
            summary.changed += tombstones.changed + expired.changed
        if not dry_run:
            summary.restated = _restate_expired(job)
        shards, workers = cleaner.prune_state(
            job.store, job.info.qualified_name, streams or streams_client(cfg)
        )
        summary.shards, summary.workers = shards.removed, workers.removed
        summary.changed += shards.changed + workers.changed
        summary.seconds = time.monotonic() - started
        log.info(
            "cleanup of %s%s: %d old index(es), %d tombstones, %d expired rows, %d shard "
            "states, %d dead workers; %d left alone (rewritten meanwhile)",
            job.info.qualified_name,
            " (dry run: nothing removed)" if dry_run else "",
            summary.old_indexes,
            summary.tombstones,
            summary.expired,
            summary.shards,
            summary.workers,
            summary.changed,
        )
        return summary
    finally:
        if own_job:
            job.close()
