"""`python -m sync.spark` with a config naming several tables: one Spark run loads one.

No server: the table is chosen (or the one-line error given) before anything connects.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sync.spark.__main__ import main


def test_a_config_of_several_tables_needs_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "m").mkdir()
    for table in ("orders", "users"):
        (tmp_path / "m" / f"{table}.toml").write_text(
            f'[source]\nkeyspace = "shop"\ntable = "{table}"\n[index]\nalias = "shop-{table}"\n'
        )
    config = tmp_path / "ks2os.toml"
    config.write_text('mappings = ["m"]\n')
    assert main(["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ks2os: error: python -m sync.spark takes one table, and the config names 2: pass "
        "--table with one of: shop.orders (alias shop-orders), shop.users (alias shop-users)"
    ]
    # An unknown --table is refused the same way, before Spark or any client starts.
    assert main(["--config", str(config), "--table", "shop.carts"]) == 2
    assert "no table 'shop.carts' among the mappings" in capsys.readouterr().err
