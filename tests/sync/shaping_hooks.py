"""Hooks the shaping tests name in their mapping files (`tests.sync.shaping_hooks:<name>`).

Each is what a user would write: a pure function of `(row, document)`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NOT_A_FUNCTION = 42


def keep(row: Mapping[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    return document


def drop_all(row: Mapping[str, Any], document: dict[str, Any]) -> None:
    return None


def describe_types(row: Mapping[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """The document plus, per column, the type the hook received (as the contract names it)."""
    document["received"] = {column: _kind(value) for column, value in row.items()}
    return document


def _kind(value: Any) -> str:
    if hasattr(value, "_fields"):
        return "namedtuple"  # a UDT: the class differs between the driver and the stream
    if isinstance(value, Mapping):
        return "Mapping"  # the driver's OrderedMapSerializedKey; a dict from the stream
    return type(value).__name__


def boom_on_a(row: Mapping[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    """Fails for rows whose `a` is "boom"; a pass-through otherwise."""
    if row.get("a") == "boom":
        raise RuntimeError(f"cannot shape row {row['p']}/{row['c']}:\nbad a")
    return document


def only_even_b(row: Mapping[str, Any], document: dict[str, Any]) -> dict[str, Any] | None:
    """Not indexed unless `b` is even; otherwise the document with b's parity named."""
    b = row.get("b")
    if b is None or b % 2:
        return None
    return {**document, "parity": "even"}


def returns_a_list(row: Mapping[str, Any], document: dict[str, Any]) -> list[str]:
    return ["not", "a", "body"]


def returns_a_decimal(row: Mapping[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    return {"price": row["price"]}


def returns_metadata(row: Mapping[str, Any], document: dict[str, Any]) -> dict[str, Any]:
    return {**document, "_ks2os": {"deleted": False}}


def edits_the_row(row: Any, document: dict[str, Any]) -> dict[str, Any]:
    row["a"] = "changed"
    return document


def one_argument(row: Mapping[str, Any]) -> dict[str, Any]:
    return dict(row)
