"""`make chaos`: break everything at once, then prove each index equals its table.

Run from the repository root as `python -m scripts.chaos [--minutes M] [--seed N]`
(a module, so that it imports the independent model `tests/lww_model.py` and
the fault proxy `tests/sync/faults.py` as the tests do, without copies).

It starts its own stack: keyspaces_local as a subprocess, an osmem-server, and
a fault proxy between ks2os and OpenSearch. On five tables (client-side
timestamps on and off, with and without static columns, one with a default TTL,
one with a KEYS_ONLY stream) a writer thread per table drives random inserts,
updates, column, row and partition deletes, set and static changes and TTL
writes through the real cassandra-driver, and records every acknowledged write
in the model. Meanwhile `ks2os backfill` and `ks2os follow` run as real
subprocesses and are SIGKILLed and restarted at random moments, a second
follower comes and goes, the proxy answers 429 and 503, resets connections and
adds latency, and the emulator's Streams API throttles, fails, expires
iterators, returns empty pages and splits and merges shards.

Then the writers stop, the faults stop, and the follower must bring every
index to what the model says its table holds (waited for with a deadline).
One line per invariant per table, `N passed, N failed` last, the whole run in
`.bench/chaos.json`, process logs in `.bench/chaos/`. Exit 1 if an invariant
failed, 2 if the run itself could not go on (a write not acknowledged: the
model would no longer know the table).

Everything random comes from `--seed` (printed first); the processes' timing
does not, so a seed repeats the same operations and faults, in an order close
to the first run's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cassandra import ConsistencyLevel
from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile, Session
from opensearchpy import NotFoundError, OpenSearch

from tests.lww_model import LwwTable
from tests.sync.faults import HttpProxy, RandomFaults

ROOT = Path(__file__).resolve().parent.parent
KEYSPACE = "chaos"
PARTITIONS, ROWS = 8, 6
SHORT_TTLS = (1, 2, 3)  # seconds: they run out during the run, and before the check
LONG_TTL = 3600  # outlives the run: a value that must still be there
DEFAULT_TTL = 5  # the TTL table's default_time_to_live
# After the writers stop, every short TTL has run out by then: no expiry falls
# between a search and the model's answer in the final check.
SETTLE_S = max(*SHORT_TTLS, DEFAULT_TTL) + 2.0
TTL_RECORD_DELAY_S = 10.0  # late TTL records: the alias must hide expired rows meanwhile
MAX_SHARDS = 8


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class TableSpec:
    name: str
    client_timestamps: bool
    statics: bool
    default_ttl: int = 0
    view_type: str = "NEW_AND_OLD_IMAGES"

    @property
    def alias(self) -> str:
        return f"chaos-{self.name}"

    def ddl(self) -> str:
        props = [f"'cdc_specification': {{'view_type': '{self.view_type}'}}"]
        props.append("'ttl': {'status': 'enabled'}")
        if self.client_timestamps:
            props.append("'client_side_timestamps': {'status': 'enabled'}")
        static = "s text STATIC, " if self.statics else ""
        default_ttl = f" AND default_time_to_live = {self.default_ttl}" if self.default_ttl else ""
        return (
            f'CREATE TABLE "{KEYSPACE}"."{self.name}" (p int, c int, a text, b int, '
            f"tags set<text>, {static}PRIMARY KEY (p, c)) WITH cdc = true{default_ttl} "
            f"AND CUSTOM_PROPERTIES = {{{', '.join(props)}}}"
        )

    def mapping(self) -> str:
        fields = {"p": "integer", "c": "integer", "a": "keyword", "b": "integer"}
        fields["tags"] = "keyword"
        if self.statics:
            fields["s"] = "keyword"
        properties = "".join(f'{name} = {{ type = "{kind}" }}\n' for name, kind in fields.items())
        return (
            f'[source]\nkeyspace = "{KEYSPACE}"\ntable = "{self.name}"\n'
            f'[index]\nalias = "{self.alias}"\n[index.mappings.properties]\n{properties}'
        )


TABLES = (
    TableSpec("cts_statics", client_timestamps=True, statics=True),
    TableSpec("sts_statics", client_timestamps=False, statics=True),
    TableSpec("cts_plain", client_timestamps=True, statics=False, view_type="NEW_IMAGE"),
    TableSpec("sts_ttl", client_timestamps=False, statics=False, default_ttl=DEFAULT_TTL),
    # Every record of a KEYS_ONLY stream is read again over CQL (a row lookup).
    TableSpec("sts_keys", client_timestamps=False, statics=True, view_type="KEYS_ONLY"),
)


# --------------------------------------------------------------------------- writer


class WriteFailed(RuntimeError):
    """A write was not acknowledged: whether it happened is unknown, so the model is lost."""


class Writer(threading.Thread):
    """Random operations on one table, over CQL and in the model, one at a time.

    One at a time because without client-side timestamps the service orders
    writes as they arrive: the model's timestamp is then a counter.
    """

    def __init__(
        self,
        spec: TableSpec,
        session: Session,
        seed: int,
        rate: float,
        stop: threading.Event,
        blind_spot: bool = False,
    ) -> None:
        super().__init__(name=f"writer-{spec.name}", daemon=True)
        self.spec = spec
        self.session = session
        self.rng = random.Random(seed)
        self.interval = 1.0 / rate
        self.stop_event = stop
        self.table = f'"{KEYSPACE}"."{spec.name}"'
        self.model = LwwTable(
            partition=("p",),
            clustering=("c",),
            statics=frozenset({"s"}) if spec.statics else frozenset(),
            sets=frozenset({"tags"}),
        )
        self.deleted_rows: set[tuple[int, int]] = set()
        self.deleted_partitions: set[int] = set()
        self.ops: Counter[str] = Counter()
        self.log: list[str] = []  # every acknowledged write, for a failure's diagnosis
        self.error: BaseException | None = None
        self._server_ts = 0
        self._used_ts: set[int] = set()
        self._short_ttl_at: dict[int, float] = {}  # partition -> last write with a short TTL
        self.blind_spot = blind_spot
        self._lock = threading.Lock()  # the model is read by the checker while this writes

    def run(self) -> None:
        try:
            while not self.stop_event.wait(self.interval):
                self.step()
        except BaseException as exc:  # reported by the main thread, which stops the run
            self.error = exc

    # -- one operation

    def step(self) -> None:
        p, c = self.rng.randrange(PARTITIONS), self.rng.randrange(ROWS)
        op = self.rng.choices(*zip(*self._weights(), strict=True))[0]
        ts_clause, ts = self._timestamp()
        now = time.time()
        if op == "delete_partition" and self._in_blind_spot(p, now):
            op = "delete_row"
        ttl = self._ttl(op)
        using = self._using(ts_clause, ttl)
        where = f"WHERE p = {p} AND c = {c}"
        key = (p, c)
        model_ttl = ttl if ttl is not None else (self.spec.default_ttl or None)
        if model_ttl is not None and model_ttl < LONG_TTL and op in ("insert", "insert_ttl"):
            self._short_ttl_at[p] = now  # a row marker with a TTL
        if op in ("insert", "insert_ttl"):
            a, b = f"a{self.rng.randrange(1000)}", self.rng.randrange(1000)
            tags = {f"t{self.rng.randrange(5)}" for _ in range(self.rng.randrange(3))}
            values: dict[str, Any] = {"a": a, "b": b, "tags": tags}
            if self.spec.statics and self.rng.random() < 0.3:
                values["s"] = f"s{self.rng.randrange(1000)}"
            cql = (
                f"INSERT INTO {self.table} (p, c, {', '.join(values)}) VALUES ({p}, {c}, "
                f"{', '.join(_literal(v) for v in values.values())}){using}"
            )
            self._apply(cql, lambda: self.model.insert(key, values, ts, model_ttl, now))
        elif op in ("update", "update_ttl"):
            column, value = self._column_value()
            if column == "tags" and model_ttl is not None and model_ttl < LONG_TTL:
                self._short_ttl_at[p] = now  # collection elements with a TTL
            cql = f"UPDATE {self.table}{using} SET {column} = {_literal(value)} {where}"
            self._apply(cql, lambda: self.model.update(key, {column: value}, ts, model_ttl, now))
        elif op == "delete_column":
            column = self.rng.choice(("a", "b", "tags"))
            cql = f"DELETE {column} FROM {self.table}{using} {where}"
            self._apply(cql, lambda: self.model.delete_columns(key, [column], ts))
        elif op == "delete_row":
            self.deleted_rows.add(key)
            cql = f"DELETE FROM {self.table}{using} {where}"
            self._apply(cql, lambda: self.model.delete_row(key, ts))
        elif op == "delete_partition":
            self.deleted_partitions.add(p)
            cql = f"DELETE FROM {self.table}{using} WHERE p = {p}"
            self._apply(cql, lambda: self.model.delete_partition((p,), ts))
        elif op == "set_change":
            tag, add = f"t{self.rng.randrange(5)}", self.rng.random() < 0.6
            sign = "+" if add else "-"
            cql = f"UPDATE {self.table}{using} SET tags = tags {sign} {{'{tag}'}} {where}"
            change = self.model.set_add if add else self.model.set_remove
            self._apply(cql, lambda: change(key, "tags", [tag], ts))
        elif op in ("static", "static_ttl"):
            s = f"s{self.rng.randrange(1000)}"
            cql = f"UPDATE {self.table}{using} SET s = '{s}' WHERE p = {p}"
            self._apply(cql, lambda: self.model.update_static((p,), {"s": s}, ts, model_ttl, now))
        self.ops[op] += 1

    def _in_blind_spot(self, partition: int, now: float) -> bool:
        """Whether a partition delete now could hide a known gap of ks2os (README, "Proof
        under faults"): a row kept alive only by a row marker or collection elements with a
        TTL (CQL has no TTL() for those, so a document read over CQL carries no expiry)
        stays found after it expires until its TTL record comes, and a partition delete
        after the expiry means none comes. Such deletes wait until every short TTL written
        to the partition has run out and had its record; `--expiry-blind-spot` makes them.
        """
        if self.blind_spot:
            return False
        last = self._short_ttl_at.get(partition)
        return last is not None and now - last < max(SHORT_TTLS) + TTL_RECORD_DELAY_S + 2.0

    def _weights(self) -> list[tuple[str, int]]:
        weights = [
            ("insert", 22),
            ("insert_ttl", 6),
            ("update", 16),
            ("update_ttl", 6),
            ("delete_column", 8),
            ("delete_row", 8),
            ("delete_partition", 2),
        ]
        if not self.spec.default_ttl:  # the model's set changes carry no TTL
            weights.append(("set_change", 10))
        if self.spec.statics:
            weights += [("static", 10), ("static_ttl", 3)]
        return weights

    def _column_value(self) -> tuple[str, Any]:
        column = self.rng.choice(("a", "b", "tags"))
        if column == "a":
            return column, f"a{self.rng.randrange(1000)}"
        if column == "b":
            return column, self.rng.randrange(1000)
        return column, {f"t{self.rng.randrange(5)}" for _ in range(self.rng.randrange(3))}

    def _ttl(self, op: str) -> int | None:
        if op.endswith("_ttl"):
            return self.rng.choice((*SHORT_TTLS, LONG_TTL))
        if self.spec.default_ttl and op in ("insert", "update") and self.rng.random() < 0.3:
            return LONG_TTL  # some rows of the TTL table outlive the run
        return None

    def _timestamp(self) -> tuple[str, int]:
        """The USING TIMESTAMP clause and the model's timestamp of the next write."""
        if not self.spec.client_timestamps:
            self._server_ts += 1
            return "", self._server_ts
        while True:  # out of order on purpose, up to 30 s back; never two writes at one
            ts = time.time_ns() // 1000 - self.rng.randrange(0, 30_000_000)
            if ts not in self._used_ts:
                self._used_ts.add(ts)
                return f"TIMESTAMP {ts}", ts

    @staticmethod
    def _using(ts_clause: str, ttl: int | None) -> str:
        parts = [part for part in (f"TTL {ttl}" if ttl else "", ts_clause) if part]
        return f" USING {' AND '.join(parts)}" if parts else ""

    def _apply(self, cql: str, model_write: Callable[[], None]) -> None:
        try:
            self.session.execute(cql)
        except Exception as exc:
            raise WriteFailed(f"{self.spec.name}: {cql}: {exc}") from exc
        with self._lock:
            model_write()
        self.log.append(f"{time.time():.3f} {cql}")

    # -- what the table holds

    def expected(self, now: float) -> dict[tuple[int, int], dict[str, Any]]:
        with self._lock:
            visible = self.model.visible(now=now)
        return {(int(str(p)), int(str(c))): _doc(row) for (p, c), row in visible.items()}


def _literal(value: Any) -> str:
    if isinstance(value, str):
        return f"'{value}'"
    if isinstance(value, set):
        return "{" + ", ".join(f"'{v}'" for v in sorted(value)) + "}"
    return str(value)


def _doc(row: dict[str, Any]) -> dict[str, Any]:
    """A model row as search shows it: sets as sorted lists."""
    return {k: sorted(v) if isinstance(v, set) else v for k, v in row.items()}


# --------------------------------------------------------------------------- processes


@dataclass
class Ks2os:
    """One ks2os process (`backfill`, `follow` or `reindex`), restartable, its stderr kept
    in a log."""

    role: str
    command: list[str]
    worker_id: str
    config: Path
    logs: Path
    process: subprocess.Popen[bytes] | None = None
    kills: int = 0
    exits: list[dict[str, Any]] = field(default_factory=list)

    def start(self, *extra: str) -> None:
        log = (self.logs / f"{self.role}.log").open("ab")
        ks2os = Path(sys.executable).with_name("ks2os")  # the console command
        argv = [str(ks2os)] if ks2os.exists() else [sys.executable, "-m", "sync"]
        self.process = subprocess.Popen(
            [*argv, "--config", str(self.config), "--log-format", "json", *self.command, *extra],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "KS2OS_STATE_WORKER_ID": self.worker_id},
        )
        log.close()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: no flush, no checkpoint, no lease release."""
        if self.running:
            assert self.process is not None
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.kills += 1
        self.process = None

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM and wait; the exit code (None if it had to be killed)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self.process = None
                return None
        code = self.process.returncode
        self.process = None
        return code

    def ensure_stopped(self) -> None:
        """Whatever happened, leave no process behind."""
        if self.running:
            assert self.process is not None
            self.process.kill()
            self.process.wait()

    def ended_by_itself(self) -> int | None:
        """The exit code if the process ended on its own since the last look (else None)."""
        if self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        self.process = None
        if code != 0:
            self.exits.append({"code": code, "last_log_line": self._last_log_line()})
        return code

    def _last_log_line(self) -> str:
        lines = (self.logs / f"{self.role}.log").read_bytes().splitlines()
        return lines[-1].decode(errors="replace")[:300] if lines else ""


# --------------------------------------------------------------------------- the stack


class Stack:
    """keyspaces_local (a subprocess), osmem-server, the fault proxy and the clients."""

    def __init__(self, seed: int) -> None:
        from osmem_server import OsmemServer

        from keyspaces_local.server import EmulatorProcess

        for name, value in (("AWS_ACCESS_KEY_ID", "chaos"), ("AWS_SECRET_ACCESS_KEY", "chaos")):
            os.environ.setdefault(name, value)  # boto3 signs; the emulator checks nothing
        os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
        self._closers: list[Callable[[], Any]] = []
        self.emulator = EmulatorProcess.start(
            shard_count=3, ttl_record_delay_s=TTL_RECORD_DELAY_S, empty_page_rate=0.05
        )
        self._closers.append(self.emulator.stop)
        self.osmem = OsmemServer.start(japanese=False)
        self._closers.append(self._close_osmem)
        self.proxy = HttpProxy(self.osmem.url, seed=seed)
        self._closers.append(self.proxy.close)
        profile = ExecutionProfile(
            consistency_level=ConsistencyLevel.LOCAL_QUORUM, request_timeout=60
        )
        self.cluster = Cluster(
            [self.emulator.cql_host],
            port=self.emulator.cql_port,
            protocol_version=4,
            execution_profiles={EXEC_PROFILE_DEFAULT: profile},
        )
        self._closers.append(self.cluster.shutdown)
        self.session = self.cluster.connect()
        self.search = OpenSearch(hosts=[self.osmem.url], timeout=60)  # the checker's: no faults

    def control(self, name: str, body: dict[str, Any] | None = None) -> Any:
        """The emulator's control API (`/_control/<name>`): GET without a body, else POST."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.emulator.control_url}/{name}", data=data)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def open_shards(self, table: str) -> tuple[str, list[str]]:
        streams = [s for s in self.control("streams")["streams"] if s["tableName"] == table]
        latest = max(streams, key=lambda s: s["streamLabel"])
        return latest["streamArn"], list(latest["openShardIds"])

    def close(self) -> None:
        for close in reversed(self._closers):
            try:
                close()
            except Exception as exc:  # closing must go on to the next server
                print(f"chaos: closing the stack: {exc}", file=sys.stderr)

    def _close_osmem(self) -> None:
        self.osmem.close()
        for pipe in (self.osmem.process.stdin, self.osmem.process.stdout):
            if pipe is not None:
                pipe.close()


def write_config(workdir: Path, stack: Stack, tables: list[TableSpec]) -> Path:
    mappings = []
    for spec in tables:
        path = workdir / f"{spec.name}.toml"
        path.write_text(spec.mapping())
        mappings.append(str(path))
    config = workdir / "ks2os.toml"
    config.write_text(
        f"mappings = {json.dumps(mappings)}\n"
        # A table that fails (a 503 during its start-up checks, which are not retried)
        # stops the process, and the supervisor here restarts it, as systemd or Kubernetes
        # would; "continue" would leave that table unfollowed for the process's life.
        'on_table_failure = "stop"\n'
        'dead_letter = "index"\n'
        f'[keyspaces]\ncontact_points = ["{stack.emulator.cql_host}"]\n'
        f'port = {stack.emulator.cql_port}\nauth = "none"\ntls = false\n'
        f'streams_endpoint = "{stack.emulator.streams_url}"\n'
        f'[opensearch]\nhosts = ["{stack.proxy.url}"]\ntimeout_s = 10\n'
        # Faults come and go within seconds here: retry sooner than a production default.
        "[writer]\nmax_retry_seconds = 120\ninitial_backoff = 0.05\nmax_backoff = 1.0\n"
        "timeout_s = 10\n"
        "[state]\nlease_seconds = 3\n"
        "[backfill]\nworkers = 2\nranges = 8\n"
        "[follow]\nidle_poll_ms = 100\nflush_interval_ms = 100\nlog_interval_s = 10\n"
    )
    return config


# --------------------------------------------------------------------------- chaos


@dataclass
class Tally:
    """What the run did to the system, for the report."""

    kills: Counter[str] = field(default_factory=Counter)
    splits: int = 0
    merges: int = 0
    rescans: int = 0
    rebuilds: int = 0
    proxy_settings: int = 0
    stream_settings: int = 0
    second_follower_starts: int = 0
    events: list[str] = field(default_factory=list)


class Chaos:
    """The fault schedule: random events until the writers' time is up."""

    def __init__(
        self,
        stack: Stack,
        rng: random.Random,
        processes: dict[str, Ks2os],
        tables: list[TableSpec],
    ) -> None:
        self.stack = stack
        self.tables = tables
        self.rng = rng
        self.processes = processes
        self.tally = Tally()
        self.backfill_done = False
        self.rebuilding: str | None = None  # the table whose rebuild has not ended yet
        self.started = time.monotonic()

    # -- faults

    def proxy_faults(self, calm: bool = False) -> None:
        share = 0.0 if calm else self.rng.uniform(0.04, 0.12)
        self.stack.proxy.chaos = RandomFaults(
            bulk_429=share,
            status_503=share / 2,
            reset_before=share / 3,
            reset_after=share / 3,
            delay=share,
            max_delay_s=0.4,
        )
        self.tally.proxy_settings += 1

    def stream_faults(self, calm: bool = False) -> None:
        share = 0.0 if calm else self.rng.uniform(0.04, 0.15)
        # ListStreams stays clean: ks2os checks the endpoint with it at start, unretried
        # by design (a wrong endpoint is reported at once), so a fault there ends a start.
        rates = {op: share for op in ("GetStream", "GetShardIterator", "GetRecords")}
        self.stack.control(
            "faults",
            {
                "throttle_rates": rates,
                "internal_error_rates": {op: share / 2 for op in rates},
                "expired_iterator_rate": share / 2,
                "empty_records_rate": share,
                "max_readers_per_shard": None if calm else 2,
                "seed": self.rng.randrange(2**31),
            },
        )
        self.tally.stream_settings += 1

    def reshard(self, split: bool | None = None) -> None:
        spec = self.rng.choice(self.tables)
        arn, shards = self.stack.open_shards(spec.name)
        if split is None:
            split = len(shards) < 2 or (len(shards) < MAX_SHARDS and self.rng.random() < 0.5)
        if split:
            self.stack.control("split", {"streamArn": arn, "shardId": self.rng.choice(shards)})
            self.tally.splits += 1
        else:
            first = self.rng.randrange(len(shards) - 1)
            self.stack.control("merge", {"streamArn": arn, "shardIds": shards[first : first + 2]})
            self.tally.merges += 1

    # -- processes

    def kill(self, role: str) -> None:
        """SIGKILL a running process and start it again at once (a backfill resumes)."""
        process = self.processes[role]
        if process.running:
            process.kill()
            self.tally.kills[role] += 1
            process.start()

    def toggle_second_follower(self) -> None:
        second = self.processes["follower_b"]
        if second.running:
            second.stop()
        else:
            second.start()
            self.tally.second_follower_starts += 1

    def rescan(self) -> None:
        """A whole backfill again (`--restart`) while writes and the stream go on."""
        backfill = self.processes["backfill"]
        if not backfill.running:
            backfill.start("--restart")
            self.backfill_done = False
            self.tally.rescans += 1

    def rebuild(self) -> None:
        """A rebuild (`ks2os reindex`) of a random table, racing the writers and the
        followers; when one is under way, SIGKILL it instead (the next run resumes it)."""
        reindex = self.processes["reindex"]
        if reindex.running:
            self.kill("reindex")
            return
        if self.rebuilding is not None:
            return  # it ended by itself and `supervise` starts it again
        spec = self.rng.choice(self.tables)
        self.rebuilding = spec.name
        reindex.command = ["reindex", "--table", f"{KEYSPACE}.{spec.name}"]
        reindex.start()
        self.tally.rebuilds += 1

    # -- the schedule

    def run(self, seconds: float, must: list[str]) -> None:
        """Random events for `seconds`; the events of `must` happen first, in that order,
        at random moments of the first half (so a short run has every kind of fault)."""
        self.started = time.monotonic()
        deadline = self.started + seconds
        half = self.started + seconds / 2
        must_at = sorted(self.rng.uniform(self.started + 1.5, half) for _ in must)
        pending = list(zip(must_at, must, strict=True))
        next_random = time.monotonic() + self.rng.uniform(0.5, 2.0)
        while time.monotonic() < deadline:
            self.supervise()
            now = time.monotonic()
            if pending and now >= pending[0][0]:
                name = pending.pop(0)[1]
                if self._start_to_kill(name):  # a must kill of a process not running
                    pending.insert(0, (now + self.rng.uniform(2.0, 5.0), name))
                else:
                    self.event(name)
            elif now >= next_random:
                name = self._random_event()
                if name != "calm" or now >= half:  # faults stay on while `must` runs
                    self.event(name)
                next_random = now + self.rng.uniform(1.0, 4.0)
            time.sleep(0.1)  # the schedule's tick, not a wait for a condition

    def _start_to_kill(self, name: str) -> bool:
        """Start the process a kill event names if it is not running (a finished
        backfill rescans); True if it had to be started."""
        role = {"kill_backfill": "backfill", "kill_follower_b": "follower_b"}.get(name)
        if role is None or self.processes[role].running:
            return False
        if role == "backfill":
            self.rescan()
        else:
            self.toggle_second_follower()
        return True

    def _random_event(self) -> str:
        return self.rng.choices(
            (
                "kill_follower_a",
                "kill_follower_b",
                "kill_backfill",
                "second_follower",
                "reshard",
                "proxy_faults",
                "stream_faults",
                "calm",
                "rescan",
                "rebuild",
            ),
            (10, 5, 6, 5, 12, 6, 6, 2, 1, 2),
        )[0]

    def event(self, name: str) -> None:
        self.tally.events.append(f"{time.monotonic() - self.started:7.1f} s {name}")
        if name == "kill_follower_a":
            self.kill("follower_a")
        elif name == "kill_follower_b":
            self.kill("follower_b")
        elif name == "kill_backfill":
            self.kill("backfill")
        elif name == "second_follower":
            self.toggle_second_follower()
        elif name in ("reshard", "split", "merge"):
            self.reshard(None if name == "reshard" else name == "split")
        elif name == "proxy_faults":
            self.proxy_faults()
        elif name == "stream_faults":
            self.stream_faults()
        elif name == "calm":
            self.proxy_faults(calm=True)
            self.stream_faults(calm=True)
        elif name == "rescan":
            self.rescan()
        elif name == "rebuild":
            self.rebuild()

    def supervise(self) -> None:
        """Restart a process that ended by itself (a failed one is recorded); note a
        backfill that finished."""
        for role, process in self.processes.items():
            code = process.ended_by_itself()
            if code is None:
                continue
            if role == "backfill" and code == 0:
                self.backfill_done = True
            elif role == "reindex" and code == 0:
                self.rebuilding = None  # swapped: the alias is on the new index
            elif role != "follower_b":
                process.start()


# --------------------------------------------------------------------------- the check


@dataclass
class Invariant:
    """One check of one table: `count` violations among `of` `unit` (e.g. 0 of 12 expired)."""

    table: str
    name: str
    count: int
    unit: str
    examples: list[str]
    of: int | None = None

    @property
    def passed(self) -> bool:
        return self.count == 0

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        among = f"{self.count} of {self.of} {self.unit}" if self.of is not None else ""
        among = among or f"{self.count} {self.unit}"
        text = f"{verdict} {self.table:<12} {self.name:<32} {among}"
        return text + (f": {'; '.join(self.examples)}" if self.examples else "")


def indexed(search: OpenSearch, alias: str) -> dict[tuple[int, int], dict[str, Any]]:
    """Every row a search through the alias finds, as the model writes it."""
    search.indices.refresh(index=alias)
    found = search.search(index=alias, body={"query": {"match_all": {}}, "size": 10_000})
    docs = {}
    for hit in found["hits"]["hits"]:
        doc = {k: v for k, v in hit["_source"].items() if k != "_ks2os"}
        if "tags" in doc:
            doc["tags"] = sorted(doc["tags"])
        docs[(doc["p"], doc["c"])] = doc
    return docs


def dead_letters(search: OpenSearch, alias: str) -> int:
    """Entries in the dead-letter index, plus the marks they leave in the table's index."""
    try:
        stored = int(search.count(index=f"{alias}-deadletter")["count"])
    except NotFoundError:
        stored = 0
    indices = list(search.indices.get_alias(name=alias))
    marked = search.count(index=indices, body={"query": {"term": {"_ks2os.dead_letter": True}}})
    return stored + int(marked["count"])


def table_rows(session: Session, spec: TableSpec) -> dict[tuple[int, int], dict[str, Any]]:
    """Every row the table returns over CQL, as the model writes it (no nulls)."""
    rows = session.execute(f'SELECT * FROM "{KEYSPACE}"."{spec.name}"')
    found = {}
    for row in rows:
        values = {k: v for k, v in row._asdict().items() if v is not None}
        if row.c is not None:  # a partition with statics alone: no row
            found[(row.p, row.c)] = _doc(values)
    return found


def check(search: OpenSearch, session: Session, writer: Writer) -> list[Invariant]:
    """Compare what searches find with what the model says; one result per invariant.

    The first compares the table itself with the model: if they differ, the emulator or
    the model is wrong, and what the index shows proves nothing about ks2os.
    """
    name = writer.spec.name
    table = table_rows(session, writer.spec)
    docs = indexed(search, writer.spec.alias)
    now = time.time()
    want = writer.expected(now)
    oracle = sorted(k for k in set(table) | set(want) if table.get(k) != want.get(k))
    ignoring_ttl = writer.expected(0)  # every value whose TTL ran out, still there
    missing = [k for k in sorted(want) if k not in docs]
    extra, resurrected, expired_rows = [], [], []
    for key in sorted(set(docs) - set(want)):
        if key in ignoring_ttl:
            expired_rows.append(key)
        elif key in writer.deleted_rows or key[0] in writer.deleted_partitions:
            resurrected.append(key)
        else:
            extra.append(key)
    stale, expired_values = [], []
    for key in sorted(set(docs) & set(want)):
        if docs[key] == want[key]:
            continue
        differing = {
            f for f in set(docs[key]) | set(want[key]) if docs[key].get(f) != want[key].get(f)
        }
        old = ignoring_ttl.get(key, {})
        if all(docs[key].get(f) == old.get(f) for f in differing):
            expired_values.append(key)
        else:
            stale.append(key)

    def show(keys: list[tuple[int, int]], with_docs: bool = True) -> list[str]:
        return [
            f"{k} expected {want.get(k)} found {docs.get(k)}" if with_docs else str(k)
            for k in keys[:3]
        ]

    oracle_examples = [f"{k} model {want.get(k)} table {table.get(k)}" for k in oracle[:3]]
    # What each check had to go on: rows deleted and not written since, rows (or values)
    # whose TTL ran out.
    gone = {k for k in ignoring_ttl if k not in want}
    deleted = {
        k
        for k in writer.deleted_rows
        | {(p, c) for p in writer.deleted_partitions for c in range(ROWS)}
        if k not in want and k not in gone
    }
    expired = gone | {k for k in want if want[k] != ignoring_ttl.get(k)}
    return [
        Invariant(
            name, "the table equals the model", len(oracle), "rows", oracle_examples, len(want)
        ),
        Invariant(name, "no missing document", len(missing), "rows", show(missing), len(want)),
        Invariant(name, "no extra document", len(extra), "documents", show(extra), len(docs)),
        Invariant(name, "no stale document", len(stale), "rows", show(stale), len(want)),
        Invariant(
            name, "no resurrected row", len(resurrected), "deleted", show(resurrected), len(deleted)
        ),
        Invariant(
            name,
            "no expired row or value visible",
            len(expired_rows) + len(expired_values),
            "expired",
            show(expired_rows + expired_values),
            len(expired),
        ),
        Invariant(
            name, "dead-letter store empty", dead_letters(search, writer.spec.alias), "entries", []
        ),
    ]


def dump_index(search: OpenSearch, alias: str, path: Path) -> None:
    """Every document behind the alias, tombstones and partition documents too, for a
    failure's diagnosis."""
    indices = list(search.indices.get_alias(name=alias))
    found = search.search(index=indices, body={"query": {"match_all": {}}, "size": 10_000})
    hits = [{"_id": h["_id"], **h["_source"]} for h in found["hits"]["hits"]]
    path.write_text(json.dumps(sorted(hits, key=lambda h: h["_id"]), indent=1) + "\n")


def converged(search: OpenSearch, writers: list[Writer]) -> bool:
    now = time.time()
    return all(indexed(search, w.spec.alias) == w.expected(now) for w in writers)


def wait_until(condition: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except Exception:  # an index not there yet: keep polling until the deadline
            pass
        time.sleep(0.5)  # the poll interval; the condition decides
    return condition()


# --------------------------------------------------------------------------- the run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=2.5, help="chaos time (default 2.5)")
    parser.add_argument("--seconds", type=float, help="chaos time in seconds (wins over --minutes)")
    parser.add_argument("--seed", type=int, help="repeat a run (default: a new one, printed)")
    parser.add_argument("--rate", type=float, default=10.0, help="writes/s per table (10)")
    parser.add_argument("--catch-up", type=float, default=180.0, help="seconds to converge")
    parser.add_argument(
        "--tables",
        nargs="+",
        choices=[spec.name for spec in TABLES],
        help="only these tables (default: all), to chase one table's failure",
    )
    parser.add_argument(
        "--expiry-blind-spot",
        dest="blind_spot",
        action="store_true",
        help="also delete partitions whose rows may live only by a TTL CQL cannot read "
        "(a known gap: see the README)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / ".bench" / "chaos.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    seconds = args.seconds if args.seconds is not None else args.minutes * 60
    print(f"chaos: seed {seed} (repeat with --seed {seed}), {seconds:.0f} s of chaos", flush=True)
    rng = random.Random(seed)
    started = time.monotonic()
    logs = args.out.parent / "chaos"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    # SIGTERM (a test's timeout, a CI cancel) unwinds like Ctrl-C: every process stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stack = Stack(seed)
    try:
        return run(args, stack, rng, seed, seconds, logs, started)
    except WriteFailed as exc:
        print(f"chaos: cannot go on, a write was not acknowledged: {exc}", file=sys.stderr)
        return 2
    finally:
        stack.close()


def run(
    args: argparse.Namespace,
    stack: Stack,
    rng: random.Random,
    seed: int,
    seconds: float,
    logs: Path,
    started: float,
) -> int:
    stack.session.execute(
        f"CREATE KEYSPACE \"{KEYSPACE}\" WITH replication = {{'class': 'SingleRegionStrategy'}}"
    )
    tables = [spec for spec in TABLES if not args.tables or spec.name in args.tables]
    for spec in tables:
        stack.session.execute(spec.ddl())
    config = write_config(logs, stack, tables)
    processes = {
        "backfill": Ks2os("backfill", ["backfill"], "chaos-backfill", config, logs),
        "follower_a": Ks2os("follower_a", ["follow"], "chaos-follower-a", config, logs),
        "follower_b": Ks2os("follower_b", ["follow"], "chaos-follower-b", config, logs),
        "reindex": Ks2os("reindex", ["reindex"], "chaos-reindex", config, logs),
    }
    try:
        return chaos_then_check(args, stack, rng, seed, seconds, logs, started, processes, tables)
    finally:
        for process in processes.values():
            process.ensure_stopped()


def chaos_then_check(
    args: argparse.Namespace,
    stack: Stack,
    rng: random.Random,
    seed: int,
    seconds: float,
    logs: Path,
    started: float,
    processes: dict[str, Ks2os],
    tables: list[TableSpec],
) -> int:
    stop_writing = threading.Event()
    writers = [
        Writer(s, stack.session, rng.randrange(2**31), args.rate, stop_writing, args.blind_spot)
        for s in tables
    ]
    chaos = Chaos(stack, rng, processes, tables)
    chaos.proxy_faults()
    chaos.stream_faults()
    for writer in writers:
        writer.start()
    # Rows that exist before anything syncs: only the backfill can bring those.
    stop_writing.wait(3.0)
    processes["follower_a"].start()
    processes["backfill"].start()
    # The backfill's kill first: it may finish within seconds. The second follower
    # starts before it is killed.
    middle = ["kill_follower_a", "split", "merge", "stream_faults", "proxy_faults"]
    must = ["kill_backfill", "second_follower", *rng.sample(middle, len(middle))]
    # The second rebuild event kills the first run if it is still going (a resume).
    must += ["kill_follower_b", "rebuild", "rebuild"]
    try:
        chaos.run(seconds, must)
    finally:
        stop_writing.set()
        for writer in writers:
            writer.join()
    failed_writer = next((w for w in writers if w.error is not None), None)
    if failed_writer is not None:
        raise failed_writer.error  # type: ignore[misc]
    writing_s = time.monotonic() - started

    # Catch-up: no more faults; the backfill ends, one follower brings the rest.
    chaos.proxy_faults(calm=True)
    chaos.stream_faults(calm=True)
    processes["follower_b"].stop()
    settle_at = time.monotonic() + SETTLE_S

    def caught_up() -> bool:
        chaos.supervise()
        if not processes["follower_a"].running:
            processes["follower_a"].start()
        if not chaos.backfill_done or chaos.rebuilding is not None:
            return False
        return time.monotonic() >= settle_at and converged(stack.search, writers)

    converged_in_time = wait_until(caught_up, args.catch_up)
    catch_up_s = time.monotonic() - started - writing_s
    results = [
        invariant for writer in writers for invariant in check(stack.search, stack.session, writer)
    ]
    follower_code = processes["follower_a"].stop()
    backfill_code = processes["backfill"].stop()

    for result in results:
        print(result.line())
    injected = {
        "proxy": dict(stack.proxy.injected),
        "streams": stack.control("faults", {})["injected"],
    }
    tally = chaos.tally
    process_exits = {role: p.exits for role, p in processes.items()}
    passed = sum(r.passed for r in results)
    failed = len(results) - passed
    print(
        f"chaos: {sum(sum(w.ops.values()) for w in writers)} writes on {len(writers)} tables; "
        f"kills {dict(tally.kills)}; splits {tally.splits}, merges {tally.merges}; "
        f"faults {injected['proxy']} (proxy) {injected['streams']} (streams); "
        f"exits by themselves {sum(len(e) for e in process_exits.values())}; "
        f"converged {'yes' if converged_in_time else 'NO'} after {catch_up_s:.0f} s"
    )
    print(f"{passed} passed, {failed} failed", flush=True)
    report = {
        "seed": seed,
        "passed": passed,
        "failed": failed,
        "converged": converged_in_time,
        "invariants": [{**asdict(r), "passed": r.passed} for r in results],
        "writes": {w.spec.name: dict(w.ops) for w in writers},
        "rows_expected": {w.spec.name: len(w.expected(time.time())) for w in writers},
        "faults": injected,
        "kills": dict(tally.kills),
        "splits": tally.splits,
        "merges": tally.merges,
        "rescans": tally.rescans,
        "rebuilds": tally.rebuilds,
        "alias_indexes": {
            spec.alias: sorted(stack.search.indices.get_alias(name=spec.alias)) for spec in tables
        },
        "second_follower_starts": tally.second_follower_starts,
        "process_exits": process_exits,
        "final_exit_codes": {"follower_a": follower_code, "backfill": backfill_code},
        "events": tally.events,
        "seconds": {
            "chaos": round(writing_s, 1),
            "catch_up": round(catch_up_s, 1),
            "total": round(time.monotonic() - started, 1),
        },
    }
    for writer in writers:
        (logs / f"{writer.spec.name}.writes.log").write_text("\n".join(writer.log) + "\n")
        if any(not r.passed for r in results if r.table == writer.spec.name):
            dump_index(stack.search, writer.spec.alias, logs / f"{writer.spec.name}.index.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
