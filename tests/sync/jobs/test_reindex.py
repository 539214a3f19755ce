"""`ks2os reindex` against keyspaces_local and osmem, in both timestamp modes.

What a user relies on: a reindex with a changed mapping, while a writer keeps
changing the table, ends with the alias on the new index, built with the new
mapping and equal to the table (the independent LWW model), while searches
through the alias never fail and never see fewer documents than the table has;
whether a follower runs or not, when the follower dies mid-rebuild, and when
the reindex itself is SIGKILLed mid-snapshot and run again. `--abort` leaves
the alias as it was and removes the new index; `--delete-old` removes the old
one, and otherwise `ks2os cleanup` does once its grace has passed. Static
columns are in every table here, so partition documents are rebuilt too.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.config import Config
from sync.errors import TerminalError
from sync.indices import alias_targets, index_versions
from sync.jobs.backfill import backfill_key, run_backfill
from sync.jobs.cleanup import run_cleanup
from sync.jobs.follow import Follower, run_follow
from sync.jobs.reindex import run_reindex
from sync.mapping import TableMapping, load_mapping
from sync.state import StateStore
from tests.conftest import table_options
from tests.lww_model import LwwTable

PARTITIONS, ROWS = 4, 5
CATCH_UP_S = 60.0


def _mapping_text(keyspace: str, version: int) -> str:
    """v1: `a` a keyword; v2: `a` text, and a new computed field `label` (a copy of `a`)."""
    a_type = "keyword" if version == 1 else "text"
    text = (
        f'[source]\nkeyspace = "{keyspace}"\ntable = "t"\n'
        f'[index]\nalias = "{keyspace.lower()}-t"\n'
        '[index.mappings]\ndynamic = "strict"\n'
        "[index.mappings.properties]\n"
        f'p = {{ type = "integer" }}\nc = {{ type = "integer" }}\na = {{ type = "{a_type}" }}\n'
        'b = { type = "integer" }\ns = { type = "keyword" }\n'
    )
    if version == 2:
        text += 'label = { type = "keyword" }\n[document.computed]\nlabel = { copy = "a" }\n'
    return text


class Stack:
    """The table, its mapping files (v1, then v2 in place), a config, and the LWW model."""

    def __init__(
        self,
        cql: Any,
        keyspace: str,
        tmp_path: Path,
        make_config: Callable[..., Config],
        client_timestamps: bool,
        **sections: dict[str, Any],
    ) -> None:
        self.cql, self.keyspace, self.client_timestamps = cql, keyspace, client_timestamps
        options = table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=client_timestamps)
        cql.execute(
            f'CREATE TABLE "{keyspace}"."t" (p int, c int, a text, b int, s text STATIC, '
            "PRIMARY KEY (p, c))" + options
        )
        self.path = tmp_path / "t.toml"
        self.path.write_text(_mapping_text(keyspace, 1))
        base = {
            "backfill": {"workers": 2, "ranges": 8},
            "reindex": {"max_lag_seconds": 3, "verify_sample": 200},
            "state": {"lease_seconds": 3, "worker_id": "reindexer"},
        }
        for section, values in sections.items():
            base.setdefault(section, {}).update(values)
        self.cfg = make_config(str(self.path), **base)
        self.alias = f"{keyspace.lower()}-t"
        self.model = LwwTable(partition=("p",), clustering=("c",), statics=frozenset({"s"}))
        self.lock = threading.Lock()
        self.rng = random.Random(7)
        self.clock = 0
        self.rows = 0

    @property
    def mapping(self) -> TableMapping:
        return load_mapping(self.path)

    def change_mapping(self) -> None:
        self.path.write_text(_mapping_text(self.keyspace, 2))

    def _ts(self) -> tuple[str, int]:
        """USING clause and the model's timestamp: out of order with client timestamps."""
        if not self.client_timestamps:
            self.clock += 1
            return "", self.clock
        ts = int(time.time() * 1_000_000) - self.rng.randrange(0, 30_000_000)
        return f" USING TIMESTAMP {ts}", ts

    def write(self) -> None:
        """One random insert, update or static update (never a delete: rows only grow)."""
        with self.lock:
            p, c = self.rng.randrange(PARTITIONS), self.rng.randrange(ROWS * 2)
            using, ts = self._ts()
            table = f'"{self.keyspace}"."t"'
            roll = self.rng.random()
            if roll < 0.5 or (p, c) not in self.model.visible():
                a, b = f"a{self.rng.randrange(1000)}", self.rng.randrange(1000)
                self.cql.execute(
                    f"INSERT INTO {table} (p, c, a, b) VALUES ({p}, {c}, '{a}', {b}){using}"
                )
                self.model.insert((p, c), {"a": a, "b": b}, ts=ts)
            elif roll < 0.8:
                b = self.rng.randrange(1000)
                self.cql.execute(f"UPDATE {table}{using} SET b = {b} WHERE p = {p} AND c = {c}")
                self.model.update((p, c), {"b": b}, ts=ts)
            else:
                s = f"s{self.rng.randrange(1000)}"
                self.cql.execute(f"UPDATE {table}{using} SET s = '{s}' WHERE p = {p}")
                self.model.update_static((p,), {"s": s}, ts=ts)

    def fill(self) -> None:
        """Every partition with ROWS rows, written before the first backfill."""
        for p in range(PARTITIONS):
            for c in range(ROWS):
                with self.lock:
                    using, ts = self._ts()
                    self.cql.execute(
                        f'INSERT INTO "{self.keyspace}"."t" (p, c, a, b) '
                        f"VALUES ({p}, {c}, 'a{p}{c}', {p * c}){using}"
                    )
                    self.model.insert((p, c), {"a": f"a{p}{c}", "b": p * c}, ts=ts)

    def live_rows(self) -> int:
        with self.lock:
            return len(self.model.visible())

    def expected(self, *, label: bool) -> dict[tuple[int, int], dict[str, Any]]:
        with self.lock:
            rows = self.model.visible()
        if label:
            return {k: {**v, "label": v["a"]} if "a" in v else v for k, v in rows.items()}
        return rows


def indexed(client: OpenSearch, alias: str) -> dict[tuple[int, int], dict[str, Any]]:
    client.indices.refresh(index=alias)
    found = client.search(index=alias, body={"query": {"match_all": {}}, "size": 10_000})
    docs = {}
    for hit in found["hits"]["hits"]:
        doc = {k: v for k, v in hit["_source"].items() if k != "_ks2os"}
        docs[(doc["p"], doc["c"])] = doc
    return docs


def until(condition: Callable[[], bool], what: str, seconds: float = CATCH_UP_S) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(0.1)


@contextmanager
def background(step: Callable[[], None], pause_s: float) -> Iterator[list[BaseException]]:
    """`step` in a loop in a thread until the block ends; the errors it raised."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def loop() -> None:
        while not stop.is_set():
            try:
                step()
            except BaseException as exc:
                errors.append(exc)
                return
            stop.wait(pause_s)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield errors
    finally:
        stop.set()
        thread.join(timeout=30)


class Searcher:
    """Counts the alias's documents over and over: never an error, never fewer than the
    index held when the reindex began (every row of the table then: rows are never deleted
    here, so a search of an empty or half-built index would show fewer)."""

    def __init__(self, client: OpenSearch, stack: Stack) -> None:
        self.client, self.stack = client, stack
        self.floor = len(indexed(client, stack.alias))
        assert self.floor == stack.live_rows()
        self.searches = 0
        self.most_missing = 0  # the most documents missing from one search

    def step(self) -> None:
        found = self.client.search(
            index=self.stack.alias, body={"query": {"match_all": {}}, "size": 0}
        )["hits"]["total"]["value"]
        self.searches += 1
        self.most_missing = max(self.most_missing, self.floor - found)


def converge(stack: Stack, client: OpenSearch, *, label: bool = True) -> None:
    """Run a follower (on the mapping now current) until the alias equals the model."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            run_follow(stack.cfg, stack.mapping, stop=stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    try:
        expected = stack.expected(label=label)
        until(lambda: indexed(client, stack.alias) == expected, "the alias equals the table")
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors


def new_index_of(stack: Stack, client: OpenSearch) -> str:
    (index,) = alias_targets(client, stack.alias)
    return index


def loaded(stack: Stack, client: OpenSearch) -> str:
    """The table filled and backfilled into `_v1` with mapping v1; the mapping then changed."""
    stack.fill()
    assert run_backfill(stack.cfg, stack.mapping).complete
    assert new_index_of(stack, client) == f"{stack.alias}_v1"
    stack.change_mapping()
    return f"{stack.alias}_v1"


def assert_new_mapping(client: OpenSearch, index: str) -> None:
    live = client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    assert live["a"]["type"] == "text"
    assert live["label"]["type"] == "keyword"


def store_of(stack: Stack, client: OpenSearch) -> StateStore:
    return StateStore(client, stack.cfg.state.index, lease_seconds=stack.cfg.state.lease_seconds)


# ---- the rebuild under writes ---------------------------------------------------------------


def test_reindex_under_writes_with_no_follower_swaps_to_an_index_equal_to_the_table(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
    client_timestamps: bool,
) -> None:
    stack = Stack(cql, keyspace, tmp_path, make_config, client_timestamps)
    old = loaded(stack, opensearch)
    searcher = Searcher(opensearch, stack)
    with background(stack.write, 0.02) as writer, background(searcher.step, 0.01) as search:
        summary = run_reindex(stack.cfg, stack.mapping)
    assert not writer and not search, writer + search
    assert summary.phase == "done" and summary.followed_stream
    assert searcher.searches > 10 and searcher.most_missing <= 0
    new = f"{stack.alias}_v2"
    assert new_index_of(stack, opensearch) == new
    assert_new_mapping(opensearch, new)
    # The old index is kept for the grace period, as it was when the alias left it.
    assert old in index_versions(opensearch, stack.alias)
    assert summary.keep_old_until_ms is not None
    # What this run followed is checkpointed: a follower started now loses nothing.
    converge(stack, opensearch)
    rebuild = store_of(stack, opensearch).get_rebuild(f"{keyspace}.t")
    assert rebuild is not None and rebuild.phase == "done" and rebuild.new_index == new
