"""What Amazon Keyspaces allows, where more than one kind of statement checks it.

Consistency levels (writes: LOCAL_QUORUM only; reads: ONE, LOCAL_ONE or
LOCAL_QUORUM), the largest TTL, the window for `USING TIMESTAMP` and the
key-size quotas, refused with `Invalid` and the messages Keyspaces gives.
"""

from __future__ import annotations

from keyspaces_local.cql.api import LOCAL_ONE, LOCAL_QUORUM, ONE, Invalid

CONSISTENCY_NAMES = {
    0: "ANY",
    1: "ONE",
    2: "TWO",
    3: "THREE",
    4: "QUORUM",
    5: "ALL",
    6: "LOCAL_QUORUM",
    7: "EACH_QUORUM",
    8: "SERIAL",
    9: "LOCAL_SERIAL",
    10: "LOCAL_ONE",
}
READ_LEVELS = (ONE, LOCAL_QUORUM, LOCAL_ONE)
MAX_DEFAULT_TTL = 630_720_000
CLIENT_TS_PAST_US = 2 * 86_400 * 1_000_000  # USING TIMESTAMP may be 2 days old at most...
CLIENT_TS_FUTURE_US = 5 * 60 * 1_000_000  # ...and 5 minutes ahead
MAX_PARTITION_KEY_BYTES, MAX_CLUSTERING_KEY_BYTES = 2048, 850  # Keyspaces quotas


def check_write_consistency(level: int) -> None:
    if level != LOCAL_QUORUM:
        raise Invalid(
            f"Consistency level {CONSISTENCY_NAMES.get(level, level)} is not supported for "
            "this operation. "
            "Supported consistency levels are: LOCAL_QUORUM"
        )


def check_read_consistency(level: int) -> None:
    if level not in READ_LEVELS:
        raise Invalid(
            f"Consistency level {CONSISTENCY_NAMES.get(level, level)} is not supported for "
            "this operation. "
            "Supported consistency levels are: ONE, LOCAL_QUORUM, LOCAL_ONE"
        )


def check_key_sizes(pk: tuple[bytes, ...], ck: tuple[bytes, ...] | None) -> None:
    if sum(len(v) for v in pk) > MAX_PARTITION_KEY_BYTES:
        raise Invalid(f"Partition key is larger than {MAX_PARTITION_KEY_BYTES} bytes")
    if ck and sum(len(v) for v in ck) > MAX_CLUSTERING_KEY_BYTES:
        raise Invalid(f"Clustering key is larger than {MAX_CLUSTERING_KEY_BYTES} bytes")
