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

import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch

import sync.jobs.reindex as reindex_module
from sync.config import Config
from sync.errors import MappingConflict, TerminalError
from sync.indices import alias_targets, index_versions
from sync.jobs.backfill import backfill_key, run_backfill
from sync.jobs.cleanup import run_cleanup
from sync.jobs.follow import Follower, run_follow
from sync.jobs.reindex import run_reindex
from sync.mapping import TableMapping, load_mapping
from sync.state import FREE, StateStore
from tests.conftest import table_options
from tests.lww_model import LwwTable

PARTITIONS, ROWS = 4, 5
CATCH_UP_S = 60.0


def _mapping_text(keyspace: str, version: int) -> str:
    """v1: `a` a keyword; v2: `a` text, and a new computed field `label` (a copy of `a`);
    v3: `a` text only (the same documents as v1, in an index mapped otherwise)."""
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

    def change_mapping(self, version: int = 2) -> None:
        self.path.write_text(_mapping_text(self.keyspace, version))

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


def loaded(stack: Stack, client: OpenSearch, version: int = 2) -> str:
    """The table filled and backfilled into `_v1` with mapping v1; the mapping then changed."""
    stack.fill()
    assert run_backfill(stack.cfg, stack.mapping).complete
    assert new_index_of(stack, client) == f"{stack.alias}_v1"
    stack.change_mapping(version)
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


def test_reindex_under_writes_with_a_follower_running_throughout(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
) -> None:
    """A follower (in-process) runs all along and writes both indexes while the rebuild
    asks it to; the reindex leaves the stream to it. The mapping change keeps documents
    as they were (a field's type only), as a follower started before it builds them."""
    stack = Stack(cql, keyspace, tmp_path, make_config, client_timestamps=False)
    stack.fill()
    assert run_backfill(stack.cfg, stack.mapping).complete
    follower_cfg = make_config(str(stack.path), state={"lease_seconds": 3, "worker_id": "f1"})
    first = tmp_path / "t-v1.toml"
    first.write_text(_mapping_text(keyspace, 1))
    followers: list[Follower] = []
    follow_stop = threading.Event()
    follow_thread = threading.Thread(
        target=run_follow,
        args=(follower_cfg, load_mapping(first)),
        kwargs={"stop": follow_stop, "on_start": followers.append},
        daemon=True,
    )
    follow_thread.start()
    until(lambda: bool(followers) and followers[0].planned, "the follower reads the stream")
    stack.change_mapping(version=3)
    searcher = Searcher(opensearch, stack)
    result: list[Any] = []
    with background(stack.write, 0.02) as writer, background(searcher.step, 0.01) as search:
        reindex = threading.Thread(
            target=lambda: result.append(run_reindex(stack.cfg, stack.mapping)), daemon=True
        )
        reindex.start()
        reindex.join(timeout=120)
    follow_stop.set()
    follow_thread.join(timeout=60)
    assert not reindex.is_alive(), "the reindex did not end"
    assert not writer and not search, writer + search
    (summary,) = result
    assert summary.phase == "done" and not summary.followed_stream
    assert searcher.most_missing <= 0
    assert new_index_of(stack, opensearch) == f"{stack.alias}_v2"
    converge(stack, opensearch, label=False)


def test_a_follower_killed_mid_rebuild_leaves_the_stream_to_the_reindex(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
    client_timestamps: bool,
) -> None:
    """A follower runs when the reindex starts, and dies (stopped in-process without its
    clean shutdown: leases and heartbeat left to expire, as after a SIGKILL) mid-rebuild.
    The mapping changes a field's type only: the follower, started before the change,
    builds the same documents as the new file does."""
    stack = Stack(cql, keyspace, tmp_path, make_config, client_timestamps)
    loaded(stack, opensearch, version=3)
    followers: list[Follower] = []
    follow_stop = threading.Event()
    # It started before the mapping file changed: it runs on mapping v1.
    first = tmp_path / "t-v1.toml"
    first.write_text(_mapping_text(keyspace, 1))
    follower_mapping = load_mapping(first)
    follower_cfg = make_config(
        str(stack.path), state={"lease_seconds": 3, "worker_id": "doomed-follower"}
    )
    follow_thread = threading.Thread(
        target=run_follow,
        args=(follower_cfg, follower_mapping),
        kwargs={"stop": follow_stop, "on_start": followers.append},
        daemon=True,
    )
    follow_thread.start()
    store = store_of(stack, opensearch)
    until(lambda: bool(followers) and followers[0].planned, "the follower reads the stream")
    searcher = Searcher(opensearch, stack)
    result: list[Any] = []
    with background(stack.write, 0.02) as writer, background(searcher.step, 0.01) as search:
        reindex = threading.Thread(
            target=lambda: result.append(run_reindex(stack.cfg, stack.mapping)), daemon=True
        )
        reindex.start()
        until(lambda: store.get_rebuild(f"{keyspace}.t") is not None, "the rebuild began")
        followers[0].abandon()  # no flush, no release, no goodbye: its leases must expire
        follow_thread.join(timeout=30)
        reindex.join(timeout=120)
    follow_stop.set()
    assert not reindex.is_alive(), "the reindex did not end"
    assert not writer and not search, writer + search
    (summary,) = result
    assert summary.phase == "done" and summary.followed_stream
    assert searcher.most_missing <= 0
    assert new_index_of(stack, opensearch) == f"{stack.alias}_v2"
    converge(stack, opensearch, label=False)


def test_a_reindex_sigkilled_mid_snapshot_resumes_where_it_stopped(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
    client_timestamps: bool,
) -> None:
    """`ks2os reindex` (a process) killed during its backfill; run again, it resumes the
    same rebuild and its snapshot, and the CLI reports it."""
    # Small pages, one worker, many ranges: a snapshot slow enough to be caught in flight.
    stack = Stack(
        cql,
        keyspace,
        tmp_path,
        make_config,
        client_timestamps,
        backfill={"workers": 1, "ranges": 64, "page_size": 2},
    )
    loaded(stack, opensearch)
    config = tmp_path / "ks2os.toml"
    store = store_of(stack, opensearch)
    table = f"{keyspace}.t"
    key = backfill_key(table, f"{stack.alias}_v2")
    searcher = Searcher(opensearch, stack)
    with background(stack.write, 0.02) as writer, background(searcher.step, 0.01) as search:
        process = subprocess.Popen(
            [sys.executable, "-m", "sync", "--config", str(config), "reindex"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:

            def ranges_done() -> int:
                run = store.get_run(key)
                return 0 if run is None else sum(r.done for r in store.list_ranges(run))

            until(lambda: ranges_done() >= 2, "the snapshot is under way")
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
        run = store.get_run(key)
        assert run is not None and not run.finished, "killed too late: the snapshot had ended"
        rebuild = store.get_rebuild(table)
        assert rebuild is not None and rebuild.phase == "building"
        assert new_index_of(stack, opensearch) == f"{stack.alias}_v1"
        resumed = subprocess.run(
            [sys.executable, "-m", "sync", "--config", str(config), "reindex", "--json"],
            capture_output=True,
            timeout=180,
            check=False,
        )
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    line = json.loads(resumed.stdout.decode().strip().splitlines()[-1])
    assert line["outcome"] == "done" and line["phase"] == "done" and line["resumed"] is True
    assert line["new_index"] == f"{stack.alias}_v2"
    assert not writer and not search, writer + search
    assert searcher.most_missing <= 0
    # The same snapshot run went on: its finished ranges were not read again.
    finished = store.get_run(key)
    assert finished is not None and finished.run_id == run.run_id and finished.finished
    assert_new_mapping(opensearch, f"{stack.alias}_v2")
    converge(stack, opensearch)


# ---- abort, the old index, a second run -----------------------------------------------------


def test_abort_before_the_swap_deletes_the_new_index_and_leaves_the_alias(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
) -> None:
    stack = Stack(cql, keyspace, tmp_path, make_config, client_timestamps=False)
    old = loaded(stack, opensearch)
    store = store_of(stack, opensearch)
    table = f"{keyspace}.t"
    new = f"{stack.alias}_v2"
    key = backfill_key(table, new)
    stop = threading.Event()
    result: list[Any] = []
    # Stopped (as by SIGTERM) once its snapshot began: a rebuild left half-way.
    reindex = threading.Thread(
        target=lambda: result.append(run_reindex(stack.cfg, stack.mapping, stop=stop)),
        daemon=True,
    )
    reindex.start()
    until(lambda: store.get_run(key) is not None, "the snapshot began")
    stop.set()
    reindex.join(timeout=60)
    assert result and result[0].phase == "building"
    assert new in index_versions(opensearch, stack.alias)
    # The mapping file changed again meanwhile: the half-built index is of the old one.
    stack.change_mapping(version=1)
    with pytest.raises(MappingConflict, match="changed since this rebuild") as changed:
        run_reindex(stack.cfg, stack.mapping)
    assert "--abort" in changed.value.hint

    summary = run_reindex(stack.cfg, stack.mapping, abort=True)
    assert summary.phase == "aborted" and summary.resumed
    assert alias_targets(opensearch, stack.alias) == [old]
    assert new not in index_versions(opensearch, stack.alias)
    assert store.get_run(key) is None
    rebuild = store.get_rebuild(table)
    assert rebuild is not None and rebuild.phase == "aborted"
    assert len(indexed(opensearch, stack.alias)) == stack.live_rows()
    with pytest.raises(TerminalError, match="nothing to abort"):
        run_reindex(stack.cfg, stack.mapping, abort=True)


def test_abort_after_the_swap_is_refused_and_says_how_to_go_back(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
) -> None:
    stack = Stack(cql, keyspace, tmp_path, make_config, client_timestamps=False)
    old = loaded(stack, opensearch)
    store = store_of(stack, opensearch)
    table = f"{keyspace}.t"
    # A run killed between recording the swap and finishing: phase swapped, lease free.
    rebuild = store.begin_rebuild(table, stack.alias, old, f"{stack.alias}_v2", "gone")
    store.update_rebuild(rebuild, replace(rebuild, phase="swapped", lease=FREE))
    with pytest.raises(TerminalError, match="too late to abort") as refused:
        run_reindex(stack.cfg, stack.mapping, abort=True)
    assert "reindex again" in refused.value.hint
    assert alias_targets(opensearch, stack.alias) == [old]


def test_old_index_kept_for_its_grace_then_cleanup_deletes_it_and_delete_old_at_once(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
) -> None:
    stack = Stack(
        cql, keyspace, tmp_path, make_config, client_timestamps=False, reindex={"keep_old_hours": 0}
    )
    old = loaded(stack, opensearch)
    first = run_reindex(stack.cfg, stack.mapping)
    assert first.phase == "done" and not first.old_index_deleted
    assert old in index_versions(opensearch, stack.alias)
    dry = run_cleanup(stack.cfg, stack.mapping, dry_run=True)
    assert dry.old_indexes == 1 and old in index_versions(opensearch, stack.alias)
    assert run_cleanup(stack.cfg, stack.mapping).old_indexes == 1
    assert old not in index_versions(opensearch, stack.alias)

    # A second rebuild (the mapping unchanged: an index rebuilt as it is), old one dropped.
    second = run_reindex(stack.cfg, stack.mapping, delete_old=True)
    assert second.phase == "done" and second.old_index_deleted and not second.resumed
    assert sorted(index_versions(opensearch, stack.alias)) == [f"{stack.alias}_v3"]
    assert alias_targets(opensearch, stack.alias) == [f"{stack.alias}_v3"]
    assert indexed(opensearch, stack.alias) == stack.expected(label=True)


def test_a_second_run_while_one_holds_the_rebuild_is_refused_in_one_line(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
) -> None:
    stack = Stack(cql, keyspace, tmp_path, make_config, client_timestamps=False)
    old = loaded(stack, opensearch)
    store = store_of(stack, opensearch)
    table = f"{keyspace}.t"
    held = [store.begin_rebuild(table, stack.alias, old, f"{stack.alias}_v2", "other-host")]

    def renew() -> None:  # a live run renews its lease
        renewed = store.lease_rebuild(held[0], "other-host")
        assert renewed is not None
        held[0] = renewed

    with (
        background(renew, 0.5) as errors,
        pytest.raises(TerminalError, match="is running: other-host"),
    ):
        run_reindex(stack.cfg, stack.mapping)
    assert not errors
    assert alias_targets(opensearch, stack.alias) == [old]


# ---- follow.on_gap = "reindex" ------------------------------------------------------------------


def test_a_gap_under_on_gap_reindex_rebuilds_the_index_and_the_follower_goes_on_with_it(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
) -> None:
    """CDC switched off and on while nobody followed: what was written meanwhile reached
    no stream (a gap). The follower rebuilds the index from the table and follows it."""
    stack = Stack(
        cql, keyspace, tmp_path, make_config, client_timestamps=False, follow={"on_gap": "reindex"}
    )
    stack.fill()
    assert run_backfill(stack.cfg, stack.mapping).complete
    converge(stack, opensearch, label=False)  # checkpoints: the follower was up to date
    table = f'"{keyspace}"."t"'
    cql.execute(f"ALTER TABLE {table} WITH cdc = false")
    for _ in range(10):
        stack.write()  # into no stream: only a snapshot can bring these
    cql.execute(
        f"ALTER TABLE {table} WITH cdc = true AND CUSTOM_PROPERTIES = "
        "{'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
    )
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
        until(
            lambda: alias_targets(opensearch, stack.alias) == [f"{stack.alias}_v2"],
            "the follower rebuilt the index",
            seconds=120,
        )
        until(
            lambda: indexed(opensearch, stack.alias) == stack.expected(label=False),
            "the new index equals the table",
        )
        stack.write()  # after the rebuild: the follower follows the new index
        until(
            lambda: indexed(opensearch, stack.alias) == stack.expected(label=False),
            "a change after the rebuild arrives",
        )
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not errors, errors
    gaps = StateStore(opensearch, stack.cfg.state.index).list_gaps(f"{keyspace}.t")
    assert [(g.kind, g.policy) for g in gaps] == [("stream-switch", "reindex")]
    rebuild = store_of(stack, opensearch).get_rebuild(f"{keyspace}.t")
    assert rebuild is not None and rebuild.phase == "done"


# ---- a partition as one document --------------------------------------------------------------


def _partition_mapping_text(keyspace: str, a_type: str) -> str:
    return (
        f'[source]\nkeyspace = "{keyspace}"\ntable = "t"\n'
        f'[index]\nalias = "{keyspace.lower()}-t"\n'
        '[index.mappings]\ndynamic = "strict"\n'
        '[index.mappings.properties]\np = { type = "integer" }\ns = { type = "keyword" }\n'
        '[index.mappings.properties.rows]\ntype = "nested"\n'
        "[index.mappings.properties.rows.properties]\n"
        f'c = {{ type = "integer" }}\na = {{ type = "{a_type}" }}\nb = {{ type = "integer" }}\n'
        '[document]\nshape = "partition"\n'
    )


def _partitions(stack: Stack) -> dict[int, dict[str, Any]]:
    """What the model says each partition's document holds: statics, rows in clustering order."""
    documents: dict[int, dict[str, Any]] = {}
    for (p, c), row in sorted(stack.expected(label=False).items()):
        document = documents.setdefault(p, {"p": p, "rows": []})
        if "s" in row:
            document["s"] = row["s"]
        document["rows"].append({"c": c, "a": row["a"], "b": row["b"]})
    return documents


def _partition_documents(client: OpenSearch, alias: str) -> dict[int, dict[str, Any]]:
    client.indices.refresh(index=alias)
    found = client.search(index=alias, body={"query": {"match_all": {}}, "size": 1000})
    return {
        hit["_source"]["p"]: {k: v for k, v in hit["_source"].items() if k != "_ks2os"}
        for hit in found["hits"]["hits"]
    }


def test_partition_documents_are_rebuilt_from_the_snapshot_and_the_stream(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
) -> None:
    stack = Stack(cql, keyspace, tmp_path, make_config, client_timestamps=False)
    stack.path.write_text(_partition_mapping_text(keyspace, "keyword"))
    stack.fill()
    assert run_backfill(stack.cfg, stack.mapping).complete
    stack.path.write_text(_partition_mapping_text(keyspace, "text"))
    with background(stack.write, 0.02) as writer:
        summary = run_reindex(stack.cfg, stack.mapping)
    assert not writer
    assert summary.phase == "done"
    new = f"{stack.alias}_v2"
    assert new_index_of(stack, opensearch) == new
    rows = opensearch.indices.get_mapping(index=new)[new]["mappings"]["properties"]["rows"]
    assert rows["properties"]["a"]["type"] == "text"
    # A follower goes on from the checkpoints the rebuild left: nothing is missing.
    stop = threading.Event()
    thread = threading.Thread(
        target=run_follow, args=(stack.cfg, stack.mapping), kwargs={"stop": stop}, daemon=True
    )
    thread.start()
    try:
        until(
            lambda: _partition_documents(opensearch, stack.alias) == _partitions(stack),
            "every partition's document equals the table",
        )
    finally:
        stop.set()
        thread.join(timeout=60)


def test_a_verify_sample_that_keeps_failing_stops_the_run_before_the_swap(
    cql: Any,
    keyspace: str,
    tmp_path: Path,
    make_config: Callable[..., Config],
    opensearch: OpenSearch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A document of the new index goes missing before each sample (deleted through the
    real client, as a fault would): the run stops in one line, the alias where it was."""
    stack = Stack(
        cql,
        keyspace,
        tmp_path,
        make_config,
        client_timestamps=False,
        reindex={"verify_attempts": 2, "verify_sample": 1000},
    )
    old = loaded(stack, opensearch)
    new = f"{stack.alias}_v2"
    samples: list[int] = []
    real_verify = reindex_module.run_verify

    def verify_after_a_loss(*args: Any, **kwargs: Any) -> Any:
        opensearch.delete(index=new, id="0:0", params={"refresh": "true", "ignore": 404})
        samples.append(1)
        return real_verify(*args, **kwargs)

    monkeypatch.setattr(reindex_module, "run_verify", verify_after_a_loss)
    with pytest.raises(TerminalError, match="differs from the table") as stopped:
        run_reindex(stack.cfg, stack.mapping)
    assert "0:0" in str(stopped.value) and len(samples) == 2
    assert alias_targets(opensearch, stack.alias) == [old]
    rebuild = store_of(stack, opensearch).get_rebuild(f"{keyspace}.t")
    assert rebuild is not None and rebuild.phase == "building"
