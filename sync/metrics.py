"""Counters of a running job, a Prometheus text exposition, and `/metrics` + `/healthz`.

The follower counts per shard what it read, applied, found stale (409: the
index already held something newer), dead-lettered, the gaps it met, and its
lag: now minus `createdAt` of the last record OpenSearch acknowledged. The
endpoint is stdlib `http.server` in a daemon thread; `/healthz` answers 200
while the job is healthy and 503 once it is not.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from sync.errors import ConfigError

COUNTERS = ("records_read", "applied", "stale", "dead_lettered", "gaps")

_HELP = {
    "records_read": "CDC records read from the shard",
    "applied": "changes OpenSearch applied",
    "stale": "changes OpenSearch rejected as older than what it holds (409)",
    "dead_lettered": "changes OpenSearch rejected for their content",
    "gaps": "gaps met: changes the index needed that the stream no longer holds",
}


@dataclass
class ShardCounters:
    records_read: int = 0
    applied: int = 0
    stale: int = 0
    dead_lettered: int = 0
    gaps: int = 0
    last_created_at_ms: int | None = None


class Metrics:
    """Thread-safe counters per shard."""

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self._lock = threading.Lock()
        self._shards: dict[str, ShardCounters] = {}
        self._clock = clock_ms or (lambda: time.time_ns() // 1_000_000)

    def add(self, shard: str, **increments: int) -> None:
        with self._lock:
            counters = self._shards.setdefault(shard, ShardCounters())
            for name, value in increments.items():
                if name not in COUNTERS:
                    raise KeyError(f"unknown counter {name}")
                setattr(counters, name, getattr(counters, name) + value)

    def applied_up_to(self, shard: str, created_at_ms: int | None) -> None:
        """The last record OpenSearch acknowledged on `shard` was created then."""
        if created_at_ms is None:
            return
        with self._lock:
            self._shards.setdefault(shard, ShardCounters()).last_created_at_ms = created_at_ms

    def snapshot(self) -> dict[str, ShardCounters]:
        with self._lock:
            return {k: ShardCounters(**vars(v)) for k, v in self._shards.items()}

    def total(self, name: str) -> int:
        return sum(getattr(c, name) for c in self.snapshot().values())

    def lag_ms(self, shard: str) -> int | None:
        last = self.snapshot().get(shard, ShardCounters()).last_created_at_ms
        return None if last is None else max(self._clock() - last, 0)

    def exposition(self) -> str:
        """The Prometheus text format (version 0.0.4)."""
        shards = self.snapshot()
        lines: list[str] = []
        for name in COUNTERS:
            metric = f"ks2os_follow_{name}_total"
            lines += [f"# HELP {metric} {_HELP[name]}", f"# TYPE {metric} counter"]
            lines += [
                f'{metric}{{shard="{_label(s)}"}} {getattr(c, name)}'
                for s, c in sorted(shards.items())
            ]
        metric = "ks2os_follow_lag_ms"
        lines += [
            f"# HELP {metric} now minus createdAt of the last applied record",
            f"# TYPE {metric} gauge",
        ]
        now = self._clock()
        for shard, c in sorted(shards.items()):
            if c.last_created_at_ms is not None:
                lines.append(
                    f'{metric}{{shard="{_label(shard)}"}} {max(now - c.last_created_at_ms, 0)}'
                )
        return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """Serves `/metrics` and `/healthz` on `port` (0: any free port) until `stop`.

    A port that cannot be listened on (in use, or privileged) is a
    `ConfigError` naming it and the setting, raised here, before the job runs.
    """

    def __init__(
        self, metrics: Metrics, port: int, healthy: Callable[[], bool], host: str = "0.0.0.0"
    ) -> None:
        try:
            self._server = _Server((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on port {port}: {exc.strerror or exc}",
                hint="free the port, or set follow.metrics_port (KS2OS_FOLLOW_METRICS_PORT) "
                "to another",
            ) from None
        self._server.metrics, self._server.healthy = metrics, healthy
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="ks2os-metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _Server(ThreadingHTTPServer):
    metrics: Metrics
    healthy: Callable[[], bool]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._answer(200, self.server.metrics.exposition(), "text/plain; version=0.0.4")
        elif self.path == "/healthz":
            ok = self.server.healthy()
            self._answer(200 if ok else 503, "ok\n" if ok else "unhealthy\n", "text/plain")
        else:
            self._answer(404, "not found\n", "text/plain")

    def _answer(self, status: int, body: str, content_type: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass  # scrapes every few seconds would flood the job's log
