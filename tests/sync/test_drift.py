"""Mapping drift (sync/drift.py): what the file asks for beside what OpenSearch reports.

The live side is written as OpenSearch reports it (defaults left out,
settings as strings), so a file stating a default is not drift.
"""

from __future__ import annotations

from typing import Any

import pytest

from sync.drift import Drift, compare

pytestmark = pytest.mark.unit

LIVE_SETTINGS = {
    "index.number_of_shards": "1",
    "index.number_of_replicas": "1",
    "index.refresh_interval": "1s",
    "index.gc_deletes": "60s",
}
FILE_SETTINGS = {
    "index": {"number_of_shards": 1, "number_of_replicas": 1, "refresh_interval": "1s"}
}

LIVE: dict[str, Any] = {
    "dynamic": "strict",
    "properties": {
        "title": {"type": "text", "analyzer": "standard", "fields": {"kw": {"type": "keyword"}}},
        "at": {"type": "date"},  # the default format, left out by OpenSearch
        "n": {"type": "integer"},
        "items": {"type": "nested", "properties": {"sku": {"type": "keyword"}}},
        "_ks2os": {"properties": {"version": {"type": "long"}}},
    },
}


def file_mappings(**changes: Any) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "title": {"type": "text", "analyzer": "standard", "fields": {"kw": {"type": "keyword"}}},
        "at": {"type": "date", "format": "strict_date_optional_time||epoch_millis"},
        "n": {"type": "integer", "index": True},
        "items": {"type": "nested", "properties": {"sku": {"type": "keyword"}}},
    }
    for name, spec in changes.items():
        if spec is None:
            del properties[name]
        else:
            properties[name] = spec
    return {"dynamic": "strict", "properties": properties}


def drift(mappings: dict[str, Any], settings: dict[str, Any] = FILE_SETTINGS) -> Drift:
    return compare(LIVE, LIVE_SETTINGS, mappings, settings)


def test_a_file_stating_defaults_opensearch_leaves_out_is_no_drift() -> None:
    assert drift(file_mappings()).identical


def test_a_value_opensearch_reports_in_another_form_is_no_drift() -> None:
    live = {"properties": {"n": {"type": "integer", "copy_to": ["all"], "boost": 2.0}}}
    wanted = {"properties": {"n": {"type": "integer", "copy_to": "all", "boost": 2}}}
    settings = {"index": {"number_of_replicas": "1", "refresh_interval": "1s"}}
    assert compare(live, LIVE_SETTINGS, wanted, settings).identical


def test_a_new_field_and_a_new_sub_field_are_added_in_place() -> None:
    title = {
        "type": "text",
        "analyzer": "standard",
        "fields": {"kw": {"type": "keyword"}, "raw": {"type": "keyword", "ignore_above": 64}},
    }
    nested = {
        "type": "nested",
        "properties": {"sku": {"type": "keyword"}, "qty": {"type": "integer"}},
    }
    found = drift(file_mappings(title=title, items=nested, m={"type": "keyword"}))
    assert found.conflict is None
    assert found.added_fields == ["title.raw", "items.qty", "m"]
    additions = found.mapping_update["properties"]
    assert additions["m"] == {"type": "keyword"}
    assert additions["items"] == {"type": "nested", "properties": {"qty": {"type": "integer"}}}
    assert additions["title"]["fields"]["raw"] == {"type": "keyword", "ignore_above": 64}


@pytest.mark.parametrize(
    ("changes", "where", "live", "file"),
    [
        ({"n": {"type": "long"}}, "field 'n' type", "'integer'", "'long'"),
        (
            {
                "title": {
                    "type": "text",
                    "analyzer": "simple",
                    "fields": {"kw": {"type": "keyword"}},
                }
            },
            "field 'title' analyzer",
            "'standard'",
            "'simple'",
        ),
        ({"n": {"type": "integer", "index": False}}, "field 'n' index", "'true'", "'false'"),
        ({"at": {"type": "date", "format": "epoch_millis"}}, "field 'at' format", None, None),
        ({"n": None}, "field 'n'", "mapped (integer)", "not named"),
        (
            {"title": {"type": "text", "analyzer": "standard"}},
            "field 'title.kw'",
            "mapped (keyword)",
            "not named",
        ),
        (
            {"items": {"type": "object", "properties": {"sku": {"type": "keyword"}}}},
            "field 'items' type",
            "'nested'",
            "'object'",
        ),
    ],
)
def test_anything_but_an_addition_is_a_conflict_naming_the_first_difference(
    changes: dict[str, Any], where: str, live: str | None, file: str | None
) -> None:
    found = drift(file_mappings(**changes))
    assert found.conflict is not None
    assert found.conflict.where == where
    if live is not None:
        assert (found.conflict.live, found.conflict.file) == (live, file)
    assert not found.mapping_update


def test_dynamic_changed_is_a_conflict() -> None:
    found = drift({**file_mappings(), "dynamic": "true"})
    assert found.conflict is not None and found.conflict.where == "mapping dynamic"


def test_a_live_field_is_not_called_removed_where_opensearch_maps_fields_itself() -> None:
    live = {"properties": {"n": {"type": "integer"}, "seen": {"type": "keyword"}}}
    found = compare(live, LIVE_SETTINGS, {"properties": {"n": {"type": "integer"}}}, FILE_SETTINGS)
    assert found.identical


def test_live_settings_are_applied_and_static_ones_conflict() -> None:
    changed = {"index": {"number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "5s"}}
    found = drift(file_mappings(), changed)
    assert found.conflict is None
    assert found.settings_update == {"index.number_of_replicas": 0, "index.refresh_interval": "5s"}

    found = drift(file_mappings(), {"index": {"number_of_shards": 3}})
    assert found.conflict is not None
    assert (found.conflict.where, found.conflict.live, found.conflict.file) == (
        "setting index.number_of_shards",
        "'1'",
        "'3'",
    )
    analysis = {"index": {"analysis": {"analyzer": {"folded": {"type": "custom"}}}}}
    found = drift(file_mappings(), analysis)
    assert found.conflict is not None
    assert found.conflict.where == "setting index.analysis.analyzer.folded.type"
