"""Row-level change records the engine hands to the CDC sink, and TTL expiry with its records."""

from __future__ import annotations

import pytest
from cassandra import cqltypes

from keyspaces_local.cdc import RowChange, RowImage
from keyspaces_local.clock import Clock
from keyspaces_local.cql.api import Invalid
from keyspaces_local.cql.engine import CqlEngine

from .conftest import EngineSession, RecordingSink

INT, TEXT = cqltypes.Int32Type, cqltypes.UTF8Type


def _i(value: int) -> bytes:
    return bytes(INT.to_binary(value, 4))


def _values(image: RowImage | None) -> dict[str, bytes] | None:
    return None if image is None else {name: cell.value for name, cell in image.cells.items()}


def _statics(image: RowImage | None) -> dict[str, bytes] | None:
    return (
        None if image is None else {name: cell.value for name, cell in image.static_cells.items()}
    )


@pytest.fixture
def cdc(session: EngineSession, sink: RecordingSink) -> EngineSession:
    session.execute(
        "CREATE TABLE t (k int, c int, v int, w int, st int static, PRIMARY KEY (k, c)) "
        "WITH cdc = true AND custom_properties = {'ttl': {'status': 'enabled'}}"
    )
    return session


def _one(sink: RecordingSink) -> RowChange:
    [change] = sink.take()
    return change


def test_insert_update_and_column_delete_images(cdc: EngineSession, sink: RecordingSink) -> None:
    cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 2, 3)")
    change = _one(sink)
    assert change.old_image is None
    assert _values(change.new_image) == {"k": _i(1), "c": _i(2), "v": _i(3)}
    assert change.partition_key == (_i(1),) and change.clustering_key == (_i(2),)
    assert change.new_image is not None and change.new_image.static_cells == {}
    assert change.origin == "USER" and change.table.name == "t"

    cdc.execute("UPDATE t SET w = 4 WHERE k = 1 AND c = 2")
    change = _one(sink)
    assert _values(change.old_image) == {"k": _i(1), "c": _i(2), "v": _i(3)}
    assert _values(change.new_image) == {"k": _i(1), "c": _i(2), "v": _i(3), "w": _i(4)}

    cdc.execute("DELETE v FROM t WHERE k = 1 AND c = 2")
    change = _one(sink)
    assert _values(change.new_image) == {"k": _i(1), "c": _i(2), "w": _i(4)}

    cdc.execute("DELETE FROM t WHERE k = 1 AND c = 2")
    change = _one(sink)
    assert _values(change.old_image) == {"k": _i(1), "c": _i(2), "w": _i(4)}
    assert change.new_image is None


def test_range_and_partition_deletes_emit_one_change_per_row(
    cdc: EngineSession, sink: RecordingSink
) -> None:
    for c in range(5):
        cdc.execute("INSERT INTO t (k, c, v) VALUES (1, ?, 0)", [c])
    cdc.execute("UPDATE t SET st = 9 WHERE k = 1")
    sink.take()
    cdc.execute("DELETE FROM t WHERE k = 1 AND c >= 1 AND c < 3")
    changes = sink.take()
    assert [ch.clustering_key for ch in changes] == [(_i(1),), (_i(2),)]
    assert all(ch.new_image is None and ch.old_image is not None for ch in changes)

    cdc.execute("DELETE FROM t WHERE k = 1")
    changes = sink.take()
    assert [ch.clustering_key for ch in changes] == [(_i(0),), (_i(3),), (_i(4),), None]
    assert _statics(changes[-1].old_image) == {"st": _i(9)}
    assert all(ch.new_image is None for ch in changes)


def test_static_only_write(cdc: EngineSession, sink: RecordingSink) -> None:
    cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 2, 3)")
    sink.take()
    cdc.execute("UPDATE t SET st = 5 WHERE k = 1")
    change = _one(sink)
    assert change.clustering_key is None
    assert change.old_image is None
    assert _values(change.new_image) == {"k": _i(1)}
    assert _statics(change.new_image) == {"st": _i(5)}


def test_static_and_row_write_gives_two_changes_static_first(
    cdc: EngineSession, sink: RecordingSink
) -> None:
    cdc.execute("INSERT INTO t (k, c, v, st) VALUES (1, 2, 3, 4)")
    static, row = sink.take()
    assert static.clustering_key is None and _statics(static.new_image) == {"st": _i(4)}
    assert row.clustering_key == (_i(2),) and _values(row.new_image) == {
        "k": _i(1),
        "c": _i(2),
        "v": _i(3),
    }
    assert row.new_image is not None and row.new_image.static_cells == {}


def test_failed_condition_records_nothing(cdc: EngineSession, sink: RecordingSink) -> None:
    cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 2, 3) IF NOT EXISTS")
    assert len(sink.take()) == 1
    result = cdc.rows("INSERT INTO t (k, c, v) VALUES (1, 2, 4) IF NOT EXISTS")
    assert result[0]["[applied]"] is False and result[0]["v"] == 3
    assert sink.take() == []


def test_batch_emits_each_row_in_order(
    cdc: EngineSession, sink: RecordingSink, engine: CqlEngine
) -> None:
    from keyspaces_local.cql.api import LOGGED_BATCH, QueryOptions

    stmts: list[tuple[str | bytes, list[bytes | None]]] = [
        ("INSERT INTO t (k, c, v) VALUES (?, ?, ?)", [_i(1), _i(1), _i(1)]),
        ("INSERT INTO t (k, c, v) VALUES (?, ?, ?)", [_i(2), _i(1), _i(1)]),
        ("UPDATE t SET w = ? WHERE k = ? AND c = ?", [_i(5), _i(1), _i(1)]),
    ]
    engine.batch(LOGGED_BATCH, stmts, QueryOptions(), "ks")
    changes = sink.take()
    assert [(ch.partition_key, ch.clustering_key) for ch in changes] == [
        ((_i(1),), (_i(1),)),
        ((_i(2),), (_i(1),)),
        ((_i(1),), (_i(1),)),
    ]
    assert _values(changes[-1].new_image) == {"k": _i(1), "c": _i(1), "v": _i(1), "w": _i(5)}


def test_no_changes_without_cdc(session: EngineSession, sink: RecordingSink) -> None:
    session.execute("CREATE TABLE plain (k int PRIMARY KEY, v int)")
    session.execute("INSERT INTO plain (k, v) VALUES (1, 1)")
    assert sink.changes == []


# ---------------------------------------------------------------- TTL


def test_ttl_expiry_is_visible_at_once(cdc: EngineSession, clock: Clock) -> None:
    cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 1) USING TTL 100")
    cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 2, 1)")
    cdc.execute("UPDATE t USING TTL 50 SET w = 2 WHERE k = 1 AND c = 2")
    [row] = cdc.rows("SELECT TTL(v), TTL(w) FROM t WHERE k = 1 AND c = 1")
    assert 99 <= row["ttl(v)"] <= 100 and row["ttl(w)"] is None
    clock.advance(60)
    assert cdc.rows("SELECT v, w FROM t WHERE k = 1 AND c = 2") == [{"v": 1, "w": None}]
    clock.advance(41)
    assert cdc.rows("SELECT c FROM t WHERE k = 1") == [{"c": 2}]


def test_update_only_row_expires_entirely(cdc: EngineSession, clock: Clock) -> None:
    cdc.execute("UPDATE t USING TTL 10 SET v = 1 WHERE k = 1 AND c = 1")
    clock.advance(11)
    assert cdc.rows("SELECT * FROM t") == []


def test_default_ttl_applies_to_writes(session: EngineSession, clock: Clock) -> None:
    session.execute("CREATE TABLE d (k int PRIMARY KEY, v int) WITH default_time_to_live = 30")
    session.execute("INSERT INTO d (k, v) VALUES (1, 1)")
    clock.advance(31)
    assert session.rows("SELECT * FROM d") == []


def test_ttl_records_after_the_delay(
    cdc: EngineSession, clock: Clock, sink: RecordingSink, engine: CqlEngine
) -> None:
    cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 1) USING TTL 10")
    cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 2, 1)")
    cdc.execute("UPDATE t USING TTL 10 SET w = 2 WHERE k = 1 AND c = 2")
    sink.take()
    clock.advance(11)
    assert engine.sweep_expired() == 0  # expired, but the record delay (5 s) has not passed
    clock.advance(5)
    assert engine.sweep_expired() == 2
    whole, column = sorted(sink.take(), key=lambda ch: ch.clustering_key or ())
    assert whole.origin == "TTL" and whole.new_image is None
    assert _values(whole.old_image) == {"k": _i(1), "c": _i(1), "v": _i(1)}
    assert column.origin == "TTL"
    assert _values(column.old_image) == {"k": _i(1), "c": _i(2), "v": _i(1), "w": _i(2)}
    assert _values(column.new_image) == {"k": _i(1), "c": _i(2), "v": _i(1)}
    assert engine.sweep_expired() == 0  # reported once


def test_row_overwritten_after_expiry_yields_no_ttl_record(
    cdc: EngineSession, clock: Clock, sink: RecordingSink, engine: CqlEngine
) -> None:
    cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 1) USING TTL 10")
    clock.advance(11)
    cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 2)")
    sink.take()
    clock.advance(10)
    assert engine.sweep_expired() == 0


def test_expiry_metadata_in_images(cdc: EngineSession, clock: Clock, sink: RecordingSink) -> None:
    cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 1) USING TTL 100")
    change = _one(sink)
    assert change.new_image is not None
    expected = clock.now_us() // 1_000_000 + 100
    assert abs(change.new_image.cells["v"].expires_at_s - expected) <= 1  # type: ignore[operator]
    assert change.new_image.expires_at_s == change.new_image.cells["v"].expires_at_s


def test_ttl_bounds(cdc: EngineSession) -> None:
    with pytest.raises(Invalid):
        cdc.execute("INSERT INTO t (k, c, v) VALUES (1, 1, 1) USING TTL ?", [-1])


# ---------------------------------------------------------------- images agree with reads


def _image_as_row(image: RowImage | None, types: dict[str, object]) -> dict[str, object] | None:
    if image is None:
        return None
    cells = {**image.cells, **image.static_cells}
    return {name: types[name].from_binary(cell.value, 4) for name, cell in cells.items()}  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(6))
def test_every_new_image_is_what_a_read_returns(
    session: EngineSession, sink: RecordingSink, seed: int
) -> None:
    import random

    session.execute(
        "CREATE TABLE r (k int, c int, v int, l list<int>, s set<int>, m map<int, int>, "
        "st int static, PRIMARY KEY (k, c)) WITH cdc = true"
    )
    schema = session.engine.catalog.keyspaces["ks"].tables["r"]
    types = {name: col.cql_type for name, col in schema.columns.items()}
    rng = random.Random(seed)
    statements = [
        ("INSERT INTO r (k, c, v, s) VALUES (?, ?, ?, ?)", lambda: [rng.randint(0, 100), {1, 2}]),
        ("UPDATE r SET v = ? WHERE k = ? AND c = ?", None),
        ("UPDATE r SET l = l + ? WHERE k = ? AND c = ?", lambda: [[rng.randint(0, 9)]]),
        ("UPDATE r SET s = s - ? WHERE k = ? AND c = ?", lambda: [{rng.randint(0, 3)}]),
        (
            "UPDATE r SET m[?] = ? WHERE k = ? AND c = ?",
            lambda: [rng.randint(0, 3), rng.randint(0, 9)],
        ),
        ("UPDATE r SET st = ? WHERE k = ?", None),
        ("DELETE v, l FROM r WHERE k = ? AND c = ?", lambda: []),
        ("DELETE FROM r WHERE k = ? AND c = ?", lambda: []),
    ]
    for _ in range(150):
        cql, make = rng.choice(statements)
        k, c = rng.randint(0, 2), rng.randint(0, 2)
        if cql.startswith("INSERT"):
            params = [k, c, *make()]  # type: ignore[misc]
        elif make is None:
            params = [rng.randint(0, 100), k] + ([] if "st =" in cql else [c])
        else:
            params = [*make(), k, c]
        session.execute(cql, params)
        for change in sink.take():
            key = {"k": INT.from_binary(change.partition_key[0], 4)}
            if change.clustering_key is None:
                rows = session.rows("SELECT k, st FROM r WHERE k = ? LIMIT 1", [key["k"]])
                read = {n: v for n, v in rows[0].items() if v is not None} if rows else None
                got = _image_as_row(change.new_image, types)
                assert got == (read if read and "st" in read else None)
                continue
            key["c"] = INT.from_binary(change.clustering_key[0], 4)
            rows = session.rows(
                "SELECT k, c, v, l, s, m FROM r WHERE k = ? AND c = ?", [key["k"], key["c"]]
            )
            read = None
            if rows:
                read = {
                    n: (dict(v) if n == "m" else set(v) if n == "s" else v)
                    for n, v in rows[0].items()
                    if v is not None
                }
            got = _image_as_row(change.new_image, types)
            if got is not None:
                got = {
                    n: (dict(v) if n == "m" else set(v) if n == "s" else v) for n, v in got.items()
                }
            assert got == read
