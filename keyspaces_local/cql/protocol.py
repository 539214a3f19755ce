"""CQL native protocol v4 codec: frame headers, primitives, requests in, responses out.

Pure functions and small value types, no sockets: `server.py` reads a frame,
calls `decode_request`, hands the request to the engine and encodes what comes
back with the `encode_*` functions here. Spec: `doc/native_protocol_v4.spec` in
apache/cassandra. Protocol v3 is accepted as well because it differs from v4
only in places that cost nothing here (no pk indexes in Prepared metadata, the
v4-only simple types travel as custom class names).

Values are never converted: bound values arrive as `bytes` (or None) and row
cells leave as the engine's already-serialised `bytes`, so encoding a page of
rows is mostly `b"".join`.
"""

from __future__ import annotations

import enum
import functools
import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from cassandra import cqltypes

from keyspaces_local.cql.api import (
    AlreadyExists,
    ColumnSpec,
    CqlError,
    Invalid,
    Prepared,
    ProtocolError,
    QueryOptions,
    Result,
    Rows,
    SchemaChange,
    SetKeyspace,
    Unavailable,
    Unprepared,
    Void,
)

# --- frame header -----------------------------------------------------------

SUPPORTED_VERSIONS: Final = (3, 4)
NEWEST_VERSION: Final = 4
RESPONSE_BIT: Final = 0x80
HEADER_LENGTH: Final = 9
MAX_BODY_LENGTH: Final = 256 * 1024 * 1024  # the spec's frame limit

FLAG_COMPRESSION: Final = 0x01
FLAG_TRACING: Final = 0x02
FLAG_CUSTOM_PAYLOAD: Final = 0x04
FLAG_WARNING: Final = 0x08

_HEADER = struct.Struct(">BBhBi")


class Opcode(enum.IntEnum):
    ERROR = 0x00
    STARTUP = 0x01
    READY = 0x02
    AUTHENTICATE = 0x03
    OPTIONS = 0x05
    SUPPORTED = 0x06
    QUERY = 0x07
    RESULT = 0x08
    PREPARE = 0x09
    EXECUTE = 0x0A
    REGISTER = 0x0B
    EVENT = 0x0C
    BATCH = 0x0D
    AUTH_CHALLENGE = 0x0E
    AUTH_RESPONSE = 0x0F
    AUTH_SUCCESS = 0x10


@dataclass(frozen=True)
class FrameHeader:
    version: int  # without the direction bit
    is_response: bool
    flags: int
    stream: int
    opcode: int
    length: int


def decode_header(data: bytes) -> FrameHeader:
    """Parse the 9-byte header (v3+ layout); the caller checks the version."""
    version_byte, flags, stream, opcode, length = _HEADER.unpack(data)
    return FrameHeader(
        version=version_byte & 0x7F,
        is_response=bool(version_byte & RESPONSE_BIT),
        flags=flags,
        stream=stream,
        opcode=opcode,
        length=length,
    )


def encode_frame(version: int, stream: int, opcode: int, body: bytes, flags: int = 0) -> bytes:
    """A whole response frame, ready for one `sendall`."""
    return _HEADER.pack(version | RESPONSE_BIT, flags, stream, opcode, len(body)) + body


def encode_request_frame(version: int, stream: int, opcode: int, body: bytes) -> bytes:
    """A request frame; the server never sends one, tests and probes do."""
    return _HEADER.pack(version, 0, stream, opcode, len(body)) + body


# --- primitives: writers ----------------------------------------------------

_INT = struct.Struct(">i")
_LONG = struct.Struct(">q")
_SHORT = struct.Struct(">H")
_BYTE = struct.Struct(">B")
_NULL_BYTES: Final = _INT.pack(-1)
_NOT_SET_VALUE: Final = -2


def write_int(n: int) -> bytes:
    return _INT.pack(n)


def write_long(n: int) -> bytes:
    return _LONG.pack(n)


def write_short(n: int) -> bytes:
    return _SHORT.pack(n)


def write_byte(n: int) -> bytes:
    return _BYTE.pack(n)


def write_string(s: str) -> bytes:
    data = s.encode("utf-8")
    return _SHORT.pack(len(data)) + data


def write_long_string(s: str) -> bytes:
    data = s.encode("utf-8")
    return _INT.pack(len(data)) + data


def write_bytes(b: bytes | None) -> bytes:
    if b is None:
        return _NULL_BYTES
    return _INT.pack(len(b)) + b


def write_short_bytes(b: bytes) -> bytes:
    return _SHORT.pack(len(b)) + b


def write_value(b: bytes | None) -> bytes:
    """[value] without the "not set" form, which only clients send."""
    return write_bytes(b)


def write_string_list(items: list[str]) -> bytes:
    return _SHORT.pack(len(items)) + b"".join(write_string(s) for s in items)


def write_string_map(m: dict[str, str]) -> bytes:
    parts = [_SHORT.pack(len(m))]
    for key, value in m.items():
        parts.append(write_string(key))
        parts.append(write_string(value))
    return b"".join(parts)


def write_string_multimap(m: dict[str, list[str]]) -> bytes:
    parts = [_SHORT.pack(len(m))]
    for key, values in m.items():
        parts.append(write_string(key))
        parts.append(write_string_list(values))
    return b"".join(parts)


def write_inet(address: str, port: int) -> bytes:
    packed = ipaddress.ip_address(address).packed
    return _BYTE.pack(len(packed)) + packed + _INT.pack(port)


def write_consistency(level: int) -> bytes:
    return _SHORT.pack(level)


# --- primitives: reader -----------------------------------------------------


class BodyReader:
    """Reads protocol primitives from one frame body; running off its end is a protocol error."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    @property
    def remaining(self) -> int:
        return len(self._data) - self._pos

    def _take(self, n: int) -> bytes:
        end = self._pos + n
        if n < 0 or end > len(self._data):
            raise ProtocolError("Frame body is shorter than its contents say")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def _unpack(self, fmt: struct.Struct) -> Any:
        end = self._pos + fmt.size
        if end > len(self._data):
            raise ProtocolError("Frame body is shorter than its contents say")
        (value,) = fmt.unpack_from(self._data, self._pos)
        self._pos = end
        return value

    def read_byte(self) -> int:
        return int(self._unpack(_BYTE))

    def read_short(self) -> int:
        return int(self._unpack(_SHORT))

    def read_int(self) -> int:
        return int(self._unpack(_INT))

    def read_long(self) -> int:
        return int(self._unpack(_LONG))

    def read_string(self) -> str:
        return self._decode_utf8(self._take(self.read_short()))

    def read_long_string(self) -> str:
        return self._decode_utf8(self._take(self.read_int()))

    def read_bytes(self) -> bytes | None:
        n = self.read_int()
        return None if n < 0 else self._take(n)

    def read_short_bytes(self) -> bytes:
        return self._take(self.read_short())

    def read_value(self) -> bytes | None:
        n = self.read_int()
        if n >= 0:
            return self._take(n)
        if n == -1:
            return None
        if n == _NOT_SET_VALUE:
            # The engine seam has no "leave unchanged" value; refusing is safer than writing a null.
            raise Invalid("Unset bound values are not supported by this server")
        raise ProtocolError(f"Invalid [value] length {n}")

    def read_string_list(self) -> list[str]:
        return [self.read_string() for _ in range(self.read_short())]

    def read_string_map(self) -> dict[str, str]:
        result: dict[str, str] = {}
        for _ in range(self.read_short()):
            key = self.read_string()
            result[key] = self.read_string()
        return result

    def read_string_multimap(self) -> dict[str, list[str]]:
        result: dict[str, list[str]] = {}
        for _ in range(self.read_short()):
            key = self.read_string()
            result[key] = self.read_string_list()
        return result

    def read_bytes_map(self) -> dict[str, bytes | None]:
        result: dict[str, bytes | None] = {}
        for _ in range(self.read_short()):
            key = self.read_string()
            result[key] = self.read_bytes()
        return result

    def read_inet(self) -> tuple[str, int]:
        size = self.read_byte()
        if size not in (4, 16):
            raise ProtocolError(f"Invalid [inet] address size {size}")
        address = str(ipaddress.ip_address(self._take(size)))
        return address, self.read_int()

    def read_consistency(self) -> int:
        return self.read_short()

    @staticmethod
    def _decode_utf8(data: bytes) -> str:
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"Invalid UTF-8 in a [string]: {exc}") from exc


# --- requests ---------------------------------------------------------------


class QueryFlag(enum.IntFlag):
    VALUES = 0x01
    SKIP_METADATA = 0x02
    PAGE_SIZE = 0x04
    WITH_PAGING_STATE = 0x08
    WITH_SERIAL_CONSISTENCY = 0x10
    WITH_DEFAULT_TIMESTAMP = 0x20
    WITH_NAMES_FOR_VALUES = 0x40


@dataclass(frozen=True)
class StartupRequest:
    options: dict[str, str]


@dataclass(frozen=True)
class AuthResponseRequest:
    token: bytes | None


@dataclass(frozen=True)
class OptionsRequest:
    pass


@dataclass(frozen=True)
class QueryRequest:
    cql: str
    options: QueryOptions
    skip_metadata: bool


@dataclass(frozen=True)
class PrepareRequest:
    cql: str


@dataclass(frozen=True)
class ExecuteRequest:
    statement_id: bytes
    options: QueryOptions
    skip_metadata: bool


@dataclass(frozen=True)
class BatchRequest:
    batch_type: int
    statements: list[tuple[str | bytes, list[bytes | None]]]  # CQL text or prepared id
    options: QueryOptions


@dataclass(frozen=True)
class RegisterRequest:
    event_types: list[str]


Request = (
    StartupRequest
    | AuthResponseRequest
    | OptionsRequest
    | QueryRequest
    | PrepareRequest
    | ExecuteRequest
    | BatchRequest
    | RegisterRequest
)

_NAMED_VALUES_REFUSED: Final = (
    "Named bound values (flag 0x40) are not supported by this server; bind values by position"
)


def decode_request(opcode: int, flags: int, body: bytes) -> Request:
    """Decode one request body. Raises `CqlError` (never another exception) for bad input."""
    reader = BodyReader(body)
    if flags & FLAG_COMPRESSION:
        raise ProtocolError("Compressed frames are not supported (no compression was offered)")
    if flags & FLAG_CUSTOM_PAYLOAD:
        reader.read_bytes_map()  # precedes the body; no query handler here wants it
    decoder = _REQUEST_DECODERS.get(opcode)
    if decoder is None:
        raise ProtocolError(f"Unknown or unexpected request opcode 0x{opcode:02X}")
    return decoder(reader)


def _decode_startup(reader: BodyReader) -> Request:
    return StartupRequest(options=reader.read_string_map())


def _decode_auth_response(reader: BodyReader) -> Request:
    return AuthResponseRequest(token=reader.read_bytes())


def _decode_options(reader: BodyReader) -> Request:
    return OptionsRequest()


def _decode_query(reader: BodyReader) -> Request:
    cql = reader.read_long_string()
    options, skip_metadata = _read_query_parameters(reader)
    return QueryRequest(cql=cql, options=options, skip_metadata=skip_metadata)


def _decode_prepare(reader: BodyReader) -> Request:
    return PrepareRequest(cql=reader.read_long_string())


def _decode_execute(reader: BodyReader) -> Request:
    statement_id = reader.read_short_bytes()
    options, skip_metadata = _read_query_parameters(reader)
    return ExecuteRequest(statement_id=statement_id, options=options, skip_metadata=skip_metadata)


def _decode_batch(reader: BodyReader) -> Request:
    batch_type = reader.read_byte()
    statements: list[tuple[str | bytes, list[bytes | None]]] = []
    for _ in range(reader.read_short()):
        kind = reader.read_byte()
        if kind == 0:
            target: str | bytes = reader.read_long_string()
        elif kind == 1:
            target = reader.read_short_bytes()
        else:
            raise ProtocolError(f"Invalid query kind {kind} in BATCH")
        values = [reader.read_value() for _ in range(reader.read_short())]
        statements.append((target, values))
    consistency = reader.read_consistency()
    flags = QueryFlag(reader.read_byte())
    if flags & QueryFlag.WITH_NAMES_FOR_VALUES:
        raise Invalid(_NAMED_VALUES_REFUSED)
    serial = reader.read_consistency() if flags & QueryFlag.WITH_SERIAL_CONSISTENCY else None
    timestamp = reader.read_long() if flags & QueryFlag.WITH_DEFAULT_TIMESTAMP else None
    options = QueryOptions(
        consistency=consistency, serial_consistency=serial, timestamp_us=timestamp
    )
    return BatchRequest(batch_type=batch_type, statements=statements, options=options)


def _decode_register(reader: BodyReader) -> Request:
    return RegisterRequest(event_types=reader.read_string_list())


def _read_query_parameters(reader: BodyReader) -> tuple[QueryOptions, bool]:
    consistency = reader.read_consistency()
    flags = QueryFlag(reader.read_byte())
    values: list[bytes | None] = []
    if flags & QueryFlag.VALUES:
        if flags & QueryFlag.WITH_NAMES_FOR_VALUES:
            raise Invalid(_NAMED_VALUES_REFUSED)
        values = [reader.read_value() for _ in range(reader.read_short())]
    page_size = reader.read_int() if flags & QueryFlag.PAGE_SIZE else None
    paging_state = reader.read_bytes() if flags & QueryFlag.WITH_PAGING_STATE else None
    serial = reader.read_consistency() if flags & QueryFlag.WITH_SERIAL_CONSISTENCY else None
    timestamp = reader.read_long() if flags & QueryFlag.WITH_DEFAULT_TIMESTAMP else None
    options = QueryOptions(
        consistency=consistency,
        values=values,
        page_size=page_size if page_size is not None and page_size > 0 else None,
        paging_state=paging_state,
        serial_consistency=serial,
        timestamp_us=timestamp,
    )
    return options, bool(flags & QueryFlag.SKIP_METADATA)


_REQUEST_DECODERS: Final[dict[int, Callable[[BodyReader], Request]]] = {
    Opcode.STARTUP: _decode_startup,
    Opcode.AUTH_RESPONSE: _decode_auth_response,
    Opcode.OPTIONS: _decode_options,
    Opcode.QUERY: _decode_query,
    Opcode.PREPARE: _decode_prepare,
    Opcode.EXECUTE: _decode_execute,
    Opcode.BATCH: _decode_batch,
    Opcode.REGISTER: _decode_register,
}


# --- type options -------------------------------------------------------------

# Simple CQL types by the `typename` of their cassandra.cqltypes class.
_SIMPLE_TYPE_IDS: Final = {
    "ascii": 0x0001,
    "bigint": 0x0002,
    "blob": 0x0003,
    "boolean": 0x0004,
    "counter": 0x0005,
    "decimal": 0x0006,
    "double": 0x0007,
    "float": 0x0008,
    "int": 0x0009,
    "timestamp": 0x000B,
    "uuid": 0x000C,
    "varchar": 0x000D,
    "text": 0x000D,
    "varint": 0x000E,
    "timeuuid": 0x000F,
    "inet": 0x0010,
    "date": 0x0011,
    "time": 0x0012,
    "smallint": 0x0013,
    "tinyint": 0x0014,
}
# v3 has no option ids for these; Cassandra sends them as custom class names there.
_V4_ONLY_TYPENAMES: Final = frozenset({"date", "time", "smallint", "tinyint"})
_CUSTOM, _LIST, _MAP, _SET, _UDT, _TUPLE = 0x0000, 0x0020, 0x0021, 0x0022, 0x0030, 0x0031
_MARSHAL_PREFIX: Final = "org.apache.cassandra.db.marshal."


@functools.lru_cache(maxsize=4096)
def encode_type_option(cql_type: Any, version: int = NEWEST_VERSION) -> bytes:
    """The [option] describing a `cassandra.cqltypes` class, nested types included.

    Cached per class: result metadata is encoded for every page. Bounded, because
    `apply_parameters` makes a new class each time an engine builds a nested type.
    """
    if issubclass(cql_type, (cqltypes.FrozenType, cqltypes.ReversedType)):
        # frozen<> and reversed order are not part of a wire type option
        return encode_type_option(cql_type.subtypes[0], version)
    if issubclass(cql_type, cqltypes.UserType):
        return _encode_udt_option(cql_type, version)
    if issubclass(cql_type, cqltypes.TupleType):
        inner = b"".join(encode_type_option(t, version) for t in cql_type.subtypes)
        return _SHORT.pack(_TUPLE) + _SHORT.pack(len(cql_type.subtypes)) + inner
    if issubclass(cql_type, cqltypes.MapType):
        key_type, value_type = cql_type.subtypes
        return (
            _SHORT.pack(_MAP)
            + encode_type_option(key_type, version)
            + encode_type_option(value_type, version)
        )
    if issubclass(cql_type, cqltypes.ListType):
        return _SHORT.pack(_LIST) + encode_type_option(cql_type.subtypes[0], version)
    if issubclass(cql_type, cqltypes.SetType):
        return _SHORT.pack(_SET) + encode_type_option(cql_type.subtypes[0], version)
    typename = getattr(cql_type, "typename", None)
    type_id = _SIMPLE_TYPE_IDS.get(typename) if isinstance(typename, str) else None
    if type_id is not None and not (version < 4 and typename in _V4_ONLY_TYPENAMES):
        return _SHORT.pack(type_id)
    # duration (v4 has no id for it) and anything else travel as a marshal class name
    return _SHORT.pack(_CUSTOM) + write_string(_custom_class_name(cql_type))


def _encode_udt_option(cql_type: Any, version: int) -> bytes:
    parts = [
        _SHORT.pack(_UDT),
        write_string(cql_type.keyspace),
        write_string(cql_type.typename),
        _SHORT.pack(len(cql_type.fieldnames)),
    ]
    for name, field_type in zip(cql_type.fieldnames, cql_type.subtypes, strict=True):
        parts.append(write_string(name))
        parts.append(encode_type_option(field_type, version))
    return b"".join(parts)


def _custom_class_name(cql_type: Any) -> str:
    name = str(cql_type.cass_parameterized_type(full=True))
    return name if "." in name else _MARSHAL_PREFIX + name


# --- responses ----------------------------------------------------------------


class ResultKind(enum.IntEnum):
    VOID = 0x0001
    ROWS = 0x0002
    SET_KEYSPACE = 0x0003
    PREPARED = 0x0004
    SCHEMA_CHANGE = 0x0005


class MetadataFlag(enum.IntFlag):
    GLOBAL_TABLES_SPEC = 0x0001
    HAS_MORE_PAGES = 0x0002
    NO_METADATA = 0x0004


def encode_ready() -> bytes:
    return b""


def encode_authenticate(authenticator: str) -> bytes:
    return write_string(authenticator)


def encode_auth_success(token: bytes | None = None) -> bytes:
    return write_bytes(token)


def encode_supported(options: dict[str, list[str]]) -> bytes:
    return write_string_multimap(options)


def encode_error(error: CqlError) -> bytes:
    """ERROR body: code, message, then what that code carries."""
    return _INT.pack(error.code) + write_string(error.message) + _error_extras(error)


def _error_extras(error: CqlError) -> bytes:
    if isinstance(error, Unavailable):
        return _SHORT.pack(error.consistency) + _INT.pack(error.required) + _INT.pack(error.alive)
    if isinstance(error, AlreadyExists):
        return write_string(error.keyspace) + write_string(error.table)
    if isinstance(error, Unprepared):
        return write_short_bytes(error.statement_id)
    return _generic_error_extras(error)


def _generic_error_extras(error: CqlError) -> bytes:
    """Extras for codes the seam has no class for, from attributes if the error has them.

    A driver reads these fields unconditionally, so they must be present even
    when an engine raises a bare `CqlError` with such a code.
    """

    def attr(name: str, default: Any) -> Any:
        return getattr(error, name, default)

    cl_received_blockfor = (
        _SHORT.pack(attr("consistency", 0))
        + _INT.pack(attr("received", 0))
        + _INT.pack(attr("block_for", 0))
    )
    code = error.code
    if code == 0x1100:  # write timeout
        return cl_received_blockfor + write_string(attr("write_type", "SIMPLE"))
    if code == 0x1200:  # read timeout
        return cl_received_blockfor + _BYTE.pack(int(bool(attr("data_present", False))))
    if code == 0x1300:  # read failure
        return (
            cl_received_blockfor
            + _INT.pack(attr("failures", 0))
            + _BYTE.pack(int(bool(attr("data_present", False))))
        )
    if code == 0x1400:  # function failure
        return (
            write_string(attr("keyspace", ""))
            + write_string(attr("function", ""))
            + write_string_list(list(attr("arg_types", [])))
        )
    if code == 0x1500:  # write failure
        return (
            cl_received_blockfor
            + _INT.pack(attr("failures", 0))
            + write_string(attr("write_type", "SIMPLE"))
        )
    return b""


def encode_result(
    result: Result, skip_metadata: bool = False, version: int = NEWEST_VERSION
) -> bytes:
    """RESULT body for what the engine returned from query/execute/batch."""
    if isinstance(result, Rows):
        return _INT.pack(ResultKind.ROWS) + encode_rows(result, skip_metadata, version)
    if isinstance(result, Void):
        return _INT.pack(ResultKind.VOID)
    if isinstance(result, SetKeyspace):
        return _INT.pack(ResultKind.SET_KEYSPACE) + write_string(result.keyspace)
    if isinstance(result, SchemaChange):
        return _INT.pack(ResultKind.SCHEMA_CHANGE) + _encode_schema_change(result)
    raise TypeError(f"Not an engine result: {result!r}")


def _encode_schema_change(change: SchemaChange) -> bytes:
    body = write_string(change.change_type) + write_string(change.target)
    body += write_string(change.keyspace)
    if change.target != "KEYSPACE":
        body += write_string(change.name or "")
    return body


def encode_rows(rows: Rows, skip_metadata: bool, version: int = NEWEST_VERSION) -> bytes:
    """Rows metadata, count and cells; the cells are copied, never re-serialised."""
    if not rows.columns:
        # cassandra-driver cannot decode a column-less Rows and would drop the connection
        raise ValueError("A Rows result needs at least one column")
    flags = MetadataFlag(0)
    if rows.paging_state is not None:
        flags |= MetadataFlag.HAS_MORE_PAGES
    column_count = len(rows.columns)
    head = [
        b"",  # flags, filled in below
        _INT.pack(column_count),
    ]
    if rows.paging_state is not None:
        head.append(write_bytes(rows.paging_state))
    if skip_metadata:
        flags |= MetadataFlag.NO_METADATA
    else:
        spec_flags, specs = _column_specs(rows.columns, version)
        flags |= spec_flags
        head.append(specs)
    head[0] = _INT.pack(flags)
    head.append(_INT.pack(len(rows.rows)))
    head.append(_encode_cells(rows.rows, column_count))
    return b"".join(head)


def _encode_cells(rows: list[list[bytes | None]], column_count: int) -> bytes:
    parts: list[bytes] = []
    append = parts.append
    pack_int = _INT.pack
    null = _NULL_BYTES
    for row in rows:
        if len(row) != column_count:
            raise ValueError(f"Row has {len(row)} cells, metadata says {column_count} columns")
        for cell in row:
            if cell is None:
                append(null)
            else:
                append(pack_int(len(cell)))
                append(cell)
    return b"".join(parts)


def _column_specs(columns: list[ColumnSpec], version: int) -> tuple[MetadataFlag, bytes]:
    """Column specs, with one global table spec when every column shares keyspace and table."""
    if columns and _share_one_table(columns):
        head = write_string(columns[0].keyspace) + write_string(columns[0].table)
        body = b"".join(
            write_string(c.name) + encode_type_option(c.cql_type, version) for c in columns
        )
        return MetadataFlag.GLOBAL_TABLES_SPEC, head + body
    body = b"".join(
        write_string(c.keyspace)
        + write_string(c.table)
        + write_string(c.name)
        + encode_type_option(c.cql_type, version)
        for c in columns
    )
    return MetadataFlag(0), body


def _share_one_table(columns: list[ColumnSpec]) -> bool:
    first = columns[0]
    return all(c.keyspace == first.keyspace and c.table == first.table for c in columns)


def encode_prepared(prepared: Prepared, version: int = NEWEST_VERSION) -> bytes:
    """RESULT body of kind Prepared: id, bind metadata (with pk indexes in v4), result metadata."""
    spec_flags, specs = _column_specs(prepared.bind_columns, version)
    parts = [
        _INT.pack(ResultKind.PREPARED),
        write_short_bytes(prepared.statement_id),
        _INT.pack(spec_flags),
        _INT.pack(len(prepared.bind_columns)),
    ]
    if version >= 4:
        parts.append(_INT.pack(len(prepared.pk_indexes)))
        parts.extend(_SHORT.pack(i) for i in prepared.pk_indexes)
    parts.append(specs)
    parts.append(_encode_result_metadata(prepared.result_columns, version))
    return b"".join(parts)


def _encode_result_metadata(columns: list[ColumnSpec] | None, version: int) -> bytes:
    if columns is None:
        return _INT.pack(MetadataFlag.NO_METADATA) + _INT.pack(0)
    spec_flags, specs = _column_specs(columns, version)
    return _INT.pack(spec_flags) + _INT.pack(len(columns)) + specs
