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

from orchestrator.policy.model import Policy, Price

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


def policy_warnings(policy: Policy, model: str | None) -> list[str]:
    """What a valid policy cannot do as written (with `model`, when given), for `airlock policy check`."""
    warnings = []
    budget, limits = policy.budget, policy.limits
    if budget.max_cost_usd is not None and model is None:
        warnings.append(
            "[budget] max_cost_usd applies only to models with a known price (the Claude models of prices.toml, or [budget.prices]): "
            "a run with any other model is refused (exit 2); name the model with --model to check it"
        )
    elif budget.max_cost_usd is not None and model is not None and price_for(model, budget.prices) is None:
        warnings.append(
            f"[budget] max_cost_usd cannot apply to model {model!r}: airlock has no price for it, so a run with it is refused (exit 2); "
            f'state the budget in tokens (max_input_tokens, max_output_tokens) or add [budget.prices."{model}"]'
        )
    if limits.context_window and limits.max_reply_tokens and limits.max_reply_tokens > limits.context_window // 4:
        warnings.append(
            f"[limits] max_reply_tokens = {limits.max_reply_tokens} is more than a quarter of context_window = {limits.context_window}: "
            f"replies are limited to {limits.context_window // 4} tokens"
        )
    return warnings
