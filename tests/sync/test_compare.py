"""`sync.compare`, the pure part of verify: what the table says beside what the index holds.

Each divergence a user relies on verify to find is named here by its kind,
and so is each state that is not one (a tombstone without a row, a document
hidden as expired whose TTL record is late, a partition document without
rows).
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from sync.bulk import Document, Stamp
from sync.compare import (
    DEAD_LETTER_FIELD,
    EXPIRY_TOLERANCE_MS,
    Kind,
    check_unexpected,
    compare,
    expected_documents,
    first_difference,
    newest_version,
)
from sync.documents import DocumentBuilder
from sync.mapping import mapping_from_dict
from sync.model import Change, Op, ScanRead
from sync.schema import TableLayout

pytestmark = pytest.mark.unit

NOW = 1_700_000_000_000
SCAN = ScanRead(0, 10, NOW)
TABLE = TableLayout(
    "demo", "t", ("p",), ("c",), (), {"p": "int", "c": "int", "a": "text", "n": "int"}
)
STATIC = TableLayout(
    "demo", "st", ("p",), ("c",), ("s",), {"p": "int", "c": "int", "s": "text", "a": "text"}
)


def _builder(table: TableLayout = TABLE, **document: Any) -> DocumentBuilder:
    mapping = mapping_from_dict(
        {
            "source": {"keyspace": "demo", "table": table.table},
            "index": {"alias": "t"},
            "document": document,
        }
    )
    return DocumentBuilder(mapping, table, tokens=lambda key: 42)


def _row(c: int, expires_at_ms: int | None = None, **image: Any) -> Change:
    return Change(Op.UPSERT, (1, c), {"p": 1, "c": c, **image}, 7, SCAN, expires_at_ms)


def _stored(change: Change, builder: DocumentBuilder, **meta: Any) -> Document:
    """The document the writer would store for `change` (non-static tables), meta adjusted."""
    action = builder.action_for(change)
    body = orjson.loads(action.body if isinstance(action.body, bytes) else b"{}")
    body["_ks2os"].update(meta)
    return Document(str(action.doc_id), body, Stamp(1, 1))


def _doc(doc_id: str, **body: Any) -> Document:
    return Document(doc_id, body, Stamp(1, 1))


def _kinds(findings: list[Any]) -> list[tuple[Kind, str]]:
    return [(f.kind, f.doc_id) for f in findings]


def test_equal_documents_give_no_finding() -> None:
    b = _builder()
    rows = [_row(1, a="x", n=1), _row(2, a="y")]
    stored = [_stored(row, b) for row in rows]
    assert compare(expected_documents(b, rows), stored, NOW) == []


def test_a_row_without_a_live_document_is_missing() -> None:
    b = _builder()
    rows = [_row(1, a="x"), _row(2, a="y")]
    tombstone = _stored(Change(Op.DELETE, (1, 2), None, 9, SCAN), b)
    findings = compare(expected_documents(b, rows), [tombstone], NOW)
    assert _kinds(findings) == [(Kind.MISSING, "1:1"), (Kind.MISSING, "1:2")]
    assert "tombstone" in findings[1].detail


def test_a_live_document_without_a_row_is_extra_and_a_tombstone_is_not() -> None:
    b = _builder()
    extra = _stored(_row(3, a="z"), b)
    gone = _stored(Change(Op.DELETE, (1, 4), None, 9, SCAN), b)
    assert _kinds(compare([], [extra, gone], NOW)) == [(Kind.EXTRA, "1:3")]


def test_a_changed_field_is_a_mismatch_naming_it() -> None:
    b = _builder()
    row = _row(1, a="table", n=5)
    stored = _stored(_row(1, a="index", n=5), b)
    (finding,) = compare(expected_documents(b, [row]), [stored], NOW)
    assert finding.kind is Kind.MISMATCH
    assert finding.detail == 'a: index "index", table "table"'
    assert finding.expected is not None and finding.expected.change is row


def test_a_field_only_one_side_has_is_a_mismatch() -> None:
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "b: index 2, table (absent)"
    assert first_difference({"a": 1, "b": 3}, {"a": 2}) == (
        "2 fields differ, first a: index 2, table 1"
    )


def test_expiry_is_compared_within_the_tolerance_of_its_two_sources() -> None:
    b = _builder()
    row = _row(1, NOW + 60_000, a="x")
    close = _stored(_row(1, NOW + 60_000 + EXPIRY_TOLERANCE_MS, a="x"), b)
    assert compare(expected_documents(b, [row]), [close], NOW) == []
    never = _stored(_row(1, None, a="x"), b)
    (finding,) = compare(expected_documents(b, [row]), [never], NOW)
    assert finding.kind is Kind.MISMATCH and finding.detail.startswith("expires_at:")


def test_an_expiry_the_row_read_cannot_show_is_not_a_divergence() -> None:
    # CQL has no TTL() for a row marker or a non-frozen collection's elements: a row
    # whose only values are such reads as never expiring, while the index holds the
    # expiry its stream record gave (found by make chaos on a default-TTL table).
    table = TableLayout(
        "demo", "t", ("p",), ("c",), (), {"p": "int", "c": "int", "a": "text", "tags": "set<text>"}
    )
    b = _builder(table)
    expiring = _stored(_row(1, NOW + 60_000, tags=["x"]), b)
    assert compare(expected_documents(b, [_row(1, None, tags=["x"])]), [expiring], NOW) == []
    marker_only = _stored(_row(2, NOW + 60_000), b)
    assert compare(expected_documents(b, [_row(2, None)]), [marker_only], NOW) == []
    # A value that can carry a TTL and has none: the row lives on, for certain.
    with_a = _stored(_row(3, NOW + 60_000, a="x", tags=["x"]), b)
    (finding,) = compare(expected_documents(b, [_row(3, None, a="x", tags=["x"])]), [with_a], NOW)
    assert finding.kind is Kind.MISMATCH and finding.detail.startswith("expires_at:")


def test_a_row_hidden_as_expired_while_the_table_returns_it_is_a_mismatch() -> None:
    b = _builder()
    stored = _stored(_row(1, NOW - 1, a="x"), b)
    (finding,) = compare(expected_documents(b, [_row(1, NOW + 5_000, a="x")]), [stored], NOW)
    assert finding.kind is Kind.MISMATCH and "hidden as expired" in finding.detail


def test_without_its_row_an_expired_document_is_hidden_not_a_divergence() -> None:
    b = _builder()
    assert check_unexpected(_stored(_row(1, NOW - 1, a="x"), b), NOW) is None


def test_without_its_row_a_document_still_found_despite_its_expiry_is_expired_visible() -> None:
    b = _builder()
    finding = check_unexpected(_stored(_row(1, NOW + 3_600_000, a="x"), b), NOW)
    assert finding is not None and finding.kind is Kind.EXPIRED_VISIBLE


def test_a_document_marked_by_a_dead_letter_is_reported_with_or_without_its_row() -> None:
    b = _builder()
    row = _row(1, a="x")
    marked = _stored(row, b, **{DEAD_LETTER_FIELD: {"reason": "mapper_parsing_exception"}})
    (finding,) = compare(expected_documents(b, [row]), [marked], NOW)
    assert finding.kind is Kind.DEAD_LETTER and "mapper_parsing_exception" in finding.detail
    alone = check_unexpected(_stored(_row(2, a="y"), b, **{DEAD_LETTER_FIELD: True}), NOW)
    assert alone is not None and alone.kind is Kind.DEAD_LETTER


def test_a_row_the_filter_leaves_out_must_have_no_live_document() -> None:
    b = _builder(filter={"column": "a", "eq": "keep"})
    row = _row(1, a="drop")
    (wanted,) = expected_documents(b, [row])
    assert wanted.body is None
    tombstone = _stored(row, b)  # the filter makes the writer store a tombstone
    assert compare([wanted], [tombstone], NOW) == []
    assert compare([wanted], [], NOW) == []
    live = _doc("1:1", p=1, c=1, a="drop", _ks2os={"version": 7, "deleted": False})
    (finding,) = compare([wanted], [live], NOW)
    assert finding.kind is Kind.MISMATCH and "leaves this row out" in finding.detail


def test_computed_fields_and_nulls_are_compared_as_the_builder_makes_them() -> None:
    b = _builder(computed={"label": {"concat": ["a", "n"], "separator": "/"}}, nulls="explicit")
    row = _row(1, a="x", n=3)
    assert compare(expected_documents(b, [row]), [_stored(row, b)], NOW) == []
    wrong = _stored(row, b)
    wrong.body["label"] = "x/4"
    (finding,) = compare(expected_documents(b, [row]), [wrong], NOW)
    assert finding.detail == 'label: index "x/4", table "x/3"'


def test_a_row_whose_document_cannot_be_built_is_a_mismatch_saying_why() -> None:
    b = _builder()
    row = _row(1, a=object())
    (wanted,) = expected_documents(b, [row])
    assert wanted.error
    (finding,) = compare([wanted], [], NOW)
    assert finding.kind is Kind.MISMATCH and "cannot be built" in finding.detail


# ---- tables with static columns ---------------------------------------------------------


def _static_row(c: int, s: str | None, a: str) -> Change:
    image = {"p": 1, "c": c, "a": a}
    if s is not None:
        image["s"] = s
    return Change(Op.UPSERT, (1, c), image, 7, SCAN)


def _static_docs(s: str | None, rows: dict[int, str], shown: dict[int, str | None]) -> list[Any]:
    partition = _doc(
        "!p:1",
        _ks2os={"kind": "partition", "version": 5, "statics": {} if s is None else {"s": s}},
    )
    docs = [partition]
    for c, a in rows.items():
        body: dict[str, Any] = {"p": 1, "c": c, "a": a}
        if shown[c] is not None:
            body["s"] = shown[c]
        body["_ks2os"] = {"version": 5, "static_version": 5, "partition": "1", "deleted": False}
        docs.append(_doc(f"1:{c}", **body))
    return docs


def test_rows_of_a_static_table_are_compared_with_their_partitions_statics() -> None:
    b = _builder(STATIC)
    rows = [_static_row(1, "new", "x"), _static_row(2, "new", "y")]
    expected = expected_documents(b, rows)
    assert sorted(e.doc_id for e in expected) == ["!p:1", "1:1", "1:2"]
    fine = _static_docs("new", {1: "x", 2: "y"}, {1: "new", 2: "new"})
    assert compare(expected, fine, NOW) == []
    stale_row = _static_docs("new", {1: "x", 2: "y"}, {1: "new", 2: "old"})
    (finding,) = compare(expected, stale_row, NOW)
    assert (finding.kind, finding.doc_id) == (Kind.MISMATCH, "1:2")
    assert finding.detail == 's: index "old", table "new"'
    stale_partition = _static_docs("old", {1: "x", 2: "y"}, {1: "new", 2: "new"})
    (finding,) = compare(expected, stale_partition, NOW)
    assert (finding.kind, finding.doc_id) == (Kind.MISMATCH, "!p:1")


def test_a_partition_document_is_needed_only_when_the_partition_has_statics() -> None:
    b = _builder(STATIC)
    without = expected_documents(b, [_static_row(1, None, "x")])
    rows_only = _static_docs(None, {1: "x"}, {1: None})[1:]
    assert compare(without, rows_only, NOW) == []
    with_statics = expected_documents(b, [_static_row(1, "s", "x")])
    (finding,) = compare(with_statics, _static_docs(None, {1: "x"}, {1: "s"})[1:], NOW)
    assert (finding.kind, finding.doc_id) == (Kind.MISSING, "!p:1")


def test_a_partition_document_without_rows_is_not_extra() -> None:
    assert compare([], _static_docs("s", {}, {}), NOW) == []


def test_the_newest_version_a_document_shows_counts_its_statics() -> None:
    assert newest_version(_doc("x", _ks2os={"version": 3, "static_version": 9})) == 9
    assert newest_version(_doc("x", _ks2os={"version": 3})) == 3
    assert newest_version(_doc("x")) == 0
