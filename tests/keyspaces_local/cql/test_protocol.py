"""The protocol codec on its own: primitives, type options, requests and responses.

No server. Where a second implementation is needed to check ours, the real
cassandra-driver codec plays it: it encodes the requests we decode and decodes
the responses we encode, so both sides of the wire format are checked against
the client that will use them.
"""

from __future__ import annotations

import io
import struct
from typing import Any

import pytest
from cassandra import ConsistencyLevel, WriteType, cqltypes
from cassandra.protocol import (
    AlreadyExistsException,
    AuthResponseMessage,
    AuthSuccessMessage,
    BatchMessage,
    ExecuteMessage,
    OptionsMessage,
    PreparedQueryNotFound,
    ProtocolHandler,
    QueryMessage,
    RegisterMessage,
    ResultMessage,
    StartupMessage,
    UnavailableErrorMessage,
    WriteTimeoutErrorMessage,
)
from cassandra.query import BatchType
from hypothesis import given
from hypothesis import strategies as st

from keyspaces_local.cql import api, protocol
from keyspaces_local.cql.api import ColumnSpec, Prepared, Rows
from keyspaces_local.cql.protocol import BodyReader, Opcode

T = cqltypes
INT, TEXT = T.Int32Type, T.UTF8Type

# --- primitives -----------------------------------------------------------------

texts = st.text(max_size=50)


@given(
    st.integers(-(2**31), 2**31 - 1), st.integers(-(2**63), 2**63 - 1), st.integers(0, 2**16 - 1)
)
def test_numbers_round_trip(i: int, n: int, s: int) -> None:
    reader = BodyReader(protocol.write_int(i) + protocol.write_long(n) + protocol.write_short(s))
    assert (reader.read_int(), reader.read_long(), reader.read_short()) == (i, n, s)
    assert reader.remaining == 0


@given(texts, texts)
def test_strings_round_trip(short: str, long: str) -> None:
    reader = BodyReader(protocol.write_string(short) + protocol.write_long_string(long))
    assert (reader.read_string(), reader.read_long_string()) == (short, long)


@given(st.one_of(st.none(), st.binary(max_size=100)), st.binary(max_size=100))
def test_bytes_round_trip(value: bytes | None, short: bytes) -> None:
    data = (
        protocol.write_bytes(value)
        + protocol.write_value(value)
        + protocol.write_short_bytes(short)
    )
    reader = BodyReader(data)
    assert (reader.read_bytes(), reader.read_value(), reader.read_short_bytes()) == (
        value,
        value,
        short,
    )


@given(
    st.dictionaries(texts, texts, max_size=5),
    st.dictionaries(texts, st.lists(texts, max_size=3), max_size=5),
)
def test_maps_round_trip(plain: dict[str, str], multi: dict[str, list[str]]) -> None:
    reader = BodyReader(protocol.write_string_map(plain) + protocol.write_string_multimap(multi))
    assert (reader.read_string_map(), reader.read_string_multimap()) == (plain, multi)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.254", "::1", "2001:db8::7"])
def test_inet_round_trip(address: str) -> None:
    assert BodyReader(protocol.write_inet(address, 9042)).read_inet() == (address, 9042)


def test_consistency_round_trip() -> None:
    data = protocol.write_consistency(api.LOCAL_QUORUM) + protocol.write_consistency(
        api.LOCAL_SERIAL
    )
    reader = BodyReader(data)
    assert (reader.read_consistency(), reader.read_consistency()) == (
        api.LOCAL_QUORUM,
        api.LOCAL_SERIAL,
    )


def test_truncated_body_is_a_protocol_error() -> None:
    with pytest.raises(api.ProtocolError):
        BodyReader(protocol.write_string("abc")[:-1]).read_string()
    with pytest.raises(api.ProtocolError):
        BodyReader(b"\x00").read_int()


def test_value_lengths() -> None:
    with pytest.raises(api.Invalid, match="Unset"):
        BodyReader(struct.pack(">i", -2)).read_value()
    with pytest.raises(api.ProtocolError):
        BodyReader(struct.pack(">i", -3)).read_value()


def test_header_round_trip() -> None:
    frame = protocol.encode_frame(4, -1, Opcode.RESULT, b"xyz")
    header = protocol.decode_header(frame[: protocol.HEADER_LENGTH])
    assert header == protocol.FrameHeader(4, True, 0, -1, Opcode.RESULT, 3)
    assert frame[protocol.HEADER_LENGTH :] == b"xyz"


# --- type options, decoded by the driver ---------------------------------------------

ADDRESS = T.UserType.make_udt_class("ks", "addr", ("street", "zip"), (TEXT, INT))
FROZEN_ADDRESS = T.FrozenType.apply_parameters((ADDRESS,))
SIMPLE_TYPES = [
    T.AsciiType, T.LongType, T.BytesType, T.BooleanType, T.CounterColumnType, T.DecimalType,
    T.DoubleType, T.FloatType, T.Int32Type, T.DateType, T.TimestampType, T.UUIDType,
    T.VarcharType, T.UTF8Type, T.IntegerType, T.TimeUUIDType, T.InetAddressType,
    T.SimpleDateType, T.TimeType, T.ShortType, T.ByteType, T.DurationType,
]  # fmt: skip


def driver_reads(option: bytes) -> Any:
    stream = io.BytesIO(option)
    cql_type = ResultMessage.read_type(stream, {})
    assert stream.read() == b"", "the option has trailing bytes"
    return cql_type


@pytest.mark.parametrize("cql_type", SIMPLE_TYPES, ids=lambda t: t.typename)
def test_simple_type_options(cql_type: Any) -> None:
    decoded = driver_reads(protocol.encode_type_option(cql_type))
    # text is an alias of varchar, and the driver reads both timestamp classes as DateType
    assert decoded.typename == {"text": "varchar"}.get(cql_type.typename, cql_type.typename)


def test_duration_travels_as_custom_class() -> None:
    option = protocol.encode_type_option(T.DurationType)
    assert option == struct.pack(">H", 0) + protocol.write_string(
        "org.apache.cassandra.db.marshal.DurationType"
    )
    assert driver_reads(option) is T.DurationType


@pytest.mark.parametrize(
    ("cql_type", "expected"),
    [
        (T.ListType.apply_parameters((INT,)), "list<int>"),
        (T.SetType.apply_parameters((T.UUIDType,)), "set<uuid>"),
        (T.MapType.apply_parameters((TEXT, T.DurationType)), "map<varchar, duration>"),
        (
            T.TupleType.apply_parameters((INT, TEXT, T.BooleanType)),
            "frozen<tuple<int, varchar, boolean>>",
        ),
        (FROZEN_ADDRESS, "frozen<addr>"),
        (
            T.MapType.apply_parameters(
                (
                    T.FrozenType.apply_parameters(
                        (T.TupleType.apply_parameters((INT, FROZEN_ADDRESS)),)
                    ),
                    T.FrozenType.apply_parameters(
                        (
                            T.ListType.apply_parameters(
                                (T.SetType.apply_parameters((T.SimpleDateType,)),)
                            ),
                        )
                    ),
                )
            ),
            "map<frozen<tuple<int, frozen<addr>>>, list<set<date>>>",
        ),
        (T.ReversedType.apply_parameters((T.TimeUUIDType,)), "timeuuid"),
    ],
    ids=["list", "set", "map", "tuple", "udt", "nested", "reversed"],
)
def test_parameterized_type_options(cql_type: Any, expected: str) -> None:
    assert driver_reads(protocol.encode_type_option(cql_type)).cql_parameterized_type() == expected


def test_udt_option_carries_keyspace_name_and_fields() -> None:
    decoded = driver_reads(protocol.encode_type_option(ADDRESS))
    assert (decoded.keyspace, decoded.typename, decoded.fieldnames) == (
        "ks",
        "addr",
        ("street", "zip"),
    )
    assert decoded.subtypes == (T.VarcharType, T.Int32Type)


@pytest.mark.parametrize("cql_type", [T.SimpleDateType, T.TimeType, T.ShortType, T.ByteType])
def test_v3_sends_v4_only_types_as_custom(cql_type: Any) -> None:
    option = protocol.encode_type_option(cql_type, 3)
    assert option[:2] == b"\x00\x00"
    assert driver_reads(option) is cql_type


# --- requests, encoded by the driver ----------------------------------------------------


def decode(message: Any, version: int = 4) -> tuple[protocol.FrameHeader, protocol.Request]:
    frame = ProtocolHandler.encode_message(message, 11, version, None, False)
    header = protocol.decode_header(frame[: protocol.HEADER_LENGTH])
    assert header.length == len(frame) - protocol.HEADER_LENGTH
    return header, protocol.decode_request(
        header.opcode, header.flags, frame[protocol.HEADER_LENGTH :]
    )


def test_startup_options_register() -> None:
    header, startup = decode(StartupMessage(cqlversion="3.4.4", options={}))
    assert (header.version, header.stream, header.is_response) == (4, 11, False)
    assert startup == protocol.StartupRequest({"CQL_VERSION": "3.4.4"})
    assert decode(OptionsMessage())[1] == protocol.OptionsRequest()
    events = ["TOPOLOGY_CHANGE", "STATUS_CHANGE", "SCHEMA_CHANGE"]
    assert decode(RegisterMessage(events))[1] == protocol.RegisterRequest(events)


def test_auth_response() -> None:
    _, request = decode(AuthResponseMessage(b"\x00alice\x00pw"))
    assert request == protocol.AuthResponseRequest(b"\x00alice\x00pw")


def test_query_with_every_option() -> None:
    message = QueryMessage(
        "SELECT * FROM ks.t",
        ConsistencyLevel.LOCAL_QUORUM,
        serial_consistency_level=ConsistencyLevel.LOCAL_SERIAL,
        fetch_size=500,
        paging_state=b"\x01state",
        timestamp=1_700_000_000_000_000,
    )
    _, request = decode(message)
    assert request == protocol.QueryRequest(
        cql="SELECT * FROM ks.t",
        options=api.QueryOptions(
            consistency=api.LOCAL_QUORUM,
            values=[],
            page_size=500,
            paging_state=b"\x01state",
            serial_consistency=api.LOCAL_SERIAL,
            timestamp_us=1_700_000_000_000_000,
        ),
        skip_metadata=False,
    )


def test_query_custom_payload_is_skipped() -> None:
    message = QueryMessage("SELECT 1", ConsistencyLevel.ONE)
    message.custom_payload = {"k": b"v"}
    header, request = decode(message)
    assert header.flags & protocol.FLAG_CUSTOM_PAYLOAD
    assert isinstance(request, protocol.QueryRequest) and request.cql == "SELECT 1"


def test_execute_with_values() -> None:
    message = ExecuteMessage(
        b"\xab" * 16, [b"\x00\x00\x00\x01", None, b""], ConsistencyLevel.LOCAL_ONE
    )
    _, request = decode(message)
    assert request == protocol.ExecuteRequest(
        statement_id=b"\xab" * 16,
        options=api.QueryOptions(
            consistency=api.LOCAL_ONE, values=[b"\x00\x00\x00\x01", None, b""]
        ),
        skip_metadata=False,
    )


def test_execute_skip_metadata_flag() -> None:
    # cassandra-driver 3.30 never sets this flag (it asks for metadata every time), other drivers do
    body = (
        protocol.write_short_bytes(b"\x01")
        + protocol.write_consistency(api.LOCAL_QUORUM)
        + bytes([protocol.QueryFlag.VALUES | protocol.QueryFlag.SKIP_METADATA])
        + protocol.write_short(1)
        + protocol.write_value(b"v")
    )
    request = protocol.decode_request(Opcode.EXECUTE, 0, body)
    assert isinstance(request, protocol.ExecuteRequest)
    assert request.skip_metadata and request.options.values == [b"v"]


def test_batch_of_prepared_and_simple_statements() -> None:
    message = BatchMessage(
        BatchType.LOGGED,
        [(True, b"\x01\x02", [b"a", None]), (False, "INSERT INTO ks.t (k) VALUES (1)", [])],
        ConsistencyLevel.LOCAL_QUORUM,
        serial_consistency_level=ConsistencyLevel.SERIAL,
        timestamp=123,
    )
    _, request = decode(message)
    assert request == protocol.BatchRequest(
        batch_type=api.LOGGED_BATCH,
        statements=[(b"\x01\x02", [b"a", None]), ("INSERT INTO ks.t (k) VALUES (1)", [])],
        options=api.QueryOptions(
            consistency=api.LOCAL_QUORUM, serial_consistency=api.SERIAL, timestamp_us=123
        ),
    )


def test_named_values_are_refused_clearly() -> None:
    body = (
        protocol.write_long_string("SELECT * FROM t WHERE k = :k")
        + protocol.write_consistency(api.ONE)
        + bytes([0x01 | 0x40])
        + protocol.write_short(1)
        + protocol.write_string("k")
        + protocol.write_value(b"\x00\x00\x00\x01")
    )
    with pytest.raises(api.Invalid, match="Named bound values"):
        protocol.decode_request(Opcode.QUERY, 0, body)


def test_compressed_frames_and_unknown_opcodes_are_protocol_errors() -> None:
    with pytest.raises(api.ProtocolError, match="Compressed"):
        protocol.decode_request(Opcode.QUERY, protocol.FLAG_COMPRESSION, b"")
    with pytest.raises(api.ProtocolError, match="opcode"):
        protocol.decode_request(0x04, 0, b"")


# --- responses, decoded by the driver -----------------------------------------------------


def driver_decodes(opcode: int, body: bytes, result_metadata: Any = None, version: int = 4) -> Any:
    return ProtocolHandler.decode_message(version, {}, 5, 0, opcode, body, None, result_metadata)


KV = [ColumnSpec("ks", "kv", "k", INT), ColumnSpec("ks", "kv", "v", TEXT)]


def test_rows_with_global_table_spec_and_paging_state() -> None:
    rows = Rows(
        KV, [[b"\x00\x00\x00\x01", b"one"], [b"\x00\x00\x00\x02", None]], paging_state=b"p1"
    )
    body = protocol.encode_result(rows)
    flags = struct.unpack_from(">i", body, 4)[0]
    assert flags == protocol.MetadataFlag.GLOBAL_TABLES_SPEC | protocol.MetadataFlag.HAS_MORE_PAGES
    message = driver_decodes(Opcode.RESULT, body)
    assert message.kind == protocol.ResultKind.ROWS
    assert message.column_names == ["k", "v"]
    assert message.paging_state == b"p1"
    assert [tuple(r) for r in message.parsed_rows] == [(1, "one"), (2, None)]


def test_rows_of_several_tables_carry_per_column_specs() -> None:
    columns = [ColumnSpec("ks", "a", "x", INT), ColumnSpec("other", "b", "y", TEXT)]
    body = protocol.encode_result(Rows(columns, [[b"\x00\x00\x00\x07", b"t"]]))
    assert struct.unpack_from(">i", body, 4)[0] == 0
    message = driver_decodes(Opcode.RESULT, body)
    assert [(m[0], m[1], m[2]) for m in message.column_metadata] == [
        ("ks", "a", "x"),
        ("other", "b", "y"),
    ]
    assert [tuple(r) for r in message.parsed_rows] == [(7, "t")]


def test_skip_metadata_sends_no_metadata() -> None:
    body = protocol.encode_result(Rows(KV, [[b"\x00\x00\x00\x03", b"c"]]), skip_metadata=True)
    assert struct.unpack_from(">i", body, 4)[0] == protocol.MetadataFlag.NO_METADATA
    known = [("ks", "kv", "k", INT), ("ks", "kv", "v", TEXT)]
    message = driver_decodes(Opcode.RESULT, body, result_metadata=known)
    assert [tuple(r) for r in message.parsed_rows] == [(3, "c")]


def test_row_with_wrong_cell_count_is_refused() -> None:
    with pytest.raises(ValueError, match="cells"):
        protocol.encode_result(Rows(KV, [[b"\x00\x00\x00\x01"]]))


def test_rows_without_columns_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one column"):
        protocol.encode_result(Rows([], []))


def test_void_set_keyspace_schema_change() -> None:
    assert driver_decodes(Opcode.RESULT, protocol.encode_result(api.Void())).kind == 1
    assert (
        driver_decodes(Opcode.RESULT, protocol.encode_result(api.SetKeyspace("ks"))).new_keyspace
        == "ks"
    )
    table = driver_decodes(
        Opcode.RESULT, protocol.encode_result(api.SchemaChange("CREATED", "TABLE", "ks", "t"))
    )
    assert table.schema_change_event == {
        "change_type": "CREATED", "target_type": "TABLE", "keyspace": "ks", "table": "t"
    }  # fmt: skip
    keyspace = driver_decodes(
        Opcode.RESULT, protocol.encode_result(api.SchemaChange("DROPPED", "KEYSPACE", "ks"))
    )
    assert keyspace.schema_change_event == {
        "change_type": "DROPPED", "target_type": "KEYSPACE", "keyspace": "ks"
    }  # fmt: skip


def test_prepared_with_pk_indexes_and_result_metadata() -> None:
    bind = [ColumnSpec("ks", "t", "b", TEXT), ColumnSpec("ks", "t", "a", INT)]
    prepared = Prepared(b"\x01" * 16, bind, [1, 0], KV)
    message = driver_decodes(Opcode.RESULT, protocol.encode_prepared(prepared))
    assert message.query_id == b"\x01" * 16
    assert message.pk_indexes == [1, 0]
    assert [(m[0], m[1], m[2], m[3]) for m in message.bind_metadata] == [
        ("ks", "t", "b", T.VarcharType),
        ("ks", "t", "a", T.Int32Type),
    ]
    assert [m[2] for m in message.column_metadata] == ["k", "v"]


def test_prepared_without_result_metadata() -> None:
    prepared = Prepared(b"\x02", [ColumnSpec("ks", "t", "k", INT)], [0], None)
    body = protocol.encode_prepared(prepared)
    assert body.endswith(struct.pack(">ii", protocol.MetadataFlag.NO_METADATA, 0))
    message = driver_decodes(Opcode.RESULT, body)
    assert message.query_id == b"\x02" and not message.column_metadata


def test_prepared_in_v3_has_no_pk_indexes() -> None:
    prepared = Prepared(b"\x03", [ColumnSpec("ks", "t", "k", INT)], [0], None)
    message = driver_decodes(Opcode.RESULT, protocol.encode_prepared(prepared, 3), version=3)
    assert message.query_id == b"\x03" and message.pk_indexes is None
    assert [m[2] for m in message.bind_metadata] == ["k"]


@pytest.mark.parametrize(
    ("error", "driver_class", "info"),
    [
        (
            api.Unavailable("not enough replicas", api.LOCAL_QUORUM, 3, 1),
            UnavailableErrorMessage,
            {"consistency": api.LOCAL_QUORUM, "required_replicas": 3, "alive_replicas": 1},
        ),
        (
            api.AlreadyExists("exists", "ks", "t"),
            AlreadyExistsException,
            {"keyspace": "ks", "table": "t"},
        ),
        (api.Unprepared("gone", b"\x09\x08"), PreparedQueryNotFound, b"\x09\x08"),
    ],
    ids=["unavailable", "already-exists", "unprepared"],
)
def test_errors_with_extra_fields(error: api.CqlError, driver_class: type, info: Any) -> None:
    message = driver_decodes(Opcode.ERROR, protocol.encode_error(error))
    assert isinstance(message, driver_class)
    assert (message.code, message.message, message.info) == (error.code, error.message, info)


def test_bare_error_with_a_code_that_needs_fields_still_decodes() -> None:
    class WriteTimeout(api.CqlError):
        code = 0x1100

    message = driver_decodes(Opcode.ERROR, protocol.encode_error(WriteTimeout("slow")))
    assert isinstance(message, WriteTimeoutErrorMessage)
    assert message.info["write_type"] == WriteType.SIMPLE


@pytest.mark.parametrize(
    "error",
    [api.CqlError("boom"), api.ProtocolError("p"), api.BadCredentials("b"), api.Invalid("i"),
     api.CqlSyntaxError("s"), api.Unauthorized("u"), api.ConfigError("c")],
    ids=lambda e: type(e).__name__,
)  # fmt: skip
def test_plain_errors(error: api.CqlError) -> None:
    message = driver_decodes(Opcode.ERROR, protocol.encode_error(error))
    assert (message.code, message.message) == (error.code, error.message)


def test_supported_authenticate_auth_success() -> None:
    options = {"CQL_VERSION": ["3.4.4"], "COMPRESSION": [], "PROTOCOL_VERSIONS": ["3/v3", "4/v4"]}
    supported = driver_decodes(Opcode.SUPPORTED, protocol.encode_supported(options))
    assert supported.cql_versions == ["3.4.4"]
    assert supported.options == {"COMPRESSION": [], "PROTOCOL_VERSIONS": ["3/v3", "4/v4"]}
    name = "org.apache.cassandra.auth.PasswordAuthenticator"
    assert (
        driver_decodes(Opcode.AUTHENTICATE, protocol.encode_authenticate(name)).authenticator
        == name
    )
    # a null token, as Cassandra's PasswordAuthenticator sends
    assert protocol.encode_auth_success() == struct.pack(">i", -1)
    assert isinstance(
        driver_decodes(Opcode.AUTH_SUCCESS, protocol.encode_auth_success()), AuthSuccessMessage
    )
    assert driver_decodes(Opcode.READY, protocol.encode_ready()).opcode == Opcode.READY
