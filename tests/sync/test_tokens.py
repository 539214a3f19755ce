"""`sync.tokens`: a partition's token as documents hold it, equal to the server's `token()`.

What verify relies on: the token ks2os computes from a change's key equals
the `token()` Keyspaces gives the row, for every CQL type a partition key
can have, on every partitioner, whether the change came from the scan or
from the stream; and the text form orders tokens as numbers.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from sync.keyspaces import describe_table
from sync.model import Change, StreamRead
from sync.sources.cql import RANDOM_RING, SnapshotScanner, TokenRange, ring_for
from sync.sources.records import decode_record
from sync.sources.streams import list_table_streams
from sync.tokens import TOKEN_WIDTH, PartitionTokens, token_of_text, token_text
from tests.sync.every_type import COLUMNS

# ---- pure --------------------------------------------------------------------------------

EDGES = [-(2**63), -(2**63) + 1, -1, 0, 1, 2**63 - 1, 2**63, 2**126, RANDOM_RING.maximum]


@pytest.mark.unit
def test_token_text_is_fixed_width_and_ordered_like_the_tokens_on_both_rings() -> None:
    texts = [token_text(token) for token in EDGES]
    assert {len(text) for text in texts} == {TOKEN_WIDTH}
    assert texts == sorted(texts)
    assert [token_of_text(text) for text in texts] == EDGES


# ---- against keyspaces_local ----------------------------------------------------------

# Every type a partition key column can have: duration cannot be in a key, and
# collections only frozen (a tuple and a UDT are frozen already).
KEY_TYPES = {
    name: ("frozen<" + spec[0] + ">" if spec[0].startswith(("list", "set", "map")) else spec[0])
    for name, spec in COLUMNS.items()
    if name not in ("k", "a_duration")
}


def _stream_changes(streams: Any, info: Any) -> list[Change]:
    """Every record of the table's stream, decoded as the follower decodes them."""
    arn = list_table_streams(streams, info)[-1].stream_arn
    changes = []
    for shard in streams.get_stream(streamArn=arn)["shards"]:
        iterator = streams.get_shard_iterator(
            streamArn=arn, shardId=shard["shardId"], shardIteratorType="TRIM_HORIZON"
        )["shardIterator"]
        while iterator:
            page = streams.get_records(shardIterator=iterator, maxResults=1000)
            for record in page["changeRecords"]:
                created = record["createdAt"]
                if isinstance(created, dt.datetime):
                    created = created.timestamp()
                position = StreamRead(
                    arn, shard["shardId"], record["sequenceNumber"], int(created * 1000)
                )
                changes.append(decode_record(record, info.layout, position, 1))
            if not page["changeRecords"]:
                break
            iterator = page.get("nextShardIterator")
    return changes


def _server_tokens(cql: Any, info: Any) -> list[tuple[tuple[Any, ...], int]]:
    """(key, token()) of each row, as the server gave them in a scan of the whole ring."""
    ring = ring_for(info.partitioner)
    scanner = SnapshotScanner(cql, info, page_size=50)
    tokens = []
    for page in scanner.scan(TokenRange(ring.minimum, ring.maximum)):
        pairs = zip(page.changes, page.tokens, strict=True)  # one token per row
        tokens += [(change.key, token) for change, token in pairs]
    return tokens


def _check(cql: Any, streams: Any, keyspace: str, table: str, rows: int) -> None:
    info = describe_table(cql, keyspace, table)
    tokens = PartitionTokens(cql, info)
    server = _server_tokens(cql, info)
    assert len(server) == rows
    for key, token in server:
        assert tokens.token(key) == token, key
    from_stream = _stream_changes(streams, info)
    assert len(from_stream) == rows
    for change in from_stream:
        # Keys hold lists (unhashable): find the scanned row by equality.
        (token,) = [token for key, token in server if key == change.key]
        assert tokens.token(change.key) == token, change.key


def test_scan_and_stream_give_the_servers_token_for_every_key_type(
    cql: Any, streams: Any, keyspace: str, partitioner: str
) -> None:
    """One composite partition key holding every key-able type, and each type alone."""
    cql.execute(f'CREATE TYPE "{keyspace}"."address" (street text, zip int)')
    cdc = (
        " WITH cdc = true AND CUSTOM_PROPERTIES = "
        "{'cdc_specification': {'view_type': 'NEW_AND_OLD_IMAGES'}}"
    )
    names = ["k", *KEY_TYPES]
    columns = ", ".join(f'"{name}" {KEY_TYPES.get(name, "int")}' for name in names)
    key = ", ".join(f'"{name}"' for name in names)
    cql.execute(
        f'CREATE TABLE "{keyspace}"."every" ({columns}, "v" text, PRIMARY KEY (({key})))' + cdc
    )
    insert = cql.prepare(
        f'INSERT INTO "{keyspace}"."every" ({key}, "v") VALUES ({", ".join("?" * len(names))}, ?)'
    )
    for k in range(5):
        cql.execute(insert, [k, *(COLUMNS[name][2] for name in KEY_TYPES), "x"])
    _check(cql, streams, keyspace, "every", 5)

    for name, cql_type in KEY_TYPES.items():
        table = f"only_{name}"
        cql.execute(
            f'CREATE TABLE "{keyspace}"."{table}" ("p" {cql_type}, "c" int, "v" text, '
            'PRIMARY KEY ("p", "c"))' + cdc
        )
        insert = cql.prepare(f'INSERT INTO "{keyspace}"."{table}" ("p", "c", "v") VALUES (?, 1, ?)')
        cql.execute(insert, [COLUMNS[name][2], "x"])
        _check(cql, streams, keyspace, table, 1)
