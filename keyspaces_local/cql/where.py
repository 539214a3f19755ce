"""WHERE clauses of SELECT, UPDATE and DELETE: which partitions, rows and tokens they name.

`analyse_where` checks the relations the way Cassandra and Keyspaces do
(partition key by = or IN, clustering columns in declared order, token()
ranges, at most 100 IN values) and returns a `Where`; `bounds` turns its
clustering restrictions into storage `Bound`s.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from cassandra import cqltypes

from keyspaces_local import types
from keyspaces_local.cql import parser as p
from keyspaces_local.cql.api import Invalid
from keyspaces_local.cql.state import Ctx, column
from keyspaces_local.cql.values import to_bytes, to_int
from keyspaces_local.schema import Column, ColumnKind
from keyspaces_local.storage import Bound, TableData


@dataclass
class Where:
    partitions: list[tuple[bytes, ...]] | None  # all partition keys named by = / IN, in IN order
    ck_eq: list[bytes]
    slice_lo: tuple[bytes, bool] | None
    slice_hi: tuple[bytes, bool] | None
    token_lo: tuple[int, bool] | None
    token_hi: tuple[int, bool] | None
    ck_in: list[bytes] | None = None  # IN on the clustering column after the ck_eq prefix
    ck_in_tail: list[bytes] = field(default_factory=list)  # equalities after that IN


def analyse_where(td: TableData, relations: list[Any], ctx: Ctx, *, for_select: bool) -> Where:
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
                    "The token function must be applied to all partition key components in order"
                )
            token = _token(td, rel.term, ctx)
            if rel.op in (">", ">="):
                token_lo = (token, rel.op == ">=")
            elif rel.op in ("<", "<="):
                token_hi = (token, rel.op == "<=")
            else:
                token_lo, token_hi = (token, True), (token, True)
            continue
        col = column(schema, rel.column)
        if isinstance(rel, p.InRelation):
            if not for_select:
                raise Invalid("IN is supported in SELECT only")
            values = in_values(rel, col, ctx)
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
        value = to_bytes(rel.term, col.cql_type, ctx)
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
                f"Partition key parts: {', '.join(missing)} must be restricted as other parts are"
            )
        if token_lo or token_hi:
            raise Invalid("token() restrictions cannot be combined with partition key restrictions")
        partitions = [
            tuple(combo) for combo in itertools.product(*(pk_values[c.name] for c in td.pk_cols))
        ]
    where = Where(partitions, [], None, None, token_lo, token_hi)
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


def _token(td: TableData, term: Any, ctx: Ctx) -> int:
    """A token() bound: a bigint or varint as the partitioner says; read as varint, which
    takes a bigint's 8 bytes too (a driver re-sending values bound before a partitioner
    change), then checked against the partitioner's range."""
    token = to_int(term, cqltypes.IntegerType, ctx, "partition key token")
    if token is None:
        raise Invalid("Invalid null value for partition key token")
    try:
        return td.partitioner.check(token)
    except ValueError as exc:
        raise Invalid(str(exc)) from None


def in_values(rel: p.InRelation, col: Column, ctx: Ctx) -> list[bytes]:
    if rel.bind is not None:
        list_type = cqltypes.ListType.apply_parameters([col.cql_type])
        raw = to_bytes(rel.bind, list_type, ctx)
        values = types.split_collection(raw) if raw is not None else []
    else:
        got = [to_bytes(t, col.cql_type, ctx) for t in rel.terms or ()]
        if any(v is None for v in got):
            raise Invalid(f"Invalid null value in condition for column {col.name}")
        values = [v for v in got if v is not None]
    if len(values) > 100:
        raise Invalid("IN supports at most 100 values")
    return values


def bounds(td: TableData, where: Where) -> tuple[Bound | None, Bound | None]:
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


def single_partition(where: Where) -> tuple[bytes, ...]:
    if where.partitions is None or len(where.partitions) != 1:
        raise Invalid("Some partition key parts are missing")
    return where.partitions[0]
