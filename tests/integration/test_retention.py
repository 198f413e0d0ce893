"""Retention (issue 10, item 1): ``agent-runner prune`` and the daemon's ``prune_once``.

The history is made as production makes it, in bulk: tasks enqueued through
``enqueue_agent_task`` (each with its procrastinate job and ``deferred`` event), then
attempts, job outcomes (procrastinate's triggers write the events), log lines and the
tasks' end states written set-wise and dated back. Failed tasks ran twice, each attempt
under its own job, so "the jobs of all their attempts" is tested too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from runner import metrics
from runner.retention import RetentionPolicy, prune, prune_locked, prune_once
from runner.store import bounded
from runner.store import retention as store
from tests.harness import REPO, daemon_env, daemons, test_settings, wait_until

Conn = psycopg.Connection[Any]

OLD_COMPLETED = 20_000
OLD_FAILED = 20_000


def _cli(db_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args], cwd=REPO,
        env=daemon_env(db_url, **env), capture_output=True, text=True, timeout=120,
    )


def _prune_json(db_url: str, *args: str, **env: str) -> dict[str, Any]:
    result = _cli(db_url, "prune", *args, "--json", **env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def make_history(conn: Conn, *, agent: str, count: int, status: str, age: str,
                 attempts: int = 1, workflow_run_id: str | None = None) -> list[str]:
    """``count`` tasks of ``agent`` that ended ``status`` ``age`` ago (an interval), each
    after ``attempts`` attempts: executions, jobs and their events, one log line per
    attempt. Returns the task ids."""
    conn.execute("DROP TABLE IF EXISTS made")
    conn.execute("CREATE TEMP TABLE made AS SELECT enqueue_agent_task(%s) AS id "
                 "FROM generate_series(1, %s)", (agent, count))
    conn.execute("CREATE INDEX ON made (id)")
    ended = "now() - %(age)s::interval"
    params = {"age": age, "status": status, "run": workflow_run_id}
    for attempt in range(1, attempts + 1):
        if attempt > 1:  # a retry: the next attempt is delivered by a fresh job
            conn.execute("UPDATE agent_tasks t SET job_id = runner_defer_attempt(t.id, 5, now()) "
                         "FROM made WHERE t.id = made.id")
        last = attempt == attempts
        outcome = status if last else "failed"
        conn.execute(f"""
            INSERT INTO agent_executions (agent_id, org_id, task_id, attempt, job_id, status,
                                          started_at, completed_at, duration_ms, input_data,
                                          output_data, created_at)
            SELECT t.agent_id, t.org_id, t.id, {attempt}, t.job_id, %(outcome)s,
                   {ended} - interval '1 minute' * {attempts - attempt} - interval '5 ms',
                   {ended} - interval '1 minute' * {attempts - attempt}, 5, '{{}}',
                   '{{"slept": 0}}',
                   {ended} - interval '1 minute' * {attempts - attempt} - interval '5 ms'
            FROM agent_tasks t JOIN made ON made.id = t.id
            """, {**params, "outcome": outcome})
        conn.execute("UPDATE procrastinate_jobs j SET status = 'doing' FROM agent_tasks t "
                     "JOIN made ON made.id = t.id WHERE j.id = t.job_id")
        conn.execute("UPDATE procrastinate_jobs j SET status = 'succeeded', attempts = 1 "
                     "FROM agent_tasks t JOIN made ON made.id = t.id WHERE j.id = t.job_id")
    conn.execute(f"""
        UPDATE procrastinate_events ev SET at = {ended}
        FROM agent_executions e JOIN made ON made.id = e.task_id WHERE ev.job_id = e.job_id
        """, params)
    conn.execute("""
        INSERT INTO agent_task_logs (task_id, execution_id, message, created_at)
        SELECT e.task_id, e.id, 'attempt ' || e.attempt, e.completed_at
        FROM agent_executions e JOIN made ON made.id = e.task_id
        """)
    conn.execute(f"""
        UPDATE agent_tasks t
        SET status = %(status)s, retry_count = {attempts - 1}, completed_at = {ended},
            started_at = {ended} - interval '1 minute' * {attempts}, updated_at = {ended},
            created_at = {ended} - interval '1 minute' * {attempts},
            scheduled_for = {ended} - interval '1 minute' * {attempts},
            workflow_run_id = %(run)s,
            error_message = CASE WHEN %(status)s = 'failed' THEN 'boom' END,
            current_execution_id = (SELECT e.id FROM agent_executions e
                                    WHERE e.task_id = t.id ORDER BY attempt DESC LIMIT 1)
        FROM made WHERE t.id = made.id
        """, params)
    return [str(row[0]) for row in conn.execute("SELECT id FROM made")]


def table_counts(conn: Conn) -> dict[str, int]:
    tables = ("agent_tasks", "agent_executions", "agent_task_logs", "procrastinate_jobs",
              "procrastinate_events", "workflow_runs", "companies", "streams",
              "stream_items", "stream_insights", "llm_calls")
    return {table: conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]  # type: ignore[index]
            for table in tables}


def stats_match_the_tables(conn: Conn) -> None:
    """The maintained figures equal a full count (what the views computed before), with
    deltas still to fold and after folding them."""
    for fold in (False, True):
        stats = conn.execute("SELECT pending, processing, completed, failed, cancelled, total "
                             "FROM agent_task_stats").fetchone()
        truth = conn.execute("""
            SELECT count(*) FILTER (WHERE status = 'pending'),
                   count(*) FILTER (WHERE status = 'processing'),
                   count(*) FILTER (WHERE status = 'completed'),
                   count(*) FILTER (WHERE status = 'failed'),
                   count(*) FILTER (WHERE status = 'cancelled'), count(*)
            FROM agent_tasks""").fetchone()
        assert stats == truth
        performance = conn.execute("""
            SELECT agent_id, total_executions, successful_executions, failed_executions,
                   average_execution_time_ms, success_rate
            FROM agent_performance ORDER BY agent_id""").fetchall()
        expected = conn.execute("""
            SELECT a.id, count(e.id),
                   count(e.id) FILTER (WHERE e.status = 'completed'),
                   count(e.id) FILTER (WHERE e.status IN ('failed', 'timeout', 'rescued')),
                   round(avg(e.duration_ms))::bigint,
                   CASE WHEN count(e.id) = 0 THEN NULL ELSE round(100.0 * count(e.id)
                        FILTER (WHERE e.status = 'completed') / count(e.id), 2) END
            FROM ai_agents a LEFT JOIN agent_executions e
                 ON e.agent_id = a.id AND e.status NOT IN ('queued', 'running')
            GROUP BY a.id ORDER BY a.id""").fetchall()
        assert performance == expected
        if not fold:
            conn.execute("SELECT runner_fold_counters()")


@pytest.fixture
def history(conn: Conn) -> dict[str, Any]:
    """The acceptance history of issue 10, plus what must survive a prune."""
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop'), ('y', 'noop')")
    made: dict[str, Any] = {}
    made["old_completed"] = make_history(conn, agent="x", count=OLD_COMPLETED,
                                         status="completed", age="40 days")
    made["old_failed"] = make_history(conn, agent="x", count=OLD_FAILED, status="failed",
                                      age="40 days", attempts=2)
    made["recent_completed"] = make_history(conn, agent="x", count=200, status="completed",
                                            age="1 day")
    made["recent_failed"] = make_history(conn, agent="y", count=50, status="failed",
                                         age="2 days", attempts=2)
    made["pending"] = [str(conn.execute("SELECT enqueue_agent_task('x')").fetchone()[0])  # type: ignore[index]
                       for _ in range(20)]
    # A workflow run still going: its old completed step is kept.
    stream = conn.execute("INSERT INTO streams (name) VALUES ('s') RETURNING id").fetchone()[0]  # type: ignore[index]
    made["stream"] = str(stream)
    run = conn.execute("INSERT INTO workflow_runs (stream_id, status) VALUES (%s, 'running') "
                       "RETURNING id", (stream,)).fetchone()[0]  # type: ignore[index]
    made["running_run"] = str(run)
    made["running_step"] = make_history(conn, agent="y", count=1, status="completed",
                                        age="40 days", workflow_run_id=str(run))
    # Its completion advanced the run (to completed: it has no other step); another step
    # is still going.
    conn.execute("UPDATE workflow_runs SET status = 'running', completed_at = NULL, "
                 "updated_at = now() WHERE id = %s", (run,))
    # Business data, some of it naming an old task.
    company = conn.execute("INSERT INTO companies (company_number, name) "
                           "VALUES ('AB123456', 'Acme') RETURNING id").fetchone()[0]  # type: ignore[index]
    conn.execute("INSERT INTO stream_items (stream_id, company_id, added_by_task_id) "
                 "VALUES (%s, %s, %s)", (stream, company, made["old_completed"][0]))
    conn.execute("INSERT INTO stream_insights (stream_id, company_id, task_id, execution_id, "
                 "title) SELECT %s, %s, t.id, t.current_execution_id, 'signal' "
                 "FROM agent_tasks t WHERE t.id = %s",
                 (stream, company, made["old_completed"][0]))
    conn.execute("ANALYZE")
    return made


@pytest.mark.slow
def test_prune_dry_run_then_prune(db_url: str, conn: Conn, history: dict[str, Any]) -> None:
    before = table_counts(conn)
    stats_match_the_tables(conn)

    report = _prune_json(db_url, "--dry-run")
    assert report["dry_run"] is True
    assert report["tasks"] == {"completed": OLD_COMPLETED, "cancelled": 0, "failed": 0}
    assert report["removed"]["agent_tasks"] == OLD_COMPLETED
    assert report["removed"]["agent_executions"] == OLD_COMPLETED
    assert report["removed"]["agent_task_logs"] == OLD_COMPLETED
    assert report["removed"]["procrastinate_jobs"] == OLD_COMPLETED
    assert report["removed"]["procrastinate_events"] == 3 * OLD_COMPLETED
    assert table_counts(conn) == before, "a dry run removes nothing"

    text = _cli(db_url, "prune", "--dry-run")
    assert text.returncode == 0, text.stderr
    assert "would remove" in text.stdout and f"completed {OLD_COMPLETED}" in text.stdout

    report = _prune_json(db_url)
    assert report["dry_run"] is False and report["complete"] is True
    assert report["tasks"] == {"completed": OLD_COMPLETED, "cancelled": 0, "failed": 0}
    after = table_counts(conn)
    assert after["agent_tasks"] == before["agent_tasks"] - OLD_COMPLETED
    assert after["agent_executions"] == before["agent_executions"] - OLD_COMPLETED
    assert after["agent_task_logs"] == before["agent_task_logs"] - OLD_COMPLETED
    assert after["procrastinate_jobs"] == before["procrastinate_jobs"] - OLD_COMPLETED
    assert after["procrastinate_events"] == before["procrastinate_events"] - 3 * OLD_COMPLETED
    for table in ("companies", "streams", "stream_items", "stream_insights", "workflow_runs"):
        assert after[table] == before[table], table

    # Nothing of the pruned tasks is left, in any table keyed to them.
    gone = history["old_completed"]
    assert conn.execute("SELECT count(*) FROM agent_tasks WHERE id = ANY(%s::uuid[])",
                        (gone,)).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM agent_executions WHERE task_id = ANY(%s::uuid[])",
                        (gone,)).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs "
                        "WHERE args ->> 'task_id' = ANY(%s)", (gone,)).fetchone() == (0,)
    # Everything else is as it was.
    for kind, status in (("old_failed", "failed"), ("recent_completed", "completed"),
                         ("recent_failed", "failed"), ("pending", "pending"),
                         ("running_step", "completed")):
        ids = history[kind]
        assert conn.execute("SELECT count(*) FROM agent_tasks WHERE id = ANY(%s::uuid[]) "
                            "AND status = %s", (ids, status)).fetchone() == (len(ids),), kind
    attempts = 2 * OLD_FAILED
    assert conn.execute("SELECT count(*), count(DISTINCT job_id) FROM agent_executions "
                        "WHERE task_id = ANY(%s::uuid[])",
                        (history["old_failed"],)).fetchone() == (attempts, attempts)
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE args ->> 'task_id' "
                        "= ANY(%s)", (history["old_failed"],)).fetchone() == (attempts,)
    assert conn.execute("SELECT status FROM workflow_runs WHERE id = %s",
                        (history["running_run"],)).fetchone() == ("running",)
    # The insight stays; only its link to the pruned task is gone.
    assert conn.execute("SELECT title, task_id, execution_id FROM stream_insights"
                        ).fetchall() == [("signal", None, None)]
    stats_match_the_tables(conn)

    # A second pass finds nothing more.
    report = _prune_json(db_url)
    assert sum(report["removed"].values()) == 0

    # With a shorter horizon for failures, they go too, with the jobs of both attempts.
    report = _prune_json(db_url, RUNNER_FAILED_RETENTION_DAYS="30")
    assert report["tasks"] == {"completed": 0, "cancelled": 0, "failed": OLD_FAILED}
    assert report["removed"]["agent_executions"] == attempts
    assert report["removed"]["procrastinate_jobs"] == attempts
    assert report["removed"]["agent_task_logs"] == attempts
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs WHERE args ->> 'task_id' "
                        "= ANY(%s)", (history["old_failed"],)).fetchone() == (0,)
    stats_match_the_tables(conn)


def _policy(**changes: Any) -> RetentionPolicy:
    return RetentionPolicy(**{"batch_size": 1000, **changes})


async def test_two_concurrent_prunes_only_one_runs(pool: AsyncConnectionPool, conn: Conn) -> None:
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop')")
    make_history(conn, agent="x", count=5000, status="completed", age="40 days")
    settings = test_settings()
    removed = metrics.REGISTRY.get_sample_value("agent_runner_pruned_rows_total",
                                                {"table": "agent_tasks"}) or 0.0

    first, second = await asyncio.gather(prune_once(pool, settings), prune_once(pool, settings))

    assert sorted([first.ran, second.ran]) == [False, True]
    done = first if first.ran else second
    assert done.tasks["completed"] == 5000
    assert metrics.REGISTRY.get_sample_value(
        "agent_runner_pruned_rows_total", {"table": "agent_tasks"}) == removed + 5000
    assert conn.execute("SELECT count(*) FROM agent_tasks").fetchone() == (0,)


async def test_a_prune_skips_while_another_session_holds_the_lock(
    pool: AsyncConnectionPool, conn: Conn, db_url: str
) -> None:
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop')")
    make_history(conn, agent="x", count=10, status="completed", age="40 days")
    async with pool.connection() as holder:
        assert await store.try_lock(holder)
        report = await prune_once(pool, test_settings())
        assert report.ran is False
        result = _cli(db_url, "prune")
        assert result.returncode == 1 and "another prune is running" in result.stderr
        await store.unlock(holder)
    assert (await prune_once(pool, test_settings())).tasks["completed"] == 10


async def test_batches_leave_pending_and_processing_tasks_alone(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop')")
    make_history(conn, agent="x", count=2500, status="completed", age="40 days")
    # Rows that look old but are not finished (a plain UPDATE could make them so).
    live = make_history(conn, agent="x", count=10, status="completed", age="40 days")
    conn.execute("UPDATE agent_tasks SET status = 'processing' WHERE id = ANY(%s::uuid[])",
                 (live[:5],))
    conn.execute("UPDATE agent_tasks SET status = 'pending' WHERE id = ANY(%s::uuid[])",
                 (live[5:],))
    async with pool.connection() as c:
        report = await prune_locked(c, _policy())
    assert report.tasks["completed"] == 2500
    assert report.removed["agent_tasks"] == 2500
    assert conn.execute("SELECT status, count(*) FROM agent_tasks GROUP BY status ORDER BY 1"
                        ).fetchall() == [("pending", 5), ("processing", 5)]


async def test_workers_share_the_batches(pool: AsyncConnectionPool, conn: Conn) -> None:
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop')")
    make_history(conn, agent="x", count=3000, status="completed", age="40 days")
    recent = make_history(conn, agent="x", count=10, status="completed", age="1 day")
    async with pool.connection() as c, pool.connection() as h1, pool.connection() as h2:
        report = await prune_locked(c, _policy(batch_size=250), helpers=[h1, h2])
    assert report.tasks["completed"] == report.removed["agent_tasks"] == 3000
    assert report.removed["procrastinate_jobs"] == 3000
    assert sorted(str(row[0]) for row in conn.execute("SELECT id FROM agent_tasks")) \
        == sorted(recent)
    stats_match_the_tables(conn)


async def test_cancelled_tasks_and_unreferenced_jobs(pool: AsyncConnectionPool, conn: Conn) -> None:
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop')")
    # Cancelled before they ran: cancel_agent_task unlinks and cancels their jobs.
    ids = [str(conn.execute("SELECT enqueue_agent_task('x')").fetchone()[0])  # type: ignore[index]
           for _ in range(6)]
    for task_id in ids:
        conn.execute("SELECT cancel_agent_task(%s)", (task_id,))
    old, recent = ids[:3], ids[3:]
    conn.execute("UPDATE agent_tasks SET completed_at = now() - interval '40 days' "
                 "WHERE id = ANY(%s::uuid[])", (old,))
    conn.execute("UPDATE procrastinate_events SET at = at - interval '40 days' "
                 "WHERE job_id IN (SELECT id FROM procrastinate_jobs "
                 "                 WHERE args ->> 'task_id' = ANY(%s))", (old,))
    # A job nobody names that is still to do is not finished: it stays whatever its age.
    conn.execute("UPDATE procrastinate_events SET at = at - interval '40 days' "
                 "WHERE job_id = (SELECT job_id FROM agent_tasks WHERE status = 'pending')")
    waiting = str(conn.execute("SELECT enqueue_agent_task('x')").fetchone()[0])  # type: ignore[index]
    conn.execute("UPDATE procrastinate_events SET at = at - interval '40 days' "
                 "WHERE job_id = (SELECT job_id FROM agent_tasks WHERE id = %s)", (waiting,))
    conn.execute("UPDATE agent_tasks SET job_id = NULL WHERE id = %s", (waiting,))

    async with pool.connection() as c:
        dry = await prune_locked(c, _policy(batch_size=2), dry_run=True)
        report = await prune_locked(c, _policy(batch_size=2))
    assert dry.tasks == report.tasks == {"completed": 0, "cancelled": 3, "failed": 0}
    assert dry.removed == report.removed
    assert report.removed["procrastinate_jobs"] == 3  # the old cancelled tasks' jobs
    left = conn.execute("SELECT args ->> 'task_id', status::text FROM procrastinate_jobs "
                        "ORDER BY id").fetchall()
    assert sorted(left) == sorted([(task_id, "cancelled") for task_id in recent]
                                  + [(waiting, "todo")])
    # The scan remembers where it stopped: the next pass judges no job twice.
    assert conn.execute("SELECT jobs_checked_through FROM runner_prune_state").fetchone()[0] > 0  # type: ignore[index]


async def test_old_workflow_runs_go_after_their_tasks_except_each_streams_latest(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop')")
    stream = conn.execute("INSERT INTO streams (name) VALUES ('s') RETURNING id").fetchone()[0]  # type: ignore[index]
    runs = [conn.execute(
        "INSERT INTO workflow_runs (stream_id, status, created_at, completed_at) "
        "VALUES (%s, 'completed', now() - %s::interval, now() - %s::interval) RETURNING id",
        (stream, f"{41 - n} days", f"{40 - n} days")).fetchone()[0]  # type: ignore[index]
        for n in range(3)]
    for run in runs:
        make_history(conn, agent="x", count=1, status="completed", age="39 days",
                     workflow_run_id=str(run))
    conn.execute("UPDATE workflow_runs SET updated_at = now() - interval '39 days'")
    async with pool.connection() as c:
        report = await prune_locked(c, _policy())
    assert report.tasks["completed"] == 3
    assert report.removed["workflow_runs"] == 2
    assert conn.execute("SELECT id FROM workflow_runs").fetchall() == [(runs[-1],)]


async def test_the_ledger_is_kept_unless_its_retention_is_set(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    conn.execute("""
        INSERT INTO llm_calls (call_index, model, price_version, created_at)
        SELECT n, 'claude', 'v1', now() - make_interval(days => n * 10)
        FROM generate_series(0, 9) n""")
    async with pool.connection() as c:
        kept = await prune_locked(c, _policy())
        assert kept.removed["llm_calls"] == 0
        report = await prune_locked(c, _policy(ledger_retention_days=45))
    assert report.removed["llm_calls"] == 5  # 50 .. 90 days old
    assert conn.execute("SELECT count(*) FROM llm_calls").fetchone() == (5,)


async def test_old_webhook_events_go_with_their_attempts_unless_one_is_still_open(
    pool: AsyncConnectionPool, conn: Conn
) -> None:
    [(endpoint,)] = conn.execute(
        "INSERT INTO webhook_endpoints (url, events, allow_private) "
        "VALUES ('http://127.0.0.1:9/hook', '{task.completed}', true) RETURNING id").fetchall()
    # Three 40-day-old events (one delivered on its second attempt, one given up, one
    # still being retried) and one from today.
    conn.execute("""
        INSERT INTO webhook_events (org_id, event_type, payload, created_at)
        SELECT runner_default_org_id(), 'task.completed', jsonb_build_object('n', n),
               now() - make_interval(days => CASE WHEN n = 4 THEN 0 ELSE 40 END)
        FROM generate_series(1, 4) n""")
    conn.execute("""
        INSERT INTO webhook_deliveries (event_id, endpoint_id, event_type, webhook_id,
                                        attempt, status)
        SELECT e.id, %s, e.event_type, e.webhook_id, a.attempt, a.status
        FROM webhook_events e
        JOIN (VALUES (1, 1, 'failed'), (1, 2, 'succeeded'), (2, 1, 'gave_up'),
                     (3, 1, 'failed'), (3, 2, 'pending'), (4, 1, 'succeeded'))
             AS a (n, attempt, status) ON (e.payload ->> 'n')::int = a.n""", (endpoint,))
    async with pool.connection() as c:
        dry = await prune(c, _policy(retention_days=30), dry_run=True)
        report = await prune_locked(c, _policy(retention_days=30))
    assert (report.removed["webhook_events"], report.removed["webhook_deliveries"]) == (2, 3)
    assert (dry.removed["webhook_events"], dry.removed["webhook_deliveries"]) == (2, 3)
    left = conn.execute("SELECT (e.payload ->> 'n')::int, count(d.id) FROM webhook_events e "
                        "LEFT JOIN webhook_deliveries d ON d.event_id = e.id "
                        "GROUP BY 1 ORDER BY 1").fetchall()
    assert left == [(3, 2), (4, 1)]


async def test_zero_days_keeps_everything(pool: AsyncConnectionPool, conn: Conn) -> None:
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop')")
    make_history(conn, agent="x", count=10, status="completed", age="400 days")
    async with pool.connection() as c:
        report = await prune(c, _policy(retention_days=0, failed_retention_days=0))
    assert report.total == 0
    assert conn.execute("SELECT count(*) FROM agent_tasks").fetchone() == (10,)


async def test_counters_follow_every_kind_of_change(pool: AsyncConnectionPool, conn: Conn) -> None:
    conn.execute("INSERT INTO ai_agents (name, agent_type) VALUES ('x', 'noop'), ('y', 'noop')")
    done = make_history(conn, agent="x", count=30, status="completed", age="1 day")
    failed = make_history(conn, agent="y", count=10, status="failed", age="1 day", attempts=3)
    stats_match_the_tables(conn)
    conn.execute("SELECT retry_agent_task(%s)", (failed[0],))
    conn.execute("SELECT cancel_agent_task(%s)", (failed[0],))
    conn.execute("UPDATE agent_tasks SET status = 'completed' WHERE id = %s", (failed[1],))
    conn.execute("UPDATE agent_executions SET duration_ms = 500, status = 'timeout' "
                 "WHERE task_id = %s", (failed[2],))
    conn.execute("DELETE FROM agent_tasks WHERE id = ANY(%s::uuid[])", (done[:7],))
    stats_match_the_tables(conn)
    with conn.transaction():  # a rolled-back change counts nothing
        conn.execute("DELETE FROM agent_tasks WHERE id = ANY(%s::uuid[])", (done[7:],))
        raise psycopg.Rollback()
    stats_match_the_tables(conn)
    conn.execute("SELECT runner_rebuild_counters()")
    stats_match_the_tables(conn)
    conn.execute("TRUNCATE agent_tasks, agent_executions, agent_task_logs, llm_calls, "
                 "stream_insights, cron_fires, workflow_run_steps CASCADE")
    stats_match_the_tables(conn)


async def test_snapshot_statements_are_bounded(pool: AsyncConnectionPool) -> None:
    """The timeout is SET LOCAL in a transaction: it applies to every statement of the
    transaction, not only to the implicit transaction of the set_config itself."""
    async with pool.connection() as c:
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            async with bounded(c, statement_timeout=0.1):
                await c.execute("SELECT 1")
                await c.execute("SELECT pg_sleep(2)")
        assert time.monotonic() - started < 1.5
        # ... and nothing after the transaction.
        await c.execute("SELECT pg_sleep(0.2)")


def test_prune_settings() -> None:
    settings = test_settings()
    assert (settings.retention_days, settings.failed_retention_days,
            settings.ledger_retention_days, settings.prune_interval) == (30, 90, 0, 600)
    policy = RetentionPolicy.from_settings(test_settings(RUNNER_RETENTION_DAYS=7,
                                                        RUNNER_FAILED_RETENTION_DAYS=0))
    assert policy.days_for("completed") == 7 and policy.days_for("failed") == 0
    assert policy.job_days == 7
    assert RetentionPolicy(retention_days=0, failed_retention_days=0).job_days == 0


def test_cutoffs_use_the_database_clock(db_url: str, conn: Conn) -> None:
    report = _prune_json(db_url, "--dry-run")
    cutoff = dt.datetime.fromisoformat(report["cutoffs"]["completed_tasks"])
    now = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    assert abs((now - cutoff) - dt.timedelta(days=30)) < dt.timedelta(minutes=1)
    assert report["cutoffs"]["llm_calls"] is None


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_running_daemons_prune_by_themselves_one_at_a_time(
    db_url: str, conn: Conn, history: dict[str, Any], tmp_path: Path,
) -> None:


    def old_completed_left() -> int:
        row = conn.execute("SELECT count(*) FROM agent_tasks WHERE id = ANY(%s::uuid[])",
                           (history["old_completed"],)).fetchone()
        return int(row[0]) if row else -1

    with daemons(db_url, tmp_path, count=2, RUNNER_PRUNE_INTERVAL="2",
                 RUNNER_LOG_LEVEL="DEBUG") as started:
        wait_until(lambda: old_completed_left() == 0, timeout=120,
                   message="the daemons pruned the expired completed tasks")
        wait_until(lambda: all("prune_finished" in d.log_text() or "prune_skipped"
                               in d.log_text() for d in started), timeout=30,
                   message="both daemons tried to prune")
        logs = [d.log_text() for d in started]
    # Both daemons tried; whoever held the lock pruned, the other skipped meanwhile.
    assert sum("prune_finished" in log for log in logs) >= 1
    kept = conn.execute(
        "SELECT count(*) FROM agent_tasks WHERE id = ANY(%s::uuid[])",
        (history["old_failed"] + history["recent_completed"] + history["recent_failed"]
         + history["running_step"],)).fetchone()
    assert kept == (len(history["old_failed"]) + len(history["recent_completed"])
                    + len(history["recent_failed"]) + 1,)
    assert conn.execute("SELECT count(*) FROM stream_items").fetchone() == (1,)
    assert conn.execute("SELECT count(*) FROM companies").fetchone() == (1,)
