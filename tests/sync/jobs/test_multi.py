"""The multi-table runner (`sync.jobs.multi`): the failure policy, the board, a shared port.

The policy and the board are pure logic, run with plain functions as jobs.
The backfill of two tables runs the real jobs against keyspaces_local and
osmem with `backfill.metrics_port` set: one server for the run, both tables'
series in one registry. The CLI end of it is tests/sync/test_several_tables.py.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any

from sync.config import Config
from sync.errors import ConfigError
from sync.jobs.multi import TableRun, _Board, backfill_tables, one_after_another
from sync.logs import current_table
from sync.mapping import TableMapping, mapping_from_dict
from sync.metrics import Metrics
from tests.conftest import table_options


def mapping(keyspace: str, table: str = "t") -> TableMapping:
    return mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": table},
            "index": {"alias": f"{keyspace}-{table}"},
        }
    )


THREE = [mapping("a"), mapping("b"), mapping("c")]


def failing_on(name: str, seen: list[str]) -> Callable[[TableMapping], str]:
    """A job that records which table it ran for (from the log context) and fails on one."""

    def job(m: TableMapping) -> str:
        seen.append(str(current_table()))
        if m.keyspace == name:
            raise ConfigError(f"table {name}.t is wrong", hint="mend it")
        return f"done {m.keyspace}"

    return job


def test_under_continue_a_failure_leaves_the_other_tables_running() -> None:
    seen: list[str] = []
    metrics = Metrics()
    runs = one_after_another(
        THREE,
        failing_on("b", seen),
        on_failure="continue",
        stop=threading.Event(),
        metrics=metrics,
    )
    assert seen == ["a.t", "b.t", "c.t"]  # each ran inside its table's log context
    assert [run.result for run in runs] == ["done a", None, "done c"]
    assert [run.failed for run in runs] == [False, True, False]
    assert runs[1].error_line() == "table b.t is wrong: mend it"
    exposition = metrics.exposition()
    assert 'ks2os_table_failed{table="b.t"} 1.0' in exposition
    assert 'ks2os_table_failed{table="a.t"} 0.0' in exposition


def test_under_stop_the_first_failure_ends_the_run() -> None:
    seen: list[str] = []
    runs = one_after_another(
        THREE, failing_on("b", seen), on_failure="stop", stop=threading.Event()
    )
    assert seen == ["a.t", "b.t"]
    assert [(run.begun, run.failed) for run in runs] == [
        (True, False),
        (True, True),
        (False, False),
    ]


def test_a_stop_request_leaves_the_tables_not_begun_alone() -> None:
    stop = threading.Event()

    def job(m: TableMapping) -> str:
        stop.set()  # SIGTERM during the first table
        return m.keyspace

    runs = one_after_another(THREE, job, on_failure="continue", stop=stop)
    assert [run.begun for run in runs] == [True, False, False]
    assert runs[0].result == "a"


def test_a_bug_is_kept_as_the_tables_error_with_its_type() -> None:
    def job(m: TableMapping) -> str:
        raise KeyError("oops")

    (run,) = one_after_another(THREE[:1], job, on_failure="continue", stop=threading.Event())
    assert isinstance(run.error, KeyError)
    assert run.error_line().startswith("unexpected KeyError: 'oops' (a bug in ks2os")


class _Follower:
    """What the board reads of a follower: healthy, and its readiness."""

    def __init__(self, healthy: bool, *problems: str) -> None:
        from sync.metrics import Readiness

        self.healthy = healthy
        self._readiness = Readiness(problems)

    def readiness(self) -> Any:
        return self._readiness


def test_the_board_is_ready_only_when_every_follower_is_and_names_each_tables_problem() -> None:
    runs: list[TableRun[str]] = [TableRun(m, begun=True) for m in THREE]
    board = _Board(runs, followers=True)
    board.started("a.t", _Follower(True))  # type: ignore[arg-type]
    board.started("b.t", _Follower(True, "shard s1 lags 400 s"))  # type: ignore[arg-type]
    runs[2].error = ConfigError("table c.t has no CDC stream")
    assert board.readiness().problems == (
        "b.t: shard s1 lags 400 s",
        "c.t: stopped on an error: table c.t has no CDC stream",
    )
    assert board.healthy()  # a and b still work
    runs[0].error = runs[1].error = ConfigError("gone")
    assert not board.healthy()


def test_the_board_waits_for_a_follower_that_has_not_started() -> None:
    runs: list[TableRun[str]] = [TableRun(THREE[0], begun=True)]
    board = _Board(runs, followers=True)
    assert board.readiness().problems == ("a.t: starting",)
    assert board.healthy()
    assert _Board(runs, followers=False).readiness().ready  # a backfill has no follower


# ---- against keyspaces_local and osmem -----------------------------------------------------


def test_two_backfills_share_one_metrics_port(
    cql: Any, keyspace: str, make_config: Callable[..., Config]
) -> None:
    mappings = []
    for table, rows in (("first", 3), ("second", 5)):
        cql.execute(
            f'CREATE TABLE "{keyspace}"."{table}" (id int PRIMARY KEY, n int)'
            + table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=False)
        )
        for n in range(rows):
            cql.execute(f'INSERT INTO "{keyspace}"."{table}" (id, n) VALUES ({n}, {n})')
        mappings.append(mapping(keyspace, table))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = make_config(backfill={"ranges": 4, "metrics_port": port, "metrics_host": "127.0.0.1"})
    metrics = Metrics()
    # One server for the run: a table's backfill serving the port too would be refused it.
    runs = backfill_tables(cfg, mappings, stop=threading.Event(), metrics=metrics)
    assert [run.error for run in runs] == [None, None]
    assert [run.result.written for run in runs if run.result] == [3, 5]
    exposition = metrics.exposition()
    assert f'ks2os_backfill_rows_read_total{{table="{keyspace}.first"}} 3.0' in exposition
    assert f'ks2os_backfill_rows_read_total{{table="{keyspace}.second"}} 5.0' in exposition
