"""CREATE, ALTER and DROP of keyspaces, user types and tables, with Amazon Keyspaces' options.

Replication classes are checked and given Keyspaces' names; table
properties are checked against the ones Keyspaces accepts. Its
`custom_properties` carry the one-way settings (client-side timestamps and
TTL can be enabled, never disabled again) and the CDC specification; turning
CDC on or off, and dropping a table that has it on, calls the sink's
`enable_stream`/`disable_stream`. Every schema change gives the catalog a
new schema version.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable
from typing import Any

from keyspaces_local import types
from keyspaces_local.cql import parser as p
from keyspaces_local.cql import system_tables as st
from keyspaces_local.cql.api import AlreadyExists, ConfigError, Invalid, Result, SchemaChange, Void
from keyspaces_local.cql.limits import MAX_DEFAULT_TTL
from keyspaces_local.cql.state import EngineState, keyspace_of
from keyspaces_local.schema import Column, ColumnKind, TableOptions, TableSchema, ViewType
from keyspaces_local.storage import TableData

REPLICATION_CLASSES = {
    "singleregionstrategy": "SingleRegionStrategy",
    "networktopologystrategy": "org.apache.cassandra.locator.NetworkTopologyStrategy",
    "simplestrategy": "org.apache.cassandra.locator.SimpleStrategy",
}
# Cassandra table properties Keyspaces accepts (and ignores unless named below).
KNOWN_TABLE_PROPERTIES = {
    "bloom_filter_fp_chance",
    "caching",
    "cdc",
    "comment",
    "compaction",
    "compression",
    "crc_check_chance",
    "custom_properties",
    "dclocal_read_repair_chance",
    "default_time_to_live",
    "gc_grace_seconds",
    "max_index_interval",
    "memtable_flush_period_in_ms",
    "min_index_interval",
    "read_repair_chance",
    "speculative_retry",
    "tags",
}


def run_ddl(state: EngineState, statement: p.Statement, keyspace: str | None) -> Result:
    handlers: dict[type, Callable[[EngineState, Any, str | None], Result]] = {
        p.CreateKeyspace: _create_keyspace,
        p.AlterKeyspace: _alter_keyspace,
        p.DropKeyspace: _drop_keyspace,
        p.CreateType: _create_type,
        p.DropType: _drop_type,
        p.CreateTable: _create_table,
        p.AlterTable: _alter_table,
        p.DropTable: _drop_table,
    }
    handler = handlers.get(type(statement))
    if handler is None:
        raise Invalid(f"Unsupported statement {type(statement).__name__}")
    result = handler(state, statement, keyspace)
    if isinstance(result, SchemaChange):
        state.catalog.schema_version = uuid.uuid4()
    return result


def _replication(props: dict[str, Any]) -> dict[str, str]:
    replication = props.get("replication")
    if not isinstance(replication, dict) or "class" not in replication:
        raise ConfigError("Missing mandatory replication strategy class")
    short = str(replication["class"]).rsplit(".", 1)[-1].lower()
    if short not in REPLICATION_CLASSES:
        raise ConfigError(f"Unable to find replication strategy class '{replication['class']}'")
    out = {str(k): str(v) for k, v in replication.items()}
    out["class"] = REPLICATION_CLASSES[short]
    return out


def _create_keyspace(state: EngineState, stmt: p.CreateKeyspace, keyspace: str | None) -> Result:
    if st.is_system(stmt.name):
        raise Invalid(f"{stmt.name} keyspace is not user-modifiable")
    replication = _replication(stmt.properties)
    if stmt.name in state.catalog.keyspaces:
        if stmt.if_not_exists:
            return Void()
        raise AlreadyExists(f"Keyspace {stmt.name} already exists", stmt.name)
    durable = bool(stmt.properties.get("durable_writes", True))
    state.catalog.keyspaces[stmt.name] = st.KeyspaceDef(stmt.name, replication, durable)
    return SchemaChange("CREATED", "KEYSPACE", stmt.name)


def _alter_keyspace(state: EngineState, stmt: p.AlterKeyspace, keyspace: str | None) -> Result:
    ks = state.catalog.keyspaces.get(stmt.name)
    if ks is None:
        raise ConfigError(f"Keyspace {stmt.name} does not exist")
    if "replication" in stmt.properties:
        ks.replication = _replication(stmt.properties)
    return SchemaChange("UPDATED", "KEYSPACE", stmt.name)


def _drop_keyspace(state: EngineState, stmt: p.DropKeyspace, keyspace: str | None) -> Result:
    if st.is_system(stmt.name):
        raise Invalid(f"{stmt.name} keyspace is not user-modifiable")
    ks = state.catalog.keyspaces.get(stmt.name)
    if ks is None:
        if stmt.if_exists:
            return Void()
        raise ConfigError(f"Cannot drop non existing keyspace '{stmt.name}'.")
    for name in list(ks.tables):
        _remove_table(state, ks, name)
    del state.catalog.keyspaces[stmt.name]
    return SchemaChange("DROPPED", "KEYSPACE", stmt.name)


def _user_keyspace(state: EngineState, name: p.QName, keyspace: str | None) -> st.KeyspaceDef:
    ks_name = keyspace_of(name, keyspace)
    if st.is_system(ks_name):
        raise Invalid(f"{ks_name} keyspace is not user-modifiable")
    ks = state.catalog.keyspaces.get(ks_name)
    if ks is None:
        raise Invalid(f"Keyspace {ks_name} does not exist")
    return ks


def _parse_type(ks: st.KeyspaceDef, text: str) -> Any:
    def udt(name: str) -> Any:
        short = name.split(".")[-1].strip('"')
        return ks.types[short].cql_type

    try:
        return types.parse_type(text, udt)
    except types.UnknownTypeError as exc:
        raise Invalid(str(exc)) from None


def _create_type(state: EngineState, stmt: p.CreateType, keyspace: str | None) -> Result:
    ks = _user_keyspace(state, stmt.name, keyspace)
    if stmt.name.name in ks.types:
        if stmt.if_not_exists:
            return Void()
        raise AlreadyExists(
            f"A user type of name {ks.name}.{stmt.name.name} already exists", ks.name
        )
    names = [n for n, _ in stmt.fields]
    if len(set(names)) != len(names):
        raise Invalid("Duplicate field name in type")
    field_types = [_parse_type(ks, t) for _, t in stmt.fields]
    cls = types.make_udt(ks.name, stmt.name.name, names, field_types)
    ks.types[stmt.name.name] = st.UdtDef(stmt.name.name, names, field_types, cls)
    return SchemaChange("CREATED", "TYPE", ks.name, stmt.name.name)


def _drop_type(state: EngineState, stmt: p.DropType, keyspace: str | None) -> Result:
    ks = _user_keyspace(state, stmt.name, keyspace)
    udt = ks.types.get(stmt.name.name)
    if udt is None:
        if stmt.if_exists:
            return Void()
        raise Invalid(f"No user type named {stmt.name.name} exists.")
    for schema in ks.tables.values():
        if any(_uses_type(c.cql_type, udt.cql_type) for c in schema.columns.values()):
            raise Invalid(
                f"Cannot drop user type {ks.name}.{udt.name} as it is still used by table "
                f"{ks.name}.{schema.name}"
            )
    del ks.types[stmt.name.name]
    return SchemaChange("DROPPED", "TYPE", ks.name, stmt.name.name)


def _create_table(state: EngineState, stmt: p.CreateTable, keyspace: str | None) -> Result:
    ks = _user_keyspace(state, stmt.name, keyspace)
    name = stmt.name.name
    if name in ks.tables:
        if stmt.if_not_exists:
            return Void()
        raise AlreadyExists(f"Object {ks.name}.{name} already exists", ks.name, name)
    columns = _table_columns(ks, stmt)
    schema = TableSchema(ks.name, name, columns)
    cdc_wanted = _apply_options(schema.options, stmt.options, creating=True)
    if stmt.options.compact_storage:
        raise Invalid("COMPACT STORAGE is not supported by Amazon Keyspaces")
    if cdc_wanted:
        schema.options.cdc_enabled = True
        schema.options.latest_stream_arn = state.sink.enable_stream(schema)
    ks.tables[name] = schema
    ks.table_ids[name] = uuid.uuid4()
    state.data[(ks.name, name)] = TableData(schema, state.partitioner)
    return SchemaChange("CREATED", "TABLE", ks.name, name)


def _table_columns(ks: st.KeyspaceDef, stmt: p.CreateTable) -> dict[str, Column]:
    defs = {c.name: c for c in stmt.columns}
    if len(defs) != len(stmt.columns):
        raise Invalid("Multiple definition of identifier")
    for key in stmt.partition_key + stmt.clustering:
        if key not in defs:
            raise Invalid(f"Unknown definition {key} referenced in PRIMARY KEY")
    if len(set(stmt.partition_key + stmt.clustering)) != len(stmt.partition_key) + len(
        stmt.clustering
    ):
        raise Invalid("A column cannot be declared twice in the PRIMARY KEY")
    order = dict(stmt.options.clustering_order)
    if [n for n, _ in stmt.options.clustering_order] != stmt.clustering[: len(order)]:
        raise Invalid(
            "CLUSTERING ORDER BY must list the clustering columns in their PRIMARY KEY order"
        )
    columns: dict[str, Column] = {}
    for cdef in stmt.columns:
        cql_type = _parse_type(ks, cdef.type_text)
        if cdef.name in stmt.partition_key:
            kind, pos, desc = (
                ColumnKind.PARTITION_KEY,
                stmt.partition_key.index(cdef.name),
                False,
            )
        elif cdef.name in stmt.clustering:
            kind, pos = ColumnKind.CLUSTERING, stmt.clustering.index(cdef.name)
            desc = order.get(cdef.name, False)
        else:
            kind, pos, desc = (
                (ColumnKind.STATIC if cdef.static else ColumnKind.REGULAR),
                0,
                False,
            )
        if cdef.static and kind is not ColumnKind.STATIC:
            raise Invalid(f"Static column {cdef.name} cannot be part of the PRIMARY KEY")
        if kind is ColumnKind.STATIC and not stmt.clustering:
            raise Invalid(
                "Static columns are only useful (and thus allowed) if the table has at "
                "least one "
                "clustering column"
            )
        if kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING) and types.is_multicell(
            cql_type
        ):
            raise Invalid(
                f"Invalid non-frozen collection type for PRIMARY KEY component {cdef.name}"
            )
        columns[cdef.name] = Column(cdef.name, cql_type, kind, pos, desc)
    keyed = [
        c for c in columns.values() if c.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING)
    ]
    keyed.sort(key=lambda c: (c.kind is ColumnKind.CLUSTERING, c.position))
    rest = [c for c in columns.values() if c not in keyed]
    return {c.name: c for c in keyed + rest}


def _apply_options(opts: TableOptions, spec: p.TableOptionsSpec, creating: bool) -> bool | None:
    """Apply table properties to `opts`; returns the CDC state asked for (None: unchanged)."""
    props = spec.properties
    for name in spec.property_names:
        if name not in KNOWN_TABLE_PROPERTIES:
            raise ConfigError(f"Unknown property '{name}'")
    if len(set(spec.property_names)) != len(spec.property_names):
        raise Invalid("Multiple definitions of a table property")
    cdc_wanted: bool | None = None
    if "cdc" in props:
        if not isinstance(props["cdc"], bool):
            raise ConfigError("Invalid value for property 'cdc': expected true or false")
        cdc_wanted = props["cdc"]
    if "default_time_to_live" in props:
        ttl = props["default_time_to_live"]
        if not isinstance(ttl, int) or not 0 <= ttl <= MAX_DEFAULT_TTL:
            raise ConfigError(f"default_time_to_live must be between 0 and {MAX_DEFAULT_TTL}")
        opts.default_time_to_live = ttl
        opts.ttl_enabled = opts.ttl_enabled or ttl > 0
    custom = props.get("custom_properties")
    if custom is not None:
        if not isinstance(custom, dict):
            raise ConfigError("custom_properties must be a map")
        if not creating and len(custom) > 1:
            raise Invalid("Only one custom property can be updated in one ALTER TABLE statement")
        cdc_from_spec = _custom_properties(opts, custom, creating)
        if cdc_from_spec is not None and cdc_wanted is None:
            cdc_wanted = cdc_from_spec
    return cdc_wanted


def _custom_properties(opts: TableOptions, custom: dict[str, Any], creating: bool) -> bool | None:
    cdc_wanted: bool | None = None
    for key, value in custom.items():
        if not isinstance(value, dict):
            raise ConfigError(f"custom property {key} must be a map")
        status = str(value.get("status", "")).lower()
        if key in ("client_side_timestamps", "ttl"):
            attr = "client_side_timestamps" if key == "client_side_timestamps" else "ttl_enabled"
            if status == "enabled":
                setattr(opts, attr, True)
            elif status == "disabled":
                if getattr(opts, attr) or not creating:
                    raise Invalid(f"{key} cannot be disabled once enabled")
            else:
                raise ConfigError(f"Invalid status for {key}: {value.get('status')!r}")
        elif key == "cdc_specification":
            if "view_type" in value:
                try:
                    view = ViewType(str(value["view_type"]).upper())
                except ValueError:
                    raise ConfigError(f"Invalid view_type {value['view_type']!r}") from None
                if opts.cdc_enabled and view is not opts.view_type and status != "disabled":
                    raise Invalid("The view type of an enabled stream cannot be changed")
                opts.view_type = view
            if status in ("enabled", "disabled"):
                cdc_wanted = status == "enabled"
        elif key not in (
            "encryption_specification",
            "point_in_time_recovery",
            "capacity_mode",
            "warm_throughput",
            "replica_updates",
        ):
            raise ConfigError(f"Unknown custom property '{key}'")
    return cdc_wanted


def _alter_table(state: EngineState, stmt: p.AlterTable, keyspace: str | None) -> Result:
    ks = _user_keyspace(state, stmt.name, keyspace)
    old = ks.tables.get(stmt.name.name)
    if old is None:
        raise Invalid(f"unconfigured table {stmt.name.name}")
    if stmt.unsupported:
        raise Invalid(f"{stmt.unsupported} is not supported by Amazon Keyspaces")
    schema = TableSchema(old.keyspace, old.name, dict(old.columns), copy.copy(old.options))
    if stmt.add:
        for cdef in stmt.add:
            if cdef.name in schema.columns:
                raise Invalid(
                    f"Invalid column name {cdef.name} because it conflicts with an existing column"
                )
            if cdef.static and not old.clustering_key:
                raise Invalid("Static columns are not allowed in tables with no clustering columns")
            kind = ColumnKind.STATIC if cdef.static else ColumnKind.REGULAR
            schema.columns[cdef.name] = Column(cdef.name, _parse_type(ks, cdef.type_text), kind)
    if stmt.options is not None:
        if stmt.options.clustering_order or stmt.options.compact_storage:
            raise Invalid("CLUSTERING ORDER and COMPACT STORAGE cannot be altered")
        cdc_wanted = _apply_options(schema.options, stmt.options, creating=False)
        if cdc_wanted is True and not old.options.cdc_enabled:
            schema.options.cdc_enabled = True
            schema.options.latest_stream_arn = state.sink.enable_stream(schema)
        elif cdc_wanted is False and old.options.cdc_enabled:
            schema.options.cdc_enabled = False
            state.sink.disable_stream(schema.keyspace, schema.name)
    ks.tables[schema.name] = schema
    state.data[(schema.keyspace, schema.name)].set_schema(schema)
    return SchemaChange("UPDATED", "TABLE", ks.name, schema.name)


def _drop_table(state: EngineState, stmt: p.DropTable, keyspace: str | None) -> Result:
    ks = _user_keyspace(state, stmt.name, keyspace)
    if stmt.name.name not in ks.tables:
        if stmt.if_exists:
            return Void()
        raise Invalid(f"unconfigured table {stmt.name.name}")
    _remove_table(state, ks, stmt.name.name)
    return SchemaChange("DROPPED", "TABLE", ks.name, stmt.name.name)


def _remove_table(state: EngineState, ks: st.KeyspaceDef, name: str) -> None:
    schema = ks.tables.pop(name)
    ks.table_ids.pop(name, None)
    state.data.pop((ks.name, name), None)
    if schema.options.cdc_enabled:
        state.sink.disable_stream(ks.name, name)


def _uses_type(cql_type: Any, udt: Any) -> bool:
    if cql_type is udt:
        return True
    return any(_uses_type(sub, udt) for sub in getattr(cql_type, "subtypes", ()) or ())
