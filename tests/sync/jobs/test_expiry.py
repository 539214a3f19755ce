"""A value stops being found the moment it expires, column and static TTLs alike.

What users rely on (issue 10, item 6): `UPDATE ... USING TTL n SET a = 'secret'`
on a row that lives on makes Keyspaces return `a = null` after n seconds;
search must stop finding 'secret' then, not when Keyspaces' late TTL record
arrives (hours or days later), and the row must come back without the value
within seconds. The same for a static value with a TTL: it leaves every row of
its partition. Through the stream, the scan and a KEYS_ONLY lookup, in both
timestamp modes. The sweep's rewrite beats the stored document and loses to
any newer change.

The emulator sends its TTL records an hour late here, so only ks2os's own
hiding and sweep can make these tests pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opensearchpy import OpenSearch

from sync.bulk import Reader
from sync.config import Config
from sync.jobs import Job
from sync.jobs.backfill import run_backfill
from sync.jobs.restate import ExpirySweep
from sync.mapping import TableMapping, mapping_from_dict
from sync.model import Change, Op, StreamPosition
from sync.sources.streams import RowLookup
from sync.version import STEP
from tests.sync.jobs.follow_helpers import following, until

# TTL records an hour after the expiry: far beyond every test here.
OWN_EMULATOR: dict[str, Any] = {"ttl_record_delay_s": 3600.0}
TTL_S = 3


def create(cql: Any, keyspace: str, view_type: str, client_timestamps: bool) -> str:
    props = [f"'cdc_specification': {{'view_type': '{view_type}'}}", "'ttl': {'status': 'enabled'}"]
    if client_timestamps:
        props.append("'client_side_timestamps': {'status': 'enabled'}")
    cql.execute(
        f'CREATE TABLE "{keyspace}"."notes" (k int, c int, a text, b int, s text STATIC, '
        "PRIMARY KEY (k, c)) WITH cdc = true AND CUSTOM_PROPERTIES = {" + ", ".join(props) + "}"
    )
    return f'"{keyspace}"."notes"'


def notes_mapping(keyspace: str) -> TableMapping:
    return mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": "notes"},
            "index": {
                "alias": f"{keyspace.lower()}-notes",
                "mappings": {
                    "dynamic": "strict",
                    "properties": {
                        "k": {"type": "integer"},
                        "c": {"type": "integer"},
                        "a": {"type": "keyword"},
                        "b": {"type": "integer"},
                        "s": {"type": "keyword"},
                    },
                },
            },
            "document": {"routing": "partition"},
        }
    )


def search(client: OpenSearch, alias: str, **term: Any) -> dict[str, dict[str, Any]]:
    """What a user's search through the alias finds (all rows, or those matching `term`)."""
    if not client.indices.exists_alias(name=alias):
        return {}  # the follower has not made the index yet
    client.indices.refresh(index=alias)
    query = {"term": term} if term else {"match_all": {}}
    hits = client.search(index=alias, body={"query": query, "size": 100})["hits"]["hits"]
    return {h["_id"]: {k: v for k, v in h["_source"].items() if k != "_ks2os"} for h in hits}


def expire(cql: Any, statement: str) -> float:
    """Run a `USING TTL` write; returns when its values expire (this host's clock)."""
    cql.execute(statement)
    return time.time() + TTL_S


def test_a_column_ttl_value_leaves_search_at_its_expiry_and_the_row_comes_back(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    column_ttl_round_trip(
        cql, keyspace, opensearch, make_config, client_timestamps, "NEW_AND_OLD_IMAGES"
    )


def test_a_keys_only_lookup_carries_the_expiry_of_each_value(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    # The lookup reads the row as the scan does, TTL()s included (both modes alike).
    column_ttl_round_trip(cql, keyspace, opensearch, make_config, False, "KEYS_ONLY")


def column_ttl_round_trip(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
    view_type: str,
) -> None:
    table = create(cql, keyspace, view_type, client_timestamps)
    mapping = notes_mapping(keyspace)
    alias = mapping.alias
    with following(make_config(follow={"sweep_interval_ms": 200}), mapping):
        cql.execute(f"INSERT INTO {table} (k, c, a, b) VALUES (1, 1, 'public', 7)")
        until(lambda: search(opensearch, alias).get("1:1", {}).get("a") == "public", "indexed")
        expires = expire(
            cql, f"UPDATE {table} USING TTL {TTL_S} SET a = 'secret' WHERE k = 1 AND c = 1"
        )
        until(lambda: "1:1" in search(opensearch, alias, a="secret"), "the secret is indexed")
        until(lambda: time.time() > expires, "the value expired in Keyspaces")
        until(lambda: not search(opensearch, alias, a="secret"), "the secret is no longer found")
        until(
            lambda: search(opensearch, alias).get("1:1") == {"k": 1, "c": 1, "b": 7},
            "the row is back, without the expired value",
        )
        assert not search(opensearch, alias, a="secret")


def test_a_value_expiring_after_a_backfill_leaves_search_and_the_follower_restates_the_row(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    table = create(cql, keyspace, "NEW_AND_OLD_IMAGES", client_timestamps)
    mapping = notes_mapping(keyspace)
    alias = mapping.alias
    cql.execute(f"INSERT INTO {table} (k, c, a, b) VALUES (2, 1, 'public', 5)")
    expires = expire(
        cql, f"UPDATE {table} USING TTL {TTL_S} SET a = 'secret' WHERE k = 2 AND c = 1"
    )
    cfg = make_config(follow={"sweep_interval_ms": 200}, backfill={"ranges": 4, "workers": 1})
    assert run_backfill(cfg, mapping).complete
    with Job(cfg, mapping) as job:  # the scan read the value's TTL
        stored = Reader(opensearch, job.index, job.policy).get({"2:1": "2"})["2:1"]
    assert stored.body["a"] == "secret"
    assert stored.body["_ks2os"]["value_expiry"]["a"] <= expires * 1000
    until(lambda: time.time() > expires, "the value expired in Keyspaces")
    assert not search(opensearch, alias, a="secret")  # hidden without any follower
    with following(cfg, mapping):
        until(
            lambda: search(opensearch, alias).get("2:1") == {"k": 2, "c": 1, "b": 5},
            "the follower's sweep restates the row without the value",
        )


def test_a_static_value_with_a_ttl_leaves_every_row_of_its_partition(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    table = create(cql, keyspace, "NEW_AND_OLD_IMAGES", client_timestamps)
    mapping = notes_mapping(keyspace)
    alias = mapping.alias
    cql.execute(f"INSERT INTO {table} (k, c, b) VALUES (3, 1, 1)")
    cql.execute(f"INSERT INTO {table} (k, c, b) VALUES (3, 2, 2)")
    cql.execute(f"INSERT INTO {table} (k, c, b) VALUES (4, 1, 3)")
    cfg = make_config(follow={"sweep_interval_ms": 200}, backfill={"ranges": 4, "workers": 1})
    assert run_backfill(cfg, mapping).complete
    with following(cfg, mapping):
        cql.execute(f"UPDATE {table} SET s = 'kept' WHERE k = 4")
        expires = expire(cql, f"UPDATE {table} USING TTL {TTL_S} SET s = 'flash' WHERE k = 3")
        until(lambda: search(opensearch, alias, s="flash").keys() == {"3:1", "3:2"}, "shown")
        until(lambda: time.time() > expires, "the static value expired in Keyspaces")
        until(lambda: not search(opensearch, alias, s="flash"), "no row shows it any more")
        until(
            lambda: (
                search(opensearch, alias)
                == {
                    "3:1": {"k": 3, "c": 1, "b": 1},
                    "3:2": {"k": 3, "c": 2, "b": 2},
                    "4:1": {"k": 4, "c": 1, "b": 3, "s": "kept"},
                }
            ),
            "the rows are back, without the expired static value",
        )


class RacingLookup:
    """The real row lookup; just before it reads `key`, `meanwhile` runs (a change lands)."""

    def __init__(self, lookup: RowLookup, key: tuple[Any, ...], meanwhile: Callable[[], Any]):
        self._lookup, self._key, self._meanwhile = lookup, key, meanwhile

    def row(self, key: tuple[Any, ...], version: int, source: Any) -> Change:
        if key == self._key:
            self._meanwhile()
        return self._lookup.row(key, version, source)


def test_the_sweeps_rewrite_beats_the_stored_document_and_loses_to_a_newer_change(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    table = create(cql, keyspace, "NEW_AND_OLD_IMAGES", client_timestamps=False)
    mapping = notes_mapping(keyspace)
    for c in (1, 2):
        cql.execute(f"INSERT INTO {table} (k, c, a, b) VALUES (5, {c}, 'public', {c})")
        expires = expire(
            cql, f"UPDATE {table} USING TTL {TTL_S} SET a = 'secret' WHERE k = 5 AND c = {c}"
        )
    cfg = make_config(backfill={"ranges": 4, "workers": 1})
    assert run_backfill(cfg, mapping).complete
    with Job(cfg, mapping) as job:
        reader = Reader(opensearch, job.index, job.policy)
        stored = reader.get({"5:1": "5", "5:2": "5"})
        snapshot = stored["5:1"].body["_ks2os"]["version"]
        assert stored["5:1"].body["_ks2os"]["value_expiry"].keys() == {"a"}
        until(lambda: time.time() > expires, "the values expired in Keyspaces")
        writer = job.new_writer()
        # The next record of 5:2's lineage lands between the sweep's search and its write.
        newer = Change(
            Op.UPSERT,
            (5, 2),
            {"k": 5, "c": 2, "b": 99},
            snapshot + STEP,
            StreamPosition("arn", "shard", "1", 0),
        )
        lookup = RowLookup(job.session, job.info)
        racing = RacingLookup(lookup, (5, 2), lambda: writer.write([newer]))
        report = ExpirySweep(reader, writer, racing).run_once()  # type: ignore[arg-type]
        after = reader.get({"5:1": "5", "5:2": "5"})
    assert report.rows == 2
    # 5:1: restated at a derived version, which beats the stored one; `a` is gone.
    assert after["5:1"].body["_ks2os"]["version"] == snapshot + 1
    assert "a" not in after["5:1"].body and after["5:1"].body["b"] == 1
    # 5:2: the newer change wins over the sweep's rewrite.
    assert after["5:2"].body["_ks2os"]["version"] == snapshot + STEP
    assert after["5:2"].body["b"] == 99


def test_cleanup_restates_rows_whose_values_expired_when_no_follower_runs(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    from sync.jobs.cleanup import run_cleanup

    table = create(cql, keyspace, "NEW_AND_OLD_IMAGES", client_timestamps=False)
    mapping = notes_mapping(keyspace)
    cql.execute(f"INSERT INTO {table} (k, c, a, b) VALUES (6, 1, 'public', 6)")
    expires = expire(
        cql, f"UPDATE {table} USING TTL {TTL_S} SET a = 'secret' WHERE k = 6 AND c = 1"
    )
    cfg = make_config(backfill={"ranges": 4, "workers": 1})
    assert run_backfill(cfg, mapping).complete
    until(lambda: time.time() > expires, "the value expired in Keyspaces")
    assert search(opensearch, mapping.alias) == {}  # hidden
    summary = run_cleanup(cfg, mapping)
    assert summary.restated == 1
    assert search(opensearch, mapping.alias) == {"6:1": {"k": 6, "c": 1, "b": 6}}


def test_while_a_rebuild_lasts_the_sweep_restates_both_indexes(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
) -> None:
    # Each index is swept from its own documents (a derived version is relative to the
    # version stored there): both lose the expired values, and both get their rows back.
    from tests.sync.jobs.test_follow_rebuild import begin_rebuild, state_store, visible_in

    table = create(cql, keyspace, "NEW_AND_OLD_IMAGES", client_timestamps)
    mapping = notes_mapping(keyspace)
    cfg = make_config(follow={"sweep_interval_ms": 200})
    rebuild = begin_rebuild(opensearch, state_store(opensearch, cfg), mapping)
    with following(cfg, mapping):
        cql.execute(f"INSERT INTO {table} (k, c, a, b) VALUES (1, 1, 'public', 7)")
        cql.execute(f"UPDATE {table} USING TTL {TTL_S} SET a = 'secret' WHERE k = 1 AND c = 1")
        expires = expire(cql, f"UPDATE {table} USING TTL {TTL_S} SET s = 'flash' WHERE k = 1")
        shown = {"1:1": {"k": 1, "c": 1, "a": "secret", "b": 7, "s": "flash"}}
        for index in rebuild.targets:
            until(lambda i=index: visible_in(opensearch, i) == shown, f"{index} shows the values")
        until(lambda: time.time() > expires, "the values expired in Keyspaces")
        for index in rebuild.targets:
            until(
                lambda i=index: visible_in(opensearch, i) == {"1:1": {"k": 1, "c": 1, "b": 7}},
                f"{index} shows the row again, without the expired values",
            )
