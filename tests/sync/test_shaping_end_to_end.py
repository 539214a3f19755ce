"""Shaped mappings end to end: filters, computed fields and hooks through backfill and follow.

Rows are written with cassandra-driver into keyspaces_local, loaded by
`run_backfill`, then kept by `run_follow`; searches go through the alias of
an osmem index. What they find is compared with the independent
last-write-wins model (`tests/lww_model.py`), filtered by a predicate written
here in plain Python, and with the bodies docs/mapping.md documents.
Mistakes in shaping keys are one line and exit 2 through the real CLI.
"""

from __future__ import annotations

import dataclasses
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cassandra.cluster import Session
from opensearchpy import OpenSearch

from sync.config import Config
from sync.jobs.backfill import run_backfill
from sync.jobs.follow import FollowSummary, run_follow
from sync.mapping import TableMapping, load_mapping
from tests.conftest import SOAK_FULL, table_options
from tests.lww_model import LwwTable
from tests.sync import every_type

OPERATIONS_BEFORE_BACKFILL = 600 if SOAK_FULL else 80
ROUNDS = 20 if SOAK_FULL else 5
OPS_PER_ROUND = 100 if SOAK_FULL else 50
PARTITIONS, ROWS = 4, 5
CATCH_UP_S = 60.0

FILTER = """
[document.filter]
or = [
  { and = [{ column = "b", gte = 500 }, { not = { column = "a", is_null = true } }] },
  { and = [
    { column = "a", in = ["a1", "a2", "a3"] },
    { not = { column = "tags", contains = "t1" } },
  ] },
]

[document.computed]
label = { concat = ["a", "b"], separator = "-" }
"""


def wanted(row: dict[str, Any]) -> bool:
    """FILTER, said again in Python over the model's rows."""
    a, b, tags = row.get("a"), row.get("b"), row.get("tags") or set()
    return (b is not None and b >= 500 and a is not None) or (
        a in {"a1", "a2", "a3"} and "t1" not in tags
    )


def label(row: dict[str, Any]) -> str | None:
    parts = [str(row[column]) for column in ("a", "b") if row.get(column) is not None]
    return "-".join(parts) if parts else None


# ---- helpers ---------------------------------------------------------------------------


def write_mapping(tmp_path: Path, keyspace: str, table: str, extra: str, properties: str) -> Path:
    path = tmp_path / f"{table}.toml"
    path.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "{table}"\n'
        f'[index]\nalias = "{keyspace.lower()}-{table}"\n'
        f"[index.mappings.properties]\n{properties}\n{extra}"
    )
    return path


def indexed(search: OpenSearch, alias: str) -> dict[Any, dict[str, Any]]:
    """What searches find through the alias: key -> source (without `_ks2os`)."""
    search.indices.refresh(index=alias)
    found = search.search(index=alias, body={"query": {"match_all": {}}, "size": 10_000})
    docs = {}
    for hit in found["hits"]["hits"]:
        doc = {k: v for k, v in hit["_source"].items() if k != "_ks2os"}
        if "tags" in doc:
            doc["tags"] = sorted(doc["tags"])
        docs[hit["_id"]] = doc
    return docs


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Poll an observable condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


@contextmanager
def following(cfg: Config, mapping: TableMapping) -> Iterator[list[FollowSummary]]:
    """`run_follow` in a thread; stopped (cleanly) when the block ends."""
    stop = threading.Event()
    result: list[FollowSummary] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(run_follow(cfg, mapping, stop=stop))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    try:
        yield result
    finally:
        stop.set()
        thread.join(timeout=60)
        assert not thread.is_alive(), "run_follow did not return after stop"
    if errors:
        raise errors[0]


def difference(got: dict[Any, Any], want: dict[Any, Any]) -> str:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    wrong = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    sample = [(k, got[k], want[k]) for k in wrong[:3]]
    return f"missing {missing}, extra {extra}, stale {len(wrong)}: {sample}"


# ---- a filter under random updates ----------------------------------------------------


class Workload:
    """Random writes to `items`, applied over CQL and to the model alike.

    Values are drawn so that rows often cross the filter's boundaries: `b`
    around 500, `a` among a few values (some in the filter's list, some not,
    sometimes deleted), `t1` added to and removed from `tags`.
    """

    def __init__(
        self, session: Session, keyspace: str, statics: bool, client_timestamps: bool, seed: int
    ) -> None:
        self.session = session
        self.table = f'"{keyspace}"."items"'
        self.statics = statics
        self.client_timestamps = client_timestamps
        self.rng = random.Random(seed)
        self.model = LwwTable(
            partition=("p",),
            clustering=("c",),
            statics=frozenset({"s"}) if statics else frozenset(),
            sets=frozenset({"tags"}),
        )
        self.server_ts = 0
        self.flips_out = 0  # a visible row that stopped matching
        self.flips_in = 0  # a visible row that started matching
        self._matching = self._now_matching()

    def _using(self) -> tuple[str, int]:
        if not self.client_timestamps:
            self.server_ts += 1  # the server orders writes as they come
            return "", self.server_ts
        # Out of order on purpose, within Keyspaces' window.
        ts = int(time.time() * 1_000_000) - self.rng.randrange(0, 30_000_000)
        return f" USING TIMESTAMP {ts}", ts

    def step(self) -> None:
        rng = self.rng
        p, c = rng.randrange(PARTITIONS), rng.randrange(ROWS)
        key, where = (p, c), f"WHERE p = {p} AND c = {c}"
        using, ts = self._using()
        roll = rng.random()
        if roll < 0.25:
            a, b = f"a{rng.randrange(6)}", rng.randrange(1000)
            tags = {f"t{rng.randrange(3)}" for _ in range(rng.randrange(3))}
            tag_text = "{" + ", ".join(f"'{t}'" for t in sorted(tags)) + "}"
            self.session.execute(
                f"INSERT INTO {self.table} (p, c, a, b, tags) "
                f"VALUES ({p}, {c}, '{a}', {b}, {tag_text}){using}"
            )
            self.model.insert(key, {"a": a, "b": b, "tags": tags}, ts=ts)
        elif roll < 0.45:
            b = rng.randrange(1000)
            self.session.execute(f"UPDATE {self.table}{using} SET b = {b} {where}")
            self.model.update(key, {"b": b}, ts=ts)
        elif roll < 0.55:
            a = f"a{rng.randrange(6)}"
            self.session.execute(f"UPDATE {self.table}{using} SET a = '{a}' {where}")
            self.model.update(key, {"a": a}, ts=ts)
        elif roll < 0.62:
            self.session.execute(f"DELETE a FROM {self.table}{using} {where}")
            self.model.delete_columns(key, ["a"], ts=ts)
        elif roll < 0.70:
            self.session.execute(f"DELETE FROM {self.table}{using} {where}")
            self.model.delete_row(key, ts=ts)
        elif roll < 0.85 or not self.statics:
            op = rng.choice(["+", "-"])
            tag = "t1" if rng.random() < 0.7 else f"t{rng.randrange(3)}"
            self.session.execute(
                f"UPDATE {self.table}{using} SET tags = tags {op} {{'{tag}'}} {where}"
            )
            (self.model.set_add if op == "+" else self.model.set_remove)(key, "tags", [tag], ts=ts)
        else:
            s = f"s{rng.randrange(100)}"
            self.session.execute(f"UPDATE {self.table}{using} SET s = '{s}' WHERE p = {p}")
            self.model.update_static((p,), {"s": s}, ts=ts)
        self._count_flips()

    def _now_matching(self) -> dict[tuple[int, int], bool]:
        return {key: wanted(row) for key, row in self.model.visible().items()}

    def _count_flips(self) -> None:
        now = self._now_matching()
        for key, matching in now.items():
            before = self._matching.get(key)
            if before is True and not matching:
                self.flips_out += 1
            elif before is False and matching:
                self.flips_in += 1
        self._matching = now

    def expected(self) -> dict[str, dict[str, Any]]:
        """The filtered table, as documents: id "p:c" -> fields."""
        docs = {}
        for (p, c), row in self.model.visible().items():
            if not wanted(row):
                continue
            doc = {k: sorted(v) if isinstance(v, set) else v for k, v in row.items()}
            computed = label(row)
            if computed is not None:
                doc["label"] = computed
            docs[f"{p}:{c}"] = doc
        return docs


@pytest.mark.slow
@pytest.mark.parametrize("statics", [False, True], ids=["rows", "with-statics"])
def test_a_filter_flips_rows_in_and_out_and_the_alias_always_equals_the_filtered_table(
    cql: Session,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
    client_timestamps: bool,
    statics: bool,
) -> None:
    static_column = ", s text STATIC" if statics else ""
    cql.execute(
        f'CREATE TABLE "{keyspace}"."items" (p int, c int, a text, b int, tags set<text>'
        f"{static_column}, PRIMARY KEY (p, c))"
        + table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=client_timestamps)
    )
    properties = (
        'p = { type = "integer" }\nc = { type = "integer" }\na = { type = "keyword" }\n'
        'b = { type = "integer" }\ntags = { type = "keyword" }\nlabel = { type = "keyword" }\n'
        + ('s = { type = "keyword" }\n' if statics else "")
    )
    path = write_mapping(tmp_path, keyspace, "items", FILTER, properties)
    mapping = load_mapping(path)
    cfg = make_config(str(path), backfill={"workers": 2, "ranges": 8})
    seed = (1 if client_timestamps else 2) * 1000 + (1 if statics else 0)
    work = Workload(cql, keyspace, statics, client_timestamps, seed)

    for _ in range(OPERATIONS_BEFORE_BACKFILL):
        work.step()
    summary = run_backfill(cfg, mapping)
    assert summary.complete and summary.dead_lettered == 0
    # Nothing was written since the scan: the backfill alone must give the filtered table.
    assert indexed(opensearch, mapping.alias) == work.expected(), difference(
        indexed(opensearch, mapping.alias), work.expected()
    )

    with following(cfg, mapping) as followed:
        for _ in range(ROUNDS):
            for _ in range(OPS_PER_ROUND):
                work.step()
            caught_up = wait_until(
                lambda: indexed(opensearch, mapping.alias) == work.expected(), CATCH_UP_S
            )
            assert caught_up, difference(indexed(opensearch, mapping.alias), work.expected())
    assert followed[0].dead_lettered == 0
    # The run must have exercised what it claims to.
    assert work.flips_out >= 3 and work.flips_in >= 3, (work.flips_out, work.flips_in)


# ---- every CQL type through the scan and the stream -----------------------------------


def test_computed_fields_and_a_hook_give_the_documented_bodies_for_every_cql_type(
    cql: Session,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    for statement in every_type.create_statements(keyspace):
        cql.execute(statement)
    insert = cql.prepare(every_type.insert_statement(keyspace))
    cql.execute(insert, every_type.written(1))
    path = tmp_path / "every.toml"
    path.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "every"\n'
        f'[index]\nalias = "{keyspace.lower()}-every"\n'
        "[index.mappings]\ndynamic = false\n"  # the bodies are compared, not searched
        f'[document]\nhook = "{every_type.HOOK}"\n'
    )
    with path.open("a") as handle:
        handle.write("[document.computed]\n")
        for name, spec in every_type.COMPUTED.items():
            handle.write(f"{name} = {_toml_inline(spec)}\n")
    mapping = load_mapping(path)
    cfg = make_config(str(path))

    summary = run_backfill(cfg, mapping)
    assert summary.written == 1 and summary.dead_lettered == 0
    scanned = _sources(opensearch, mapping.alias)
    assert scanned == {"1": ("scan", every_type.expected_body(1))}

    with following(cfg, mapping):
        cql.execute(insert, every_type.written(2))
        # The follower reads the stream from its start: row 1's insert comes again, from it.
        streamed = {
            "1": ("stream", every_type.expected_body(1)),
            "2": ("stream", every_type.expected_body(2)),
        }
        assert wait_until(lambda: _sources(opensearch, mapping.alias) == streamed, CATCH_UP_S), (
            _body_difference(_sources(opensearch, mapping.alias), streamed)
        )


def _body_difference(got: dict[str, Any], want: dict[str, Any]) -> str:
    if set(got) != set(want):
        return f"documents {sorted(got)}, expected {sorted(want)}"
    wrong = []
    for doc_id, (kind, body) in want.items():
        got_kind, got_body = got[doc_id]
        fields = sorted(f for f in set(body) | set(got_body) if body.get(f) != got_body.get(f))
        wrong += [f"{doc_id}.{f}: {got_body.get(f)!r} != {body.get(f)!r}" for f in fields]
        if got_kind != kind:
            wrong.append(f"{doc_id} from {got_kind}")
    return "; ".join(wrong)


def _sources(search: OpenSearch, alias: str) -> dict[str, tuple[str, dict[str, Any]]]:
    search.indices.refresh(index=alias)
    found = search.search(index=alias, body={"query": {"match_all": {}}, "size": 100})
    return {
        hit["_id"]: (hit["_source"]["_ks2os"]["source"], every_type.without_meta(hit["_source"]))
        for hit in found["hits"]["hits"]
    }


def _toml_inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_inline(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value).lower() if isinstance(value, bool) else str(value)


# ---- a hook that raises ----------------------------------------------------------------


@pytest.mark.parametrize("statics", [False, True], ids=["rows", "with-statics"])
def test_a_hook_that_raises_dead_letters_exactly_its_change(
    cql: Session,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
    statics: bool,
) -> None:
    static_column = ", s text STATIC" if statics else ""
    cql.execute(
        f'CREATE TABLE "{keyspace}"."items" (p int, c int, a text, b int{static_column}, '
        "PRIMARY KEY (p, c))"
        + table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=False)
    )
    for c in range(1, 6):
        a = "boom" if c == 3 else "ok"
        cql.execute(f'INSERT INTO "{keyspace}"."items" (p, c, a, b) VALUES (1, {c}, \'{a}\', {c})')
    path = write_mapping(
        tmp_path,
        keyspace,
        "items",
        '[document]\nhook = "tests.sync.shaping_hooks:boom_on_a"\n',
        'a = { type = "keyword" }\n',
    )
    mapping = load_mapping(path)
    cfg = make_config(str(path))
    dead_index = f"{mapping.alias}-deadletter"
    reason = (
        "document could not be built: hook tests.sync.shaping_hooks:boom_on_a raised "
        "RuntimeError: cannot shape row 1/{c}: bad a"
    )

    summary = run_backfill(cfg, mapping)
    assert (summary.written, summary.dead_lettered) == (4, 1)
    assert set(indexed(opensearch, mapping.alias)) == {"1:1", "1:2", "1:4", "1:5"}
    assert _dead_letters(opensearch, dead_index) == [("1:3", "scan", reason.format(c=3))]

    with following(cfg, mapping):
        cql.execute(f'UPDATE "{keyspace}"."items" SET a = \'boom\' WHERE p = 1 AND c = 2')
        cql.execute(f'UPDATE "{keyspace}"."items" SET b = 40 WHERE p = 1 AND c = 4')
        # From the stream: row 3's insert again, and row 2's update; nothing else.
        expected = sorted(
            [
                ("1:3", "scan", reason.format(c=3)),
                ("1:3", "stream", reason.format(c=3)),
                ("1:2", "stream", reason.format(c=2)),
            ]
        )
        assert wait_until(
            lambda: indexed(opensearch, mapping.alias).get("1:4", {}).get("b") == 40, CATCH_UP_S
        )
        assert wait_until(lambda: _dead_letters(opensearch, dead_index) == expected, CATCH_UP_S), (
            _dead_letters(opensearch, dead_index)
        )
    docs = indexed(opensearch, mapping.alias)
    assert set(docs) == {"1:1", "1:2", "1:4", "1:5"}
    assert docs["1:2"]["a"] == "ok"  # the failed change left the row's document as it was


def _dead_letters(search: OpenSearch, index: str) -> list[tuple[str, str, str]]:
    if not search.indices.exists(index=index):
        return []
    search.indices.refresh(index=index)
    found = search.search(index=index, body={"query": {"match_all": {}}, "size": 100})
    # By key: the static-table writer records no doc_id for a change it could not build.
    return sorted(
        (
            ":".join(str(part) for part in hit["_source"]["key"]),
            hit["_source"]["source"]["kind"],
            hit["_source"]["reason"],
        )
        for hit in found["hits"]["hits"]
    )


# ---- mistakes through the CLI ----------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        (
            '[document.filter]\ncolumn = "n"\ngt = "ten"\n',
            "document.filter.gt: 'ten' does not fit the column's type int: expected an integer",
        ),
        (
            '[document.filter]\ncolumn = "s"\neq = "x"\n',
            "document.filter.eq: 's' is a static column",
        ),
        (
            '[document.computed]\nwords = { split = "n" }\n',
            "document.computed.words.split: 'n' is of type int: split takes a text column",
        ),
        (
            '[document]\nhook = "ks2os_no_such_hooks:shape"\n',
            "document.hook: cannot import 'ks2os_no_such_hooks'",
        ),
        (
            '[document]\nhook = "hooks_beside:absent"\n',
            "document.hook: 'hooks_beside' has no attribute 'absent'",
        ),
    ],
)
def test_a_shaping_mistake_is_one_line_and_exit_2_before_any_index_exists(
    cql: Session,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
    document: str,
    expected: str,
) -> None:
    cql.execute(
        f'CREATE TABLE "{keyspace}"."t" (p int, c int, n int, s text STATIC, PRIMARY KEY (p, c))'
        + table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=False)
    )
    (tmp_path / "hooks_beside.py").write_text("def shape(row, document):\n    return document\n")
    path = write_mapping(tmp_path, keyspace, "t", document, 'n = { type = "integer" }\n')
    make_config(str(path))
    for command in ("backfill", "follow"):
        result = subprocess.run(
            [sys.executable, "-m", "sync", "--config", str(tmp_path / "ks2os.toml"), command],
            cwd=tmp_path,
            env={
                "PATH": "/usr/bin:/bin",
                "AWS_ACCESS_KEY_ID": "test",
                "AWS_SECRET_ACCESS_KEY": "test",
                "AWS_DEFAULT_REGION": "us-east-1",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        lines = [line for line in result.stderr.splitlines() if line.startswith("ks2os:")]
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"ks2os: error: {path}: {expected}"), lines[0]
    assert not opensearch.indices.exists_alias(name=f"{keyspace.lower()}-t")


# ---- the README's shaped mapping, end to end ---------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
SHAPED_MAPPING = ROOT / "mappings" / "products-shaped.toml"
PRODUCTS = """
CREATE TABLE demo.products (
    shop text, region text, sku uuid, banner text STATIC, name text, stock int, views bigint,
    price decimal, rating double, active boolean, updated_at timestamp, launched_on date,
    tags set<text>, stock_by_size map<text, int>, images list<text>,
    PRIMARY KEY ((shop, region), sku))
"""
README_WRITES = [
    "INSERT INTO demo.products (shop, region, sku, name, stock, price, active, tags, updated_at)\n"
    "  VALUES ('north', 'eu', 5e2c9a6e-1b7d-4c1e-9a51-3f0e6f0c2a11, 'desk lamp', 3, 24.50, true,\n"
    "          {'new'}, '2024-03-31 23:30:00+0000');",
    "INSERT INTO demo.products (shop, region, sku, name, stock, price, active, tags, updated_at)\n"
    "  VALUES ('north', 'eu', 0f6b8d2c-7d1e-4a57-b2c4-6d0c9e1f3a22, 'floor lamp', 0, 89.00, true,\n"
    "          {'new'}, '2024-03-02 10:00:00+0000');",
    "UPDATE demo.products SET banner = 'Spring sale' WHERE shop = 'north' AND region = 'eu';",
]
DESK_LAMP = "north:eu:5e2c9a6e-1b7d-4c1e-9a51-3f0e6f0c2a11"
README_DOCUMENT = {
    "shop": "north",
    "region": "eu",
    "sku": "5e2c9a6e-1b7d-4c1e-9a51-3f0e6f0c2a11",
    "title": "desk lamp",
    "stock": 3,
    "price": "24.50",
    "tags": ["new"],
    "updated_at": "2024-03-31T23:30:00.000Z",
    "label": "north / eu / desk lamp",
    "month": "2024-04",
    "catalog": "spring-2024",
    "title_exact": "desk lamp",
    "words": ["desk", "lamp"],
    "price_band": "standard",
    "banner": "Spring sale",
}


def test_the_readmes_shaped_mapping_does_what_the_readme_says(
    cql: Session,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
) -> None:
    readme = (ROOT / "README.md").read_text()
    assert SHAPED_MAPPING.read_text().rstrip() in readme
    assert (ROOT / "mappings" / "products_hooks.py").read_text().rstrip() in readme
    for statement in README_WRITES:
        assert statement in readme
    assert json.dumps(README_DOCUMENT, indent=2, ensure_ascii=False) in readme

    def here(statement: str) -> str:
        return statement.replace("demo.products", f'"{keyspace}"."products"').rstrip(";")

    cql.execute(
        here(PRODUCTS) + table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=False)
    )
    for statement in README_WRITES:
        cql.execute(here(statement))
    # The file as it is, pointed at this test's keyspace (the hook is found beside it).
    mapping = dataclasses.replace(
        load_mapping(SHAPED_MAPPING), keyspace=keyspace, alias=f"{keyspace}-products-shop"
    )
    cfg = make_config()

    summary = run_backfill(cfg, mapping)
    assert summary.rows_read == 2 and summary.dead_lettered == 0
    assert indexed(opensearch, mapping.alias) == {DESK_LAMP: README_DOCUMENT}

    where = "WHERE shop = 'north' AND region = 'eu' AND sku = 5e2c9a6e-1b7d-4c1e-9a51-3f0e6f0c2a11"
    with following(cfg, mapping):
        cql.execute(here(f"UPDATE demo.products SET stock = 0 {where}"))
        assert wait_until(lambda: indexed(opensearch, mapping.alias) == {}, CATCH_UP_S)
        cql.execute(here(f"UPDATE demo.products SET stock = 5 {where}"))
        back = {DESK_LAMP: {**README_DOCUMENT, "stock": 5}}
        assert wait_until(lambda: indexed(opensearch, mapping.alias) == back, CATCH_UP_S), (
            difference(indexed(opensearch, mapping.alias), back)
        )
