"""The seam between the CQL wire server and the CQL engine.

The server decodes frames into calls on an `Engine` and encodes what comes
back; the engine parses and executes CQL and never sees a frame. Values cross
the seam in their serialised protocol-v4 form (bytes, None for null), typed
by `cassandra.cqltypes` classes, so neither side converts what it passes on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# Consistency levels as numbered by the native protocol.
ANY, ONE, TWO, THREE, QUORUM, ALL = 0x0000, 0x0001, 0x0002, 0x0003, 0x0004, 0x0005
LOCAL_QUORUM, EACH_QUORUM, SERIAL, LOCAL_SERIAL, LOCAL_ONE = 0x0006, 0x0007, 0x0008, 0x0009, 0x000A

# Batch types as numbered by the native protocol.
LOGGED_BATCH, UNLOGGED_BATCH, COUNTER_BATCH = 0, 1, 2


@dataclass(frozen=True)
class ColumnSpec:
    keyspace: str
    table: str
    name: str
    cql_type: Any  # a cassandra.cqltypes class


@dataclass(frozen=True)
class QueryOptions:
    consistency: int = LOCAL_QUORUM
    values: list[bytes | None] = field(default_factory=list)
    page_size: int | None = None
    paging_state: bytes | None = None
    serial_consistency: int | None = None
    timestamp_us: int | None = None  # protocol-level default timestamp sent by the driver


@dataclass(frozen=True)
class Rows:
    columns: list[ColumnSpec]
    rows: list[list[bytes | None]]
    paging_state: bytes | None = None  # not None: more pages may follow


@dataclass(frozen=True)
class Void:
    pass


@dataclass(frozen=True)
class SetKeyspace:
    keyspace: str


@dataclass(frozen=True)
class SchemaChange:
    change_type: str  # CREATED | UPDATED | DROPPED
    target: str  # KEYSPACE | TABLE | TYPE
    keyspace: str
    name: str | None = None  # table or type name; None for a keyspace


Result = Rows | Void | SetKeyspace | SchemaChange


@dataclass(frozen=True)
class Prepared:
    statement_id: bytes
    bind_columns: list[ColumnSpec]
    pk_indexes: list[int]  # positions of partition-key columns among the bind markers
    result_columns: list[ColumnSpec] | None  # None for statements that return no rows


class CqlError(Exception):
    """An error the server answers with an ERROR frame; `code` is the protocol's."""

    code = 0x0000  # Server error

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ProtocolError(CqlError):
    code = 0x000A


class BadCredentials(CqlError):
    code = 0x0100


class Unavailable(CqlError):
    code = 0x1000

    def __init__(self, message: str, consistency: int, required: int, alive: int) -> None:
        super().__init__(message)
        self.consistency, self.required, self.alive = consistency, required, alive


class CqlSyntaxError(CqlError):
    code = 0x2000


class Unauthorized(CqlError):
    code = 0x2100


class Invalid(CqlError):
    code = 0x2200


class ConfigError(CqlError):
    code = 0x2300


class AlreadyExists(CqlError):
    code = 0x2400

    def __init__(self, message: str, keyspace: str, table: str = "") -> None:
        super().__init__(message)
        self.keyspace, self.table = keyspace, table


class Unprepared(CqlError):
    code = 0x2500

    def __init__(self, message: str, statement_id: bytes) -> None:
        super().__init__(message)
        self.statement_id = statement_id


class Engine(Protocol):
    """What the wire server calls. `keyspace` is the connection's current keyspace."""

    def query(self, cql: str, options: QueryOptions, keyspace: str | None) -> Result: ...

    def prepare(self, cql: str, keyspace: str | None) -> Prepared: ...

    def execute(
        self, statement_id: bytes, options: QueryOptions, keyspace: str | None
    ) -> Result: ...

    def batch(
        self,
        batch_type: int,
        statements: list[tuple[str | bytes, list[bytes | None]]],  # CQL text or prepared id
        options: QueryOptions,
        keyspace: str | None,
    ) -> Result: ...
