"""Writing ``stream_insights`` once (sql/0011_scout.sql, ``dedupe_key``).

Called only from commit hooks, inside the transaction that completes the task: an
insight lands together with the rows it describes, or not at all. Every row carries a
``dedupe_key`` and is inserted with ``ON CONFLICT ... DO NOTHING``, so a retry, a
repeated run or a concurrent writer never writes the same insight twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Final
from uuid import UUID

import psycopg
from psycopg.types.json import Jsonb

__all__ = ["Insight", "insert_insights", "run_key"]

Conn = psycopg.AsyncConnection[Any]

TITLE_MAX: Final = 300
BODY_MAX: Final = 20000


@dataclasses.dataclass(frozen=True, slots=True)
class Insight:
    kind: str
    title: str
    dedupe_key: str
    task_id: UUID
    execution_id: UUID
    #: None: the stream's organization (so a stream-less insight needs ``org_id``).
    org_id: UUID | None = None
    stream_id: UUID | None = None
    company_id: UUID | None = None
    body: str = ""
    metadata: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def run_key(conn: Conn, kind: str, task_id: UUID) -> str:
    """``<kind>:run:<workflow_run_id>:<agent_id>`` for a task of a workflow run (one
    task per agent per run), else ``<kind>:task:<task_id>``: one insight of this kind
    per run, or per task outside a run."""
    cur = await conn.execute(
        "SELECT workflow_run_id, agent_id FROM agent_tasks WHERE id = %s", (task_id,))
    row = await cur.fetchone()
    if row is not None and row[0] is not None:
        return f"{kind}:run:{row[0]}:{row[1]}"
    return f"{kind}:task:{task_id}"


_INSERT = """
INSERT INTO stream_insights (
    org_id, stream_id, company_id, task_id, execution_id, kind, title, body, metadata,
    dedupe_key)
SELECT coalesce(x.org_id, s.org_id, runner_default_org_id()), x.stream_id, x.company_id,
       x.task_id, x.execution_id, x.kind, x.title, x.body, coalesce(x.metadata, '{}'),
       x.dedupe_key
FROM jsonb_to_recordset(%s::jsonb) AS x(
    org_id uuid, stream_id uuid, company_id uuid, task_id uuid, execution_id uuid,
    kind text, title text, body text, metadata jsonb, dedupe_key text)
LEFT JOIN streams s ON s.id = x.stream_id
ORDER BY x.dedupe_key
ON CONFLICT (org_id, dedupe_key) WHERE dedupe_key IS NOT NULL DO NOTHING
RETURNING dedupe_key
"""


async def insert_insights(conn: Conn, insights: Sequence[Insight]) -> list[str]:
    """Insert the insights not written before; returns the keys of those written now."""
    if not insights:
        return []
    rows = [
        {
            "org_id": str(i.org_id) if i.org_id else None,
            "stream_id": str(i.stream_id) if i.stream_id else None,
            "company_id": str(i.company_id) if i.company_id else None,
            "task_id": str(i.task_id),
            "execution_id": str(i.execution_id),
            "kind": i.kind,
            "title": _clip(i.title, TITLE_MAX),
            "body": _clip(i.body, BODY_MAX),
            "metadata": dict(i.metadata),
            "dedupe_key": i.dedupe_key,
        }
        for i in insights
    ]
    cur = await conn.execute(_INSERT, (Jsonb(rows),))
    return [str(row[0]) for row in await cur.fetchall()]
