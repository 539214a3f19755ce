"""The one transport for OpenSearch documents: bulk writes, real-time reads, paged scans.

Whatever writes or reads documents goes through here — the bulk writer, the
static-column merge, the state store, the index dead-letter store, and
`verify` and `reindex` next — so chunking, retries and the mapping of
opensearch-py's exceptions into ks2os's error tree are done once.

**Writing** (`Bulk.send`): one `Action` type, which indexes a document with
an external version, indexes it only if the stored document is still the one
read (`if_seq_no`/`if_primary_term`), creates it only if it does not exist,
indexes it unconditionally, or deletes it (only if it is still the one read,
with `expect`: cleanup never removes a document another worker rewrote).
Actions go in requests of at most `max_docs` documents and `max_bytes`
bytes, and each comes back with one `Result`::

    2xx        APPLIED
    409        STALE      never retried: the stored document has a version at
                          least as high (external version), is no longer the
                          one read (if_seq_no), or exists already (create)
    404        REJECTED   (a delete only) the document is gone already
    429, 5xx   TRANSIENT  re-sent, only those items, through the retry policy
    other 4xx  REJECTED   refused for its content: the caller dead-letters it

A whole request failing with 429, a 5xx, a timeout or a lost connection makes
every item in it TRANSIENT. `send` returns once no item is TRANSIENT; when
the policy gives up (its time budget spent, or the job stopping) it raises
`OpenSearchUnavailable`, and nothing of the call should be taken as done.
A caller's `Traffic` counts what its calls cost: requests, each bulk
request's duration, and every retry with its reason (`429`, `5xx`,
`timeout`, `unreachable`), which the metrics show.

**Reading** (`Reader`): `get` reads documents by id in real time (mget, with
routing), `scan` pages through the documents matching a query, sorted, from
one point in time (PIT + search_after, OpenSearch 2.4 and later; the PIT is
deleted in `finally`), `search` returns one page, `refresh` makes writes
visible to both.
Requests that fail transiently are retried through the same policy.

**Errors**: `opensearch_error` is the one conversion of opensearch-py's
exceptions: unreachable, timing out or pushing back (429, 5xx) ->
`OpenSearchUnavailable`; credentials refused (401) or TLS failing ->
`ConfigError`; any other refusal -> `OpenSearchRefused` (with the status and
OpenSearch's error type). A missing index, or an item refused for anything
but its content (401, 403), is a `TerminalError` rather than a dead letter.
"""

from __future__ import annotations

import enum
import functools
import logging
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from opensearchpy import OpenSearch
from opensearchpy.exceptions import ConnectionError as ConnectionFailed
from opensearchpy.exceptions import (
    ConnectionTimeout,
    ImproperlyConfigured,
    OpenSearchException,
    SSLError,
    TransportError,
)

from sync.errors import (
    ConfigError,
    Ks2osError,
    OpenSearchRefused,
    OpenSearchUnavailable,
    TerminalError,
    TransientError,
)
from sync.retry import RetryPolicy

log = logging.getLogger(__name__)

T = TypeVar("T")

# Only what the verdicts need: a large batch's full response costs real time to parse.
_BULK_FILTER = "errors,items.*.status,items.*.error,items.*._seq_no,items.*._primary_term"
# How long OpenSearch keeps a scan's point in time between two pages.
_KEEP_ALIVE = "5m"


class Verdict(enum.Enum):
    """What became of one bulk item (and, in the writer, of one change)."""

    APPLIED = "applied"
    STALE = "stale"
    REJECTED = "rejected"
    TRANSIENT = "transient"


def verdict_of(status: int) -> Verdict:
    """The verdict for one bulk item's HTTP status."""
    if 200 <= status < 300:
        return Verdict.APPLIED
    if status == 409:
        return Verdict.STALE
    if status == 429 or status >= 500 or status == 0:
        return Verdict.TRANSIENT
    return Verdict.REJECTED


@dataclass(frozen=True, slots=True)
class Stamp:
    """Which state of a document a conditional write must find: `_seq_no`, `_primary_term`."""

    seq_no: int
    primary_term: int


@dataclass(slots=True)
class Action:
    """One bulk item: index (external `version`, or conditional on `expect`), `create`,
    or `delete` (conditional on `expect`; its `body` is not sent).

    With none of `version`, `expect`, `create`, `delete` it indexes
    unconditionally. A `doc_id` of None lets OpenSearch choose the id. `body`
    is the document: JSON bytes as they are, or a mapping to serialise.
    """

    doc_id: str | None
    body: bytes | Mapping[str, Any]
    routing: str | None = None
    version: int | None = None
    expect: Stamp | None = None
    create: bool = False
    delete: bool = False

    @classmethod
    def delete_of(cls, document: Document) -> Action:
        """Delete `document` only if it is still as read (same `_seq_no`/`_primary_term`)."""
        return cls(document.doc_id, b"", document.routing, expect=document.stamp, delete=True)

    def lines(self) -> bytes:
        """The action's NDJSON lines: metadata, then the document (none for a delete)."""
        meta: dict[str, Any] = {} if self.doc_id is None else {"_id": self.doc_id}
        if self.routing is not None:
            meta["routing"] = self.routing
        if self.version is not None:
            meta["version"] = self.version
            meta["version_type"] = "external"
        elif self.expect is not None:
            meta["if_seq_no"] = self.expect.seq_no
            meta["if_primary_term"] = self.expect.primary_term
        if self.delete:
            return orjson.dumps({"delete": meta}) + b"\n"
        body = self.body if isinstance(self.body, bytes) else orjson.dumps(self.body)
        return orjson.dumps({"create" if self.create else "index": meta}) + b"\n" + body + b"\n"


def bulk_lines(actions: Sequence[Action]) -> bytes:
    """The NDJSON body of one bulk request for `actions`."""
    return b"".join(action.lines() for action in actions)


@dataclass(frozen=True, slots=True)
class Result:
    """One action's verdict, its HTTP status, OpenSearch's reason, and the stored stamp."""

    verdict: Verdict
    status: int
    reason: str = ""  # "<error type>: <reason>" when not applied
    stamp: Stamp | None = None  # the document's new stamp when applied


@dataclass(frozen=True, slots=True)
class Document:
    """A stored document as read: its id, body, stamp, and routing (if any)."""

    doc_id: str
    body: dict[str, Any]
    stamp: Stamp
    routing: str | None = None


@dataclass
class Traffic:
    """What a caller's requests cost: requests sent, backoff waits (and why), action bytes,
    and how long each bulk request took."""

    requests: int = 0
    retries: int = 0
    bytes: int = 0  # each action's NDJSON once, however often it was re-sent
    bulk_seconds: list[float] = field(default_factory=list)  # one per bulk request sent
    # Told each retry's reason as it happens (the metrics), not when the call returns:
    # during an outage a write may wait in its retries for minutes.
    on_retry: Callable[[str], None] | None = field(default=None, repr=False, compare=False)

    def retried(self, reason: str) -> None:
        self.retries += 1
        if self.on_retry is not None:
            self.on_retry(reason)


# Why a request was retried: a few fixed words, so a metric label stays bounded.
RETRY_REASONS = ("429", "5xx", "timeout", "unreachable")


def retry_reason(failure: BaseException | int) -> str:
    """The retry reason of an HTTP status, or of an exception (or the one it was raised from)."""
    if isinstance(failure, int):
        return "429" if failure == 429 else "5xx" if failure >= 500 else "unreachable"
    cause = failure.__cause__ if isinstance(failure, Ks2osError) else failure
    if isinstance(cause, ConnectionTimeout):
        return "timeout"
    if isinstance(cause, ConnectionFailed):
        return "unreachable"
    if isinstance(cause, TransportError) and isinstance(cause.status_code, int):
        return retry_reason(cause.status_code)
    return "unreachable"


def chunks(sizes: Sequence[int], max_docs: int, max_bytes: int) -> list[range]:
    """Consecutive positions of `sizes` grouped into requests of <= max_docs and <= max_bytes.

    An item larger than `max_bytes` goes alone in its request.
    """
    groups: list[range] = []
    start, total = 0, 0
    for position, size in enumerate(sizes):
        full = position - start >= max_docs or total + size > max_bytes
        if position > start and full:
            groups.append(range(start, position))
            start, total = position, 0
        total += size
    if start < len(sizes):
        groups.append(range(start, len(sizes)))
    return groups


def reason_of(error: Any) -> str:
    """OpenSearch's error object as one line: `type: reason (caused by type: reason)`."""
    if error is None:
        return ""
    if isinstance(error, Mapping):
        text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
        caused = error.get("caused_by")
        if isinstance(caused, Mapping):
            text += f" (caused by {caused.get('type')}: {caused.get('reason')})"
        return text
    return str(error)


# ---------------------------------------------------------------- errors


def opensearch_error(exc: Exception, doing: str) -> Ks2osError:
    """The ks2os error for an opensearch-py exception raised while `doing` something."""
    if isinstance(exc, SSLError):
        return ConfigError(
            f"{doing}: TLS with OpenSearch failed: {exc.error}",
            hint="check opensearch.hosts, opensearch.ca_file and opensearch.verify_certs",
        )
    if isinstance(exc, ConnectionTimeout):
        return OpenSearchUnavailable(
            f"{doing}: OpenSearch did not answer in time ({exc.error})",
            hint="check OpenSearch's health, or raise opensearch.timeout_s",
        )
    if isinstance(exc, ConnectionFailed):
        return OpenSearchUnavailable(
            f"{doing}: cannot reach OpenSearch: {exc.error}",
            hint="check opensearch.hosts and that OpenSearch is running",
        )
    if isinstance(exc, TransportError):
        return _refusal(exc, doing)
    if isinstance(exc, ImproperlyConfigured):
        return ConfigError(f"{doing}: {exc}", hint="check the [opensearch] settings")
    return TerminalError(f"{doing}: {exc}")


def _refusal(exc: TransportError, doing: str) -> Ks2osError:
    status = exc.status_code if isinstance(exc.status_code, int) else 0
    info = exc.info.get("error") if isinstance(exc.info, Mapping) else None
    error_type = str(info.get("type", exc.error)) if isinstance(info, Mapping) else str(exc.error)
    reason = reason_of(info) if isinstance(info, Mapping) else str(exc.error)
    if status == 429 or status >= 500:
        return OpenSearchUnavailable(
            f"{doing}: OpenSearch answered {status}: {reason}", hint="check OpenSearch's health"
        )
    if status == 401:
        return ConfigError(
            f"{doing}: OpenSearch refused the credentials (401)",
            hint="check opensearch.auth and opensearch.username, and KS2OS_OPENSEARCH_PASSWORD "
            "or the AWS credentials",
        )
    if status == 403:
        hint = "grant ks2os's user the index permissions it needs (see README)"
    elif error_type == "index_not_found_exception":
        hint = "ks2os creates its indexes at start; check the alias and the index behind it"
    elif status == 413:
        hint = "lower writer.max_bytes"
    else:
        hint = ""
    return OpenSearchRefused(
        f"{doing}: OpenSearch refused it ({status}): {reason}",
        hint=hint,
        status=status,
        error_type=error_type,
    )


@contextmanager
def opensearch_errors(doing: str) -> Iterator[None]:
    """Convert any opensearch-py exception raised inside into a ks2os error."""
    try:
        yield
    except (OpenSearchException, ImproperlyConfigured) as exc:
        raise opensearch_error(exc, doing) from exc


def call(
    policy: RetryPolicy,
    doing: str,
    request: Callable[[], T],
    traffic: Traffic | None = None,
) -> T:
    """One request, retried through `policy` while it fails transiently; errors converted.

    `request` may itself raise a `TransientError` (say, for a shard failure
    inside a 200 answer) to have it retried.
    """
    spent = traffic if traffic is not None else Traffic()

    def attempt() -> T:
        spent.requests += 1
        with opensearch_errors(doing):
            return request()

    try:
        return policy.call(attempt, TransientError, functools.partial(_waiting, doing, spent))
    except TransientError as exc:
        raise OpenSearchUnavailable(f"{exc} ({policy.why_given_up()})", hint=exc.hint) from exc


def _waiting(doing: str, traffic: Traffic, seconds: float, failure: Any) -> None:
    traffic.retried(retry_reason(failure) if isinstance(failure, BaseException) else "5xx")
    log.warning("%s: retrying in %.2f s (%s)", doing, seconds, failure)


# ---------------------------------------------------------------- writing


@dataclass(slots=True)
class _Item:
    """An action on its way: its bytes, its result once known, its last transient failure."""

    action: Action
    lines: bytes
    result: Result | None = None
    failure: str = ""
    reason: str = "5xx"  # the failure's retry reason (`retry_reason`)


class Bulk:
    """Sends actions to one index; see the module docstring. Safe to share between threads."""

    def __init__(
        self,
        client: OpenSearch,
        index: str,
        policy: RetryPolicy,
        *,
        max_docs: int = 1000,
        max_bytes: int = 5_000_000,
        timeout_s: float = 30.0,
        refresh: str | None = None,
    ) -> None:
        self.client = client
        self.index = index
        self.policy = policy
        self.max_docs = max_docs
        self.max_bytes = max_bytes
        self._params: dict[str, Any] = {"request_timeout": timeout_s, "filter_path": _BULK_FILTER}
        if refresh is not None:
            self._params["refresh"] = refresh

    def send(self, actions: Sequence[Action], traffic: Traffic | None = None) -> list[Result]:
        """One result per action, in order; no result is TRANSIENT."""
        spent = traffic if traffic is not None else Traffic()
        items = [_Item(action, action.lines()) for action in actions]
        for group in chunks([len(item.lines) for item in items], self.max_docs, self.max_bytes):
            chunk = items[group.start : group.stop]
            spent.bytes += sum(len(item.lines) for item in chunk)
            self._settle(chunk, spent)
        results: list[Result] = []
        for item in items:
            assert item.result is not None  # every item is settled, or _settle raised
            results.append(item.result)
        return results

    def _settle(self, chunk: list[_Item], traffic: Traffic) -> None:
        """Send the chunk until no item is transient, or raise once the policy gives up."""
        left = self.policy.until_done(
            functools.partial(self._attempt, traffic),
            chunk,
            functools.partial(self._waiting, traffic),
        )
        if left:
            raise OpenSearchUnavailable(
                f"bulk to {self.index}: {len(left)} item(s) not written, "
                f"{self.policy.why_given_up()}: {left[0].failure}",
                hint="check OpenSearch's health; nothing of this batch is checkpointed, "
                "so it will be replayed",
            )

    def _waiting(self, traffic: Traffic, seconds: float, left: Sequence[_Item]) -> None:
        traffic.retried(left[0].reason if left else "5xx")
        log.warning(
            "bulk to %s: %d item(s) to retry in %.2f s (%s)",
            self.index,
            len(left),
            seconds,
            left[0].failure if left else "",
        )

    def _attempt(self, traffic: Traffic, items: Sequence[_Item]) -> list[_Item]:
        """One bulk request of `items`; returns those to send again."""
        traffic.requests += 1
        started = time.monotonic()
        try:
            response = self.client.bulk(
                index=self.index,
                body=b"".join(item.lines for item in items),
                params=self._params,
            )
        except (OpenSearchException, ImproperlyConfigured) as exc:
            traffic.bulk_seconds.append(time.monotonic() - started)
            error = opensearch_error(exc, f"bulk to {self.index}")
            if isinstance(error, TransientError):
                reason = retry_reason(exc)
                for item in items:
                    item.failure, item.reason = str(error), reason
                return list(items)
            if isinstance(error, OpenSearchRefused) and error.status == 413 and len(items) == 1:
                items[0].result = Result(Verdict.REJECTED, 413, f"request too large: {error}")
                return []
            raise error from exc
        traffic.bulk_seconds.append(time.monotonic() - started)
        return self._resolve(items, response.get("items", []))

    def _resolve(self, items: Sequence[_Item], answers: list[dict[str, Any]]) -> list[_Item]:
        if len(answers) != len(items):
            raise TerminalError(
                f"bulk to {self.index}: {len(answers)} results for {len(items)} actions"
            )
        again: list[_Item] = []
        for item, answer in zip(items, answers, strict=True):
            body = next(iter(answer.values()))
            status = int(body.get("status", 500))
            verdict = verdict_of(status)
            error = body.get("error")
            if verdict is Verdict.TRANSIENT:
                item.failure = f"item {status}: {reason_of(error)}"
                item.reason = retry_reason(status)
                again.append(item)
                continue
            if verdict is Verdict.REJECTED:
                self._refuse_unless_content(status, error)
            item.result = Result(verdict, status, reason_of(error), _stamp(body))
        return again

    def _refuse_unless_content(self, status: int, error: Any) -> None:
        """Raise when an item was refused for something other than its content."""
        error_type = error.get("type") if isinstance(error, Mapping) else None
        if error_type == "index_not_found_exception" or status in (401, 403):
            raise OpenSearchRefused(
                f"bulk to {self.index}: {reason_of(error)}",
                hint="ks2os creates its indexes at start; check the index and the user's "
                "permissions on it",
                status=status,
                error_type=str(error_type),
            )


def _stamp(body: Mapping[str, Any]) -> Stamp | None:
    seq_no, term = body.get("_seq_no"), body.get("_primary_term")
    if isinstance(seq_no, int) and isinstance(term, int):
        return Stamp(seq_no, term)
    return None


# ---------------------------------------------------------------- reading


class Reader:
    """Reads documents of one index: by id in real time, or a sorted scan. Thread-safe."""

    def __init__(
        self,
        client: OpenSearch,
        index: str,
        policy: RetryPolicy,
        *,
        page_size: int = 1000,
        timeout_s: float = 30.0,
    ) -> None:
        self.client = client
        self.index = index
        self.policy = policy
        self.page_size = page_size
        self._params = {"request_timeout": timeout_s}

    def get(
        self, ids: Mapping[str, str | None], traffic: Traffic | None = None
    ) -> dict[str, Document]:
        """The stored documents among `ids` (id -> routing), read in real time; absent: left out."""
        found: dict[str, Document] = {}
        wanted = list(ids.items())
        for start in range(0, len(wanted), self.page_size):
            docs = [
                _mget_doc(doc_id, routing)
                for doc_id, routing in wanted[start : start + self.page_size]
            ]
            request = functools.partial(self._mget, docs)
            for document in call(self.policy, f"reading {self.index}", request, traffic):
                found[document.doc_id] = document
        return found

    def _mget(self, docs: list[dict[str, Any]]) -> list[Document]:
        response = self.client.mget(index=self.index, body={"docs": docs}, params=self._params)
        documents: list[Document] = []
        for doc in response.get("docs", []):
            error = doc.get("error")
            if error is not None:
                self._raise_read_error(str(doc.get("_id")), error)
            if doc.get("found"):
                documents.append(_document(doc))
        return documents

    def _raise_read_error(self, doc_id: str, error: Any) -> None:
        error_type = error.get("type") if isinstance(error, Mapping) else None
        if error_type == "index_not_found_exception":
            raise OpenSearchRefused(
                f"reading {self.index}: {reason_of(error)}",
                hint="ks2os creates its indexes at start; check the alias and the index behind it",
                status=404,
                error_type=error_type,
            )
        # A shard failing to answer for one document: worth asking again.
        raise OpenSearchUnavailable(f"reading {doc_id} from {self.index}: {reason_of(error)}")

    def refresh(self, traffic: Traffic | None = None) -> None:
        """Make every write so far visible to searches and scans."""
        request = functools.partial(self.client.indices.refresh, index=self.index)
        call(self.policy, f"refreshing {self.index}", request, traffic)

    def search(
        self, query: Mapping[str, Any], *, size: int, traffic: Traffic | None = None
    ) -> list[Document]:
        """Up to `size` documents matching `query`, one request (writes refreshed so far).

        For small answers (the live workers of a table); `scan` pages through
        large ones from one point in time.
        """
        body = {"query": dict(query), "size": size, "seq_no_primary_term": True}
        request = functools.partial(
            self.client.search, index=self.index, body=body, params=self._params
        )
        response = call(self.policy, f"searching {self.index}", request, traffic)
        return [_document(hit) for hit in response["hits"]["hits"]]

    def scan(
        self,
        query: Mapping[str, Any],
        *,
        sort: Sequence[Mapping[str, Any]] = (),
        page_size: int | None = None,
        traffic: Traffic | None = None,
    ) -> Generator[list[Document], None, None]:
        """Pages of the documents matching `query`, by `sort` then `_id`, from one point in time.

        What the scan sees is fixed when it starts (writes refreshed before
        then); later writes do not move its pages. Close the iterator (or run
        it to its end) to release the point in time at once.
        """
        size = page_size or self.page_size
        order = [*sort, {"_id": "asc"}]
        pit = self._open_pit(traffic)
        try:
            after: list[Any] | None = None
            while True:
                body: dict[str, Any] = {
                    "query": dict(query),
                    "size": size,
                    "sort": order,
                    "pit": {"id": pit, "keep_alive": _KEEP_ALIVE},
                    "seq_no_primary_term": True,
                }
                if after is not None:
                    body["search_after"] = after
                request = functools.partial(self.client.search, body=body, params=self._params)
                response = call(self.policy, f"searching {self.index}", request, traffic)
                pit = response.get("pit_id") or pit
                hits: list[dict[str, Any]] = response["hits"]["hits"]
                if hits:
                    yield [_document(hit) for hit in hits]
                if len(hits) < size:
                    return
                after = hits[-1]["sort"]
        finally:
            self._close_pit(pit)

    def _open_pit(self, traffic: Traffic | None) -> str:
        request = functools.partial(
            self.client.create_pit, index=self.index, params={"keep_alive": _KEEP_ALIVE}
        )
        response = call(self.policy, f"opening a point in time on {self.index}", request, traffic)
        pit: str = response["pit_id"]
        return pit

    def _close_pit(self, pit: str) -> None:
        # Best effort, and never raising: an exception here would hide the one that
        # ended the scan. An unreleased point in time lapses after _KEEP_ALIVE.
        try:
            self.client.delete_pit(body={"pit_id": [pit]})
        except (OpenSearchException, ImproperlyConfigured) as exc:
            log.warning("could not release a point in time on %s: %s", self.index, exc)


def _mget_doc(doc_id: str, routing: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {"_id": doc_id}
    if routing is not None:
        doc["routing"] = routing
    return doc


def _document(hit: Mapping[str, Any]) -> Document:
    return Document(
        hit["_id"],
        hit["_source"],
        Stamp(hit["_seq_no"], hit["_primary_term"]),
        hit.get("_routing"),
    )
