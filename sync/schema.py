"""What the sync core must know about a source table: its key layout and column types.

`TableLayout` is built once per table (from `system_schema.columns`, or by hand in
tests) and shared by the decoders and the document builder. It imports
nothing of ours.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property


class ColumnKind(enum.Enum):
    """A column's role, spelled as `system_schema.columns.kind` spells it."""

    PARTITION_KEY = "partition_key"
    CLUSTERING = "clustering"
    REGULAR = "regular"
    STATIC = "static"


@dataclass(frozen=True)
class TableLayout:
    """A table's identity, key layout and (optionally) column types.

    `column_types` maps column name to CQL type text (`int`, `set<text>`,
    `frozen<address>`...). It is optional: decoding does not need it, but
    documents use it to tell `varint` from `bigint` (both are Python ints)
    and to write explicit nulls for columns a row lacks. `descending` names
    the clustering columns declared `DESC` in `CLUSTERING ORDER BY` (a
    partition document lists its rows in clustering order).
    """

    keyspace: str
    table: str
    partition_key: tuple[str, ...]
    clustering: tuple[str, ...] = ()
    static: tuple[str, ...] = ()
    column_types: Mapping[str, str] = field(default_factory=dict, hash=False)
    descending: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.partition_key:
            raise ValueError(f"{self.qualified_name}: a table needs a partition key")

    @property
    def qualified_name(self) -> str:
        return f"{self.keyspace}.{self.table}"

    @property
    def key_columns(self) -> tuple[str, ...]:
        """Primary-key columns in schema order: partition key, then clustering."""
        return self.partition_key + self.clustering

    @cached_property
    def key_set(self) -> frozenset[str]:
        """The primary-key columns, for fast membership tests."""
        return frozenset(self.key_columns)

    def is_key(self, column: str) -> bool:
        return column in self.key_set

    def cql_type(self, column: str) -> str | None:
        return self.column_types.get(column)

    @classmethod
    def from_columns(
        cls, keyspace: str, table: str, columns: Iterable[tuple[str, str, str]]
    ) -> TableLayout:
        """Build from `(name, cql_type_text, kind)` triples, key columns in key order."""
        partition: list[str] = []
        clustering: list[str] = []
        static: list[str] = []
        types: dict[str, str] = {}
        for name, cql_type, kind in columns:
            types[name] = cql_type
            role = ColumnKind(kind)
            if role is ColumnKind.PARTITION_KEY:
                partition.append(name)
            elif role is ColumnKind.CLUSTERING:
                clustering.append(name)
            elif role is ColumnKind.STATIC:
                static.append(name)
        return cls(keyspace, table, tuple(partition), tuple(clustering), tuple(static), types)

    def columns(self) -> list[tuple[str, str, str]]:
        """`(name, cql_type_text, kind)` per typed column: what `from_columns` takes."""
        return [
            (name, cql_type, self.kind_of(name).value)
            for name, cql_type in self.column_types.items()
        ]

    def kind_of(self, column: str) -> ColumnKind:
        if column in self.partition_key:
            return ColumnKind.PARTITION_KEY
        if column in self.clustering:
            return ColumnKind.CLUSTERING
        return ColumnKind.STATIC if column in self.static else ColumnKind.REGULAR
