"""Last-write-wins ties as Cassandra 4.0 resolves them, through cassandra-driver, with the
table and its change stream (through boto3) agreeing on the outcome.

Ties need equal write timestamps, so the table has client-side timestamps and every write
says `USING TIMESTAMP`. The rules checked (Cassandra's `Cells.resolveRegular`,
`LivenessInfo.supersedes` and `UpdateParameters.setComplexDeletionTimeForOverwrite`):

- assigning a whole non-frozen collection, to null too, deletes its old elements at T-1, so an
  element added at the same T survives; `DELETE c` deletes at T;
- an expiring (TTL) cell or row marker beats a plain one written at the same T
  (CASSANDRA-14592), whatever the values;
- and Keyspaces' documented exception: two values of a frozen collection written at the
  same T are not compared, the later write wins.

This module moves its emulator's clock, so it uses the module's own (`e2e_*` fixtures).
"""

from __future__ import annotations

from typing import Any

import pytest

CDC_TS_TTL = (
    "WITH cdc = true AND CUSTOM_PROPERTIES = {"
    "'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}, "
    "'client_side_timestamps': {'status': 'enabled'}, 'ttl': {'status': 'enabled'}}"
)


@pytest.fixture
def table(e2e_cql: Any, e2e_keyspace: str) -> str:
    name = f'"{e2e_keyspace}"."ties"'
    e2e_cql.execute(
        f"CREATE TABLE {name} (k int, c int, v text, tags set<text>, l list<text>, "
        f"m map<text, text>, fl frozen<list<int>>, PRIMARY KEY (k, c)) {CDC_TS_TTL}"
    )
    return name


def _now_us(emulator: Any) -> int:
    return int(emulator.clock.now_us())


def _records_of(streams: Any, keyspace: str, k: int, c: int) -> list[dict[str, Any]]:
    """The key's records in commit order (one key lives in one shard: no split here)."""
    (stream,) = streams.list_streams(keyspaceName=keyspace, tableName="ties")["streams"]
    arn = stream["streamArn"]
    found = []
    for shard in streams.get_stream(streamArn=arn)["shards"]:
        iterator = streams.get_shard_iterator(
            streamArn=arn, shardId=shard["shardId"], shardIteratorType="TRIM_HORIZON"
        )["shardIterator"]
        page = streams.get_records(shardIterator=iterator, maxResults=1000)
        for record in page["changeRecords"]:
            keys = record.get("clusteringKeys") or {}
            if record["partitionKeys"]["k"]["intT"] == str(k) and keys.get("c", {}).get(
                "intT"
            ) == str(c):
                found.append(record)
    return sorted(found, key=lambda r: r["sequenceNumber"])


def _plain(cell_value: dict[str, Any]) -> Any:
    """A stream cell value as the driver would give it, for the types of this table."""
    ((kind, value),) = cell_value.items()
    if kind == "setT":
        return {e["value"]["textT"] for e in value}
    if kind == "listT":
        return [e["value"]["textT"] for e in value]
    if kind == "mapT":
        return {e["key"]["textT"]: e["value"]["textT"] for e in value}
    return value


def _stream_row(streams: Any, keyspace: str, k: int, c: int) -> dict[str, Any] | None:
    """The row as the key's last record's new image says it is (None: no row)."""
    last = _records_of(streams, keyspace, k, c)[-1]
    image = last.get("newImage")
    if image is None:
        return None
    cells = image["valueCells"]
    return {name: _plain(cells[name]["value"]) for name in ("v", "tags", "l", "m") if name in cells}


def _table_row(cql: Any, table: str, k: int, c: int) -> dict[str, Any] | None:
    row = cql.execute(f"SELECT v, tags, l, m FROM {table} WHERE k = %s AND c = %s", (k, c)).one()
    if row is None:
        return None
    found = {"v": row.v, "tags": row.tags, "l": row.l, "m": row.m}
    return {
        name: (set(value) if name == "tags" else list(value) if name == "l" else dict(value))
        if name != "v"
        else value
        for name, value in found.items()
        if value is not None
    }


def _agreed(cql: Any, streams: Any, keyspace: str, table: str, k: int, c: int) -> Any:
    """The row in the table, checked to be what the stream's last record says."""
    in_table = _table_row(cql, table, k, c)
    assert _stream_row(streams, keyspace, k, c) == in_table
    return in_table


# (column, statement setting it to null, statement adding one element, what survives)
COLLECTIONS = [
    ("tags", "tags = null", "tags = tags + {'x'}", {"x"}),
    ("l", "l = null", "l = l + ['x']", ["x"]),
    ("m", "m = null", "m['k'] = 'x'", {"k": "x"}),
    ("tags", "tags = {'a'}", "tags = tags + {'x'}", {"a", "x"}),
]


@pytest.mark.parametrize("null_first", [True, False], ids=["null-first", "add-first"])
@pytest.mark.parametrize(("column", "overwrite", "add", "survives"), COLLECTIONS)
def test_an_element_added_at_the_timestamp_of_an_overwrite_survives_it(
    e2e_emulator: Any,
    e2e_cql: Any,
    e2e_streams: Any,
    e2e_keyspace: str,
    table: str,
    column: str,
    overwrite: str,
    add: str,
    survives: Any,
    null_first: bool,
) -> None:
    ts = _now_us(e2e_emulator) - 1_000_000
    e2e_cql.execute(f"INSERT INTO {table} (k, c, v) VALUES (1, 1, 'row') USING TIMESTAMP {ts}")
    statements = [f"SET {overwrite}", f"SET {add}"]
    for assignment in statements if null_first else reversed(statements):
        e2e_cql.execute(
            f"UPDATE {table} USING TIMESTAMP {ts + 1} {assignment} WHERE k = 1 AND c = 1"
        )
    row = _agreed(e2e_cql, e2e_streams, e2e_keyspace, table, 1, 1)
    assert row is not None and row[column] == survives


@pytest.mark.parametrize("delete_first", [True, False], ids=["delete-first", "add-first"])
def test_deleting_a_collection_removes_an_element_added_at_the_same_timestamp(
    e2e_emulator: Any,
    e2e_cql: Any,
    e2e_streams: Any,
    e2e_keyspace: str,
    table: str,
    delete_first: bool,
) -> None:
    ts = _now_us(e2e_emulator) - 1_000_000
    e2e_cql.execute(f"INSERT INTO {table} (k, c, v) VALUES (1, 1, 'row') USING TIMESTAMP {ts}")
    delete = f"DELETE tags FROM {table} USING TIMESTAMP {ts + 1} WHERE k = 1 AND c = 1"
    add = f"UPDATE {table} USING TIMESTAMP {ts + 1} SET tags = tags + {{'x'}} WHERE k = 1 AND c = 1"
    for statement in (delete, add) if delete_first else (add, delete):
        e2e_cql.execute(statement)
    assert _agreed(e2e_cql, e2e_streams, e2e_keyspace, table, 1, 1) == {"v": "row"}


@pytest.mark.parametrize("ttl_first", [True, False], ids=["ttl-first", "plain-first"])
def test_a_ttl_value_beats_a_plain_value_written_at_the_same_timestamp(
    e2e_emulator: Any,
    e2e_cql: Any,
    e2e_streams: Any,
    e2e_keyspace: str,
    table: str,
    ttl_first: bool,
) -> None:
    """The plain value is the larger one: by value alone (Cassandra 3) it would win."""
    ts = _now_us(e2e_emulator) - 1_000_000
    plain = f"INSERT INTO {table} (k, c, v) VALUES (1, 1, 'zzz') USING TIMESTAMP {ts}"
    expiring = (
        f"UPDATE {table} USING TTL 3600 AND TIMESTAMP {ts} SET v = 'aaa' WHERE k = 1 AND c = 1"
    )
    for statement in (expiring, plain) if ttl_first else (plain, expiring):
        e2e_cql.execute(statement)
    assert _agreed(e2e_cql, e2e_streams, e2e_keyspace, table, 1, 1) == {"v": "aaa"}
    (ttl,) = e2e_cql.execute(f"SELECT TTL(v) FROM {table} WHERE k = 1 AND c = 1").one()
    assert ttl is not None and 0 < ttl <= 3600
    last = _records_of(e2e_streams, e2e_keyspace, 1, 1)[-1]
    assert "expirationTime" in last["newImage"]["valueCells"]["v"]["metadata"]


@pytest.mark.parametrize("ttl_first", [True, False], ids=["ttl-first", "plain-first"])
def test_an_expiring_row_marker_beats_a_plain_one_of_the_same_timestamp(
    e2e_emulator: Any,
    e2e_cql: Any,
    e2e_streams: Any,
    e2e_keyspace: str,
    table: str,
    ttl_first: bool,
) -> None:
    """Two INSERTs of the key alone at one timestamp, one with a TTL: the row expires."""
    ts = _now_us(e2e_emulator) - 1_000_000
    plain = f"INSERT INTO {table} (k, c) VALUES (1, 1) USING TIMESTAMP {ts}"
    expiring = f"INSERT INTO {table} (k, c) VALUES (1, 1) USING TTL 5 AND TIMESTAMP {ts}"
    for statement in (expiring, plain) if ttl_first else (plain, expiring):
        e2e_cql.execute(statement)
    assert _agreed(e2e_cql, e2e_streams, e2e_keyspace, table, 1, 1) == {}
    e2e_emulator.control.advance_clock(5 + 2 + 1)  # the TTL, then the TTL record's delay
    e2e_emulator.control.sweep_expired()
    assert _agreed(e2e_cql, e2e_streams, e2e_keyspace, table, 1, 1) is None
    assert _records_of(e2e_streams, e2e_keyspace, 1, 1)[-1]["origin"] == "TTL"


def test_a_frozen_collection_tie_goes_to_the_later_write_not_the_larger_value(
    e2e_emulator: Any, e2e_cql: Any, e2e_streams: Any, e2e_keyspace: str, table: str
) -> None:
    """Keyspaces' functional differences: "the server picks the latest writer" (Cassandra
    would keep [9], the larger serialised value); a plain column keeps the larger value."""
    ts = _now_us(e2e_emulator) - 1_000_000
    for values in ("[9], 'b'", "[1], 'a'"):
        e2e_cql.execute(
            f"INSERT INTO {table} (k, c, fl, v) VALUES (1, 1, {values}) USING TIMESTAMP {ts}"
        )
    row = e2e_cql.execute(f"SELECT fl, v FROM {table} WHERE k = 1 AND c = 1").one()
    assert (row.fl, row.v) == ([1], "b")
    last = _records_of(e2e_streams, e2e_keyspace, 1, 1)[-1]["newImage"]["valueCells"]
    assert [e["value"]["intT"] for e in last["fl"]["value"]["listT"]] == ["1"]
    assert last["v"]["value"]["textT"] == "b"
