"""The partitioners Amazon Keyspaces offers: a partition key's token(), its CQL type, the ring.

Keyspaces has one partitioner per account and Region, named in `system.local.partitioner`
and changed with `UPDATE system.local SET partitioner = '...' WHERE key = 'local'`:

- `org.apache.cassandra.dht.Murmur3Partitioner` (the default): Cassandra's Murmur3 of the
  serialised partition key, a `bigint`; a hash of -2**63 counts as 2**63-1, so tokens run
  -2**63+1 .. 2**63-1 and the ring's minimum, -2**63, is below every key;
- `org.apache.cassandra.dht.RandomPartitioner`: the MD5 digest of the serialised key read
  as a signed 128-bit big-endian integer, made positive (Cassandra's
  `new BigInteger(md5).abs()`), a `varint`; tokens run 0 .. 2**127 and the ring's minimum
  is -1;
- `com.amazonaws.cassandra.DefaultPartitioner` (Keyspaces' own, what older accounts
  report): the same token() results as RandomPartitioner.

A partition key of several columns is serialised as Cassandra's CompositeType, as drivers
build a routing key. Cassandra gives an empty key the ring's minimum token; it also refuses
to write one, which the emulator does not, so here an empty key hashes like any other and a
token-range scan still finds it.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cassandra import cqltypes
from cassandra.murmur3 import murmur3

MURMUR3 = "org.apache.cassandra.dht.Murmur3Partitioner"
RANDOM = "org.apache.cassandra.dht.RandomPartitioner"
DEFAULT = "com.amazonaws.cassandra.DefaultPartitioner"

_LONG_MIN, _LONG_MAX = -(2**63), 2**63 - 1


def routing_key(pk: tuple[bytes, ...]) -> bytes:
    """The partition key as the driver's routing key (composite: len + bytes + 0 per part)."""
    if len(pk) == 1:
        return pk[0]
    return b"".join(struct.pack(">H", len(p)) + p + b"\x00" for p in pk)


def murmur3_hash(key: bytes) -> int:
    """Murmur3Partitioner's token, exactly as the driver's Murmur3Token.hash_fn computes it."""
    h = int(murmur3(key))
    return _LONG_MAX if h == _LONG_MIN else h


def md5_hash(key: bytes) -> int:
    """RandomPartitioner's token: `new BigInteger(md5(key)).abs()`."""
    return abs(int.from_bytes(hashlib.md5(key).digest(), "big", signed=True))


@dataclass(frozen=True)
class Partitioner:
    """One partitioner: its name, token() type and ring, and how it hashes a key."""

    name: str  # as system.local shows it
    token_type: Any  # the cqltypes class of token(): bigint or varint
    min_token: int  # the ring's minimum, below every partition's token
    max_token: int  # the highest token a partition can have
    hash_key: Callable[[bytes], int]

    def token(self, pk: tuple[bytes, ...]) -> int:
        return self.hash_key(routing_key(pk))

    def serialise(self, token: int) -> bytes:
        """A token as token() returns it (bigint or varint bytes)."""
        return bytes(self.token_type.to_binary(token, 4))

    def check(self, token: int) -> int:
        """A token given in a WHERE clause; a bigint ring refuses what a bigint cannot hold."""
        if self.token_type is cqltypes.LongType and not _LONG_MIN <= token <= _LONG_MAX:
            raise ValueError(f"token {token} is out of the range of a bigint")
        return token


PARTITIONERS: dict[str, Partitioner] = {
    MURMUR3: Partitioner(MURMUR3, cqltypes.LongType, _LONG_MIN, _LONG_MAX, murmur3_hash),
    RANDOM: Partitioner(RANDOM, cqltypes.IntegerType, -1, 2**127, md5_hash),
    DEFAULT: Partitioner(DEFAULT, cqltypes.IntegerType, -1, 2**127, md5_hash),
}


def by_name(name: str) -> Partitioner:
    """The partitioner of that name; ValueError naming the ones there are."""
    try:
        return PARTITIONERS[name]
    except KeyError:
        raise ValueError(
            f"Unknown partitioner {name!r}: Amazon Keyspaces offers {', '.join(PARTITIONERS)}"
        ) from None
