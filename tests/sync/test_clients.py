"""Clients built from the configuration reach the real servers they name, and the
cassandra-driver's exceptions are converted at their boundary (sync/keyspaces.py)."""

from __future__ import annotations

from typing import Any

import pytest
from cassandra import AuthenticationFailed, OperationTimedOut, ReadTimeout, Unauthorized
from cassandra.cluster import NoHostAvailable

from sync.clients import cql_session, opensearch_client
from sync.config import Config, OpenSearchConfig, load_config
from sync.errors import ConfigError, TerminalError, TransientError
from sync.keyspaces import cql_error


def test_opensearch_client_from_config_writes_and_reads(osmem_clone: Any, tmp_path: Any) -> None:
    path = tmp_path / "ks2os.toml"
    path.write_text(f"[opensearch]\nhosts = ['{osmem_clone.url}']\nauth = 'none'\n")
    client = opensearch_client(load_config(path, env={}))
    client.index(index="products", id="p1", body={"name": "lamp", "price": 12}, refresh=True)
    client.index(index="products", id="p2", body={"name": "desk", "price": 90}, refresh=True)
    assert client.get(index="products", id="p1")["_source"] == {"name": "lamp", "price": 12}
    hits = client.search(index="products", body={"query": {"range": {"price": {"gt": 50}}}})
    assert [h["_id"] for h in hits["hits"]["hits"]] == ["p2"]


@pytest.mark.unit
def test_basic_auth_without_password_is_a_config_error() -> None:
    # load_config refuses this already (tests/sync/test_config.py); the client checks again
    # for a Config built in code.
    cfg = Config(opensearch=OpenSearchConfig(auth="basic", username="u"))
    with pytest.raises(ConfigError, match=r"needs opensearch\.username and a password"):
        opensearch_client(cfg)


def test_unreachable_keyspaces_is_one_clear_error() -> None:
    cfg = load_config(
        None,
        env={
            "KS2OS_KEYSPACES_CONTACT_POINTS": "127.0.0.1",
            "KS2OS_KEYSPACES_PORT": "1",  # nothing listens on port 1
            "KS2OS_KEYSPACES_AUTH": "none",
            "KS2OS_KEYSPACES_TLS": "false",
            "KS2OS_KEYSPACES_REQUEST_TIMEOUT_S": "2",
        },
    )
    with pytest.raises(TransientError, match=r"cannot reach Keyspaces at 127\.0\.0\.1:1"):
        cql_session(cfg)


@pytest.mark.unit
def test_driver_exceptions_become_errors_of_the_tree() -> None:
    refused = AuthenticationFailed("Provided username u and/or password are incorrect")
    wrong = cql_error(NoHostAvailable("Unable to connect", {"h:9142": refused}), "connecting")
    assert isinstance(wrong, ConfigError)
    assert str(wrong).startswith("Keyspaces refused the credentials")
    down = cql_error(
        NoHostAvailable("Unable", {"h:9142": OSError("refused")}), "connecting", "h:9142"
    )
    assert isinstance(down, TransientError) and "cannot reach Keyspaces at h:9142" in str(down)
    slow = cql_error(ReadTimeout("timed out"), "scanning ks.t")
    assert isinstance(slow, TransientError) and str(slow).startswith("scanning ks.t:")
    assert isinstance(cql_error(OperationTimedOut("no answer"), "scanning ks.t"), TransientError)
    denied = cql_error(Unauthorized("no SELECT"), "scanning ks.t")
    assert isinstance(denied, TerminalError) and "grant" in denied.hint
