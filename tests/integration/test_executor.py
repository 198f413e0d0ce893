"""The attempt pipeline, run in-process against real Postgres (no worker)."""

from __future__ import annotations

import asyncio
import itertools
import uuid
from typing import Any, ClassVar

import httpx
import psycopg
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel

from agents.noop import NoopAgent
from runner.api import AgentContext, AgentResult, FailPermanently
from runner.executor import Executor, retry_delay
from runner.outcomes import Outcome, StopReason
from runner.plugins import Registry, load_registry
from runner.store import daemons as daemons_store
from tests.harness import run_task_inline, task_state, test_settings

Conn = psycopg.Connection[tuple[Any, ...]]


def _enqueue(conn: Conn, payload: str = "{}", agent: str = "x", agent_type: str = "noop") -> str:
    conn.execute(
        "INSERT INTO ai_agents (name, agent_type) VALUES (%s, %s) ON CONFLICT DO NOTHING",
        (agent, agent_type),
    )
    row = conn.execute("SELECT enqueue_agent_task(%s, %s::jsonb)", (agent, payload)).fetchone()
    assert row
    return str(row[0])


_task = task_state


async def test_noop_completes_with_one_execution(conn: Conn, pool: AsyncConnectionPool) -> None:
    task_id = _enqueue(conn)
    assert await run_task_inline(pool, task_id) is Outcome.COMPLETED
    assert _task(conn, task_id) == ("completed", 0, {"slept": 0.0, "attempt": 1}, None)
    rows = conn.execute(
        "SELECT status, attempt, output_data, duration_ms >= 0, completed_at >= started_at "
        "FROM agent_executions WHERE task_id = %s", (task_id,)
    ).fetchall()
    assert rows == [("completed", 1, {"slept": 0.0, "attempt": 1}, True, True)]


async def test_retries_then_completes(conn: Conn, pool: AsyncConnectionPool) -> None:
    task_id = _enqueue(conn, '{"fail_times": 2}')
    outcomes = [await run_task_inline(pool, task_id) for _ in range(3)]
    assert outcomes == [Outcome.RETRY, Outcome.RETRY, Outcome.COMPLETED]
    status, retry_count, output, _ = _task(conn, task_id)
    assert (status, retry_count, output) == ("completed", 2, {"slept": 0.0, "attempt": 3})
    statuses = conn.execute(
        "SELECT status FROM agent_executions WHERE task_id = %s ORDER BY attempt", (task_id,)
    ).fetchall()
    assert statuses == [("failed",), ("failed",), ("completed",)]


async def test_gives_up_after_max_retries(conn: Conn, pool: AsyncConnectionPool) -> None:
    task_id = _enqueue(conn, '{"fail_times": 10}')
    outcomes = [await run_task_inline(pool, task_id) for _ in range(4)]
    assert outcomes == [Outcome.RETRY] * 3 + [Outcome.FAILED]
    status, retry_count, _, error = _task(conn, task_id)
    assert (status, retry_count) == ("failed", 3)
    assert "planned failure 4 of 10" in error and "gave up after 3 retries" in error
    assert conn.execute("SELECT job_id IS NOT NULL FROM agent_tasks").fetchone() == (True,)


async def test_invalid_payload_fails_permanently_naming_field(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    task_id = _enqueue(conn, '{"sleep_seconds": "soon"}')
    assert await run_task_inline(pool, task_id) is Outcome.FAILED
    status, retry_count, _, error = _task(conn, task_id)
    assert (status, retry_count) == ("failed", 0)
    assert error.startswith("invalid payload: sleep_seconds:")


async def test_unknown_agent_type_fails_permanently(conn: Conn, pool: AsyncConnectionPool) -> None:
    task_id = _enqueue(conn)
    registry = Registry([])  # knows no agent at all
    assert await run_task_inline(pool, task_id, registry=registry) is Outcome.FAILED
    assert "no implementation for agent_type 'noop'" in _task(conn, task_id)[3]


async def test_disabled_agent_fails_permanently(conn: Conn, pool: AsyncConnectionPool) -> None:
    task_id = _enqueue(conn)
    conn.execute("UPDATE ai_agents SET is_active = false")
    assert await run_task_inline(pool, task_id) is Outcome.FAILED
    assert _task(conn, task_id)[3] == "agent 'x' is disabled"


async def test_timeout_is_retried(conn: Conn, pool: AsyncConnectionPool) -> None:
    task_id = _enqueue(conn, '{"sleep_seconds": 5}')
    conn.execute("UPDATE ai_agents SET timeout_seconds = 1")
    assert await run_task_inline(pool, task_id) is Outcome.TIMEOUT
    status, retry_count, _, error = _task(conn, task_id)
    assert (status, retry_count, error) == ("pending", 1, "timed out after 1 s")
    assert conn.execute("SELECT status FROM agent_executions").fetchone() == ("timeout",)


class _AnyInput(BaseModel):
    pass


class _WritingAgent:
    """Writes a log row through its commit hook, then may fail to commit."""

    agent_type: ClassVar[str] = "noop"
    Input: ClassVar[type[BaseModel]] = _AnyInput

    def __init__(self, fail_commit: bool, gate: asyncio.Event | None = None) -> None:
        self.fail_commit = fail_commit
        self.gate = gate

    async def run(self, ctx: AgentContext, payload: Any) -> AgentResult:
        if self.gate is not None:
            await self.gate.wait()

        async def commit(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.execute(
                "INSERT INTO agent_task_logs (task_id, message) VALUES (%s, 'side effect')",
                (ctx.task_id,),
            )
            if self.fail_commit:
                raise FailPermanently("commit blew up")

        return AgentResult(output={"ok": True}, commit=commit)


async def test_commit_hook_writes_with_completion(conn: Conn, pool: AsyncConnectionPool) -> None:
    task_id = _enqueue(conn)
    outcome = await run_task_inline(pool, task_id, registry=Registry([_WritingAgent(False)]))
    assert outcome is Outcome.COMPLETED
    assert conn.execute(
        "SELECT count(*) FROM agent_task_logs WHERE message = 'side effect'"
    ).fetchone() == (1,)


async def test_commit_hook_figures_join_the_output(conn: Conn, pool: AsyncConnectionPool) -> None:
    class _CountingAgent(_WritingAgent):
        async def run(self, ctx: AgentContext, payload: Any) -> AgentResult:
            async def commit(aconn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
                cur = await aconn.execute(
                    "UPDATE ai_agents SET description = 'touched' RETURNING id")
                return {"rows_touched": len(await cur.fetchall())}

            return AgentResult(output={"ok": True}, commit=commit)

    task_id = _enqueue(conn)
    assert await run_task_inline(
        pool, task_id, registry=Registry([_CountingAgent(False)])) is Outcome.COMPLETED
    expected = {"ok": True, "rows_touched": 1}
    assert _task(conn, task_id)[2] == expected
    assert conn.execute("SELECT output_data FROM agent_executions").fetchone() == (expected,)


async def test_failed_commit_hook_leaves_nothing_and_retries(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    task_id = _enqueue(conn)
    outcome = await run_task_inline(pool, task_id, registry=Registry([_WritingAgent(True)]))
    assert outcome is Outcome.RETRY
    assert conn.execute(
        "SELECT count(*) FROM agent_task_logs WHERE message = 'side effect'"
    ).fetchone() == (0,)
    status, retry_count, output, error = _task(conn, task_id)
    assert (status, retry_count, output) == ("pending", 1, None)
    assert "writing results failed" in error


async def test_rescued_attempt_cannot_commit(conn: Conn, pool: AsyncConnectionPool) -> None:
    """Fencing: an attempt that was rescued while it ran writes nothing when it returns."""
    task_id = _enqueue(conn)
    job_id = conn.execute("SELECT job_id FROM agent_tasks").fetchone()[0]  # type: ignore[index]
    gate = asyncio.Event()
    async with httpx.AsyncClient() as http:
        executor = Executor(pool=pool, settings=test_settings(),
                            registry=Registry([_WritingAgent(False, gate)]), http=http)
        running = asyncio.create_task(executor.run_job(uuid.UUID(task_id), job_id))
        async with pool.connection() as aconn:
            for _ in range(200):
                row = await (await aconn.execute("SELECT status FROM agent_tasks")).fetchone()
                if row == ("processing",):
                    break
                await asyncio.sleep(0.02)
            # The attempt has no live daemon (run in-process) and its job was never
            # fetched by a worker: once it is old enough, the rescuer takes it.
            await aconn.execute(
                "UPDATE agent_executions SET started_at = now() - interval '1 min'")
            rescued = await daemons_store.rescue_orphans(aconn, min_age_seconds=1.0)
        assert [r.task_id for r in rescued] == [uuid.UUID(task_id)]
        gate.set()  # the stalled attempt comes back and tries to commit
        assert (await running).outcome is Outcome.FENCED
    assert conn.execute(
        "SELECT count(*) FROM agent_task_logs WHERE message = 'side effect'"
    ).fetchone() == (0,)
    assert _task(conn, task_id)[:3] == ("pending", 1, None)
    assert conn.execute("SELECT status FROM agent_executions").fetchall() == [("rescued",)]


async def test_cancel_while_running_ends_cancelled(conn: Conn, pool: AsyncConnectionPool) -> None:
    task_id = _enqueue(conn, '{"sleep_seconds": 30}')
    running = asyncio.create_task(run_task_inline(pool, task_id))
    async with pool.connection() as aconn:
        for _ in range(200):
            row = await (await aconn.execute("SELECT status FROM agent_tasks")).fetchone()
            if row == ("processing",):
                break
            await asyncio.sleep(0.02)
        await aconn.execute("SELECT cancel_agent_task(%s)", (task_id,))
    running.cancel()  # what the delivery seam does on procrastinate's abort notification
    assert await running is Outcome.CANCELLED
    assert _task(conn, task_id)[0] == "cancelled"
    assert conn.execute("SELECT status FROM agent_executions").fetchall() == [("cancelled",)]


async def test_shutdown_hands_back_without_spending_a_retry(
    conn: Conn, pool: AsyncConnectionPool
) -> None:
    task_id = _enqueue(conn, '{"sleep_seconds": 30}')
    job_id = conn.execute("SELECT job_id FROM agent_tasks").fetchone()[0]  # type: ignore[index]
    async with httpx.AsyncClient() as http:
        executor = Executor(pool=pool, settings=test_settings(), registry=load_registry(),
                            http=http)
        running = asyncio.create_task(
            executor.run_job(uuid.UUID(task_id), job_id, lambda: StopReason.SHUTDOWN))
        for _ in range(200):
            if executor.running:
                break
            await asyncio.sleep(0.02)
        running.cancel()
        # The attempt records its hand-back and returns it (the delivery seam decides
        # what its job's task raises).
        assert (await running).outcome is Outcome.INTERRUPTED
    status, retry_count, _, _ = _task(conn, task_id)
    assert (status, retry_count) == ("pending", 0)
    assert conn.execute("SELECT status FROM agent_executions").fetchall() == [("interrupted",)]
    new_job = conn.execute("SELECT job_id FROM agent_tasks").fetchone()[0]  # type: ignore[index]
    assert new_job != job_id


def test_retry_delay_grows_and_is_capped() -> None:
    for _ in range(200):
        delays = [retry_delay(n, base=1.0, cap=60.0) for n in range(1, 10)]
        assert all(a < b for a, b in itertools.pairwise(delays[:6]))
        assert 0.75 <= delays[0] <= 1.25
        assert max(delays) <= 60.0
        assert delays[-1] == 60.0


def test_noop_is_registered() -> None:
    assert NoopAgent.agent_type == "noop"
