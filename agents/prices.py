"""What a model call cost, from the versioned price table ``agents/prices.json``.

The table is data, not code, so a price change is a one-file diff whose ``version``
lands in every ledger row priced with it (``llm_calls.price_version``): a cost can
always be traced to the rates that produced it, and re-priced if they were wrong.

Unknown models are priced at a *ceiling* (the highest rate of each column in the
table) rather than refused: refusing after the call would throw away an answer that
has already been paid for, and refusing before it would stop every agent the day a new
model ships. The ceiling never under-reports, and the row's ``price_version`` is
``"<version>+ceiling"`` so such rows can be found (``WHERE price_version LIKE
'%+ceiling'``) and re-priced once the table knows the model.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = [
    "CEILING_SUFFIX",
    "Price",
    "PriceTable",
    "Rates",
    "load_price_table",
]

CEILING_SUFFIX = "+ceiling"
_PER_TOKENS = Decimal(1_000_000)
# numeric(14, 8) in llm_calls.cost_usd
_COST_QUANTUM = Decimal("0.00000001")
_DATED_ID = re.compile(r"^(?P<base>.+)-\d{8}$")
_RATE_KEYS = ("input", "output", "cache_write", "cache_write_1h", "cache_read")


@dataclasses.dataclass(frozen=True, slots=True)
class Rates:
    """USD per million tokens."""

    input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal
    cache_read: Decimal

    @classmethod
    def from_json(cls, raw: Mapping[str, Any], *, where: str) -> Rates:
        missing = [key for key in ("input", "output", "cache_write", "cache_read")
                   if key not in raw]
        if missing:
            raise ValueError(f"price table: {where} lacks {', '.join(missing)}")
        values = {key: Decimal(str(raw[key])) for key in _RATE_KEYS if key in raw}
        # Anthropic bills a 1-hour write at 2x input; only needed when a row omits it.
        values.setdefault("cache_write_1h", values["input"] * 2)
        if any(value < 0 for value in values.values()):
            raise ValueError(f"price table: {where} has a negative rate")
        return cls(**values)


@dataclasses.dataclass(frozen=True, slots=True)
class ModelPrices:
    rates: Rates
    #: Rates for a request whose prompt exceeds ``long_prompt_above`` tokens (all of
    #: its tokens, output included, are billed at them).
    long_prompt: Rates | None = None
    long_prompt_above: int | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Price:
    """The cost of one call and the table entry that produced it."""

    cost_usd: Decimal
    #: ``llm_calls.price_version``: the table version, plus ``+ceiling`` when the model
    #: was unknown and priced at the table's highest rates.
    price_version: str
    #: The table key used (``None`` for the ceiling).
    priced_as: str | None


class PriceTable:
    def __init__(self, *, version: str, source: str, models: Mapping[str, ModelPrices]) -> None:
        if not version:
            raise ValueError("price table: version is required")
        if not models:
            raise ValueError("price table: no models")
        self.version = version
        self.source = source
        self._models = dict(models)
        self.ceiling = Rates(**{
            key: max(getattr(entry, key) for m in models.values()
                     for entry in (m.rates, m.long_prompt) if entry is not None)
            for key in _RATE_KEYS
        })

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> PriceTable:
        models: dict[str, ModelPrices] = {}
        for name, entry in raw.get("models", {}).items():
            long = entry.get("long_prompt")
            models[name] = ModelPrices(
                rates=Rates.from_json(entry, where=name),
                long_prompt=(
                    None if long is None else Rates.from_json(long, where=f"{name}.long_prompt")
                ),
                long_prompt_above=None if long is None else int(long["above_tokens"]),
            )
        return cls(version=str(raw.get("version", "")), source=str(raw.get("source", "")),
                   models=models)

    def models(self) -> list[str]:
        return sorted(self._models)

    def lookup(self, model: str) -> str | None:
        """The table key that prices ``model``, or ``None`` when it is unknown."""
        if model in self._models:
            return model
        dated = _DATED_ID.match(model)
        if dated and dated.group("base") in self._models:
            return dated.group("base")
        return None

    def price(
        self,
        model: str,
        *,
        input_tokens: int,
        output_tokens: int,
        cache_creation_input_tokens: int = 0,
        cache_read_input_tokens: int = 0,
        cache_creation_1h_input_tokens: int = 0,
    ) -> Price:
        """Cost of one call from its ``usage``.

        ``cache_creation_input_tokens`` is the API's total of cache writes;
        ``cache_creation_1h_input_tokens`` the part of it written with the 1-hour TTL
        (``usage.cache_creation.ephemeral_1h_input_tokens``), billed at its own rate.
        """
        counts = (input_tokens, output_tokens, cache_creation_input_tokens,
                  cache_read_input_tokens, cache_creation_1h_input_tokens)
        if any(count < 0 for count in counts):
            raise ValueError(f"token counts must be >= 0, got {counts}")
        one_hour = min(cache_creation_1h_input_tokens, cache_creation_input_tokens)
        five_minute = cache_creation_input_tokens - one_hour
        key = self.lookup(model)
        if key is None:
            rates, version = self.ceiling, self.version + CEILING_SUFFIX
        else:
            entry = self._models[key]
            rates, version = entry.rates, self.version
            prompt = input_tokens + cache_creation_input_tokens + cache_read_input_tokens
            if (entry.long_prompt is not None and entry.long_prompt_above is not None
                    and prompt > entry.long_prompt_above):
                rates = entry.long_prompt
        micro_dollars = (
            input_tokens * rates.input
            + output_tokens * rates.output
            + five_minute * rates.cache_write
            + one_hour * rates.cache_write_1h
            + cache_read_input_tokens * rates.cache_read
        )
        cost = (micro_dollars / _PER_TOKENS).quantize(_COST_QUANTUM)
        return Price(cost_usd=cost, price_version=version, priced_as=key)


@functools.cache
def load_price_table() -> PriceTable:
    """The table shipped with this build (read once per process)."""
    text = importlib.resources.files("agents").joinpath("prices.json").read_text("utf-8")
    # parse_float=Decimal: 0.30 must stay 0.30, not 0.299999...
    return PriceTable.from_json(json.loads(text, parse_float=Decimal))
