"""Every row shows the statics its table holds: whatever static-only records hold, and after
partition deletes that send no record for their statics.

What users rely on (issue 10, items 9 and 9b):

- Whether Keyspaces' static-only records hold every static column or only the
  ones a write touched is not established; keyspaces_local makes either
  (`static_record_shape`). With either, a static column keeps its value until
  a change sets or deletes it, through backfill and follow.
- A whole-partition delete removes the partition's statics, and Keyspaces
  sends one record per deleted row and (as far as is documented) none for the
  statics. A row written into that partition later must not show the deleted
  statics; keyspaces_local leaves that record out with
  `partition_delete_statics=False`.

Each test compares every row's statics, as searches see them, with the table
as CQL reads it, in both timestamp modes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.config import Config
from sync.jobs.backfill import run_backfill
from sync.mapping import TableMapping, mapping_from_dict
from tests.sync.jobs.follow_helpers import following, indexed

PARTITIONS, ROWS = 4, 3


@pytest.fixture(params=["all", "touched"])
def static_record_shape(request: pytest.FixtureRequest, emulator: Any) -> Iterator[str]:
    """The shape of static-only records for one test; "all" (the default) again after."""
    shape = str(request.param)
    emulator.control.set_static_record_shape(shape)
    try:
        yield shape
    finally:
        emulator.control.set_static_record_shape("all")


@pytest.fixture
def no_statics_record_on_partition_delete(emulator: Any) -> Iterator[None]:
    """A partition delete yields only its rows' records (as the facts sheet infers)."""
    emulator.control.set_partition_delete_statics(False)
    try:
        yield
    finally:
        emulator.control.set_partition_delete_statics(True)


class Shelves:
    """A table with two static columns, written over CQL; the table itself is the truth."""

    def __init__(
        self,
        cql: Any,
        keyspace: str,
        client_timestamps: bool,
        seed: int,
        view_type: str = "NEW_AND_OLD_IMAGES",
    ) -> None:
        props = [f"'cdc_specification': {{'view_type': '{view_type}'}}"]
        if client_timestamps:
            props.append("'client_side_timestamps': {'status': 'enabled'}")
        self.name = f'"{keyspace}"."shelves"'
        cql.execute(
            f"CREATE TABLE {self.name} (k int, c int, n int, s1 text STATIC, s2 text STATIC, "
            "PRIMARY KEY (k, c)) WITH cdc = true AND CUSTOM_PROPERTIES = {" + ", ".join(props) + "}"
        )
        self.cql = cql
        self.rng = random.Random(seed)
        self.mapping: TableMapping = mapping_from_dict(
            {
                "source": {"keyspace": keyspace, "table": "shelves"},
                "index": {"alias": f"{keyspace.lower()}-shelves"},
                "document": {"routing": "partition"},
            }
        )

    def execute(self, statement: str) -> None:
        self.cql.execute(statement.replace("{t}", self.name))

    def fill(self) -> None:
        """Every partition gets rows and both statics."""
        for k in range(PARTITIONS):
            for c in range(ROWS):
                self.execute(f"INSERT INTO {{t}} (k, c, n) VALUES ({k}, {c}, {c})")
            self.execute(f"UPDATE {{t}} SET s1 = 'one{k}', s2 = 'two{k}' WHERE k = {k}")

    def touch_statics(self) -> None:
        """Set or delete one static column (or both) of one partition."""
        k = self.rng.randrange(PARTITIONS)
        value = f"v{self.rng.randrange(1000)}"
        roll = self.rng.random()
        if roll < 0.35:
            self.execute(f"UPDATE {{t}} SET s1 = '{value}' WHERE k = {k}")
        elif roll < 0.70:
            self.execute(f"UPDATE {{t}} SET s2 = '{value}' WHERE k = {k}")
        elif roll < 0.85:
            column = self.rng.choice(["s1", "s2"])
            self.execute(f"UPDATE {{t}} SET {column} = null WHERE k = {k}")
        else:
            self.execute(f"UPDATE {{t}} SET s1 = '{value}', s2 = '{value}' WHERE k = {k}")

    def touch_rows(self) -> None:
        k, c = self.rng.randrange(PARTITIONS), self.rng.randrange(ROWS)
        roll = self.rng.random()
        if roll < 0.6:
            self.execute(f"INSERT INTO {{t}} (k, c, n) VALUES ({k}, {c}, {self.rng.randrange(99)})")
        elif roll < 0.8:
            self.execute(f"DELETE FROM {{t}} WHERE k = {k} AND c = {c}")
        else:
            self.execute(f"DELETE FROM {{t}} WHERE k = {k}")  # the whole partition, statics too

    def rows(self) -> dict[str, dict[str, Any]]:
        """The table as a search should show it: every row, with its partition's statics."""
        shown = {}
        for row in self.cql.execute(f"SELECT k, c, n, s1, s2 FROM {self.name}"):
            if row.c is None:
                continue  # a partition holding statics alone has no row to show
            doc = {name: value for name, value in row._asdict().items() if value is not None}
            shown[f"{row.k}:{row.c}"] = doc
        return shown


def wait_until_equal(client: OpenSearch, table: Shelves, seconds: float = 60) -> None:
    """Poll (an observable condition, with a deadline) until searches show the table."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if indexed(client, table.mapping.alias) == table.rows():
            return
        time.sleep(0.2)
    seen, want = indexed(client, table.mapping.alias), table.rows()
    wrong = {
        k: (seen.get(k), want.get(k)) for k in set(seen) | set(want) if seen.get(k) != want.get(k)
    }
    pytest.fail(f"{len(wrong)} rows differ (index, table), e.g. {sorted(wrong.items())[:3]}")


def test_statics_touched_one_column_at_a_time_keep_the_others_in_either_record_shape(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
    static_record_shape: str,
) -> None:
    table = Shelves(cql, keyspace, client_timestamps, seed=91 if client_timestamps else 19)
    table.fill()
    cfg = make_config(backfill={"ranges": 4, "workers": 2})
    with following(cfg, table.mapping):
        for _ in range(15):  # racing the backfill
            table.touch_statics()
        assert run_backfill(cfg, table.mapping).complete
        for _ in range(40):  # the stream alone
            table.touch_statics()
            if table.rng.random() < 0.2:
                table.execute("INSERT INTO {t} (k, c, n) VALUES (0, 9, 9)")
        wait_until_equal(opensearch, table)


def test_rows_never_show_statics_a_partition_delete_removed(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    client_timestamps: bool,
    no_statics_record_on_partition_delete: None,
) -> None:
    table = Shelves(cql, keyspace, client_timestamps, seed=7 if client_timestamps else 70)
    table.fill()
    with following(make_config(), table.mapping):
        for _ in range(80):
            if table.rng.random() < 0.4:
                table.touch_statics()
            else:
                table.touch_rows()
        # Then, for sure: a partition with rows deleted whole, and one holding statics alone
        # (a delete of it sends no record at all), each getting a row afterwards.
        table.execute("UPDATE {t} SET s1 = 'gone', s2 = 'gone' WHERE k = 1")
        table.execute("INSERT INTO {t} (k, c, n) VALUES (1, 0, 1)")
        table.execute("DELETE FROM {t} WHERE k = 1")
        table.execute("INSERT INTO {t} (k, c, n) VALUES (1, 2, 2)")
        table.execute("DELETE FROM {t} WHERE k = 2")
        table.execute("UPDATE {t} SET s2 = 'lonely' WHERE k = 2")
        table.execute("DELETE FROM {t} WHERE k = 2")
        table.execute("INSERT INTO {t} (k, c, n) VALUES (2, 1, 3)")
        wait_until_equal(opensearch, table)


def test_a_new_image_stream_reads_statics_again_when_its_record_cannot_say_what_was_deleted(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    emulator: Any,
) -> None:
    # Without old images, a record of the touched shape never names a deleted static.
    emulator.control.set_static_record_shape("touched")
    try:
        table = Shelves(cql, keyspace, False, seed=5, view_type="NEW_IMAGE")
        table.fill()
        with following(make_config(), table.mapping):
            table.execute("UPDATE {t} SET s1 = 'kept' WHERE k = 0")
            table.execute("UPDATE {t} SET s2 = null WHERE k = 0")
            table.execute("UPDATE {t} SET s1 = null WHERE k = 1")
            table.execute("UPDATE {t} SET s2 = 'new' WHERE k = 1")
            wait_until_equal(opensearch, table)
    finally:
        emulator.control.set_static_record_shape("all")
