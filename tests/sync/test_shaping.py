"""Filters, computed fields and hooks as pure logic: typed literals, tests, one-line errors.

No server here: conditions are compiled against a hand-made table layout and
evaluated on rows of driver-native values, as the scan and the stream decode
them. What goes through the document builder (bodies, tombstones) is in
test_documents.py; what goes through Keyspaces and OpenSearch in
test_shaping_end_to_end.py.
"""

from __future__ import annotations

import datetime as dt
import decimal
import struct
import uuid
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
from cassandra.util import Date, Duration, OrderedMap, SortedSet, Time
from hypothesis import given
from hypothesis import strategies as st

from sync.documents import DocumentBuilder
from sync.errors import ConfigError, DocumentError
from sync.mapping import TableMapping, mapping_from_dict
from sync.schema import TableLayout
from sync.shaping import compile_filter, load_hook

pytestmark = pytest.mark.unit

TYPES = {
    "k": "int",
    "c": "int",
    "s": "text",
    "ti": "tinyint",
    "si": "smallint",
    "i": "int",
    "bi": "bigint",
    "vi": "varint",
    "ct": "counter",
    "f": "float",
    "d": "double",
    "dec": "decimal",
    "t": "text",
    "vc": "varchar",
    "asc": "ascii",
    "ok": "boolean",
    "id": "uuid",
    "tid": "timeuuid",
    "ts": "timestamp",
    "day": "date",
    "tm": "time",
    "ip": "inet",
    "raw": "blob",
    "dur": "duration",
    "nums": "list<int>",
    "tags": "set<text>",
    "ids": "frozen<set<uuid>>",
    "m": "map<text, int>",
    "pair": "tuple<int, text>",
    "addr": "frozen<address>",
}
TABLE = TableLayout("demo", "t", ("k",), ("c",), ("s",), TYPES)
UID = uuid.UUID("6ba7b810-9dad-11d1-80b4-00c04fd430c8")  # a version 1 UUID
ADDRESS = namedtuple("address", ["street", "zip"])


def f32(value: float) -> float:
    result: float = struct.unpack("f", struct.pack("f", value))[0]
    return result


def document(**section: Any) -> TableMapping:
    return mapping_from_dict(
        {
            "source": {"keyspace": "demo", "table": "t"},
            "index": {"alias": "t"},
            "document": section,
        },
        "m.toml",
    )


def predicate(condition: dict[str, Any]) -> Any:
    spec = document(filter=condition).document.filter
    assert spec is not None
    return compile_filter(spec, TABLE, "m.toml")


def config_error(**section: Any) -> str:
    with pytest.raises(ConfigError) as raised:
        DocumentBuilder(document(**section), TABLE)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("m.toml: ")
    assert raised.value.hint
    return message


# ---- filters: typed literals for every CQL type ---------------------------------------

# (column, literal as written in the file, a row value equal to it, a greater row value or None)
EQUAL_AND_GREATER = [
    ("ti", 5, 5, 6),
    ("si", -300, -300, 0),
    ("i", 70_000, 70_000, 70_001),
    ("bi", 2**40, 2**40, 2**41),
    ("vi", 10**30, 10**30, 10**31),
    ("ct", 7, 7, 8),
    ("f", 0.1, f32(0.1), f32(0.2)),  # the driver reads floats through 32 bits
    ("d", 0.1, 0.1, 0.2),
    ("d", 2, 2.0, 2.5),
    ("dec", "19.90", decimal.Decimal("19.9"), decimal.Decimal("19.91")),
    ("dec", 3, decimal.Decimal("3.00"), decimal.Decimal("4")),
    ("t", "héllo", "héllo", "hí"),
    ("vc", "a", "a", "b"),
    ("asc", "abc", "abc", "abd"),
    ("ok", True, True, None),
    ("id", str(UID), UID, None),
    ("tid", str(UID), UID, None),
    # the driver's datetimes can sit a microsecond off the millisecond
    ("ts", "2024-01-02T03:04:05.678Z", dt.datetime(2024, 1, 2, 3, 4, 5, 677999), None),
    (
        "ts",
        dt.datetime(2024, 1, 2, 4, 4, 5, 678000, tzinfo=dt.timezone(dt.timedelta(hours=1))),
        dt.datetime(2024, 1, 2, 3, 4, 5, 678000),
        dt.datetime(2024, 1, 2, 3, 4, 5, 679000),
    ),
    ("ts", 1_704_164_645_678, dt.datetime(2024, 1, 2, 3, 4, 5, 678000), None),
    ("day", "2024-01-01", Date(19723), Date(19724)),
    ("day", dt.date(2024, 1, 1), Date(19723), Date(19724)),
    ("tm", "01:02:03.000000009", Time(3723000000009), Time(3723000000010)),
    ("tm", dt.time(1, 2, 3), Time(3723000000000), Time(3723000000001)),
    ("ip", "10.0.0.1", "10.0.0.1", None),
    ("ip", "0:0::1", "::1", None),
    ("raw", "0x00FF", b"\x00\xff", None),
    ("dur", "1h30m", Duration(0, 0, 5400 * 10**9), None),
    ("dur", "PT1H30M", Duration(0, 0, 5400 * 10**9), None),
]


@pytest.mark.parametrize(("column", "literal", "equal", "greater"), EQUAL_AND_GREATER)
def test_literals_are_typed_by_the_columns_cql_type(
    column: str, literal: Any, equal: Any, greater: Any
) -> None:
    eq = predicate({"column": column, "eq": literal})
    ne = predicate({"column": column, "ne": literal})
    is_in = predicate({"column": column, "in": [literal]})
    assert eq({column: equal}) and is_in({column: equal}) and not ne({column: equal})
    if greater is None:
        return
    assert not eq({column: greater}) and ne({column: greater})
    assert predicate({"column": column, "gt": literal})({column: greater})
    assert predicate({"column": column, "gte": literal})({column: equal})
    assert not predicate({"column": column, "lt": literal})({column: equal})
    assert predicate({"column": column, "lte": literal})({column: equal})


@pytest.mark.parametrize(
    ("column", "literal", "element", "other"),
    [
        ("nums", 3, [1, 3], [1, 2]),
        ("tags", "sale", SortedSet(["new", "sale"]), SortedSet(["new"])),
        ("ids", str(UID), SortedSet([UID]), SortedSet([uuid.uuid4()])),
    ],
)
def test_contains_tests_a_list_or_set_element_typed_by_the_element_type(
    column: str, literal: Any, element: Any, other: Any
) -> None:
    contains = predicate({"column": column, "contains": literal})
    assert contains({column: element}) and not contains({column: other})
    assert not contains({})


@pytest.mark.parametrize(
    ("column", "value"),
    [("m", OrderedMap([("a", 1)])), ("pair", (1, "x")), ("addr", ADDRESS("Main", 1))],
)
def test_is_null_tests_any_column(column: str, value: Any) -> None:
    assert predicate({"column": column, "is_null": True})({})
    assert not predicate({"column": column, "is_null": True})({column: value})
    assert predicate({"column": column, "is_null": False})({column: value})


def test_a_null_passes_no_test_but_its_negations() -> None:
    for test in ("eq", "lt", "lte", "gt", "gte"):
        assert not predicate({"column": "i", test: 1})({})
    assert not predicate({"column": "i", "in": [1, 2]})({"i": None})
    assert predicate({"column": "i", "ne": 1})({})
    assert predicate({"column": "i", "not_in": [1, 2]})({})


def test_several_tests_of_one_column_must_all_hold() -> None:
    in_range = predicate({"column": "i", "gte": 10, "lt": 20})
    assert [in_range({"i": n}) for n in (9, 10, 19, 20)] == [False, True, True, False]


def test_and_or_not_combine_conditions() -> None:
    condition = {
        "or": [
            {"and": [{"column": "i", "gte": 500}, {"not": {"column": "t", "is_null": True}}]},
            {
                "and": [
                    {"column": "t", "in": ["a", "b"]},
                    {"not": {"column": "tags", "contains": "x"}},
                ]
            },
        ]
    }
    matches = predicate(condition)
    assert matches({"i": 600, "t": "z"})
    assert not matches({"i": 600})
    assert matches({"i": 1, "t": "a"})
    assert not matches({"i": 1, "t": "a", "tags": SortedSet(["x"])})
    assert matches({"t": "b", "tags": SortedSet(["y"])})
    assert not matches({"t": "c"})


@given(
    st.one_of(st.none(), st.integers(-50, 50)),
    st.integers(-50, 50),
    st.lists(st.integers(-50, 50), min_size=1, max_size=4),
)
def test_integer_tests_agree_with_python_comparisons(
    value: int | None, literal: int, members: list[int]
) -> None:
    row = {} if value is None else {"i": value}
    present = value is not None

    def check(test: str, expected: bool, operand: Any = literal) -> None:
        assert predicate({"column": "i", test: operand})(row) is expected, (test, value)

    check("eq", present and value == literal)
    check("ne", not (present and value == literal))
    check("lt", present and value is not None and value < literal)
    check("lte", present and value is not None and value <= literal)
    check("gt", present and value is not None and value > literal)
    check("gte", present and value is not None and value >= literal)
    check("in", present and value in members, members)
    check("not_in", not (present and value in members), members)


# ---- filters: mistakes are one line at start ----------------------------------------


@pytest.mark.parametrize(
    ("condition", "key", "expected"),
    [
        ({"column": "ti", "eq": 300}, "document.filter.eq", "an integer from -128 to 127"),
        ({"column": "i", "eq": "5"}, "document.filter.eq", "an integer"),
        ({"column": "i", "eq": True}, "document.filter.eq", "an integer"),
        ({"column": "f", "gt": "x"}, "document.filter.gt", "a number"),
        ({"column": "f", "gt": 1e300}, "document.filter.gt", "32-bit float range"),
        ({"column": "dec", "eq": "abc"}, "document.filter.eq", "a decimal"),
        ({"column": "dec", "eq": "NaN"}, "document.filter.eq", "a decimal"),
        ({"column": "ok", "eq": 1}, "document.filter.eq", "true or false"),
        ({"column": "t", "eq": 5}, "document.filter.eq", "a string"),
        ({"column": "asc", "eq": "é"}, "document.filter.eq", "an ASCII string"),
        ({"column": "id", "eq": "nope"}, "document.filter.eq", "a UUID string"),
        ({"column": "tid", "eq": str(uuid.uuid4())}, "document.filter.eq", "version 1"),
        ({"column": "ts", "gt": "yesterday"}, "document.filter.gt", "ISO 8601"),
        ({"column": "day", "eq": "2024-13-01"}, "document.filter.eq", "YYYY-MM-DD"),
        ({"column": "day", "eq": dt.datetime(2024, 1, 1)}, "document.filter.eq", "TOML date"),
        ({"column": "tm", "eq": "25:00:00"}, "document.filter.eq", "HH:MM:SS"),
        ({"column": "ip", "eq": "1.2.3"}, "document.filter.eq", "IPv4 or IPv6"),
        ({"column": "raw", "eq": "cafe"}, "document.filter.eq", "hex bytes"),
        ({"column": "dur", "eq": "forever"}, "document.filter.eq", "a duration"),
        ({"column": "i", "in": [1, "2"]}, "document.filter.in[1]", "an integer"),
        ({"column": "nums", "contains": "x"}, "document.filter.contains", "an integer"),
        ({"column": "ip", "lt": "10.0.0.1"}, "document.filter.lt", "has no order"),
        ({"column": "id", "gte": str(UID)}, "document.filter.gte", "has no order"),
        ({"column": "i", "contains": 1}, "document.filter.contains", "list and set"),
        ({"column": "nums", "eq": 1}, "document.filter.eq", "only contains and is_null"),
        ({"column": "m", "eq": 1}, "document.filter.eq", "only is_null"),
        ({"column": "addr", "eq": 1}, "document.filter.eq", "only is_null"),
        ({"column": "nope", "eq": 1}, "document.filter.eq", "'nope' is not a column of demo.t"),
        (
            {"and": [{"column": "i", "eq": 1}, {"not": {"column": "s", "eq": "x"}}]},
            "document.filter.and[1].not.eq",
            "'s' is a static column of demo.t",
        ),
    ],
)
def test_a_filter_the_table_cannot_take_is_one_line_naming_the_key(
    condition: dict[str, Any], key: str, expected: str
) -> None:
    message = config_error(filter=condition)
    assert f"m.toml: {key}: " in message
    assert expected in message


def test_a_static_filter_is_refused_saying_why() -> None:
    message = config_error(filter={"column": "s", "eq": "x"})
    assert "static values arrive as records of their own" in message
    assert "every row of the partition re-evaluated" in message


def test_a_row_value_of_another_type_is_this_changes_bad_input() -> None:
    builder = DocumentBuilder(document(filter={"column": "ts", "gt": "2024-01-01"}), TABLE)
    assert builder.shaper is not None
    with pytest.raises(DocumentError, match="the filter cannot test this row"):
        builder.shaper.matches({"ts": "not a datetime"})


# ---- computed fields: mistakes ---------------------------------------------------------


@pytest.mark.parametrize(
    ("computed", "key", "expected"),
    [
        ({"x": {"copy": "nope"}}, "document.computed.x.copy", "'nope' is not a column"),
        ({"x": {"concat": ["t", "s"]}}, "document.computed.x.concat", "'s' is a static column"),
        ({"x": {"split": "i"}}, "document.computed.x.split", "split takes a text column"),
        (
            {"x": {"format_date": "t", "format": "%Y"}},
            "document.computed.x.format_date",
            "timestamp or date",
        ),
        (
            {"x": {"format_date": "day", "format": "%Y", "timezone": "Europe/Paris"}},
            "document.computed.x.timezone",
            "no time of day",
        ),
        ({"t": {"constant": 1}}, "document.computed.t", "already the field of column 't'"),
    ],
)
def test_a_computed_field_the_table_cannot_take_is_one_line_naming_the_key(
    computed: dict[str, Any], key: str, expected: str
) -> None:
    message = config_error(computed=computed)
    assert f"m.toml: {key}: " in message
    assert expected in message


def test_a_computed_field_may_take_a_renamed_columns_old_name() -> None:
    mapping = document(rename={"t": "title"}, computed={"t": {"constant": 1}})
    assert DocumentBuilder(mapping, TABLE).shaper is not None


# ---- hooks: loading ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hook", "expected"),
    [
        ("tests.sync.no_such_module:f", "cannot import 'tests.sync.no_such_module'"),
        ("tests.sync.shaping_hooks:absent", "has no attribute 'absent'"),
        ("tests.sync.shaping_hooks:NOT_A_FUNCTION", "is not a function but a int value"),
        ("tests.sync.shaping_hooks:one_argument", "must take two arguments (row, document)"),
    ],
)
def test_a_hook_that_cannot_be_called_is_one_line_at_start(hook: str, expected: str) -> None:
    message = config_error(hook=hook)
    assert "m.toml: document.hook: " in message
    assert expected in message


def test_a_hook_module_that_fails_to_load_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "ks2os_broken_hook_module.py").write_text(
        "import json\nraise ValueError('no\\nway')\n"
    )
    with pytest.raises(ConfigError) as raised:
        load_hook("ks2os_broken_hook_module:f", "m.toml", tmp_path)
    assert str(raised.value) == (
        "m.toml: document.hook: cannot import 'ks2os_broken_hook_module': ValueError: no way"
    )


def test_a_hook_module_is_found_beside_the_mapping_file(tmp_path: Path) -> None:
    (tmp_path / "ks2os_hook_beside_mapping.py").write_text(
        "def shape(row, document):\n    return {'n': row['i'] + 1}\n"
    )
    hook = load_hook("ks2os_hook_beside_mapping:shape", str(tmp_path / "m.toml"), tmp_path)
    assert hook({"i": 1}, {}) == {"n": 2}


def test_a_module_the_hook_imports_and_lacks_is_reported_as_such(tmp_path: Path) -> None:
    (tmp_path / "ks2os_hook_with_missing_dependency.py").write_text("import ks2os_not_installed\n")
    with pytest.raises(ConfigError, match="No module named 'ks2os_not_installed'"):
        load_hook("ks2os_hook_with_missing_dependency:f", "m.toml", tmp_path)


# ---- hooks: calling ---------------------------------------------------------------------


def _hook(name: str) -> Any:
    return load_hook(f"tests.sync.shaping_hooks:{name}", "m.toml")


def test_a_hook_that_raises_is_this_changes_bad_input_with_its_message() -> None:
    with pytest.raises(DocumentError) as raised:
        _hook("boom_on_a")({"a": "boom", "p": 1, "c": 2}, {})
    assert str(raised.value) == (
        "hook tests.sync.shaping_hooks:boom_on_a raised RuntimeError: cannot shape row 1/2: bad a"
    )


@pytest.mark.parametrize(
    ("name", "row", "expected"),
    [
        ("returns_a_list", {}, "returned a list, not a dict"),
        (
            "returns_a_decimal",
            {"price": decimal.Decimal("1.5")},
            "not JSON-ready at price: a Decimal",
        ),
    ],
)
def test_a_hook_body_must_be_a_json_ready_dict(
    name: str, row: dict[str, Any], expected: str
) -> None:
    with pytest.raises(DocumentError, match=expected):
        _hook(name)(row, {})


def test_a_hook_may_leave_a_row_out() -> None:
    assert _hook("drop_all")({"a": 1}, {"a": 1}) is None


def test_a_hook_gets_the_row_read_only() -> None:
    builder = DocumentBuilder(document(hook="tests.sync.shaping_hooks:edits_the_row"), TABLE)
    assert builder.shaper is not None
    row = {"k": 1, "c": 2, "t": "x"}
    with pytest.raises(DocumentError, match="raised TypeError"):
        builder.shaper.finish(row, {})
    assert row == {"k": 1, "c": 2, "t": "x"}
