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
  that became unreachable); `restore()`: listen again on the same port.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

# Headers that belong to one hop, not to the request forwarded.
_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive"})


class HttpProxy:
    """A tiny HTTP proxy in front of `upstream`; see the module docstring."""

    def __init__(self, upstream: str) -> None:
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
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                with proxy.lock:
                    proxy.requests += 1
                    refuse = proxy.refuse_any > 0
                    if refuse:
                        proxy.refuse_any -= 1
                        proxy.refused_any += 1
                if refuse:
                    error = {"error": {"type": "injected", "reason": "refused"}}
                    status, payload = proxy.refuse_status, json.dumps(error).encode()
                elif self.path.split("?")[0].endswith("/_bulk"):
                    status, payload = proxy.bulk(self.path, body, headers)
                else:
                    status, payload = proxy.forward(self.command, self.path, body, headers)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_any

        self._handler = Handler
        self._listen(0)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _listen(self, port: int) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", port), self._handler)
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
        lines = body.splitlines()
        pairs = [(lines[i], lines[i + 1]) for i in range(0, len(lines), 2)]
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
                b"".join(meta + b"\n" + doc + b"\n" for meta, doc in forwarded),
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


def _doc_id(meta: bytes) -> str | None:
    """The `_id` of a bulk metadata line (`{"index": {...}}` or `{"create": {...}}`)."""
    action: dict[str, Any] = next(iter(json.loads(meta).values()))
    return action.get("_id")
