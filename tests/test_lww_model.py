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
