"""The ``agent_types`` table (sql/0006_agent_types.sql): the agent types some
agent-runner could load, which ``ai_agents.agent_type`` must name.

``agent-runner migrate`` (sync) and every daemon at start (async) upsert the types they
loaded (:func:`runner.plugins.Registry.agent_type_rows`). Rows are never deleted: an
agent may still name a type whose package is gone, and another daemon may have it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Final

from runner.store import Conn, SyncConn


@dataclasses.dataclass(frozen=True, slots=True)
class AgentTypeRow:
    agent_type: str
    #: The entry point's value, ``module:Class``.
    module: str
    #: ``"name version"`` of the distribution that registered it, when known.
    distribution: str | None
    #: The type's Input model declares ``stream_id`` / ``goal_context``: a workflow step
    #: of this type is enqueued with them.
    takes_stream_id: bool
    takes_goal_context: bool


# One statement, rows in agent_type order: two daemons starting at once lock the same
# rows in the same order, so their upserts queue instead of deadlocking.
_UPSERT: Final = """
INSERT INTO agent_types AS t
    (agent_type, module, distribution, takes_stream_id, takes_goal_context, seen_at)
SELECT agent_type, module, distribution, takes_stream_id, takes_goal_context, now()
FROM unnest(%s::text[], %s::text[], %s::text[], %s::boolean[], %s::boolean[])
     AS r (agent_type, module, distribution, takes_stream_id, takes_goal_context)
ORDER BY agent_type
ON CONFLICT (agent_type) DO UPDATE
SET module = EXCLUDED.module,
    distribution = EXCLUDED.distribution,
    takes_stream_id = EXCLUDED.takes_stream_id,
    takes_goal_context = EXCLUDED.takes_goal_context,
    seen_at = EXCLUDED.seen_at
"""


def _columns(rows: Iterable[AgentTypeRow]) -> list[list[Any]]:
    ordered = sorted(rows, key=lambda row: row.agent_type)
    return [
        [row.agent_type for row in ordered],
        [row.module for row in ordered],
        [row.distribution for row in ordered],
        [row.takes_stream_id for row in ordered],
        [row.takes_goal_context for row in ordered],
    ]


async def refresh(conn: Conn, rows: Sequence[AgentTypeRow]) -> None:
    """Upsert ``rows`` with ``seen_at = now()`` (the daemon, at start)."""
    if rows:
        await conn.execute(_UPSERT, _columns(rows))


def refresh_sync(conn: SyncConn, rows: Sequence[AgentTypeRow]) -> None:
    """:func:`refresh` on a synchronous connection (``agent-runner migrate``)."""
    if rows:
        conn.execute(_UPSERT, _columns(rows))

