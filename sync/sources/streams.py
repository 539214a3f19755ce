"""The CDC source: a table's streams, their shard graphs, and a reader per shard.

- **Streams**: every stream of the table that ListStreams gives, oldest first
  (a label is the stream's creation time). Re-enabling CDC makes a new stream
  and leaves the old one DISABLED, readable for 24 h; the follower reads a
  table's streams as one lineage (sync/jobs/follow.py). GetStream (paginated)
  lists a stream's shards and their parents.
- **Lineage**: a shard is readable when every one of its parents is finished
  (read until GetRecords returned no `nextShardIterator`); a merge child has
  several parents. A parent listed without `endingSequenceNumber` may still
  be open although its children exist, so closing is decided by the reader,
  never by the listing. A shard the listing no longer shows but the state
  store holds unfinished is an *orphan*: it is read from its checkpoint like
  any other, and what the stream lost of it is a gap (`missing_parents`,
  `orphans`).
- **Versions** (sync/version.py): each record gets
  `next_stream_version(createdAt, previous)` in shard order; a shard starts
  from its checkpoint's version, or from `lineage_floor` of its parents'
  final versions and its stream's floor (above every version of the
  table's previous stream). So a restart or a takeover recomputes the same
  versions.
- **Reader**: iterators from the checkpoint (`AFTER_SEQUENCE_NUMBER`); from
  the shard's start with `AT_SEQUENCE_NUMBER` of its `startingSequenceNumber`
  when the index may need its first records (TrimmedDataAccess then says they
  are gone), else `TRIM_HORIZON`; GetRecords with `maxResults`, a new iterator
  on `ExpiredIterator`, backoff on throttling and server errors. Records lost
  to the stream (`TrimmedDataAccess`, `ResourceNotFoundException` for a shard
  not read to its end) come back as a `GapKind` for the caller's `on_gap`
  policy. A record that cannot become a change (undecodable, or its row
  lookup fails for good) comes back raw as a `BadRecord` for the dead-letter
  store; lookups that fail transiently are retried.

This module never talks to OpenSearch.
"""

from __future__ import annotations

import datetime as dt
import enum
import functools
import logging
import math
import threading
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
from botocore.exceptions import ConnectionError as BotoConnectionError
from cassandra.cluster import ResultSet, Session
from cassandra.query import PreparedStatement

from sync.config import STREAM_RETENTION_S
from sync.errors import (
    ConfigError,
    DecodeError,
    Ks2osError,
    StreamsRefused,
    TerminalError,
    TransientError,
)
from sync.keyspaces import (
    TableInfo,
    cql_errors,
    qualified,
    quote,
    service_now_ms,
)
from sync.model import Change, Op, Provenance, StreamRead
from sync.retry import RetryPolicy
from sync.sources.getrecords import raw_get_records
from sync.sources.records import ImageUnavailable, decode_record, is_replicated
from sync.sources.rows import (
    READ_CONSISTENCY,
    decode_row,
    expiring_columns,
    expiry_ms,
    select_list,
    ttl_alias,
)
from sync.version import lineage_floor, next_stream_version

log = logging.getLogger(__name__)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_RETRYABLE_CODES = frozenset(
    {"ThrottlingException", "InternalServerException", "ServiceUnavailable", "RequestTimeout"}
)


class StreamGap(TerminalError):
    """The index needs changes that no stream holds any more (see `GapKind`)."""


class GapKind(enum.StrEnum):
    """How changes the index needed were found missing from the stream."""

    TRIMMED = "trimmed"  # records after a shard's checkpoint were trimmed before being read
    START_TRIMMED = "start-trimmed"  # a shard read from its start had lost its first records
    SHARD_GONE = "shard-gone"  # the stream no longer holds a shard not read to its end
    STREAM_SWITCH = "stream-switch"  # CDC was off between two streams: writes reached none


class StreamGone(Ks2osError):
    """GetStream: the stream no longer exists (DISABLED longer than the retention period)."""


# Keyspaces keeps stream records 24 hours, and the period cannot be changed.
RETENTION_MS = STREAM_RETENTION_S * 1000
# Service clocks read through different doors (CQL `now()`, `createdAt`, the
# stream's trim point, GetStream's creation times) may disagree by a little;
# every comparison between them gives this much away, in the safe direction.
CLOCK_MARGIN_MS = 5 * 60 * 1000


def trim_may_lose_needed(since_ms: int, now_ms: int) -> bool:
    """Could records the index needs (created at or after `since_ms`) have been trimmed by now?

    The stream trims only records older than its retention period, so when
    `since_ms` is later than `now - retention` (with the clock margin) every
    trimmed record is older than anything the index needs: losing it is no gap.
    """
    return since_ms <= now_ms - RETENTION_MS + CLOCK_MARGIN_MS


def switch_may_lose_needed(since_ms: int, window_end_ms: int) -> bool:
    """Could writes made before `window_end_ms` (a new stream's creation) be needed by the index?"""
    return since_ms < window_end_ms + CLOCK_MARGIN_MS


# ---- the shard graph (pure) ---------------------------------------------------


def sequence_key(sequence_number: str) -> tuple[int, str]:
    """Order of sequence numbers within one shard: by length, then lexically."""
    return (len(sequence_number), sequence_number)


@dataclass(frozen=True, slots=True)
class Shard:
    shard_id: str
    parents: tuple[str, ...] = ()
    starting_sequence_number: str | None = None
    ending_sequence_number: str | None = None  # None: open, as far as the listing knows
    listed: bool = True  # False: an orphan, known from the state store only


@dataclass(frozen=True)
class StreamDescription:
    stream_arn: str
    status: str  # ENABLING | ENABLED | DISABLING | DISABLED
    view_type: str  # NEW_AND_OLD_IMAGES | NEW_IMAGE | OLD_IMAGE | KEYS_ONLY
    shards: Mapping[str, Shard]
    created_ms: int | None = None  # creationRequestDateTime (service clock)


@dataclass(frozen=True)
class StreamSummary:
    """One stream of a table, as ListStreams names it."""

    stream_arn: str
    label: str  # the creation time, `YYYY-MM-DDTHH:MM:SS.mmm`: orders a table's streams


@dataclass(frozen=True, slots=True)
class ShardProgress:
    """What the state store says about one shard, as lineage planning needs it."""

    finished: bool
    final_version: int | None = None
    start_sequence: str | None = None  # its startingSequenceNumber when it was first acquired


def readable_shards(
    shards: Mapping[str, Shard], progress: Mapping[str, ShardProgress]
) -> list[str]:
    """Shards that may be read now: not finished, and every parent finished.

    A parent missing from `shards` and from `progress` is gone from the stream
    and was never read: the caller has ruled on it (`missing_parents`) before
    asking. A parent in `shards` (listed, or an orphan) holds its children back
    until its reader saw its end, whatever `endingSequenceNumber` says.
    """
    ready = []
    for shard_id, shard in shards.items():
        if _finished(shard_id, progress):
            continue
        if all(p not in shards or _finished(p, progress) for p in shard.parents):
            ready.append(shard_id)
    return sorted(ready)


def _finished(shard_id: str, progress: Mapping[str, ShardProgress]) -> bool:
    state = progress.get(shard_id)
    return state is not None and state.finished


def orphans(shards: Mapping[str, Shard], progress: Mapping[str, ShardProgress]) -> dict[str, Shard]:
    """Shards the state store holds unfinished that the listing no longer shows.

    Their records after the checkpoint were never read: they are read like any
    other shard (the stream may still hold them), and their children wait.
    """
    return {
        shard_id: Shard(shard_id, starting_sequence_number=state.start_sequence, listed=False)
        for shard_id, state in progress.items()
        if shard_id not in shards and not state.finished
    }


def missing_parents(
    shards: Mapping[str, Shard], progress: Mapping[str, ShardProgress]
) -> list[str]:
    """Parents of shards not begun yet that are neither listed nor known to the state store.

    Such a parent was never read and the stream no longer holds it: whether
    its records were needed is a question of time (`trim_may_lose_needed`).
    A shard already begun is not asked about: its parents were settled when it
    began, so pruned state of old parents can never count as a gap.
    """
    missing = {
        parent
        for shard_id, shard in shards.items()
        if shard_id not in progress
        for parent in shard.parents
        if parent not in shards and parent not in progress
    }
    return sorted(missing)


def start_version(
    shard: Shard, progress: Mapping[str, ShardProgress], stream_floor: int = 0
) -> int:
    """The `previous` version a shard starts from: after every parent's last record.

    `stream_floor` is the final version of the table's previous stream, so the
    shards of a new stream start above every record of the old one.
    """
    finals = [
        state.final_version
        for p in shard.parents
        if (state := progress.get(p)) is not None and state.final_version is not None
    ]
    return max(lineage_floor(finals), stream_floor)


def fair_share(units: int, workers: int) -> int:
    """How many of `units` one of `workers` live workers should own (rounded up)."""
    return math.ceil(units / max(workers, 1))


def children_of(shards: Mapping[str, Shard], shard_id: str) -> list[str]:
    return sorted(s.shard_id for s in shards.values() if shard_id in s.parents)


def label_ms(label: str) -> int | None:
    """A stream label (its creation time, UTC without zone) as epoch ms; None if not one."""
    try:
        moment = dt.datetime.fromisoformat(label)
    except ValueError:
        return None
    aware = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
    return (aware - _EPOCH) // dt.timedelta(milliseconds=1)


def label_of(stream_arn: str) -> str:
    """The label at the end of a stream ARN (`.../stream/<label>`)."""
    return stream_arn.rsplit("/stream/", 1)[-1]


# ---- stream discovery -------------------------------------------------------------


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _validation_code(exc: ClientError) -> str:
    code = exc.response.get("errorCode") or exc.response.get("Error", {}).get("errorCode")
    return str(code or "")


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, BotoConnectionError):
        return True
    return isinstance(exc, ClientError) and _error_code(exc) in _RETRYABLE_CODES


def _on_retry(operation: str, seconds: float, exc: Any) -> None:
    log.warning("Keyspaces Streams %s failed, retrying in %.2f s: %s", operation, seconds, exc)


# One retry policy for every Streams call: throttling, server faults, lost connections.
STREAMS_RETRY = RetryPolicy(initial_s=0.1, longest_s=5.0, budget_s=300.0)
# What a refusal of the credentials looks like, whichever AWS front end says it.
_CREDENTIALS_REFUSED = frozenset(
    {"UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException"}
)


def _call(
    operation: Callable[..., dict[str, Any]],
    *,
    stop: threading.Event | None = None,
    patient: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """One Streams API call through the retry policy; what is left becomes a ks2os error.

    Throttling, server faults and lost connections (unless not `patient`) are
    retried until the policy gives up (its budget spent, or `stop` set), then
    raised as a `TransientError`; a refusal is a `StreamsRefused` carrying the
    AWS error code, for the reader to decide on (ExpiredIterator, ...).
    """
    policy = STREAMS_RETRY.stopping_on(stop)
    name = getattr(operation, "__name__", "request")  # boto3's: list_streams, get_records...

    def give_up(exc: Exception) -> bool:
        return not _retryable(exc) or (not patient and isinstance(exc, BotoConnectionError))

    try:
        return policy.call(
            lambda: operation(**kwargs),
            (ClientError, BotoCoreError),
            functools.partial(_on_retry, name),
            give_up,
        )
    except (ClientError, BotoCoreError) as exc:
        raise _streams_error(exc, name, policy) from exc


def _streams_error(exc: Exception, operation: str, policy: RetryPolicy) -> Ks2osError:
    """The ks2os error for what boto3 raised on a Streams call, in one line."""
    if isinstance(exc, BotoConnectionError):
        return TransientError(
            f"cannot reach Keyspaces Streams ({operation}): {exc}",
            hint="check keyspaces.streams_endpoint and the network to it",
        )
    if isinstance(exc, NoCredentialsError):
        return ConfigError(
            f"no AWS credentials for Keyspaces Streams ({operation})",
            hint="configure the standard AWS credential chain (env, profile or role)",
        )
    if not isinstance(exc, ClientError):
        return TerminalError(f"Keyspaces Streams {operation}: {exc}")
    code, detail = _error_code(exc), _validation_code(exc)
    message = exc.response.get("Error", {}).get("Message", "")
    said = f"{code}: {message}" if message else code
    if code in _RETRYABLE_CODES:
        return TransientError(
            f"Keyspaces Streams {operation}: {said} ({policy.why_given_up()})",
            hint="Keyspaces is throttling or failing; try again later",
        )
    if code in _CREDENTIALS_REFUSED:
        return ConfigError(
            f"Keyspaces Streams refused the AWS credentials ({operation}): {said}",
            hint="check the AWS credentials (standard chain) and keyspaces.region",
        )
    hint = ""
    if code == "AccessDeniedException":
        hint = "grant cassandra:Select on the table and the Streams read actions on its stream"
    return StreamsRefused(
        f"Keyspaces Streams refused {operation}: {said}", hint=hint, code=code, detail=detail
    )


def check_streams(client: Any, info: TableInfo, stop: threading.Event | None = None) -> None:
    """A cheap ListStreams for the table, so a wrong endpoint or permission shows at start.

    A lost connection is not retried here: a wrong `keyspaces.streams_endpoint`
    is reported at once.
    """
    _call(
        client.list_streams,
        stop=stop,
        patient=False,
        keyspaceName=info.keyspace,
        tableName=info.name,
        maxResults=1,
    )


def list_table_streams(
    client: Any, info: TableInfo, stop: threading.Event | None = None
) -> list[StreamSummary]:
    """Every stream ListStreams gives for the table, oldest first (by label: creation time)."""
    return list_streams_of(client, info.keyspace, info.name, stop)


def list_streams_of(
    client: Any,
    keyspace: str,
    table: str,
    stop: threading.Event | None = None,
    *,
    patient: bool = True,
) -> list[StreamSummary]:
    """`list_table_streams` by the table's name alone (no CQL session needed); not
    `patient`, a lost connection is not retried (reported at once)."""
    found: dict[str, StreamSummary] = {}
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"keyspaceName": keyspace, "tableName": table}
        if token:
            kwargs["nextToken"] = token
        page = _call(client.list_streams, stop=stop, patient=patient, **kwargs)
        for stream in page.get("streams", []):
            arn = stream["streamArn"]
            found[arn] = StreamSummary(arn, stream.get("streamLabel") or label_of(arn))
        token = page.get("nextToken")
        if not token:
            break
    return sorted(found.values(), key=lambda s: (s.label, s.stream_arn))


def describe_stream(
    client: Any, stream_arn: str, stop: threading.Event | None = None
) -> StreamDescription:
    """GetStream, every page: the stream's status, view type and whole shard graph.

    `StreamGone` when the stream no longer exists (disabled past the retention period).
    """
    shards: dict[str, Shard] = {}
    token: str | None = None
    first: dict[str, Any] | None = None
    while True:
        kwargs: dict[str, Any] = {"streamArn": stream_arn, "maxResults": 100}
        if token:
            kwargs["nextToken"] = token
        try:
            page = _call(client.get_stream, stop=stop, **kwargs)
        except StreamsRefused as exc:
            if exc.code == "ResourceNotFoundException":
                raise StreamGone(f"stream {stream_arn} no longer exists") from exc
            raise
        first = first or page
        for raw in page.get("shards", []):
            seq = raw.get("sequenceNumberRange") or {}
            shards[raw["shardId"]] = Shard(
                raw["shardId"],
                tuple(raw.get("parentShardIds") or ()),
                seq.get("startingSequenceNumber"),
                seq.get("endingSequenceNumber"),
            )
        token = page.get("nextToken")
        if not token:
            break
    created = first.get("creationRequestDateTime")
    return StreamDescription(
        stream_arn,
        first["streamStatus"],
        first["streamViewType"],
        shards,
        None if created is None else _epoch_ms(created),
    )


def oldest_unread_ms(
    client: Any,
    stream_arn: str,
    shard_id: str,
    after: str | None,
    stop: threading.Event | None = None,
) -> int | None:
    """`createdAt` (epoch ms) of the shard's first record after `after` (None: from its
    trim horizon); None when there is none: whoever checkpointed `after` is at the tip.

    One record is read, never applied: a rebuild measures the stream lag with it. A shard
    or a position the stream no longer holds is None too (the follower rules on that gap).
    """
    try:
        return peek_after(client, stream_arn, shard_id, after, stop).oldest_ms
    except StreamsRefused as exc:
        if exc.code == "ValidationException":
            return None
        raise


# ---- row lookups for streams without new images --------------------------------------


class RowLookup:
    """Reads a row's (or a partition's statics') current state over CQL, with its expiry.

    For KEYS_ONLY and OLD_IMAGE streams, and static-only records of NEW_IMAGE
    streams that do not say which statics were deleted; the follower also
    re-reads statics and expired rows with it, and `ks2os deadletter replay`
    dead-lettered rows.

    Read as the snapshot scan reads (`sync.sources.rows`): at LOCAL_QUORUM, so
    the row is never older than an acknowledged write (a stale replica's row
    at a delete record's version would bring the deleted row back), and with
    the TTL()s of its columns, so the change carries the row's expiry, dated
    by the service clock just before the read.
    """

    def __init__(self, session: Session, info: TableInfo) -> None:
        self._session = session
        self._info = info
        key = info.layout
        table = qualified(info.keyspace, info.name)
        row_where = " AND ".join(f"{quote(c)} = ?" for c in key.key_columns)
        part_where = " AND ".join(f"{quote(c)} = ?" for c in key.partition_key)
        self._ttl_columns = expiring_columns(info)
        self._static_ttl_columns = tuple(c for c in self._ttl_columns if c in key.static)
        columns = select_list(info.columns, self._ttl_columns)
        statics = select_list(key.partition_key + key.static, self._static_ttl_columns)
        with cql_errors(f"preparing the row lookups of {info.qualified_name}"):
            self._row: PreparedStatement = session.prepare(
                f"SELECT {columns} FROM {table} WHERE {row_where}"
            )
            self._static: PreparedStatement = session.prepare(
                f"SELECT {statics} FROM {table} WHERE {part_where} LIMIT 1"
            )
        for statement in (self._row, self._static):
            statement.consistency_level = READ_CONSISTENCY

    def change(self, key: tuple[Any, ...], static_only: bool, base: Change) -> Change:
        """What the row (or the partition's statics) is now, as a change at `base`'s version."""
        if static_only:
            return self.statics(key, base.version, base.provenance)
        return self.row(key, base.version, base.provenance)

    def row(self, key: tuple[Any, ...], version: int, source: Provenance) -> Change:
        """The row as it is now (an upsert, or a delete when it is gone) at `version`."""
        with cql_errors(f"looking up a row of {self._info.qualified_name}"):
            read_at_ms = service_now_ms(self._session) if self._ttl_columns else None
            row = first_row(self._session.execute(self._row, key))
        if row is None:
            return Change(Op.DELETE, key, None, version, source)
        return decode_row(
            row, self._info.layout, source, version, self._ttl_columns, read_at_ms=read_at_ms
        )

    def statics(self, partition: tuple[Any, ...], version: int, source: Provenance) -> Change:
        """The partition's static values as they are now, all of them, at `version`."""
        with cql_errors(f"looking up the statics of a partition of {self._info.qualified_name}"):
            read_at_ms = service_now_ms(self._session) if self._static_ttl_columns else None
            row = first_row(self._session.execute(self._static, partition))
        key = self._info.layout
        fields = {} if row is None else row._asdict()
        image = {c: fields[c] for c in key.static if fields.get(c) is not None}
        if not image:
            return Change(Op.DELETE, partition, None, version, source, static_only=True)
        expiry = {
            c: expiry_ms(read_at_ms or 0, fields[ttl_alias(c)])
            for c in self._static_ttl_columns
            if c in image and fields.get(ttl_alias(c)) is not None
        }
        image.update(zip(key.partition_key, partition, strict=True))
        return Change(
            Op.UPSERT, partition, image, version, source, static_only=True, value_expiry=expiry
        )


def first_row(rows: ResultSet) -> Any | None:
    """The first row of a result, paging on as needed, or None when there is none.

    Not `ResultSet.one()`: that looks at the first page only, and Keyspaces may answer
    a page with no rows and a paging state (a page ends after 1 MB read, not returned),
    which would make a live row look deleted.
    """
    return next(iter(rows), None)


# ---- reading one shard ----------------------------------------------------------------


# Row lookups that fail transiently (`cql_errors` turns timeouts, no host, overload into a
# TransientError) may well succeed a moment later: retried this long, stoppable.
LOOKUP_RETRY = RetryPolicy(initial_s=0.05, longest_s=5.0, budget_s=300.0)


def _on_lookup_retry(seconds: float, failure: Any) -> None:
    log.warning("row lookup failed, retrying in %.2f s: %s", seconds, failure)


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record that could not become a change: kept raw, with why, for the dead-letter store."""

    record: Mapping[str, Any]
    position: StreamRead
    reason: str
    version: int  # what its change would have had: a mark of its row goes there


@dataclass
class ReadResult:
    """One GetRecords' worth of a shard, decoded.

    `last_sequence`/`last_version` are those of the last record read (None if
    none); `closed` says the shard has ended; `at_tip` that nothing more is
    there now (poll slower); `gap` how records were found missing (None: they
    were not); `bad` the records that could not become changes.
    """

    changes: list[Change] = field(default_factory=list)
    records: int = 0
    last_sequence: str | None = None
    last_version: int | None = None
    last_created_at_ms: int | None = None
    closed: bool = False
    at_tip: bool = False
    gap: GapKind | None = None
    bad: list[BadRecord] = field(default_factory=list)


class ShardReader:
    """Reads one shard in order and gives every record its version.

    `after` is the checkpoint's sequence number (None: from the shard's start)
    and `previous` that record's version (or the shard's lineage floor).
    Without a checkpoint, `verify_start` asks for proof that nothing of the
    shard was trimmed: the first iterator is `AT_SEQUENCE_NUMBER` of
    `start_sequence` (the listing's `startingSequenceNumber`), and a trimmed
    start is reported as `GapKind.START_TRIMMED`; otherwise it is `TRIM_HORIZON`.
    `lookup` re-reads rows for streams that carry no new image.
    """

    def __init__(
        self,
        client: Any,
        info: TableInfo,
        stream_arn: str,
        shard_id: str,
        *,
        view_type: str,
        after: str | None,
        previous: int,
        limit: int = 1000,
        skip_replication: bool = False,
        lookup: RowLookup | None = None,
        stop: threading.Event | None = None,
        start_sequence: str | None = None,
        verify_start: bool = False,
    ) -> None:
        if not 1 <= limit <= 1000:
            raise ValueError("GetRecords limit must be 1..1000")
        self._client = client
        self._info = info
        self.stream_arn = stream_arn
        self.shard_id = shard_id
        self._view_type = view_type
        self.position = after  # last record read (not necessarily acknowledged)
        self.previous = previous
        self._limit = limit
        self._skip_replication = skip_replication
        self._lookup = lookup
        self._stop = stop  # ends the retries of a Streams call at once when set
        self._start_sequence = start_sequence
        self._verify_start = verify_start and after is None
        self._iterator: str | None = None
        self.closed = False

    def read(self) -> ReadResult:
        """One GetRecords call (getting an iterator first when needed)."""
        if self.closed:
            return ReadResult(closed=True)
        if self._verify_start and self.position is None and self._start_sequence is None:
            # No starting sequence number to ask for: nothing proves the start is there.
            return ReadResult(gap=GapKind.START_TRIMMED)
        try:
            if self._iterator is None:
                self._iterator = self._new_iterator()
                if self._iterator is None:
                    return self._close()
            # The body parsed by orjson, not by botocore's shape parser (its cost was the
            # follower's ceiling); botocore still signs, sends and parses errors.
            reply = _call(
                raw_get_records(self._client),
                stop=self._stop,
                shardIterator=self._iterator,
                maxResults=self._limit,
            )
        except StreamsRefused as exc:
            return self._on_error(exc)
        result = self.decode(reply.get("changeRecords") or [])
        self._iterator = reply.get("nextShardIterator")
        if self._iterator is None:
            self.closed = True
            result.closed = True
        position = (reply.get("iteratorDescription") or {}).get("iteratorPosition")
        # Older servers send no position: treat an empty reply as being at the tip.
        result.at_tip = position == "AT_TIP" or (position is None and not result.records)
        return result

    def restart_at_trim_horizon(self) -> None:
        """After a gap: read whatever the shard still holds. Versions keep rising."""
        self.position = None
        self._iterator = None
        self._verify_start = False

    def _close(self) -> ReadResult:
        self.closed = True
        return ReadResult(closed=True)

    def _new_iterator(self) -> str | None:
        kwargs: dict[str, Any] = {"streamArn": self.stream_arn, "shardId": self.shard_id}
        if self.position is not None:
            kwargs["shardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            kwargs["sequenceNumber"] = self.position
        elif self._verify_start:
            kwargs["shardIteratorType"] = "AT_SEQUENCE_NUMBER"
            kwargs["sequenceNumber"] = self._start_sequence
        else:
            kwargs["shardIteratorType"] = "TRIM_HORIZON"
        reply = _call(self._client.get_shard_iterator, stop=self._stop, **kwargs)
        iterator: str | None = reply.get("shardIterator")
        return iterator

    def _on_error(self, exc: StreamsRefused) -> ReadResult:
        code, detail = exc.code, exc.detail
        if code == "ValidationException" and detail == "ExpiredIterator":
            log.info("shard iterator expired; renewing", extra={"shard": self.shard_id})
            self._iterator = None
            return ReadResult()
        if code == "ValidationException" and detail == "TrimmedDataAccess":
            self._iterator = None
            if self.position is not None:
                return ReadResult(gap=GapKind.TRIMMED)
            if self._verify_start:
                return ReadResult(gap=GapKind.START_TRIMMED)
            # From the trim horizon, which moved on meanwhile: what went was not needed.
            return ReadResult()
        if code == "ResourceNotFoundException":
            # Not the end of the shard: its unread records are gone with it.
            self._iterator = None
            return ReadResult(gap=GapKind.SHARD_GONE)
        raise exc

    def decode(self, records: list[dict[str, Any]]) -> ReadResult:
        """Version and decode records read from this shard, in order (what `read` does)."""
        result = ReadResult(records=len(records))
        for record in records:
            sequence = record["sequenceNumber"]
            self.position = sequence
            origin = str(record.get("origin") or "USER")
            try:
                created_at_ms = _epoch_ms(record.get("createdAt"))
            except DecodeError as bad:
                # Still a place in the version chain, so a replay gives the same versions.
                self.previous = next_stream_version(0, self.previous)
                result.last_sequence, result.last_version = sequence, self.previous
                position = StreamRead(self.stream_arn, self.shard_id, sequence, 0, origin)
                result.bad.append(BadRecord(record, position, str(bad), self.previous))
                continue
            # Every record gets a version, skipped ones too: versions depend on
            # the stream alone, never on this worker's settings.
            self.previous = next_stream_version(created_at_ms, self.previous)
            result.last_sequence, result.last_version = sequence, self.previous
            result.last_created_at_ms = created_at_ms
            if self._skip_replication and is_replicated(record):
                continue
            position = StreamRead(self.stream_arn, self.shard_id, sequence, created_at_ms, origin)
            try:
                result.changes.append(self._change(record, position, self.previous))
            except DecodeError as bad:
                result.bad.append(BadRecord(record, position, str(bad), self.previous))
        return result

    def _change(self, record: Mapping[str, Any], position: StreamRead, version: int) -> Change:
        try:
            return decode_record(
                record,
                self._info.layout,
                position,
                version,
                self._view_type,
                expiring=self._info.ttl_enabled,
            )
        except ImageUnavailable as missing:
            if self._lookup is None:
                raise TerminalError(str(missing), hint=missing.hint) from missing
            base = Change(Op.DELETE, missing.key, None, version, position)
            return self._looked_up(self._lookup, missing, base)

    def _looked_up(self, lookup: RowLookup, missing: ImageUnavailable, base: Change) -> Change:
        """The row as it is now; transient failures retried, lasting ones a `DecodeError`."""
        policy = LOOKUP_RETRY.stopping_on(self._stop)
        try:
            return policy.call(
                lambda: lookup.change(missing.key, missing.static_only, base),
                retry_on=TransientError,
                on_wait=_on_lookup_retry,
            )
        except (TransientError, ConfigError):
            raise  # Keyspaces unreachable or refusing ks2os: the follower stops, nothing lost
        except Ks2osError as exc:  # retrying cannot mend it: the record is dead-lettered
            cause = type(exc.__cause__ or exc).__name__
            raise DecodeError(f"row lookup failed for key {missing.key!r}: {cause}: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Peek:
    """What a shard holds after a position, seen without reading it: `oldest_ms` is the
    `createdAt` of the first record there (None: nothing, the reader is at the tip or the
    shard's end); `lost` says the records there are gone (trimmed, or the shard with them)."""

    oldest_ms: int | None
    lost: bool = False


def peek_after(
    client: Any,
    stream_arn: str,
    shard_id: str,
    after: str | None,
    stop: threading.Event | None = None,
) -> Peek:
    """The first record of a shard after `after` (None: from its trim horizon), read once.

    For overviews (`ks2os status`): one GetShardIterator and one GetRecords of at
    most one record; no state, no lease, nothing decoded but `createdAt`.
    """
    kwargs: dict[str, Any] = {"streamArn": stream_arn, "shardId": shard_id}
    if after is None:
        kwargs["shardIteratorType"] = "TRIM_HORIZON"
    else:
        kwargs["shardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
        kwargs["sequenceNumber"] = after
    try:
        iterator = _call(client.get_shard_iterator, stop=stop, **kwargs).get("shardIterator")
        if iterator is None:
            return Peek(None)
        reply = _call(client.get_records, stop=stop, shardIterator=iterator, maxResults=1)
    except StreamsRefused as exc:
        if exc.code == "ResourceNotFoundException" or exc.detail == "TrimmedDataAccess":
            return Peek(None, lost=True)
        raise
    records = reply.get("changeRecords") or []
    return Peek(_epoch_ms(records[0].get("createdAt")) if records else None)


def _epoch_ms(value: Any) -> int:
    """`createdAt` as epoch ms: boto3 gives a datetime; raw numbers are epoch seconds."""
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return (aware - _EPOCH) // dt.timedelta(milliseconds=1)
    if isinstance(value, int | float):
        return round(value * 1000)
    raise DecodeError(f"change record without a usable createdAt: {value!r}")


def iter_ready(
    shards: Mapping[str, Shard],
    progress: Mapping[str, ShardProgress],
    owned: Collection[str],
) -> Iterator[str]:
    """Readable shards this worker does not already read, in a stable order."""
    for shard_id in readable_shards(shards, progress):
        if shard_id not in owned:
            yield shard_id
