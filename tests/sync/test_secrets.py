"""No credential ever shows: real commands, run through the CLI at DEBUG, and everything they
produced scanned for every secret.

Each credential kind is configured the way a user would: the Keyspaces password
(`keyspaces.auth = "password"`, which this module's emulator enforces), OpenSearch
basic auth, and AWS keys in the environment (the Streams API is signed with them, and
one backfill signs its OpenSearch requests with SigV4). The commands: `config check`,
`backfill`, `follow` while a row changes, and failing ones (a wrong Keyspaces password,
a mapping the table defeats, a password beside `auth = "sigv4"`). Scanned: their
stdout and stderr, `/metrics` and `/healthz` while the follower ran, and every document
and mapping of every index in OpenSearch afterwards (the state index among them).
"""

from __future__ import annotations

import base64
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opensearchpy import OpenSearch

# A module of its own because its emulator asks for a CQL password.
KS_USER, KS_PASSWORD = "ks2os-reader", "ksPw7f3Q9xLmZ2vB"
OWN_EMULATOR = {"credentials": {KS_USER: KS_PASSWORD}}

WRONG_KS_PASSWORD = "ksWrong8Hq2Rt5Yu"
OS_USER, OS_PASSWORD = "ks2os-writer", "osPw4K8vR1tNc6Jm"
AWS_KEY_ID, AWS_SECRET = "AKIAKS2OSTEST00001", "awsSecret5Jd9Wq2Hz7Lp3Xb8Nc1Vf"


def _forms(user: str | None, secret: str) -> list[str]:
    """The secret as it could leak: plain, base64 alone, base64 in a Basic header."""
    forms = [secret, base64.b64encode(secret.encode()).decode()]
    if user is not None:
        forms.append(base64.b64encode(f"{user}:{secret}".encode()).decode())
    return forms


SECRETS = {
    "Keyspaces password": _forms(KS_USER, KS_PASSWORD),
    "wrong Keyspaces password": _forms(KS_USER, WRONG_KS_PASSWORD),
    "OpenSearch basic-auth password": _forms(OS_USER, OS_PASSWORD),
    "AWS secret access key": _forms(None, AWS_SECRET),
}


@pytest.fixture(scope="module")
def cql_cluster(emulator: Any) -> Iterator[Any]:
    """The suite's CQL fixtures, but logged in: this emulator refuses anonymous sessions."""
    from cassandra import ConsistencyLevel
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import RoundRobinPolicy

    profile = ExecutionProfile(
        consistency_level=ConsistencyLevel.LOCAL_QUORUM, load_balancing_policy=RoundRobinPolicy()
    )
    cluster = Cluster(
        ["127.0.0.1"],
        port=emulator.cql_port,
        protocol_version=4,
        auth_provider=PlainTextAuthProvider(KS_USER, KS_PASSWORD),
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    try:
        yield cluster
    finally:
        cluster.shutdown()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _write_config(
    path: Path, emulator: Any, opensearch_url: str, mapping: Path, metrics_port: int, **auth: str
) -> Path:
    keyspaces_auth = auth.get("keyspaces", "password")
    opensearch_auth = auth.get("opensearch", "basic")
    lines = [
        f'mapping = "{mapping.name}"',  # relative to the config file
        "[keyspaces]",
        'contact_points = ["127.0.0.1"]',
        f"port = {emulator.cql_port}",
        f'auth = "{keyspaces_auth}"',
        f'username = "{KS_USER}"' if keyspaces_auth == "password" else "",
        "tls = false",
        f'streams_endpoint = "{emulator.streams_url}"',
        "[opensearch]",
        f'hosts = ["{opensearch_url}"]',
        f'auth = "{opensearch_auth}"',
        f'username = "{OS_USER}"' if opensearch_auth == "basic" else "",
        "[follow]",
        f"metrics_port = {metrics_port}",
        "[state]",
        "lease_seconds = 5",
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _environment(**overrides: str) -> dict[str, str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "AWS_ACCESS_KEY_ID": AWS_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": AWS_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
        "KS2OS_KEYSPACES_PASSWORD": KS_PASSWORD,
        "KS2OS_OPENSEARCH_PASSWORD": OS_PASSWORD,
    }
    env.update(overrides)
    return {k: v for k, v in env.items() if v}


class _Run:
    """The commands of one scenario, and everything they produced."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.produced: dict[str, str] = {}

    def command(
        self, name: str, *args: str, env: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "sync", "--log-level", "DEBUG", *args],
            cwd=self.cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        self.produced[f"{name}: stdout"] = result.stdout
        self.produced[f"{name}: stderr"] = result.stderr
        return result


def _wait_for(condition: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)  # polling a condition, with a deadline
    raise AssertionError(f"timed out waiting for {what}")


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())
    except OSError:
        return None


def _count(client: OpenSearch, alias: str) -> int:
    try:
        client.indices.refresh(index=alias)
        return int(client.count(index=alias)["count"])
    except Exception:  # the alias may not exist yet
        return -1


def _everything_in(client: OpenSearch) -> str:
    """Every index's settings, mappings, aliases and documents, hidden ones too."""
    indices = client.indices.get(index="*", params={"expand_wildcards": "all"})
    parts = [orjson.dumps(indices).decode()]
    for name in indices:
        client.indices.refresh(index=name)
        hits = client.search(index=name, body={"query": {"match_all": {}}, "size": 10_000})["hits"][
            "hits"
        ]
        parts.append(orjson.dumps(hits).decode())
    return "\n".join(parts)


def test_no_credential_reaches_any_output(
    cql: Any,
    keyspace: str,
    emulator: Any,
    osmem_clone: Any,
    opensearch: OpenSearch,
    tmp_path: Path,
) -> None:
    client = opensearch
    cql.execute(
        f'CREATE TABLE "{keyspace}"."t" (id int PRIMARY KEY, note text) WITH cdc = true '
        "AND CUSTOM_PROPERTIES = {'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
    )
    cql.execute(f'INSERT INTO "{keyspace}"."t" (id, note) VALUES (1, \'first\')')
    alias = f"{keyspace}-t"
    mapping = tmp_path / "t.toml"
    mapping.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "t"\n[index]\nalias = "{alias}"\n'
    )
    metrics_port = _free_port()
    _write_config(tmp_path / "ks2os.toml", emulator, osmem_clone.url, mapping, metrics_port)
    env = _environment()
    run = _Run(tmp_path)

    checked = run.command("config check", "config", "check", env=env)
    assert checked.returncode == 0, checked.stderr
    assert orjson.loads(checked.stdout)["keyspaces"]["password"] == "***"

    loaded = run.command("backfill", "backfill", env=env)
    assert loaded.returncode == 0, loaded.stderr
    assert orjson.loads(loaded.stdout)["written"] == 1

    _follow_while_a_row_changes(run, env, cql, keyspace, client, alias, metrics_port)

    wrong = run.command(
        "wrong Keyspaces password",
        "backfill",
        env=_environment(KS2OS_KEYSPACES_PASSWORD=WRONG_KS_PASSWORD),
    )
    # The emulator checks the password: the runs above did send the right one.
    assert wrong.returncode == 2, wrong.stderr  # refused credentials are a config mistake
    assert "Bad credentials" in wrong.stderr

    bad_mapping = tmp_path / "bad.toml"
    bad_mapping.write_text(mapping.read_text() + '[document]\nexclude = ["nope"]\n')
    refused = run.command(
        "a mapping the table defeats", "backfill", "--mapping", str(bad_mapping), env=env
    )
    assert refused.returncode == 2, refused.stderr

    beside_sigv4 = run.command(
        "a password beside sigv4",
        "config",
        "check",
        env=_environment(KS2OS_KEYSPACES_AUTH="sigv4"),
    )
    assert beside_sigv4.returncode == 2, beside_sigv4.stderr

    # OpenSearch signed with the AWS keys (osmem-server does not check signatures).
    sigv4 = _write_config(
        tmp_path / "sigv4.toml",
        emulator,
        osmem_clone.url,
        mapping,
        metrics_port,
        opensearch="sigv4",
    )
    signed = run.command(
        "backfill, OpenSearch over SigV4",
        "--config",
        str(sigv4),
        "backfill",
        "--restart",
        env=_environment(KS2OS_OPENSEARCH_PASSWORD=""),
    )
    assert signed.returncode == 0, signed.stderr

    run.produced["OpenSearch: every index and document"] = _everything_in(client)
    assert '"job"' in run.produced["OpenSearch: every index and document"]  # state docs read
    _assert_no_secret(run.produced)


def _follow_while_a_row_changes(
    run: _Run,
    env: dict[str, str],
    cql: Any,
    keyspace: str,
    client: OpenSearch,
    alias: str,
    metrics_port: int,
) -> None:
    follower = subprocess.Popen(
        [sys.executable, "-m", "sync", "--log-level", "DEBUG", "follow"],
        cwd=run.cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{metrics_port}"
        _wait_for(lambda: _get(f"{base}/healthz") is not None, "the follower's /healthz")
        cql.execute(f'INSERT INTO "{keyspace}"."t" (id, note) VALUES (2, \'second\')')
        _wait_for(lambda: _count(client, alias) == 2, "the follower to apply the new row")
        run.produced["follow: /metrics"] = _get(f"{base}/metrics") or ""
        run.produced["follow: /healthz"] = _get(f"{base}/healthz") or ""
        assert "ks2os" in run.produced["follow: /metrics"]
        follower.send_signal(signal.SIGTERM)
        stdout, stderr = follower.communicate(timeout=60)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    run.produced["follow: stdout"], run.produced["follow: stderr"] = stdout, stderr
    assert follower.returncode == 0, stderr


def _assert_no_secret(produced: dict[str, str]) -> None:
    leaks = [
        f"{kind} in {where}"
        for where, text in produced.items()
        for kind, forms in SECRETS.items()
        if any(form in text for form in forms)
    ]
    assert not leaks, "; ".join(leaks)
