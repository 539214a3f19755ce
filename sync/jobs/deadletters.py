"""`ks2os deadletter list` and `ks2os deadletter replay`: see, and re-drive, dead letters.

A dead letter is a change (or a raw stream record) that could not be
written; its row's document carries a mark meanwhile, hidden from search
(`sync.documents.mark_body`). Once the cause is mended (the mapping, the
data), `replay` re-drives every entry: it reads the row (or the partition's
statics) again over CQL, at LOCAL_QUORUM with its TTLs, and writes it through
the normal writer, then removes the entry. The row is written as it is now,
not as the refused change said, so a replay is right however long ago the
change was made.

**Version.** The later of the read's snapshot version (`snapshot_version`:
below every change the read did not see, docs/versions.md hazard 3) and a
version derived from the mark's (`derived_version`: above the mark, below
every real change newer than the refused one). Either way the write beats
the mark and loses to every change the read did not see; a change the read
did see and that is not applied yet leads, in its lineage, to the state read.

An entry counts as replayed once its row's document is no longer a mark
(rewritten now, or by a newer change meanwhile); one whose row is refused
again stays, with the mark; one that names no row (a record whose very key
could not be decoded) is left for a person to read and is counted as such.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sync.bulk import Reader
from sync.config import Config
from sync.deadletter import DeadLetter, DeadLetterStore
from sync.documents import DEAD_LETTER, META_FIELD
from sync.errors import DecodeError
from sync.jobs import Job
from sync.jobs.restate import reread_statics
from sync.keyspaces import service_now_ms
from sync.mapping import TableMapping
from sync.model import ScanRead
from sync.sources.records import record_key
from sync.sources.streams import RowLookup
from sync.values import decode_cell
from sync.version import derived_version, snapshot_version
from sync.writer import BulkWriter

log = logging.getLogger(__name__)


@dataclass
class ReplaySummary:
    """What `replay` did: entries written and removed, refused again, or naming no row."""

    replayed: int = 0
    refused_again: int = 0
    unreadable: int = 0
    remaining: int = 0


@dataclass(frozen=True, slots=True)
class _Target:
    """The row (or partition) one entry is about, and the version it was refused at."""

    entry_id: str
    key: tuple[Any, ...]
    static_only: bool
    version: int


class _Kept:
    """A dead-letter store that only remembers what it was given (a replay's refusals)."""

    def __init__(self) -> None:
        self.refused: list[DeadLetter] = []

    def put(self, entries: Sequence[DeadLetter]) -> None:
        self.refused.extend(entries)

    @property
    def count(self) -> int:
        return len(self.refused)

    def entries(self) -> Iterator[dict[str, Any]]:
        return iter(())

    def remove(self, entry_ids: Sequence[str]) -> None:
        return None


def list_dead_letters(cfg: Config, mapping: TableMapping) -> list[dict[str, Any]]:
    """Every stored entry of the mapping's table (JSON, oldest first)."""
    with Job(cfg, mapping) as job:
        return list(job.dead_letters.entries())


def replay_dead_letters(
    cfg: Config,
    mapping: TableMapping,
    *,
    stop: threading.Event | None = None,
    job: Job | None = None,
) -> ReplaySummary:
    """Read every dead-lettered row again and write it; see the module docstring."""
    own_job = job is None
    job = job or Job(cfg, mapping, stop=stop)
    try:
        return _Replay(job).run(stop or job.stop)
    finally:
        if own_job:
            job.close()


class _Replay:
    def __init__(self, job: Job) -> None:
        self.job = job
        self.store: DeadLetterStore = job.dead_letters
        self.lookup = RowLookup(job.session, job.info)
        self.reader = Reader(job.client, job.index, job.policy)
        self.margin_ms = job.cfg.backfill.snapshot_margin_ms

    def run(self, stop: threading.Event) -> ReplaySummary:
        summary = ReplaySummary()
        targets: list[_Target] = []
        for entry in self.store.entries():
            target = self._target(entry)
            if target is None:
                summary.unreadable += 1
            else:
                targets.append(target)
        for target in targets:
            if stop.is_set():
                break
            if self._replay(target):
                self.store.remove([target.entry_id])
                summary.replayed += 1
            else:
                summary.refused_again += 1
        summary.remaining = self.store.count
        log.info(
            "dead letters: %d replayed, %d refused again, %d naming no row, %d left",
            summary.replayed,
            summary.refused_again,
            summary.unreadable,
            summary.remaining,
        )
        return summary

    def _target(self, entry: Mapping[str, Any]) -> _Target | None:
        """The row an entry is about, or None when it names none that can be read again."""
        entry_id, version = entry.get("id"), entry.get("version")
        if not isinstance(entry_id, str) or not isinstance(version, int):
            return None  # written before entries had ids and versions
        try:
            if isinstance(entry.get("record"), Mapping):
                key, static_only = record_key(entry["record"], self.job.info.layout)
            else:
                cells = entry.get("key_cells")
                if not isinstance(cells, list):
                    return None
                key = tuple(decode_cell(cell, "key") for cell in cells)
                static_only = bool(entry.get("static_only"))
        except DecodeError:
            return None
        return _Target(entry_id, key, static_only, version)

    def _replay(self, target: _Target) -> bool:
        """Read the row again and write it; True once its document is no longer a mark."""
        mark = self._stored_mark(target)
        read_at = service_now_ms(self.job.session)
        floor = derived_version(target.version if mark is None else max(mark, target.version))
        version = max(snapshot_version(read_at, self.margin_ms), floor or 0)
        if mark is not None and version <= mark:
            log.warning("dead letter %s: no version left above its mark", target.entry_id)
            return False
        source = ScanRead(0, 0, read_at)
        if target.static_only:
            change = self.lookup.statics(target.key, version, source)
        else:
            change = self.lookup.row(target.key, version, source)
        refusals = _Kept()
        writer = BulkWriter(
            self.job.client,
            self.job.index,
            self.job.builder,
            refusals,
            self.job.cfg.writer,
            stop=self.job.stop,
            max_age_ms=self.job.cfg.cleanup.write_max_age_ms,
        )
        report = writer.write([change])
        if report.checks:
            reread_statics(report.checks, self.lookup, writer, self.job.stop)
        for refused in refusals.refused:
            log.warning("dead letter %s refused again: %s", target.entry_id, refused.reason)
        return report.dead_lettered == 0 and self._stored_mark(target) is None

    def _stored_mark(self, target: _Target) -> int | None:
        """The version of the mark the entry's row (or partition) document is, if it is one."""
        builder = self.job.builder
        if target.static_only:
            doc_id = builder.partition_doc_id(builder.partition_id(target.key))
        else:
            doc_id = builder.doc_id(target.key)
        stored = self.reader.get({doc_id: builder.routing(target.key)}).get(doc_id)
        meta = {} if stored is None else stored.body.get(META_FIELD)
        if not isinstance(meta, dict) or not meta.get(DEAD_LETTER):
            return None
        version = meta.get("version")
        return version if isinstance(version, int) else 0
