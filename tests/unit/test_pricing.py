"""Prices: the packaged table, snapshot names, policy overrides, and costs that are never guessed."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import tomllib

from orchestrator.conversation import Usage
from orchestrator.policy.model import Price
from orchestrator.policy.pricing import PRICES_FILE, cost_usd, packaged_prices, price_for, total_input_tokens
from orchestrator.providers import DEFAULT_MODEL


@dataclass
class SdkUsage:
    """Shaped like anthropic.types.Usage: cache counts may be None."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


def test_table_loads_and_every_price_is_sane() -> None:
    table = packaged_prices()
    assert set(table) == set(tomllib.loads(PRICES_FILE.read_text())["models"])
    for model, price in table.items():
        assert model.startswith("claude-")
        assert 0 < price.cache_read < price.input < price.cache_write < price.output, model


def test_the_default_model_has_a_price() -> None:
    assert price_for(DEFAULT_MODEL) is not None


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("claude-sonnet-4-5", Price(input=3, output=15, cache_write=3.75, cache_read=0.3)),
        ("claude-haiku-4-5", Price(input=1, output=5, cache_write=1.25, cache_read=0.1)),
        ("claude-opus-4-5", Price(input=5, output=25, cache_write=6.25, cache_read=0.5)),
        ("claude-opus-5-5", Price(input=4, output=20, cache_write=5, cache_read=0.2)),
        ("claude-fable-5-1", Price(input=10, output=50, cache_write=12.5, cache_read=0.25)),
    ],
)
def test_known_prices(model: str, expected: Price) -> None:
    assert price_for(model) == expected


@pytest.mark.parametrize(
    ("snapshot", "alias"),
    [
        ("claude-sonnet-4-5-20250929", "claude-sonnet-4-5"),
        ("claude-haiku-4-5-20251001", "claude-haiku-4-5"),
        ("claude-opus-4-5-20251101", "claude-opus-4-5"),
    ],
)
def test_dated_snapshots_use_their_alias(snapshot: str, alias: str) -> None:
    assert price_for(snapshot) == price_for(alias) is not None


@pytest.mark.parametrize("model", ["airlock-demo-script", "claude-haiku-5-5", "claude-unknown-9", "claude-sonnet-4-5-latest", ""])
def test_unknown_models_have_no_price(model: str) -> None:
    assert price_for(model) is None


def test_overrides_add_and_replace() -> None:
    mine = Price(input=1, output=2, cache_write=1.25, cache_read=0.1)
    assert price_for("my-model", {"my-model": mine}) == mine
    assert price_for("claude-sonnet-4-5", {"claude-sonnet-4-5": mine}) == mine
    assert price_for("claude-sonnet-4-5-20250929", {"claude-sonnet-4-5": mine}) == mine
    exact = Price(input=9, output=9, cache_write=9, cache_read=9)
    assert price_for("claude-sonnet-4-5-20250929", {"claude-sonnet-4-5": mine, "claude-sonnet-4-5-20250929": exact}) == exact
    assert price_for("claude-sonnet-4-5") != mine  # overrides apply only where passed


def test_cost_counts_each_kind_of_token_at_its_price() -> None:
    price = Price(input=3, output=15, cache_write=3.75, cache_read=0.3)
    usage = SdkUsage(input_tokens=1_000_000, output_tokens=100_000, cache_creation_input_tokens=200_000, cache_read_input_tokens=2_000_000)
    assert cost_usd(usage, price) == pytest.approx(3 + 1.5 + 0.75 + 0.6)


def test_cost_with_the_run_usage_and_missing_cache_counts() -> None:
    price = Price(input=2, output=10, cache_write=2.5, cache_read=0.2)
    assert cost_usd(Usage(input_tokens=500, output_tokens=100), price) == pytest.approx(0.002)
    assert cost_usd(SdkUsage(input_tokens=500, output_tokens=100), price) == pytest.approx(0.002)
    assert cost_usd(Usage(), price) == 0


def test_unknown_price_means_unknown_cost() -> None:
    assert cost_usd(Usage(input_tokens=10), None) is None


def test_total_input_tokens_includes_cache_reads_and_writes() -> None:
    usage = SdkUsage(input_tokens=10, output_tokens=5, cache_creation_input_tokens=20, cache_read_input_tokens=None)
    assert total_input_tokens(usage) == 30
    assert total_input_tokens(Usage(input_tokens=1, cache_creation_input_tokens=2, cache_read_input_tokens=3)) == 6
