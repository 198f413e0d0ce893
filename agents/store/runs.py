"""The workflow run a task belongs to, as an agent sees it: the run's stream and goal.

Read with a connection the caller holds for this one statement (``ctx.connection()``),
never across a model call.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row

Conn = psycopg.AsyncConnection[Any]


@dataclasses.dataclass(frozen=True, slots=True)
class RunStream:
    """The stream of the run a task is a step of."""

    workflow_run_id: UUID
    stream_id: UUID
    name: str
    description: str
    #: the run's goal: ``{goal_criteria, target_metrics}`` as they were when the run
    #: started (every step of a run works to the same goal)
    goal: Mapping[str, Any]


# The organization check is belt and braces: a run's tasks are its stream's
# organization's, so a task of another organization never names the run.
_RUN_STREAM = """
SELECT r.id AS workflow_run_id, s.id AS stream_id, s.name, s.description,
       r.goal_context AS goal
FROM agent_tasks t
JOIN workflow_runs r ON r.id = t.workflow_run_id
JOIN streams s ON s.id = r.stream_id
WHERE t.id = %(task)s AND s.org_id = %(org)s
"""


async def run_stream(conn: Conn, *, task_id: UUID, org_id: UUID) -> RunStream | None:
    """The stream of the workflow run ``task_id`` is a step of; ``None`` outside a run."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(_RUN_STREAM, {"task": task_id, "org": org_id})
        row = await cur.fetchone()
    return None if row is None else RunStream(**row)
