"""What every job shares (sync/jobs/__init__.py): its target index, and its stop event.

What a user (and the coming `reindex`) relies on: by default a job writes the
index behind the alias, creating `<alias>_v1` when there is none; given
another target, it writes only there, while the alias (and what searches
see) stays where it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from opensearchpy import OpenSearch

from sync.config import Config
from sync.indices import Target, alias_targets, create_next_index
from sync.jobs import Job
from sync.jobs.backfill import run_backfill
from sync.mapping import TableMapping, mapping_from_dict


def _table(cql: Any, keyspace: str) -> TableMapping:
    cql.execute(f'CREATE TABLE "{keyspace}"."t" (id int PRIMARY KEY, n int)')
    for n in range(5):
        cql.execute(f'INSERT INTO "{keyspace}"."t" (id, n) VALUES ({n}, {n * 10})')
    return mapping_from_dict(
        {"source": {"keyspace": keyspace, "table": "t"}, "index": {"alias": f"{keyspace}-t"}}
    )


def _count(client: OpenSearch, index: str) -> int:
    client.indices.refresh(index=index)
    return int(client.count(index=index)["count"])


def test_a_job_writes_the_alias_index_by_default_and_any_target_it_is_given(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    mapping = _table(cql, keyspace)
    cfg = make_config()
    alias = mapping.alias
    with Job(cfg, mapping) as live:
        assert live.target == Target(alias, f"{alias}_v1")
        run_backfill(cfg, mapping, job=live)
    new_index = create_next_index(opensearch, mapping)

    stop = threading.Event()
    with Job(cfg, mapping, target=Target(alias, new_index), stop=stop) as rebuild:
        assert rebuild.index == new_index and rebuild.stop is stop
        summary = run_backfill(cfg, mapping, job=rebuild)
    assert summary.complete and summary.written == 5
    # The new index is full; searches still go to the old one through the alias.
    assert _count(opensearch, new_index) == 5
    assert alias_targets(opensearch, alias) == [f"{alias}_v1"]
    assert _count(opensearch, alias) == 5


def test_a_job_brings_an_index_made_by_an_older_ks2os_up_to_date(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    """An index without the new `_ks2os` fields, under a strict mapping and an alias with the
    old filter, still takes value expiries, and its alias hides expired values."""
    table = f'"{keyspace}"."t"'
    cql.execute(
        f"CREATE TABLE {table} (id int PRIMARY KEY, n int, m int) "
        "WITH CUSTOM_PROPERTIES = {'ttl': {'status': 'enabled'}}"
    )
    cql.execute(f"INSERT INTO {table} (id, n) VALUES (1, 10)")
    cql.execute(f"INSERT INTO {table} (id, n) VALUES (2, 20)")
    cql.execute(f"UPDATE {table} USING TTL 3600 SET m = 5 WHERE id = 2")
    alias, index = f"{keyspace}-t", f"{keyspace}-t_v1"
    columns = {name: {"type": "integer"} for name in ("id", "n", "m")}
    old_meta = {
        "version": {"type": "long"},
        "source": {"type": "keyword"},
        "expires_at": {"type": "date", "format": "epoch_millis"},
        "deleted": {"type": "boolean"},
    }
    opensearch.indices.create(
        index=index,
        body={
            "mappings": {
                "dynamic": "strict",
                "properties": {**columns, "_ks2os": {"properties": old_meta}},
            }
        },
    )
    old_filter = {"bool": {"must_not": [{"term": {"_ks2os.deleted": True}}]}}
    opensearch.indices.update_aliases(
        body={"actions": [{"add": {"index": index, "alias": alias, "filter": old_filter}}]}
    )
    mapping = mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": "t"},
            "index": {"alias": alias, "mappings": {"dynamic": "strict", "properties": columns}},
        }
    )
    summary = run_backfill(make_config(), mapping)
    assert (summary.written, summary.dead_lettered) == (2, 0)  # m's expiry was accepted
    stored = opensearch.get(index=index, id="2")["_source"]["_ks2os"]
    assert stored["value_expiry"].keys() == {"m"}
    shown = opensearch.indices.get_alias(index=index, name=alias)[index]["aliases"][alias]
    assert "value_expires_at" in str(shown["filter"])


def test_a_job_maps_the_meta_fields_an_older_strict_index_lacks_and_writes_tokens(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    """An index made before `_ks2os.token` existed would refuse every write under strict."""
    from sync.documents import META_FIELD
    from sync.indices import META_MAPPING
    from sync.keyspaces import describe_table
    from sync.sources.cql import SnapshotScanner, TokenRange, ring_for
    from sync.tokens import token_text

    mapping = _table(cql, keyspace)
    old_meta = {k: v for k, v in META_MAPPING["properties"].items() if k != "token"}
    opensearch.indices.create(
        index=f"{mapping.alias}_v1",
        body={
            "mappings": {
                "dynamic": "strict",
                "properties": {
                    "id": {"type": "integer"},
                    "n": {"type": "integer"},
                    META_FIELD: {"properties": old_meta},
                },
            },
            "aliases": {mapping.alias: {}},
        },
    )
    cfg = make_config()
    summary = run_backfill(cfg, mapping)
    assert summary.written == 5 and summary.dead_lettered == 0

    live = opensearch.indices.get_mapping(index=f"{mapping.alias}_v1")
    meta = live[f"{mapping.alias}_v1"]["mappings"]["properties"][META_FIELD]["properties"]
    assert meta["token"] == {"type": "keyword"}
    info = describe_table(cql, keyspace, "t")
    ring = ring_for(info.partitioner)
    server = {
        str(change.key[0]): token_text(token)
        for page in SnapshotScanner(cql, info).scan(TokenRange(ring.minimum, ring.maximum))
        for change, token in zip(page.changes, page.tokens, strict=True)
    }
    opensearch.indices.refresh(index=mapping.alias)
    hits = opensearch.search(index=mapping.alias, body={"size": 100})["hits"]["hits"]
    assert {hit["_id"]: hit["_source"][META_FIELD]["token"] for hit in hits} == server
