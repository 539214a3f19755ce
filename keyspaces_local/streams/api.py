"""The Keyspaces Streams HTTP API (AWS JSON 1.0) and the emulator's control endpoints.

Streams requests are `POST /` with `X-Amz-Target: KeyspacesStreams.<Operation>`
and a JSON body, answered the way botocore's JSON protocol parser expects:
errors carry `__type` (botocore keeps what follows `#`), `message`, and for
ValidationException the model's `errorCode`; server faults are HTTP 500.
SigV4 signatures are accepted without checking.

Control requests are `POST /_control/<name>` with a JSON body (and
`GET /_control/health`, `GET /_control/streams`); see the README.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import orjson

from keyspaces_local.streams.errors import StreamsError, ValidationError
from keyspaces_local.streams.faults import Faults
from keyspaces_local.streams.store import StreamStore

if TYPE_CHECKING:  # the control module imports this package: no import cycle at run time
    from keyspaces_local.control import Control

log = logging.getLogger(__name__)

_ERROR_NAMESPACE = "com.amazonaws.cassandra.streams#"
_JSON_CONTENT = "application/x-amz-json-1.0"
_TARGET_PREFIX = "KeyspacesStreams."

JsonBody = dict[str, Any]


# --- request fields -------------------------------------------------------------------------


def _string(body: JsonBody, name: str, *, required: bool = False) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            raise ValidationError(f"Missing required field {name}")
        return None
    if not isinstance(value, str) or not value:
        raise ValidationError(f"{name} must be a non-empty string")
    return value


def _required(body: JsonBody, name: str) -> str:
    value = _string(body, name, required=True)
    assert value is not None
    return value


def _limit(body: JsonBody, name: str, default: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise ValidationError(f"{name} must be an integer from 1 to {high}")
    return value


# --- operations -----------------------------------------------------------------------------


class StreamsOperations:
    """One method per API operation: JSON body in, response bytes out."""

    def __init__(self, store: StreamStore) -> None:
        self.store = store

    def list_streams(self, body: JsonBody) -> bytes:
        streams, token = self.store.list_streams(
            _string(body, "keyspaceName"),
            _string(body, "tableName"),
            _limit(body, "maxResults", 100, 100),
            _string(body, "nextToken"),
        )
        out: JsonBody = {
            "streams": [
                {
                    "streamArn": s.arn,
                    "keyspaceName": s.keyspace,
                    "tableName": s.table,
                    "streamLabel": s.label,
                }
                for s in streams
            ]
        }
        if token is not None:
            out["nextToken"] = token
        return orjson.dumps(out)

    def get_stream(self, body: JsonBody) -> bytes:
        child_of = None
        shard_filter = body.get("shardFilter")
        if shard_filter is not None:
            if not isinstance(shard_filter, dict):
                raise ValidationError("shardFilter must be an object")
            if shard_filter.get("type", "CHILD_SHARDS") != "CHILD_SHARDS":
                raise ValidationError("shardFilter.type must be CHILD_SHARDS")
            child_of = _required(shard_filter, "shardId")
        return orjson.dumps(
            self.store.get_stream(
                _required(body, "streamArn"),
                _limit(body, "maxResults", 100, 100),
                _string(body, "nextToken"),
                child_of,
            )
        )

    def get_shard_iterator(self, body: JsonBody) -> bytes:
        iterator = self.store.get_shard_iterator(
            _required(body, "streamArn"),
            _required(body, "shardId"),
            _required(body, "shardIteratorType"),
            _string(body, "sequenceNumber"),
        )
        return orjson.dumps({"shardIterator": iterator})

    def get_records(self, body: JsonBody) -> bytes:
        page = self.store.get_records(
            _required(body, "shardIterator"), _limit(body, "maxResults", 100, 1000)
        )
        # Records were serialised when they were committed: only concatenate here.
        parts = [b'{"changeRecords":[', b",".join(page.payloads), b"],"]
        if page.next_iterator is not None:
            parts += [b'"nextShardIterator":', orjson.dumps(page.next_iterator), b","]
        position = b"AT_TIP" if page.at_tip else b"BEHIND_TIP"
        parts += [b'"iteratorDescription":{"iteratorPosition":"', position, b'"}}']
        return b"".join(parts)

    def dispatch(self) -> dict[str, Callable[[JsonBody], bytes]]:
        return {
            "ListStreams": self.list_streams,
            "GetStream": self.get_stream,
            "GetShardIterator": self.get_shard_iterator,
            "GetRecords": self.get_records,
        }


class ControlOperations:
    """The `/_control/<name>` endpoints over a `Control`."""

    def __init__(self, control: Control) -> None:
        self.control = control

    def split(self, body: JsonBody) -> JsonBody:
        parts = body.get("parts", 2)
        shard_ids = self.control.split_shard(
            _required(body, "streamArn"), _required(body, "shardId"), int(parts)
        )
        return {"shardIds": shard_ids}

    def merge(self, body: JsonBody) -> JsonBody:
        pair = body.get("shardIds")
        if not (
            isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) for s in pair)
        ):
            raise ValidationError("shardIds must be a list of two shard ids")
        return {"shardId": self.control.merge_shards(_required(body, "streamArn"), *pair)}

    def advance_clock(self, body: JsonBody) -> JsonBody:
        seconds = body.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ValidationError("seconds must be a non-negative number")
        return {"nowMs": self.control.advance_clock(float(seconds))}

    def faults(self, body: JsonBody) -> JsonBody:
        settings = self.control.set_faults(body)
        return {"faults": asdict(settings), "injected": self.control.faults.injected()}

    def sweep(self, body: JsonBody) -> JsonBody:
        return {"ttlRecords": self.control.sweep_expired()}

    def static_record_shape(self, body: JsonBody) -> JsonBody:
        return {"shape": self.control.set_static_record_shape(_required(body, "shape"))}

    def partition_delete_statics(self, body: JsonBody) -> JsonBody:
        recorded = body.get("recorded")
        if not isinstance(recorded, bool):
            raise ValidationError("recorded must be true or false")
        return {"recorded": self.control.set_partition_delete_statics(recorded)}

    def streams(self, body: JsonBody) -> JsonBody:
        return {"streams": self.control.streams()}

    def health(self, body: JsonBody) -> JsonBody:
        return {"ok": True, "nowMs": self.control.clock.now_ms()}

    def dispatch(self) -> dict[str, Callable[[JsonBody], JsonBody]]:
        return {
            "split": self.split,
            "merge": self.merge,
            "advance_clock": self.advance_clock,
            "faults": self.faults,
            "sweep": self.sweep,
            "static_record_shape": self.static_record_shape,
            "partition_delete_statics": self.partition_delete_statics,
            "streams": self.streams,
            "health": self.health,
        }


# --- HTTP -----------------------------------------------------------------------------------


def error_body(err: StreamsError) -> bytes:
    body: JsonBody = {"__type": _ERROR_NAMESPACE + err.type_name, "message": err.message}
    if isinstance(err, ValidationError):
        body["errorCode"] = err.code.value
    return orjson.dumps(body)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: boto3 reuses its connections
    # Headers and body go out in two writes; with Nagle on, the second waits ~40 ms
    # for the client's delayed ACK on every request.
    disable_nagle_algorithm = True
    server: StreamsHttpServer

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would drown test output

    def do_GET(self) -> None:
        if self.path.startswith("/_control/"):
            self._control(self.path[len("/_control/") :], {})
        else:
            self._send(404, b'{"message":"not found"}', "application/json")

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        if len(raw) < length:  # the client went away mid-request (a killed consumer)
            self.close_connection = True
            return
        try:
            body = orjson.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
        except ValueError as err:
            self._error(ValidationError(f"Malformed JSON body: {err}"))
            return
        if self.path.startswith("/_control/"):
            self._control(self.path[len("/_control/") :], body)
        else:
            self._streams(body)

    def _streams(self, body: JsonBody) -> None:
        target = self.headers.get("X-Amz-Target", "")
        operation = target[len(_TARGET_PREFIX) :] if target.startswith(_TARGET_PREFIX) else ""
        handler = self.server.operations.get(operation)
        if handler is None:
            payload = {"__type": "UnknownOperationException", "message": f"Unknown {target!r}"}
            self._send(400, orjson.dumps(payload), _JSON_CONTENT, "UnknownOperationException")
            return
        try:
            self.server.faults.before(operation)
            response = handler(body)
        except StreamsError as err:
            self._error(err)
            return
        except Exception as err:  # a bug must reach the client as a 500, not a dropped socket
            log.exception("%s failed", operation)
            self._error(StreamsError(f"{type(err).__name__}: {err}"))
            return
        self._send(200, response, _JSON_CONTENT)

    def _control(self, name: str, body: JsonBody) -> None:
        handler = self.server.control_ops.get(name.rstrip("/"))
        if handler is None:
            self._send(404, b'{"message":"unknown control operation"}', "application/json")
            return
        try:
            result = handler(body)
        except StreamsError as err:
            self._error(err)
            return
        except (ValueError, TypeError, KeyError) as err:
            self._error(ValidationError(str(err)))
            return
        except Exception as err:
            log.exception("control %s failed", name)
            self._error(StreamsError(f"{type(err).__name__}: {err}"))
            return
        self._send(200, orjson.dumps(result), "application/json")

    def _error(self, err: StreamsError) -> None:
        self._send(err.status, error_body(err), _JSON_CONTENT, err.type_name)

    def _send(self, status: int, body: bytes, content_type: str, error_type: str = "") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-amzn-RequestId", str(uuid.uuid4()))
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.end_headers()
        self.wfile.write(body)


class StreamsHttpServer(ThreadingHTTPServer):
    """The HTTP server; `StreamsApi` runs it in a thread."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        operations: dict[str, Callable[[JsonBody], bytes]],
        control_ops: dict[str, Callable[[JsonBody], JsonBody]],
        faults: Faults,
    ) -> None:
        super().__init__(address, _Handler)
        self.operations = operations
        self.control_ops = control_ops
        self.faults = faults
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that vanished (killed, timed out) is routine; anything else is logged."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError):
            log.debug("client %s went away: %s", client_address, error)
            return
        log.exception("request from %s failed", client_address)

    def track(self, connection: socket.socket, *, add: bool) -> None:
        with self._connections_lock:
            if add:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def close_connections(self) -> None:
        """End kept-alive connections so a stopped server stops answering on them too."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already closed by the client
                connection.shutdown(socket.SHUT_RDWR)


class StreamsApi:
    """The Streams API (and control endpoints) served from a background thread."""

    def __init__(
        self, store: StreamStore, control: Control, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._server = StreamsHttpServer(
            (host, port),
            StreamsOperations(store).dispatch(),
            ControlOperations(control).dispatch(),
            control.faults,
        )
        self.host = host
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # how long stop() waits for the loop to notice
            name="keyspaces-streams-http",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> StreamsApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.close_connections()
        self._server.server_close()
        if self._thread.ident is not None:
            self._thread.join()
