"""ks2os end to end, in both Keyspaces timestamp modes, against an independent model.

Random inserts, updates, column and row deletes, set changes, static updates
and TTL writes go through cassandra-driver into keyspaces_local (with
out-of-order `USING TIMESTAMP` where the table allows it). Meanwhile a
backfill runs, a `ks2os follow` process reads the stream and is SIGKILLed and
restarted, and shards split and merge. At the end, what searches see through
the alias must equal what `tests/lww_model.py` — which shares no code with
ks2os or the emulator — says the table holds.

`make test` runs a bounded number of operations; `make soak` ten times more.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Session
from opensearchpy import OpenSearch

from keyspaces_local.server import Emulator
from sync.config import Config, load_config
from sync.jobs.backfill import run_backfill
from sync.mapping import load_mapping
from tests.conftest import SOAK_FULL
from tests.lww_model import LwwTable

OPERATIONS = 3000 if SOAK_FULL else 300
PARTITIONS, ROWS = 6, 4
SHORT_TTL_S = 1
CATCH_UP_S = 90.0


# Resharding and faults here must not reach other modules' tests.
OWN_EMULATOR = {"shard_count": 3, "ttl_record_delay_s": 1.0}


def table_ddl(keyspace: str, client_timestamps: bool) -> str:
    props = [
        "'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}",
        "'ttl': {'status': 'enabled'}",
    ]
    if client_timestamps:
        props.append("'client_side_timestamps': {'status': 'enabled'}")
    # One custom property per ALTER in Keyspaces, but CREATE takes them all.
    return (
        f'CREATE TABLE "{keyspace}"."items" (p int, c int, a text, b int, tags set<text>, '
        "s text STATIC, PRIMARY KEY (p, c)) WITH cdc = true AND CUSTOM_PROPERTIES = {"
        + ", ".join(props)
        + "}"
    )


def write_files(tmp_path: Path, stack: Emulator, search_url: str, keyspace: str) -> Path:
    mapping = tmp_path / "items.toml"
    mapping.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "items"\n'
        f'[index]\nalias = "{keyspace}-items"\n'
        "[index.mappings.properties]\n"
        'a = { type = "keyword" }\nb = { type = "integer" }\ntags = { type = "keyword" }\n'
        's = { type = "keyword" }\np = { type = "integer" }\nc = { type = "integer" }\n'
    )
    config = tmp_path / "ks2os.toml"
    config.write_text(
        f'mapping = "{mapping}"\n'
        f'[keyspaces]\ncontact_points = ["127.0.0.1"]\nport = {stack.cql_port}\n'
        f'auth = "none"\ntls = false\nstreams_endpoint = "{stack.streams_url}"\n'
        f'[opensearch]\nhosts = ["{search_url}"]\n'
        "[state]\nlease_seconds = 3\n"
        "[backfill]\nworkers = 2\nranges = 8\n"
    )
    return config


class Workload:
    """Random operations applied to the table (over CQL) and to the model alike."""

    def __init__(
        self,
        session: Session,
        keyspace: str,
        client_timestamps: bool,
        seed: int,
        shape: tuple[int, int] = (PARTITIONS, ROWS),  # partitions, rows per partition
    ):
        self.session = session
        self.partitions, self.rows = shape
        self.table = f'"{keyspace}"."items"'
        self.client_timestamps = client_timestamps
        self.rng = random.Random(seed)
        self.model = LwwTable(
            partition=("p",), clustering=("c",), statics=frozenset({"s"}), sets=frozenset({"tags"})
        )
        self.server_ts = 0  # without client timestamps the server orders writes as they come

    def _timestamp(self) -> tuple[str, int]:
        """The USING clause and the model's timestamp for the next write."""
        if not self.client_timestamps:
            self.server_ts += 1
            return "", self.server_ts
        # Out of order on purpose: up to a minute in the past, within Keyspaces' window.
        ts = int(time.time() * 1_000_000) - self.rng.randrange(0, 60_000_000)
        return f"TIMESTAMP {ts}", ts

    def _using(self, ts_clause: str, ttl: int | None) -> str:
        parts = [p for p in (f"TTL {ttl}" if ttl else "", ts_clause) if p]
        return f" USING {' AND '.join(parts)}" if parts else ""

    def step(self) -> None:
        p, c = self.rng.randrange(self.partitions), self.rng.randrange(self.rows)
        ts_clause, ts = self._timestamp()
        now = time.time()
        roll = self.rng.random()
        key = (p, c)
        where = f"WHERE p = {p} AND c = {c}"
        if roll < 0.30:
            ttl = self._ttl()
            a, b = f"a{self.rng.randrange(1000)}", self.rng.randrange(1000)
            tags = {f"t{self.rng.randrange(5)}" for _ in range(self.rng.randrange(3))}
            tag_text = "{" + ", ".join(f"'{t}'" for t in sorted(tags)) + "}"
            self.session.execute(
                f"INSERT INTO {self.table} (p, c, a, b, tags) "
                f"VALUES ({p}, {c}, '{a}', {b}, {tag_text}){self._using(ts_clause, ttl)}"
            )
            self.model.insert(key, {"a": a, "b": b, "tags": tags}, ts=ts, ttl=ttl, now=now)
        elif roll < 0.50:
            b = self.rng.randrange(1000)
            self.session.execute(
                f"UPDATE {self.table}{self._using(ts_clause, None)} SET b = {b} {where}"
            )
            self.model.update(key, {"b": b}, ts=ts)
        elif roll < 0.60:
            self.session.execute(
                f"DELETE a FROM {self.table}{self._using(ts_clause, None)} {where}"
            )
            self.model.delete_columns(key, ["a"], ts=ts)
        elif roll < 0.70:
            self.session.execute(f"DELETE FROM {self.table}{self._using(ts_clause, None)} {where}")
            self.model.delete_row(key, ts=ts)
        elif roll < 0.80:
            tag = f"t{self.rng.randrange(5)}"
            op = self.rng.choice(["+", "-"])
            using = self._using(ts_clause, None)
            self.session.execute(
                f"UPDATE {self.table}{using} SET tags = tags {op} {{'{tag}'}} {where}"
            )
            (self.model.set_add if op == "+" else self.model.set_remove)(key, "tags", [tag], ts=ts)
        else:
            s = f"s{self.rng.randrange(1000)}"
            self.session.execute(
                f"UPDATE {self.table}{self._using(ts_clause, None)} SET s = '{s}' WHERE p = {p}"
            )
            self.model.update_static((p,), {"s": s}, ts=ts)

    def _ttl(self) -> int | None:
        roll = self.rng.random()
        if roll < 0.1:
            return SHORT_TTL_S
        return 3600 if roll < 0.2 else None

    def expected(self) -> dict[tuple[int, int], dict[str, Any]]:
        return {
            key: {k: sorted(v) if isinstance(v, set) else v for k, v in row.items()}
            for key, row in self.model.visible(now=time.time()).items()
        }


def indexed(search: OpenSearch, alias: str) -> dict[tuple[int, int], dict[str, Any]]:
    search.indices.refresh(index=alias)
    found = search.search(index=alias, body={"query": {"match_all": {}}, "size": 10_000})
    docs = {}
    for hit in found["hits"]["hits"]:
        doc = {k: v for k, v in hit["_source"].items() if k != "_ks2os"}
        if "tags" in doc:
            doc["tags"] = sorted(doc["tags"])
        docs[(doc["p"], doc["c"])] = doc
    return docs


def follower(config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "sync", "--config", str(config), "follow"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "KS2OS_STATE_WORKER_ID": f"follower-{time.monotonic_ns()}"},
    )


def reshard(stack: Emulator, arn: str, rng: random.Random) -> None:
    """Split one open shard, or merge two neighbours, through the emulator's control surface."""
    open_shards = stack.store.open_shard_ids(arn)  # in hash-range order
    if len(open_shards) >= 2 and rng.random() < 0.5:
        first = rng.randrange(len(open_shards) - 1)
        stack.control.merge_shards(arn, open_shards[first], open_shards[first + 1])
    else:
        stack.control.split_shard(arn, rng.choice(open_shards))


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


_keyspaces = iter(range(1, 1_000_000))


@pytest.mark.slow
def test_random_writes_with_backfill_kills_and_resharding_end_equal_to_the_model(
    emulator: Emulator,
    cql: Session,
    osmem_clone: Any,
    tmp_path: Path,
    client_timestamps: bool,
) -> None:
    keyspace = f"e2e_{os.getpid()}_{next(_keyspaces)}"
    cql.execute(
        f"CREATE KEYSPACE \"{keyspace}\" WITH replication = {{'class': 'SingleRegionStrategy'}}"
    )
    cql.execute(table_ddl(keyspace, client_timestamps))
    config_path = write_files(tmp_path, emulator, osmem_clone.url, keyspace)
    cfg: Config = load_config(config_path, env={})
    mapping = load_mapping(str(tmp_path / "items.toml"))
    search = OpenSearch(hosts=[osmem_clone.url])
    arn = emulator.store.latest_stream_arn(keyspace, "items")
    assert arn is not None
    rng = random.Random(1234 if client_timestamps else 4321)
    work = Workload(cql, keyspace, client_timestamps, seed=rng.randrange(2**32))

    for _ in range(OPERATIONS // 3):  # rows that exist before anything syncs
        work.step()
    backfill_errors: list[BaseException] = []
    stop_backfill = threading.Event()

    def backfill() -> None:
        try:
            run_backfill(cfg, mapping, stop=stop_backfill)
        except BaseException as exc:  # surfaced by the assertion below
            backfill_errors.append(exc)

    backfiller = threading.Thread(target=backfill)
    follow = follower(config_path)
    backfiller.start()
    try:
        for _ in range(OPERATIONS // 3):  # racing the backfill's reads
            work.step()
        backfiller.join()
        assert not backfill_errors, backfill_errors
        # Only the follower can bring these: it is killed and shards change under it.
        for n in range(OPERATIONS // 3):
            work.step()
            if n % 40 == 20:
                reshard(emulator, arn, rng)
            if n % 50 == 35:
                follow.send_signal(signal.SIGKILL)  # no flush, no checkpoint, no lease release
                follow.wait()
                follow = follower(config_path)
        # The model is asked again at every poll: rows with a short TTL leave it (and the
        # alias) as the clock passes their expiry.
        caught_up = wait_until(
            lambda: indexed(search, mapping.alias) == work.expected(), CATCH_UP_S
        )
        assert caught_up, _difference(indexed(search, mapping.alias), work.expected())
    finally:
        stop_backfill.set()
        backfiller.join()
        follow.send_signal(signal.SIGTERM)
        code = follow.wait(timeout=30)
    assert code == 0


def _difference(got: dict[Any, Any], want: dict[Any, Any]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    sample = [(k, got[k], want[k]) for k in wrong[:3]]
    return f"missing {missing}, extra {extra}, stale {len(wrong)}: {sample}"
