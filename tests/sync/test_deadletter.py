"""Dead letters (sync/deadletter.py): what was refused is kept, with why, and counted.

What a user relies on: an entry holds the change, its document id and the
reason; the file store's count survives a restart; the index store creates
its index on first use and, like every other OpenSearch write, rides out
OpenSearch pushing back (it had no retry at all before the bulk transport).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from opensearchpy import OpenSearch

from sync.bulk import Verdict
from sync.deadletter import (
    DeadLetter,
    DeadLetterShare,
    FileDeadLetters,
    IndexDeadLetters,
    Outcome,
)
from sync.model import Change, Op, ScanRead, StreamRead
from sync.retry import RetryPolicy
from tests.sync.faults import HttpProxy

FAST = RetryPolicy(initial_s=0.01, longest_s=0.05, budget_s=10.0)
STREAM = StreamRead("arn:test", "shardId-0001", "000000000000000000042", 1_700_000_000_000)


def change(n: Any = "not a number") -> Change:
    return Change(Op.UPSERT, ("k",), {"id": "k", "n": n}, 7, STREAM)


@pytest.mark.unit
def test_an_entry_records_the_change_its_origin_and_the_reason() -> None:
    entry = DeadLetter(
        change(), "k", "400 mapper_parsing_exception: failed", at_ms=5, entry_id="e1"
    ).to_json()
    assert entry == {
        "id": "e1",
        "doc_id": "k",
        "reason": "400 mapper_parsing_exception: failed",
        "at": 5,
        "op": "upsert",
        "version": 7,
        "key": ["k"],
        "key_cells": [{"textT": "k"}],  # what a replay reads the row again by
        "image": {"id": "k", "n": "not a number"},
        "static_only": False,
        "expires_at": None,
        "source": {
            "kind": "stream",
            "stream_arn": "arn:test",
            "shard_id": "shardId-0001",
            "sequence_number": "000000000000000000042",
            "created_at_ms": 1_700_000_000_000,
            "origin": "USER",
        },
    }
    scanned = Change(Op.UPSERT, ("k",), {"id": "k"}, 7, ScanRead(-5, 5, 99))
    assert DeadLetter(scanned, "k", "r").to_json()["source"] == {
        "kind": "scan",
        "token_start": -5,
        "token_end": 5,
        "read_at_ms": 99,
    }


@pytest.mark.unit
def test_a_rejection_is_final_for_its_change() -> None:
    outcome = Outcome(change())
    outcome.settle(Verdict.APPLIED)
    outcome.reject("k", "static values refused")
    outcome.settle(Verdict.APPLIED)  # a later write of the same change does not undo it
    assert (outcome.verdict, outcome.reason) == (Verdict.REJECTED, "static values refused")
    assert outcome.dead_letter().doc_id == "k"


@pytest.mark.unit
def test_the_file_store_appends_and_its_count_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "dead" / "letters.ndjson"
    store = FileDeadLetters(path)
    store.put([DeadLetter(change(), "k", "one"), DeadLetter(change(2), "k", "two")])
    store.put([])
    assert store.count == 2
    again = FileDeadLetters(path)
    again.put([DeadLetter(change(), "k", "three")])
    assert again.count == 3
    reasons = [orjson.loads(line)["reason"] for line in path.read_bytes().splitlines()]
    assert reasons == ["one", "two", "three"]


@pytest.fixture
def proxy(osmem_clone: Any) -> Iterator[HttpProxy]:
    running = HttpProxy(osmem_clone.url)
    yield running
    running.close()


def test_the_index_store_rides_out_opensearch_pushing_back(
    opensearch: OpenSearch, proxy: HttpProxy
) -> None:
    via_proxy = OpenSearch(hosts=[proxy.url], max_retries=0)
    store = IndexDeadLetters.for_alias(via_proxy, "items", FAST)
    proxy.refuse_requests = 2  # 429 twice, as a busy cluster answers
    store.put([DeadLetter(change(), "k", "400 mapper_parsing_exception: failed")])
    assert len(proxy.bulk_ids) == 3
    assert store.count == 1
    hit = opensearch.search(index="items-deadletter")["hits"]["hits"][0]["_source"]
    assert hit["doc_id"] == "k" and hit["reason"].startswith("400 mapper_parsing_exception")


def test_the_index_store_counts_nothing_before_its_first_entry(opensearch: OpenSearch) -> None:
    store = IndexDeadLetters.for_alias(opensearch, "never", FAST)
    assert store.count == 0
    store.put([DeadLetter(change(), "k", "r")])
    store.put([DeadLetter(change(), "k", "r")])  # the index exists now: created once
    assert store.count == 2


@pytest.mark.unit
def test_the_file_store_removes_by_appending_so_nothing_is_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "letters.ndjson"
    store = FileDeadLetters(path)
    first, second = DeadLetter(change(), "k", "one"), DeadLetter(change(2), "k", "two")
    store.put([first, second])
    before = path.read_bytes()
    store.remove([first.entry_id])
    store.remove([first.entry_id])  # removed already (another replay): counted once
    assert path.read_bytes().startswith(before)  # appended, never rewritten
    assert [entry["reason"] for entry in store.entries()] == ["two"]
    assert store.count == 1 and FileDeadLetters(path).count == 1  # after a restart too


def test_the_index_store_lists_entries_oldest_first_and_removes_them(
    opensearch: OpenSearch,
) -> None:
    store = IndexDeadLetters.for_alias(opensearch, "listed", FAST)
    assert list(store.entries()) == []
    entries = [DeadLetter(change(n), "k", f"reason {n}", at_ms=10 - n) for n in range(3)]
    store.put(entries)
    assert [e["reason"] for e in store.entries()] == ["reason 2", "reason 1", "reason 0"]
    assert next(e["id"] for e in store.entries()) == entries[2].entry_id
    store.remove([entries[0].entry_id])
    store.remove([entries[0].entry_id])  # removed already (another replay): no error
    assert [e["reason"] for e in store.entries()] == ["reason 2", "reason 1"]
    assert store.count == 2


@pytest.mark.unit
def test_the_dead_letter_share_is_judged_over_a_full_window_of_recent_rows() -> None:
    share = DeadLetterShare(max_share=0.1, window=100)
    share.add(50, 40)
    assert not share.exceeded()  # half a window: too few rows to judge
    share.add(50, 0)
    assert share.exceeded()  # 40 of the last 100
    for _ in range(10):
        share.add(50, 2)  # the bad rows age out of the window
    assert not share.exceeded() and share.share() <= 0.1
    share.add(100, 20)
    assert share.exceeded()
    error = share.error("follow demo.items")
    assert "more than dead_letter_max_share 10%" in str(error) and "deadletter replay" in error.hint
