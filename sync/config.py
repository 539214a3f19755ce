"""Typed configuration, loaded once: a TOML file, then `KS2OS_*` environment variables.

Every section is a frozen dataclass whose fields carry their default and a
one-line description (`field(metadata={"doc": ...})`); a numeric field also
carries its safe range and why (`metadata["bounds"]`, a `Bounds`), so a
config reference can be generated from the fields alone. `load_config` reads
the file, overlays the environment (`KS2OS_<SECTION>_<KEY>`, e.g.
`KS2OS_OPENSEARCH_PASSWORD`; top-level keys as `KS2OS_<KEY>`), and validates
as it builds: an unknown key, a value of the wrong type, a value outside its
allowed set or range raises `ConfigError`, one line naming the key, the
expected form and (for a range) why.

Paths in the file (`mapping`, the `mappings`, a `dead_letter` file, the
`ca_file`s) are relative to the file's directory, so a config works from any
working directory; paths from the environment are taken as given. The auth
settings are checked as a whole once built (`check_auth`): credentials that
the chosen `auth` needs must be there, and credentials it would ignore must
not be. `mapping` (one table) and `mappings` (several) exclude each other
(`check_mapping_keys`); the mapping files themselves are `sync.tables`' to read.

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
from typing import Any, ClassVar, Literal
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
    (None, "mappings"),
    (None, "dead_letter"),
    ("keyspaces", "ca_file"),
    ("opensearch", "ca_file"),
)
# `dead_letter` holds a path or this word.
DEAD_LETTER_INDEX = "index"

# Keyspaces also serves ONE and LOCAL_ONE reads; ks2os refuses them (see `read_consistency`).
Consistency = Literal["LOCAL_QUORUM"]

READ_CONSISTENCY_WHY = (
    "LOCAL_QUORUM is the only read level that reflects every acknowledged write; "
    "a weaker read can resurrect a deleted row at a newer version"
)

# How long Keyspaces keeps stream records (a service fact, not a setting): no
# replay reaches further back, which is what lets cleanup purge tombstones.
STREAM_RETENTION_S = 24 * 3600


@dataclass(frozen=True)
class Bounds:
    """The safe range of a numeric setting, and why; kept in the field's metadata.

    `low`/`high` are inclusive; `above` is an exclusive lower bound (for
    timeouts and delays that must be more than zero).
    """

    why: str
    low: float | None = None
    high: float | None = None
    above: float | None = None

    def admits(self, value: float) -> bool:
        if self.above is not None and not value > self.above:
            return False
        if self.low is not None and value < self.low:
            return False
        return self.high is None or value <= self.high

    def text(self) -> str:
        """The range as a reader would write it: `1-65535`, `> 0`, `>= 1`."""
        low = f"> {_number(self.above)}" if self.above is not None else None
        if self.low is not None:
            if self.high is not None:
                return f"{_number(self.low)}-{_number(self.high)}"
            low = f">= {_number(self.low)}"
        high = None if self.high is None else f"<= {_number(self.high)}"
        return " and ".join(part for part in (low, high) if part)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


class OutOfRange(ConfigError):
    """A setting outside its safe range; `field` names it within its section."""

    def __init__(self, message: str, field_name: str) -> None:
        super().__init__(message)
        self.field = field_name


PORT = Bounds("a TCP port", low=1, high=65535)
TIMEOUT = Bounds("a request that may take no time at all always times out", above=0)


def _doc(
    text: str,
    default: Any = dataclasses.MISSING,
    *,
    bounds: Bounds | None = None,
    why: str | None = None,
    **kwargs: Any,
) -> Any:
    """A dataclass field with its one-line description (and its safe range, or why
    its allowed values are what they are)."""
    metadata: dict[str, Any] = {"doc": text}
    if bounds is not None:
        metadata["bounds"] = bounds
    if why is not None:
        metadata["why"] = why
    return field(default=default, metadata=metadata, **kwargs)


def _check_bounds(section: Any) -> None:
    """Every bounded field of a section inside its range, or `OutOfRange` naming it."""
    for f in dataclasses.fields(section):
        bounds = f.metadata.get("bounds")
        value = getattr(section, f.name)
        if bounds is None or value is None or isinstance(value, bool):
            continue
        if not bounds.admits(value):
            raise OutOfRange(
                f"{section.SECTION}.{f.name} must be {bounds.text()}, got {value!r}: {bounds.why}",
                f.name,
            )


@dataclass(frozen=True)
class KeyspacesConfig:
    SECTION: ClassVar[str] = "keyspaces"

    contact_points: list[str] = _doc(
        "CQL hosts; empty means cassandra.<region>.amazonaws.com", default_factory=list
    )
    port: int = _doc("CQL port (Keyspaces: 9142, TLS)", 9142, bounds=PORT)
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
    read_consistency: Consistency = _doc(
        "consistency of every CQL read (scans and row lookups): LOCAL_QUORUM only",
        "LOCAL_QUORUM",
        why=READ_CONSISTENCY_WHY,
    )
    streams_endpoint: str | None = _doc(
        "Keyspaces Streams endpoint URL; default: the Region's public endpoint", None
    )
    request_timeout_s: float = _doc(
        "timeout of one CQL or Streams request, seconds", 30.0, bounds=TIMEOUT
    )

    def __post_init__(self) -> None:
        _check_bounds(self)

    def hosts(self) -> list[str]:
        return self.contact_points or [f"cassandra.{self.region}.amazonaws.com"]


@dataclass(frozen=True)
class OpenSearchConfig:
    SECTION: ClassVar[str] = "opensearch"

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
    timeout_s: float = _doc("timeout of one request, seconds", 30.0, bounds=TIMEOUT)

    def __post_init__(self) -> None:
        _check_bounds(self)


@dataclass(frozen=True)
class WriterSettings:
    SECTION: ClassVar[str] = "writer"

    max_docs: int = _doc(
        "documents per bulk request at most",
        1000,
        bounds=Bounds("a bulk request carries at least one document", low=1),
    )
    max_bytes: int = _doc(
        "bytes per bulk request at most",
        5_000_000,
        bounds=Bounds(
            "OpenSearch refuses request bodies over http.max_content_length (100 MB by default)",
            low=1,
            high=100 * 1024 * 1024,
        ),
    )
    max_retry_seconds: float = _doc(
        "how long to keep retrying while OpenSearch pushes back before giving up",
        300.0,
        bounds=Bounds("with no time to retry, one refusal would end the run", above=0),
    )
    initial_backoff: float = _doc(
        "first retry delay, seconds (then exponential, jittered)",
        0.1,
        bounds=Bounds("retrying with no pause hammers an OpenSearch that pushes back", above=0),
    )
    max_backoff: float = _doc(
        "longest retry delay, seconds",
        10.0,
        bounds=Bounds("retrying with no pause hammers an OpenSearch that pushes back", above=0),
    )
    timeout_s: float = _doc("timeout of one bulk request, seconds", 30.0, bounds=TIMEOUT)

    def __post_init__(self) -> None:
        _check_bounds(self)
        if self.max_backoff < self.initial_backoff:
            raise OutOfRange(
                f"writer.max_backoff must be >= writer.initial_backoff ({self.initial_backoff}), "
                f"got {self.max_backoff}: the delays grow from the first to the longest",
                "max_backoff",
            )


@dataclass(frozen=True)
class BackfillConfig:
    SECTION: ClassVar[str] = "backfill"

    workers: int = _doc(
        "parallel scan workers in this process",
        4,
        bounds=Bounds(
            "each worker is a thread with a CQL page, a bulk buffer and one of the 32 pooled "
            "OpenSearch connections",
            low=1,
            high=32,
        ),
    )
    ranges: int = _doc(
        "token ranges the ring is split into",
        64,
        bounds=Bounds(
            "each range is a document in the state index, all written in one request when a "
            "run is planned",
            low=1,
            high=65536,
        ),
    )
    page_size: int = _doc(
        "rows per CQL page",
        1000,
        bounds=Bounds(
            "a worker holds one page in memory, and Keyspaces ends a page after 1 MB anyway",
            low=1,
            high=10_000,
        ),
    )
    snapshot_margin_ms: int = _doc(
        "how far below the service clock at read a snapshot row's version is set; covers "
        "writes in flight and clock differences inside the service (see docs/versions.md)",
        5000,
        bounds=Bounds(
            "a smaller margin lets a snapshot row beat a newer stream record it never saw; "
            "a larger one gains nothing and costs rewrites while the follower catches up",
            low=1000,
            high=3_600_000,
        ),
    )
    metrics_port: int | None = _doc(
        "port of /metrics, /healthz and /readyz while a backfill runs; unset: off",
        None,
        bounds=PORT,
    )
    metrics_host: str = _doc("address the backfill's metrics port listens on", "0.0.0.0")

    def __post_init__(self) -> None:
        _check_bounds(self)


@dataclass(frozen=True)
class SparkConfig:
    SECTION: ClassVar[str] = "spark"

    ranges: int = _doc(
        "token ranges of a new run planned by `python -m sync.spark`; 0: from the table's size "
        "(system.size_estimates), else 4 per core of the Spark application",
        0,
        bounds=Bounds(
            "0 plans by size; more than the ring's split limit helps nothing", low=0, high=1_000_000
        ),
    )
    range_mb: int = _doc(
        "target size of one range planned from system.size_estimates, MB",
        64,
        bounds=Bounds("a range holds some data", low=1),
    )
    task_rows: int = _doc(
        "rows one Spark task reads before it records its token and hands the rest of its "
        "range back to be split (0: no limit)",
        1_000_000,
        bounds=Bounds("0 is no limit; a negative budget means nothing", low=0),
    )
    task_seconds: int = _doc(
        "seconds one Spark task reads before it hands the rest of its range back (0: no limit)",
        600,
        bounds=Bounds("0 is no limit; a negative budget means nothing", low=0),
    )

    def __post_init__(self) -> None:
        _check_bounds(self)


@dataclass(frozen=True)
class FollowConfig:
    SECTION: ClassVar[str] = "follow"

    flush_interval_ms: int = _doc(
        "how long a shard holds back a partial batch before handing it to the writer stage "
        "(at its tip: never). 0: each GetRecords page at once; the stage packs every "
        "shard's batches into full bulk requests itself, so holding them only adds latency",
        0,
        bounds=Bounds(
            "every change waits up to this long before it is searchable", low=0, high=60_000
        ),
    )
    max_batch_records: int = _doc(
        "records per shard's batch handed to the writer at most",
        1000,
        bounds=Bounds("a batch carries at least one record", low=1),
    )
    max_batch_bytes: int = _doc(
        "estimated bytes per shard's batch handed to the writer at most",
        5_000_000,
        bounds=Bounds("a batch carries at least one record", low=1),
    )
    bulk_senders: int = _doc(
        "bulk requests the follower has in flight at once; each packs changes of every "
        "shard, up to writer.max_docs and writer.max_bytes",
        2,
        bounds=Bounds(
            "each sender is a thread holding one of the 32 pooled OpenSearch connections",
            low=1,
            high=16,
        ),
    )
    max_pending_bytes: int = _doc(
        "changes read and not yet acknowledged by OpenSearch, all shards together, at most "
        "(estimated as a batch is); readers pause above it, so memory stays bounded "
        "while OpenSearch is slower than the stream. Leave room for bulk_senders + 1 "
        "requests of writer.max_bytes",
        32_000_000,
        bounds=Bounds("the readers need room for at least one record", low=1),
    )
    get_records_limit: int = _doc(
        "maxResults of each GetRecords call (1-1000)",
        1000,
        bounds=Bounds("GetRecords accepts maxResults 1-1000", low=1, high=1000),
    )
    idle_poll_ms: int = _doc(
        "longest pause between polls of a shard that is at its tip",
        250,
        bounds=Bounds(
            "polling an idle shard faster gets the follower throttled; slower delays its "
            "new records as long",
            low=10,
            high=60_000,
        ),
    )
    on_gap: Literal["stop", "continue", "reindex"] = _doc(
        "when the stream no longer holds changes the index needs (a gap: trimmed records, "
        "a shard gone, a CDC switch): stop; continue and mark the index for reindex; or "
        "reindex: the follower stops, its process rebuilds the index (as `ks2os reindex`) "
        "and then follows the new one",
        "stop",
    )
    skip_replication: bool = _doc("ignore origin=REPLICATION records (multi-Region tables)", False)
    metrics_port: int | None = _doc(
        "port of /metrics, /healthz and /readyz; unset: off", None, bounds=PORT
    )
    metrics_host: str = _doc(
        "address the metrics port listens on (127.0.0.1: this host only)", "0.0.0.0"
    )
    ready_max_lag_s: float = _doc(
        "/readyz answers 503 while a shard this follower reads lags more than this, seconds",
        300.0,
        bounds=Bounds("a follower is never ready when any lag at all is too much", above=0),
    )
    log_interval_s: float = _doc(
        "a status line (records, rates, lag, shards owned) is logged this often, seconds",
        30.0,
        bounds=Bounds("a status line takes some time to mean anything", above=0),
    )
    sweep_interval_ms: int = _doc(
        "how often documents whose values expired (column and static TTLs) are restated "
        "without them; they are hidden from search meanwhile",
        1000,
        bounds=Bounds("a sweep reads the index each round; more often only costs", low=10),
    )

    def __post_init__(self) -> None:
        _check_bounds(self)


@dataclass(frozen=True)
class StateConfig:
    SECTION: ClassVar[str] = "state"

    index: str = _doc("OpenSearch index holding checkpoints, progress and leases", ".ks2os-state")
    lease_seconds: int = _doc(
        "a worker's lease on a shard or range lasts this long; it is renewed every third",
        30,
        bounds=Bounds(
            "a lease is renewed every third of it, and a shorter one leaves a renewal too "
            "little time to land; a crashed worker's share waits this long",
            low=2,
            high=86_400,
        ),
    )
    worker_id: str = _doc(
        "this worker's name in leases (unique among processes running at once); default "
        "host-pid. A rerun under the same name takes its own unreleased leases back at once, "
        "so a fixed name per host resumes a killed backfill without waiting for them",
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}",
    )

    def __post_init__(self) -> None:
        _check_bounds(self)


@dataclass(frozen=True)
class CleanupConfig:
    SECTION: ClassVar[str] = "cleanup"

    margin_s: int = _doc(
        "tombstones are purged once older than the stream's retention (24 h) plus this; "
        "writers refuse changes older than the retention plus half of it",
        3600,
        bounds=Bounds(
            "half of it must cover a write delayed by retries (also checked against the "
            "writer's budget)",
            low=60,
            high=30 * 24 * 3600,
        ),
    )
    expired_after_s: int = _doc(
        "a document whose TTL ran out this long ago, and whose TTL record never came, "
        "is removed (it must also be older than the tombstone window)",
        24 * 3600,
        bounds=Bounds("a TTL record may come days late; removing earlier gains little", low=0),
    )

    def __post_init__(self) -> None:
        _check_bounds(self)

    @property
    def purge_after_ms(self) -> int:
        """Tombstones (and expired documents) older than this may be removed."""
        return (STREAM_RETENTION_S + self.margin_s) * 1000

    @property
    def write_max_age_ms(self) -> int:
        """Writers refuse changes older than this: half the margin before the purge."""
        return (STREAM_RETENTION_S + self.margin_s // 2) * 1000


@dataclass(frozen=True)
class ReindexConfig:
    SECTION: ClassVar[str] = "reindex"

    max_lag_seconds: float = _doc(
        "the alias moves to the new index only once every shard of the stream is applied "
        "to within this many seconds of its tip",
        5.0,
        bounds=Bounds(
            "the stream's records are at least a moment old when read; a swap may wait for "
            "ever under a bound no follower can meet",
            low=1,
            high=3600,
        ),
    )
    verify_sample: int = _doc(
        "rows of the table `verify` compares with the new index before the swap (spread "
        "over every token range)",
        1000,
        bounds=Bounds("a check compares some rows", low=1),
    )
    verify_attempts: int = _doc(
        "how many times a verify sample that finds differences is tried before the reindex "
        "stops (leaving everything as it is: run it again to resume)",
        3,
        bounds=Bounds(
            "a sample is tried at least once; retries are for changes in flight", low=1, high=100
        ),
    )
    keep_old_hours: float = _doc(
        "after the swap the old index is kept this long (`ks2os cleanup` deletes it then), "
        "so searches can be pointed back at it; `ks2os reindex --delete-old` deletes it at once",
        24.0,
        bounds=Bounds("a negative grace means nothing", low=0, high=24 * 365),
    )

    def __post_init__(self) -> None:
        _check_bounds(self)


@dataclass(frozen=True)
class Config:
    mapping: str | None = _doc(
        "the table's mapping file (see mappings/); for several tables, `mappings`", None
    )
    mappings: list[str] = _doc(
        "several tables in one process: mapping files, directories (every `*.toml` in them) "
        "or glob patterns; each table once, each alias once (instead of `mapping`)",
        default_factory=list,
    )
    on_table_failure: Literal["continue", "stop"] = _doc(
        "with several tables, when one table's job fails: continue with the others (the exit "
        "code still says it failed), or stop them all",
        "continue",
    )
    dead_letter: str = _doc(
        "where rejected documents go: 'index' (<alias>-deadletter) or an NDJSON file path",
        "index",
    )
    dead_letter_max_share: float = _doc(
        "a run stops with an error when more than this share of its rows is dead-lettered: "
        "backfill, of every row written once dead_letter_window were; follow, of the last "
        "dead_letter_window records",
        0.1,
    )
    dead_letter_window: int = _doc(
        "how many rows (records) the dead-letter share is judged over; a backfill that "
        "writes fewer is never stopped for it (its summary counts them)",
        1000,
    )
    keyspaces: KeyspacesConfig = field(default_factory=KeyspacesConfig)
    opensearch: OpenSearchConfig = field(default_factory=OpenSearchConfig)
    writer: WriterSettings = field(default_factory=WriterSettings)
    backfill: BackfillConfig = field(default_factory=BackfillConfig)
    follow: FollowConfig = field(default_factory=FollowConfig)
    state: StateConfig = field(default_factory=StateConfig)
    cleanup: CleanupConfig = field(default_factory=CleanupConfig)
    reindex: ReindexConfig = field(default_factory=ReindexConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)

    def __post_init__(self) -> None:
        # Between the writer's age check and the moment OpenSearch applies the write,
        # at most a retry budget and a request pass; half the margin must cover that.
        longest_write = self.writer.max_retry_seconds + self.writer.timeout_s
        if self.cleanup.margin_s < 2 * longest_write:
            raise ConfigError(
                f"cleanup.margin_s must be at least twice writer.max_retry_seconds + "
                f"writer.timeout_s ({2 * longest_write:g} s), got {self.cleanup.margin_s}",
                hint="raise cleanup.margin_s: a write delayed by retries must not land after "
                "cleanup purged the tombstone it would be refused by",
            )
        if self.dead_letter_window < 1:
            raise OutOfRange(
                f"dead_letter_window must be >= 1, got {self.dead_letter_window!r}: "
                "a share needs rows to be judged over",
                "dead_letter_window",
            )
        if not 0 < self.dead_letter_max_share <= 1:
            raise OutOfRange(
                f"dead_letter_max_share must be > 0 and <= 1, got "
                f"{self.dead_letter_max_share!r}: it is a share of the rows",
                "dead_letter_max_share",
            )


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> Config:
    """The configuration from `path` (None: defaults only) overlaid with `env`."""
    raw = _read_toml(Path(path)) if path is not None else {}
    if path is not None:
        raw = _relative_to(raw, Path(path).parent)
    source = str(path) if path is not None else "defaults"
    overlay = _environment_overlay(os.environ if env is None else env)
    merged = _merge(raw, overlay)
    cfg: Config = _build(Config, merged, source, prefix="")

    def origin(key: str) -> str:
        return _origin(merged, key, source)

    check_auth(cfg, origin)
    check_mapping_keys(cfg, origin)
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


# ---- the tables: one mapping, or several -------------------------------------------------


def check_mapping_keys(cfg: Config, origin: Callable[[str], str] | None = None) -> None:
    """`mapping` (one table) and `mappings` (several) exclude each other.

    Which files they name, and whether those make a set ks2os can run, is
    `sync.tables`' to check: it reads the mapping files, which this module never does.
    """
    where = origin or (lambda key: "config")
    if cfg.mapping and cfg.mappings:
        named = {where("mapping"), where("mappings")}
        raise ConfigError(
            f"{' and '.join(sorted(named))}: mapping and mappings are both set",
            hint='keep one: mapping = "FILE" for one table, mappings = ["FILE", "DIR", '
            '"GLOB", ...] for several',
        )


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
        if key not in table:
            continue
        value = table[key]
        if isinstance(value, list):
            table[key] = [_joined(base, item) for item in value]
            continue
        if section is None and key == "dead_letter" and value == DEAD_LETTER_INDEX:
            continue
        table[key] = _joined(base, value)
    return resolved


def _joined(base: Path, value: Any) -> Any:
    """A relative path joined to `base`; anything else (wrong types: `_build`'s) as it is."""
    if not isinstance(value, str) or not value:
        return value
    return str(base / Path(value).expanduser())


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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for name, value in raw.items():
        hint = hints[name]
        if isinstance(hint, type) and dataclasses.is_dataclass(hint):
            values[name] = _build(hint, value, source, f"{prefix}{name}.")
            continue
        try:
            values[name] = _coerce(value, hint, f"{prefix}{name}", source)
        except ConfigError as exc:
            why = fields[name].metadata.get("why")
            if why is None:
                raise
            raise ConfigError(f"{exc}: {why}", hint=exc.hint) from None
    try:
        return cls(**values)
    except OutOfRange as exc:
        given = raw.get(exc.field)
        where_from = given.variable if isinstance(given, _EnvValue) else source
        raise ConfigError(f"{where_from}: {exc}") from None


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
            expected = allowed if len(args) == 1 else f"one of {allowed}"
            raise ConfigError(f"{source}: {key} must be {expected}, got {value!r}")
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
    # Ranges are checked when the section is built (`Bounds` in the field's metadata).
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
