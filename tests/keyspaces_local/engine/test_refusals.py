"""What Amazon Keyspaces refuses, the emulator refuses with Invalid (InvalidRequest in drivers)."""

from __future__ import annotations

import pytest

from keyspaces_local.clock import Clock
from keyspaces_local.cql.api import (
    ALL,
    ANY,
    EACH_QUORUM,
    LOCAL_ONE,
    LOCAL_QUORUM,
    LOCAL_SERIAL,
    ONE,
    QUORUM,
    SERIAL,
    THREE,
    TWO,
    Invalid,
)

from .conftest import EngineSession

CST = "custom_properties = {'client_side_timestamps': {'status': 'enabled'}}"


@pytest.fixture
def plain(session: EngineSession) -> EngineSession:
    session.execute("CREATE TABLE plain (k int PRIMARY KEY, v int)")
    return session


@pytest.mark.parametrize(
    "level, name",
    [
        (ONE, "ONE"),
        (LOCAL_ONE, "LOCAL_ONE"),
        (QUORUM, "QUORUM"),
        (ALL, "ALL"),
        (ANY, "ANY"),
        (TWO, "TWO"),
        (THREE, "THREE"),
        (EACH_QUORUM, "EACH_QUORUM"),
        (SERIAL, "SERIAL"),
    ],
)
def test_writes_need_local_quorum(plain: EngineSession, level: int, name: str) -> None:
    expected = (
        f"Consistency level {name} is not supported for this operation. "
        "Supported consistency levels are: LOCAL_QUORUM"
    )
    for cql in (
        "INSERT INTO plain (k, v) VALUES (1, 1)",
        "UPDATE plain SET v = 2 WHERE k = 1",
        "DELETE FROM plain WHERE k = 1",
    ):
        with pytest.raises(Invalid) as err:
            plain.execute(cql, consistency=level)
        assert err.value.message == expected
    with pytest.raises(Invalid):
        plain.engine.batch(
            0, [("INSERT INTO plain (k, v) VALUES (1, 1)", [])], _options(level), "ks"
        )


def _options(level: int) -> object:
    from keyspaces_local.cql.api import QueryOptions

    return QueryOptions(consistency=level)


@pytest.mark.parametrize(
    "level, name",
    [
        (ANY, "ANY"),
        (QUORUM, "QUORUM"),
        (ALL, "ALL"),
        (TWO, "TWO"),
        (EACH_QUORUM, "EACH_QUORUM"),
        (SERIAL, "SERIAL"),
        (LOCAL_SERIAL, "LOCAL_SERIAL"),
    ],
)
def test_reads_need_one_local_one_or_local_quorum(
    plain: EngineSession, level: int, name: str
) -> None:
    with pytest.raises(Invalid) as err:
        plain.execute("SELECT * FROM plain", consistency=level)
    assert err.value.message == (
        f"Consistency level {name} is not supported for this operation. "
        "Supported consistency levels are: ONE, LOCAL_QUORUM, LOCAL_ONE"
    )


@pytest.mark.parametrize("level", [ONE, LOCAL_ONE, LOCAL_QUORUM])
def test_supported_read_levels(plain: EngineSession, level: int) -> None:
    plain.execute("INSERT INTO plain (k, v) VALUES (1, 1)")
    assert plain.rows("SELECT v FROM plain WHERE k = 1", consistency=level) == [{"v": 1}]


def test_using_timestamp_without_client_side_timestamps(plain: EngineSession, clock: Clock) -> None:
    with pytest.raises(Invalid):
        plain.execute("INSERT INTO plain (k, v) VALUES (1, 1) USING TIMESTAMP ?", [clock.now_us()])
    with pytest.raises(Invalid):
        plain.execute("UPDATE plain USING TIMESTAMP ? SET v = 1 WHERE k = 1", [clock.now_us()])
    with pytest.raises(Invalid):
        plain.execute("DELETE FROM plain USING TIMESTAMP ? WHERE k = 1", [clock.now_us()])


def test_writetime_without_client_side_timestamps(plain: EngineSession) -> None:
    plain.execute("INSERT INTO plain (k, v) VALUES (1, 1)")
    with pytest.raises(Invalid):
        plain.execute("SELECT WRITETIME(v) FROM plain WHERE k = 1")


def test_protocol_timestamp_is_ignored_without_client_side_timestamps(
    plain: EngineSession, clock: Clock
) -> None:
    plain.execute("INSERT INTO plain (k, v) VALUES (1, 1)")
    # An old driver-side timestamp would lose to the first write if it were used.
    plain.execute(
        "INSERT INTO plain (k, v) VALUES (1, 2)", timestamp_us=clock.now_us() - 10_000_000
    )
    assert plain.rows("SELECT v FROM plain WHERE k = 1") == [{"v": 2}]


def test_client_timestamp_window(session: EngineSession, clock: Clock) -> None:
    session.execute(f"CREATE TABLE c (k int PRIMARY KEY, v int) WITH {CST}")
    now = clock.now_us()
    day = 86_400_000_000
    session.execute("INSERT INTO c (k, v) VALUES (1, 1) USING TIMESTAMP ?", [now - day])
    session.execute("INSERT INTO c (k, v) VALUES (1, 1) USING TIMESTAMP ?", [now + 60_000_000])
    with pytest.raises(Invalid):
        session.execute("INSERT INTO c (k, v) VALUES (1, 1) USING TIMESTAMP ?", [now - 3 * day])
    with pytest.raises(Invalid):
        session.execute(
            "INSERT INTO c (k, v) VALUES (1, 1) USING TIMESTAMP ?", [now + 10 * 60_000_000]
        )
    with pytest.raises(Invalid):  # a timestamp in seconds, as one AWS sample shows, is far outside
        session.execute("INSERT INTO c (k, v) VALUES (1, 1) USING TIMESTAMP ?", [now // 1_000_000])


def test_using_ttl_without_ttl_enabled(plain: EngineSession) -> None:
    with pytest.raises(Invalid, match="TTL is not yet supported"):
        plain.execute("INSERT INTO plain (k, v) VALUES (1, 1) USING TTL 10")
    with pytest.raises(Invalid, match="TTL is not yet supported"):
        plain.execute("UPDATE plain USING TTL 10 SET v = 1 WHERE k = 1")


@pytest.mark.parametrize(
    "cql",
    [
        "INSERT INTO system.local (key) VALUES ('x')",
        "UPDATE system_schema.tables SET comment = 'x' WHERE keyspace_name = 'ks' AND "
        "table_name = 't'",
        "DELETE FROM system_schema_mcs.tables WHERE keyspace_name = 'ks'",
    ],
)
def test_writes_to_system_keyspaces(session: EngineSession, cql: str) -> None:
    with pytest.raises(Invalid):
        session.execute(cql)


def test_missing_key_parts_and_unknown_columns(plain: EngineSession) -> None:
    with pytest.raises(Invalid):
        plain.execute("INSERT INTO plain (v) VALUES (1)")
    with pytest.raises(Invalid):
        plain.execute("INSERT INTO plain (k, nope) VALUES (1, 1)")
    with pytest.raises(Invalid):
        plain.execute("SELECT * FROM plain WHERE v = 1")
    with pytest.raises(Invalid):
        plain.execute("SELECT * FROM nothere")


def test_key_size_quotas(session: EngineSession) -> None:
    session.execute("CREATE TABLE big (k text, c text, v int, PRIMARY KEY (k, c))")
    session.execute("INSERT INTO big (k, c, v) VALUES (?, ?, 1)", ["k" * 2048, "c" * 850])
    with pytest.raises(Invalid):
        session.execute("INSERT INTO big (k, c, v) VALUES (?, ?, 1)", ["k" * 2049, "c"])
    with pytest.raises(Invalid):
        session.execute("INSERT INTO big (k, c, v) VALUES (?, ?, 1)", ["k", "c" * 851])


def test_bound_values_of_the_wrong_size(plain: EngineSession) -> None:
    from keyspaces_local.cql.api import QueryOptions

    prepared = plain.engine.prepare("INSERT INTO plain (k, v) VALUES (?, ?)", "ks")
    with pytest.raises(Invalid):
        plain.engine.execute(
            prepared.statement_id, QueryOptions(values=[b"\x01", b"\x00" * 4]), "ks"
        )


def test_batch_using_timestamp_follows_the_table_rules(plain: EngineSession, clock: Clock) -> None:
    with pytest.raises(Invalid):
        plain.execute(
            f"BEGIN BATCH USING TIMESTAMP {clock.now_us()} "
            "INSERT INTO plain (k, v) VALUES (1, 1); APPLY BATCH"
        )


def test_a_batch_with_a_conditional_member_writes_nothing(plain: EngineSession) -> None:
    with pytest.raises(Invalid):
        plain.execute(
            "BEGIN BATCH INSERT INTO plain (k, v) VALUES (1, 1); "
            "UPDATE plain SET v = 2 WHERE k = 2 IF v = 1; APPLY BATCH"
        )
    assert plain.rows("SELECT * FROM plain") == []
