"""Dead letters: changes OpenSearch refused for their content, kept with the reason.

Bad input never stops the stream and is never lost silently: the writer puts
each refused change here (durably, before it reports the batch done) and the
count is visible. The follower puts here, raw, the stream records that never
became a change (undecodable, or their row lookup failed for good), before
its checkpoint passes them. Two stores: an OpenSearch index (default
`<alias>-deadletter`) and an NDJSON file, one line per entry.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from opensearchpy import OpenSearch

from sync.documents import json_safe
from sync.errors import TransientError
from sync.model import Change, Provenance, ScanPosition


@dataclass(frozen=True)
class DeadLetter:
    """One refused change (or a raw stream record that never became one), why, and when.

    A change entry has `change` and `doc_id`; a record entry has `record` (the
    stream record as read) and `position` (where it was read) instead.
    """

    change: Change | None
    doc_id: str | None
    reason: str  # OpenSearch's error type and reason, or why the record could not be used
    at_ms: int = field(default_factory=lambda: int(time.time() * 1000))
    record: Mapping[str, Any] | None = None
    position: Provenance | None = None

    def __post_init__(self) -> None:
        if (self.change is None) == (self.record is None):
            raise ValueError("a dead letter holds either a change or a raw record")

    @classmethod
    def for_record(cls, record: Mapping[str, Any], position: Provenance, reason: str) -> DeadLetter:
        """An entry for a stream record that could not become a change."""
        return cls(None, None, reason, record=record, position=position)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe record of the entry."""
        change = self.change
        if change is None:
            assert self.record is not None and self.position is not None
            return {
                "doc_id": None,
                "reason": self.reason,
                "at": self.at_ms,
                "op": None,
                "record": json_safe(dict(self.record)),
                "source": _provenance(self.position),
            }
        return {
            "doc_id": self.doc_id,
            "reason": self.reason,
            "at": self.at_ms,
            "op": change.op.value,
            "version": change.version,
            "key": json_safe(list(change.key)),
            "image": None if change.image is None else json_safe(dict(change.image)),
            "static_only": change.static_only,
            "expires_at": change.expires_at_ms,
            "source": _provenance(change.source),
        }


def _provenance(source: Provenance) -> dict[str, Any]:
    if isinstance(source, ScanPosition):
        return {
            "kind": "scan",
            "token_start": source.token_start,
            "token_end": source.token_end,
            "read_at_ms": source.read_at_ms,
        }
    return {
        "kind": "stream",
        "stream_arn": source.stream_arn,
        "shard_id": source.shard_id,
        "sequence_number": source.sequence_number,
        "created_at_ms": source.created_at_ms,
        "origin": source.origin,
    }


class DeadLetterStore(Protocol):
    """Where refused changes go; `put` returns only once they are stored."""

    def put(self, entries: Sequence[DeadLetter]) -> None: ...

    @property
    def count(self) -> int: ...


class FileDeadLetters:
    """NDJSON file, one entry per line, appended and fsynced on every `put`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._count = self._existing_lines()

    def _existing_lines(self) -> int:
        try:
            with open(self.path, "rb") as handle:
                return sum(1 for _ in handle)
        except FileNotFoundError:
            return 0

    def put(self, entries: Sequence[DeadLetter]) -> None:
        if not entries:
            return
        data = b"".join(orjson.dumps(entry.to_json()) + b"\n" for entry in entries)
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            self._count += len(entries)

    @property
    def count(self) -> int:
        return self._count


DEADLETTER_MAPPING: dict[str, Any] = {
    # Images differ from table to table and may be what OpenSearch refused:
    # keep them in _source only, never map them.
    "dynamic": False,
    "properties": {
        "doc_id": {"type": "keyword"},
        "reason": {"type": "text"},
        "at": {"type": "date", "format": "epoch_millis"},
        "op": {"type": "keyword"},
        "version": {"type": "long"},
    },
}


class IndexDeadLetters:
    """An OpenSearch index (created on first use), written with refresh=wait_for."""

    def __init__(self, client: OpenSearch, index_name: str) -> None:
        self.client = client
        self.index_name = index_name
        self._ready = False
        self._lock = threading.Lock()

    @classmethod
    def for_alias(cls, client: OpenSearch, alias: str) -> IndexDeadLetters:
        return cls(client, f"{alias}-deadletter")

    def _ensure_index(self) -> None:
        with self._lock:
            if self._ready:
                return
            if not self.client.indices.exists(index=self.index_name):
                self.client.indices.create(
                    index=self.index_name, body={"mappings": DEADLETTER_MAPPING}
                )
            self._ready = True

    def put(self, entries: Sequence[DeadLetter]) -> None:
        if not entries:
            return
        self._ensure_index()
        body = b"".join(
            b'{"index":{}}\n' + orjson.dumps(entry.to_json()) + b"\n" for entry in entries
        )
        response = self.client.bulk(
            index=self.index_name, body=body, params={"refresh": "wait_for"}
        )
        if response.get("errors"):
            failed = [
                item["index"].get("error")
                for item in response["items"]
                if item["index"].get("status", 500) >= 300
            ]
            raise TransientError(
                f"dead-letter index {self.index_name} refused {len(failed)} entries: {failed[0]}",
                hint="check the dead-letter index's health and mapping",
            )

    @property
    def count(self) -> int:
        if not self.client.indices.exists(index=self.index_name):
            return 0
        self.client.indices.refresh(index=self.index_name)
        return int(self.client.count(index=self.index_name)["count"])
