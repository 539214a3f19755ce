"""Mapping drift: how the live index differs from what its mapping file asks for.

A mapping file changes while its index lives on. Before a backfill or a
follower writes, `compare` sets the file beside what OpenSearch reports for
the index (its mapping, and its settings with their defaults) and sorts every
difference into one of three answers:

- **nothing**: the index is what the file says;
- **in place**: only additions (a new property, a new sub-field under
  `fields`) and settings OpenSearch changes on an open index
  (`refresh_interval`, `number_of_replicas`, ...): `Drift.mapping_update` and
  `Drift.settings_update` are the bodies of a put-mapping and a put-settings
  that apply them;
- **a conflict**: anything else (a field's type, analyzer, `index`, `format`
  or any other parameter changed, a field removed, `dynamic` changed, a
  static setting such as the shard count or the analysis chain): only a new
  index can take it. `Drift.conflict` names the first one.

OpenSearch normalises what it reports: a parameter left at its default is
often absent (`"index": true`, the default date format, `"type": "object"`).
So only what the file states is compared, and an absent parameter stands for
its default (`PARAMETER_DEFAULTS`). The `_ks2os` field is ks2os's own and is
left to `sync.indices.add_missing_meta_fields`.

Pure functions over JSON: no client here (`sync.indices.reconcile_mapping`
reads the index and applies the answer).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sync.documents import META_FIELD

# What a parameter means when OpenSearch leaves it out of a mapping it reports:
# (field type, parameter) first, then (None, parameter) for every type.
PARAMETER_DEFAULTS: Mapping[tuple[str | None, str], Any] = {
    (None, "index"): True,
    (None, "doc_values"): True,
    (None, "store"): False,
    (None, "enabled"): True,
    (None, "coerce"): True,
    (None, "ignore_malformed"): False,
    (None, "boost"): 1.0,
    (None, "eager_global_ordinals"): False,
    (None, "null_value"): None,
    (None, "copy_to"): [],
    (None, "similarity"): "BM25",
    (None, "term_vector"): "no",
    (None, "fielddata"): False,
    (None, "position_increment_gap"): 100,
    (None, "ignore_above"): 2147483647,
    (None, "split_queries_on_whitespace"): False,
    (None, "include_in_parent"): False,
    (None, "include_in_root"): False,
    (None, "analyzer"): "default",
    (None, "normalizer"): None,
    ("text", "norms"): True,
    ("keyword", "norms"): False,
    ("text", "index_options"): "positions",
    ("keyword", "index_options"): "docs",
    ("date", "format"): "strict_date_optional_time||epoch_millis",
    ("date_nanos", "format"): "strict_date_optional_time||epoch_millis",
}
_UNKNOWN = object()  # a parameter absent from the live mapping with no known default

# Index settings OpenSearch changes on an open index; every other one needs a new index.
# Prefixes end with a dot.
DYNAMIC_SETTINGS = frozenset(
    {
        "index.number_of_replicas",
        "index.auto_expand_replicas",
        "index.refresh_interval",
        "index.max_result_window",
        "index.max_inner_result_window",
        "index.max_rescore_window",
        "index.max_docvalue_fields_search",
        "index.max_script_fields",
        "index.max_ngram_diff",
        "index.max_shingle_diff",
        "index.max_refresh_listeners",
        "index.max_terms_count",
        "index.max_regex_length",
        "index.max_slices_per_scroll",
        "index.default_pipeline",
        "index.final_pipeline",
        "index.gc_deletes",
        "index.hidden",
        "index.priority",
        "index.query.default_field",
        "index.search.idle.after",
        "index.number_of_search_replicas",
        "index.unassigned.node_left.delayed_timeout",
        "index.mapping.total_fields.limit",
        "index.mapping.depth.limit",
        "index.mapping.nested_fields.limit",
        "index.mapping.nested_objects.limit",
        "index.mapping.field_name_length.limit",
        "index.translog.durability",
        "index.translog.sync_interval",
        "index.translog.flush_threshold_size",
        "index.analyze.max_token_count",
        "index.highlight.max_analyzed_offset",
    }
)
DYNAMIC_SETTING_PREFIXES = (
    "index.blocks.",
    "index.routing.allocation.",
    "index.search.slowlog.",
    "index.indexing.slowlog.",
    "index.merge.",
)

# Mapping keys compared as a whole, not walked as properties.
_WALKED = frozenset({"type", "properties", "fields"})


@dataclass(frozen=True)
class Conflict:
    """The first difference only a new index can take: where, and both sides."""

    where: str  # e.g. "field 'title' analyzer", "setting index.number_of_shards"
    live: str
    file: str


@dataclass
class Drift:
    """How the live index differs from the file; see the module docstring."""

    added_fields: list[str] = field(default_factory=list)  # dotted paths, in file order
    mapping_update: dict[str, Any] = field(default_factory=dict)  # a put-mapping body
    settings_update: dict[str, Any] = field(default_factory=dict)  # flat `index.*` -> value
    conflict: Conflict | None = None

    @property
    def identical(self) -> bool:
        return self.conflict is None and not self.mapping_update and not self.settings_update


def compare(
    live_mappings: Mapping[str, Any],
    live_settings: Mapping[str, Any],
    wanted_mappings: Mapping[str, Any],
    wanted_settings: Mapping[str, Any],
) -> Drift:
    """The drift from the live index to the file's.

    `live_mappings` is the `mappings` object of a get-mapping answer;
    `live_settings` flat settings (`index.number_of_shards` -> "1"), explicit
    ones over the defaults; `wanted_mappings` what the file makes an index
    from, `wanted_settings` the settings the file names.
    """
    drift = Drift()
    _compare_mapping_root(live_mappings, wanted_mappings, drift)
    if drift.conflict is None:
        _compare_settings(live_settings, flatten(wanted_settings), drift)
    return drift


# ---- mappings --------------------------------------------------------------------------


class _Stop(Exception):
    """The first conflict is found: nothing more to compare."""


def _compare_mapping_root(live: Mapping[str, Any], wanted: Mapping[str, Any], drift: Drift) -> None:
    try:
        for key, want in wanted.items():
            if key in ("properties", "_meta"):
                continue
            have = live.get(key, "true" if key == "dynamic" else _UNKNOWN)
            if not same(have, want):
                _conflict(drift, f"mapping {key}", have, want)
        if "_meta" in wanted and not same(live.get("_meta"), wanted["_meta"]):
            drift.mapping_update["_meta"] = wanted["_meta"]  # metadata only: taken in place
        dynamic = str(wanted.get("dynamic", "true")).lower()
        additions = _compare_properties(
            live.get("properties") or {},
            wanted.get("properties") or {},
            "",
            dynamic,
            drift,
            top=True,
        )
    except _Stop:
        return
    if additions:
        drift.mapping_update["properties"] = additions


def _compare_properties(
    live: Mapping[str, Any],
    wanted: Mapping[str, Any],
    prefix: str,
    dynamic: str,
    drift: Drift,
    *,
    top: bool = False,
) -> dict[str, Any]:
    """Compare one `properties` object; return what must be added (a put-mapping fragment)."""
    additions: dict[str, Any] = {}
    for name, want in wanted.items():
        if (top and name == META_FIELD) or not isinstance(want, Mapping):
            continue
        path = prefix + name
        have = live.get(name)
        if not isinstance(have, Mapping):
            drift.added_fields.append(path)
            additions[name] = dict(want)
            continue
        added = _compare_field(have, want, path, dynamic, drift)
        if added is not None:
            additions[name] = added
    # A field the file no longer names: under dynamic "strict"/"false" nothing maps a field
    # by itself, so it was in an earlier file. Under dynamic mapping it may be a field
    # OpenSearch mapped from a document, and cannot be told apart.
    if dynamic in ("strict", "false"):
        for name, have in live.items():
            if name not in wanted and not (top and name == META_FIELD):
                _removed(drift, prefix + name, have)
    return additions


def _compare_field(
    have: Mapping[str, Any], want: Mapping[str, Any], path: str, dynamic: str, drift: Drift
) -> dict[str, Any] | None:
    """Compare one field; a put-mapping fragment for what it gains, or None."""
    have_type, want_type = _type_of(have), _type_of(want)
    if have_type != want_type:
        _conflict(drift, f"field {path!r} type", have_type, want_type)
    for param in sorted(set(want) | set(have)):
        if param in _WALKED:
            continue
        default = _default(want_type, param, have)
        if not same(have.get(param, default), want.get(param, default)):
            _conflict(
                drift, f"field {path!r} {param}", have.get(param, default), want.get(param, default)
            )
    inner = str(want.get("dynamic", dynamic)).lower()
    sub = _compare_properties(
        have.get("properties") or {}, want.get("properties") or {}, path + ".", inner, drift
    )
    fields = _compare_fields(have.get("fields") or {}, want.get("fields") or {}, path, drift)
    if not sub and not fields:
        return None
    fragment: dict[str, Any] = {}
    if "type" in want:
        fragment["type"] = want["type"]  # a nested object must say so to take new properties
    if sub:
        fragment["properties"] = sub
    if fields:
        # OpenSearch merges a field's definition whole: restate it, with its new sub-fields.
        fragment = {k: v for k, v in want.items() if k != "properties"} | fragment
    return fragment


def _compare_fields(
    live: Mapping[str, Any], wanted: Mapping[str, Any], path: str, drift: Drift
) -> bool:
    """Multi-fields (`fields`): True when the file adds some; a changed or removed one conflicts."""
    added = False
    for name, want in wanted.items():
        have = live.get(name)
        if not isinstance(want, Mapping):
            continue
        if not isinstance(have, Mapping):
            drift.added_fields.append(f"{path}.{name}")
            added = True
            continue
        _compare_field(have, want, f"{path}.{name}", "true", drift)
    for name, have in live.items():
        if name not in wanted:
            _removed(drift, f"{path}.{name}", have)
    return added


def _type_of(spec: Any) -> str:
    if not isinstance(spec, Mapping):
        return "?"
    return str(spec.get("type", "object"))


def _default(field_type: str, param: str, live: Mapping[str, Any]) -> Any:
    if param == "search_analyzer":  # searches use the index analyzer unless told otherwise
        return live.get("analyzer", PARAMETER_DEFAULTS[(None, "analyzer")])
    if (field_type, param) in PARAMETER_DEFAULTS:
        return PARAMETER_DEFAULTS[(field_type, param)]
    return PARAMETER_DEFAULTS.get((None, param), _UNKNOWN)


def _conflict(drift: Drift, where: str, live: Any, file: Any) -> None:
    drift.conflict = Conflict(where, _shown(live), _shown(file))
    raise _Stop


def _removed(drift: Drift, path: str, live: Any) -> None:
    drift.conflict = Conflict(f"field {path!r}", f"mapped ({_type_of(live)})", "not named")
    raise _Stop


def _shown(value: Any) -> str:
    if value is _UNKNOWN:
        return "not set"
    if isinstance(value, str):
        return repr(value)
    return repr(normalised(value))


# ---- settings --------------------------------------------------------------------------


def _compare_settings(live: Mapping[str, Any], wanted: Mapping[str, Any], drift: Drift) -> None:
    for key, want in wanted.items():
        have = live.get(key, _UNKNOWN)
        if same(have, want):
            continue
        if is_dynamic_setting(key):
            drift.settings_update[key] = want
        else:
            drift.conflict = Conflict(f"setting {key}", _shown(have), _shown(want))
            return


def is_dynamic_setting(key: str) -> bool:
    """Can OpenSearch change this (flat, `index.`-prefixed) setting on an open index?"""
    return key in DYNAMIC_SETTINGS or key.startswith(DYNAMIC_SETTING_PREFIXES)


def flatten(settings: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as OpenSearch's flat form: {"index": {"a": {"b": 1}}} -> {"index.a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


# ---- values ----------------------------------------------------------------------------


def normalised(value: Any) -> Any:
    """A value as OpenSearch may report it: settings come back as strings, numbers may be
    floats, booleans "true"; lists and objects compared element by element."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return format(float(value), "g")
    if isinstance(value, str):
        try:
            return format(float(value), "g")
        except ValueError:
            return value.lower() if value.lower() in ("true", "false") else value
    if isinstance(value, Mapping):
        return {str(k): normalised(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [normalised(v) for v in value]
    return value


def same(live: Any, file: Any) -> bool:
    if live is _UNKNOWN:
        return False
    have, want = normalised(live), normalised(file)
    # A one-element list and its element are one value (`copy_to = "all"` comes back
    # as ["all"]).
    if isinstance(have, list) and len(have) == 1 and not isinstance(want, list):
        have = have[0]
    if isinstance(want, list) and len(want) == 1 and not isinstance(have, list):
        want = want[0]
    return bool(have == want)
