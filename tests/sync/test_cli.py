"""The ks2os command as a user meets it: a real process, its exit code and its stderr.

Every failure a user can meet ends in one `ks2os:` line with the documented
exit code (2: configuration, 1: the run cannot go on) and no traceback:
OpenSearch or Keyspaces or the Streams endpoint unreachable, a mapping
OpenSearch refuses, a metrics port in use, a wrong password; and a follower
told to stop while it waits out a Streams backoff stops.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

import sync
from sync.mapping import load_mapping
from tests.sync.faults import HttpProxy


def ks2os(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync", *args],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version_and_help(tmp_path: Path) -> None:
    version = ks2os("--version", cwd=tmp_path)
    assert version.returncode == 0
    assert version.stdout.strip() == f"ks2os {sync.__version__}"
    helped = ks2os("--help", cwd=tmp_path)
    assert helped.returncode == 0
    assert "usage: ks2os" in helped.stdout


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_unknown_command_is_one_line_and_exit_2(tmp_path: Path) -> None:
    line = one_line_error(ks2os("bogus", cwd=tmp_path))
    assert "invalid choice: 'bogus'" in line


def test_unknown_flag_is_one_line_and_exit_2(tmp_path: Path) -> None:
    line = one_line_error(ks2os("--frobnicate", "config", "check", cwd=tmp_path))
    assert "--frobnicate" in line


def test_missing_config_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    line = one_line_error(ks2os("--config", "nope.toml", "config", "check", cwd=tmp_path))
    assert "nope.toml not found" in line


def test_bad_config_value_names_the_key(tmp_path: Path) -> None:
    (tmp_path / "ks2os.toml").write_text("[state]\nlease_seconds = 'long'\n")
    line = one_line_error(ks2os("config", "check", cwd=tmp_path))
    assert "state.lease_seconds must be an integer" in line


def test_config_check_prints_effective_config_without_secrets(tmp_path: Path) -> None:
    (tmp_path / "ks2os.toml").write_text("[opensearch]\nauth = 'basic'\nusername = 'u'\n")
    result = ks2os("config", "check", cwd=tmp_path, env={"KS2OS_OPENSEARCH_PASSWORD": "s3cret"})
    assert result.returncode == 0, result.stderr
    shown = orjson.loads(result.stdout)
    assert shown["opensearch"]["username"] == "u"
    assert shown["opensearch"]["password"] == "***"
    assert "s3cret" not in result.stdout + result.stderr
    assert f"config file: {tmp_path / 'ks2os.toml'}" in result.stderr
    assert "KS2OS_* variables read: KS2OS_OPENSEARCH_PASSWORD" in result.stderr


def test_config_check_without_a_file_fails_unless_told_to_use_defaults(tmp_path: Path) -> None:
    line = one_line_error(ks2os("config", "check", cwd=tmp_path))
    assert "no config file" in line and "--defaults" in line
    env = {"KS2OS_BACKFILL_WORKERS": "2"}
    result = ks2os("config", "check", "--defaults", cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["backfill"]["workers"] == 2
    assert "config file: none: defaults" in result.stderr
    assert "KS2OS_* variables read: KS2OS_BACKFILL_WORKERS" in result.stderr


def test_config_check_resolves_paths_against_the_file_named_by_ks2os_config(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ks2os.toml").write_text('mapping = "mappings/orders.toml"\n')
    (conf / "mappings").mkdir()
    (conf / "mappings" / "orders.toml").write_text(
        '[source]\nkeyspace = "shop"\ntable = "orders"\n[index]\nalias = "orders"\n'
    )
    work = tmp_path / "work"
    work.mkdir()
    result = ks2os("config", "check", cwd=work, env={"KS2OS_CONFIG": "../conf/ks2os.toml"})
    assert result.returncode == 0, result.stderr
    assert f"config file: {conf / 'ks2os.toml'} (named by KS2OS_CONFIG)" in result.stderr
    mapping = orjson.loads(result.stdout)["mapping"]
    assert (work / mapping).resolve() == conf / "mappings" / "orders.toml"
    assert "table shop.orders -> alias orders" in result.stderr  # the file was read


def _config_file(make_config: Any, tmp_path: Path, mapping: Path | None = None) -> Path:
    """The Config the fixture builds is also written where the CLI can read it."""
    make_config(str(mapping) if mapping else None)
    return tmp_path / "ks2os.toml"


def test_mapping_generate_proposes_a_file_that_loads(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path
) -> None:
    cql.execute(
        f'CREATE TABLE "{keyspace}"."orders" (shop text, id uuid, placed timestamp, '
        "total decimal, items map<text, int>, PRIMARY KEY (shop, id))"
    )
    out = tmp_path / "orders.toml"
    config = _config_file(make_config, tmp_path)
    result = ks2os(
        "--config",
        str(config),
        "mapping",
        "generate",
        f"{keyspace}.orders",
        "-o",
        str(out),
        cwd=tmp_path,
        env=_aws_env(),
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"ks2os: wrote {out}: mapping of {keyspace}.orders to the alias {keyspace}-orders; "
        "review its field types\n"
    )
    mapping = load_mapping(str(out))
    assert (mapping.keyspace, mapping.table) == (keyspace, "orders")
    properties = mapping.mappings["properties"]
    assert properties["placed"]["type"] == "date"
    assert properties["shop"] == {"type": "keyword"}  # a key: matched exactly


def test_mapping_generate_never_overwrites_without_force(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path
) -> None:
    cql.execute(f'CREATE TABLE "{keyspace}"."t" (id int PRIMARY KEY, name text)')
    config = _config_file(make_config, tmp_path)
    out = tmp_path / "t.toml"
    out.write_text("# my edited mapping\n")
    generate = ("--config", str(config), "mapping", "generate", f"{keyspace}.t", "-o", str(out))
    line = one_line_error(ks2os(*generate, cwd=tmp_path, env=_aws_env()))
    assert f"{out} exists; not overwriting it" in line and "--force" in line
    assert out.read_text() == "# my edited mapping\n"

    forced = ks2os(*generate, "--force", "--alias", "search-t", cwd=tmp_path, env=_aws_env())
    assert forced.returncode == 0, forced.stderr
    assert load_mapping(out).alias == "search-t"

    line = one_line_error(
        ks2os(*generate, "--force", "--alias", "Not An Index", cwd=tmp_path, env=_aws_env())
    )
    assert "index.alias" in line
    assert load_mapping(out).alias == "search-t"  # a refused proposal writes nothing

    shown = ks2os(*generate[:-2], cwd=tmp_path, env=_aws_env())
    assert shown.returncode == 0, shown.stderr
    assert tomllib.loads(shown.stdout)["index"]["alias"] == f"{keyspace}-t"
    assert f"proposed a mapping of {keyspace}.t to the alias {keyspace}-t (on stdout)" in (
        shown.stderr
    )


def test_a_missing_table_is_one_line_naming_it(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path
) -> None:
    config = _config_file(make_config, tmp_path)
    line = one_line_error(
        ks2os(
            "--config",
            str(config),
            "mapping",
            "generate",
            f"{keyspace}.nope",
            cwd=tmp_path,
            env=_aws_env(),
        )
    )
    assert f"table {keyspace}.nope does not exist" in line


def test_backfill_refuses_an_index_whose_mapping_conflicts(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path, opensearch: Any
) -> None:
    cql.execute(
        f'CREATE TABLE "{keyspace}"."t" (id int PRIMARY KEY, n int) WITH cdc = true '
        "AND CUSTOM_PROPERTIES = {'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
    )
    alias = f"{keyspace}-t"
    # An index already behind the alias, where `n` is text; the file says integer.
    opensearch.indices.create(
        index=f"{alias}_v1", body={"mappings": {"properties": {"n": {"type": "text"}}}}
    )
    opensearch.indices.put_alias(index=f"{alias}_v1", name=alias)
    mapping = tmp_path / "t.toml"
    mapping.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "t"\n[index]\nalias = "{alias}"\n'
        '[index.mappings.properties]\nn = { type = "integer" }\n'
    )
    config = _config_file(make_config, tmp_path, mapping)
    result = ks2os("--config", str(config), "backfill", cwd=tmp_path, env=_aws_env())
    line = failure(result, 2)  # a configuration matter: the file asks for another index
    assert f"field 'n' type is 'text' in OpenSearch but 'integer' in {mapping}" in line
    assert line.endswith("run `ks2os reindex` to build a new index with this mapping")
    assert opensearch.count(index=f"{alias}_v1")["count"] == 0


def test_a_document_id_of_part_of_the_key_is_refused_at_start(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path, opensearch: Any
) -> None:
    cql.execute(
        f'CREATE TABLE "{keyspace}"."t" ("shop" int, "sku" text, "n" int, '
        'PRIMARY KEY ("shop", "sku"))'
    )
    cql.execute(f'INSERT INTO "{keyspace}"."t" ("shop", "sku", "n") VALUES (1, \'a\', 1)')
    mapping = tmp_path / "t.toml"
    mapping.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "t"\n[index]\nalias = "{keyspace}-t"\n'
        '[document]\nid = ["shop"]\n'
    )
    config = _config_file(make_config, tmp_path, mapping)
    line = one_line_error(ks2os("--config", str(config), "backfill", cwd=tmp_path, env=_aws_env()))
    assert "document.id leaves out primary-key column(s) sku" in line
    assert not opensearch.indices.exists(index=f"{keyspace}-t")  # refused before any write


def test_a_weak_read_consistency_is_refused_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "ks2os.toml").write_text("[keyspaces]\nread_consistency = 'LOCAL_ONE'\n")
    line = one_line_error(ks2os("config", "check", cwd=tmp_path))
    assert "keyspaces.read_consistency must be 'LOCAL_QUORUM', got 'LOCAL_ONE'" in line
    assert "resurrect a deleted row" in line


def test_a_negative_snapshot_margin_is_refused_with_exit_2(tmp_path: Path) -> None:
    (tmp_path / "ks2os.toml").write_text("[backfill]\nsnapshot_margin_ms = -5000\n")
    line = one_line_error(ks2os("config", "check", cwd=tmp_path))
    assert "backfill.snapshot_margin_ms must be 1000-3600000, got -5000" in line


def _aws_env() -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.mark.parametrize(
    ("properties", "expected"),
    [
        # OpenSearch refuses the index: a traceback before this check.
        (
            'n = { type = "intger" }',
            "index.mappings.properties.n.type: 'intger' is not an OpenSearch field type",
        ),
        # OpenSearch refuses every document: all rows dead-lettered, exit 0, before.
        (
            'id = { type = "integer" }\nnn = { type = "integer" }',
            "index.mappings.properties.nn: no column 'nn' in",
        ),
    ],
    ids=["unknown-type", "missing-column"],
)
def test_backfill_refuses_a_mapping_the_table_defeats_before_writing(
    cql: Any,
    keyspace: str,
    make_config: Any,
    tmp_path: Path,
    opensearch: Any,
    properties: str,
    expected: str,
) -> None:
    cql.execute(
        f'CREATE TABLE "{keyspace}"."t" (id int PRIMARY KEY, n int) WITH cdc = true '
        "AND CUSTOM_PROPERTIES = {'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
    )
    cql.execute(f'INSERT INTO "{keyspace}"."t" (id, n) VALUES (1, 1)')
    alias = f"{keyspace}-t"
    mapping = tmp_path / "t.toml"
    mapping.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "t"\n[index]\nalias = "{alias}"\n'
        f'[index.mappings]\ndynamic = "strict"\n[index.mappings.properties]\n{properties}\n'
    )
    config = _config_file(make_config, tmp_path, mapping)
    line = one_line_error(ks2os("--config", str(config), "backfill", cwd=tmp_path, env=_aws_env()))
    assert expected in line
    # Nothing written: no index, no dead letters.
    assert opensearch.indices.get(index=f"{alias}*", params={"expand_wildcards": "all"}) == {}


def test_backfill_of_a_table_without_cdc_is_refused_unless_no_cdc(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path, opensearch: Any
) -> None:
    cql.execute(f'CREATE TABLE "{keyspace}"."t" (id int PRIMARY KEY, n int)')
    cql.execute(f'INSERT INTO "{keyspace}"."t" (id, n) VALUES (1, 1)')
    alias = f"{keyspace}-t"
    mapping = tmp_path / "t.toml"
    mapping.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "t"\n[index]\nalias = "{alias}"\n'
    )
    config = _config_file(make_config, tmp_path, mapping)
    line = one_line_error(ks2os("--config", str(config), "backfill", cwd=tmp_path, env=_aws_env()))
    assert f"table {keyspace}.t has no CDC stream" in line
    assert "ALTER TABLE" in line and "--no-cdc" in line

    result = ks2os("--config", str(config), "backfill", "--no-cdc", cwd=tmp_path, env=_aws_env())
    assert result.returncode == 0, result.stderr
    assert orjson.loads(result.stdout)["written"] == 1
    warnings = [
        orjson.loads(line) for line in result.stderr.splitlines() if '"level":"warning"' in line
    ]
    assert any("later changes will not be followed" in w["msg"] for w in warnings)
    opensearch.indices.refresh(index=alias)
    assert opensearch.count(index=alias)["count"] == 1


# ---- every failure a user meets: one line, the documented exit code, no traceback -------------


def failure(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The one `ks2os:` line of a failed run (log lines may come before it)."""
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert 'File "' not in result.stderr, result.stderr  # no traceback lines at all
    lines = [line for line in result.stderr.splitlines() if line.startswith("ks2os:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def free_port() -> int:
    """A port nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cdc_table(cql: Any, keyspace: str, tmp_path: Path, field_type: str = "integer") -> Path:
    """A table with CDC on, and its mapping file (field `n` of `field_type`)."""
    cql.execute(
        f'CREATE TABLE "{keyspace}"."t" (id int PRIMARY KEY, n int) WITH cdc = true '
        "AND CUSTOM_PROPERTIES = {'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
    )
    mapping = tmp_path / "t.toml"
    mapping.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "t"\n[index]\nalias = "{keyspace}-t"\n'
        f'[index.mappings.properties]\nn = {{ type = "{field_type}" }}\n'
    )
    return mapping


def test_an_unreachable_opensearch_is_one_line_and_exit_1(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path
) -> None:
    mapping = cdc_table(cql, keyspace, tmp_path)
    port = free_port()
    make_config(str(mapping), opensearch={"hosts": [f"http://127.0.0.1:{port}"]})
    result = ks2os("--config", "ks2os.toml", "backfill", cwd=tmp_path, env=_aws_env())
    line = failure(result, 1)
    assert "cannot reach OpenSearch" in line and f"127.0.0.1', port={port}" in line
    assert "opensearch.hosts" in line


def test_a_mapping_opensearch_refuses_is_one_line_naming_the_file_and_exit_2(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path, opensearch: Any
) -> None:
    mapping = cdc_table(cql, keyspace, tmp_path, field_type="intger")
    make_config(str(mapping))
    result = ks2os("--config", "ks2os.toml", "backfill", cwd=tmp_path, env=_aws_env())
    line = failure(result, 2)
    assert "intger" in line and str(mapping) in line
    assert not opensearch.indices.exists(index=f"{keyspace}-t_v1")


def test_a_metrics_port_in_use_is_one_line_naming_the_setting_and_exit_2(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path
) -> None:
    mapping = cdc_table(cql, keyspace, tmp_path)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        make_config(str(mapping), follow={"metrics_port": port})
        result = ks2os("--config", "ks2os.toml", "follow", cwd=tmp_path, env=_aws_env())
    line = failure(result, 2)
    assert f"port {port}" in line and "follow.metrics_port" in line


def test_an_unreachable_keyspaces_is_one_line_without_driver_tracebacks(
    make_config: Any, tmp_path: Path
) -> None:
    mapping = tmp_path / "t.toml"
    mapping.write_text('[source]\nkeyspace = "ks"\ntable = "t"\n[index]\nalias = "ks-t"\n')
    port = free_port()
    make_config(str(mapping), keyspaces={"port": port, "request_timeout_s": 5})
    result = ks2os("--config", "ks2os.toml", "backfill", cwd=tmp_path, env=_aws_env())
    line = failure(result, 1)
    assert f"cannot reach Keyspaces at 127.0.0.1:{port}" in line
    assert "keyspaces.contact_points" in line


def test_an_unreachable_streams_endpoint_is_one_line_at_start_and_exit_1(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path
) -> None:
    mapping = cdc_table(cql, keyspace, tmp_path)
    port = free_port()
    make_config(str(mapping), keyspaces={"streams_endpoint": f"http://127.0.0.1:{port}"})
    result = ks2os("--config", "ks2os.toml", "follow", cwd=tmp_path, env=_aws_env())
    line = failure(result, 1)
    assert "cannot reach Keyspaces Streams" in line and f"127.0.0.1:{port}" in line
    assert "keyspaces.streams_endpoint" in line


def test_status_prints_each_table_and_never_fails_with_a_traceback(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path, opensearch: Any
) -> None:
    mapping = cdc_table(cql, keyspace, tmp_path)
    make_config(str(mapping))
    never = ks2os("--config", "ks2os.toml", "status", cwd=tmp_path, env=_aws_env())
    assert never.returncode == 0, never.stderr
    assert never.stdout.startswith(f"status {keyspace}.t: alias {keyspace}-t -> none\n")
    assert "never run" in never.stdout
    assert ks2os("--config", "ks2os.toml", "backfill", cwd=tmp_path, env=_aws_env()).returncode == 0
    shown = ks2os("--config", "ks2os.toml", "status", "--json", cwd=tmp_path, env=_aws_env())
    assert shown.returncode == 0, shown.stderr
    (line,) = shown.stdout.splitlines()
    status = orjson.loads(line)
    assert (status["table"], status["alias"], status["outcome"]) == (
        f"{keyspace}.t",
        f"{keyspace}-t",
        "done",
    )
    assert status["index"] == f"{keyspace}-t_v1" and status["backfills"][0]["finished"]

    # Several tables: one line each, in the config's order.
    other = tmp_path / "u.toml"
    other.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "u"\n[index]\nalias = "{keyspace}-u"\n'
    )
    cql.execute(
        f'CREATE TABLE "{keyspace}"."u" (id int PRIMARY KEY) WITH cdc = true AND '
        "CUSTOM_PROPERTIES = {'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
    )
    config = tmp_path / "ks2os.toml"
    config.write_text(
        config.read_text().replace(f'mapping = "{mapping}"', f'mappings = ["{mapping}", "{other}"]')
    )
    both = ks2os("--config", "ks2os.toml", "status", "--json", cwd=tmp_path, env=_aws_env())
    assert both.returncode == 0, both.stderr
    lines = [orjson.loads(line) for line in both.stdout.splitlines()]
    assert [(s["table"], s["never_run"]) for s in lines] == [
        (f"{keyspace}.t", False),
        (f"{keyspace}.u", True),  # the state index exists; nothing of u is in it
    ]
    assert lines[1]["backfills"] == [] and lines[1]["streams"][0]["shards"] == []

    port = free_port()
    make_config(str(mapping), opensearch={"hosts": [f"http://127.0.0.1:{port}"]})
    line = failure(ks2os("--config", "ks2os.toml", "status", cwd=tmp_path, env=_aws_env()), 1)
    assert "cannot reach OpenSearch" in line and "opensearch.hosts" in line
    make_config(str(mapping), keyspaces={"streams_endpoint": f"http://127.0.0.1:{port}"})
    line = failure(ks2os("--config", "ks2os.toml", "status", cwd=tmp_path, env=_aws_env()), 1)
    assert "cannot reach Keyspaces Streams" in line and "keyspaces.streams_endpoint" in line


@pytest.fixture(scope="module")
def guarded_emulator() -> Iterator[Any]:
    """A keyspaces_local that asks for a password (PasswordAuthenticator)."""
    from keyspaces_local.server import Emulator

    emulator = Emulator.start(credentials={"ks2os": "the-right-one"})
    try:
        yield emulator
    finally:
        emulator.stop()


def test_a_wrong_password_says_the_credentials_were_refused_and_exit_2(
    guarded_emulator: Any, make_config: Any, tmp_path: Path
) -> None:
    mapping = tmp_path / "t.toml"
    mapping.write_text('[source]\nkeyspace = "ks"\ntable = "t"\n[index]\nalias = "ks-t"\n')
    # The file names the user and (for make_config's own check of the file) a password;
    # the environment's password, the wrong one, overrides it as a user's would.
    make_config(
        str(mapping),
        keyspaces={
            "port": guarded_emulator.cql_port,
            "auth": "password",
            "username": "ks2os",
            "password": "from-the-file",
        },
    )
    env = {**_aws_env(), "KS2OS_KEYSPACES_PASSWORD": "w0ng-pa55"}
    result = ks2os("--config", "ks2os.toml", "backfill", cwd=tmp_path, env=env)
    line = failure(result, 2)
    assert "Keyspaces refused the credentials" in line and "cannot reach" not in line
    assert "KS2OS_KEYSPACES_PASSWORD" in line
    assert "w0ng-pa55" not in result.stderr + result.stdout
    assert "from-the-file" not in result.stderr + result.stdout


def test_sigterm_while_the_streams_endpoint_is_unreachable_ends_the_follower(
    cql: Any, keyspace: str, emulator: Any, make_config: Any, tmp_path: Path, opensearch: Any
) -> None:
    mapping = cdc_table(cql, keyspace, tmp_path)
    proxy = HttpProxy(emulator.streams_url)
    try:
        make_config(str(mapping), keyspaces={"streams_endpoint": proxy.url})
        with subprocess.Popen(
            [sys.executable, "-m", "sync", "--config", "ks2os.toml", "follow"],
            cwd=tmp_path,
            env={"PATH": "/usr/bin:/bin", **_aws_env()},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        ) as follower:
            stderr = _Lines(follower.stderr)
            try:
                # Following: it holds shards (their state documents exist).
                _until(lambda: _shard_states(opensearch) > 0, follower)
                proxy.cut()
                # The coordinator in its backoff now (its readers too), for up to 5 minutes.
                _until(lambda: stderr.has("get_stream failed, retrying"), follower)
                follower.send_signal(signal.SIGTERM)
                # Before the fix it retried for 5 minutes: a generous deadline still tells.
                follower.wait(timeout=60)
            finally:
                if follower.poll() is None:
                    follower.kill()
                    follower.wait()
                stderr.done()
    finally:
        proxy.cut()
    result = subprocess.CompletedProcess(follower.args, follower.returncode, "", stderr.text())
    assert result.returncode in (0, 1), result.stderr
    if result.returncode == 1:
        assert "Keyspaces Streams" in failure(result, 1)
    assert "Traceback" not in result.stderr


class _Lines:
    """A child's stream, read line by line in a thread, so a test can wait on a line."""

    def __init__(self, stream: Any) -> None:
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self._thread.start()

    def _read(self, stream: Any) -> None:
        for line in stream:
            with self._lock:
                self._lines.append(line)

    def has(self, text: str) -> bool:
        with self._lock:
            return any(text in line for line in self._lines)

    def done(self) -> None:
        self._thread.join(timeout=30)

    def text(self) -> str:
        with self._lock:
            return "".join(self._lines)


def _shard_states(opensearch: Any) -> int:
    if not opensearch.indices.exists(index=".ks2os-state"):
        return 0
    opensearch.indices.refresh(index=".ks2os-state")
    body = {"query": {"term": {"job": "follow"}}}
    return int(opensearch.count(index=".ks2os-state", body=body)["count"])


def _until(condition: Any, process: subprocess.Popen[str], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"ks2os exited early with {process.returncode}")
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


# ---- verify: exit 0 when the index matches, 1 when it differs ---------------------------------


def test_verify_usage_mistakes_are_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "ks2os.toml").write_text("")
    line = one_line_error(ks2os("verify", "--sample", "0", cwd=tmp_path))
    assert "'0' is not a whole number of rows above 0" in line
    line = one_line_error(ks2os("verify", "--fraction", "1.5", cwd=tmp_path))
    assert "not a share of the ranges in (0, 1]" in line
    line = one_line_error(ks2os("verify", "--sample", "5", "--fraction", "0.5", cwd=tmp_path))
    assert "not allowed with argument" in line


def test_verify_of_an_alias_without_an_index_is_one_line_and_exit_1(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path
) -> None:
    mapping = cdc_table(cql, keyspace, tmp_path)
    _config_file(make_config, tmp_path, mapping)
    line = failure(ks2os("--config", "ks2os.toml", "verify", cwd=tmp_path, env=_aws_env()), 1)
    assert f"alias {keyspace}-t points at no index" in line and "ks2os backfill" in line


def test_verify_exits_0_when_the_index_matches_1_when_not_and_repair_mends_it(
    cql: Any, keyspace: str, make_config: Any, tmp_path: Path, opensearch: Any
) -> None:
    mapping = cdc_table(cql, keyspace, tmp_path)
    for n in range(10):
        cql.execute(f'INSERT INTO "{keyspace}"."t" (id, n) VALUES ({n}, {n})')
    _config_file(make_config, tmp_path, mapping)
    base = ["--config", "ks2os.toml"]
    assert ks2os(*base, "backfill", cwd=tmp_path, env=_aws_env()).returncode == 0

    matching = ks2os(*base, "verify", "--settle", "0.2", cwd=tmp_path, env=_aws_env())
    assert matching.returncode == 0, matching.stderr
    assert matching.stdout.startswith(f"verify {keyspace}.t: index {keyspace}-t_v1")
    assert "compared 10 rows with 10 documents in 64 of 64 token ranges" in matching.stdout
    assert matching.stdout.rstrip().endswith("result: the index matches the table")

    opensearch.delete(index=f"{keyspace}-t_v1", id="4")
    json_run = ks2os(*base, "verify", "--json", "--settle", "0.2", cwd=tmp_path, env=_aws_env())
    assert json_run.returncode == 1, json_run.stderr
    report = orjson.loads(json_run.stdout)
    assert set(report) == {
        "outcome", "ok", "complete", "table", "alias", "index", "sampled", "ranges", "ranges_total",
        "rows", "documents", "divergent", "counts", "examples", "settled", "unsettled",
        "repaired", "unrepaired", "seconds",
    }  # fmt: skip
    assert report["ok"] is False and report["divergent"] == 1
    assert report["counts"] == {
        "missing": 1, "extra": 0, "mismatch": 0, "expired_visible": 0, "dead_letter": 0,
        "no_token": 0,
    }  # fmt: skip
    (example,) = report["examples"]["missing"]
    assert example["doc_id"] == "4" and isinstance(example["token"], str)

    text = ks2os(*base, "verify", "--settle", "0.2", cwd=tmp_path, env=_aws_env())
    assert text.returncode == 1
    assert "  missing          1\n      4  the row exists; the index has no document" in text.stdout
    assert "ks2os verify --repair rewrites them" in text.stdout

    mended = ks2os(*base, "verify", "--repair", "--settle", "0.2", cwd=tmp_path, env=_aws_env())
    assert mended.returncode == 0, mended.stdout + mended.stderr
    assert "repaired 1 of 1 divergent documents" in mended.stdout
    again = ks2os(*base, "verify", "--sample", "5", "--settle", "0.2", cwd=tmp_path, env=_aws_env())
    assert again.returncode == 0 and "(a sample)" in again.stdout
