"""SELECT: from user tables and from the system tables drivers read.

User tables: the partitions a WHERE names (by key, IN or token range) in
token order, the rows of each in clustering order (or reversed by ORDER BY),
DISTINCT, LIMIT, and pages that resume from a paging state. Reads are at
ONE, LOCAL_ONE or LOCAL_QUORUM only. System tables are built from the
catalog on every read and filtered by = and IN.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from keyspaces_local.cql import parser as p
from keyspaces_local.cql import system_tables as st
from keyspaces_local.cql.api import ColumnSpec, Invalid, Result, Rows
from keyspaces_local.cql.limits import check_read_consistency
from keyspaces_local.cql.paging import Position, decode_paging, encode_paging
from keyspaces_local.cql.selectors import json_getter, select_getters, system_selector
from keyspaces_local.cql.state import Ctx, EngineState, keyspace_of
from keyspaces_local.cql.values import INT32, to_bytes, to_int
from keyspaces_local.cql.where import Where, analyse_where, bounds, in_values
from keyspaces_local.schema import Column, ColumnKind
from keyspaces_local.storage import Bound, Partition, Row, TableData


def select(
    state: EngineState,
    stmt: p.Select,
    cql: str,
    ctx: Ctx,
    *,
    page_bytes: int,
    empty_page_rate: float,
    rng: random.Random,
) -> Result:
    """Run a SELECT. A paged read's page ends at the page size or at `page_bytes` of values.

    With `empty_page_rate` > 0, that share of a paged read's pages come back
    empty but with a paging state, as Keyspaces' pages may.
    """
    check_read_consistency(ctx.options.consistency)
    ks = keyspace_of(stmt.table, ctx.keyspace)
    if st.is_system(ks):
        return _select_system(state, stmt, ks, ctx)
    td = state.table(stmt.table, ctx.keyspace)
    getters = select_getters(td, stmt, ctx)
    if stmt.json:
        getters = [json_getter(getters)]
    where = analyse_where(td, stmt.where, ctx, for_select=True)
    reverse = _reverse(td, stmt, where)
    limit = to_int(stmt.limit, INT32, ctx, "[limit]") if stmt.limit is not None else None
    if limit is not None and limit <= 0:
        raise Invalid("LIMIT must be strictly positive")
    partitioner = state.partitioner.name
    after = (
        decode_paging(ctx.options.paging_state, cql, partitioner)
        if ctx.options.paging_state
        else None
    )
    specs = [
        ColumnSpec(td.schema.keyspace, td.schema.name, g.spec_name, g.cql_type) for g in getters
    ]
    if empty_page_rate > 0 and ctx.options.page_size and rng.random() < empty_page_rate:
        paging_state = ctx.options.paging_state or encode_paging(None, cql, partitioner)
        return Rows(specs, [], paging_state)
    page_size = (
        ctx.options.page_size if ctx.options.page_size and ctx.options.page_size > 0 else None
    )
    rows_so_far = after.rows_so_far if after else 0
    out: list[list[bytes | None]] = []
    size = 0
    last: Position | None = None
    items = _items(td, where, reverse, after, ctx.now_s, stmt.distinct)
    now_s = ctx.now_s
    for index, part, row in items:
        if limit is not None and rows_so_far >= limit:
            return Rows(specs, out, None)
        if (page_size is not None and len(out) >= page_size) or (
            page_size is not None and size >= page_bytes
        ):
            assert last is not None
            return Rows(specs, out, encode_paging(last, cql, partitioner))
        values = [g.fetch(part, row, now_s) for g in getters]
        out.append(values)
        size += sum(len(v) for v in values if v is not None)
        rows_so_far += 1
        last = Position(
            index, part.token, part.pk, row.ck if row is not None else None, rows_so_far
        )
    return Rows(specs, out, None)


def _reverse(td: TableData, stmt: p.Select, where: Where) -> bool:
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
    td: TableData,
    where: Where,
    reverse: bool,
    after: Position | None,
    now_s: int,
    distinct: bool,
) -> Iterator[tuple[int, Partition, Row | None]]:
    """(partition index, partition, row or None for a static-only row) in result order."""
    lo, hi = bounds(td, where)
    restricted_ck = bool(where.ck_eq or where.slice_lo or where.slice_hi or where.ck_in)
    for index, part in _partitions(td, where, after):
        resume = after is not None and index == after.part_index and part.pk == after.pk
        if resume and after is not None and after.ck is None:
            continue
        after_sk = (
            td.sort_key(after.ck) if resume and after is not None and after.ck is not None else None
        )
        if distinct:
            if part.statics.exists(now_s) or any(r.exists(now_s) for r in part.rows):
                yield index, part, None
            continue
        if where.ck_in is not None:
            yield from _in_rows(td, where, part, index, reverse, after if resume else None, now_s)
            continue
        found = False
        for row in part.slice(lo, hi, reverse):
            if after_sk is not None and ((row.sk >= after_sk) if reverse else (row.sk <= after_sk)):
                if row.sk == after_sk:
                    found = True  # rows of this partition were returned, so no static-only row
                continue
            if row.exists(now_s):
                found = True
                yield index, part, row
        if not found and not restricted_ck and after_sk is None and part.statics.exists(now_s):
            yield index, part, None


def _in_rows(
    td: TableData,
    where: Where,
    part: Partition,
    index: int,
    reverse: bool,
    after: Position | None,
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
    td: TableData, where: Where, after: Position | None
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


def _select_system(state: EngineState, stmt: p.Select, ks: str, ctx: Ctx) -> Result:
    table = stmt.table.name
    if not st.has_table(ks, table):
        raise Invalid(f"unconfigured table {table}")
    vt = st.build(ks, table, state.catalog, state.node)
    types_by_name = dict(vt.columns)
    rows = [{name: st.serialise(row.get(name), t) for name, t in vt.columns} for row in vt.rows]
    for rel in stmt.where:
        if not isinstance(rel, p.Relation | p.InRelation):
            raise Invalid("Only = and IN restrictions are supported on system tables")
        if rel.column not in types_by_name:
            raise Invalid(f"Undefined column name {rel.column}")
        t = types_by_name[rel.column]
        if isinstance(rel, p.InRelation):
            wanted = set(in_values(rel, Column(rel.column, t, ColumnKind.REGULAR), ctx))
        elif rel.op == "=":
            wanted = {to_bytes(rel.term, t, ctx)}  # type: ignore[arg-type]
        else:
            raise Invalid("Only = and IN restrictions are supported on system tables")
        rows = [r for r in rows if r[rel.column] in wanted]
    if stmt.selectors is None:
        specs = [ColumnSpec(ks, table, n, t) for n, t in vt.columns]
        return Rows(specs, [[r[n] for n, _ in vt.columns] for r in rows])
    specs, fetchers = [], []
    for selector in stmt.selectors:
        spec, fetch = system_selector(selector, ks, table, types_by_name, ctx)
        specs.append(spec)
        fetchers.append(fetch)
    return Rows(specs, [[f(r) for f in fetchers] for r in rows])
