"""The jobs: wiring sources, the writer and the state store into `backfill` and `follow`.

Sources never talk to OpenSearch and the writer never knows about CQL; a job
builds both from the configuration and moves changes from one to the other,
checkpointing in the state store only what the writer acknowledged.

`Job` holds what both jobs share: the CQL session, the OpenSearch client,
the table's facts, the target index, the state store and a writer factory.
"""

from __future__ import annotations

import logging
from types import TracebackType

from cassandra.cluster import Session
from opensearchpy import OpenSearch

from sync.clients import cql_session, opensearch_client
from sync.config import Config
from sync.deadletter import DeadLetterStore, FileDeadLetters, IndexDeadLetters
from sync.documents import DocumentBuilder
from sync.errors import ConfigError
from sync.indices import check_mapping_compatible, ensure_index
from sync.keyspaces import TableInfo, describe_table
from sync.mapping import TableMapping
from sync.state import StateStore
from sync.writer import BulkWriter

log = logging.getLogger(__name__)


def dead_letter_store(cfg: Config, client: OpenSearch, mapping: TableMapping) -> DeadLetterStore:
    if cfg.dead_letter == "index":
        return IndexDeadLetters.for_alias(client, mapping.alias)
    return FileDeadLetters(cfg.dead_letter)


class Job:
    """The connections and facts one job run needs; close it (or use `with`) when done."""

    def __init__(
        self,
        cfg: Config,
        mapping: TableMapping,
        *,
        session: Session | None = None,
        client: OpenSearch | None = None,
    ) -> None:
        self.cfg = cfg
        self.mapping = mapping
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
            # Checks the mapping against the table's key (document.id): before any index exists.
            self.builder = DocumentBuilder(mapping, self.info.key)
            self.index = ensure_index(self.client, mapping)
            # Refuse before writing: documents shaped for another mapping would all be
            # dead-lettered or, worse, indexed with the wrong field types.
            check_mapping_compatible(self.client, self.index, mapping)
            self.dead_letters = dead_letter_store(cfg, self.client, mapping)
            self.store = StateStore(
                self.client, cfg.state.index, lease_seconds=cfg.state.lease_seconds
            )
            self.store.ensure()
        except BaseException:
            self.close()
            raise
        if not self.index:
            raise ConfigError(f"no index behind alias {mapping.alias}")

    @property
    def worker_id(self) -> str:
        return self.cfg.state.worker_id

    def new_writer(self) -> BulkWriter:
        return BulkWriter(self.client, self.index, self.builder, self.dead_letters, self.cfg.writer)

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
