"""The one transport for OpenSearch documents (sync/bulk.py).

Unit tests (no server): verdicts, chunking, the NDJSON lines of each kind of
action, and the mapping of opensearch-py's exceptions into the error tree.
Integration tests against osmem-server (through a fault-injecting proxy where
a failure is needed): every action gets its verdict, only failed items are
re-sent, the retry policy gives up in time or at once on stop, reads by id
honour routing, and a scan pages in order from one point in time, which it
releases.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from opensearchpy import OpenSearch
from opensearchpy.exceptions import (
    AuthenticationException,
    AuthorizationException,
    ConnectionError,
    ConnectionTimeout,
    NotFoundError,
    SSLError,
    TransportError,
)

from sync.bulk import (
    Action,
    Bulk,
    Reader,
    Stamp,
    Traffic,
    Verdict,
    bulk_lines,
    chunks,
    opensearch_error,
    reason_of,
    verdict_of,
)
from sync.errors import ConfigError, OpenSearchRefused, OpenSearchUnavailable
from sync.retry import RetryPolicy
from tests.sync.faults import HttpProxy

FAST = RetryPolicy(initial_s=0.01, longest_s=0.05, budget_s=10.0)


# ---------------------------------------------------------------- unit


@pytest.mark.unit
def test_verdicts_by_status() -> None:
    assert [verdict_of(s) for s in (200, 201)] == [Verdict.APPLIED] * 2
    assert verdict_of(409) is Verdict.STALE
    assert [verdict_of(s) for s in (429, 500, 503, 0)] == [Verdict.TRANSIENT] * 4
    assert [verdict_of(s) for s in (400, 404, 413)] == [Verdict.REJECTED] * 3


@pytest.mark.unit
def test_chunks_hold_at_most_max_docs_and_max_bytes() -> None:
    assert chunks([10] * 7, max_docs=3, max_bytes=1000) == [range(0, 3), range(3, 6), range(6, 7)]
    assert chunks([40, 40, 40], max_docs=100, max_bytes=100) == [range(0, 2), range(2, 3)]
    # An item larger than max_bytes goes alone rather than not at all.
    assert chunks([10, 500, 10], max_docs=100, max_bytes=100) == [
        range(0, 1),
        range(1, 2),
        range(2, 3),
    ]
    assert chunks([], max_docs=3, max_bytes=100) == []


@pytest.mark.unit
def test_each_kind_of_action_has_its_metadata_line() -> None:
    body = {"n": 1}
    external = Action("a", orjson.dumps(body), routing="p", version=7)
    conditional = Action("b", body, expect=Stamp(3, 1))
    create = Action("c", body, create=True)
    plain = Action(None, body)
    lines = bulk_lines([external, conditional, create, plain]).split(b"\n")
    metas = [orjson.loads(line) for line in lines[0::2] if line]
    assert metas == [
        {"index": {"_id": "a", "routing": "p", "version": 7, "version_type": "external"}},
        {"index": {"_id": "b", "if_seq_no": 3, "if_primary_term": 1}},
        {"create": {"_id": "c"}},
        {"index": {}},
    ]
    assert all(orjson.loads(line) == body for line in lines[1::2] if line)


@pytest.mark.unit
def test_a_reason_is_one_line_with_its_cause() -> None:
    error = {
        "type": "mapper_parsing_exception",
        "reason": "failed to parse field [n]",
        "caused_by": {"type": "number_format_exception", "reason": 'For input: "x"'},
    }
    assert reason_of(error) == (
        "mapper_parsing_exception: failed to parse field [n] "
        '(caused by number_format_exception: For input: "x")'
    )
    assert reason_of(None) == ""


def _info(status: int, error_type: str, reason: str) -> dict[str, Any]:
    return {"error": {"type": error_type, "reason": reason}, "status": status}


@pytest.mark.unit
def test_opensearch_exceptions_become_errors_of_the_tree() -> None:
    doing = "bulk to items_v1"
    refused = ConnectionError("N/A", "Connection refused", None)
    assert isinstance(opensearch_error(refused, doing), OpenSearchUnavailable)
    timeout = ConnectionTimeout("TIMEOUT", "read timed out", None)
    assert "did not answer in time" in str(opensearch_error(timeout, doing))
    tls = SSLError("N/A", "certificate verify failed", None)
    assert isinstance(opensearch_error(tls, doing), ConfigError)
    busy = TransportError(429, "es_rejected_execution_exception", _info(429, "es_rejected", "x"))
    assert isinstance(opensearch_error(busy, doing), OpenSearchUnavailable)
    assert isinstance(
        opensearch_error(TransportError(503, "unavailable", {}), doing), OpenSearchUnavailable
    )

    credentials = opensearch_error(AuthenticationException(401, "unauthorized", {}), doing)
    assert isinstance(credentials, ConfigError) and "opensearch.auth" in credentials.hint
    forbidden = opensearch_error(AuthorizationException(403, "security_exception", {}), doing)
    assert isinstance(forbidden, OpenSearchRefused) and forbidden.status == 403
    missing = opensearch_error(
        NotFoundError(
            404,
            "index_not_found_exception",
            _info(404, "index_not_found_exception", "no such index [x]"),
        ),
        doing,
    )
    assert isinstance(missing, OpenSearchRefused)
    assert (missing.status, missing.error_type) == (404, "index_not_found_exception")
    assert str(missing) == (
        "bulk to items_v1: OpenSearch refused it (404): "
        "index_not_found_exception: no such index [x]"
    )


# ---------------------------------------------------------------- integration


@pytest.fixture
def index(opensearch: OpenSearch) -> str:
    opensearch.indices.create(
        index="docs",
        body={"mappings": {"dynamic": "strict", "properties": {"n": {"type": "integer"}}}},
    )
    return "docs"


@pytest.fixture
def proxy(osmem_clone: Any) -> Iterator[HttpProxy]:
    running = HttpProxy(osmem_clone.url)
    yield running
    running.close()


def _via(proxy: HttpProxy) -> OpenSearch:
    # No transport-level retries: every re-send must be the transport's own.
    return OpenSearch(hosts=[proxy.url], max_retries=0)


def test_every_kind_of_action_gets_its_verdict(opensearch: OpenSearch, index: str) -> None:
    bulk = Bulk(opensearch, index, FAST)
    first = bulk.send([Action("v", {"n": 1}, version=5), Action("c", {"n": 1}, create=True)])
    assert [r.verdict for r in first] == [Verdict.APPLIED, Verdict.APPLIED]
    stamp = first[1].stamp
    assert stamp is not None

    results = bulk.send(
        [
            Action("v", {"n": 2}, version=4),  # older than what is stored
            Action("c", {"n": 2}, create=True),  # exists already
            Action("c", {"n": 3}, expect=stamp),  # still as read: written
            Action("c", {"n": 4}, expect=stamp),  # no longer as read
            Action("x", {"n": "not a number"}, version=1),  # refused for its content
            Action(None, {"n": 5}),  # any id
        ]
    )
    verdicts = [r.verdict for r in results]
    assert verdicts == [
        Verdict.STALE,
        Verdict.STALE,
        Verdict.APPLIED,
        Verdict.STALE,
        Verdict.REJECTED,
        Verdict.APPLIED,
    ]
    assert "mapper_parsing_exception" in results[4].reason and results[4].status == 400
    assert opensearch.get(index=index, id="c")["_source"] == {"n": 3}


def test_only_failed_items_are_resent(opensearch: OpenSearch, index: str, proxy: HttpProxy) -> None:
    proxy.refuse_items = {"b": [503], "d": [429, 503]}
    traffic = Traffic()
    results = Bulk(_via(proxy), index, FAST).send(
        [Action(key, {"n": i}, version=1) for i, key in enumerate("abcde")], traffic
    )
    assert proxy.bulk_ids == [list("abcde"), ["b", "d"], ["d"]]
    assert [r.verdict for r in results] == [Verdict.APPLIED] * 5
    assert (traffic.requests, traffic.retries) == (3, 2)
    opensearch.indices.refresh(index=index)
    assert opensearch.count(index=index)["count"] == 5


def test_a_whole_request_refused_with_429_is_retried(index: str, proxy: HttpProxy) -> None:
    proxy.refuse_requests = 2
    traffic = Traffic()
    results = Bulk(_via(proxy), index, FAST).send(
        [Action(key, {"n": 1}, version=1) for key in "abc"], traffic
    )
    assert proxy.bulk_ids == [list("abc")] * 3
    assert [r.verdict for r in results] == [Verdict.APPLIED] * 3
    assert traffic.retries == 2


def test_the_transport_gives_up_after_the_retry_budget(index: str, proxy: HttpProxy) -> None:
    proxy.refuse_requests = 10_000
    policy = RetryPolicy(initial_s=0.01, longest_s=0.05, budget_s=0.3)
    with pytest.raises(OpenSearchUnavailable) as raised:
        Bulk(_via(proxy), index, policy).send([Action("a", {"n": 1}, version=1)])
    assert "429" in str(raised.value) and "after 0.3 s" in str(raised.value)
    assert len(proxy.bulk_ids) >= 2


def test_a_stop_ends_the_backoff_at_once(index: str, proxy: HttpProxy) -> None:
    # Waits of an hour: only the stop event can end them within the test's deadline.
    stop = threading.Event()
    policy = RetryPolicy(initial_s=3600, longest_s=3600, budget_s=7200, stop=stop)
    proxy.refuse_requests = 10_000
    raised: list[BaseException] = []

    def send() -> None:
        try:
            Bulk(_via(proxy), index, policy).send([Action("a", {"n": 1}, version=1)])
        except BaseException as exc:
            raised.append(exc)

    sender = threading.Thread(target=send)
    sender.start()
    _until(lambda: len(proxy.bulk_ids) >= 1)  # refused once: now in its backoff
    stop.set()
    sender.join(timeout=60)
    assert not sender.is_alive()
    (error,) = raised
    assert isinstance(error, OpenSearchUnavailable) and "stopping" in str(error)


def test_requests_are_split_by_docs_and_bytes(index: str, proxy: HttpProxy) -> None:
    client = _via(proxy)
    Bulk(client, index, FAST, max_docs=3).send(
        [Action(f"k{i}", {"n": i}, version=1) for i in range(7)]
    )
    assert [len(ids) for ids in proxy.bulk_ids] == [3, 3, 1]
    proxy.bulk_ids.clear()
    Bulk(client, index, FAST, max_bytes=60).send(
        [Action(f"m{i}", {"n": i}, version=1) for i in range(3)]
    )
    assert [len(ids) for ids in proxy.bulk_ids] == [1, 1, 1]


def test_an_unreachable_opensearch_is_one_transient_error() -> None:
    client = OpenSearch(hosts=["http://127.0.0.1:1"], max_retries=0, timeout=5)
    policy = RetryPolicy(initial_s=0.01, longest_s=0.02, budget_s=0.1)
    with pytest.raises(OpenSearchUnavailable) as raised:
        Reader(client, "docs", policy).get({"a": None})
    message = str(raised.value)
    assert "\n" not in message and "cannot reach OpenSearch" in message
    assert "opensearch.hosts" in raised.value.hint


def test_reads_by_id_are_real_time_and_honour_routing(opensearch: OpenSearch, index: str) -> None:
    Bulk(opensearch, index, FAST).send(
        [Action("r", {"n": 1}, routing="p1", version=3), Action("plain", {"n": 2}, version=3)]
    )
    found = Reader(opensearch, index, FAST).get({"r": "p1", "plain": None, "absent": None})
    assert set(found) == {"r", "plain"}
    assert found["r"].body == {"n": 1} and found["r"].routing == "p1"
    assert found["plain"].stamp.seq_no >= 0


def test_a_scan_pages_in_order_from_one_point_in_time(opensearch: OpenSearch, index: str) -> None:
    bulk = Bulk(opensearch, index, FAST)
    bulk.send([Action(f"d{i:02d}", {"n": i % 3}, version=1) for i in range(25)])
    reader = Reader(opensearch, index, FAST)
    reader.refresh()
    pages = reader.scan({"range": {"n": {"gte": 1}}}, page_size=4)
    first = next(pages)
    # Written after the scan began: not part of what it sees.
    bulk.send([Action("zz", {"n": 1}, version=1)])
    reader.refresh()
    seen = [doc.doc_id for doc in first] + [doc.doc_id for page in pages for doc in page]
    assert seen == [f"d{i:02d}" for i in range(25) if i % 3]
    assert len(first) == 4
    assert opensearch.get_all_pits()["pits"] == []  # released at the end


def test_a_search_is_one_page_of_what_matches(opensearch: OpenSearch, index: str) -> None:
    Bulk(opensearch, index, FAST).send([Action(f"d{i}", {"n": i}, version=1) for i in range(5)])
    reader = Reader(opensearch, index, FAST)
    reader.refresh()
    found = reader.search({"range": {"n": {"gte": 2}}}, size=10)
    assert sorted(doc.doc_id for doc in found) == ["d2", "d3", "d4"]
    assert len(reader.search({"match_all": {}}, size=2)) == 2


def test_a_scan_left_early_releases_its_point_in_time(opensearch: OpenSearch, index: str) -> None:
    Bulk(opensearch, index, FAST).send([Action(f"d{i}", {"n": i}, version=1) for i in range(5)])
    reader = Reader(opensearch, index, FAST)
    reader.refresh()
    pages = reader.scan({"match_all": {}}, sort=[{"n": "desc"}], page_size=2)
    assert [doc.body["n"] for doc in next(pages)] == [4, 3]
    assert len(opensearch.get_all_pits()["pits"]) == 1
    pages.close()
    assert opensearch.get_all_pits()["pits"] == []


def _until(condition: Any, timeout_s: float = 60.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout_s * 20)):
        if condition():
            return
        done.wait(0.05)
    raise AssertionError("condition not met in time")
