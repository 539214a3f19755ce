"""Fixtures shared by every test: each local server starts once per session,
and every test gets a clean index (an osmem clone) and a fresh keyspace.

- `osmem_server` (one per session) and `osmem_clone` (one per test, from osmem's plugin).
- `opensearch`: a real opensearch-py client on a fresh clone.
- `emulator`: one in-process keyspaces_local (CQL + Streams) for the session, or
  one of the module's own when the module sets `OWN_EMULATOR`.
- `cql`: a cassandra-driver session to it; `streams`: a boto3 keyspacesstreams client.
- `keyspace`: a new keyspace name, created for the test.
- `make_config`: a ks2os `Config` pointing at the emulator and the clone.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings
from opensearchpy import OpenSearch

from sync.config import Config, load_config

# Soak tests run briefly under `make test` and at full length under `make soak`.
SOAK_FULL = os.environ.get("KS2OS_TEST_SOAK") == "full"

# Hypothesis times each example against a 200 ms deadline by default; on a loaded 2-core
# machine a correct example can take longer, so the deadline would fail a test for speed,
# which no test here asserts. Examples stay bounded by each test's own max_examples.
hypothesis_settings.register_profile("ks2os", deadline=None)
hypothesis_settings.load_profile("ks2os")


@pytest.fixture(scope="session", autouse=True)
def aws_test_credentials() -> Iterator[None]:
    """Dummy AWS credentials: boto3 signs every request, the emulator checks none."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("AWS_ACCESS_KEY_ID", "test")
        patch.setenv("AWS_SECRET_ACCESS_KEY", "test")
        patch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        yield


@pytest.fixture(scope="session")
def osmem_server() -> Iterator[Any]:
    """One osmem-server for the session (overrides the plugin's to close its pipes)."""
    from osmem_server import OsmemServer

    server = OsmemServer.start(japanese=False)
    try:
        yield server
    finally:
        server.close()
        for pipe in (server.process.stdin, server.process.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def opensearch(osmem_clone: Any) -> OpenSearch:
    return OpenSearch(hosts=[osmem_clone.url], timeout=30)


def _owned_emulator_options(request: pytest.FixtureRequest) -> dict[str, Any] | None:
    """A module that moves the emulator's clock or sets its faults asks for its own.

    It says so with `OWN_EMULATOR = {<Emulator.start options>}` and a comment saying why;
    every other module shares the session's emulator.
    """
    options = getattr(request.module, "OWN_EMULATOR", None)
    return None if options is None else {**EMULATOR_DEFAULTS, **options}


EMULATOR_DEFAULTS: dict[str, Any] = {"shard_count": 4, "ttl_record_delay_s": 2.0}


@contextmanager
def _running_emulator(options: dict[str, Any]) -> Iterator[Any]:
    from keyspaces_local.server import Emulator

    emu = Emulator.start(**options)
    try:
        yield emu
    finally:
        emu.stop()


@contextmanager
def _connected_cluster(port: int) -> Iterator[Any]:
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    # Keyspaces takes writes at LOCAL_QUORUM only.
    profile = ExecutionProfile(
        consistency_level=ConsistencyLevel.LOCAL_QUORUM, load_balancing_policy=RoundRobinPolicy()
    )
    cluster = Cluster(
        ["127.0.0.1"],
        port=port,
        protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        # Generous: the emulator runs in this process, and a loaded machine slows both.
        connect_timeout=30,
        control_connection_timeout=30,
    )
    try:
        yield cluster
    finally:
        cluster.shutdown()


@pytest.fixture(scope="session")
def shared_emulator() -> Iterator[Any]:
    with _running_emulator(EMULATOR_DEFAULTS) as emu:
        yield emu


@pytest.fixture(scope="session")
def shared_cql_cluster(shared_emulator: Any) -> Iterator[Any]:
    with _connected_cluster(shared_emulator.cql_port) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def emulator(request: pytest.FixtureRequest) -> Iterator[Any]:
    options = _owned_emulator_options(request)
    if options is None:
        yield request.getfixturevalue("shared_emulator")
        return
    with _running_emulator(options) as emu:
        yield emu


@pytest.fixture(scope="module")
def cql_cluster(request: pytest.FixtureRequest, emulator: Any) -> Iterator[Any]:
    if _owned_emulator_options(request) is None:
        yield request.getfixturevalue("shared_cql_cluster")
        return
    with _connected_cluster(emulator.cql_port) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def cql(cql_cluster: Any) -> Any:
    return cql_cluster.connect()


@pytest.fixture
def streams(emulator: Any) -> Any:
    import boto3

    return boto3.client(
        "keyspacesstreams",
        endpoint_url=emulator.streams_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


@pytest.fixture(params=[False, True], ids=["timestamps-off", "timestamps-on"])
def client_timestamps(request: pytest.FixtureRequest) -> bool:
    """Keyspaces' two timestamp modes; the end-to-end scenarios run in both.

    Off is the default, and permanent for most real tables: no WRITETIME(), no
    USING TIMESTAMP. On: every cell carries a client write time.
    """
    return bool(request.param)


def table_options(*, view_type: str | None, client_timestamps: bool) -> str:
    """The WITH clause of a CREATE TABLE: CDC with `view_type` (None: off) and the mode."""
    properties = []
    if view_type is not None:
        properties.append(f"'cdc_specification': {{'view_type': '{view_type}'}}")
    if client_timestamps:
        properties.append("'client_side_timestamps': {'status': 'enabled'}")
    if not properties:
        return ""
    cdc = "cdc = true AND " if view_type is not None else ""
    return f" WITH {cdc}CUSTOM_PROPERTIES = {{{', '.join(properties)}}}"


_keyspace_numbers = itertools.count(1)


@pytest.fixture
def keyspace(cql: Any) -> Iterator[str]:
    name = f"ks_{os.getpid()}_{next(_keyspace_numbers)}"
    cql.execute(
        f"CREATE KEYSPACE \"{name}\" WITH replication = {{'class': 'SingleRegionStrategy'}}"
    )
    try:
        yield name
    finally:
        cql.execute(f'DROP KEYSPACE IF EXISTS "{name}"')


@pytest.fixture
def make_config(emulator: Any, osmem_clone: Any, tmp_path: Any) -> Callable[..., Config]:
    """A Config for the local stack, written to a TOML file and loaded the way the CLI does."""

    def build(mapping: str | None = None, **sections: dict[str, Any]) -> Config:
        lines = [f'mapping = "{mapping}"'] if mapping else []
        base: dict[str, dict[str, Any]] = {
            "keyspaces": {
                "contact_points": ["127.0.0.1"],
                "port": emulator.cql_port,
                "auth": "none",
                "tls": False,
                "streams_endpoint": emulator.streams_url,
            },
            "opensearch": {"hosts": [osmem_clone.url], "auth": "none"},
            "state": {"lease_seconds": 5},
        }
        for section, values in sections.items():
            base.setdefault(section, {}).update(values)
        for section, values in base.items():
            lines.append(f"[{section}]")
            lines.extend(f"{key} = {_toml(value)}" for key, value in values.items())
        path = tmp_path / "ks2os.toml"
        path.write_text("\n".join(lines) + "\n")
        return load_config(path, env={})

    return build


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


# The partitioners a Keyspaces account may have (system.local.partitioner).
PARTITIONERS = {
    "murmur3": "org.apache.cassandra.dht.Murmur3Partitioner",
    "random": "org.apache.cassandra.dht.RandomPartitioner",
    "default": "com.amazonaws.cassandra.DefaultPartitioner",
}


@pytest.fixture(params=list(PARTITIONERS.values()), ids=list(PARTITIONERS))
def partitioner(request: pytest.FixtureRequest, cql: Any) -> Iterator[str]:
    """The account's partitioner for one test, set as on Keyspaces; Murmur3 again after.

    `UPDATE system.local` applies to the whole emulator at once (see keyspaces_local's
    README), so clients the test connects see it; the shared emulator gets its default back.
    """
    name = str(request.param)
    cql.execute("UPDATE system.local SET partitioner = %s WHERE key = 'local'", (name,))
    try:
        yield name
    finally:
        cql.execute(
            "UPDATE system.local SET partitioner = %s WHERE key = 'local'",
            (PARTITIONERS["murmur3"],),
        )
