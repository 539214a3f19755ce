"""The oracle itself, checked against Cassandra behaviour stated in its documentation."""

from __future__ import annotations

import pytest

from tests.lww_model import LwwTable

pytestmark = pytest.mark.unit


def table() -> LwwTable:
    return LwwTable(
        partition=("p",), clustering=("c",), statics=frozenset({"s"}), sets=frozenset({"tags"})
    )


def test_highest_timestamp_wins_whatever_the_arrival_order() -> None:
    t = table()
    t.insert((1, 1), {"a": "new"}, ts=20)
    t.insert((1, 1), {"a": "old", "b": "late"}, ts=10)
    assert t.visible() == {(1, 1): {"p": 1, "c": 1, "a": "new", "b": "late"}}


def test_row_delete_shadows_older_writes_only() -> None:
    t = table()
    t.insert((1, 1), {"a": "x"}, ts=10)
    t.delete_row((1, 1), ts=15)
    t.update((1, 1), {"a": "older"}, ts=12)
    assert t.visible() == {}
    t.update((1, 1), {"a": "newer"}, ts=16)
    assert t.visible() == {(1, 1): {"p": 1, "c": 1, "a": "newer"}}


def test_a_row_made_only_by_update_vanishes_with_its_last_cell() -> None:
    t = table()
    t.update((1, 1), {"a": "x"}, ts=10)
    t.delete_columns((1, 1), ["a"], ts=11)
    assert t.visible() == {}
    t.insert((1, 2), {"a": "y"}, ts=10)
    t.delete_columns((1, 2), ["a"], ts=11)
    assert t.visible() == {(1, 2): {"p": 1, "c": 2}}  # the INSERT's row marker keeps it


def test_tombstone_wins_a_timestamp_tie() -> None:
    t = table()
    t.insert((1, 1), {"a": "x", "b": "y"}, ts=10)
    t.delete_columns((1, 1), ["a"], ts=10)
    assert t.visible() == {(1, 1): {"p": 1, "c": 1, "b": "y"}}


def test_statics_show_on_every_row_of_the_partition() -> None:
    t = table()
    t.insert((1, 1), {"a": "x"}, ts=10)
    t.insert((1, 2), {"a": "y"}, ts=11)
    t.update_static((1,), {"s": "shared"}, ts=12)
    t.delete_row((1, 1), ts=13)
    assert t.visible() == {(1, 2): {"p": 1, "c": 2, "a": "y", "s": "shared"}}


def test_a_partition_keeps_its_statics_when_its_last_row_goes() -> None:
    # CQL still returns such a partition: one row, clustering columns null, its statics.
    t = table()
    t.insert((1, 1), {"a": "x"}, ts=10)
    t.update_static((1,), {"s": "shared"}, ts=11)
    t.update_static((2,), {"s": "alone"}, ts=11)
    t.update_static((3,), {"s": "gone"}, ts=11)
    t.update_static((3,), {"s": None}, ts=12)
    t.delete_row((1, 1), ts=13)
    assert t.visible() == {}
    assert t.visible_statics() == {(1,): {"s": "shared"}, (2,): {"s": "alone"}}


def test_set_elements_are_cells_and_assignment_clears_older_ones() -> None:
    t = table()
    t.insert((1, 1), {"tags": {"a", "b"}}, ts=10)
    t.set_add((1, 1), "tags", ["c"], ts=11)
    t.set_remove((1, 1), "tags", ["a"], ts=12)
    assert t.visible()[(1, 1)]["tags"] == {"b", "c"}
    t.update((1, 1), {"tags": {"z"}}, ts=20)
    t.set_add((1, 1), "tags", ["late-but-old"], ts=15)
    assert t.visible()[(1, 1)]["tags"] == {"z"}


def test_ttl_expires_cells_and_marker() -> None:
    t = table()
    t.insert((1, 1), {"a": "x"}, ts=10, ttl=5, now=100)
    t.insert((1, 2), {"a": "y"}, ts=10, now=100)
    t.update((1, 2), {"b": "short"}, ts=11, ttl=5, now=100)
    assert set(t.visible(now=104)) == {(1, 1), (1, 2)}
    assert t.visible(now=105) == {(1, 2): {"p": 1, "c": 2, "a": "y"}}


def test_on_a_timestamp_tie_a_ttl_value_beats_a_plain_one_whichever_comes_first() -> None:
    """Cassandra 4.0 (CASSANDRA-14592): an expiring cell wins a tie with a plain live cell,
    whatever the values, so the result does not depend on when it is reconciled."""
    t = table()
    t.insert((1, 1), {"a": "zzz"}, ts=10)
    t.update((1, 1), {"a": "aaa"}, ts=10, ttl=5, now=100)
    t.update((1, 2), {"a": "aaa"}, ts=10, ttl=5, now=100)
    t.insert((1, 2), {"a": "zzz"}, ts=10)
    assert t.visible(now=104)[(1, 1)]["a"] == "aaa" and t.visible(now=104)[(1, 2)]["a"] == "aaa"
    # Both INSERTs' markers tie too: the expiring one wins, so (1, 2) leaves at expiry.
    t.insert((1, 3), {}, ts=10)
    t.insert((1, 3), {}, ts=10, ttl=5, now=100)
    assert (1, 3) in t.visible(now=104) and (1, 3) not in t.visible(now=105)


def test_on_a_timestamp_tie_a_deletion_beats_a_ttl_value_and_the_later_expiry_wins() -> None:
    t = table()
    t.insert((1, 1), {"a": "x"}, ts=10, ttl=5, now=100)
    t.delete_columns((1, 1), ["a"], ts=10)
    t.insert((1, 2), {"a": "zzz"}, ts=10, ttl=5, now=100)
    t.update((1, 2), {"a": "aaa"}, ts=10, ttl=50, now=100)
    assert "a" not in t.visible(now=101)[(1, 1)]
    assert t.visible(now=101)[(1, 2)]["a"] == "aaa"


def test_assigning_null_to_a_set_spares_an_element_added_at_the_same_timestamp() -> None:
    """`SET tags = null` deletes at T-1 (Cassandra's setComplexDeletionTimeForOverwrite);
    `DELETE tags` deletes at T."""
    t = table()
    t.update((1, 1), {"tags": None}, ts=10)
    t.set_add((1, 1), "tags", ["kept"], ts=10)
    t.insert((1, 2), {"a": "row"}, ts=5)
    t.set_add((1, 2), "tags", ["gone"], ts=10)
    t.delete_columns((1, 2), ["tags"], ts=10)
    assert t.visible()[(1, 1)]["tags"] == {"kept"}
    assert "tags" not in t.visible()[(1, 2)]


def test_partition_delete_shadows_rows_and_statics_written_at_or_before_it() -> None:
    t = table()
    t.insert((1, 1), {"a": "x"}, ts=10)
    t.update_static((1,), {"s": "banner"}, ts=11)
    t.insert((2, 1), {"a": "other partition"}, ts=10)
    t.delete_partition((1,), ts=20)
    t.insert((1, 2), {"a": "late but older"}, ts=15)  # a row the delete never saw, older
    assert t.visible() == {(2, 1): {"p": 2, "c": 1, "a": "other partition"}}
    assert t.visible_statics() == {}
    t.update((1, 1), {"b": 5}, ts=21)
    t.update_static((1,), {"s": "new"}, ts=21)
    assert t.visible()[(1, 1)] == {"p": 1, "c": 1, "b": 5, "s": "new"}


def test_a_static_written_with_a_ttl_expires() -> None:
    t = table()
    t.insert((1, 1), {"a": "x"}, ts=10)
    t.update_static((1,), {"s": "flash"}, ts=11, ttl=5, now=100)
    assert t.visible(now=104)[(1, 1)]["s"] == "flash"
    assert "s" not in t.visible(now=105)[(1, 1)]
