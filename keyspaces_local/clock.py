"""The emulator's clock: real time plus an offset that tests can advance.

Retention, iterator lifetime, TTL expiry and the delay of TTL records are all
measured on this clock, so a test can jump a day ahead without waiting.
"""

from __future__ import annotations

import threading
import time


class Clock:
    """Wall-clock time shifted by an adjustable offset; thread-safe."""

    def __init__(self) -> None:
        self._offset_us = 0
        self._lock = threading.Lock()

    def now_us(self) -> int:
        """Microseconds since the Unix epoch on the emulator's clock."""
        with self._lock:
            return time.time_ns() // 1000 + self._offset_us

    def now_ms(self) -> int:
        return self.now_us() // 1000

    def now_s(self) -> float:
        return self.now_us() / 1_000_000

    def advance(self, seconds: float) -> None:
        """Move the clock forward; never backward (time on a server does not rewind)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset_us += int(seconds * 1_000_000)
