"""Mapping files load into typed settings; every mistake is one line naming the key."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from sync.errors import ConfigError
from sync.mapping import (
    AllOf,
    AnyOf,
    BigNumbers,
    ColumnCheck,
    Concat,
    Constant,
    Copy,
    FormatDate,
    Not,
    Nulls,
    Routing,
    Shape,
    Split,
    Timestamps,
    field_for_cql_type,
    load_mapping,
    mapping_from_dict,
    propose_mapping,
)

pytestmark = pytest.mark.unit

EXAMPLE = Path(__file__).resolve().parents[2] / "mappings" / "example.toml"
MINIMAL = '[source]\nkeyspace = "demo"\ntable = "t"\n[index]\nalias = "demo-t"\n'
PARTITION = (
    MINIMAL + '[index.mappings.properties]\nrows = { type = "nested" }\n'
    '[document]\nshape = "partition"\n'
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


def test_the_example_loads() -> None:
    mapping = load_mapping(EXAMPLE)
    assert (mapping.keyspace, mapping.table, mapping.alias) == ("demo", "products", "demo-products")
    assert mapping.document.id == ("shop", "region", "sku")
    assert mapping.document.rename == {"name": "title"}
    assert mapping.document.routing is Routing.PARTITION
    assert mapping.mappings["properties"]["tags"] == {"type": "keyword"}
    assert mapping.settings["index"]["refresh_interval"] == "1s"
    assert mapping.path == str(EXAMPLE)


def test_defaults(tmp_path: Path) -> None:
    mapping = load_mapping(write(tmp_path, MINIMAL))
    spec = mapping.document
    assert spec.id is None and spec.include is None and spec.exclude == ()
    assert spec.routing is Routing.NONE and spec.timestamps is Timestamps.ISO8601
    assert spec.big_numbers is BigNumbers.STRING and spec.nulls is Nulls.OMIT
    assert mapping.settings == {
        "index": {"number_of_shards": 1, "number_of_replicas": 1, "refresh_interval": "1s"}
    }
    assert mapping.mappings == {}


def test_user_settings_merge_over_the_defaults(tmp_path: Path) -> None:
    text = MINIMAL + (
        '[index.settings]\n"index.refresh_interval" = "5s"\nnumber_of_replicas = 0\n'
        '[index.settings.analysis.analyzer.folded]\ntype = "standard"\n'
    )
    settings = load_mapping(write(tmp_path, text)).settings
    assert settings["index"]["refresh_interval"] == "5s"
    assert settings["index"]["number_of_replicas"] == 0
    assert settings["index"]["number_of_shards"] == 1
    assert settings["index"]["analysis"] == {"analyzer": {"folded": {"type": "standard"}}}


@pytest.mark.parametrize(
    ("text", "key", "expected"),
    [
        ('[index]\nalias = "a"\n', "[source]", "present"),
        ('[source]\nkeyspace = "k"\ntable = "t"\n', "[index]", "present"),
        ('[source]\ntable = "t"\n[index]\nalias = "a"\n', "source.keyspace", "non-empty string"),
        (
            '[source]\nkeyspace = 3\ntable = "t"\n[index]\nalias = "a"\n',
            "source.keyspace",
            "string",
        ),
        (MINIMAL.replace('"demo-t"', '"Demo T"'), "index.alias", "lowercase"),
        (MINIMAL + "[index.settings]\n", None, None),
        (MINIMAL + "[extra]\n", "extra", "one of the sections"),
        (MINIMAL + "[document]\nflavour = 1\n", "document.flavour", "one of"),
        (MINIMAL + '[document]\nrouting = "shard"\n', "document.routing", '"none" or "partition"'),
        (MINIMAL + '[document]\ntimestamps = "unix"\n', "document.timestamps", '"iso8601"'),
        (MINIMAL + '[document]\nbig_numbers = "float"\n', "document.big_numbers", '"string"'),
        (MINIMAL + '[document]\nnulls = "drop"\n', "document.nulls", '"omit"'),
        (MINIMAL + "[document]\nid = []\n", "document.id", "non-empty list of column names"),
        (MINIMAL + '[document]\ninclude = "a"\n', "document.include", "list of column names"),
        (MINIMAL + '[document]\nexclude = ["a", "a"]\n', "document.exclude", "without repeats"),
        (MINIMAL + "[document]\nrename = { a = 1 }\n", "document.rename.a", "field name"),
        (MINIMAL + '[document]\nrename = "a"\n', "document.rename", "a table"),
        (
            MINIMAL.replace('[index]\nalias = "demo-t"\n', '[index]\nalias = "a"\nmappings = 3\n'),
            "index.mappings",
            "a table",
        ),
        ("[source\n", None, "not valid TOML"),
        # filters: the form only (types and columns are checked when a job starts)
        (MINIMAL + "[document]\nfilter = 3\n", "document.filter", "a condition"),
        (MINIMAL + "[document.filter]\n", "document.filter", "a condition"),
        (MINIMAL + "[document.filter]\neq = 1\n", "document.filter.column", "a column name"),
        (MINIMAL + '[document.filter]\ncolumn = "a"\n', "document.filter", "a test beside"),
        (
            MINIMAL + '[document.filter]\ncolumn = "a"\nlike = "x%"\n',
            "document.filter.like",
            "one of the tests eq, ne, in",
        ),
        (
            MINIMAL + '[document.filter]\ncolumn = "a"\nin = []\n',
            "document.filter.in",
            "non-empty list of values",
        ),
        (
            MINIMAL + '[document.filter]\ncolumn = "a"\neq = [1]\n',
            "document.filter.eq",
            "one value",
        ),
        (
            MINIMAL + '[document.filter]\ncolumn = "a"\nis_null = "yes"\n',
            "document.filter.is_null",
            "true or false",
        ),
        (MINIMAL + "[document.filter]\nand = []\n", "document.filter.and", "non-empty list"),
        (
            MINIMAL + '[document.filter]\nor = [{ column = "a" }]\n',
            "document.filter.or[0]",
            "a test beside column",
        ),
        (
            MINIMAL + '[document.filter]\nnot = { column = "a", eq = 1 }\ncolumn = "b"\n',
            "document.filter",
            "not alone in its table",
        ),
        # computed fields
        (MINIMAL + "[document.computed]\nx = 1\n", "document.computed.x", "a table with one of"),
        (
            MINIMAL + '[document.computed]\nx = { copy = "a", split = "b" }\n',
            "document.computed.x",
            "exactly one of concat, constant, copy, format_date, split",
        ),
        (
            MINIMAL + '[document.computed]\nx = { copy = "a", separator = "," }\n',
            "document.computed.x.separator",
            "for copy: nothing else",
        ),
        (
            MINIMAL + "[document.computed]\nx = { concat = [] }\n",
            "document.computed.x.concat",
            "non-empty list of column names",
        ),
        (
            MINIMAL + '[document.computed]\nx = { format_date = "ts" }\n',
            "document.computed.x.format",
            "a strftime format",
        ),
        (
            MINIMAL + '[document.computed]\nx = { format_date = "ts", format = "%Y", '
            'timezone = "Mars/Olympus" }\n',
            "document.computed.x.timezone",
            "an IANA time zone",
        ),
        (
            MINIMAL + '[document.computed]\nx = { split = "a", separator = "" }\n',
            "document.computed.x.separator",
            "a non-empty string",
        ),
        (
            MINIMAL + "[document.computed]\nx = { constant = 1979-05-27 }\n",
            "document.computed.x.constant",
            "a JSON value",
        ),
        (
            MINIMAL + "[document.computed]\n_x = { constant = 1 }\n",
            "document.computed._x",
            "does not start with _",
        ),
        (
            MINIMAL
            + '[index.mappings]\ndynamic = "strict"\n[index.mappings.properties]\n'
            + 'a = { type = "keyword" }\n[document.computed]\nx = { copy = "a" }\n',
            "document.computed.x",
            "a property of that name",
        ),
        # the hook
        (MINIMAL + '[document]\nhook = "module.function"\n', "document.hook", '"module:function"'),
        (MINIMAL + "[document]\nhook = 3\n", "document.hook", '"module:function"'),
        # the partition shape
        (MINIMAL + '[document]\nshape = "rows"\n', "document.shape", '"row" or "partition"'),
        (
            MINIMAL + "[document]\nmax_rows = 10\n",
            "document.max_rows",
            'beside shape = "partition"',
        ),
        (
            MINIMAL + '[document]\nrows_field = "lines"\n',
            "document.rows_field",
            'beside shape = "partition"',
        ),
        (
            MINIMAL + '[document]\nshape = "partition"\n',
            "index.mappings.properties.rows",
            'rows = { type = "nested", properties = { ... } }',
        ),
        (
            MINIMAL
            + '[index.mappings.properties]\nrows = { type = "object" }\n'
            + '[document]\nshape = "partition"\n',
            "index.mappings.properties.rows",
            '{ type = "nested"',
        ),
        (PARTITION + "max_rows = 0\n", "document.max_rows", "at least 1"),
        (PARTITION + "max_rows = true\n", "document.max_rows", "at least 1"),
        (
            PARTITION + "max_rows = 20000\n",
            "document.max_rows",
            "at most index.mapping.nested_objects.limit (10000)",
        ),
        (
            PARTITION.replace(
                "[document]", '[index.settings]\n"mapping.nested_objects.limit" = 500\n[document]'
            )
            + "max_rows = 501\n",
            "document.max_rows",
            "at most index.mapping.nested_objects.limit (500)",
        ),
        (PARTITION + 'rows_field = "_rows"\n', "document.rows_field", "not starting with _"),
        (PARTITION + 'rows_field = "a.b"\n', "document.rows_field", "a field name"),
        (
            MINIMAL
            + '[index.mappings]\ndynamic = "strict"\n[index.mappings.properties]\n'
            + 'x = { type = "keyword" }\nrows = { type = "nested" }\n'
            + '[document]\nshape = "partition"\n[document.computed]\nx = { copy = "a" }\n',
            "document.computed.x",
            "a property of that name in [index.mappings.properties.rows.properties]",
        ),
    ],
)
def test_every_mistake_is_one_line_naming_file_and_key(
    tmp_path: Path, text: str, key: str | None, expected: str | None
) -> None:
    path = write(tmp_path, text)
    if expected is None:
        load_mapping(path)
        return
    with pytest.raises(ConfigError) as raised:
        load_mapping(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    if key is not None:
        assert key in message
    assert expected in message
    assert raised.value.hint


def test_the_partition_shape_loads_with_its_defaults_and_its_own_keys(tmp_path: Path) -> None:
    spec = load_mapping(write(tmp_path, PARTITION)).document
    assert (spec.shape, spec.rows_field, spec.max_rows) == (Shape.PARTITION, "rows", 1000)
    text = PARTITION.replace("rows = {", "lines = {") + 'rows_field = "lines"\nmax_rows = 50\n'
    spec = load_mapping(write(tmp_path, text)).document
    assert (spec.rows_field, spec.max_rows) == ("lines", 50)
    assert load_mapping(write(tmp_path, MINIMAL)).document.shape is Shape.ROW


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_mapping(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    ("cql_type", "field"),
    [
        ("text", {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}),
        ("uuid", {"type": "keyword"}),
        ("timeuuid", {"type": "keyword"}),
        ("inet", {"type": "ip"}),
        ("tinyint", {"type": "byte"}),
        ("smallint", {"type": "short"}),
        ("int", {"type": "integer"}),
        ("bigint", {"type": "long"}),
        ("counter", {"type": "long"}),
        ("varint", {"type": "keyword"}),
        ("decimal", {"type": "keyword"}),
        ("float", {"type": "float"}),
        ("double", {"type": "double"}),
        ("boolean", {"type": "boolean"}),
        ("timestamp", {"type": "date", "format": "strict_date_optional_time||epoch_millis"}),
        ("date", {"type": "date", "format": "strict_date||epoch_millis"}),
        ("time", {"type": "keyword"}),
        ("duration", {"type": "keyword"}),
        ("blob", {"type": "binary"}),
        ("list<int>", {"type": "integer"}),
        ("set<frozen<list<bigint>>>", {"type": "long"}),
        ("map<text, frozen<map<int, text>>>", {"type": "flat_object"}),
        ("tuple<int, text>", {"type": "keyword"}),
        ("frozen<address>", {"type": "object", "dynamic": True}),
    ],
)
def test_field_types_per_cql_type(cql_type: str, field: dict[str, Any]) -> None:
    assert field_for_cql_type(cql_type) == field


def test_a_proposed_mapping_loads_back(tmp_path: Path) -> None:
    columns = [
        ("shop", "text", "partition_key"),
        ("Region Id", "int", "partition_key"),
        ("sku", "uuid", "clustering"),
        ("banner", "text", "static"),
        ("tags", "set<text>", "regular"),
        ('quote"d', "map<text, int>", "regular"),
    ]
    path = tmp_path / "proposed.toml"
    path.write_text(propose_mapping("Demo", "Products", columns))
    mapping = load_mapping(path)
    assert set(mapping.mappings["properties"]) == {c[0] for c in columns}
    assert mapping.alias == "demo-products"
    assert mapping.document.id == ("shop", "Region Id", "sku")
    assert mapping.mappings["dynamic"] == "strict"
    assert mapping.mappings["properties"]['quote"d'] == {"type": "flat_object"}


def test_a_proposal_maps_key_columns_to_exact_fields() -> None:
    columns = [
        ("shop", "text", "partition_key"),
        ("code", "blob", "partition_key"),
        ("n", "int", "clustering"),
        ("sku", "uuid", "clustering"),
        ("name", "text", "regular"),
        ("banner", "varchar", "static"),
    ]
    properties = tomllib.loads(propose_mapping("demo", "t", columns))["index"]["mappings"][
        "properties"
    ]
    # Ids are matched exactly: text keys are keyword, not analysed words.
    assert properties["shop"] == {"type": "keyword"}
    assert properties["code"] == {"type": "keyword"}  # a binary field cannot be searched
    assert properties["n"] == {"type": "integer"}  # exact already, and ranges still work
    assert properties["sku"] == {"type": "keyword"}
    assert properties["name"]["type"] == "text"
    assert properties["banner"]["type"] == "text"


def test_a_proposal_lists_the_choices_each_section_offers() -> None:
    text = propose_mapping(
        "demo", "t", [("id", "int", "partition_key"), ("name", "text", "regular")]
    )
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for kind in (Routing, Timestamps, BigNumbers, Nulls, Shape):
        for member in kind:
            assert f'"{member.value}"' in comments, member
    for key in ("include", "exclude", "rename", "dynamic", "alias", "number_of_replicas"):
        assert key in comments, key
    assert "docs/mapping.md" in comments
    # The commented examples are valid once uncommented.
    uncommented = text.replace("# include = ", "include = ").replace("# rename = ", "rename = ")
    spec = mapping_from_dict(tomllib.loads(uncommented)).document
    assert spec.include == ("name",) and spec.rename == {"name": "name_renamed"}


def test_a_proposal_takes_a_chosen_alias() -> None:
    text = propose_mapping("demo", "t", [("id", "int", "partition_key")], alias="search-t")
    assert tomllib.loads(text)["index"]["alias"] == "search-t"


SHAPED = (
    MINIMAL
    + """
[document]
hook = "shop.hooks:product"

[document.filter]
or = [
  { column = "price", gte = "10.00", lt = 100 },
  { and = [
    { column = "tags", contains = "sale" },
    { not = { column = "gone", is_null = false } },
  ] },
]

[document.computed]
label = { concat = ["brand", "name"], separator = " " }
month = { format_date = "updated_at", format = "%Y-%m", timezone = "Europe/Paris" }
catalog = { constant = { season = "spring", year = 2024 } }
title_exact = { copy = "name" }
words = { split = "name" }
"""
)


def test_a_shaped_mapping_loads_into_its_specs(tmp_path: Path) -> None:
    spec = load_mapping(write(tmp_path, SHAPED)).document
    assert spec.hook == "shop.hooks:product"
    key = "document.filter.or"
    assert spec.filter == AnyOf(
        (
            AllOf(
                (
                    ColumnCheck("price", "lt", f"{key}[0].lt", 100),
                    ColumnCheck("price", "gte", f"{key}[0].gte", "10.00"),
                ),
                f"{key}[0]",
            ),
            AllOf(
                (
                    ColumnCheck("tags", "contains", f"{key}[1].and[0].contains", "sale"),
                    Not(
                        ColumnCheck("gone", "is_null", f"{key}[1].and[1].not.is_null", False),
                        f"{key}[1].and[1].not",
                    ),
                ),
                f"{key}[1].and",
            ),
        ),
        key,
    )
    assert spec.computed == (
        Concat("label", ("brand", "name"), " "),
        FormatDate("month", "updated_at", "%Y-%m", "Europe/Paris"),
        Constant("catalog", {"season": "spring", "year": 2024}),
        Copy("title_exact", "name"),
        Split("words", "name", None),
    )
