"""Durable job state in an OpenSearch index: shard checkpoints, backfill ranges, leases.

Every document guards one unit of work (a stream shard, a backfill token
range) and carries its lease: the owning worker's id and when the lease runs
out (epoch ms). Every write is conditional on the `_seq_no`/`_primary_term`
the writer last saw (documents are created with `op_type=create`), so two
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

Documents are found by id (real-time GET/mget), never by search, so nothing
here waits for an index refresh.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import backoff
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConflictError, ConnectionError, NotFoundError, RequestError

from sync.errors import Ks2osError, OpenSearchUnavailable

log = logging.getLogger(__name__)

DEFAULT_INDEX = ".ks2os-state"

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
class Stamp:
    """What a conditional write must match: the document as this worker last saw it."""

    seq_no: int
    primary_term: int


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
    parents' final versions.
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

    @property
    def doc_id(self) -> str:
        return shard_doc_id(self.table, self.stream_arn, self.shard_id)

    def source(self) -> dict[str, Any]:
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
        }

    @classmethod
    def from_source(cls, src: Mapping[str, Any], stamp: Stamp) -> ShardState:
        return cls(
            table=src["table"],
            stream_arn=src["stream_arn"],
            shard_id=src["shard_id"],
            sequence_number=src.get("sequence_number"),
            version=int(src.get("version") or 0),
            finished=bool(src.get("finished")),
            final_version=src.get("final_version"),
            gaps=int(src.get("gaps") or 0),
            lease=Lease(src.get("owner"), int(src.get("expires_at_ms") or 0)),
            stamp=stamp,
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

    def source(self) -> dict[str, Any]:
        return {
            "job": "backfill-run",
            "table": self.table,
            "run_id": self.run_id,
            "range_count": self.range_count,
            "started_at_ms": self.started_at_ms,
            "finished": self.finished,
        }

    @classmethod
    def from_source(cls, src: Mapping[str, Any], stamp: Stamp) -> BackfillRun:
        return cls(
            table=src["table"],
            run_id=src["run_id"],
            range_count=int(src["range_count"]),
            started_at_ms=int(src["started_at_ms"]),
            finished=bool(src.get("finished")),
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

    def source(self) -> dict[str, Any]:
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
    def from_source(cls, src: Mapping[str, Any], stamp: Stamp) -> RangeState:
        last = src.get("last_token")
        return cls(
            table=src["table"],
            run_id=src["run_id"],
            number=int(src["number"]),
            range_start=int(src["range_start"]),
            range_end=int(src["range_end"]),
            done=bool(src.get("done")),
            last_token=None if last is None else int(last),
            rows=int(src.get("rows") or 0),
            lease=Lease(src.get("owner"), int(src.get("expires_at_ms") or 0)),
            stamp=stamp,
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


_transient = backoff.on_exception(
    backoff.expo, ConnectionError, max_time=30, max_value=2, logger=log
)
# Items of a state bulk request that come back 429/5xx are sent again, for at most this long.
_ITEM_RETRY_S = 30.0


class StateStore:
    """Leases, checkpoints and backfill progress, written with optimistic concurrency.

    `lease_seconds` is how long a lease lasts after each acquire/renew/write;
    owners renew every `renew_interval_s` (a third of it). `clock` returns
    epoch ms and is injectable so tests can expire leases without waiting.
    """

    def __init__(
        self,
        client: OpenSearch,
        index: str = DEFAULT_INDEX,
        *,
        lease_seconds: float = 30.0,
        clock: Callable[[], int] = wall_clock_ms,
    ) -> None:
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be positive")
        self._client = client
        self.index = index
        self.lease_ms = int(lease_seconds * 1000)
        self._clock = clock
        self._ensured = False

    @property
    def renew_interval_s(self) -> float:
        return self.lease_ms / 3000

    def now_ms(self) -> int:
        return self._clock()

    # ---- the index ---------------------------------------------------------

    @_transient
    def ensure(self) -> None:
        """Create the state index if it does not exist (idempotent, race-safe)."""
        if self._ensured:
            return
        if not self._client.indices.exists(index=self.index):
            try:
                self._client.indices.create(
                    index=self.index,
                    body={
                        "settings": {"number_of_shards": 1, "auto_expand_replicas": "0-1"},
                        "mappings": _MAPPING,
                    },
                )
            except RequestError as exc:
                if "already_exists" not in str(exc.error):
                    raise
        self._ensured = True

    # ---- raw documents -----------------------------------------------------

    @_transient
    def _get(self, doc_id: str) -> tuple[dict[str, Any], Stamp] | None:
        try:
            hit = self._client.get(index=self.index, id=doc_id)
        except NotFoundError:
            return None
        return hit["_source"], Stamp(hit["_seq_no"], hit["_primary_term"])

    @_transient
    def _mget(self, doc_ids: list[str]) -> dict[str, tuple[dict[str, Any], Stamp]]:
        if not doc_ids:
            return {}
        self.ensure()
        found: dict[str, tuple[dict[str, Any], Stamp]] = {}
        for start in range(0, len(doc_ids), 1000):
            chunk = doc_ids[start : start + 1000]
            reply = self._client.mget(index=self.index, body={"ids": chunk})
            for doc in reply["docs"]:
                if doc.get("found"):
                    found[doc["_id"]] = (
                        doc["_source"],
                        Stamp(doc["_seq_no"], doc["_primary_term"]),
                    )
        return found

    def _create(self, doc_id: str, source: dict[str, Any]) -> Stamp | None:
        """Create a document; None when it exists already (someone else was first)."""
        self.ensure()
        try:
            reply = self._index(doc_id, source, op_type="create")
        except ConflictError:
            # Same as in `_replace`: a retried create that landed the first time.
            current = self._get(doc_id)
            if current is not None and current[0] == source:
                return current[1]
            return None
        return Stamp(reply["_seq_no"], reply["_primary_term"])

    def _replace(self, doc_id: str, source: dict[str, Any], stamp: Stamp) -> Stamp:
        """Overwrite a document only if it is still as we last saw it; else `LeaseLost`."""
        try:
            reply = self._index(
                doc_id, source, if_seq_no=stamp.seq_no, if_primary_term=stamp.primary_term
            )
        except ConflictError:
            # A retried write that did land the first time also comes back 409:
            # if the stored document is exactly ours, the write succeeded.
            current = self._get(doc_id)
            if current is not None and current[0] == source:
                return current[1]
            raise LeaseLost(f"state document {doc_id} was changed by another worker") from None
        return Stamp(reply["_seq_no"], reply["_primary_term"])

    @_transient
    def _index(self, doc_id: str, source: dict[str, Any], **params: Any) -> dict[str, Any]:
        reply: dict[str, Any] = self._client.index(
            index=self.index, id=doc_id, body=source, **params
        )
        return reply

    @_transient
    def _bulk(self, lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        reply = self._client.bulk(index=self.index, body=lines)
        return [next(iter(item.values())) for item in reply["items"]]

    def _write_many(
        self, op: str, items: list[tuple[str, dict[str, Any], Stamp | None]]
    ) -> list[Stamp | None]:
        """Several documents in one bulk request, each conditional on its own stamp.

        `op` is "index" (conditional overwrite, `stamp` required) or "create".
        The answer holds, per item, its new stamp or None where the condition
        failed (someone else changed or created the document). Like `_replace`,
        a 409 on a document that already holds exactly our source (a retried
        request that landed) counts as written.
        """
        if not items:
            return []
        self.ensure()
        if len({doc_id for doc_id, _, _ in items}) != len(items):
            raise ValueError("one document twice in one state bulk request")
        results: list[Stamp | None] = [None] * len(items)
        conflicts: list[int] = []
        todo = list(range(len(items)))
        deadline = time.monotonic() + _ITEM_RETRY_S
        delay = 0.05
        while todo:
            lines: list[dict[str, Any]] = []
            for i in todo:
                doc_id, source, stamp = items[i]
                action: dict[str, Any] = {"_id": doc_id}
                if stamp is not None:
                    action["if_seq_no"] = stamp.seq_no
                    action["if_primary_term"] = stamp.primary_term
                lines += [{op: action}, source]
            again: list[int] = []
            for i, item in zip(todo, self._bulk(lines), strict=True):
                status = int(item.get("status", 500))
                if 200 <= status < 300:
                    results[i] = Stamp(item["_seq_no"], item["_primary_term"])
                elif status == 409:
                    conflicts.append(i)
                elif status == 429 or status >= 500:
                    again.append(i)
                else:
                    raise Ks2osError(f"state index refused {items[i][0]}: {item.get('error')}")
            if again and time.monotonic() + delay > deadline:
                raise OpenSearchUnavailable(
                    f"state index kept refusing {len(again)} item(s) for {_ITEM_RETRY_S:.0f} s"
                )
            if again:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
            todo = again
        if conflicts:
            current = self._mget([items[i][0] for i in conflicts])
            for i in conflicts:
                found = current.get(items[i][0])
                if found is not None and found[0] == items[i][1]:
                    results[i] = found[1]
        return results

    def _lease(self, worker: str) -> Lease:
        return Lease(owner=worker, expires_at_ms=self.now_ms() + self.lease_ms)

    # ---- shard checkpoints ---------------------------------------------------

    def get_shards(
        self, table: str, stream_arn: str, shard_ids: Iterable[str]
    ) -> dict[str, ShardState]:
        """The stored state of the given shards; shards never touched are absent."""
        ids = {shard_doc_id(table, stream_arn, s): s for s in shard_ids}
        docs = self._mget(list(ids))
        return {ids[i]: ShardState.from_source(src, stamp) for i, (src, stamp) in docs.items()}

    def get_shard(self, table: str, stream_arn: str, shard_id: str) -> ShardState | None:
        return self.get_shards(table, stream_arn, [shard_id]).get(shard_id)

    def acquire_shard(
        self,
        table: str,
        stream_arn: str,
        shard_id: str,
        worker: str,
        *,
        start_version: int = 0,
    ) -> ShardState | None:
        """Take the shard's lease if it is free, ours or expired; None if someone holds it.

        A shard seen for the first time gets a checkpoint at its start, with
        `start_version` (the lineage floor) as the version to continue from.
        Finished shards are never leased.
        """
        current = self.get_shard(table, stream_arn, shard_id)
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
            )
            stamp = self._create(fresh.doc_id, fresh.source())
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
        return replace(new, stamp=self._replace(new.doc_id, new.source(), state.stamp))

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

    def restart_shard(self, state: ShardState, version: int) -> ShardState:
        """After a gap: read the shard again from its trim horizon, counting the gap."""
        new = replace(
            state,
            sequence_number=None,
            version=version,
            gaps=state.gaps + 1,
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

    @_transient
    def list_shards(self, table: str, stream_arn: str | None = None) -> list[ShardState]:
        """Every shard state of a table (optionally one stream). Uses search: refreshes first."""
        self.ensure()
        self._client.indices.refresh(index=self.index)
        filters: list[dict[str, Any]] = [
            {"term": {"job": "follow"}},
            {"term": {"table": table}},
        ]
        if stream_arn is not None:
            filters.append({"term": {"stream_arn": stream_arn}})
        return [ShardState.from_source(src, stamp) for src, stamp in self._search(filters)]

    def _search(self, filters: list[dict[str, Any]]) -> list[tuple[dict[str, Any], Stamp]]:
        reply = self._client.search(
            index=self.index,
            body={
                "query": {"bool": {"filter": filters}},
                "seq_no_primary_term": True,
                "size": 10_000,
            },
        )
        return [
            (hit["_source"], Stamp(hit["_seq_no"], hit["_primary_term"]))
            for hit in reply["hits"]["hits"]
        ]

    # ---- workers present ------------------------------------------------------

    def heartbeat(self, role: str, table: str, worker: str) -> None:
        """Say `worker` is alive (for one lease period); fair shares count live workers."""
        self.ensure()
        source = {
            "job": "worker",
            "role": role,
            "table": table,
            "owner": worker,
            "expires_at_ms": self.now_ms() + self.lease_ms,
        }
        # Our own document: nobody else writes it, so no condition is needed.
        self._index(worker_doc_id(role, table, worker), source)

    def leave(self, role: str, table: str, worker: str) -> None:
        """A clean stop: stop counting `worker` at once."""
        with contextlib.suppress(NotFoundError):
            self._client.delete(index=self.index, id=worker_doc_id(role, table, worker))

    @_transient
    def live_workers(self, role: str, table: str) -> set[str]:
        """Workers of `role` on `table` whose heartbeat has not expired."""
        self.ensure()
        self._client.indices.refresh(index=self.index)
        hits = self._search([{"term": {"job": "worker"}}, {"term": {"table": table}}])
        now = self.now_ms()
        return {
            src["owner"]
            for src, _ in hits
            if src.get("role") == role and int(src.get("expires_at_ms") or 0) >= now
        }

    # ---- backfill runs and ranges ----------------------------------------------

    def get_run(self, table: str) -> BackfillRun | None:
        self.ensure()
        found = self._get(run_doc_id(table))
        return None if found is None else BackfillRun.from_source(*found)

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
        self._write_many("create", [(s.doc_id, s.source(), None) for s in states])
        if replacing is None:
            stamp = self._create(run_doc_id(table), run.source())
            if stamp is None:
                raise LeaseLost(f"another worker started a backfill run of {table} first")
        else:
            stamp = self._replace(run_doc_id(table), run.source(), replacing.stamp)
        return replace(run, stamp=stamp)

    def finish_run(self, run: BackfillRun) -> BackfillRun:
        new = replace(run, finished=True)
        return replace(new, stamp=self._replace(run_doc_id(run.table), new.source(), run.stamp))

    def list_ranges(self, run: BackfillRun) -> list[RangeState]:
        ids = [range_doc_id(run.table, run.run_id, n) for n in range(run.range_count)]
        docs = self._mget(ids)
        return [RangeState.from_source(*docs[i]) for i in ids if i in docs]

    def get_ranges(self, run: BackfillRun, numbers: Iterable[int]) -> list[RangeState]:
        """The stored state of these ranges of `run` (one read, whatever the run's size)."""
        ids = [range_doc_id(run.table, run.run_id, n) for n in numbers]
        docs = self._mget(ids)
        return [RangeState.from_source(*docs[i]) for i in ids if i in docs]

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
        grown = replace(
            grown, stamp=self._replace(run_doc_id(run.table), grown.source(), run.stamp)
        )
        states = [
            RangeState(run.table, run.run_id, n, start, end, False, None, 0, FREE, Stamp(-1, -1))
            for n, (start, end) in enumerate(ranges, start=run.range_count)
        ]
        stamps = self._write_many("create", [(s.doc_id, s.source(), None) for s in states])
        created = [
            replace(s, stamp=stamp)
            for s, stamp in zip(states, stamps, strict=True)
            if stamp is not None
        ]
        return grown, created

    def acquire_range(self, state: RangeState, worker: str) -> RangeState | None:
        """Lease a range (as seen in `list_ranges`) if it is free or expired and not done."""
        leased = self.acquire_ranges([state], worker, limit=1)
        return leased[0] if leased else None

    def acquire_ranges(
        self, states: Iterable[RangeState], worker: str, *, limit: int
    ) -> list[RangeState]:
        """Lease up to `limit` of these ranges (as seen in `list_ranges`) in one request.

        Ranges done, or leased by someone else and not expired, are skipped;
        each lease is conditional on the range as seen, so a stale view only
        means fewer leases. Returns the ranges leased, in the order given.
        """
        leases = self.range_leases(states, worker, limit)
        return [s for s in self.update_ranges(leases) if s is not None]

    def range_leases(
        self, states: Iterable[RangeState], worker: str, limit: int
    ) -> list[tuple[RangeState, RangeState]]:
        """(as seen, leased by `worker`) for up to `limit` ranges that `worker` may take.

        Pass them to `update_ranges` (maybe with other updates, in one request).
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
            "index", [(new.doc_id, new.source(), old.stamp) for old, new in pairs]
        )
        return [
            None if stamp is None else replace(new, stamp=stamp)
            for (_, new), stamp in zip(pairs, stamps, strict=True)
        ]

    def _update_range(self, state: RangeState, new: RangeState) -> RangeState:
        return replace(new, stamp=self._replace(new.doc_id, new.source(), state.stamp))

    # New states of a leased range, to write with `update_ranges` (or the methods below).

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

    def renew_range(self, state: RangeState) -> RangeState:
        return self._update_range(state, self.renewed(state))

    def progress_range(self, state: RangeState, last_token: int, rows: int) -> RangeState:
        """Record that every row up to `last_token` is written; renews the lease."""
        return self._update_range(state, self.progressed(state, last_token, rows))

    def finish_range(self, state: RangeState, rows: int) -> RangeState:
        return self._update_range(state, self.finished(state, rows))

    def release_range(self, state: RangeState) -> RangeState:
        return self._update_range(state, self.released(state))


def _owner(lease: Lease) -> str:
    if lease.owner is None:
        raise LeaseLost("this unit is not leased")
    return lease.owner
