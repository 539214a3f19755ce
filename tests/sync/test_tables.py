"""Which tables a run syncs (`sync.tables`): files, directories and globs, checked as a set.

Pure: mapping files in a temporary directory, no server. The CLI's side of
the same mistakes (one line, exit 2) is in tests/sync/test_several_tables.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.config import Config, load_config
from sync.errors import ConfigError
from sync.tables import (
    check_distinct,
    load_tables,
    mapping_paths,
    only_table,
    pick,
    select_tables,
    table_name,
)


def mapping_file(path: Path, keyspace: str, table: str, alias: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'[source]\nkeyspace = "{keyspace}"\ntable = "{table}"\n[index]\nalias = "{alias}"\n'
    )
    return path


def config(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    path = tmp_path / "conf" / "ks2os.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return load_config(path, env=env or {})


def test_mappings_name_files_directories_and_globs_relative_to_the_config_file(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "conf"
    orders = mapping_file(conf / "m" / "orders.toml", "shop", "orders", "orders")
    items = mapping_file(conf / "m" / "items.toml", "shop", "items", "items")
    users = mapping_file(conf / "more" / "users.toml", "crm", "users", "users")
    (conf / "more" / "notes.txt").write_text("not a mapping")
    carts = mapping_file(conf / "single" / "carts.toml", "shop", "carts", "carts")
    cfg = config(tmp_path, 'mappings = ["single/carts.toml", "m/*.toml", "more", "m/orders.toml"]')

    paths = [Path(p) for p in mapping_paths(cfg)]
    # In the order named, a pattern's and a directory's files sorted, each file once.
    assert paths == [carts, items, orders, users]
    names = [table_name(m) for m in select_tables(cfg)]
    assert names == ["shop.carts", "shop.items", "shop.orders", "crm.users"]


def test_mappings_from_the_environment_are_a_comma_separated_list(tmp_path: Path) -> None:
    a = mapping_file(tmp_path / "a.toml", "ks", "a", "a")
    b = mapping_file(tmp_path / "b.toml", "ks", "b", "b")
    cfg = config(tmp_path, "", env={"KS2OS_MAPPINGS": f"{a}, {b}"})
    assert mapping_paths(cfg) == [str(a), str(b)]


def test_mapping_alone_still_names_one_table(tmp_path: Path) -> None:
    mapping_file(tmp_path / "conf" / "orders.toml", "shop", "orders", "orders")
    cfg = config(tmp_path, 'mapping = "orders.toml"')
    (only,) = select_tables(cfg)
    assert table_name(only) == "shop.orders"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "ks2os.toml: mapping and mappings are both set"),
        ({"KS2OS_MAPPINGS": "x.toml"}, "mapping and mappings are both set"),
    ],
    ids=["file", "file-and-environment"],
)
def test_mapping_and_mappings_together_are_one_line(
    tmp_path: Path, env: dict[str, str], expected: str
) -> None:
    text = 'mapping = "a.toml"\n' + ("" if env else 'mappings = ["b.toml"]\n')
    with pytest.raises(ConfigError) as caught:
        config(tmp_path, text, env=env)
    assert expected in str(caught.value)
    if env:
        assert "KS2OS_MAPPINGS" in str(caught.value) and "ks2os.toml" in str(caught.value)
    assert "mappings = [" in caught.value.hint


@pytest.mark.parametrize(
    ("entry", "what"),
    [("nothing/*.toml", "matches no file"), ("empty", "is a directory without *.toml files")],
)
def test_an_entry_that_names_no_file_is_one_line(tmp_path: Path, entry: str, what: str) -> None:
    (tmp_path / "conf" / "empty").mkdir(parents=True)
    cfg = config(tmp_path, f'mappings = ["{entry}"]')
    with pytest.raises(ConfigError) as caught:
        mapping_paths(cfg)
    assert f"mappings[0] = '{tmp_path / 'conf' / entry}' {what}" == str(caught.value)


def test_a_missing_mapping_file_is_one_line_naming_it(tmp_path: Path) -> None:
    cfg = config(tmp_path, 'mappings = ["gone.toml"]')
    with pytest.raises(ConfigError) as caught:
        select_tables(cfg)
    assert str(tmp_path / "conf" / "gone.toml") in str(caught.value)
    assert "cannot read the mapping file" in str(caught.value)


def test_two_mappings_of_one_table_are_refused_naming_both_files(tmp_path: Path) -> None:
    first = mapping_file(tmp_path / "a.toml", "shop", "orders", "orders")
    second = mapping_file(tmp_path / "b.toml", "shop", "orders", "orders-by-date")
    with pytest.raises(ConfigError) as caught:
        load_tables([str(first), str(second)])
    assert str(caught.value) == f"{first} and {second} both map the table shop.orders"
    assert "state index" in caught.value.hint


def test_two_mappings_onto_one_alias_are_refused_naming_both_files(tmp_path: Path) -> None:
    first = mapping_file(tmp_path / "a.toml", "shop", "orders", "shop")
    second = mapping_file(tmp_path / "b.toml", "shop", "items", "shop")
    with pytest.raises(ConfigError) as caught:
        load_tables([str(first), str(second)])
    assert str(caught.value) == f"{first} and {second} both map onto the alias shop"


def test_distinct_tables_and_aliases_pass(tmp_path: Path) -> None:
    # The same table name in two keyspaces is two tables.
    first = mapping_file(tmp_path / "a.toml", "eu", "orders", "eu-orders")
    second = mapping_file(tmp_path / "b.toml", "us", "orders", "us-orders")
    check_distinct(load_tables([str(first), str(second)]))


def test_table_picks_by_name_or_alias_and_an_unknown_one_lists_the_known(tmp_path: Path) -> None:
    orders = mapping_file(tmp_path / "a.toml", "shop", "orders", "orders-index")
    items = mapping_file(tmp_path / "b.toml", "shop", "items", "items-index")
    mappings = load_tables([str(orders), str(items)])
    assert table_name(pick(mappings, "shop.items")) == "shop.items"
    assert table_name(pick(mappings, "orders-index")) == "shop.orders"
    with pytest.raises(ConfigError) as caught:
        pick(mappings, "shop.carts")
    assert str(caught.value) == "no table 'shop.carts' among the mappings"
    assert caught.value.hint == (
        "--table takes one of: shop.orders (alias orders-index), shop.items (alias items-index)"
    )


def test_select_tables_narrows_to_one_with_table_or_takes_mapping_instead(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "conf"
    mapping_file(conf / "m" / "orders.toml", "shop", "orders", "orders")
    mapping_file(conf / "m" / "items.toml", "shop", "items", "items")
    other = mapping_file(tmp_path / "other.toml", "crm", "users", "users")
    cfg = config(tmp_path, 'mappings = ["m"]')
    assert [table_name(m) for m in select_tables(cfg, table="orders")] == ["shop.orders"]
    assert [table_name(m) for m in select_tables(cfg, mapping=str(other))] == ["crm.users"]
    with pytest.raises(ConfigError, match=r"no table 'shop\.orders'"):
        select_tables(cfg, mapping=str(other), table="shop.orders")


def test_no_mapping_at_all_is_one_line_saying_how_to_name_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        select_tables(config(tmp_path, ""))
    assert str(caught.value) == "no mapping file given"
    assert "--mapping FILE" in caught.value.hint and "mappings = [" in caught.value.hint


def test_several_tables_may_not_share_a_dead_letter_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    mapping_file(conf / "m" / "orders.toml", "shop", "orders", "orders")
    mapping_file(conf / "m" / "items.toml", "shop", "items", "items")
    cfg = config(tmp_path, 'mappings = ["m"]\ndead_letter = "dead.ndjson"\n')
    with pytest.raises(ConfigError) as caught:
        select_tables(cfg)
    assert "is one file for 2 tables" in str(caught.value)
    assert 'dead_letter = "index"' in caught.value.hint
    (one,) = select_tables(cfg, table="shop.items")  # one table: its own file, as before
    assert table_name(one) == "shop.items"


def test_a_command_that_takes_one_table_asks_for_table(tmp_path: Path) -> None:
    orders = mapping_file(tmp_path / "a.toml", "shop", "orders", "orders")
    items = mapping_file(tmp_path / "b.toml", "shop", "items", "items")
    mappings = load_tables([str(orders), str(items)])
    assert only_table(mappings[:1], "ks2os reindex") is mappings[0]
    with pytest.raises(ConfigError) as caught:
        only_table(mappings, "ks2os reindex")
    assert str(caught.value) == "ks2os reindex takes one table, and the config names 2"
    assert caught.value.hint.startswith("pass --table with one of: shop.orders (alias orders)")
