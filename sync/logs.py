"""Structured logging: one JSON object per line for machines, key=value text for people.

Fields passed with `extra={...}` become keys of the line, so a log shipper can
filter on `shard`, `table` or `rows` without parsing prose.

**The table of every line.** With several tables in one process, a line that
concerns one must say which. A runner wraps each table's job in
`table_context(name)`; every line logged inside it, by ks2os or by a library
called from that thread, gets the field `table` unless it set one itself.
The job's own threads are `ContextThread`s, which run in a copy of their
creator's context (as Python 3.14 can make every thread do), so their lines
say it too. The drivers' own threads (cassandra-driver's event loop) are not
the job's and say none.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


_TABLE: contextvars.ContextVar[str | None] = contextvars.ContextVar("ks2os_table", default=None)


@contextmanager
def table_context(name: str) -> Iterator[None]:
    """Every line logged inside (and in `ContextThread`s started inside) names table `name`."""
    token = _TABLE.set(name)
    try:
        yield
    finally:
        _TABLE.reset(token)


def current_table() -> str | None:
    """The table of the `table_context` this runs in, if any."""
    return _TABLE.get()


class ContextThread(threading.Thread):
    """A thread that runs in a copy of its creator's context: it logs for the same table.

    The copy is taken at `start`, in the creating thread; `run` (a subclass's
    or the `target`) then runs inside it.
    """

    def start(self) -> None:
        context = contextvars.copy_context()
        run = self.run

        def run_in_context() -> None:
            context.run(run)

        self.run = run_in_context  # type: ignore[method-assign]
        super().start()


class TableField(logging.Filter):
    """Adds `table` (from `table_context`) to a line that does not name one itself."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "table"):
            table = _TABLE.get()
            if table is not None:
                record.table = table
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created))
        fields = " ".join(f"{k}={v}" for k, v in _extras(record).items())
        text = f"{stamp} {record.levelname.lower():7} {record.getMessage()}"
        if fields:
            text = f"{text}  {fields}"
        if record.exc_info:
            text = f"{text}\n{self.formatException(record.exc_info)}"
        return text


class NoDriverTracebacks(logging.Filter):
    """The drivers' own error logs in one line each: their exception's text, no traceback.

    cassandra-driver logs every failed connection attempt with a traceback,
    although ks2os reports what it means (`sync.keyspaces.cql_errors`); the
    line stays, the traceback goes.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.name.split(".", 1)[0] in _DRIVERS:
            exc = record.exc_info[1]
            if exc is not None:
                record.msg = f"{record.getMessage()} {type(exc).__name__}: {exc}"
                record.args = None
            record.exc_info, record.exc_text = None, None
        return True


_DRIVERS = frozenset({"cassandra", "botocore", "boto3", "urllib3", "opensearch"})


def configure_logging(level: str = "INFO", fmt: str | None = None) -> None:
    """Log to stderr; JSON unless stderr is a terminal (or `fmt` says otherwise)."""
    chosen = fmt or ("text" if sys.stderr.isatty() else "json")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if chosen == "text" else JsonFormatter())
    handler.addFilter(NoDriverTracebacks())
    handler.addFilter(TableField())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The drivers are chatty at INFO about connection details that are not ours to report.
    for noisy in ("cassandra", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    # opensearch-py logs every non-2xx answer as a warning, including the 409s that are
    # our version and lease checks working; ks2os logs what those answers mean.
    logging.getLogger("opensearch").setLevel(max(logging.ERROR, root.level))
