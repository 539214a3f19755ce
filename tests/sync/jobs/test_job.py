"""What every job shares (sync/jobs/__init__.py): its target index, and its stop event.

What a user (and the coming `reindex`) relies on: by default a job writes the
index behind the alias, creating `<alias>_v1` when there is none; given
another target, it writes only there, while the alias (and what searches
see) stays where it was.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from opensearchpy import OpenSearch

from sync.config import Config
from sync.indices import Target, alias_targets, create_next_index
from sync.jobs import Job
from sync.jobs.backfill import run_backfill
from sync.mapping import TableMapping, mapping_from_dict


def _table(cql: Any, keyspace: str) -> TableMapping:
    cql.execute(f'CREATE TABLE "{keyspace}"."t" (id int PRIMARY KEY, n int)')
    for n in range(5):
        cql.execute(f'INSERT INTO "{keyspace}"."t" (id, n) VALUES ({n}, {n * 10})')
    return mapping_from_dict(
        {"source": {"keyspace": keyspace, "table": "t"}, "index": {"alias": f"{keyspace}-t"}}
    )


def _count(client: OpenSearch, index: str) -> int:
    client.indices.refresh(index=index)
    return int(client.count(index=index)["count"])


def test_a_job_writes_the_alias_index_by_default_and_any_target_it_is_given(
    cql: Any, keyspace: str, opensearch: OpenSearch, make_config: Callable[..., Config]
) -> None:
    mapping = _table(cql, keyspace)
    cfg = make_config()
    alias = mapping.alias
    with Job(cfg, mapping) as live:
        assert live.target == Target(alias, f"{alias}_v1")
        run_backfill(cfg, mapping, job=live)
    new_index = create_next_index(opensearch, mapping)

    stop = threading.Event()
    with Job(cfg, mapping, target=Target(alias, new_index), stop=stop) as rebuild:
        assert rebuild.index == new_index and rebuild.stop is stop
        summary = run_backfill(cfg, mapping, job=rebuild)
    assert summary.complete and summary.written == 5
    # The new index is full; searches still go to the old one through the alias.
    assert _count(opensearch, new_index) == 5
    assert alias_targets(opensearch, alias) == [f"{alias}_v1"]
    assert _count(opensearch, alias) == 5
