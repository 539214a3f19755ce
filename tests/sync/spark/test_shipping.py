"""What a Spark driver ships to its executors: never a secret; each executor reads its own."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from dataclasses import replace

import pytest

from sync.config import Config, load_config
from sync.errors import ConfigError
from sync.spark.shipping import check_for_spark, for_executors, on_executor

KS_SECRET = "ks-secret-3f9a"
OS_SECRET = "os-secret-77c1"


def _config(tmp_path: object, **extra: str) -> Config:
    path = tmp_path / "ks2os.toml"  # type: ignore[operator]
    path.write_text(
        '[keyspaces]\nauth = "password"\nusername = "ks-user"\n'
        '[opensearch]\nauth = "basic"\nusername = "os-user"\nhosts = ["https://search:9200"]\n'
    )
    env = {"KS2OS_KEYSPACES_PASSWORD": KS_SECRET, "KS2OS_OPENSEARCH_PASSWORD": OS_SECRET}
    return load_config(path, env={**env, **extra})


def test_the_shipped_config_holds_no_secret(tmp_path: object) -> None:
    cfg = _config(tmp_path)
    assert cfg.keyspaces.password == KS_SECRET  # the driver has them
    shipped = pickle.dumps(for_executors(cfg))
    assert KS_SECRET.encode() not in shipped and OS_SECRET.encode() not in shipped
    assert for_executors(cfg).opensearch.username == "os-user"  # only secrets are removed


def test_an_executor_takes_the_secrets_from_its_own_environment(tmp_path: object) -> None:
    shipped = for_executors(_config(tmp_path))
    env = {"KS2OS_KEYSPACES_PASSWORD": "ks-on-executor", "KS2OS_OPENSEARCH_PASSWORD": "os-ex"}
    cfg = on_executor(shipped, env)
    assert (cfg.keyspaces.password, cfg.opensearch.password) == ("ks-on-executor", "os-ex")


def test_an_executor_without_the_secret_says_which_variable_to_set(tmp_path: object) -> None:
    shipped = for_executors(_config(tmp_path))
    with pytest.raises(ConfigError) as caught:
        on_executor(shipped, {"KS2OS_KEYSPACES_PASSWORD": "ks"})
    text = f"{caught.value} {caught.value.hint}"
    assert "opensearch.password" in text and "KS2OS_OPENSEARCH_PASSWORD" in text
    assert "spark.executorEnv" in text
    assert KS_SECRET not in text and OS_SECRET not in text


def test_sigv4_needs_no_secret_on_an_executor() -> None:
    cfg = Config()  # keyspaces.auth = sigv4, opensearch.auth = none
    assert on_executor(for_executors(cfg), {}) == cfg


def test_a_ca_file_missing_on_the_executor_is_named(tmp_path: object) -> None:
    cfg = Config()
    cfg = replace(cfg, keyspaces=replace(cfg.keyspaces, ca_file="/nowhere/AmazonRootCA1.pem"))
    with pytest.raises(ConfigError, match=r"keyspaces\.ca_file /nowhere/AmazonRootCA1\.pem"):
        on_executor(for_executors(cfg), {})


def test_a_dead_letter_file_is_refused_for_spark(make_plain: Callable[..., Config]) -> None:
    check_for_spark(make_plain())
    with pytest.raises(ConfigError, match="dead_letter"):
        check_for_spark(make_plain(dead_letter="/tmp/rejected.ndjson"))


@pytest.fixture
def make_plain() -> Callable[..., Config]:
    return lambda **kw: replace(Config(), **kw)
