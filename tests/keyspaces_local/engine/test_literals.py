"""CQL literals in simple (unprepared) statements through the real cassandra-driver, as
Cassandra parses them: tuple literals (one element, nested, inside collections and UDTs)
and decimal literals, which must come back exactly, in rows and in change records.

Two traps belong to the driver, not to the server, and real Keyspaces behaves the same:
a Python `tuple` parameter of a simple statement is written as a *list* literal (refused
for a tuple column), and a `Decimal` parameter of a simple statement is written through a
float (digits lost before the statement leaves the client). Prepared statements, or CQL
literals in the text, carry both exactly.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from cassandra import InvalidRequest

CDC = (
    " WITH cdc = true AND CUSTOM_PROPERTIES = "
    "{'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
)


@pytest.fixture
def tuples(cql: Any, keyspace: str) -> str:
    cql.execute(f'CREATE TYPE "{keyspace}".pair_holder (n int, pair frozen<tuple<int, text>>)')
    table = f'"{keyspace}".tuples'
    cql.execute(
        f"CREATE TABLE {table} (k int, c frozen<tuple<int, text>>, one frozen<tuple<int>>, "
        "nested frozen<tuple<int, frozen<tuple<text, int>>>>, "
        "pairs list<frozen<tuple<int, text>>>, pair_set set<frozen<tuple<int, text>>>, "
        "by_name map<text, frozen<tuple<int, frozen<tuple<text, int>>>>>, "
        "holder frozen<pair_holder>, PRIMARY KEY (k, c))"
    )
    return table


def test_tuple_literals_of_simple_statements_are_accepted(cql: Any, tuples: str) -> None:
    cql.execute(
        f"INSERT INTO {tuples} (k, c, one, nested, pairs, pair_set, by_name, holder) VALUES "
        "(1, (1, 'one'), (7), (1, ('x', 2)), [(1, 'a'), (2, 'b')], {(3, 'c'), (1, 'a')}, "
        "{'k': (5, ('y', 6))}, {n: 1, pair: (9, 'z')})"
    )
    cql.execute(f"UPDATE {tuples} SET pairs = pairs + [(-4, 'd')] WHERE k = 1 AND c = (1, 'one')")
    row = cql.execute(f"SELECT * FROM {tuples} WHERE k = 1 AND c = (1, 'one')").one()
    assert row.c == (1, "one") and row.one == (7,) and row.nested == (1, ("x", 2))
    assert row.pairs == [(1, "a"), (2, "b"), (-4, "d")]
    assert list(row.pair_set) == [(1, "a"), (3, "c")]
    assert dict(row.by_name) == {"k": (5, ("y", 6))}
    assert (row.holder.n, row.holder.pair) == (1, (9, "z"))


def test_a_python_tuple_parameter_is_a_list_literal_and_refused_as_cassandra_does(
    cql: Any, tuples: str
) -> None:
    with pytest.raises(InvalidRequest, match=r"list literal.*prepared statement"):
        cql.execute(f"INSERT INTO {tuples} (k, c) VALUES (%s, %s)", (2, (1, "one")))
    # The two ways out the error names: a prepared statement, or tuple literals.
    insert = cql.prepare(f"INSERT INTO {tuples} (k, c, one) VALUES (?, ?, ?)")
    cql.execute(insert, (2, (1, "one"), (7,)))
    encoder = cql.encoder
    saved = encoder.mapping[tuple]
    encoder.mapping[tuple] = encoder.cql_encode_tuple
    try:
        cql.execute(f"INSERT INTO {tuples} (k, c, one) VALUES (%s, %s, %s)", (3, (2, "two"), (8,)))
    finally:
        encoder.mapping[tuple] = saved
    got = {(r.k, r.c, r.one) for r in cql.execute(f"SELECT k, c, one FROM {tuples}")}
    assert got == {(2, (1, "one"), (7,)), (3, (2, "two"), (8,))}


DECIMALS = ["12345.678901234567890", "-12345.678901234567890", "1.5E+10", "-1.5E-7", "0.00"]


def test_decimal_literals_round_trip_exactly_in_rows_and_change_records(
    cql: Any, keyspace: str, streams: Any
) -> None:
    table = f'"{keyspace}".decimals'
    cql.execute(f"CREATE TABLE {table} (k int PRIMARY KEY, d decimal, ds list<decimal>)" + CDC)
    for k, text in enumerate(DECIMALS):
        cql.execute(f"INSERT INTO {table} (k, d, ds) VALUES ({k}, {text}, [{text}])")
    cql.execute(f"INSERT INTO {table} (k, d) VALUES (100, -0.00)")  # no negative zero: 0.00
    insert = cql.prepare(f"INSERT INTO {table} (k, d) VALUES (?, ?)")
    for k, text in enumerate(DECIMALS, start=200):
        cql.execute(insert, (k, Decimal(text)))
    expected = {k: text for k, text in enumerate(DECIMALS)}
    expected |= {100: "0.00"} | {k: text for k, text in enumerate(DECIMALS, start=200)}

    rows = {r.k: r for r in cql.execute(f"SELECT k, d, ds FROM {table}")}
    assert {k: str(r.d) for k, r in rows.items()} == expected
    assert all(r.ds == [Decimal(expected[k])] for k, r in rows.items() if k < 100)

    (stream,) = streams.list_streams(keyspaceName=keyspace, tableName="decimals")["streams"]
    recorded = {}
    for shard in streams.get_stream(streamArn=stream["streamArn"])["shards"]:
        iterator = streams.get_shard_iterator(
            streamArn=stream["streamArn"],
            shardId=shard["shardId"],
            shardIteratorType="TRIM_HORIZON",
        )["shardIterator"]
        for record in streams.get_records(shardIterator=iterator)["changeRecords"]:
            cells = record["newImage"]["valueCells"]
            recorded[int(record["partitionKeys"]["k"]["intT"])] = cells["d"]["value"]["decimalT"]
            if "ds" in cells:
                (element,) = cells["ds"]["value"]["listT"]
                assert element["value"]["decimalT"] == cells["d"]["value"]["decimalT"]
    assert recorded == expected
