"""DDL and the system tables a driver and ks2os read: system.local/peers, system_schema.*,
system_schema_mcs.tables, and the Keyspaces table options (CDC, client-side timestamps, TTL)."""

from __future__ import annotations

import uuid

import pytest

from keyspaces_local.clock import Clock
from keyspaces_local.cql.api import (
    ONE,
    AlreadyExists,
    ConfigError,
    CqlSyntaxError,
    Invalid,
    SchemaChange,
    Void,
)
from keyspaces_local.cql.engine import CqlEngine

from .conftest import EngineSession, RecordingSink

FULL_TABLE = """
CREATE TABLE ks.everything (
    p1 int, p2 text, c1 timestamp, c2 uuid,
    s1 text STATIC,
    a ascii, bi bigint, bl blob, bo boolean, da date, de decimal, db double, fl float,
    ip inet, i int, si smallint, t text, tm time, ts timestamp, tu timeuuid, ti tinyint,
    u uuid, vc varchar, vi varint,
    l list<int>, st set<text>, m map<text, int>,
    fm frozen<map<text, list<int>>>, tp tuple<int, text>, addr frozen<address>,
    PRIMARY KEY ((p1, p2), c1, c2)
) WITH CLUSTERING ORDER BY (c1 DESC, c2 ASC)
"""


def _columns(session: EngineSession, table: str) -> dict[str, dict[str, object]]:
    rows = session.rows(
        "SELECT * FROM system_schema.columns WHERE keyspace_name = ? AND table_name = ?",
        ["ks", table],
        consistency=ONE,
    )
    return {r["column_name"]: r for r in rows}


def test_system_local_has_what_the_control_connection_reads(session: EngineSession) -> None:
    [row] = session.rows("SELECT * FROM system.local WHERE key='local'", consistency=ONE)
    assert row["partitioner"] == "org.apache.cassandra.dht.Murmur3Partitioner"
    assert row["rpc_address"] == row["broadcast_address"] == row["listen_address"] == "127.0.0.1"
    assert (row["release_version"], row["native_protocol_version"], row["cql_version"]) == (
        "3.11.2",
        "4",
        "3.4.4",
    )
    assert len(row["tokens"]) == 1 and isinstance(row["host_id"], uuid.UUID)
    assert row["data_center"] and row["rack"]
    assert session.rows("SELECT * FROM system.peers", consistency=ONE) == []


def test_peers_v2_is_refused_so_the_driver_falls_back(session: EngineSession) -> None:
    with pytest.raises(Invalid, match="peers_v2"):
        session.execute("SELECT * FROM system.peers_v2", consistency=ONE)


def test_schema_version_changes_on_every_ddl(session: EngineSession) -> None:
    def version() -> uuid.UUID:
        return session.rows("SELECT schema_version FROM system.local", consistency=ONE)[0][
            "schema_version"
        ]

    v1 = version()
    session.execute("CREATE TABLE t (k int PRIMARY KEY, v int)")
    v2 = version()
    session.execute("ALTER TABLE t ADD w text")
    v3 = version()
    assert len({v1, v2, v3}) == 3


def test_full_table_round_trips_through_system_schema(session: EngineSession) -> None:
    session.execute("CREATE TYPE address (street text, zip int)")
    result = session.execute(FULL_TABLE)
    assert result == SchemaChange("CREATED", "TABLE", "ks", "everything")
    cols = _columns(session, "everything")
    assert (cols["p1"]["kind"], cols["p1"]["position"]) == ("partition_key", 0)
    assert (cols["p2"]["kind"], cols["p2"]["position"]) == ("partition_key", 1)
    assert (cols["c1"]["kind"], cols["c1"]["position"], cols["c1"]["clustering_order"]) == (
        "clustering",
        0,
        "desc",
    )
    assert (cols["c2"]["kind"], cols["c2"]["position"], cols["c2"]["clustering_order"]) == (
        "clustering",
        1,
        "asc",
    )
    assert cols["s1"]["kind"] == "static"
    assert cols["i"]["kind"] == "regular" and cols["i"]["position"] == -1
    expected_types = {
        "a": "ascii",
        "bi": "bigint",
        "bl": "blob",
        "bo": "boolean",
        "da": "date",
        "de": "decimal",
        "db": "double",
        "fl": "float",
        "ip": "inet",
        "i": "int",
        "si": "smallint",
        "t": "text",
        "tm": "time",
        "ts": "timestamp",
        "tu": "timeuuid",
        "ti": "tinyint",
        "u": "uuid",
        "vc": "text",
        "vi": "varint",
        "l": "list<int>",
        "st": "set<text>",
        "m": "map<text, int>",
        "fm": "frozen<map<text, list<int>>>",
        "tp": "frozen<tuple<int, text>>",
        "addr": "frozen<address>",
    }
    assert {name: cols[name]["type"] for name in expected_types} == expected_types
    [udt] = session.rows(
        "SELECT * FROM system_schema.types WHERE keyspace_name = 'ks'", consistency=ONE
    )
    assert (udt["type_name"], udt["field_names"], udt["field_types"]) == (
        "address",
        ["street", "zip"],
        ["text", "int"],
    )
    [table] = session.rows(
        "SELECT * FROM system_schema.tables WHERE keyspace_name = 'ks' AND "
        "table_name = 'everything'",
        consistency=ONE,
    )
    assert table["flags"] == {"compound"}


def test_system_keyspaces_are_listed(session: EngineSession) -> None:
    names = {
        r["keyspace_name"]
        for r in session.rows("SELECT * FROM system_schema.keyspaces", consistency=ONE)
    }
    assert {"ks", "system", "system_schema", "system_schema_mcs"} <= names


@pytest.mark.parametrize(
    "strategy",
    [
        "{'class': 'SingleRegionStrategy'}",
        "{'class': 'NetworkTopologyStrategy', 'us-east-1': 3}",
        "{'class': 'SimpleStrategy', 'replication_factor': 3}",
    ],
)
def test_keyspace_replication_strategies(session: EngineSession, strategy: str) -> None:
    assert isinstance(
        session.execute(f"CREATE KEYSPACE k2 WITH replication = {strategy}"), SchemaChange
    )
    assert (
        session.execute(f"CREATE KEYSPACE IF NOT EXISTS k2 WITH replication = {strategy}") == Void()
    )
    with pytest.raises(AlreadyExists):
        session.execute(f"CREATE KEYSPACE k2 WITH replication = {strategy}")
    assert session.execute("DROP KEYSPACE k2") == SchemaChange("DROPPED", "KEYSPACE", "k2")
    assert session.execute("DROP KEYSPACE IF EXISTS k2") == Void()


@pytest.mark.parametrize(
    "ddl, partition, clustering",
    [
        ("CREATE TABLE t (a int PRIMARY KEY, b int)", ["a"], []),
        ("CREATE TABLE t (a int, b int, PRIMARY KEY (a))", ["a"], []),
        (
            "CREATE TABLE t (a int, b int, c int, d int, PRIMARY KEY ((a, b), c, d))",
            ["a", "b"],
            ["c", "d"],
        ),
        ("CREATE TABLE t (a int, b int, c int, PRIMARY KEY (a, b, c))", ["a"], ["b", "c"]),
    ],
)
def test_primary_key_forms(
    session: EngineSession, ddl: str, partition: list[str], clustering: list[str]
) -> None:
    session.execute(ddl)
    cols = _columns(session, "t")
    got_pk = sorted(
        (c for c in cols.values() if c["kind"] == "partition_key"), key=lambda c: c["position"]
    )
    got_ck = sorted(
        (c for c in cols.values() if c["kind"] == "clustering"), key=lambda c: c["position"]
    )
    assert [c["column_name"] for c in got_pk] == partition
    assert [c["column_name"] for c in got_ck] == clustering


def test_create_table_if_not_exists_and_drop(session: EngineSession, sink: RecordingSink) -> None:
    session.execute("CREATE TABLE t (a int PRIMARY KEY) WITH cdc = true")
    assert session.execute("CREATE TABLE IF NOT EXISTS t (a int PRIMARY KEY)") == Void()
    with pytest.raises(AlreadyExists):
        session.execute("CREATE TABLE t (a int PRIMARY KEY)")
    assert session.execute("DROP TABLE t") == SchemaChange("DROPPED", "TABLE", "ks", "t")
    assert sink.disabled == [("ks", "t")]
    assert session.execute("DROP TABLE IF EXISTS t") == Void()
    with pytest.raises(Invalid):
        session.execute("DROP TABLE t")


def _mcs(session: EngineSession, table: str = "t") -> dict[str, object]:
    [row] = session.rows(
        "SELECT * FROM system_schema_mcs.tables WHERE keyspace_name = ? AND table_name = ?",
        ["ks", table],
        consistency=ONE,
    )
    return row


def test_system_schema_mcs_before_and_after_alter(
    session: EngineSession, sink: RecordingSink
) -> None:
    session.execute("CREATE TABLE t (a int PRIMARY KEY, b int)")
    row = _mcs(session)
    assert (row["status"], row["cdc"], row["custom_properties"] or {}) == ("ACTIVE", False, {})

    session.execute(
        "ALTER TABLE t WITH cdc = TRUE WITH CUSTOM_PROPERTIES = "
        "{'cdc_specification': {'view_type': 'NEW_IMAGE'}}"
    )
    row = _mcs(session)
    assert row["cdc"] is True
    assert row["custom_properties"]["cdc_specification"] == {
        "status": "ENABLED",
        "view_type": "NEW_IMAGE",
        "latest_stream_arn": sink.enabled[-1],
    }

    session.execute(
        "ALTER TABLE t WITH custom_properties = {'client_side_timestamps': {'status': 'enabled'}}"
    )
    session.execute("ALTER TABLE t WITH custom_properties = {'ttl': {'status': 'enabled'}}")
    props = _mcs(session)["custom_properties"]
    assert props["client_side_timestamps"] == {"status": "enabled"} and props["ttl"] == {
        "status": "enabled"
    }

    session.execute("ALTER TABLE t WITH cdc = false")
    row = _mcs(session)
    assert row["cdc"] is False and "cdc_specification" not in row["custom_properties"]
    assert sink.disabled == [("ks", "t")]


def test_create_with_all_keyspaces_options(session: EngineSession, sink: RecordingSink) -> None:
    session.execute(
        "CREATE TABLE t (a int PRIMARY KEY, b int) WITH default_time_to_live = 0 AND cdc = "
        "true AND "
        "custom_properties = {'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}, "
        "'client_side_timestamps': {'status': 'enabled'}, 'ttl': {'status': 'enabled'}}"
    )
    props = _mcs(session)["custom_properties"]
    assert set(props) == {"cdc_specification", "client_side_timestamps", "ttl"}
    assert len(sink.enabled) == 1


def test_default_ttl_enables_ttl(session: EngineSession) -> None:
    session.execute("CREATE TABLE t (a int PRIMARY KEY, b int) WITH default_time_to_live = 100")
    assert _mcs(session)["custom_properties"]["ttl"] == {"status": "enabled"}
    assert _mcs(session)["default_time_to_live"] == 100


def test_one_way_settings_cannot_be_disabled(session: EngineSession) -> None:
    session.execute(
        "CREATE TABLE t (a int PRIMARY KEY, b int) WITH custom_properties = "
        "{'client_side_timestamps': {'status': 'enabled'}}"
    )
    with pytest.raises(Invalid):
        session.execute(
            "ALTER TABLE t WITH custom_properties = {'client_side_timestamps': {'status': "
            "'disabled'}}"
        )
    session.execute("ALTER TABLE t WITH custom_properties = {'ttl': {'status': 'enabled'}}")
    with pytest.raises(Invalid):
        session.execute("ALTER TABLE t WITH custom_properties = {'ttl': {'status': 'disabled'}}")


def test_one_custom_property_per_alter(session: EngineSession) -> None:
    session.execute("CREATE TABLE t (a int PRIMARY KEY, b int)")
    with pytest.raises(Invalid):
        session.execute(
            "ALTER TABLE t WITH custom_properties = {'client_side_timestamps': {'status': "
            "'enabled'}, "
            "'ttl': {'status': 'enabled'}}"
        )


def test_alter_add_column(session: EngineSession) -> None:
    session.execute("CREATE TABLE t (a int, c int, b int, PRIMARY KEY (a, c))")
    session.execute("ALTER TABLE t ADD x list<int>")
    session.execute("ALTER TABLE t ADD s int static")
    cols = _columns(session, "t")
    assert (cols["x"]["type"], cols["x"]["kind"], cols["s"]["kind"]) == (
        "list<int>",
        "regular",
        "static",
    )
    session.execute("INSERT INTO t (a, c, x, s) VALUES (1, 2, [1, 2], 3)")
    assert session.rows("SELECT x, s FROM t") == [{"x": [1, 2], "s": 3}]


@pytest.mark.parametrize(
    "cql",
    [
        "TRUNCATE t",
        "CREATE INDEX ON t (b)",
        "CREATE MATERIALIZED VIEW v AS SELECT * FROM t WHERE a IS NOT NULL PRIMARY KEY (a)",
        "CREATE TRIGGER tr ON t USING 'x'",
        "CREATE FUNCTION f (x int) RETURNS NULL ON NULL INPUT RETURNS int LANGUAGE java AS "
        "'return x;'",
        "CREATE AGGREGATE a (int) SFUNC f STYPE int",
    ],
)
def test_unsupported_statements_are_refused(session: EngineSession, cql: str) -> None:
    session.execute("CREATE TABLE t (a int PRIMARY KEY, b int)")
    with pytest.raises(Invalid):
        session.execute(cql)


def test_syntax_errors_are_syntax_errors(session: EngineSession) -> None:
    with pytest.raises(CqlSyntaxError):
        session.execute("SELEKT * FROM t")


def test_ddl_errors(session: EngineSession) -> None:
    with pytest.raises(ConfigError):
        session.execute("CREATE KEYSPACE k3 WITH replication = {'class': 'NoSuchStrategy'}")
    with pytest.raises(Invalid):
        session.execute("CREATE TABLE t (a int, b int STATIC, PRIMARY KEY (a))")
    with pytest.raises(Invalid):
        session.execute("CREATE TABLE t (a int, b int, PRIMARY KEY (a, z))")
    with pytest.raises(Invalid):
        session.execute("CREATE TABLE nokeyspace.t (a int PRIMARY KEY)")
    with pytest.raises(Invalid):
        session.execute("CREATE TABLE system.t (a int PRIMARY KEY)")


def test_service_clock_can_be_read_from_system_local(session: EngineSession, clock: Clock) -> None:
    [row] = session.rows(
        "SELECT toUnixTimestamp(now()) AS now_ms FROM system.local", consistency=ONE
    )
    assert abs(row["now_ms"] - clock.now_ms()) < 5000
    [row] = session.rows("SELECT toUnixTimestamp(now()) FROM system.local", consistency=ONE)
    assert list(row) == ["system.tounixtimestamp(system.now())"]


def test_prepared_system_select_has_result_metadata(
    engine: CqlEngine, session: EngineSession
) -> None:
    prepared = engine.prepare(
        "SELECT custom_properties FROM system_schema_mcs.tables "
        "WHERE keyspace_name = ? AND table_name = ?",
        "ks",
    )
    assert [c.name for c in prepared.bind_columns] == ["keyspace_name", "table_name"]
    assert prepared.result_columns is not None
    assert [c.name for c in prepared.result_columns] == ["custom_properties"]
