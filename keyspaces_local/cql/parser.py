"""CQL text -> statement dataclasses, with lark's LALR parser over grammar.lark.

Bind markers (`?` and `:name`) are numbered in the order they appear in the
text, which is the order the driver sends their values in. Parsed statements
are cached by their text, so a prepared or repeated statement parses once.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lark

from keyspaces_local.cql.api import CqlSyntaxError, Invalid

# ---------------------------------------------------------------- terms


@dataclass(eq=False)
class Bind:
    pos: int
    name: str | None
    index: int = -1


@dataclass(frozen=True)
class Literal:
    value: Any  # int, float, str, bool, None, uuid.UUID, bytes
    text: str = ""  # the literal as written (numbers keep their precision for decimal/varint)


@dataclass(frozen=True)
class FuncCall:
    name: str  # lower case
    args: tuple[Any, ...]


@dataclass(frozen=True)
class ListLit:
    items: tuple[Any, ...]


@dataclass(frozen=True)
class SetLit:
    items: tuple[Any, ...]


@dataclass(frozen=True)
class MapLit:
    items: tuple[tuple[Any, Any], ...]


@dataclass(frozen=True)
class TupleLit:
    items: tuple[Any, ...]


@dataclass(frozen=True)
class UdtLit:
    fields: tuple[tuple[str, Any], ...]


Term = Bind | Literal | FuncCall | ListLit | SetLit | MapLit | TupleLit | UdtLit

# ---------------------------------------------------------------- pieces


@dataclass(frozen=True)
class QName:
    keyspace: str | None
    name: str


@dataclass(frozen=True)
class SelColumn:
    name: str


@dataclass(frozen=True)
class SelFunction:
    name: str  # lower case
    args: tuple[Any, ...]


@dataclass(frozen=True)
class SelLiteral:
    term: Any


@dataclass(frozen=True)
class Selector:
    expr: SelColumn | SelFunction | SelLiteral
    alias: str | None


@dataclass(frozen=True)
class Relation:
    column: str
    op: str  # = < <= > >= !=
    term: Any


@dataclass(frozen=True)
class InRelation:
    column: str
    terms: tuple[Any, ...] | None  # None when the whole list is one bind marker
    bind: Bind | None


@dataclass(frozen=True)
class TokenRelation:
    columns: tuple[str, ...]
    op: str
    term: Any


@dataclass(frozen=True)
class Unsupported:
    what: str


@dataclass(frozen=True)
class ColumnDef:
    name: str
    type_text: str
    static: bool = False
    primary_key: bool = False


@dataclass(frozen=True)
class Condition:
    column: str
    op: str
    term: Any


# ---------------------------------------------------------------- statements


@dataclass
class Statement:
    binds: list[Bind] = field(default_factory=list, init=False, repr=False)


@dataclass
class Use(Statement):
    keyspace: str


@dataclass
class CreateKeyspace(Statement):
    name: str
    if_not_exists: bool
    properties: dict[str, Any]


@dataclass
class AlterKeyspace(Statement):
    name: str
    properties: dict[str, Any]


@dataclass
class DropKeyspace(Statement):
    name: str
    if_exists: bool


@dataclass
class CreateType(Statement):
    name: QName
    if_not_exists: bool
    fields: list[tuple[str, str]]


@dataclass
class DropType(Statement):
    name: QName
    if_exists: bool


@dataclass
class TableOptionsSpec:
    properties: dict[str, Any] = field(default_factory=dict)
    clustering_order: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)
    compact_storage: bool = False
    # Every property in the order written, to spot a property given twice.
    property_names: list[str] = field(default_factory=list)


@dataclass
class CreateTable(Statement):
    name: QName
    if_not_exists: bool
    columns: list[ColumnDef]
    partition_key: list[str]
    clustering: list[str]
    options: TableOptionsSpec


@dataclass
class AlterTable(Statement):
    name: QName
    add: list[ColumnDef] | None = None
    options: TableOptionsSpec | None = None
    unsupported: str | None = None


@dataclass
class DropTable(Statement):
    name: QName
    if_exists: bool


@dataclass
class Select(Statement):
    table: QName
    selectors: list[Selector] | None  # None for *
    where: list[Any]
    order_by: list[tuple[str, bool]]
    limit: Any | None
    allow_filtering: bool
    json: bool
    distinct: bool


@dataclass
class Insert(Statement):
    table: QName
    columns: list[str]
    values: list[Any]
    if_not_exists: bool
    ttl: Any | None
    timestamp: Any | None
    json: Any | None = None  # INSERT JSON: the term holding the JSON object


@dataclass(frozen=True)
class Assignment:
    column: str
    kind: str  # set | add | remove | prepend | element | incr | decr
    value: Any
    key: Any = None  # for element assignments m[key] = value


@dataclass
class Update(Statement):
    table: QName
    assignments: list[Assignment]
    where: list[Any]
    if_exists: bool
    conditions: list[Condition]
    ttl: Any | None
    timestamp: Any | None


@dataclass
class Delete(Statement):
    table: QName
    targets: list[tuple[str, Any | None]]  # (column, element key or None)
    where: list[Any]
    if_exists: bool
    conditions: list[Condition]
    timestamp: Any | None


@dataclass
class BatchStatement(Statement):
    kind: str  # LOGGED | UNLOGGED | COUNTER
    statements: list[Insert | Update | Delete]
    timestamp: Any | None


DmlStatement = Insert | Update | Delete

# ---------------------------------------------------------------- transformer


def _unquote_string(text: str) -> str:
    if text.startswith("$$"):
        return text[2:-2]
    return text[1:-1].replace("''", "'")


class _Using:
    def __init__(self, ttl: Any = None, timestamp: Any = None) -> None:
        self.ttl, self.timestamp = ttl, timestamp


class _Conditions:
    def __init__(self, if_exists: bool, conditions: list[Condition]) -> None:
        self.if_exists, self.conditions = if_exists, conditions


class _Flag:
    def __init__(self, name: str) -> None:
        self.name = name


class _ToAst(lark.Transformer[Any, Any]):
    """Tree -> dataclasses. Collects every bind marker it builds."""

    def __init__(self) -> None:
        super().__init__()
        self.binds: list[Bind] = []

    # ---- names and types
    def plain_name(self, c: list[Any]) -> str:
        return str(c[0]).lower()

    def quoted_name(self, c: list[Any]) -> str:
        return str(c[0])[1:-1].replace('""', '"')

    def qualified_name(self, c: list[Any]) -> QName:
        return QName(c[0], c[1]) if len(c) == 2 else QName(None, c[0])

    def type_name(self, c: list[Any]) -> str:
        return ".".join(_quote_if_needed(x) for x in c)

    def cql_type(self, c: list[Any]) -> str:
        if len(c) == 1:
            return str(c[0])
        return f"{c[0]}<{', '.join(c[1:])}>"

    # ---- terms
    def anon_bind(self, c: list[Any]) -> Bind:
        b = Bind(pos=c[0].start_pos, name=None)
        self.binds.append(b)
        return b

    def named_bind(self, c: list[Any]) -> Bind:
        b = Bind(pos=c[0].start_pos, name=str(c[0])[1:].lower())
        self.binds.append(b)
        return b

    def string(self, c: list[Any]) -> Literal:
        return Literal(_unquote_string(str(c[0])), str(c[0]))

    def integer(self, c: list[Any]) -> Literal:
        return Literal(int(str(c[0])), str(c[0]))

    def floating(self, c: list[Any]) -> Literal:
        text = str(c[0])
        return Literal(float(text), text)

    def blob(self, c: list[Any]) -> Literal:
        return Literal(bytes.fromhex(str(c[0])[2:]), str(c[0]))

    def uuid(self, c: list[Any]) -> Literal:
        return Literal(uuid.UUID(str(c[0])), str(c[0]))

    def true(self, c: list[Any]) -> Literal:
        return Literal(True, "true")

    def false(self, c: list[Any]) -> Literal:
        return Literal(False, "false")

    def null(self, c: list[Any]) -> Literal:
        return Literal(None, "null")

    def negate(self, c: list[Any]) -> Any:
        inner = c[-1]
        if isinstance(inner, Literal) and isinstance(inner.value, int | float):
            return Literal(-inner.value, "-" + inner.text)
        raise CqlSyntaxError("a minus sign applies to numbers only")

    def type_hint(self, c: list[Any]) -> Any:
        return c[-1]

    def func_term(self, c: list[Any]) -> FuncCall:
        return FuncCall(str(c[0]).lower(), tuple(x for x in c[1:] if x is not None))

    def list_lit(self, c: list[Any]) -> ListLit:
        return ListLit(tuple(x for x in c if x is not None))

    def empty_brace(self, c: list[Any]) -> MapLit:
        return MapLit(())

    def set_lit(self, c: list[Any]) -> SetLit:
        return SetLit(tuple(c))

    def map_entry(self, c: list[Any]) -> tuple[Any, Any]:
        return (c[0], c[1])

    def map_lit(self, c: list[Any]) -> MapLit:
        return MapLit(tuple(c))

    def udt_entry(self, c: list[Any]) -> tuple[str, Any]:
        return (c[0], c[1])

    def udt_lit(self, c: list[Any]) -> UdtLit:
        return UdtLit(tuple(c))

    def tuple_lit(self, c: list[Any]) -> TupleLit:
        return TupleLit(tuple(c))

    def op(self, c: list[Any]) -> str:
        return "".join(str(t) for t in c)

    # ---- DDL
    def use(self, c: list[Any]) -> Use:
        return Use(c[0])

    def if_not_exists(self, c: list[Any]) -> _Flag:
        return _Flag("if_not_exists")

    def if_exists(self, c: list[Any]) -> _Flag:
        return _Flag("if_exists")

    def property(self, c: list[Any]) -> tuple[str, Any]:
        return (c[0], const_value(c[1]))

    def properties(self, c: list[Any]) -> dict[str, Any]:
        return dict(c)

    def create_keyspace(self, c: list[Any]) -> CreateKeyspace:
        flag = _has_flag(c, "if_not_exists")
        rest = [x for x in c if not isinstance(x, _Flag)]
        return CreateKeyspace(rest[0], flag, rest[1])

    def alter_keyspace(self, c: list[Any]) -> AlterKeyspace:
        return AlterKeyspace(c[0], c[1])

    def drop_keyspace(self, c: list[Any]) -> DropKeyspace:
        flag = _has_flag(c, "if_exists")
        return DropKeyspace(next(x for x in c if not isinstance(x, _Flag)), flag)

    def type_field(self, c: list[Any]) -> tuple[str, str]:
        return (c[0], c[1])

    def create_type(self, c: list[Any]) -> CreateType:
        flag = _has_flag(c, "if_not_exists")
        rest = [x for x in c if not isinstance(x, _Flag)]
        return CreateType(rest[0], flag, rest[1:])

    def drop_type(self, c: list[Any]) -> DropType:
        flag = _has_flag(c, "if_exists")
        return DropType(next(x for x in c if not isinstance(x, _Flag)), flag)

    def inline_primary_key(self, c: list[Any]) -> _Flag:
        return _Flag("primary_key")

    def column_def(self, c: list[Any]) -> ColumnDef:
        static = any(isinstance(x, lark.Token) and x.type == "STATIC" for x in c)
        pk = _has_flag(c, "primary_key")
        return ColumnDef(c[0], c[1], static, pk)

    def add_column(self, c: list[Any]) -> ColumnDef:
        static = any(isinstance(x, lark.Token) and x.type == "STATIC" for x in c)
        return ColumnDef(c[0], c[1], static)

    def partition_key(self, c: list[Any]) -> list[str]:
        return list(c)

    def primary_key_def(self, c: list[Any]) -> tuple[list[str], list[str]]:
        return (c[0], list(c[1:]))

    def direction(self, c: list[Any]) -> bool:
        return str(c[0]).upper() == "DESC"

    def order_item(self, c: list[Any]) -> tuple[str, bool]:
        return (c[0], bool(c[1]) if len(c) > 1 else False)

    def clustering_order(self, c: list[Any]) -> tuple[str, list[tuple[str, bool]]]:
        return ("__clustering_order__", list(c))

    def compact_storage(self, c: list[Any]) -> tuple[str, bool]:
        return ("__compact_storage__", True)

    def table_options(self, c: list[Any]) -> TableOptionsSpec:
        spec = TableOptionsSpec()
        for key, value in c:
            if key == "__clustering_order__":
                spec.clustering_order = value
            elif key == "__compact_storage__":
                spec.compact_storage = True
            else:
                spec.properties[key] = value
                spec.property_names.append(key)
        return spec

    def create_table(self, c: list[Any]) -> CreateTable:
        flag = _has_flag(c, "if_not_exists")
        rest = [x for x in c if not isinstance(x, _Flag)]
        name = rest[0]
        options = rest[-1] if isinstance(rest[-1], TableOptionsSpec) else TableOptionsSpec()
        elements = [x for x in rest[1:] if not isinstance(x, TableOptionsSpec)]
        columns = [x for x in elements if isinstance(x, ColumnDef)]
        keys = [x for x in elements if isinstance(x, tuple)]
        inline = [col.name for col in columns if col.primary_key]
        if len(keys) + len(inline) != 1:
            raise Invalid("a table needs exactly one PRIMARY KEY definition")
        partition, clustering = keys[0] if keys else ([inline[0]], [])
        return CreateTable(name, flag, columns, partition, clustering, options)

    def alter_add(self, c: list[Any]) -> AlterTable:
        return AlterTable(QName(None, ""), add=list(c))

    def alter_with(self, c: list[Any]) -> AlterTable:
        return AlterTable(QName(None, ""), options=c[0])

    def alter_drop(self, c: list[Any]) -> AlterTable:
        return AlterTable(QName(None, ""), unsupported="ALTER TABLE DROP")

    def alter_rename(self, c: list[Any]) -> AlterTable:
        return AlterTable(QName(None, ""), unsupported="ALTER TABLE RENAME")

    def alter_table(self, c: list[Any]) -> AlterTable:
        action: AlterTable = c[1]
        action.name = c[0]
        return action

    def drop_table(self, c: list[Any]) -> DropTable:
        flag = _has_flag(c, "if_exists")
        return DropTable(next(x for x in c if not isinstance(x, _Flag)), flag)

    # ---- SELECT
    def select_all(self, c: list[Any]) -> None:
        return None

    def select_list(self, c: list[Any]) -> list[Selector]:
        return list(c)

    def selector(self, c: list[Any]) -> Selector:
        return Selector(c[0], c[1] if len(c) > 1 else None)

    def sel_column(self, c: list[Any]) -> SelColumn:
        return SelColumn(c[0])

    def sel_function(self, c: list[Any]) -> SelFunction:
        return SelFunction(str(c[0]).lower(), tuple(x for x in c[1:] if x is not None))

    def sel_cast(self, c: list[Any]) -> SelFunction:
        return SelFunction("cast", (c[0], SelLiteral(Literal(c[1], c[1]))))

    def sel_literal(self, c: list[Any]) -> SelLiteral:
        return SelLiteral(c[0])

    def rel_op(self, c: list[Any]) -> Relation:
        return Relation(c[0], c[1], c[2])

    def rel_in(self, c: list[Any]) -> InRelation:
        return InRelation(c[0], tuple(x for x in c[1:] if x is not None), None)

    def rel_in_bind(self, c: list[Any]) -> InRelation:
        return InRelation(c[0], None, c[1])

    def rel_contains(self, c: list[Any]) -> Unsupported:
        return Unsupported("CONTAINS")

    def rel_token(self, c: list[Any]) -> TokenRelation | Unsupported:
        if str(c[0]).lower() != "token":
            return Unsupported(f"function {c[0]} in WHERE")
        return TokenRelation(tuple(c[1:-2]), c[-2], c[-1])

    def rel_multi(self, c: list[Any]) -> Unsupported:
        return Unsupported("multi-column relations")

    def where(self, c: list[Any]) -> list[Any]:
        return list(c)

    def order_by(self, c: list[Any]) -> tuple[str, list[tuple[str, bool]]]:
        return ("order_by", list(c))

    def limit(self, c: list[Any]) -> tuple[str, Any]:
        return ("limit", c[0])

    def allow_filtering(self, c: list[Any]) -> tuple[str, bool]:
        return ("allow_filtering", True)

    def select(self, c: list[Any]) -> Select:
        tokens = {t.type for t in c if isinstance(t, lark.Token)}
        rest = [x for x in c if not isinstance(x, lark.Token)]
        selectors, table = rest[0], rest[1]
        where: list[Any] = []
        extras: dict[str, Any] = {}
        for x in rest[2:]:
            if isinstance(x, list):
                where = x
            else:
                extras[x[0]] = x[1]
        return Select(
            table,
            selectors,
            where,
            extras.get("order_by", []),
            extras.get("limit"),
            bool(extras.get("allow_filtering")),
            "JSON" in tokens,
            "DISTINCT" in tokens,
        )

    # ---- writes
    def using_ttl(self, c: list[Any]) -> _Using:
        return _Using(ttl=c[0])

    def using_timestamp(self, c: list[Any]) -> _Using:
        return _Using(timestamp=c[0])

    def using(self, c: list[Any]) -> _Using:
        merged = _Using()
        for u in c:
            merged.ttl = u.ttl if u.ttl is not None else merged.ttl
            merged.timestamp = u.timestamp if u.timestamp is not None else merged.timestamp
        return merged

    def insert(self, c: list[Any]) -> Insert:
        using = next((x for x in c if isinstance(x, _Using)), _Using())
        flag = _has_flag(c, "if_not_exists")
        rest = [x for x in c if not isinstance(x, _Using | _Flag)]
        table, body = rest[0], rest[1:]
        if len(body) % 2:
            raise Invalid("Unmatched column names/values")
        half = len(body) // 2
        return Insert(table, body[:half], body[half:], flag, using.ttl, using.timestamp)

    def insert_json(self, c: list[Any]) -> Insert:
        using = next((x for x in c if isinstance(x, _Using)), _Using())
        flag = _has_flag(c, "if_not_exists")
        rest = [x for x in c if not isinstance(x, _Using | _Flag | lark.Token)]
        return Insert(rest[0], [], [], flag, using.ttl, using.timestamp, json=rest[1])

    def assign_set(self, c: list[Any]) -> Assignment:
        return Assignment(c[0], "set", c[1])

    def assign_op(self, c: list[Any]) -> Assignment:
        if c[0] != c[1]:
            raise Invalid(
                f"Only expressions of the form X = X +/- <value> are supported (got {c[0]} = "
                f"{c[1]})"
            )
        return Assignment(c[0], "add" if str(c[2]) == "+" else "remove", c[3])

    def assign_prepend(self, c: list[Any]) -> Assignment:
        return Assignment(c[0], "prepend", c[1])

    def assign_element(self, c: list[Any]) -> Assignment:
        return Assignment(c[0], "element", c[2], key=c[1])

    def assign_incr(self, c: list[Any]) -> Assignment:
        return Assignment(c[0], "add" if str(c[1]) == "+=" else "remove", c[2])

    def condition(self, c: list[Any]) -> Condition:
        return Condition(c[0], c[1], c[2])

    def cond_exists(self, c: list[Any]) -> _Conditions:
        return _Conditions(True, [])

    def cond_list(self, c: list[Any]) -> _Conditions:
        return _Conditions(False, list(c))

    def update(self, c: list[Any]) -> Update:
        using = next((x for x in c if isinstance(x, _Using)), _Using())
        conds = next((x for x in c if isinstance(x, _Conditions)), _Conditions(False, []))
        rest = [x for x in c if not isinstance(x, _Using | _Conditions | lark.Token)]
        table, where = rest[0], rest[-1]
        assignments = rest[1:-1]
        return Update(
            table, assignments, where, conds.if_exists, conds.conditions, using.ttl, using.timestamp
        )

    def delete_target(self, c: list[Any]) -> tuple[str, Any]:
        return (c[0], c[1] if len(c) > 1 else None)

    def delete(self, c: list[Any]) -> Delete:
        using = next((x for x in c if isinstance(x, _Using)), _Using())
        conds = next((x for x in c if isinstance(x, _Conditions)), _Conditions(False, []))
        rest = [x for x in c if x is not None and not isinstance(x, _Using | _Conditions)]
        targets = [x for x in rest if isinstance(x, tuple)]
        table = next(x for x in rest if isinstance(x, QName))
        where = rest[-1]
        if using.ttl is not None:
            raise Invalid("DELETE does not take a TTL")
        return Delete(table, targets, where, conds.if_exists, conds.conditions, using.timestamp)

    def batch(self, c: list[Any]) -> BatchStatement:
        kind = "LOGGED"
        using = _Using()
        members: list[Any] = []
        for x in c:
            if isinstance(x, lark.Token):
                kind = str(x).upper()
            elif isinstance(x, _Using):
                using = x
            else:
                members.append(x)
        return BatchStatement(kind, members, using.timestamp)

    def start(self, c: list[Any]) -> Any:
        return c[0]


def _quote_if_needed(name: str) -> str:
    plain = name.islower() and name.replace("_", "a").isalnum() and not name[:1].isdigit()
    return name if plain else '"' + name.replace('"', '""') + '"'


def _has_flag(c: list[Any], name: str) -> bool:
    return any(isinstance(x, _Flag) and x.name == name for x in c)


def const_value(term: Any) -> Any:
    """A literal term (no bind markers) -> a plain Python value; used for DDL properties."""
    if isinstance(term, Literal):
        return term.value
    if isinstance(term, MapLit):
        return {const_value(k): const_value(v) for k, v in term.items}
    if isinstance(term, SetLit | ListLit | TupleLit):
        return [const_value(x) for x in term.items]
    if isinstance(term, UdtLit):
        return {k: const_value(v) for k, v in term.fields}
    raise Invalid("DDL properties take constants only")


# ---------------------------------------------------------------- entry points

# Statements Keyspaces does not support; refused before parsing (lower-case word prefixes).
_REFUSED_PREFIXES: tuple[tuple[str, ...], ...] = (
    ("truncate",),
    ("create", "index"),
    ("create", "custom", "index"),
    ("drop", "index"),
    ("create", "materialized"),
    ("drop", "materialized"),
    ("alter", "materialized"),
    ("create", "trigger"),
    ("drop", "trigger"),
    ("create", "function"),
    ("create", "or"),
    ("drop", "function"),
    ("create", "aggregate"),
    ("drop", "aggregate"),
    ("alter", "type"),
    ("create", "role"),
    ("create", "user"),
    ("grant",),
    ("revoke",),
)


@functools.lru_cache(maxsize=1)
def _lark() -> lark.Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", lexer="contextual", maybe_placeholders=True)


def _refused(text: str) -> str | None:
    words = tuple(w.lower() for w in text.split(None, 3)[:3])
    for prefix in _REFUSED_PREFIXES:
        if words[: len(prefix)] == prefix:
            return " ".join(prefix).upper()
    return None


@functools.lru_cache(maxsize=4096)
def parse(text: str) -> Statement:
    """Parse one CQL statement; raises CqlSyntaxError, or Invalid for what Keyspaces refuses."""
    refused = _refused(text)
    if refused:
        raise Invalid(f"{refused} is not supported by Amazon Keyspaces")
    try:
        tree = _lark().parse(text)
    except lark.exceptions.UnexpectedInput as exc:
        raise CqlSyntaxError(
            f"line {exc.line}:{exc.column} no viable alternative: {_context(text, exc)}"
        ) from None
    transformer = _ToAst()
    try:
        statement: Statement = transformer.transform(tree)
    except lark.exceptions.VisitError as exc:
        if isinstance(exc.orig_exc, Invalid | CqlSyntaxError):
            raise exc.orig_exc from None
        raise
    binds = sorted(transformer.binds, key=lambda b: b.pos)
    for index, bind in enumerate(binds):
        bind.index = index
    statement.binds = binds
    if isinstance(statement, BatchStatement):
        for member in statement.statements:
            member.binds = [b for b in binds if _contains_bind(member, b)]
    return statement


def _contains_bind(member: Any, bind: Bind) -> bool:
    seen = _collect_binds(member)
    return any(b is bind for b in seen)


def _collect_binds(obj: Any) -> list[Bind]:
    found: list[Bind] = []

    def walk(x: Any) -> None:
        if isinstance(x, Bind):
            found.append(x)
        elif isinstance(x, list | tuple):
            for y in x:
                walk(y)
        elif hasattr(x, "__dataclass_fields__"):
            for name in x.__dataclass_fields__:
                if name != "binds":
                    walk(getattr(x, name))

    walk(obj)
    return found


def _context(text: str, exc: lark.exceptions.UnexpectedInput) -> str:
    pos = getattr(exc, "pos_in_stream", None) or 0
    return text[max(0, pos - 20) : pos + 20]


__all__ = [
    "AlterKeyspace",
    "AlterTable",
    "Assignment",
    "BatchStatement",
    "Bind",
    "ColumnDef",
    "Condition",
    "CreateKeyspace",
    "CreateTable",
    "CreateType",
    "Delete",
    "DropKeyspace",
    "DropTable",
    "DropType",
    "FuncCall",
    "InRelation",
    "Insert",
    "ListLit",
    "Literal",
    "MapLit",
    "QName",
    "Relation",
    "SelColumn",
    "SelFunction",
    "SelLiteral",
    "Select",
    "Selector",
    "SetLit",
    "Statement",
    "TableOptionsSpec",
    "TokenRelation",
    "TupleLit",
    "UdtLit",
    "Unsupported",
    "Update",
    "Use",
    "const_value",
    "parse",
]
