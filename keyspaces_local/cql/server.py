"""The TCP server that `cassandra-driver` connects to: CQL native protocol v4 over an `Engine`.

One thread accepts; one thread per connection reads a frame, answers it and
reads the next. The driver multiplexes requests on a connection by stream id
and matches answers by it, so answering in order is correct; each answer goes
out with one `sendall`. The engine is called from several connection threads
at once and must be thread-safe.

Run it with an engine::

    from keyspaces_local.cql.server import CqlServer

    with CqlServer(engine, host="127.0.0.1", port=9042,
                   credentials={"alice": "secret"}) as server:
        cluster = Cluster(["127.0.0.1"], port=server.port,
                          auth_provider=PlainTextAuthProvider("alice", "secret"))
        ...

`port=0` picks a free port; `server.port` holds the real one after `start()`.
Without `credentials` no authentication is asked for.

Protocol version negotiation works like Cassandra's: a frame of a version we
do not speak (the driver opens with v5 or a DSE version) is answered with a
protocol error "Invalid or unsupported protocol version" in a v4 frame and the
connection is closed; the driver then reconnects one version lower until it
reaches v4.
"""

from __future__ import annotations

import contextlib
import enum
import io
import logging
import socket
import threading
from types import TracebackType
from typing import Final, cast

from keyspaces_local.cql import protocol
from keyspaces_local.cql.api import CqlError, Engine, ProtocolError, SetKeyspace
from keyspaces_local.cql.auth import PasswordAuthenticator
from keyspaces_local.cql.protocol import (
    BatchRequest,
    ExecuteRequest,
    FrameHeader,
    Opcode,
    OptionsRequest,
    PrepareRequest,
    QueryRequest,
    RegisterRequest,
    Request,
    StartupRequest,
)

log = logging.getLogger(__name__)

SUPPORTED_OPTIONS: Final = {
    "CQL_VERSION": ["3.4.4"],
    "COMPRESSION": [],
    "PROTOCOL_VERSIONS": ["3/v3", "4/v4"],
}
_READ_BUFFER: Final = 256 * 1024
_JOIN_TIMEOUT_S: Final = 5.0
_DRAIN_TIMEOUT_S: Final = 2.0


class CqlServer:
    """Listens for CQL clients and serves each connection on its own thread."""

    def __init__(
        self,
        engine: Engine,
        host: str = "127.0.0.1",
        port: int = 0,
        credentials: dict[str, str] | None = None,
    ) -> None:
        self.engine = engine
        self.host = host
        self.port = port
        self._authenticator = (
            PasswordAuthenticator(credentials) if credentials is not None else None
        )
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._connections: dict[_Connection, threading.Thread] = {}
        self._stopping = threading.Event()

    def start(self) -> None:
        """Bind and start accepting; `port` is the bound port afterwards."""
        listener = socket.create_server((self.host, self.port), reuse_port=False, backlog=128)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"cql-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()
        log.info("CQL server listening on %s:%d", self.host, self.port)

    def stop(self) -> None:
        """Close the listener and every connection, and wait for their threads."""
        self._stopping.set()
        if self._listener is not None:
            _shutdown_quietly(self._listener)
            self._listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(_JOIN_TIMEOUT_S)
        with self._lock:
            connections = list(self._connections.items())
        for connection, _ in connections:
            connection.close()
        for _, thread in connections:
            thread.join(_JOIN_TIMEOUT_S)

    def __enter__(self) -> CqlServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def connection_count(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._connections)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, peer = self._listener.accept()
            except OSError:
                break  # listener closed by stop()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            connection = _Connection(sock, self.engine, self._authenticator)
            thread = threading.Thread(
                target=self._serve, args=(connection,), name=f"cql-conn-{peer}", daemon=True
            )
            with self._lock:
                if self._stopping.is_set():
                    connection.close()
                    break
                self._connections[connection] = thread
            thread.start()

    def _serve(self, connection: _Connection) -> None:
        try:
            connection.serve()
        finally:
            with self._lock:
                self._connections.pop(connection, None)


class _State(enum.Enum):
    UNINITIALIZED = "uninitialized"  # before STARTUP
    AUTHENTICATING = "authenticating"  # AUTHENTICATE sent, waiting for credentials
    READY = "ready"


class _CloseConnection(Exception):
    """A request whose answer must be the last frame on this connection."""

    def __init__(self, last_frame: bytes) -> None:
        super().__init__("closing the connection after a protocol error")
        self.last_frame = last_frame


class _Connection:
    """One client connection: its negotiated version, login state and current keyspace."""

    def __init__(
        self, sock: socket.socket, engine: Engine, authenticator: PasswordAuthenticator | None
    ) -> None:
        self._sock = sock
        self._engine = engine
        self._authenticator = authenticator
        self._version: int | None = None
        self._state = _State.UNINITIALIZED
        self._keyspace: str | None = None
        self._closed = threading.Event()

    def close(self) -> None:
        """Wake the serving thread (if blocked in recv) and let it close the socket."""
        if not self._closed.is_set():
            _shutdown_quietly(self._sock)

    def serve(self) -> None:
        # typeshed types a buffered makefile() as a bare IOBase
        reader = cast(io.BufferedReader, self._sock.makefile("rb", buffering=_READ_BUFFER))
        try:
            while True:
                frame = _read_frame(reader)
                if frame is None:
                    return
                header, body = frame
                self._sock.sendall(self._answer(header, body))
        except _CloseConnection as closing:
            with contextlib.suppress(OSError):
                self._sock.sendall(closing.last_frame)
                self._sock.shutdown(socket.SHUT_WR)  # the answer reaches the client before FIN
                self._drain(reader)
        except (ConnectionError, OSError) as exc:
            log.debug("CQL connection ended: %s", exc)
        finally:
            self._closed.set()
            reader.close()
            self._sock.close()

    def _drain(self, reader: io.BufferedReader) -> None:
        """Read until the client hangs up, for a bounded time.

        Closing a socket with unread input sends a reset, and a reset can destroy
        the last error frame before the client has read it.
        """
        self._sock.settimeout(_DRAIN_TIMEOUT_S)
        while reader.read1(65536):
            pass

    def _answer(self, header: FrameHeader, body: bytes) -> bytes:
        """The response frame for one request frame."""
        version_error = self._check_version(header)
        if version_error is not None:
            raise _CloseConnection(
                protocol.encode_frame(
                    self._version or protocol.NEWEST_VERSION,
                    header.stream,
                    Opcode.ERROR,
                    protocol.encode_error(version_error),
                )
            )
        if self._version is None:
            self._version = header.version
        try:
            request = protocol.decode_request(header.opcode, header.flags, body)
            opcode, response = self._handle(request)
        except CqlError as exc:
            opcode, response = Opcode.ERROR, protocol.encode_error(exc)
        except Exception as exc:
            log.exception("CQL request failed inside the server (opcode 0x%02X)", header.opcode)
            opcode = Opcode.ERROR
            response = protocol.encode_error(CqlError(f"{type(exc).__name__}: {exc}"))
        return protocol.encode_frame(self._version, header.stream, opcode, response)

    def _check_version(self, header: FrameHeader) -> ProtocolError | None:
        if header.version not in protocol.SUPPORTED_VERSIONS:
            return ProtocolError(
                f"Invalid or unsupported protocol version ({header.version}); "
                f"supported versions are {protocol.SUPPORTED_VERSIONS}"
            )
        if header.is_response:
            return ProtocolError("Received a response frame where a request was expected")
        if self._version is not None and header.version != self._version:
            return ProtocolError(
                f"Invalid message version. Got {header.version} but previous messages "
                f"on this connection had version {self._version}"
            )
        return None

    def _handle(self, request: Request) -> tuple[Opcode, bytes]:
        if isinstance(request, OptionsRequest):
            return Opcode.SUPPORTED, protocol.encode_supported(SUPPORTED_OPTIONS)
        if isinstance(request, StartupRequest):
            return self._startup(request)
        if isinstance(request, protocol.AuthResponseRequest):
            return self._authenticate(request)
        self._require_ready(request)
        version = self._version or protocol.NEWEST_VERSION
        if isinstance(request, RegisterRequest):
            return Opcode.READY, protocol.encode_ready()  # events are never pushed
        if isinstance(request, PrepareRequest):
            prepared = self._engine.prepare(request.cql, self._keyspace)
            return Opcode.RESULT, protocol.encode_prepared(prepared, version)
        if isinstance(request, QueryRequest):
            result = self._engine.query(request.cql, request.options, self._keyspace)
            skip_metadata = request.skip_metadata
        elif isinstance(request, ExecuteRequest):
            result = self._engine.execute(request.statement_id, request.options, self._keyspace)
            skip_metadata = request.skip_metadata
        elif isinstance(request, BatchRequest):
            result = self._engine.batch(
                request.batch_type, request.statements, request.options, self._keyspace
            )
            skip_metadata = False
        else:
            raise ProtocolError(f"Unexpected request {type(request).__name__}")
        if isinstance(result, SetKeyspace):
            self._keyspace = result.keyspace
        return Opcode.RESULT, protocol.encode_result(result, skip_metadata, version)

    def _startup(self, request: StartupRequest) -> tuple[Opcode, bytes]:
        if self._state is not _State.UNINITIALIZED:
            raise ProtocolError("Unexpected message STARTUP, the connection is already initialized")
        compression = request.options.get("COMPRESSION")
        if compression:
            raise ProtocolError(f"Unknown compression algorithm: {compression}")
        if self._authenticator is None:
            self._state = _State.READY
            return Opcode.READY, protocol.encode_ready()
        self._state = _State.AUTHENTICATING
        return Opcode.AUTHENTICATE, protocol.encode_authenticate(self._authenticator.name)

    def _authenticate(self, request: protocol.AuthResponseRequest) -> tuple[Opcode, bytes]:
        if self._state is not _State.AUTHENTICATING or self._authenticator is None:
            raise ProtocolError("Unexpected message AUTH_RESPONSE, no authentication was asked for")
        self._authenticator.authenticate(request.token)
        self._state = _State.READY
        return Opcode.AUTH_SUCCESS, protocol.encode_auth_success(None)

    def _require_ready(self, request: Request) -> None:
        if self._state is _State.READY:
            return
        name = type(request).__name__.removesuffix("Request").upper()
        expecting = "STARTUP or OPTIONS" if self._state is _State.UNINITIALIZED else "AUTH_RESPONSE"
        raise ProtocolError(f"Unexpected message {name}, expecting {expecting}")


def _read_frame(reader: io.BufferedReader) -> tuple[FrameHeader, bytes] | None:
    """The next frame, or None at end of stream. A frame too large to skip ends the connection."""
    raw = reader.read(protocol.HEADER_LENGTH)
    if len(raw) < protocol.HEADER_LENGTH:
        return None
    header = protocol.decode_header(raw)
    if header.length < 0 or header.length > protocol.MAX_BODY_LENGTH:
        log.warning("Closing CQL connection: frame body length %d is out of range", header.length)
        return None
    body = reader.read(header.length) if header.length else b""
    if len(body) < header.length:
        return None
    return header, body


def _shutdown_quietly(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed or never connected
        sock.shutdown(socket.SHUT_RDWR)
