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

Offline mode (no ``COMPANIES_HOUSE_API_KEY``) searches the local ``companies`` table,
set-based, in one statement. Items are written by the commit hook, in the transaction
that completes the task, with ``ON CONFLICT DO NOTHING``: a retried or repeated run
never duplicates an item, and a run that commits nothing adds nothing.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any, ClassVar

from pydantic import BaseModel

from agents import lead_scoring
from agents.store import streams as store
from agents.stream_goal import StreamGoal, StreamTaskInput, load_stream_goal
from runner.api import AgentContext, AgentResult, CommitHook


class OpportunityBotInput(StreamTaskInput):
    """``{stream_id, goal_context}``; see ``agents/stream_goal.py``."""


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


async def _discover_live(ctx: AgentContext, goal: StreamGoal) -> None:
    """SEAM (issue 3, live discovery) - not wired yet; offline search runs instead.

    With ``COMPANIES_HOUSE_API_KEY`` set, discovery is meant to page through
    ``CompaniesHouseClient.advanced_search`` (agents/companies_house.py: SIC codes from
    ``goal.industry``, ``company_status=active``, the location) and upsert the hits into
    ``companies`` before the same local ranking below. What is missing: the mapping of
    a search hit (a partial record) onto a companies row, and whether that upsert may
    run outside the finishing transaction (it writes shared reference data, not the
    task's output). Until both are decided this says so in the task log instead of
    pretending to search live. A test for the live path belongs with that change.
    """
    await ctx.log(
        "live Companies House discovery is not wired yet; searching the local "
        "companies table (offline mode)",
        level="warning", stream_id=str(goal.stream_id),
    )


class OpportunityBot:
    agent_type: ClassVar[str] = "opportunity_bot"
    Input: ClassVar[type[BaseModel]] = OpportunityBotInput

    async def run(self, ctx: AgentContext, payload: OpportunityBotInput) -> AgentResult:
        goal = await load_stream_goal(ctx, payload)
        if goal.ignored_keys:
            await ctx.log(f"ignoring goal keys this agent does not use: "
                          f"{', '.join(goal.ignored_keys)}", level="warning")
        live = ctx.settings.companies_house_api_key is not None
        if live:
            await _discover_live(ctx, goal)
        async with ctx.connection() as conn:
            found, candidates = await store.find_candidates(
                conn, stream_id=goal.stream_id, org_id=goal.org_id,
                limit=goal.companies_to_find, parameters=lead_scoring.sql_parameters(goal),
            )
        output = discovery_output(found, candidates)
        await ctx.log(
            f"found {found} matching companies not yet in the stream; adding "
            f"{len(candidates)}", **output,
        )
        commit: CommitHook | None = None
        if candidates:
            async def commit(conn: store.Conn) -> None:
                added = await store.insert_items(
                    conn, stream_id=goal.stream_id, org_id=goal.org_id,
                    task_id=ctx.task_id, execution_id=ctx.execution_id, candidates=candidates,
                )
                if added != len(candidates):
                    raise StreamChangedConcurrently(
                        f"{len(candidates) - added} of the {len(candidates)} companies were "
                        "added to the stream by another run meanwhile"
                    )
        return AgentResult(
            output=output,
            commit=commit,
            summary={"goal": goal.describe(), "mode": "offline",
                     "live_discovery_requested": live},
        )
