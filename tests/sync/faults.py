"""Fault injection by wrapping a real server's HTTP: a proxy that refuses or goes away.

Neither client is mocked: the real opensearch-py (or boto3) talks HTTP to
this proxy, which forwards to the real osmem-server (or the emulator's
Streams API) unless told to refuse.

- `refuse_requests`: that many bulk requests are answered 429 as a whole;
- `refuse_any`: that many requests of any kind are answered with
  `refuse_status` (503 by default), as a struggling cluster answers;
- `refuse_items`: per document id, the statuses to answer that item with,
  one per bulk request it comes in (the item is then not forwarded);
- `hold_index`: bulk requests to that index are answered 503 as a whole
  while it is set (`held` counts them), as an index whose shards are
  unavailable answers, while every other index is written;
- `bulk_ids`: the document ids of every bulk request, in order (None for an
  action without an id);
- `cut()`: stop listening, so every new connection is refused (an endpoint
  that became unreachable); `restore()`: listen again on the same port;
- `chaos`: `RandomFaults`, shares of requests that at random get a 429 (bulk
  requests), a 503, a reset connection (before forwarding, or after: the
  server did the work but the client never hears it) or a delay; `injected`
  counts what was served, by kind (`scripts/chaos.py` runs on them).
"""

from __future__ import annotations

import http.client
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Headers that belong to one hop, not to the request forwarded.
_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive"})


@dataclass
class RandomFaults:
    """Shares (0-1) of requests the proxy spoils at random, drawn once per request."""

    bulk_429: float = 0.0  # a bulk request refused as a whole: 429, as a full queue answers
    status_503: float = 0.0  # any request answered 503
    reset_before: float = 0.0  # the connection reset before the request is forwarded
    reset_after: float = 0.0  # forwarded, then reset: done upstream, the answer lost
    delay: float = 0.0  # a pause of up to `max_delay_s` before forwarding
    max_delay_s: float = 0.5

    def draw(self, rng: random.Random, is_bulk: bool) -> str | None:
        """The fault for one request, or None."""
        roll = rng.random()
        for kind, share in (
            ("bulk_429", self.bulk_429 if is_bulk else 0.0),
            ("status_503", self.status_503),
            ("reset_before", self.reset_before),
            ("reset_after", self.reset_after),
            ("delay", self.delay),
        ):
            if roll < share:
                return kind
            roll -= share
        return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a connection reset on purpose is no error worth a traceback


class HttpProxy:
    """A tiny HTTP proxy in front of `upstream`; see the module docstring."""

    def __init__(self, upstream: str, seed: int | None = None) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname or "127.0.0.1", target.port or 80)
        self.refuse_requests = 0
        self.refuse_any = 0
        self.refuse_status = 503
        self.refused_any = 0
        self.refuse_items: dict[str, list[int]] = {}
        self.bulk_ids: list[list[str | None]] = []
        self.hold_index: str | None = None
        self.held = 0
        self.requests = 0
        self.chaos = RandomFaults()
        self.injected: Counter[str] = Counter()
        self._rng = random.Random(seed)
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                is_bulk = self.path.split("?")[0].endswith("/_bulk")
                with proxy.lock:
                    proxy.requests += 1
                    refuse = proxy.refuse_any > 0
                    if refuse:
                        proxy.refuse_any -= 1
                        proxy.refused_any += 1
                    fault = proxy.chaos.draw(proxy._rng, is_bulk)
                    delay_s = proxy._rng.uniform(0, proxy.chaos.max_delay_s)
                    if fault is not None:
                        proxy.injected[fault] += 1
                if fault == "reset_before":
                    self.reset()
                    return
                if fault == "delay":
                    time.sleep(delay_s)  # the fault itself: a slow cluster
                if refuse or fault == "status_503":
                    error = {"error": {"type": "injected", "reason": "refused"}}
                    status = 503 if fault == "status_503" else proxy.refuse_status
                    payload = json.dumps(error).encode()
                elif fault == "bulk_429":
                    error = {"error": {"type": "rejected_execution_exception"}, "status": 429}
                    status, payload = 429, json.dumps(error).encode()
                elif is_bulk:
                    status, payload = proxy.bulk(self.path, body, headers)
                else:
                    status, payload = proxy.forward(self.command, self.path, body, headers)
                if fault == "reset_after":
                    self.reset()
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def reset(self) -> None:
                """Close with SO_LINGER 0: the client gets a TCP reset, not an answer."""
                self.close_connection = True
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_any

        self._handler = Handler
        self._listen(0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _listen(self, port: int) -> None:
        self.server = _Server(("127.0.0.1", port), self._handler)
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()
        self._open = True

    def restore(self) -> None:
        """Listen again, on the same port, after `cut`."""
        if not self._open:
            self._listen(int(self.url.rsplit(":", 1)[1]))

    def cut(self) -> None:
        """Stop listening: from now on every connection attempt is refused."""
        if self._open:
            self._open = False
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()

    close = cut

    def forward(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def bulk(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        pairs = _actions(body)
        ids: list[str | None] = [_doc_id(meta) for meta, _ in pairs]
        with self.lock:
            self.bulk_ids.append(ids)
            if self.hold_index is not None and path.startswith(f"/{self.hold_index}/"):
                self.held += 1
                error = {"error": {"type": "unavailable_shards_exception"}, "status": 503}
                return 503, json.dumps(error).encode()
            if self.refuse_requests > 0:
                self.refuse_requests -= 1
                error = {"error": {"type": "rejected_execution_exception"}, "status": 429}
                return 429, json.dumps(error).encode()
            refused: dict[str, int] = {}
            for doc_id in ids:
                statuses = self.refuse_items.get(doc_id or "")
                if doc_id is not None and statuses:
                    refused[doc_id] = statuses.pop(0)
        forwarded = [pair for pair, doc_id in zip(pairs, ids, strict=True) if doc_id not in refused]
        upstream_items: Iterator[Any] = iter([])
        if forwarded:
            status, payload = self.forward(
                "POST",
                path,
                b"".join(meta + b"\n" + doc for meta, doc in forwarded),
                headers,
            )
            assert status == 200, payload
            upstream_items = iter(json.loads(payload)["items"])
        items = []
        for doc_id in ids:
            if doc_id is not None and doc_id in refused:
                error = {"type": "injected", "reason": f"refused {doc_id} by the test proxy"}
                items.append({"index": {"_id": doc_id, "status": refused[doc_id], "error": error}})
            else:
                items.append(next(upstream_items))
        return 200, json.dumps({"errors": True, "items": items}).encode()


def _actions(body: bytes) -> list[tuple[bytes, bytes]]:
    """A bulk body's actions: each metadata line and its document line (with its newline;
    empty for a delete, which has none)."""
    lines = [line for line in body.splitlines() if line.strip()]
    actions: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(lines):
        meta = lines[i]
        if "delete" in json.loads(meta):
            actions.append((meta, b""))
            i += 1
        else:
            actions.append((meta, lines[i + 1] + b"\n"))
            i += 2
    return actions


def _doc_id(meta: bytes) -> str | None:
    """The `_id` of a bulk metadata line (`{"index": {...}}` or `{"create": {...}}`)."""
    action: dict[str, Any] = next(iter(json.loads(meta).values()))
    return action.get("_id")
