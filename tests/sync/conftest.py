"""Fixtures for the sync core's tests: a fresh OpenSearch (osmem clone) per test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opensearchpy import OpenSearch


@pytest.fixture
def opensearch(osmem_clone: Any) -> Iterator[OpenSearch]:
    """A client on a copy-on-write clone of the session's osmem-server."""
    client = OpenSearch(hosts=[osmem_clone.url], timeout=30)
    yield client
    client.close()
