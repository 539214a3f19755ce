"""`make chaos` in brief: a bounded run of scripts/chaos.py finds every index equal to its
table, and the faults it claims to inject did happen.

The script starts its own stack (keyspaces_local and osmem-server as subprocesses, the
fault proxy between ks2os and OpenSearch) and runs `ks2os backfill` and `ks2os follow` as
the console command; see its docstring. `make test` runs about 45 s of chaos;
`make soak` five minutes. A failure names its seed: `make chaos ARGS="--seed N"`
repeats it.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SOAK_FULL

ROOT = Path(__file__).resolve().parent.parent
CHAOS_S = 300 if SOAK_FULL else 45

PROXY_FAULTS = ("bulk_429", "status_503", "reset_before", "reset_after", "delay")
STREAM_FAULTS = ("throttle", "internal_error", "expired_iterator", "empty_records")


@pytest.mark.slow
@pytest.mark.timeout(CHAOS_S + 600)
def test_a_bounded_chaos_run_ends_with_every_index_equal_to_its_table(tmp_path: Path) -> None:
    seed = int(os.environ.get("KS2OS_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    out = tmp_path / "chaos.json"
    chaos = ["-m", "scripts.chaos", "--seconds", str(CHAOS_S), "--seed", str(seed)]
    run = subprocess.run(
        [sys.executable, *chaos, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHAOS_S + 540,
    )
    lines = run.stdout.strip().splitlines()
    failures = "\n".join(line for line in lines if line.startswith("FAIL"))
    output = failures or run.stdout[-3000:]
    assert run.returncode == 0, f"seed {seed}:\n{output}\n{run.stderr[-3000:]}"
    assert lines[-1].endswith(" passed, 0 failed"), lines[-1]

    report = json.loads(out.read_text())
    assert report["seed"] == seed and report["failed"] == 0 and report["converged"]
    names = {i["name"] for i in report["invariants"]}
    assert {"no missing document", "no resurrected row", "dead-letter store empty"} <= names
    # The faults happened: every kind at least once.
    assert report["kills"].get("backfill", 0) >= 1, report["kills"]
    assert report["kills"].get("follower_a", 0) >= 1, report["kills"]
    assert report["kills"].get("follower_b", 0) >= 1, report["kills"]
    assert report["second_follower_starts"] >= 1
    # A rebuild ran to its swap: some alias now points at a later version of its index.
    assert report["rebuilds"] >= 1
    moved = [i for indexes in report["alias_indexes"].values() for i in indexes if "_v1" not in i]
    assert moved, report["alias_indexes"]
    assert report["splits"] >= 1 and report["merges"] >= 1
    for kind in PROXY_FAULTS:
        assert report["faults"]["proxy"].get(kind, 0) >= 1, (kind, report["faults"])
    for kind in STREAM_FAULTS:
        assert report["faults"]["streams"].get(kind, 0) >= 1, (kind, report["faults"])
    # Every kind of write was made, on tables in both timestamp modes.
    ops = set().union(*(set(table_ops) for table_ops in report["writes"].values()))
    assert {"insert_ttl", "delete_row", "delete_partition", "static", "set_change"} <= ops
