"""The pure rules of `ks2os reindex` and of the cleanup that ends its grace."""

from __future__ import annotations

from dataclasses import replace

import pytest

from sync.bulk import Stamp
from sync.jobs.cleanup import old_index_due
from sync.jobs.reindex import ReindexSummary
from sync.state import FREE, Rebuild

pytestmark = pytest.mark.unit

DONE = Rebuild(
    "ks.t", "ks-t", "ks-t_v1", "ks-t_v2", "done", 0, FREE, Stamp(1, 1), keep_old_until_ms=1_000
)


def test_the_old_index_goes_only_once_the_rebuild_is_done_and_its_grace_over() -> None:
    assert old_index_due(DONE, ["ks-t_v2"], now_ms=1_000) == "ks-t_v1"
    assert old_index_due(DONE, ["ks-t_v2"], now_ms=999) is None  # still in its grace
    for phase in ("building", "swapped", "aborted"):
        # Before done the old index may still serve (or, aborted, it is the live one).
        assert old_index_due(replace(DONE, phase=phase), ["ks-t_v2"], now_ms=5_000) is None
    assert old_index_due(None, ["ks-t_v1"], now_ms=5_000) is None


def test_an_old_index_the_alias_points_at_again_is_never_deleted() -> None:
    assert old_index_due(DONE, ["ks-t_v1"], now_ms=5_000) is None


def test_the_summary_says_what_became_of_both_indexes() -> None:
    summary = ReindexSummary(
        "ks-t",
        "ks-t_v1",
        "ks-t_v2",
        "done",
        rows_read=20,
        written=20,
        verify_attempts=1,
        verified_rows=20,
        followed_stream=True,
        keep_old_until_ms=86_400_000,
    )
    text = summary.text()
    assert "ks-t_v1 -> ks-t_v2" in text and "1970-01-02T00:00:00Z" in text
    assert text.endswith("result: done")
    stopped = replace(summary, phase="building").text()
    assert stopped.endswith("run ks2os reindex again to resume")
    aborted = replace(summary, phase="aborted").text()
    assert "still points at ks-t_v1" in aborted and aborted.endswith("result: aborted")


def test_abort_and_delete_old_exclude_each_other_in_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from sync.cli import EXIT_USAGE, main

    with pytest.raises(SystemExit) as exited:
        main(["reindex", "--abort", "--delete-old"])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not allowed with argument" in err[0]
