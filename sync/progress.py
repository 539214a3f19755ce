"""Progress of a job that walks the token ring: share done, rows/s, ETA, and how it is shown.

Shared by `backfill` and `verify`, which both read the table as token ranges:
`Progress` turns "how far each range got" into the share of the whole ring
done, a rate and an ETA (pure arithmetic, thread-safe); `Reporter` shows it
while the job runs: a bar on a terminal (stderr), a log line every few
seconds otherwise.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

from sync.logs import ContextThread
from sync.sources.cql import TokenRange

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Rows/s and ETA from the share of the ring done (ranges done + the current ranges).

    `ranges` maps range number -> its token range (together: the whole ring, whichever
    partitioner's, or the share of it a job will read); `update` records how far a
    range got. Thread-safe.
    """

    ranges: dict[int, TokenRange]
    clock: float = field(default_factory=time.monotonic)
    _reached: dict[int, float] = field(default_factory=dict)
    _rows: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _start_fraction: float | None = None

    def update(self, number: int, fraction: float, rows: int = 0) -> None:
        with self._lock:
            self._reached[number] = max(self._reached.get(number, 0.0), min(fraction, 1.0))
            self._rows += rows

    def read(self, rows: int) -> None:
        """Rows read (the share done moves only as the writer acknowledges them)."""
        with self._lock:
            self._rows += rows

    def start(self, now: float) -> None:
        with self._lock:
            self.clock = now
            self._start_fraction = self._fraction()

    def _fraction(self) -> float:
        done = sum(self.ranges[n].width * f for n, f in self._reached.items() if n in self.ranges)
        ring = sum(r.width for r in self.ranges.values())
        return done / ring if ring else 0.0

    def estimate(self, now: float) -> tuple[float, float, float | None]:
        """(fraction of the ring done, rows/s since start, seconds left or None)."""
        with self._lock:
            fraction = self._fraction()
            elapsed = max(now - self.clock, 1e-9)
            rate = self._rows / elapsed
            gained = fraction - (self._start_fraction or 0.0)
            eta = None if gained <= 0 else (1.0 - fraction) * elapsed / gained
            return fraction, rate, eta

    @property
    def rows(self) -> int:
        with self._lock:
            return self._rows


def render_bar(fraction: float, rate: float, eta: float | None, width: int = 30) -> str:
    filled = round(fraction * width)
    eta_text = "--:--" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {fraction * 100:5.1f}%  "
        f"{rate:,.0f} rows/s  ETA {eta_text}"
    )


class Reporter(ContextThread):
    """Shows `progress` until `done` is set: a bar on a terminal, else a log line every 5 s.

    `job` names the job in the thread's name and in the log line ("backfill", "verify");
    `gauges(fraction, rate)`, if given, is told the same figures each time (metrics).
    """

    def __init__(
        self,
        progress: Progress,
        done: threading.Event,
        job: str,
        out: TextIO = sys.stderr,
        gauges: Callable[[float, float], None] | None = None,
    ) -> None:
        super().__init__(name=f"ks2os-{job}-progress", daemon=True)
        self._progress, self._done, self._job, self._out = progress, done, job, out
        self._tty = out.isatty()
        self._gauges = gauges

    def run(self) -> None:
        interval = 0.5 if self._tty else 5.0
        while not self._done.wait(interval):
            fraction, rate, eta = self._progress.estimate(time.monotonic())
            if self._gauges is not None:
                self._gauges(fraction, rate)
            if self._tty:
                self._out.write("\r" + render_bar(fraction, rate, eta))
                self._out.flush()
            else:
                log.info(
                    "%s %.1f%% done, %.0f rows/s, ETA %s s",
                    self._job,
                    fraction * 100,
                    rate,
                    "?" if eta is None else f"{eta:.0f}",
                    extra={"rows": self._progress.rows},
                )
        if self._tty:
            self._out.write("\n")
            self._out.flush()
