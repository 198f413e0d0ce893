"""The LLM journal (``llm_journal``, sql/0013): durable turns and the transcript.

Each write is one short statement on a pooled autocommit connection, made as the turn
happens (like the cost ledger), so what an attempt saw survives the attempt. A lookup
finds the first live row of a task's turn with the same request fingerprint, from any
earlier attempt of the task.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from runner.store import Conn, SyncConn

__all__ = ["insert_turn", "lookup_turn", "transcript"]


async def lookup_turn(
    conn: Conn,
    *,
    task_id: UUID,
    kind: str,
    step: int,
    fingerprint: str,
    tool_use_id: str | None = None,
) -> dict[str, Any] | None:
    """The recorded ``response`` of this turn, if an attempt of the task made it live."""
    cur = await conn.execute(
        """
        SELECT response FROM llm_journal
        WHERE task_id = %s AND kind = %s AND step = %s AND fingerprint = %s
          AND NOT replayed AND coalesce(tool_use_id, '') = coalesce(%s, '')
        ORDER BY id LIMIT 1
        """,
        (task_id, kind, step, fingerprint, tool_use_id),
    )
    row = await cur.fetchone()
    return None if row is None else dict(row[0])


async def insert_turn(
    conn: Conn,
    *,
    task_id: UUID,
    execution_id: UUID,
    step: int,
    kind: str,
    fingerprint: str,
    role: str,
    content: Any,
    response: Any,
    tool_use_id: str | None = None,
    tool_name: str | None = None,
    tool_input: Any = None,
    tool_output: str | None = None,
    input_tokens: int = 0,
    output_tokens: int = 0,
    cost_usd: Any = 0,
    duration_ms: int | None = None,
    replayed: bool = False,
) -> None:
    # ON CONFLICT: a write retried through connection trouble lands once.
    await conn.execute(
        """
        INSERT INTO llm_journal (
            task_id, execution_id, step, kind, fingerprint, tool_use_id, role, content,
            response, tool_name, tool_input, tool_output, input_tokens, output_tokens,
            cost_usd, duration_ms, replayed)
        VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
        ON CONFLICT DO NOTHING
        """,
        (
            task_id, execution_id, step, kind, fingerprint, tool_use_id, role,
            Jsonb(content), Jsonb(response), tool_name,
            None if tool_input is None else Jsonb(tool_input), tool_output,
            input_tokens, output_tokens, cost_usd, duration_ms, replayed,
        ),
    )


def transcript(conn: SyncConn, task_id: str) -> list[dict[str, Any]]:
    """The task's ``llm_transcript`` rows, attempt by attempt, step by step (the CLI's)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            """
            SELECT e.attempt, t.step, t.role, t.content, t.tool_name, t.tool_input,
                   t.tool_output, t.input_tokens, t.output_tokens, t.cost_usd,
                   t.duration_ms, t.replayed, t.created_at, t.execution_id
            FROM llm_transcript t JOIN agent_executions e ON e.id = t.execution_id
            WHERE t.task_id = %s
            ORDER BY e.attempt, t.step, t.role, t.created_at
            """,
            (task_id,),
        )
        return cur.fetchall()
