"""The CQL engine of keyspaces_local: executes parsed CQL the way Amazon Keyspaces does.

`CqlEngine` implements the `Engine` protocol the wire server calls. It keeps
the catalog (keyspaces, UDTs, tables with their Keyspaces options), the data
(`storage.TableData` per table), prepared statements, and hands every
committed row-level change of a CDC table to the `ChangeSink`. What
Keyspaces refuses it refuses with `Invalid`: writes below LOCAL_QUORUM,
reads at other levels than ONE/LOCAL_ONE/LOCAL_QUORUM, `USING TIMESTAMP`
and `WRITETIME()` without client-side timestamps, `USING TTL` without TTL,
and the unsupported statements (TRUNCATE, indexes, views, UDFs...).

All time comes from the shared `Clock`; one lock serialises every statement,
so commit order is the order changes reach the sink.

The account's partitioner decides token() (`partitioners`); `UPDATE system.local
SET partitioner = ...` changes it at once for every table. A statement prepared
before the change is answered `Unprepared`, so the driver prepares it again and
learns the new type of token() (bigint or varint).

This module is the facade: it parses, caches prepared statements, takes the
lock and dispatches. The work is done by

- `ddl`: CREATE/ALTER/DROP of keyspaces, types and tables, CDC on and off;
- `writes`: INSERT/UPDATE/DELETE, batches and LWT, building `RowChange`s;
- `reads`: SELECT on user and system tables, paging;
- `metadata`: bind-marker and result-column specs of prepared statements;
- `expiry`: the queue of rows with a TTL and the sweep that expires them;

on top of `state` (what they share), `where`, `selectors`, `values`,
`paging` and `limits`.
"""

from __future__ import annotations

import hashlib
import random
import threading
import uuid
from dataclasses import dataclass

from keyspaces_local.cdc import ChangeSink
from keyspaces_local.clock import Clock
from keyspaces_local.cql import ddl, metadata, reads, writes
from keyspaces_local.cql import parser as p
from keyspaces_local.cql import system_tables as st
from keyspaces_local.cql.api import (
    Invalid,
    Prepared,
    QueryOptions,
    Result,
    SetKeyspace,
    Unprepared,
)
from keyspaces_local.cql.state import Ctx, EngineState
from keyspaces_local.partitioners import MURMUR3, by_name


@dataclass
class _PreparedEntry:
    cql: str
    statement: p.Statement
    keyspace: str | None
    partitioner: str  # its metadata's token() type is this partitioner's


class CqlEngine:
    """Executes CQL against in-memory tables with Amazon Keyspaces' rules."""

    def __init__(
        self,
        clock: Clock,
        sink: ChangeSink,
        *,
        host: str = "127.0.0.1",
        ttl_record_delay_s: float = 5.0,
        empty_page_rate: float = 0.0,
        page_bytes: int = 1_048_576,
        partitioner: str = MURMUR3,
    ) -> None:
        self.ttl_record_delay_s = ttl_record_delay_s
        self.empty_page_rate = empty_page_rate
        self.page_bytes = page_bytes
        node = st.NodeInfo(host=host, host_id=uuid.uuid4(), partitioner=by_name(partitioner))
        self._state = EngineState(clock, sink, node)
        self._prepared: dict[bytes, _PreparedEntry] = {}
        self._lock = threading.RLock()
        self._random = random.Random()

    @property
    def clock(self) -> Clock:
        return self._state.clock

    @property
    def sink(self) -> ChangeSink:
        return self._state.sink

    @property
    def node(self) -> st.NodeInfo:
        return self._state.node

    @property
    def catalog(self) -> st.Catalog:
        return self._state.catalog

    # ================================================================ Engine protocol

    def query(self, cql: str, options: QueryOptions, keyspace: str | None) -> Result:
        statement = p.parse(cql)
        with self._lock:
            return self._run(statement, cql, options, keyspace)

    def prepare(self, cql: str, keyspace: str | None) -> Prepared:
        statement = p.parse(cql)
        with self._lock:
            statement_id = hashlib.md5(f"{keyspace or ''}\x00{cql}".encode()).digest()
            binds, pk_indexes = metadata.bind_specs(self._state, statement, keyspace)
            result = metadata.result_columns(self._state, statement, keyspace)
            partitioner = self._state.partitioner.name
            self._prepared[statement_id] = _PreparedEntry(cql, statement, keyspace, partitioner)
            return Prepared(statement_id, binds, pk_indexes, result)

    def execute(self, statement_id: bytes, options: QueryOptions, keyspace: str | None) -> Result:
        with self._lock:
            entry = self._entry(statement_id)
            return self._run(entry.statement, entry.cql, options, entry.keyspace or keyspace)

    def _entry(self, statement_id: bytes) -> _PreparedEntry:
        """A prepared statement still valid: prepared under today's partitioner."""
        entry = self._prepared.get(statement_id)
        if entry is None or entry.partitioner != self._state.partitioner.name:
            raise Unprepared("Prepared statement not found", statement_id)
        return entry

    def batch(
        self,
        batch_type: int,
        statements: list[tuple[str | bytes, list[bytes | None]]],
        options: QueryOptions,
        keyspace: str | None,
    ) -> Result:
        with self._lock:
            resolved: list[tuple[p.Statement, list[bytes | None], str | None]] = []
            for source, values in statements:
                if isinstance(source, bytes):
                    entry = self._entry(source)
                    resolved.append((entry.statement, values, entry.keyspace or keyspace))
                else:
                    resolved.append((p.parse(source), values, keyspace))
            return writes.run_batch(self._state, resolved, options)

    # ================================================================ TTL records

    def sweep_expired(self) -> int:
        """Report rows whose expiry plus the record delay has passed; returns records emitted."""
        with self._lock:
            state = self._state
            return state.expiries.sweep(
                state.data, state.sink, state.clock.now_us(), self.ttl_record_delay_s
            )

    # ================================================================ dispatch

    def _run(
        self, statement: p.Statement, cql: str, options: QueryOptions, keyspace: str | None
    ) -> Result:
        ctx = Ctx(options.values, options, keyspace, self._state.clock.now_us())
        if isinstance(statement, p.Select):
            return reads.select(
                self._state,
                statement,
                cql,
                ctx,
                page_bytes=self.page_bytes,
                empty_page_rate=self.empty_page_rate,
                rng=self._random,
            )
        if isinstance(statement, p.Insert | p.Update | p.Delete):
            return writes.run_write(self._state, statement, ctx)
        if isinstance(statement, p.BatchStatement):
            return writes.run_batch_statement(self._state, statement, ctx)
        if isinstance(statement, p.Use):
            return self._use(statement)
        return ddl.run_ddl(self._state, statement, keyspace)

    def _use(self, statement: p.Use) -> Result:
        if statement.keyspace not in self._state.catalog.keyspaces and not st.is_system(
            statement.keyspace
        ):
            raise Invalid(f"Keyspace '{statement.keyspace}' does not exist")
        return SetKeyspace(statement.keyspace)
