"""Records the follower cannot use never stop it: they go, raw, to the dead-letter store.

What users rely on: a record that cannot be decoded, or whose row lookup
(KEYS_ONLY and OLD_IMAGE streams) fails for good, is kept in the dead-letter
store with the reason and counted, and the shard goes on, so one bad record
cannot stall a shard until retention turns it into loss; a lookup that fails
for a moment (timeouts, no host) is retried, not dead-lettered.

Faults are injected by wrapping the real clients (boto3, cassandra-driver):
every call still reaches keyspaces_local.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from cassandra import InvalidRequest, OperationTimedOut
from cassandra.query import PreparedStatement
from opensearchpy import OpenSearch

from sync.clients import streams_client
from sync.config import Config
from sync.deadletter import DeadLetter
from sync.jobs import Job
from sync.jobs.follow import Follower
from sync.model import StreamRead
from tests.sync.jobs.follow_helpers import Table, indexed, orders_mapping, until, wait_for


class CorruptingStreams:
    """The real boto3 client; the records of one customer come back with an undecodable cell."""

    def __init__(self, client: Any, customer: int) -> None:
        self._client = client
        self._customer = str(customer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def get_records(self, **kwargs: Any) -> Any:
        reply = self._client.get_records(**kwargs)
        for record in reply.get("changeRecords", []):
            if record["partitionKeys"]["customer"] == {"intT": self._customer}:
                record["newImage"]["valueCells"]["amount"] = {"value": {"intT": "twelve"}}
        return reply


class FailingLookups:
    """The real driver session; row lookups (prepared SELECTs) fail when `fault` says so."""

    def __init__(self, session: Any, fault: Callable[[tuple[Any, ...]], Exception | None]) -> None:
        self._session = session
        self._fault = fault
        self.failures = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    def execute(self, statement: Any, parameters: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(statement, PreparedStatement) and "SELECT" in statement.query_string:
            error = self._fault(tuple(parameters or ()))
            if error is not None:
                self.failures += 1
                raise error
        return self._session.execute(statement, parameters, *args, **kwargs)


@contextmanager
def running(follower: Follower) -> Iterator[Follower]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            follower.run(stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        yield follower
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "the follower did not stop"
    if errors:
        raise errors[0]


def _entries(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def test_an_undecodable_record_is_dead_lettered_raw_and_the_shard_goes_on(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    dead = tmp_path / "dead.ndjson"
    cfg = dataclasses.replace(make_config(), dead_letter=str(dead))
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    with (
        Job(cfg, mapping) as job,
        running(Follower(job, CorruptingStreams(streams_client(cfg), 3))) as follower,
    ):
        for n in range(8):
            table.insert(n, n, "new", n)
        expected = {k: v for k, v in table.model.items() if k != "3:3"}
        wait_for(opensearch, mapping.alias, expected)
        until(lambda: len(_entries(dead)) == 1, "the bad record reaches the dead-letter file")
        table.insert(20, 20, "after the bad record", 1)  # its shard, or any other, goes on
        until(lambda: "20:20" in indexed(opensearch, mapping.alias), "a later row arrives")
    assert follower.summary(0).dead_lettered == 1
    assert "ks2os_follow_dead_lettered_total" in job.metrics.exposition()
    (entry,) = _entries(dead)
    assert entry["op"] is None and entry["doc_id"] is None
    assert "amount" in entry["reason"] and "twelve" in entry["reason"]
    assert entry["record"]["partitionKeys"]["customer"] == {"intT": "3"}
    assert entry["source"]["kind"] == "stream" and entry["source"]["sequence_number"]


def test_a_lookup_that_fails_for_a_moment_is_retried_not_dead_lettered(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    dead = tmp_path / "dead.ndjson"
    cfg = dataclasses.replace(make_config(), dead_letter=str(dead))
    table = Table(cql, keyspace, "KEYS_ONLY")
    mapping = orders_mapping(keyspace)
    faults = iter([OperationTimedOut("injected"), OperationTimedOut("injected")])
    session = FailingLookups(cql, lambda key: next(faults, None))
    with (
        Job(cfg, mapping, session=session) as job,
        running(Follower(job, streams_client(cfg))) as follower,
    ):
        for n in range(6):
            table.insert(n % 2, n, "new", n)
        table.update(0, 0, "paid")
        wait_for(opensearch, mapping.alias, table.model)
    assert session.failures == 2
    assert follower.summary(0).dead_lettered == 0 and _entries(dead) == []


def test_a_lookup_that_fails_for_good_is_dead_lettered_with_the_raw_record(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    dead = tmp_path / "dead.ndjson"
    cfg = dataclasses.replace(make_config(), dead_letter=str(dead))
    table = Table(cql, keyspace, "OLD_IMAGE")
    mapping = orders_mapping(keyspace)

    def refuse(key: tuple[Any, ...]) -> Exception | None:
        return InvalidRequest("injected: cannot read this row") if key == (3, 3) else None

    with (
        Job(cfg, mapping, session=FailingLookups(cql, refuse)) as job,
        running(Follower(job, streams_client(cfg))) as follower,
    ):
        for n in range(6):
            table.insert(n, n, "new", n)
        wait_for(opensearch, mapping.alias, {k: v for k, v in table.model.items() if k != "3:3"})
        until(lambda: len(_entries(dead)) == 1, "the record reaches the dead-letter file")
    assert follower.summary(0).dead_lettered == 1
    (entry,) = _entries(dead)
    assert "row lookup failed" in entry["reason"] and "InvalidRequest" in entry["reason"]
    assert entry["record"]["clusteringKeys"]["order"] == {"intT": "3"}


def test_a_dead_letter_holds_a_change_or_a_raw_record_never_both() -> None:
    position = StreamRead("arn", "shardId-1", "000000000000000000000001", 1_700_000_000_000)
    entry = DeadLetter.for_record({"sequenceNumber": "1", "x": b"\x00"}, position, "bad cell")
    body = entry.to_json()
    assert body["record"] == {"sequenceNumber": "1", "x": "AA=="}
    assert body["source"]["shard_id"] == "shardId-1" and body["reason"] == "bad cell"
    orjson.dumps(body)  # JSON-safe
    with pytest.raises(ValueError, match="either a change or a raw record"):
        DeadLetter(None, None, "nothing")
