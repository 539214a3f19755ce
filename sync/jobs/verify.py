"""`verify`: prove that an index equals its table, document by document, and repair it.

Flow, one token range at a time, in `backfill.workers` threads::

    the table: a LOCAL_QUORUM scan of the range (the backfill's SnapshotScanner),
               page by page, each row with its token
    the index: the documents whose `_ks2os.token` lies in the range, tombstones and
               partition documents included, sorted by token then id (one point in time)
      -> merged by token: the documents the mapping builds from the token's rows
         (sync.compare, the writers' DocumentBuilder) beside the stored ones
      -> each difference is a candidate, checked again `settle` seconds later
         against a fresh read of its token's rows and of the document
      -> what still differs is counted (first examples kept) and, with `repair`,
         rewritten through the normal writer

Memory is bounded by a page of rows, a page of documents, one partition and
the candidates waiting for their re-check; never by the table.

**Changes made while verify runs.** A difference counts only if a fresh read
of the row and of the document, `settle` seconds after it was first seen,
still shows it, and neither side changed in between: both held still for
longer than the follower's lag, so no change can still be on its way. A
document whose stored version is at least the fresh read's snapshot version
was written from a change newer than (or within the snapshot margin of) the
read: not a divergence. Either way the document is looked at again after
`settle`, up to `_ROUNDS` times, then counted as `unsettled` (it kept
changing) rather than as divergent.

**Repair** writes exactly the divergent documents, with versions that cannot
beat a newer stream change: the fresh read's snapshot version
(`sync.version.snapshot_version`). A row goes through `BulkWriter` as a
snapshot change (on a table with static columns, one that leaves the statics
to the partition document, unless that document is itself divergent: then a
static-only change rewrites it first); a document without a row becomes a
tombstone at that version (external version, or conditional on the document
as read where the writer writes conditionally). A document whose version is
above the fresh read's is re-checked later; one above the service clock
cannot be beaten by any repair and is reported as unrepairable.

`run_verify` is what `ks2os verify` and `reindex` (a sample check before its
alias swap) call.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import queue
import random
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from opensearchpy import OpenSearch

from sync.bulk import Action, Document, Reader, Stamp, Verdict, call
from sync.clients import opensearch_client
from sync.compare import (
    Expected,
    Finding,
    Kind,
    check,
    check_unexpected,
    compare,
    expected_documents,
    meta_of,
    newest_version,
    token_of,
)
from sync.config import Config
from sync.documents import META_FIELD
from sync.errors import TerminalError
from sync.indices import Target, alias_targets, ensure_index
from sync.jobs import Job
from sync.keyspaces import service_now_ms
from sync.logs import ContextThread
from sync.mapping import TableMapping
from sync.model import Change, Op, ScanRead
from sync.progress import Progress, Reporter
from sync.schema import TableLayout
from sync.sources.cql import ScanPage, SnapshotScanner, TokenRange, ring_for, split_ring
from sync.tokens import token_of_text, token_text
from sync.version import base, snapshot_version
from sync.writer import BulkWriter

log = logging.getLogger(__name__)

NO_TOKEN = "no_token"  # a report kind beside sync.compare.Kind: documents verify cannot place
KINDS = (*(kind.value for kind in Kind), NO_TOKEN)

# Re-checks of a document that keeps being newer than the fresh read before it is
# given up on as `unsettled` (still changing: the follower is writing it).
_ROUNDS = 5
# Candidates one worker holds before it waits for their re-checks.
_MAX_PENDING = 10_000


@dataclass(frozen=True)
class Example:
    """One divergent document: its kind, id, token and what differs."""

    kind: str
    doc_id: str
    token: int | None
    detail: str


@dataclass(frozen=True)
class VerifyReport:
    """What `verify` found. `ok`: the index matched the table (after repair, if asked)."""

    table: str
    alias: str
    index: str
    ok: bool
    complete: bool  # every chosen range was compared (False: stopped, or no token to read by)
    sampled: bool  # a sample (rows or a share of the ranges), not the whole ring
    ranges: int  # token ranges compared
    ranges_total: int  # ranges the ring was split into
    rows: int  # rows read from the table
    documents: int  # documents read from the index
    counts: Mapping[str, int]  # divergent documents per kind (KINDS)
    examples: Mapping[str, tuple[Example, ...]]  # the first of each kind
    settled: int  # differences gone on the fresh read: changes made while verify ran
    unsettled: int  # documents still changing after every re-check: not counted
    repaired: int
    unrepaired: tuple[Example, ...]  # with the reason and what to do
    seconds: float

    @property
    def divergent(self) -> int:
        return sum(self.counts.values())

    def to_json(self) -> dict[str, Any]:
        """The report as `ks2os verify --json` prints it (tokens as decimal strings)."""

        def shown(example: Example) -> dict[str, Any]:
            token = None if example.token is None else str(example.token)
            return {"doc_id": example.doc_id, "token": token, "detail": example.detail}

        return {
            "ok": self.ok,
            "complete": self.complete,
            "table": self.table,
            "alias": self.alias,
            "index": self.index,
            "sampled": self.sampled,
            "ranges": self.ranges,
            "ranges_total": self.ranges_total,
            "rows": self.rows,
            "documents": self.documents,
            "divergent": self.divergent,
            "counts": dict(self.counts),
            "examples": {k: [shown(e) for e in shown_] for k, shown_ in self.examples.items()},
            "settled": self.settled,
            "unsettled": self.unsettled,
            "repaired": self.repaired,
            "unrepaired": [{"kind": e.kind, **shown(e)} for e in self.unrepaired],
            "seconds": round(self.seconds, 3),
        }

    def text(self) -> str:
        """The report for a person: what was compared, each kind with its examples, the result."""
        share = "" if not self.sampled else " (a sample)"
        lines = [
            f"verify {self.table}: index {self.index} (alias {self.alias})",
            f"compared {self.rows} rows with {self.documents} documents in {self.ranges} of "
            f"{self.ranges_total} token ranges{share}, {self.seconds:.1f} s",
        ]
        for kind in KINDS:
            lines.append(f"  {kind:<16} {self.counts.get(kind, 0)}")
            lines += [f"      {e.doc_id}  {e.detail}" for e in self.examples.get(kind, ())]
        if self.settled or self.unsettled:
            lines.append(
                f"{self.settled} differences were changes made while verify ran (gone on a "
                f"fresh read); {self.unsettled} documents kept changing and were not checked"
            )
        if self.repaired or self.unrepaired:
            lines.append(f"repaired {self.repaired} of {self.divergent} divergent documents")
            lines += [f"  not repaired: {e.doc_id} ({e.kind}): {e.detail}" for e in self.unrepaired]
        lines.append("result: " + self._verdict())
        return "\n".join(lines)

    def _verdict(self) -> str:
        if self.ok:
            return "the index matches the table" + (" (repaired)" if self.repaired else "")
        if self.counts.get(NO_TOKEN):
            return "documents without a token: rebuild the index with ks2os reindex"
        if not self.complete:
            return "stopped before every range was compared"
        left = self.divergent - self.repaired
        if self.repaired or self.unrepaired:
            return f"{left} divergent documents left"
        return f"{left} divergent documents: ks2os verify --repair rewrites them"


# ---------------------------------------------------------------- the run


def run_verify(
    cfg: Config,
    mapping: TableMapping,
    *,
    target: Target | None = None,
    sample: int | None = None,
    fraction: float | None = None,
    repair: bool = False,
    stop: threading.Event | None = None,
    settle_s: float = 5.0,
    examples: int = 5,
    seed: int | None = None,
) -> VerifyReport:
    """Compare the mapping's table with `target` (default: the alias's index); see above.

    `sample`: about that many rows, spread over every range; `fraction`: that share
    of the ranges (chosen at random, `seed` to repeat a choice), each whole.
    """
    if sample is not None and fraction is not None:
        raise ValueError("sample and fraction exclude each other")
    stop = stop or threading.Event()
    started = time.monotonic()
    client = opensearch_client(cfg)
    try:
        target = target or _alias_index(client, mapping)
        with Job(cfg, mapping, target=target, stop=stop, client=client) as job:
            log.info(job.info.version_rule())
            return _Verify(job, repair, settle_s, examples).run(sample, fraction, seed, started)
    finally:
        client.close()


def _alias_index(client: OpenSearch, mapping: TableMapping) -> Target:
    """The index behind the alias; never one made for the occasion."""
    indexes = alias_targets(client, mapping.alias)
    if not indexes:
        raise TerminalError(
            f"alias {mapping.alias} points at no index: there is nothing to verify",
            hint="load the table with ks2os backfill first",
        )
    return Target(mapping.alias, ensure_index(client, mapping))


@dataclass
class _Candidate:
    """A document that differed, waiting for its re-check against a fresh read."""

    token: int
    doc_id: str
    routing: str | None
    due: float  # monotonic time of the next check
    seen: _Seen | None  # both sides as last read (None: not yet, or rewritten since)
    rounds: int = 0
    counted: bool = False
    repairs: int = 0  # repair writes sent for it
    why: str = ""  # what the last repair write came to, if it did not apply


@dataclass
class _Tally:
    """What every worker found, added up under a lock."""

    examples_per_kind: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    examples: dict[str, list[Example]] = field(default_factory=dict)
    rows: int = 0
    documents: int = 0
    ranges: int = 0
    settled: int = 0
    unsettled: int = 0
    repaired: int = 0
    unrepaired: list[Example] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def found(self, kind: str, doc_id: str, token: int | None, detail: str) -> None:
        with self.lock:
            self.counts[kind] += 1
            shown = self.examples.setdefault(kind, [])
            if len(shown) < self.examples_per_kind:
                shown.append(Example(kind, doc_id, token, detail))

    def add(self, **amounts: int) -> None:
        with self.lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def failed_repair(self, example: Example) -> None:
        with self.lock:
            self.unrepaired.append(example)


class _Verify:
    def __init__(self, job: Job, repair: bool, settle_s: float, examples: int) -> None:
        self.job = job
        self.repair = repair
        self.settle_s = max(settle_s, 0.0)
        settings = job.cfg.backfill
        self.margin_ms = settings.snapshot_margin_ms
        self.scanner = SnapshotScanner(
            job.session,
            job.info,
            page_size=settings.page_size,
            margin_ms=settings.snapshot_margin_ms,
        )
        self.ring = ring_for(job.info.partitioner)
        self.tally = _Tally(examples)
        self.errors: list[BaseException] = []
        self.failed = threading.Event()

    def halted(self) -> bool:
        return self.job.stop.is_set() or self.failed.is_set()

    def run(
        self, sample: int | None, fraction: float | None, seed: int | None, started: float
    ) -> VerifyReport:
        job = self.job
        ranges = split_ring(max(job.cfg.backfill.ranges, 1), self.ring)
        chosen = _choose(ranges, sample, fraction, random.Random(seed))
        budget = None if sample is None else _Budget(sample, len(chosen))
        reader = self._reader()
        untokened = self._untokened(reader)
        complete = False
        if untokened is None:
            progress = Progress(dict(chosen))
            progress.start(started)
            complete = self._compare(chosen, budget, progress)
        tally = self.tally
        divergent = sum(tally.counts.values())
        return VerifyReport(
            table=job.info.qualified_name,
            alias=job.target.alias,
            index=job.index,
            ok=complete and divergent == tally.repaired,
            complete=complete,
            sampled=sample is not None or fraction is not None,
            ranges=tally.ranges,
            ranges_total=len(ranges),
            rows=tally.rows,
            documents=tally.documents,
            counts=dict(tally.counts),
            examples={kind: tuple(shown) for kind, shown in tally.examples.items()},
            settled=tally.settled,
            unsettled=tally.unsettled,
            repaired=tally.repaired,
            unrepaired=tuple(tally.unrepaired),
            seconds=time.monotonic() - started,
        )

    def _reader(self) -> Reader:
        job = self.job
        return Reader(
            job.client,
            job.index,
            job.policy,
            page_size=job.cfg.backfill.page_size,
            timeout_s=job.cfg.writer.timeout_s,
        )

    def _untokened(self, reader: Reader) -> int | None:
        """Count the documents without a token (an index written before tokens); None if none.

        Such documents cannot be read by token range: verify reports them and
        compares nothing, since every one of their rows would look missing.
        """
        query = {"bool": {"must_not": [{"exists": {"field": f"{META_FIELD}.token"}}]}}
        request = functools.partial(
            self.job.client.count, index=self.job.index, body={"query": query}
        )
        count = int(call(self.job.policy, f"counting {self.job.index}", request)["count"])
        if count == 0:
            return None
        self.tally.counts[NO_TOKEN] = count
        detail = "no _ks2os.token: written before ks2os wrote tokens; rebuild with ks2os reindex"
        shown = reader.search(query, size=self.tally.examples_per_kind)
        self.tally.examples[NO_TOKEN] = [Example(NO_TOKEN, d.doc_id, None, detail) for d in shown]
        return count

    def _compare(
        self, chosen: list[tuple[int, TokenRange]], budget: _Budget | None, progress: Progress
    ) -> bool:
        """Every chosen range compared by the workers; False when stopped first."""
        work: queue.SimpleQueue[tuple[int, TokenRange]] = queue.SimpleQueue()
        for item in chosen:
            work.put(item)
        done = threading.Event()
        reporter = Reporter(progress, done, "verify")
        reporter.start()
        workers = [
            ContextThread(
                target=self._work,
                args=(work, budget, progress),
                name=f"ks2os-verify-{n}",
                daemon=True,
            )
            for n in range(max(self.job.cfg.backfill.workers, 1))
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        done.set()
        reporter.join(timeout=2)
        if self.errors:
            raise self.errors[0]
        return not self.halted() and self.tally.ranges == len(chosen)

    def _work(
        self,
        work: queue.SimpleQueue[tuple[int, TokenRange]],
        budget: _Budget | None,
        progress: Progress,
    ) -> None:
        try:
            worker = _Worker(self, self._reader())
            while not self.halted():
                try:
                    number, token_range = work.get_nowait()
                except queue.Empty:
                    break
                cap = None if budget is None else budget.take()
                rows = worker.compare_range(number, token_range, cap, progress)
                if budget is not None:
                    budget.spent(cap or 0, rows)
                worker.recheck(wait=False)
            worker.recheck(wait=True)
        except BaseException as exc:
            self.errors.append(exc)
            self.failed.set()


def _choose(
    ranges: list[TokenRange], sample: int | None, fraction: float | None, rng: random.Random
) -> list[tuple[int, TokenRange]]:
    """The ranges to compare, numbered, in the order to compare them."""
    numbered = list(enumerate(ranges))
    if fraction is not None:
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        count = max(1, round(fraction * len(ranges)))
        return sorted(rng.sample(numbered, count))
    if sample is not None:
        if sample < 1:
            raise ValueError(f"sample must be at least 1 row, got {sample}")
        # Every range, a share of the rows from each, in random order (see _Budget).
        rng.shuffle(numbered)
    return numbered


class _Budget:
    """A sample's rows, shared out over the ranges as they are taken: each gets an equal
    share of what is left, so a range with fewer rows leaves the rest to those after it."""

    def __init__(self, rows: int, ranges: int) -> None:
        self._rows, self._ranges = rows, ranges
        self._lock = threading.Lock()

    def take(self) -> int:
        """The most rows the next range may read (at least 1)."""
        with self._lock:
            share = math.ceil(self._rows / max(self._ranges, 1))
            self._ranges -= 1
            self._rows -= share  # held until `spent` gives back what was not read
            return max(share, 1)

    def spent(self, taken: int, read: int) -> None:
        with self._lock:
            self._rows += max(taken - read, 0)


# ---------------------------------------------------------------- one worker


class _Worker:
    """Compares ranges and re-checks the candidates they gave; one per thread."""

    def __init__(self, verify: _Verify, reader: Reader) -> None:
        self.v = verify
        self.job = verify.job
        self.reader = reader
        self.builder = verify.job.builder
        self.pending: list[_Candidate] = []
        self._writer: BulkWriter | None = None
        self.now_ms = 0

    @property
    def writer(self) -> BulkWriter:
        if self._writer is None:
            self._writer = self.job.new_writer()
        return self._writer

    # ---- the first pass: one range, both sides merged by token ------------------------

    def compare_range(
        self, number: int, token_range: TokenRange, cap: int | None, progress: Progress
    ) -> int:
        """Compare one range (`cap`: at most that many rows of it); returns the rows read."""
        self.now_ms = service_now_ms(self.job.session)
        query = _in_range(token_range, first=token_range.start == self.v.ring.minimum)
        pages = self.reader.scan(query, sort=[{f"{META_FIELD}.token": "asc"}])
        rows = documents = 0
        with contextlib.closing(pages):
            rows_side = _rows(self.v.scanner.scan(token_range))
            for group in _merge(rows_side, _documents(pages), cap):
                if self.v.halted():
                    return rows
                rows += len(group.changes)
                if group.changes:
                    self.now_ms = max(self.now_ms, _read_at(group.changes))
                documents += self._differences(group)
                share = token_range.fraction_done(group.token) if cap is None else rows / cap
                progress.update(number, share, len(group.changes))
                if len(self.pending) >= _MAX_PENDING:
                    self.recheck(wait=True, down_to=_MAX_PENDING // 2)
        progress.update(number, 1.0)
        self.v.tally.add(rows=rows, documents=documents, ranges=1)
        return rows

    def _differences(self, group: _Group) -> int:
        """Compare one token's rows and documents; returns the documents compared."""
        token = group.token
        expected = expected_documents(self.builder, group.changes)
        stored = group.stored
        if group.partial:  # the partition's other rows were not read: nor are their documents
            wanted = {e.doc_id for e in expected}
            stored = [document for document in stored if document.doc_id in wanted]
        due = time.monotonic() + self.v.settle_s
        for finding in compare(expected, stored, self.now_ms):
            seen = _Seen.of(finding.expected, finding.stored)
            self.pending.append(_Candidate(token, finding.doc_id, _routing(finding), due, seen))
        return len(stored)

    # ---- re-checks -------------------------------------------------------------------

    def recheck(self, *, wait: bool, down_to: int = 0) -> None:
        """Re-check the candidates that are due (`wait`: wait for the rest, down to `down_to`)."""
        while self.pending and not self.v.halted():
            now = time.monotonic()
            due = [c for c in self.pending if c.due <= now]
            if not due:
                if not wait or len(self.pending) <= down_to:
                    return
                self.job.stop.wait(min(c.due for c in self.pending) - now)
                continue
            self.pending = [c for c in self.pending if c.due > now]
            self._recheck(due)

    def _recheck(self, candidates: list[_Candidate]) -> None:
        repairs: list[_Repair] = []
        by_token = itertools.groupby(sorted(candidates, key=lambda c: c.token), lambda c: c.token)
        for token, group in by_token:
            repairs += self._recheck_token(token, list(group))
        if repairs:
            self._write(repairs)

    def _recheck_token(self, token: int, candidates: list[_Candidate]) -> list[_Repair]:
        """Read the token's rows and the documents again; decide each candidate."""
        changes = [c for page in self.v.scanner.scan(_just(token)) for c in page.changes]
        read_at = _read_at(changes) if changes else service_now_ms(self.job.session)
        version = snapshot_version(read_at, self.v.margin_ms)
        expected = {e.doc_id: e for e in expected_documents(self.builder, changes)}
        stored = self.reader.get({c.doc_id: c.routing for c in candidates})
        repairs = []
        for candidate in candidates:
            document = stored.get(candidate.doc_id)
            moved = token_of(document) if document is not None else None
            if moved is not None and moved != token_text(token) and candidate.rounds < _ROUNDS:
                # Rewritten under another token since (a repair of its row): check it there.
                self._again(replace(candidate, token=token_of_text(moved)), soon=True)
                continue
            wanted = expected.get(candidate.doc_id)
            repair = self._decide(candidate, wanted, document, read_at, version)
            if repair is not None:
                repairs.append(repair)
        return repairs

    def _decide(
        self,
        candidate: _Candidate,
        wanted: Expected | None,
        document: Document | None,
        read_at: int,
        version: int,
    ) -> _Repair | None:
        finding = _finding(wanted, document, read_at)
        tally = self.v.tally
        if finding is None:
            if candidate.repairs:
                tally.add(repaired=1)
            elif not candidate.counted:
                tally.add(settled=1)
            return None
        if document is not None and newest_version(document) >= version:
            self._newer_than_the_read(candidate, finding, document)
            return None
        seen = _Seen.of(wanted, document)
        if seen != candidate.seen:
            # A side changed since it was last read: a change may still be on its way
            # (the follower's lag). A difference counts once both sides held still.
            candidate.seen = seen
            self._still_changing(candidate)
            return None
        self._count(candidate, finding)
        if not self.v.repair:
            return None
        if finding.expected is not None and finding.expected.error:
            why = "its document cannot be built: fix the mapping or its hook, then repair again"
            self._unrepaired(candidate, finding, why)
            return None
        if candidate.repairs >= 2:
            self._unrepaired(candidate, finding, candidate.why or "its rewrites did not mend it")
            return None
        candidate.repairs += 1
        candidate.seen = None  # the rewrite changes the document
        self._again(candidate, soon=True)
        return _Repair(candidate, finding, version)

    def _newer_than_the_read(
        self, candidate: _Candidate, finding: Finding, document: Document
    ) -> None:
        """The document was written after (or just before) the fresh read: look again later,
        unless its version is beyond the service clock, which nothing legitimate writes."""
        now = service_now_ms(self.job.session)
        if newest_version(document) > base(now):
            detail = f"{finding.detail}; its version is ahead of the service clock"
            self._count(candidate, replace(finding, detail=detail))
            if self.v.repair:
                self._unrepaired(
                    candidate,
                    finding,
                    "its version is ahead of the service clock, so no repair can beat it: "
                    "rebuild the index with ks2os reindex",
                )
        else:
            self._still_changing(candidate)

    def _still_changing(self, candidate: _Candidate) -> None:
        """Look again after `settle`; after `_ROUNDS` looks, give up on it as unsettled."""
        if candidate.rounds >= _ROUNDS:
            self.v.tally.add(unsettled=1)
        else:
            self._again(candidate, soon=False)

    def _again(self, candidate: _Candidate, *, soon: bool) -> None:
        candidate.rounds += 1
        candidate.due = time.monotonic() + (0.0 if soon else self.v.settle_s)
        self.pending.append(candidate)

    def _count(self, candidate: _Candidate, finding: Finding) -> None:
        if not candidate.counted:
            candidate.counted = True
            self.v.tally.found(finding.kind.value, finding.doc_id, candidate.token, finding.detail)

    def _unrepaired(self, candidate: _Candidate, finding: Finding, why: str) -> None:
        example = Example(finding.kind.value, finding.doc_id, candidate.token, why)
        self.v.tally.failed_repair(example)

    # ---- repairs -----------------------------------------------------------------------

    def _write(self, repairs: list[_Repair]) -> None:
        """Write every repair of one re-check round: rows through the writer, tombstones
        through its transport."""
        changes: list[Change] = []
        tombstones: list[tuple[_Repair, Action]] = []
        static_table = bool(self.builder.table.static)
        for repair in repairs:
            wanted = repair.finding.expected
            if wanted is None:
                tombstones.append((repair, self._tombstone(repair)))
            elif not static_table:
                changes.append(wanted.change)
            elif wanted.partition:
                changes.append(_static_only(self.builder.table, wanted.change))
            else:
                if repair.candidate.repairs > 1:
                    # A row-only rewrite left its statics wrong: restate the partition's.
                    changes.append(_static_only(self.builder.table, wanted.change))
                changes.append(_row_only(wanted.change))
        if changes:
            report = self.writer.write(changes)
            if report.dead_lettered or report.stale:
                why = (
                    "its rewrite was dead-lettered (see the dead-letter store) or refused as "
                    "older than what OpenSearch holds (a delete's version is kept for "
                    "index.gc_deletes: run verify --repair again later)"
                )
                for repair in repairs:
                    repair.candidate.why = why
        if tombstones:
            results = self.writer.bulk.send([action for _, action in tombstones])
            for (repair, _), result in zip(tombstones, results, strict=True):
                if result.verdict is Verdict.REJECTED:
                    repair.candidate.why = f"the tombstone was refused: {result.reason}"

    def _tombstone(self, repair: _Repair) -> Action:
        """The tombstone the writer would write for the row's delete, at the repair's version."""
        stored = repair.finding.stored
        assert stored is not None  # a finding without an expected document has a stored one
        meta: dict[str, Any] = {
            "version": repair.version,
            "source": "scan",
            "deleted": True,
            "token": token_text(repair.candidate.token),
        }
        if not self.builder.table.static:
            return Action(
                stored.doc_id, {META_FIELD: meta}, routing=stored.routing, version=repair.version
            )
        # Rows of a static table are written conditionally, their version in the body.
        meta["partition"] = meta_of(stored).get("partition")
        meta["static_version"] = 0
        return Action(
            stored.doc_id, {META_FIELD: meta}, routing=stored.routing, expect=stored.stamp
        )


@dataclass(frozen=True)
class _Seen:
    """What one look at a candidate saw: the document the row calls for, and the stored one."""

    wanted: Mapping[str, Any] | None  # the expected body (None: no live document, or no row)
    row: bool  # the table has the row
    expiring: bool  # the row has a TTL (its exact expiry moves with each read)
    stored: Stamp | None  # the stored document's stamp (None: absent)

    @staticmethod
    def of(wanted: Expected | None, stored: Document | None) -> _Seen:
        return _Seen(
            None if wanted is None else wanted.body,
            wanted is not None,
            wanted is not None and wanted.expires_at is not None,
            None if stored is None else stored.stamp,
        )


@dataclass
class _Repair:
    candidate: _Candidate
    finding: Finding
    version: int  # the fresh read's snapshot version


def _routing(finding: Finding) -> str | None:
    if finding.expected is not None:
        return finding.expected.routing
    return None if finding.stored is None else finding.stored.routing


def _finding(wanted: Expected | None, document: Document | None, now_ms: int) -> Finding | None:
    if wanted is not None:
        return check(wanted, document, now_ms)
    if document is None:
        return None
    return check_unexpected(document, now_ms)


def _row_only(change: Change) -> Change:
    """The row at its snapshot version, leaving the statics its partition document shows."""
    position = change.provenance
    assert isinstance(position, ScanRead)
    return Change(
        change.op,
        change.key,
        change.image,
        change.version,
        replace(position, statics=False),
        change.expires_at_ms,
        value_expiry=change.value_expiry,
    )


def _static_only(table: TableLayout, change: Change) -> Change:
    """The partition's statics as the row read them, at its snapshot version."""
    image = change.image or {}
    count = len(table.partition_key)
    statics = {name: image[name] for name in (*table.partition_key, *table.static) if name in image}
    expiry = {c: at for c, at in (change.value_expiry or {}).items() if c in table.static}
    return Change(
        Op.UPSERT,
        change.key[:count],
        statics,
        change.version,
        change.provenance,
        static_only=True,
        value_expiry=expiry,
    )


# ---------------------------------------------------------------- both sides, merged


def _rows(pages: Iterator[ScanPage]) -> Iterator[tuple[int, Change]]:
    for page in pages:
        yield from zip(page.tokens, page.changes, strict=True)


def _documents(pages: Iterator[list[Document]]) -> Iterator[tuple[int, Document]]:
    for page in pages:
        for document in page:
            text = token_of(document)
            if text is not None:
                yield token_of_text(text), document


@dataclass(frozen=True, slots=True)
class _Group:
    """One token's rows and stored documents; `partial`: a sample cut its partition short."""

    token: int
    changes: list[Change]
    stored: list[Document]
    partial: bool = False


def _merge(
    rows: Iterator[tuple[int, Change]],
    documents: Iterator[tuple[int, Document]],
    cap: int | None,
) -> Iterator[_Group]:
    """Each token's rows and documents, in token order, from both sides.

    With a `cap`, it ends once `cap` rows were read, in the middle of a
    partition if need be (that group is `partial`): no more rows are read, and
    the documents beyond are not looked at.
    """
    row_groups = itertools.groupby(rows, key=lambda pair: pair[0])
    doc_groups = itertools.groupby(documents, key=lambda pair: pair[0])
    row_next = next(row_groups, None)
    doc_next = next(doc_groups, None)
    left = cap
    while row_next is not None or doc_next is not None:
        changes: list[Change] = []
        stored: list[Document] = []
        partial = False
        if doc_next is None or (row_next is not None and row_next[0] <= doc_next[0]):
            assert row_next is not None
            token, group = row_next
            changes = [change for _, change in itertools.islice(group, left)]
            if left is not None:
                left -= len(changes)
                partial = left == 0 and next(group, None) is not None
            row_next = None if left == 0 else next(row_groups, None)
        else:
            token = doc_next[0]
        if doc_next is not None and doc_next[0] == token:
            stored = [document for _, document in doc_next[1]]
            doc_next = next(doc_groups, None)
        yield _Group(token, changes, stored, partial)
        if left == 0:
            return


def _in_range(token_range: TokenRange, *, first: bool) -> dict[str, Any]:
    """Documents whose token lies in the range (the ring's first range: its minimum too)."""
    bounds = {
        "gte" if first else "gt": token_text(token_range.start),
        "lte": token_text(token_range.end),
    }
    return {"range": {f"{META_FIELD}.token": bounds}}


def _just(token: int) -> TokenRange:
    """The range holding exactly one token."""
    return TokenRange(token - 1, token)


def _read_at(changes: Sequence[Change]) -> int:
    """The earliest read time of these scanned changes (service clock, ms)."""
    times = [c.provenance.read_at_ms for c in changes if isinstance(c.provenance, ScanRead)]
    return min(times)
