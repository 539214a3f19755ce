"""`make demo`: ks2os end to end on the local stack, narrated for a newcomer.

Starts keyspaces_local (a local Amazon Keyspaces with CDC streams) and
osmem-server (an OpenSearch-compatible server), creates a sample table with
CDC, loads it with `ks2os backfill`, starts `ks2os follow`, then makes
inserts, an update, a delete and a TTL write in Keyspaces and shows each one
arriving in search. Everything it starts, it stops.
"""

from __future__ import annotations

import datetime
import decimal
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from opensearchpy import OpenSearch
from osmem_server import OsmemServer

from keyspaces_local.server import EmulatorProcess

ROOT = Path(__file__).resolve().parent.parent
MAPPING = ROOT / "mappings" / "example.toml"
ALIAS = "demo-products"
PRODUCTS = 200
WAIT_S = 20.0

TABLE = """
CREATE TABLE demo.products (
    shop text,
    region text,
    sku uuid,
    banner text STATIC,
    name text,
    stock int,
    views bigint,
    price decimal,
    rating double,
    active boolean,
    updated_at timestamp,
    launched_on date,
    tags set<text>,
    stock_by_size map<text, int>,
    images list<text>,
    PRIMARY KEY ((shop, region), sku)
) WITH cdc = true
  AND CUSTOM_PROPERTIES = {
    'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'},
    'ttl': {'status': 'enabled'}
  }
"""

INSERT = (
    "INSERT INTO demo.products (shop, region, sku, name, stock, views, price, rating, active, "
    "updated_at, launched_on, tags, stock_by_size, images) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def say(text: str) -> None:
    print(text, flush=True)


def sku(n: int) -> uuid.UUID:
    return uuid.uuid5(uuid.NAMESPACE_URL, f"demo-sku-{n}")


def where(n: int) -> str:
    """The WHERE clause naming product n's primary key."""
    shop, region = key_of(n)
    return f"WHERE shop = '{shop}' AND region = '{region}' AND sku = {sku(n)}"


def key_of(n: int) -> tuple[str, str]:
    return ("north", "south")[n % 2], ("eu", "us", "apac")[n % 3]


def product(n: int) -> tuple[Any, ...]:
    shop, region = key_of(n)
    kind = ("lamp", "desk", "chair")[n % 3]
    return (
        shop,
        region,
        sku(n),
        f"{kind} model {n}",
        n % 40,
        n * 17,
        decimal.Decimal(f"{10 + n % 90}.{n % 100:02d}"),
        3.5 + (n % 15) / 10,
        n % 7 != 0,
        datetime.datetime(2024, 1, 1) + datetime.timedelta(hours=n),
        datetime.date(2025, 1, 1) + datetime.timedelta(days=n % 365),
        {"new"} if n % 5 == 0 else {"classic", f"batch-{n % 4}"},
        {"S": n % 4, "M": n % 6},
        [f"img/{n}/front.jpg", f"img/{n}/side.jpg"],
    )


def connect(port: int) -> tuple[Cluster, Session]:
    # LOCAL_QUORUM: the only consistency level Keyspaces accepts for writes.
    profile = ExecutionProfile(consistency_level=ConsistencyLevel.LOCAL_QUORUM)
    cluster = Cluster(
        ["127.0.0.1"],
        port=port,
        protocol_version=4,
        execution_profiles={EXEC_PROFILE_DEFAULT: profile},
    )
    return cluster, cluster.connect()


def write_config(workdir: Path, cql_port: int, streams_url: str, search_url: str) -> Path:
    path = workdir / "ks2os.toml"
    path.write_text(
        f'mapping = "{MAPPING}"\n'
        "[keyspaces]\n"
        'contact_points = ["127.0.0.1"]\n'
        f"port = {cql_port}\n"
        'auth = "none"          # the local emulator; on AWS: "sigv4"\n'
        "tls = false           # the local emulator; on AWS TLS is on\n"
        f'streams_endpoint = "{streams_url}"\n'
        "[opensearch]\n"
        f'hosts = ["{search_url}"]\n'
        "[state]\n"
        "lease_seconds = 10\n"
    )
    return path


def ks2os(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sync", "--config", str(config), "--log-format", "text", *args]


def wait_for(what: str, check: Callable[[], bool]) -> float:
    """Poll search until `check` holds; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > WAIT_S:
            raise SystemExit(f"demo: gave up waiting {WAIT_S:.0f} s for: {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def hits(search: OpenSearch, query: dict[str, Any]) -> list[dict[str, Any]]:
    search.indices.refresh(index=ALIAS)
    found = search.search(index=ALIAS, body={"query": query, "size": 100})
    return [h["_source"] for h in found["hits"]["hits"]]


def by_sku(search: OpenSearch, n: int) -> list[dict[str, Any]]:
    return hits(search, {"term": {"sku": str(sku(n))}})


def run_changes(session: Session, search: OpenSearch) -> None:
    insert = session.prepare(INSERT)

    session.execute(insert, product(1001))
    took = wait_for("the new product", lambda: len(by_sku(search, 1001)) == 1)
    say(f"   INSERT product 1001              -> found in search after {took * 1000:.0f} ms")

    session.execute(f"UPDATE demo.products SET price = 7.5 {where(1001)}")
    took = wait_for(
        "the new price", lambda: [d.get("price") for d in by_sku(search, 1001)] == ["7.5"]
    )
    say(f"   UPDATE its price to 7.5          -> search shows 7.5 after {took * 1000:.0f} ms")

    session.execute(f"DELETE FROM demo.products {where(12)}")
    took = wait_for("product 12 to vanish", lambda: by_sku(search, 12) == [])
    say(f"   DELETE product 12                -> gone from search after {took * 1000:.0f} ms")

    session.execute(
        "UPDATE demo.products SET banner = 'Spring sale' WHERE shop = 'north' AND region = 'eu'"
    )
    partition = {"bool": {"filter": [{"term": {"shop": "north"}}, {"term": {"region": "eu"}}]}}
    rows = search.count(index=ALIAS, body={"query": partition})["count"]
    took = wait_for(
        "the static banner on every row of the partition",
        lambda: {d.get("banner") for d in hits(search, partition)} == {"Spring sale"},
    )
    say(
        f"   UPDATE a STATIC column (banner)  -> all {rows} rows of partition (north, eu) "
        f"show it after {took * 1000:.0f} ms"
    )

    session.execute(f"UPDATE demo.products USING TTL 3 SET name = 'flash sale' {where(2003)}")
    took = wait_for("the flash-sale product", lambda: len(by_sku(search, 2003)) == 1)
    say(f"   UPDATE ... USING TTL 3 (new row) -> found after {took * 1000:.0f} ms")
    took = wait_for("the expired product to vanish", lambda: by_sku(search, 2003) == [])
    say(f"   ... and it leaves search when its TTL runs out, {took:.1f} s later,")
    say("       without waiting for Keyspaces' late TTL record")


def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="ks2os-demo-"))
    say("ks2os demo: Amazon Keyspaces -> OpenSearch, on a local stack\n")
    say("1. Starting keyspaces_local (CQL + CDC streams) and osmem-server (OpenSearch API)")
    with (
        OsmemServer.start(japanese=False) as search_server,
        EmulatorProcess.start(ttl_record_delay_s=2.0) as keyspaces,
    ):
        say(
            f"   CQL on 127.0.0.1:{keyspaces.cql_port}, streams at {keyspaces.streams_url}, "
            f"OpenSearch at {search_server.url}"
        )
        cluster, session = connect(keyspaces.cql_port)
        search = OpenSearch(hosts=[search_server.url])
        try:
            return demo(workdir, keyspaces, search_server.url, session, search)
        finally:
            cluster.shutdown()


def demo(
    workdir: Path, keyspaces: EmulatorProcess, search_url: str, session: Session, search: OpenSearch
) -> int:
    say("\n2. Creating the table demo.products with CDC on, and filling it")
    session.execute("CREATE KEYSPACE demo WITH replication = {'class': 'SingleRegionStrategy'}")
    session.execute(TABLE)
    insert = session.prepare(INSERT)
    for sku in range(PRODUCTS):
        session.execute(insert, product(sku))
    say(f"   {PRODUCTS} products written")

    config = write_config(workdir, keyspaces.cql_port, keyspaces.streams_url, search_url)
    say(f"\n3. ks2os backfill  (config: {config})")
    subprocess.run(ks2os(config, "backfill"), check=True)
    search.indices.refresh(index=ALIAS)
    count = search.count(index=ALIAS)["count"]
    say(f"   the alias {ALIAS} now finds {count} products")
    (lamp,) = by_sku(search, 0)
    shown = {k: lamp[k] for k in ("shop", "region", "sku", "title", "price", "tags", "updated_at")}
    say(f"   e.g. {shown}")

    say("\n4. Starting ks2os follow in the background (it reads the CDC stream)")
    follower = subprocess.Popen(ks2os(config, "follow"), stdout=subprocess.DEVNULL)
    try:
        say("\n5. Changing rows in Keyspaces and watching search")
        run_changes(session, search)
    finally:
        say("\n6. Stopping the follower with SIGTERM: it flushes, checkpoints, exits")
        follower.send_signal(signal.SIGTERM)
        code = follower.wait(timeout=30)
        say(f"   follower exited with status {code}")
    say("\n7. Stopping the local stack. Done.")
    return 0 if code == 0 else 1


if __name__ == "__main__":
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")  # boto3 signs; the emulator checks nothing
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    sys.exit(main())
