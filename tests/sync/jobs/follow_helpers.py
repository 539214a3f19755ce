"""What the follower tests share: the orders table with a model of the index, and waits.

`Table` writes through the real driver and keeps the model of what the index
must hold; `following` runs `run_follow` in a thread and stops it cleanly;
`wait_for` and `until` poll an observable condition up to a deadline.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.config import Config
from sync.jobs.follow import FollowSummary, run_follow
from sync.mapping import TableMapping, mapping_from_dict
from tests.conftest import table_options


def orders_mapping(keyspace: str) -> TableMapping:
    return mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": "orders"},
            "index": {"alias": f"{keyspace.lower()}-orders"},
        }
    )


class Table:
    """The source table and the model of what the index must hold (doc id -> fields)."""

    def __init__(
        self,
        cql: Any,
        keyspace: str,
        view_type: str = "NEW_AND_OLD_IMAGES",
        client_timestamps: bool = False,
    ) -> None:
        self.cql, self.keyspace = cql, keyspace
        cql.execute(
            f'CREATE TABLE "{keyspace}"."orders" ("customer" int, "order" int, "state" text, '
            '"amount" int, PRIMARY KEY ("customer", "order"))'
            + table_options(view_type=view_type, client_timestamps=client_timestamps)
        )
        self._insert = cql.prepare(
            f'INSERT INTO "{keyspace}"."orders" ("customer", "order", "state", "amount") '
            "VALUES (?, ?, ?, ?)"
        )
        self._update = cql.prepare(
            f'UPDATE "{keyspace}"."orders" SET "state" = ? WHERE "customer" = ? AND "order" = ?'
        )
        self._delete = cql.prepare(
            f'DELETE FROM "{keyspace}"."orders" WHERE "customer" = ? AND "order" = ?'
        )
        self.model: dict[str, dict[str, Any]] = {}
        self.writes = 0

    def insert(self, customer: int, order: int, state: str, amount: int) -> None:
        self.cql.execute(self._insert, (customer, order, state, amount))
        self.model[f"{customer}:{order}"] = {
            "customer": customer,
            "order": order,
            "state": state,
            "amount": amount,
        }
        self.writes += 1

    def update(self, customer: int, order: int, state: str) -> None:
        self.cql.execute(self._update, (state, customer, order))
        row = self.model.setdefault(f"{customer}:{order}", {"customer": customer, "order": order})
        row["state"] = state
        self.writes += 1

    def set_cdc(self, enabled: bool, view_type: str = "NEW_AND_OLD_IMAGES") -> None:
        """Switch CDC off, or on again (which makes a new stream)."""
        table = f'"{self.keyspace}"."orders"'
        if enabled:
            self.cql.execute(
                f"ALTER TABLE {table} WITH cdc = true AND CUSTOM_PROPERTIES = "
                f"{{'cdc_specification': {{'view_type': '{view_type}'}}}}"
            )
        else:
            self.cql.execute(f"ALTER TABLE {table} WITH cdc = false")

    def delete(self, customer: int, order: int) -> None:
        self.cql.execute(self._delete, (customer, order))
        self.model.pop(f"{customer}:{order}", None)
        self.writes += 1


def indexed(client: OpenSearch, alias: str) -> dict[str, dict[str, Any]]:
    if not client.indices.exists_alias(name=alias):
        return {}
    client.indices.refresh(index=alias)
    reply = client.search(index=alias, body={"query": {"match_all": {}}, "size": 10_000})
    return {
        hit["_id"]: {k: v for k, v in hit["_source"].items() if k != "_ks2os"}
        for hit in reply["hits"]["hits"]
    }


def wait_for(client: OpenSearch, alias: str, model: dict[str, Any], seconds: float = 30) -> None:
    """Poll the index (an observable condition) until it equals the model, or fail."""
    deadline = time.monotonic() + seconds
    seen: dict[str, Any] = {}
    while time.monotonic() < deadline:
        seen = indexed(client, alias)
        if seen == model:
            return
        time.sleep(0.1)
    missing = set(model) - set(seen)
    extra = set(seen) - set(model)
    wrong = {k for k in set(model) & set(seen) if model[k] != seen[k]}
    pytest.fail(
        f"index differs: missing {sorted(missing)[:5]}, extra {sorted(extra)[:5]}, "
        f"stale {sorted(wrong)[:5]}"
    )


@contextmanager
def following(cfg: Config, mapping: TableMapping) -> Iterator[list[FollowSummary]]:
    """`run_follow` in a thread; stopped (cleanly) when the block ends."""
    stop = threading.Event()
    result: list[FollowSummary] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(run_follow(cfg, mapping, stop=stop))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "run_follow did not return after stop"
    if errors:
        raise errors[0]


def until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out waiting until {what}")


def stopped_by(cfg: Config, mapping: TableMapping, seconds: float = 60) -> BaseException:
    """Run `run_follow` until it stops by itself; the error it stopped with.

    Fails the test if the follower is still running after `seconds` (it
    reported nothing) or returned without an error.
    """
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            run_follow(cfg, mapping, stop=stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(timeout=seconds)
    if thread.is_alive():
        stop.set()
        thread.join(timeout=60)
        pytest.fail(f"the follower kept running for {seconds:.0f} s without stopping")
    if not errors:
        pytest.fail("the follower returned without an error")
    return errors[0]
