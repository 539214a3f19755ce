"""The token of a row's partition, as `token()` gives it, and its text form in documents.

Every document ks2os writes (rows, tombstones, partition documents) carries
`_ks2os.token`: the token of its partition on the account's ring. With it,
`verify` reads the index one token range at a time, sorted, exactly as it
reads the table, and compares the two in memory bounded by a page and a
partition rather than by the table.

The token is computed by the cassandra-driver, never by hand: a prepared
`SELECT ... WHERE <partition key> = ?` serialises the key's values as the
driver would for its routing key, and the partitioner's hash is the
driver's own (`Murmur3Token.hash_fn`, `MD5Token.hash_fn` for
RandomPartitioner and Keyspaces' DefaultPartitioner, which give the same
token()). So a stream record and a scanned row of one partition get one
token, and it equals the server's `token()`.

In documents a token is text of a fixed width (`token_text`), so a keyword
range query and a keyword sort order tokens as numbers on both rings:
Murmur3's signed 64-bit tokens and Random's 0 .. 2**127 alike.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from typing import Any

from cassandra.cluster import Session
from cassandra.metadata import MD5Token, Murmur3Token
from cassandra.query import PreparedStatement

from sync.errors import ConfigError
from sync.keyspaces import (
    KEYSPACES_DEFAULT_PARTITIONER,
    MURMUR3_PARTITIONER,
    RANDOM_PARTITIONER,
    TableInfo,
    cql_errors,
    qualified,
    quote,
)

# Every token of every ring is above this (Murmur3's ring minimum); token_text shifts by it.
_LOWEST = -(2**63)
# 2**127 - _LOWEST < 16**32: 32 hex digits hold any token of either ring.
TOKEN_WIDTH = 32

_HASHES: dict[str, Callable[[bytes], int]] = {
    MURMUR3_PARTITIONER: Murmur3Token.hash_fn,
    RANDOM_PARTITIONER: MD5Token.hash_fn,
    KEYSPACES_DEFAULT_PARTITIONER: MD5Token.hash_fn,
}


def token_text(token: int) -> str:
    """A token as documents hold it: fixed-width hex, ordered as the numbers are."""
    return f"{token - _LOWEST:0{TOKEN_WIDTH}x}"


def token_of_text(text: str) -> int:
    """The token `token_text` wrote."""
    return int(text, 16) + _LOWEST


def routing_key(parts: Sequence[bytes]) -> bytes:
    """The serialised partition key as Cassandra hashes it (CompositeType for several columns)."""
    if len(parts) == 1:
        return parts[0]
    return b"".join(struct.pack(">H", len(part)) + part + b"\x00" for part in parts)


class PartitionTokens:
    """Computes the token of a partition key of one table; thread-safe."""

    def __init__(self, session: Session, info: TableInfo) -> None:
        hash_key = _HASHES.get(info.partitioner)
        if hash_key is None:
            raise ConfigError(
                f"partitioner {info.partitioner} (system.local) has no known token; ks2os "
                f"knows {', '.join(_HASHES)}: choose one with UPDATE system.local SET "
                "partitioner = '<name>' WHERE key = 'local'"
            )
        self._hash = hash_key
        self._width = len(info.layout.partition_key)
        partition = info.layout.partition_key
        where = " AND ".join(f"{quote(column)} = ?" for column in partition)
        select = f"token({', '.join(quote(column) for column in partition)})"
        cql = f"SELECT {select} FROM {qualified(info.keyspace, info.name)} WHERE {where}"
        with cql_errors(f"preparing the token of {info.qualified_name}"):
            # Never executed: binding it serialises the key as the driver would.
            self._statement: PreparedStatement = session.prepare(cql)

    def token(self, key: Sequence[Any]) -> int:
        """The token of the partition whose key starts `key` (a row or a partition key)."""
        bound = self._statement.bind(tuple(key[: self._width]))
        return self._hash(routing_key(bound.values))
