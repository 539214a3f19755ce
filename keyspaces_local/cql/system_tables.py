"""The catalog of keyspaces, types and tables, and the system tables that describe it.

Drivers learn the cluster from `system.local`/`system.peers` and the schema
from `system_schema.*` (the driver's SchemaParserV3 reads exactly these
columns); Keyspaces adds `system_schema_mcs.tables` with its own table
properties (CDC, client-side timestamps, TTL). Each system table is built on
demand as a `VirtualTable` of Python values that the engine serialises.
"""

from __future__ import annotations

import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

from cassandra import cqltypes

from keyspaces_local import types
from keyspaces_local.partitioners import MURMUR3, PARTITIONERS, Partitioner
from keyspaces_local.schema import ColumnKind, TableSchema

SYSTEM_KEYSPACES = ("system", "system_schema", "system_schema_mcs", "system_multiregion_info")
DATA_CENTER = "us-east-1"
RACK = "us-east-1a"


@dataclass
class UdtDef:
    name: str
    field_names: list[str]
    field_types: list[Any]  # cqltypes classes
    cql_type: Any  # the UDT's own cqltypes class


@dataclass
class KeyspaceDef:
    name: str
    replication: dict[str, str]
    durable_writes: bool = True
    types: dict[str, UdtDef] = field(default_factory=dict)
    tables: dict[str, TableSchema] = field(default_factory=dict)
    table_ids: dict[str, uuid.UUID] = field(default_factory=dict)


@dataclass
class Catalog:
    keyspaces: dict[str, KeyspaceDef] = field(default_factory=dict)
    schema_version: uuid.UUID = field(default_factory=uuid.uuid4)


@dataclass
class VirtualTable:
    columns: list[tuple[str, Any]]  # (name, cqltypes class)
    partition_key: list[str]
    rows: list[dict[str, Any]]  # column name -> Python value (missing: null)


def _t(text: str) -> Any:
    return types.parse_type(text)


TEXT, BOOL, INT, DOUBLE, UUID_T, INET, BLOB, TS = (
    _t("text"),
    _t("boolean"),
    _t("int"),
    _t("double"),
    _t("uuid"),
    _t("inet"),
    _t("blob"),
    _t("timestamp"),
)
MAP_TT = _t("frozen<map<text, text>>")
LIST_T = _t("frozen<list<text>>")
SET_T = _t("frozen<set<text>>")

_LAYOUTS: dict[tuple[str, str], tuple[list[tuple[str, Any]], list[str]]] = {
    ("system", "local"): (
        [
            ("key", TEXT),
            ("bootstrapped", TEXT),
            ("broadcast_address", INET),
            ("cluster_name", TEXT),
            ("cql_version", TEXT),
            ("data_center", TEXT),
            ("gossip_generation", INT),
            ("host_id", UUID_T),
            ("listen_address", INET),
            ("native_protocol_version", TEXT),
            ("partitioner", TEXT),
            ("rack", TEXT),
            ("release_version", TEXT),
            ("rpc_address", INET),
            ("schema_version", UUID_T),
            ("thrift_version", TEXT),
            ("tokens", SET_T),
            ("truncated_at", _t("frozen<map<uuid, blob>>")),
        ],
        ["key"],
    ),
    ("system", "peers"): (
        [
            ("peer", INET),
            ("data_center", TEXT),
            ("host_id", UUID_T),
            ("preferred_ip", INET),
            ("rack", TEXT),
            ("release_version", TEXT),
            ("rpc_address", INET),
            ("schema_version", UUID_T),
            ("tokens", SET_T),
        ],
        ["peer"],
    ),
    ("system_schema", "keyspaces"): (
        [
            ("keyspace_name", TEXT),
            ("durable_writes", BOOL),
            ("replication", MAP_TT),
        ],
        ["keyspace_name"],
    ),
    ("system_schema", "tables"): (
        [
            ("keyspace_name", TEXT),
            ("table_name", TEXT),
            ("bloom_filter_fp_chance", DOUBLE),
            ("caching", MAP_TT),
            ("cdc", BOOL),
            ("comment", TEXT),
            ("compaction", MAP_TT),
            ("compression", MAP_TT),
            ("crc_check_chance", DOUBLE),
            ("dclocal_read_repair_chance", DOUBLE),
            ("default_time_to_live", INT),
            ("extensions", _t("frozen<map<text, blob>>")),
            ("flags", SET_T),
            ("gc_grace_seconds", INT),
            ("id", UUID_T),
            ("max_index_interval", INT),
            ("memtable_flush_period_in_ms", INT),
            ("min_index_interval", INT),
            ("read_repair_chance", DOUBLE),
            ("speculative_retry", TEXT),
        ],
        ["keyspace_name"],
    ),
    ("system_schema", "columns"): (
        [
            ("keyspace_name", TEXT),
            ("table_name", TEXT),
            ("column_name", TEXT),
            ("clustering_order", TEXT),
            ("column_name_bytes", BLOB),
            ("kind", TEXT),
            ("position", INT),
            ("type", TEXT),
        ],
        ["keyspace_name"],
    ),
    ("system_schema", "types"): (
        [
            ("keyspace_name", TEXT),
            ("type_name", TEXT),
            ("field_names", LIST_T),
            ("field_types", LIST_T),
        ],
        ["keyspace_name"],
    ),
    ("system_schema", "functions"): (
        [
            ("keyspace_name", TEXT),
            ("function_name", TEXT),
            ("argument_types", LIST_T),
            ("argument_names", LIST_T),
            ("body", TEXT),
            ("called_on_null_input", BOOL),
            ("language", TEXT),
            ("return_type", TEXT),
        ],
        ["keyspace_name"],
    ),
    ("system_schema", "aggregates"): (
        [
            ("keyspace_name", TEXT),
            ("aggregate_name", TEXT),
            ("argument_types", LIST_T),
            ("final_func", TEXT),
            ("initcond", TEXT),
            ("return_type", TEXT),
            ("state_func", TEXT),
            ("state_type", TEXT),
        ],
        ["keyspace_name"],
    ),
    ("system_schema", "triggers"): (
        [
            ("keyspace_name", TEXT),
            ("table_name", TEXT),
            ("trigger_name", TEXT),
            ("options", MAP_TT),
        ],
        ["keyspace_name"],
    ),
    ("system_schema", "indexes"): (
        [
            ("keyspace_name", TEXT),
            ("table_name", TEXT),
            ("index_name", TEXT),
            ("kind", TEXT),
            ("options", MAP_TT),
        ],
        ["keyspace_name"],
    ),
    ("system_schema", "views"): (
        [
            ("keyspace_name", TEXT),
            ("view_name", TEXT),
            ("base_table_id", UUID_T),
            ("base_table_name", TEXT),
            ("include_all_columns", BOOL),
            ("where_clause", TEXT),
        ],
        ["keyspace_name"],
    ),
    ("system_schema", "dropped_columns"): (
        [
            ("keyspace_name", TEXT),
            ("table_name", TEXT),
            ("column_name", TEXT),
            ("dropped_time", TS),
            ("type", TEXT),
        ],
        ["keyspace_name"],
    ),
    ("system_schema_mcs", "tables"): (
        [
            ("keyspace_name", TEXT),
            ("table_name", TEXT),
            ("cdc", BOOL),
            ("custom_properties", _t("map<text, frozen<map<text, text>>>")),
            ("default_time_to_live", INT),
            ("status", TEXT),
        ],
        ["keyspace_name"],
    ),
    ("system_schema_mcs", "keyspaces"): (
        [
            ("keyspace_name", TEXT),
            ("durable_writes", BOOL),
            ("replication", MAP_TT),
        ],
        ["keyspace_name"],
    ),
}


def is_system(keyspace: str) -> bool:
    return keyspace in SYSTEM_KEYSPACES


def has_table(keyspace: str, table: str) -> bool:
    return (keyspace, table) in _LAYOUTS


def address(host: str) -> str:
    """An IP address for inet columns (a host name is resolved once)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return host
    except OSError:
        return socket.gethostbyname(host)


@dataclass
class NodeInfo:
    host: str
    host_id: uuid.UUID
    token: int = 0
    # The account's partitioner (`UPDATE system.local SET partitioner = ...` changes it).
    partitioner: Partitioner = field(default_factory=lambda: PARTITIONERS[MURMUR3])


def build(keyspace: str, table: str, catalog: Catalog, node: NodeInfo) -> VirtualTable:
    """The current contents of one system table."""
    columns, pk = _LAYOUTS[(keyspace, table)]
    rows = _ROW_BUILDERS[(keyspace, table)](catalog, node)
    return VirtualTable(columns, pk, rows)


def _local(catalog: Catalog, node: NodeInfo) -> list[dict[str, Any]]:
    ip = address(node.host)
    return [
        {
            "key": "local",
            "bootstrapped": "COMPLETED",
            "broadcast_address": ip,
            "cluster_name": "keyspaces_local",
            "cql_version": "3.4.4",
            "data_center": DATA_CENTER,
            "gossip_generation": 0,
            "host_id": node.host_id,
            "listen_address": ip,
            "native_protocol_version": "4",
            "partitioner": node.partitioner.name,
            "rack": RACK,
            "release_version": "3.11.2",
            "rpc_address": ip,
            "schema_version": catalog.schema_version,
            "thrift_version": "20.1.0",
            "tokens": [str(node.token)],
        }
    ]


def _peers(catalog: Catalog, node: NodeInfo) -> list[dict[str, Any]]:
    return []


def _keyspaces(catalog: Catalog, node: NodeInfo) -> list[dict[str, Any]]:
    rows = [
        {
            "keyspace_name": name,
            "durable_writes": True,
            "replication": {"class": "org.apache.cassandra.locator.LocalStrategy"},
        }
        for name in SYSTEM_KEYSPACES
    ]
    for ks in catalog.keyspaces.values():
        rows.append(
            {
                "keyspace_name": ks.name,
                "durable_writes": ks.durable_writes,
                "replication": ks.replication,
            }
        )
    return rows


def _tables(catalog: Catalog, node: NodeInfo) -> list[dict[str, Any]]:
    rows = []
    for ks in catalog.keyspaces.values():
        for name, schema in ks.tables.items():
            rows.append(
                {
                    "keyspace_name": ks.name,
                    "table_name": name,
                    "bloom_filter_fp_chance": 0.01,
                    "caching": {"keys": "ALL", "rows_per_partition": "NONE"},
                    "cdc": schema.options.cdc_enabled,
                    "comment": "",
                    "compaction": {
                        "class": "org.apache.cassandra.db.compaction.SizeTieredCompactionStrategy",
                        "max_threshold": "32",
                        "min_threshold": "4",
                    },
                    "compression": {
                        "chunk_length_in_kb": "16",
                        "class": "org.apache.cassandra.io.compress.LZ4Compressor",
                    },
                    "crc_check_chance": 1.0,
                    "dclocal_read_repair_chance": 0.0,
                    "default_time_to_live": schema.options.default_time_to_live,
                    "extensions": {},
                    "flags": ["compound"],
                    "gc_grace_seconds": 7776000,
                    "id": ks.table_ids[name],
                    "max_index_interval": 2048,
                    "memtable_flush_period_in_ms": 3600000,
                    "min_index_interval": 128,
                    "read_repair_chance": 0.0,
                    "speculative_retry": "99PERCENTILE",
                }
            )
    return rows


def _columns(catalog: Catalog, node: NodeInfo) -> list[dict[str, Any]]:
    rows = []
    kind_names = {
        ColumnKind.PARTITION_KEY: "partition_key",
        ColumnKind.CLUSTERING: "clustering",
        ColumnKind.REGULAR: "regular",
        ColumnKind.STATIC: "static",
    }
    for ks in catalog.keyspaces.values():
        for name, schema in ks.tables.items():
            for col in schema.columns.values():
                keyed = col.kind in (ColumnKind.PARTITION_KEY, ColumnKind.CLUSTERING)
                order = "none"
                if col.kind is ColumnKind.CLUSTERING:
                    order = "desc" if col.descending else "asc"
                rows.append(
                    {
                        "keyspace_name": ks.name,
                        "table_name": name,
                        "column_name": col.name,
                        "clustering_order": order,
                        "column_name_bytes": col.name.encode(),
                        "kind": kind_names[col.kind],
                        "position": col.position if keyed else -1,
                        "type": types.to_cql(col.cql_type),
                    }
                )
    return rows


def _types(catalog: Catalog, node: NodeInfo) -> list[dict[str, Any]]:
    return [
        {
            "keyspace_name": ks.name,
            "type_name": udt.name,
            "field_names": udt.field_names,
            "field_types": [types.to_cql(t) for t in udt.field_types],
        }
        for ks in catalog.keyspaces.values()
        for udt in ks.types.values()
    ]


def _nothing(catalog: Catalog, node: NodeInfo) -> list[dict[str, Any]]:
    return []


def mcs_custom_properties(schema: TableSchema) -> dict[str, dict[str, str]]:
    """`system_schema_mcs.tables.custom_properties` for a table, as Keyspaces shows it."""
    props: dict[str, dict[str, str]] = {}
    opts = schema.options
    if opts.cdc_enabled:
        spec = {"status": "ENABLED", "view_type": opts.view_type.value}
        if opts.latest_stream_arn:
            spec["latest_stream_arn"] = opts.latest_stream_arn
        props["cdc_specification"] = spec
    if opts.client_side_timestamps:
        props["client_side_timestamps"] = {"status": "enabled"}
    if opts.ttl_enabled:
        props["ttl"] = {"status": "enabled"}
    return props


def _mcs_tables(catalog: Catalog, node: NodeInfo) -> list[dict[str, Any]]:
    return [
        {
            "keyspace_name": ks.name,
            "table_name": name,
            "status": "ACTIVE",
            "cdc": schema.options.cdc_enabled,
            "custom_properties": mcs_custom_properties(schema),
            "default_time_to_live": schema.options.default_time_to_live,
        }
        for ks in catalog.keyspaces.values()
        for name, schema in ks.tables.items()
    ]


def _mcs_keyspaces(catalog: Catalog, node: NodeInfo) -> list[dict[str, Any]]:
    return [
        {
            "keyspace_name": ks.name,
            "durable_writes": ks.durable_writes,
            "replication": ks.replication,
        }
        for ks in catalog.keyspaces.values()
    ]


_ROW_BUILDERS = {
    ("system", "local"): _local,
    ("system", "peers"): _peers,
    ("system_schema", "keyspaces"): _keyspaces,
    ("system_schema", "tables"): _tables,
    ("system_schema", "columns"): _columns,
    ("system_schema", "types"): _types,
    ("system_schema", "functions"): _nothing,
    ("system_schema", "aggregates"): _nothing,
    ("system_schema", "triggers"): _nothing,
    ("system_schema", "indexes"): _nothing,
    ("system_schema", "views"): _nothing,
    ("system_schema", "dropped_columns"): _nothing,
    ("system_schema_mcs", "tables"): _mcs_tables,
    ("system_schema_mcs", "keyspaces"): _mcs_keyspaces,
}


def serialise(value: Any, cql_type: Any) -> bytes | None:
    if value is None:
        return None
    if issubclass(cql_type, cqltypes.FrozenType):
        cql_type = cql_type.subtypes[0]
    if issubclass(cql_type, cqltypes.SetType):
        value = set(value)
    return bytes(cql_type.to_binary(value, 4))
