"""What ks2os reads about a source table over CQL: its layout, its Keyspaces options, the clock.

The key layout comes from the driver's schema metadata; the Keyspaces-only
options (client-side timestamps, TTL, CDC and its stream) from
`system_schema_mcs.tables`; the account's partitioner, which decides the
token ring a scan splits, from `system.local`. `service_now_ms` reads the
service's own clock, which snapshot versions are based on (never the host
clock: it may be off).

This is also the boundary with cassandra-driver's exceptions: `cql_errors`
converts them (unreachable, timing out, overloaded -> `TransientError`;
credentials refused -> `ConfigError`; anything else -> `TerminalError`), and
every CQL request of ks2os runs inside it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from cassandra import (
    AuthenticationFailed,
    CoordinationFailure,
    DriverException,
    OperationTimedOut,
    Timeout,
    Unauthorized,
    Unavailable,
)
from cassandra.cluster import NoHostAvailable, Session
from cassandra.connection import ConnectionException
from cassandra.protocol import IsBootstrappingErrorMessage, OverloadedErrorMessage, ServerError

from sync.errors import ConfigError, Ks2osError, TerminalError, TransientError
from sync.schema import TableLayout

log = logging.getLogger(__name__)

VIEW_TYPES = ("NEW_AND_OLD_IMAGES", "NEW_IMAGE", "OLD_IMAGE", "KEYS_ONLY")

# The partitioners Keyspaces offers (account-wide, per Region), as system.local names them.
MURMUR3_PARTITIONER = "org.apache.cassandra.dht.Murmur3Partitioner"
RANDOM_PARTITIONER = "org.apache.cassandra.dht.RandomPartitioner"
KEYSPACES_DEFAULT_PARTITIONER = "com.amazonaws.cassandra.DefaultPartitioner"


@dataclass(frozen=True)
class TableInfo:
    """A source table's layout and Keyspaces options, as read at start."""

    layout: TableLayout
    regular: tuple[str, ...]  # regular (non-key, non-static) columns in schema order
    client_side_timestamps: bool
    ttl_enabled: bool
    cdc_enabled: bool
    view_type: str | None  # NEW_AND_OLD_IMAGES | NEW_IMAGE | OLD_IMAGE | KEYS_ONLY
    latest_stream_arn: str | None
    partitioner: str = MURMUR3_PARTITIONER  # the account's, as system.local names it

    @property
    def keyspace(self) -> str:
        return self.layout.keyspace

    @property
    def name(self) -> str:
        return self.layout.table

    @property
    def qualified_name(self) -> str:
        return self.layout.qualified_name

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column: key columns, then static, then regular."""
        return self.layout.key_columns + self.layout.static + self.regular

    def require_stream(self) -> str:
        """The table's latest stream ARN, or a ConfigError saying how to enable CDC."""
        if not self.cdc_enabled or not self.latest_stream_arn:
            raise ConfigError(no_cdc_message(self.keyspace, self.name))
        return self.latest_stream_arn

    def version_rule(self) -> str:
        """One line saying which version rule ks2os applies to this table."""
        mode = "on" if self.client_side_timestamps else "off"
        return (
            f"table {self.qualified_name}: client-side timestamps {mode}: versions come from "
            "stream order (createdAt + shard lineage) and the service clock at read; "
            "WRITETIME() is not used"
        )


def quote(identifier: str) -> str:
    """A CQL identifier, always double-quoted (case and reserved words survive)."""
    return '"' + identifier.replace('"', '""') + '"'


def qualified(keyspace: str, table: str) -> str:
    return f"{quote(keyspace)}.{quote(table)}"


def no_cdc_message(keyspace: str, table: str) -> str:
    return (
        f"table {keyspace}.{table} has no CDC stream: enable it with ALTER TABLE "
        f"{qualified(keyspace, table)} WITH cdc = true AND CUSTOM_PROPERTIES = "
        "{'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
    )


# Driver errors that may pass by themselves: nothing answered, or not in time, or overloaded.
_PASSING = (
    OperationTimedOut,
    Timeout,
    Unavailable,
    CoordinationFailure,
    ConnectionException,
    OverloadedErrorMessage,
    IsBootstrappingErrorMessage,
    ServerError,
)


def cql_error(exc: Exception, doing: str, endpoint: str = "") -> Ks2osError:
    """The ks2os error for a cassandra-driver exception raised while `doing` something."""
    if isinstance(exc, NoHostAvailable):
        reasons = list(exc.errors.values())
        if reasons and all(isinstance(r, AuthenticationFailed) for r in reasons):
            return _credentials_refused(reasons[0])
        reason = reasons[0] if reasons else exc
        at = f" at {endpoint}" if endpoint else ""
        return TransientError(
            f"cannot reach Keyspaces{at} ({doing}): {reason}",
            hint="check keyspaces.contact_points, keyspaces.port and keyspaces.tls",
        )
    if isinstance(exc, AuthenticationFailed):
        return _credentials_refused(exc)
    if isinstance(exc, _PASSING):
        return TransientError(
            f"{doing}: Keyspaces did not answer in time: {exc}",
            hint="try again; if it persists, raise keyspaces.request_timeout_s",
        )
    if isinstance(exc, Unauthorized):
        return TerminalError(
            f"{doing}: Keyspaces refused it: {exc}",
            hint="grant ks2os's user SELECT on the table and on system_schema_mcs",
        )
    return TerminalError(f"{doing}: Keyspaces refused it: {exc}")


def _credentials_refused(reason: Exception) -> ConfigError:
    return ConfigError(
        f"Keyspaces refused the credentials: {reason}",
        hint="check keyspaces.auth and keyspaces.username, and KS2OS_KEYSPACES_PASSWORD "
        "or the AWS credentials",
    )


@contextmanager
def cql_errors(doing: str, endpoint: str = "") -> Iterator[None]:
    """Convert any cassandra-driver exception raised inside into a ks2os error."""
    try:
        yield
    except (DriverException, NoHostAvailable, ConnectionException) as exc:
        raise cql_error(exc, doing, endpoint) from exc


def describe_table(session: Session, keyspace: str, table: str) -> TableInfo:
    """Read the table's layout and options; ConfigError when the table does not exist."""
    with cql_errors(f"reading the schema of {keyspace}.{table}"):
        key, regular = _layout(session, keyspace, table)
        options = _mcs_options(session, keyspace, table)
    props = options.get("custom_properties") or {}
    cdc_spec = props.get("cdc_specification") or {}
    info = TableInfo(
        layout=key,
        regular=regular,
        client_side_timestamps=_enabled(props.get("client_side_timestamps")),
        ttl_enabled=_enabled(props.get("ttl")) or int(options.get("default_time_to_live") or 0) > 0,
        cdc_enabled=bool(options.get("cdc")) and _enabled(cdc_spec, default=True),
        view_type=cdc_spec.get("view_type") if cdc_spec else None,
        latest_stream_arn=cdc_spec.get("latest_stream_arn") if cdc_spec else None,
        partitioner=read_partitioner(session),
    )
    return info


def read_partitioner(session: Session) -> str:
    """The account's partitioner, as `system.local` names it (clients see a change on connect)."""
    row = session.execute("SELECT partitioner FROM system.local").one()
    return str(_field(row, "partitioner"))


def _enabled(prop: Mapping[str, str] | None, *, default: bool = False) -> bool:
    if not prop:
        return default
    return str(prop.get("status", "")).lower() in ("enabled", "true")


def _layout(session: Session, keyspace: str, table: str) -> tuple[TableLayout, tuple[str, ...]]:
    cluster = session.cluster
    cluster.refresh_table_metadata(keyspace, table)
    meta = cluster.metadata.keyspaces.get(keyspace)
    table_meta = None if meta is None else meta.tables.get(table)
    if table_meta is None:
        raise ConfigError(f"table {keyspace}.{table} does not exist")
    partition = tuple(c.name for c in table_meta.partition_key)
    clustering = tuple(c.name for c in table_meta.clustering_key)
    static = tuple(c.name for c in table_meta.columns.values() if c.is_static)
    keys = set(partition) | set(clustering) | set(static)
    regular = tuple(name for name in table_meta.columns if name not in keys)
    types = {name: c.cql_type for name, c in table_meta.columns.items()}
    descending = frozenset(c.name for c in table_meta.clustering_key if c.is_reversed)
    key = TableLayout(keyspace, table, partition, clustering, static, types, descending)
    return key, regular


def _mcs_options(session: Session, keyspace: str, table: str) -> dict[str, Any]:
    # Filtered here rather than in CQL: restricting table_name alone is
    # portable across servers whatever their key layout of this system table.
    rows = session.execute(
        "SELECT table_name, cdc, custom_properties, default_time_to_live "
        "FROM system_schema_mcs.tables WHERE keyspace_name = %s",
        (keyspace,),
    )
    row = next((r for r in rows if _field(r, "table_name") == table), None)
    if row is None:
        raise ConfigError(f"table {keyspace}.{table} does not exist")
    return {
        "cdc": _field(row, "cdc"),
        "custom_properties": _field(row, "custom_properties"),
        "default_time_to_live": _field(row, "default_time_to_live"),
    }


def _field(row: Any, name: str) -> Any:
    # The session's row factory may give named tuples or dicts.
    return row[name] if isinstance(row, Mapping) else getattr(row, name)


def service_now_ms(session: Session) -> int:
    """The service clock in epoch ms, read over CQL (not this host's clock)."""
    with cql_errors("reading the service clock"):
        row = session.execute("SELECT toUnixTimestamp(now()) FROM system.local").one()
    value = next(iter(row.values())) if isinstance(row, Mapping) else row[0]
    return int(value)
