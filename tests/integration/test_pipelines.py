"""Pipelines that run by themselves, against real Postgres: a task naming its stream
starts a run rooted at its agent (however it was made), stream schedules claim each
fire once and never overlap a scheduled run still going, the ``stream_progress`` view,
and an ``llm_agent`` step told its stream and its parents' outputs.

Tasks run in-process (``run_task_inline``, the real executor) or are completed with
plain SQL where the point is the database's own rule."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, ClassVar
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel, ConfigDict

from agents.llm_agent import LLMAgent, prompt_in_context
from agents.store.runs import RunStream
from runner.api import AgentContext, AgentResult
from runner.outcomes import Outcome
from runner.plugins import Registry
from runner.scheduler import CronScheduler
from runner.settings import Settings
from tests.harness import await_until, run_task_inline, test_settings
from tests.standins.anthropic_api import AnthropicStandIn, text

Conn = psycopg.Connection[tuple[Any, ...]]
UTC = dt.UTC

CHAIN = [("discovery", []), ("enrichment", ["discovery"]), ("scoring", ["enrichment"])]
DIAMOND = [("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])]


class _AnyInput(BaseModel):
    model_config = ConfigDict(extra="allow")


class _StreamStep:
    """Stands in for a stream agent (it takes ``stream_id``): its output is what it saw."""

    agent_type: ClassVar[str] = "noop"
    Input: ClassVar[type[BaseModel]] = _AnyInput

    async def run(self, ctx: AgentContext, payload: _AnyInput) -> AgentResult:
        return AgentResult(output={
            "agent": ctx.agent.name, "payload": payload.model_dump(),
            "parents": sorted(ctx.parent_outputs)})


REGISTRY = Registry([_StreamStep()])


# -- set-up ----------------------------------------------------------------------------


def _stream(conn: Conn, name: str, graph: Sequence[tuple[str, Sequence[str]]], *,
            goal_criteria: Mapping[str, Any] | None = None,
            target_metrics: Mapping[str, Any] | None = None,
            agent_config: Mapping[str, Any] | None = None) -> UUID:
    """Agents (noop) assigned to a new stream, one per (agent, its dependencies)."""
    stream_id: UUID = conn.execute(
        "INSERT INTO streams (name, goal_criteria, target_metrics) VALUES (%s, %s, %s) "
        "RETURNING id", (name, json.dumps(goal_criteria or {}),
                         json.dumps(target_metrics or {}))).fetchone()[0]  # type: ignore[index]
    for order, (agent, depends_on) in enumerate(graph, start=1):
        conn.execute("INSERT INTO ai_agents (name, agent_type, configuration) "
                     "VALUES (%s, 'noop', %s) ON CONFLICT DO NOTHING",
                     (agent, json.dumps(agent_config or {})))
        conn.execute(
            "INSERT INTO stream_agent_assignments (stream_id, agent_id, execution_order, "
            "depends_on_agent_ids) SELECT %s, (SELECT id FROM ai_agents WHERE name = %s), %s, "
            "coalesce((SELECT array_agg(id) FROM ai_agents WHERE name = ANY(%s)), '{}')",
            (stream_id, agent, order, list(depends_on)))
    return stream_id


def _insert_task(conn: Conn, agent: str, payload: Mapping[str, Any], priority: int = 5) -> UUID:
    """The seed's way: a plain INSERT INTO agent_tasks."""
    row = conn.execute(
        "INSERT INTO agent_tasks (agent_id, task_type, payload, priority) "
        "SELECT id, agent_type, %s, %s FROM ai_agents WHERE name = %s RETURNING id",
        (json.dumps(dict(payload)), priority, agent)).fetchone()
    assert row is not None
    return UUID(str(row[0]))


def _run_of(conn: Conn, task_id: UUID) -> UUID | None:
    row = conn.execute("SELECT workflow_run_id FROM agent_tasks WHERE id = %s",
                       (task_id,)).fetchone()
    assert row is not None
    return row[0]  # type: ignore[no-any-return]


def _tree(conn: Conn, run_id: UUID) -> dict[str, tuple[Any, ...]]:
    """agent name -> (status, note, depth, trigger) of each step of the run."""
    rows = conn.execute("SELECT agent_name, status, note, depth, trigger FROM workflow_run_tree "
                        "WHERE workflow_run_id = %s", (run_id,)).fetchall()
    return {row[0]: tuple(row[1:]) for row in rows}


def _run(conn: Conn, run_id: UUID) -> dict[str, Any]:
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT r.*, a.name AS root_agent FROM workflow_runs r "
                    "LEFT JOIN ai_agents a ON a.id = r.root_agent_id WHERE r.id = %s",
                    (run_id,))
        row = cur.fetchone()
    assert row is not None
    return row


async def _drain(pool: AsyncConnectionPool, run_id: UUID,
                 registry: Registry = REGISTRY) -> list[list[str]]:
    """Run the run's pending tasks wave by wave; returns the waves (agent names)."""
    waves: list[list[str]] = []
    while True:
        async with pool.connection() as conn:
            cur = await conn.execute(
                "SELECT a.name, t.id FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
                "WHERE t.workflow_run_id = %s AND t.status = 'pending' ORDER BY a.name",
                (run_id,))
            pending = await cur.fetchall()
        if not pending:
            return waves
        waves.append([name for name, _ in pending])
        for _, task_id in pending:
            await run_task_inline(pool, task_id, registry=registry)


# -- a task that names its stream starts the chain -------------------------------------


async def test_inserting_the_first_agents_task_runs_the_chain(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    stream_id = _stream(conn, "uk fintech", CHAIN, goal_criteria={"industry": ["FinTech"]},
                        target_metrics={"companies_to_find": 50})
    task_id = _insert_task(conn, "discovery", {"stream_id": str(stream_id)}, priority=8)
    run_id = _run_of(conn, task_id)
    assert run_id is not None
    run = _run(conn, run_id)
    assert (run["trigger"], run["status"], run["priority"], run["root_agent"],
            run["stream_id"]) == ("manual", "running", 8, "discovery", stream_id)
    assert run["goal_context"] == {"goal_criteria": {"industry": ["FinTech"]},
                                   "target_metrics": {"companies_to_find": 50}}
    assert _tree(conn, run_id) == {
        "discovery": ("pending", None, 0, "manual"),
        "enrichment": ("waiting", None, 1, None),
        "scoring": ("waiting", None, 2, None)}

    assert await _drain(pool, run_id) == [["discovery"], ["enrichment"], ["scoring"]]

    assert _run(conn, run_id)["status"] == "completed"
    rows = conn.execute(
        "SELECT a.name, t.status, t.trigger, t.priority, t.output, "
        "(SELECT count(*) FROM agent_executions e WHERE e.task_id = t.id) "
        "FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id ORDER BY t.created_at"
    ).fetchall()
    # one task per agent, each run once; the children follow with the run's priority
    assert [(name, status, trigger, priority, runs) for name, status, trigger, priority, _, runs
            in rows] == [("discovery", "completed", "manual", 8, 1),
                         ("enrichment", "completed", "dependent", 8, 1),
                         ("scoring", "completed", "dependent", 8, 1)]
    assert [output["parents"] for *_, output, _ in rows] == [[], ["discovery"], ["enrichment"]]
    # each assignment counts the task the run gave it
    assert conn.execute("SELECT array_agg(total_executions ORDER BY execution_order) "
                        "FROM stream_agent_assignments").fetchone() == ([1, 1, 1],)


@pytest.mark.parametrize("how", ["enqueue_agent_task", "agent cron"])
async def test_however_the_task_is_made(
    conn: Conn, pool: AsyncConnectionPool, how: str,
) -> None:
    stream_id = _stream(conn, "s", CHAIN)
    if how == "enqueue_agent_task":
        row = conn.execute("SELECT enqueue_agent_task('discovery', %s)",
                           (json.dumps({"stream_id": str(stream_id)}),)).fetchone()
        trigger = "manual"
    else:
        conn.execute("UPDATE ai_agents SET schedule_cron = '0 9 * * *', configuration = %s "
                     "WHERE name = 'discovery'",
                     (json.dumps({"payload": {"stream_id": str(stream_id)}}),))
        row = conn.execute(
            "SELECT task_id FROM runner_cron_fire((SELECT id FROM ai_agents "
            "WHERE name = 'discovery'), '2026-01-05 09:00Z', '0 9 * * *', 'UTC')").fetchone()
        trigger = "scheduled"
    assert row is not None
    run_id = _run_of(conn, row[0])
    assert run_id is not None and _run(conn, run_id)["trigger"] == trigger
    assert await _drain(pool, run_id) == [["discovery"], ["enrichment"], ["scoring"]]
    assert _run(conn, run_id)["status"] == "completed"


def test_the_payloads_goal_is_the_runs_goal(conn: Conn) -> None:
    """The sections of goal_context the first task was given replace the stream's, so the
    later steps work to the same goal; a section it leaves out is the stream's."""
    stream_id = _stream(conn, "s", CHAIN, goal_criteria={"industry": ["SaaS"]},
                        target_metrics={"companies_to_find": 50})
    given = {"goal_criteria": {"industry": ["FinTech"], "location": ["UK"]}}
    task_id = _insert_task(conn, "discovery", {"stream_id": str(stream_id),
                                               "goal_context": given})
    run_id = _run_of(conn, task_id)
    assert run_id is not None
    assert _run(conn, run_id)["goal_context"] == {
        "goal_criteria": {"industry": ["FinTech"], "location": ["UK"]},
        "target_metrics": {"companies_to_find": 50}}
    # the task itself keeps the payload it was given
    assert conn.execute("SELECT payload FROM agent_tasks WHERE id = %s", (task_id,)
                        ).fetchone() == ({"stream_id": str(stream_id), "goal_context": given},)


def test_tasks_that_start_no_run(conn: Conn) -> None:
    stream_id = _stream(conn, "s", CHAIN)
    other = _stream(conn, "other", [("outsider", [])])
    conn.execute("UPDATE stream_agent_assignments SET is_active = false WHERE agent_id = "
                 "(SELECT id FROM ai_agents WHERE name = 'scoring')")
    tasks = [
        _insert_task(conn, "discovery", {}),
        _insert_task(conn, "discovery", {"stream_id": "not a uuid"}),
        _insert_task(conn, "discovery", {"stream_id": 42}),
        # a stream the agent is not assigned to, and one that does not exist
        _insert_task(conn, "discovery", {"stream_id": str(other)}),
        _insert_task(conn, "discovery", {"stream_id": "00000000-0000-4000-8000-000000000000"}),
        # an inactive assignment
        _insert_task(conn, "scoring", {"stream_id": str(stream_id)}),
    ]
    assert [_run_of(conn, task) for task in tasks] == [None] * len(tasks)
    assert conn.execute("SELECT count(*) FROM workflow_runs").fetchone() == (0,)


async def test_a_task_already_in_a_run_starts_no_other(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    """A run's own steps carry the stream in their payload: they join their run."""
    stream_id = _stream(conn, "s", CHAIN)
    conn.execute("INSERT INTO agent_types (agent_type, module, takes_stream_id) "
                 "VALUES ('stream_step', 'tests:StreamStep', true)")
    conn.execute("UPDATE ai_agents SET agent_type = 'stream_step'")
    run_id = conn.execute("SELECT trigger_stream_workflow(%s)", (stream_id,)).fetchone()[0]  # type: ignore[index]
    registry = Registry([_Typed("stream_step")])
    assert await _drain(pool, run_id, registry) == [["discovery"], ["enrichment"], ["scoring"]]
    assert conn.execute("SELECT count(*), count(DISTINCT workflow_run_id), "
                        "bool_and(payload ? 'stream_id') FROM agent_tasks").fetchone() == (
        3, 1, True)
    assert conn.execute("SELECT count(*) FROM workflow_runs").fetchone() == (1,)


class _Typed(_StreamStep):
    def __init__(self, agent_type: str) -> None:
        self.agent_type = agent_type  # type: ignore[misc]


async def test_a_run_rooted_in_the_middle_runs_what_is_downstream(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    """Rooted at b of the diamond: a (upstream) is not part of the run, d also waits for
    c, which is not part of it, so d does not start; the run still completes."""
    stream_id = _stream(conn, "diamond", [*DIAMOND, ("e", ["d"]), ("f", ["b"])])
    task_id = _insert_task(conn, "b", {"stream_id": str(stream_id)})
    run_id = _run_of(conn, task_id)
    assert run_id is not None
    tree = _tree(conn, run_id)
    assert set(tree) == {"b", "d", "e", "f"}
    assert tree["b"][:2] == ("pending", None) and tree["f"][:2] == ("waiting", None)
    assert tree["d"][:2] == ("not_started", 'not started: depends on agent "c", which is '
                                            'not part of this run (it started at agent "b")')
    assert tree["e"][:2] == ("not_started", "not started: parent step d was not started")
    assert await _drain(pool, run_id) == [["b"], ["f"]]
    run = _run(conn, run_id)
    assert (run["status"], run["completed_at"] is not None) == ("completed", True)


async def test_a_failed_root_fails_the_run_and_a_retry_resumes_it(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    stream_id = _stream(conn, "s", CHAIN)
    task_id = _insert_task(conn, "discovery", {"stream_id": str(stream_id)})
    run_id = _run_of(conn, task_id)
    assert run_id is not None
    conn.execute("SELECT cancel_agent_task(%s)", (task_id,))
    run = _run(conn, run_id)
    assert run["status"] == "failed" and "was cancelled" in run["error_message"]
    assert _tree(conn, run_id)["enrichment"][0] == "not_started"
    conn.execute("SELECT retry_agent_task(%s)", (task_id,))
    assert _run(conn, run_id)["status"] == "running"
    assert await _drain(pool, run_id) == [["discovery"], ["enrichment"], ["scoring"]]
    assert _run(conn, run_id)["status"] == "completed"


def test_two_tasks_of_the_first_agent_are_two_runs(conn: Conn) -> None:
    stream_id = _stream(conn, "s", CHAIN)
    first = _insert_task(conn, "discovery", {"stream_id": str(stream_id)})
    second = _insert_task(conn, "discovery", {"stream_id": str(stream_id)})
    assert None not in (_run_of(conn, first), _run_of(conn, second))
    assert _run_of(conn, first) != _run_of(conn, second)


# -- stream schedules ------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _scheduler(pool: AsyncConnectionPool, **kwargs: Any) -> AsyncIterator[CronScheduler]:
    scheduler = CronScheduler(pool, **kwargs)
    scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.close()


def test_a_stream_schedule_is_validated_like_an_agents(conn: Conn) -> None:
    _stream(conn, "s", CHAIN)
    with pytest.raises(psycopg.errors.CheckViolation,
                       match='invalid schedule_cron "0 25 \\* \\* \\*" for stream "s": '
                             'hour field "25": 25 is out of range 0-23'):
        conn.execute("UPDATE streams SET schedule_cron = '0 25 * * *'")
    with pytest.raises(psycopg.errors.CheckViolation,
                       match='invalid schedule_timezone for stream "s": unknown time zone '
                             '"Mars/Base"'):
        conn.execute("UPDATE streams SET schedule_timezone = 'Mars/Base'")
    assert conn.execute("SELECT schedule_cron, schedule_timezone FROM streams").fetchone() == (
        None, "UTC")


async def test_schedule_changes_of_streams_are_notified(
    db_url: str, conn: Conn,
) -> None:
    stream_id = _stream(conn, "s", CHAIN)
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listen:
        await listen.execute("LISTEN agent_runner_schedules")
        for statement in ["UPDATE streams SET description = 'x'",  # not a schedule change
                          "UPDATE streams SET schedule_cron = '0 9 * * *'",
                          "UPDATE streams SET schedule_timezone = 'Europe/London'",
                          "UPDATE streams SET schedule_cron = NULL"]:
            conn.execute(statement)
        payloads = [n.payload async for n in listen.notifies(timeout=1)]
    assert payloads == [f"stream:{stream_id}"] * 3


async def test_two_schedulers_claiming_one_stream_fire_start_one_run(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    stream_id = _stream(conn, "s", CHAIN)
    conn.execute("UPDATE streams SET schedule_cron = '0 9 * * *'")
    fire_time = dt.datetime(2026, 11, 21, 9, tzinfo=UTC)
    async with _scheduler(pool) as first, _scheduler(pool, daemon_id=UUID(int=7)) as second:
        await first.reload()
        await second.reload()
        assert first.stream_ids == second.stream_ids == {stream_id}
        assert first.agent_ids == set()
        results = await asyncio.gather(*(s.fire_stream(stream_id, fire_time)
                                         for s in (first, second, first, second)))
    outcomes = sorted(r.outcome for r in results if r is not None)
    assert outcomes == ["duplicate", "duplicate", "duplicate", "started"]
    (run_id,) = [r.workflow_run_id for r in results if r is not None and r.outcome == "started"]
    assert conn.execute("SELECT id, trigger FROM workflow_runs").fetchall() == [
        (run_id, "scheduled")]
    assert conn.execute("SELECT fire_time, outcome, workflow_run_id FROM stream_cron_fires"
                        ).fetchall() == [(fire_time, "started", run_id)]


async def test_a_fire_while_the_scheduled_run_is_going_is_skipped(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    stream_id = _stream(conn, "s", CHAIN)
    conn.execute("UPDATE streams SET schedule_cron = '* * * * *'")
    at = dt.datetime(2026, 11, 21, 9, tzinfo=UTC)
    minute = dt.timedelta(minutes=1)
    async with _scheduler(pool) as scheduler:
        await scheduler.reload()
        started = await scheduler.fire_stream(stream_id, at)
        assert started is not None and started.outcome == "started"
        # a manual run does not hold the schedule back; the scheduled one does
        conn.execute("SELECT trigger_stream_workflow(%s)", (stream_id,))
        skipped = await scheduler.fire_stream(stream_id, at + minute)
        assert skipped is not None and skipped.outcome == "skipped"
        assert skipped.workflow_run_id == started.workflow_run_id
        assert skipped.note is not None and str(started.workflow_run_id) in skipped.note
        # the run ends (its tasks done): the next fire starts the next run
        conn.execute("UPDATE agent_tasks SET status = 'completed', completed_at = now() "
                     "WHERE workflow_run_id = %s", (started.workflow_run_id,))
        assert _run(conn, started.workflow_run_id)["completed_at"] is None  # type: ignore[arg-type]
        conn.execute("UPDATE agent_tasks SET status = 'completed', completed_at = now() "
                     "WHERE workflow_run_id = %s AND status = 'pending'",
                     (started.workflow_run_id,))
        conn.execute("UPDATE agent_tasks SET status = 'completed', completed_at = now() "
                     "WHERE workflow_run_id = %s AND status = 'pending'",
                     (started.workflow_run_id,))
        assert _run(conn, started.workflow_run_id)["status"] == "completed"  # type: ignore[arg-type]
        again = await scheduler.fire_stream(stream_id, at + 2 * minute)
        assert again is not None and again.outcome == "started"
    assert conn.execute("SELECT outcome FROM stream_cron_fires ORDER BY fire_time").fetchall() \
        == [("started",), ("skipped",), ("started",)]


async def test_a_fire_that_cannot_start_a_run_is_recorded(
    conn: Conn, pool: AsyncConnectionPool,
) -> None:
    stream_id = _stream(conn, "s", CHAIN)
    conn.execute("UPDATE stream_agent_assignments SET is_active = false")
    conn.execute("UPDATE streams SET schedule_cron = '0 9 * * *'")
    fire_time = dt.datetime(2026, 11, 21, 9, tzinfo=UTC)
    async with _scheduler(pool) as scheduler:
        await scheduler.reload()
        result = await scheduler.fire_stream(stream_id, fire_time)
        assert result is not None and result.outcome == "failed"
        assert result.note == 'stream "s" has no active agent assignments'
        # a stale schedule (changed since the load) is refused
        conn.execute("UPDATE streams SET schedule_cron = '0 10 * * *'")
        stale = await scheduler.fire_stream(stream_id, fire_time + dt.timedelta(days=1))
        assert stale is not None and stale.outcome == "stale"
    assert conn.execute("SELECT outcome, note FROM stream_cron_fires").fetchall() == [
        ("failed", 'stream "s" has no active agent assignments')]
    assert conn.execute("SELECT count(*) FROM workflow_runs").fetchone() == (0,)


@pytest.mark.parametrize(("catchup", "expected"), [("once", 1), ("skip", 0)])
async def test_fires_of_a_stream_missed_while_no_daemon_ran(
    conn: Conn, pool: AsyncConnectionPool, catchup: str, expected: int,
) -> None:
    stream_id = _stream(conn, "s", CHAIN)
    conn.execute("UPDATE streams SET schedule_cron = '0 0 * * *'")
    now = dt.datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    conn.execute("UPDATE streams SET schedule_changed_at = %s",
                 (now - dt.timedelta(days=2, hours=1),))
    async with _scheduler(pool, catchup=catchup, clock=lambda: now) as scheduler:
        await scheduler.reload()
        await scheduler.reload()
    assert conn.execute("SELECT count(*) FROM workflow_runs WHERE stream_id = %s "
                        "AND trigger = 'scheduled'", (stream_id,)).fetchone() == (expected,)


async def test_a_running_scheduler_picks_up_a_stream_schedule_through_notify(
    conn: Conn, pool: AsyncConnectionPool, db_url: str,
) -> None:
    stream_id = _stream(conn, "s", CHAIN)
    scheduler = CronScheduler(pool)
    running = asyncio.create_task(scheduler.run(db_url, reload_interval=300))
    try:
        await await_until(lambda: _scheduler_running(scheduler), within=10, message="started")
        conn.execute("UPDATE streams SET schedule_cron = '30 4 * * *'")

        async def loaded() -> bool:
            fire = scheduler.next_stream_fire_time(stream_id)
            return fire is not None and (fire.hour, fire.minute) == (4, 30)

        await await_until(loaded, within=3, message="the stream's schedule loaded")
        conn.execute("UPDATE streams SET schedule_cron = NULL")
        await await_until(lambda: _no_streams(scheduler), within=3, message="unscheduled")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=10)


async def _scheduler_running(scheduler: CronScheduler) -> bool:
    return scheduler._scheduler.running  # type: ignore[no-any-return]


async def _no_streams(scheduler: CronScheduler) -> bool:
    return not scheduler.stream_ids


# -- stream_progress -------------------------------------------------------------------


def test_stream_progress_counts_items_and_names_the_last_run(conn: Conn) -> None:
    stream_id = _stream(conn, "s", CHAIN, target_metrics={"companies_to_find": 50,
                                                          "min_quality_score": 4.0})
    empty = _stream(conn, "empty", [("solo", [])], target_metrics={"companies_to_find": "many"})
    companies = [conn.execute("INSERT INTO companies (company_number, name) "
                              "VALUES (%s, %s) RETURNING id", (f"0000000{i}", f"C{i}")
                              ).fetchone()[0] for i in range(6)]  # type: ignore[index]
    # (enrichment_status, scored, qualified, priority)
    items = [("enriched", True, True, "critical"), ("enriched", True, True, "high"),
             ("not_found", True, False, "medium"), ("failed", True, False, "low"),
             ("pending", False, False, "low"), ("pending", False, False, None)]
    for company, (status, scored, qualified, priority) in zip(companies, items, strict=True):
        conn.execute(
            "INSERT INTO stream_items (stream_id, company_id, enrichment_status, scored_at, "
            "qualified, priority) VALUES (%s, %s, %s, CASE WHEN %s THEN now() END, %s, %s)",
            (stream_id, company, status, scored, qualified, priority))
    first = conn.execute("SELECT trigger_stream_workflow(%s)", (stream_id,)).fetchone()[0]  # type: ignore[index]
    last = conn.execute("SELECT trigger_stream_workflow(%s)", (stream_id,)).fetchone()[0]  # type: ignore[index]
    assert first != last
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM stream_progress ORDER BY items DESC")
        progress, nothing = cur.fetchall()
    assert list(progress) == ["stream_id", "items", "target", "enriched", "scored", "qualified",
                              "critical", "high", "medium", "low", "last_run_id",
                              "last_run_status", "last_run_at"]
    created_at = conn.execute("SELECT created_at FROM workflow_runs WHERE id = %s",
                              (last,)).fetchone()[0]  # type: ignore[index]
    assert progress == {
        "stream_id": stream_id, "items": 6, "target": 50, "enriched": 2, "scored": 4,
        "qualified": 2, "critical": 1, "high": 1, "medium": 1, "low": 2,
        "last_run_id": last, "last_run_status": "running", "last_run_at": created_at}
    assert nothing == {
        "stream_id": empty, "items": 0, "target": None, "enriched": 0, "scored": 0,
        "qualified": 0, "critical": 0, "high": 0, "medium": 0, "low": 0,
        "last_run_id": None, "last_run_status": None, "last_run_at": None}


# -- context flows down the chain ------------------------------------------------------


async def test_an_llm_step_is_told_its_stream_and_its_parents_outputs(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn,
) -> None:
    """The seed's chain, then a summary writer: the writer's prompt carries the stream,
    the run's goal and the scoring step's output."""
    stream_id = _stream(conn, "UK fintech", CHAIN[:2], goal_criteria={"industry": ["FinTech"]},
                        target_metrics={"companies_to_find": 5})
    conn.execute("UPDATE streams SET description = 'Fintech leads for the London team'")
    conn.execute(
        "INSERT INTO ai_agents (name, agent_type, instructions_prompt, configuration) "
        "VALUES ('summary writer', 'llm_agent', 'You write for sales people.', %s)",
        (json.dumps({"payload": {"prompt": "Summarise this run for the sales team."}}),))
    conn.execute(
        "INSERT INTO stream_agent_assignments (stream_id, agent_id, execution_order, "
        "depends_on_agent_ids) SELECT %s, w.id, 3, ARRAY[e.id] FROM ai_agents w, ai_agents e "
        "WHERE w.name = 'summary writer' AND e.name = 'enrichment'", (stream_id,))
    task_id = _insert_task(conn, "discovery", {"stream_id": str(stream_id)})
    run_id = _run_of(conn, task_id)
    assert run_id is not None
    api.enqueue(text("Two strong fintech leads this week."))
    settings: Settings = test_settings(ANTHROPIC_API_KEY="k", ANTHROPIC_BASE_URL=api.url)
    registry = Registry([_StreamStep(), LLMAgent()])
    for _ in range(3):
        async with pool.connection() as aconn:
            cur = await aconn.execute("SELECT id FROM agent_tasks WHERE workflow_run_id = %s "
                                      "AND status = 'pending'", (run_id,))
            (pending,) = await cur.fetchall()
        outcome = await run_task_inline(pool, pending[0], registry=registry, settings=settings)
        assert outcome is Outcome.COMPLETED
    assert _run(conn, run_id)["status"] == "completed"
    (request,) = api.message_requests()
    (message,) = request.body["messages"]
    enrichment_output = conn.execute(
        "SELECT t.output FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
        "WHERE a.name = 'enrichment'").fetchone()[0]  # type: ignore[index]
    assert message == {"role": "user", "content": prompt_in_context(
        "Summarise this run for the sales team.",
        RunStream(workflow_run_id=run_id, stream_id=stream_id, name="UK fintech",
                  description="Fintech leads for the London team",
                  goal={"goal_criteria": {"industry": ["FinTech"]},
                        "target_metrics": {"companies_to_find": 5}}),
        {"enrichment": enrichment_output})}
    content = message["content"]
    assert f'stream "UK fintech" (id {stream_id})' in content
    assert '"FinTech"' in content and "Fintech leads for the London team" in content
    assert '<parent_output agent="enrichment">' in content
    assert content.endswith("<task>\nSummarise this run for the sales team.\n</task>")


def test_the_prompt_outside_a_run_is_the_prompt() -> None:
    assert prompt_in_context("What does 1234567 do?", None, {}) == "What does 1234567 do?"


def test_a_long_parent_output_is_cut() -> None:
    text_out = prompt_in_context("p", None, {"big": {"rows": "x" * 50_000}})
    assert "[cut: the output is" in text_out and len(text_out) < 21_000
