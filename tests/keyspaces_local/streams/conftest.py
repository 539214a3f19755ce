"""Fixtures for the Streams tests: a store behind the real HTTP API, a real boto3 client,
and helpers that build tables and row changes the way the CQL engine hands them over."""

from __future__ import annotations

import base64
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import boto3
import orjson
import pytest
from botocore.config import Config
from cassandra import cqltypes
from cassandra.murmur3 import murmur3

from keyspaces_local.cdc import Cell, RowChange, RowImage
from keyspaces_local.clock import Clock
from keyspaces_local.control import Control
from keyspaces_local.schema import Column, ColumnKind, TableOptions, TableSchema, ViewType
from keyspaces_local.streams import Faults, StreamsApi, StreamStore


def make_table(
    name: str = "events",
    view_type: ViewType = ViewType.NEW_AND_OLD_IMAGES,
    *,
    keyspace: str = "shop",
    client_side_timestamps: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> TableSchema:
    """pk text, ck int, v text, n bigint, s text static (+ extra regular columns)."""
    columns = [
        Column("pk", cqltypes.UTF8Type, ColumnKind.PARTITION_KEY),
        Column("ck", cqltypes.Int32Type, ColumnKind.CLUSTERING),
        Column("v", cqltypes.UTF8Type, ColumnKind.REGULAR),
        Column("n", cqltypes.LongType, ColumnKind.REGULAR),
        Column("s", cqltypes.UTF8Type, ColumnKind.STATIC),
    ]
    columns += [Column(k, t, ColumnKind.REGULAR) for k, t in (extra or {}).items()]
    options = TableOptions(
        cdc_enabled=True, view_type=view_type, client_side_timestamps=client_side_timestamps
    )
    return TableSchema(keyspace, name, {c.name: c for c in columns}, options)


@dataclass
class Changes:
    """Builds `RowChange`s for a table from plain Python values."""

    table: TableSchema
    clock: Clock

    def cells(self, values: Mapping[str, Any], ttl_at: int | None = None) -> dict[str, Cell]:
        now = self.clock.now_us()
        return {
            name: Cell(self.table.columns[name].cql_type.to_binary(value, 4), now, ttl_at)
            for name, value in values.items()
        }

    def image(
        self,
        pk: str,
        ck: int | None,
        values: Mapping[str, Any] | None,
        statics: Mapping[str, Any] | None = None,
        ttl_at: int | None = None,
    ) -> RowImage | None:
        if values is None and statics is None:
            return None
        keys: dict[str, Any] = {"pk": pk} if ck is None else {"pk": pk, "ck": ck}
        cells = self.cells({**keys, **(values or {})}, None) if ck is not None else {}
        if ttl_at is not None and values:
            cells.update(self.cells(values, ttl_at))
        return RowImage(cells, self.cells(statics or {}), ttl_at)

    def change(
        self,
        pk: str,
        ck: int | None,
        old: Mapping[str, Any] | None,
        new: Mapping[str, Any] | None,
        *,
        old_statics: Mapping[str, Any] | None = None,
        new_statics: Mapping[str, Any] | None = None,
        origin: str = "USER",
        ttl_at: int | None = None,
    ) -> RowChange:
        pk_bytes = cqltypes.UTF8Type.to_binary(pk, 4)
        return RowChange(
            table=self.table,
            token=murmur3(pk_bytes),
            partition_key=(pk_bytes,),
            clustering_key=None if ck is None else (cqltypes.Int32Type.to_binary(ck, 4),),
            old_image=self.image(pk, ck, old, old_statics),
            new_image=self.image(pk, ck, new, new_statics, ttl_at),
            origin=origin,
            committed_at_us=self.clock.now_us(),
        )


@dataclass
class StreamsStack:
    clock: Clock
    store: StreamStore
    faults: Faults
    control: Control
    api: StreamsApi
    client: Any  # boto3 keyspacesstreams client

    def changes(self, table: TableSchema) -> Changes:
        return Changes(table, self.clock)

    def shards(self, arn: str) -> list[dict[str, Any]]:
        pages = self.client.get_paginator("get_stream").paginate(streamArn=arn)
        return pages.build_full_result()["shards"]

    def iterator(self, arn: str, shard_id: str, kind: str = "TRIM_HORIZON", seq: str = "") -> str:
        extra = {"sequenceNumber": seq} if seq else {}
        response = self.client.get_shard_iterator(
            streamArn=arn, shardId=shard_id, shardIteratorType=kind, **extra
        )
        return str(response["shardIterator"])

    def read_shard(self, arn: str, shard_id: str, kind: str = "TRIM_HORIZON") -> list[Any]:
        """Every record of a shard from `kind` on: to the end of a closed shard, or to the
        tip of an open one."""
        records: list[Any] = []
        iterator: str | None = self.iterator(arn, shard_id, kind)
        while iterator is not None:
            page = self.client.get_records(shardIterator=iterator, maxResults=1000)
            records += page["changeRecords"]
            iterator = page.get("nextShardIterator")
            if page["iteratorDescription"]["iteratorPosition"] == "AT_TIP":
                break  # caught up (an open shard) or drained (a closed one)
        return records


class ModelViolation(AssertionError):
    pass


def check_shape(shape: Any, value: Any, path: str = "$") -> None:
    """Strictly check raw response JSON against a botocore shape: unknown keys, missing
    required members, wrong types, enum values, length bounds and union arity all fail."""
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            raise ModelViolation(f"{path}: expected an object for {shape.name}")
        unknown = set(value) - set(shape.members) - {"__type"}
        if unknown:
            raise ModelViolation(f"{path}: members not in {shape.name}: {sorted(unknown)}")
        missing = [m for m in shape.required_members if value.get(m) is None]
        if missing:
            raise ModelViolation(f"{path}: {shape.name} misses required {missing}")
        if shape.is_tagged_union and len([v for v in value.values() if v is not None]) != 1:
            raise ModelViolation(f"{path}: union {shape.name} must have exactly one member")
        for name, member in value.items():
            if name != "__type" and member is not None:
                check_shape(shape.members[name], member, f"{path}.{name}")
    elif kind == "list":
        if not isinstance(value, list):
            raise ModelViolation(f"{path}: expected a list")
        for i, item in enumerate(value):
            check_shape(shape.member, item, f"{path}[{i}]")
    elif kind == "map":
        if not isinstance(value, dict):
            raise ModelViolation(f"{path}: expected a map")
        for key, item in value.items():
            check_shape(shape.key, key, f"{path}<key>")
            check_shape(shape.value, item, f"{path}.{key}")
    elif kind == "string":
        if not isinstance(value, str):
            raise ModelViolation(f"{path}: expected a string, got {value!r}")
        if shape.enum and value not in shape.enum:
            raise ModelViolation(f"{path}: {value!r} not in {shape.enum}")
        low, high = shape.metadata.get("min", 0), shape.metadata.get("max", 1 << 30)
        if not low <= len(value) <= high:
            raise ModelViolation(f"{path}: length {len(value)} outside [{low}, {high}]")
    elif kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ModelViolation(f"{path}: expected an integer")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise ModelViolation(f"{path}: expected a boolean")
    elif kind == "blob":
        if not isinstance(value, str):
            raise ModelViolation(f"{path}: expected base64 text")
        base64.b64decode(value, validate=True)
    elif kind == "timestamp":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ModelViolation(f"{path}: expected epoch seconds as a number")
    else:
        raise ModelViolation(f"{path}: unexpected shape type {kind}")


def _check_response(http_response: Any, model: Any, **_: Any) -> None:
    body = orjson.loads(http_response.content)
    if http_response.status_code < 300:
        check_shape(model.output_shape, body)
        return
    code = body["__type"].rsplit("#", 1)[-1]
    check_shape(model.service_model.shape_for(code), body)


def boto_client(url: str) -> Any:
    """The real boto3 client; every response it receives is checked against the model."""
    client = boto3.client(
        "keyspacesstreams",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        # One attempt: the tests assert the error the server gave, not botocore's retries.
        config=Config(retries={"total_max_attempts": 1}),
    )
    client.meta.events.register("after-call.keyspacesstreams", _check_response)
    return client


@pytest.fixture(name="make_table")
def make_table_fixture() -> Any:
    return make_table


@pytest.fixture
def make_changes() -> Any:
    """make_changes(table, clock) -> Changes."""
    return Changes


@pytest.fixture
def make_stack() -> Iterator[Any]:
    """Start a store behind the HTTP API with the given StreamStore options."""
    started: list[StreamsApi] = []

    def build(**store_options: Any) -> StreamsStack:
        clock = Clock()
        faults = Faults()
        store = StreamStore(clock, faults=faults, **{"shard_count": 4, **store_options})
        control = Control(store, clock, faults)
        api = StreamsApi(store, control).start()
        started.append(api)
        return StreamsStack(clock, store, faults, control, api, boto_client(api.url))

    try:
        yield build
    finally:
        for api in started:
            api.stop()


@pytest.fixture
def stack(make_stack: Any) -> StreamsStack:
    return make_stack()


# --- the whole emulator, for the end-to-end tests -----------------------------------------


@pytest.fixture(scope="module")
def e2e_emulator() -> Iterator[Any]:
    from keyspaces_local.server import Emulator

    with Emulator.start(shard_count=4, ttl_record_delay_s=2.0) as emulator:
        yield emulator


@pytest.fixture(scope="module")
def e2e_cql(e2e_emulator: Any) -> Iterator[Any]:
    """A cassandra-driver session; Keyspaces takes writes at LOCAL_QUORUM only."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile

    profile = ExecutionProfile(consistency_level=ConsistencyLevel.LOCAL_QUORUM)
    cluster = Cluster(
        ["127.0.0.1"],
        port=e2e_emulator.cql_port,
        protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        yield cluster.connect()
    finally:
        cluster.shutdown()


@pytest.fixture(scope="module")
def e2e_streams(e2e_emulator: Any) -> Any:
    """A boto3 client with its default retries, as an application would use it."""
    client = boto3.client(
        "keyspacesstreams",
        endpoint_url=e2e_emulator.streams_url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
    )
    client.meta.events.register("after-call.keyspacesstreams", _check_response)
    return client


_keyspaces = iter(range(1, 1_000_000))


@pytest.fixture
def e2e_keyspace(e2e_cql: Any) -> Iterator[str]:
    name = f"streams_e2e_{next(_keyspaces)}"
    e2e_cql.execute(
        f"CREATE KEYSPACE \"{name}\" WITH replication = {{'class': 'SingleRegionStrategy'}}"
    )
    try:
        yield name
    finally:
        e2e_cql.execute(f'DROP KEYSPACE IF EXISTS "{name}"')


@pytest.fixture
def check_output() -> Any:
    """check_output(operation, raw_json): the strict model check every response gets."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("keyspacesstreams")

    def check(operation: str, body: Any) -> None:
        check_shape(model.operation_model(operation).output_shape, body)

    return check
