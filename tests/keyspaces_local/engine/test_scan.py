"""Reads: token order, token-range scans over the whole ring, clustering slices and order,
IN, LIMIT, and paging (row count, byte budget, empty pages) returning every row exactly once."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from cassandra.metadata import Murmur3Token
from cassandra.query import BoundStatement

from keyspaces_local.clock import Clock
from keyspaces_local.cql.api import Invalid, Rows
from keyspaces_local.cql.engine import CqlEngine

from .conftest import EngineSession, RecordingSink, decode

MIN_TOKEN, MAX_TOKEN = -(2**63), 2**63 - 1


def _fill(session: EngineSession, partitions: int = 200, rows_per: int = 3) -> set[tuple[int, int]]:
    session.execute("CREATE TABLE t (k int, c int, v text, PRIMARY KEY (k, c))")
    keys = set()
    for k in range(partitions):
        for c in range(rows_per):
            session.execute("INSERT INTO t (k, c, v) VALUES (?, ?, ?)", [k, c, f"value-{k}-{c}"])
            keys.add((k, c))
    return keys


def test_tokens_match_the_driver(session: EngineSession) -> None:
    session.execute("CREATE TABLE two (a int, b text, v int, PRIMARY KEY ((a, b)))")
    session.execute("INSERT INTO two (a, b, v) VALUES (7, 'x', 1)")
    session.execute("CREATE TABLE one (a text PRIMARY KEY, v int)")
    session.execute("INSERT INTO one (a, v) VALUES ('hello', 1)")
    [row] = session.rows("SELECT token(a, b) FROM two")
    # The driver's own routing key and hash for the same values.
    stmt = BoundStatement.__new__(BoundStatement)
    key = b"".join(stmt._key_parts_packed([b"\x00\x00\x00\x07", b"x"]))
    assert row["system.token(a, b)"] == Murmur3Token.hash_fn(key)
    [row] = session.rows("SELECT token(a) FROM one")
    assert row["system.token(a)"] == Murmur3Token.hash_fn(b"hello")


def test_full_scan_is_in_token_order(session: EngineSession) -> None:
    _fill(session, partitions=50)
    tokens = [r["system.token(k)"] for r in session.rows("SELECT token(k), c FROM t")]
    assert tokens == sorted(tokens) and len(tokens) == 150


def test_sixteen_token_ranges_cover_the_ring_exactly_once(session: EngineSession) -> None:
    keys = _fill(session)
    step = (MAX_TOKEN - MIN_TOKEN) // 16
    bounds = [MIN_TOKEN + i * step for i in range(16)] + [MAX_TOKEN]
    seen: Counter[tuple[int, int]] = Counter()
    for lo, hi in itertools.pairwise(bounds):
        for row in session.rows(
            "SELECT k, c, token(k) FROM t WHERE token(k) > ? AND token(k) <= ?",
            [lo, hi],
            page_size=7,
        ):
            assert lo < row["system.token(k)"] <= hi
            seen[(row["k"], row["c"])] += 1
    assert set(seen) == keys and set(seen.values()) == {1}


def test_token_range_bound_kinds(session: EngineSession) -> None:
    _fill(session, partitions=30, rows_per=1)
    tokens = sorted(r["system.token(k)"] for r in session.rows("SELECT token(k) FROM t"))
    mid = tokens[10]
    ge = session.rows("SELECT k FROM t WHERE token(k) >= ? AND token(k) < ?", [mid, tokens[20]])
    gt = session.rows("SELECT k FROM t WHERE token(k) > ? AND token(k) <= ?", [mid, tokens[20]])
    assert len(ge) == 10 and len(gt) == 10 and ge[1:] == gt[:-1]


@pytest.mark.parametrize("page_size", [1, 7, 100, 1000])
def test_paging_returns_every_row_once(session: EngineSession, page_size: int) -> None:
    keys = _fill(session, partitions=100)
    rows = session.rows("SELECT k, c FROM t", page_size=page_size)
    assert Counter((r["k"], r["c"]) for r in rows) == Counter(keys)


def test_pages_stop_at_the_byte_budget(clock: Clock, sink: RecordingSink) -> None:
    engine = CqlEngine(clock, sink, page_bytes=2000)
    session = EngineSession(engine)
    session.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SingleRegionStrategy'}")
    session.keyspace = "ks"
    keys = _fill(session, partitions=50)
    first = session.execute("SELECT * FROM t", page_size=1000)
    assert isinstance(first, Rows) and first.paging_state is not None and 0 < len(first.rows) < 150
    rows = session.rows("SELECT k, c FROM t", page_size=1000)
    assert Counter((r["k"], r["c"]) for r in rows) == Counter(keys)


def test_empty_pages_with_paging_state(clock: Clock, sink: RecordingSink) -> None:
    engine = CqlEngine(clock, sink, empty_page_rate=0.5)
    session = EngineSession(engine)
    session.execute("CREATE KEYSPACE ks WITH replication = {'class': 'SingleRegionStrategy'}")
    session.keyspace = "ks"
    keys = _fill(session, partitions=60)
    pages = []
    state = None
    while True:
        result = session.execute("SELECT k, c FROM t", page_size=10, paging_state=state)
        assert isinstance(result, Rows)
        pages.append(len(result.rows))
        state = result.paging_state
        if state is None:
            break
    assert 0 in pages and sum(pages) == len(keys)
    rows = session.rows("SELECT k, c FROM t", page_size=10)
    assert Counter((r["k"], r["c"]) for r in rows) == Counter(keys)


def test_clustering_slices_desc_order_and_order_by(session: EngineSession) -> None:
    session.execute(
        "CREATE TABLE d (k int, c int, v int, PRIMARY KEY (k, c)) WITH CLUSTERING ORDER BY (c DESC)"
    )
    for c in range(10):
        session.execute("INSERT INTO d (k, c, v) VALUES (1, ?, ?)", [c, c])
    assert [r["c"] for r in session.rows("SELECT c FROM d WHERE k = 1")] == list(range(9, -1, -1))
    assert [r["c"] for r in session.rows("SELECT c FROM d WHERE k = 1 AND c >= 3 AND c < 6")] == [
        5,
        4,
        3,
    ]
    assert [r["c"] for r in session.rows("SELECT c FROM d WHERE k = 1 AND c > 7")] == [9, 8]
    assert [
        r["c"] for r in session.rows("SELECT c FROM d WHERE k = 1 AND c <= 1 ORDER BY c ASC")
    ] == [0, 1]
    assert [r["c"] for r in session.rows("SELECT c FROM d WHERE k = 1 AND c = 4")] == [4]
    assert [r["c"] for r in session.rows("SELECT c FROM d WHERE k = 1 LIMIT 3")] == [9, 8, 7]
    paged = session.rows("SELECT c FROM d WHERE k = 1 ORDER BY c ASC", page_size=3)
    assert [r["c"] for r in paged] == list(range(10))


def test_two_clustering_columns_prefix_and_slice(session: EngineSession) -> None:
    session.execute(
        "CREATE TABLE m (k int, a text, b int, PRIMARY KEY (k, a, b)) "
        "WITH CLUSTERING ORDER BY (a ASC, b DESC)"
    )
    for a in "xyz":
        for b in range(3):
            session.execute("INSERT INTO m (k, a, b) VALUES (1, ?, ?)", [a, b])
    got = [
        (r["a"], r["b"])
        for r in session.rows("SELECT a, b FROM m WHERE k = 1 AND a = 'y' AND b < 2")
    ]
    assert got == [("y", 1), ("y", 0)]
    got = [(r["a"], r["b"]) for r in session.rows("SELECT a, b FROM m WHERE k = 1 AND a > 'x'")]
    assert got == [("y", 2), ("y", 1), ("y", 0), ("z", 2), ("z", 1), ("z", 0)]
    session.execute("DELETE FROM m WHERE k = 1 AND a = 'y' AND b >= 1")
    assert len(session.rows("SELECT * FROM m WHERE k = 1")) == 7


def test_in_on_the_partition_key_keeps_list_order(session: EngineSession) -> None:
    _fill(session, partitions=10, rows_per=2)
    rows = session.rows("SELECT k, c FROM t WHERE k IN (5, 2, 7)", page_size=3)
    assert [(r["k"], r["c"]) for r in rows] == [(5, 0), (5, 1), (2, 0), (2, 1), (7, 0), (7, 1)]
    rows = session.rows("SELECT k FROM t WHERE k IN ? AND c = 1", [[3, 4]])
    assert [r["k"] for r in rows] == [3, 4]


def test_limit_across_pages(session: EngineSession) -> None:
    _fill(session, partitions=20)
    assert len(session.rows("SELECT * FROM t LIMIT 25", page_size=10)) == 25


def test_static_only_partition_shows_one_row(session: EngineSession) -> None:
    session.execute("CREATE TABLE s (k int, c int, v int, st int static, PRIMARY KEY (k, c))")
    session.execute("UPDATE s SET st = 1 WHERE k = 1")
    session.execute("INSERT INTO s (k, c, v) VALUES (2, 1, 1)")
    session.execute("UPDATE s SET st = 2 WHERE k = 2")
    rows = {r["k"]: r for r in session.rows("SELECT * FROM s")}
    assert rows[1] == {"k": 1, "c": None, "st": 1, "v": None}
    assert rows[2] == {"k": 2, "c": 1, "st": 2, "v": 1}


def test_now_functions(session: EngineSession, clock: Clock) -> None:
    session.execute("CREATE TABLE n (k int PRIMARY KEY, v int)")
    session.execute("INSERT INTO n (k, v) VALUES (1, 1)")
    [row] = session.rows("SELECT toUnixTimestamp(now()) AS ms, now() AS id FROM n")
    assert abs(row["ms"] - clock.now_ms()) < 5000
    assert row["id"].version == 1


def test_collections_and_udts_round_trip(session: EngineSession) -> None:
    session.execute("CREATE TYPE addr (street text, zip int)")
    session.execute(
        "CREATE TABLE c (k int PRIMARY KEY, l list<int>, s set<text>, m map<text, int>, "
        "f frozen<list<int>>, a frozen<addr>, t tuple<int, text>)"
    )
    session.execute(
        "INSERT INTO c (k, l, s, m, f, a, t) VALUES (1, [3, 1, 2], {'b', 'a'}, {'x': 1}, [1], "
        "{street: 'main', zip: 5}, (1, 'one'))"
    )
    session.execute("UPDATE c SET l = l + [4], s = s + {'c'}, m['y'] = 2 WHERE k = 1")
    session.execute("UPDATE c SET l = [0] + l WHERE k = 1")
    session.execute("UPDATE c SET l[1] = 30 WHERE k = 1")
    session.execute("DELETE m['x'] FROM c WHERE k = 1")
    [row] = session.rows("SELECT * FROM c WHERE k = 1")
    assert row["l"] == [0, 30, 1, 2, 4]
    assert list(row["s"]) == ["a", "b", "c"]
    assert dict(row["m"]) == {"y": 2}
    assert (
        row["f"] == [1]
        and (row["a"].street, row["a"].zip) == ("main", 5)
        and row["t"] == (1, "one")
    )


def test_counters(session: EngineSession) -> None:
    session.execute("CREATE TABLE cnt (k int PRIMARY KEY, hits counter, misses counter)")
    session.execute("UPDATE cnt SET hits = hits + 3 WHERE k = 1")
    session.execute("UPDATE cnt SET hits = hits + 2, misses = misses - 1 WHERE k = 1")
    assert session.rows("SELECT hits, misses FROM cnt WHERE k = 1") == [{"hits": 5, "misses": -1}]
    with pytest.raises(Invalid):
        session.execute("INSERT INTO cnt (k, hits) VALUES (2, 1)")
    with pytest.raises(Invalid):
        session.execute("UPDATE cnt SET hits = 4 WHERE k = 1")


def test_in_on_a_clustering_column_in_list_order(session: EngineSession) -> None:
    session.execute("CREATE TABLE ci (k int, a int, b int, PRIMARY KEY (k, a, b))")
    for a in range(4):
        for b in range(2):
            session.execute("INSERT INTO ci (k, a, b) VALUES (1, ?, ?)", [a, b])
    rows = session.rows("SELECT a, b FROM ci WHERE k = 1 AND a IN (3, 0, 2)", page_size=2)
    assert [(r["a"], r["b"]) for r in rows] == [(3, 0), (3, 1), (0, 0), (0, 1), (2, 0), (2, 1)]
    rows = session.rows("SELECT a FROM ci WHERE k = 1 AND a IN ? AND b = 1", [[2, 1]])
    assert [r["a"] for r in rows] == [2, 1]


def test_list_index_out_of_bounds_changes_nothing(session: EngineSession) -> None:
    session.execute(
        "CREATE TABLE li (k int, c int, l list<int>, st int static, PRIMARY KEY (k, c))"
    )
    session.execute("INSERT INTO li (k, c, l, st) VALUES (1, 1, [1], 1)")
    with pytest.raises(Invalid):
        session.execute("UPDATE li SET st = 2, l[5] = 9 WHERE k = 1 AND c = 1")
    assert session.rows("SELECT l, st FROM li") == [{"l": [1], "st": 1}]


def test_select_and_insert_json(session: EngineSession) -> None:
    session.execute(
        'CREATE TABLE j (k int, "Name" text, ts timestamp, tags set<text>, m map<int, text>, '
        "d decimal, b blob, PRIMARY KEY (k))"
    )
    session.execute(
        "INSERT INTO j JSON ?",
        [
            '{"k": 1, "\\"Name\\"": "x", "ts": "2024-01-02 03:04:05.678Z", "tags": ["b", "a"], '
            '"m": {"2": "two"}, "d": 1.10, "b": "0xcafe"}'
        ],
    )
    [row] = session.rows("SELECT JSON * FROM j WHERE k = 1")
    assert row["[json]"] == (
        '{"k": 1, "\\"Name\\"": "x", "b": "0xcafe", "d": 1.10, "m": {"2": "two"}, '
        '"tags": ["a", "b"], "ts": "2024-01-02 03:04:05.678Z"}'
    )
    session.execute("""INSERT INTO j JSON '{"k": 1}'""")
    assert session.rows("SELECT k, tags FROM j") == [{"k": 1, "tags": None}]
    with pytest.raises(Invalid):
        session.execute("""INSERT INTO j JSON '{"k": 2, "nope": 1}'""")


def test_paging_survives_writes_between_pages(session: EngineSession) -> None:
    keys = _fill(session, partitions=40)
    seen: Counter[tuple[int, int]] = Counter()
    state = None
    deleted: set[int] = set()
    while True:
        result = session.execute("SELECT k, c FROM t", page_size=7, paging_state=state)
        assert isinstance(result, Rows)
        rows = decode(result)
        seen.update((r["k"], r["c"]) for r in rows)
        if rows:
            last = rows[-1]["k"]
            session.execute("DELETE FROM t WHERE k = ?", [last])  # the page's own partition
            deleted.add(last)
        state = result.paging_state
        if state is None:
            break
    assert set(seen.values()) == {1}
    untouched = {key for key in keys if key[0] not in deleted}
    assert untouched <= set(seen)
