"""The state store's side of a split: a run grows by new ranges, which every reader then sees."""

from __future__ import annotations

from typing import Any

import pytest
from opensearchpy import OpenSearch

from sync.jobs.backfill import plan_run
from sync.state import LeaseLost, StateStore


def test_a_run_extended_by_new_ranges_lists_them_and_reads_them_by_number(
    opensearch: OpenSearch,
) -> None:
    store = StateStore(opensearch, ".ks2os-state")
    run = plan_run(store, "ks.t->t_v1", 2, restart=False)
    grown, created = store.extend_run(run, [(10, 20), (20, 30)])
    assert grown.range_count == 4 and [s.number for s in created] == [2, 3]
    assert store.get_run("ks.t->t_v1") == grown  # every reader (a resume) sees the new count
    listed = store.list_ranges(grown)
    assert [(s.number, s.range_start, s.range_end) for s in listed[2:]] == [
        (2, 10, 20),
        (3, 20, 30),
    ]
    assert not any(s.done or s.lease.owner for s in listed[2:])
    assert store.get_ranges(grown, [3, 0]) == [listed[3], listed[0]]


def test_of_two_workers_extending_a_run_at_once_only_one_does(opensearch: OpenSearch) -> None:
    store = StateStore(opensearch, ".ks2os-state")
    run = plan_run(store, "ks.t->t_v1", 2, restart=False)
    grown, _ = store.extend_run(run, [(10, 20)])
    with pytest.raises(LeaseLost):
        store.extend_run(run, [(40, 50), (50, 60)])  # saw the run before the other's extend
    assert store.get_run("ks.t->t_v1") == grown
    assert [s.range_start for s in store.list_ranges(grown)][2:] == [10]


def test_a_crash_between_counting_new_ranges_and_writing_them_loses_nothing(
    opensearch: OpenSearch, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(opensearch, ".ks2os-state")
    run = plan_run(store, "ks.t->t_v1", 2, restart=False)

    # The run document is raised by one state write, the new ranges created by the next:
    # the process dies between the two.
    writes = [0]
    write_many = store._write_many

    def crash_on_second(*args: Any, **kwargs: Any) -> Any:
        writes[0] += 1
        if writes[0] == 2:
            raise KeyboardInterrupt
        return write_many(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(store, "_write_many", crash_on_second)
        with pytest.raises(KeyboardInterrupt):
            store.extend_run(run, [(10, 20), (20, 30)])
    counted = store.get_run("ks.t->t_v1")
    assert counted is not None and counted.range_count == 4
    # Numbers without documents are skipped; the ranges that exist still cover the ring
    # (the range being split gives its rest up only after its pieces exist).
    assert [s.number for s in store.list_ranges(counted)] == [0, 1]
    grown, created = store.extend_run(counted, [(10, 20)])
    assert grown.range_count == 5 and [s.number for s in created] == [4]


def test_a_cli_worker_does_not_finish_a_run_that_grew_while_it_ran(
    opensearch: OpenSearch,
) -> None:
    from sync.jobs.backfill import _finish

    store = StateStore(opensearch, ".ks2os-state")
    seen = plan_run(store, "ks.t->t_v1", 2, restart=False)  # what the CLI worker listed
    store.extend_run(seen, [(10, 20)])  # a Spark driver split a range meanwhile
    _finish(store, seen)
    current = store.get_run("ks.t->t_v1")
    assert current is not None and not current.finished
    _finish(store, current)  # whoever saw every range finishes it
    assert (store.get_run("ks.t->t_v1") or current).finished
