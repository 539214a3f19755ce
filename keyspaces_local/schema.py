"""Table schemas as the emulator keeps them: columns, key layout, Keyspaces options.

Shared by the CQL side (which creates and alters tables) and the streams side
(which needs column types and kinds to serialise change records).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class ColumnKind(enum.Enum):
    PARTITION_KEY = "partition_key"
    CLUSTERING = "clustering"
    REGULAR = "regular"
    STATIC = "static"


class ViewType(enum.Enum):
    NEW_AND_OLD_IMAGES = "NEW_AND_OLD_IMAGES"
    NEW_IMAGE = "NEW_IMAGE"
    OLD_IMAGE = "OLD_IMAGE"
    KEYS_ONLY = "KEYS_ONLY"


@dataclass(frozen=True)
class Column:
    name: str
    # A cassandra.cqltypes class (parameterised for collections, tuples and UDTs):
    # it serialises values with to_binary/from_binary exactly as the driver does.
    cql_type: Any
    kind: ColumnKind
    # Position within the partition key or the clustering key; 0 for other columns.
    position: int = 0
    # For clustering columns: True when declared DESC in CLUSTERING ORDER BY.
    descending: bool = False


@dataclass
class TableOptions:
    """Keyspaces table properties (system_schema_mcs.tables.custom_properties)."""

    cdc_enabled: bool = False
    view_type: ViewType = ViewType.NEW_AND_OLD_IMAGES
    # One-way settings: once True they can never go back to False.
    client_side_timestamps: bool = False
    ttl_enabled: bool = False
    default_time_to_live: int = 0
    latest_stream_arn: str | None = None


@dataclass
class TableSchema:
    keyspace: str
    name: str
    columns: dict[str, Column]  # in declaration order
    options: TableOptions = field(default_factory=TableOptions)

    def columns_of(self, kind: ColumnKind) -> list[Column]:
        found = [c for c in self.columns.values() if c.kind is kind]
        return sorted(found, key=lambda c: c.position)

    @property
    def partition_key(self) -> list[Column]:
        return self.columns_of(ColumnKind.PARTITION_KEY)

    @property
    def clustering_key(self) -> list[Column]:
        return self.columns_of(ColumnKind.CLUSTERING)
