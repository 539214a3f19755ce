"""The version rule: how every change gets the external version OpenSearch compares.

The rule is the same whether the table has client-side timestamps on or off;
docs/versions.md argues it against each hazard. In short:

- A stream record's version is `max(base(createdAt), previous + 1)`, where
  `previous` is the version of the record before it in the same shard, and a
  child shard starts from the largest final version of its parents. Versions
  therefore rise strictly along every shard lineage, and the stream delivers
  each primary key's changes in lineage order, so the newer change of a key
  always has the larger version. The function is deterministic given the
  checkpoint (sequence number + version), so a replay reproduces the same
  versions and a zombie worker can only write what the owner writes.
- A snapshot row's version is `base(service clock at read - margin)`: below
  every stream record the read could not have seen, so any such record wins,
  and every record the read did see is replayed by the follower after it.

Write times (`WRITETIME()`, stream `writeTime`) are never part of a version:
they are client clocks, and the largest cell write time does not order row
images (a late write with an old timestamp to another column).
"""

from __future__ import annotations

from collections.abc import Iterable

# Low bits left below the millisecond for changes that share a createdAt:
# a shard can take 2**20 (about a million) records in one millisecond
# before versions run ahead of the clock.
TIE_BITS = 20
MAX_VERSION = 2**63 - 1  # OpenSearch external versions are signed longs


def base(epoch_ms: int) -> int:
    """The smallest version a change made at `epoch_ms` can carry."""
    if epoch_ms < 0:
        raise ValueError(f"time before the epoch: {epoch_ms} ms")
    value = epoch_ms << TIE_BITS
    if value > MAX_VERSION:
        raise ValueError(f"time too far in the future for a version: {epoch_ms} ms")
    return value


def version_ms(version: int) -> int:
    """The time (epoch ms) a version stands for: `base` undone, tie bits dropped.

    Every age read from a version (how old a tombstone is, how old a change
    is when written) goes through here, so a change of the layout changes it
    in one place. For a stream record it is `createdAt` or a little later
    (ties run ahead), for a snapshot row the read time less the margin.
    """
    return version >> TIE_BITS


def next_stream_version(created_at_ms: int, previous: int) -> int:
    """The version of a stream record whose predecessor in its lineage had `previous`."""
    return max(base(created_at_ms), previous + 1)


def lineage_floor(parent_final_versions: Iterable[int]) -> int:
    """Where a child shard's versions start: after every parent's last record."""
    return max(parent_final_versions, default=0)


def snapshot_version(read_at_ms: int, margin_ms: int) -> int:
    """The version of a row read by the snapshot scan at service time `read_at_ms`."""
    return base(max(read_at_ms - margin_ms, 1))
