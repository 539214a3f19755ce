"""The emulator as a whole: one clock, the streams store, the CQL engine and both servers.

`Emulator.start()` wires `Clock` -> `StreamStore` (the engine's change sink)
-> `CqlEngine` -> `CqlServer`, starts the Streams HTTP API (with the control
endpoints) and a background thread that runs the engine's TTL sweep, all in
this process::

    with Emulator.start() as emu:
        cluster = Cluster(["127.0.0.1"], port=emu.cql_port)
        streams = boto3.client("keyspacesstreams", endpoint_url=emu.streams_url, ...)

`EmulatorProcess` runs the same thing as a subprocess (`python -m keyspaces_local`)
and reads the JSON line it prints once ready.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from keyspaces_local.clock import Clock
from keyspaces_local.control import Control
from keyspaces_local.partitioners import MURMUR3
from keyspaces_local.streams.api import StreamsApi
from keyspaces_local.streams.faults import Faults, FaultSettings
from keyspaces_local.streams.store import StreamStore

log = logging.getLogger(__name__)

SWEEP_INTERVAL_S = 0.1


class _Sweeper:
    """Calls the engine's TTL sweep every ~100 ms until stopped."""

    def __init__(self, engine: Any, interval_s: float = SWEEP_INTERVAL_S) -> None:
        self._engine = engine
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keyspaces-ttl-sweep", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self._engine.sweep_expired()
            except Exception:  # a failed sweep must not end expiry for the rest of the run
                log.exception("TTL sweep failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join()


class Emulator:
    """A running keyspaces_local: CQL on `cql_port`, Streams API at `streams_url`."""

    def __init__(
        self,
        host: str,
        clock: Clock,
        store: StreamStore,
        engine: Any,
        cql_server: Any,
        streams_api: StreamsApi,
        control: Control,
        sweeper: _Sweeper,
    ) -> None:
        self.host = host
        self.clock = clock
        self.store = store
        self.engine = engine
        self.control = control
        self._cql_server = cql_server
        self._streams_api = streams_api
        self._sweeper = sweeper
        self._stopped = False

    @classmethod
    def start(
        cls,
        host: str = "127.0.0.1",
        cql_port: int = 0,
        streams_port: int = 0,
        *,
        shard_count: int = 4,
        retention_s: float = 86400,
        iterator_lifetime_s: float = 900,
        ttl_record_delay_s: float = 5.0,
        empty_page_rate: float = 0.0,
        faults: FaultSettings | Mapping[str, Any] | None = None,
        credentials: Mapping[str, str] | None = None,
        static_record_shape: str = "all",
        partitioner: str = MURMUR3,
    ) -> Emulator:
        """Start everything in this process (threads); ports 0 pick free ones."""
        from keyspaces_local.cql.engine import CqlEngine
        from keyspaces_local.cql.server import CqlServer

        clock = Clock()
        fault_state = Faults(faults)
        store = StreamStore(
            clock,
            shard_count=shard_count,
            retention_s=retention_s,
            iterator_lifetime_s=iterator_lifetime_s,
            faults=fault_state,
            static_record_shape=static_record_shape,
        )
        engine = CqlEngine(
            clock,
            store,
            host=host,
            ttl_record_delay_s=ttl_record_delay_s,
            empty_page_rate=empty_page_rate,
            partitioner=partitioner,
        )
        control = Control(store, clock, fault_state, sweep=engine.sweep_expired)
        cql_server = CqlServer(
            engine, host=host, port=cql_port, credentials=dict(credentials) if credentials else None
        )
        streams_api = StreamsApi(store, control, host=host, port=streams_port)
        sweeper = _Sweeper(engine)
        emulator = cls(host, clock, store, engine, cql_server, streams_api, control, sweeper)
        try:
            cql_server.start()
            streams_api.start()
            sweeper.start()
        except BaseException:
            emulator.stop()
            raise
        return emulator

    @property
    def cql_port(self) -> int:
        return int(self._cql_server.port)

    @property
    def streams_url(self) -> str:
        return self._streams_api.url

    @property
    def control_url(self) -> str:
        return self._streams_api.url + "/_control"

    def stop(self) -> None:
        """Stop the sweep and both servers; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._sweeper.stop()
        self._streams_api.stop()
        self._cql_server.stop()

    def __enter__(self) -> Emulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class EmulatorProcess:
    """`python -m keyspaces_local` as a child process, started and stopped from Python."""

    def __init__(self, process: subprocess.Popen[bytes], ready: Mapping[str, Any]) -> None:
        self.process = process
        self.cql_host = str(ready["cql_host"])
        self.cql_port = int(ready["cql_port"])
        self.streams_url = str(ready["streams_url"])
        self.control_url = str(ready["control_url"])

    @classmethod
    def start(
        cls,
        host: str = "127.0.0.1",
        cql_port: int = 0,
        streams_port: int = 0,
        *,
        shard_count: int | None = None,
        retention_s: float | None = None,
        iterator_lifetime_s: float | None = None,
        ttl_record_delay_s: float | None = None,
        empty_page_rate: float | None = None,
        throttle_rate: float | None = None,
        internal_error_rate: float | None = None,
        max_readers_per_shard: int | None = None,
        credentials: Mapping[str, str] | None = None,
        static_record_shape: str | None = None,
        partitioner: str | None = None,
        ready_timeout_s: float = 60.0,
    ) -> EmulatorProcess:
        """Start the child and wait for its ready line; options left None keep the CLI defaults."""
        argv = [sys.executable, "-m", "keyspaces_local", "--host", host]
        argv += ["--cql-port", str(cql_port), "--streams-port", str(streams_port)]
        for flag, value in (
            ("--shards", shard_count),
            ("--retention-seconds", retention_s),
            ("--iterator-lifetime-seconds", iterator_lifetime_s),
            ("--ttl-record-delay-seconds", ttl_record_delay_s),
            ("--empty-page-rate", empty_page_rate),
            ("--throttle-rate", throttle_rate),
            ("--internal-error-rate", internal_error_rate),
            ("--max-readers-per-shard", max_readers_per_shard),
            ("--static-record-shape", static_record_shape),
            ("--partitioner", partitioner),
        ):
            if value is not None:
                argv += [flag, str(value)]
        if credentials:
            if len(credentials) != 1:
                raise ValueError("the command line takes exactly one username and password")
            ((user, password),) = credentials.items()
            argv += ["--username", user, "--password", password]
        process = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            return cls(process, _read_ready_line(process, ready_timeout_s))
        except BaseException:
            process.kill()
            process.wait()
            raise

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, wait for the exit (SIGKILL after `timeout_s`); returns the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return int(self.process.returncode)

    def __enter__(self) -> EmulatorProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _read_ready_line(process: subprocess.Popen[bytes], timeout_s: float) -> dict[str, Any]:
    """The child's one JSON line, read without blocking past the deadline."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout_s
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"keyspaces_local printed no ready line within {timeout_s} s")
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"keyspaces_local exited with status {process.wait()} before ready")
        line += chunk
    ready = json.loads(line)
    if not isinstance(ready, dict):
        raise RuntimeError(f"unexpected ready line: {line!r}")
    return ready
