"""Typed configuration, loaded once: a TOML file, then `KS2OS_*` environment variables.

Every section is a frozen dataclass whose fields carry their default and a
one-line description (`field(metadata={"doc": ...})`). `load_config` reads the
file, overlays the environment (`KS2OS_<SECTION>_<KEY>`, e.g.
`KS2OS_OPENSEARCH_PASSWORD`; top-level keys as `KS2OS_<KEY>`), and validates
as it builds: an unknown key, a value of the wrong type or a value outside its
allowed set raises `ConfigError` naming the key and the expected form.

Paths in the file (`mapping`, a `dead_letter` file, the `ca_file`s) are
relative to the file's directory, so a config works from any working
directory; paths from the environment are taken as given. The auth settings
are checked as a whole once built (`check_auth`): credentials that the chosen
`auth` needs must be there, and credentials it would ignore must not be.

Secrets (passwords) are best given through the environment; `describe`
never prints them, and `config_source` names the variables read, never their
values. This module imports nothing else of ours but the errors.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import tomllib
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from sync.errors import ConfigError

ENV_PREFIX = "KS2OS_"
# Variables with our prefix that are not configuration keys.
ENV_NOT_KEYS = frozenset({"KS2OS_CONFIG"})
ENV_IGNORED_PREFIX = "KS2OS_TEST_"
SECRET_KEYS = frozenset({"password"})
# Keys holding a file path; in a config file they are relative to the file's directory.
PATH_KEYS: tuple[tuple[str | None, str], ...] = (
    (None, "mapping"),
    (None, "dead_letter"),
    ("keyspaces", "ca_file"),
    ("opensearch", "ca_file"),
)
# `dead_letter` holds a path or this word.
DEAD_LETTER_INDEX = "index"

Consistency = Literal["LOCAL_QUORUM", "LOCAL_ONE", "ONE"]


def _doc(text: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A dataclass field with its one-line description."""
    return field(default=default, metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class KeyspacesConfig:
    contact_points: list[str] = _doc(
        "CQL hosts; empty means cassandra.<region>.amazonaws.com", default_factory=list
    )
    port: int = _doc("CQL port (Keyspaces: 9142, TLS)", 9142)
    region: str = _doc("AWS Region of the table and its stream", "us-east-1")
    auth: Literal["sigv4", "password", "none"] = _doc(
        "sigv4: IAM credentials from the standard AWS chain; password: service-specific "
        "credentials; none: no authentication (local emulator only)",
        "sigv4",
    )
    username: str | None = _doc("user name for auth = password", None)
    password: str | None = _doc("password for auth = password (use KS2OS_KEYSPACES_PASSWORD)", None)
    tls: bool = _doc("connect to CQL over TLS", True)
    verify_tls: bool = _doc("verify the server certificate and host name", True)
    ca_file: str | None = _doc("CA bundle; default: the system trust store", None)
    read_consistency: Consistency = _doc("consistency of every CQL read", "LOCAL_QUORUM")
    streams_endpoint: str | None = _doc(
        "Keyspaces Streams endpoint URL; default: the Region's public endpoint", None
    )
    request_timeout_s: float = _doc("timeout of one CQL or Streams request, seconds", 30.0)

    def hosts(self) -> list[str]:
        return self.contact_points or [f"cassandra.{self.region}.amazonaws.com"]


@dataclass(frozen=True)
class OpenSearchConfig:
    hosts: list[str] = _doc("OpenSearch URLs", default_factory=lambda: ["https://localhost:9200"])
    auth: Literal["sigv4", "basic", "none"] = _doc(
        "sigv4: Amazon OpenSearch Service with IAM credentials; basic: user name and password",
        "none",
    )
    username: str | None = _doc("user name for auth = basic", None)
    password: str | None = _doc("password for auth = basic (use KS2OS_OPENSEARCH_PASSWORD)", None)
    region: str | None = _doc("Region for SigV4; default: keyspaces.region", None)
    service: Literal["es", "aoss"] = _doc("SigV4 service: es (managed) or aoss (serverless)", "es")
    verify_certs: bool = _doc("verify TLS certificates", True)
    ca_file: str | None = _doc("CA bundle; default: the system trust store", None)
    timeout_s: float = _doc("timeout of one request, seconds", 30.0)


@dataclass(frozen=True)
class WriterSettings:
    max_docs: int = _doc("documents per bulk request at most", 1000)
    max_bytes: int = _doc("bytes per bulk request at most", 5_000_000)
    max_retry_seconds: float = _doc(
        "how long to keep retrying while OpenSearch pushes back before giving up", 300.0
    )
    initial_backoff: float = _doc("first retry delay, seconds (then exponential, jittered)", 0.1)
    max_backoff: float = _doc("longest retry delay, seconds", 10.0)
    timeout_s: float = _doc("timeout of one bulk request, seconds", 30.0)

    def __post_init__(self) -> None:
        if self.max_docs < 1 or self.max_bytes < 1:
            raise ConfigError("writer.max_docs and writer.max_bytes must be at least 1")
        if self.initial_backoff <= 0 or self.max_backoff <= 0:
            raise ConfigError("writer.initial_backoff and writer.max_backoff must be positive")


@dataclass(frozen=True)
class BackfillConfig:
    workers: int = _doc("parallel scan workers in this process", 4)
    ranges: int = _doc("token ranges the ring is split into", 64)
    page_size: int = _doc("rows per CQL page", 1000)
    snapshot_margin_ms: int = _doc(
        "how far below the service clock at read a snapshot row's version is set; covers "
        "writes in flight and clock differences inside the service (see docs/versions.md)",
        5000,
    )


@dataclass(frozen=True)
class SparkConfig:
    ranges: int = _doc(
        "token ranges of a new run planned by `python -m sync.spark`; 0: from the table's size "
        "(system.size_estimates), else 4 per core of the Spark application",
        0,
    )
    range_mb: int = _doc("target size of one range planned from system.size_estimates, MB", 64)
    task_rows: int = _doc(
        "rows one Spark task reads before it records its token and hands the rest of its "
        "range back to be split (0: no limit)",
        1_000_000,
    )
    task_seconds: int = _doc(
        "seconds one Spark task reads before it hands the rest of its range back (0: no limit)",
        600,
    )

    def __post_init__(self) -> None:
        if self.range_mb < 1:
            raise ConfigError("spark.range_mb must be at least 1")


@dataclass(frozen=True)
class FollowConfig:
    flush_interval_ms: int = _doc("a partial batch is written after this long", 200)
    max_batch_records: int = _doc("records per batch at most", 1000)
    max_batch_bytes: int = _doc("bytes per batch at most", 5_000_000)
    get_records_limit: int = _doc("maxResults of each GetRecords call (1-1000)", 1000)
    idle_poll_ms: int = _doc("longest pause between polls of a shard that is at its tip", 250)
    on_gap: Literal["stop", "continue"] = _doc(
        "when the stream no longer holds records the index has not seen (TrimmedDataAccess): "
        "stop, or continue and mark the index for reindex",
        "stop",
    )
    skip_replication: bool = _doc("ignore origin=REPLICATION records (multi-Region tables)", False)
    metrics_port: int | None = _doc("port of /metrics and /healthz; unset: off", None)


@dataclass(frozen=True)
class StateConfig:
    index: str = _doc("OpenSearch index holding checkpoints, progress and leases", ".ks2os-state")
    lease_seconds: int = _doc("a worker's lease on a shard or range lasts this long", 30)
    worker_id: str = _doc(
        "this worker's name in leases; default host-pid",
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
    )


@dataclass(frozen=True)
class Config:
    mapping: str | None = _doc("the table's mapping file (see mappings/)", None)
    dead_letter: str = _doc(
        "where rejected documents go: 'index' (<alias>-deadletter) or an NDJSON file path",
        "index",
    )
    keyspaces: KeyspacesConfig = field(default_factory=KeyspacesConfig)
    opensearch: OpenSearchConfig = field(default_factory=OpenSearchConfig)
    writer: WriterSettings = field(default_factory=WriterSettings)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    follow: FollowConfig = field(default_factory=FollowConfig)
    state: StateConfig = field(default_factory=StateConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """The configuration from `path` (None: defaults only) overlaid with `env`."""
    raw = _read_toml(Path(path)) if path is not None else {}
    if path is not None:
        raw = _relative_to(raw, Path(path).parent)
    source = str(path) if path is not None else "defaults"
    overlay = _environment_overlay(os.environ if env is None else env)
    merged = _merge(raw, overlay)
    cfg: Config = _build(Config, merged, source, prefix="")
    check_auth(cfg, lambda key: _origin(merged, key, source))
    return cfg


@dataclass(frozen=True)
class ConfigSource:
    """Where a configuration was read from: names only, never values."""

    path: str | None  # the file; None: defaults only
    variables: tuple[str, ...]  # the KS2OS_* variables that set keys, sorted


def config_source(path: str | Path | None, env: Mapping[str, str] | None = None) -> ConfigSource:
    """The file and the `KS2OS_*` variables `load_config(path, env)` reads."""
    names = _env_names()
    given = os.environ if env is None else env
    return ConfigSource(
        path=None if path is None else str(path),
        variables=tuple(sorted(name for name in given if name in names)),
    )


def env_name(section: str | None, key: str) -> str:
    """The environment variable that sets `key` (of `section`; None: top level)."""
    name = f"{section}_{key}" if section else key
    return ENV_PREFIX + name.upper()


# ---- auth, checked as a whole ----------------------------------------------------------

# For each section: the auth value that uses user name and password, and how it is spelt.
_CREDENTIAL_AUTH = {"keyspaces": "password", "opensearch": "basic"}


def check_auth(cfg: Config, origin: Callable[[str], str] | None = None) -> None:
    """Refuse auth settings that cannot work, or that would leave a credential unused.

    `origin(key)` names where a key was set (the file or a variable), for the message.
    """
    where = origin or (lambda key: "config")
    for section in ("keyspaces", "opensearch"):
        settings = getattr(cfg, section)
        _check_credentials(section, settings.auth, settings.username, settings.password, where)
    for i, host in enumerate(cfg.opensearch.hosts):
        if "@" in urlsplit(host).netloc:
            # Never echo the URL: its user-info part is the secret.
            raise ConfigError(
                f"{where('opensearch.hosts')}: opensearch.hosts[{i}] carries credentials in "
                "the URL, where every message that names the host would show them",
                hint="remove user:password@ from the URL; use opensearch.auth = 'basic' with "
                f"opensearch.username and {env_name('opensearch', 'password')}",
            )
    ks = cfg.keyspaces
    if ks.ca_file is not None and not ks.tls:
        raise ConfigError(
            f"{where('keyspaces.ca_file')}: keyspaces.ca_file is set but keyspaces.tls = false "
            "would never use it",
            hint="set keyspaces.tls = true (Keyspaces requires TLS) or remove keyspaces.ca_file",
        )


def _check_credentials(
    section: str,
    auth: str,
    username: str | None,
    password: str | None,
    where: Callable[[str], str],
) -> None:
    wanted = _CREDENTIAL_AUTH[section]
    user_key, password_key = f"{section}.username", f"{section}.password"
    variables = f"{env_name(section, 'username')} / {env_name(section, 'password')}"
    if auth == wanted:
        missing = [
            key for key, value in ((user_key, username), (password_key, password)) if not value
        ]
        if missing:
            raise ConfigError(
                f"{where(f'{section}.auth')}: {section}.auth = {wanted!r} needs {user_key} and "
                f"{password_key} ({' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                "missing)",
                hint=f"set them in [{section}] or as {variables} (the password best in the "
                "environment)",
            )
        return
    unused = [key for key, value in ((user_key, username), (password_key, password)) if value]
    if unused:
        raise ConfigError(
            f"{where(unused[-1])}: {' and '.join(unused)} set but {section}.auth = {auth!r} "
            "does not use them",
            hint=f"remove them (and {variables}), or set {section}.auth = {wanted!r}",
        )


def _origin(raw: Mapping[str, Any], dotted: str, source: str) -> str:
    """The variable that set `dotted` (e.g. `keyspaces.password`), else the file."""
    section, _, key = dotted.rpartition(".")
    table = raw.get(section) if section else raw
    value = table.get(key) if isinstance(table, Mapping) else None
    return value.variable if isinstance(value, _EnvValue) else source


# ---- paths relative to the file --------------------------------------------------------


def _relative_to(raw: dict[str, Any], base: Path) -> dict[str, Any]:
    """`raw` with each relative path key joined to `base` (the config file's directory)."""
    resolved = dict(raw)
    for section, key in PATH_KEYS:
        if section is None:
            table: Any = resolved
        else:
            table = resolved.get(section)
            if not isinstance(table, dict):
                continue  # missing, or not a table: _build reports the latter
            table = resolved[section] = dict(table)
        value = table.get(key)
        if not isinstance(value, str) or not value:
            continue  # wrong types are _build's to report
        if section is None and key == "dead_letter" and value == DEAD_LETTER_INDEX:
            continue
        table[key] = str(base / Path(value).expanduser())
    return resolved


def describe(cfg: Config) -> dict[str, Any]:
    """The effective configuration as plain data, secrets masked."""

    def plain(obj: Any) -> Any:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            out = {}
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                masked = f.name in SECRET_KEYS and value is not None
                out[f.name] = "***" if masked else plain(value)
            return out
        return obj

    result: dict[str, Any] = plain(cfg)
    return result


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} not found", hint="pass --config FILE or set KS2OS_CONFIG"
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None


def _environment_overlay(env: Mapping[str, str]) -> dict[str, Any]:
    """KS2OS_* variables as nested raw strings, each under the key it names."""
    known = _env_names()
    overlay: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or name in ENV_NOT_KEYS:
            continue
        if name.startswith(ENV_IGNORED_PREFIX):
            continue
        if name not in known:
            raise ConfigError(
                f"unknown environment variable {name}",
                hint="names are KS2OS_<SECTION>_<KEY>, e.g. KS2OS_OPENSEARCH_PASSWORD",
            )
        section, key = known[name]
        target = overlay.setdefault(section, {}) if section else overlay
        target[key] = _EnvValue(name, value)
    return overlay


def _env_names() -> dict[str, tuple[str | None, str]]:
    names: dict[str, tuple[str | None, str]] = {}
    for f in dataclasses.fields(Config):
        section_type = _section_type(f)
        if section_type is None:
            names[env_name(None, f.name)] = (None, f.name)
            continue
        for sub in dataclasses.fields(section_type):
            names[env_name(f.name, sub.name)] = (f.name, sub.name)
    return names


@dataclass(frozen=True)
class _EnvValue:
    """A value from the environment: text to be parsed into the field's type."""

    variable: str
    text: str


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def _section_type(f: dataclasses.Field[Any]) -> type | None:
    hint = typing.get_type_hints(Config)[f.name]
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _build(cls: type, raw: Any, source: str, prefix: str) -> Any:
    where = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: [{where}] must be a table, got {_kind(raw)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]}",
            hint=f"known keys in [{where}]: {', '.join(sorted(names))}",
        )
    values: dict[str, Any] = {}
    for name, value in raw.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, source, f"{prefix}{name}.")
        else:
            values[name] = _coerce(value, hint, f"{prefix}{name}", source)
    return cls(**values)


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """`value` as the type `hint` names, or a ConfigError naming `key`."""
    if isinstance(value, _EnvValue):
        source, value = value.variable, _parse_env_text(value.text, hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union) and type(None) in args:
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if origin is Literal:
        if value not in args:
            allowed = " | ".join(repr(a) for a in args)
            raise ConfigError(f"{source}: {key} must be one of {allowed}, got {value!r}")
        return value
    if origin is list:
        (item,) = args
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {_kind(value)}")
        return [_coerce(v, item, f"{key}[{i}]", source) for i, v in enumerate(value)]
    return _scalar(value, hint, key, source)


def _scalar(value: Any, hint: Any, key: str, source: str) -> Any:
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
    }[hint]
    if not ok:
        expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
        raise ConfigError(f"{source}: {key} must be {expected[hint]}, got {_kind(value)}")
    if hint is int and value < 0:
        raise ConfigError(f"{source}: {key} must not be negative, got {value}")
    return float(value) if hint is float else value


def _parse_env_text(text: str, hint: Any) -> Any:
    """Environment text parsed as the field's type; left as text when it does not parse."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if text == "":
            return None
        hint = next(a for a in args if a is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        return [part.strip() for part in text.split(",") if part.strip()]
    if hint is bool:
        lowered = text.strip().lower()
        return {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
            lowered, text
        )
    for number in (int, float):
        if hint is number:
            try:
                return number(text)
            except ValueError:
                return text
    return text


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, dict):
        return "a table"
    return f"{type(value).__name__} {value!r}"
