"""The configuration a Spark driver ships to its executors, and what an executor adds to it.

The driver reads the TOML file and the `KS2OS_*` environment once, as the
CLI does, and pickles the parsed `Config` into every task: executors never
need the file (on EMR Serverless or Glue they do not share the driver's
disk). Secrets never travel that way: `for_executors` removes every
`password`, and `on_executor` puts back the ones the executor's own
environment holds (`KS2OS_KEYSPACES_PASSWORD`, `KS2OS_OPENSEARCH_PASSWORD`),
then checks auth as a whole, so a missing one is a one-line error naming the
variable. With `auth = "sigv4"` (the default) there is no secret at all:
each executor signs with the AWS credential chain of its own host (the EMR
job role, the Glue job role).

`check_for_spark` refuses settings that cannot work on a cluster.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from sync.config import DEAD_LETTER_INDEX, SECRET_KEYS, Config, check_auth, env_name
from sync.errors import ConfigError

# The sections whose fields may hold a secret.
_SECTIONS = ("keyspaces", "opensearch")


def for_executors(cfg: Config) -> Config:
    """`cfg` with every secret removed: the only form of it that may be pickled into tasks."""
    return _with_secrets(cfg, lambda section, key: None)


def on_executor(shipped: Config, environ: Mapping[str, str] | None = None) -> Config:
    """The shipped config with the secrets of this executor's environment; auth checked."""
    env = os.environ if environ is None else environ
    cfg = _with_secrets(shipped, lambda section, key: env.get(env_name(section, key)) or None)
    try:
        check_auth(cfg, lambda key: "on a Spark executor")
    except ConfigError as exc:
        variables = " and ".join(env_name(s, k) for s in _SECTIONS for k in sorted(SECRET_KEYS))
        raise ConfigError(
            str(exc),
            hint="secrets are never shipped with the tasks: set them in the executors' "
            f"environment ({variables}, e.g. spark.executorEnv.<NAME>), or use auth = 'sigv4'",
        ) from None
    for section in _SECTIONS:
        ca_file = getattr(cfg, section).ca_file
        if ca_file and not os.path.exists(ca_file):
            raise ConfigError(
                f"{section}.ca_file {ca_file} does not exist on this Spark executor",
                hint="ship it to the same path on every node (or leave ca_file unset to use "
                "the system trust store, which holds the Amazon root CAs)",
            )
    return cfg


def check_for_spark(cfg: Config) -> None:
    """Refuse settings a Spark run cannot honour, before any task starts."""
    if cfg.dead_letter != DEAD_LETTER_INDEX:
        raise ConfigError(
            f"dead_letter = {cfg.dead_letter!r} would write a file on each executor's own disk, "
            "where rejected documents are lost with the executor",
            hint=f'set dead_letter = "{DEAD_LETTER_INDEX}" (the <alias>-deadletter index) '
            "for Spark runs",
        )


def _with_secrets(cfg: Config, value: Any) -> Config:
    sections: dict[str, Any] = {}
    for section in _SECTIONS:
        settings = getattr(cfg, section)
        secrets = {
            f.name: value(section, f.name)
            for f in dataclasses.fields(settings)
            if f.name in SECRET_KEYS
        }
        sections[section] = dataclasses.replace(settings, **secrets)
    return dataclasses.replace(cfg, **sections)
