"""Fault injection for the Streams API: the failures real Keyspaces produces on its own.

- ThrottlingException (HTTP 400) and InternalServerException (HTTP 500) at a
  rate per operation (`"*"` for every operation), drawn before the request runs;
- `lagging_parent_close`: after a split or merge, GetStream keeps showing the
  closed parent without `endingSequenceNumber` for a number of GetStream
  calls or seconds of emulator time, while its children are already listed;
- `max_readers_per_shard`: GetRecords throttles a reader when that many other
  readers (iterator chains, each begun by one GetShardIterator) read the same
  shard within `reader_window_seconds` of emulator time; AWS throttles beyond two;
- `expired_iterator_rate`: a share of GetRecords calls answered ExpiredIterator,
  as when a consumer held an iterator past its lifetime (a slow sink, a pause);
- `empty_records_rate`: a share of GetRecords calls that have records to give
  answered with none, `BEHIND_TIP` and a next iterator at the same place, as
  the service may (the position advances "even without customer records").

Settings can be given at start and changed at run time (`Faults.update`);
`Faults.injected()` counts every fault served, by kind, for a test to prove
its faults happened.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from keyspaces_local.streams.errors import InternalServerError, Throttling

OPERATIONS = ("ListStreams", "GetStream", "GetShardIterator", "GetRecords")


@dataclass(frozen=True)
class LaggingParentClose:
    """How long a closed parent is still shown open: whichever lasts longer."""

    get_stream_calls: int = 0
    seconds: float = 0.0

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> LaggingParentClose:
        unknown = set(raw) - {"get_stream_calls", "seconds"}
        if unknown:
            raise ValueError(f"unknown lagging_parent_close keys: {sorted(unknown)}")
        return cls(int(raw.get("get_stream_calls", 0)), float(raw.get("seconds", 0.0)))


@dataclass(frozen=True)
class FaultSettings:
    """Fault rates per operation name (or "*"), each in [0, 1]."""

    throttle_rates: Mapping[str, float] = field(default_factory=dict)
    internal_error_rates: Mapping[str, float] = field(default_factory=dict)
    lagging_parent_close: LaggingParentClose | None = None
    max_readers_per_shard: int | None = None
    reader_window_seconds: float = 1.0
    expired_iterator_rate: float = 0.0
    empty_records_rate: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for rates in (self.throttle_rates, self.internal_error_rates):
            for op, rate in rates.items():
                if op != "*" and op not in OPERATIONS:
                    raise ValueError(f"unknown operation {op!r}; expected one of {OPERATIONS}")
                if not 0.0 <= rate <= 1.0:
                    raise ValueError(f"fault rate for {op} must be within [0, 1], got {rate}")
        for name in ("expired_iterator_rate", "empty_records_rate"):
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"{name} must be within [0, 1], got {rate}")

    def with_changes(self, raw: Mapping[str, Any]) -> FaultSettings:
        """A copy with the keys of a JSON-style mapping applied (see `Faults.update`)."""
        changes: dict[str, Any] = {}
        for key, value in raw.items():
            if key == "throttle_rate":
                changes["throttle_rates"] = {"*": float(value)}
            elif key == "internal_error_rate":
                changes["internal_error_rates"] = {"*": float(value)}
            elif key in ("throttle_rates", "internal_error_rates"):
                changes[key] = {str(k): float(v) for k, v in dict(value).items()}
            elif key == "lagging_parent_close":
                changes[key] = None if value is None else _lagging(value)
            elif key in ("seed", "max_readers_per_shard"):
                changes[key] = None if value is None else int(value)
            elif key in ("reader_window_seconds", "expired_iterator_rate", "empty_records_rate"):
                changes[key] = float(value)
            else:
                raise ValueError(f"unknown fault setting {key!r}")
        return replace(self, **changes)

    def rate(self, rates: Mapping[str, float], operation: str) -> float:
        return rates.get(operation, rates.get("*", 0.0))


def _lagging(value: Any) -> LaggingParentClose:
    if isinstance(value, LaggingParentClose):
        return value
    return LaggingParentClose.from_mapping(value)


class Faults:
    """The live fault settings; thread-safe, changeable while the server runs."""

    def __init__(self, settings: FaultSettings | Mapping[str, Any] | None = None) -> None:
        self._lock = threading.Lock()
        self._settings = FaultSettings()
        self._random = random.Random()
        self._injected: Counter[str] = Counter()
        self.update(settings or {})

    @property
    def settings(self) -> FaultSettings:
        with self._lock:
            return self._settings

    def update(self, settings: FaultSettings | Mapping[str, Any]) -> FaultSettings:
        """Replace (a FaultSettings) or change (a mapping of keys) the settings.

        Mapping keys: throttle_rate, internal_error_rate (every operation),
        throttle_rates, internal_error_rates ({operation or "*": rate}),
        lagging_parent_close ({get_stream_calls, seconds} or None),
        max_readers_per_shard (int or None), reader_window_seconds,
        expired_iterator_rate, empty_records_rate (GetRecords only), seed.
        """
        with self._lock:
            if isinstance(settings, FaultSettings):
                new = settings
            else:
                new = self._settings.with_changes(settings)
            self._settings = new
            if isinstance(settings, FaultSettings) or "seed" in settings:
                self._random = random.Random(new.seed)
            return new

    def before(self, operation: str) -> None:
        """Raise the injected error for this request, if one is drawn."""
        with self._lock:
            s = self._settings
            throttle = s.rate(s.throttle_rates, operation)
            internal = s.rate(s.internal_error_rates, operation)
            draw = self._random.random() if (throttle or internal) else 1.0
        if draw < throttle:
            self.count("throttle")
            raise Throttling(f"Rate exceeded for {operation} (injected fault)")
        if draw < throttle + internal:
            self.count("internal_error")
            raise InternalServerError(f"Internal server error in {operation} (injected fault)")

    def records_fault(self) -> str | None:
        """The fault drawn for one GetRecords call: "expired_iterator", "empty_records" or None.

        The caller counts it (`count`) once served: an empty page with nothing to withhold
        is no fault.
        """
        with self._lock:
            s = self._settings
            if not (s.expired_iterator_rate or s.empty_records_rate):
                return None
            draw = self._random.random()
        if draw < s.expired_iterator_rate:
            return "expired_iterator"
        if draw < s.expired_iterator_rate + s.empty_records_rate:
            return "empty_records"
        return None

    def count(self, kind: str) -> None:
        with self._lock:
            self._injected[kind] += 1

    def injected(self) -> dict[str, int]:
        """Faults served so far, by kind: throttle, internal_error, reader_throttle,
        expired_iterator, empty_records."""
        with self._lock:
            return dict(self._injected)
