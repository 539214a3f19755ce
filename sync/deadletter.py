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

Every entry has an `id` and says which row it is about: a change entry keeps
its key as cell values (`key_cells`, `sync.values.encode_cell`), a record
entry its raw record (whose keys the stream's decoder reads) and the version
the record got. So an entry can be **replayed** once its cause is mended
(`ks2os deadletter replay`, `sync.jobs.deadletters`): the row is read again
over CQL and written, and the entry removed (`remove`). The file store never
rewrites its file: a removal is a line of its own (`{"removed": <id>}`), so
a follower appending at the same time loses nothing.

`DeadLetterShare` is the stop rule: a run whose share of dead-lettered rows
passes `dead_letter_max_share` stops with `TooManyDeadLetters` rather than
reporting success.
"""

from __future__ import annotations

import collections
import functools
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import orjson
from opensearchpy import OpenSearch

from sync.bulk import Action, Bulk, Reader, Traffic, Verdict, call
from sync.documents import json_safe
from sync.errors import OpenSearchRefused, TerminalError
from sync.model import Change, Provenance, ScanRead
from sync.retry import RetryPolicy
from sync.values import encode_cell


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
    version: int | None = None  # a record's: the version its change would have had
    entry_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if (self.change is None) == (self.record is None):
            raise ValueError("a dead letter holds either a change or a raw record")

    @classmethod
    def for_record(
        cls,
        record: Mapping[str, Any],
        position: Provenance,
        reason: str,
        version: int | None = None,
    ) -> DeadLetter:
        """An entry for a stream record that could not become a change."""
        return cls(None, None, reason, record=record, position=position, version=version)

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe record of the entry."""
        change = self.change
        if change is None:
            assert self.record is not None and self.position is not None
            return {
                "id": self.entry_id,
                "doc_id": None,
                "reason": self.reason,
                "at": self.at_ms,
                "op": None,
                "version": self.version,
                "record": json_safe(dict(self.record)),
                "source": _provenance(self.position),
            }
        return {
            "id": self.entry_id,
            "doc_id": self.doc_id,
            "reason": self.reason,
            "at": self.at_ms,
            "op": change.op.value,
            "version": change.version,
            "key": json_safe(list(change.key)),
            "key_cells": _key_cells(change.key),
            "image": None if change.image is None else json_safe(dict(change.image)),
            "static_only": change.static_only,
            "expires_at": change.expires_at_ms,
            "source": _provenance(change.provenance),
        }


def _key_cells(key: tuple[Any, ...]) -> list[dict[str, Any]] | None:
    """The key as cell values (to read the row again), or None for a value with no cell form."""
    try:
        return [encode_cell(value) for value in key]
    except TypeError:
        return None


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
    if isinstance(source, ScanRead):
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
    """Where refused changes go; `put` returns only once they are stored.

    `entries` gives the stored entries (as JSON, oldest first), `remove`
    forgets entries by id (once replayed).
    """

    def put(self, entries: Sequence[DeadLetter]) -> None: ...

    @property
    def count(self) -> int: ...

    def entries(self) -> Iterator[dict[str, Any]]: ...

    def remove(self, entry_ids: Sequence[str]) -> None: ...


# Told how many write requests failed (retried or not), for the metrics.
OnWriteError = Callable[[int], None]


def _no_count(requests: int) -> None:
    pass


class FileDeadLetters:
    """NDJSON file, one entry per line, appended and fsynced on every `put`.

    A removed entry stays in the file; a line `{"removed": <id>}` after it
    says it is gone (appending only: a writer in another process loses
    nothing). `count` is the entries not removed.
    """

    def __init__(self, path: str | Path, *, on_write_error: OnWriteError | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._count = sum(1 for _ in self.entries())
        self._on_write_error = on_write_error or _no_count

    def _lines(self) -> Iterator[dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                for line in handle:
                    if line.strip():
                        yield orjson.loads(line)
        except FileNotFoundError:
            return

    def entries(self) -> Iterator[dict[str, Any]]:
        removed = {line["removed"] for line in self._lines() if "removed" in line}
        for line in self._lines():
            if "removed" not in line and line.get("id") not in removed:
                yield line

    def put(self, entries: Sequence[DeadLetter]) -> None:
        if not entries:
            return
        self._append([entry.to_json() for entry in entries])
        with self._lock:
            self._count += len(entries)

    def remove(self, entry_ids: Sequence[str]) -> None:
        if not entry_ids:
            return
        self._append([{"removed": entry_id} for entry_id in entry_ids])
        remaining = sum(1 for _ in self.entries())  # an id removed twice counts once
        with self._lock:
            self._count = remaining

    def _append(self, lines: list[dict[str, Any]]) -> None:
        data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.path, "ab") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError:
                self._on_write_error(1)
                raise

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
        "id": {"type": "keyword"},
    },
}


class IndexDeadLetters:
    """An OpenSearch index (created on first use), written with refresh=wait_for."""

    def __init__(
        self,
        client: OpenSearch,
        index_name: str,
        policy: RetryPolicy | None = None,
        *,
        on_write_error: OnWriteError | None = None,
    ) -> None:
        self.client = client
        self.index_name = index_name
        self.policy = policy or RetryPolicy()
        self._on_write_error = on_write_error or _no_count
        self._bulk = Bulk(client, index_name, self.policy, refresh="wait_for")
        self._ready = False
        self._lock = threading.Lock()

    @classmethod
    def for_alias(
        cls,
        client: OpenSearch,
        alias: str,
        policy: RetryPolicy | None = None,
        *,
        on_write_error: OnWriteError | None = None,
    ) -> IndexDeadLetters:
        return cls(client, f"{alias}-deadletter", policy, on_write_error=on_write_error)

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
        # Each failed request counts as it happens, not when the retries end.
        traffic = Traffic(on_retry=lambda reason: self._on_write_error(1))
        actions = [Action(entry.entry_id, entry.to_json()) for entry in entries]
        try:
            results = self._bulk.send(actions, traffic)
        except Exception:
            self._on_write_error(1)
            raise
        refused = [r for r in results if r.verdict is not Verdict.APPLIED]
        if refused:
            self._on_write_error(1)
            raise TerminalError(
                f"dead-letter index {self.index_name} refused {len(refused)} entries: "
                f"{refused[0].reason}",
                hint="check the dead-letter index's mapping, or set dead_letter to a file path",
            )

    @property
    def count(self) -> int:
        if not self._refreshed():
            return 0
        request = functools.partial(self.client.count, index=self.index_name)
        return int(call(self.policy, f"counting {self.index_name}", request)["count"])

    def _refreshed(self) -> bool:
        """Refresh the index so searches see every entry; False when there is no index."""
        try:
            Reader(self.client, self.index_name, self.policy).refresh()
        except OpenSearchRefused as exc:
            if exc.error_type == "index_not_found_exception":
                return False
            raise
        return True

    def entries(self) -> Iterator[dict[str, Any]]:
        if not self._refreshed():
            return
        reader = Reader(self.client, self.index_name, self.policy)
        pages = reader.scan({"match_all": {}}, sort=[{"at": "asc"}])
        with closing(pages):
            for page in pages:
                for document in page:
                    yield {**document.body, "id": document.body.get("id", document.doc_id)}

    def remove(self, entry_ids: Sequence[str]) -> None:
        for entry_id in entry_ids:
            request = functools.partial(
                self.client.delete, index=self.index_name, id=entry_id, params={"refresh": "true"}
            )
            try:
                call(self.policy, f"removing dead letter {entry_id}", request)
            except OpenSearchRefused as exc:
                if exc.status != 404:  # gone already (removed by another replay)
                    raise


class TooManyDeadLetters(TerminalError):
    """A run dead-lettered a larger share of its rows than `dead_letter_max_share` allows."""


@dataclass
class DeadLetterShare:
    """The share of dead-lettered rows over the last `window` rows (whole batches).

    `add` records a batch; `exceeded` says whether, once the window is full,
    the share in it passes `max_share`.
    """

    max_share: float
    window: int
    _batches: collections.deque[tuple[int, int]] = field(default_factory=collections.deque)
    _rows: int = 0
    _dead: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rows: int, dead: int) -> None:
        with self._lock:
            self._batches.append((rows, dead))
            self._rows += rows
            self._dead += dead
            while self._batches and self._rows - self._batches[0][0] >= self.window:
                old_rows, old_dead = self._batches.popleft()
                self._rows -= old_rows
                self._dead -= old_dead

    def share(self) -> float:
        with self._lock:
            return self._dead / self._rows if self._rows else 0.0

    def exceeded(self) -> bool:
        with self._lock:
            full = self._rows >= self.window
        return full and self.share() > self.max_share

    def error(self, what: str) -> TooManyDeadLetters:
        with self._lock:
            dead, rows = self._dead, self._rows
        return TooManyDeadLetters(
            f"{what}: {dead} of the last {rows} rows were dead-lettered "
            f"({dead / max(rows, 1):.0%}, more than dead_letter_max_share "
            f"{self.max_share:.0%})",
            hint="see why with `ks2os deadletter list`, mend the mapping or the data, then "
            "`ks2os deadletter replay`",
        )
