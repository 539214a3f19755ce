"""The ks2os command as a user meets it: a real process, its exit code and its stderr."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import orjson
import pytest

import sync
from sync.mapping import load_mapping


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
    work = tmp_path / "work"
    work.mkdir()
    result = ks2os("config", "check", cwd=work, env={"KS2OS_CONFIG": "../conf/ks2os.toml"})
    assert result.returncode == 0, result.stderr
    assert f"config file: {conf / 'ks2os.toml'} (named by KS2OS_CONFIG)" in result.stderr
    mapping = orjson.loads(result.stdout)["mapping"]
    assert (work / mapping).resolve() == conf / "mappings" / "orders.toml"


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
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("ks2os:")]
    assert len(lines) == 1 and "field 'n' is text in OpenSearch but integer" in lines[0]
    assert opensearch.count(index=f"{alias}_v1")["count"] == 0


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
