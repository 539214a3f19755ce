"""The version rule: how every change gets the external version OpenSearch compares.

The rule is the same whether the table has client-side timestamps on or off;
docs/versions.md argues it against each hazard. In short:

- A stream record's version is `max(base(createdAt), previous + STEP)`
  (rounded up to a multiple of STEP), where `previous` is the version of the
  record before it in the same shard, and a child shard starts from the
  largest final version of its parents. Versions therefore rise strictly
  along every shard lineage, and the stream delivers each primary key's
  changes in lineage order, so the newer change of a key always has the
  larger version. The function is deterministic given the checkpoint
  (sequence number + version), so a replay reproduces the same versions and
  a zombie worker can only write what the owner writes.
- A snapshot row's version is `base(service clock at read - margin)`: below
  every stream record the read could not have seen, so any such record wins,
  and every record the read did see is replayed by the follower after it.
- **Real and derived versions.** Every version a source gives (stream,
  snapshot) is a multiple of STEP: a *real* version. The STEP - 1 values above
  a real version are left for *derived* writes, which restate a stored
  document without a new change: a value that expired is removed, a
  dead-lettered row is re-read. `derived_version(stored)` is `stored + 1`
  while that stays below the next multiple of STEP: it beats the stored
  document, and loses to every real change newer than the one stored (those
  are at least the next multiple).

Write times (`WRITETIME()`, stream `writeTime`) are never part of a version:
they are client clocks, and the largest cell write time does not order row
images (a late write with an old timestamp to another column).
"""

from __future__ import annotations

from collections.abc import Iterable

# Low bits left below the millisecond for changes that share a createdAt.
TIE_BITS = 20
# Of those, the lowest are reserved for derived writes: real versions are
# multiples of STEP, so a shard can take 2**(TIE_BITS - DERIVED_BITS) = 4096
# records in one millisecond before versions run ahead of the clock, and a
# document can be restated up to STEP - 1 times between two real changes.
DERIVED_BITS = 8
STEP = 1 << DERIVED_BITS
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
    (ties run ahead), for a snapshot row the read time less the margin; for a
    derived write, the real version it restates.
    """
    return version >> TIE_BITS


def _real_above(version: int) -> int:
    """The smallest real version (a multiple of STEP) greater than `version`."""
    return (version // STEP + 1) * STEP


def next_stream_version(created_at_ms: int, previous: int) -> int:
    """The version of a stream record whose predecessor in its lineage had `previous`.

    `previous` may be a version written before real versions were multiples
    of STEP (an old checkpoint): the next one is still real, and still higher.
    """
    return max(base(created_at_ms), _real_above(previous))


def lineage_floor(parent_final_versions: Iterable[int]) -> int:
    """Where a child shard's versions start: after every parent's last record."""
    return max(parent_final_versions, default=0)


def snapshot_version(read_at_ms: int, margin_ms: int) -> int:
    """The version of a row read by the snapshot scan at service time `read_at_ms`."""
    return base(max(read_at_ms - margin_ms, 1))


def last_of_millisecond(epoch_ms: int) -> int:
    """The highest real version a change made at `epoch_ms` gets while versions keep up
    with the clock: above every change of that millisecond, below every later one."""
    return base(epoch_ms + 1) - STEP


def is_real(version: int) -> bool:
    """Was `version` given by a source (stream, snapshot), rather than derived?"""
    return version % STEP == 0


def derived_version(stored: int) -> int | None:
    """The version of a write that restates a document stored at `stored`, or None.

    `stored + 1` while it stays below the next real version: it beats the
    stored document and loses to any real change newer than the one stored.
    None when the STEP - 1 derived versions above the last real one are spent.
    """
    candidate = stored + 1
    return candidate if candidate % STEP else None
