"""Versioned indexes and their alias: create `<alias>_v<N>`, swap atomically, reconcile mappings.

Searches always go through the alias. Its filter hides tombstones (deleted
rows), partition documents (a static table's per-partition static values,
see `sync.statics`), rows whose TTL has run out and rows one of whose values
has (`_ks2os.value_expires_at`), so a value stops being found the moment
Keyspaces stops returning it, not when the late TTL record arrives; and the
marks a dead-lettered change leaves (`_ks2os.dead_letter`), so a search never
returns a row's older state as if it were current. Writers write to a `Target`: the concrete index
the alias points at, or a new index being built by a reindex.

Every call here converts opensearch-py's exceptions (`sync.bulk.opensearch_errors`)
and none retries: these run when a job starts, where an unreachable
OpenSearch or a mapping it refuses is best reported at once. A mapping
OpenSearch refuses to create an index from is a `ConfigError` naming the
mapping file.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from opensearchpy import OpenSearch

from sync.bulk import opensearch_errors
from sync.documents import DEAD_LETTER, META_FIELD, PARTITION_KIND, VALUE_EXPIRES_AT
from sync.drift import Drift, compare
from sync.errors import ConfigError, MappingConflict, OpenSearchRefused
from sync.mapping import TableMapping

log = logging.getLogger(__name__)

META_MAPPING: Mapping[str, Any] = {
    "properties": {
        "version": {"type": "long"},
        "source": {"type": "keyword"},
        "expires_at": {"type": "date", "format": "epoch_millis"},
        "deleted": {"type": "boolean"},
        # Tables with static columns only (sync.statics): which partition a
        # document belongs to, the version of the statics it shows, and the
        # partition documents' own values (stored, never searched).
        "kind": {"type": "keyword"},
        "partition": {"type": "keyword"},
        "static_version": {"type": "long"},
        "statics": {"type": "object", "enabled": False},
        # The partition's token, fixed-width text (sync.tokens): verify reads by token range.
        "token": {"type": "keyword"},
        # Partition-shape documents only (sync.partitions): each row's version and
        # clustering key, and the deleted rows' tombstones (stored, never searched).
        "rows": {"type": "object", "enabled": False},
        "static_versions": {"type": "object", "enabled": False},
        # Values that expire before their row (sync.documents): when each does (stored),
        # the earliest (searched by the alias filter), and the key to read the row again.
        "value_expiry": {"type": "object", "enabled": False},
        "value_expires_at": {"type": "date", "format": "epoch_millis"},
        "key": {"type": "object", "enabled": False},
        "dead_letter": {"type": "boolean"},
    }
}


@dataclass(frozen=True)
class Target:
    """Where a job writes: `index`, and the `alias` searches go through.

    Normally the index is the one behind the alias (`current_target`); a
    reindex builds a new one while the follower keeps writing the live one.
    """

    alias: str
    index: str


def current_target(client: OpenSearch, mapping: TableMapping) -> Target:
    """The alias's current index (created, with the alias, when there is none)."""
    return Target(mapping.alias, ensure_index(client, mapping))


def index_settings_and_mappings(mapping: TableMapping) -> dict[str, Any]:
    """The body that creates an index for `mapping` (settings already merged over defaults)."""
    mappings = copy.deepcopy(dict(mapping.mappings))
    properties = mappings.setdefault("properties", {})
    properties[META_FIELD] = copy.deepcopy(dict(META_MAPPING))
    return {"settings": copy.deepcopy(dict(mapping.settings)), "mappings": mappings}


def alias_filter() -> dict[str, Any]:
    """Hide tombstones, partition documents, dead-letter marks, expired rows and values."""
    return {
        "bool": {
            "must_not": [
                {"term": {f"{META_FIELD}.deleted": True}},
                {"term": {f"{META_FIELD}.kind": PARTITION_KIND}},
                {"term": {f"{META_FIELD}.{DEAD_LETTER}": True}},
                {"range": {f"{META_FIELD}.expires_at": {"lte": "now"}}},
                {"range": {f"{META_FIELD}.{VALUE_EXPIRES_AT}": {"lte": "now"}}},
            ]
        }
    }


def update_alias_filter(client: OpenSearch, target: Target) -> bool:
    """Give the alias on an index made by an older ks2os the current filter; True if it did.

    Re-adding an alias replaces its filter, so values that expired and
    dead-letter marks are hidden there too (the fields it uses are mapped by
    `add_missing_meta_fields`).
    """
    try:
        with opensearch_errors(f"reading alias {target.alias}"):
            found = client.indices.get_alias(index=target.index, name=target.alias)
    except OpenSearchRefused as exc:
        if exc.status == 404:
            return False  # the alias is elsewhere (a reindex fills this index): swapping sets it
        raise
    shown = found.get(target.index, {}).get("aliases", {}).get(target.alias)
    if shown is None or shown.get("filter") == alias_filter():
        return False
    add: dict[str, Any] = {
        "index": target.index,
        "alias": target.alias,
        "filter": alias_filter(),
        "is_write_index": bool(shown.get("is_write_index", True)),
    }
    with opensearch_errors(f"updating the filter of alias {target.alias}"):
        client.indices.update_aliases(body={"actions": [{"add": add}]})
    return True


def _version_pattern(alias: str) -> re.Pattern[str]:
    return re.compile(re.escape(alias) + r"_v(\d+)")


def index_versions(client: OpenSearch, alias: str) -> dict[str, int]:
    """Existing `<alias>_v<N>` indexes and their N."""
    try:
        with opensearch_errors(f"listing the indexes of {alias}"):
            found = client.indices.get(index=f"{alias}_v*", params={"expand_wildcards": "all"})
    except OpenSearchRefused as exc:
        if exc.status == 404:
            return {}
        raise
    pattern = _version_pattern(alias)
    versions = {}
    for name in found:
        match = pattern.fullmatch(name)
        if match:
            versions[name] = int(match.group(1))
    return versions


def create_next_index(client: OpenSearch, mapping: TableMapping) -> str:
    """Create `<alias>_v<N+1>` (N the highest existing, 0 if none); return its name."""
    name = next_index_name(client, mapping.alias)
    _create_index(client, name, mapping)
    return name


def next_index_name(client: OpenSearch, alias: str) -> str:
    """`<alias>_v<N+1>`, N the highest version that exists (0 if none); nothing is created."""
    versions = index_versions(client, alias)
    return f"{alias}_v{max(versions.values(), default=0) + 1}"


def create_index(client: OpenSearch, name: str, mapping: TableMapping) -> bool:
    """Create index `name` from the mapping file unless it exists; True if it was made now."""
    try:
        _create_index(client, name, mapping)
    except OpenSearchRefused as exc:
        if exc.error_type != "resource_already_exists_exception":
            raise
        return False
    return True


def delete_index(client: OpenSearch, name: str) -> bool:
    """Delete index `name`; False when it did not exist (deleted before: idempotent)."""
    try:
        with opensearch_errors(f"deleting index {name}"):
            client.indices.delete(index=name)
    except OpenSearchRefused as exc:
        if exc.status == 404:
            return False
        raise
    return True


def add_new_fields(client: OpenSearch, index: str, mapping: TableMapping) -> list[str]:
    """Map on `index` the top-level fields the mapping file has and the index lacks.

    Adding a field is what OpenSearch allows on a live index: documents built by
    the file then fit an index made by an older version of it (a reindex's old
    index, which keeps taking changes until the alias moves). Returns the fields added.
    """
    with opensearch_errors(f"reading the mapping of {index}"):
        live = client.indices.get_mapping(index=index)
    have = next(iter(live.values()))["mappings"].get("properties", {})
    wanted = index_settings_and_mappings(mapping)["mappings"].get("properties", {})
    missing = {name: spec for name, spec in wanted.items() if name not in have}
    if missing:
        with opensearch_errors(f"adding {', '.join(sorted(missing))} to the mapping of {index}"):
            client.indices.put_mapping(index=index, body={"properties": missing})
    return sorted(missing)


def _create_index(client: OpenSearch, name: str, mapping: TableMapping) -> None:
    """Create `name` from the mapping file; a body OpenSearch refuses is the file's fault."""
    try:
        with opensearch_errors(f"creating index {name}"):
            client.indices.create(index=name, body=index_settings_and_mappings(mapping))
    except OpenSearchRefused as exc:
        if exc.status != 400 or exc.error_type == "resource_already_exists_exception":
            raise
        raise ConfigError(
            f"OpenSearch refused to create index {name} from {mapping.path}: {exc}",
            hint=f"fix the settings or mappings in {mapping.path}",
        ) from None


def alias_targets(client: OpenSearch, alias: str) -> list[str]:
    """The indexes the alias points at now (normally one)."""
    try:
        with opensearch_errors(f"reading alias {alias}"):
            found = client.indices.get_alias(name=alias)
    except OpenSearchRefused as exc:
        if exc.status == 404:
            return []
        raise
    return sorted(found)


def swap_alias(client: OpenSearch, alias: str, new_index: str) -> None:
    """Point the alias at `new_index` alone, in one `_aliases` call (atomic)."""
    actions: list[dict[str, Any]] = [
        {"remove": {"index": old, "alias": alias}}
        for old in alias_targets(client, alias)
        if old != new_index
    ]
    actions.append(_add_alias(alias, new_index))
    with opensearch_errors(f"pointing alias {alias} at {new_index}"):
        client.indices.update_aliases(body={"actions": actions})


def _add_alias(alias: str, index: str) -> dict[str, Any]:
    """The `_aliases` action that puts `alias`, with its filter, on `index` for writes."""
    add = {"index": index, "alias": alias, "filter": alias_filter(), "is_write_index": True}
    return {"add": add}


def ensure_index(client: OpenSearch, mapping: TableMapping) -> str:
    """The alias's current index; creates `<alias>_v1` and the alias when there is none.

    Several workers may start at once (a backfill and a follower, say). Each creates
    `_v1` — not "the next version", which would let the second one create `_v2` and
    pull the alias away from the first one's documents — and adds the alias to it;
    both steps are harmless when another worker got there first.
    """
    targets = alias_targets(client, mapping.alias)
    if not targets:
        first = f"{mapping.alias}_v1"
        try:
            _create_index(client, first, mapping)
        except OpenSearchRefused as exc:
            if exc.error_type != "resource_already_exists_exception":
                raise
        with opensearch_errors(f"pointing alias {mapping.alias} at {first}"):
            client.indices.update_aliases(body={"actions": [_add_alias(mapping.alias, first)]})
        targets = alias_targets(client, mapping.alias)
    return targets[-1] if len(targets) == 1 else _newest(targets, mapping.alias)


def _newest(targets: list[str], alias: str) -> str:
    pattern = _version_pattern(alias)

    def version_of(name: str) -> int:
        match = pattern.fullmatch(name)
        return int(match.group(1)) if match else -1

    return max(targets, key=version_of)


def add_missing_meta_fields(client: OpenSearch, index: str) -> list[str]:
    """Map the `_ks2os` fields an older index lacks (a put-mapping: adding fields is allowed).

    Under `dynamic = "strict"` a document carrying an unmapped `_ks2os` field is
    refused, and dynamically mapped the token would not be a keyword; so a job
    adds what is missing before it writes. Returns the fields added.
    """
    with opensearch_errors(f"reading the mapping of {index}"):
        live = client.indices.get_mapping(index=index)
    properties = next(iter(live.values()))["mappings"].get("properties", {})
    have = properties.get(META_FIELD, {}).get("properties", {})
    missing = {name: spec for name, spec in META_MAPPING["properties"].items() if name not in have}
    if missing:
        body = {"properties": {META_FIELD: {"properties": missing}}}
        with opensearch_errors(f"adding {', '.join(missing)} to the mapping of {index}"):
            client.indices.put_mapping(index=index, body=body)
    return sorted(missing)


def reconcile_mapping(client: OpenSearch, index: str, mapping: TableMapping) -> Drift:
    """Bring `index` in line with the mapping file where OpenSearch allows it, else refuse.

    Compares the live mapping and settings with the file (`sync.drift`):
    identical, nothing happens; only additions and live-changeable settings,
    they are applied (put-mapping, put-settings) and logged in one line each;
    anything else raises `MappingConflict` naming the first difference. A job
    runs it on its target before writing; an index just created from the file
    needs no check.
    """
    drift = mapping_drift(client, index, mapping)
    if drift.mapping_update:
        with opensearch_errors(f"adding {', '.join(drift.added_fields)} to the mapping of {index}"):
            client.indices.put_mapping(index=index, body=drift.mapping_update)
        if drift.added_fields:
            log.info(
                "index %s: added %s from %s; documents written before have none of them: "
                "run `ks2os reindex` to fill them for existing rows",
                index,
                ", ".join(drift.added_fields),
                mapping.path,
            )
    if drift.settings_update:
        shown = ", ".join(f"{k} = {v}" for k, v in drift.settings_update.items())
        with opensearch_errors(f"changing {shown} of {index}"):
            client.indices.put_settings(index=index, body=drift.settings_update)
        log.info("index %s: settings changed to %s from %s", index, shown, mapping.path)
    return drift


def mapping_drift(client: OpenSearch, index: str, mapping: TableMapping) -> Drift:
    """How `index` differs from the mapping file (`sync.drift`); raises `MappingConflict`
    when only a new index can take the file. Reads, writes nothing."""
    with opensearch_errors(f"reading the mapping of {index}"):
        live = client.indices.get_mapping(index=index)
        settings = client.indices.get_settings(
            index=index, params={"flat_settings": "true", "include_defaults": "true"}
        )
    live_mappings = next(iter(live.values()))["mappings"]
    found = next(iter(settings.values()))
    live_settings = {**found.get("defaults", {}), **found.get("settings", {})}
    wanted = index_settings_and_mappings(mapping)
    # Settings: only those the file names (ks2os's defaults apply when an index is made;
    # a live index keeps what an operator changed by hand, unless the file says otherwise).
    drift = compare(live_mappings, live_settings, wanted["mappings"], mapping.stated_settings)
    if drift.conflict is not None:
        c = drift.conflict
        raise MappingConflict(
            f"index {index}: {c.where} is {c.live} in OpenSearch but {c.file} in {mapping.path}",
            hint="run `ks2os reindex` to build a new index with this mapping",
        )
    return drift


def check_mapping_compatible(client: OpenSearch, index: str, mapping: TableMapping) -> None:
    """`MappingConflict` when the file asks for what only a new index can take; additions
    are not applied here (`reconcile_mapping` applies them)."""
    mapping_drift(client, index, mapping)
