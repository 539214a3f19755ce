"""The hook mappings/products-shaped.toml names: ks2os imports it from beside that file."""

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

BANDS = ((Decimal("10"), "budget"), (Decimal("50"), "standard"))


def price_band(row: Mapping[str, Any], document: dict[str, Any]) -> dict[str, Any] | None:
    """The document with the price's band; a product without a price is not indexed."""
    price = row.get("price")  # a Decimal, as the driver returns it
    if price is None:
        return None
    document["price_band"] = next((band for limit, band in BANDS if price < limit), "premium")
    return document
