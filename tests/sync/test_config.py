"""Configuration: TOML plus KS2OS_* variables, and one-line errors that name what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.config import Config, ConfigSource, config_source, describe, load_config
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
    assert cfg.mapping == str(tmp_path / "m.toml")  # relative to the file, not the cwd
    assert cfg.keyspaces.port == 9042
    assert cfg.keyspaces.hosts() == ["cassandra.eu-west-1.amazonaws.com"]
    assert cfg.backfill.workers == 8
    assert cfg.follow.on_gap == "continue"


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[opensearch]\nhosts = ['https://a:9200']\nauth = 'basic'\n")
    env = {
        "KS2OS_OPENSEARCH_USERNAME": "ks2os",
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
    env = {
        "KS2OS_KEYSPACES_AUTH": "password",
        "KS2OS_KEYSPACES_USERNAME": "ks2os",
        "KS2OS_KEYSPACES_PASSWORD": "s3cret",
    }
    cfg = load_config(None, env=env)
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
        ("[backfill]\nworkers = -1\n", {}, "backfill.workers must be 1-32, got -1: each worker"),
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


# ---- paths are relative to the config file ----------------------------------------------


def test_paths_in_the_file_are_relative_to_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    path = conf / "ks2os.toml"
    path.write_text(
        'mapping = "mappings/orders.toml"\ndead_letter = "dead/letters.ndjson"\n'
        '[keyspaces]\nca_file = "certs/amazon-root-ca.pem"\n'
        '[opensearch]\nca_file = "/etc/ssl/os.pem"\n'
    )
    elsewhere = tmp_path / "work"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(path, env={})
    assert cfg.mapping == str(conf / "mappings" / "orders.toml")
    assert cfg.dead_letter == str(conf / "dead" / "letters.ndjson")
    assert cfg.keyspaces.ca_file == str(conf / "certs" / "amazon-root-ca.pem")
    assert cfg.opensearch.ca_file == "/etc/ssl/os.pem"  # absolute paths stay as they are


def test_a_relative_config_path_gives_paths_relative_to_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "ks2os.toml").write_text('mapping = "m.toml"\ndead_letter = "index"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_config("conf/ks2os.toml", env={})
    assert cfg.mapping == "conf/m.toml"
    assert cfg.dead_letter == "index"  # the word, not a file named index


def test_paths_from_the_environment_are_taken_as_given(tmp_path: Path) -> None:
    path = write(tmp_path, 'mapping = "from-file.toml"\n')
    cfg = load_config(path, env={"KS2OS_MAPPING": "mappings/from-env.toml"})
    assert cfg.mapping == "mappings/from-env.toml"


# ---- where the configuration came from -----------------------------------------------------


def test_config_source_names_the_file_and_the_variables_never_values(tmp_path: Path) -> None:
    path = write(tmp_path, "")
    env = {
        "KS2OS_OPENSEARCH_PASSWORD": "s3cret",
        "KS2OS_BACKFILL_WORKERS": "2",
        "KS2OS_CONFIG": str(path),  # names the file: not a key
        "KS2OS_TEST_SOAK": "full",  # the test suite's own
        "HOME": "/root",
    }
    source = config_source(path, env)
    assert source.path == str(path)
    assert source.variables == ("KS2OS_BACKFILL_WORKERS", "KS2OS_OPENSEARCH_PASSWORD")
    assert "s3cret" not in repr(source)
    assert config_source(None, {}) == ConfigSource(path=None, variables=())


# ---- auth settings are checked as a whole ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        (
            "[keyspaces]\nauth = 'password'\n",
            {},
            "keyspaces.auth = 'password' needs keyspaces.username and keyspaces.password "
            "(keyspaces.username and keyspaces.password are missing)",
        ),
        (
            "[keyspaces]\nauth = 'password'\nusername = 'u'\n",
            {},
            "(keyspaces.password is missing)",
        ),
        (
            "[keyspaces]\nauth = 'password'\n",
            {"KS2OS_KEYSPACES_PASSWORD": "s3cret"},
            "(keyspaces.username is missing)",
        ),
        (
            "",
            {"KS2OS_KEYSPACES_PASSWORD": "s3cret"},
            "KS2OS_KEYSPACES_PASSWORD: keyspaces.password set but keyspaces.auth = 'sigv4' "
            "does not use them",
        ),
        (
            "[keyspaces]\nauth = 'none'\nusername = 'u'\npassword = 'p'\n",
            {},
            "keyspaces.username and keyspaces.password set but keyspaces.auth = 'none'",
        ),
        (
            "[opensearch]\nauth = 'basic'\n",
            {},
            "opensearch.auth = 'basic' needs opensearch.username and opensearch.password",
        ),
        (
            "[opensearch]\nauth = 'sigv4'\nusername = 'u'\n",
            {},
            "opensearch.username set but opensearch.auth = 'sigv4' does not use them",
        ),
        (
            "",
            {"KS2OS_OPENSEARCH_PASSWORD": "s3cret"},
            "opensearch.password set but opensearch.auth = 'none'",
        ),
        (
            "[opensearch]\nhosts = ['https://a:9200', 'https://admin:s3cret@b:9200']\n",
            {},
            "opensearch.hosts[1] carries credentials in the URL",
        ),
        (
            "[keyspaces]\ntls = false\nca_file = 'ca.pem'\n",
            {},
            "keyspaces.ca_file is set but keyspaces.tls = false",
        ),
    ],
)
def test_auth_settings_are_checked_as_a_whole(
    tmp_path: Path, text: str, env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text), env=env)
    message = str(caught.value)
    assert expected in message
    assert "\n" not in message
    assert caught.value.hint
    assert "s3cret" not in message + caught.value.hint


@pytest.mark.parametrize(
    "text",
    [
        "[keyspaces]\nauth = 'password'\nusername = 'u'\npassword = 'p'\n",
        "[keyspaces]\nauth = 'sigv4'\n[opensearch]\nauth = 'sigv4'\n",
        "[keyspaces]\nauth = 'none'\ntls = false\n",
        "[opensearch]\nauth = 'basic'\nusername = 'u'\npassword = 'p'\n",
    ],
)
def test_consistent_auth_settings_load(tmp_path: Path, text: str) -> None:
    load_config(write(tmp_path, text), env={})


@pytest.mark.parametrize("level", ["LOCAL_ONE", "ONE", "QUORUM"])
def test_a_read_consistency_below_local_quorum_is_refused_saying_why(
    tmp_path: Path, level: str
) -> None:
    """A weaker read may hit a stale replica: a lookup for a delete record would then
    write the deleted row back at the delete's version."""
    path = write(tmp_path, f"[keyspaces]\nread_consistency = '{level}'\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert f"keyspaces.read_consistency must be 'LOCAL_QUORUM', got '{level}'" in message
    assert "reflects every acknowledged write" in message
    assert "resurrect a deleted row" in message
    assert "\n" not in message
    env = {"KS2OS_KEYSPACES_READ_CONSISTENCY": level}
    with pytest.raises(ConfigError, match=r"^KS2OS_KEYSPACES_READ_CONSISTENCY: "):
        load_config(None, env=env)
    assert load_config(None, env={}).keyspaces.read_consistency == "LOCAL_QUORUM"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "[backfill]\nsnapshot_margin_ms = -5\n",
            "backfill.snapshot_margin_ms must be 1000-3600000, got -5: a smaller margin lets a "
            "snapshot row beat a newer stream record it never saw",
        ),
        ("[backfill]\nsnapshot_margin_ms = 999\n", "snapshot_margin_ms must be 1000-3600000"),
        ("[backfill]\nworkers = 0\n", "backfill.workers must be 1-32, got 0"),
        ("[backfill]\nranges = 0\n", "backfill.ranges must be 1-65536, got 0"),
        ("[backfill]\npage_size = 0\n", "backfill.page_size must be 1-10000, got 0"),
        ("[keyspaces]\nport = 0\n", "keyspaces.port must be 1-65535, got 0: a TCP port"),
        ("[keyspaces]\nport = 70000\n", "keyspaces.port must be 1-65535, got 70000"),
        ("[follow]\nmetrics_port = 65536\n", "follow.metrics_port must be 1-65535"),
        ("[keyspaces]\nrequest_timeout_s = 0\n", "keyspaces.request_timeout_s must be > 0"),
        ("[opensearch]\ntimeout_s = -1\n", "opensearch.timeout_s must be > 0, got -1.0"),
        ("[writer]\ntimeout_s = 0\n", "writer.timeout_s must be > 0"),
        ("[writer]\nmax_docs = 0\n", "writer.max_docs must be >= 1, got 0"),
        ("[writer]\nmax_bytes = 200000000\n", "http.max_content_length"),
        ("[writer]\nmax_retry_seconds = 0\n", "writer.max_retry_seconds must be > 0"),
        ("[writer]\ninitial_backoff = 0\n", "writer.initial_backoff must be > 0"),
        (
            "[writer]\ninitial_backoff = 5.0\nmax_backoff = 1.0\n",
            "writer.max_backoff must be >= writer.initial_backoff (5.0), got 1.0",
        ),
        ("[follow]\nget_records_limit = 0\n", "follow.get_records_limit must be 1-1000, got 0"),
        ("[follow]\nget_records_limit = 1001\n", "GetRecords accepts maxResults 1-1000"),
        ("[follow]\nflush_interval_ms = -1\n", "follow.flush_interval_ms must be 0-60000"),
        ("[follow]\nmax_batch_records = 0\n", "follow.max_batch_records must be >= 1"),
        ("[follow]\nmax_batch_bytes = 0\n", "follow.max_batch_bytes must be >= 1"),
        ("[follow]\nidle_poll_ms = 0\n", "follow.idle_poll_ms must be 10-60000, got 0: polling"),
        ("[state]\nlease_seconds = 1\n", "state.lease_seconds must be 2-86400, got 1: a lease"),
    ],
)
def test_numeric_settings_outside_their_safe_range_are_refused(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and expected in message
    assert "\n" not in message


def test_a_range_error_names_the_variable_it_came_from(tmp_path: Path) -> None:
    path = write(tmp_path, "[backfill]\nworkers = 2\n")
    env = {"KS2OS_BACKFILL_SNAPSHOT_MARGIN_MS": "-1"}
    with pytest.raises(
        ConfigError, match=r"^KS2OS_BACKFILL_SNAPSHOT_MARGIN_MS: backfill\.snapshot"
    ):
        load_config(path, env=env)


def test_every_numeric_setting_carries_its_range_and_why_next_to_its_doc() -> None:
    """The ranges live in the field metadata, where a config reference can be made from."""
    import dataclasses
    import typing

    from sync.config import Bounds

    checked = 0
    for section in dataclasses.fields(Config):
        section_type = typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(section_type):
            continue
        hints = typing.get_type_hints(section_type)
        for f in dataclasses.fields(section_type):
            kinds = {a for a in typing.get_args(hints[f.name]) if a is not type(None)}
            if hints[f.name] in (int, float) or kinds & {int, float}:
                bounds = f.metadata.get("bounds")
                assert isinstance(bounds, Bounds), f"{section.name}.{f.name} has no range"
                assert bounds.why and bounds.text() and f.metadata["doc"]
                default = getattr(section_type(), f.name)
                assert default is None or bounds.admits(default)
                checked += 1
    assert checked >= 20


def test_ranges_read_as_a_person_would_write_them() -> None:
    from sync.config import Bounds

    assert Bounds("x", low=1, high=65535).text() == "1-65535"
    assert Bounds("x", above=0).text() == "> 0"
    assert Bounds("x", low=1).text() == ">= 1"
    assert Bounds("x", above=0, high=2.5).text() == "> 0 and <= 2.5"
    assert Bounds("x", above=0).admits(0.001) and not Bounds("x", above=0).admits(0)
