"""What a SELECT returns per column: one `Getter` per selected column or function.

A getter carries the result column's name and type and fetches its value
from a (partition, row): plain columns, WRITETIME() and TTL() (refused where
Keyspaces refuses them), token(), the constant time functions, and the
single `[json]` column of SELECT JSON. `system_selector` does the same for
a column of a system table. Reads, LWT results and prepared-statement
metadata all build their columns here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from cassandra import cqltypes

from keyspaces_local import types
from keyspaces_local.cql import parser as p
from keyspaces_local.cql.api import ColumnSpec, Invalid
from keyspaces_local.cql.state import Ctx, column
from keyspaces_local.cql.values import INT32, LONG, call_function
from keyspaces_local.schema import Column, ColumnKind, TableSchema
from keyspaces_local.storage import Partition, Row, TableData


@dataclass(frozen=True)
class Getter:
    spec_name: str
    cql_type: Any
    fetch: Callable[[Partition, Row | None, int], bytes | None]


def select_getters(td: TableData, stmt: p.Select, ctx: Ctx) -> list[Getter]:
    schema = td.schema
    if stmt.selectors is None:
        return [column_getter(td, col) for col in select_star_order(schema)]
    out = []
    for selector in stmt.selectors:
        getter = _selector_getter(td, selector.expr, ctx)
        if selector.alias:
            getter = replace(getter, spec_name=selector.alias)
        out.append(getter)
    return out


def column_getter(td: TableData, col: Column) -> Getter:
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

    return Getter(name, col.cql_type, fetch)


def _selector_getter(td: TableData, expr: Any, ctx: Ctx) -> Getter:
    schema = td.schema
    if isinstance(expr, p.SelColumn):
        return column_getter(td, column(schema, expr.name))
    if isinstance(expr, p.SelLiteral):
        raise Invalid("Literal selectors are not supported")
    name = expr.name
    if name in ("writetime", "ttl"):
        return _cell_meta_getter(td, expr, ctx)
    if name == "token":
        cols = [a.name for a in expr.args if isinstance(a, p.SelColumn)]
        if cols != [c.name for c in td.pk_cols]:
            raise Invalid("token() must be applied to all partition key columns in order")

        partitioner = td.partitioner

        def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
            return partitioner.serialise(part.token)

        return Getter(f"system.token({', '.join(cols)})", partitioner.token_type, fetch)
    return constant_getter(expr, ctx)


def _cell_meta_getter(td: TableData, expr: p.SelFunction, ctx: Ctx) -> Getter:
    name = expr.name
    if len(expr.args) != 1 or not isinstance(expr.args[0], p.SelColumn):
        raise Invalid(f"{name}() takes one column")
    col = column(td.schema, expr.args[0].name)
    if col.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING):
        raise Invalid(f"Cannot use selection function {name} on PRIMARY KEY part {col.name}")
    if types.is_multicell(col.cql_type):
        raise Invalid(f"Cannot use selection function {name} on non-frozen collection {col.name}")
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

        return Getter(f"writetime({cname})", LONG, fetch)

    def fetch_ttl(part: Partition, row: Row | None, now_s: int) -> bytes | None:
        cell = cell_of(part, row, now_s)
        return None if cell is None or cell[2] is None else struct.pack(">i", cell[2] - now_s)

    return Getter(f"ttl({cname})", INT32, fetch_ttl)


def constant_getter(expr: p.SelFunction, ctx: Ctx) -> Getter:
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
    value = bytes(t.to_binary(call_function(p.FuncCall(name, ()), t, ctx), 4))
    label = "system." + name + "(" + ", ".join(f"system.{a.name}()" for a in expr.args) + ")"

    def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
        return value

    return Getter(label, t, fetch)


def system_selector(
    selector: p.Selector,
    ks: str,
    table: str,
    types_by_name: dict[str, Any],
    ctx: Ctx,
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
        getter = constant_getter(expr, ctx)
        value = getter.fetch(None, None, ctx.now_s)  # type: ignore[arg-type]
        spec = ColumnSpec(ks, table, selector.alias or getter.spec_name, getter.cql_type)
        return spec, lambda row: value
    raise Invalid("Unsupported selector on a system table")


def json_getter(getters: list[Getter]) -> Getter:
    """SELECT JSON: the selected columns as one JSON object in a `[json]` text column."""

    def fetch(part: Partition, row: Row | None, now_s: int) -> bytes | None:
        obj = {}
        for g in getters:
            raw = g.fetch(part, row, now_s)
            value = None if raw is None else g.cql_type.from_binary(raw, 4)
            obj[types.quote_name(g.spec_name)] = types.to_json(value, g.cql_type)
        return types.dump_json(obj).encode()

    return Getter("[json]", cqltypes.UTF8Type, fetch)


def select_star_order(schema: TableSchema) -> list[Column]:
    """SELECT * order: partition key, clustering, statics, regular columns (each by name)."""
    keyed = schema.partition_key + schema.clustering_key
    rest = sorted(
        (c for c in schema.columns.values() if c not in keyed),
        key=lambda c: (c.kind is not ColumnKind.STATIC, c.name),
    )
    return keyed + rest
