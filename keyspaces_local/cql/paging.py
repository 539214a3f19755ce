"""The paging state a SELECT hands out: where a page stopped, tied to its statement.

Layout: the magic `KSL2`, a 4-byte fingerprint of the CQL text and the
partitioner (a state is refused for any other statement, and after the
account's partitioner changed, as partitions are in another order), then 0
(start from the beginning: what an empty first page returns) or 1 and the
`Position` - partition index, token (17 bytes, signed: RandomPartitioner's
reach 2**127), rows returned so far, the partition key and the clustering key
(length -1: after the whole partition).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from keyspaces_local.cql.api import ProtocolError

PAGING_MAGIC = b"KSL2"
_TOKEN_BYTES = 17


@dataclass
class Position:
    """Where a page stopped: after this row (ck None: after the whole partition)."""

    part_index: int
    token: int
    pk: tuple[bytes, ...]
    ck: tuple[bytes, ...] | None
    rows_so_far: int


def _fingerprint(cql: str, partitioner: str) -> int:
    text = f"{partitioner}\x00{cql}".encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=4).digest(), "big")


def encode_paging(pos: Position | None, cql: str, partitioner: str) -> bytes:
    head = PAGING_MAGIC + struct.pack(">I", _fingerprint(cql, partitioner))
    if pos is None:
        return head + b"\x00"
    parts = [
        head,
        b"\x01",
        struct.pack(">I", pos.part_index),
        pos.token.to_bytes(_TOKEN_BYTES, "big", signed=True),
        struct.pack(">IH", pos.rows_so_far, len(pos.pk)),
    ]
    parts += [struct.pack(">I", len(v)) + v for v in pos.pk]
    if pos.ck is None:
        parts.append(struct.pack(">h", -1))
    else:
        parts.append(struct.pack(">h", len(pos.ck)))
        parts += [struct.pack(">I", len(v)) + v for v in pos.ck]
    return b"".join(parts)


def decode_paging(state: bytes, cql: str, partitioner: str) -> Position | None:
    try:
        fingerprint = _fingerprint(cql, partitioner)
        if state[:4] != PAGING_MAGIC or struct.unpack_from(">I", state, 4)[0] != fingerprint:
            raise ProtocolError("Invalid paging state for this statement")
        if state[8] == 0:
            return None
        (index,) = struct.unpack_from(">I", state, 9)
        token = int.from_bytes(state[13 : 13 + _TOKEN_BYTES], "big", signed=True)
        offset = 13 + _TOKEN_BYTES
        so_far, npk = struct.unpack_from(">IH", state, offset)
        offset += struct.calcsize(">IH")
        pk = []
        for _ in range(npk):
            (n,) = struct.unpack_from(">I", state, offset)
            pk.append(state[offset + 4 : offset + 4 + n])
            offset += 4 + n
        (nck,) = struct.unpack_from(">h", state, offset)
        offset += 2
        ck: list[bytes] | None = None if nck < 0 else []
        for _ in range(max(nck, 0)):
            (n,) = struct.unpack_from(">I", state, offset)
            assert ck is not None
            ck.append(state[offset + 4 : offset + 4 + n])
            offset += 4 + n
        return Position(index, token, tuple(pk), tuple(ck) if ck is not None else None, so_far)
    except (struct.error, IndexError):
        raise ProtocolError("Invalid paging state") from None
