"""The paging state a SELECT hands out: where a page stopped, tied to its statement.

Layout: the magic `KSL1`, a 4-byte fingerprint of the CQL text (a state is
refused for any other statement), then 0 (start from the beginning: what an
empty first page returns) or 1 and the `Position` - partition index, token,
rows returned so far, the partition key and the clustering key (length -1:
after the whole partition).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from keyspaces_local.cql.api import ProtocolError

PAGING_MAGIC = b"KSL1"


@dataclass
class Position:
    """Where a page stopped: after this row (ck None: after the whole partition)."""

    part_index: int
    token: int
    pk: tuple[bytes, ...]
    ck: tuple[bytes, ...] | None
    rows_so_far: int


def _fingerprint(cql: str) -> int:
    return int.from_bytes(hashlib.blake2b(cql.encode(), digest_size=4).digest(), "big")


def encode_paging(pos: Position | None, cql: str) -> bytes:
    head = PAGING_MAGIC + struct.pack(">I", _fingerprint(cql))
    if pos is None:
        return head + b"\x00"
    parts = [
        head,
        b"\x01",
        struct.pack(">IqIH", pos.part_index, pos.token, pos.rows_so_far, len(pos.pk)),
    ]
    parts += [struct.pack(">I", len(v)) + v for v in pos.pk]
    if pos.ck is None:
        parts.append(struct.pack(">h", -1))
    else:
        parts.append(struct.pack(">h", len(pos.ck)))
        parts += [struct.pack(">I", len(v)) + v for v in pos.ck]
    return b"".join(parts)


def decode_paging(state: bytes, cql: str) -> Position | None:
    try:
        if state[:4] != PAGING_MAGIC or struct.unpack_from(">I", state, 4)[0] != _fingerprint(cql):
            raise ProtocolError("Invalid paging state for this statement")
        if state[8] == 0:
            return None
        index, token, so_far, npk = struct.unpack_from(">IqIH", state, 9)
        offset = 9 + struct.calcsize(">IqIH")
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
