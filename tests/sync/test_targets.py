"""Where a job's writes go, and what its heartbeat may say about it (sync.targets).

What the reindex relies on: a follower names an index in `writes_to` only once
every write begun from then on goes to it, and stops naming one only once no
write under way still goes to it; a missing index is dropped only when the
follower's refresh (the rebuild record) no longer wants it.
"""

from __future__ import annotations

import pytest

from sync.targets import WriteTargets

pytestmark = pytest.mark.unit


def test_an_added_index_is_written_by_every_write_begun_after_it_is_named() -> None:
    targets = WriteTargets(["v1"])
    with targets.writing() as before:
        assert targets.set(["v1", "v2"])
        assert targets.writes_to() == {"v1", "v2"}
        with targets.writing() as after:
            assert after == ("v1", "v2")
        assert before == ("v1",)  # a write begun earlier goes on as it began


def test_a_removed_index_stays_named_until_no_write_under_way_goes_to_it() -> None:
    targets = WriteTargets(["v1", "v2"])
    with targets.writing():
        assert targets.set(["v2"])
        assert targets.writes_to() == {"v1", "v2"}  # v1 may still be written
    assert targets.writes_to() == {"v2"}
    assert not targets.set(["v2"])


def test_a_missing_index_is_dropped_only_when_the_refresh_no_longer_wants_it() -> None:
    wanted = [("v1", "v2")]
    targets = WriteTargets(["v1", "v2"], refresh=lambda: wanted[0])
    assert not targets.recheck("v2")  # the rebuild still wants it: the write must fail
    wanted[0] = ("v1",)
    assert targets.recheck("v2")
    assert targets.indexes == ("v1",)
    assert not WriteTargets(["v1"]).recheck("v1")  # no refresh: nothing to drop


def test_a_job_always_writes_some_index() -> None:
    with pytest.raises(ValueError):
        WriteTargets([])
