"""Prepared-statement metadata: the type of every bind marker, and a SELECT's result columns.

`bind_specs` names each marker after what it binds to (a column, or
`[limit]`, `[ttl]`, `[timestamp]`, `key(c)`, `value(c)`, `idx(c)`, `in(c)`,
`partition key token`) and finds the markers of the partition key, which
drivers route by; `result_columns` gives the columns executing a SELECT
would return.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from cassandra import cqltypes

from keyspaces_local import types
from keyspaces_local.cql import parser as p
from keyspaces_local.cql import system_tables as st
from keyspaces_local.cql.api import ColumnSpec, Invalid, QueryOptions
from keyspaces_local.cql.selectors import json_getter, select_getters, system_selector
from keyspaces_local.cql.state import Ctx, EngineState, keyspace_of
from keyspaces_local.cql.values import INT32, LONG
from keyspaces_local.schema import Column, ColumnKind


def bind_specs(
    state: EngineState, statement: p.Statement, keyspace: str | None
) -> tuple[list[ColumnSpec], list[int]]:
    """The type of every bind marker, and where the partition key columns are among them."""
    specs: dict[int, ColumnSpec] = {}
    key_binds: dict[str, int] = {}
    members = statement.statements if isinstance(statement, p.BatchStatement) else [statement]
    for member in members:
        if isinstance(member, p.Select | p.Insert | p.Update | p.Delete):
            _statement_binds(state, member, keyspace, specs, key_binds)
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
        keyspace_of(statement.table, keyspace)
    ):
        td = state.table(statement.table, keyspace)
        if all(c.name in key_binds for c in td.pk_cols):
            pk_indexes = [key_binds[c.name] for c in td.pk_cols]
    return out, pk_indexes


def _statement_binds(
    state: EngineState,
    stmt: Any,
    keyspace: str | None,
    specs: dict[int, ColumnSpec],
    key_binds: dict[str, int],
) -> None:
    ks = keyspace_of(stmt.table, keyspace)
    if st.is_system(ks):
        if not st.has_table(ks, stmt.table.name):
            raise Invalid(f"unconfigured table {stmt.table.name}")
        layout = dict(st.build(ks, stmt.table.name, state.catalog, state.node).columns)
        columns = {n: Column(n, t, ColumnKind.REGULAR) for n, t in layout.items()}
        table_name = stmt.table.name
    else:
        schema = state.table(stmt.table, keyspace).schema
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
                term(rel.term, "partition key token", state.partitioner.token_type)
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
                kt = c.cql_type.subtypes[0] if issubclass(c.cql_type, cqltypes.MapType) else INT32
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


def result_columns(
    state: EngineState, statement: p.Statement, keyspace: str | None
) -> list[ColumnSpec] | None:
    if not isinstance(statement, p.Select):
        return None
    ks = keyspace_of(statement.table, keyspace)
    ctx = Ctx([], QueryOptions(), keyspace, state.clock.now_us())
    if st.is_system(ks):
        table = statement.table.name
        if not st.has_table(ks, table):
            raise Invalid(f"unconfigured table {table}")
        layout = st.build(ks, table, state.catalog, state.node).columns
        if statement.selectors is None:
            return [ColumnSpec(ks, table, n, t) for n, t in layout]
        by_name = dict(layout)
        return [system_selector(sel, ks, table, by_name, ctx)[0] for sel in statement.selectors]
    td = state.table(statement.table, keyspace)
    getters = select_getters(td, statement, ctx)
    if statement.json:
        getters = [json_getter(getters)]
    return [
        ColumnSpec(td.schema.keyspace, td.schema.name, g.spec_name, g.cql_type) for g in getters
    ]


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
