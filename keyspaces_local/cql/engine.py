"""The CQL engine of keyspaces_local: executes parsed CQL the way Amazon Keyspaces does.

`CqlEngine` implements the `Engine` protocol the wire server calls. It keeps
the catalog (keyspaces, UDTs, tables with their Keyspaces options), the data
(`storage.TableData` per table), prepared statements, and hands every
committed row-level change of a CDC table to the `ChangeSink`. What
Keyspaces refuses it refuses with `Invalid`: writes below LOCAL_QUORUM,
reads at other levels than ONE/LOCAL_ONE/LOCAL_QUORUM, `USING TIMESTAMP`
and `WRITETIME()` without client-side timestamps, `USING TTL` without TTL,
and the unsupported statements (TRUNCATE, indexes, views, UDFs...).

All time comes from the shared `Clock`; one lock serialises every statement,
so commit order is the order changes reach the sink.
"""

from __future__ import annotations

import copy
import datetime
import hashlib
import heapq
import itertools
import json
import math
import random
import struct
import threading
import types as pytypes
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any

from cassandra import cqltypes, util

from keyspaces_local import types
from keyspaces_local.cdc import ChangeSink, RowChange
from keyspaces_local.clock import Clock
from keyspaces_local.cql import parser as p
from keyspaces_local.cql import system_tables as st
from keyspaces_local.cql.api import (
    LOCAL_ONE,
    LOCAL_QUORUM,
    ONE,
    AlreadyExists,
    ColumnSpec,
    ConfigError,
    Invalid,
    Prepared,
    ProtocolError,
    QueryOptions,
    Result,
    Rows,
    SchemaChange,
    SetKeyspace,
    Unprepared,
    Void,
)
from keyspaces_local.schema import Column, ColumnKind, TableOptions, TableSchema, ViewType
from keyspaces_local.storage import Bound, ListIndexError, Partition, Row, RowWrite, TableData

CONSISTENCY_NAMES = {
    0: "ANY",
    1: "ONE",
    2: "TWO",
    3: "THREE",
    4: "QUORUM",
    5: "ALL",
    6: "LOCAL_QUORUM",
    7: "EACH_QUORUM",
    8: "SERIAL",
    9: "LOCAL_SERIAL",
    10: "LOCAL_ONE",
}
READ_LEVELS = (ONE, LOCAL_QUORUM, LOCAL_ONE)
MAX_DEFAULT_TTL = 630_720_000
CLIENT_TS_PAST_US = 2 * 86_400 * 1_000_000  # USING TIMESTAMP may be 2 days old at most...
CLIENT_TS_FUTURE_US = 5 * 60 * 1_000_000  # ...and 5 minutes ahead
REPLICATION_CLASSES = {
    "singleregionstrategy": "SingleRegionStrategy",
    "networktopologystrategy": "org.apache.cassandra.locator.NetworkTopologyStrategy",
    "simplestrategy": "org.apache.cassandra.locator.SimpleStrategy",
}
# Cassandra table properties Keyspaces accepts (and ignores unless named below).
KNOWN_TABLE_PROPERTIES = {
    "bloom_filter_fp_chance",
    "caching",
    "cdc",
    "comment",
    "compaction",
    "compression",
    "crc_check_chance",
    "custom_properties",
    "dclocal_read_repair_chance",
    "default_time_to_live",
    "gc_grace_seconds",
    "max_index_interval",
    "memtable_flush_period_in_ms",
    "min_index_interval",
    "read_repair_chance",
    "speculative_retry",
    "tags",
}
LONG, INT32, BOOL = cqltypes.LongType, cqltypes.Int32Type, cqltypes.BooleanType
PAGING_MAGIC = b"KSL1"
MAX_PARTITION_KEY_BYTES, MAX_CLUSTERING_KEY_BYTES = 2048, 850  # Keyspaces quotas
# Bound values of these types must have exactly this many bytes (or none).
FIXED_SIZES = {
    cqltypes.Int32Type: 4,
    cqltypes.LongType: 8,
    cqltypes.ShortType: 2,
    cqltypes.ByteType: 1,
    cqltypes.BooleanType: 1,
    cqltypes.DoubleType: 8,
    cqltypes.FloatType: 4,
    cqltypes.DateType: 8,
    cqltypes.UUIDType: 16,
    cqltypes.TimeUUIDType: 16,
    cqltypes.SimpleDateType: 4,
    cqltypes.TimeType: 8,
    cqltypes.CounterColumnType: 8,
}


@dataclass
class _Ctx:
    """One statement's execution context."""

    values: list[bytes | None]
    options: QueryOptions
    keyspace: str | None
    now_us: int
    batch_ts: int | None = None  # one server write time for every statement of a batch
    batch_using_ts: Any = None  # BEGIN BATCH USING TIMESTAMP: applies to each statement

    @property
    def now_s(self) -> int:
        return self.now_us // 1_000_000


@dataclass
class _PreparedEntry:
    cql: str
    statement: p.Statement
    keyspace: str | None


@dataclass(frozen=True)
class _Getter:
    spec_name: str
    cql_type: Any
    fetch: Callable[[Partition, Row | None, int], bytes | None]


@dataclass
class _Where:
    partitions: list[tuple[bytes, ...]] | None  # all partition keys named by = / IN, in IN order
    ck_eq: list[bytes]
    slice_lo: tuple[bytes, bool] | None
    slice_hi: tuple[bytes, bool] | None
    token_lo: tuple[int, bool] | None
    token_hi: tuple[int, bool] | None
    ck_in: list[bytes] | None = None  # IN on the clustering column after the ck_eq prefix
    ck_in_tail: list[bytes] = field(default_factory=list)  # equalities after that IN


@dataclass
class _Position:
    """Where a page stopped: after this row (ck None: after the whole partition)."""

    part_index: int
    token: int
    pk: tuple[bytes, ...]
    ck: tuple[bytes, ...] | None
    rows_so_far: int


class CqlEngine:
    """Executes CQL against in-memory tables with Amazon Keyspaces' rules."""

    def __init__(
        self,
        clock: Clock,
        sink: ChangeSink,
        *,
        host: str = "127.0.0.1",
        ttl_record_delay_s: float = 5.0,
        empty_page_rate: float = 0.0,
        page_bytes: int = 1_048_576,
    ) -> None:
        self.clock = clock
        self.sink = sink
        self.ttl_record_delay_s = ttl_record_delay_s
        self.empty_page_rate = empty_page_rate
        self.page_bytes = page_bytes
        self.node = st.NodeInfo(host=host, host_id=uuid.uuid4())
        self.catalog = st.Catalog()
        self._data: dict[tuple[str, str], TableData] = {}
        self._prepared: dict[bytes, _PreparedEntry] = {}
        self._lock = threading.RLock()
        self._last_ts = 0
        self._ttl_heap: list[
            tuple[int, int, TableData, tuple[bytes, ...], tuple[bytes, ...] | None]
        ] = []
        self._ttl_seq = itertools.count()
        self._random = random.Random()

    # ================================================================ Engine protocol

    def query(self, cql: str, options: QueryOptions, keyspace: str | None) -> Result:
        statement = p.parse(cql)
        with self._lock:
            return self._run(statement, cql, options, keyspace)

    def prepare(self, cql: str, keyspace: str | None) -> Prepared:
        statement = p.parse(cql)
        with self._lock:
            statement_id = hashlib.md5(f"{keyspace or ''}\x00{cql}".encode()).digest()
            binds, pk_indexes = self._bind_specs(statement, keyspace)
            result = self._result_columns(statement, keyspace)
            self._prepared[statement_id] = _PreparedEntry(cql, statement, keyspace)
            return Prepared(statement_id, binds, pk_indexes, result)

    def execute(self, statement_id: bytes, options: QueryOptions, keyspace: str | None) -> Result:
        with self._lock:
            entry = self._prepared.get(statement_id)
            if entry is None:
                raise Unprepared("Prepared statement not found", statement_id)
            return self._run(entry.statement, entry.cql, options, entry.keyspace or keyspace)

    def batch(
        self,
        batch_type: int,
        statements: list[tuple[str | bytes, list[bytes | None]]],
        options: QueryOptions,
        keyspace: str | None,
    ) -> Result:
        resolved: list[tuple[p.Statement, list[bytes | None], str | None]] = []
        for source, values in statements:
            if isinstance(source, bytes):
                entry = self._prepared.get(source)
                if entry is None:
                    raise Unprepared("Prepared statement not found", source)
                resolved.append((entry.statement, values, entry.keyspace or keyspace))
            else:
                resolved.append((p.parse(source), values, keyspace))
        with self._lock:
            self._check_write_consistency(options.consistency)
            batch_ts = self._server_ts()
            ctxs = []
            for statement, values, ks in resolved:
                if not isinstance(statement, p.Insert | p.Update | p.Delete):
                    raise Invalid(
                        "Only INSERT, UPDATE and DELETE statements are allowed in a batch"
                    )
                if _is_conditional(statement):
                    raise Invalid("Conditional statements are not supported in batches")
                ctxs.append((statement, _Ctx(values, options, ks, self.clock.now_us(), batch_ts)))
            for statement, ctx in ctxs:
                self._write(statement, ctx)
            return Void()

    # ================================================================ TTL records

    def sweep_expired(self) -> int:
        """Report rows whose expiry plus the record delay has passed; returns records emitted."""
        with self._lock:
            now_us = self.clock.now_us()
            now_s = now_us // 1_000_000
            cutoff = math.floor(now_us / 1_000_000 - self.ttl_record_delay_s)
            emitted = 0
            while self._ttl_heap and self._ttl_heap[0][0] <= cutoff:
                _, _, td, pk, ck = heapq.heappop(self._ttl_heap)
                if self._data.get((td.schema.keyspace, td.schema.name)) is not td:
                    continue  # the table was dropped
                part = td.partition(pk)
                row = td.row(part, ck) if part is not None else None
                if part is None or row is None:
                    continue
                due = td.due_expiry(row, cutoff)
                if due is None:
                    continue  # already reported, or overwritten since
                old = td.image(part, row, due - 1)
                td.expire(row, cutoff)
                if not td.schema.options.cdc_enabled or old is None:
                    continue
                new = td.image(part, row, now_s)
                self.sink.record(
                    RowChange(
                        table=td.schema,
                        token=part.token,
                        partition_key=part.pk,
                        clustering_key=ck,
                        old_image=old,
                        new_image=new,
                        origin="TTL",
                        committed_at_us=now_us,
                    )
                )
                emitted += 1
            return emitted

    # ================================================================ dispatch

    def _run(
        self, statement: p.Statement, cql: str, options: QueryOptions, keyspace: str | None
    ) -> Result:
        ctx = _Ctx(options.values, options, keyspace, self.clock.now_us())
        if isinstance(statement, p.Select):
            return self._select(statement, cql, ctx)
        if isinstance(statement, p.Insert | p.Update | p.Delete):
            self._check_write_consistency(options.consistency)
            return self._write(statement, ctx)
        if isinstance(statement, p.BatchStatement):
            self._check_write_consistency(options.consistency)
            ctx.batch_ts = self._server_ts()
            ctx.batch_using_ts = statement.timestamp
            for member in statement.statements:
                if _is_conditional(member):
                    raise Invalid("Conditional statements are not supported in batches")
                self._write(member, ctx)
            return Void()
        if isinstance(statement, p.Use):
            return self._use(statement)
        return self._ddl(statement, keyspace)

    def _check_write_consistency(self, level: int) -> None:
        if level != LOCAL_QUORUM:
            raise Invalid(
                f"Consistency level {CONSISTENCY_NAMES.get(level, level)} is not supported for "
                "this operation. "
                "Supported consistency levels are: LOCAL_QUORUM"
            )

    @staticmethod
    def _check_read_consistency(level: int) -> None:
        if level not in READ_LEVELS:
            raise Invalid(
                f"Consistency level {CONSISTENCY_NAMES.get(level, level)} is not supported for "
                "this operation. "
                "Supported consistency levels are: ONE, LOCAL_QUORUM, LOCAL_ONE"
            )

    def _use(self, statement: p.Use) -> Result:
        if statement.keyspace not in self.catalog.keyspaces and not st.is_system(
            statement.keyspace
        ):
            raise Invalid(f"Keyspace '{statement.keyspace}' does not exist")
        return SetKeyspace(statement.keyspace)

    # ================================================================ catalog lookups

    @staticmethod
    def _keyspace_of(name: p.QName, keyspace: str | None) -> str:
        ks = name.keyspace or keyspace
        if not ks:
            raise Invalid(
                "No keyspace has been specified. USE a keyspace, or explicitly specify "
                "keyspace.tablename"
            )
        return ks

    def _table(self, name: p.QName, keyspace: str | None) -> TableData:
        ks = self._keyspace_of(name, keyspace)
        td = self._data.get((ks, name.name))
        if td is None:
            if ks not in self.catalog.keyspaces:
                raise Invalid(f"Keyspace {ks} does not exist")
            raise Invalid(f"unconfigured table {name.name}")
        return td

    @staticmethod
    def _column(schema: TableSchema, name: str) -> Column:
        col = schema.columns.get(name)
        if col is None:
            raise Invalid(f"Undefined column name {name}")
        return col

    # ================================================================ values

    def _bytes(self, term: Any, cql_type: Any, ctx: _Ctx) -> bytes | None:
        """A term's serialised value for a receiver of `cql_type`."""
        if isinstance(term, p.Bind):
            if term.index >= len(ctx.values):
                raise Invalid(
                    f"There were {len(ctx.values)} markers(?) in CQL but more values are needed"
                )
            raw = ctx.values[term.index]
            size = FIXED_SIZES.get(cql_type)
            if raw is not None and size is not None and len(raw) not in (0, size):
                raise Invalid(
                    f"Expected {size} or 0 byte value for {types.to_cql(cql_type)} ({len(raw)})"
                )
            return raw
        value = self._python(term, cql_type, ctx)
        if value is None:
            return None
        try:
            return bytes(cql_type.to_binary(value, 4))
        except Exception as exc:  # the driver's serialisers raise many kinds
            raise Invalid(f"Invalid value for type {types.to_cql(cql_type)}: {exc}") from None

    def _python(self, term: Any, cql_type: Any, ctx: _Ctx) -> Any:
        """A term as the Python value cqltypes serialises for `cql_type`."""
        t = types.unfrozen(cql_type)
        if isinstance(term, p.Bind):
            raw = self._bytes(term, cql_type, ctx)
            return None if raw is None else cql_type.from_binary(raw, 4)
        if isinstance(term, p.Literal):
            return _coerce_literal(term, t)
        if isinstance(term, p.FuncCall):
            return self._function(term, t, ctx)
        if isinstance(term, p.ListLit | p.SetLit | p.MapLit | p.TupleLit | p.UdtLit):
            return self._collection(term, t, ctx)
        raise Invalid(f"Unsupported term {term}")

    def _collection(self, term: Any, t: Any, ctx: _Ctx) -> Any:
        if isinstance(term, p.MapLit) and not term.items:  # `{}` is an empty set or map
            return [] if issubclass(t, cqltypes.SetType) else {}
        if issubclass(t, cqltypes.ListType) and isinstance(term, p.ListLit):
            return [self._python(x, t.subtypes[0], ctx) for x in term.items]
        if issubclass(t, cqltypes.SetType) and isinstance(term, p.SetLit):
            values = [self._python(x, t.subtypes[0], ctx) for x in term.items]
            fn = types.sort_key(t.subtypes[0])
            unique = {bytes(t.subtypes[0].to_binary(v, 4)): v for v in values}
            return [unique[k] for k in sorted(unique, key=fn)]
        if issubclass(t, cqltypes.MapType) and isinstance(term, p.MapLit):
            kt, vt = t.subtypes
            return {self._python(k, kt, ctx): self._python(v, vt, ctx) for k, v in term.items}
        if issubclass(t, cqltypes.UserType) and isinstance(term, p.UdtLit):
            given = dict(term.fields)
            unknown = set(given) - set(t.fieldnames)
            if unknown:
                raise Invalid(
                    f"Unknown field '{sorted(unknown)[0]}' in value of user defined type "
                    f"{t.typename}"
                )
            fields = {
                name: self._python(given[name], sub, ctx) if name in given else None
                for name, sub in zip(t.fieldnames, t.subtypes, strict=True)
            }
            return pytypes.SimpleNamespace(**fields)
        if issubclass(t, cqltypes.TupleType) and isinstance(term, p.TupleLit):
            if len(term.items) > len(t.subtypes):
                raise Invalid("Too many values in tuple literal")
            return tuple(
                self._python(x, sub, ctx) for x, sub in zip(term.items, t.subtypes, strict=False)
            )
        raise Invalid(f"Invalid collection literal for type {types.to_cql(t)}")

    def _function(self, term: p.FuncCall, t: Any, ctx: _Ctx) -> Any:
        name = term.name
        now = datetime.datetime.fromtimestamp(ctx.now_us / 1_000_000, tz=datetime.UTC)
        if name in ("now", "currenttimeuuid"):
            return util.uuid_from_time(ctx.now_us / 1_000_000)
        if name == "uuid":
            return uuid.uuid4()
        if name in ("currenttimestamp", "totimestamp"):
            return now
        if name in ("tounixtimestamp", "unixtimestampof"):
            return ctx.now_us // 1000
        if name in ("currentdate", "todate"):
            return now.date()
        if name in ("mintimeuuid", "maxtimeuuid"):
            arg = self._python(term.args[0], cqltypes.DateType, ctx)
            seconds = arg.timestamp() if isinstance(arg, datetime.datetime) else arg / 1000
            return (
                util.min_uuid_from_time(seconds)
                if name == "mintimeuuid"
                else util.max_uuid_from_time(seconds)
            )
        raise Invalid(f"Unknown function {name}")

    def _int(self, term: Any, cql_type: Any, ctx: _Ctx, what: str) -> int | None:
        raw = self._bytes(term, cql_type, ctx)
        if raw is None:
            return None
        try:
            return int(cql_type.from_binary(raw, 4))
        except Exception:
            raise Invalid(f"Invalid value for {what}") from None

    # ================================================================ writes

    def _server_ts(self) -> int:
        """Server write time: the clock, made strictly increasing so two writes always order."""
        ts = max(self.clock.now_us(), self._last_ts + 1)
        self._last_ts = ts
        return ts

    def _write_ts(self, schema: TableSchema, using_ts: Any, ctx: _Ctx) -> int:
        cst = schema.options.client_side_timestamps
        using_ts = using_ts if using_ts is not None else ctx.batch_using_ts
        if using_ts is not None:
            if not cst:
                raise Invalid(
                    "USING TIMESTAMP is not supported on a table without client-side timestamps; "
                    "enable them with custom_properties = {'client_side_timestamps': "
                    "{'status': 'enabled'}}"
                )
            ts = self._int(using_ts, LONG, ctx, "[timestamp]")
            if ts is None:
                raise Invalid("Invalid null value of timestamp")
            self._check_client_ts(ts, ctx)
            return ts
        if cst and ctx.options.timestamp_us is not None:
            # Not window-checked: drivers stamp real time, and tests move the emulator's
            # clock days ahead; the window is enforced on USING TIMESTAMP only.
            return ctx.options.timestamp_us
        if ctx.batch_ts is not None:
            return ctx.batch_ts
        return self._server_ts()

    @staticmethod
    def _check_client_ts(ts: int, ctx: _Ctx) -> None:
        if not ctx.now_us - CLIENT_TS_PAST_US <= ts <= ctx.now_us + CLIENT_TS_FUTURE_US:
            raise Invalid(
                f"Timestamp {ts} is out of the accepted range: client-side timestamps must be "
                "within 2 days before and 5 minutes after the current time (microseconds)"
            )

    def _expiry(self, schema: TableSchema, using_ttl: Any, ctx: _Ctx) -> int | None:
        if using_ttl is not None:
            if not schema.options.ttl_enabled:
                raise Invalid("TTL is not yet supported")
            ttl = self._int(using_ttl, INT32, ctx, "[ttl]")
            if ttl is None or ttl == 0:
                return None
            if ttl < 0:
                raise Invalid(f"A TTL must be greater or equal to 0, but was {ttl}")
            if ttl > MAX_DEFAULT_TTL:
                raise Invalid(f"ttl is too large. requested ({ttl}) maximum ({MAX_DEFAULT_TTL})")
            return ctx.now_s + ttl
        if schema.options.default_time_to_live > 0:
            return ctx.now_s + schema.options.default_time_to_live
        return None

    def _write(self, statement: p.Insert | p.Update | p.Delete, ctx: _Ctx) -> Result:
        ks = self._keyspace_of(statement.table, ctx.keyspace)
        if st.is_system(ks):
            raise Invalid(f"{ks} keyspace is not user-modifiable")
        td = self._table(statement.table, ctx.keyspace)
        if isinstance(statement, p.Insert):
            return self._insert(td, statement, ctx)
        if isinstance(statement, p.Update):
            return self._update(td, statement, ctx)
        return self._delete(td, statement, ctx)

    def _key_values(
        self, cols: list[Column], given: dict[str, bytes | None], what: str
    ) -> tuple[bytes, ...]:
        out = []
        for col in cols:
            if col.name not in given:
                raise Invalid(f"Some {what} key parts are missing: {col.name}")
            value = given[col.name]
            if value is None:
                raise Invalid(f"Invalid null value in condition for column {col.name}")
            out.append(value)
        return tuple(out)

    def _insert(self, td: TableData, stmt: p.Insert, ctx: _Ctx) -> Result:
        schema = td.schema
        if any(issubclass(c.cql_type, cqltypes.CounterColumnType) for c in schema.columns.values()):
            raise Invalid("INSERT statements are not allowed on counter tables, use UPDATE instead")
        if stmt.json is not None:
            values = self._json_values(schema, stmt.json, ctx)
        else:
            if len(set(stmt.columns)) != len(stmt.columns):
                raise Invalid("Multiple definitions found for a column")
            values = {}
            for name, term in zip(stmt.columns, stmt.values, strict=True):
                col = self._column(schema, name)
                values[name] = self._bytes(term, col.cql_type, ctx)
        pk = self._key_values(td.pk_cols, values, "partition")
        ck = self._key_values(td.ck_cols, values, "clustering") if td.ck_cols else ()
        ts = self._write_ts(schema, stmt.timestamp, ctx)
        exp = self._expiry(schema, stmt.ttl, ctx)
        row_w = RowWrite(pk, ck, ts, exp, marker=True)
        static_w = RowWrite(pk, None, ts, exp)
        for name, value in values.items():
            col = schema.columns[name]
            if col.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING):
                continue
            target = static_w if col.kind is ColumnKind.STATIC else row_w
            self._assign_whole(target, col, value)
        if stmt.if_not_exists:
            part = td.partition(pk)
            row = td.row(part, ck) if part is not None else None
            if row is not None and row.exists(ctx.now_s):
                return self._lwt_result(td, False, part, row, ctx)
        writes = ([static_w] if _has_changes(static_w) else []) + [row_w]
        self._commit(td, writes)
        return self._lwt_result(td, True, None, None, ctx) if stmt.if_not_exists else Void()

    def _json_values(self, schema: TableSchema, term: Any, ctx: _Ctx) -> dict[str, bytes | None]:
        """INSERT JSON: every column from the object; columns it leaves out are set to null."""
        raw = self._bytes(term, cqltypes.UTF8Type, ctx)
        try:
            obj = json.loads(raw.decode() if raw else "null", parse_float=Decimal)
        except ValueError as exc:
            raise Invalid(f"Could not decode JSON string: {exc}") from None
        if not isinstance(obj, dict):
            raise Invalid("INSERT JSON takes a JSON object")
        given = {(k[1:-1] if k.startswith('"') else k.lower()): v for k, v in obj.items()}
        values: dict[str, bytes | None] = {}
        for name, col in schema.columns.items():
            value = given.pop(name, None)
            try:
                py = types.from_json(value, col.cql_type)
                values[name] = None if py is None else bytes(col.cql_type.to_binary(py, 4))
            except (TypeError, ValueError, ArithmeticError, AttributeError) as exc:
                raise Invalid(f"Error decoding JSON value for {name}: {exc}") from None
        if given:
            raise Invalid(f"JSON values map contains unrecognized column: {next(iter(given))}")
        return values

    @staticmethod
    def _assign_whole(w: RowWrite, col: Column, value: bytes | None) -> None:
        if types.is_multicell(col.cql_type):
            w.coll_set[col.name] = None if value is None else _elements(col.cql_type, value)
        else:
            w.cells[col.name] = value

    def _lwt_result(
        self, td: TableData, applied: bool, part: Partition | None, row: Row | None, ctx: _Ctx
    ) -> Rows:
        schema = td.schema
        specs = [ColumnSpec(schema.keyspace, schema.name, "[applied]", BOOL)]
        values: list[bytes | None] = [BOOL.to_binary(applied, 4)]
        if not applied and part is not None and row is not None:
            for col in schema.columns.values():
                specs.append(ColumnSpec(schema.keyspace, schema.name, col.name, col.cql_type))
                values.append(self._column_getter(td, col).fetch(part, row, ctx.now_s))
        return Rows(specs, [values])

    def _where(self, td: TableData, relations: list[Any], ctx: _Ctx, *, for_select: bool) -> _Where:
        schema = td.schema
        pk_values: dict[str, list[bytes]] = {}
        ck_rel: dict[str, list[tuple[str, bytes]]] = {}
        token_lo: tuple[int, bool] | None = None
        token_hi: tuple[int, bool] | None = None
        for rel in relations:
            if isinstance(rel, p.Unsupported):
                raise Invalid(f"{rel.what} is not supported")
            if isinstance(rel, p.TokenRelation):
                if [c.name for c in td.pk_cols] != list(rel.columns):
                    raise Invalid(
                        "The token function must be applied to all partition key components in "
                        "order"
                    )
                token = self._int(rel.term, LONG, ctx, "partition key token")
                if token is None:
                    raise Invalid("Invalid null value for partition key token")
                if rel.op in (">", ">="):
                    token_lo = (token, rel.op == ">=")
                elif rel.op in ("<", "<="):
                    token_hi = (token, rel.op == "<=")
                else:
                    token_lo, token_hi = (token, True), (token, True)
                continue
            col = self._column(schema, rel.column)
            if isinstance(rel, p.InRelation):
                if not for_select:
                    raise Invalid("IN is supported in SELECT only")
                values = self._in_values(rel, col, ctx)
                if col.kind is ColumnKind.PARTITION_KEY:
                    pk_values[col.name] = values
                elif col.kind is ColumnKind.CLUSTERING and len(values) == 1:
                    ck_rel.setdefault(col.name, []).append(("=", values[0]))
                elif col.kind is ColumnKind.CLUSTERING:
                    ck_rel.setdefault(col.name, []).extend(("in", v) for v in values)
                else:
                    raise Invalid(f"IN restrictions are not supported on column {col.name}")
                continue
            if rel.op == "!=":
                raise Invalid('Unsupported "!=" relation')
            value = self._bytes(rel.term, col.cql_type, ctx)
            if value is None:
                raise Invalid(f"Invalid null value in condition for column {col.name}")
            if col.kind is ColumnKind.PARTITION_KEY:
                if rel.op != "=":
                    raise Invalid(
                        "Only EQ and IN relation are supported on the partition key "
                        "(unless you use the token() function)"
                    )
                pk_values[col.name] = [value]
            elif col.kind is ColumnKind.CLUSTERING:
                ck_rel.setdefault(col.name, []).append((rel.op, value))
            else:
                raise Invalid(
                    f"Cannot restrict column {col.name}: only primary key columns can be "
                    "restricted (filtering on regular columns is not supported by this emulator)"
                )
        partitions: list[tuple[bytes, ...]] | None = None
        if pk_values:
            missing = [c.name for c in td.pk_cols if c.name not in pk_values]
            if missing:
                raise Invalid(
                    f"Partition key parts: {', '.join(missing)} must be restricted as other "
                    "parts are"
                )
            if token_lo or token_hi:
                raise Invalid(
                    "token() restrictions cannot be combined with partition key restrictions"
                )
            partitions = [
                tuple(combo)
                for combo in itertools.product(*(pk_values[c.name] for c in td.pk_cols))
            ]
        where = _Where(partitions, [], None, None, token_lo, token_hi)
        for col in td.ck_cols:
            rels = ck_rel.pop(col.name, [])
            if rels and where.ck_in is not None:
                if len(rels) != 1 or rels[0][0] != "=":
                    raise Invalid(f'Clustering column "{col.name}" takes only = after an IN')
                where.ck_in_tail.append(rels[0][1])
                continue
            if any(op == "in" for op, _ in rels):
                if any(op != "in" for op, _ in rels) or where.slice_lo or where.slice_hi:
                    raise Invalid(f"{col.name} cannot be restricted by IN and another relation")
                where.ck_in = [v for _, v in rels]
                continue
            if where.slice_lo or where.slice_hi:
                if rels:
                    raise Invalid(
                        f'Clustering column "{col.name}" cannot be restricted '
                        "(preceding column is restricted by a non-EQ relation)"
                    )
                continue
            eq = [v for op, v in rels if op == "="]
            if eq:
                if len(rels) > 1:
                    raise Invalid(
                        f"{col.name} cannot be restricted by more than one relation if it includes "
                        "an Equal"
                    )
                where.ck_eq.append(eq[0])
                continue
            for op, v in rels:
                if op in (">", ">="):
                    where.slice_lo = (v, op == ">=")
                else:
                    where.slice_hi = (v, op == "<=")
            if not rels:
                break
        if ck_rel:
            raise Invalid(
                f'PRIMARY KEY column "{next(iter(ck_rel))}" cannot be restricted '
                "as preceding column is not restricted"
            )
        return where

    def _in_values(self, rel: p.InRelation, col: Column, ctx: _Ctx) -> list[bytes]:
        if rel.bind is not None:
            list_type = cqltypes.ListType.apply_parameters([col.cql_type])
            raw = self._bytes(rel.bind, list_type, ctx)
            values = types.split_collection(raw) if raw is not None else []
        else:
            got = [self._bytes(t, col.cql_type, ctx) for t in rel.terms or ()]
            if any(v is None for v in got):
                raise Invalid(f"Invalid null value in condition for column {col.name}")
            values = [v for v in got if v is not None]
        if len(values) > 100:
            raise Invalid("IN supports at most 100 values")
        return values

    def _bounds(self, td: TableData, where: _Where) -> tuple[Bound | None, Bound | None]:
        prefix = tuple(td.component_key(i, v) for i, v in enumerate(where.ck_eq))
        if where.slice_lo is None and where.slice_hi is None:
            bound = Bound(prefix, True) if prefix else None
            return bound, bound
        i = len(where.ck_eq)
        desc = td.ck_cols[i].descending
        lo = (
            Bound((*prefix, td.component_key(i, where.slice_lo[0])), where.slice_lo[1])
            if where.slice_lo
            else None
        )
        hi = (
            Bound((*prefix, td.component_key(i, where.slice_hi[0])), where.slice_hi[1])
            if where.slice_hi
            else None
        )
        if desc:
            lo, hi = hi, lo
        open_end = Bound(prefix, True) if prefix else None
        return (lo or open_end), (hi or open_end)

    def _single_partition(self, where: _Where) -> tuple[bytes, ...]:
        if where.partitions is None or len(where.partitions) != 1:
            raise Invalid("Some partition key parts are missing")
        return where.partitions[0]

    def _update(self, td: TableData, stmt: p.Update, ctx: _Ctx) -> Result:
        schema = td.schema
        where = self._where(td, stmt.where, ctx, for_select=False)
        pk = self._single_partition(where)
        full_ck = len(where.ck_eq) == len(td.ck_cols) and not (where.slice_lo or where.slice_hi)
        ts = self._write_ts(schema, stmt.timestamp, ctx)
        exp = self._expiry(schema, stmt.ttl, ctx)
        ck = tuple(where.ck_eq) if full_ck else None
        row_w = RowWrite(pk, ck if ck is not None else (), ts, exp)
        static_w = RowWrite(pk, None, ts, exp)
        touches_regular = False
        for assignment in stmt.assignments:
            col = self._column(schema, assignment.column)
            if col.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING):
                raise Invalid(f"PRIMARY KEY part {col.name} found in SET part")
            target = static_w if col.kind is ColumnKind.STATIC else row_w
            touches_regular = touches_regular or col.kind is not ColumnKind.STATIC
            if issubclass(col.cql_type, cqltypes.CounterColumnType):
                target.cells[col.name] = self._counter_value(td, target, col, assignment, ctx)
            else:
                self._assign(target, col, assignment, ctx)
        if touches_regular and ck is None:
            raise Invalid(
                "Some clustering keys are missing: " + ", ".join(c.name for c in td.ck_cols)
            )
        if stmt.if_exists or stmt.conditions:
            part = td.partition(pk)
            row = td.row(part, ck) if part is not None and ck is not None else None
            if not self._conditions_hold(td, part, row, stmt.if_exists, stmt.conditions, ctx):
                return self._lwt_result(td, False, part, row, ctx)
        writes = [
            w for w in (static_w, row_w) if _has_changes(w) and (w is static_w or touches_regular)
        ]
        self._commit(td, writes)
        if stmt.if_exists or stmt.conditions:
            return self._lwt_result(td, True, None, None, ctx)
        return Void()

    def _counter_value(
        self, td: TableData, w: RowWrite, col: Column, a: p.Assignment, ctx: _Ctx
    ) -> bytes:
        """A counter update as the new total (the engine lock makes read-modify-write atomic)."""
        if a.kind not in ("add", "remove"):
            raise Invalid(
                f"Cannot set the value of counter column {col.name} (counters can only "
                "be incremented/decremented, not set)"
            )
        delta = self._int(a.value, LONG, ctx, col.name)
        if delta is None:
            raise Invalid("Invalid null value for counter increment")
        part = td.partition(w.pk)
        row = td.row(part, w.ck) if part is not None else None
        current = td.cell_value(row, col, ctx.now_s) if row is not None else None
        total = int(LONG.from_binary(current, 4)) if current else 0
        total += delta if a.kind == "add" else -delta
        return bytes(LONG.to_binary(total, 4))

    def _assign(self, w: RowWrite, col: Column, a: p.Assignment, ctx: _Ctx) -> None:
        t = col.cql_type
        if a.kind == "set":
            self._assign_whole(w, col, self._bytes(a.value, t, ctx))
            return
        if not types.is_multicell(t):
            raise Invalid(
                f"Invalid operation ({a.column} = {a.column} {a.kind} ...) for non collection "
                "column "
                f"{a.column}"
            )
        if a.kind == "element":
            self._assign_element(w, col, a, ctx)
            return
        if a.kind == "remove" and issubclass(t, cqltypes.MapType):
            key_set = cqltypes.SetType.apply_parameters([t.subtypes[0]])
            raw = self._bytes(a.value, key_set, ctx)
            w.coll_remove.setdefault(col.name, []).extend(
                types.split_collection(raw) if raw else []
            )
            return
        raw = self._bytes(a.value, t, ctx)
        if raw is None:
            return
        items = _elements(t, raw)
        if a.kind == "add":
            w.coll_add.setdefault(col.name, []).extend(items)
        elif a.kind == "prepend":
            if not issubclass(t, cqltypes.ListType):
                raise Invalid(f"Invalid operation (prepend) for non list column {col.name}")
            w.coll_prepend.setdefault(col.name, []).extend(v for _, v in items)
        else:
            keys = (
                [v for _, v in items] if issubclass(t, cqltypes.ListType) else [k for k, _ in items]
            )
            w.coll_remove.setdefault(col.name, []).extend(keys)

    def _assign_element(self, w: RowWrite, col: Column, a: p.Assignment, ctx: _Ctx) -> None:
        t = col.cql_type
        if issubclass(t, cqltypes.MapType):
            key = self._bytes(a.key, t.subtypes[0], ctx)
            if key is None:
                raise Invalid("Invalid null map key")
            value = self._bytes(a.value, t.subtypes[1], ctx)
            if value is None:
                w.coll_remove.setdefault(col.name, []).append(key)
            else:
                w.coll_add.setdefault(col.name, []).append((key, value))
        elif issubclass(t, cqltypes.ListType):
            index = self._int(a.key, INT32, ctx, "list index")
            if index is None:
                raise Invalid("Invalid null value for list index")
            w.list_index.setdefault(col.name, []).append(
                (index, self._bytes(a.value, t.subtypes[0], ctx))
            )
        else:
            raise Invalid(f"Invalid operation ({col.name}[?] = ?) for set column {col.name}")

    def _conditions_hold(
        self,
        td: TableData,
        part: Partition | None,
        row: Row | None,
        if_exists: bool,
        conditions: list[p.Condition],
        ctx: _Ctx,
    ) -> bool:
        exists = part is not None and row is not None and row.exists(ctx.now_s)
        if if_exists:
            return exists
        for cond in conditions:
            col = self._column(td.schema, cond.column)
            expected = self._bytes(cond.term, col.cql_type, ctx)
            current = None
            if part is not None:
                target = part.statics if col.kind is ColumnKind.STATIC else row
                current = td.cell_value(target, col, ctx.now_s) if target is not None else None
            if cond.op == "=" and current != expected:
                return False
            if cond.op == "!=" and current == expected:
                return False
            if cond.op not in ("=", "!="):
                if current is None or expected is None:
                    return False
                fn = types.sort_key(col.cql_type)
                a, b = fn(current), fn(expected)
                ok = {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[cond.op]
                if not ok:
                    return False
        return True

    def _delete(self, td: TableData, stmt: p.Delete, ctx: _Ctx) -> Result:
        schema = td.schema
        where = self._where(td, stmt.where, ctx, for_select=False)
        pk = self._single_partition(where)
        ts = self._write_ts(schema, stmt.timestamp, ctx)
        full_ck = len(where.ck_eq) == len(td.ck_cols) and not (where.slice_lo or where.slice_hi)
        ck = tuple(where.ck_eq) if full_ck else None
        if stmt.if_exists or stmt.conditions:
            part = td.partition(pk)
            row = td.row(part, ck) if part is not None and ck is not None else None
            if not self._conditions_hold(td, part, row, stmt.if_exists, stmt.conditions, ctx):
                return self._lwt_result(td, False, part, row, ctx)
        if stmt.targets:
            self._delete_columns(td, stmt, pk, ck, ts, ctx)
        elif full_ck:
            self._commit(td, [RowWrite(pk, ck, ts, delete_row=True)])
        else:
            self._delete_many(td, pk, where, ts, ctx)
        if stmt.if_exists or stmt.conditions:
            return self._lwt_result(td, True, None, None, ctx)
        return Void()

    def _delete_columns(
        self,
        td: TableData,
        stmt: p.Delete,
        pk: tuple[bytes, ...],
        ck: tuple[bytes, ...] | None,
        ts: int,
        ctx: _Ctx,
    ) -> None:
        row_w = RowWrite(pk, ck if ck is not None else (), ts)
        static_w = RowWrite(pk, None, ts)
        for name, key in stmt.targets:
            col = self._column(td.schema, name)
            if col.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING):
                raise Invalid(
                    f"Invalid identifier {name} for deletion (should not be a PRIMARY KEY part)"
                )
            w = static_w if col.kind is ColumnKind.STATIC else row_w
            if col.kind is not ColumnKind.STATIC and ck is None:
                raise Invalid("Some clustering keys are missing")
            if key is None:
                self._assign_whole(w, col, None)
            elif issubclass(col.cql_type, cqltypes.MapType):
                k = self._bytes(key, col.cql_type.subtypes[0], ctx)
                w.coll_remove.setdefault(name, []).append(k or b"")
            elif issubclass(col.cql_type, cqltypes.ListType):
                index = self._int(key, INT32, ctx, "list index")
                w.list_index.setdefault(name, []).append((index or 0, None))
            else:
                raise Invalid(f"Invalid element deletion on column {name}")
        self._commit(td, [w for w in (static_w, row_w) if _has_changes(w)])

    def _delete_many(
        self, td: TableData, pk: tuple[bytes, ...], where: _Where, ts: int, ctx: _Ctx
    ) -> None:
        """Partition or clustering-range delete: one change per row that was there."""
        part = td.partition(pk, create=True)
        assert part is not None
        whole = not where.ck_eq and where.slice_lo is None and where.slice_hi is None
        lo, hi = self._bounds(td, where)
        cdc = td.schema.options.cdc_enabled
        now_s = ctx.now_s
        before: list[tuple[Row, Any]] = []
        if cdc:
            rows = list(part.slice(lo, hi)) + ([part.statics] if whole else [])
            before = [(row, td.image(part, row, now_s)) for row in rows]
        if whole:
            td.delete_partition(part, ts)
        else:
            td.delete_range(part, lo, hi, ts)
        committed = self.clock.now_us()
        for row, old in before:
            if old is None:
                continue
            self.sink.record(
                RowChange(
                    table=td.schema,
                    token=part.token,
                    partition_key=part.pk,
                    clustering_key=row.ck,
                    old_image=old,
                    new_image=td.image(part, row, now_s),
                    committed_at_us=committed,
                )
            )

    def _commit(self, td: TableData, writes: list[RowWrite]) -> None:
        """Apply row writes in order; with CDC on, emit one RowChange per write."""
        cdc = td.schema.options.cdc_enabled
        now_s = self.clock.now_us() // 1_000_000
        for w in writes:
            _check_key_sizes(w.pk, w.ck)
            try:
                td.check(w)
            except ListIndexError as exc:
                raise Invalid(str(exc)) from None
        for w in writes:
            old = None
            if cdc:
                part = td.partition(w.pk)
                row = td.row(part, w.ck) if part is not None else None
                old = td.image(part, row, now_s) if part is not None and row is not None else None
            part, row = td.apply(w)
            if cdc:
                self.sink.record(
                    RowChange(
                        table=td.schema,
                        token=part.token,
                        partition_key=part.pk,
                        clustering_key=w.ck,
                        old_image=old,
                        new_image=td.image(part, row, now_s),
                        committed_at_us=self.clock.now_us(),
                    )
                )
            if w.exp is not None:
                heapq.heappush(self._ttl_heap, (w.exp, next(self._ttl_seq), td, w.pk, w.ck))

    # ================================================================ SELECT

    def _select(self, stmt: p.Select, cql: str, ctx: _Ctx) -> Result:
        self._check_read_consistency(ctx.options.consistency)
        ks = self._keyspace_of(stmt.table, ctx.keyspace)
        if st.is_system(ks):
            return self._select_system(stmt, ks, ctx)
        td = self._table(stmt.table, ctx.keyspace)
        getters = self._getters(td, stmt, ctx)
        if stmt.json:
            getters = [_json_getter(getters)]
        where = self._where(td, stmt.where, ctx, for_select=True)
        reverse = self._reverse(td, stmt, where)
        limit = self._int(stmt.limit, INT32, ctx, "[limit]") if stmt.limit is not None else None
        if limit is not None and limit <= 0:
            raise Invalid("LIMIT must be strictly positive")
        after = _decode_paging(ctx.options.paging_state, cql) if ctx.options.paging_state else None
        specs = [
            ColumnSpec(td.schema.keyspace, td.schema.name, g.spec_name, g.cql_type) for g in getters
        ]
        if (
            self.empty_page_rate > 0
            and ctx.options.page_size
            and self._random.random() < self.empty_page_rate
        ):
            state = ctx.options.paging_state or _encode_paging(None, cql)
            return Rows(specs, [], state)
        page_size = (
            ctx.options.page_size if ctx.options.page_size and ctx.options.page_size > 0 else None
        )
        rows_so_far = after.rows_so_far if after else 0
        out: list[list[bytes | None]] = []
        size = 0
        last: _Position | None = None
        items = self._items(td, where, reverse, after, ctx.now_s, stmt.distinct)
        now_s = ctx.now_s
        for index, part, row in items:
            if limit is not None and rows_so_far >= limit:
                return Rows(specs, out, None)
            if (page_size is not None and len(out) >= page_size) or (
                page_size is not None and size >= self.page_bytes
            ):
                assert last is not None
                return Rows(specs, out, _encode_paging(last, cql))
            values = [g.fetch(part, row, now_s) for g in getters]
            out.append(values)
            size += sum(len(v) for v in values if v is not None)
            rows_so_far += 1
            last = _Position(
                index, part.token, part.pk, row.ck if row is not None else None, rows_so_far
            )
        return Rows(specs, out, None)

    def _reverse(self, td: TableData, stmt: p.Select, where: _Where) -> bool:
        if not stmt.order_by:
            return False
        if where.partitions is None:
            raise Invalid(
                "ORDER BY is only supported when the partition key is restricted by an EQ or an IN."
            )
        flips = set()
        for i, (name, desc) in enumerate(stmt.order_by):
            if i >= len(td.ck_cols) or td.ck_cols[i].name != name:
                raise Invalid(
                    "Order by currently only supports the ordering of columns following their "
                    "declared order in the PRIMARY KEY"
                )
            flips.add(desc != td.ck_cols[i].descending)
        if len(flips) > 1:
            raise Invalid("Unsupported order by relation")
        return flips.pop()

    def _items(
        self,
        td: TableData,
        where: _Where,
        reverse: bool,
        after: _Position | None,
        now_s: int,
        distinct: bool,
    ) -> Iterator[tuple[int, Partition, Row | None]]:
        """(partition index, partition, row or None for a static-only row) in result order."""
        lo, hi = self._bounds(td, where)
        restricted_ck = bool(where.ck_eq or where.slice_lo or where.slice_hi or where.ck_in)
        for index, part in self._partitions(td, where, after):
            resume = after is not None and index == after.part_index and part.pk == after.pk
            if resume and after is not None and after.ck is None:
                continue
            after_sk = (
                td.sort_key(after.ck)
                if resume and after is not None and after.ck is not None
                else None
            )
            if distinct:
                if part.statics.exists(now_s) or any(r.exists(now_s) for r in part.rows):
                    yield index, part, None
                continue
            if where.ck_in is not None:
                yield from self._in_rows(
                    td, where, part, index, reverse, after if resume else None, now_s
                )
                continue
            found = False
            for row in part.slice(lo, hi, reverse):
                if after_sk is not None and (
                    (row.sk >= after_sk) if reverse else (row.sk <= after_sk)
                ):
                    if row.sk == after_sk:
                        found = True  # rows of this partition were returned, so no static-only row
                    continue
                if row.exists(now_s):
                    found = True
                    yield index, part, row
            if not found and not restricted_ck and after_sk is None and part.statics.exists(now_s):
                yield index, part, None

    def _in_rows(
        self,
        td: TableData,
        where: _Where,
        part: Partition,
        index: int,
        reverse: bool,
        after: _Position | None,
        now_s: int,
    ) -> Iterator[tuple[int, Partition, Row | None]]:
        """Rows of one partition for a clustering IN, in IN-list order (resuming after `after`)."""
        skipping = after is not None
        seen: set[tuple[bytes, ...]] = set()
        for value in where.ck_in or ():
            values = [*where.ck_eq, value, *where.ck_in_tail]
            prefix = tuple(td.component_key(i, v) for i, v in enumerate(values))
            bound = Bound(prefix, True)
            for row in part.slice(bound, bound, reverse):
                if row.ck in seen:
                    continue  # a value listed twice
                seen.add(row.ck)  # type: ignore[arg-type]
                if skipping:
                    skipping = after is not None and row.ck != after.ck
                    continue
                if row.exists(now_s):
                    yield index, part, row

    def _partitions(
        self, td: TableData, where: _Where, after: _Position | None
    ) -> Iterator[tuple[int, Partition]]:
        if where.partitions is not None:
            start = after.part_index if after else 0
            for index in range(start, len(where.partitions)):
                part = td.partition(where.partitions[index])
                if part is not None:
                    yield index, part
            return
        if after is not None:
            start = td.index_after_token(after.token, inclusive=True)
            key = (after.token, after.pk)
            while start < len(td.order) and td.order[start] < key:
                start += 1
        elif where.token_lo is not None:
            start = td.index_after_token(where.token_lo[0], inclusive=where.token_lo[1])
        else:
            start = 0
        hi = where.token_hi
        order, parts = td.order, td.parts
        for index in range(start, len(order)):
            key = order[index]
            if hi is not None and (key[0] > hi[0] or (key[0] == hi[0] and not hi[1])):
                return
            if where.token_lo is not None:
                lo_token, inclusive = where.token_lo
                if key[0] < lo_token or (key[0] == lo_token and not inclusive):
                    continue
            yield index, parts[key]

    def _getters(self, td: TableData, stmt: p.Select, ctx: _Ctx) -> list[_Getter]:
        schema = td.schema
        if stmt.selectors is None:
            return [self._column_getter(td, col) for col in _select_star_order(schema)]
        out = []
        for selector in stmt.selectors:
            getter = self._selector_getter(td, selector.expr, ctx)
            if selector.alias:
                getter = replace(getter, spec_name=selector.alias)
            out.append(getter)
        return out

    def _column_getter(self, td: TableData, col: Column) -> _Getter:
        name = col.name
        if col.kind is ColumnKind.PARTITION_KEY:
            i = col.position

            def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
                return part.pk[i]
        elif col.kind is ColumnKind.CLUSTERING:
            i = col.position

            def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
                return row.ck[i] if row is not None and row.ck else None
        elif col.kind is ColumnKind.STATIC:

            def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
                return td.cell_value(part.statics, col, now_s)
        elif types.is_multicell(col.cql_type):

            def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
                return td.cell_value(row, col, now_s) if row is not None else None
        else:

            def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
                if row is None:
                    return None
                cell = row.cells.get(name)
                if cell is None or cell[0] is None or (cell[2] is not None and cell[2] <= now_s):
                    return None
                return cell[0]

        return _Getter(name, col.cql_type, fetch)

    def _selector_getter(self, td: TableData, expr: Any, ctx: _Ctx) -> _Getter:
        schema = td.schema
        if isinstance(expr, p.SelColumn):
            return self._column_getter(td, self._column(schema, expr.name))
        if isinstance(expr, p.SelLiteral):
            raise Invalid("Literal selectors are not supported")
        name = expr.name
        if name in ("writetime", "ttl"):
            return self._cell_meta_getter(td, expr, ctx)
        if name == "token":
            cols = [a.name for a in expr.args if isinstance(a, p.SelColumn)]
            if cols != [c.name for c in td.pk_cols]:
                raise Invalid("token() must be applied to all partition key columns in order")

            def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
                return struct.pack(">q", part.token)

            return _Getter(f"system.token({', '.join(cols)})", LONG, fetch)
        return self._constant_getter(expr, ctx)

    def _cell_meta_getter(self, td: TableData, expr: p.SelFunction, ctx: _Ctx) -> _Getter:
        name = expr.name
        if len(expr.args) != 1 or not isinstance(expr.args[0], p.SelColumn):
            raise Invalid(f"{name}() takes one column")
        col = self._column(td.schema, expr.args[0].name)
        if col.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING):
            raise Invalid(f"Cannot use selection function {name} on PRIMARY KEY part {col.name}")
        if types.is_multicell(col.cql_type):
            raise Invalid(
                f"Cannot use selection function {name} on non-frozen collection {col.name}"
            )
        if name == "writetime" and not td.schema.options.client_side_timestamps:
            raise Invalid(
                "WRITETIME is not supported on a table without client-side timestamps; enable "
                "them with "
                "custom_properties = {'client_side_timestamps': {'status': 'enabled'}}"
            )
        static = col.kind is ColumnKind.STATIC
        cname = col.name

        def cell_of(part: Partition, row: Row | None, now_s: int) -> Any:
            target = part.statics if static else row
            if target is None:
                return None
            cell = target.cells.get(cname)
            if cell is None or cell[0] is None or (cell[2] is not None and cell[2] <= now_s):
                return None
            return cell

        if name == "writetime":

            def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
                cell = cell_of(part, row, now_s)
                return None if cell is None else struct.pack(">q", cell[1])

            return _Getter(f"writetime({cname})", LONG, fetch)

        def fetch_ttl(part: Partition, row: Row | None, now_s: int) -> bytes | None:
            cell = cell_of(part, row, now_s)
            return None if cell is None or cell[2] is None else struct.pack(">i", cell[2] - now_s)

        return _Getter(f"ttl({cname})", INT32, fetch_ttl)

    def _constant_getter(self, expr: p.SelFunction, ctx: _Ctx) -> _Getter:
        name = expr.name
        result_types = {
            "now": cqltypes.TimeUUIDType,
            "currenttimeuuid": cqltypes.TimeUUIDType,
            "uuid": cqltypes.UUIDType,
            "currenttimestamp": cqltypes.DateType,
            "totimestamp": cqltypes.DateType,
            "tounixtimestamp": LONG,
            "unixtimestampof": LONG,
            "currentdate": cqltypes.SimpleDateType,
            "todate": cqltypes.SimpleDateType,
        }
        if name not in result_types:
            raise Invalid(f"Unknown function {name}")
        for arg in expr.args:
            if not (isinstance(arg, p.SelFunction) and arg.name in ("now", "currenttimeuuid")):
                raise Invalid(f"{name}() is supported here only on now()")
        t = result_types[name]
        value = bytes(t.to_binary(self._function(p.FuncCall(name, ()), t, ctx), 4))
        label = "system." + name + "(" + ", ".join(f"system.{a.name}()" for a in expr.args) + ")"

        def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
            return value

        return _Getter(label, t, fetch)

    # ================================================================ system tables

    def _select_system(self, stmt: p.Select, ks: str, ctx: _Ctx) -> Result:
        table = stmt.table.name
        if not st.has_table(ks, table):
            raise Invalid(f"unconfigured table {table}")
        vt = st.build(ks, table, self.catalog, self.node)
        types_by_name = dict(vt.columns)
        rows = [{name: st.serialise(row.get(name), t) for name, t in vt.columns} for row in vt.rows]
        for rel in stmt.where:
            if not isinstance(rel, p.Relation | p.InRelation):
                raise Invalid("Only = and IN restrictions are supported on system tables")
            if rel.column not in types_by_name:
                raise Invalid(f"Undefined column name {rel.column}")
            t = types_by_name[rel.column]
            if isinstance(rel, p.InRelation):
                wanted = set(self._in_values(rel, Column(rel.column, t, ColumnKind.REGULAR), ctx))
            elif rel.op == "=":
                wanted = {self._bytes(rel.term, t, ctx)}  # type: ignore[arg-type]
            else:
                raise Invalid("Only = and IN restrictions are supported on system tables")
            rows = [r for r in rows if r[rel.column] in wanted]
        if stmt.selectors is None:
            specs = [ColumnSpec(ks, table, n, t) for n, t in vt.columns]
            return Rows(specs, [[r[n] for n, _ in vt.columns] for r in rows])
        specs, fetchers = [], []
        for selector in stmt.selectors:
            spec, fetch = self._system_selector(selector, ks, table, types_by_name, ctx)
            specs.append(spec)
            fetchers.append(fetch)
        return Rows(specs, [[f(r) for f in fetchers] for r in rows])

    def _system_selector(
        self,
        selector: p.Selector,
        ks: str,
        table: str,
        types_by_name: dict[str, Any],
        ctx: _Ctx,
    ) -> tuple[ColumnSpec, Callable[[dict[str, bytes | None]], bytes | None]]:
        """A column of a system table, or a constant such as toUnixTimestamp(now())."""
        expr = selector.expr
        if isinstance(expr, p.SelColumn):
            if expr.name not in types_by_name:
                raise Invalid(f"Undefined column name {expr.name}")
            name = expr.name
            spec = ColumnSpec(ks, table, selector.alias or name, types_by_name[name])
            return spec, lambda row: row[name]
        if isinstance(expr, p.SelFunction):
            getter = self._constant_getter(expr, ctx)
            value = getter.fetch(None, None, ctx.now_s)  # type: ignore[arg-type]
            spec = ColumnSpec(ks, table, selector.alias or getter.spec_name, getter.cql_type)
            return spec, lambda row: value
        raise Invalid("Unsupported selector on a system table")

    # ================================================================ DDL

    def _ddl(self, statement: p.Statement, keyspace: str | None) -> Result:
        handlers: dict[type, Callable[[Any, str | None], Result]] = {
            p.CreateKeyspace: self._create_keyspace,
            p.AlterKeyspace: self._alter_keyspace,
            p.DropKeyspace: self._drop_keyspace,
            p.CreateType: self._create_type,
            p.DropType: self._drop_type,
            p.CreateTable: self._create_table,
            p.AlterTable: self._alter_table,
            p.DropTable: self._drop_table,
        }
        handler = handlers.get(type(statement))
        if handler is None:
            raise Invalid(f"Unsupported statement {type(statement).__name__}")
        result = handler(statement, keyspace)
        if isinstance(result, SchemaChange):
            self.catalog.schema_version = uuid.uuid4()
        return result

    @staticmethod
    def _replication(props: dict[str, Any]) -> dict[str, str]:
        replication = props.get("replication")
        if not isinstance(replication, dict) or "class" not in replication:
            raise ConfigError("Missing mandatory replication strategy class")
        short = str(replication["class"]).rsplit(".", 1)[-1].lower()
        if short not in REPLICATION_CLASSES:
            raise ConfigError(f"Unable to find replication strategy class '{replication['class']}'")
        out = {str(k): str(v) for k, v in replication.items()}
        out["class"] = REPLICATION_CLASSES[short]
        return out

    def _create_keyspace(self, stmt: p.CreateKeyspace, keyspace: str | None) -> Result:
        if st.is_system(stmt.name):
            raise Invalid(f"{stmt.name} keyspace is not user-modifiable")
        replication = self._replication(stmt.properties)
        if stmt.name in self.catalog.keyspaces:
            if stmt.if_not_exists:
                return Void()
            raise AlreadyExists(f"Keyspace {stmt.name} already exists", stmt.name)
        durable = bool(stmt.properties.get("durable_writes", True))
        self.catalog.keyspaces[stmt.name] = st.KeyspaceDef(stmt.name, replication, durable)
        return SchemaChange("CREATED", "KEYSPACE", stmt.name)

    def _alter_keyspace(self, stmt: p.AlterKeyspace, keyspace: str | None) -> Result:
        ks = self.catalog.keyspaces.get(stmt.name)
        if ks is None:
            raise ConfigError(f"Keyspace {stmt.name} does not exist")
        if "replication" in stmt.properties:
            ks.replication = self._replication(stmt.properties)
        return SchemaChange("UPDATED", "KEYSPACE", stmt.name)

    def _drop_keyspace(self, stmt: p.DropKeyspace, keyspace: str | None) -> Result:
        if st.is_system(stmt.name):
            raise Invalid(f"{stmt.name} keyspace is not user-modifiable")
        ks = self.catalog.keyspaces.get(stmt.name)
        if ks is None:
            if stmt.if_exists:
                return Void()
            raise ConfigError(f"Cannot drop non existing keyspace '{stmt.name}'.")
        for name in list(ks.tables):
            self._remove_table(ks, name)
        del self.catalog.keyspaces[stmt.name]
        return SchemaChange("DROPPED", "KEYSPACE", stmt.name)

    def _user_keyspace(self, name: p.QName, keyspace: str | None) -> st.KeyspaceDef:
        ks_name = self._keyspace_of(name, keyspace)
        if st.is_system(ks_name):
            raise Invalid(f"{ks_name} keyspace is not user-modifiable")
        ks = self.catalog.keyspaces.get(ks_name)
        if ks is None:
            raise Invalid(f"Keyspace {ks_name} does not exist")
        return ks

    def _parse_type(self, ks: st.KeyspaceDef, text: str) -> Any:
        def udt(name: str) -> Any:
            short = name.split(".")[-1].strip('"')
            return ks.types[short].cql_type

        try:
            return types.parse_type(text, udt)
        except types.UnknownTypeError as exc:
            raise Invalid(str(exc)) from None

    def _create_type(self, stmt: p.CreateType, keyspace: str | None) -> Result:
        ks = self._user_keyspace(stmt.name, keyspace)
        if stmt.name.name in ks.types:
            if stmt.if_not_exists:
                return Void()
            raise AlreadyExists(
                f"A user type of name {ks.name}.{stmt.name.name} already exists", ks.name
            )
        names = [n for n, _ in stmt.fields]
        if len(set(names)) != len(names):
            raise Invalid("Duplicate field name in type")
        field_types = [self._parse_type(ks, t) for _, t in stmt.fields]
        cls = types.make_udt(ks.name, stmt.name.name, names, field_types)
        ks.types[stmt.name.name] = st.UdtDef(stmt.name.name, names, field_types, cls)
        return SchemaChange("CREATED", "TYPE", ks.name, stmt.name.name)

    def _drop_type(self, stmt: p.DropType, keyspace: str | None) -> Result:
        ks = self._user_keyspace(stmt.name, keyspace)
        udt = ks.types.get(stmt.name.name)
        if udt is None:
            if stmt.if_exists:
                return Void()
            raise Invalid(f"No user type named {stmt.name.name} exists.")
        for schema in ks.tables.values():
            if any(_uses_type(c.cql_type, udt.cql_type) for c in schema.columns.values()):
                raise Invalid(
                    f"Cannot drop user type {ks.name}.{udt.name} as it is still used by table "
                    f"{ks.name}.{schema.name}"
                )
        del ks.types[stmt.name.name]
        return SchemaChange("DROPPED", "TYPE", ks.name, stmt.name.name)

    def _create_table(self, stmt: p.CreateTable, keyspace: str | None) -> Result:
        ks = self._user_keyspace(stmt.name, keyspace)
        name = stmt.name.name
        if name in ks.tables:
            if stmt.if_not_exists:
                return Void()
            raise AlreadyExists(f"Object {ks.name}.{name} already exists", ks.name, name)
        columns = self._table_columns(ks, stmt)
        schema = TableSchema(ks.name, name, columns)
        cdc_wanted = self._apply_options(schema.options, stmt.options, creating=True)
        if stmt.options.compact_storage:
            raise Invalid("COMPACT STORAGE is not supported by Amazon Keyspaces")
        if cdc_wanted:
            schema.options.cdc_enabled = True
            schema.options.latest_stream_arn = self.sink.enable_stream(schema)
        ks.tables[name] = schema
        ks.table_ids[name] = uuid.uuid4()
        self._data[(ks.name, name)] = TableData(schema)
        return SchemaChange("CREATED", "TABLE", ks.name, name)

    def _table_columns(self, ks: st.KeyspaceDef, stmt: p.CreateTable) -> dict[str, Column]:
        defs = {c.name: c for c in stmt.columns}
        if len(defs) != len(stmt.columns):
            raise Invalid("Multiple definition of identifier")
        for key in stmt.partition_key + stmt.clustering:
            if key not in defs:
                raise Invalid(f"Unknown definition {key} referenced in PRIMARY KEY")
        if len(set(stmt.partition_key + stmt.clustering)) != len(stmt.partition_key) + len(
            stmt.clustering
        ):
            raise Invalid("A column cannot be declared twice in the PRIMARY KEY")
        order = dict(stmt.options.clustering_order)
        if [n for n, _ in stmt.options.clustering_order] != stmt.clustering[: len(order)]:
            raise Invalid(
                "CLUSTERING ORDER BY must list the clustering columns in their PRIMARY KEY order"
            )
        columns: dict[str, Column] = {}
        for cdef in stmt.columns:
            cql_type = self._parse_type(ks, cdef.type_text)
            if cdef.name in stmt.partition_key:
                kind, pos, desc = (
                    ColumnKind.PARTITION_KEY,
                    stmt.partition_key.index(cdef.name),
                    False,
                )
            elif cdef.name in stmt.clustering:
                kind, pos = ColumnKind.CLUSTERING, stmt.clustering.index(cdef.name)
                desc = order.get(cdef.name, False)
            else:
                kind, pos, desc = (
                    (ColumnKind.STATIC if cdef.static else ColumnKind.REGULAR),
                    0,
                    False,
                )
            if cdef.static and kind is not ColumnKind.STATIC:
                raise Invalid(f"Static column {cdef.name} cannot be part of the PRIMARY KEY")
            if kind is ColumnKind.STATIC and not stmt.clustering:
                raise Invalid(
                    "Static columns are only useful (and thus allowed) if the table has at "
                    "least one "
                    "clustering column"
                )
            if kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING) and types.is_multicell(
                cql_type
            ):
                raise Invalid(
                    f"Invalid non-frozen collection type for PRIMARY KEY component {cdef.name}"
                )
            columns[cdef.name] = Column(cdef.name, cql_type, kind, pos, desc)
        keyed = [
            c
            for c in columns.values()
            if c.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING)
        ]
        keyed.sort(key=lambda c: (c.kind is ColumnKind.CLUSTERING, c.position))
        rest = [c for c in columns.values() if c not in keyed]
        return {c.name: c for c in keyed + rest}

    def _apply_options(
        self, opts: TableOptions, spec: p.TableOptionsSpec, creating: bool
    ) -> bool | None:
        """Apply table properties to `opts`; returns the CDC state asked for (None: unchanged)."""
        props = spec.properties
        for name in spec.property_names:
            if name not in KNOWN_TABLE_PROPERTIES:
                raise ConfigError(f"Unknown property '{name}'")
        if len(set(spec.property_names)) != len(spec.property_names):
            raise Invalid("Multiple definitions of a table property")
        cdc_wanted: bool | None = None
        if "cdc" in props:
            if not isinstance(props["cdc"], bool):
                raise ConfigError("Invalid value for property 'cdc': expected true or false")
            cdc_wanted = props["cdc"]
        if "default_time_to_live" in props:
            ttl = props["default_time_to_live"]
            if not isinstance(ttl, int) or not 0 <= ttl <= MAX_DEFAULT_TTL:
                raise ConfigError(f"default_time_to_live must be between 0 and {MAX_DEFAULT_TTL}")
            opts.default_time_to_live = ttl
            opts.ttl_enabled = opts.ttl_enabled or ttl > 0
        custom = props.get("custom_properties")
        if custom is not None:
            if not isinstance(custom, dict):
                raise ConfigError("custom_properties must be a map")
            if not creating and len(custom) > 1:
                raise Invalid(
                    "Only one custom property can be updated in one ALTER TABLE statement"
                )
            cdc_from_spec = self._custom_properties(opts, custom, creating)
            if cdc_from_spec is not None and cdc_wanted is None:
                cdc_wanted = cdc_from_spec
        return cdc_wanted

    @staticmethod
    def _custom_properties(
        opts: TableOptions, custom: dict[str, Any], creating: bool
    ) -> bool | None:
        cdc_wanted: bool | None = None
        for key, value in custom.items():
            if not isinstance(value, dict):
                raise ConfigError(f"custom property {key} must be a map")
            status = str(value.get("status", "")).lower()
            if key in ("client_side_timestamps", "ttl"):
                attr = (
                    "client_side_timestamps" if key == "client_side_timestamps" else "ttl_enabled"
                )
                if status == "enabled":
                    setattr(opts, attr, True)
                elif status == "disabled":
                    if getattr(opts, attr) or not creating:
                        raise Invalid(f"{key} cannot be disabled once enabled")
                else:
                    raise ConfigError(f"Invalid status for {key}: {value.get('status')!r}")
            elif key == "cdc_specification":
                if "view_type" in value:
                    try:
                        view = ViewType(str(value["view_type"]).upper())
                    except ValueError:
                        raise ConfigError(f"Invalid view_type {value['view_type']!r}") from None
                    if opts.cdc_enabled and view is not opts.view_type and status != "disabled":
                        raise Invalid("The view type of an enabled stream cannot be changed")
                    opts.view_type = view
                if status in ("enabled", "disabled"):
                    cdc_wanted = status == "enabled"
            elif key not in (
                "encryption_specification",
                "point_in_time_recovery",
                "capacity_mode",
                "warm_throughput",
                "replica_updates",
            ):
                raise ConfigError(f"Unknown custom property '{key}'")
        return cdc_wanted

    def _alter_table(self, stmt: p.AlterTable, keyspace: str | None) -> Result:
        ks = self._user_keyspace(stmt.name, keyspace)
        old = ks.tables.get(stmt.name.name)
        if old is None:
            raise Invalid(f"unconfigured table {stmt.name.name}")
        if stmt.unsupported:
            raise Invalid(f"{stmt.unsupported} is not supported by Amazon Keyspaces")
        schema = TableSchema(old.keyspace, old.name, dict(old.columns), copy.copy(old.options))
        if stmt.add:
            for cdef in stmt.add:
                if cdef.name in schema.columns:
                    raise Invalid(
                        f"Invalid column name {cdef.name} because it conflicts with an existing "
                        "column"
                    )
                if cdef.static and not old.clustering_key:
                    raise Invalid(
                        "Static columns are not allowed in tables with no clustering columns"
                    )
                kind = ColumnKind.STATIC if cdef.static else ColumnKind.REGULAR
                schema.columns[cdef.name] = Column(
                    cdef.name, self._parse_type(ks, cdef.type_text), kind
                )
        if stmt.options is not None:
            if stmt.options.clustering_order or stmt.options.compact_storage:
                raise Invalid("CLUSTERING ORDER and COMPACT STORAGE cannot be altered")
            cdc_wanted = self._apply_options(schema.options, stmt.options, creating=False)
            if cdc_wanted is True and not old.options.cdc_enabled:
                schema.options.cdc_enabled = True
                schema.options.latest_stream_arn = self.sink.enable_stream(schema)
            elif cdc_wanted is False and old.options.cdc_enabled:
                schema.options.cdc_enabled = False
                self.sink.disable_stream(schema.keyspace, schema.name)
        ks.tables[schema.name] = schema
        self._data[(schema.keyspace, schema.name)].set_schema(schema)
        return SchemaChange("UPDATED", "TABLE", ks.name, schema.name)

    def _drop_table(self, stmt: p.DropTable, keyspace: str | None) -> Result:
        ks = self._user_keyspace(stmt.name, keyspace)
        if stmt.name.name not in ks.tables:
            if stmt.if_exists:
                return Void()
            raise Invalid(f"unconfigured table {stmt.name.name}")
        self._remove_table(ks, stmt.name.name)
        return SchemaChange("DROPPED", "TABLE", ks.name, stmt.name.name)

    def _remove_table(self, ks: st.KeyspaceDef, name: str) -> None:
        schema = ks.tables.pop(name)
        ks.table_ids.pop(name, None)
        self._data.pop((ks.name, name), None)
        if schema.options.cdc_enabled:
            self.sink.disable_stream(ks.name, name)

    # ================================================================ prepare metadata

    def _bind_specs(
        self, statement: p.Statement, keyspace: str | None
    ) -> tuple[list[ColumnSpec], list[int]]:
        """The type of every bind marker, and where the partition key columns are among them."""
        specs: dict[int, ColumnSpec] = {}
        key_binds: dict[str, int] = {}
        members = statement.statements if isinstance(statement, p.BatchStatement) else [statement]
        for member in members:
            if isinstance(member, p.Select | p.Insert | p.Update | p.Delete):
                self._statement_binds(member, keyspace, specs, key_binds)
        if isinstance(statement, p.BatchStatement) and statement.timestamp is not None:
            first = statement.statements[0].table if statement.statements else p.QName("", "")
            ts_spec = ColumnSpec(first.keyspace or keyspace or "", first.name, "[timestamp]", LONG)
            _term_binds(statement.timestamp, ts_spec, specs)
        binds = statement.binds
        out = []
        for bind in binds:
            spec = specs.get(bind.index)
            if spec is None:
                raise Invalid("Cannot determine the type of a bind marker")
            if bind.name:
                spec = replace(spec, name=bind.name)
            out.append(spec)
        pk_indexes: list[int] = []
        if isinstance(statement, p.Insert | p.Update | p.Delete | p.Select) and not st.is_system(
            self._keyspace_of(statement.table, keyspace)
        ):
            td = self._table(statement.table, keyspace)
            if all(c.name in key_binds for c in td.pk_cols):
                pk_indexes = [key_binds[c.name] for c in td.pk_cols]
        return out, pk_indexes

    def _statement_binds(
        self,
        stmt: Any,
        keyspace: str | None,
        specs: dict[int, ColumnSpec],
        key_binds: dict[str, int],
    ) -> None:
        ks = self._keyspace_of(stmt.table, keyspace)
        if st.is_system(ks):
            if not st.has_table(ks, stmt.table.name):
                raise Invalid(f"unconfigured table {stmt.table.name}")
            layout = dict(st.build(ks, stmt.table.name, self.catalog, self.node).columns)
            columns = {n: Column(n, t, ColumnKind.REGULAR) for n, t in layout.items()}
            table_name = stmt.table.name
        else:
            schema = self._table(stmt.table, keyspace).schema
            columns, ks, table_name = schema.columns, schema.keyspace, schema.name

        def spec(name: str, cql_type: Any) -> ColumnSpec:
            return ColumnSpec(ks, table_name, name, cql_type)

        def col(name: str) -> Column:
            if name not in columns:
                raise Invalid(f"Undefined column name {name}")
            return columns[name]

        def term(t: Any, name: str, cql_type: Any) -> None:
            _term_binds(t, spec(name, cql_type), specs)

        def relations(where: list[Any]) -> None:
            for rel in where:
                if isinstance(rel, p.TokenRelation):
                    term(rel.term, "partition key token", LONG)
                elif isinstance(rel, p.InRelation):
                    c = col(rel.column)
                    if rel.bind is not None:
                        term(
                            rel.bind,
                            f"in({c.name})",
                            cqltypes.ListType.apply_parameters([c.cql_type]),
                        )
                    for t in rel.terms or ():
                        term(t, c.name, c.cql_type)
                elif isinstance(rel, p.Relation):
                    c = col(rel.column)
                    term(rel.term, c.name, c.cql_type)
                    if rel.op == "=" and isinstance(rel.term, p.Bind):
                        key_binds[c.name] = rel.term.index

        if isinstance(stmt, p.Select):
            relations(stmt.where)
            if stmt.limit is not None:
                term(stmt.limit, "[limit]", INT32)
            return
        if isinstance(stmt, p.Insert) and stmt.json is not None:
            term(stmt.json, "[json]", cqltypes.UTF8Type)
        if isinstance(stmt, p.Insert):
            for name, value in zip(stmt.columns, stmt.values, strict=True):
                c = col(name)
                term(value, c.name, c.cql_type)
                if isinstance(value, p.Bind):
                    key_binds[c.name] = value.index
        if isinstance(stmt, p.Update):
            for a in stmt.assignments:
                c = col(a.column)
                t = c.cql_type
                if a.kind == "element":
                    if issubclass(t, cqltypes.MapType):
                        term(a.key, f"key({c.name})", t.subtypes[0])
                        term(a.value, f"value({c.name})", t.subtypes[1])
                    else:
                        term(a.key, f"idx({c.name})", INT32)
                        term(a.value, f"value({c.name})", t.subtypes[0] if t.subtypes else t)
                elif a.kind == "remove" and issubclass(t, cqltypes.MapType):
                    term(a.value, c.name, cqltypes.SetType.apply_parameters([t.subtypes[0]]))
                else:
                    term(a.value, c.name, t)
        if isinstance(stmt, p.Delete):
            for name, key in stmt.targets:
                c = col(name)
                if key is not None:
                    kt = (
                        c.cql_type.subtypes[0]
                        if issubclass(c.cql_type, cqltypes.MapType)
                        else INT32
                    )
                    term(key, f"key({c.name})", kt)
        if isinstance(stmt, p.Update | p.Delete):
            relations(stmt.where)
            for cond in stmt.conditions:
                c = col(cond.column)
                term(cond.term, c.name, c.cql_type)
        if isinstance(stmt, p.Insert | p.Update) and stmt.ttl is not None:
            term(stmt.ttl, "[ttl]", INT32)
        if stmt.timestamp is not None:
            term(stmt.timestamp, "[timestamp]", LONG)

    def _result_columns(
        self, statement: p.Statement, keyspace: str | None
    ) -> list[ColumnSpec] | None:
        if not isinstance(statement, p.Select):
            return None
        ks = self._keyspace_of(statement.table, keyspace)
        ctx = _Ctx([], QueryOptions(), keyspace, self.clock.now_us())
        if st.is_system(ks):
            table = statement.table.name
            if not st.has_table(ks, table):
                raise Invalid(f"unconfigured table {table}")
            layout = st.build(ks, table, self.catalog, self.node).columns
            if statement.selectors is None:
                return [ColumnSpec(ks, table, n, t) for n, t in layout]
            by_name = dict(layout)
            return [
                self._system_selector(sel, ks, table, by_name, ctx)[0]
                for sel in statement.selectors
            ]
        td = self._table(statement.table, keyspace)
        getters = self._getters(td, statement, ctx)
        if statement.json:
            getters = [_json_getter(getters)]
        return [
            ColumnSpec(td.schema.keyspace, td.schema.name, g.spec_name, g.cql_type) for g in getters
        ]


# ==================================================================== helpers


def _json_getter(getters: list[_Getter]) -> _Getter:
    """SELECT JSON: the selected columns as one JSON object in a `[json]` text column."""

    def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
        obj = {}
        for g in getters:
            raw = g.fetch(part, row, now_s)
            value = None if raw is None else g.cql_type.from_binary(raw, 4)
            obj[types.quote_name(g.spec_name)] = types.to_json(value, g.cql_type)
        return types.dump_json(obj).encode()

    return _Getter("[json]", cqltypes.UTF8Type, fetch)


def _check_key_sizes(pk: tuple[bytes, ...], ck: tuple[bytes, ...] | None) -> None:
    if sum(len(v) for v in pk) > MAX_PARTITION_KEY_BYTES:
        raise Invalid(f"Partition key is larger than {MAX_PARTITION_KEY_BYTES} bytes")
    if ck and sum(len(v) for v in ck) > MAX_CLUSTERING_KEY_BYTES:
        raise Invalid(f"Clustering key is larger than {MAX_CLUSTERING_KEY_BYTES} bytes")


def _is_conditional(stmt: Any) -> bool:
    if isinstance(stmt, p.Insert):
        return stmt.if_not_exists
    return bool(stmt.if_exists or stmt.conditions)


def _has_changes(w: RowWrite) -> bool:
    return bool(
        w.marker
        or w.delete_row
        or w.cells
        or w.coll_set
        or w.coll_add
        or w.coll_prepend
        or w.coll_remove
        or w.list_index
    )


def _elements(cql_type: Any, raw: bytes) -> list[tuple[bytes, bytes]]:
    """A serialised collection value -> (key, value) elements as storage keeps them."""
    if issubclass(cql_type, cqltypes.MapType):
        return types.split_collection_pairs(raw)
    items = types.split_collection(raw)
    if issubclass(cql_type, cqltypes.SetType):
        return [(item, b"") for item in items]
    return [(b"", item) for item in items]


def _select_star_order(schema: TableSchema) -> list[Column]:
    """SELECT * order: partition key, clustering, statics, regular columns (each by name)."""
    keyed = schema.partition_key + schema.clustering_key
    rest = sorted(
        (c for c in schema.columns.values() if c not in keyed),
        key=lambda c: (c.kind is not ColumnKind.STATIC, c.name),
    )
    return keyed + rest


def _uses_type(cql_type: Any, udt: Any) -> bool:
    if cql_type is udt:
        return True
    return any(_uses_type(sub, udt) for sub in getattr(cql_type, "subtypes", ()) or ())


def _term_binds(term: Any, spec: ColumnSpec, specs: dict[int, ColumnSpec]) -> None:
    """Record the receiver of every bind marker inside `term` (collections: element types)."""
    if isinstance(term, p.Bind):
        specs[term.index] = spec
        return
    t = types.unfrozen(spec.cql_type)
    subtypes: tuple[Any, ...] = tuple(getattr(t, "subtypes", ()) or ())
    if isinstance(term, p.ListLit | p.SetLit) and subtypes:
        for x in term.items:
            _term_binds(x, replace(spec, cql_type=subtypes[0]), specs)
    elif isinstance(term, p.MapLit) and len(subtypes) == 2:
        for k, v in term.items:
            _term_binds(k, replace(spec, cql_type=subtypes[0]), specs)
            _term_binds(v, replace(spec, cql_type=subtypes[1]), specs)
    elif isinstance(term, p.TupleLit):
        for x, sub in zip(term.items, subtypes, strict=False):
            _term_binds(x, replace(spec, cql_type=sub), specs)
    elif isinstance(term, p.UdtLit) and issubclass(t, cqltypes.UserType):
        by_name = dict(zip(t.fieldnames, t.subtypes, strict=True))
        for name, x in term.fields:
            if name in by_name:
                _term_binds(x, replace(spec, cql_type=by_name[name]), specs)
    elif isinstance(term, p.FuncCall):
        for x in term.args:
            _term_binds(x, replace(spec, cql_type=cqltypes.DateType), specs)


def _coerce_literal(lit: p.Literal, t: Any) -> Any:
    """A CQL literal as the Python value the receiver type's serialiser accepts."""
    value = lit.value
    if value is None:
        return None
    if t is cqltypes.DecimalType:
        return Decimal(lit.text)
    if t in (cqltypes.FloatType, cqltypes.DoubleType) and isinstance(value, int):
        return float(value)
    if t in (cqltypes.FloatType, cqltypes.DoubleType) and lit.text.lower().lstrip("-") in (
        "nan",
        "infinity",
    ):
        return float(lit.text)
    if t is cqltypes.DateType and isinstance(value, str):
        return _parse_timestamp(value)
    if t in (cqltypes.UUIDType, cqltypes.TimeUUIDType) and isinstance(value, str):
        return uuid.UUID(value)
    if t is cqltypes.BytesType and not isinstance(value, bytes):
        raise Invalid(f"Invalid literal {lit.text} for a blob")
    if t in (cqltypes.UTF8Type, cqltypes.AsciiType, cqltypes.VarcharType) and not isinstance(
        value, str
    ):
        raise Invalid(f"Invalid literal {lit.text} for type text")
    return value


def _parse_timestamp(text: str) -> datetime.datetime:
    try:
        return types.parse_timestamp(text)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


# ---- paging state: magic, statement fingerprint, position


def _fingerprint(cql: str) -> int:
    return int.from_bytes(hashlib.blake2b(cql.encode(), digest_size=4).digest(), "big")


def _encode_paging(pos: _Position | None, cql: str) -> bytes:
    head = PAGING_MAGIC + struct.pack(">I", _fingerprint(cql))
    if pos is None:
        return head + b"\x00"
    parts = [
        head,
        b"\x01",
        struct.pack(">IqIH", pos.part_index, pos.token, pos.rows_so_far, len(pos.pk)),
    ]
    parts += [struct.pack(">I", len(v)) + v for v in pos.pk]
    if pos.ck is None:
        parts.append(struct.pack(">h", -1))
    else:
        parts.append(struct.pack(">h", len(pos.ck)))
        parts += [struct.pack(">I", len(v)) + v for v in pos.ck]
    return b"".join(parts)


def _decode_paging(state: bytes, cql: str) -> _Position | None:
    try:
        if state[:4] != PAGING_MAGIC or struct.unpack_from(">I", state, 4)[0] != _fingerprint(cql):
            raise ProtocolError("Invalid paging state for this statement")
        if state[8] == 0:
            return None
        index, token, so_far, npk = struct.unpack_from(">IqIH", state, 9)
        offset = 9 + struct.calcsize(">IqIH")
        pk = []
        for _ in range(npk):
            (n,) = struct.unpack_from(">I", state, offset)
            pk.append(state[offset + 4 : offset + 4 + n])
            offset += 4 + n
        (nck,) = struct.unpack_from(">h", state, offset)
        offset += 2
        ck: list[bytes] | None = None if nck < 0 else []
        for _ in range(max(nck, 0)):
            (n,) = struct.unpack_from(">I", state, offset)
            assert ck is not None
            ck.append(state[offset + 4 : offset + 4 + n])
            offset += 4 + n
        return _Position(index, token, tuple(pk), tuple(ck) if ck is not None else None, so_far)
    except (struct.error, IndexError):
        raise ProtocolError("Invalid paging state") from None
