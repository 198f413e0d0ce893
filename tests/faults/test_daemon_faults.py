"""Faults of the daemons and of the people running them: kill -9 while draining, a
cancel followed by the death of its daemon, a cancel racing a finish, and the seed's
troubleshooting advice (``UPDATE agent_tasks SET status = 'pending'``).

These need no server of their own: they run on the shared test database. Each ends
with every task completed exactly once (or cancelled where cancelled), nothing pending
or processing, and the surviving daemons still running.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from runner.outcomes import Outcome
from tests.faults.conftest import assert_all_completed_once, counts, enqueue_noops
from tests.harness import (
    DaemonProcess,
    daemons,
    query,
    run_task_inline,
    task_state,
    wait_for_daemons,
    wait_until,
)

pytestmark = pytest.mark.slow

FAST_RESCUE = {"RUNNER_HEARTBEAT_INTERVAL": "0.5", "RUNNER_RESCUE_AFTER": "2",
               "RUNNER_CONCURRENCY": "4"}


@pytest.mark.timeout(300)
def test_kill_9_of_one_of_three_daemons_every_few_seconds_loses_nothing(
    db_url: str, tmp_path: Path,
) -> None:
    enqueue_noops(db_url, 300, sleep=0.5)
    # Enough retries that no task runs out of them however often it is rescued.
    query(db_url, "UPDATE agent_tasks SET max_retries = 50 RETURNING 1")
    kills = 0
    with daemons(db_url, tmp_path, count=3, **FAST_RESCUE) as started:
        wait_for_daemons(db_url, 3)
        spare = 0
        deadline = time.monotonic() + 200
        while counts(db_url)["status"].get("completed", 0) < 300:
            assert time.monotonic() < deadline, counts(db_url)
            time.sleep(2.0)
            if counts(db_url)["status"].get("completed", 0) >= 300 or kills >= 6:
                continue
            victim = kills % 3
            started[victim].signal(signal.SIGKILL)
            started[victim].wait(timeout=10)
            started[victim].stop()  # reaped; closes its log
            kills += 1
            spare += 1
            # A new daemon takes the dead one's place (as systemd would restart it).
            started[victim] = DaemonProcess(db_url, tmp_path / f"replacement-{spare}.log",
                                            **FAST_RESCUE)
        survivors = [d for d in started if d.proc.poll() is None]
        assert len(survivors) == 3
    assert kills >= 3
    assert_all_completed_once(db_url, 300)


@pytest.mark.timeout(120)
def test_a_cancel_survives_the_death_of_its_daemon(db_url: str, tmp_path: Path) -> None:
    [task_id] = enqueue_noops(db_url, 1, sleep=60)
    with daemons(db_url, tmp_path / "a", **FAST_RESCUE) as [first]:
        wait_until(lambda: task_state_of(db_url, task_id) == "processing", timeout=30,
                   message="task running")
        # The cancel is requested, then the daemon dies before it can act on it.
        first.signal(signal.SIGSTOP)
        assert query(db_url, "SELECT cancel_agent_task(%s)", (task_id,))[0][0] is True
        first.signal(signal.SIGKILL)
        first.wait(timeout=10)
    with daemons(db_url, tmp_path / "b", **FAST_RESCUE) as [second]:
        wait_until(lambda: task_state_of(db_url, task_id) == "cancelled", timeout=30,
                   message="task cancelled by the rescuer")
        time.sleep(3.0)  # a few rescuer passes: it must not come back
        assert second.proc.poll() is None
    assert task_state_of(db_url, task_id) == "cancelled"
    executions = query(db_url, "SELECT status FROM agent_executions WHERE task_id = %s",
                       (task_id,))
    assert executions == [("rescued",)], executions


@pytest.mark.timeout(120)
async def test_a_cancel_racing_the_finish_never_throws_completed_work_away(
    conn: psycopg.Connection[tuple[object, ...]], pool: AsyncConnectionPool,
) -> None:
    """The attempt completes while the cancellation arrives: whatever the order, the
    task ends in one state, written once, and a completed attempt's work is kept."""
    outcomes = []
    # The agent sleeps 50 ms: the cancellation lands while it runs, just as it ends,
    # or while its end is being written.
    for at in (0.03, 0.045, 0.05, 0.053, 0.056, 0.06, 0.07):
        [task_id] = enqueue_noops(pool.conninfo, 1, sleep=0.05, agent=f"racer-{at}")
        running = asyncio.create_task(run_task_inline(pool, task_id))
        await asyncio.sleep(at)
        conn.execute("SELECT cancel_agent_task(%s)", (task_id,))
        running.cancel()
        outcome = await running
        status = task_state(conn, task_id)[0]
        # (skipped: the cancel came before the claim, and nothing ran)
        assert (outcome, status) in {(Outcome.COMPLETED, "completed"),
                                     (Outcome.CANCELLED, "cancelled"),
                                     (Outcome.SKIPPED, "cancelled")}, (outcome, status)
        executions = conn.execute(
            "SELECT status FROM agent_executions WHERE task_id = %s", (task_id,)).fetchall()
        expected = [] if outcome is Outcome.SKIPPED else [(str(outcome),)]
        assert executions == expected, (outcome, executions)
        outcomes.append(outcome)
    # The schedule spans the whole race: some attempts ran to completion or were
    # cancelled while running.
    assert {Outcome.COMPLETED, Outcome.CANCELLED} & set(outcomes), outcomes


@pytest.mark.timeout(120)
def test_the_seeds_update_to_pending_is_delivered(db_url: str, tmp_path: Path) -> None:
    """seed 004's advice for a stuck or failed task, as written: it runs again."""
    with daemons(db_url, tmp_path, **FAST_RESCUE) as [daemon]:
        wait_for_daemons(db_url, 1)
        [failed] = query(db_url, "INSERT INTO ai_agents (name, agent_type) VALUES "
                                 "('flaky', 'noop') RETURNING id")
        # No retries, set as it is enqueued (the daemon may claim it at once).
        task_id = str(query(
            db_url, "INSERT INTO agent_tasks (agent_id, payload, priority, max_retries) "
                    "SELECT id, '{\"fail_times\": 1}', 5, 0 FROM ai_agents "
                    "WHERE name = 'flaky' RETURNING id")[0][0])
        wait_until(lambda: task_state_of(db_url, task_id) == "failed", timeout=30,
                   message="task failed")
        query(db_url, "UPDATE agent_tasks SET status = 'pending' WHERE id = %s RETURNING 1",
              (task_id,))
        wait_until(lambda: task_state_of(db_url, task_id) == "completed", timeout=30,
                   message="the hand-set pending task delivered")
        assert daemon.proc.poll() is None
        assert failed
    attempts = query(db_url, "SELECT attempt, status FROM agent_executions WHERE task_id = %s "
                             "ORDER BY attempt", (task_id,))
    assert attempts == [(1, "failed"), (2, "completed")]


def task_state_of(db_url: str, task_id: str) -> str:
    return str(query(db_url, "SELECT status FROM agent_tasks WHERE id = %s", (task_id,))[0][0])
