"""Small model judgements the business agents ask for when a key is configured.

Each is one :func:`agents.llm.complete_json` call (two if the first answer is not
valid JSON), recorded in the cost ledger like any other call. Callers check
:func:`agents.llm.has_api_key` first and fall back to their rule-based path without
one; called without a key these raise ``FailPermanently`` like every LLM call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from agents.llm import LLMSession, RetryPolicy, complete_json
from runner.api import AgentContext

__all__ = [
    "MAX_WEBSITE_CHARS",
    "BuyingSignal",
    "QualifyResult",
    "WebsiteSummary",
    "qualify_company",
    "summarise_website",
]

#: Website text beyond this is cut: the start of a site says what the company does,
#: and every character is paid for.
MAX_WEBSITE_CHARS: Final = 20_000


class _Answer(BaseModel):
    # Models add the odd extra key; ignoring it beats a retry.
    model_config = ConfigDict(extra="ignore", str_strip_whitespace=True)


class BuyingSignal(_Answer):
    """Shaped like the entries of ``stream_items.buying_signals`` (``type``, ``strength``,
    ``detail``); the caller adds the ``source``."""

    #: e.g. hiring, funding, expansion, new_product, tech_adoption, leadership_change
    type: str = Field(min_length=1, max_length=50)
    detail: str = Field(min_length=1, max_length=500)
    strength: Literal["low", "medium", "high"] = "medium"


class QualifyResult(_Answer):
    qualified: bool
    #: 0 (no fit) to 1 (ideal fit) against the goal's criteria.
    fit_score: float = Field(ge=0, le=1)
    reasons: list[str] = Field(default_factory=list, max_length=10)
    buying_signals: list[BuyingSignal] = Field(default_factory=list, max_length=20)


class WebsiteSummary(_Answer):
    industry: str = Field(min_length=1, max_length=200)
    description: str = Field(min_length=1, max_length=2000)
    signals: list[BuyingSignal] = Field(default_factory=list, max_length=20)


_SIGNAL_SHAPE = (
    '{"type": "hiring|funding|expansion|new_product|tech_adoption|other", '
    '"detail": "...", "strength": "low|medium|high"}'
)

_QUALIFY_SYSTEM = f"""You qualify UK companies as sales prospects for a stated goal.
You get the goal (criteria such as industry, location, employee count) and what is known
about one company. Judge how well the company fits the goal, using only the facts given;
missing facts lower your confidence, they are not evidence against the company.
Extract buying signals (growth, hiring, funding, new products, technology changes) only
when the facts support them.
Answer with one JSON object and nothing else:
{{"qualified": true|false, "fit_score": 0.0-1.0, "reasons": ["..."],
 "buying_signals": [{_SIGNAL_SHAPE}]}}"""

_WEBSITE_SYSTEM = f"""You summarise a company's website for a sales team.
From the page text, say what industry the company is in, describe in two or three
sentences what it does and for whom, and list buying signals the text supports (hiring,
funding, expansion, new products, technology adoption). Do not invent facts.
Answer with one JSON object and nothing else:
{{"industry": "...", "description": "...", "signals": [{_SIGNAL_SHAPE}]}}"""


async def qualify_company(
    ctx: AgentContext,
    company: Mapping[str, Any],
    goal: Mapping[str, Any],
    *,
    model: str | None = None,
    policy: RetryPolicy | None = None,
    session: LLMSession | None = None,
) -> QualifyResult:
    """Does ``company`` (a ``companies`` row as a dict) fit ``goal`` (a stream's
    ``goal_context`` / ``goal_criteria``)? ``model`` defaults to the calling agent's."""
    prompt = (
        "Goal:\n" + json.dumps(dict(goal), default=str, indent=1)
        + "\n\nCompany:\n" + json.dumps(_company_facts(company), default=str, indent=1)
    )
    return await complete_json(
        ctx, system=_QUALIFY_SYSTEM, prompt=prompt, output=QualifyResult, model=model,
        max_tokens=1024, policy=policy, session=session,
    )


async def summarise_website(
    ctx: AgentContext,
    text: str,
    *,
    model: str | None = None,
    policy: RetryPolicy | None = None,
    session: LLMSession | None = None,
) -> WebsiteSummary:
    """Industry, description and buying signals from a website's visible text."""
    clipped = text.strip()[:MAX_WEBSITE_CHARS]
    if not clipped:
        raise ValueError("summarise_website needs some text")
    return await complete_json(
        ctx, system=_WEBSITE_SYSTEM, prompt="Website text:\n" + clipped, output=WebsiteSummary,
        model=model, max_tokens=1024, policy=policy, session=session,
    )


# What a model needs to judge a company; ids and import bookkeeping are noise.
_COMPANY_FACTS: Final = (
    "company_number", "name", "status", "category", "post_town", "county", "country",
    "incorporation_date", "sic_codes", "sic_texts", "accounts_category", "website",
    "employee_estimate", "employee_growth_pct", "tech_stack", "industry_description",
    "buying_signals", "officers_count",
)


def _company_facts(company: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: company[key] for key in _COMPANY_FACTS
        if company.get(key) not in (None, "", [], {})
    }
