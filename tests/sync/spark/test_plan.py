"""How a Spark backfill cuts the ring: range counts, task budgets, splits of a rest (pure)."""

from __future__ import annotations

import itertools

import pytest

from sync.sources.cql import MAX_TOKEN, MIN_TOKEN, TokenRange, split_ring
from sync.spark.plan import (
    MAX_RANGES,
    MAX_SPLIT,
    MB,
    Budget,
    SizeEstimate,
    may_stop,
    planned_ranges,
    size_estimate,
    split_pieces,
    split_rest,
    whole_ring,
)


def test_the_ring_is_the_cql_sources_ring() -> None:
    assert whole_ring() == TokenRange(MIN_TOKEN, MAX_TOKEN) == split_ring(1)[0]


# ---- how many ranges ----------------------------------------------------------------------


def test_a_size_estimate_covering_part_of_the_ring_is_scaled_to_the_whole() -> None:
    quarter = whole_ring().width // 4
    rows = [
        (MIN_TOKEN, MIN_TOKEN + quarter, 1000, 2000),  # 1000 partitions of 2000 bytes
        (0, quarter, 500, 4000),
    ]
    estimate = size_estimate(rows)
    assert estimate is not None
    assert estimate.ring_share == pytest.approx(0.5, rel=1e-9)
    assert estimate.bytes == pytest.approx(2 * (1000 * 2000 + 500 * 4000), rel=1e-9)
    assert estimate.partitions == 3000


def test_a_wrapping_estimate_range_counts_both_ends_of_the_ring() -> None:
    ring = whole_ring()
    estimate = size_estimate([(ring.end - 10, ring.start + 10, 7, 100)])
    assert estimate is not None
    assert estimate.ring_share == pytest.approx(20 / ring.width)


def test_a_range_from_a_token_to_itself_is_the_whole_ring() -> None:
    estimate = size_estimate([(5, 5, 10, 10)])  # a one-node ring
    assert estimate == SizeEstimate(bytes=100, partitions=10, ring_share=1.0)


def test_no_usable_estimate_rows_give_no_estimate() -> None:
    assert size_estimate([]) is None
    assert size_estimate([(0, 100, -1, 10)]) is None


def test_the_setting_wins_then_the_estimate_then_the_cores() -> None:
    big = SizeEstimate(bytes=10_000 * MB, partitions=1, ring_share=1.0)
    assert planned_ranges(12, big, 64, cores=8).count == 12
    by_size = planned_ranges(0, big, 64, cores=8)
    assert (by_size.count, by_size.basis) == (157, "size_estimates")  # ceil(10000 / 64)
    tiny = SizeEstimate(bytes=MB, partitions=1, ring_share=1.0)
    assert planned_ranges(0, tiny, 64, cores=8).count == 8  # never fewer ranges than cores
    unknown = planned_ranges(0, None, 64, cores=8)
    assert (unknown.count, unknown.basis) == (32, "cores")
    huge = SizeEstimate(bytes=10**9 * MB, partitions=1, ring_share=1.0)
    assert planned_ranges(0, huge, 1, cores=1).count == MAX_RANGES


# ---- when a task stops --------------------------------------------------------------------


def test_a_budget_is_spent_by_rows_or_by_time_and_zero_means_no_limit() -> None:
    assert Budget(rows=100).spent(100, 0.0) and not Budget(rows=100).spent(99, 1e9)
    assert Budget(seconds=5).spent(0, 5.0) and not Budget(seconds=5).spent(10**9, 4.9)
    assert not Budget().spent(10**9, 1e9)


def test_a_task_never_stops_inside_the_partition_it_resumed_at() -> None:
    assert not may_stop(resumed_at=500, reached=500)  # still the partition read again
    assert not may_stop(resumed_at=500, reached=None)  # nothing read
    assert may_stop(resumed_at=500, reached=501)
    assert may_stop(resumed_at=None, reached=MIN_TOKEN)


# ---- how a rest splits --------------------------------------------------------------------


def test_pieces_follow_the_density_the_task_saw() -> None:
    # 1000 rows over 100 tokens; 900 tokens left -> ~9000 rows -> 9 pieces of 1000 rows.
    budget = Budget(rows=1000)
    assert split_pieces(rows=1000, seconds=1, read_width=100, rest_width=900, budget=budget) == 9
    # By time: 10 s over 100 tokens, 300 left at 10 s a task -> 3 pieces.
    by_time = Budget(seconds=10)
    assert split_pieces(rows=5, seconds=10, read_width=100, rest_width=300, budget=by_time) == 3


def test_pieces_are_at_least_two_at_least_the_idle_share_and_at_most_the_cap() -> None:
    budget = Budget(rows=1000)
    assert split_pieces(rows=10, seconds=1, read_width=100, rest_width=1, budget=budget) == 2
    few = split_pieces(
        rows=10, seconds=1, read_width=100, rest_width=1, budget=budget, idle_share=5
    )
    assert few == 5
    dense = split_pieces(rows=10**6, seconds=1, read_width=1, rest_width=10**9, budget=budget)
    assert dense == MAX_SPLIT


def test_a_rest_splits_into_contiguous_pieces_and_the_range_keeps_the_first() -> None:
    whole = TokenRange(0, 1000)
    split = split_rest(whole, last_token=400, pieces=4)
    assert split is not None
    # The rest is [400, 1000]: the range resumes at 400 (inclusive), up to its new end.
    pieces = [(whole.start, split.parent_end), *split.children]
    assert pieces[0][1] >= 400
    assert all(a[1] == b[0] for a, b in itertools.pairwise(pieces))
    assert pieces[-1][1] == 1000 and len(split.children) == 3
    widths = [end - start for start, end in split.children]
    assert max(widths) - min(widths) <= 1


def test_a_range_never_read_splits_from_its_start() -> None:
    whole = TokenRange(MIN_TOKEN, MIN_TOKEN + 10)
    split = split_rest(whole, last_token=None, pieces=2)
    assert split == split_rest(whole, last_token=MIN_TOKEN, pieces=2)
    assert split is not None and split.parent_end == MIN_TOKEN + 5
    assert split.children == ((MIN_TOKEN + 5, MIN_TOKEN + 10),)


def test_a_rest_of_one_token_cannot_split() -> None:
    assert split_rest(TokenRange(0, 1000), last_token=1000, pieces=8) is None
    narrow = split_rest(TokenRange(0, 1000), last_token=998, pieces=8)
    assert narrow is not None and len(narrow.children) == 2  # [998, 1000]: three tokens
