"""The follower's counters and their endpoint (sync/metrics.py).

What an operator relies on: the Prometheus text names every counter per
shard and the lag, `/healthz` turns 503 when the job is unhealthy, and a
port that cannot be served is one line naming it and the setting.
"""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest

from sync.errors import ConfigError
from sync.metrics import Metrics, MetricsServer


@pytest.mark.unit
def test_the_exposition_counts_per_shard_and_shows_the_lag() -> None:
    metrics = Metrics(clock_ms=lambda: 10_000)
    metrics.add("shardId-1", records_read=5, applied=4, stale=1)
    metrics.add('odd"shard', gaps=1)
    metrics.applied_up_to("shardId-1", 9_250)
    text = metrics.exposition()
    assert "# TYPE ks2os_follow_records_read_total counter" in text
    assert 'ks2os_follow_records_read_total{shard="shardId-1"} 5' in text
    assert 'ks2os_follow_stale_total{shard="shardId-1"} 1' in text
    assert 'ks2os_follow_gaps_total{shard="odd\\"shard"} 1' in text
    assert 'ks2os_follow_lag_ms{shard="shardId-1"} 750' in text
    assert metrics.total("applied") == 4 and metrics.lag_ms("shardId-1") == 750
    with pytest.raises(KeyError):
        metrics.add("shardId-1", nonsense=1)


def test_metrics_are_served_with_health() -> None:
    metrics = Metrics(clock_ms=lambda: 10_000)
    metrics.add("shardId-1", records_read=5, applied=4, stale=1)
    healthy = [True]
    server = MetricsServer(metrics, 0, lambda: healthy[0], host="127.0.0.1").start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(f"{base}/metrics") as reply:
            text = reply.read().decode()
        assert 'ks2os_follow_records_read_total{shard="shardId-1"} 5' in text
        with urllib.request.urlopen(f"{base}/healthz") as reply:
            assert reply.status == 200
        healthy[0] = False
        with pytest.raises(urllib.error.HTTPError) as failed:
            urllib.request.urlopen(f"{base}/healthz")
        assert failed.value.code == 503
        failed.value.close()
    finally:
        server.stop()


def test_a_port_in_use_is_a_config_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as raised:
            MetricsServer(Metrics(), port, lambda: True, host="127.0.0.1")
    assert f"port {port}" in str(raised.value)
    assert "follow.metrics_port" in raised.value.hint
