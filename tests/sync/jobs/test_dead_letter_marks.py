"""A dead-lettered change never leaves its row searchable in an older state, can be re-driven,
and a run that dead-letters too much stops instead of reporting success.

What users rely on (issue 10, item 10):

- the row of a change that could not be written is hidden (a mark at the
  change's version, which `verify` can count), not found as it was before;
- `ks2os deadletter list` shows the entries; once the cause is mended,
  `ks2os deadletter replay` reads each row again over CQL, writes it, clears
  the mark and removes the entry; a raw record whose decoding failed is
  replayed by its key the same way;
- a backfill or a follower whose dead-letter share passes
  `dead_letter_max_share` stops with one line (exit 1), not a success.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from opensearchpy import OpenSearch

from sync.clients import streams_client
from sync.config import Config
from sync.deadletter import FileDeadLetters, TooManyDeadLetters
from sync.jobs import Job
from sync.jobs.deadletters import replay_dead_letters
from sync.jobs.follow import Follower
from sync.mapping import load_mapping
from tests.conftest import table_options
from tests.sync.jobs.follow_helpers import (
    Table,
    following,
    indexed,
    orders_mapping,
    stopped_by,
    until,
    wait_for,
)
from tests.sync.jobs.test_follow_dead_letters import CorruptingStreams, running

RAISING_HOOK = """
def shape(row, document):
    if row.get("state") == "poison":
        raise ValueError("cannot shape a poisoned order")
    return document
"""
MENDED_HOOK = """
def shape(row, document):
    return document
"""


def ks2os(*args: str, config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sync", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def hooked_orders(tmp_path: Path, keyspace: str) -> tuple[Path, str]:
    """A mapping file for the orders table whose hook (beside it) refuses 'poison'."""
    module = f"orders_hooks_{keyspace}"
    (tmp_path / f"{module}.py").write_text(RAISING_HOOK)
    path = tmp_path / "orders.toml"
    path.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "orders"\n'
        f'[index]\nalias = "{keyspace.lower()}-orders"\n'
        f'[document]\nhook = "{module}:shape"\n'
    )
    return path, module


def test_a_dead_lettered_change_hides_its_row_until_a_replay_writes_it_again(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    path, module = hooked_orders(tmp_path, keyspace)
    dead = tmp_path / "dead.ndjson"
    cfg = make_config(str(path))
    config = tmp_path / "ks2os.toml"
    config.write_text(f'dead_letter = "{dead}"\n' + config.read_text())
    cfg = dataclasses.replace(cfg, dead_letter=str(dead))
    mapping = load_mapping(str(path))
    table = Table(cql, keyspace)
    with following(cfg, mapping):
        table.insert(1, 1, "new", 10)
        table.insert(1, 2, "new", 20)
        wait_for(opensearch, mapping.alias, table.model)
        table.update(1, 1, "poison")  # the hook refuses it
        until(lambda: FileDeadLetters(dead).count == 1, "the change is dead-lettered")
        # Not found in its older state ("new") as if that were current.
        until(lambda: "1:1" not in indexed(opensearch, mapping.alias), "the row is hidden")
    opensearch.indices.refresh(index=f"{mapping.alias}_v1")
    mark = opensearch.get(index=f"{mapping.alias}_v1", id="1:1")["_source"]
    assert mark == {"_ks2os": {**mark["_ks2os"], "dead_letter": True, "deleted": False}}
    assert set(mark) == {"_ks2os"}

    listed = ks2os("deadletter", "list", config=config)
    assert listed.returncode == 0, listed.stderr
    (line,) = listed.stdout.splitlines()
    assert "upsert 1:1" in line and "cannot shape a poisoned order" in line
    assert listed.stderr.strip() == "ks2os: 1 dead letter(s)"

    refused = ks2os("deadletter", "replay", config=config)  # the hook still refuses it
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines()[-1].startswith("ks2os: 1 dead letter(s) refused")
    assert FileDeadLetters(dead).count == 1

    (tmp_path / f"{module}.py").write_text(MENDED_HOOK)
    replayed = ks2os("deadletter", "replay", config=config)
    assert replayed.returncode == 0, replayed.stderr
    summary = orjson.loads(replayed.stdout)
    assert summary == {"replayed": 1, "refused_again": 0, "unreadable": 0, "remaining": 0}
    assert FileDeadLetters(dead).count == 0
    assert indexed(opensearch, mapping.alias) == table.model  # the row as the table holds it
    assert indexed(opensearch, mapping.alias)["1:1"]["state"] == "poison"


def test_an_undecodable_record_marks_its_row_and_a_replay_reads_the_row_again(
    cql: Any,
    keyspace: str,
    opensearch: OpenSearch,
    make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    dead = tmp_path / "dead.ndjson"
    cfg = dataclasses.replace(make_config(), dead_letter=str(dead))
    table = Table(cql, keyspace)
    mapping = orders_mapping(keyspace)
    with following(cfg, mapping):
        table.insert(3, 1, "new", 1)
        table.insert(4, 1, "new", 2)
        wait_for(opensearch, mapping.alias, table.model)
    with (
        Job(cfg, mapping) as job,
        running(Follower(job, CorruptingStreams(streams_client(cfg), 3))),
    ):
        table.update(3, 1, "paid")  # its record comes back with an undecodable cell
        table.update(4, 1, "paid")
        until(lambda: FileDeadLetters(dead).count == 1, "the record is dead-lettered")
        wait_for(opensearch, mapping.alias, {k: v for k, v in table.model.items() if k != "3:1"})
    summary = replay_dead_letters(cfg, mapping)
    assert (summary.replayed, summary.remaining) == (1, 0)
    assert indexed(opensearch, mapping.alias) == table.model


def test_a_backfill_that_dead_letters_too_much_stops_with_one_line(
    cql: Any, keyspace: str, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    path, _ = hooked_orders(tmp_path, keyspace)
    make_config(str(path), backfill={"ranges": 4, "workers": 1})
    config = tmp_path / "ks2os.toml"
    config.write_text(
        f'dead_letter = "{tmp_path / "dead.ndjson"}"\ndead_letter_window = 10\n'
        + config.read_text()
    )
    table = Table(cql, keyspace)
    for n in range(20):
        table.insert(n, n, "poison" if n % 4 else "fine", n)  # three in four refused
    result = ks2os("backfill", config=config)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert line.startswith("ks2os: backfill of ") and "dead-lettered" in line
    assert "more than dead_letter_max_share 10%" in line and "deadletter replay" in line
    (outcome,) = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert outcome["outcome"] == "failed" and "dead-lettered" in outcome["error"]
    assert "summary" not in outcome and "written" not in outcome  # the run did not succeed


def test_a_follower_whose_recent_records_are_dead_lettered_stops(
    cql: Any, keyspace: str, make_config: Callable[..., Config], tmp_path: Path
) -> None:
    path, _ = hooked_orders(tmp_path, keyspace)
    cfg = dataclasses.replace(
        make_config(str(path)), dead_letter=str(tmp_path / "dead.ndjson"), dead_letter_window=5
    )
    cql.execute(
        f'CREATE TABLE "{keyspace}"."orders" ("customer" int, "order" int, "state" text, '
        '"amount" int, PRIMARY KEY ("customer", "order"))'
        + table_options(view_type="NEW_AND_OLD_IMAGES", client_timestamps=False)
    )
    for n in range(12):
        state = "poison" if n % 2 else "fine"
        cql.execute(
            f'INSERT INTO "{keyspace}"."orders" ("customer", "order", "state", "amount") '
            f"VALUES ({n}, {n}, '{state}', {n})"
        )
    error = stopped_by(cfg, load_mapping(str(path)))
    assert isinstance(error, TooManyDeadLetters)
    assert "dead-lettered" in str(error) and "dead_letter_max_share" in str(error)
