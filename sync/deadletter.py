"""Dead letters: changes that could not be written, kept with the reason.

Bad input never stops the stream and is never lost silently: the writer puts
each change OpenSearch refused for its content, or whose document could not
be built, here (durably, before it reports the batch done) and the count is
visible. The follower puts here, raw, the stream records that never became a
change (undecodable, or their row lookup failed for good), before its
checkpoint passes them. Two stores: an OpenSearch index (default
`<alias>-deadletter`, written through the bulk transport and its retries) and
an NDJSON file, one line per entry.

`Outcome` is what became of one change of a batch (applied, stale, or
rejected with a reason); the writer counts outcomes and turns the rejected
ones into dead letters.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from opensearchpy import OpenSearch

from sync.bulk import Action, Bulk, Reader, Verdict, call
from sync.documents import json_safe
from sync.errors import OpenSearchRefused, TerminalError
from sync.model import Change, Provenance, ScanPosition
from sync.retry import RetryPolicy


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
