"""Dead letters: changes that could not be written, kept with the reason.

Bad input never stops the stream and is never lost silently: the writer puts
each change OpenSearch refused for its content, or whose document could not
be built, here (durably, before it reports the batch done) and the count is
visible. Two stores: an OpenSearch index (default `<alias>-deadletter`,
written through the bulk transport and its retries) and an NDJSON file, one
line per entry.

`Outcome` is what became of one change of a batch (applied, stale, or
rejected with a reason); the writer counts outcomes and turns the rejected
ones into dead letters.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from opensearchpy import OpenSearch

from sync.bulk import Action, Bulk, Reader, Verdict, call
from sync.documents import json_safe
from sync.errors import OpenSearchRefused, TerminalError
from sync.model import Change, ScanPosition
from sync.retry import RetryPolicy


@dataclass(frozen=True)
class DeadLetter:
    """One refused change, why, and when."""

    change: Change
    doc_id: str
    reason: str  # OpenSearch's error type and reason
    at_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe record of the entry."""
        change = self.change
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
            "source": _provenance(change),
        }


@dataclass(slots=True, eq=False)  # each is one change of one batch: equal only to itself
class Outcome:
    """What became of one change of a batch: APPLIED, STALE, or REJECTED with a reason.

    A rejection is final: a later write for the same change (a static merge
    after its row was written, say) cannot turn it back into APPLIED.
    """

    change: Change
    verdict: Verdict | None = None  # None: not settled yet
    doc_id: str = ""
    reason: str = ""

    def settle(self, verdict: Verdict) -> None:
        if self.verdict is not Verdict.REJECTED:
            self.verdict = verdict

    def reject(self, doc_id: str, reason: str) -> None:
        if self.verdict is not Verdict.REJECTED:
            self.verdict, self.doc_id, self.reason = Verdict.REJECTED, doc_id, reason

    def dead_letter(self) -> DeadLetter:
        return DeadLetter(self.change, self.doc_id, self.reason)


def _provenance(change: Change) -> dict[str, Any]:
    position = change.source
    if isinstance(position, ScanPosition):
        return {
            "kind": "scan",
            "token_start": position.token_start,
            "token_end": position.token_end,
            "read_at_ms": position.read_at_ms,
        }
    return {
        "kind": "stream",
        "stream_arn": position.stream_arn,
        "shard_id": position.shard_id,
        "sequence_number": position.sequence_number,
        "created_at_ms": position.created_at_ms,
        "origin": position.origin,
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

    def __init__(
        self, client: OpenSearch, index_name: str, policy: RetryPolicy | None = None
    ) -> None:
        self.client = client
        self.index_name = index_name
        self.policy = policy or RetryPolicy()
        self._bulk = Bulk(client, index_name, self.policy, refresh="wait_for")
        self._ready = False
        self._lock = threading.Lock()

    @classmethod
    def for_alias(
        cls, client: OpenSearch, alias: str, policy: RetryPolicy | None = None
    ) -> IndexDeadLetters:
        return cls(client, f"{alias}-deadletter", policy)

    def _ensure_index(self) -> None:
        with self._lock:
            if self._ready:
                return
            indices = self.client.indices
            doing = f"creating the dead-letter index {self.index_name}"
            exists = functools.partial(indices.exists, index=self.index_name)
            if not call(self.policy, doing, exists):
                request = functools.partial(
                    indices.create, index=self.index_name, body={"mappings": DEADLETTER_MAPPING}
                )
                try:
                    call(self.policy, doing, request)
                except OpenSearchRefused as exc:
                    if exc.error_type != "resource_already_exists_exception":
                        raise
            self._ready = True

    def put(self, entries: Sequence[DeadLetter]) -> None:
        if not entries:
            return
        self._ensure_index()
        results = self._bulk.send([Action(None, entry.to_json()) for entry in entries])
        refused = [r for r in results if r.verdict is not Verdict.APPLIED]
        if refused:
            raise TerminalError(
                f"dead-letter index {self.index_name} refused {len(refused)} entries: "
                f"{refused[0].reason}",
                hint="check the dead-letter index's mapping, or set dead_letter to a file path",
            )

    @property
    def count(self) -> int:
        reader = Reader(self.client, self.index_name, self.policy)
        request = functools.partial(self.client.count, index=self.index_name)
        try:
            reader.refresh()
        except OpenSearchRefused as exc:
            if exc.error_type == "index_not_found_exception":
                return 0
            raise
        return int(call(self.policy, f"counting {self.index_name}", request)["count"])
