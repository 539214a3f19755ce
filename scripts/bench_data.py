"""The benchmark's data: its table schema, deterministic rows and changes, and its files.

Every section of `scripts/bench.py` works on tables of one shape (about 300
bytes a row, the column types a real catalogue table has), so the figures of
one run are comparable. Rows are generated from a seed, so two runs write the
same data. The mapping and configuration files the jobs read are written here
too, into a scratch directory.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import random
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

KEYSPACE = "ks2os_bench"
ROWS_PER_PARTITION = 4

# (name, CQL type); the primary key is (("shop"), "sku").
COLUMNS: tuple[tuple[str, str], ...] = (
    ("shop", "text"),
    ("sku", "bigint"),
    ("name", "text"),
    ("qty", "int"),
    ("price", "decimal"),
    ("updated", "timestamp"),
    ("owner", "uuid"),
    ("tags", "set<text>"),
    ("stock", "map<text, int>"),
    ("note", "text"),
)
COLUMN_NAMES = tuple(name for name, _ in COLUMNS)

# What a row's fields become in OpenSearch (the mapping file's properties).
FIELDS: dict[str, dict[str, Any]] = {
    "shop": {"type": "keyword"},
    "sku": {"type": "long"},
    "name": {"type": "text"},
    "qty": {"type": "integer"},
    "price": {"type": "keyword"},
    "updated": {"type": "date"},
    "owner": {"type": "keyword"},
    "tags": {"type": "keyword"},
    "stock": {"type": "object", "dynamic": True},
    "note": {"type": "text"},
}

# Marks an updated row in the follower's backlog, so the final state can be checked.
UPDATED_QTY_FLOOR = 1_000_000

_WORDS = (
    *("alpine", "amber", "basalt", "birch", "cobalt", "copper", "delta", "ember", "fjord"),
    *("garnet", "harbor", "indigo", "juniper", "kestrel", "lagoon", "maple", "meadow"),
    *("nimbus", "onyx", "orchid", "pepper", "quartz", "raven", "saffron", "sierra", "tundra"),
    *("umber", "velvet", "willow", "yarrow", "zephyr"),
)
_EPOCH_2026 = dt.datetime(2026, 1, 1)


def q(identifier: str) -> str:
    """A CQL identifier, double-quoted."""
    return '"' + identifier.replace('"', '""') + '"'


def create_table_cql(table: str, *, cdc: bool) -> str:
    columns = ", ".join(f"{q(name)} {cql_type}" for name, cql_type in COLUMNS)
    key = f"PRIMARY KEY (({q('shop')}), {q('sku')})"
    cql = f"CREATE TABLE {q(KEYSPACE)}.{q(table)} ({columns}, {key})"
    if cdc:
        # Client-side timestamps stay off (the Keyspaces default).
        cql += (
            " WITH cdc = true AND CUSTOM_PROPERTIES = "
            "{'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
        )
    return cql


def insert_cql(table: str) -> str:
    names = ", ".join(q(name) for name in COLUMN_NAMES)
    marks = ", ".join("?" for _ in COLUMN_NAMES)
    return f"INSERT INTO {q(KEYSPACE)}.{q(table)} ({names}) VALUES ({marks})"


def update_cql(table: str) -> str:
    return (
        f"UPDATE {q(KEYSPACE)}.{q(table)} SET {q('qty')} = ?, {q('note')} = ? "
        f"WHERE {q('shop')} = ? AND {q('sku')} = ?"
    )


def delete_cql(table: str) -> str:
    return f"DELETE FROM {q(KEYSPACE)}.{q(table)} WHERE {q('shop')} = ? AND {q('sku')} = ?"


def shop_of(number: int, prefix: str = "shop") -> str:
    return f"{prefix}-{number // ROWS_PER_PARTITION:07d}"


def doc_id(shop: str, sku: int) -> str:
    """The document id ks2os gives the row (id columns' text forms, percent-encoded, `:`)."""
    return f"{quote(shop, safe='')}:{sku}"


def _sentence(rng: random.Random, length: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < length:
        words.append(rng.choice(_WORDS))
    return " ".join(words)


def row(number: int, prefix: str = "shop", seed: int = 7) -> tuple[Any, ...]:
    """Row `number` in column order: about 300 bytes of realistic values."""
    rng = random.Random(seed * 1_000_003 + number)
    return (
        shop_of(number, prefix),
        number,
        _sentence(rng, 32).title(),
        rng.randint(0, 5000),
        decimal.Decimal(rng.randint(100, 999_999)).scaleb(-2),
        _EPOCH_2026 + dt.timedelta(seconds=number, milliseconds=rng.randint(0, 999)),
        uuid.UUID(int=rng.getrandbits(128), version=4),
        {rng.choice(_WORDS) for _ in range(3)},
        {rng.choice(_WORDS): rng.randint(0, 500) for _ in range(3)},
        _sentence(rng, 120),
    )


def rows(count: int, prefix: str = "shop", start: int = 0) -> Iterator[tuple[Any, ...]]:
    for number in range(start, start + count):
        yield row(number, prefix)


@dataclass(frozen=True)
class Backlog:
    """A change history for the follower: inserts, then updates, then deletes.

    The phases are written one after another, so every key sees its changes in
    this order. `updates` and `deletes` are row numbers among the inserts.
    """

    inserts: int
    updates: tuple[int, ...]
    deletes: tuple[int, ...]

    @property
    def changes(self) -> int:
        return self.inserts + len(self.updates) + len(self.deletes)

    @property
    def live_rows(self) -> int:
        return self.inserts - len(self.deletes)

    @property
    def updated_live_rows(self) -> int:
        return len(set(self.updates) - set(self.deletes))


def plan_backlog(changes: int, seed: int = 11) -> Backlog:
    """About 60 % inserts, 30 % updates, 10 % deletes; every key changed at most once per phase."""
    inserts = max(int(changes * 0.6), 1)
    rng = random.Random(seed)
    numbers = list(range(inserts))
    updates = tuple(sorted(rng.sample(numbers, min(int(changes * 0.3), inserts))))
    deletes = tuple(sorted(rng.sample(numbers, min(changes - inserts - len(updates), inserts))))
    return Backlog(inserts, updates, deletes)


def update_params(number: int, prefix: str) -> tuple[Any, ...]:
    return (UPDATED_QTY_FLOOR + number, f"updated {number}", shop_of(number, prefix), number)


def key_params(number: int, prefix: str) -> tuple[Any, ...]:
    return (shop_of(number, prefix), number)


# ------------------------------------------------------------------ files


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Sequence):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")


def write_mapping(directory: Path, table: str, alias: str) -> Path:
    """A mapping file for one bench table into `alias`."""
    lines = [
        "[source]",
        f"keyspace = {_toml(KEYSPACE)}",
        f"table = {_toml(table)}",
        "",
        "[index]",
        f"alias = {_toml(alias)}",
        "",
        "[index.settings]",
        "number_of_shards = 1",
        "number_of_replicas = 0",
        "",
        "[index.mappings.properties]",
        *(f"{name} = {_toml(spec)}" for name, spec in FIELDS.items()),
        "",
        "[document]",
        'id = ["shop", "sku"]',
        "",
    ]
    path = directory / f"mapping-{alias}.toml"
    path.write_text("\n".join(lines))
    return path


def write_config(
    directory: Path,
    *,
    cql_host: str,
    cql_port: int,
    streams_url: str,
    opensearch_url: str,
    name: str = "ks2os.toml",
    extra: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A ks2os configuration for the local stack (no TLS, no auth); other keys at defaults,
    unless `extra` sets them (section -> key -> value)."""
    sections: dict[str, dict[str, Any]] = {
        "keyspaces": {
            "contact_points": [cql_host],
            "port": cql_port,
            "auth": "none",
            "tls": False,
            "streams_endpoint": streams_url,
        },
        "opensearch": {"hosts": [opensearch_url], "auth": "none"},
    }
    for section, values in (extra or {}).items():
        sections.setdefault(section, {}).update(values)
    lines: list[str] = []
    for section, values in sections.items():
        lines.append(f"[{section}]")
        lines += [f"{key} = {_toml(value)}" for key, value in values.items()]
        lines.append("")
    path = directory / name
    path.write_text("\n".join(lines))
    return path
