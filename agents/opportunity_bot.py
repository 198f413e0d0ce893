"""OpportunityBot (seed 004): finds companies that fit a stream's goal and adds them.

Input: ``{stream_id, goal_context}`` (``agents/stream_goal.py``). Output, exactly:

* ``companies_found`` - active companies that meet the goal's industry, location and
  employee criteria and are not in the stream yet (an unknown headcount does not
  exclude a company; its criteria match is marked down instead);
* ``items_created`` - how many of them this run added: the best
  ``companies_to_find`` by discovery score (so ``items_created <= companies_found``
  and ``<= companies_to_find``);
* ``qualified_count`` - added items whose discovery score reached
  ``min_quality_score`` (every added item has ``qualified`` set accordingly);
* ``avg_quality_score`` - mean discovery score of the added items, two decimals (0.0
  when none were added);
* ``high_quality_count`` - added items scoring 4.0 or more.

The discovery score is the scoring formula (``agents/lead_scoring.py``) applied to
what is known at discovery time; it also fills the item's first quality_score and
priority. Before enrichment it cannot exceed 4.0 (enrichment quality is 0), so a goal
with ``min_quality_score`` above 4.0 qualifies nothing until the stream is enriched
and rescored; the best candidates are added all the same, since enrichment is what
can prove them.

Discovery searches the local ``companies`` table, set-based, in one statement. Items
are written by the commit hook, in the transaction that completes the task, with
``ON CONFLICT DO NOTHING``: a retried or repeated run never duplicates an item, and a
run that commits nothing adds nothing.

A run that adds companies also writes one ``stream_insights`` row (``kind =
'discovery'``) in the same commit hook: how many new companies it found and added, how
many qualified, and the best of them. Once per workflow run, or per task outside one
(its ``dedupe_key`` is the run's).

Live discovery (``COMPANIES_HOUSE_API_KEY`` set)
------------------------------------------------
Before the local search, Companies House advanced search is asked for active companies
(``company_status=active``) with the goal's exact SIC codes (``agents.taxonomy``; an
industry defined only by SIC divisions is searched without codes), ``size`` from the
configuration (``live_search_size``, default 100). A goal location the taxonomy does not
know as a nation or region (a post town or county) is sent as ``location``, one search
per name (at most five); any nation or region in the goal means one search without
``location``. Hits that meet the goal's industry and location criteria and are not in
``companies`` yet become candidates with the columns a hit carries (number, name,
status, company type as the bulk file spells it, incorporation and cessation dates,
registered office, SIC codes); rows already there are never touched.

The upsert of those rows is part of the commit hook, not done while running: it is
exactly-once like the items (a failed or fenced attempt leaves no half-known company
behind), at the price of one rolled-back preview: the hits are inserted in a
transaction that is rolled back after the usual ranking has read them, and inserted
again, for real, by the commit hook with the same ids (a company another writer
inserted meanwhile is used under its own id). A search that fails with rate limits,
5xx or timeouts after the client's own bounded retries (``companies_house`` in the
configuration, as for the enrichment agent), or with another error than a refused key,
falls back to the local table with a warning in the task log (results_summary ``mode``
``offline_fallback``); 401/403 fail the task permanently.

LLM qualification (``ANTHROPIC_API_KEY`` set)
---------------------------------------------
The best ``llm_qualify_limit`` (configuration, default 20; 0 turns it off) candidates
are shown to the model (``llm_judgements.qualify_company``, ``llm_concurrency`` at a
time, default 4). Its verdict sets the item's ``qualified`` (and so
``qualified_count``); its buying signals are added to the item's ``buying_signals`` with
``source: "llm"`` (kept by rescoring, counted there as external signals). Discovery
score and priority stay rule-based. A failure about one company (an answer that stays
invalid, an unexpected error) is logged and that company keeps the rule-based verdict;
an outage of the API (``RetryLater`` after its retries) or a refused key or model
(``FailPermanently``) ends the attempt as such. Every call is in the cost ledger.
Without a key the run is the offline one, with the same output fields.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar, Final

from pydantic import BaseModel, ConfigDict, Field

from agents import lead_scoring, taxonomy
from agents.companies_house import (
    AdvancedSearchCompany,
    CompaniesHouseClient,
    CompaniesHouseError,
    CompaniesHouseRejected,
    normalise_company_number,
)
from agents.enrichment_agent import CompaniesHouseConfig, is_one_company_llm_failure
from agents.llm import LLMSession, RetryPolicy, has_api_key
from agents.llm_judgements import BuyingSignal, qualify_company
from agents.store import companies as companies_store
from agents.store import insights as insight_store
from agents.store import streams as store
from agents.stream_goal import StreamGoal, StreamTaskInput, load_stream_goal
from runner.api import AgentContext, AgentResult, CommitHook, FailPermanently, agent_configuration

AGENT_TAG: Final = "opportunity_bot"
#: More goal locations than this are searched as one search without ``location``.
MAX_LIVE_LOCATIONS: Final = 5
#: The bulk file's spelling of the API's company types (``category`` column).
_COMPANY_TYPES: Final = {
    "ltd": "Private Limited Company",
    "plc": "PLC",
    "llp": "Limited Liability Partnership",
    "private-unlimited": "Private Unlimited Company",
    "private-limited-guarant-nsc": "PRI/LTD BY GUAR/NSC (Private, limited by guarantee, "
                                   "no share capital)",
    "limited-partnership": "Limited Partnership",
    "scottish-partnership": "Scottish Partnership",
    "community-interest-company": "Community Interest Company",
}
INSIGHT_KIND: Final = "discovery"
#: Companies named in the discovery insight's body.
_INSIGHT_COMPANIES: Final = 10
#: ``BuyingSignal.strength`` as the numeric strengths other signals carry.
_STRENGTHS: Final = {"low": 0.1, "medium": 0.2, "high": 0.3}


class OpportunityBotInput(StreamTaskInput):
    """``{stream_id, goal_context}``; see ``agents/stream_goal.py``."""


class OpportunityBotConfig(BaseModel):
    # Unknown keys are ignored: the seed's agents carry free-form configuration.
    model_config = ConfigDict(extra="ignore")

    live_search_size: int = Field(default=100, ge=1, le=5000)
    llm_qualify_limit: int = Field(default=20, ge=0, le=500)
    llm_concurrency: int = Field(default=4, ge=1, le=32)
    companies_house: CompaniesHouseConfig = CompaniesHouseConfig()


class StreamChangedConcurrently(Exception):
    """Another run added some of the same companies between this run's read and its
    commit. Raised from the commit hook, so the executor rolls the attempt's writes
    back and retries it against the stream as it now is."""


def discovery_output(found: int, added: list[store.Candidate]) -> dict[str, Any]:
    """The CONTRACT output for a run that adds ``added`` out of ``found`` candidates."""
    scores = [c.quality_score for c in added]
    average = (sum(scores, Decimal(0)) / len(scores)).quantize(
        Decimal("0.01"), rounding=ROUND_HALF_UP) if scores else Decimal(0)
    return {
        "companies_found": found,
        "items_created": len(added),
        "qualified_count": sum(1 for c in added if c.qualified),
        "avg_quality_score": float(average),
        "high_quality_count": sum(1 for s in scores if s >= lead_scoring.HIGH_QUALITY_AT),
    }


def _goal_words(goal: StreamGoal) -> str:
    parts = []
    if goal.industries:
        parts.append("industry " + ", ".join(goal.industries))
    if goal.locations:
        parts.append("in " + ", ".join(goal.locations))
    if goal.has_employee_range:
        low = goal.employees_min if goal.employees_min is not None else 0
        parts.append(f"{low}-{goal.employees_max} employees" if goal.employees_max
                     is not None else f"at least {low} employees")
    return "; ".join(parts) or "no criteria"


def discovery_insight(
    ctx: AgentContext, goal: StreamGoal, output: dict[str, Any],
    added: list[store.Candidate], dedupe_key: str,
) -> insight_store.Insight:
    """What a person reads about the run: found, added, qualified, and the best few."""
    created, qualified = output["items_created"], output["qualified_count"]
    title = (f"{created} new compan{'ies' if created != 1 else 'y'} found for "
             f"{goal.stream_name}, {qualified} qualified")
    best = sorted(added, key=lambda c: (-c.quality_score, c.name))[:_INSIGHT_COMPANIES]
    lines = [
        f"{output['companies_found']} companies not yet in the stream meet the goal "
        f"({_goal_words(goal)}); the best {created} were added, {qualified} of them "
        f"reaching the minimum quality score of {goal.min_quality_score} on what is "
        "known before enrichment.",
        "Best added:",
        *(f"- {c.name}: {c.quality_score} ({c.priority}"
          f"{', qualified' if c.qualified else ''})" for c in best),
    ]
    return insight_store.Insight(
        kind=INSIGHT_KIND, title=title, dedupe_key=dedupe_key, task_id=ctx.task_id,
        execution_id=ctx.execution_id, stream_id=goal.stream_id, body="\n".join(lines),
        metadata={**output, "best": [
            {"company_id": str(c.company_id), "name": c.name,
             "quality_score": float(c.quality_score), "priority": c.priority,
             "qualified": c.qualified} for c in best]},
    )


# Live discovery ----------------------------------------------------------------------


def search_hit_row(hit: AdvancedSearchCompany) -> dict[str, Any] | None:
    """An advanced-search hit as the ``companies`` columns it can fill (JSON-ready, a
    fresh id), or None when it cannot be a row (malformed number, no name)."""
    number = normalise_company_number(hit.company_number)
    name = hit.company_name.strip()
    if number is None or not number[2:].isdigit() or not name:
        return None
    address = hit.registered_office_address
    line1 = " ".join(part.strip() for part in (
        address.premises if address else None, address.address_line_1 if address else None,
    ) if part and part.strip())
    status = hit.company_status
    return {
        "id": str(uuid.uuid4()),
        "company_number": number,
        "name": name,
        # The bulk file's spelling ("Active", "Liquidation"); matching is case-blind.
        "status": status.replace("-", " ").capitalize() if status else None,
        "category": _COMPANY_TYPES.get(hit.company_type or "", hit.company_type),
        "incorporation_date": hit.date_of_creation.isoformat() if hit.date_of_creation
        else None,
        "dissolution_date": hit.date_of_cessation.isoformat() if hit.date_of_cessation
        else None,
        "address_line1": line1 or None,
        "address_line2": address.address_line_2 if address else None,
        "post_town": address.locality if address else None,
        "county": address.region if address else None,
        "country": address.country if address else None,
        "postcode": address.postal_code if address else None,
        "sic_codes": list(hit.sic_codes),
    }


def _meets_goal(row: dict[str, Any], goal: StreamGoal) -> bool:
    if goal.industry is not None and not goal.industry.matches(row["sic_codes"]):
        return False
    return goal.location is None or goal.location.matches(
        country=row["country"], postcode=row["postcode"], post_town=row["post_town"],
        county=row["county"],
    )


def _search_locations(goal: StreamGoal) -> list[str | None]:
    """``location`` values to search with: post towns and counties as free text; a
    nation or region (which no address spells out) or too many names: no filter, the
    local criteria decide."""
    names = list(goal.locations)
    if not names or len(names) > MAX_LIVE_LOCATIONS or any(
            taxonomy.lookup_location(name) is not None for name in names):
        return [None]
    return list(dict.fromkeys(names))


async def _discover_live(
    ctx: AgentContext, goal: StreamGoal, config: OpportunityBotConfig
) -> list[dict[str, Any]] | None:
    """Companies House hits that meet the goal, as ``companies`` rows to add (see the
    module docstring), or None when the search failed and the run falls back to the
    local table. A refused key raises ``FailPermanently``."""
    key = ctx.settings.companies_house_api_key
    assert key is not None
    client = CompaniesHouseClient(
        ctx.http, api_key=key, base_url=ctx.settings.companies_house_base_url,
        observe=ctx.observe_http_call, policy=config.companies_house.policy(),
    )
    codes = sorted(goal.industry.sic_codes) if goal.industry is not None else []
    rows: dict[str, dict[str, Any]] = {}
    hits = 0
    try:
        for location in _search_locations(goal):
            result = await client.advanced_search(
                sic_codes=codes, location=location, company_status=["active"],
                size=config.live_search_size,
            )
            hits += len(result.items)
            for hit in result.items:
                row = search_hit_row(hit)
                if row is not None and _meets_goal(row, goal):
                    rows.setdefault(row["company_number"], row)
    except CompaniesHouseRejected as exc:
        if exc.status_code in (401, 403):
            raise FailPermanently(
                f"Companies House refused the API key (HTTP {exc.status_code}: "
                f"{exc.api_message}); no item was added") from None
        await _fall_back(ctx, goal, str(exc))
        return None
    except CompaniesHouseError as exc:
        await _fall_back(ctx, goal, str(exc))
        return None
    await ctx.log(
        f"Companies House advanced search: {hits} hits, {len(rows)} meeting the goal",
        stream_id=str(goal.stream_id), hits=hits, meeting_goal=len(rows),
    )
    return list(rows.values())


async def _fall_back(ctx: AgentContext, goal: StreamGoal, error: str) -> None:
    await ctx.log(
        f"live Companies House discovery failed ({error}); searching the local companies "
        "table only", level="warning", stream_id=str(goal.stream_id),
    )


# LLM qualification ---------------------------------------------------------------------


def llm_signals(signals: list[BuyingSignal], agent: str) -> list[dict[str, Any]]:
    """A model's buying signals as ``buying_signals`` entries (``source: "llm"``)."""
    return [
        {"type": s.type, "strength": _STRENGTHS[s.strength], "source": "llm",
         "detail": s.detail, "level": s.strength, "agent": agent}
        for s in signals
    ]


async def _qualify(
    ctx: AgentContext,
    goal: StreamGoal,
    candidates: list[store.Candidate],
    rows: dict[Any, dict[str, Any]],
    config: OpportunityBotConfig,
    policy: RetryPolicy | None,
) -> tuple[list[store.Candidate], int]:
    """The candidates with the model's verdict and signals on the first
    ``llm_qualify_limit``; and how many got one."""
    judged: dict[Any, store.Candidate] = {}
    gate = asyncio.Semaphore(config.llm_concurrency)
    described = goal.describe()

    async with LLMSession(ctx, policy=policy) as llm:
        async def judge(candidate: store.Candidate) -> None:
            row = rows.get(candidate.company_id)
            if row is None:
                return
            async with gate:
                try:
                    result = await qualify_company(ctx, row, described, session=llm)
                except Exception as exc:
                    if not is_one_company_llm_failure(exc):
                        raise
                    await ctx.log(
                        f"LLM qualification failed for {row['company_number']}; keeping the "
                        f"rule-based verdict: {exc}", level="warning",
                        company_number=row["company_number"],
                    )
                    return
            judged[candidate.company_id] = dataclasses.replace(
                candidate, qualified=result.qualified,
                buying_signals=[*candidate.buying_signals,
                                *llm_signals(result.buying_signals, AGENT_TAG)],
            )

        # A TaskGroup cancels the other calls when one raises (an outage ends the run);
        # the outcome error is re-raised as itself, not wrapped in a group.
        try:
            async with asyncio.TaskGroup() as group:
                for candidate in candidates[:config.llm_qualify_limit]:
                    group.create_task(judge(candidate))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
    return [judged.get(c.company_id, c) for c in candidates], len(judged)


def _remap(candidates: list[store.Candidate], provisional: dict[str, str],
           ids: dict[str, Any]) -> list[store.Candidate]:
    """Candidates found among the previewed hits, under the ids the commit gave them."""
    out = []
    for candidate in candidates:
        number = provisional.get(str(candidate.company_id))
        if number is not None:
            company_id = ids.get(number)
            if company_id is None:
                raise StreamChangedConcurrently(
                    f"company {number} was added to another organization meanwhile")
            candidate = dataclasses.replace(candidate, company_id=company_id)
        out.append(candidate)
    return out


# The agent -------------------------------------------------------------------------------


class OpportunityBot:
    agent_type: ClassVar[str] = "opportunity_bot"
    Input: ClassVar[type[BaseModel]] = OpportunityBotInput

    def __init__(self, *, llm_policy: RetryPolicy | None = None) -> None:
        #: The model calls' retry policy (tests pass short waits); None: the default.
        self._llm_policy = llm_policy

    async def run(self, ctx: AgentContext, payload: OpportunityBotInput) -> AgentResult:
        config = _config(ctx)
        goal = await load_stream_goal(ctx, payload)
        if goal.ignored_keys:
            await ctx.log(f"ignoring goal keys this agent does not use: "
                          f"{', '.join(goal.ignored_keys)}", level="warning")
        key = ctx.settings.companies_house_api_key
        live = key is not None and bool(key.get_secret_value())
        hits = await _discover_live(ctx, goal, config) if live else None
        mode = "offline" if not live else "live" if hits is not None else "offline_fallback"
        hits = hits or []
        use_llm = has_api_key(ctx.settings) and config.llm_qualify_limit > 0

        async with ctx.connection() as conn:
            # Hits are previewed: inserted, ranked with the rest, rolled back. The
            # commit hook inserts them for real (module docstring).
            async with conn.transaction(force_rollback=True):
                ids = await companies_store.insert_search_hits(conn, goal.org_id, hits)
                found, candidates = await store.find_candidates(
                    conn, stream_id=goal.stream_id, org_id=goal.org_id,
                    limit=goal.companies_to_find,
                    parameters=lead_scoring.sql_parameters(goal),
                )
                rows = await store.company_rows(
                    conn, [c.company_id for c in candidates[:config.llm_qualify_limit]]
                ) if use_llm else {}
        # Which candidate ids are this run's provisional rows (hit id -> number).
        provisional = {hit["id"]: hit["company_number"] for hit in hits
                       if str(ids.get(hit["company_number"])) == hit["id"]}
        new_hits = [hit for hit in hits if hit["id"] in provisional]

        judged = 0
        if use_llm and candidates:
            candidates, judged = await _qualify(ctx, goal, candidates, rows, config,
                                                self._llm_policy)
        output = discovery_output(found, candidates)
        await ctx.log(
            f"found {found} matching companies not yet in the stream; adding "
            f"{len(candidates)} ({mode} discovery, {len(new_hits)} new from Companies "
            f"House, {judged} qualified by the model)", **output,
        )
        commit: CommitHook | None = None
        if candidates:
            async def commit(conn: store.Conn) -> None:
                chosen = candidates
                added_ids = {str(c.company_id) for c in candidates}
                needed = [hit for hit in new_hits if hit["id"] in added_ids]
                if needed:
                    final = await companies_store.insert_search_hits(
                        conn, goal.org_id, needed)
                    chosen = _remap(candidates, provisional, final)
                added = await store.insert_items(
                    conn, stream_id=goal.stream_id, org_id=goal.org_id,
                    task_id=ctx.task_id, execution_id=ctx.execution_id, candidates=chosen,
                )
                if added != len(chosen):
                    raise StreamChangedConcurrently(
                        f"{len(chosen) - added} of the {len(chosen)} companies were "
                        "added to the stream by another run meanwhile"
                    )
                key = await insight_store.run_key(conn, INSIGHT_KIND, ctx.task_id)
                await insight_store.insert_insights(
                    conn, [discovery_insight(ctx, goal, output, chosen, key)])
        return AgentResult(
            output=output,
            commit=commit,
            summary={"goal": goal.describe(), "mode": mode, "live_hits": len(hits),
                     "new_companies": len(new_hits), "llm_qualified": judged},
        )


def _config(ctx: AgentContext) -> OpportunityBotConfig:
    return agent_configuration(ctx.agent, OpportunityBotConfig)
