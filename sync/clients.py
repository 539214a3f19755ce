"""Clients for the three services, built from the configuration and nothing else.

Secure by default: TLS with certificate and host-name verification, AWS
credentials from the standard chain (environment, profile, instance role),
SigV4 for Keyspaces (CQL and Streams) and for Amazon OpenSearch Service.
Credentials are never logged. The same code talks to AWS and to the local
emulator; only the configuration differs.
"""

from __future__ import annotations

import ssl
from typing import Any

import boto3
import botocore.config
from cassandra import ConsistencyLevel
from cassandra.auth import AuthProvider, PlainTextAuthProvider
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from cassandra.policies import RoundRobinPolicy
from opensearchpy import AWSV4SignerAuth, OpenSearch, RequestsHttpConnection

from sync.config import Config, KeyspacesConfig, OpenSearchConfig
from sync.errors import ConfigError, Ks2osError
from sync.keyspaces import cql_errors

# Keyspaces accepts only these for reads; every write must be LOCAL_QUORUM.
READ_CONSISTENCY = {
    "LOCAL_QUORUM": ConsistencyLevel.LOCAL_QUORUM,
    "LOCAL_ONE": ConsistencyLevel.LOCAL_ONE,
    "ONE": ConsistencyLevel.ONE,
}


# Enough HTTP connections for every backfill worker and follower shard thread.
POOL_SIZE = 32


def _aws_session(region: str) -> boto3.session.Session:
    return boto3.session.Session(region_name=region)


def _cql_auth(cfg: KeyspacesConfig) -> AuthProvider | None:
    if cfg.auth == "none":
        return None
    if cfg.auth == "password":
        if not cfg.username or cfg.password is None:
            raise ConfigError(
                "keyspaces.auth = password needs keyspaces.username and a password",
                hint="set KS2OS_KEYSPACES_USERNAME and KS2OS_KEYSPACES_PASSWORD",
            )
        return PlainTextAuthProvider(username=cfg.username, password=cfg.password)
    # AWS's own SigV4 plugin for the Cassandra driver: signs with the standard credential chain.
    from cassandra_sigv4.auth import SigV4AuthProvider

    provider: AuthProvider = SigV4AuthProvider(_aws_session(cfg.region))
    return provider


def _ssl_context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def cql_cluster(cfg: Config) -> Cluster:
    """A driver Cluster for the table's Keyspaces endpoint (not yet connected)."""
    ks = cfg.keyspaces
    profile = ExecutionProfile(
        load_balancing_policy=RoundRobinPolicy(),
        consistency_level=READ_CONSISTENCY[ks.read_consistency],
        request_timeout=ks.request_timeout_s,
    )
    return Cluster(
        ks.hosts(),
        port=ks.port,
        auth_provider=_cql_auth(ks),
        ssl_context=_ssl_context(ks.verify_tls, ks.ca_file) if ks.tls else None,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        protocol_version=4,
        connect_timeout=ks.request_timeout_s,
        # The driver's 2 s default for schema and topology queries is short for a busy or
        # distant endpoint; one request timeout applies to every CQL request alike.
        control_connection_timeout=ks.request_timeout_s,
    )


def cql_session(cfg: Config) -> Session:
    """A connected CQL session, or a one-line error: unreachable, or credentials refused."""
    cluster = cql_cluster(cfg)
    where = ", ".join(f"{h}:{cfg.keyspaces.port}" for h in cfg.keyspaces.hosts())
    try:
        with cql_errors("connecting", where):
            return cluster.connect()
    except Ks2osError:
        cluster.shutdown()
        raise


def streams_client(cfg: Config) -> Any:
    """The boto3 `keyspacesstreams` client (SigV4, signing name `cassandra`)."""
    ks = cfg.keyspaces
    retries = botocore.config.Config(
        # ks2os retries throttling itself, per shard, through one backoff policy.
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=ks.request_timeout_s,
        read_timeout=ks.request_timeout_s,
    )
    return _aws_session(ks.region).client(
        "keyspacesstreams",
        endpoint_url=ks.streams_endpoint,
        config=retries,
        verify=ks.ca_file if ks.ca_file else ks.verify_tls,
    )


def opensearch_client(cfg: Config) -> OpenSearch:
    os_cfg: OpenSearchConfig = cfg.opensearch
    options: dict[str, Any] = {
        "hosts": os_cfg.hosts,
        "timeout": os_cfg.timeout_s,
        "verify_certs": os_cfg.verify_certs,
        "ssl_show_warn": os_cfg.verify_certs,
        "http_compress": False,
        # The writer retries through one backoff policy; transport retries would stack on it.
        "max_retries": 0,
        # One pooled connection per worker thread, so parallel bulk requests do not queue.
        "pool_maxsize": POOL_SIZE,
    }
    if os_cfg.ca_file:
        options["ca_certs"] = os_cfg.ca_file
    if os_cfg.auth == "basic":
        if not os_cfg.username or os_cfg.password is None:
            raise ConfigError(
                "opensearch.auth = basic needs opensearch.username and a password",
                hint="set KS2OS_OPENSEARCH_USERNAME and KS2OS_OPENSEARCH_PASSWORD",
            )
        options["http_auth"] = (os_cfg.username, os_cfg.password)
    elif os_cfg.auth == "sigv4":
        region = os_cfg.region or cfg.keyspaces.region
        credentials = _aws_session(region).get_credentials()
        if credentials is None:
            raise ConfigError(
                "opensearch.auth = sigv4 but no AWS credentials were found",
                hint="configure the standard AWS credential chain (env, profile or role)",
            )
        options["http_auth"] = AWSV4SignerAuth(credentials, region, os_cfg.service)
        options["connection_class"] = RequestsHttpConnection
    return OpenSearch(**options)
