"""What tokens cost: the packaged price table (prices.toml) plus a policy's [budget.prices] overrides.

A model without a known price has an unknown cost (None), never a guessed one.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from orchestrator.policy.model import Price

PRICES_FILE = Path(__file__).with_name("prices.toml")
_SNAPSHOT = re.compile(r"^(?P<alias>.+)-\d{8}$")  # claude-sonnet-4-5-20250929 -> claude-sonnet-4-5


@functools.cache
def packaged_prices() -> dict[str, Price]:
    data = tomllib.loads(PRICES_FILE.read_text(encoding="utf-8"))
    return {model: Price.model_validate(values) for model, values in data["models"].items()}


def price_for(model: str, overrides: Mapping[str, Price] | None = None) -> Price | None:
    """The model's price (a policy override wins over the packaged table), or None when unknown."""
    table = {**packaged_prices(), **(overrides or {})}
    snapshot = _SNAPSHOT.match(model)
    for name in (model, snapshot.group("alias") if snapshot else None):
        if name in table:
            return table[name]
    return None


def _tokens(usage: Any, name: str) -> int:
    return getattr(usage, name, None) or 0


def total_input_tokens(usage: Any) -> int:
    """All input, as [budget] max_input_tokens counts it: uncached, cache writes and cache reads."""
    return sum(_tokens(usage, name) for name in ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens"))


def cost_usd(usage: Any, price: Price | None) -> float | None:
    """USD for Anthropic-style usage (input_tokens excludes cached tokens), or None for an unknown price."""
    if price is None:
        return None
    cost = (
        _tokens(usage, "input_tokens") * price.input
        + _tokens(usage, "output_tokens") * price.output
        + _tokens(usage, "cache_creation_input_tokens") * price.cache_write
        + _tokens(usage, "cache_read_input_tokens") * price.cache_read
    )
    return round(cost / 1_000_000, 6)
