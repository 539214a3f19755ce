"""A mapping checked against its table: each mistake that would dead-letter every row is one
line naming the key, before anything is written. Pure: no server."""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.errors import ConfigError
from sync.mapping import load_mapping, mapping_from_dict
from sync.mapping_check import (
    OPENSEARCH_FIELD_TYPES,
    check_mapping_against_table,
    document_fields,
)
from sync.schema import TableLayout

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "mappings" / "example.toml"

TABLE = TableLayout.from_columns(
    "shop",
    "orders",
    [
        ("id", "uuid", "partition_key"),
        ("placed", "timestamp", "clustering"),
        ("banner", "text", "static"),
        ("name", "text", "regular"),
        ("total", "decimal", "regular"),
        ("items", "map<text, int>", "regular"),
    ],
)
HEAD = '[source]\nkeyspace = "shop"\ntable = "orders"\n[index]\nalias = "shop-orders"\n'


def mapping(text: str) -> object:
    import tomllib

    return mapping_from_dict(tomllib.loads(HEAD + text), "orders.toml")


def check(text: str) -> None:
    check_mapping_against_table(mapping(text), TABLE)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [
        "",
        '[index.mappings.properties]\nname = { type = "text" }\ntotal = { type = "keyword" }\n',
        # a rename target, and the renamed column's own name, may both have properties
        '[index.mappings.properties]\ntitle = { type = "text" }\nname = { type = "text" }\n'
        '[document]\nrename = { name = "title" }\n',
        # copy_to targets and alias fields hold no column
        '[index.mappings.properties]\nall = { type = "text" }\n'
        'name = { type = "text", copy_to = ["all"] }\n'
        'title = { type = "alias", path = "name" }\n',
        # multi-fields and nested properties with known types
        '[index.mappings.properties.name]\ntype = "text"\n'
        'fields = { raw = { type = "keyword" }, words = { type = "token_count", '
        'analyzer = "standard" } }\n'
        '[index.mappings.properties.items]\ntype = "object"\n'
        'properties = { size = { type = "integer" } }\n',
        # strict, with a property for every field a document carries
        '[index.mappings]\ndynamic = "strict"\n[index.mappings.properties]\n'
        'id = { type = "keyword" }\nplaced = { type = "date" }\nbanner = { type = "text" }\n'
        'title = { type = "text" }\ntotal = { type = "keyword" }\n'
        '[document]\nrename = { name = "title" }\nexclude = ["items"]\n',
        # strict with include: only the key columns and the included ones need properties
        '[index.mappings]\ndynamic = "strict"\n[index.mappings.properties]\n'
        'id = { type = "keyword" }\nplaced = { type = "date" }\nname = { type = "text" }\n'
        '[document]\ninclude = ["name"]\n',
        # a computed field is a field the mapping fills, so a property may name it
        '[index.mappings.properties]\nlabel = { type = "text" }\n'
        '[document.computed]\nlabel = { concat = ["name", "total"], separator = " " }\n',
        # a hook may add any field: its properties are not held to the columns
        '[index.mappings.properties]\nband = { type = "keyword" }\n'
        '[document]\nhook = "order_hooks:shape"\n',
    ],
)
def test_mappings_the_table_can_fill_pass(text: str) -> None:
    check(text)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (
            '[index.mappings.properties]\nnmae = { type = "text" }\n',
            "index.mappings.properties.nmae",
            "no column 'nmae' in shop.orders, and no rename, copy_to or computed field fills it "
            "(did you mean 'name'?)",
        ),
        (
            '[document]\nrename = { nmae = "title" }\n',
            "document.rename.nmae",
            "'nmae' is not a column of shop.orders (did you mean 'name'?)",
        ),
        (
            '[document]\ninclude = ["name", "price"]\n',
            "document.include",
            "'price' is not a column of shop.orders",
        ),
        (
            '[document]\nexclude = ["secret"]\n',
            "document.exclude",
            "'secret' is not a column of shop.orders",
        ),
        (
            '[document]\nid = ["name"]\n',
            "document.id",
            "'name' is not a key column of shop.orders",
        ),
        (
            '[index.mappings.properties]\ntotal = { type = "intger" }\n',
            "index.mappings.properties.total.type",
            "'intger' is not an OpenSearch field type (did you mean 'integer'?)",
        ),
        (
            '[index.mappings.properties.name]\ntype = "text"\n'
            'fields = { raw = { type = "keywrd" } }\n',
            "index.mappings.properties.name.fields.raw.type",
            "'keywrd' is not an OpenSearch field type (did you mean 'keyword'?)",
        ),
        (
            '[index.mappings.properties.items]\ntype = "object"\n'
            'properties = { size = { type = "int" } }\n',
            "index.mappings.properties.items.properties.size.type",
            "'int' is not an OpenSearch field type",
        ),
        (
            '[index.mappings.properties]\nname = "text"\n',
            "index.mappings.properties.name",
            'expected a table such as { type = "keyword" }',
        ),
        (
            '[index.mappings]\ndynamic = "strict"\n[index.mappings.properties]\n'
            'id = { type = "keyword" }\nplaced = { type = "date" }\n',
            "index.mappings.properties",
            "no property 'banner', and index.mappings.dynamic = \"strict\" makes OpenSearch "
            "reject every document that carries it",
        ),
        (
            '[document]\nrename = { name = "total" }\n',
            "document.rename.name",
            "columns 'name' and 'total' would both fill the field 'total'",
        ),
        (
            '[document]\nrename = { name = "_ks2os" }\n',
            "document.rename.name",
            "the field '_ks2os' (from column 'name') is reserved by ks2os",
        ),
        (
            '[document]\nrename = { name = "_id" }\n',
            "document.rename.name",
            "the field '_id' (from column 'name') is reserved by OpenSearch",
        ),
    ],
)
def test_each_mistake_is_one_line_naming_the_key(text: str, key: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        check(text)
    message = str(raised.value)
    assert message.startswith(f"orders.toml: {key}: "), message
    assert expected in message
    assert "\n" not in message
    assert raised.value.hint


def test_the_hint_lists_the_columns_to_choose_from() -> None:
    with pytest.raises(ConfigError) as raised:
        check('[document]\nexclude = ["secret"]\n')
    assert raised.value.hint == "columns: id, placed, banner, name, total, items"


def test_document_fields_follow_include_exclude_and_rename() -> None:
    spec = mapping('[document]\nrename = { name = "title" }\nexclude = ["items", "placed"]\n')
    assert document_fields(spec, TABLE) == {  # type: ignore[arg-type]
        "id": "id",
        "banner": "banner",
        "title": "name",
        "total": "total",
    }
    included = mapping('[document]\ninclude = ["total"]\n')
    assert list(document_fields(included, TABLE)) == ["id", "placed", "total"]  # type: ignore[arg-type]


def test_the_example_mapping_fits_the_example_table() -> None:
    table = TableLayout.from_columns(
        "demo",
        "products",
        [
            ("shop", "text", "partition_key"),
            ("region", "text", "partition_key"),
            ("sku", "uuid", "clustering"),
            ("banner", "text", "static"),
            ("name", "text", "regular"),
            ("stock", "int", "regular"),
            ("views", "bigint", "regular"),
            ("price", "decimal", "regular"),
            ("rating", "double", "regular"),
            ("active", "boolean", "regular"),
            ("updated_at", "timestamp", "regular"),
            ("launched_on", "date", "regular"),
            ("tags", "set<text>", "regular"),
            ("stock_by_size", "map<text, int>", "regular"),
            ("images", "list<text>", "regular"),
        ],
    )
    check_mapping_against_table(load_mapping(EXAMPLE), table)


def test_the_field_type_list_holds_what_proposals_use() -> None:
    from sync.mapping import field_for_cql_type

    for cql_type in ("text", "uuid", "inet", "int", "decimal", "blob", "map<text, int>", "udt"):
        assert field_for_cql_type(cql_type)["type"] in OPENSEARCH_FIELD_TYPES


# ---- the partition shape: two levels of properties ---------------------------------------

PARTITION = (
    '[index.mappings]\ndynamic = "strict"\n[index.mappings.properties]\n'
    'id = { type = "keyword" }\nbanner = { type = "text" }\n'
    "[index.mappings.properties.rows]\n"
    'type = "nested"\n'
    'properties = { placed = { type = "date" }, name = { type = "text" }, '
    'total = { type = "keyword" }, items = { type = "flat_object" } }\n'
    '[document]\nshape = "partition"\n'
)


@pytest.mark.parametrize(
    "text",
    [
        PARTITION,
        PARTITION + 'id = ["id"]\nrouting = "partition"\n',
        # a computed field goes into each row, beside the row's columns
        PARTITION.replace("items = {", 'label = { type = "keyword" }, items = {')
        + '[document.computed]\nlabel = { concat = ["name", "total"] }\n',
        # the rows' own dynamic setting holds for them
        PARTITION.replace('type = "nested"\n', 'type = "nested"\ndynamic = true\n').replace(
            'name = { type = "text" }, ', ""
        ),
    ],
)
def test_partition_mappings_the_table_can_fill_pass(text: str) -> None:
    check(text)


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        (
            PARTITION + 'id = ["id", "placed"]\n',
            "document.id",
            "['id', 'placed'] is not the partition key: a partition's document is identified "
            "by ['id']",
        ),
        (
            PARTITION.replace("name = { type", "nmae = { type"),
            "index.mappings.properties.rows.properties.nmae",
            "no column 'nmae' in shop.orders",
        ),
        (
            # a row column's property at the top is filled by nothing: rows hold it
            PARTITION.replace(
                'banner = { type = "text" }', 'banner = { type = "text" }\nname = { type = "text" }'
            ),
            "index.mappings.properties.name",
            "no column 'name' in shop.orders",
        ),
        (
            PARTITION.replace('name = { type = "text" }, ', ""),
            "index.mappings.properties.rows.properties",
            "no property 'name', and index.mappings.dynamic = \"strict\"",
        ),
        (
            PARTITION.replace('banner = { type = "text" }\n', ""),
            "index.mappings.properties",
            "no property 'banner'",
        ),
        (
            PARTITION.replace(
                "[index.mappings.properties.rows]", "[index.mappings.properties.banner2]"
            )
            .replace('banner = { type = "text" }\n', "")
            .replace('[document]\nshape = "partition"\n', "")
            + '[index.mappings.properties.rows]\ntype = "nested"\n'
            '[document]\nshape = "partition"\nrename = { banner = "rows" }\n',
            "document.rows_field",
            "'rows' is also the field of column 'banner'",
        ),
    ],
)
def test_each_partition_shape_mistake_is_one_line_naming_the_key(
    text: str, key: str, expected: str
) -> None:
    test_each_mistake_is_one_line_naming_the_key(text, key, expected)


def test_the_partition_shape_is_refused_for_a_table_without_clustering_columns() -> None:
    table = TableLayout.from_columns(
        "shop", "orders", [("id", "uuid", "partition_key"), ("name", "text", "regular")]
    )
    text = (
        '[index.mappings.properties]\nrows = { type = "nested" }\n[document]\nshape = "partition"\n'
    )
    with pytest.raises(ConfigError) as raised:
        check_mapping_against_table(mapping(text), table)  # type: ignore[arg-type]
    message = str(raised.value)
    assert message.startswith("orders.toml: document.shape: ")
    assert "shop.orders has no clustering columns: each partition is one row" in message
    assert raised.value.hint == "leave document.shape out (one document per row is the same here)"
