"""The cron scheduler in-process against real Postgres: one task per fire time whoever
fires it, reloads on NOTIFY, stale fires refused, missed fires caught up once (or
skipped), clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import types
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from runner import metrics
from runner.scheduler import CronScheduler, SchedulerOptions, scheduler_side_task
from runner.settings import SettingsError, load_settings
from runner.store import cron as cron_store
from tests.harness import await_until, test_settings

UTC = dt.UTC


async def _agent(pool: AsyncConnectionPool, name: str, cron: str | None, *,
                 configuration: dict[str, Any] | None = None, tz: str = "UTC") -> UUID:
    async with pool.connection() as conn:
        cur = await conn.execute(
            "INSERT INTO ai_agents (name, agent_type, schedule_cron, schedule_timezone, "
            "configuration) VALUES (%s, 'noop', %s, %s, %s) RETURNING id",
            (name, cron, tz, json.dumps(configuration or {})))
        row = await cur.fetchone()
    assert row is not None
    return UUID(str(row[0]))


async def _scalar(pool: AsyncConnectionPool, sql: str, params: Any = None) -> Any:
    async with pool.connection() as conn:
        row = await (await conn.execute(sql, params)).fetchone()
    assert row is not None
    return row[0]


@contextlib.asynccontextmanager
async def _scheduler(pool: AsyncConnectionPool, **kwargs: Any) -> AsyncIterator[CronScheduler]:
    scheduler = CronScheduler(pool, **kwargs)
    scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.close()


def _last_fire(cron_every_seconds: int) -> dt.datetime:
    now = dt.datetime.now(UTC).replace(microsecond=0)
    return now - dt.timedelta(seconds=now.second % cron_every_seconds)


async def test_two_schedulers_claiming_one_fire_make_one_task(pool: AsyncConnectionPool) -> None:
    agent_id = await _agent(pool, "report", "0 9 * * *",
                            configuration={"payload": {"sleep_seconds": 0.5}})
    fire_time = dt.datetime(2026, 11, 21, 9, tzinfo=UTC)
    metrics.set_agent_types(["noop"])  # as a daemon with the noop plugin does at start
    before = metrics.REGISTRY.get_sample_value(
        "agent_runner_cron_fires_total", {"agent_type": "noop"}) or 0.0
    async with _scheduler(pool) as first, _scheduler(pool, daemon_id=UUID(int=7)) as second:
        await first.reload()
        await second.reload()
        results = await asyncio.gather(*(s.fire(agent_id, fire_time)
                                         for s in (first, second, first, second)))
    outcomes = sorted(r.outcome for r in results if r is not None)
    assert outcomes == ["duplicate", "duplicate", "duplicate", "enqueued"]
    (task_id,) = [r.task_id for r in results if r is not None and r.outcome == "enqueued"]
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT id, trigger, payload, status FROM agent_tasks")
        assert await cur.fetchall() == [(task_id, "scheduled", {"sleep_seconds": 0.5}, "pending")]
        cur = await conn.execute("SELECT agent_id, fire_time, task_id FROM cron_fires")
        assert await cur.fetchall() == [(agent_id, fire_time, task_id)]
    after = metrics.REGISTRY.get_sample_value(
        "agent_runner_cron_fires_total", {"agent_type": "noop"})
    assert after == before + 1


async def test_two_running_schedulers_fire_every_second_once_per_fire_time(
    pool: AsyncConnectionPool,
) -> None:
    await _agent(pool, "ticker", "* * * * * *")
    async with _scheduler(pool) as first, _scheduler(pool) as second:
        await asyncio.gather(first.reload(), second.reload())
        await await_until(
            lambda: _scalar(pool, "SELECT count(*) >= 4 FROM cron_fires"),
            within=15, interval=0.1, message="four fires")
    async with pool.connection() as conn:
        cur = await conn.execute(
            "SELECT count(*), count(DISTINCT f.fire_time), count(t.id), count(DISTINCT t.id), "
            "bool_and(extract(microseconds FROM f.fire_time)::int % 1000000 = 0) "
            "FROM cron_fires f LEFT JOIN agent_tasks t ON t.id = f.task_id")
        fires, distinct_times, tasks, distinct_tasks, whole_seconds = await cur.fetchone() or ()
        cur = await conn.execute("SELECT count(*) FROM agent_tasks")
        all_tasks = await cur.fetchone()
    assert fires == distinct_times == tasks == distinct_tasks
    assert all_tasks == (fires,)
    assert whole_seconds
    both = first.outcomes + second.outcomes
    assert both["enqueued"] == fires
    assert both["duplicate"] >= fires - 2  # each fire was tried by both (the edges aside)


async def test_an_update_reaches_a_running_scheduler_through_notify(
    pool: AsyncConnectionPool, db_url: str,
) -> None:
    scheduler = CronScheduler(pool)
    # A periodic reload far away: only NOTIFY can explain a quick reaction.
    running = asyncio.create_task(scheduler.run(db_url, reload_interval=300))
    try:
        await await_until(lambda: _is_running(scheduler), within=10, message="started")
        agent_id = await _agent(pool, "nightly", "0 3 * * *")
        await await_until(lambda: _has(scheduler, agent_id), within=3, message="loaded")
        first_next = scheduler.next_fire_time(agent_id)
        assert first_next is not None and (first_next.hour, first_next.minute) == (3, 0)

        async with pool.connection() as conn:
            await conn.execute("UPDATE ai_agents SET schedule_cron = '30 4 * * *' "
                               "WHERE id = %s", (agent_id,))

        async def moved() -> bool:
            fire = scheduler.next_fire_time(agent_id)
            return fire is not None and (fire.hour, fire.minute) == (4, 30)

        await await_until(moved, within=3, message="rescheduled")
        async with pool.connection() as conn:
            await conn.execute("UPDATE ai_agents SET is_active = false WHERE id = %s",
                               (agent_id,))
        await await_until(lambda: _has(scheduler, agent_id, False), within=3,
                          message="disabled agent unscheduled")
        assert not running.done()
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(running, timeout=10)
    assert scheduler.agent_ids == set()


async def _is_running(scheduler: CronScheduler) -> bool:
    return scheduler._scheduler.running  # type: ignore[no-any-return]


async def _has(scheduler: CronScheduler, agent_id: UUID, present: bool = True) -> bool:
    return (agent_id in scheduler.agent_ids) is present


async def test_a_fire_of_a_schedule_that_changed_is_refused(pool: AsyncConnectionPool) -> None:
    agent_id = await _agent(pool, "a", "0 9 * * *")
    fire_time = dt.datetime(2026, 11, 21, 9, tzinfo=UTC)
    async with _scheduler(pool) as scheduler:
        await scheduler.reload()
        async with pool.connection() as conn:
            await conn.execute("UPDATE ai_agents SET schedule_cron = '0 10 * * *' "
                               "WHERE id = %s", (agent_id,))
        # the daemon has not reloaded yet: its fire is for a schedule that is gone
        result = await scheduler.fire(agent_id, fire_time)
        assert result is not None and result.outcome == "stale"
        async with pool.connection() as conn:
            await conn.execute("UPDATE ai_agents SET schedule_cron = '0 9 * * *', "
                               "is_active = false WHERE id = %s", (agent_id,))
        result = await scheduler.fire(agent_id, fire_time)
        assert result is not None and result.outcome == "stale"
    assert await _scalar(pool, "SELECT count(*) FROM agent_tasks") == 0
    assert await _scalar(pool, "SELECT count(*) FROM cron_fires") == 0


@pytest.mark.parametrize(("catchup", "expected"), [("once", 1), ("skip", 0)])
async def test_fires_missed_while_no_daemon_ran(
    pool: AsyncConnectionPool, catchup: str, expected: int,
) -> None:
    """Down for two days with a daily schedule: one task for the whole period ("once"),
    or none ("skip"); reloading again changes nothing."""
    agent_id = await _agent(pool, "daily", "0 0 * * *")
    now = dt.datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    async with pool.connection() as conn:
        await conn.execute("UPDATE ai_agents SET schedule_changed_at = %s WHERE id = %s",
                           (now - dt.timedelta(days=2, hours=1), agent_id))
    async with _scheduler(pool, catchup=catchup, clock=lambda: now) as scheduler:
        await scheduler.reload()
        await scheduler.reload()
    async with pool.connection() as conn:
        cur = await conn.execute("SELECT fire_time FROM cron_fires")
        fires = [row[0] for row in await cur.fetchall()]
    assert await _scalar(pool, "SELECT count(*) FROM agent_tasks") == expected
    if expected:
        assert fires == [now.replace(hour=0)]


async def test_no_catch_up_for_a_new_schedule_or_a_fire_already_made(
    pool: AsyncConnectionPool,
) -> None:
    now = dt.datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    fresh = await _agent(pool, "fresh", "0 0 * * *")
    done = await _agent(pool, "done", "0 0 * * *")
    async with pool.connection() as conn:
        await conn.execute("UPDATE ai_agents SET schedule_changed_at = %s WHERE id = %s",
                           (now - dt.timedelta(hours=1), fresh))
        await conn.execute("UPDATE ai_agents SET schedule_changed_at = %s WHERE id = %s",
                           (now - dt.timedelta(days=9), done))
        await conn.execute("INSERT INTO cron_fires (agent_id, fire_time) VALUES (%s, %s)",
                           (done, now.replace(hour=0)))
    async with _scheduler(pool, clock=lambda: now) as scheduler:
        await scheduler.reload()
    assert await _scalar(pool, "SELECT count(*) FROM agent_tasks") == 0


async def test_late_fires_follow_the_catch_up_policy(pool: AsyncConnectionPool) -> None:
    agent_id = await _agent(pool, "a", "* * * * *")
    late = _last_fire(60) - dt.timedelta(minutes=5)
    async with _scheduler(pool, catchup="skip") as skipper:
        await skipper.reload()
        await skipper._on_fire(skipper._loaded[agent_id], fire_time=late)
        assert await _scalar(pool, "SELECT count(*) FROM agent_tasks") == 0
    async with _scheduler(pool, catchup="once") as once:
        await once.reload()
        await once._on_fire(once._loaded[agent_id], fire_time=late)
    assert await _scalar(pool, "SELECT count(*) FROM cron_fires WHERE fire_time = %s",
                         (late,)) == 1


async def test_a_schedule_written_before_validation_is_skipped_not_fatal(
    pool: AsyncConnectionPool,
) -> None:
    async with pool.connection() as conn:
        await conn.execute("ALTER TABLE ai_agents DISABLE TRIGGER ai_agents_check_schedule")
        await conn.execute("INSERT INTO ai_agents (name, agent_type, schedule_cron) "
                           "VALUES ('legacy', 'noop', '0 0 31 2 *')")
        await conn.execute("ALTER TABLE ai_agents ENABLE TRIGGER ai_agents_check_schedule")
    good = await _agent(pool, "good", "0 9 * * *")
    async with _scheduler(pool) as scheduler:
        await scheduler.reload()
        assert scheduler.agent_ids == {good}


async def test_side_task_runs_for_the_daemons_life_and_stops_when_cancelled(
    pool: AsyncConnectionPool, db_url: str,
) -> None:
    agent_id = await _agent(pool, "ticker", "* * * * * *")
    daemon = types.SimpleNamespace(id=UUID(int=42))
    task = asyncio.create_task(scheduler_side_task(
        pool, conninfo=db_url, settings=test_settings(), daemon_id=daemon.id))
    try:
        await await_until(
            lambda: _scalar(pool, "SELECT count(*) >= 2 FROM cron_fires WHERE daemon_id = %s",
                            (daemon.id,)), within=15, message="fires from the side task")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
    assert task.done()
    count = await _scalar(pool, "SELECT count(*) FROM cron_fires")
    await asyncio.sleep(1.5)
    assert await _scalar(pool, "SELECT count(*) FROM cron_fires") == count  # really stopped
    assert await _scalar(pool, "SELECT count(*) FROM agent_tasks WHERE agent_id = %s "
                               "AND trigger = 'scheduled'", (agent_id,)) == count


def test_options_from_settings() -> None:
    assert SchedulerOptions.from_settings(test_settings()) == SchedulerOptions("once", 5.0)
    custom = test_settings(RUNNER_CRON_CATCHUP="skip", RUNNER_CRON_RELOAD_INTERVAL="2")
    assert SchedulerOptions.from_settings(custom) == SchedulerOptions("skip", 2.0)
    with pytest.raises(SettingsError, match="RUNNER_CRON_CATCHUP"):
        load_settings(RUNNER_CRON_CATCHUP="always")
    with pytest.raises(ValueError, match="catchup must be"):
        CronScheduler(None, catchup="never")  # type: ignore[arg-type]


async def test_schedule_changes_are_notified(db_url: str, pool: AsyncConnectionPool) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as listen:
        await listen.execute("LISTEN agent_runner_schedules")
        agent_id = await _agent(pool, "a", "0 9 * * *")
        unrelated = await _agent(pool, "b", None)
        # one transaction each: Postgres folds identical notifications of a transaction
        for statement, params in [
            ("UPDATE ai_agents SET description = 'x'", None),  # not a schedule change
            ("UPDATE ai_agents SET schedule_timezone = 'Europe/Paris' WHERE id = %s",
             (agent_id,)),
            ("UPDATE ai_agents SET is_active = false WHERE id = %s", (unrelated,)),
            ("DELETE FROM ai_agents WHERE id = %s", (agent_id,)),
        ]:
            async with pool.connection() as conn:
                await conn.execute(statement, params)
        payloads = [n.payload async for n in listen.notifies(timeout=1)]
    assert payloads == [str(agent_id), str(agent_id), str(unrelated), str(agent_id)]


async def test_a_fire_lost_to_a_connection_problem_is_caught_up_at_the_next_reload(
    pool: AsyncConnectionPool, monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent_id = await _agent(pool, "daily", "0 9 * * *")
    now = dt.datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    async with pool.connection() as conn:
        await conn.execute("UPDATE ai_agents SET schedule_changed_at = %s WHERE id = %s",
                           (now - dt.timedelta(days=1), agent_id))
    claim = cron_store.record_cron_fire
    attempts = 0

    async def connection_lost_once(*args: Any, **kwargs: Any) -> cron_store.FireResult:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return await claim(*args, **kwargs)

    monkeypatch.setattr(cron_store, "record_cron_fire", connection_lost_once)
    async with _scheduler(pool, clock=lambda: now) as scheduler:
        await scheduler.reload()
        assert await _scalar(pool, "SELECT count(*) FROM agent_tasks") == 0
        await scheduler.reload()
        await scheduler.reload()
    assert attempts == 2
    assert await _scalar(pool, "SELECT fire_time FROM cron_fires") == now.replace(hour=9)
    assert await _scalar(pool, "SELECT count(*) FROM agent_tasks") == 1
