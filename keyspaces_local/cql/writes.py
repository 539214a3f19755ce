"""INSERT, UPDATE, DELETE and batches: Keyspaces' write rules, storage, and the change sink.

Writes are at LOCAL_QUORUM only. A write's timestamp is the server's
(strictly increasing; one for a whole batch) unless the table has
client-side timestamps, which allow `USING TIMESTAMP` within 2 days back
and 5 minutes ahead; its expiry comes from `USING TTL` (tables with TTL
on) or the table's default TTL, and is queued for the expiry sweep.
Conditional writes (LWT) return `[applied]`, with the current row when not
applied; batches refuse them. In a table with CDC on, every row a write
changes becomes one `RowChange` for the sink, in commit order.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from cassandra import cqltypes

from keyspaces_local import types
from keyspaces_local.cdc import RowChange
from keyspaces_local.cql import parser as p
from keyspaces_local.cql import system_tables as st
from keyspaces_local.cql.api import ColumnSpec, Invalid, QueryOptions, Result, Rows, Void
from keyspaces_local.cql.limits import (
    CLIENT_TS_FUTURE_US,
    CLIENT_TS_PAST_US,
    MAX_DEFAULT_TTL,
    check_key_sizes,
    check_write_consistency,
)
from keyspaces_local.cql.selectors import column_getter
from keyspaces_local.cql.state import Ctx, EngineState, column, keyspace_of
from keyspaces_local.cql.values import BOOL, INT32, LONG, to_bytes, to_int
from keyspaces_local.cql.where import Where, analyse_where, bounds, single_partition
from keyspaces_local.partitioners import by_name
from keyspaces_local.schema import Column, ColumnKind, TableSchema
from keyspaces_local.storage import ListIndexError, Partition, Row, RowWrite, TableData


def run_write(state: EngineState, statement: p.Insert | p.Update | p.Delete, ctx: Ctx) -> Result:
    """One INSERT, UPDATE or DELETE."""
    check_write_consistency(ctx.options.consistency)
    return _write(state, statement, ctx)


def run_batch_statement(state: EngineState, statement: p.BatchStatement, ctx: Ctx) -> Result:
    """BEGIN BATCH ... APPLY: one write time (or its USING TIMESTAMP) for every member."""
    check_write_consistency(ctx.options.consistency)
    # Refuse before writing anything: a batch is applied whole or not at all.
    if any(_is_conditional(member) for member in statement.statements):
        raise Invalid("Conditional statements are not supported in batches")
    ctx.batch_ts = state.server_ts()
    ctx.batch_using_ts = statement.timestamp
    for member in statement.statements:
        _write(state, member, ctx)
    return Void()


def run_batch(
    state: EngineState,
    statements: list[tuple[p.Statement, list[bytes | None], str | None]],
    options: QueryOptions,
) -> Result:
    """A protocol BATCH of (statement, bound values, keyspace): all checked, then all written."""
    check_write_consistency(options.consistency)
    batch_ts = state.server_ts()
    ctxs = []
    for statement, values, ks in statements:
        if not isinstance(statement, p.Insert | p.Update | p.Delete):
            raise Invalid("Only INSERT, UPDATE and DELETE statements are allowed in a batch")
        if _is_conditional(statement):
            raise Invalid("Conditional statements are not supported in batches")
        ctxs.append((statement, Ctx(values, options, ks, state.clock.now_us(), batch_ts)))
    for statement, ctx in ctxs:
        _write(state, statement, ctx)
    return Void()


def _write_ts(state: EngineState, schema: TableSchema, using_ts: Any, ctx: Ctx) -> int:
    cst = schema.options.client_side_timestamps
    using_ts = using_ts if using_ts is not None else ctx.batch_using_ts
    if using_ts is not None:
        if not cst:
            raise Invalid(
                "USING TIMESTAMP is not supported on a table without client-side timestamps; "
                "enable them with custom_properties = {'client_side_timestamps': "
                "{'status': 'enabled'}}"
            )
        ts = to_int(using_ts, LONG, ctx, "[timestamp]")
        if ts is None:
            raise Invalid("Invalid null value of timestamp")
        _check_client_ts(ts, ctx)
        return ts
    if cst and ctx.options.timestamp_us is not None:
        # Not window-checked: drivers stamp real time, and tests move the emulator's
        # clock days ahead; the window is enforced on USING TIMESTAMP only.
        return ctx.options.timestamp_us
    if ctx.batch_ts is not None:
        return ctx.batch_ts
    return state.server_ts()


def _check_client_ts(ts: int, ctx: Ctx) -> None:
    if not ctx.now_us - CLIENT_TS_PAST_US <= ts <= ctx.now_us + CLIENT_TS_FUTURE_US:
        raise Invalid(
            f"Timestamp {ts} is out of the accepted range: client-side timestamps must be "
            "within 2 days before and 5 minutes after the current time (microseconds)"
        )


def _expiry(schema: TableSchema, using_ttl: Any, ctx: Ctx) -> int | None:
    if using_ttl is not None:
        if not schema.options.ttl_enabled:
            raise Invalid("TTL is not yet supported")
        ttl = to_int(using_ttl, INT32, ctx, "[ttl]")
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


def _write(state: EngineState, statement: p.Insert | p.Update | p.Delete, ctx: Ctx) -> Result:
    ks = keyspace_of(statement.table, ctx.keyspace)
    if st.is_system(ks):
        if isinstance(statement, p.Update) and _is_partitioner_update(statement, ks):
            return _set_partitioner(state, statement, ctx)
        raise Invalid(f"{ks} keyspace is not user-modifiable")
    td = state.table(statement.table, ctx.keyspace)
    if isinstance(statement, p.Insert):
        return _insert(state, td, statement, ctx)
    if isinstance(statement, p.Update):
        return _update(state, td, statement, ctx)
    return _delete(state, td, statement, ctx)


def _is_partitioner_update(statement: p.Update, ks: str) -> bool:
    """`UPDATE system.local SET partitioner = ... WHERE key = ...`: the one system write."""
    return (
        (ks, statement.table.name) == ("system", "local")
        and [a.column for a in statement.assignments] == ["partitioner"]
        and statement.assignments[0].kind == "set"
        and not (statement.if_exists or statement.conditions or statement.ttl)
        and statement.timestamp is None
    )


def _set_partitioner(state: EngineState, statement: p.Update, ctx: Ctx) -> Result:
    """Keyspaces' way to choose the account's partitioner; here it applies at once."""
    (where,) = statement.where if len(statement.where) == 1 else (None,)
    if not (
        isinstance(where, p.Relation)
        and (where.column, where.op) == ("key", "=")
        and to_bytes(where.term, cqltypes.UTF8Type, ctx) == b"local"
    ):
        raise Invalid("The partitioner is set with UPDATE system.local ... WHERE key = 'local'")
    name = to_bytes(statement.assignments[0].value, cqltypes.UTF8Type, ctx)
    try:
        state.set_partitioner(by_name(name.decode() if name is not None else ""))
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    return Void()


def _key_values(cols: list[Column], given: dict[str, bytes | None], what: str) -> tuple[bytes, ...]:
    out = []
    for col in cols:
        if col.name not in given:
            raise Invalid(f"Some {what} key parts are missing: {col.name}")
        value = given[col.name]
        if value is None:
            raise Invalid(f"Invalid null value in condition for column {col.name}")
        out.append(value)
    return tuple(out)


def _insert(state: EngineState, td: TableData, stmt: p.Insert, ctx: Ctx) -> Result:
    schema = td.schema
    if any(issubclass(c.cql_type, cqltypes.CounterColumnType) for c in schema.columns.values()):
        raise Invalid("INSERT statements are not allowed on counter tables, use UPDATE instead")
    if stmt.json is not None:
        values = _json_values(schema, stmt.json, ctx)
    else:
        if len(set(stmt.columns)) != len(stmt.columns):
            raise Invalid("Multiple definitions found for a column")
        values = {}
        for name, term in zip(stmt.columns, stmt.values, strict=True):
            col = column(schema, name)
            values[name] = to_bytes(term, col.cql_type, ctx)
    pk = _key_values(td.pk_cols, values, "partition")
    ck = _key_values(td.ck_cols, values, "clustering") if td.ck_cols else ()
    ts = _write_ts(state, schema, stmt.timestamp, ctx)
    exp = _expiry(schema, stmt.ttl, ctx)
    row_w = RowWrite(pk, ck, ts, exp, marker=True)
    static_w = RowWrite(pk, None, ts, exp)
    for name, value in values.items():
        col = schema.columns[name]
        if col.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING):
            continue
        target = static_w if col.kind is ColumnKind.STATIC else row_w
        _assign_whole(target, col, value)
    if stmt.if_not_exists:
        part = td.partition(pk)
        row = td.row(part, ck) if part is not None else None
        if row is not None and row.exists(ctx.now_s):
            return _lwt_result(td, False, part, row, ctx)
    writes = ([static_w] if _has_changes(static_w) else []) + [row_w]
    _commit(state, td, writes)
    return _lwt_result(td, True, None, None, ctx) if stmt.if_not_exists else Void()


def _json_values(schema: TableSchema, term: Any, ctx: Ctx) -> dict[str, bytes | None]:
    """INSERT JSON: every column from the object; columns it leaves out are set to null."""
    raw = to_bytes(term, cqltypes.UTF8Type, ctx)
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


def _assign_whole(w: RowWrite, col: Column, value: bytes | None) -> None:
    if types.is_multicell(col.cql_type):
        w.coll_set[col.name] = None if value is None else _elements(col.cql_type, value)
    else:
        w.cells[col.name] = value


def _lwt_result(
    td: TableData, applied: bool, part: Partition | None, row: Row | None, ctx: Ctx
) -> Rows:
    schema = td.schema
    specs = [ColumnSpec(schema.keyspace, schema.name, "[applied]", BOOL)]
    values: list[bytes | None] = [BOOL.to_binary(applied, 4)]
    if not applied and part is not None and row is not None:
        for col in schema.columns.values():
            specs.append(ColumnSpec(schema.keyspace, schema.name, col.name, col.cql_type))
            values.append(column_getter(td, col).fetch(part, row, ctx.now_s))
    return Rows(specs, [values])


def _update(state: EngineState, td: TableData, stmt: p.Update, ctx: Ctx) -> Result:
    schema = td.schema
    where = analyse_where(td, stmt.where, ctx, for_select=False)
    pk = single_partition(where)
    full_ck = len(where.ck_eq) == len(td.ck_cols) and not (where.slice_lo or where.slice_hi)
    ts = _write_ts(state, schema, stmt.timestamp, ctx)
    exp = _expiry(schema, stmt.ttl, ctx)
    ck = tuple(where.ck_eq) if full_ck else None
    row_w = RowWrite(pk, ck if ck is not None else (), ts, exp)
    static_w = RowWrite(pk, None, ts, exp)
    touches_regular = False
    for assignment in stmt.assignments:
        col = column(schema, assignment.column)
        if col.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING):
            raise Invalid(f"PRIMARY KEY part {col.name} found in SET part")
        target = static_w if col.kind is ColumnKind.STATIC else row_w
        touches_regular = touches_regular or col.kind is not ColumnKind.STATIC
        if issubclass(col.cql_type, cqltypes.CounterColumnType):
            target.cells[col.name] = _counter_value(td, target, col, assignment, ctx)
        else:
            _assign(target, col, assignment, ctx)
    if touches_regular and ck is None:
        raise Invalid("Some clustering keys are missing: " + ", ".join(c.name for c in td.ck_cols))
    if stmt.if_exists or stmt.conditions:
        part = td.partition(pk)
        row = td.row(part, ck) if part is not None and ck is not None else None
        if not _conditions_hold(td, part, row, stmt.if_exists, stmt.conditions, ctx):
            return _lwt_result(td, False, part, row, ctx)
    writes = [
        w for w in (static_w, row_w) if _has_changes(w) and (w is static_w or touches_regular)
    ]
    _commit(state, td, writes)
    if stmt.if_exists or stmt.conditions:
        return _lwt_result(td, True, None, None, ctx)
    return Void()


def _counter_value(td: TableData, w: RowWrite, col: Column, a: p.Assignment, ctx: Ctx) -> bytes:
    """A counter update as the new total (the engine lock makes read-modify-write atomic)."""
    if a.kind not in ("add", "remove"):
        raise Invalid(
            f"Cannot set the value of counter column {col.name} (counters can only "
            "be incremented/decremented, not set)"
        )
    delta = to_int(a.value, LONG, ctx, col.name)
    if delta is None:
        raise Invalid("Invalid null value for counter increment")
    part = td.partition(w.pk)
    row = td.row(part, w.ck) if part is not None else None
    current = td.cell_value(row, col, ctx.now_s) if row is not None else None
    total = int(LONG.from_binary(current, 4)) if current else 0
    total += delta if a.kind == "add" else -delta
    return bytes(LONG.to_binary(total, 4))


def _assign(w: RowWrite, col: Column, a: p.Assignment, ctx: Ctx) -> None:
    t = col.cql_type
    if a.kind == "set":
        _assign_whole(w, col, to_bytes(a.value, t, ctx))
        return
    if not types.is_multicell(t):
        raise Invalid(
            f"Invalid operation ({a.column} = {a.column} {a.kind} ...) for non collection "
            "column "
            f"{a.column}"
        )
    if a.kind == "element":
        _assign_element(w, col, a, ctx)
        return
    if a.kind == "remove" and issubclass(t, cqltypes.MapType):
        key_set = cqltypes.SetType.apply_parameters([t.subtypes[0]])
        raw = to_bytes(a.value, key_set, ctx)
        w.coll_remove.setdefault(col.name, []).extend(types.split_collection(raw) if raw else [])
        return
    raw = to_bytes(a.value, t, ctx)
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
        keys = [v for _, v in items] if issubclass(t, cqltypes.ListType) else [k for k, _ in items]
        w.coll_remove.setdefault(col.name, []).extend(keys)


def _assign_element(w: RowWrite, col: Column, a: p.Assignment, ctx: Ctx) -> None:
    t = col.cql_type
    if issubclass(t, cqltypes.MapType):
        key = to_bytes(a.key, t.subtypes[0], ctx)
        if key is None:
            raise Invalid("Invalid null map key")
        value = to_bytes(a.value, t.subtypes[1], ctx)
        if value is None:
            w.coll_remove.setdefault(col.name, []).append(key)
        else:
            w.coll_add.setdefault(col.name, []).append((key, value))
    elif issubclass(t, cqltypes.ListType):
        index = to_int(a.key, INT32, ctx, "list index")
        if index is None:
            raise Invalid("Invalid null value for list index")
        w.list_index.setdefault(col.name, []).append((index, to_bytes(a.value, t.subtypes[0], ctx)))
    else:
        raise Invalid(f"Invalid operation ({col.name}[?] = ?) for set column {col.name}")


def _conditions_hold(
    td: TableData,
    part: Partition | None,
    row: Row | None,
    if_exists: bool,
    conditions: list[p.Condition],
    ctx: Ctx,
) -> bool:
    exists = part is not None and row is not None and row.exists(ctx.now_s)
    if if_exists:
        return exists
    for cond in conditions:
        col = column(td.schema, cond.column)
        expected = to_bytes(cond.term, col.cql_type, ctx)
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


def _delete(state: EngineState, td: TableData, stmt: p.Delete, ctx: Ctx) -> Result:
    schema = td.schema
    where = analyse_where(td, stmt.where, ctx, for_select=False)
    pk = single_partition(where)
    ts = _write_ts(state, schema, stmt.timestamp, ctx)
    full_ck = len(where.ck_eq) == len(td.ck_cols) and not (where.slice_lo or where.slice_hi)
    ck = tuple(where.ck_eq) if full_ck else None
    if stmt.if_exists or stmt.conditions:
        part = td.partition(pk)
        row = td.row(part, ck) if part is not None and ck is not None else None
        if not _conditions_hold(td, part, row, stmt.if_exists, stmt.conditions, ctx):
            return _lwt_result(td, False, part, row, ctx)
    if stmt.targets:
        _delete_columns(state, td, stmt, pk, ck, ts, ctx)
    elif full_ck:
        _commit(state, td, [RowWrite(pk, ck, ts, delete_row=True)])
    else:
        _delete_many(state, td, pk, where, ts, ctx)
    if stmt.if_exists or stmt.conditions:
        return _lwt_result(td, True, None, None, ctx)
    return Void()


def _delete_columns(
    state: EngineState,
    td: TableData,
    stmt: p.Delete,
    pk: tuple[bytes, ...],
    ck: tuple[bytes, ...] | None,
    ts: int,
    ctx: Ctx,
) -> None:
    row_w = RowWrite(pk, ck if ck is not None else (), ts)
    static_w = RowWrite(pk, None, ts)
    for name, key in stmt.targets:
        col = column(td.schema, name)
        if col.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING):
            raise Invalid(
                f"Invalid identifier {name} for deletion (should not be a PRIMARY KEY part)"
            )
        w = static_w if col.kind is ColumnKind.STATIC else row_w
        if col.kind is not ColumnKind.STATIC and ck is None:
            raise Invalid("Some clustering keys are missing")
        if key is None and types.is_multicell(col.cql_type):
            w.coll_delete.append(name)  # at the statement's timestamp, not ts - 1 as `= null`
        elif key is None:
            w.cells[name] = None
        elif issubclass(col.cql_type, cqltypes.MapType):
            k = to_bytes(key, col.cql_type.subtypes[0], ctx)
            w.coll_remove.setdefault(name, []).append(k or b"")
        elif issubclass(col.cql_type, cqltypes.ListType):
            index = to_int(key, INT32, ctx, "list index")
            w.list_index.setdefault(name, []).append((index or 0, None))
        else:
            raise Invalid(f"Invalid element deletion on column {name}")
    _commit(state, td, [w for w in (static_w, row_w) if _has_changes(w)])


def _delete_many(
    state: EngineState, td: TableData, pk: tuple[bytes, ...], where: Where, ts: int, ctx: Ctx
) -> None:
    """Partition or clustering-range delete: one change per row that was there."""
    part = td.partition(pk, create=True)
    assert part is not None
    whole = not where.ck_eq and where.slice_lo is None and where.slice_hi is None
    lo, hi = bounds(td, where)
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
    committed = state.clock.now_us()
    for row, old in before:
        if old is None:
            continue
        state.sink.record(
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


def _commit(state: EngineState, td: TableData, writes: list[RowWrite]) -> None:
    """Apply row writes in order; with CDC on, emit one RowChange per write."""
    cdc = td.schema.options.cdc_enabled
    now_s = state.clock.now_us() // 1_000_000
    for w in writes:
        check_key_sizes(w.pk, w.ck)
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
            state.sink.record(
                RowChange(
                    table=td.schema,
                    token=part.token,
                    partition_key=part.pk,
                    clustering_key=w.ck,
                    old_image=old,
                    new_image=td.image(part, row, now_s),
                    committed_at_us=state.clock.now_us(),
                    touched=_touched(w) if w.ck is None else None,
                )
            )
        if w.exp is not None:
            state.expiries.push(w.exp, td, w.pk, w.ck)


def _is_conditional(stmt: Any) -> bool:
    if isinstance(stmt, p.Insert):
        return stmt.if_not_exists
    return bool(stmt.if_exists or stmt.conditions)


def _touched(w: RowWrite) -> frozenset[str]:
    """The columns a write sets, deletes or changes elements of."""
    return frozenset(
        [
            *w.cells,
            *w.coll_set,
            *w.coll_delete,
            *w.coll_add,
            *w.coll_prepend,
            *w.coll_remove,
            *w.list_index,
        ]
    )


def _has_changes(w: RowWrite) -> bool:
    return bool(
        w.marker
        or w.delete_row
        or w.cells
        or w.coll_set
        or w.coll_delete
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
