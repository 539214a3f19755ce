"""Several tables in one process, as a user runs them: the real `ks2os` command.

Two tables (`orders` in two keyspaces: the same name, two tables) named by
`mappings = ["mappings"]` (a directory) are backfilled in one run, then
followed in one process: changes to both reach both indexes, `/metrics`
shows both tables' series, every log line of a table's job names it, and
SIGTERM stops both cleanly with one JSON line each. `--table` picks one. A
table whose follower fails leaves the other following (the exit code says
it failed), unless `on_table_failure = "stop"`. Every configuration mistake
about the set is one line and exit code 2, before anything connects.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opensearchpy import OpenSearch
from prometheus_client.parser import text_string_to_metric_families

from sync.config import Config
from tests.sync.jobs.follow_helpers import Table, until, wait_for

ENV = {
    "PATH": "/usr/bin:/bin",
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def ks2os(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )


def json_lines(text: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


def by_table(text: str) -> dict[str, dict[str, Any]]:
    """The run's stdout: one JSON line per table, keyed by table."""
    lines = json_lines(text)
    outcomes = {line["table"]: line for line in lines}
    assert len(outcomes) == len(lines), text
    return outcomes


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def mapping_text(keyspace: str, table: str = "orders") -> str:
    return (
        f'[source]\nkeyspace = "{keyspace}"\ntable = "{table}"\n'
        f'[index]\nalias = "{keyspace.lower()}-{table}"\n'
    )


@pytest.fixture
def other_keyspace(cql: Any, keyspace: str) -> Iterator[str]:
    """A second keyspace, so both tables can be called `orders` (and Table can make them)."""
    name = f"{keyspace}_b"
    cql.execute(
        f"CREATE KEYSPACE \"{name}\" WITH replication = {{'class': 'SingleRegionStrategy'}}"
    )
    try:
        yield name
    finally:
        cql.execute(f'DROP KEYSPACE IF EXISTS "{name}"')


def several(
    make_config: Callable[..., Config], tmp_path: Path, keyspaces: list[str], **sections: Any
) -> Path:
    """The config for the local stack, naming a directory of one mapping per keyspace."""
    folder = tmp_path / "mappings"
    folder.mkdir(exist_ok=True)
    for keyspace in keyspaces:
        (folder / f"{keyspace}.toml").write_text(mapping_text(keyspace))
    top = sections.pop("top", "")
    make_config(None, **sections)  # writes tmp_path / "ks2os.toml"
    path = tmp_path / "ks2os.toml"
    # Relative: resolved against the config file's directory, not the working directory.
    path.write_text(f'mappings = ["mappings"]\n{top}' + path.read_text())
    return path


class Follower:
    """`ks2os follow` as a child process: its stderr read line by line, its endpoint."""

    def __init__(self, config: Path, port: int) -> None:
        self.port = port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sync", "--config", str(config), "follow"],
            cwd=config.parent,
            env={**ENV, "KS2OS_STATE_WORKER_ID": f"several-{os.getpid()}"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._stderr.append(line)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as failed:
            with failed:
                return failed.code, failed.read().decode()
        except urllib.error.URLError:
            assert self.process.poll() is None, "ks2os follow exited early: " + self.stderr()
            return 0, ""  # not listening yet

    def samples(self) -> dict[tuple[str, str], float]:
        """(series, table) -> value, for every series labelled by table alone."""
        status, text = self.get("/metrics")
        found: dict[tuple[str, str], float] = {}
        for family in text_string_to_metric_families(text if status == 200 else ""):
            for sample in family.samples:
                if set(sample.labels) == {"table"}:
                    found[(sample.name, sample.labels["table"])] = sample.value
        return found

    def stop(self) -> subprocess.CompletedProcess[str]:
        """SIGTERM, then what it printed and its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        try:
            self.process.wait(timeout=timeout)  # stdout holds a line per table: never full
        except subprocess.TimeoutExpired:
            self.close()
            pytest.fail("ks2os follow did not stop in time: " + self.stderr())
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()  # not communicate(): it would read stderr too
        self._reader.join(timeout=30)
        return subprocess.CompletedProcess(
            self.process.args, self.process.returncode, stdout, self.stderr()
        )

    def stderr(self) -> str:
        return "".join(self._stderr)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=30)
        for pipe in (self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def follower_of() -> Iterator[Callable[[Path, int], Follower]]:
    started: list[Follower] = []

    def start(config: Path, port: int) -> Follower:
        started.append(Follower(config, port))
        return started[-1]

    yield start
    for follower in started:
        follower.close()


def test_two_tables_backfill_then_follow_in_one_process_and_stop_together(
    cql: Any,
    keyspace: str,
    other_keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
    follower_of: Callable[[Path, int], Follower],
) -> None:
    tables = {ks: Table(cql, ks) for ks in (keyspace, other_keyspace)}
    names = {ks: f"{ks}.orders" for ks in tables}
    for i, table in enumerate(tables.values()):
        for n in range(5 + i):  # a different row count per table
            table.insert(n % 2, n, "placed", n)
    port = free_port()
    config = several(
        make_config,
        tmp_path,
        list(tables),
        follow={"metrics_port": port, "metrics_host": "127.0.0.1"},
    )

    loaded = ks2os("--config", str(config), "backfill", cwd=tmp_path)
    assert loaded.returncode == 0, loaded.stderr
    outcomes = by_table(loaded.stdout)
    assert set(outcomes) == set(names.values())
    for ks, table in tables.items():
        line = outcomes[names[ks]]
        assert line["outcome"] == "done" and line["alias"] == f"{ks}-orders"
        assert line["complete"] is True and line["written"] == len(table.model)
        wait_for(opensearch, f"{ks}-orders", table.model)

    follower = follower_of(config, port)
    for i, table in enumerate(tables.values()):
        table.insert(7, 100 + i, "new", 1)
        table.update(0, 0, f"shipped-{i}")
        table.delete(1, 1)
    for ks, table in tables.items():
        wait_for(opensearch, f"{ks}-orders", table.model, seconds=60)
    until(lambda: follower.get("/readyz")[0] == 200, "/readyz is ready for both tables", 60)
    until(
        lambda: all(
            follower.samples().get(("ks2os_follow_applied_total", name), 0) >= 3
            for name in names.values()
        ),
        "both tables' applied counters show their changes",
    )
    found = follower.samples()
    for name in names.values():
        assert found[("ks2os_follow_records_read_total", name)] >= 3
        assert found[("ks2os_follow_shards_owned", name)] >= 1
        assert found[("ks2os_table_failed", name)] == 0
    assert follower.get("/healthz")[0] == 200

    stopped = follower.stop()
    assert stopped.returncode == 0, stopped.stderr
    outcomes = by_table(stopped.stdout)
    assert set(outcomes) == set(names.values())
    for name in names.values():
        assert outcomes[name]["outcome"] == "done"
        assert outcomes[name]["records_read"] >= 3 and outcomes[name]["gaps"] == 0
    logs = json_lines(stopped.stderr)
    assert not [line for line in logs if line["level"] == "error"], stopped.stderr
    # Each table's lines name it: its end, and what its threads logged (the version rule).
    ends = [line for line in logs if line["msg"].startswith("follow stopped")]
    assert sorted(line["table"] for line in ends) == sorted(names.values())
    for line in logs:
        for name in names.values():
            if f"table {name}:" in line["msg"]:
                assert line.get("table") == name, line


def test_table_picks_one_table_and_every_command_takes_them_all(
    cql: Any,
    keyspace: str,
    other_keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    tables = {ks: Table(cql, ks) for ks in (keyspace, other_keyspace)}
    for table in tables.values():
        table.insert(1, 1, "placed", 1)
    config = several(make_config, tmp_path, list(tables))
    base = ("--config", str(config))

    picked = ks2os(*base, "backfill", "--table", f"{other_keyspace}.orders", cwd=tmp_path)
    assert picked.returncode == 0, picked.stderr
    assert list(by_table(picked.stdout)) == [f"{other_keyspace}.orders"]
    assert not opensearch.indices.exists_alias(name=f"{keyspace}-orders")
    wait_for(opensearch, f"{other_keyspace}-orders", tables[other_keyspace].model)

    # By alias; the picked table's index matches.
    verified = ks2os(
        *base, "verify", "--table", f"{other_keyspace}-orders", "--settle", "0.2", cwd=tmp_path
    )
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"verify {other_keyspace}.orders:")

    # Both: the unloaded table fails (exit 1, its line led by its table); the other matches.
    both = ks2os(*base, "verify", "--json", "--settle", "0.2", cwd=tmp_path)
    assert both.returncode == 1, both.stderr
    outcomes = by_table(both.stdout)
    assert outcomes[f"{other_keyspace}.orders"]["outcome"] == "done"
    assert outcomes[f"{other_keyspace}.orders"]["ok"] is True
    failed = outcomes[f"{keyspace}.orders"]
    assert failed["outcome"] == "failed" and "points at no index" in failed["error"]
    errors = [line for line in both.stderr.splitlines() if line.startswith("ks2os:")]
    assert errors == [f"ks2os: {keyspace}.orders: {failed['error']}"]

    cleaned = ks2os(*base, "cleanup", "--dry-run", "--table", f"{keyspace}.orders", cwd=tmp_path)
    assert cleaned.returncode == 0, cleaned.stderr
    assert list(by_table(cleaned.stdout)) == [f"{keyspace}.orders"]

    line = one_line_error(ks2os(*base, "follow", "--table", "shop.nope", cwd=tmp_path))
    assert "no table 'shop.nope' among the mappings" in line
    assert f"{keyspace}.orders (alias {keyspace}-orders)" in line
    assert f"{other_keyspace}.orders (alias {other_keyspace}-orders)" in line


def test_a_failed_table_leaves_the_other_following_and_the_exit_code_says_so(
    cql: Any,
    keyspace: str,
    other_keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
    follower_of: Callable[[Path, int], Follower],
) -> None:
    Table(cql, keyspace, view_type=None)  # no CDC: its follower stops at start (exit 2)
    working = Table(cql, other_keyspace)
    bad, good = f"{keyspace}.orders", f"{other_keyspace}.orders"
    port = free_port()
    config = several(
        make_config,
        tmp_path,
        [keyspace, other_keyspace],
        follow={"metrics_port": port, "metrics_host": "127.0.0.1"},
    )
    follower = follower_of(config, port)
    until(lambda: follower.samples().get(("ks2os_table_failed", bad)) == 1, "the table failed")
    working.insert(1, 1, "placed", 1)
    wait_for(opensearch, f"{other_keyspace}-orders", working.model, seconds=60)
    status, body = follower.get("/readyz")
    assert status == 503 and f"{bad}: stopped on an error: table {bad} has no CDC" in body
    assert follower.samples()[("ks2os_table_failed", good)] == 0
    assert follower.get("/healthz")[0] == 200  # the process still works for the other

    stopped = follower.stop()
    assert stopped.returncode == 2, stopped.stderr
    outcomes = by_table(stopped.stdout)
    assert outcomes[good]["outcome"] == "done" and outcomes[good]["applied"] == 1
    assert outcomes[bad]["outcome"] == "failed"
    errors = [line for line in stopped.stderr.splitlines() if line.startswith("ks2os:")]
    assert errors == [f"ks2os: error: {bad}: {outcomes[bad]['error']}"]
    # Logged when it happened, with its table, while the other went on.
    logged = [line for line in json_lines(stopped.stderr) if line["level"] == "error"]
    assert [line.get("table") for line in logged] == [bad], stopped.stderr


def test_on_table_failure_stop_ends_every_table_at_the_first_failure(
    cql: Any,
    keyspace: str,
    other_keyspace: str,
    make_config: Callable[..., Config],
    tmp_path: Path,
    follower_of: Callable[[Path, int], Follower],
) -> None:
    Table(cql, keyspace, view_type=None)
    Table(cql, other_keyspace)
    bad, good = f"{keyspace}.orders", f"{other_keyspace}.orders"
    port = free_port()
    config = several(
        make_config,
        tmp_path,
        [keyspace, other_keyspace],
        top='on_table_failure = "stop"\n',
        follow={"metrics_port": port, "metrics_host": "127.0.0.1"},
    )
    follower = follower_of(config, port)
    stopped = follower.wait()  # by itself: no signal
    assert stopped.returncode == 2, stopped.stderr
    outcomes = by_table(stopped.stdout)
    assert outcomes[bad]["outcome"] == "failed"
    assert outcomes[good]["outcome"] == "done"  # stopped as on SIGTERM: flushed, released


@pytest.mark.parametrize(
    ("top", "files", "args", "expected"),
    [
        (
            'mapping = "a.toml"\nmappings = ["m"]\n',
            {},
            ("follow",),
            "mapping and mappings are both set",
        ),
        (
            'mappings = ["m"]\n',
            {"m/a.toml": mapping_text("shop"), "m/b.toml": mapping_text("shop")},
            ("backfill",),
            "conf/m/a.toml and conf/m/b.toml both map the table shop.orders",
        ),
        (
            'mappings = ["m/a.toml", "m/b.toml"]\n',
            {
                "m/a.toml": mapping_text("shop"),
                "m/b.toml": mapping_text("shop", "items").replace("shop-items", "shop-orders"),
            },
            ("config", "check"),
            "conf/m/a.toml and conf/m/b.toml both map onto the alias shop-orders",
        ),
        ('mappings = ["m/*.toml"]\n', {}, ("follow",), "matches no file"),
        (
            'mappings = ["m"]\n',
            {"m/a.toml": mapping_text("shop")},
            ("follow", "--table", "shop.items"),
            "no table 'shop.items' among the mappings: --table takes one of: shop.orders",
        ),
        (
            'mappings = ["m"]\non_table_failure = "carry-on"\n',
            {"m/a.toml": mapping_text("shop")},
            ("follow",),
            "on_table_failure must be one of 'continue' | 'stop', got 'carry-on'",
        ),
    ],
    ids=["both-keys", "one-table-twice", "one-alias-twice", "glob", "unknown-table", "policy"],
)
def test_a_mistake_in_the_set_of_tables_is_one_line_and_exit_2(
    tmp_path: Path, top: str, files: dict[str, str], args: tuple[str, ...], expected: str
) -> None:
    conf = tmp_path / "conf"
    for name, text in files.items():
        (conf / name).parent.mkdir(parents=True, exist_ok=True)
        (conf / name).write_text(text)
    conf.mkdir(exist_ok=True)
    (conf / "ks2os.toml").write_text(top)
    # Nothing listens on the configured servers: each mistake is found before connecting.
    line = one_line_error(ks2os("--config", "conf/ks2os.toml", *args, cwd=tmp_path))
    assert line.startswith("ks2os: error: ")
    assert expected in line


def test_config_check_lists_the_tables_it_read(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.toml").write_text(mapping_text("shop"))
    (tmp_path / "m" / "b.toml").write_text(mapping_text("crm", "users"))
    (tmp_path / "ks2os.toml").write_text('mappings = ["m/*.toml"]\n')
    checked = ks2os("config", "check", cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    # Relative to the config file, which is ./ks2os.toml here.
    assert "ks2os: table shop.orders -> alias shop-orders (m/a.toml)" in checked.stderr
    assert "ks2os: table crm.users -> alias crm-users (m/b.toml)" in checked.stderr
    assert orjson.loads(checked.stdout)["mappings"] == ["m/*.toml"]
