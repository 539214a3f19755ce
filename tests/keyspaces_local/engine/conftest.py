"""Fixtures for the CQL engine tests: an engine on its own clock, a recording change sink,
and a small session that talks to the engine the way the wire server does (prepared
statements, values serialised with the driver's cqltypes, results decoded back)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from keyspaces_local.cdc import RowChange
from keyspaces_local.clock import Clock
from keyspaces_local.cql.api import LOCAL_QUORUM, QueryOptions, Rows
from keyspaces_local.cql.engine import CqlEngine
from keyspaces_local.schema import TableSchema


@dataclass
class RecordingSink:
    """A ChangeSink that keeps everything it is told."""

    changes: list[RowChange] = field(default_factory=list)
    enabled: list[str] = field(default_factory=list)
    disabled: list[tuple[str, str]] = field(default_factory=list)
    _labels: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def enable_stream(self, table: TableSchema) -> str:
        arn = (
            f"arn:aws:cassandra:us-east-1:111122223333:/keyspace/{table.keyspace}/table/{table.name}"
            f"/stream/2026-01-01T00:00:00.{next(self._labels):03d}"
        )
        self.enabled.append(arn)
        return arn

    def disable_stream(self, keyspace: str, table: str) -> None:
        self.disabled.append((keyspace, table))

    def record(self, change: RowChange) -> None:
        self.changes.append(change)

    def take(self) -> list[RowChange]:
        taken, self.changes = self.changes, []
        return taken


class EngineSession:
    """Runs CQL on an engine like a driver would: prepare, bind typed values, decode rows."""

    def __init__(self, engine: CqlEngine, keyspace: str | None = None) -> None:
        self.engine = engine
        self.keyspace = keyspace

    def execute(
        self,
        cql: str,
        params: Sequence[Any] = (),
        *,
        consistency: int = LOCAL_QUORUM,
        page_size: int | None = None,
        paging_state: bytes | None = None,
        timestamp_us: int | None = None,
    ) -> Any:
        if params:
            prepared = self.engine.prepare(cql, self.keyspace)
            values = [
                None if v is None else bytes(spec.cql_type.to_binary(v, 4))
                for spec, v in zip(prepared.bind_columns, params, strict=True)
            ]
            options = QueryOptions(consistency, values, page_size, paging_state, None, timestamp_us)
            return self.engine.execute(prepared.statement_id, options, self.keyspace)
        options = QueryOptions(consistency, [], page_size, paging_state, None, timestamp_us)
        return self.engine.query(cql, options, self.keyspace)

    def rows(self, cql: str, params: Sequence[Any] = (), **kwargs: Any) -> list[dict[str, Any]]:
        """Every row of every page, decoded."""
        out: list[dict[str, Any]] = []
        state = None
        while True:
            result = self.execute(cql, params, paging_state=state, **kwargs)
            assert isinstance(result, Rows)
            out.extend(decode(result))
            state = result.paging_state
            if state is None:
                return out


def decode(result: Rows) -> list[dict[str, Any]]:
    return [
        {
            spec.name: None if v is None else spec.cql_type.from_binary(v, 4)
            for spec, v in zip(result.columns, row, strict=True)
        }
        for row in result.rows
    ]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sink() -> RecordingSink:
    return RecordingSink()


@pytest.fixture
def engine(clock: Clock, sink: RecordingSink) -> CqlEngine:
    return CqlEngine(clock, sink, ttl_record_delay_s=5.0)


@pytest.fixture
def session(engine: CqlEngine) -> EngineSession:
    s = EngineSession(engine)
    s.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SingleRegionStrategy'}")
    s.keyspace = "ks"
    return s
