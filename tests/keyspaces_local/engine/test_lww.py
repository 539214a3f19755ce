"""Cassandra's last-write-wins in the engine, checked against the independent model in
tests/lww_model.py: the outcome depends on write timestamps, never on arrival order."""

from __future__ import annotations

import random
from typing import Any

import pytest

from keyspaces_local.clock import Clock
from tests.lww_model import LwwTable

from .conftest import EngineSession

CST = "custom_properties = {'client_side_timestamps': {'status': 'enabled'}}"


@pytest.fixture
def table(session: EngineSession) -> EngineSession:
    session.execute(
        f"CREATE TABLE t (k int, c int, v int, w int, s set<int>, st int static, "
        f"PRIMARY KEY (k, c)) WITH {CST}"
    )
    return session


def _value(session: EngineSession, k: int = 1, c: int = 1, col: str = "v") -> Any:
    rows = session.rows(f"SELECT {col} FROM t WHERE k = ? AND c = ?", [k, c])
    return rows[0][col] if rows else "absent"


def test_later_timestamp_wins_whatever_the_arrival_order(
    table: EngineSession, clock: Clock
) -> None:
    now = clock.now_us()
    table.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 20) USING TIMESTAMP ?", [now - 1000])
    table.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 10) USING TIMESTAMP ?", [now - 2000])
    assert _value(table) == 20
    rows = table.rows("SELECT WRITETIME(v) FROM t WHERE k = 1 AND c = 1")
    assert rows == [{"writetime(v)": now - 1000}]


def test_tombstone_beats_an_older_write_that_arrives_later(
    table: EngineSession, clock: Clock
) -> None:
    now = clock.now_us()
    table.execute("DELETE FROM t USING TIMESTAMP ? WHERE k = 1 AND c = 1", [now - 1000])
    table.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 10) USING TIMESTAMP ?", [now - 2000])
    assert _value(table) == "absent"
    table.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 11) USING TIMESTAMP ?", [now - 500])
    assert _value(table) == 11


def test_partition_and_range_tombstones_shadow_late_older_writes(
    table: EngineSession, clock: Clock
) -> None:
    now = clock.now_us()
    table.execute("DELETE FROM t USING TIMESTAMP ? WHERE k = 1", [now - 1000])
    table.execute("DELETE FROM t USING TIMESTAMP ? WHERE k = 2 AND c >= 5 AND c < 10", [now - 1000])
    for k, c in ((1, 1), (2, 5), (2, 9), (2, 10), (2, 4)):
        table.execute(
            "INSERT INTO t (k, c, v) VALUES (?, ?, 1) USING TIMESTAMP ?", [k, c, now - 2000]
        )
    visible = {(r["k"], r["c"]) for r in table.rows("SELECT k, c FROM t")}
    assert visible == {(2, 4), (2, 10)}


def test_equal_timestamps(table: EngineSession, clock: Clock) -> None:
    ts = clock.now_us() - 1000
    table.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 7) USING TIMESTAMP ?", [ts])
    table.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 5) USING TIMESTAMP ?", [ts])
    assert _value(table) == 7  # the larger value wins a tie
    table.execute("DELETE v FROM t USING TIMESTAMP ? WHERE k = 1 AND c = 1", [ts])
    table.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 9) USING TIMESTAMP ?", [ts])
    assert _value(table) is None  # a tombstone wins a tie; the row marker keeps the row


def test_server_timestamps_order_writes_in_one_microsecond(session: EngineSession) -> None:
    session.execute(f"CREATE TABLE u (k int PRIMARY KEY, v int) WITH {CST}")
    for v in range(50):
        session.execute("UPDATE u SET v = ? WHERE k = 1", [v])
    assert session.rows("SELECT v FROM u WHERE k = 1") == [{"v": 49}]


def test_update_only_row_vanishes_with_its_last_cell(table: EngineSession) -> None:
    table.execute("UPDATE t SET v = 1 WHERE k = 1 AND c = 1")
    table.execute("DELETE v FROM t WHERE k = 1 AND c = 1")
    assert _value(table) == "absent"
    table.execute("INSERT INTO t (k, c, v) VALUES (1, 2, 1)")
    table.execute("DELETE v FROM t WHERE k = 1 AND c = 2")
    assert _value(table, c=2) is None  # an INSERT's row marker keeps the row


def test_set_elements_have_their_own_timestamps(table: EngineSession, clock: Clock) -> None:
    now = clock.now_us()
    table.execute(
        "UPDATE t USING TIMESTAMP ? SET s = s + {1, 2} WHERE k = 1 AND c = 1", [now - 3000]
    )
    table.execute("UPDATE t USING TIMESTAMP ? SET s = s - {2} WHERE k = 1 AND c = 1", [now - 1000])
    table.execute(
        "UPDATE t USING TIMESTAMP ? SET s = s + {2, 3} WHERE k = 1 AND c = 1", [now - 2000]
    )
    assert _value(table, col="s") == {1, 3}
    table.execute("UPDATE t USING TIMESTAMP ? SET s = {9} WHERE k = 1 AND c = 1", [now - 1500])
    assert _value(table, col="s") == {9}


# ---------------------------------------------------------------- randomized, against the model


def _random_ops(
    rng: random.Random, base: int
) -> list[tuple[str, tuple[int, int], dict[str, Any], int]]:
    ops = []
    for _ in range(120):
        key = (rng.randint(1, 3), rng.randint(1, 3))
        ts = base + rng.randint(0, 40) * 1000  # few distinct timestamps: ties happen
        kind = rng.choice(
            [
                "insert",
                "update",
                "update",
                "delete_row",
                "delete_columns",
                "set_add",
                "set_remove",
                "static",
            ]
        )
        values: dict[str, Any] = {}
        if kind in ("insert", "update"):
            for col in rng.sample(["v", "w", "s"], rng.randint(1, 3)):
                values[col] = (
                    {rng.randint(0, 5) for _ in range(rng.randint(0, 3))}
                    if col == "s"
                    else rng.choice([None, rng.randint(0, 1000)])
                )
        elif kind == "delete_columns":
            values = {c: None for c in rng.sample(["v", "w", "s"], rng.randint(1, 2))}
        elif kind in ("set_add", "set_remove"):
            values = {"s": {rng.randint(0, 5) for _ in range(rng.randint(1, 3))}}
        elif kind == "static":
            values = {"st": rng.choice([None, rng.randint(0, 1000)])}
        ops.append((kind, key, values, ts))
    return ops


def _apply_engine(
    session: EngineSession, kind: str, key: tuple[int, int], values: dict[str, Any], ts: int
) -> None:
    k, c = key
    if kind == "insert":
        cols = ", ".join(values)
        marks = ", ".join("?" for _ in values)
        session.execute(
            f"INSERT INTO t (k, c, {cols}) VALUES (?, ?, {marks}) USING TIMESTAMP ?",
            [k, c, *[_bind(v) for v in values.values()], ts],
        )
    elif kind == "update":
        sets = ", ".join(f"{col} = ?" for col in values)
        session.execute(
            f"UPDATE t USING TIMESTAMP ? SET {sets} WHERE k = ? AND c = ?",
            [ts, *[_bind(v) for v in values.values()], k, c],
        )
    elif kind == "delete_row":
        session.execute("DELETE FROM t USING TIMESTAMP ? WHERE k = ? AND c = ?", [ts, k, c])
    elif kind == "delete_columns":
        session.execute(
            f"DELETE {', '.join(values)} FROM t USING TIMESTAMP ? WHERE k = ? AND c = ?", [ts, k, c]
        )
    elif kind in ("set_add", "set_remove"):
        op = "+" if kind == "set_add" else "-"
        session.execute(
            f"UPDATE t USING TIMESTAMP ? SET s = s {op} ? WHERE k = ? AND c = ?",
            [ts, values["s"], k, c],
        )
    else:
        session.execute("UPDATE t USING TIMESTAMP ? SET st = ? WHERE k = ?", [ts, values["st"], k])


def _bind(value: Any) -> Any:
    return None if value == set() else value


def _apply_model(
    model: LwwTable, kind: str, key: tuple[int, int], values: dict[str, Any], ts: int
) -> None:
    if kind == "insert":
        model.insert(key, values, ts)
    elif kind == "update":
        model.update(key, values, ts)
    elif kind == "delete_row":
        model.delete_row(key, ts)
    elif kind == "delete_columns":
        model.delete_columns(key, values, ts)
    elif kind == "set_add":
        model.set_add(key, "s", values["s"], ts)
    elif kind == "set_remove":
        model.set_remove(key, "s", values["s"], ts)
    else:
        model.update_static(key[:1], values, ts)


@pytest.mark.parametrize("seed", range(12))
def test_random_histories_match_the_model(table: EngineSession, clock: Clock, seed: int) -> None:
    rng = random.Random(seed)
    model = LwwTable(
        partition=("k",), clustering=("c",), statics=frozenset({"st"}), sets=frozenset({"s"})
    )
    for kind, key, values, ts in _random_ops(rng, clock.now_us() - 3_600_000_000):
        _apply_engine(table, kind, key, values, ts)
        _apply_model(model, kind, key, values, ts)
    got = {}
    for row in table.rows("SELECT * FROM t"):
        if row["c"] is None:
            continue  # a partition with only static values shows as one row without clustering
        got[(row["k"], row["c"])] = {
            name: (set(v) if name == "s" else v) for name, v in row.items() if v is not None
        }
    assert got == model.visible()


def test_protocol_timestamp_is_the_write_time_with_client_side_timestamps(
    table: EngineSession, clock: Clock
) -> None:
    now = clock.now_us()
    table.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 2)", timestamp_us=now - 1000)
    table.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 1)", timestamp_us=now - 2000)
    assert table.rows("SELECT v, WRITETIME(v) FROM t WHERE k = 1 AND c = 1") == [
        {"v": 2, "writetime(v)": now - 1000}
    ]


def test_a_swept_ttl_marker_still_shadows_an_older_insert_that_arrives_later(
    session: EngineSession, clock: Clock, engine: Any
) -> None:
    """An expired marker is a tombstone of its timestamp, swept or not: a later-arriving
    INSERT with an older timestamp must not bring the row back. Found by `make chaos`
    (the sweep used to forget the marker, and the row came back with no values)."""
    session.execute(
        "CREATE TABLE m (k int, c int, v int, PRIMARY KEY (k, c)) WITH custom_properties = "
        "{'client_side_timestamps': {'status': 'enabled'}, 'ttl': {'status': 'enabled'}}"
    )
    now = clock.now_us()
    session.execute(
        "INSERT INTO m (k, c, v) VALUES (1, 1, 10) USING TTL 1 AND TIMESTAMP ?", [now - 1000]
    )
    clock.advance(10)
    engine.sweep_expired()
    session.execute("INSERT INTO m (k, c) VALUES (1, 1) USING TIMESTAMP ?", [now - 2000])
    assert session.rows("SELECT k, c FROM m WHERE k = 1 AND c = 1") == []
    session.execute("INSERT INTO m (k, c) VALUES (1, 1) USING TIMESTAMP ?", [now - 500])
    assert session.rows("SELECT k, c FROM m WHERE k = 1 AND c = 1") == [{"k": 1, "c": 1}]
