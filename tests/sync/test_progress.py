"""`sync.progress`: the share of the ring done, the rate and the ETA, and the bar showing them."""

from __future__ import annotations

import io
import threading

import pytest

from sync.progress import Progress, Reporter, render_bar
from sync.sources.cql import RANDOM_RING, split_ring

pytestmark = pytest.mark.unit


def test_progress_counts_done_ranges_and_the_share_of_current_ones() -> None:
    ranges = dict(enumerate(split_ring(4)))
    progress = Progress(ranges)
    progress.start(100.0)
    progress.update(0, 1.0, rows=500)
    progress.update(1, 0.5, rows=250)
    fraction, rate, eta = progress.estimate(110.0)
    assert fraction == pytest.approx(0.375, abs=1e-9)
    assert rate == pytest.approx(75.0)
    assert eta == pytest.approx(10.0 * 0.625 / 0.375)


def test_progress_of_a_resumed_run_rates_only_this_run() -> None:
    ranges = dict(enumerate(split_ring(2)))
    progress = Progress(ranges)
    progress.update(0, 1.0)  # done by an earlier run
    progress.start(0.0)
    fraction, rate, eta = progress.estimate(5.0)
    assert fraction == pytest.approx(0.5, abs=1e-9) and rate == 0.0 and eta is None
    progress.update(1, 0.5, rows=100)
    fraction, _, eta = progress.estimate(5.0)
    assert fraction == pytest.approx(0.75, abs=1e-9)
    assert eta == pytest.approx(5.0)


def test_progress_is_a_share_of_the_ring_the_ranges_cover_whichever_partitioner() -> None:
    progress = Progress(dict(enumerate(split_ring(4, RANDOM_RING))))
    progress.start(0.0)
    progress.update(0, 1.0, rows=500)
    progress.update(1, 0.5, rows=250)
    assert progress.estimate(10.0)[0] == pytest.approx(0.375, abs=1e-9)


def test_the_bar_shows_percent_rate_and_eta() -> None:
    line = render_bar(0.5, 1234.0, 61.0, width=10)
    assert line.startswith("[#####.....]")
    assert "50.0%" in line and "1,234 rows/s" in line and "ETA 00:01:01" in line


def test_the_reporter_logs_a_line_naming_its_job_when_not_on_a_terminal(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sync.progress

    progress = Progress(dict(enumerate(split_ring(2))))
    progress.start(0.0)
    progress.update(0, 1.0, rows=10)
    done = threading.Event()
    waits = iter([False, True])  # one report, then done
    monkeypatch.setattr(done, "wait", lambda timeout: next(waits))
    monkeypatch.setattr(sync.progress.time, "monotonic", lambda: 10.0)
    with caplog.at_level("INFO", logger="sync.progress"):
        Reporter(progress, done, "verify", out=io.StringIO()).run()
    assert [r.getMessage() for r in caplog.records] == ["verify 50.0% done, 1 rows/s, ETA 10 s"]
