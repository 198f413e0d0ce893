"""The price table (agents/prices.json) and the cost arithmetic built on it."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from agents.prices import CEILING_SUFFIX, PriceTable, load_price_table

PRICES_JSON = Path(__file__).resolve().parents[2] / "agents" / "prices.json"


def test_table_is_versioned_and_sourced() -> None:
    table = load_price_table()
    raw = json.loads(PRICES_JSON.read_text())
    assert table.version == raw["version"] == "2026-11-01"
    assert "platform.claude.com" in table.source
    assert {"claude-sonnet-4-5", "claude-sonnet-4-6", "claude-haiku-4-5", "claude-opus-4-5",
            "claude-sonnet-5-5", "claude-opus-5-5"} <= set(table.models())


def test_the_brief_example_row() -> None:
    # input 3.00, output 15.00, 5-minute cache write 3.75, cache read 0.30 per MTok
    table = load_price_table()
    assert table.price("claude-sonnet-4-5", input_tokens=1_000_000, output_tokens=0).cost_usd \
        == Decimal("3.00000000")
    assert table.price("claude-sonnet-4-5", input_tokens=0, output_tokens=1_000_000).cost_usd \
        == Decimal("15.00000000")
    assert table.price("claude-sonnet-4-5", input_tokens=0, output_tokens=0,
                       cache_creation_input_tokens=1_000_000).cost_usd == Decimal("3.75000000")
    assert table.price("claude-sonnet-4-5", input_tokens=0, output_tokens=0,
                       cache_read_input_tokens=1_000_000).cost_usd == Decimal("0.30000000")


def test_one_call_sums_all_four_kinds_exactly() -> None:
    price = load_price_table().price(
        "claude-sonnet-4-5", input_tokens=1234, output_tokens=567,
        cache_creation_input_tokens=2000, cache_read_input_tokens=30_000,
    )
    # 1234*3 + 567*15 + 2000*3.75 + 30000*0.30 = 3702 + 8505 + 7500 + 9000 = 28707 µ$
    assert price.cost_usd == Decimal("0.02870700")
    assert price.price_version == "2026-11-01"
    assert price.priced_as == "claude-sonnet-4-5"


def test_decimal_rates_do_not_drift() -> None:
    # A float 0.30 would make this 0.0000003 * 3 = 8.999999999999999e-07.
    price = load_price_table().price(
        "claude-sonnet-4-6", input_tokens=0, output_tokens=0, cache_read_input_tokens=3
    )
    assert price.cost_usd == Decimal("0.00000090")


def test_cost_is_rounded_to_the_ledger_scale() -> None:
    price = load_price_table().price("claude-haiku-5-5", input_tokens=1, output_tokens=0)
    assert price.cost_usd == Decimal("0.00000010")
    assert price.cost_usd.as_tuple().exponent == -8  # numeric(14, 8)


def test_dated_model_ids_price_as_their_alias() -> None:
    table = load_price_table()
    dated = table.price("claude-sonnet-4-5-20250929", input_tokens=1000, output_tokens=1000)
    alias = table.price("claude-sonnet-4-5", input_tokens=1000, output_tokens=1000)
    assert dated.cost_usd == alias.cost_usd and dated.price_version == "2026-11-01"
    assert dated.priced_as == "claude-sonnet-4-5"


def test_unknown_model_is_priced_at_the_ceiling_and_flagged() -> None:
    table = load_price_table()
    price = table.price("claude-future-9", input_tokens=1_000_000, output_tokens=1_000_000,
                        cache_creation_input_tokens=1_000_000,
                        cache_read_input_tokens=1_000_000)
    assert price.priced_as is None
    assert price.price_version == "2026-11-01" + CEILING_SUFFIX
    # The highest rate of each column: input 10, output 50, cache write 12.50, read 1.00.
    assert price.cost_usd == Decimal("73.50000000")
    # Never below what any known model would have cost.
    for model in table.models():
        known = table.price(model, input_tokens=1_000_000, output_tokens=1_000_000,
                            cache_creation_input_tokens=1_000_000,
                            cache_read_input_tokens=1_000_000)
        assert known.cost_usd <= price.cost_usd


def test_one_hour_cache_writes_have_their_own_rate() -> None:
    price = load_price_table().price(
        "claude-sonnet-4-6", input_tokens=0, output_tokens=0,
        cache_creation_input_tokens=1_000_000, cache_creation_1h_input_tokens=400_000,
    )
    # 600k at 3.75 (5 min) + 400k at 6.00 (1 h)
    assert price.cost_usd == Decimal("4.65000000")


def test_long_prompt_band_applies_to_every_token_of_the_request() -> None:
    table = load_price_table()
    short = table.price("claude-haiku-5-5", input_tokens=100_000, output_tokens=1000)
    long = table.price("claude-haiku-5-5", input_tokens=90_000, output_tokens=1000,
                       cache_read_input_tokens=10_001)
    assert short.cost_usd == Decimal("0.01050000")  # 100k*0.10 + 1k*0.50
    # 90k*0.50 + 1k*2.50 + 10001*0.05
    assert long.cost_usd == Decimal("0.04800005")


def test_negative_counts_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        load_price_table().price("claude-sonnet-4-5", input_tokens=-1, output_tokens=0)


def test_a_table_row_missing_a_rate_is_refused() -> None:
    with pytest.raises(ValueError, match="lacks cache_read"):
        PriceTable.from_json({"version": "x", "models": {
            "m": {"input": 1, "output": 2, "cache_write": 1.25}}})


def test_a_table_needs_a_version() -> None:
    with pytest.raises(ValueError, match="version"):
        PriceTable.from_json({"models": {
            "m": {"input": 1, "output": 2, "cache_write": 1.25, "cache_read": 0.1}}})
