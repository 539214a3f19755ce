"""The snapshot scan: token-range planning (pure) and scans against keyspaces_local.

What users rely on: the ranges cover the whole ring exactly once, a resumed
scan loses no row, every row of the table comes out once per scan, and a
snapshot row's version comes from the service clock (not this host's).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sync.errors import ConfigError
from sync.keyspaces import (
    KEYSPACES_DEFAULT_PARTITIONER,
    MURMUR3_PARTITIONER,
    RANDOM_PARTITIONER,
)
from sync.model import Op
from sync.sources.cql import (
    MAX_TOKEN,
    MIN_TOKEN,
    MURMUR3_RING,
    RANDOM_RING,
    Ring,
    SnapshotScanner,
    TokenRange,
    ring_for,
    split_ring,
)
from sync.sources.rows import ttl_capable
from sync.version import base, snapshot_version

# ---- pure -------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=5000))
def test_the_ranges_cover_the_ring_exactly_once(count: int) -> None:
    ranges = split_ring(count)
    assert len(ranges) == count
    assert ranges[0].start == MIN_TOKEN and ranges[-1].end == MAX_TOKEN
    for before, after in itertools.pairwise(ranges):
        assert before.end == after.start  # (a, b] then (b, c]: no gap, no overlap
    widths = [r.width for r in ranges]
    assert max(widths) - min(widths) <= 1


@given(st.data())
def test_a_resumed_range_still_holds_the_last_token_and_everything_after(
    data: st.DataObject,
) -> None:
    start = data.draw(st.integers(min_value=MIN_TOKEN, max_value=MAX_TOKEN - 1))
    end = data.draw(st.integers(min_value=start + 1, max_value=MAX_TOKEN))
    whole = TokenRange(start, end)
    last = data.draw(st.integers(min_value=start, max_value=end))
    rest = whole.resume_from(last)
    assert whole.start <= rest.start and rest.end == whole.end
    # The partition at `last` may have been cut between pages: it is read again.
    assert rest.start < last or (rest is whole and last <= whole.start + 1)
    assert 0.0 <= whole.fraction_done(last) <= 1.0


def test_nothing_resumed_means_the_whole_range() -> None:
    whole = TokenRange(-10, 10)
    assert whole.resume_from(None) == whole
    assert whole.fraction_done(None) == 0.0
    assert whole.fraction_done(10) == 1.0


def test_the_ring_is_the_partitioners_and_an_unknown_partitioner_is_refused() -> None:
    assert ring_for(MURMUR3_PARTITIONER) == MURMUR3_RING == Ring(-(2**63), 2**63 - 1)
    # RandomPartitioner: tokens 0 .. 2**127, minimum token -1; Keyspaces' Default the same.
    assert ring_for(RANDOM_PARTITIONER) == RANDOM_RING == Ring(-1, 2**127)
    assert ring_for(KEYSPACES_DEFAULT_PARTITIONER) == RANDOM_RING
    with pytest.raises(ConfigError) as refused:
        ring_for("org.apache.cassandra.dht.ByteOrderedPartitioner")
    message = str(refused.value)
    assert "ByteOrderedPartitioner" in message and "UPDATE system.local" in message
    assert "\n" not in message


RINGS = pytest.mark.parametrize("ring", [MURMUR3_RING, RANDOM_RING], ids=["murmur3", "random"])


@RINGS
@given(count=st.integers(min_value=1, max_value=5000))
def test_each_ring_is_split_into_ranges_covering_it_exactly_once(ring: Ring, count: int) -> None:
    ranges = split_ring(count, ring)
    assert (ranges[0].start, ranges[-1].end) == (ring.minimum, ring.maximum)
    for before, after in itertools.pairwise(ranges):
        assert before.end == after.start
    widths = [r.width for r in ranges]
    assert max(widths) - min(widths) <= 1 and sum(widths) == ring.width


@RINGS
@given(data=st.data())
def test_on_each_ring_a_resumed_range_keeps_its_last_token_and_progress_stays_in_bounds(
    ring: Ring, data: st.DataObject
) -> None:
    whole = data.draw(st.sampled_from(split_ring(data.draw(st.integers(1, 64)), ring)))
    last = data.draw(st.integers(min_value=whole.start, max_value=whole.end))
    rest = whole.resume_from(last)
    assert whole.start <= rest.start and rest.end == whole.end
    assert rest.start < last or (rest is whole and last <= whole.start + 1)
    assert 0.0 <= whole.fraction_done(last) <= 1.0
    assert whole.fraction_done(whole.end) == 1.0


def test_ttl_is_selected_for_scalars_and_frozen_values_only() -> None:
    assert ttl_capable("text") and ttl_capable("frozen<list<int>>")
    assert not ttl_capable("list<int>") and not ttl_capable("map<text, int>")


# ---- against keyspaces_local -------------------------------------------------------------


# This module moves the emulator clock ahead (up to days, to expire iterators
# and trim records), which would skew every later test of the session.
OWN_EMULATOR: dict[str, Any] = {}


@pytest.fixture
def table(cql: Any, keyspace: str) -> Iterator[str]:
    cql.execute(
        f'CREATE TABLE "{keyspace}"."items" ("pk" int, "ck" int, "name" text, "tags" set<text>, '
        '"total" bigint STATIC, PRIMARY KEY ("pk", "ck"))'
    )
    yield "items"


def _scanner(cql: Any, keyspace: str, table: str, **kwargs: Any) -> SnapshotScanner:
    from sync.keyspaces import describe_table

    return SnapshotScanner(cql, describe_table(cql, keyspace, table), **kwargs)


def _write_rows(cql: Any, keyspace: str, count: int) -> dict[tuple[int, int], dict[str, Any]]:
    insert = cql.prepare(
        f'INSERT INTO "{keyspace}"."items" ("pk", "ck", "name", "tags") VALUES (?, ?, ?, ?)'
    )
    model: dict[tuple[int, int], dict[str, Any]] = {}
    for pk in range(count // 3 + 1):
        for ck in range(3):
            if len(model) == count:
                break
            name = f"row {pk}/{ck}"
            tags = {f"t{pk % 4}"} if ck else None
            cql.execute(insert, (pk, ck, name, tags))
            model[(pk, ck)] = {"pk": pk, "ck": ck, "name": name}
            if tags:
                model[(pk, ck)]["tags"] = tags
    return model


def test_a_multi_range_scan_returns_every_row_once(cql: Any, keyspace: str, table: str) -> None:
    model = _write_rows(cql, keyspace, 200)
    scanner = _scanner(cql, keyspace, table, page_size=17)
    seen: dict[tuple[int, int], dict[str, Any]] = {}
    pages = 0
    for token_range in split_ring(7):
        for page in scanner.scan(token_range):
            pages += 1
            assert len(page.changes) <= 17
            for change in page.changes:
                assert change.op is Op.UPSERT and change.key not in seen
                assert change.image is not None
                seen[change.key] = {k: v for k, v in change.image.items() if k != "total"}
    assert pages > 7  # paging happened
    assert {
        k: {n: set(v) if n == "tags" else v for n, v in row.items()} for k, row in seen.items()
    } == model


def test_a_scan_resumed_from_its_last_token_loses_no_row(
    cql: Any, keyspace: str, table: str
) -> None:
    model = _write_rows(cql, keyspace, 120)
    scanner = _scanner(cql, keyspace, table, page_size=10)
    whole = split_ring(1)[0]
    first_pages = scanner.scan(whole)
    before = next(first_pages)
    first_pages.close()
    assert before.last_token is not None
    seen = {c.key for c in before.changes}
    for page in scanner.scan(whole.resume_from(before.last_token)):
        seen |= {c.key for c in page.changes}
    assert seen == set(model)


def test_snapshot_versions_follow_the_service_clock(
    cql: Any, keyspace: str, table: str, emulator: Any
) -> None:
    """Hazard 3: the version comes from the service clock read over CQL, not the host's."""
    import time

    from sync.keyspaces import service_now_ms

    _write_rows(cql, keyspace, 5)
    emulator.control.advance_clock(3600)  # the service is now an hour "ahead" of this host
    before = service_now_ms(cql)
    scanner = _scanner(cql, keyspace, table, margin_ms=5000)
    changes = [c for page in scanner.scan(split_ring(1)[0]) for c in page.changes]
    after = service_now_ms(cql)
    assert changes
    for change in changes:
        assert snapshot_version(before, 5000) <= change.version <= snapshot_version(after, 5000)
        assert change.version < base(after)
        assert change.version > base(time.time_ns() // 1_000_000 + 3_000_000)


def test_rows_with_a_ttl_carry_their_expiry(cql: Any, keyspace: str) -> None:
    from sync.keyspaces import describe_table, service_now_ms

    cql.execute(
        f'CREATE TABLE "{keyspace}"."sessions" ("id" int PRIMARY KEY, "user" text, '
        "\"hits\" int) WITH CUSTOM_PROPERTIES = {'ttl': {'status': 'enabled'}}"
    )
    cql.execute(
        f'INSERT INTO "{keyspace}"."sessions" ("id", "user", "hits") VALUES (1, \'a\', 1) '
        "USING TTL 600"
    )
    cql.execute(f'INSERT INTO "{keyspace}"."sessions" ("id", "user", "hits") VALUES (2, \'b\', 2)')
    info = describe_table(cql, keyspace, "sessions")
    assert info.ttl_enabled
    before = service_now_ms(cql)
    changes = {
        c.key: c for page in SnapshotScanner(cql, info).scan(split_ring(1)[0]) for c in page.changes
    }
    after = service_now_ms(cql)
    expires = changes[(1,)].expires_at_ms
    assert expires is not None and before + 598_000 <= expires <= after + 600_000
    assert changes[(2,)].expires_at_ms is None
    assert changes[(1,)].image == {"id": 1, "user": "a", "hits": 1}  # no TTL() columns leak


def test_a_partition_with_only_static_values_scans_as_a_static_only_change(
    cql: Any, keyspace: str, table: str
) -> None:
    """`UPDATE ... SET total = 5 WHERE pk = 99` on an empty partition: the scan returns a
    row with null clustering keys; it is the partition's statics, as the stream says them."""
    model = _write_rows(cql, keyspace, 6)
    cql.execute(f'UPDATE "{keyspace}"."items" SET "total" = 5 WHERE "pk" = 99')
    cql.execute(f'UPDATE "{keyspace}"."items" SET "total" = 7 WHERE "pk" = 0')
    scanner = _scanner(cql, keyspace, table, page_size=4)
    changes = [c for r in split_ring(3) for page in scanner.scan(r) for c in page.changes]
    statics = [c for c in changes if c.static_only]
    assert [(c.key, c.image, c.op) for c in statics] == [((99,), {"pk": 99, "total": 5}, Op.UPSERT)]
    assert statics[0].expires_at_ms is None
    rows = {c.key: c for c in changes if not c.static_only}
    assert set(rows) == set(model)  # no row made up for partition 99
    assert all(
        c.image is not None and c.image.get("total") == 7 for c in rows.values() if c.key[0] == 0
    )


def test_every_read_of_the_table_is_at_local_quorum(keyspace: str, cql: Any, emulator: Any) -> None:
    """Whatever the session's default (the driver's is LOCAL_ONE), the scan reads at
    LOCAL_QUORUM: a weaker read may miss an acknowledged write or delete."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import Cluster

    from sync.keyspaces import describe_table

    cql.execute(
        f'CREATE TABLE "{keyspace}"."items" ("pk" int, "ck" int, "name" text, '
        '"total" bigint STATIC, PRIMARY KEY ("pk", "ck"))'
    )
    _write_rows_without_tags(cql, keyspace, 10)
    cluster = Cluster(["127.0.0.1"], port=emulator.cql_port, protocol_version=4)
    try:
        session = cluster.connect()
        assert session.default_consistency_level == ConsistencyLevel.LOCAL_ONE
        levels: list[tuple[str, int]] = []
        session.add_request_init_listener(
            lambda future: levels.append(
                (_query_text(future.query), future.message.consistency_level)
            )
        )
        scanner = SnapshotScanner(session, describe_table(session, keyspace, "items"), page_size=3)
        rows = [c for r in split_ring(2) for page in scanner.scan(r) for c in page.changes]
        assert len(rows) == 10
        table_reads = [level for text, level in levels if '"items"' in text]
        assert len(table_reads) >= 4  # every page of both ranges
        assert set(table_reads) == {ConsistencyLevel.LOCAL_QUORUM}
    finally:
        cluster.shutdown()


def _write_rows_without_tags(cql: Any, keyspace: str, count: int) -> None:
    insert = cql.prepare(f'INSERT INTO "{keyspace}"."items" ("pk", "ck", "name") VALUES (?, ?, ?)')
    for n in range(count):
        cql.execute(insert, (n // 3, n % 3, f"row {n}"))


def _query_text(statement: Any) -> str:
    prepared = getattr(statement, "prepared_statement", None)
    return str(prepared.query_string if prepared is not None else statement.query_string)


def test_a_missing_table_is_a_config_error(cql: Any, keyspace: str) -> None:
    from sync.keyspaces import describe_table

    with pytest.raises(ConfigError, match="does not exist"):
        describe_table(cql, keyspace, "nope")
    with pytest.raises(ConfigError, match="does not exist"):
        describe_table(cql, "no_such_keyspace", "nope")


def test_the_table_facts_and_the_version_rule_are_read_over_cql(cql: Any, keyspace: str) -> None:
    from sync.keyspaces import describe_table

    cql.execute(
        f'CREATE TABLE "{keyspace}"."Mixed Case" ("p1" int, "p2" text, "c" int, "s" int STATIC, '
        '"v" text, PRIMARY KEY (("p1", "p2"), "c")) WITH cdc = true AND CUSTOM_PROPERTIES = '
        "{'cdc_specification': {'view_type': 'NEW_IMAGE'}}"
    )
    info = describe_table(cql, keyspace, "Mixed Case")
    assert info.layout.partition_key == ("p1", "p2") and info.layout.clustering == ("c",)
    assert info.layout.static == ("s",) and info.regular == ("v",)
    assert info.cdc_enabled and info.view_type == "NEW_IMAGE"
    assert info.latest_stream_arn and info.require_stream() == info.latest_stream_arn
    assert not info.client_side_timestamps and not info.ttl_enabled
    assert "client-side timestamps off" in info.version_rule()
    assert "WRITETIME() is not used" in info.version_rule()


def test_a_composite_partition_key_and_quoted_names_scan(cql: Any, keyspace: str) -> None:
    from sync.keyspaces import describe_table

    cql.execute(
        f'CREATE TABLE "{keyspace}"."Odd Names" ("Part" int, "select" text, "c" int, "v" text, '
        'PRIMARY KEY (("Part", "select"), "c"))'
    )
    insert = cql.prepare(
        f'INSERT INTO "{keyspace}"."Odd Names" ("Part", "select", "c", "v") VALUES (?, ?, ?, ?)'
    )
    expected = {(p, s, c) for p in range(4) for s in ("a", "b") for c in range(3)}
    for p, s, c in expected:
        cql.execute(insert, (p, s, c, f"{p}{s}{c}"))
    scanner = SnapshotScanner(cql, describe_table(cql, keyspace, "Odd Names"), page_size=5)
    keys = [c.key for r in split_ring(3) for page in scanner.scan(r) for c in page.changes]
    assert sorted(keys) == sorted(expected)


def test_empty_pages_with_a_paging_state_do_not_end_the_scan() -> None:
    """Keyspaces may return a page with no rows but more to come: keep paging."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    from keyspaces_local.server import Emulator
    from sync.keyspaces import describe_table

    emulator = Emulator.start(empty_page_rate=0.5)
    profile = ExecutionProfile(
        consistency_level=ConsistencyLevel.LOCAL_QUORUM, load_balancing_policy=RoundRobinPolicy()
    )
    cluster = Cluster(
        ["127.0.0.1"],
        port=emulator.cql_port,
        protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        session = cluster.connect()
        session.execute(
            "CREATE KEYSPACE \"sparse\" WITH replication = {'class': 'SingleRegionStrategy'}"
        )
        session.execute('CREATE TABLE "sparse"."t" ("id" int PRIMARY KEY, "v" int)')
        insert = session.prepare('INSERT INTO "sparse"."t" ("id", "v") VALUES (?, ?)')
        for n in range(60):
            session.execute(insert, (n, n))
        scanner = SnapshotScanner(session, describe_table(session, "sparse", "t"), page_size=7)
        pages = list(scanner.scan(split_ring(1)[0]))
        assert any(page.rows == 0 and page.last_token is None for page in pages)
        assert sorted(c.key for page in pages for c in page.changes) == [(n,) for n in range(60)]
    finally:
        cluster.shutdown()
        emulator.stop()


def test_a_scan_over_the_accounts_ring_returns_every_row_once(
    cql: Any, keyspace: str, table: str, partitioner: str
) -> None:
    """On a Random or Default ring, splitting the Murmur3 ring would read a 2**-64 share."""
    model = _write_rows(cql, keyspace, 150)
    scanner = _scanner(cql, keyspace, table, page_size=11)
    assert scanner.ring == ring_for(partitioner)
    seen: list[tuple[int, int]] = []
    for token_range in split_ring(5, scanner.ring):
        for page in scanner.scan(token_range):
            assert page.last_token is None or token_range.start < page.last_token
            assert page.last_token is None or page.last_token <= token_range.end
            seen += [c.key for c in page.changes]
    assert sorted(seen) == sorted(model)


def test_a_scanner_refuses_a_partitioner_without_a_known_ring(
    cql: Any, keyspace: str, table: str
) -> None:
    from dataclasses import replace

    from sync.keyspaces import describe_table

    info = replace(describe_table(cql, keyspace, table), partitioner="com.example.Partitioner")
    with pytest.raises(ConfigError, match=r"com\.example\.Partitioner"):
        SnapshotScanner(cql, info)


def test_the_clustering_order_is_read_over_cql(cql: Any, keyspace: str) -> None:
    from sync.keyspaces import describe_table

    cql.execute(
        f'CREATE TABLE "{keyspace}"."events" ("p" int, "day" date, "seq" int, "at" int, '
        'PRIMARY KEY ("p", "day", "seq", "at")) WITH CLUSTERING ORDER BY ("day" DESC, "seq" ASC, '
        '"at" DESC)'
    )
    info = describe_table(cql, keyspace, "events")
    assert info.layout.clustering == ("day", "seq", "at")
    assert info.layout.descending == frozenset({"day", "at"})
