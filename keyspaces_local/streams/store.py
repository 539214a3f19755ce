"""The streams store: streams, shards, change records, lineage and retention.

`StreamStore` is the `ChangeSink` the CQL engine writes to, and what the
Streams HTTP API reads from. Each stream splits a 64-bit hash space of
primary keys into shard ranges: a row is routed by a hash of (partition
key, clustering key), so rows of one partition may land in different
shards while each primary key maps to exactly one open shard at a time.
Splitting a shard divides its range among children; merging joins two
adjacent ranges into one child with both as parents. Records are rendered to
JSON once, when committed, and kept with a sequence number from one global
counter, so numbers rise strictly within every shard and are never reused.

All times come from the emulator `Clock`: record age (retention), iterator
age and stream expiry follow `clock.advance()`.
"""

from __future__ import annotations

import base64
import bisect
import datetime
import hashlib
import itertools
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import orjson

from keyspaces_local.cdc import RowChange
from keyspaces_local.clock import Clock
from keyspaces_local.schema import TableSchema, ViewType
from keyspaces_local.streams.errors import (
    ResourceNotFound,
    Throttling,
    ValidationCode,
    ValidationError,
)
from keyspaces_local.streams.faults import Faults
from keyspaces_local.streams.records import STATIC_SHAPES, build_record

HASH_SPACE = 1 << 64
SEQ_WIDTH = 24  # fixed-width decimal sequence numbers (the model wants 21-48 chars)
_SEQ_BASE = 10**18  # first sequence number (orjson, hence tokens, hold 64-bit ints)
SIZE_CAP_BYTES = 1 << 20  # GetRecords stops after ~1 MB of records
TOKEN_MIN_CHARS = 80  # the model's minimum nextToken length
_COMPACT_AFTER = 4096  # trimmed records kept in a shard's lists before they are dropped

ENABLED, DISABLED = "ENABLED", "DISABLED"
ITERATOR_TYPES = ("TRIM_HORIZON", "LATEST", "AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER")


def check_static_shape(shape: str) -> str:
    if shape not in STATIC_SHAPES:
        raise ValidationError(
            f"static record shape must be one of {', '.join(STATIC_SHAPES)}, got {shape!r}"
        )
    return shape


def format_seq(seq: int) -> str:
    return f"{seq:0{SEQ_WIDTH}d}"


def parse_seq(text: str) -> int:
    if not (21 <= len(text) <= 48 and text.isdigit()):
        raise ValidationError(f"Invalid sequence number: {text!r}")
    return int(text)


def route_hash(partition_key: tuple[bytes, ...], clustering_key: tuple[bytes, ...] | None) -> int:
    """Where a primary key lives in the shard hash space; the partition alone if static-only.

    A hash of the key's own bytes, not of its token: a key keeps its shard (and so its
    records their order) when the account's partitioner changes its token.
    """
    parts: list[bytes] = []
    for value in (*partition_key, *(clustering_key or ())):
        parts.append(len(value).to_bytes(4, "big"))
        parts.append(value)
    return int.from_bytes(hashlib.blake2b(b"".join(parts), digest_size=8).digest(), "big")


def label_for(ms: int) -> str:
    """A stream label: the creation time as `YYYY-MM-DDTHH:MM:SS.mmm` (UTC, no zone)."""
    moment = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}"


# --- opaque tokens --------------------------------------------------------------------------


def encode_token(fields: dict[str, object], min_chars: int = 1) -> str:
    """URL-safe base64 of JSON, padded inside the JSON so it meets a minimum length."""
    raw = orjson.dumps(fields)
    token = base64.urlsafe_b64encode(raw).decode("ascii")
    if len(token) < min_chars:
        pad = "0" * ((min_chars - len(token)) * 3 // 4 + 3)
        token = base64.urlsafe_b64encode(orjson.dumps({**fields, "_": pad})).decode("ascii")
    return token


def decode_token(token: str, what: str) -> dict[str, object]:
    try:
        fields = orjson.loads(base64.urlsafe_b64decode(token.encode("ascii")))
    except (ValueError, UnicodeError) as err:
        raise ValidationError(f"Invalid {what}") from err
    if not isinstance(fields, dict):
        raise ValidationError(f"Invalid {what}")
    return fields


# --- shards and streams ----------------------------------------------------------------------


@dataclass(eq=False)
class Shard:
    """One shard: a hash range, its records, and where it sits in the lineage."""

    shard_id: str
    lo: int
    hi: int
    parent_ids: tuple[str, ...]
    start_seq: int
    created_ms: int
    end_seq: int | None = None
    closed_ms: int | None = None
    seqs: list[int] = field(default_factory=list)
    created: list[int] = field(default_factory=list)  # record createdAt, epoch ms
    payloads: list[bytes] = field(default_factory=list)
    base: int = 0  # index of the first record not yet trimmed
    trimmed_below: int = 0  # positions below this sequence number are trimmed
    hide_close_calls: int = 0  # lagging_parent_close: GetStream calls still showing it open
    hide_close_until_ms: int = 0  # lagging_parent_close: ... or until this clock time
    readers: dict[str, int] = field(default_factory=dict)  # reader id -> last GetRecords, ms

    @property
    def is_open(self) -> bool:
        return self.end_seq is None

    def append(self, seq: int, created_ms: int, payload: bytes) -> None:
        self.seqs.append(seq)
        self.created.append(created_ms)
        self.payloads.append(payload)

    def trim(self, cutoff_ms: int) -> None:
        """Drop records created before `cutoff_ms`."""
        created, n = self.created, len(self.created)
        base = self.base
        while base < n and created[base] < cutoff_ms:
            base += 1
        if base == self.base:
            return
        self.trimmed_below = self.seqs[base - 1] + 1
        self.base = base
        if base > _COMPACT_AFTER and base * 2 > n:
            del self.seqs[:base], self.created[:base], self.payloads[:base]
            self.base = 0

    def index_of(self, position: int) -> int:
        """Index of the first retained record at or after a position."""
        return bisect.bisect_left(self.seqs, position, self.base)

    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else self.start_seq

    def close_shown(self, now_ms: int) -> bool:
        return self.end_seq is not None and (
            self.hide_close_calls <= 0 and now_ms >= self.hide_close_until_ms
        )


@dataclass(eq=False)
class Stream:
    arn: str
    keyspace: str
    table: str
    label: str
    created_ms: int
    view_type: ViewType
    serial: int  # creation order across the store, for ListStreams paging
    status: str = ENABLED
    disabled_ms: int | None = None
    shards: list[Shard] = field(default_factory=list)  # creation order
    by_id: dict[str, Shard] = field(default_factory=dict)
    open_los: list[int] = field(default_factory=list)  # sorted range starts of open shards
    open_shards: list[Shard] = field(default_factory=list)  # in the same order

    def add(self, shard: Shard) -> None:
        self.shards.append(shard)
        self.by_id[shard.shard_id] = shard
        if shard.is_open:
            i = bisect.bisect_left(self.open_los, shard.lo)
            self.open_los.insert(i, shard.lo)
            self.open_shards.insert(i, shard)

    def retire(self, shard: Shard) -> None:
        i = self.open_shards.index(shard)
        del self.open_los[i], self.open_shards[i]

    def route(self, key_hash: int) -> Shard:
        return self.open_shards[bisect.bisect_right(self.open_los, key_hash) - 1]

    def shard(self, shard_id: str) -> Shard:
        found = self.by_id.get(shard_id)
        if found is None:
            raise ResourceNotFound(f"Shard {shard_id} not found in stream {self.arn}")
        return found


@dataclass(frozen=True)
class StreamSummary:
    arn: str
    keyspace: str
    table: str
    label: str


@dataclass(frozen=True)
class RecordsPage:
    """What GetRecords returns: pre-serialised records and where to go next."""

    payloads: list[bytes]
    next_iterator: str | None
    at_tip: bool


# --- the store -------------------------------------------------------------------------------


class StreamStore:
    """Keyspaces streams in memory; implements `keyspaces_local.cdc.ChangeSink`. Thread-safe."""

    def __init__(
        self,
        clock: Clock,
        *,
        shard_count: int = 4,
        retention_s: float = 86400,
        iterator_lifetime_s: float = 900,
        region: str = "us-east-1",
        account: str = "123456789012",
        faults: Faults | None = None,
        static_record_shape: str = "all",
        partition_delete_statics: bool = True,
    ) -> None:
        if shard_count < 1:
            raise ValueError("shard_count must be at least 1")
        self.static_record_shape = check_static_shape(static_record_shape)
        # Whether a whole-partition DELETE yields a record for the statics it removes.
        self.partition_delete_statics = partition_delete_statics
        self.clock = clock
        self.shard_count = shard_count
        self.retention_ms = int(retention_s * 1000)
        self.iterator_lifetime_ms = int(iterator_lifetime_s * 1000)
        self.region = region
        self.account = account
        self.faults = faults or Faults()
        self._lock = threading.Lock()
        self._streams: dict[str, Stream] = {}  # by ARN, creation order
        self._latest: dict[tuple[str, str], Stream] = {}  # enabled stream per table
        self._seq = _SEQ_BASE
        self._serial = 0

    # --- ChangeSink ------------------------------------------------------------------------

    def enable_stream(self, table: TableSchema) -> str:
        with self._lock:
            now = self.clock.now_ms()
            previous = self._latest.get((table.keyspace, table.name))
            if previous is not None:
                self._disable(previous, now)
            stream = self._new_stream(table, now)
            self._streams[stream.arn] = stream
            self._latest[(table.keyspace, table.name)] = stream
            return stream.arn

    def disable_stream(self, keyspace: str, table: str) -> None:
        with self._lock:
            stream = self._latest.get((keyspace, table))
            if stream is not None:
                self._disable(stream, self.clock.now_ms())

    def record(self, change: RowChange) -> None:
        table = change.table
        stream = self._latest.get((table.keyspace, table.name))
        if stream is None:
            return
        statics_of_a_partition_delete = change.partition_delete and change.clustering_key is None
        if statics_of_a_partition_delete and not self.partition_delete_statics:
            return  # only the deleted rows' records, none for the partition's statics
        created_ms = (change.committed_at_us or self.clock.now_us()) // 1000
        record = build_record(
            change, stream.view_type, created_ms, static_shape=self.static_record_shape
        )
        body = orjson.dumps(record)
        key_hash = route_hash(change.partition_key, change.clustering_key)
        with self._lock:
            if stream.status != ENABLED:
                return  # CDC was turned off while this change was being rendered
            shard = stream.route(key_hash)
            seq = self._next_seq()
            seq_json = b',"sequenceNumber":"' + format_seq(seq).encode("ascii") + b'"}'
            shard.append(seq, created_ms, body[:-1] + seq_json)
            if shard.created[shard.base] < created_ms - self.retention_ms:
                shard.trim(created_ms - self.retention_ms)

    # --- control ---------------------------------------------------------------------------

    def set_static_record_shape(self, shape: str) -> str:
        """What static-only records hold from now on: "all" statics or the "touched" ones."""
        self.static_record_shape = check_static_shape(shape)
        return self.static_record_shape

    def set_partition_delete_statics(self, recorded: bool) -> bool:
        """Whether a whole-partition DELETE yields a record for its statics, from now on."""
        self.partition_delete_statics = bool(recorded)
        return self.partition_delete_statics

    def split_shard(self, stream_arn: str, shard_id: str, parts: int = 2) -> list[str]:
        """Close an open shard and divide its hash range among `parts` children."""
        if parts < 2:
            raise ValidationError("parts must be at least 2")
        with self._lock:
            now = self.clock.now_ms()
            stream = self._stream(stream_arn, now)
            parent = self._open_shard(stream, shard_id)
            if parent.hi - parent.lo < parts:
                raise ValidationError(f"Shard {shard_id} is too narrow to split in {parts}")
            self._close(stream, parent, now, lagging=True)
            step = (parent.hi - parent.lo) // parts
            bounds = [parent.lo + i * step for i in range(parts)] + [parent.hi]
            children = [
                self._new_shard(lo, hi, (parent.shard_id,), now)
                for lo, hi in itertools.pairwise(bounds)
            ]
            for child in children:
                stream.add(child)
            return [c.shard_id for c in children]

    def merge_shards(self, stream_arn: str, shard_a: str, shard_b: str) -> str:
        """Close two open shards with adjacent ranges; one child covers both."""
        with self._lock:
            now = self.clock.now_ms()
            stream = self._stream(stream_arn, now)
            a, b = self._open_shard(stream, shard_a), self._open_shard(stream, shard_b)
            if a is b or not (a.hi == b.lo or b.hi == a.lo):
                raise ValidationError(f"Shards {shard_a} and {shard_b} are not adjacent")
            for parent in (a, b):
                self._close(stream, parent, now, lagging=True)
            child = self._new_shard(min(a.lo, b.lo), max(a.hi, b.hi), (a.shard_id, b.shard_id), now)
            stream.add(child)
            return child.shard_id

    def latest_stream_arn(self, keyspace: str, table: str) -> str | None:
        with self._lock:
            stream = self._latest.get((keyspace, table))
            return stream.arn if stream else None

    def open_shard_ids(self, stream_arn: str) -> list[str]:
        """The open shards of a stream, in hash-range order (for tests and the control API)."""
        with self._lock:
            stream = self._stream(stream_arn, self.clock.now_ms())
            return [s.shard_id for s in stream.open_shards]

    # --- Streams API -----------------------------------------------------------------------

    def list_streams(
        self,
        keyspace: str | None = None,
        table: str | None = None,
        max_results: int = 100,
        next_token: str | None = None,
    ) -> tuple[list[StreamSummary], str | None]:
        if table is not None and keyspace is None:
            raise ValidationError("tableName can only be given together with keyspaceName")
        with self._lock:
            now = self.clock.now_ms()
            self._expire_streams(now)
            after = self._token_position(next_token, "ListStreams", now)
            matching = [
                s
                for s in self._streams.values()
                if s.serial > after
                and (keyspace is None or s.keyspace == keyspace)
                and (table is None or s.table == table)
            ]
            page = matching[:max_results]
            token = None
            if len(matching) > max_results:
                token = self._token("ListStreams", page[-1].serial, now)
            return [StreamSummary(s.arn, s.keyspace, s.table, s.label) for s in page], token

    def get_stream(
        self,
        stream_arn: str,
        max_results: int = 100,
        next_token: str | None = None,
        child_of: str | None = None,
    ) -> dict[str, object]:
        """The GetStream output as JSON-ready data."""
        with self._lock:
            now = self.clock.now_ms()
            stream = self._stream(stream_arn, now)
            after = self._token_position(next_token, stream.arn, now)
            shards = [s for i, s in enumerate(stream.shards) if i > after]
            if child_of is not None:
                stream.shard(child_of)
                shards = [s for s in shards if child_of in s.parent_ids]
            shards = [s for s in shards if not self._shard_expired(s, now)]
            page = shards[:max_results]
            out: dict[str, object] = {
                "streamArn": stream.arn,
                "streamLabel": stream.label,
                "streamStatus": stream.status,
                "streamViewType": stream.view_type.value,
                "creationRequestDateTime": stream.created_ms / 1000,
                "keyspaceName": stream.keyspace,
                "tableName": stream.table,
                "shards": [self._describe(s, now) for s in page],
            }
            if len(shards) > max_results:
                last_index = stream.shards.index(page[-1])
                out["nextToken"] = self._token(stream.arn, last_index, now)
            for shard in stream.shards:
                if shard.hide_close_calls > 0:
                    shard.hide_close_calls -= 1
            return out

    def get_shard_iterator(
        self, stream_arn: str, shard_id: str, iterator_type: str, sequence_number: str | None
    ) -> str:
        if iterator_type not in ITERATOR_TYPES:
            raise ValidationError(f"Invalid shardIteratorType: {iterator_type!r}")
        needs_seq = iterator_type in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER")
        if needs_seq != (sequence_number is not None):
            raise ValidationError(
                f"sequenceNumber is {'required' if needs_seq else 'not allowed'} "
                f"with {iterator_type}"
            )
        with self._lock:
            now = self.clock.now_ms()
            stream = self._stream(stream_arn, now)
            shard = stream.shard(shard_id)
            shard.trim(now - self.retention_ms)
            if iterator_type == "TRIM_HORIZON":
                position = max(shard.start_seq, shard.trimmed_below)
            elif iterator_type == "LATEST":
                position = shard.last_seq() + 1
            else:
                assert sequence_number is not None
                seq = parse_seq(sequence_number)
                self._check_in_shard(shard, seq)
                position = seq if iterator_type == "AT_SEQUENCE_NUMBER" else seq + 1
                if position < shard.trimmed_below:
                    raise ValidationError(
                        f"Sequence number {sequence_number} is trimmed from shard {shard_id}",
                        ValidationCode.TRIMMED_DATA_ACCESS,
                    )
            return self._iterator(stream, shard, position, now, uuid.uuid4().hex[:12])

    def get_records(self, shard_iterator: str, max_results: int = 100) -> RecordsPage:
        fields = decode_token(shard_iterator, "shard iterator")
        try:
            arn, shard_id, reader = str(fields["a"]), str(fields["s"]), str(fields.get("r", ""))
            position, issued_ms = int(str(fields["p"])), int(str(fields["t"]))
        except (KeyError, ValueError) as err:
            raise ValidationError("Invalid shard iterator") from err
        fault = self.faults.records_fault()
        with self._lock:
            now = self.clock.now_ms()
            if now - issued_ms > self.iterator_lifetime_ms or fault == "expired_iterator":
                if fault == "expired_iterator":
                    self.faults.count(fault)
                raise ValidationError(
                    "Iterator expired; get a new one", ValidationCode.EXPIRED_ITERATOR
                )
            stream = self._stream(arn, now)
            shard = stream.shard(shard_id)
            self._admit_reader(shard, reader, now)
            shard.trim(now - self.retention_ms)
            if position < shard.trimmed_below:
                raise ValidationError(
                    f"The iterator points at records trimmed from shard {shard_id}",
                    ValidationCode.TRIMMED_DATA_ACCESS,
                )
            if fault == "empty_records" and shard.index_of(position) < len(shard.seqs):
                # Records wait, yet none come: the next iterator stays where this one was.
                self.faults.count(fault)
                return RecordsPage([], self._iterator(stream, shard, position, now, reader), False)
            payloads, next_position, at_end = self._read(shard, position, max_results)
            drained = at_end and not shard.is_open
            next_iterator = (
                None if drained else self._iterator(stream, shard, next_position, now, reader)
            )
            return RecordsPage(payloads, next_iterator, at_end)

    # --- internals (call with the lock held) ---------------------------------------------

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _new_stream(self, table: TableSchema, now: int) -> Stream:
        label_ms = now
        while True:
            label = label_for(label_ms)
            arn = (
                f"arn:aws:cassandra:{self.region}:{self.account}:/keyspace/{table.keyspace}"
                f"/table/{table.name}/stream/{label}"
            )
            if arn not in self._streams:
                break
            label_ms += 1  # two streams of one table in one millisecond: keep labels unique
        self._serial += 1
        stream = Stream(
            arn, table.keyspace, table.name, label, now, table.options.view_type, self._serial
        )
        step = HASH_SPACE // self.shard_count
        bounds = [i * step for i in range(self.shard_count)] + [HASH_SPACE]
        for lo, hi in itertools.pairwise(bounds):
            stream.add(self._new_shard(lo, hi, (), now))
        return stream

    def _new_shard(self, lo: int, hi: int, parents: tuple[str, ...], now: int) -> Shard:
        start = self._next_seq()
        shard_id = f"shardId-{now:013d}-{uuid.uuid4().hex[:20]}"
        return Shard(shard_id, lo, hi, parents, start, now, trimmed_below=start)

    def _close(self, stream: Stream, shard: Shard, now: int, lagging: bool) -> None:
        shard.end_seq = shard.last_seq()
        shard.closed_ms = now
        stream.retire(shard)
        lag = self.faults.settings.lagging_parent_close
        if lagging and lag is not None:
            shard.hide_close_calls = lag.get_stream_calls
            shard.hide_close_until_ms = now + int(lag.seconds * 1000)

    def _disable(self, stream: Stream, now: int) -> None:
        for shard in list(stream.open_shards):
            self._close(stream, shard, now, lagging=False)
        stream.status = DISABLED
        stream.disabled_ms = now
        self._latest.pop((stream.keyspace, stream.table), None)

    def _expire_streams(self, now: int) -> None:
        expired = [
            arn
            for arn, s in self._streams.items()
            if s.disabled_ms is not None and s.disabled_ms + self.retention_ms <= now
        ]
        for arn in expired:
            del self._streams[arn]

    def _stream(self, arn: str, now: int) -> Stream:
        self._expire_streams(now)
        stream = self._streams.get(arn)
        if stream is None:
            raise ResourceNotFound(f"Stream {arn} not found")
        return stream

    def _open_shard(self, stream: Stream, shard_id: str) -> Shard:
        shard = stream.shard(shard_id)
        if not shard.is_open:
            raise ValidationError(f"Shard {shard_id} is closed")
        return shard

    def _shard_expired(self, shard: Shard, now: int) -> bool:
        return shard.closed_ms is not None and shard.closed_ms + self.retention_ms <= now

    def _describe(self, shard: Shard, now: int) -> dict[str, object]:
        seq_range = {"startingSequenceNumber": format_seq(shard.start_seq)}
        if shard.end_seq is not None and shard.close_shown(now):
            seq_range["endingSequenceNumber"] = format_seq(shard.end_seq)
        return {
            "shardId": shard.shard_id,
            "sequenceNumberRange": seq_range,
            "parentShardIds": list(shard.parent_ids),
        }

    def _check_in_shard(self, shard: Shard, seq: int) -> None:
        last = shard.end_seq if shard.end_seq is not None else self._seq
        if seq < shard.start_seq or seq > last:
            raise ValidationError(
                f"Sequence number {format_seq(seq)} does not belong to shard {shard.shard_id}"
            )

    def _read(self, shard: Shard, position: int, max_results: int) -> tuple[list[bytes], int, bool]:
        start = shard.index_of(position)
        stop = min(len(shard.seqs), start + max_results)
        payloads: list[bytes] = []
        size = 0
        for i in range(start, stop):
            payload = shard.payloads[i]
            if payloads and size + len(payload) > SIZE_CAP_BYTES:
                stop = i
                break
            payloads.append(payload)
            size += len(payload)
        next_position = shard.seqs[stop - 1] + 1 if stop > start else position
        return payloads, next_position, stop >= len(shard.seqs)

    def _iterator(self, stream: Stream, shard: Shard, position: int, now: int, reader: str) -> str:
        # Positions as text: sequence numbers may outgrow the 64-bit ints JSON libraries keep.
        # `r` names the reader: the chain of iterators begun by one GetShardIterator.
        fields = {"a": stream.arn, "s": shard.shard_id, "p": str(position), "t": now, "r": reader}
        return encode_token(fields)

    def _admit_reader(self, shard: Shard, reader: str, now: int) -> None:
        """Throttle a reader beyond `max_readers_per_shard` recent readers of one shard."""
        settings = self.faults.settings
        limit = settings.max_readers_per_shard
        if limit is None:
            shard.readers.clear()
            return
        window_start = now - int(settings.reader_window_seconds * 1000)
        for other, seen in list(shard.readers.items()):
            if seen < window_start:
                del shard.readers[other]
        if reader not in shard.readers and len(shard.readers) >= limit:
            self.faults.count("reader_throttle")
            raise Throttling(f"More than {limit} readers on shard {shard.shard_id}")
        shard.readers[reader] = now

    def _token(self, scope: str, position: int, now: int) -> str:
        return encode_token({"k": scope, "p": position, "t": now}, TOKEN_MIN_CHARS)

    def _token_position(self, token: str | None, scope: str, now: int) -> int:
        """The position a nextToken resumes after (-1 without a token)."""
        if token is None:
            return -1
        fields = decode_token(token, "nextToken")
        if fields.get("k") != scope or not isinstance(fields.get("p"), int):
            raise ValidationError("Invalid nextToken")
        issued = fields.get("t")
        if not isinstance(issued, int) or now - issued > self.iterator_lifetime_ms:
            raise ValidationError("nextToken expired", ValidationCode.EXPIRED_NEXT_TOKEN)
        position = fields["p"]
        assert isinstance(position, int)
        return position

    def streams(self) -> Iterator[StreamSummary]:
        """Every stream not yet expired (for the control API)."""
        with self._lock:
            self._expire_streams(self.clock.now_ms())
            items = [
                StreamSummary(s.arn, s.keyspace, s.table, s.label) for s in self._streams.values()
            ]
        return iter(items)
