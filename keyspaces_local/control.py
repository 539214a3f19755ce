"""The emulator's control surface: what tests and demos do that no AWS API offers.

Split and merge shards, move the emulator clock, change faults, choose the
shape of static-only change records, run the TTL sweep now. The same
operations are served over HTTP under `/_control/` on the Streams port (see
`keyspaces_local.streams.api`), so a subprocess emulator can be driven too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from keyspaces_local.clock import Clock
from keyspaces_local.streams.faults import Faults, FaultSettings
from keyspaces_local.streams.store import StreamStore


class Control:
    """Operations on a running emulator. `sweep` runs the engine's TTL sweep, if there is one."""

    def __init__(
        self,
        store: StreamStore,
        clock: Clock,
        faults: Faults,
        sweep: Callable[[], int] | None = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.faults = faults
        self._sweep = sweep

    def split_shard(self, stream_arn: str, shard_id: str, parts: int = 2) -> list[str]:
        """Close an open shard; returns the ids of its `parts` children."""
        return self.store.split_shard(stream_arn, shard_id, parts)

    def merge_shards(self, stream_arn: str, shard_a: str, shard_b: str) -> str:
        """Close two adjacent open shards; returns the id of their common child."""
        return self.store.merge_shards(stream_arn, shard_a, shard_b)

    def advance_clock(self, seconds: float) -> int:
        """Move the emulator clock forward; returns the new time in epoch milliseconds."""
        self.clock.advance(seconds)
        return self.clock.now_ms()

    def set_faults(
        self, settings: FaultSettings | Mapping[str, Any] | None = None, **changes: Any
    ) -> FaultSettings:
        """Replace the faults (a FaultSettings) or change some (keys of `Faults.update`)."""
        if settings is not None:
            self.faults.update(settings)
        return self.faults.update(changes)

    def set_static_record_shape(self, shape: str) -> str:
        """Static-only records from now on hold "all" statics or only the "touched" ones."""
        return self.store.set_static_record_shape(shape)

    def sweep_expired(self) -> int:
        """Run the engine's TTL sweep now; returns the number of TTL records emitted."""
        return self._sweep() if self._sweep is not None else 0

    def streams(self) -> list[dict[str, Any]]:
        """Every listed stream with its open shards in hash-range order."""
        out = []
        for s in self.store.streams():
            out.append(
                {
                    "streamArn": s.arn,
                    "keyspaceName": s.keyspace,
                    "tableName": s.table,
                    "streamLabel": s.label,
                    "openShardIds": self.store.open_shard_ids(s.arn),
                }
            )
        return out
