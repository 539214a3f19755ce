"""What the parts of the CQL engine share: the catalog, the tables' data, time and the sink.

`EngineState` is handed to the statement modules (`ddl`, `writes`, `reads`,
`metadata`), which keep no state of their own; besides the shared objects it
has the name lookups every statement does, the server's write-time
sequence and the account's partitioner. `Ctx` is one statement's execution
context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keyspaces_local.cdc import ChangeSink
from keyspaces_local.clock import Clock
from keyspaces_local.cql import parser as p
from keyspaces_local.cql import system_tables as st
from keyspaces_local.cql.api import Invalid, QueryOptions
from keyspaces_local.cql.expiry import ExpiryQueue
from keyspaces_local.partitioners import Partitioner
from keyspaces_local.schema import Column, TableSchema
from keyspaces_local.storage import TableData


@dataclass
class Ctx:
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


class EngineState:
    """The catalog, each table's data by (keyspace, name), the clock, the sink, pending expiries.

    Callers hold the engine's lock while they use it.
    """

    def __init__(self, clock: Clock, sink: ChangeSink, node: st.NodeInfo) -> None:
        self.clock = clock
        self.sink = sink
        self.node = node
        self.catalog = st.Catalog()
        self.data: dict[tuple[str, str], TableData] = {}
        self.expiries = ExpiryQueue()
        self._last_ts = 0

    @property
    def partitioner(self) -> Partitioner:
        """The account's partitioner (system.local shows it)."""
        return self.node.partitioner

    def set_partitioner(self, partitioner: Partitioner) -> None:
        """The account's partitioner, for every table at once (Keyspaces: on reconnect)."""
        self.node.partitioner = partitioner
        for td in self.data.values():
            td.retoken(partitioner)

    def server_ts(self) -> int:
        """Server write time: the clock, made strictly increasing so two writes always order."""
        ts = max(self.clock.now_us(), self._last_ts + 1)
        self._last_ts = ts
        return ts

    def table(self, name: p.QName, keyspace: str | None) -> TableData:
        ks = keyspace_of(name, keyspace)
        td = self.data.get((ks, name.name))
        if td is None:
            if ks not in self.catalog.keyspaces:
                raise Invalid(f"Keyspace {ks} does not exist")
            raise Invalid(f"unconfigured table {name.name}")
        return td


def keyspace_of(name: p.QName, keyspace: str | None) -> str:
    ks = name.keyspace or keyspace
    if not ks:
        raise Invalid(
            "No keyspace has been specified. USE a keyspace, or explicitly specify "
            "keyspace.tablename"
        )
    return ks


def column(schema: TableSchema, name: str) -> Column:
    col = schema.columns.get(name)
    if col is None:
        raise Invalid(f"Undefined column name {name}")
    return col
