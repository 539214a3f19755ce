"""What `verify` compares: the documents the table says the index should hold, and the stored ones.

Pure: no server is touched here. `expected_documents` turns rows read from
the table (scan changes) into the documents the mapping builds from them,
through the same `DocumentBuilder` the writers use (filter, computed fields,
hook, statics included); `compare` sets those beside the documents stored
under the same token and says what diverges, as `Finding`s of one `Kind`:

- `missing`: the table has the row, the index has no live document for it
  (none at all, or a tombstone);
- `extra`: the index has a live document, found through the alias, for a
  row the table does not have;
- `mismatch`: both exist and differ: a field (statics included), the TTL
  expiry, a row the mapping's filter leaves out yet found live, a row hidden
  as expired although the table still returns it, a partition document
  whose static values are not the table's;
- `expired_visible`: the table no longer returns the row, and its document,
  which says the row expires, is still found (its expiry is later than the
  row's was: a shorter TTL the index never learnt of);
- `dead_letter`: the document carries a dead-letter mark (the row's last
  change could not be indexed).

What is not a divergence: a tombstone without a row; a document hidden as
expired without a row (its TTL record has not arrived yet, and the alias
filter already hides it); a partition document of a partition without rows
(hidden, kept for rows written later; docs/versions.md).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sync.bulk import Document
from sync.documents import META_FIELD, PARTITION_KIND, DocumentBuilder
from sync.errors import DecodeError
from sync.model import Change, Op
from sync.schema import TableLayout
from sync.sources.rows import ttl_capable

# The `_ks2os` field that marks a document whose row's last change went to the
# dead-letter store (written by the writer; the alias filter hides such documents).
# Any truthy value counts. Adjust here if the writer names it otherwise.
DEAD_LETTER_FIELD = "dead_letter"

# A scan computes a row's expiry from TTL() (whole seconds left) and the read time;
# the stream gives it in epoch seconds. Both name the same moment within this.
EXPIRY_TOLERANCE_MS = 3000

_SHOWN = 80  # characters of a value shown in a finding


class Kind(enum.Enum):
    MISSING = "missing"
    EXTRA = "extra"
    MISMATCH = "mismatch"
    EXPIRED_VISIBLE = "expired_visible"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True, slots=True)
class Expected:
    """A document the table says the index should hold, built from `change`.

    `body` is the document without `_ks2os` as plain JSON values (for a
    partition document: its static values); None when the row has no live
    document (the mapping's filter or hook leaves it out). `error` is why the
    document could not be built, if it could not.
    """

    doc_id: str
    routing: str | None
    change: Change
    body: Mapping[str, Any] | None
    expires_at: int | None = None
    partition: bool = False
    error: str = ""
    # False when the row read cannot tell when the row expires (`expiry_readable`):
    # then an expiry the index holds (from a stream record) is not a divergence.
    expiry_known: bool = True


@dataclass(frozen=True, slots=True)
class Finding:
    """One divergent document: its kind, id, what differs, and both sides as read."""

    kind: Kind
    doc_id: str
    detail: str
    expected: Expected | None
    stored: Document | None


# ---------------------------------------------------------------- expected documents


def expected_documents(builder: DocumentBuilder, changes: Iterable[Change]) -> list[Expected]:
    """The documents these rows stand for: one per row, and on tables with static
    columns one per partition (its static values, from the last row of it)."""
    expected: dict[str, Expected] = {}
    static_table = bool(builder.table.static)
    for change in changes:
        try:
            documents = _with_statics(builder, change) if static_table else [_row(builder, change)]
        except (TypeError, ValueError, OverflowError, DecodeError) as exc:
            documents = [_unbuildable(builder, change, exc)]
        for document in documents:
            expected[document.doc_id] = document
    return list(expected.values())


def _row(builder: DocumentBuilder, change: Change) -> Expected:
    action = builder.action_for(change)
    assert action.doc_id is not None  # the builder always names the document
    body = _plain(orjson.loads(action.body) if isinstance(action.body, bytes) else action.body)
    meta = body.pop(META_FIELD, {})
    live = not meta.get("deleted")
    return Expected(
        action.doc_id,
        action.routing,
        change,
        body if live else None,
        meta.get("expires_at") if live else None,
        expiry_known=expiry_readable(change, builder.table),
    )


def expiry_readable(change: Change, table: TableLayout) -> bool:
    """Whether a row read over CQL says when the row expires.

    CQL has no TTL() for a row marker or for the elements of a non-frozen
    collection. A read row whose expiry came out as never is certain only when
    one of its regular values can carry a TTL and has none; a row holding no
    such value may still expire (its INSERT's TTL, a collection's), which only
    the stream record of its write tells.
    """
    if change.expires_at_ms is not None or change.image is None:
        return True
    expiring = change.value_expiry or {}
    return any(
        not table.is_key(name)
        and name not in table.static
        and ttl_capable(table.cql_type(name))
        and name not in expiring
        for name in change.image
    )


def _with_statics(builder: DocumentBuilder, change: Change) -> list[Expected]:
    """A static table's row document (row fields + statics) and its partition document."""
    image = change.image or {}
    statics = _plain(builder.static_values(image))
    partition_id = builder.partition_id(change.key)
    routing = builder.routing(change.key)
    partition = Expected(
        builder.partition_doc_id(partition_id), routing, change, statics, partition=True
    )
    if change.static_only:
        return [partition]
    row_change, fields = builder.row_document(change)
    doc_id = builder.doc_id(change.key)
    if row_change.op is Op.DELETE:
        return [Expected(doc_id, routing, change, None), partition]
    body = {**_plain(fields), **statics}
    known = expiry_readable(change, builder.table)
    expected = Expected(doc_id, routing, change, body, change.expires_at_ms, expiry_known=known)
    return [expected, partition]


def _unbuildable(builder: DocumentBuilder, change: Change, exc: Exception) -> Expected:
    try:
        doc_id = builder.doc_id(change.key)
    except (TypeError, ValueError):
        doc_id = repr(change.key)
    return Expected(doc_id, builder.routing(change.key), change, None, error=str(exc))


def _plain(value: Any) -> Any:
    """`value` as a stored `_source` reads back: JSON, parsed (big integers kept exact)."""
    return json.loads(orjson.dumps(value))


# ---------------------------------------------------------------- comparing


def compare(expected: Sequence[Expected], stored: Sequence[Document], now_ms: int) -> list[Finding]:
    """The divergences between what the table says (`expected`) and what the index holds
    (`stored`) for one group of documents (one token); `now_ms` on the service clock."""
    by_id = {document.doc_id: document for document in stored}
    findings = []
    for wanted in expected:
        finding = check(wanted, by_id.pop(wanted.doc_id, None), now_ms)
        if finding is not None:
            findings.append(finding)
    for document in by_id.values():
        finding = check_unexpected(document, now_ms)
        if finding is not None:
            findings.append(finding)
    return findings


def check(wanted: Expected, stored: Document | None, now_ms: int) -> Finding | None:
    """The divergence of one document the table says should be, or None."""
    if wanted.partition:
        return _check_partition(wanted, stored)

    def found(kind: Kind, detail: str) -> Finding:
        return Finding(kind, wanted.doc_id, detail, wanted, stored)

    if stored is not None and dead_letter_mark(stored):
        return found(Kind.DEAD_LETTER, _marked(stored))
    if wanted.error:
        return found(Kind.MISMATCH, f"its document cannot be built from the row: {wanted.error}")
    if wanted.body is None:
        if stored is None or is_tombstone(stored) or hidden(stored, now_ms):
            return None
        return found(Kind.MISMATCH, "the mapping leaves this row out, yet its document is found")
    if stored is None:
        return found(Kind.MISSING, "the row exists; the index has no document for it")
    meta = meta_of(stored)
    if is_tombstone(stored):
        return found(
            Kind.MISSING,
            f"the row exists; its document is a tombstone (version {meta.get('version')})",
        )
    if hidden(stored, now_ms):
        return found(
            Kind.MISMATCH,
            f"hidden as expired at {meta.get('expires_at')} (ms), yet the table returns the row",
        )
    difference = first_difference(wanted.body, body_of(stored))
    if difference is not None:
        return found(Kind.MISMATCH, difference)
    stored_expiry = meta.get("expires_at")
    if wanted.expires_at is None and not wanted.expiry_known:
        return None  # the read cannot tell; the stream record that set it could
    if not _same_expiry(wanted.expires_at, stored_expiry):
        return found(
            Kind.MISMATCH,
            f"expires_at: index {stored_expiry}, table {wanted.expires_at} (ms; None: never)",
        )
    return None


def _check_partition(wanted: Expected, stored: Document | None) -> Finding | None:
    statics = dict(wanted.body or {})
    if stored is None:
        if all(value is None for value in statics.values()):
            return None  # no statics anywhere: rows show none either way
        return Finding(
            Kind.MISSING,
            wanted.doc_id,
            "the partition has static values; the index has no partition document",
            wanted,
            stored,
        )
    difference = first_difference(statics, meta_of(stored).get("statics") or {})
    if difference is None:
        return None
    detail = f"partition document statics: {difference}"
    return Finding(Kind.MISMATCH, wanted.doc_id, detail, wanted, stored)


def check_unexpected(stored: Document, now_ms: int) -> Finding | None:
    """The divergence of a stored document no row of the table stands for, or None."""
    meta = meta_of(stored)
    if meta.get("kind") == PARTITION_KIND:
        return None  # a partition without rows: hidden, kept for rows written later
    if dead_letter_mark(stored):
        return Finding(Kind.DEAD_LETTER, stored.doc_id, _marked(stored), None, stored)
    if is_tombstone(stored) or hidden(stored, now_ms):
        return None
    expires_at = meta.get("expires_at")
    if expires_at is not None:
        detail = f"no row; the document says it expires at {expires_at} (ms) and is still found"
        return Finding(Kind.EXPIRED_VISIBLE, stored.doc_id, detail, None, stored)
    return Finding(Kind.EXTRA, stored.doc_id, "no row; the document is found", None, stored)


# ---------------------------------------------------------------- stored documents


def meta_of(document: Document) -> Mapping[str, Any]:
    meta = document.body.get(META_FIELD)
    return meta if isinstance(meta, Mapping) else {}


def body_of(document: Document) -> dict[str, Any]:
    """A stored document's fields without `_ks2os`."""
    return {name: value for name, value in document.body.items() if name != META_FIELD}


def is_tombstone(document: Document) -> bool:
    return bool(meta_of(document).get("deleted"))


def hidden(document: Document, now_ms: int) -> bool:
    """Is the document hidden by the alias filter as expired?"""
    expires_at = meta_of(document).get("expires_at")
    return isinstance(expires_at, int) and expires_at <= now_ms


def dead_letter_mark(document: Document) -> bool:
    return bool(meta_of(document).get(DEAD_LETTER_FIELD))


def newest_version(document: Document) -> int:
    """The highest version a stored document shows: its row's, or the statics' it shows."""
    meta = meta_of(document)
    versions = [meta.get("version"), meta.get("static_version")]
    return max((v for v in versions if isinstance(v, int)), default=0)


def token_of(document: Document) -> str | None:
    token = meta_of(document).get("token")
    return token if isinstance(token, str) else None


def _marked(document: Document) -> str:
    mark = meta_of(document).get(DEAD_LETTER_FIELD)
    reason = mark.get("reason") if isinstance(mark, Mapping) else None
    return "marked by a dead letter" + (f": {reason}" if reason else "")


def _same_expiry(expected: int | None, stored: Any) -> bool:
    if expected is None or stored is None:
        return expected is None and stored is None
    return isinstance(stored, int) and abs(stored - expected) <= EXPIRY_TOLERANCE_MS


def first_difference(expected: Mapping[str, Any], stored: Mapping[str, Any]) -> str | None:
    """How two bodies differ (how many fields, and the first by name), or None if equal."""
    differing = sorted(
        name
        for name in expected.keys() | stored.keys()
        if name not in stored or name not in expected or stored[name] != expected[name]
    )
    if not differing:
        return None
    name = differing[0]
    shown = (
        f"{name}: index {_show(stored, name)}, table {_show(expected, name)}"
        if len(differing) == 1
        else f"{len(differing)} fields differ, first {name}: index {_show(stored, name)}, "
        f"table {_show(expected, name)}"
    )
    return shown


def _show(body: Mapping[str, Any], name: str) -> str:
    if name not in body:
        return "(absent)"
    text = json.dumps(body[name], ensure_ascii=False, sort_keys=True)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"
