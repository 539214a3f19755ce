"""A running follower's /metrics, /readyz and status line, with the real clients.

What an operator relies on: the documented series are there while a
follower runs; the lag is 0 at the tip (so an alert never pages on an idle,
healthy follower) and grows while changes wait for OpenSearch; `/readyz`
turns 503 when OpenSearch becomes unreachable and 200 again once it is back;
the status line is logged every interval. OpenSearch sits behind a fault
proxy (tests/sync/faults.py) that can push back or go away.
"""

from __future__ import annotations

import logging
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from opensearchpy import OpenSearch
from prometheus_client.parser import text_string_to_metric_families

from sync.config import Config
from tests.sync.faults import HttpProxy
from tests.sync.jobs.follow_helpers import Table, following, orders_mapping, until, wait_for


@pytest.fixture
def proxy(osmem_clone: Any) -> Iterator[HttpProxy]:
    front = HttpProxy(osmem_clone.url)
    yield front
    front.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as failed:
        with failed:
            return failed.code, failed.read().decode()
    except urllib.error.URLError:
        return 0, ""  # not listening yet: the follower is still starting


class Scrape:
    """The follower's endpoint, scraped as Prometheus would."""

    def __init__(self, port: int, table: str) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.table = table

    def samples(self) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        """name -> (labels other than table) -> value, for this table's samples."""
        status, text = _get(f"{self.base}/metrics")
        assert status in (0, 200)
        found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.labels.get("table") != self.table:
                    continue
                labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "table"))
                found.setdefault(sample.name, {})[labels] = sample.value
        return found

    def lags(self) -> list[float]:
        return list(self.samples().get("ks2os_follow_lag_seconds", {}).values())

    def value(self, name: str, **labels: str) -> float:
        return self.samples().get(name, {}).get(tuple(sorted(labels.items())), 0.0)

    def ready(self) -> tuple[int, str]:
        return _get(f"{self.base}/readyz")


def _config(
    make_config: Callable[..., Config], proxy: HttpProxy, port: int, **follow: Any
) -> Config:
    return make_config(
        opensearch={"hosts": [proxy.url]},
        follow={"metrics_port": port, "metrics_host": "127.0.0.1", **follow},
        # Retries come back quickly once OpenSearch answers again.
        writer={"initial_backoff": 0.05, "max_backoff": 0.5},
    )


def test_lag_is_zero_at_the_tip_and_grows_while_changes_wait_for_opensearch(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    proxy: HttpProxy,
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    port = _free_port()
    scrape = Scrape(port, f"{keyspace}.orders")
    with following(_config(make_config, proxy, port), mapping):
        until(lambda: scrape.value("ks2os_follow_shards_owned") >= 1, "the follower owns shards")
        until(
            lambda: scrape.lags() and all(lag == 0 for lag in scrape.lags()),
            "every owned shard reads lag 0 at its tip",
        )
        # OpenSearch pushes back on every bulk request: a backlog builds up, unacknowledged.
        proxy.refuse_requests = 10**9
        for n in range(40):
            table.insert(n % 4, n, "new", n)
        until(lambda: max(scrape.lags(), default=0) > 0, "the lag shows changes waiting")
        assert scrape.value("ks2os_retries_total", reason="429") > 0
        proxy.refuse_requests = 0
        wait_for(opensearch, mapping.alias, table.model)
        until(
            lambda: scrape.lags() and all(lag == 0 for lag in scrape.lags()),
            "the lag is back to 0 once the backlog is applied",
        )
        found = scrape.samples()
    assert found["ks2os_follow_records_read_total"][()] == table.writes
    assert found["ks2os_follow_applied_total"][()] == table.writes
    assert found["ks2os_follow_stale_total"][()] == 0
    assert found["ks2os_follow_change_latency_seconds_count"][()] == table.writes
    assert found["ks2os_bulk_request_duration_seconds_count"][()] > 0
    for name in ("ks2os_follow_dead_lettered_total", "ks2os_follow_gaps_total"):
        assert found.get(name, {}).get((), 0.0) == 0


def test_readyz_turns_unready_while_opensearch_is_unreachable_and_ready_after(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    proxy: HttpProxy,
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    port = _free_port()
    scrape = Scrape(port, f"{keyspace}.orders")
    with following(_config(make_config, proxy, port), mapping):
        until(lambda: scrape.ready()[0] == 200, "the follower is ready")
        proxy.cut()
        until(lambda: scrape.ready()[0] == 503, "/readyz says unready")
        assert "OpenSearch does not answer" in scrape.ready()[1]
        assert _get(f"http://127.0.0.1:{port}/healthz")[0] == 200  # the process still works
        table.insert(1, 1, "written while OpenSearch was away", 1)
        proxy.restore()
        until(lambda: scrape.ready()[0] == 200, "/readyz says ready again")
        wait_for(opensearch, mapping.alias, table.model)


def test_the_follower_logs_a_status_line_every_interval(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    caplog: pytest.LogCaptureFixture,
) -> None:
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    name = f"{keyspace}.orders"
    caplog.set_level(logging.INFO, logger="sync.jobs.follow")

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith(f"follow {name}: ")]

    with following(make_config(follow={"log_interval_s": 0.2}), mapping):
        for n in range(6):
            table.insert(n, n, "new", n)
        wait_for(opensearch, mapping.alias, table.model)
        until(
            lambda: any(getattr(r, "applied", 0) == table.writes for r in lines()),
            "a status line counts every change applied",
        )
        until(lambda: len(lines()) >= 3, "a line each interval")
    line = next(r for r in lines() if getattr(r, "applied", 0) == table.writes)
    assert getattr(line, "records_read") == table.writes  # noqa: B009
    assert getattr(line, "shards_owned") >= 1  # noqa: B009
    assert f"{table.writes} records read" in line.getMessage()
    assert "lag " in line.getMessage() and "shards owned" in line.getMessage()
