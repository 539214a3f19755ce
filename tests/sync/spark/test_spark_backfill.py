"""A backfill through Spark (local mode) against keyspaces_local and osmem-server.

What users rely on: after a Spark backfill the alias holds exactly the table
(compared with the independent last-write-wins model, in both timestamp
modes, with static columns); a task killed mid-range is retried by Spark and
the result is still exact; a run that failed is resumed without reading its
finished ranges again; ranges a task hands back are split, and the split is
in the state index, where `ks2os backfill` resumes it (and the other way
round: Spark resumes a run the CLI left).

One local Spark session (`local[2,4]`: 2 cores, a task may fail 4 times;
local mode reads `spark.task.maxFailures` from the master URL) serves the
whole module; tables are small so the module stays bounded.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.config import Config
from sync.errors import TransientError
from sync.jobs import Job
from sync.jobs.backfill import run_backfill, state_key
from sync.mapping import TableMapping, mapping_from_dict
from sync.model import Change
from sync.sources.cql import MAX_TOKEN, MIN_TOKEN
from sync.spark import run_spark_backfill
from sync.spark.task import Sink
from sync.state import RangeState
from sync.writer import WriteReport
from tests.conftest import table_options
from tests.lww_model import LwwTable

ROOT = Path(__file__).resolve().parents[3]
PARTITIONS, ROWS = 10, 6


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from pyspark.sql import SparkSession

    with pytest.MonkeyPatch.context() as patch:
        # Loopback only: the driver would otherwise bind to the host's network address.
        patch.setenv("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers run this virtualenv's interpreter (PySpark reads this variable).
        patch.setenv("PYSPARK_PYTHON", sys.executable)
        session = _local_session(SparkSession)
    session.sparkContext.setLogLevel("FATAL")
    try:
        yield session
    finally:
        session.stop()


def _local_session(spark_session: Any) -> Any:
    return (
        spark_session.builder.master("local[2,4]")
        .appName("ks2os-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.host", "127.0.0.1")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.task.maxFailures", "4")
        # Executors import the fault injectors below by module name.
        .config("spark.executorEnv.PYTHONPATH", str(ROOT))
        .getOrCreate()
    )


# ---- tables and what the index must hold --------------------------------------------------


class Writes:
    """Random writes applied to a table with a static column over CQL and to the model."""

    def __init__(self, cql: Any, keyspace: str, client_timestamps: bool, seed: int) -> None:
        self.cql, self.client_timestamps = cql, client_timestamps
        self.table = f'"{keyspace}"."items"'
        self.rng = random.Random(seed)
        self.model = LwwTable(partition=("p",), clustering=("c",), statics=frozenset({"s"}))
        self.server_ts = 0
        cql.execute(
            f"CREATE TABLE {self.table} (p int, c int, a text, b int, s text STATIC, "
            "PRIMARY KEY (p, c))"
            + table_options(view_type=None, client_timestamps=client_timestamps)
        )

    def _using(self) -> tuple[str, int]:
        if not self.client_timestamps:
            self.server_ts += 1
            return "", self.server_ts
        # Out of order on purpose, within Keyspaces' window for client timestamps.
        ts = int(time.time() * 1_000_000) - self.rng.randrange(0, 60_000_000)
        return f" USING TIMESTAMP {ts}", ts

    def step(self) -> None:
        p, c = self.rng.randrange(PARTITIONS), self.rng.randrange(ROWS)
        using, ts = self._using()
        roll = self.rng.random()
        where = f"WHERE p = {p} AND c = {c}"
        if roll < 0.5:
            a, b = f"a{self.rng.randrange(1000)}", self.rng.randrange(1000)
            self.cql.execute(
                f"INSERT INTO {self.table} (p, c, a, b) VALUES ({p}, {c}, '{a}', {b}){using}"
            )
            self.model.insert((p, c), {"a": a, "b": b}, ts=ts)
        elif roll < 0.65:
            b = self.rng.randrange(1000)
            self.cql.execute(f"UPDATE {self.table}{using} SET b = {b} {where}")
            self.model.update((p, c), {"b": b}, ts=ts)
        elif roll < 0.72:
            self.cql.execute(f"DELETE a FROM {self.table}{using} {where}")
            self.model.delete_columns((p, c), ["a"], ts=ts)
        elif roll < 0.8:
            self.cql.execute(f"DELETE FROM {self.table}{using} {where}")
            self.model.delete_row((p, c), ts=ts)
        else:
            s = f"s{self.rng.randrange(1000)}"
            self.cql.execute(f"UPDATE {self.table}{using} SET s = '{s}' WHERE p = {p}")
            self.model.update_static((p,), {"s": s}, ts=ts)

    def expected(self) -> dict[tuple[int, int], dict[str, Any]]:
        return self.model.visible(now=time.time())


def _items_mapping(keyspace: str, *, statics: bool = True) -> TableMapping:
    properties = {"a": {"type": "keyword"}, "b": {"type": "integer"}}
    if statics:
        properties["s"] = {"type": "keyword"}
    return mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": "items"},
            "index": {
                "alias": f"{keyspace.lower()}-items",
                "mappings": {"properties": properties},
            },
        }
    )


def _indexed(client: OpenSearch, alias: str) -> dict[tuple[int, int], dict[str, Any]]:
    client.indices.refresh(index=alias)
    reply = client.search(index=alias, body={"query": {"match_all": {}}, "size": 10_000})
    docs = {}
    for hit in reply["hits"]["hits"]:
        doc = {k: v for k, v in hit["_source"].items() if k != "_ks2os"}
        docs[(doc["p"], doc["c"])] = doc
    return docs


def _products(cql: Any, keyspace: str, count: int) -> dict[tuple[int, int], dict[str, Any]]:
    """A plain table (no statics) of `count` rows; returns what the index must hold."""
    cql.execute(
        f'CREATE TABLE "{keyspace}"."items" (p int, c int, a text, b int, PRIMARY KEY (p, c))'
    )
    insert = cql.prepare(f'INSERT INTO "{keyspace}"."items" (p, c, a, b) VALUES (?, ?, ?, ?)')
    model = {}
    for n in range(count):
        p, c = n % 23, n
        cql.execute(insert, (p, c, f"row {n}", n))
        model[(p, c)] = {"p": p, "c": c, "a": f"row {n}", "b": n}
    return model


# ---- fault injectors: run on the executors, so importable there by module name ------------


@dataclass(frozen=True)
class KillOnce:
    """Kill the Python worker after range `number` had a bulk request written, the first time.

    `os._exit`: no `finally`, no lease release, no checkpoint, as a lost executor.
    """

    marker: str
    number: int

    def __call__(self, sink: Sink, number: int) -> Sink:
        return _Killing(sink, self.marker) if number == self.number else sink


class _Killing:
    def __init__(self, sink: Sink, marker: str) -> None:
        self.sink, self.marker = sink, marker

    def write(self, changes: Sequence[Change]) -> WriteReport:
        report = self.sink.write(changes)
        try:
            os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return report  # killed once already: this is the retry
        os._exit(3)


@dataclass(frozen=True)
class FailFrom:
    """Every write of a range numbered `first` or above fails (so the Spark job fails)."""

    first: int

    def __call__(self, sink: Sink, number: int) -> Sink:
        return _Failing() if number >= self.first else sink


class _Failing:
    def write(self, changes: Sequence[Change]) -> WriteReport:
        raise RuntimeError("injected: this range cannot be written")


def _ranges(cfg: Config, mapping: TableMapping) -> tuple[str, list[RangeState]]:
    with Job(cfg, mapping) as job:
        run = job.store.get_run(state_key(job))
        assert run is not None
        return run.run_id, job.store.list_ranges(run)


# ---- the tests --------------------------------------------------------------------------


def test_a_spark_backfill_with_statics_and_split_ranges_equals_the_model(
    spark: Any,
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    writes = Writes(cql, keyspace, client_timestamps, seed=7 if client_timestamps else 11)
    for _ in range(200):
        writes.step()
    mapping = _items_mapping(keyspace)
    # Two ranges and a budget far below their size: tasks hand their rest back, the
    # driver splits it, and later waves finish the pieces.
    # writer.max_docs above the table's row count: osmem matches `lt` on longs beyond 2**53
    # inclusively, and the statics fan-out then pages over the same full page for ever
    # (reported; not a Spark matter: `ks2os backfill` hangs the same way).
    cfg = make_config(
        backfill={"page_size": 4},
        writer={"max_docs": 100},
        spark={"ranges": 2, "task_rows": 12},
    )
    summary = run_spark_backfill(spark, cfg, mapping)
    assert summary.complete and summary.runner == "spark" and summary.planned == "setting"
    assert summary.splits >= 1 and summary.waves >= 2 and summary.ranges > 2
    assert summary.dead_lettered == 0
    assert _indexed(opensearch, mapping.alias) == writes.expected()
    run_id, ranges = _ranges(cfg, mapping)
    assert run_id == summary.run_id and len(ranges) == summary.ranges
    assert all(r.done and r.lease.owner is None for r in ranges)
    # The pieces tile the ring: every token belongs to exactly one range.
    bounds = sorted((r.range_start, r.range_end) for r in ranges)
    assert bounds[0][0] == MIN_TOKEN and bounds[-1][1] == MAX_TOKEN
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


def test_a_task_killed_mid_range_is_retried_and_the_index_is_exact(
    spark: Any,
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    model = _products(cql, keyspace, 150)
    mapping = _items_mapping(keyspace, statics=False)
    cfg = make_config(backfill={"page_size": 10}, writer={"max_docs": 10}, spark={"ranges": 4})
    marker = tmp_path / "killed"
    summary = run_spark_backfill(spark, cfg, mapping, wrap_sink=KillOnce(str(marker), 2))
    assert marker.exists()  # the worker did die after writing part of range 2
    assert summary.complete and summary.waves == 1  # Spark's retry finished it in the same wave
    assert _indexed(opensearch, mapping.alias) == model
    _, ranges = _ranges(cfg, mapping)
    assert all(r.done for r in ranges)


def test_a_failed_run_resumed_skips_its_finished_ranges(
    spark: Any,
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
) -> None:
    model = _products(cql, keyspace, 200)
    mapping = _items_mapping(keyspace, statics=False)
    cfg = make_config(backfill={"page_size": 10}, writer={"max_docs": 10}, spark={"ranges": 8})
    # The last range cannot be written: Spark gives up on it after 4 attempts, the job fails.
    with pytest.raises(TransientError, match="injected"):
        run_spark_backfill(spark, cfg, mapping, wrap_sink=FailFrom(7))
    run_id, before = _ranges(cfg, mapping)
    finished = {r.number: r for r in before if r.done}
    assert 0 < len(finished) < 8 and 7 not in finished

    summary = run_spark_backfill(spark, cfg, mapping)
    assert summary.complete and summary.run_id == run_id and summary.planned == "resumed"
    assert summary.tasks == 8 - len(finished)  # no task for a finished range
    _, after = _ranges(cfg, mapping)
    for state in after:
        if state.number in finished:  # not leased, not rewritten: the very same document
            assert state.stamp == finished[state.number].stamp
    # Rows read now are exactly the rows the unfinished ranges added to their counts.
    earlier = {r.number: r.rows for r in before}
    added = sum(r.rows - earlier[r.number] for r in after if r.number not in finished)
    assert summary.rows_read == added and summary.rows_read < len(model)
    assert _indexed(opensearch, mapping.alias) == model


def test_the_cli_resumes_a_spark_run_with_its_splits_and_spark_resumes_the_clis(
    spark: Any,
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
) -> None:
    model = _products(cql, keyspace, 200)
    mapping = _items_mapping(keyspace, statics=False)
    cfg = make_config(
        backfill={"page_size": 5, "workers": 2},
        writer={"max_docs": 5},
        spark={"ranges": 2, "task_rows": 20},
    )
    # Wave 1 hands both ranges back and splits them; the pieces (ranges 2 and up) then fail.
    with pytest.raises(TransientError, match="injected"):
        run_spark_backfill(spark, cfg, mapping, wrap_sink=FailFrom(2))
    run_id, ranges = _ranges(cfg, mapping)
    assert len(ranges) > 2 and not all(r.done for r in ranges)

    resumed = run_backfill(cfg, mapping)  # the CLI sees the split run as it is
    assert resumed.complete and resumed.run_id == run_id and resumed.ranges == len(ranges)
    assert _indexed(opensearch, mapping.alias) == model

    # The other way round: a CLI run stopped after its first range, finished by Spark.
    stop = threading.Event()
    cli_cfg = make_config(
        backfill={"ranges": 6, "workers": 1, "page_size": 5}, writer={"max_docs": 5}
    )
    with Job(cli_cfg, mapping) as job:
        watcher = threading.Thread(target=_stop_after_a_range, args=(job, stop))
        watcher.start()
        try:
            first = run_backfill(cli_cfg, mapping, restart=True, stop=stop, job=job)
        finally:
            stop.set()
            watcher.join()
    assert not first.complete
    summary = run_spark_backfill(spark, cli_cfg, mapping)
    assert summary.complete and summary.run_id == first.run_id and summary.planned == "resumed"
    assert summary.tasks < 6
    assert _indexed(opensearch, mapping.alias) == model


def test_without_size_estimates_a_new_run_is_planned_by_cores(cql: Any, keyspace: str) -> None:
    """keyspaces_local serves no system.size_estimates (an Invalid error, as Cassandra
    gives for an unknown table): the estimate is None, not an error."""
    from sync.spark.driver import read_size_estimate

    _products(cql, keyspace, 3)
    assert read_size_estimate(cql, keyspace, "items") is None


def _stop_after_a_range(job: Job, stop: threading.Event) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not stop.is_set():
        run = job.store.get_run(state_key(job))
        if run and not run.finished and any(r.done for r in job.store.list_ranges(run)):
            stop.set()
            return
        time.sleep(0.02)  # polling an observable condition, with a deadline


def test_spark_submit_of_the_driver_script_loads_the_table_and_prints_its_summary(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    model = _products(cql, keyspace, 60)
    mapping_path = tmp_path / "items.toml"
    mapping_path.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "items"\n'
        f'[index]\nalias = "{keyspace.lower()}-items"\n'
    )
    make_config(mapping=str(mapping_path), spark={"ranges": 3})  # writes tmp_path/ks2os.toml
    submit = Path(sys.executable).parent / "spark-submit"
    env = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [
            str(submit),
            "--master",
            "local[2]",
            "--conf",
            "spark.ui.enabled=false",
            "--conf",
            "spark.driver.host=127.0.0.1",
            str(ROOT / "deploy" / "spark" / "ks2os_spark.py"),
            "--config",
            str(tmp_path / "ks2os.toml"),
            "--no-cdc",
        ],
        capture_output=True,
        env=env,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    # spark-submit merges the driver's log (stderr) into stdout: the summary is its own line.
    lines = [json.loads(x) for x in done.stdout.decode().splitlines() if x.startswith("{")]
    (summary,) = [line for line in lines if "run_id" in line]
    assert summary["complete"] and summary["runner"] == "spark" and summary["ranges"] == 3
    assert summary["rows_read"] == 60 and summary["application"].startswith("local-")
    found = _indexed(opensearch, f"{keyspace.lower()}-items")
    assert {k: {"a": v["a"], "b": v["b"]} for k, v in found.items()} == {
        k: {"a": v["a"], "b": v["b"]} for k, v in model.items()
    }


def test_the_driver_refuses_a_dead_letter_file_before_starting_spark(
    make_config: Callable[..., Config], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sync.spark.__main__ import main

    mapping_path = tmp_path / "items.toml"
    mapping_path.write_text('[source]\nkeyspace = "k"\ntable = "t"\n[index]\nalias = "k-t"\n')
    make_config(mapping=str(mapping_path))
    config = tmp_path / "ks2os.toml"
    config.write_text(f'dead_letter = "rejected.ndjson"\n{config.read_text()}')
    # Arguments Glue adds of its own are tolerated; the mistake is named.
    assert main(["--config", str(config), "--JOB_ID", "j_1", "--TempDir", "s3://t"]) == 2
    error = capsys.readouterr().err
    assert "dead_letter" in error and "unrecognized" not in error
