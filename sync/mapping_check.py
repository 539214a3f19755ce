"""A mapping file checked against the table it names, before anything is written.

`load_mapping` checks a file on its own; this module checks it against the
table's columns as read at start. Without it, a property naming a column that
does not exist, a misspelt `document.rename`, or `type = "intger"` makes
OpenSearch reject every document: each row goes to the dead-letter store and
backfill still exits 0. `check_mapping_against_table` turns each of those into
one `ConfigError` naming the key, before the first write.

What is checked, in this order:

- `document.id`, `include`, `exclude` and the keys of `rename` name columns of
  the table (`id` columns of its primary key);
- the fields a document carries are distinct and none is a field OpenSearch
  or ks2os reserves (`_id`, `_ks2os`...);
- every field `type` under `index.mappings` (properties, their `fields` and
  nested `properties`) is an OpenSearch field type;
- every top-level property names a column or a field the mapping produces
  (a rename target, a `copy_to` target, or a field that holds no source value
  such as an `alias`);
- with `dynamic = "strict"`, every field a document carries has a property.

With `document.shape = "partition"` the table must have clustering columns
(else each partition is one row: the row shape says the same), `document.id`
must be the partition key, and the properties are checked on two levels: the
partition key's and the statics' fields at the top, the rows' fields (and
computed fields) under the nested rows property.

Pure: no server is needed; the table's layout comes in as a `TableLayout`.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from sync.documents import META_FIELD
from sync.errors import ConfigError
from sync.mapping import FIELD_TYPES_URL, Shape, TableMapping
from sync.schema import TableLayout

# The field types of OpenSearch's "Supported field types" reference
# (https://docs.opensearch.org/latest/mappings/supported-field-types/), plus the
# types of OpenSearch's own mapper and analysis plugins.
OPENSEARCH_FIELD_TYPES = frozenset(
    {
        # core
        "alias",
        "binary",
        "boolean",
        # strings
        "text",
        "keyword",
        "match_only_text",
        "wildcard",
        "token_count",
        "constant_keyword",
        "version",
        # numbers
        "byte",
        "short",
        "integer",
        "long",
        "unsigned_long",
        "half_float",
        "float",
        "double",
        "scaled_float",
        # dates and addresses
        "date",
        "date_nanos",
        "ip",
        # ranges
        "integer_range",
        "long_range",
        "float_range",
        "double_range",
        "date_range",
        "ip_range",
        # objects
        "object",
        "nested",
        "flat_object",
        "join",
        # geographic and Cartesian
        "geo_point",
        "geo_shape",
        "xy_point",
        "xy_shape",
        # autocomplete
        "completion",
        "search_as_you_type",
        # specialised search and vectors
        "rank_feature",
        "rank_features",
        "percolator",
        "semantic",
        "derived",
        "star_tree",
        "knn_vector",
        "sparse_vector",
        # plugins: mapper-murmur3, analysis-icu, mapper-annotated-text
        "murmur3",
        "icu_collation_keyword",
        "annotated_text",
    }
)
# Properties of these types hold no value of the document's own, so they need no column.
_VIRTUAL_TYPES = frozenset({"alias", "constant_keyword"})
# OpenSearch's metadata fields: a document that carries one is rejected.
_METADATA_FIELDS = frozenset(
    {
        "_id",
        "_index",
        "_source",
        "_routing",
        "_field_names",
        "_ignored",
        "_seq_no",
        "_primary_term",
        "_version",
        "_doc_count",
        "_meta",
        "_size",
    }
)
_MAPPINGS = "index.mappings"


def check_mapping_against_table(mapping: TableMapping, table: TableLayout) -> None:
    """Raise a one-line `ConfigError` naming the first key of `mapping` that `table` defeats."""
    checker = _TableChecker(mapping, table)
    checker.document_columns()
    fields = document_fields(mapping, table)
    checker.field_names(fields)
    checker.field_types()
    computed = {item.name for item in mapping.document.computed}
    if mapping.document.shape is Shape.PARTITION:
        _check_partition_shape(checker, fields, computed)
        return
    level = _Level(_MAPPINGS, mapping.mappings, checker.columns)
    if mapping.document.hook is None:
        # A hook may add any field, so only a mapping without one can be held to its columns.
        checker.properties_have_sources(level, fields, computed)
    checker.strict_fields_have_properties(level, fields)


def _check_partition_shape(
    checker: _TableChecker, fields: Mapping[str, str], computed: set[str]
) -> None:
    """The partition shape's own rules, then the properties on both levels."""
    mapping, table = checker.mapping, checker.table
    spec = mapping.document
    if not table.clustering:
        raise _error(
            mapping,
            "document.shape",
            f'"partition" groups the rows of a partition, but {table.qualified_name} has no '
            "clustering columns: each partition is one row",
            "leave document.shape out (one document per row is the same here)",
        )
    if spec.id is not None and spec.id != table.partition_key:
        raise _error(
            mapping,
            "document.id",
            f"{list(spec.id)} is not the partition key: a partition's document is "
            f"identified by {list(table.partition_key)}",
            "leave document.id out, or list the partition-key columns in order",
        )
    outer = {name: c for name, c in fields.items() if c in table.partition_key or c in table.static}
    inner = {name: column for name, column in fields.items() if name not in outer}
    if spec.rows_field in outer:
        raise _error(
            mapping,
            "document.rows_field",
            f"{spec.rows_field!r} is also the field of column {outer[spec.rows_field]!r}",
            "choose another rows_field, or rename that column",
        )
    rows = _properties(mapping.mappings)[spec.rows_field]  # mapping.py checked it is nested
    top_columns = (*table.partition_key, *table.static)
    top = _Level(_MAPPINGS, mapping.mappings, top_columns, filled_by_ks2os={spec.rows_field})
    row_columns = tuple(c for c in checker.columns if c not in top_columns)
    nested = _Level(
        f"{_MAPPINGS}.properties.{spec.rows_field}",
        {"dynamic": mapping.mappings.get("dynamic"), **rows},
        row_columns,
    )
    if spec.hook is None:
        checker.properties_have_sources(top, outer, set())
        checker.properties_have_sources(nested, inner, computed)
    checker.strict_fields_have_properties(top, outer)
    checker.strict_fields_have_properties(nested, inner)


class _Level:
    """One level of properties: the index's own, or a nested property's (the rows')."""

    def __init__(
        self,
        key: str,
        mappings: Mapping[str, Any],
        columns: Sequence[str],
        filled_by_ks2os: frozenset[str] | set[str] = frozenset(),
    ) -> None:
        self.key = key  # where the file says it: index.mappings or index.mappings.properties.rows
        self.properties = _properties(mappings)
        self.strict = mappings.get("dynamic") == "strict"
        self.columns = columns  # the columns whose fields may fill this level
        self.filled_by_ks2os = frozenset({META_FIELD, *filled_by_ks2os})


def document_fields(mapping: TableMapping, table: TableLayout) -> dict[str, str]:
    """Field name -> the column it comes from, for every field a row document carries.

    Key columns always go in; `include` narrows the rest; `exclude` removes;
    `rename` names the field. Computed fields are not columns' fields: the
    mapping checks them itself (`sync.mapping`), and they count as filled here.
    """
    spec = mapping.document
    if spec.include is not None:
        columns = [*table.key_columns, *spec.include]
    else:
        columns = [*table.key_columns, *table.static, *table.column_types]
    fields: dict[str, str] = {}
    seen: set[str] = set()
    for column in columns:
        if column in seen or column in spec.exclude:
            continue
        seen.add(column)
        name = spec.rename.get(column, column)
        if name in fields:
            renamed = next((c for c in (column, fields[name]) if c in spec.rename), None)
            raise _error(
                mapping,
                "document.rename" if renamed is None else f"document.rename.{renamed}",
                f"columns {fields[name]!r} and {column!r} would both fill the field {name!r}",
                "rename one of them to a field of its own, or exclude one",
            )
        fields[name] = column
    return fields


class _TableChecker:
    def __init__(self, mapping: TableMapping, table: TableLayout) -> None:
        self.mapping = mapping
        self.table = table
        self.columns: tuple[str, ...] = tuple(
            dict.fromkeys([*table.key_columns, *table.static, *table.column_types])
        )

    def document_columns(self) -> None:
        spec = self.mapping.document
        for column in spec.id or ():
            if column not in self.table.key_columns:
                self._not_a_column("document.id", column, self.table.key_columns, "key column")
        for key, names in (("document.include", spec.include), ("document.exclude", spec.exclude)):
            for column in names or ():
                if column not in self.columns:
                    self._not_a_column(key, column, self.columns, "column")
        for column in spec.rename:
            if column not in self.columns:
                self._not_a_column(f"document.rename.{column}", column, self.columns, "column")

    def field_names(self, fields: Mapping[str, str]) -> None:
        for name, column in fields.items():
            if name == META_FIELD or name in _METADATA_FIELDS:
                key = f"document.rename.{column}" if column != name else "document.rename"
                raise _error(
                    self.mapping,
                    key,
                    f"the field {name!r} (from column {column!r}) is reserved by "
                    + ("ks2os" if name == META_FIELD else "OpenSearch"),
                    f'rename the column with document.rename = {{ {column} = "..." }} '
                    "or exclude it",
                )

    def field_types(self) -> None:
        properties = self.mapping.mappings.get("properties")
        for key, value in _typed_fields(properties, _MAPPINGS, self.mapping.path):
            if not isinstance(value, str) or value not in OPENSEARCH_FIELD_TYPES:
                near = difflib.get_close_matches(str(value), OPENSEARCH_FIELD_TYPES, n=1)
                guess = f" (did you mean {near[0]!r}?)" if near else ""
                raise _error(
                    self.mapping,
                    key,
                    f"{value!r} is not an OpenSearch field type{guess}",
                    f"field types are listed at {FIELD_TYPES_URL}",
                )

    def properties_have_sources(
        self, level: _Level, fields: Mapping[str, str], computed: set[str]
    ) -> None:
        properties = level.properties
        filled = set(fields) | set(level.columns) | computed | _copy_to_targets(properties)
        for name, spec in properties.items():
            if name in filled or name in level.filled_by_ks2os:
                continue
            if isinstance(spec, Mapping) and spec.get("type") in _VIRTUAL_TYPES:
                continue
            raise _error(
                self.mapping,
                f"{level.key}.properties.{name}",
                f"no column {name!r} in {self.table.qualified_name}, and no rename, copy_to "
                f"or computed field fills it{_near(name, level.columns)}",
                f"columns: {_listing(level.columns)}; rename a column to it with "
                "document.rename, or remove the property",
            )

    def strict_fields_have_properties(self, level: _Level, fields: Mapping[str, str]) -> None:
        if not level.strict:
            return
        for name, column in fields.items():
            if name not in level.properties:
                via = "" if name == column else f" (column {column!r} renamed)"
                raise _error(
                    self.mapping,
                    f"{level.key}.properties",
                    f'no property {name!r}{via}, and {_MAPPINGS}.dynamic = "strict" makes '
                    "OpenSearch reject every document that carries it",
                    f'add {name} = {{ type = "..." }} to [{level.key}.properties], or '
                    f"exclude the column with document.exclude = [{column!r}]",
                )

    def _not_a_column(self, key: str, column: str, known: Sequence[str], what: str) -> None:
        raise _error(
            self.mapping,
            key,
            f"{column!r} is not a {what} of {self.table.qualified_name}{_near(column, known)}",
            f"{what}s: {_listing(known)}",
        )


def _error(mapping: TableMapping, key: str, problem: str, hint: str) -> ConfigError:
    return ConfigError(f"{mapping.path}: {key}: {problem}", hint=hint)


def _properties(mappings: Mapping[str, Any]) -> Mapping[str, Any]:
    properties = mappings.get("properties")
    return properties if isinstance(properties, Mapping) else {}


def _typed_fields(properties: Any, prefix: str, path: str) -> Iterator[tuple[str, Any]]:
    """(key, type value) of every property with a `type`, nested ones and multi-fields too."""
    if not isinstance(properties, Mapping):
        return
    for name, spec in properties.items():
        key = f"{prefix}.properties.{name}"
        if not isinstance(spec, Mapping):
            raise ConfigError(
                f'{path}: {key}: expected a table such as {{ type = "keyword" }}, got {spec!r}',
                hint=f"field types are listed at {FIELD_TYPES_URL}",
            )
        if "type" in spec:
            yield f"{key}.type", spec["type"]
        yield from _typed_fields(spec.get("properties"), key, path)
        fields = spec.get("fields")
        if isinstance(fields, Mapping):
            for sub, sub_spec in fields.items():
                if isinstance(sub_spec, Mapping) and "type" in sub_spec:
                    yield f"{key}.fields.{sub}.type", sub_spec["type"]


def _copy_to_targets(properties: Mapping[str, Any]) -> set[str]:
    targets: set[str] = set()
    for spec in properties.values():
        if not isinstance(spec, Mapping):
            continue
        copy_to = spec.get("copy_to")
        if isinstance(copy_to, str):
            targets.add(copy_to)
        elif isinstance(copy_to, list):
            targets.update(t for t in copy_to if isinstance(t, str))
    return targets


def _near(name: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _listing(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
