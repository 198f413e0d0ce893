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
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel

from agents import lead_scoring
from agents.store import streams as store
from agents.stream_goal import StreamTaskInput, load_stream_goal
from runner.api import AgentContext, AgentResult


class ScoringInput(StreamTaskInput):
    """``{stream_id, goal_context}``; see ``agents/stream_goal.py``."""


def scoring_output(summary: store.ScoreSummary) -> dict[str, Any]:
    return {
        "items_updated": summary.items,
        "avg_quality_score": float(summary.avg_quality_score),
        "high_quality_count": summary.high_quality,
    }


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
            written = await store.apply_scores(
                conn, stream_id=goal.stream_id, parameters=parameters)
            return scoring_output(written)

        await ctx.log("scoring the stream's items", stream_id=str(goal.stream_id))
        # The output's figures are the commit hook's: what it wrote.
        return AgentResult(output={}, commit=commit, summary={"goal": goal.describe()})
