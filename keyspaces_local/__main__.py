"""`python -m keyspaces_local`: run the emulator until SIGTERM or SIGINT.

Once both servers listen it prints exactly one JSON line on stdout,
`{"cql_host": ..., "cql_port": ..., "streams_url": ..., "control_url": ...}`,
so a parent process can read where to connect. Exits 0 after a clean stop.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from keyspaces_local.partitioners import MURMUR3, PARTITIONERS
from keyspaces_local.server import Emulator


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a rate must be within [0, 1], got {text}")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keyspaces-local",
        description=(
            "Local emulator of Amazon Keyspaces: a CQL native protocol v4 server for "
            "cassandra-driver and the Keyspaces Streams API (AWS JSON 1.0) for boto3's "
            "keyspacesstreams client. Prints one JSON line with the endpoints once ready; "
            "runs until SIGTERM or SIGINT."
        ),
    )
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address both servers bind to (default 127.0.0.1)")
    add("--cql-port", type=int, default=0, help="CQL port; 0 picks a free one (default 0)")
    add("--streams-port", type=int, default=0, help="Streams HTTP port; 0 picks a free one")
    add("--shards", type=int, default=4, help="open shards of every new stream (default 4)")
    add(
        "--retention-seconds",
        type=_positive,
        default=86400,
        help="how long change records stay readable, on the emulator clock (default 86400)",
    )
    add(
        "--iterator-lifetime-seconds",
        type=_positive,
        default=900,
        help="shard iterators expire after this long, then ExpiredIterator (default 900)",
    )
    add(
        "--ttl-record-delay-seconds",
        type=float,
        default=5.0,
        help="delay from a TTL expiry to its origin=TTL change record (default 5)",
    )
    add(
        "--throttle-rate",
        type=_rate,
        default=0.0,
        help="share of Streams requests answered with ThrottlingException (default 0)",
    )
    add(
        "--internal-error-rate",
        type=_rate,
        default=0.0,
        help="share of Streams requests answered with InternalServerException/500 (default 0)",
    )
    add(
        "--max-readers-per-shard",
        type=int,
        default=None,
        help="throttle GetRecords beyond this many readers of one shard (AWS: 2; default off)",
    )
    add(
        "--empty-page-rate",
        type=_rate,
        default=0.0,
        help="share of CQL pages returned empty but with a paging state, as Keyspaces may",
    )
    add(
        "--static-record-shape",
        choices=("all", "touched"),
        default="all",
        help=(
            "what a static-only change record's images hold: every static column of the "
            "partition (all, the default) or only those the write touched (touched)"
        ),
    )
    add(
        "--partitioner",
        choices=tuple(PARTITIONERS),
        default=MURMUR3,
        help=(
            "the account's partitioner at start (default Murmur3Partitioner); "
            "UPDATE system.local SET partitioner = ... WHERE key = 'local' changes it"
        ),
    )
    add("--username", help="require this CQL username (PasswordAuthenticator); needs --password")
    add("--password", help="the password for --username")
    add("--log-level", default="WARNING", help="logging level on stderr (default WARNING)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.username is None) != (args.password is None):
        build_parser().error("--username and --password go together")
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    emulator = Emulator.start(
        args.host,
        args.cql_port,
        args.streams_port,
        shard_count=args.shards,
        retention_s=args.retention_seconds,
        iterator_lifetime_s=args.iterator_lifetime_seconds,
        ttl_record_delay_s=args.ttl_record_delay_seconds,
        empty_page_rate=args.empty_page_rate,
        faults={
            "throttle_rate": args.throttle_rate,
            "internal_error_rate": args.internal_error_rate,
            "max_readers_per_shard": args.max_readers_per_shard,
        },
        credentials={args.username: args.password} if args.username is not None else None,
        static_record_shape=args.static_record_shape,
        partitioner=args.partitioner,
    )
    try:
        ready = {
            "cql_host": args.host,
            "cql_port": emulator.cql_port,
            "streams_url": emulator.streams_url,
            "control_url": emulator.control_url,
        }
        sys.stdout.write(json.dumps(ready) + "\n")
        sys.stdout.flush()
        # Event.wait with a timeout keeps the main thread responsive to signals.
        while not stop.wait(1.0):
            pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
