"""Workflow runs against real Postgres: dependents are enqueued exactly once, in the
transaction that completes their last parent; failures stop the subtree below them,
visibly; bad dependency graphs are refused on write.

Tasks are run one by one in-process (``run_task_inline``, the real executor), or
completed with plain SQL where the point is the database's own guarantee."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict

from runner.api import AgentContext, AgentResult
from runner.outcomes import Outcome
from runner.plugins import Registry
from tests import workflow_queries as workflows
from tests.harness import run_task_inline

Conn = psycopg.Connection[tuple[Any, ...]]


# -- set-up helpers --------------------------------------------------------------------


async def _agents(pool: AsyncConnectionPool, *names: str,
                  configuration: Mapping[str, Any] | None = None,
                  agent_type: str = "noop", max_retries: int = 3) -> dict[str, UUID]:
    ids = {}
    async with pool.connection() as conn:
        for name in names:
            cur = await conn.execute(
                "INSERT INTO ai_agents (name, agent_type, configuration, max_retries) "
                "VALUES (%s, %s, %s, %s) RETURNING id",
                (name, agent_type, json.dumps(configuration or {}), max_retries))
            row = await cur.fetchone()
            assert row is not None
            ids[name] = row[0]
    return ids


async def _stream(pool: AsyncConnectionPool, name: str,
                  graph: Sequence[tuple[str, Sequence[str]]],
                  *, goal_criteria: Mapping[str, Any] | None = None,
                  target_metrics: Mapping[str, Any] | None = None,
                  auto_execute: Mapping[str, bool] | None = None) -> UUID:
    """A stream with one assignment per (agent, its dependencies), in listed order."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO streams (name, goal_criteria, target_metrics) VALUES (%s, %s, %s) "
            "RETURNING id",
            (name, json.dumps(goal_criteria or {}), json.dumps(target_metrics or {})))
        row = await cur.fetchone()
        assert row is not None
        stream_id: UUID = row[0]
        for order, (agent, depends_on) in enumerate(graph, start=1):
            await conn.execute(
                "INSERT INTO stream_agent_assignments (stream_id, agent_id, execution_order, "
                "auto_execute, depends_on_agent_ids) "
                "SELECT %s, (SELECT id FROM ai_agents WHERE name = %s), %s, %s, "
                "coalesce((SELECT array_agg(id) FROM ai_agents WHERE name = ANY(%s)), '{}')",
                (stream_id, agent, order, (auto_execute or {}).get(agent, True),
                 list(depends_on)))
    return stream_id


async def _trigger(pool: AsyncConnectionPool, stream_id: UUID, **kwargs: Any) -> UUID:
    async with pool.connection() as conn:
        return await workflows.trigger_stream_workflow(conn, stream_id, **kwargs)


async def _tasks(pool: AsyncConnectionPool, run_id: UUID) -> dict[str, dict[str, Any]]:
    """The run's tasks by agent name."""
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT a.name, t.id, t.status, t.trigger, t.parent_task_ids, t.payload, t.priority, "
            "t.created_at FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
            "WHERE t.workflow_run_id = %s", (run_id,))
        rows = await cur.fetchall()
    names = [row[0] for row in rows]
    assert len(names) == len(set(names)), f"an agent has two tasks in run {run_id}: {names}"
    return {row[0]: {"id": row[1], "status": row[2], "trigger": row[3],
                     "parents": list(row[4]), "payload": row[5], "priority": row[6]}
            for row in rows}


async def _run(pool: AsyncConnectionPool, run_id: UUID) -> workflows.WorkflowRun:
    async with pool.connection() as conn:
        run = await workflows.workflow_run(conn, run_id)
    assert run is not None
    return run


async def _tree(pool: AsyncConnectionPool, run_id: UUID) -> dict[str, workflows.WorkflowStep]:
    async with pool.connection() as conn:
        return {step.agent_name: step for step in await workflows.workflow_run_tree(conn, run_id)}


async def _pending(pool: AsyncConnectionPool, run_id: UUID) -> list[tuple[str, UUID]]:
    tasks = await _tasks(pool, run_id)
    return sorted((name, task["id"]) for name, task in tasks.items()
                  if task["status"] == "pending")


async def _drain(pool: AsyncConnectionPool, run_id: UUID,
                 registry: Registry | None = None) -> list[list[str]]:
    """Run the run's pending tasks wave by wave; returns the waves (agent names)."""
    waves = []
    while pending := await _pending(pool, run_id):
        waves.append([name for name, _ in pending])
        for _, task_id in pending:
            await run_task_inline(pool, task_id, registry=registry)
    return waves


def _complete(conn: Conn, task_id: UUID) -> None:
    conn.execute("UPDATE agent_tasks SET status = 'completed', completed_at = now() "
                 "WHERE id = %s", (task_id,))


class _ParentsInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class _ShowParents:
    """Stands in for noop: its output is what it saw of its parents."""

    agent_type: ClassVar[str] = "noop"
    Input: ClassVar[type[BaseModel]] = _ParentsInput

    async def run(self, ctx: AgentContext, payload: _ParentsInput) -> AgentResult:
        return AgentResult(output={
            "agent": ctx.agent.name,
            "payload": payload.model_dump(),
            "parents": {name: dict(output) for name, output in ctx.parent_outputs.items()},
        })


CHAIN = [("discovery", []), ("enrichment", ["discovery"]), ("scoring", ["enrichment"])]
DIAMOND = [("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])]


# -- the happy paths -------------------------------------------------------------------


async def test_one_manual_trigger_runs_discovery_enrichment_scoring_in_order(
    pool: AsyncConnectionPool,
) -> None:
    ids = await _agents(pool, "discovery", "enrichment", "scoring")
    stream_id = await _stream(pool, "uk fintech", CHAIN)
    run_id = await _trigger(pool, stream_id)
    assert (await _run(pool, run_id)).status == "running"

    registry = Registry([_ShowParents()])
    waves = await _drain(pool, run_id, registry)

    assert waves == [["discovery"], ["enrichment"], ["scoring"]]
    tasks = await _tasks(pool, run_id)
    assert {name: t["status"] for name, t in tasks.items()} == dict.fromkeys(
        ["discovery", "enrichment", "scoring"], "completed")
    assert [tasks[n]["trigger"] for n in ("discovery", "enrichment", "scoring")] == [
        "manual", "dependent", "dependent"]
    assert tasks["discovery"]["parents"] == []
    assert tasks["enrichment"]["parents"] == [tasks["discovery"]["id"]]
    assert tasks["scoring"]["parents"] == [tasks["enrichment"]["id"]]
    run = await _run(pool, run_id)
    assert run.status == "completed" and run.completed_at is not None
    assert run.error_message is None

    # Each child saw its parent's output, keyed by agent name.
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT output FROM agent_tasks WHERE id = %s",
                                 (tasks["scoring"]["id"],))
        row = await cur.fetchone()
    assert row is not None
    assert row[0]["parents"] == {"enrichment": {
        "agent": "enrichment", "payload": {},
        "parents": {"discovery": {"agent": "discovery", "payload": {}, "parents": {}}}}}

    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT agent_id, total_executions, last_executed_at IS NOT NULL "
            "FROM stream_agent_assignments WHERE stream_id = %s", (stream_id,))
        counters = {row[0]: row[1:] for row in await cur.fetchall()}
    assert counters == {agent_id: (1, True) for agent_id in ids.values()}

    tree = await _tree(pool, run_id)
    assert [(s.agent_name, s.depth, s.status, s.parent_agents) for s in tree.values()] == [
        ("discovery", 0, "completed", ()), ("enrichment", 1, "completed", ("discovery",)),
        ("scoring", 2, "completed", ("enrichment",))]


async def test_payloads_are_each_stream_agents_input(pool: AsyncConnectionPool) -> None:
    await _agents(pool, "finder", agent_type="opportunity_bot")
    await _agents(pool, "enricher", agent_type="enrichment_agent")
    await _agents(pool, "scorer", agent_type="scoring_agent")
    await _agents(pool, "diag", configuration={"payload": {"sleep_seconds": 0.01}})
    goal = {"industry": ["SaaS"], "location": ["UK"], "employee_count": {"min": 10, "max": 500}}
    metrics = {"companies_to_find": 50, "min_quality_score": 4.0}
    stream_id = await _stream(pool, "s", [("finder", []), ("enricher", ["finder"]),
                                          ("scorer", ["enricher"]), ("diag", [])],
                              goal_criteria=goal, target_metrics=metrics)
    run_id = await _trigger(pool, stream_id, priority=8)
    tasks = await _tasks(pool, run_id)
    assert sorted(tasks) == ["diag", "finder"]
    assert tasks["finder"]["payload"] == {
        "stream_id": str(stream_id),
        "goal_context": {"goal_criteria": goal, "target_metrics": metrics}}
    # noop refuses unknown keys: it gets its configured payload only
    assert tasks["diag"]["payload"] == {"sleep_seconds": 0.01}
    assert {t["priority"] for t in tasks.values()} == {8}
    async with pool.connection() as conn:
        # The goal is the one at trigger time, even if the stream changes mid-run.
        await conn.execute("UPDATE streams SET goal_criteria = '{}' WHERE id = %s", (stream_id,))
    for name in ("finder", "enricher"):
        async with pool.connection() as conn:
            await conn.execute("UPDATE agent_tasks SET status = 'completed' WHERE id = %s",
                               ((await _tasks(pool, run_id))[name]["id"],))
    tasks = await _tasks(pool, run_id)
    assert tasks["enricher"]["payload"] == {"stream_id": str(stream_id)}
    assert tasks["scorer"]["payload"]["goal_context"]["goal_criteria"] == goal
    assert tasks["scorer"]["priority"] == 8


async def test_stream_agents_accept_their_workflow_payloads(pool: AsyncConnectionPool) -> None:
    """The payloads above pass the real agents' input models."""
    from runner.plugins import load_registry

    registry = load_registry()
    for agent_type in ("opportunity_bot", "enrichment_agent", "scoring_agent"):
        if agent_type not in registry.types():
            pytest.skip(f"{agent_type} is not registered yet")
    await _agents(pool, "finder", agent_type="opportunity_bot")
    await _agents(pool, "enricher", agent_type="enrichment_agent")
    await _agents(pool, "scorer", agent_type="scoring_agent")
    stream_id = await _stream(
        pool, "s", [("finder", []), ("enricher", ["finder"]), ("scorer", ["enricher"])],
        goal_criteria={"industry": ["FinTech"], "location": ["UK"]},
        target_metrics={"companies_to_find": 5})
    run_id = await _trigger(pool, stream_id)
    async with pool.connection() as conn:
        await conn.execute("UPDATE agent_tasks SET status = 'completed' WHERE trigger = 'manual'")
        await conn.execute("UPDATE agent_tasks SET status = 'completed' "
                           "WHERE payload ? 'stream_id' AND NOT payload ? 'goal_context'")
    tasks = await _tasks(pool, run_id)
    for name, agent_type in [("finder", "opportunity_bot"), ("enricher", "enrichment_agent"),
                             ("scorer", "scoring_agent")]:
        registry.validate(agent_type, tasks[name]["payload"])


async def test_siblings_are_enqueued_in_execution_order(pool: AsyncConnectionPool) -> None:
    await _agents(pool, "root", "z_first", "a_second", "m_third")
    stream_id = await _stream(pool, "s", [("root", []), ("z_first", ["root"]),
                                          ("a_second", ["root"]), ("m_third", ["root"])])
    run_id = await _trigger(pool, stream_id)
    tasks = await _tasks(pool, run_id)
    await run_task_inline(pool, tasks["root"]["id"])
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT a.name FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
            "WHERE t.workflow_run_id = %s AND t.trigger = 'dependent' ORDER BY t.job_id",
            (run_id,))
        # procrastinate takes equal-priority jobs in id order: that is the start order
        assert [row[0] for row in await cur.fetchall()] == ["z_first", "a_second", "m_third"]


async def test_fifty_streams_triggered_at_once_each_child_exactly_once(
    pool: AsyncConnectionPool, db_url: str,
) -> None:
    await _agents(pool, "discovery", "enrichment", "scoring")
    streams = [await _stream(pool, f"stream {i}", CHAIN) for i in range(50)]

    async def trigger(stream_id: UUID) -> UUID:
        async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
            return await workflows.trigger_stream_workflow(conn, stream_id)

    run_ids: list[UUID] = []
    for batch in range(0, 50, 10):
        run_ids += await asyncio.gather(*(trigger(s) for s in streams[batch:batch + 10]))
    assert len(set(run_ids)) == 50

    async def pending_everywhere() -> list[UUID]:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT id FROM agent_tasks WHERE workflow_run_id = ANY(%s) "
                "AND status = 'pending'", (run_ids,))
            return [row[0] for row in await cur.fetchall()]

    # Every wave runs concurrently: many completions (and their enqueues) at once.
    while pending := await pending_everywhere():
        outcomes = await asyncio.gather(*(run_task_inline(pool, t) for t in pending))
        assert set(outcomes) == {Outcome.COMPLETED}

    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT t.workflow_run_id, a.name, count(*) FROM agent_tasks t "
            "JOIN ai_agents a ON a.id = t.agent_id GROUP BY 1, 2")
        counts = await cur.fetchall()
        cur = await conn.execute("SELECT status, count(*) FROM workflow_runs GROUP BY 1")
        statuses: dict[str, int] = dict(await cur.fetchall())
        cur = await conn.execute(
            "SELECT count(*) FROM agent_tasks child JOIN agent_tasks parent "
            "ON parent.id = ANY(child.parent_task_ids) "
            "WHERE parent.workflow_run_id IS DISTINCT FROM child.workflow_run_id")
        crossed = await cur.fetchone()
    assert len(counts) == 150 and {row[2] for row in counts} == {1}
    assert {(row[0], row[1]) for row in counts} == {
        (run_id, name) for run_id in run_ids for name in ("discovery", "enrichment", "scoring")}
    assert statuses == {"completed": 50}
    assert crossed == (0,)


# -- fan-in -------------------------------------------------------------------------------


async def test_diamond_child_waits_for_both_parents(pool: AsyncConnectionPool) -> None:
    await _agents(pool, "a", "b", "c", "d")
    stream_id = await _stream(pool, "diamond", DIAMOND)
    run_id = await _trigger(pool, stream_id)
    tasks = await _tasks(pool, run_id)
    assert sorted(tasks) == ["a"]
    await run_task_inline(pool, tasks["a"]["id"])
    tasks = await _tasks(pool, run_id)
    assert sorted(tasks) == ["a", "b", "c"]
    await run_task_inline(pool, tasks["b"]["id"])
    assert sorted(await _tasks(pool, run_id)) == ["a", "b", "c"]
    assert (await _tree(pool, run_id))["d"].status == "waiting"
    await run_task_inline(pool, tasks["c"]["id"])
    tasks = await _tasks(pool, run_id)
    assert sorted(tasks) == ["a", "b", "c", "d"]
    assert tasks["d"]["parents"] == [tasks["b"]["id"], tasks["c"]["id"]]
    await run_task_inline(pool, tasks["d"]["id"])
    assert (await _run(pool, run_id)).status == "completed"


def test_diamond_parents_completing_concurrently_enqueue_the_child_once(
    conn: Conn, db_url: str,
) -> None:
    """B and C complete at the same moment in two connections, 20 times over: D is
    enqueued exactly once every time, never zero times, never twice."""
    for name in "abcd":
        conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES (%s, 'noop')", (name,))
    stream_id = conn.execute("INSERT INTO streams (name) VALUES ('diamond') RETURNING id"
                             ).fetchone()[0]  # type: ignore[index]
    for order, (agent, deps) in enumerate(DIAMOND, start=1):
        conn.execute(
            "INSERT INTO stream_agent_assignments (stream_id, agent_id, execution_order, "
            "depends_on_agent_ids) SELECT %s, (SELECT id FROM ai_agents WHERE name = %s), %s, "
            "coalesce((SELECT array_agg(id) FROM ai_agents WHERE name = ANY(%s)), '{}')",
            (stream_id, agent, order, deps))
    rng = random.Random(4)
    with psycopg.connect(db_url) as first, psycopg.connect(db_url) as second:
        for _ in range(20):
            run_id = conn.execute("SELECT trigger_stream_workflow(%s)", (stream_id,)
                                  ).fetchone()[0]  # type: ignore[index]

            def task_of(agent: str, run: UUID = run_id) -> UUID:
                row = conn.execute(
                    "SELECT t.id FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
                    "WHERE t.workflow_run_id = %s AND a.name = %s", (run, agent)).fetchone()
                assert row is not None
                return row[0]  # type: ignore[no-any-return]

            _complete(conn, task_of("a"))
            barrier = threading.Barrier(2)
            errors: list[BaseException] = []

            def finish(connection: Conn, task_id: UUID, delay: float,
                       barrier: threading.Barrier = barrier,
                       errors: list[BaseException] = errors) -> None:
                try:
                    barrier.wait(timeout=10)
                    with connection.transaction():
                        _complete(connection, task_id)
                        # hold the transaction open a little: the other completer
                        # runs into the run's lock meanwhile
                        time.sleep(delay)
                except BaseException as exc:  # reported below
                    errors.append(exc)

            threads = [
                threading.Thread(target=finish, args=(first, task_of("b"), rng.random() / 50)),
                threading.Thread(target=finish, args=(second, task_of("c"), rng.random() / 50)),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=30)
            assert errors == []
            rows = conn.execute(
                "SELECT t.parent_task_ids FROM agent_tasks t JOIN ai_agents a "
                "ON a.id = t.agent_id WHERE t.workflow_run_id = %s AND a.name = 'd'",
                (run_id,)).fetchall()
            assert len(rows) == 1, f"d enqueued {len(rows)} times"
            assert rows[0][0] == [task_of("b"), task_of("c")]
    assert conn.execute("SELECT total_executions FROM stream_agent_assignments sa "
                        "JOIN ai_agents a ON a.id = sa.agent_id WHERE a.name = 'd'"
                        ).fetchone() == (20,)


async def test_diamond_parents_finishing_concurrently_through_the_executor(
    pool: AsyncConnectionPool,
) -> None:
    await _agents(pool, "a", "b", "c", "d")
    stream_id = await _stream(pool, "diamond", DIAMOND)
    for _ in range(20):
        run_id = await _trigger(pool, stream_id)
        await run_task_inline(pool, (await _tasks(pool, run_id))["a"]["id"])
        tasks = await _tasks(pool, run_id)
        await asyncio.gather(run_task_inline(pool, tasks["b"]["id"]),
                             run_task_inline(pool, tasks["c"]["id"]))
        tasks = await _tasks(pool, run_id)  # asserts one task per agent
        assert "d" in tasks and tasks["d"]["status"] == "pending"


async def test_a_retried_parent_is_the_same_task_and_enqueues_once(
    pool: AsyncConnectionPool,
) -> None:
    await _agents(pool, "flaky", configuration={"payload": {"fail_times": 2}})
    await _agents(pool, "child")
    stream_id = await _stream(pool, "s", [("flaky", []), ("child", ["flaky"])])
    run_id = await _trigger(pool, stream_id)
    flaky = (await _tasks(pool, run_id))["flaky"]["id"]
    assert await run_task_inline(pool, flaky) is Outcome.RETRY
    assert sorted(await _tasks(pool, run_id)) == ["flaky"]
    assert await run_task_inline(pool, flaky) is Outcome.RETRY
    assert await run_task_inline(pool, flaky) is Outcome.COMPLETED
    tasks = await _tasks(pool, run_id)
    assert sorted(tasks) == ["child", "flaky"] and tasks["child"]["parents"] == [flaky]


# -- failures ---------------------------------------------------------------------------


async def test_a_failed_parent_leaves_its_subtree_unstarted_and_says_why(
    pool: AsyncConnectionPool,
) -> None:
    # fails its first attempt permanently (no retries), succeeds when retried by hand
    await _agents(pool, "discovery", configuration={"payload": {"fail_times": 1}},
                  max_retries=0)
    await _agents(pool, "enrichment", "scoring")
    stream_id = await _stream(pool, "s", CHAIN)
    run_id = await _trigger(pool, stream_id)
    discovery = (await _tasks(pool, run_id))["discovery"]["id"]
    assert await run_task_inline(pool, discovery) is Outcome.FAILED

    assert sorted(await _tasks(pool, run_id)) == ["discovery"]
    run = await _run(pool, run_id)
    assert run.status == "failed" and run.completed_at is not None
    assert run.error_message is not None
    assert run.error_message.startswith(f"task {discovery} (discovery) failed: noop: planned")
    tree = await _tree(pool, run_id)
    assert tree["enrichment"].status == "not_started"
    assert tree["enrichment"].note is not None and tree["enrichment"].note.startswith(
        f"not started: parent task {discovery} (discovery) failed: noop: planned failure 1 of 1")
    assert tree["scoring"].status == "not_started"
    assert tree["scoring"].note is not None and tree["scoring"].note.startswith(
        f"not started: ancestor task {discovery} (discovery) failed:")

    # A manual retry that completes lets the dependents proceed after all.
    async with pool.connection() as conn:
        await conn.execute("SELECT retry_agent_task(%s)", (discovery,))
    run = await _run(pool, run_id)
    assert run.status == "running" and run.error_message is None and run.completed_at is None
    assert {s.status for s in (await _tree(pool, run_id)).values()} == {"pending", "waiting"}
    assert await _drain(pool, run_id) == [["discovery"], ["enrichment"], ["scoring"]]
    assert (await _run(pool, run_id)).status == "completed"


async def test_a_failure_in_one_branch_lets_the_other_finish(pool: AsyncConnectionPool) -> None:
    await _agents(pool, "a", "c", "d", "e")
    await _agents(pool, "b", configuration={"payload": {"fail_times": 9}}, max_retries=0)
    stream_id = await _stream(pool, "s", [*DIAMOND, ("e", ["c"])])
    run_id = await _trigger(pool, stream_id)
    waves = await _drain(pool, run_id)
    assert waves == [["a"], ["b", "c"], ["e"]]
    tree = await _tree(pool, run_id)
    assert {n: s.status for n, s in tree.items()} == {
        "a": "completed", "b": "failed", "c": "completed", "d": "not_started", "e": "completed"}
    run = await _run(pool, run_id)
    assert run.status == "failed" and run.completed_at is not None


async def test_a_cancelled_task_stops_its_dependents(pool: AsyncConnectionPool) -> None:
    await _agents(pool, "discovery", "enrichment", "scoring")
    stream_id = await _stream(pool, "s", CHAIN)
    run_id = await _trigger(pool, stream_id)
    await _drain_first(pool, run_id)
    enrichment = (await _tasks(pool, run_id))["enrichment"]["id"]
    async with pool.connection() as conn:
        await conn.execute("SELECT cancel_agent_task(%s)", (enrichment,))
    tree = await _tree(pool, run_id)
    assert tree["enrichment"].status == "cancelled"
    assert tree["scoring"].note == (f"not started: parent task {enrichment} (enrichment) "
                                    "was cancelled: cancelled before it started")
    assert (await _run(pool, run_id)).status == "failed"


async def _drain_first(pool: AsyncConnectionPool, run_id: UUID) -> None:
    for _, task_id in await _pending(pool, run_id):
        await run_task_inline(pool, task_id)


async def test_steps_that_do_not_start_by_configuration(pool: AsyncConnectionPool) -> None:
    await _agents(pool, "root", "manual_only", "below_manual", "disabled", "side")
    stream_id = await _stream(
        pool, "s", [("root", []), ("manual_only", ["root"]), ("below_manual", ["manual_only"]),
                    ("disabled", ["root"]), ("side", ["root"])],
        auto_execute={"manual_only": False})
    async with pool.connection() as conn:
        await conn.execute("UPDATE ai_agents SET is_active = false WHERE name = 'disabled'")
    run_id = await _trigger(pool, stream_id)
    assert await _drain(pool, run_id) == [["root"], ["side"]]
    tree = await _tree(pool, run_id)
    assert tree["manual_only"].note == "not started: auto_execute is off for this assignment"
    assert tree["below_manual"].note == "not started: parent step manual_only was not started"
    assert tree["disabled"].note == 'not started: agent "disabled" is disabled'
    # Skipped by configuration is not a failure.
    assert (await _run(pool, run_id)).status == "completed"


async def test_inactive_assignments_are_not_part_of_the_run(pool: AsyncConnectionPool) -> None:
    await _agents(pool, "discovery", "enrichment", "scoring")
    stream_id = await _stream(pool, "s", CHAIN)
    async with pool.connection() as conn:
        await conn.execute("UPDATE stream_agent_assignments SET is_active = false "
                           "WHERE agent_id = (SELECT id FROM ai_agents WHERE name = 'enrichment')")
    run_id = await _trigger(pool, stream_id)
    assert await _drain(pool, run_id) == [["discovery"]]
    tree = await _tree(pool, run_id)
    assert sorted(tree) == ["discovery", "scoring"]
    assert tree["scoring"].note == ('not started: depends on agent "enrichment", which has no '
                                    "active assignment in the stream")


# -- bad input ----------------------------------------------------------------------------


def _assignments(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT agent_id, depends_on_agent_ids FROM stream_agent_assignments "
                        "ORDER BY agent_id").fetchall()


def _setup_chain(conn: Conn) -> tuple[UUID, dict[str, UUID]]:
    ids = {}
    for name in ("discovery", "enrichment", "scoring", "outsider"):
        ids[name] = conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES (%s, 'noop') "
                                 "RETURNING id", (name,)).fetchone()[0]  # type: ignore[index]
    stream_id = conn.execute("INSERT INTO streams (name) VALUES ('uk fintech') RETURNING id"
                             ).fetchone()[0]  # type: ignore[index]
    # one INSERT, dependencies listed after their dependents: checked per statement
    conn.execute(
        "INSERT INTO stream_agent_assignments (stream_id, agent_id, depends_on_agent_ids) "
        "VALUES (%(s)s, %(c)s, ARRAY[%(b)s]::uuid[]), (%(s)s, %(b)s, ARRAY[%(a)s]::uuid[]), "
        "(%(s)s, %(a)s, '{}')",
        {"s": stream_id, "a": ids["discovery"], "b": ids["enrichment"], "c": ids["scoring"]})
    return stream_id, ids


def test_a_dependency_cycle_is_refused_and_changes_nothing(conn: Conn) -> None:
    _, ids = _setup_chain(conn)
    before = _assignments(conn)
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        conn.execute("UPDATE stream_agent_assignments SET depends_on_agent_ids = %s "
                     "WHERE agent_id = %s", ([ids["scoring"]], ids["discovery"]))
    assert raised.value.diag.message_primary == (
        'dependency cycle in stream "uk fintech": discovery -> scoring -> enrichment -> '
        "discovery (each agent depends on the next)")
    with pytest.raises(psycopg.errors.CheckViolation,
                       match=r'cycle in stream "uk fintech": enrichment -> enrichment \('):
        conn.execute("UPDATE stream_agent_assignments SET depends_on_agent_ids = %s "
                     "WHERE agent_id = %s", ([ids["discovery"], ids["enrichment"]],
                                             ids["enrichment"]))
    assert _assignments(conn) == before


def test_a_dependency_outside_the_stream_is_refused(conn: Conn) -> None:
    stream_id, ids = _setup_chain(conn)
    before = _assignments(conn)
    with pytest.raises(psycopg.errors.ForeignKeyViolation) as raised:
        conn.execute("UPDATE stream_agent_assignments SET depends_on_agent_ids = %s "
                     "WHERE agent_id = %s", ([ids["outsider"]], ids["scoring"]))
    assert str(raised.value).startswith(
        'agent "scoring" in stream "uk fintech" depends on agent "outsider", which is not '
        "assigned to the stream")
    ghost = UUID("00000000-0000-0000-0000-00000000dead")
    with pytest.raises(psycopg.errors.ForeignKeyViolation,
                       match=f"depends on unknown agent {ghost}, which is not assigned"):
        conn.execute("INSERT INTO stream_agent_assignments (stream_id, agent_id, "
                     "depends_on_agent_ids) VALUES (%s, %s, %s)",
                     (stream_id, ids["outsider"], [ghost]))
    assert _assignments(conn) == before
    # Removing an agent others depend on is refused too (checked at commit)...
    with pytest.raises(psycopg.errors.ForeignKeyViolation,
                       match='cannot remove agent "enrichment" from stream "uk fintech": '
                             'agent "scoring" depends on it'):
        conn.execute("DELETE FROM stream_agent_assignments WHERE agent_id = %s",
                     (ids["enrichment"],))
    assert _assignments(conn) == before
    # ... while deleting the whole stream is fine.
    conn.execute("DELETE FROM streams WHERE id = %s", (stream_id,))
    assert _assignments(conn) == []


def test_trigger_refuses_bad_input(conn: Conn) -> None:
    stream_id, _ = _setup_chain(conn)
    with pytest.raises(psycopg.errors.NoDataFound, match="unknown stream"):
        conn.execute("SELECT trigger_stream_workflow(gen_random_uuid())")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="trigger must be"):
        conn.execute("SELECT trigger_stream_workflow(%s, 'dependent')", (stream_id,))
    with pytest.raises(psycopg.errors.CheckViolation, match="priority must be between 1 and 10"):
        conn.execute("SELECT trigger_stream_workflow(%s, priority => 11)", (stream_id,))
    empty = conn.execute("INSERT INTO streams (name) VALUES ('empty') RETURNING id"
                         ).fetchone()[0]  # type: ignore[index]
    with pytest.raises(psycopg.errors.NoDataFound,
                       match='stream "empty" has no active agent assignments'):
        conn.execute("SELECT trigger_stream_workflow(%s)", (empty,))
    conn.execute("UPDATE ai_agents SET is_active = false WHERE name = 'discovery'")
    with pytest.raises(psycopg.errors.CheckViolation,
                       match='nothing to run in stream "uk fintech": discovery: not started: '
                             'agent "discovery" is disabled'):
        conn.execute("SELECT trigger_stream_workflow(%s)", (stream_id,))
    assert conn.execute("SELECT count(*) FROM workflow_runs").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM agent_tasks").fetchone() == (0,)
    conn.execute("UPDATE ai_agents SET is_active = true WHERE name = 'discovery'")
    run_id = conn.execute("SELECT trigger_stream_workflow(%s, 'scheduled')", (stream_id,)
                          ).fetchone()[0]  # type: ignore[index]
    assert conn.execute("SELECT trigger FROM agent_tasks WHERE workflow_run_id = %s",
                        (run_id,)).fetchall() == [("scheduled",)]


def test_the_unique_index_backs_up_the_lock(conn: Conn) -> None:
    """Even a hand-made duplicate of a run's step is refused."""
    stream_id, ids = _setup_chain(conn)
    run_id = conn.execute("SELECT trigger_stream_workflow(%s)", (stream_id,)
                          ).fetchone()[0]  # type: ignore[index]
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO agent_tasks (agent_id, workflow_run_id, trigger, priority) "
                     "VALUES (%s, %s, 'dependent', 5)", (ids["discovery"], run_id))
