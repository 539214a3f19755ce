"""Which tables a run syncs: the mapping files the configuration names, read and checked as a set.

`mapping = "FILE"` names one table; `mappings = [...]` several, each entry a
mapping file, a directory (every `*.toml` directly in it) or a glob pattern
(`mappings/*.toml`), all relative to the config file (`sync.config`). A file
named twice (by a pattern and by name) counts once; an entry that names no
file is an error. The set is refused, one line naming both files, when two
mappings share a table (the state index keeps a table's checkpoints,
backfill runs and leases under its name, so they would share them) or an
alias (two tables in one index overwrite each other's documents). Several
tables with a dead-letter *file* are refused too: its entries do not say
which table they came from (`dead_letter = "index"` keeps one
`<alias>-deadletter` per table).

`select_tables` is what every command taking tables calls: `--mapping FILE`
(that file alone, as before) or the config's mappings, narrowed by `--table
KEYSPACE.TABLE` or `--table ALIAS` to one. An unknown name is one line
listing the known ones.

This module reads files only; it imports the config, the mapping format and
the errors, never a client.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from pathlib import Path

from sync.config import DEAD_LETTER_INDEX, Config
from sync.errors import ConfigError
from sync.mapping import TableMapping, load_mapping

_GLOB_CHARS = frozenset("*?[")
NO_MAPPING_HINT = (
    'pass --mapping FILE, or set mapping = "FILE" (one table) or mappings = ["FILE", '
    '"DIR", "GLOB", ...] (several) in the config'
)


def table_name(mapping: TableMapping) -> str:
    """The table as ks2os names it everywhere (logs, metrics, state): KEYSPACE.TABLE."""
    return f"{mapping.keyspace}.{mapping.table}"


def mapping_paths(cfg: Config) -> list[str]:
    """The mapping files `cfg` names, in order: `mapping`, or `mappings` expanded."""
    if cfg.mapping:
        return [cfg.mapping]
    paths: list[str] = []
    seen: set[str] = set()
    for i, entry in enumerate(cfg.mappings):
        for path in _expand(entry, f"mappings[{i}]"):
            real = os.path.realpath(path)
            if real not in seen:
                seen.add(real)
                paths.append(path)
    return paths


def _expand(entry: str, key: str) -> list[str]:
    """One `mappings` entry as files: a pattern's matches, a directory's *.toml, or itself."""
    if _GLOB_CHARS & set(entry):
        found = sorted(p for p in glob.glob(entry) if os.path.isfile(p))
        what = "matches no file"
    elif os.path.isdir(entry):
        found = sorted(str(p) for p in Path(entry).glob("*.toml") if p.is_file())
        what = "is a directory without *.toml files"
    else:
        return [entry]  # a missing file is load_mapping's to report, naming it
    if not found:
        raise ConfigError(
            f"{key} = {entry!r} {what}",
            hint="paths in the config file are relative to its directory; a directory "
            "stands for every *.toml directly in it",
        )
    return found


def load_tables(paths: Sequence[str]) -> list[TableMapping]:
    """Every mapping file read and validated, then checked as a set (`check_distinct`)."""
    mappings = [load_mapping(path) for path in paths]
    check_distinct(mappings)
    return mappings


def check_distinct(mappings: Sequence[TableMapping]) -> None:
    """Each table once and each alias once, or one line naming both files."""
    by_table: dict[str, TableMapping] = {}
    by_alias: dict[str, TableMapping] = {}
    for mapping in mappings:
        name = table_name(mapping)
        first = by_table.setdefault(name, mapping)
        if first is not mapping:
            raise ConfigError(
                f"{first.path} and {mapping.path} both map the table {name}",
                hint="keep one of them: the state index keeps a table's checkpoints, backfill "
                "runs and leases under its name, so two mappings of it would share them",
            )
        first = by_alias.setdefault(mapping.alias, mapping)
        if first is not mapping:
            raise ConfigError(
                f"{first.path} and {mapping.path} both map onto the alias {mapping.alias}",
                hint="give each table an index.alias of its own: two tables in one index "
                "would overwrite each other's documents",
            )


def pick(mappings: Sequence[TableMapping], name: str) -> TableMapping:
    """The mapping of table `name` (KEYSPACE.TABLE, else an alias), or one line listing them."""
    for matches in (
        [m for m in mappings if table_name(m) == name],
        [m for m in mappings if m.alias == name],
    ):
        if matches:
            return matches[0]
    raise ConfigError(
        f"no table {name!r} among the mappings", hint=f"--table takes one of: {known(mappings)}"
    )


def known(mappings: Sequence[TableMapping]) -> str:
    """The tables and their aliases, for a message: `shop.orders (alias shop-orders), ...`."""
    return ", ".join(f"{table_name(m)} (alias {m.alias})" for m in mappings) or "none"


def select_tables(
    cfg: Config, *, mapping: str | None = None, table: str | None = None
) -> list[TableMapping]:
    """The tables a command runs on: `mapping` (a --mapping FILE) or the config's, then `table`.

    Raises `ConfigError` when no mapping is named, a file or the set is
    wrong, `table` is unknown, or several tables would share a dead-letter file.
    """
    paths = [mapping] if mapping else mapping_paths(cfg)
    if not paths:
        raise ConfigError("no mapping file given", hint=NO_MAPPING_HINT)
    mappings = load_tables(paths)
    chosen = [pick(mappings, table)] if table else mappings
    if len(chosen) > 1 and cfg.dead_letter != DEAD_LETTER_INDEX:
        raise ConfigError(
            f"dead_letter = {cfg.dead_letter!r} is one file for {len(chosen)} tables, and its "
            "entries do not say which table they came from",
            hint='set dead_letter = "index" (one <alias>-deadletter index per table), or run '
            "one table per process with --table",
        )
    return chosen


def only_table(mappings: Sequence[TableMapping], command: str) -> TableMapping:
    """The one table of a command that takes one, or one line asking for --table."""
    if len(mappings) == 1:
        return mappings[0]
    raise ConfigError(
        f"{command} takes one table, and the config names {len(mappings)}",
        hint=f"pass --table with one of: {known(mappings)}",
    )
