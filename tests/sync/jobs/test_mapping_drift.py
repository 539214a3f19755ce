"""A mapping file changed under a live index: backfill and follow apply it in place or stop.

What a user relies on: a new field in the file reaches the live index before
any document carrying it is written (under `dynamic = "strict"` those would
all be dead-lettered), and is then indexed; a live setting changes; any other
change (a type, an analyzer, a removed field, a static setting) stops the job
before it writes, naming the difference and `ks2os reindex`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.config import Config
from sync.errors import MappingConflict
from sync.indices import check_mapping_compatible
from sync.jobs.backfill import run_backfill
from sync.mapping import TableMapping, mapping_from_dict
from tests.conftest import table_options
from tests.sync.jobs.follow_helpers import following, until


def _table(cql: Any, keyspace: str) -> None:
    cql.execute(
        f'CREATE TABLE "{keyspace}"."t" (id int PRIMARY KEY, name text, colour text)'
        + table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=False)
    )
    for n in range(5):
        cql.execute(
            f"INSERT INTO \"{keyspace}\".\"t\" (id, name, colour) VALUES ({n}, 'item {n}', 'red')"
        )


def _mapping(
    keyspace: str,
    properties: dict[str, Any],
    settings: dict[str, Any] | None = None,
    exclude: list[str] | None = None,
) -> TableMapping:
    index: dict[str, Any] = {
        "alias": f"{keyspace}-t",
        "mappings": {"dynamic": "strict", "properties": properties},
    }
    if settings:
        index["settings"] = settings
    spec: dict[str, Any] = {"source": {"keyspace": keyspace, "table": "t"}, "index": index}
    if exclude:
        spec["document"] = {"exclude": exclude}
    return mapping_from_dict(spec, "t.toml")


BASE = {
    "id": {"type": "integer"},
    "name": {"type": "text", "analyzer": "standard"},
}


def _first(cql: Any, keyspace: str, cfg: Config) -> str:
    """The table loaded under the first mapping (no `colour`); the live index's name."""
    _table(cql, keyspace)
    summary = run_backfill(cfg, _mapping(keyspace, BASE, exclude=["colour"]))
    assert (summary.written, summary.dead_lettered) == (5, 0)
    return f"{keyspace}-t_v1"


def _live_properties(client: OpenSearch, index: str) -> dict[str, Any]:
    found: dict[str, Any] = client.indices.get_mapping(index=index)[index]["mappings"]
    return dict(found["properties"])


def test_a_new_field_is_added_in_place_then_indexed_not_dead_lettered(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = make_config()
    index = _first(cql, keyspace, cfg)
    grown = _mapping(keyspace, {**BASE, "colour": {"type": "keyword"}})
    check_mapping_compatible(opensearch, index, grown)  # the read-only check: no conflict...
    assert "colour" not in _live_properties(opensearch, index)  # ...and nothing applied

    with caplog.at_level(logging.INFO, logger="sync.indices"):
        summary = run_backfill(cfg, grown, restart=True)
    assert (summary.written, summary.dead_lettered) == (5, 0)
    assert _live_properties(opensearch, index)["colour"] == {"type": "keyword"}
    said = [r.getMessage() for r in caplog.records if "added colour" in r.getMessage()]
    assert len(said) == 1 and "run `ks2os reindex` to fill them for existing rows" in said[0]
    opensearch.indices.refresh(index=index)
    red = opensearch.count(index=f"{keyspace}-t", body={"query": {"term": {"colour": "red"}}})
    assert red["count"] == 5
    assert not opensearch.indices.exists(index=f"{keyspace}-t-deadletter")

    # The follower does the same with a field the file gains while the index lives on.
    tagged = _mapping(keyspace, {**BASE, "colour": {"type": "keyword"}, "tag": {"type": "keyword"}})
    cql.execute(f'ALTER TABLE "{keyspace}"."t" ADD tag text')
    with following(cfg, tagged):
        cql.execute(f"INSERT INTO \"{keyspace}\".\"t\" (id, name, tag) VALUES (9, 'new', 'x')")

        def tagged_document() -> bool:
            opensearch.indices.refresh(index=index)
            query = {"query": {"term": {"tag": "x"}}}
            return bool(opensearch.count(index=f"{keyspace}-t", body=query)["count"] == 1)

        until(tagged_document, "the row with the new field is found by it")
    assert _live_properties(opensearch, index)["tag"] == {"type": "keyword"}
    assert not opensearch.indices.exists(index=f"{keyspace}-t-deadletter")


@pytest.mark.parametrize(
    ("properties", "exclude", "expected"),
    [
        (
            {**BASE, "name": {"type": "text", "analyzer": "simple"}},
            ["colour"],
            "field 'name' analyzer is 'standard' in OpenSearch but 'simple' in t.toml",
        ),
        (
            {"id": {"type": "integer"}},
            ["colour", "name"],  # the column is no longer indexed
            "field 'name' is mapped (text) in OpenSearch but not named in t.toml",
        ),
        (
            {**BASE, "id": {"type": "keyword"}},
            ["colour"],
            "field 'id' type is 'integer' in OpenSearch but 'keyword' in t.toml",
        ),
    ],
    ids=["analyzer", "removed", "type"],
)
def test_a_change_the_live_index_cannot_take_stops_before_anything_is_written(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    properties: dict[str, Any],
    exclude: list[str],
    expected: str,
) -> None:
    cfg = make_config()
    index = _first(cql, keyspace, cfg)
    cql.execute(f'INSERT INTO "{keyspace}"."t" (id, name) VALUES (99, \'late\')')
    with pytest.raises(MappingConflict) as raised:
        run_backfill(cfg, _mapping(keyspace, properties, exclude=exclude), restart=True)
    assert str(raised.value) == f"index {index}: {expected}"
    assert raised.value.hint == "run `ks2os reindex` to build a new index with this mapping"
    opensearch.indices.refresh(index=index)
    assert opensearch.count(index=index)["count"] == 5  # row 99 was not written
    assert _live_properties(opensearch, index)["name"] == BASE["name"]


def test_a_live_setting_is_applied_and_a_static_one_stops(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    cfg = make_config()
    index = _first(cql, keyspace, cfg)
    # An operator's change the file does not name is left alone.
    opensearch.indices.put_settings(index=index, body={"index": {"number_of_replicas": 0}})
    slower = _mapping(keyspace, BASE, {"refresh_interval": "5s"}, exclude=["colour"])
    assert run_backfill(cfg, slower, restart=True).complete
    shown = opensearch.indices.get_settings(index=index)[index]["settings"]["index"]
    assert (shown["refresh_interval"], shown["number_of_replicas"]) == ("5s", "0")

    sharded = _mapping(
        keyspace, BASE, {"refresh_interval": "5s", "number_of_shards": 3}, exclude=["colour"]
    )
    with pytest.raises(MappingConflict) as raised:
        run_backfill(cfg, sharded, restart=True)
    assert "setting index.number_of_shards is '1' in OpenSearch but '3' in t.toml" in str(
        raised.value
    )
