"""The jobs: wiring sources, the writer and the state store into `backfill` and `follow`.

Sources never talk to OpenSearch and the writer never knows about CQL; a job
builds both from the configuration and moves changes from one to the other,
checkpointing in the state store only what the writer acknowledged.

`Job` holds what both jobs share: the CQL session, the OpenSearch client,
the table's facts, the target index, the state store and a writer factory.
The target is an argument (by default the index behind the alias), so a
reindex can fill a new index while a follower keeps the live one current.
The job's stop event ends every retry wait of its writers and state store.
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
from sync.indices import Target, check_mapping_compatible, current_target
from sync.keyspaces import TableInfo, describe_table
from sync.mapping import TableMapping
from sync.mapping_check import check_mapping_against_table
from sync.retry import RetryPolicy
from sync.state import StateStore
from sync.writer import BulkWriter

log = logging.getLogger(__name__)


def dead_letter_store(
    cfg: Config, client: OpenSearch, mapping: TableMapping, policy: RetryPolicy | None = None
) -> DeadLetterStore:
    if cfg.dead_letter == "index":
        return IndexDeadLetters.for_alias(client, mapping.alias, policy)
    return FileDeadLetters(cfg.dead_letter)


class Job:
    """The connections and facts one job run needs; close it (or use `with`) when done.

    `target` is where the job writes (default: the alias's current index,
    created when there is none); `stop` is the job's stop event.
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
    ) -> None:
        self.cfg = cfg
        self.mapping = mapping
        self.stop = stop or threading.Event()
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
            # Before any write: a mapping the table defeats would dead-letter every row.
            check_mapping_against_table(mapping, self.info.key)
            # First of what needs the table's layout: a filter, computed field or hook the
            # table cannot take is a mistake in the file, refused before any index is made.
            self.builder = DocumentBuilder(mapping, self.info.key)
            self.target = target or current_target(self.client, mapping)
            # Refuse before writing: documents shaped for another mapping would all be
            # dead-lettered or, worse, indexed with the wrong field types.
            check_mapping_compatible(self.client, self.target.index, mapping)
            self.dead_letters = dead_letter_store(cfg, self.client, mapping, self.policy)
            self.store = StateStore(
                self.client,
                cfg.state.index,
                lease_seconds=cfg.state.lease_seconds,
                policy=self.policy,
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

    def new_writer(self) -> BulkWriter:
        return BulkWriter(
            self.client,
            self.target.index,
            self.builder,
            self.dead_letters,
            self.cfg.writer,
            stop=self.stop,
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
