"""The jobs: wiring sources, the writer and the state store into `backfill` and `follow`.

Sources never talk to OpenSearch and the writer never knows about CQL; a job
builds both from the configuration and moves changes from one to the other,
checkpointing in the state store only what the writer acknowledged.

`Job` holds what both jobs share: the CQL session, the OpenSearch client,
the table's facts, the target index, the state store and a writer factory.
The target is an argument (by default the index behind the alias), so a
reindex can fill a new index while a follower keeps the live one current.
Its writers share `targets` (`sync.targets.WriteTargets`): the target alone,
or, while a rebuild lasts and the follower says so, the old and the new index.
The job's stop event ends every retry wait of its writers and state store.
Its `metrics` (the process's, or a fresh one) see what its writers, state
store and dead-letter store do, labelled with the table; its writers refuse
changes older than the cleanup window (`sync.writer.ChangeTooOld`).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from cassandra.cluster import Session
from opensearchpy import OpenSearch

from sync.clients import cql_session, opensearch_client
from sync.config import Config
from sync.deadletter import DeadLetterStore, FileDeadLetters, IndexDeadLetters
from sync.documents import DocumentBuilder
from sync.indices import (
    Target,
    add_missing_meta_fields,
    current_target,
    reconcile_mapping,
    update_alias_filter,
)
from sync.keyspaces import TableInfo, describe_table
from sync.mapping import TableMapping
from sync.mapping_check import check_mapping_against_table
from sync.metrics import Metrics, TableMetrics
from sync.retry import RetryPolicy
from sync.state import StateStore
from sync.targets import WriteTargets
from sync.tokens import PartitionTokens
from sync.writer import BulkWriter

log = logging.getLogger(__name__)


def dead_letter_store(
    cfg: Config,
    client: OpenSearch,
    mapping: TableMapping,
    policy: RetryPolicy | None = None,
    metrics: TableMetrics | None = None,
) -> DeadLetterStore:
    failed = None if metrics is None else metrics.dead_letter_write_failed
    if cfg.dead_letter == "index":
        return IndexDeadLetters.for_alias(client, mapping.alias, policy, on_write_error=failed)
    return FileDeadLetters(cfg.dead_letter, on_write_error=failed)


class Job:
    """The connections and facts one job run needs; close it (or use `with`) when done.

    `target` is where the job writes (default: the alias's current index,
    created when there is none); `stop` is the job's stop event; `metrics`
    the process's series (default: a registry of the job's own).
    `check_mapping=False` skips comparing the target with the mapping file
    (`sync.indices.reconcile_mapping`): for a target just created from it.
    """

    def __init__(
        self,
        cfg: Config,
        mapping: TableMapping,
        *,
        target: Target | None = None,
        stop: threading.Event | None = None,
        session: Session | None = None,
        client: OpenSearch | None = None,
        metrics: Metrics | None = None,
        check_mapping: bool = True,
    ) -> None:
        self.cfg = cfg
        self.mapping = mapping
        self.stop = stop or threading.Event()
        self.metrics = metrics or Metrics()
        self.policy = RetryPolicy.for_opensearch(cfg.writer, self.stop)
        self._own_session = session is None
        self._own_client = client is None
        # Building a client connects nothing; the CQL session does, so it comes second.
        self.client = client if client is not None else opensearch_client(cfg)
        try:
            self.session = session if session is not None else cql_session(cfg)
        except BaseException:
            self._close_client()
            raise
        try:
            self.info: TableInfo = describe_table(self.session, mapping.keyspace, mapping.table)
            self.table_metrics = self.metrics.table(self.info.qualified_name)
            # Before any write: a mapping the table defeats would dead-letter every row.
            check_mapping_against_table(mapping, self.info.key)
            # First of what needs the table's layout: a filter, computed field or hook the
            # table cannot take is a mistake in the file, refused before any index is made.
            self.tokens = PartitionTokens(self.session, self.info)
            self.builder = DocumentBuilder(mapping, self.info.key, tokens=self.tokens.token)
            self.target = target or current_target(self.client, mapping)
            self.targets = WriteTargets((self.target.index,))
            # Before writing: a field the live index lacks would dead-letter every document
            # carrying it (dynamic "strict"), a changed one index them wrongly. Additions
            # are applied in place; anything else stops the job (`MappingConflict`).
            if check_mapping:
                reconcile_mapping(self.client, self.target.index, mapping)
            # An index made before a `_ks2os` field existed (the token) gets it mapped.
            added = add_missing_meta_fields(self.client, self.target.index)
            if added:
                log.info("index %s: mapped %s", self.target.index, ", ".join(added))
            if update_alias_filter(self.client, self.target):
                log.info("alias %s: the filter of this version of ks2os", self.target.alias)
            self.dead_letters = dead_letter_store(
                cfg, self.client, mapping, self.policy, self.table_metrics
            )
            self.store = StateStore(
                self.client,
                cfg.state.index,
                lease_seconds=cfg.state.lease_seconds,
                policy=self.policy,
                on_write_error=self.table_metrics.state_write_failed,
            )
            self.store.ensure()
        except BaseException:
            self.close()
            raise

    @property
    def index(self) -> str:
        """The index this job writes."""
        return self.target.index

    @property
    def worker_id(self) -> str:
        return self.cfg.state.worker_id

    def new_writer(self, *, restates: bool = False, index: str | None = None) -> BulkWriter:
        """A writer to the job's `targets`, or to `index` alone. One that `restates` (the
        expiry sweep) writes documents read now at their stored version + 1, however old
        that is: no age limit, since a document read now cannot be a tombstone cleanup
        purged."""
        return BulkWriter(
            self.client,
            index or self.target.index,
            self.builder,
            self.dead_letters,
            self.cfg.writer,
            stop=self.stop,
            max_age_ms=None if restates else self.cfg.cleanup.write_max_age_ms,
            observer=self.table_metrics,
            targets=self.targets if index is None else None,
        )

    def close(self) -> None:
        self._close_client()
        if self._own_session:
            self.session.cluster.shutdown()

    def _close_client(self) -> None:
        if self._own_client:
            self.client.close()

    def __enter__(self) -> Job:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()
