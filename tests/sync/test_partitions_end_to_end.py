"""The partition shape end to end, in both Keyspaces timestamp modes, against the LWW model.

The same random workload as `test_end_to_end.py` (inserts, updates, column
and row deletes, set changes, static updates, TTL writes, out-of-order
`USING TIMESTAMP` where the table allows it) goes through cassandra-driver
into keyspaces_local. A backfill with pages of a few rows (so a partition's
rows span pages and bulk requests) is stopped and resumed (a range resumes
from the token it last recorded, which reads that partition again); a
`ks2os follow` process reads the stream, is SIGKILLed and restarted, while
shards split and merge. At the end the alias must show exactly the table
grouped by partition, as `tests/lww_model.py` says it is: one document per
partition with rows or statics, its statics at the top, its rows nested in
clustering order.

`make test` runs a bounded number of operations; `make soak` ten times more.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Session
from opensearchpy import NotFoundError, OpenSearch

from keyspaces_local.server import Emulator
from sync.config import load_config
from sync.jobs.backfill import run_backfill
from sync.mapping import load_mapping
from tests.conftest import SOAK_FULL
from tests.sync.test_end_to_end import Workload, follower, reshard, table_ddl, wait_until

OPERATIONS = 4800 if SOAK_FULL else 480
CATCH_UP_S = 90.0

# Resharding must not reach other modules' tests.
OWN_EMULATOR = {"shard_count": 3, "ttl_record_delay_s": 1.0}

MAPPING = """\
[source]
keyspace = "{keyspace}"
table = "items"

[index]
alias = "{alias}"

[index.mappings]
dynamic = "strict"

[index.mappings.properties]
p = {{ type = "integer" }}
s = {{ type = "keyword" }}

[index.mappings.properties.rows]
type = "nested"

[index.mappings.properties.rows.properties]
c = {{ type = "integer" }}
a = {{ type = "keyword" }}
b = {{ type = "integer" }}
tags = {{ type = "keyword" }}

[document]
shape = "partition"
"""


def write_files(tmp_path: Path, stack: Emulator, search_url: str, keyspace: str) -> Path:
    mapping = tmp_path / "items.toml"
    mapping.write_text(MAPPING.format(keyspace=keyspace, alias=f"{keyspace}-items"))
    config = tmp_path / "ks2os.toml"
    config.write_text(
        f'mapping = "{mapping}"\n'
        f'[keyspaces]\ncontact_points = ["127.0.0.1"]\nport = {stack.cql_port}\n'
        f'auth = "none"\ntls = false\nstreams_endpoint = "{stack.streams_url}"\n'
        f'[opensearch]\nhosts = ["{search_url}"]\n'
        "[state]\nlease_seconds = 3\n"
        # Pages and bulk requests of a few rows: a partition's rows span both.
        "[backfill]\nworkers = 2\nranges = 8\npage_size = 3\n"
        "[writer]\nmax_docs = 16\n"
    )
    return config


def expected_partitions(work: Workload) -> dict[int, dict[str, Any]]:
    """The model's table grouped by partition: what the alias must show."""
    now = time.time()
    documents: dict[int, dict[str, Any]] = {}
    for (p, _), row in sorted(work.expected().items()):
        document = documents.setdefault(p, {"p": p, "rows": []})
        document["rows"].append({k: v for k, v in row.items() if k not in ("p", "s")})
    for (p,), statics in work.model.visible_statics(now).items():
        documents.setdefault(p, {"p": p, "rows": []}).update(statics)
    return documents


def indexed_partitions(search: OpenSearch, alias: str) -> dict[int, dict[str, Any]]:
    search.indices.refresh(index=alias)
    found = search.search(index=alias, body={"query": {"match_all": {}}, "size": 10_000})
    documents = {}
    for hit in found["hits"]["hits"]:
        document = {k: v for k, v in hit["_source"].items() if k != "_ks2os"}
        for row in document["rows"]:
            if "tags" in row:
                row["tags"] = sorted(row["tags"])
        assert hit["_id"] == str(document["p"])  # the partition key is the id
        assert hit["_source"]["_ks2os"]["token"]  # verify reads partitions by token range
        documents[document["p"]] = document
    return documents


_keyspaces = iter(range(1, 1_000_000))


@pytest.mark.slow
def test_random_row_and_static_changes_end_as_the_table_grouped_by_partition(
    emulator: Emulator,
    cql: Session,
    osmem_clone: Any,
    tmp_path: Path,
    client_timestamps: bool,
) -> None:
    keyspace = f"part_{os.getpid()}_{next(_keyspaces)}"
    cql.execute(
        f"CREATE KEYSPACE \"{keyspace}\" WITH replication = {{'class': 'SingleRegionStrategy'}}"
    )
    cql.execute(table_ddl(keyspace, client_timestamps))
    config_path = write_files(tmp_path, emulator, osmem_clone.url, keyspace)
    cfg = load_config(config_path, env={})
    mapping = load_mapping(str(tmp_path / "items.toml"))
    search = OpenSearch(hosts=[osmem_clone.url])
    arn = emulator.store.latest_stream_arn(keyspace, "items")
    assert arn is not None
    rng = random.Random(2468 if client_timestamps else 8642)
    # Fewer, wider partitions than the row-shape test: more rows race inside one document.
    work = Workload(cql, keyspace, client_timestamps, rng.randrange(2**32), shape=(4, 12))

    for _ in range(OPERATIONS // 3):  # rows that exist before anything syncs
        work.step()
    errors: list[BaseException] = []
    stop_backfill = threading.Event()

    def backfill() -> None:
        try:
            first = run_backfill(cfg, mapping, stop=stop_backfill)
            if not first.complete:  # stopped: the same run resumes, re-reading partitions
                resumed = run_backfill(cfg, mapping)
                assert resumed.complete and resumed.run_id == first.run_id
            assert first.dead_lettered == 0
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def stop_once_partitions_land() -> None:
        """Stop the first backfill run once it wrote something, so the resumed run
        starts inside ranges it had begun (at the partition of the last token recorded)."""
        wait_until(lambda: _documents(search, mapping.alias) > 0, CATCH_UP_S)
        stop_backfill.set()

    backfiller = threading.Thread(target=backfill)
    stopper = threading.Thread(target=stop_once_partitions_land)
    follow = follower(config_path)
    backfiller.start()
    stopper.start()
    try:
        for _ in range(OPERATIONS // 3):  # racing the backfill's reads
            work.step()
        stopper.join()
        backfiller.join()
        assert not errors, errors
        # Only the follower can bring these: it is killed and shards change under it.
        for n in range(OPERATIONS // 3):
            work.step()
            if n % 40 == 20:
                reshard(emulator, arn, rng)
            if n % 50 == 35:
                follow.send_signal(signal.SIGKILL)  # no flush, no checkpoint, no lease release
                follow.wait()
                follow = follower(config_path)
        # The model is asked again at every poll: rows with a short TTL leave it as the
        # clock passes their expiry, and their partition's document once the TTL record lands.
        caught_up = wait_until(
            lambda: indexed_partitions(search, mapping.alias) == expected_partitions(work),
            CATCH_UP_S,
        )
        got, want = indexed_partitions(search, mapping.alias), expected_partitions(work)
        assert caught_up, _difference(got, want)
    finally:
        stop_backfill.set()
        backfiller.join()
        follow.send_signal(signal.SIGTERM)
        code = follow.wait(timeout=30)
    assert code == 0
    # Nothing went to the dead-letter store: every change found its partition's document.
    search.indices.refresh(index=f"{mapping.alias}-deadletter", ignore_unavailable=True)
    dead = search.count(index=f"{mapping.alias}-deadletter", ignore_unavailable=True)["count"]
    assert dead == 0


def _documents(search: OpenSearch, alias: str) -> int:
    """Documents in the alias's index so far (none before it exists)."""
    try:
        search.indices.refresh(index=alias)
        return int(search.count(index=alias)["count"])
    except NotFoundError:
        return 0


def _difference(got: dict[int, Any], want: dict[int, Any]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(p for p in set(got) & set(want) if got[p] != want[p])
    sample = [(p, got[p], want[p]) for p in wrong[:2]]
    return f"missing {missing}, extra {extra}, differing {wrong}: {sample}"


# ---- the README's partition mapping, end to end ---------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
BY_SHOP = ROOT / "mappings" / "products-by-shop.toml"
README_WRITES = [
    "INSERT INTO demo.products (shop, region, sku, name, stock, price, active)\n"
    "  VALUES ('north', 'eu', 5e2c9a6e-1b7d-4c1e-9a51-3f0e6f0c2a11, 'desk lamp', 3, 24.50, true);",
    "INSERT INTO demo.products (shop, region, sku, name, stock, price, active)\n"
    "  VALUES ('north', 'eu', 0f6b8d2c-7d1e-4a57-b2c4-6d0c9e1f3a22, 'floor lamp', 0, 89.00, true);",
    "INSERT INTO demo.products (shop, region, sku, name, stock, price, active)\n"
    "  VALUES ('north', 'eu', 9d1c2b3a-4e5f-4a6b-8c7d-0e1f2a3b4c5d, 'old lamp', 1, 5.00, false);",
    "UPDATE demo.products SET banner = 'Spring sale' WHERE shop = 'north' AND region = 'eu';",
]
README_SHOP = {
    "shop": "north",
    "region": "eu",
    "banner": "Spring sale",
    "products": [
        {
            "sku": "0f6b8d2c-7d1e-4a57-b2c4-6d0c9e1f3a22",
            "title": "floor lamp",
            "stock": 0,
            "price": "89.00",
            "words": ["floor", "lamp"],
        },
        {
            "sku": "5e2c9a6e-1b7d-4c1e-9a51-3f0e6f0c2a11",
            "title": "desk lamp",
            "stock": 3,
            "price": "24.50",
            "words": ["desk", "lamp"],
        },
    ],
}
# Shops with a lamp in stock: both conditions must hold in one product.
README_QUERY = {
    "query": {
        "nested": {
            "path": "products",
            "query": {
                "bool": {
                    "filter": [
                        {"match": {"products.title": "lamp"}},
                        {"range": {"products.stock": {"gt": 0}}},
                    ]
                }
            },
        }
    }
}
README_UPDATE = (
    "UPDATE demo.products SET stock = 0 WHERE shop = 'north' AND region = 'eu'\n"
    "  AND sku = 5e2c9a6e-1b7d-4c1e-9a51-3f0e6f0c2a11;"
)
PRODUCTS = """
CREATE TABLE demo.products (
    shop text, region text, sku uuid, banner text STATIC, name text, stock int, views bigint,
    price decimal, rating double, active boolean, updated_at timestamp, launched_on date,
    tags set<text>, stock_by_size map<text, int>, images list<text>,
    PRIMARY KEY ((shop, region), sku))
"""


def _shops(search: OpenSearch, alias: str, query: dict[str, Any] | None = None) -> list[Any]:
    search.indices.refresh(index=alias)
    body = query or {"query": {"match_all": {}}}
    hits = search.search(index=alias, body=body)["hits"]["hits"]
    return [{k: v for k, v in hit["_source"].items() if k != "_ks2os"} for hit in hits]


def test_the_readmes_partition_mapping_does_what_the_readme_says(
    cql: Session, keyspace: str, opensearch: OpenSearch, make_config: Any
) -> None:
    import dataclasses
    import json

    from sync.jobs.follow import run_follow
    from tests.conftest import table_options

    readme = (ROOT / "README.md").read_text()
    assert BY_SHOP.read_text().rstrip() in readme
    for statement in [*README_WRITES, README_UPDATE]:
        assert statement in readme
    assert json.dumps(README_SHOP, indent=2) in readme
    assert json.dumps(README_QUERY, indent=2) in readme

    def here(statement: str) -> str:
        return statement.replace("demo.products", f'"{keyspace}"."products"').rstrip(";")

    cql.execute(
        here(PRODUCTS) + table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=False)
    )
    for statement in README_WRITES:
        cql.execute(here(statement))
    mapping = dataclasses.replace(
        load_mapping(BY_SHOP), keyspace=keyspace, alias=f"{keyspace}-shops"
    )
    cfg = make_config()
    summary = run_backfill(cfg, mapping)
    assert summary.rows_read == 3 and summary.dead_lettered == 0
    assert _shops(opensearch, mapping.alias) == [README_SHOP]
    assert _shops(opensearch, mapping.alias, README_QUERY) == [README_SHOP]

    stop = threading.Event()
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            run_follow(cfg, mapping, stop=stop)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=follow)
    thread.start()
    try:
        cql.execute(here(README_UPDATE))
        no_lamp_in_stock = wait_until(
            lambda: _shops(opensearch, mapping.alias, README_QUERY) == [], CATCH_UP_S
        )
        assert no_lamp_in_stock
        assert _shops(opensearch, mapping.alias)[0]["products"][1]["stock"] == 0
    finally:
        stop.set()
        thread.join(timeout=60)
    assert errors == []


def test_a_job_refuses_the_partition_shape_for_a_table_without_clustering_columns(
    cql: Session, keyspace: str, opensearch: OpenSearch, make_config: Any
) -> None:
    from sync.errors import ConfigError
    from sync.mapping import mapping_from_dict

    cql.execute(f'CREATE TABLE "{keyspace}"."users" ("id" int PRIMARY KEY, "name" text)')
    mapping = mapping_from_dict(
        {
            "source": {"keyspace": keyspace, "table": "users"},
            "index": {
                "alias": f"{keyspace}-users",
                "mappings": {"properties": {"rows": {"type": "nested"}}},
            },
            "document": {"shape": "partition"},
        },
        "users.toml",
    )
    with pytest.raises(ConfigError, match=r"document\.shape: .* has no clustering columns"):
        run_backfill(make_config(), mapping)
    assert not opensearch.indices.exists_alias(name=f"{keyspace}-users")  # nothing was made
