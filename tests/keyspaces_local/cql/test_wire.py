"""The real cassandra-driver against CqlServer, with a small scripted engine behind it.

The engine here is a stand-in for the real one (which is tested on its own):
it answers the control connection's system queries and a few scripted user
statements, and records what reached it, so these tests check the wire layer
end to end: version negotiation, startup, auth, results of every kind, type
metadata, prepared statements, paging, batches and errors.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import ipaddress
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from cassandra import AlreadyExists as DriverAlreadyExists
from cassandra import AuthenticationFailed, ConsistencyLevel, InvalidRequest, cqltypes
from cassandra import Unavailable as DriverUnavailable
from cassandra.auth import PlainTextAuthProvider
from cassandra.cluster import (
    EXEC_PROFILE_DEFAULT,
    Cluster,
    ExecutionProfile,
    NoHostAvailable,
    Session,
)
from cassandra.policies import FallthroughRetryPolicy, RoundRobinPolicy
from cassandra.protocol import ServerError, SyntaxException
from cassandra.query import BatchStatement, BatchType, SimpleStatement
from cassandra.util import Date, Duration, Time

from keyspaces_local.cql import api
from keyspaces_local.cql.api import ColumnSpec, Prepared, QueryOptions, Result, Rows
from keyspaces_local.cql.server import CqlServer

pytestmark = pytest.mark.timeout(60)

T = cqltypes
TEXT, INT, UUID_T, INET, BOOL = (
    T.UTF8Type,
    T.Int32Type,
    T.UUIDType,
    T.InetAddressType,
    T.BooleanType,
)
TEXT_SET = T.SetType.apply_parameters((TEXT,))
TEXT_MAP = T.MapType.apply_parameters((TEXT, TEXT))


def ser(cql_type: Any, value: Any) -> bytes | None:
    return None if value is None else cql_type.to_binary(value, 4)


def columns(keyspace: str, table: str, *specs: tuple[str, Any]) -> list[ColumnSpec]:
    return [ColumnSpec(keyspace, table, name, cql_type) for name, cql_type in specs]


def rows_of(cols: list[ColumnSpec], *values: list[Any]) -> Rows:
    return Rows(
        cols, [[ser(c.cql_type, v) for c, v in zip(cols, row, strict=True)] for row in values]
    )


# --- the system tables the driver reads at connect ---------------------------

LOCAL_COLUMNS = columns(
    "system",
    "local",
    ("key", TEXT),
    ("bootstrapped", TEXT),
    ("broadcast_address", INET),
    ("cluster_name", TEXT),
    ("cql_version", TEXT),
    ("data_center", TEXT),
    ("host_id", UUID_T),
    ("listen_address", INET),
    ("native_protocol_version", TEXT),
    ("partitioner", TEXT),
    ("rack", TEXT),
    ("release_version", TEXT),
    ("rpc_address", INET),
    ("schema_version", UUID_T),
    ("tokens", TEXT_SET),
)
LOCAL_ROW = [
    "local",
    "COMPLETED",
    "127.0.0.1",
    "keyspaces_local",
    "3.4.4",
    "datacenter1",
    uuid.UUID("c0ffee00-0000-4000-8000-000000000001"),
    "127.0.0.1",
    "4",
    "org.apache.cassandra.dht.Murmur3Partitioner",
    "rack1",
    "3.11.2",
    "127.0.0.1",
    uuid.UUID("5c4e3a00-0000-4000-8000-000000000002"),
    {"0"},
]
PEERS_COLUMNS = columns(
    "system",
    "peers",
    ("peer", INET),
    ("data_center", TEXT),
    ("host_id", UUID_T),
    ("preferred_ip", INET),
    ("rack", TEXT),
    ("release_version", TEXT),
    ("rpc_address", INET),
    ("schema_version", UUID_T),
    ("tokens", TEXT_SET),
)
KEYSPACES_COLUMNS = columns(
    "system_schema",
    "keyspaces",
    ("keyspace_name", TEXT),
    ("durable_writes", BOOL),
    ("replication", TEXT_MAP),
)


# --- the typed table: one column of every CQL type ------------------------------

ADDRESS = T.UserType.make_udt_class(
    "ks",
    "address",
    ("street", "zip", "tags"),
    (TEXT, INT, T.ListType.apply_parameters((TEXT,))),
)
FROZEN_ADDRESS = T.FrozenType.apply_parameters((ADDRESS,))
TYPED: list[tuple[str, Any, Any]] = [
    ("i", INT, 42),
    ("t", TEXT, "héllo"),
    ("vc", T.VarcharType, "varchar"),
    ("u", UUID_T, uuid.UUID("12345678-1234-4234-8234-123456789abc")),
    ("m", T.MapType.apply_parameters((TEXT, INT)), {"a": 1, "b": 2}),
    ("tup", T.TupleType.apply_parameters((INT, TEXT)), (1, "x")),
    ("a", T.AsciiType, "plain"),
    ("big", T.LongType, -(2**62)),
    ("bl", T.BytesType, b"\x00\xffblob"),
    ("b", BOOL, True),
    ("c", T.CounterColumnType, 7),
    ("dec", T.DecimalType, decimal.Decimal("-12.345")),
    ("dbl", T.DoubleType, 2.5),
    ("f", T.FloatType, 1.5),
    ("ts", T.DateType, datetime.datetime(2024, 5, 6, 7, 8, 9, 123000)),
    ("vi", T.IntegerType, 2**80 + 1),
    ("tu", T.TimeUUIDType, uuid.UUID("e3e70682-c209-11ee-8000-000000000000")),
    ("ip", INET, "10.1.2.3"),
    ("ip6", INET, "::1"),
    ("d", T.SimpleDateType, datetime.date(2024, 2, 29)),
    ("tm", T.TimeType, datetime.time(13, 14, 15, 16)),
    ("si", T.ShortType, -300),
    ("ti", T.ByteType, -5),
    ("dur", T.DurationType, Duration(1, 2, 3_000_000_000)),
    ("l", T.ListType.apply_parameters((INT,)), [3, 1, 2]),
    ("s", T.SetType.apply_parameters((TEXT,)), {"y", "x"}),
    ("udt", FROZEN_ADDRESS, ("Main St", 12345, ["home"])),
    (
        "nested",
        T.MapType.apply_parameters(
            (TEXT, T.FrozenType.apply_parameters((T.ListType.apply_parameters((FROZEN_ADDRESS,)),)))
        ),
        {"k": [("A", 1, []), ("B", 2, ["x", "y"])]},
    ),
    (
        "tup_udt",
        T.TupleType.apply_parameters((FROZEN_ADDRESS, T.SetType.apply_parameters((INT,)))),
        (("C", 3, None), {5, 4}),
    ),
    ("nul", INT, None),
]
TYPED_COLUMNS = columns("ks", "typed", *[(name, cql_type) for name, cql_type, _ in TYPED])

KV_COLUMNS = columns("ks", "kv", ("k", INT), ("v", TEXT))
BIG_COLUMNS = columns("ks", "big", ("n", INT))
BIG_ROW_COUNT = 25


@dataclass
class Call:
    method: str
    target: Any
    options: QueryOptions | None
    keyspace: str | None
    extra: Any = None


Handler = Callable[[QueryOptions, str | None], Result]


@dataclass
class StubEngine:
    """Answers the driver's system queries and a few scripted statements; records the rest."""

    calls: list[Call] = field(default_factory=list)
    kv: dict[bytes, bytes | None] = field(default_factory=dict)
    prepared: dict[bytes, tuple[str, Prepared]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def user_calls(self, method: str) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if c.method == method]

    def forget_prepared(self) -> None:
        with self.lock:
            self.prepared.clear()

    # Engine protocol

    def query(self, cql: str, options: QueryOptions, keyspace: str | None) -> Result:
        system = self._system(cql)
        if system is not None:
            return system
        with self.lock:
            self.calls.append(Call("query", cql, options, keyspace))
        handler = self._handlers().get(cql)
        if handler is None:
            raise api.Invalid(f"unconfigured statement: {cql}")
        return handler(options, keyspace)

    def prepare(self, cql: str, keyspace: str | None) -> Prepared:
        statement_id = hashlib.md5(cql.encode()).digest()
        if cql == "INSERT INTO ks.kv (k, v) VALUES (?, ?)":
            prepared = Prepared(statement_id, KV_COLUMNS, [0], None)
        elif cql == "SELECT k, v FROM ks.kv WHERE k = ?":
            prepared = Prepared(statement_id, KV_COLUMNS[:1], [0], KV_COLUMNS)
        else:
            raise api.CqlSyntaxError(f"cannot prepare: {cql}")
        with self.lock:
            self.calls.append(Call("prepare", cql, None, keyspace))
            self.prepared[statement_id] = (cql, prepared)
        return prepared

    def execute(self, statement_id: bytes, options: QueryOptions, keyspace: str | None) -> Result:
        with self.lock:
            self.calls.append(Call("execute", statement_id, options, keyspace))
            known = self.prepared.get(statement_id)
        if known is None:
            raise api.Unprepared("unknown prepared statement", statement_id)
        return self._run(known[0], options.values)

    def batch(
        self,
        batch_type: int,
        statements: list[tuple[str | bytes, list[bytes | None]]],
        options: QueryOptions,
        keyspace: str | None,
    ) -> Result:
        with self.lock:
            self.calls.append(Call("batch", statements, options, keyspace, extra=batch_type))
        for target, values in statements:
            if isinstance(target, bytes):
                self._run(self.prepared[target][0], values)
        return api.Void()

    # scripted behaviour

    def _run(self, cql: str, values: list[bytes | None]) -> Result:
        if cql.startswith("INSERT"):
            key, value = values
            assert key is not None
            self.kv[key] = value
            return api.Void()
        (key,) = values
        assert key is not None
        found = [[key, self.kv[key]]] if key in self.kv else []
        return Rows(KV_COLUMNS, found)

    def _system(self, cql: str) -> Result | None:
        if "FROM system.local" in cql:
            return rows_of(LOCAL_COLUMNS, LOCAL_ROW)
        if "FROM system.peers_v2" in cql:
            raise api.Invalid("unconfigured table peers_v2")
        if "FROM system.peers" in cql:
            return Rows(PEERS_COLUMNS, [])
        if "FROM system_schema.keyspaces" in cql:
            replication = {
                "class": "org.apache.cassandra.locator.SimpleStrategy",
                "replication_factor": "1",
            }
            return rows_of(KEYSPACES_COLUMNS, ["ks", True, replication])
        if "FROM system_schema." in cql:
            # the driver cannot decode a Rows result without columns; Cassandra never sends one
            table = cql.split("FROM system_schema.")[1].split()[0]
            return Rows(columns("system_schema", table, ("keyspace_name", TEXT)), [])
        return None

    def _handlers(self) -> dict[str, Handler]:
        return {
            "SELECT * FROM ks.typed": lambda o, k: rows_of(TYPED_COLUMNS, [v for _, _, v in TYPED]),
            "SELECT * FROM ks.big": self._big_page,
            "SELECT keyspace": lambda o, k: rows_of(columns("", "", ("keyspace", TEXT)), [k]),
            'USE "ks"': lambda o, k: api.SetKeyspace("ks"),
            "CREATE TABLE ks.created (k int PRIMARY KEY)": lambda o, k: api.SchemaChange(
                "CREATED", "TABLE", "ks", "created"
            ),
            "CREATE KEYSPACE ks2": lambda o, k: api.SchemaChange("CREATED", "KEYSPACE", "ks2"),
            "CREATE TABLE ks.exists (k int PRIMARY KEY)": self._raise(
                api.AlreadyExists("Table ks.exists already exists", "ks", "exists")
            ),
            "SELECT * FROM ks.unavailable": self._raise(
                api.Unavailable("Cannot achieve consistency", api.LOCAL_QUORUM, 2, 1)
            ),
            "SELEKT": self._raise(api.CqlSyntaxError("line 1:0 no viable alternative")),
            "SELECT * FROM ks.crash": self._raise(RuntimeError("engine bug")),
        }

    @staticmethod
    def _raise(error: Exception) -> Handler:
        def handler(options: QueryOptions, keyspace: str | None) -> Result:
            raise error

        return handler

    def _big_page(self, options: QueryOptions, keyspace: str | None) -> Result:
        start = int(options.paging_state or b"0")
        end = min(BIG_ROW_COUNT, start + (options.page_size or BIG_ROW_COUNT))
        state = str(end).encode() if end < BIG_ROW_COUNT else None
        page = [[ser(INT, n)] for n in range(start, end)]
        return Rows(BIG_COLUMNS, page, paging_state=state)


# --- fixtures ---------------------------------------------------------------------


def make_cluster(port: int, **kwargs: Any) -> Cluster:
    return Cluster(
        ["127.0.0.1"],
        port=port,
        execution_profiles={
            EXEC_PROFILE_DEFAULT: ExecutionProfile(load_balancing_policy=RoundRobinPolicy())
        },
        connect_timeout=10,
        control_connection_timeout=10,
        **kwargs,
    )


@pytest.fixture(scope="module")
def engine() -> StubEngine:
    return StubEngine()


@pytest.fixture(scope="module")
def server(engine: StubEngine) -> Iterator[CqlServer]:
    with CqlServer(engine) as running:
        yield running


@pytest.fixture(scope="module")
def cluster(server: CqlServer) -> Iterator[Cluster]:
    # No protocol_version: the driver must negotiate its way down to v4.
    cluster = make_cluster(server.port)
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def session(cluster: Cluster) -> Session:
    return cluster.connect()


NO_RETRY = FallthroughRetryPolicy()


# --- connection and negotiation ---------------------------------------------------


def test_driver_negotiates_down_to_v4_and_reads_system_tables(
    cluster: Cluster, session: Session
) -> None:
    assert cluster.protocol_version == 4
    assert cluster.metadata.cluster_name == "keyspaces_local"
    host = cluster.metadata.all_hosts()[0]
    assert host.release_version == "3.11.2"
    assert host.datacenter == "datacenter1"
    assert "ks" in cluster.metadata.keyspaces


def test_protocol_v3_is_accepted(server: CqlServer) -> None:
    cluster = make_cluster(server.port, protocol_version=3)
    try:
        row = cluster.connect().execute("SELECT * FROM ks.typed").one()
        # v3 has no ids for these types; they travel as custom class names
        assert (row.d, row.si, row.ti) == (Date(datetime.date(2024, 2, 29)), -300, -5)
        assert row.dur == Duration(1, 2, 3_000_000_000)
    finally:
        cluster.shutdown()


def read_response(sock: socket.socket) -> tuple[int, int, int, bytes]:
    header = recv_exactly(sock, 9)
    version, _flags, stream, opcode, length = struct.unpack(">BBhBi", header)
    return version, stream, opcode, recv_exactly(sock, length)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError(f"connection closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def test_unsupported_version_gets_v4_protocol_error_then_close(server: CqlServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBhBi", 5, 0, 7, 0x05, 0))  # OPTIONS in protocol v5
        version, stream, opcode, body = read_response(sock)
        assert (version, stream, opcode) == (0x84, 7, 0x00)
        (code,) = struct.unpack_from(">i", body)
        assert code == 0x000A
        assert b"Invalid or unsupported protocol version" in body
        assert sock.recv(1) == b""  # the server closed the connection


def test_query_before_startup_is_a_protocol_error(server: CqlServer) -> None:
    query = struct.pack(">i", 3) + b"USE" + struct.pack(">HB", 1, 0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBhBi", 4, 0, 1, 0x07, len(query)) + query)
        version, stream, opcode, body = read_response(sock)
        assert (version, stream, opcode) == (0x84, 1, 0x00)
        assert struct.unpack_from(">i", body)[0] == 0x000A
        assert b"expecting STARTUP" in body


def test_options_answers_supported(server: CqlServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(struct.pack(">BBhBi", 4, 0, 3, 0x05, 0))
        version, stream, opcode, body = read_response(sock)
        assert (version, stream, opcode) == (0x84, 3, 0x06)
        for expected in (b"CQL_VERSION", b"3.4.4", b"COMPRESSION", b"4/v4"):
            assert expected in body


# --- results ------------------------------------------------------------------------


def test_rows_of_every_type_decode_to_native_python_values(session: Session) -> None:
    row = session.execute("SELECT * FROM ks.typed").one()
    got = row._asdict()
    assert list(got) == [name for name, _, _ in TYPED]
    assert got["i"] == 42 and got["t"] == "héllo" and got["vc"] == "varchar"
    assert got["u"] == uuid.UUID("12345678-1234-4234-8234-123456789abc")
    assert dict(got["m"]) == {"a": 1, "b": 2}
    assert got["tup"] == (1, "x")
    assert got["a"] == "plain" and got["big"] == -(2**62) and got["bl"] == b"\x00\xffblob"
    assert got["b"] is True and got["c"] == 7
    assert got["dec"] == decimal.Decimal("-12.345")
    assert got["dbl"] == 2.5 and got["f"] == 1.5
    assert got["ts"] == datetime.datetime(2024, 5, 6, 7, 8, 9, 123000)
    assert got["vi"] == 2**80 + 1
    assert got["tu"] == uuid.UUID("e3e70682-c209-11ee-8000-000000000000")
    assert ipaddress.ip_address(got["ip"]) == ipaddress.ip_address("10.1.2.3")
    assert ipaddress.ip_address(got["ip6"]) == ipaddress.ip_address("::1")
    assert got["d"] == Date(datetime.date(2024, 2, 29))
    assert got["tm"] == Time(datetime.time(13, 14, 15, 16))
    assert got["si"] == -300 and got["ti"] == -5
    assert got["dur"] == Duration(1, 2, 3_000_000_000)
    assert got["l"] == [3, 1, 2]
    assert set(got["s"]) == {"x", "y"}
    udt = got["udt"]
    assert (udt.street, udt.zip, udt.tags) == ("Main St", 12345, ["home"])
    nested = dict(got["nested"])["k"]
    assert [(a.street, a.zip, a.tags) for a in nested] == [("A", 1, []), ("B", 2, ["x", "y"])]
    inner, numbers = got["tup_udt"]
    assert (inner.street, inner.zip, inner.tags) == ("C", 3, None)
    assert set(numbers) == {4, 5}
    assert got["nul"] is None


def test_result_metadata_carries_the_types(session: Session) -> None:
    result = session.execute("SELECT * FROM ks.typed")
    declared = {
        name: t.cql_parameterized_type()
        for name, t in zip(result.column_names, result.column_types, strict=True)
    }
    # text and varchar share one option id; the driver names both varchar and shows tuples frozen
    assert declared == {
        "i": "int", "t": "varchar", "vc": "varchar", "u": "uuid", "m": "map<varchar, int>",
        "tup": "frozen<tuple<int, varchar>>", "a": "ascii", "big": "bigint", "bl": "blob",
        "b": "boolean", "c": "counter", "dec": "decimal", "dbl": "double", "f": "float",
        "ts": "timestamp", "vi": "varint", "tu": "timeuuid", "ip": "inet", "ip6": "inet",
        "d": "date", "tm": "time", "si": "smallint", "ti": "tinyint", "dur": "duration",
        "l": "list<int>", "s": "set<varchar>", "udt": "frozen<address>",
        "nested": "map<varchar, list<frozen<address>>>",
        "tup_udt": "frozen<tuple<frozen<address>, set<int>>>", "nul": "int",
    }  # fmt: skip
    udt = dict(zip(result.column_names, result.column_types, strict=True))["udt"]
    assert (udt.keyspace, udt.typename, udt.fieldnames) == (
        "ks",
        "address",
        ("street", "zip", "tags"),
    )


def test_use_sets_the_connection_keyspace(cluster: Cluster) -> None:
    session = cluster.connect()
    try:
        assert session.execute("SELECT keyspace").one().keyspace is None
        session.execute('USE "ks"')
        assert session.execute("SELECT keyspace").one().keyspace == "ks"
    finally:
        session.shutdown()


def test_connect_with_keyspace(cluster: Cluster) -> None:
    session = cluster.connect("ks")
    try:
        assert session.execute("SELECT keyspace").one().keyspace == "ks"
    finally:
        session.shutdown()


def test_schema_change_results_are_accepted(session: Session, engine: StubEngine) -> None:
    assert session.execute("CREATE TABLE ks.created (k int PRIMARY KEY)").one() is None
    assert session.execute("CREATE KEYSPACE ks2").one() is None
    targets = [c.target for c in engine.user_calls("query")]
    assert "CREATE TABLE ks.created (k int PRIMARY KEY)" in targets
    assert "CREATE KEYSPACE ks2" in targets


# --- prepared statements, paging, batches -------------------------------------------


def test_prepared_statement_round_trip(session: Session, engine: StubEngine) -> None:
    insert = session.prepare("INSERT INTO ks.kv (k, v) VALUES (?, ?)")
    assert insert.routing_key_indexes == [0]
    bound = insert.bind((1, "one"))
    assert bound.routing_key == struct.pack(">i", 1)
    session.execute(bound)
    executed = engine.user_calls("execute")[-1]
    assert executed.options is not None
    assert executed.options.values == [struct.pack(">i", 1), b"one"]
    assert executed.options.consistency == ConsistencyLevel.LOCAL_ONE  # the driver's default

    select = session.prepare("SELECT k, v FROM ks.kv WHERE k = ?")
    assert [c[2] for c in select.result_metadata] == ["k", "v"]
    row = session.execute(select, (1,)).one()
    assert (row.k, row.v) == (1, "one")


def test_unprepared_statement_is_reprepared_by_the_driver(
    session: Session, engine: StubEngine
) -> None:
    select = session.prepare("SELECT k, v FROM ks.kv WHERE k = ?")
    session.execute(session.prepare("INSERT INTO ks.kv (k, v) VALUES (?, ?)"), (5, "five"))
    prepares_before = len(engine.user_calls("prepare"))
    engine.forget_prepared()
    row = session.execute(select, (5,)).one()
    assert (row.k, row.v) == (5, "five")
    assert len(engine.user_calls("prepare")) > prepares_before


def test_paging_over_three_pages(session: Session, engine: StubEngine) -> None:
    before = len(engine.user_calls("query"))
    statement = SimpleStatement("SELECT * FROM ks.big", fetch_size=10)
    assert [r.n for r in session.execute(statement)] == list(range(BIG_ROW_COUNT))
    pages = [c for c in engine.user_calls("query")[before:] if c.target == "SELECT * FROM ks.big"]
    assert [c.options.paging_state for c in pages if c.options] == [None, b"10", b"20"]
    assert all(c.options is not None and c.options.page_size == 10 for c in pages)


def test_batch_reaches_the_engine(session: Session, engine: StubEngine) -> None:
    insert = session.prepare("INSERT INTO ks.kv (k, v) VALUES (?, ?)")
    batch = BatchStatement(
        batch_type=BatchType.UNLOGGED, consistency_level=ConsistencyLevel.LOCAL_QUORUM
    )
    batch.add(insert, (2, "two"))
    batch.add(SimpleStatement("INSERT INTO ks.kv (k, v) VALUES (3, 'three')"))
    session.execute(batch)
    call = engine.user_calls("batch")[-1]
    assert call.extra == api.UNLOGGED_BATCH
    assert call.target == [
        (insert.query_id, [struct.pack(">i", 2), b"two"]),
        ("INSERT INTO ks.kv (k, v) VALUES (3, 'three')", []),
    ]
    assert call.options is not None and call.options.consistency == api.LOCAL_QUORUM
    assert call.options.timestamp_us is not None  # the driver's client-side timestamp
    assert abs(call.options.timestamp_us / 1e6 - time.time()) < 60
    assert engine.kv[struct.pack(">i", 2)] == b"two"


# --- errors --------------------------------------------------------------------------


def test_invalid_error_surfaces_and_session_stays_usable(session: Session) -> None:
    with pytest.raises(InvalidRequest, match="unconfigured statement"):
        session.execute("SELECT * FROM ks.missing")
    assert session.execute("SELECT * FROM ks.typed").one().i == 42


def test_error_codes_with_extra_fields(session: Session) -> None:
    with pytest.raises(DriverAlreadyExists) as already:
        session.execute("CREATE TABLE ks.exists (k int PRIMARY KEY)")
    assert (already.value.keyspace, already.value.table) == ("ks", "exists")

    unavailable = SimpleStatement("SELECT * FROM ks.unavailable", retry_policy=NO_RETRY)
    with pytest.raises(DriverUnavailable) as unavail:
        session.execute(unavailable)
    assert unavail.value.consistency == ConsistencyLevel.LOCAL_QUORUM
    assert (unavail.value.required_replicas, unavail.value.alive_replicas) == (2, 1)

    with pytest.raises(SyntaxException):
        session.execute("SELEKT")
    assert session.execute("SELECT * FROM ks.typed").one().i == 42


def test_unexpected_engine_exception_is_a_server_error(session: Session) -> None:
    with pytest.raises(ServerError, match="engine bug"):
        session.execute(SimpleStatement("SELECT * FROM ks.crash", retry_policy=NO_RETRY))
    assert session.execute("SELECT * FROM ks.typed").one().i == 42


# --- authentication ------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_server(engine: StubEngine) -> Iterator[CqlServer]:
    with CqlServer(engine, credentials={"alice": "s3cret"}) as running:
        yield running


def test_password_authentication(auth_server: CqlServer) -> None:
    cluster = make_cluster(
        auth_server.port, protocol_version=4, auth_provider=PlainTextAuthProvider("alice", "s3cret")
    )
    try:
        assert cluster.connect().execute("SELECT * FROM ks.typed").one().i == 42
    finally:
        cluster.shutdown()


@pytest.mark.parametrize(
    "provider",
    [PlainTextAuthProvider("alice", "wrong"), PlainTextAuthProvider("mallory", "s3cret"), None],
    ids=["wrong-password", "unknown-user", "no-credentials"],
)
def test_bad_credentials_are_refused(auth_server: CqlServer, provider: Any) -> None:
    cluster = make_cluster(auth_server.port, protocol_version=4, auth_provider=provider)
    try:
        with pytest.raises(NoHostAvailable) as refused:
            cluster.connect()
        (error,) = refused.value.errors.values()
        assert isinstance(error, AuthenticationFailed)
    finally:
        cluster.shutdown()


# --- lifecycle ----------------------------------------------------------------------


def test_stop_closes_connections(engine: StubEngine) -> None:
    server = CqlServer(engine)
    server.start()
    cluster = make_cluster(server.port, protocol_version=4)
    try:
        cluster.connect()
        assert server.connection_count > 0
        server.stop()
        assert server.connection_count == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=2).close()
    finally:
        cluster.shutdown()
        server.stop()
