"""The process's series and their endpoint (sync/metrics.py).

What an operator relies on: the Prometheus exposition names every documented
series with the table (and, for the lag, the shard); the lag is 0 at the
tip and the age of the oldest unacknowledged record otherwise, so an idle
healthy follower never pages; `/healthz` and `/readyz` answer 503 with the
reason when the job is unhealthy or unready; a port that cannot be served is
one line naming it and the setting.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sync.bulk import Traffic
from sync.errors import ConfigError
from sync.metrics import (
    TIP_FRESH_MS,
    BackfillProgress,
    FollowTotals,
    Metrics,
    MetricsServer,
    Readiness,
    ShardLag,
    status_line,
)
from sync.model import Change, Op, ScanRead, StreamRead

DOCUMENTED = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition: (name, sorted labels) -> value."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.mark.unit
def test_lag_is_zero_at_the_tip_and_the_oldest_waiting_record_otherwise() -> None:
    lag = ShardLag()
    assert lag.lag_ms(10_000) is None  # nothing read yet: no value rather than a made-up one
    lag.at_tip, lag.answered_ms = True, 9_900
    assert lag.lag_ms(10_000) == 0
    # At the tip, but no answer for longer than TIP_FRESH_MS: anything written since
    # the last answer may be missing, so the lag is the silence.
    assert lag.lag_ms(9_900 + TIP_FRESH_MS) == 0
    assert lag.lag_ms(9_900 + TIP_FRESH_MS + 5_000) == TIP_FRESH_MS + 5_000
    lag.at_tip, lag.last_read_ms = False, 9_000
    assert lag.lag_ms(10_000) == 1_000  # behind the tip, nothing waiting: the last record read
    lag.oldest_unacknowledged_ms = 4_000
    assert lag.lag_ms(10_000) == 6_000  # waiting for OpenSearch: the oldest record waiting


@pytest.mark.unit
def test_an_idle_follower_at_its_tip_keeps_a_lag_of_zero_however_long_it_idles() -> None:
    """The bug of issue 13: the lag read 690 s right after catching up, and kept growing."""
    now = [1_000_000]
    metrics = Metrics(clock_ms=lambda: now[0])
    table = metrics.table("ks.orders")
    table.shard_taken("shardId-1")
    table.read("shardId-1", 3, 300_000, 310_000, at_tip=True)  # an old backlog, read at the tip
    assert table.lags_s()["shardId-1"] == pytest.approx(700.0)  # waiting for OpenSearch
    table.acknowledged("shardId-1", applied=3, stale=0, dead_lettered=0)
    assert table.lags_s()["shardId-1"] == 0.0
    now[0] += 3_600_000  # an hour with nothing written to the table
    table.read("shardId-1", 0, None, None, at_tip=True)
    text = metrics.exposition()
    assert samples(text)[
        ("ks2os_follow_lag_seconds", (("shard", "shardId-1"), ("table", "ks.orders")))
    ] == pytest.approx(0.0)


@pytest.mark.unit
def test_the_exposition_holds_the_documented_series_with_table_labels() -> None:
    metrics = Metrics(clock_ms=lambda: 10_000)
    table = metrics.table("ks.orders")
    table.shard_taken("shardId-1")
    table.read("shardId-1", 5, 9_000, 9_250, at_tip=False)
    table.acknowledged("shardId-1", applied=4, stale=1, dead_lettered=0)
    table.gap()
    stream = StreamRead("arn", "shardId-1", "1", 9_250)
    traffic = Traffic(bulk_seconds=[0.02], on_retry=table.retried)
    traffic.retried("429")
    table.wrote([Change(Op.UPSERT, (1,), {"a": 1}, 5, stream)], traffic)
    table.wrote([Change(Op.UPSERT, (2,), {"a": 1}, 5, ScanRead(0, 1, 0))], Traffic())
    table.state_write_failed(2)
    table.dead_letter_write_failed()
    table.backfill_read(7)
    table.backfill_wrote(6, 1, 0)
    table.backfill_progress(BackfillProgress(8, 3, 7, 3.5, 0.375))
    found = samples(metrics.exposition())
    t = (("table", "ks.orders"),)
    assert found[("ks2os_follow_records_read_total", t)] == 5
    assert found[("ks2os_follow_applied_total", t)] == 4
    assert found[("ks2os_follow_stale_total", t)] == 1
    assert found[("ks2os_follow_gaps_total", t)] == 1
    assert found[("ks2os_follow_lag_seconds", (("shard", "shardId-1"), *t))] == 0.75
    assert found[("ks2os_follow_shards_owned", t)] == 1
    assert found[("ks2os_follow_change_latency_seconds_count", t)] == 1  # stream changes only
    assert found[("ks2os_follow_change_latency_seconds_sum", t)] == pytest.approx(0.75)
    assert found[("ks2os_bulk_request_duration_seconds_count", t)] == 1
    assert found[("ks2os_retries_total", (("reason", "429"), *t))] == 1
    assert found[("ks2os_state_write_errors_total", t)] == 2
    assert found[("ks2os_dead_letter_write_errors_total", t)] == 1
    assert found[("ks2os_backfill_rows_read_total", t)] == 7
    assert found[("ks2os_backfill_applied_total", t)] == 6
    assert found[("ks2os_backfill_ranges", t)] == 8
    assert found[("ks2os_backfill_ranges_done", t)] == 3
    assert found[("ks2os_backfill_rows_per_second", t)] == 3.5
    assert found[("ks2os_backfill_done_ratio", t)] == 0.375
    assert not any(name.endswith("_created") for name, _ in found)
    table.shard_dropped("shardId-1")  # released: its lag is no longer this process's
    assert not any(name == "ks2os_follow_lag_seconds" for name, _ in samples(metrics.exposition()))


@pytest.mark.unit
def test_every_series_is_documented_in_docs_metrics() -> None:
    metrics = Metrics()
    table = metrics.table("t")
    table.shard_taken("s")
    table.read("s", 1, 1, 1, at_tip=False)
    families = {family.name for family in text_string_to_metric_families(metrics.exposition())}
    text = DOCUMENTED.read_text()
    assert len(families) >= 19
    for name in families:  # a counter's family is named without its `_total`
        assert f"`{name}_total`" in text or f"`{name}`" in text, f"{name} is not in {DOCUMENTED}"


@pytest.mark.unit
def test_the_status_line_gives_counts_rates_lag_and_shards() -> None:
    before = FollowTotals(records_read=100, applied=90)
    now = FollowTotals(records_read=400, applied=360, stale=4, dead_lettered=1, gaps=0)
    message, fields = status_line("ks.orders", now, before, 30.0, {"a": 0.0, "b": 2.5, "c": None})
    assert message == (
        "follow ks.orders: 400 records read (10.0/s), 360 applied (9.0/s), 4 stale, "
        "1 dead-lettered, 0 gaps; lag 2.5 s max; 3 shards owned"
    )
    assert fields["records_per_s"] == 10.0 and fields["shards_owned"] == 3
    assert fields["max_lag_s"] == 2.5 and fields["table"] == "ks.orders"


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as failed:
        with failed:
            return failed.code, failed.read().decode()


def test_metrics_health_and_readiness_are_served_on_one_port() -> None:
    metrics = Metrics(clock_ms=lambda: 10_000)
    metrics.table("ks.orders").read("shardId-1", 5, 1, 1, at_tip=True)
    healthy, ready = [True], [Readiness()]
    server = MetricsServer(
        metrics, 0, lambda: healthy[0], host="127.0.0.1", ready=lambda: ready[0]
    ).start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        status, text = _get(f"{base}/metrics")
        assert status == 200
        assert samples(text)[("ks2os_follow_records_read_total", (("table", "ks.orders"),))] == 5
        assert _get(f"{base}/healthz") == (200, "ok\n")
        assert _get(f"{base}/readyz") == (200, "ready\n")
        ready[0] = Readiness(("OpenSearch does not answer",))
        assert _get(f"{base}/readyz") == (503, "OpenSearch does not answer\n")
        healthy[0] = False
        assert _get(f"{base}/healthz")[0] == 503
        assert _get(f"{base}/nothing")[0] == 404
    finally:
        server.stop()


def test_an_ipv6_bind_address_is_served() -> None:
    server = MetricsServer(Metrics(), 0, lambda: True, host="::1").start()
    try:
        assert _get(f"http://[::1]:{server.port}/healthz") == (200, "ok\n")
    finally:
        server.stop()


def test_a_port_in_use_is_a_config_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as raised:
            MetricsServer(Metrics(), port, lambda: True, host="127.0.0.1")
        with pytest.raises(ConfigError) as backfill:
            MetricsServer(
                Metrics(), port, lambda: True, host="127.0.0.1", setting="backfill.metrics_port"
            )
    assert f"port {port}" in str(raised.value)
    assert "follow.metrics_port" in raised.value.hint
    assert "KS2OS_BACKFILL_METRICS_PORT" in backfill.value.hint
