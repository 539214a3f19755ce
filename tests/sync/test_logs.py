"""Log lines name their table (`sync.logs`): inside `table_context`, in its threads too.

Pure: the real formatters and filter on an in-memory stream, no server.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Iterator

import orjson
import pytest

from sync.logs import ContextThread, JsonFormatter, TableField, TextFormatter, table_context


@pytest.fixture
def lines() -> Iterator[io.StringIO]:
    """What the `test.ks2os` logger writes, as JSON lines through the table filter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(TableField())
    logger = logging.getLogger("test.ks2os")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def logged(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_a_line_inside_table_context_carries_the_table_and_one_outside_does_not(
    lines: io.StringIO,
) -> None:
    log = logging.getLogger("test.ks2os")
    with table_context("shop.orders"):
        log.info("inside")
    log.info("outside")
    inside, outside = logged(lines)
    assert inside["table"] == "shop.orders"
    assert "table" not in outside


def test_threads_a_job_starts_inherit_the_table_and_plain_threads_do_not(
    lines: io.StringIO,
) -> None:
    log = logging.getLogger("test.ks2os")

    class Worker(ContextThread):  # a job's thread class, like the follower's shard readers
        def run(self) -> None:
            log.info("subclass")

    with table_context("shop.items"):
        threads = [
            Worker(),
            ContextThread(target=lambda: log.info("target")),
            threading.Thread(target=lambda: log.info("plain")),
        ]
        for thread in threads:
            thread.start()
    for thread in threads:
        thread.join()
    tables = {line["msg"]: line.get("table") for line in logged(lines)}
    assert tables == {"subclass": "shop.items", "target": "shop.items", "plain": None}


def test_a_table_the_line_names_itself_is_kept(lines: io.StringIO) -> None:
    log = logging.getLogger("test.ks2os")
    with table_context("shop.orders"):
        log.info("status", extra={"table": "shop.items"})
    (line,) = logged(lines)
    assert line["table"] == "shop.items"


def test_the_text_format_shows_the_table_as_a_field() -> None:
    record = logging.LogRecord("ks2os", logging.INFO, __file__, 1, "backfill done", None, None)
    with table_context("shop.orders"):
        TableField().filter(record)
    assert TextFormatter().format(record).endswith("backfill done  table=shop.orders")
