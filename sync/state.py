"""Durable job state in an OpenSearch index: shard checkpoints, backfill ranges, leases,
and what the follower must never forget: streams drained, gaps met, and since when the
index needs the stream.

Every document guards one unit of work (a stream shard, a backfill token
range) and carries its lease: the owning worker's id and when the lease runs
out (epoch ms). Every write is conditional on the `_seq_no`/`_primary_term`
the writer last saw (documents are created with a `create` action), so two
workers can never both believe they own a unit: the one whose write comes
second gets a 409, which this module turns into `LeaseLost`, and it must drop
the unit. A worker that lost its lease therefore cannot move a checkpoint.

Clock assumption: a lease is expired when `now_ms > expires_at_ms` by the
*acquiring* worker's clock, and written with the *owner's* clock. Two hosts
whose clocks differ by `skew` can overlap by at most `skew`, and the owner
renews every third of the lease, so `lease_seconds` must be much larger than
the clock skew between workers (NTP keeps it to milliseconds; the 30 s
default leaves a wide margin). Even an overlap cannot corrupt the target
index, because document versions make a stale write lose; it can only cost a
few duplicate reads.

Besides the leased units, three kinds of document carry no lease:

- a **stream** document per stream of a table that the follower began: finished
  once every shard of the (DISABLED) stream is read to its end, with the
  stream's final version, so the next stream of the table starts above it;
- a **gap** document per gap met (records the index needed that the stream no
  longer holds, or a stream switch whose window no stream recorded): where,
  from where, when found, and what the `on_gap` policy did;
- a **coverage** document per table and target index: the service time from
  which the index needs every stream record (the earliest backfill or
  follower start; earlier changes reached it through the backfill).

A **rebuild** document per table (leased by the `ks2os reindex` run that
owns it) says a new index is being built for the alias: while its phase
`writes_both`, every follower of the table writes each change to the old and
the new index, and says so in its heartbeat (`writes_to`), so the rebuild
knows when every live follower has seen it.

Units are found by id (real-time mget), never by search, so nothing here
waits for an index refresh; only the `list_*` methods and the list of live
workers search (after a refresh), for overviews and for a follower's start.
Every request goes through the bulk transport (`sync.bulk`), so 429s, 5xx and
lost connections are retried by the one retry policy.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from opensearchpy import OpenSearch

from sync.bulk import Action, Bulk, Document, Reader, Stamp, Traffic, Verdict, call
from sync.errors import Ks2osError, OpenSearchRefused, TerminalError
from sync.retry import RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_INDEX = ".ks2os-state"
# Heartbeats of one table read at most (live and expired alike): far more than ever run.
_MAX_WORKERS = 10_000

# Keyword fields everywhere: the state is looked up, never analysed.
_MAPPING: dict[str, Any] = {
    "dynamic": False,
    "properties": {
        "job": {"type": "keyword"},
        "table": {"type": "keyword"},
        "stream_arn": {"type": "keyword"},
        "shard_id": {"type": "keyword"},
        "run_id": {"type": "keyword"},
        "owner": {"type": "keyword"},
        "expires_at_ms": {"type": "long"},
        "finished": {"type": "boolean"},
        "done": {"type": "boolean"},
    },
}


class LeaseLost(Ks2osError):
    """Another worker owns this unit now (or took it over): drop it, write nothing more."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class Lease:
    owner: str | None  # None: free
    expires_at_ms: int

    def held_by(self, worker: str, now_ms: int) -> bool:
        return self.owner == worker and now_ms <= self.expires_at_ms

    def free_for(self, worker: str, now_ms: int) -> bool:
        """True when `worker` may take it: free, its own, or expired."""
        return self.owner is None or self.owner == worker or now_ms > self.expires_at_ms


FREE = Lease(owner=None, expires_at_ms=0)


@dataclass(frozen=True, slots=True)
class ShardState:
    """The follower's checkpoint of one shard.

    `sequence_number` is the last record whose change OpenSearch acknowledged
    (None: nothing read yet) and `version` the version that record got, so the
    next reader recomputes the same versions after it. For a shard not started
    yet, `version` is the floor it starts from. `final_version` is set when the
    shard is read to its end; children start after the largest of their
    parents' final versions. `start_sequence` is the shard's
    `startingSequenceNumber` as listed when it was first acquired: with it, a
    shard the listing no longer shows can still prove its start is there.
    """

    table: str
    stream_arn: str
    shard_id: str
    sequence_number: str | None
    version: int
    finished: bool
    final_version: int | None
    gaps: int
    lease: Lease
    stamp: Stamp
    start_sequence: str | None = None

    @property
    def doc_id(self) -> str:
        return shard_doc_id(self.table, self.stream_arn, self.shard_id)

    def body(self) -> dict[str, Any]:
        return {
            "job": "follow",
            "table": self.table,
            "stream_arn": self.stream_arn,
            "shard_id": self.shard_id,
            "sequence_number": self.sequence_number,
            "version": self.version,
            "finished": self.finished,
            "final_version": self.final_version,
            "gaps": self.gaps,
            "owner": self.lease.owner,
            "expires_at_ms": self.lease.expires_at_ms,
            "start_sequence": self.start_sequence,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], stamp: Stamp) -> ShardState:
        return cls(
            table=body["table"],
            stream_arn=body["stream_arn"],
            shard_id=body["shard_id"],
            sequence_number=body.get("sequence_number"),
            version=int(body.get("version") or 0),
            finished=bool(body.get("finished")),
            final_version=body.get("final_version"),
            gaps=int(body.get("gaps") or 0),
            lease=Lease(body.get("owner"), int(body.get("expires_at_ms") or 0)),
            stamp=stamp,
            start_sequence=body.get("start_sequence"),
        )


@dataclass(frozen=True, slots=True)
class BackfillRun:
    """The current backfill plan of a table: which run, how many ranges."""

    table: str
    run_id: str
    range_count: int
    started_at_ms: int
    finished: bool
    stamp: Stamp

    def body(self) -> dict[str, Any]:
        return {
            "job": "backfill-run",
            "table": self.table,
            "run_id": self.run_id,
            "range_count": self.range_count,
            "started_at_ms": self.started_at_ms,
            "finished": self.finished,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], stamp: Stamp) -> BackfillRun:
        return cls(
            table=body["table"],
            run_id=body["run_id"],
            range_count=int(body["range_count"]),
            started_at_ms=int(body["started_at_ms"]),
            finished=bool(body.get("finished")),
            stamp=stamp,
        )


@dataclass(frozen=True, slots=True)
class RangeState:
    """Progress of one token range of a backfill run: (range_start, range_end].

    `last_token` is the token of the last row of the last page written: a
    resumed scan starts again at that token (inclusive), because rows of one
    partition may span pages.
    """

    table: str
    run_id: str
    number: int
    range_start: int
    range_end: int
    done: bool
    last_token: int | None
    rows: int
    lease: Lease
    stamp: Stamp

    @property
    def doc_id(self) -> str:
        return range_doc_id(self.table, self.run_id, self.number)

    def body(self) -> dict[str, Any]:
        return {
            "job": "backfill",
            "table": self.table,
            "run_id": self.run_id,
            "number": self.number,
            # Tokens are signed 64-bit: JSON numbers of that size survive, but
            # as strings they cannot be rounded by any client on the way.
            "range_start": str(self.range_start),
            "range_end": str(self.range_end),
            "done": self.done,
            "last_token": None if self.last_token is None else str(self.last_token),
            "rows": self.rows,
            "owner": self.lease.owner,
            "expires_at_ms": self.lease.expires_at_ms,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], stamp: Stamp) -> RangeState:
        last = body.get("last_token")
        return cls(
            table=body["table"],
            run_id=body["run_id"],
            number=int(body["number"]),
            range_start=int(body["range_start"]),
            range_end=int(body["range_end"]),
            done=bool(body.get("done")),
            last_token=None if last is None else int(last),
            rows=int(body.get("rows") or 0),
            lease=Lease(body.get("owner"), int(body.get("expires_at_ms") or 0)),
            stamp=stamp,
        )


@dataclass(frozen=True, slots=True)
class StreamState:
    """A stream of a table that the follower began reading (streams of a table form one lineage).

    `finished` once every shard of the stream, which Keyspaces had DISABLED, was
    read to its end (or its loss recorded as a gap); `final_version` is then the
    largest version of its records, the floor of the next stream's shards.
    """

    table: str
    stream_arn: str
    label: str  # the stream's creation time, as Keyspaces names it: orders the lineage
    finished: bool
    final_version: int | None
    stamp: Stamp

    @property
    def doc_id(self) -> str:
        return stream_doc_id(self.table, self.stream_arn)

    def body(self) -> dict[str, Any]:
        return {
            "job": "follow-stream",
            "table": self.table,
            "stream_arn": self.stream_arn,
            "label": self.label,
            "finished": self.finished,
            "final_version": self.final_version,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], stamp: Stamp) -> StreamState:
        final = body.get("final_version")
        return cls(
            table=body["table"],
            stream_arn=body["stream_arn"],
            label=str(body.get("label") or ""),
            finished=bool(body.get("finished")),
            final_version=None if final is None else int(final),
            stamp=stamp,
        )


@dataclass(frozen=True, slots=True)
class GapRecord:
    """Changes the index needed that no stream can give any more: where, and what was done.

    `kind` says how it was found (see `sync.sources.streams.GapKind`). For a
    shard, `after` is the last sequence number applied before the gap (None:
    from the shard's start). For a stream switch, `shard_id` is None and
    writes between `window_start_ms` and `window_end_ms` (service time)
    reached no stream. `policy` is what the follower did: "stop" or "continue".
    """

    table: str
    stream_arn: str
    shard_id: str | None
    kind: str
    after: str | None
    found_at_ms: int
    policy: str
    window_start_ms: int | None = None
    window_end_ms: int | None = None

    @property
    def doc_id(self) -> str:
        return gap_doc_id(self.table, self.stream_arn, self.shard_id, self.kind, self.after)

    def body(self) -> dict[str, Any]:
        return {
            "job": "gap",
            "table": self.table,
            "stream_arn": self.stream_arn,
            "shard_id": self.shard_id,
            "kind": self.kind,
            "after": self.after,
            "found_at_ms": self.found_at_ms,
            "policy": self.policy,
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> GapRecord:
        def optional_int(name: str) -> int | None:
            value = body.get(name)
            return None if value is None else int(value)

        return cls(
            table=body["table"],
            stream_arn=body["stream_arn"],
            shard_id=body.get("shard_id"),
            kind=body["kind"],
            after=body.get("after"),
            found_at_ms=int(body["found_at_ms"]),
            policy=str(body.get("policy") or ""),
            window_start_ms=optional_int("window_start_ms"),
            window_end_ms=optional_int("window_end_ms"),
        )


@dataclass(frozen=True, slots=True)
class Coverage:
    """Since when (service clock, epoch ms) an index needs every stream record of its table.

    Changes before `since_ms` reached the index through a backfill that began
    after them (or were never asked for: a follower started on an empty index
    without a backfill). Only ever moved earlier, so it stays conservative.
    """

    table: str
    index: str
    since_ms: int
    stamp: Stamp

    @property
    def doc_id(self) -> str:
        return coverage_doc_id(self.table, self.index)

    def body(self) -> dict[str, Any]:
        return {
            "job": "coverage",
            "table": self.table,
            "index": self.index,
            "since_ms": self.since_ms,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], stamp: Stamp) -> Coverage:
        return cls(body["table"], body["index"], int(body["since_ms"]), stamp)


RebuildPhase = Literal["building", "swapped", "done", "aborted"]


@dataclass(frozen=True, slots=True)
class Rebuild:
    """A reindex of `table` into `new_index` while `old_index` serves the alias.

    Phases: `building` (the new index exists and is being filled), `swapped`
    (the alias is being, or has been, moved to the new index: recorded
    *before* the move, so no follower ever writes only the index the alias
    is leaving), then `done` or `aborted`. While `writes_both`, followers
    write every change to both indexes. `snapshot_from_ms` is when the
    snapshot began (the new index needs every stream record from then on);
    `keep_old_until_ms` when the old index may be deleted after the swap.
    """

    table: str
    alias: str
    old_index: str
    new_index: str
    phase: RebuildPhase
    started_ms: int
    lease: Lease
    stamp: Stamp
    snapshot_from_ms: int | None = None
    swapped_ms: int | None = None
    keep_old_until_ms: int | None = None

    @property
    def doc_id(self) -> str:
        return rebuild_doc_id(self.table)

    @property
    def writes_both(self) -> bool:
        return self.phase in ("building", "swapped")

    @property
    def targets(self) -> tuple[str, ...]:
        """The indexes a follower writes while this rebuild lasts."""
        return (self.old_index, self.new_index) if self.writes_both else ()

    def body(self) -> dict[str, Any]:
        return {
            "job": "rebuild",
            "table": self.table,
            "alias": self.alias,
            "old_index": self.old_index,
            "new_index": self.new_index,
            "phase": self.phase,
            "started_ms": self.started_ms,
            "owner": self.lease.owner,
            "expires_at_ms": self.lease.expires_at_ms,
            "snapshot_from_ms": self.snapshot_from_ms,
            "swapped_ms": self.swapped_ms,
            "keep_old_until_ms": self.keep_old_until_ms,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], stamp: Stamp) -> Rebuild:
        def optional_int(name: str) -> int | None:
            value = body.get(name)
            return None if value is None else int(value)

        return cls(
            table=body["table"],
            alias=body["alias"],
            old_index=body["old_index"],
            new_index=body["new_index"],
            phase=body["phase"],
            started_ms=int(body["started_ms"]),
            lease=Lease(body.get("owner"), int(body.get("expires_at_ms") or 0)),
            stamp=stamp,
            snapshot_from_ms=optional_int("snapshot_from_ms"),
            swapped_ms=optional_int("swapped_ms"),
            keep_old_until_ms=optional_int("keep_old_until_ms"),
        )


def _digest(*parts: str) -> str:
    # Stream ARNs hold slashes and colons; a digest keeps ids short and URL-safe.
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


def shard_doc_id(table: str, stream_arn: str, shard_id: str) -> str:
    return f"follow-{_digest(table, stream_arn, shard_id)}"


def worker_doc_id(role: str, table: str, worker: str) -> str:
    return f"worker-{_digest(role, table, worker)}"


def run_doc_id(table: str) -> str:
    return f"backfill-run-{_digest(table)}"


def range_doc_id(table: str, run_id: str, number: int) -> str:
    return f"backfill-{_digest(table, run_id)}-{number}"


def stream_doc_id(table: str, stream_arn: str) -> str:
    return f"follow-stream-{_digest(table, stream_arn)}"


def gap_doc_id(
    table: str, stream_arn: str, shard_id: str | None, kind: str, after: str | None
) -> str:
    # The same gap found again (each restart under on_gap = "stop") is the same document.
    return f"gap-{_digest(table, stream_arn, shard_id or '', kind, after or '')}"


def coverage_doc_id(table: str, index: str) -> str:
    return f"coverage-{_digest(table, index)}"


def rebuild_doc_id(table: str) -> str:
    return f"rebuild-{_digest(table)}"


class StateStore:
    """Leases, checkpoints and backfill progress, written with optimistic concurrency.

    `lease_seconds` is how long a lease lasts after each acquire/renew/write;
    owners renew every `renew_interval_s` (a third of it). `clock` returns
    epoch ms and is injectable so tests can expire leases without waiting.
    Every request goes through `sync.bulk` and its retries, under `policy`.
    """

    def __init__(
        self,
        client: OpenSearch,
        index: str = DEFAULT_INDEX,
        *,
        lease_seconds: float = 30.0,
        clock: Callable[[], int] = wall_clock_ms,
        policy: RetryPolicy | None = None,
        on_write_error: Callable[[int], None] | None = None,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self._client = client
        self.index = index
        self.lease_ms = int(lease_seconds * 1000)
        self._clock = clock
        self._policy = policy or RetryPolicy()
        self._bulk = Bulk(client, index, self._policy)
        self._reader = Reader(client, index, self._policy)
        self._ensured = False
        # Told how many write requests failed (retried or not), for the metrics.
        self._on_write_error = on_write_error or (lambda requests: None)

    @property
    def renew_interval_s(self) -> float:
        return self.lease_ms / 3000

    def now_ms(self) -> int:
        return self._clock()

    # ---- the index ---------------------------------------------------------

    def exists(self) -> bool:
        """Is there a state index? Creates nothing (`ks2os status` must write nothing).

        When there is one, later calls take it as there and do not create it either.
        """
        if self._ensured:
            return True
        request = functools.partial(self._client.indices.exists, index=self.index)
        self._ensured = bool(call(self._policy, f"looking for {self.index}", request))
        return self._ensured

    def ensure(self) -> None:
        """Create the state index if it does not exist (idempotent, race-safe)."""
        if self._ensured:
            return
        indices = self._client.indices
        doing = f"creating the state index {self.index}"
        if not call(self._policy, doing, functools.partial(indices.exists, index=self.index)):
            body = {
                "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-1"},
                "mappings": _MAPPING,
            }
            request = functools.partial(indices.create, index=self.index, body=body)
            try:
                call(self._policy, doing, request)
            except OpenSearchRefused as exc:
                if exc.error_type != "resource_already_exists_exception":
                    raise
        self._ensured = True

    # ---- raw documents -----------------------------------------------------

    def _read(self, doc_ids: Iterable[str]) -> dict[str, Document]:
        """The stored documents among `doc_ids`, read in real time."""
        wanted = dict.fromkeys(doc_ids)
        if not wanted:
            return {}
        self.ensure()
        return self._reader.get(wanted)

    def _create(self, doc_id: str, body: dict[str, Any]) -> Stamp | None:
        """Create a document; None when it exists already (someone else was first)."""
        (stamp,) = self._write_many([Action(doc_id, body, create=True)])
        return stamp

    def _replace(self, doc_id: str, body: dict[str, Any], stamp: Stamp) -> Stamp:
        """Overwrite a document only if it is still as we last saw it; else `LeaseLost`."""
        (written,) = self._write_many([Action(doc_id, body, expect=stamp)])
        if written is None:
            raise LeaseLost(f"state document {doc_id} was changed by another worker")
        return written

    def _write_many(self, actions: list[Action]) -> list[Stamp | None]:
        """Several documents in one bulk request, each conditional on its own stamp (or create).

        The answer holds, per action, its new stamp, or None where the condition
        failed (someone else changed or created the document). A retried request
        that did land the first time also comes back 409: if the stored
        document holds exactly our body, the write counts as done.
        """
        if not actions:
            return []
        self.ensure()
        if len({action.doc_id for action in actions}) != len(actions):
            raise ValueError("one document twice in one state bulk request")
        # Each failed request counts as it happens, not when the retries end.
        traffic = Traffic(on_retry=lambda reason: self._on_write_error(1))
        try:
            results = self._bulk.send(actions, traffic)
        except Exception:
            self._on_write_error(1)
            raise
        stale = [
            a.doc_id for a, r in zip(actions, results, strict=True) if r.verdict is Verdict.STALE
        ]
        current = self._read(doc_id for doc_id in stale if doc_id is not None)
        stamps: list[Stamp | None] = []
        for action, result in zip(actions, results, strict=True):
            if result.verdict is Verdict.APPLIED:
                stamps.append(result.stamp)
            elif result.verdict is Verdict.STALE:
                found = current.get(action.doc_id or "")
                stamps.append(
                    found.stamp if found is not None and found.body == action.body else None
                )
            else:
                raise TerminalError(
                    f"state index {self.index} refused {action.doc_id}: {result.reason}",
                    hint="check the state index's mapping, or set state.index to a new name",
                )
        return stamps

    def _lease(self, worker: str) -> Lease:
        return Lease(owner=worker, expires_at_ms=self.now_ms() + self.lease_ms)

    # ---- shard checkpoints ---------------------------------------------------

    def get_shards(
        self, table: str, stream_arn: str, shard_ids: Iterable[str]
    ) -> dict[str, ShardState]:
        """The stored state of the given shards; shards never touched are absent."""
        ids = {shard_doc_id(table, stream_arn, s): s for s in shard_ids}
        docs = self._read(ids)
        return {ids[i]: ShardState.from_body(doc.body, doc.stamp) for i, doc in docs.items()}

    def acquire_shard(
        self,
        table: str,
        stream_arn: str,
        shard_id: str,
        worker: str,
        *,
        start_version: int = 0,
        start_sequence: str | None = None,
    ) -> ShardState | None:
        """Take the shard's lease if it is free, ours or expired; None if someone holds it.

        A shard seen for the first time gets a checkpoint at its start, with
        `start_version` (the lineage floor) as the version to continue from and
        `start_sequence` (its listed `startingSequenceNumber`) kept. Finished
        shards are never leased.
        """
        current = self.get_shards(table, stream_arn, [shard_id]).get(shard_id)
        if current is None:
            fresh = ShardState(
                table,
                stream_arn,
                shard_id,
                None,
                start_version,
                False,
                None,
                0,
                self._lease(worker),
                Stamp(-1, -1),
                start_sequence,
            )
            stamp = self._create(fresh.doc_id, fresh.body())
            return None if stamp is None else replace(fresh, stamp=stamp)
        if current.finished or not current.lease.free_for(worker, self.now_ms()):
            return None
        if current.lease.owner not in (None, worker):
            log.warning(
                "taking over shard %s from %s (lease expired at %d)",
                shard_id,
                current.lease.owner,
                current.lease.expires_at_ms,
            )
        try:
            return self._update_shard(current, replace(current, lease=self._lease(worker)))
        except LeaseLost:
            return None  # another worker was faster

    def _update_shard(self, state: ShardState, new: ShardState) -> ShardState:
        return replace(new, stamp=self._replace(new.doc_id, new.body(), state.stamp))

    def renew_shard(self, state: ShardState) -> ShardState:
        """Extend our lease; `LeaseLost` if another worker took the shard."""
        return self._update_shard(state, replace(state, lease=self._lease(_owner(state.lease))))

    def checkpoint_shard(
        self, state: ShardState, sequence_number: str, version: int, *, gaps: int | None = None
    ) -> ShardState:
        """Record that every record up to `sequence_number` is applied; renews the lease."""
        new = replace(
            state,
            sequence_number=sequence_number,
            version=version,
            gaps=state.gaps if gaps is None else gaps,
            lease=self._lease(_owner(state.lease)),
        )
        return self._update_shard(state, new)

    def restart_shard(self, state: ShardState, version: int, *, gap: bool = True) -> ShardState:
        """Read the shard again from its trim horizon: after a gap (counted), or after
        losing records the index did not need (`gap=False`)."""
        new = replace(
            state,
            sequence_number=None,
            version=version,
            gaps=state.gaps + 1 if gap else state.gaps,
            lease=self._lease(_owner(state.lease)),
        )
        return self._update_shard(state, new)

    def finish_shard(
        self, state: ShardState, final_version: int, sequence_number: str | None = None
    ) -> ShardState:
        """The shard is read to its end: store its final version and free it for good."""
        new = replace(
            state,
            sequence_number=sequence_number or state.sequence_number,
            version=final_version,
            finished=True,
            final_version=final_version,
            lease=FREE,
        )
        return self._update_shard(state, new)

    def release_shard(self, state: ShardState) -> ShardState:
        """Give the lease up (clean stop) so another worker can take it at once."""
        return self._update_shard(state, replace(state, lease=FREE))

    def _list(self, job: str, table: str) -> list[Document]:
        """Every document of one kind for a table. Uses search: refreshes first."""
        self.ensure()
        self._reader.refresh()
        query = {"bool": {"filter": [{"term": {"job": job}}, {"term": {"table": table}}]}}
        return [doc for page in self._reader.scan(query) for doc in page]

    def list_shards(self, table: str, stream_arn: str | None = None) -> list[ShardState]:
        """Every shard state of a table (optionally of one stream). Uses search."""
        states = [ShardState.from_body(doc.body, doc.stamp) for doc in self._list("follow", table)]
        return [s for s in states if stream_arn is None or s.stream_arn == stream_arn]

    # ---- streams of a table, gaps, coverage ---------------------------------------

    def get_streams(self, table: str, stream_arns: Iterable[str]) -> dict[str, StreamState]:
        """The stored state of the given streams; streams no follower began are absent."""
        ids = {stream_doc_id(table, arn): arn for arn in stream_arns}
        docs = self._read(ids)
        return {ids[i]: StreamState.from_body(doc.body, doc.stamp) for i, doc in docs.items()}

    def begin_stream(self, table: str, stream_arn: str, label: str) -> StreamState:
        """The stream's document, created unfinished by the first follower that reaches it."""
        while True:
            current = self.get_streams(table, [stream_arn]).get(stream_arn)
            if current is not None:
                return current
            fresh = StreamState(table, stream_arn, label, False, None, Stamp(-1, -1))
            stamp = self._create(fresh.doc_id, fresh.body())
            if stamp is not None:
                return replace(fresh, stamp=stamp)
            # Another follower created it between our read and our write: read theirs.

    def finish_stream(self, state: StreamState, final_version: int) -> StreamState:
        """Every shard of the stream is read to its end: keep its final version for good."""
        new = replace(state, finished=True, final_version=final_version)
        try:
            return replace(new, stamp=self._replace(new.doc_id, new.body(), state.stamp))
        except LeaseLost:
            # Another follower finished it first, from the same shard documents.
            current = self.get_streams(state.table, [state.stream_arn]).get(state.stream_arn)
            if current is not None and current.finished:
                return current
            raise

    def list_stream_states(self, table: str) -> list[StreamState]:
        """Every stream of a table that a follower began. Uses search: refreshes first."""
        return [
            StreamState.from_body(doc.body, doc.stamp) for doc in self._list("follow-stream", table)
        ]

    def record_gap(self, gap: GapRecord) -> bool:
        """Store a gap; False when the same gap was recorded before (its first finding stays)."""
        return self._create(gap.doc_id, gap.body()) is not None

    def list_gaps(self, table: str) -> list[GapRecord]:
        """Every gap recorded for a table, oldest finding first. Uses search: refreshes first."""
        gaps = [GapRecord.from_body(doc.body) for doc in self._list("gap", table)]
        return sorted(gaps, key=lambda g: (g.found_at_ms, g.doc_id))

    def get_coverage(self, table: str, index: str) -> Coverage | None:
        found = self._read([coverage_doc_id(table, index)]).get(coverage_doc_id(table, index))
        return None if found is None else Coverage.from_body(found.body, found.stamp)

    def cover_from(self, table: str, index: str, since_ms: int) -> Coverage:
        """Record that `index` needs every stream record from `since_ms` on; the earliest wins."""
        while True:
            current = self.get_coverage(table, index)
            if current is not None and current.since_ms <= since_ms:
                return current
            new = Coverage(table, index, since_ms, Stamp(-1, -1))
            if current is None:
                stamp = self._create(new.doc_id, new.body())
                if stamp is not None:
                    return replace(new, stamp=stamp)
                continue  # another job recorded one first: compare with theirs
            try:
                return replace(new, stamp=self._replace(new.doc_id, new.body(), current.stamp))
            except LeaseLost:
                continue  # moved by another job meanwhile: compare again

    # ---- rebuilds (ks2os reindex) --------------------------------------------------

    def get_rebuild(self, table: str) -> Rebuild | None:
        """The table's rebuild record (any phase), read in real time; None if never rebuilt."""
        doc_id = rebuild_doc_id(table)
        found = self._read([doc_id]).get(doc_id)
        return None if found is None else Rebuild.from_body(found.body, found.stamp)

    def begin_rebuild(
        self,
        table: str,
        alias: str,
        old_index: str,
        new_index: str,
        worker: str,
        *,
        replacing: Rebuild | None = None,
    ) -> Rebuild:
        """Record a new rebuild in phase `building`, leased by `worker`.

        `replacing` is the table's previous record (done or aborted), overwritten
        only if unchanged since read; `LeaseLost` when another run got there first.
        """
        new = Rebuild(
            table,
            alias,
            old_index,
            new_index,
            "building",
            self.now_ms(),
            self._lease(worker),
            Stamp(-1, -1),
        )
        if replacing is None:
            stamp = self._create(new.doc_id, new.body())
            if stamp is None:
                raise LeaseLost(f"a rebuild of {table} was begun by another run")
            return replace(new, stamp=stamp)
        return replace(new, stamp=self._replace(new.doc_id, new.body(), replacing.stamp))

    def update_rebuild(self, current: Rebuild, new: Rebuild) -> Rebuild:
        """Write `new` (a changed `current`) if nobody changed it meanwhile; else `LeaseLost`."""
        return replace(new, stamp=self._replace(new.doc_id, new.body(), current.stamp))

    def lease_rebuild(self, current: Rebuild, worker: str) -> Rebuild | None:
        """Take or renew the rebuild's lease for `worker`; None when another live run holds it."""
        if not current.lease.free_for(worker, self.now_ms()):
            return None
        try:
            return self.update_rebuild(current, replace(current, lease=self._lease(worker)))
        except LeaseLost:
            return None

    # ---- workers present ------------------------------------------------------

    def heartbeat(self, role: str, table: str, worker: str, writes_to: Iterable[str] = ()) -> None:
        """Say `worker` is alive (for one lease period); fair shares count live workers.

        `writes_to`: the indexes it writes every change to (a rebuild waits until
        every live follower writes its new index too).
        """
        body = {
            "job": "worker",
            "role": role,
            "table": table,
            "owner": worker,
            "expires_at_ms": self.now_ms() + self.lease_ms,
            "writes_to": sorted(writes_to),
        }
        # Our own document: nobody else writes it, so no condition is needed.
        self._write_many([Action(worker_doc_id(role, table, worker), body)])

    def leave(self, role: str, table: str, worker: str) -> None:
        """A clean stop: stop counting `worker` at once."""
        doc_id = worker_doc_id(role, table, worker)
        request = functools.partial(self._client.delete, index=self.index, id=doc_id)
        try:
            call(self._policy, f"removing {worker} from {self.index}", request)
        except OpenSearchRefused as exc:
            if exc.status != 404:
                raise

    def worker_documents(self, table: str, *, expired_before_ms: int) -> list[Document]:
        """Heartbeats of `table`'s workers that ran out before then (for cleanup). Uses search."""
        return [
            doc
            for doc in self._list("worker", table)
            if int(doc.body.get("expires_at_ms") or 0) < expired_before_ms
        ]

    def live_workers(self, role: str, table: str) -> set[str]:
        """Workers of `role` on `table` whose heartbeat has not expired."""
        return set(self.live_worker_targets(role, table))

    def live_worker_targets(self, role: str, table: str) -> dict[str, frozenset[str]]:
        """Each live worker of `role` on `table`, with the indexes its last heartbeat named."""
        self.ensure()
        self._reader.refresh()
        query = {"bool": {"filter": [{"term": {"job": "worker"}}, {"term": {"table": table}}]}}
        now = self.now_ms()
        return {
            doc.body["owner"]: frozenset(doc.body.get("writes_to") or ())
            for doc in self._reader.search(query, size=_MAX_WORKERS)
            if doc.body.get("role") == role and int(doc.body.get("expires_at_ms") or 0) >= now
        }

    # ---- backfill runs and ranges ----------------------------------------------

    def get_run(self, table: str) -> BackfillRun | None:
        found = self._read([run_doc_id(table)]).get(run_doc_id(table))
        return None if found is None else BackfillRun.from_body(found.body, found.stamp)

    def start_run(
        self,
        table: str,
        run_id: str,
        ranges: list[tuple[int, int]],
        *,
        replacing: BackfillRun | None = None,
    ) -> BackfillRun:
        """Make `run_id` the table's current run with these ranges.

        Exactly one of several workers planning at once wins (create, or a
        conditional overwrite of `replacing`); the others get `LeaseLost` and
        should read the winner's run with `get_run`.
        """
        run = BackfillRun(table, run_id, len(ranges), self.now_ms(), False, Stamp(-1, -1))
        # Ranges first (one request): a run document must never point at missing ranges.
        states = [
            RangeState(table, run_id, number, start, end, False, None, 0, FREE, Stamp(-1, -1))
            for number, (start, end) in enumerate(ranges)
        ]
        self._write_many([Action(s.doc_id, s.body(), create=True) for s in states])
        if replacing is None:
            stamp = self._create(run_doc_id(table), run.body())
            if stamp is None:
                raise LeaseLost(f"another worker started a backfill run of {table} first")
        else:
            stamp = self._replace(run_doc_id(table), run.body(), replacing.stamp)
        return replace(run, stamp=stamp)

    def forget_run(self, table: str) -> None:
        """Delete a backfill's run and range documents (an aborted reindex's new index)."""
        run = self.get_run(table)
        if run is None:
            return
        ranges = [Document(s.doc_id, s.body(), s.stamp) for s in self.list_ranges(run)]
        run_doc = Document(run_doc_id(table), run.body(), run.stamp)
        # Ranges first: a run document never points at ranges already gone.
        for documents in (ranges, [run_doc]):
            if documents:
                self._bulk.send([Action.delete_of(d) for d in documents], Traffic())

    def finish_run(self, run: BackfillRun) -> BackfillRun:
        new = replace(run, finished=True)
        return replace(new, stamp=self._replace(run_doc_id(run.table), new.body(), run.stamp))

    def list_ranges(self, run: BackfillRun) -> list[RangeState]:
        ids = [range_doc_id(run.table, run.run_id, n) for n in range(run.range_count)]
        docs = self._read(ids)
        return [RangeState.from_body(docs[i].body, docs[i].stamp) for i in ids if i in docs]

    def current_ranges(self, states: Iterable[RangeState]) -> dict[int, RangeState]:
        """The stored state of these ranges now (real-time reads), by range number."""
        docs = self._read([s.doc_id for s in states])
        current = [RangeState.from_body(doc.body, doc.stamp) for doc in docs.values()]
        return {state.number: state for state in current}

    def get_ranges(self, run: BackfillRun, numbers: Iterable[int]) -> list[RangeState]:
        """The stored state of these ranges of `run` (one read, whatever the run's size)."""
        ids = [range_doc_id(run.table, run.run_id, n) for n in numbers]
        docs = self._read(ids)
        return [RangeState.from_body(docs[i].body, docs[i].stamp) for i in ids if i in docs]

    def extend_run(
        self, run: BackfillRun, ranges: list[tuple[int, int]]
    ) -> tuple[BackfillRun, list[RangeState]]:
        """Add ranges to `run`, numbered from its range count on (a split of a range's rest).

        The run document is raised first, conditional on `run` as last seen
        (`LeaseLost` if it changed), so of several workers extending at once
        exactly one owns the new numbers before any of their documents exists.
        A crash before the range documents are written leaves numbers without
        documents, which `list_ranges` skips. Returns the run as stored and the
        new ranges that were created.
        """
        grown = replace(run, range_count=run.range_count + len(ranges))
        grown = replace(grown, stamp=self._replace(run_doc_id(run.table), grown.body(), run.stamp))
        states = [
            RangeState(run.table, run.run_id, n, start, end, False, None, 0, FREE, Stamp(-1, -1))
            for n, (start, end) in enumerate(ranges, start=run.range_count)
        ]
        stamps = self._write_many([Action(s.doc_id, s.body(), create=True) for s in states])
        created = [
            replace(s, stamp=stamp)
            for s, stamp in zip(states, stamps, strict=True)
            if stamp is not None
        ]
        return grown, created

    def range_leases(
        self, states: Iterable[RangeState], worker: str, limit: int
    ) -> list[tuple[RangeState, RangeState]]:
        """(as seen, leased by `worker`) for up to `limit` ranges that `worker` may take.

        Ranges done, or leased by someone else and not expired, are skipped.
        Pass the pairs to `update_ranges` (maybe with other updates, in one
        request): each lease is conditional on the range as seen, so a stale
        view only means fewer leases.
        """
        now = self.now_ms()
        pairs: list[tuple[RangeState, RangeState]] = []
        for state in states:
            if len(pairs) >= limit:
                break
            if state.done or not state.lease.free_for(worker, now):
                continue
            if state.lease.owner not in (None, worker):
                log.warning(
                    "taking over backfill range %d from %s", state.number, state.lease.owner
                )
            pairs.append((state, replace(state, lease=self._lease(worker))))
        return pairs

    def update_ranges(
        self, updates: Iterable[tuple[RangeState, RangeState]]
    ) -> list[RangeState | None]:
        """Write several ranges in one request, each conditional on the range as last seen.

        `updates` are (as last seen, new) pairs. Per pair, the answer is the new
        state as stored, or None where another worker changed the range since
        (its lease is lost: drop it).
        """
        pairs = list(updates)
        stamps = self._write_many(
            [Action(new.doc_id, new.body(), expect=old.stamp) for old, new in pairs]
        )
        return [
            None if stamp is None else replace(new, stamp=stamp)
            for (_, new), stamp in zip(pairs, stamps, strict=True)
        ]

    # New states of a leased range, to write with `update_ranges`.

    def renewed(self, state: RangeState) -> RangeState:
        """The lease extended; `LeaseLost` if the range is not leased."""
        return replace(state, lease=self._lease(_owner(state.lease)))

    def progressed(self, state: RangeState, last_token: int | None, rows: int) -> RangeState:
        """Every row up to `last_token` written (None: nothing yet); the lease extended."""
        return replace(
            state, last_token=last_token, rows=rows, lease=self._lease(_owner(state.lease))
        )

    @staticmethod
    def finished(state: RangeState, rows: int) -> RangeState:
        """Every row of the range written: done for good, its lease freed."""
        return replace(state, done=True, rows=rows, lease=FREE)

    @staticmethod
    def released(state: RangeState) -> RangeState:
        return replace(state, lease=FREE)


def _owner(lease: Lease) -> str:
    if lease.owner is None:
        raise LeaseLost("this unit is not leased")
    return lease.owner
