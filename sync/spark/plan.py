"""How a Spark backfill cuts the token ring: how many ranges, when a task stops, how a rest splits.

Pure arithmetic, no Spark and no servers, so every rule here has a unit test.

- **How many ranges** a new run gets (`planned_ranges`): the `spark.ranges`
  setting when given; else the table's size from `system.size_estimates`
  divided by `spark.range_mb`, and never fewer ranges than the application
  has cores; else (no estimate: keyspaces_local serves none, and an IAM
  policy may forbid `system.*`) four ranges per core. A range too large for
  its share is not a problem the plan has to get right: the budget below
  catches it.
- **When a task stops** (`Budget`): after `spark.task_rows` rows or
  `spark.task_seconds` seconds, a task records the token it reached and hands
  the rest of its range back. It never stops inside the partition it started
  from (a resumed scan re-reads that partition whole), so every task moves
  its range forward, even through one partition larger than its budget.
- **How a rest splits** (`split_pieces`, `split_rest`): the driver cuts the
  rest of each range handed back into pieces sized from what the task saw
  (rows and seconds per token), and at least enough to give every idle core
  one; the first piece stays with the range, the others become new ranges of
  the run (recorded in the state index, so a resume sees them).

The ring itself (its bounds, and ranges of equal width over it) comes from
`sync.sources.cql` alone: `whole_ring` is the one place this package asks for
it, so a partitioner-aware ring there is adopted here unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from sync.sources.cql import MURMUR3_RING, Ring, TokenRange, split_ring

# Never more ranges than this in one planned run (each is a state document and a task).
MAX_RANGES = 100_000
# A rest is cut into at most this many pieces at once; a piece still too large is cut again.
MAX_SPLIT = 64
# Ranges per core when the table's size is unknown: some slack for uneven ranges.
RANGES_PER_CORE = 4
MB = 1 << 20


def whole_ring(ring: Ring = MURMUR3_RING) -> TokenRange:
    """The partitioner's token ring as one range, as the CQL source defines it."""
    return split_ring(1, ring)[0]


# ---- how many ranges ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SizeEstimate:
    """The table's size from `system.size_estimates`, extrapolated to the whole ring."""

    bytes: int
    partitions: int
    ring_share: float  # the share of the ring the estimate rows covered (0..1]


def size_estimate(
    rows: Iterable[tuple[int, int, int, int]], ring_of_table: Ring = MURMUR3_RING
) -> SizeEstimate | None:
    """Sum `(range_start, range_end, partitions_count, mean_partition_size)` rows.

    Each node reports only the ranges it holds, so the sum is scaled up by the
    share of the ring those ranges cover (as the Spark Cassandra connector
    does). A range whose start is not below its end wraps around the ring.
    None when the rows cover nothing.
    """
    ring = whole_ring(ring_of_table)
    covered = total = partitions = 0
    for start, end, count, mean in rows:
        width = end - start if start < end else (ring.end - start) + (end - ring.start)
        if width <= 0 or count < 0 or mean < 0:
            continue
        covered += width
        partitions += count
        total += count * mean
    if covered == 0:
        return None
    share = min(covered / ring.width, 1.0)
    return SizeEstimate(round(total / share), round(partitions / share), share)


@dataclass(frozen=True, slots=True)
class RangePlan:
    count: int
    basis: str  # "setting" | "size_estimates" | "cores": for the log and the summary


def planned_ranges(
    setting: int, estimate: SizeEstimate | None, range_mb: int, cores: int
) -> RangePlan:
    """The number of token ranges of a new run; see the module docstring."""
    cores = max(cores, 1)
    if setting > 0:
        return RangePlan(min(setting, MAX_RANGES), "setting")
    if estimate is None:
        return RangePlan(min(RANGES_PER_CORE * cores, MAX_RANGES), "cores")
    by_size = math.ceil(estimate.bytes / (max(range_mb, 1) * MB))
    return RangePlan(min(max(by_size, cores), MAX_RANGES), "size_estimates")


# ---- when a task stops --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Budget:
    """How much one task reads before handing the rest of its range back; 0: no limit."""

    rows: int = 0
    seconds: float = 0.0

    def spent(self, rows: int, seconds: float) -> bool:
        return (self.rows > 0 and rows >= self.rows) or (
            self.seconds > 0 and seconds >= self.seconds
        )


def may_stop(resumed_at: int | None, reached: int | None) -> bool:
    """A task may hand its range back only past the partition it resumed at.

    A resumed scan reads the partition at its recorded token again, whole: a
    task that stopped there would record the same token, and the next one
    would start over, for ever.
    """
    return reached is not None and (resumed_at is None or reached > resumed_at)


# ---- how a rest splits ----------------------------------------------------------------------


def split_pieces(
    *,
    rows: int,
    seconds: float,
    read_width: int,
    rest_width: int,
    budget: Budget,
    idle_share: int = 1,
) -> int:
    """Into how many pieces to cut a rest of `rest_width` tokens (2..MAX_SPLIT).

    The task read `rows` rows in `seconds` over `read_width` tokens; the rest
    is assumed as dense, so each piece should fit one task's budget.
    `idle_share` is how many pieces this rest should give so that every core
    of the application has a range in the next wave.
    """
    scale = rest_width / max(read_width, 1)
    wanted = max(idle_share, 2)
    if budget.rows > 0:
        wanted = max(wanted, math.ceil(rows * scale / budget.rows))
    if budget.seconds > 0:
        wanted = max(wanted, math.ceil(seconds * scale / budget.seconds))
    return min(wanted, MAX_SPLIT)


@dataclass(frozen=True, slots=True)
class Split:
    """A range (start, end] cut at its rest: it keeps (start, parent_end], the rest is new."""

    parent_end: int
    children: tuple[tuple[int, int], ...]


def split_rest(whole: TokenRange, last_token: int | None, pieces: int) -> Split | None:
    """Cut what is left of `whole` after `last_token` into `pieces` of equal width.

    The first piece stays with the range (it keeps its start and its recorded
    token, so it resumes where it stopped); the others are returned as new
    ranges. None when the rest is too narrow to cut.
    """
    rest = whole.resume_from(last_token)
    count = min(pieces, rest.width)
    if count < 2:
        return None
    bounds = [rest.start + rest.width * i // count for i in range(count)] + [rest.end]
    children = tuple((bounds[i], bounds[i + 1]) for i in range(1, count))
    return Split(parent_end=bounds[1], children=children)
