"""Static columns merged one by one, against a real osmem-server.

What a user relies on: a static record may name only the columns its write
touched, and static records of one partition may arrive out of order from
several shards; every row still shows, for each static column, the value of
the newest change that set or deleted it. A change older than a column's
stored one changes nothing, a static value's expiry travels with it, and a
dead-lettered row is hidden rather than shown in its older state.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opensearchpy import OpenSearch

from sync.deadletter import FileDeadLetters
from sync.documents import DocumentBuilder
from sync.indices import ensure_index
from sync.mapping import mapping_from_dict
from sync.model import Change, Op, StreamRead
from sync.schema import TableLayout
from sync.writer import BulkWriter, WriterSettings

TABLE = TableLayout(
    "demo",
    "racks",
    ("shop",),
    ("sku",),
    ("banner", "motto"),
    {"shop": "text", "sku": "text", "banner": "text", "motto": "text", "n": "int"},
)
STATICS = ("banner", "motto")
FAST = WriterSettings(initial_backoff=0.01, max_backoff=0.05, max_retry_seconds=10.0)
_names = itertools.count(1)


def position(version: int) -> StreamRead:
    return StreamRead("arn:test", "shardId-0001", f"{version:021d}", 1_700_000_000_000)


def statics(shop: str, version: int, **columns: str | None) -> Change:
    """A static-only record stating `columns` (None: deleted) and nothing about the others."""
    image: dict[str, Any] = {"shop": shop}
    image.update({name: value for name, value in columns.items() if value is not None})
    return Change(
        Op.UPSERT,
        (shop,),
        image,
        version,
        position(version),
        static_only=True,
        static_columns=frozenset(columns),
    )


def row(shop: str, sku: str, version: int, n: Any) -> Change:
    return Change(Op.UPSERT, (shop, sku), {"shop": shop, "sku": sku, "n": n}, version, position(1))


class Racks:
    def __init__(self, client: OpenSearch, tmp_path: Path) -> None:
        self.alias = f"racks{next(_names)}"
        mapping = mapping_from_dict(
            {
                "source": {"keyspace": "demo", "table": "racks"},
                "index": {
                    "alias": self.alias,
                    "mappings": {
                        "dynamic": "strict",
                        "properties": {
                            name: {"type": "integer" if name == "n" else "keyword"}
                            for name in ("shop", "sku", "banner", "motto", "n")
                        },
                    },
                },
                "document": {"routing": "partition"},
            },
            f"{self.alias}.toml",
        )
        self.client = client
        self.index = ensure_index(client, mapping)
        self.dead = FileDeadLetters(tmp_path / f"{self.alias}.ndjson")
        self.writer = BulkWriter(
            client, self.index, DocumentBuilder(mapping, TABLE), self.dead, FAST
        )

    def visible(self) -> dict[str, dict[str, Any]]:
        self.client.indices.refresh(index=self.alias)
        hits = self.client.search(index=self.alias, body={"size": 1000})["hits"]["hits"]
        return {h["_id"]: {k: v for k, v in h["_source"].items() if k != "_ks2os"} for h in hits}


def test_records_naming_different_columns_keep_each_others_values(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    racks = Racks(opensearch, tmp_path)
    racks.writer.write([row("a", "x", 10, 1)])
    racks.writer.write([statics("a", 20, banner="sale")])
    racks.writer.write([statics("a", 15, motto="older, other column")])  # late, from elsewhere
    assert racks.visible()["a:x"] == {
        "shop": "a",
        "sku": "x",
        "n": 1,
        "banner": "sale",
        "motto": "older, other column",
    }
    report = racks.writer.write([statics("a", 18, banner="older, same column")])
    assert (report.applied, report.stale) == (0, 1)
    racks.writer.write([statics("a", 30, motto=None)])  # motto deleted, banner untouched
    assert racks.visible()["a:x"] == {"shop": "a", "sku": "x", "n": 1, "banner": "sale"}


def test_a_static_values_expiry_reaches_the_rows_that_show_it(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    racks = Racks(opensearch, tmp_path)
    racks.writer.write([row("a", "x", 10, 1)])
    expiring = statics("a", 20, banner="flash")
    timed = Change(
        expiring.op,
        expiring.key,
        expiring.image,
        expiring.version,
        expiring.provenance,
        static_only=True,
        value_expiry={"banner": 4_000_000_000_000},
        static_columns=expiring.static_columns,
    )
    racks.writer.write([timed])
    opensearch.indices.refresh(index=racks.index)
    meta = opensearch.get(index=racks.index, id="a:x", routing="a")["_source"]["_ks2os"]
    assert meta["value_expiry"] == {"banner": 4_000_000_000_000}
    assert meta["value_expires_at"] == 4_000_000_000_000


def test_a_dead_lettered_row_is_hidden_rather_than_shown_in_its_older_state(
    opensearch: OpenSearch, tmp_path: Path
) -> None:
    racks = Racks(opensearch, tmp_path)
    racks.writer.write([row("a", "x", 10, 1), row("a", "y", 10, 2)])
    report = racks.writer.write([row("a", "x", 20, "not a number")])
    assert report.dead_lettered == 1
    assert set(racks.visible()) == {"a:y"}
    mark = opensearch.get(index=racks.index, id="a:x", routing="a")["_source"]["_ks2os"]
    assert mark["dead_letter"] is True and mark["version"] == 20
    racks.writer.write([row("a", "x", 15, 3)])  # an older change does not bring it back
    assert set(racks.visible()) == {"a:y"}
    racks.writer.write([row("a", "x", 30, 4)])  # a newer one replaces the mark
    assert racks.visible()["a:x"]["n"] == 4


_statement = st.tuples(
    st.sampled_from(["a", "b"]),
    st.dictionaries(
        st.sampled_from(STATICS), st.one_of(st.none(), st.sampled_from(["p", "q", "r"])), min_size=1
    ),
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(statements=st.lists(_statement, min_size=1, max_size=10), data=st.data())
def test_static_records_in_any_order_leave_each_column_at_its_newest_value(
    opensearch: OpenSearch,
    tmp_path: Path,
    statements: list[tuple[str, dict[str, str | None]]],
    data: Any,
) -> None:
    versions = data.draw(
        st.lists(
            st.integers(2, 10_000), min_size=len(statements), max_size=len(statements), unique=True
        )
    )
    changes = [
        statics(shop, version, **columns)
        for (shop, columns), version in zip(statements, versions, strict=True)
    ]
    delivery = data.draw(
        st.lists(st.sampled_from(changes), max_size=len(changes))
        .map(lambda extra: extra + changes)
        .flatmap(st.permutations)
    )
    cuts = sorted(data.draw(st.sets(st.integers(0, len(delivery)), max_size=3)))
    racks = Racks(opensearch, tmp_path)
    racks.writer.write([row("a", "x", 1, 1), row("b", "x", 1, 2)])
    for start, end in itertools.pairwise([0, *cuts, len(delivery)]):
        if start < end:
            racks.writer.write(delivery[start:end])
    # The model: per partition and column, the value of the newest change naming it.
    newest: dict[tuple[str, str], tuple[int, str | None]] = {}
    for (shop, columns), version in zip(statements, versions, strict=True):
        for column, value in columns.items():
            if version > newest.get((shop, column), (0, None))[0]:
                newest[(shop, column)] = (version, value)
    expected = {}
    for shop, n in (("a", 1), ("b", 2)):
        doc: dict[str, Any] = {"shop": shop, "sku": "x", "n": n}
        for column in STATICS:
            value = newest.get((shop, column), (0, None))[1]
            if value is not None:
                doc[column] = value
        expected[f"{shop}:x"] = doc
    assert racks.visible() == expected
