"""TableLayout: a table's key layout and column types, in and out as column triples."""

from __future__ import annotations

import pytest

from sync.schema import TableLayout

pytestmark = pytest.mark.unit


def test_columns_gives_back_what_from_columns_took() -> None:
    columns = [
        ("shop", "text", "partition_key"),
        ("region", "text", "partition_key"),
        ("sku", "uuid", "clustering"),
        ("banner", "text", "static"),
        ("tags", "set<text>", "regular"),
    ]
    key = TableLayout.from_columns("demo", "products", columns)
    assert key.columns() == columns
    assert (key.partition_key, key.clustering, key.static) == (
        ("shop", "region"),
        ("sku",),
        ("banner",),
    )
