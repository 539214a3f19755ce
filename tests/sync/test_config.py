"""Configuration: TOML plus KS2OS_* variables, and one-line errors that name what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.config import Config, describe, load_config
from sync.errors import ConfigError

pytestmark = pytest.mark.unit


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ks2os.toml"
    path.write_text(text)
    return path


def test_defaults_are_secure() -> None:
    cfg = load_config(None, env={})
    assert cfg.keyspaces.tls and cfg.keyspaces.verify_tls
    assert cfg.keyspaces.auth == "sigv4"
    assert cfg.keyspaces.read_consistency == "LOCAL_QUORUM"
    assert cfg.opensearch.verify_certs
    assert cfg.keyspaces.hosts() == ["cassandra.us-east-1.amazonaws.com"]


def test_file_values_are_typed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        'mapping = "m.toml"\n[keyspaces]\nport = 9042\nregion = "eu-west-1"\n'
        '[backfill]\nworkers = 8\n[follow]\non_gap = "continue"\n',
    )
    cfg = load_config(path, env={})
    assert isinstance(cfg, Config)
    assert cfg.mapping == "m.toml"
    assert cfg.keyspaces.port == 9042
    assert cfg.keyspaces.hosts() == ["cassandra.eu-west-1.amazonaws.com"]
    assert cfg.backfill.workers == 8
    assert cfg.follow.on_gap == "continue"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[opensearch]\nhosts = ['https://a:9200']\n")
    env = {
        "KS2OS_OPENSEARCH_HOSTS": "https://b:9200, https://c:9200",
        "KS2OS_OPENSEARCH_PASSWORD": "s3cret",
        "KS2OS_FOLLOW_SKIP_REPLICATION": "true",
        "KS2OS_FOLLOW_METRICS_PORT": "9464",
        "KS2OS_CONFIG": "ignored: names the file, not a key",
        "OTHER": "not ours",
    }
    cfg = load_config(path, env=env)
    assert cfg.opensearch.hosts == ["https://b:9200", "https://c:9200"]
    assert cfg.opensearch.password == "s3cret"
    assert cfg.follow.skip_replication is True
    assert cfg.follow.metrics_port == 9464


def test_describe_masks_secrets() -> None:
    cfg = load_config(None, env={"KS2OS_KEYSPACES_PASSWORD": "s3cret"})
    shown = describe(cfg)
    assert shown["keyspaces"]["password"] == "***"
    assert "s3cret" not in repr(shown)


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("[keyspaces]\nprot = 1\n", {}, "unknown key keyspaces.prot"),
        ("[keyspacez]\n", {}, "unknown key keyspacez"),
        ("[keyspaces]\nport = 'x'\n", {}, "keyspaces.port must be an integer, got str 'x'"),
        ("[keyspaces]\ntls = 'yes'\n", {}, "keyspaces.tls must be true or false"),
        ("[backfill]\nworkers = -1\n", {}, "backfill.workers must not be negative"),
        ("[follow]\non_gap = 'ignore'\n", {}, "follow.on_gap must be one of 'stop' | 'continue'"),
        ("[opensearch]\nhosts = 'x'\n", {}, "opensearch.hosts must be a list"),
        ("keyspaces = 1\n", {}, "[keyspaces] must be a table"),
        ("", {"KS2OS_BACKFILL_WORKERS": "many"}, "KS2OS_BACKFILL_WORKERS: backfill.workers"),
        ("", {"KS2OS_BACKFIL_WORKERS": "2"}, "unknown environment variable KS2OS_BACKFIL_WORKERS"),
        ("[keyspaces\n", {}, "not valid TOML"),
    ],
)
def test_errors_name_the_key_and_the_expected_form(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env=env)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message


def test_missing_file_says_how_to_name_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml", env={})
    assert "absent.toml not found" in str(caught.value)
    assert "--config" in caught.value.hint
