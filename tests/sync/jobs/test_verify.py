"""`run_verify` against keyspaces_local and osmem, in both timestamp modes.

What a user relies on: verify finds each kind of divergence planted in an
index that matched its table (a deleted document, an extra one, an altered
field, stale statics, an expired row still found, a dead-letter mark), and
`repair=True` rewrites exactly those documents, nothing else; a sample reads
part of the table; and a table being written while the follower runs shows
no divergence at all.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.compare import DEAD_LETTER_FIELD
from sync.config import Config
from sync.documents import META_FIELD
from sync.indices import alias_targets
from sync.jobs.backfill import run_backfill
from sync.jobs.follow import run_follow
from sync.jobs.verify import KINDS, VerifyReport, run_verify
from sync.mapping import TableMapping, mapping_from_dict
from tests.conftest import table_options

# Tests plant divergences by hand, so no follower undoes them: a short settle suffices.
SETTLE_S = 0.2


def _mapping(keyspace: str, **properties: str) -> TableMapping:
    """The table's mapping, strict: every field has its property."""
    return mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": "t"},
            "index": {
                "alias": f"{keyspace.lower()}-t",
                "mappings": {
                    "dynamic": "strict",
                    "properties": {name: {"type": kind} for name, kind in properties.items()},
                },
            },
        }
    )


def _create(cql: Any, keyspace: str, columns: str, client_timestamps: bool) -> None:
    options = table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=client_timestamps)
    ttl = "'ttl': {'status': 'enabled'}"
    options = options.replace("CUSTOM_PROPERTIES = {", "CUSTOM_PROPERTIES = {" + ttl + ", ")
    cql.execute(f'CREATE TABLE "{keyspace}"."t" ({columns})' + options)


def _stamps(client: OpenSearch, index: str) -> dict[str, tuple[int, int]]:
    """Every document of the index (tombstones, partition documents too) -> its stamp."""
    client.indices.refresh(index=index)
    body = {"query": {"match_all": {}}, "size": 10_000, "seq_no_primary_term": True}
    hits = client.search(index=index, body=body)["hits"]["hits"]
    return {hit["_id"]: (hit["_seq_no"], hit["_primary_term"]) for hit in hits}


def _get(client: OpenSearch, index: str, doc_id: str) -> dict[str, Any]:
    found: dict[str, Any] = client.get(index=index, id=doc_id)
    return found


def _rewrite(
    client: OpenSearch, index: str, doc_id: str, edit: Callable[[dict[str, Any]], None]
) -> None:
    """Change a stored document in place, keeping its `_ks2os.version` (a planted fault)."""
    stored = _get(client, index, doc_id)
    body = stored["_source"]
    edit(body)
    client.index(
        index=index,
        id=doc_id,
        body=body,
        params={"if_seq_no": stored["_seq_no"], "if_primary_term": stored["_primary_term"]},
    )


def _map_dead_letter_mark(client: OpenSearch, index: str) -> None:
    """The dead-letter mark's field, unless the writer's mapping has it already."""
    live = client.indices.get_mapping(index=index)[index]["mappings"]["properties"]
    if DEAD_LETTER_FIELD not in live[META_FIELD]["properties"]:
        field = {DEAD_LETTER_FIELD: {"type": "object", "enabled": False}}
        client.indices.put_mapping(
            index=index, body={"properties": {META_FIELD: {"properties": field}}}
        )


def _found(report: VerifyReport) -> dict[str, set[str]]:
    return {kind: {e.doc_id for e in report.examples.get(kind, ())} for kind in KINDS}


def _wait_until(condition: Callable[[], bool], what: str, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_verify_finds_each_planted_divergence_and_repair_rewrites_exactly_those(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    _create(
        cql,
        keyspace,
        '"shop" int, "sku" text, "price" int, "title" text, PRIMARY KEY ("shop", "sku")',
        client_timestamps,
    )
    insert = cql.prepare(
        f'INSERT INTO "{keyspace}"."t" ("shop", "sku", "price", "title") VALUES (?, ?, ?, ?)'
    )
    for n in range(60):
        cql.execute(insert, (n % 7, f"sku-{n}", n, f"product {n}"))
    cql.execute(
        f'INSERT INTO "{keyspace}"."t" ("shop", "sku", "price") VALUES (1, \'short\', 1) '
        "USING TTL 2"
    )
    mapping = _mapping(keyspace, shop="integer", sku="keyword", price="integer", title="text")
    cfg = make_config(backfill={"ranges": 8, "workers": 2, "page_size": 25})
    assert run_backfill(cfg, mapping).written == 61
    index = alias_targets(opensearch, mapping.alias)[0]

    clean = run_verify(cfg, mapping, settle_s=SETTLE_S)
    assert clean.ok and clean.complete and clean.divergent == 0
    assert clean.rows == 61 and clean.documents == 61 and clean.ranges == 8

    # The plants: each leaves the document's version as it was.
    opensearch.delete(index=index, id="0:sku-0")
    cql.execute(f'DELETE FROM "{keyspace}"."t" WHERE "shop" = 1 AND "sku" = \'sku-1\'')
    _rewrite(opensearch, index, "2:sku-2", lambda body: body.update(title="altered"))
    _rewrite(opensearch, index, "1:short", lambda body: body[META_FIELD].update(expires_at=2**41))
    _map_dead_letter_mark(opensearch, index)
    _rewrite(
        opensearch,
        index,
        "3:sku-3",
        # The writer's mark (sync.documents.mark_body): a flag the alias filter can hide.
        lambda body: body[META_FIELD].update({DEAD_LETTER_FIELD: True}),
    )
    row_gone = f'SELECT * FROM "{keyspace}"."t" WHERE "shop" = 1 AND "sku" = \'short\''
    _wait_until(lambda: cql.execute(row_gone).one() is None, "the TTL row to expire")

    planted = {
        "missing": {"0:sku-0"},
        "extra": {"1:sku-1"},
        "mismatch": {"2:sku-2"},
        "expired_visible": {"1:short"},
        "dead_letter": {"3:sku-3"},
        "no_token": set(),
    }
    found = run_verify(cfg, mapping, settle_s=SETTLE_S)
    assert not found.ok and found.complete
    assert _found(found) == planted
    assert found.counts == {kind: len(ids) for kind, ids in planted.items()}
    (altered,) = found.examples["mismatch"]
    assert altered.detail == 'title: index "altered", table "product 2"'

    before = _stamps(opensearch, index)
    repaired = run_verify(cfg, mapping, repair=True, settle_s=SETTLE_S)
    assert repaired.ok and repaired.divergent == 5 and repaired.repaired == 5, (
        repaired.counts,
        repaired.repaired,
        repaired.unrepaired,
    )
    assert repaired.unrepaired == ()
    after = _stamps(opensearch, index)
    rewritten = {doc_id for doc_id, stamp in after.items() if before.get(doc_id) != stamp}
    assert rewritten == set().union(*planted.values())

    again = run_verify(cfg, mapping, settle_s=SETTLE_S)
    assert again.ok and again.divergent == 0
    opensearch.indices.refresh(index=mapping.alias)
    assert opensearch.count(index=mapping.alias)["count"] == 59  # 61 - sku-1 - short


def test_verify_finds_stale_statics_and_repair_rewrites_only_those_rows(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    _create(
        cql,
        keyspace,
        '"p" int, "c" int, "banner" text static, "v" text, PRIMARY KEY ("p", "c")',
        client_timestamps,
    )
    insert = cql.prepare(f'INSERT INTO "{keyspace}"."t" ("p", "c", "v") VALUES (?, ?, ?)')
    for p in range(4):
        cql.execute(f'UPDATE "{keyspace}"."t" SET "banner" = \'b{p}\' WHERE "p" = {p}')
        for c in range(5):
            cql.execute(insert, (p, c, f"v{p}.{c}"))
    mapping = _mapping(keyspace, p="integer", c="integer", banner="keyword", v="keyword")
    cfg = make_config(backfill={"ranges": 4, "workers": 2})
    run_backfill(cfg, mapping)
    index = alias_targets(opensearch, mapping.alias)[0]
    assert run_verify(cfg, mapping, settle_s=SETTLE_S).ok

    def older_statics(body: dict[str, Any]) -> None:
        # A fan-out that never reached this row: older values, an older statics version.
        body["banner"] = "old"
        body[META_FIELD]["static_version"] -= 1

    _rewrite(opensearch, index, "1:3", older_statics)
    _rewrite(opensearch, index, "2:0", lambda body: body.update(v="altered"))
    # A static change no record brought: the partition document and every row are stale.
    cql.execute(f'UPDATE "{keyspace}"."t" SET "banner" = \'new\' WHERE "p" = 3')

    stale_partition = {"!p:3", *(f"3:{c}" for c in range(5))}
    found = run_verify(cfg, mapping, settle_s=SETTLE_S)
    assert _found(found)["mismatch"] <= {"1:3", "2:0", *stale_partition}
    assert found.counts["mismatch"] == 2 + len(stale_partition)
    assert found.divergent == found.counts["mismatch"]

    before = _stamps(opensearch, index)
    repaired = run_verify(cfg, mapping, repair=True, settle_s=SETTLE_S, examples=10)
    assert repaired.ok and repaired.repaired == repaired.divergent == 8
    after = _stamps(opensearch, index)
    rewritten = {doc_id for doc_id, stamp in after.items() if before.get(doc_id) != stamp}
    assert rewritten == {"1:3", "2:0", *stale_partition}
    assert _get(opensearch, index, "1:3")["_source"]["banner"] == "b1"
    assert run_verify(cfg, mapping, settle_s=SETTLE_S).ok


def test_a_sample_reads_part_of_the_table_and_a_share_of_the_ranges(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    _create(cql, keyspace, '"id" int PRIMARY KEY, "n" int', client_timestamps=False)
    insert = cql.prepare(f'INSERT INTO "{keyspace}"."t" ("id", "n") VALUES (?, ?)')
    for n in range(200):
        cql.execute(insert, (n, n))
    mapping = _mapping(keyspace, id="integer", n="integer")
    cfg = make_config(backfill={"ranges": 8, "workers": 2})
    run_backfill(cfg, mapping)
    index = alias_targets(opensearch, mapping.alias)[0]
    opensearch.delete(index=index, id="7")

    small = run_verify(cfg, mapping, sample=16, settle_s=SETTLE_S)
    assert small.sampled and small.complete and small.ranges == 8
    assert 8 <= small.rows <= 16  # two rows of each range (one where a range has less)
    whole = run_verify(cfg, mapping, sample=10_000, settle_s=SETTLE_S)
    assert whole.rows == 200 and _found(whole)["missing"] == {"7"} and not whole.ok
    half = run_verify(cfg, mapping, fraction=0.5, settle_s=SETTLE_S, seed=3)
    assert half.ranges == 4 and half.ranges_total == 8 and 0 < half.rows < 200


@pytest.mark.unit
def test_both_sides_merge_by_token_and_a_sample_stops_mid_partition() -> None:
    from sync.bulk import Document, Stamp
    from sync.jobs.verify import _merge
    from sync.model import Change, Op, ScanRead

    def row(c: int) -> Change:
        return Change(Op.UPSERT, (c,), {"c": c}, 1, ScanRead(0, 9, 1))

    rows = [(1, row(1)), (3, row(3)), (3, row(4)), (3, row(5)), (7, row(7))]
    docs = [(t, Document(str(t), {}, Stamp(1, 1))) for t in (2, 3, 7, 8)]
    whole = [
        (g.token, len(g.changes), len(g.stored), g.partial)
        for g in _merge(iter(rows), iter(docs), None)
    ]
    assert whole == [
        (1, 1, 0, False),
        (2, 0, 1, False),
        (3, 3, 1, False),
        (7, 1, 1, False),
        (8, 0, 1, False),
    ]
    cut = [
        (g.token, len(g.changes), len(g.stored), g.partial)
        for g in _merge(iter(rows), iter(docs), 3)
    ]
    assert cut == [(1, 1, 0, False), (2, 0, 1, False), (3, 2, 1, True)]
    exact = [(g.token, len(g.changes), g.partial) for g in _merge(iter(rows), iter(docs), 4)]
    assert exact == [(1, 1, False), (2, 0, False), (3, 3, False)]


def test_an_index_without_tokens_is_reported_not_compared(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    _create(cql, keyspace, '"id" int PRIMARY KEY, "n" int', client_timestamps=False)
    cql.execute(f'INSERT INTO "{keyspace}"."t" ("id", "n") VALUES (1, 1)')
    mapping = _mapping(keyspace, id="integer", n="integer")
    cfg = make_config()
    run_backfill(cfg, mapping)
    index = alias_targets(opensearch, mapping.alias)[0]
    _rewrite(opensearch, index, "1", lambda body: body[META_FIELD].pop("token"))
    report = run_verify(cfg, mapping, settle_s=SETTLE_S)
    assert not report.ok and not report.complete and report.counts["no_token"] == 1
    assert "ks2os reindex" in report.examples["no_token"][0].detail


def _plant_version(client: OpenSearch, index: str, doc_id: str, version: int, title: str) -> None:
    """The document altered and carrying `version` (as if written from a change at that time)."""
    body = _get(client, index, doc_id)["_source"]
    body["title"] = title
    body[META_FIELD]["version"] = version
    client.index(
        index=index, id=doc_id, body=body, params={"version": version, "version_type": "external"}
    )


def test_a_document_newer_than_the_read_waits_and_one_ahead_of_the_clock_is_unrepairable(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    from sync.keyspaces import service_now_ms
    from sync.version import base

    _create(cql, keyspace, '"id" int PRIMARY KEY, "title" text', client_timestamps=False)
    for n in range(3):
        cql.execute(f'INSERT INTO "{keyspace}"."t" ("id", "title") VALUES ({n}, \'t{n}\')')
    mapping = _mapping(keyspace, id="integer", title="text")
    cfg = make_config(backfill={"ranges": 2, "snapshot_margin_ms": 1000})
    run_backfill(cfg, mapping)
    index = alias_targets(opensearch, mapping.alias)[0]
    now = service_now_ms(cql)
    # Written "just now": above every fresh read's snapshot version for a second.
    _plant_version(opensearch, index, "1", base(now), "recent")
    # Written "tomorrow": no repair version can beat it.
    _plant_version(opensearch, index, "2", base(now + 86_400_000), "future")

    report = run_verify(cfg, mapping, repair=True, settle_s=0.5)
    assert report.counts["mismatch"] == 2 and report.repaired == 1 and not report.ok
    (unrepaired,) = report.unrepaired
    assert unrepaired.doc_id == "2" and "ks2os reindex" in unrepaired.detail
    assert _get(opensearch, index, "1")["_source"]["title"] == "t1"
    assert _get(opensearch, index, "2")["_source"]["title"] == "future"


# ---- changes made while verify runs ---------------------------------------------------------


@contextmanager
def _following(cfg: Config, mapping: TableMapping) -> Iterator[None]:
    stop = threading.Event()
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            run_follow(cfg, mapping, stop=stop)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=follow, name="test-follower")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive() and not errors, errors


@contextmanager
def _writing(cql: Any, keyspace: str, rows: int) -> Iterator[list[int]]:
    """Upserts and deletes of random rows until the block ends; yields the write count."""
    stop = threading.Event()
    count = [0]
    upsert = cql.prepare(f'INSERT INTO "{keyspace}"."t" ("id", "n", "s") VALUES (?, ?, ?)')
    delete = cql.prepare(f'DELETE FROM "{keyspace}"."t" WHERE "id" = ?')
    rng = random.Random(7)

    def write() -> None:
        while not stop.wait(0.01):
            key = rng.randrange(rows)
            if rng.random() < 0.2:
                cql.execute(delete, (key,))
            else:
                cql.execute(upsert, (key, rng.randrange(1000), f"text {rng.random()}"))
            count[0] += 1

    thread = threading.Thread(target=write, name="test-writer")
    thread.start()
    try:
        yield count
    finally:
        stop.set()
        thread.join(timeout=30)


def test_verify_of_a_table_written_while_the_follower_runs_finds_no_divergence(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    _create(cql, keyspace, '"id" int PRIMARY KEY, "n" int, "s" text', client_timestamps)
    upsert = cql.prepare(f'INSERT INTO "{keyspace}"."t" ("id", "n", "s") VALUES (?, ?, ?)')
    for n in range(150):
        cql.execute(upsert, (n, n, "start"))
    mapping = _mapping(keyspace, id="integer", n="integer", s="keyword")
    cfg = make_config(
        backfill={"ranges": 8, "workers": 2, "page_size": 20, "snapshot_margin_ms": 1000},
        follow={"idle_poll_ms": 50},
    )
    run_backfill(cfg, mapping)
    with _following(cfg, mapping), _writing(cql, keyspace, 150) as writes:
        _wait_until(lambda: writes[0] >= 20, "the writer to start")
        report = run_verify(cfg, mapping, settle_s=3.0)
        assert writes[0] > 20
    assert report.complete and report.divergent == 0 and report.ok, report
    assert report.rows > 100
