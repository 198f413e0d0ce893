"""ScoringAgent (seed 004): scores every item of a stream and puts them in order.

Input: ``{stream_id, goal_context}`` (``agents/stream_goal.py``; without a goal the
stream's own is used). For each item it stores the four sub-scores, ``quality_score``
(0-5), ``priority``, ``qualified`` (score >= the goal's ``min_quality_score``),
``score_details``, ``buying_signals`` and ``scored_at``, and renumbers ``position``
1..n: by priority, then score, best first (ties by company name). The formula and the
sub-scores are defined in ``agents/lead_scoring.py``.

Output, exactly: ``items_updated`` (items scored: all of the stream's),
``avg_quality_score`` (their mean score, two decimals; 0.0 for an empty stream) and
``high_quality_count`` (items scoring 4.0 or more).

Set-based: one UPDATE scores the whole stream. It runs in the commit hook, inside the
transaction that completes the task, so scores land together with the task's
completion or not at all; the hook returns the figures of what it wrote, and the
executor stores them as the output, so the output always describes the scores written.

Insight: when the scoring makes leads newly ``critical`` or ``high``, one
``stream_insights`` row (``kind = 'leads'``) names them with the reasons from their
score details (``agents/lead_reasons.py``). "Newly": ``critical`` now and not
``critical`` when last scored, or ``high`` now and neither before (a lead that falls
from critical to high is no news). An item the scoring agent never scored before (only
the opportunity bot's estimate) is new. Written in the same commit hook, once per
workflow run (or per task outside one): its ``dedupe_key`` is the run's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final
from uuid import UUID

from pydantic import BaseModel

from agents import lead_scoring
from agents.lead_reasons import lead_reasons
from agents.store import insights as insight_store
from agents.store import streams as store
from agents.stream_goal import StreamTaskInput, load_stream_goal
from runner.api import AgentContext, AgentResult

INSIGHT_KIND: Final = "leads"
#: Leads named in an insight's body (its metadata keeps up to :data:`_METADATA_LEADS`).
_BODY_LEADS: Final = 20
_METADATA_LEADS: Final = 100


class ScoringInput(StreamTaskInput):
    """``{stream_id, goal_context}``; see ``agents/stream_goal.py``."""


def scoring_output(summary: store.ScoreSummary) -> dict[str, Any]:
    return {
        "items_updated": summary.items,
        "avg_quality_score": float(summary.avg_quality_score),
        "high_quality_count": summary.high_quality,
    }


def new_leads(before: Mapping[UUID, str], now: Sequence[store.Lead]) -> list[store.Lead]:
    """The leads of ``now`` that are news against the priorities of ``before`` (module
    docstring)."""
    return [lead for lead in now
            if (lead.priority == "critical" and before.get(lead.item_id) != "critical")
            or (lead.priority == "high" and lead.item_id not in before)]


def leads_insight(
    ctx: AgentContext, stream_id: UUID, stream_name: str, fresh: Sequence[store.Lead],
    before: Mapping[UUID, str], dedupe_key: str,
) -> insight_store.Insight:
    critical = sum(1 for lead in fresh if lead.priority == "critical")
    high = len(fresh) - critical
    counts = " and ".join(part for part in (
        f"{critical} new critical" if critical else "", f"{high} new high" if high else "")
        if part)
    title = f"{counts} lead{'s' if len(fresh) != 1 else ''} in {stream_name}"
    described = []
    for lead in fresh:
        reasons = lead_reasons(lead.score_details, lead.buying_signals,
                               enrichment_quality=lead.enrichment_quality,
                               data_completeness=lead.data_completeness)
        described.append((lead, reasons))
    lines = [f"{lead.priority.upper()} {lead.quality_score} {lead.name} "
             f"({lead.company_number}): " + "; ".join(reasons)
             for lead, reasons in described[:_BODY_LEADS]]
    if len(described) > _BODY_LEADS:
        lines.append(f"... and {len(described) - _BODY_LEADS} more")
    return insight_store.Insight(
        kind=INSIGHT_KIND, title=title, dedupe_key=dedupe_key, task_id=ctx.task_id,
        execution_id=ctx.execution_id, stream_id=stream_id,
        body="\n".join(lines),
        metadata={
            "newly_critical": critical, "newly_high": high,
            "leads": [{"item_id": str(lead.item_id), "company_id": str(lead.company_id),
                       "company_number": lead.company_number, "name": lead.name,
                       "priority": lead.priority,
                       "quality_score": float(lead.quality_score),
                       "previous_priority": before.get(lead.item_id),
                       "reasons": reasons}
                      for lead, reasons in described[:_METADATA_LEADS]],
        },
    )


class ScoringAgent:
    agent_type: ClassVar[str] = "scoring_agent"
    Input: ClassVar[type[BaseModel]] = ScoringInput

    async def run(self, ctx: AgentContext, payload: ScoringInput) -> AgentResult:
        goal = await load_stream_goal(ctx, payload)
        if goal.ignored_keys:
            await ctx.log(f"ignoring goal keys this agent does not use: "
                          f"{', '.join(goal.ignored_keys)}", level="warning")
        parameters = lead_scoring.sql_parameters(goal)

        async def commit(conn: store.Conn) -> dict[str, Any]:
            before = await store.scored_leads(conn, goal.stream_id)
            written = await store.apply_scores(
                conn, stream_id=goal.stream_id, parameters=parameters)
            fresh = new_leads(before, await store.leads(conn, goal.stream_id))
            if fresh:
                key = await insight_store.run_key(conn, INSIGHT_KIND, ctx.task_id)
                await insight_store.insert_insights(conn, [leads_insight(
                    ctx, goal.stream_id, goal.stream_name, fresh, before, key)])
            return scoring_output(written)

        await ctx.log("scoring the stream's items", stream_id=str(goal.stream_id))
        # The output's figures are the commit hook's: what it wrote.
        return AgentResult(output={}, commit=commit, summary={"goal": goal.describe()})
