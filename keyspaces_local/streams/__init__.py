"""The Keyspaces Streams side of keyspaces_local: change records, shards and the HTTP API."""

from keyspaces_local.streams.api import StreamsApi
from keyspaces_local.streams.faults import Faults, FaultSettings, LaggingParentClose
from keyspaces_local.streams.store import StreamStore

__all__ = ["FaultSettings", "Faults", "LaggingParentClose", "StreamStore", "StreamsApi"]
