"""The ks2os command as a user meets it: a real process, its exit code and its stderr."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

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
    mapping = load_mapping(str(out))
    assert (mapping.keyspace, mapping.table) == (keyspace, "orders")
    properties = mapping.mappings["properties"]
    assert properties["placed"]["type"] == "date"
    assert properties["shop"]["type"] in {"keyword", "text"}


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
