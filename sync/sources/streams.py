"""The CDC source: a table's stream, its shard graph, and a reader per shard.

- **Stream**: the table's `latest_stream_arn` (from `system_schema_mcs`), or
  the newest one ListStreams gives; GetStream (paginated) lists the shards and
  their parents. A DISABLED stream is a `ConfigError` saying how to enable.
- **Lineage**: a shard is readable when every one of its parents is finished
  (read until GetRecords returned no `nextShardIterator`); a merge child has
  several parents. A parent listed without `endingSequenceNumber` may still
  be open although its children exist, so closing is decided by the reader,
  never by the listing. Parents no longer listed (trimmed) count as finished.
- **Versions** (sync/version.py): each record gets
  `next_stream_version(createdAt, previous)` in shard order; a shard starts
  from its checkpoint's version, or from `lineage_floor` of its parents'
  final versions. So a restart or a takeover recomputes the same versions.
- **Reader**: iterators from the checkpoint (`AFTER_SEQUENCE_NUMBER`, else
  `TRIM_HORIZON`), GetRecords with `maxResults`, a new iterator on
  `ExpiredIterator`, backoff on throttling and server errors, and
  `TrimmedDataAccess` reported as a gap (the caller's `on_gap` policy).

This module never talks to OpenSearch.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import backoff
from botocore.exceptions import ClientError
from botocore.exceptions import ConnectionError as BotoConnectionError
from cassandra.cluster import Session
from cassandra.query import PreparedStatement

from sync.errors import ConfigError, TerminalError, TransientError
from sync.keyspaces import TableInfo, no_cdc_message, qualified, quote
from sync.model import Change, Op, StreamPosition
from sync.sources.getrecords import raw_get_records
from sync.sources.records import ImageUnavailable, decode_record, is_replicated
from sync.version import lineage_floor, next_stream_version

log = logging.getLogger(__name__)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_RETRYABLE_CODES = frozenset(
    {"ThrottlingException", "InternalServerException", "ServiceUnavailable", "RequestTimeout"}
)


class StreamGap(TerminalError):
    """The stream no longer holds records the index has not seen (TrimmedDataAccess)."""


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


@dataclass(frozen=True)
class StreamDescription:
    stream_arn: str
    status: str  # ENABLING | ENABLED | DISABLING | DISABLED
    view_type: str  # NEW_AND_OLD_IMAGES | NEW_IMAGE | OLD_IMAGE | KEYS_ONLY
    shards: Mapping[str, Shard]


@dataclass(frozen=True)
class ShardProgress:
    """What the state store says about one shard, as lineage planning needs it."""

    finished: bool
    final_version: int | None = None


def readable_shards(
    shards: Mapping[str, Shard], progress: Mapping[str, ShardProgress]
) -> list[str]:
    """Shards that may be read now: not finished, and every parent finished.

    A parent missing from the listing was trimmed away (its records are gone),
    so it cannot hold anything back; a parent still listed holds its children
    back until its reader saw its end, whatever `endingSequenceNumber` says.
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


def start_version(shard: Shard, progress: Mapping[str, ShardProgress]) -> int:
    """The `previous` version a shard starts from: after every parent's last record."""
    finals = [
        state.final_version
        for p in shard.parents
        if (state := progress.get(p)) is not None and state.final_version is not None
    ]
    return lineage_floor(finals)


def fair_share(units: int, workers: int) -> int:
    """How many of `units` one of `workers` live workers should own (rounded up)."""
    return math.ceil(units / max(workers, 1))


def children_of(shards: Mapping[str, Shard], shard_id: str) -> list[str]:
    return sorted(s.shard_id for s in shards.values() if shard_id in s.parents)


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


def _on_retry(details: Any) -> None:
    log.warning(
        "streams API busy, retrying in %.2f s: %s", details["wait"], details.get("exception")
    )


# One retry policy for every Streams call: throttling and server faults only.
_streams_backoff = backoff.on_exception(
    backoff.expo,
    (ClientError, BotoConnectionError),
    giveup=lambda exc: not _retryable(exc),
    max_time=300,
    max_value=5,
    factor=0.1,
    on_backoff=_on_retry,
)


@_streams_backoff
def _call(operation: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
    return operation(**kwargs)


def find_stream_arn(client: Any, info: TableInfo) -> str:
    """The table's current stream: `latest_stream_arn`, else the newest ListStreams gives."""
    if info.latest_stream_arn:
        return info.latest_stream_arn
    newest: tuple[str, str] | None = None
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"keyspaceName": info.keyspace, "tableName": info.name}
        if token:
            kwargs["nextToken"] = token
        page = _call(client.list_streams, **kwargs)
        for stream in page.get("streams", []):
            label = stream.get("streamLabel", "")
            if newest is None or label > newest[0]:
                newest = (label, stream["streamArn"])
        token = page.get("nextToken")
        if not token:
            break
    if newest is None:
        raise ConfigError(no_cdc_message(info.keyspace, info.name))
    return newest[1]


def describe_stream(client: Any, stream_arn: str) -> StreamDescription:
    """GetStream, every page: the stream's status, view type and whole shard graph."""
    shards: dict[str, Shard] = {}
    token: str | None = None
    first: dict[str, Any] | None = None
    while True:
        kwargs: dict[str, Any] = {"streamArn": stream_arn, "maxResults": 100}
        if token:
            kwargs["nextToken"] = token
        page = _call(client.get_stream, **kwargs)
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
    return StreamDescription(stream_arn, first["streamStatus"], first["streamViewType"], shards)


def require_readable(stream: StreamDescription, info: TableInfo) -> None:
    """A DISABLED stream holds nothing new: say how to enable CDC again."""
    if stream.status == "DISABLED":
        raise ConfigError(
            f"the CDC stream of {info.qualified_name} is DISABLED: "
            + no_cdc_message(info.keyspace, info.name).split(": ", 1)[1]
        )


# ---- row lookups for streams without new images --------------------------------------


class RowLookup:
    """Reads a row's current state over CQL, for KEYS_ONLY and OLD_IMAGE streams."""

    def __init__(self, session: Session, info: TableInfo, consistency: int) -> None:
        self._session = session
        self._info = info
        key = info.key
        table = qualified(info.keyspace, info.name)
        row_where = " AND ".join(f"{quote(c)} = ?" for c in key.key_columns)
        part_where = " AND ".join(f"{quote(c)} = ?" for c in key.partition_key)
        columns = ", ".join(quote(c) for c in info.columns)
        statics = ", ".join(quote(c) for c in key.partition_key + key.static)
        self._row: PreparedStatement = session.prepare(
            f"SELECT {columns} FROM {table} WHERE {row_where}"
        )
        self._static: PreparedStatement = session.prepare(
            f"SELECT {statics} FROM {table} WHERE {part_where} LIMIT 1"
        )
        for statement in (self._row, self._static):
            statement.consistency_level = consistency

    def change(self, key: tuple[Any, ...], static_only: bool, base: Change) -> Change:
        """What the row (or the partition's statics) is now, as a change at `base`'s version."""
        statement = self._static if static_only else self._row
        row = self._session.execute(statement, key).one()
        image = None if row is None else {k: v for k, v in row._asdict().items() if v is not None}
        if static_only and image is not None and not set(image) & set(self._info.key.static):
            image = None
        if image is None:
            return Change(Op.DELETE, key, None, base.version, base.source, static_only=static_only)
        return Change(Op.UPSERT, key, image, base.version, base.source, static_only=static_only)


# ---- reading one shard ----------------------------------------------------------------


@dataclass
class ReadResult:
    """One GetRecords' worth of a shard, decoded.

    `last_sequence`/`last_version` are those of the last record read (None if
    none); `closed` says the shard has ended; `at_tip` that nothing more is
    there now (poll slower); `gap` that records were trimmed before being read.
    """

    changes: list[Change] = field(default_factory=list)
    records: int = 0
    last_sequence: str | None = None
    last_version: int | None = None
    last_created_at_ms: int | None = None
    closed: bool = False
    at_tip: bool = False
    gap: bool = False


class ShardReader:
    """Reads one shard in order and gives every record its version.

    `after` is the checkpoint's sequence number (None: from the trim horizon)
    and `previous` that record's version (or the shard's lineage floor).
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
        self._iterator: str | None = None
        self.closed = False

    def read(self) -> ReadResult:
        """One GetRecords call (getting an iterator first when needed)."""
        if self.closed:
            return ReadResult(closed=True)
        try:
            if self._iterator is None:
                self._iterator = self._new_iterator()
                if self._iterator is None:
                    return self._close()
            # The body parsed by orjson, not by botocore's shape parser (its cost was the
            # follower's ceiling); botocore still signs, sends and parses errors.
            get_records = raw_get_records(self._client)
            reply = _call(get_records, shardIterator=self._iterator, maxResults=self._limit)
        except ClientError as exc:
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

    def _close(self) -> ReadResult:
        self.closed = True
        return ReadResult(closed=True)

    def _new_iterator(self) -> str | None:
        kwargs: dict[str, Any] = {"streamArn": self.stream_arn, "shardId": self.shard_id}
        if self.position is None:
            kwargs["shardIteratorType"] = "TRIM_HORIZON"
        else:
            kwargs["shardIteratorType"] = "AFTER_SEQUENCE_NUMBER"
            kwargs["sequenceNumber"] = self.position
        reply = _call(self._client.get_shard_iterator, **kwargs)
        iterator: str | None = reply.get("shardIterator")
        return iterator

    def _on_error(self, exc: ClientError) -> ReadResult:
        code, detail = _error_code(exc), _validation_code(exc)
        if code == "ValidationException" and detail == "ExpiredIterator":
            log.info("shard iterator expired; renewing", extra={"shard": self.shard_id})
            self._iterator = None
            return ReadResult()
        if code == "ValidationException" and detail == "TrimmedDataAccess":
            self._iterator = None
            return ReadResult(gap=True)
        if code == "ResourceNotFoundException":
            # The shard is gone (past retention): nothing more can be read from it.
            log.warning(
                "shard no longer exists; treating it as ended", extra={"shard": self.shard_id}
            )
            return self._close()
        if _retryable(exc):
            raise TransientError(f"Keyspaces Streams kept failing: {exc}") from exc
        raise TerminalError(f"Keyspaces Streams refused a request: {exc}") from exc

    def decode(self, records: list[dict[str, Any]]) -> ReadResult:
        """Version and decode records read from this shard, in order (what `read` does)."""
        result = ReadResult(records=len(records))
        for record in records:
            created_at_ms = _epoch_ms(record.get("createdAt"))
            # Every record gets a version, skipped ones too: versions depend on
            # the stream alone, never on this worker's settings.
            self.previous = next_stream_version(created_at_ms, self.previous)
            sequence = record["sequenceNumber"]
            self.position = sequence
            result.last_sequence, result.last_version = sequence, self.previous
            result.last_created_at_ms = created_at_ms
            if self._skip_replication and is_replicated(record):
                continue
            position = StreamPosition(
                self.stream_arn,
                self.shard_id,
                sequence,
                created_at_ms,
                str(record.get("origin") or "USER"),
            )
            result.changes.append(self._change(record, position, self.previous))
        return result

    def _change(self, record: Mapping[str, Any], position: StreamPosition, version: int) -> Change:
        try:
            return decode_record(record, self._info.key, position, version, self._view_type)
        except ImageUnavailable as missing:
            if self._lookup is None:
                raise
            base = Change(Op.DELETE, missing.key, None, version, position)
            return self._lookup.change(missing.key, missing.static_only, base)


def _epoch_ms(value: Any) -> int:
    """`createdAt` as epoch ms: boto3 gives a datetime; raw numbers are epoch seconds."""
    if isinstance(value, dt.datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return (aware - _EPOCH) // dt.timedelta(milliseconds=1)
    if isinstance(value, int | float):
        return round(value * 1000)
    raise TerminalError(f"change record without a usable createdAt: {value!r}")


def iter_ready(
    shards: Mapping[str, Shard],
    progress: Mapping[str, ShardProgress],
    owned: Collection[str],
) -> Iterator[str]:
    """Readable shards this worker does not already read, in a stable order."""
    for shard_id in readable_shards(shards, progress):
        if shard_id not in owned:
            yield shard_id
