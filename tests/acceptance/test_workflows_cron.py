"""Acceptance: workflows and cron with ``agent-runner run`` as real subprocesses
(every daemon runs the cron scheduler as one of its side tasks)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import daemons, query, wait_for_daemons, wait_until

pytestmark = pytest.mark.slow


def _chain(db_url: str, *, parent_payload: dict[str, Any] | None = None) -> str:
    """discovery -> enrichment -> scoring (noop agents) assigned to one stream."""
    for name, payload in [("discovery", parent_payload), ("enrichment", None), ("scoring", None)]:
        query(db_url, "INSERT INTO ai_agents (name, agent_type, configuration) "
                      "VALUES (%s, 'noop', %s) RETURNING id",
              (name, json.dumps({"payload": payload} if payload else {})))
    stream_id = str(query(db_url, "INSERT INTO streams (name) VALUES ('uk fintech') RETURNING id"
                          )[0][0])
    query(db_url, """
        INSERT INTO stream_agent_assignments (stream_id, agent_id, execution_order,
                                              depends_on_agent_ids)
        SELECT %s, a.id, v.ord, coalesce((SELECT array_agg(d.id) FROM ai_agents d
                                          WHERE d.name = v.dep), '{}')
        FROM (VALUES ('discovery', 1, NULL), ('enrichment', 2, 'discovery'),
                     ('scoring', 3, 'enrichment')) v(name, ord, dep)
        JOIN ai_agents a ON a.name = v.name
        RETURNING id""", (stream_id,))
    return stream_id


def _run_status(db_url: str, run_id: str) -> str:
    return str(query(db_url, "SELECT status FROM workflow_runs WHERE id = %s", (run_id,))[0][0])


def _executions(db_url: str, run_id: str) -> list[tuple[Any, ...]]:
    return query(db_url, """
        SELECT a.name, e.status, e.started_at, e.completed_at
        FROM agent_executions e JOIN agent_tasks t ON t.id = e.task_id
        JOIN ai_agents a ON a.id = t.agent_id
        WHERE t.workflow_run_id = %s ORDER BY e.started_at""", (run_id,))


@pytest.mark.parametrize("count", [1, 3])
def test_one_trigger_completes_the_chain(db_url: str, tmp_path: Path, count: int) -> None:
    stream_id = _chain(db_url)
    with daemons(db_url, tmp_path, count=count) as started:
        wait_for_daemons(db_url, count)
        run_id = str(query(db_url, "SELECT trigger_stream_workflow(%s)", (stream_id,))[0][0])
        wait_until(lambda: _run_status(db_url, run_id) == "completed", timeout=60,
                   message="the run completed")
        assert all(d.proc.poll() is None for d in started)
    rows = _executions(db_url, run_id)
    assert [(name, status) for name, status, _, _ in rows] == [
        ("discovery", "completed"), ("enrichment", "completed"), ("scoring", "completed")]
    # each step started only after its parent had finished
    for (_, _, _, parent_done), (_, _, child_started, _) in itertools.pairwise(rows):
        assert child_started >= parent_done


def test_kill_9_between_a_parents_completion_and_its_childs_start_loses_nothing(
    db_url: str, tmp_path: Path,
) -> None:
    """The child is enqueued in the transaction that completes its parent: at no moment
    is the parent completed without the child existing. Claiming is paused while the
    parent runs, so the child cannot start before the kill; a second daemon runs it,
    once."""
    stream_id = _chain(db_url, parent_payload={"sleep_seconds": 3})
    snapshot = """
        SELECT (SELECT t.status FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id
                WHERE t.workflow_run_id = %(run)s AND a.name = 'discovery'),
               (SELECT count(*) FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id
                WHERE t.workflow_run_id = %(run)s AND a.name = 'enrichment')"""
    with daemons(db_url, tmp_path) as (first,):
        wait_for_daemons(db_url, 1)
        run_id = str(query(db_url, "SELECT trigger_stream_workflow(%s)", (stream_id,))[0][0])
        wait_until(lambda: query(db_url, snapshot, {"run": run_id})[0][0] == "processing",
                   message="the parent running")
        query(db_url, "UPDATE runner_control SET paused = true RETURNING paused")
        wait_until(lambda: "claiming_paused" in first.log_text(), message="claiming paused")
        seen: list[tuple[Any, ...]] = []

        def parent_completed() -> bool:
            row = query(db_url, snapshot, {"run": run_id})[0]
            seen.append(row)
            return row[0] == "completed"

        wait_until(parent_completed, timeout=30, interval=0.01, message="the parent completed")
        first.signal(signal.SIGKILL)
        first.wait(10)
    assert seen and all(status != "completed" or children == 1 for status, children in seen)
    assert query(db_url, "SELECT t.status, count(e.id) FROM agent_tasks t "
                         "LEFT JOIN agent_executions e ON e.task_id = t.id "
                         "JOIN ai_agents a ON a.id = t.agent_id "
                         "WHERE a.name = 'enrichment' GROUP BY t.status") == [("pending", 0)]

    with daemons(db_url, tmp_path / "second"):
        wait_for_daemons(db_url, 1)
        query(db_url, "UPDATE runner_control SET paused = false RETURNING paused")
        wait_until(lambda: _run_status(db_url, run_id) == "completed", timeout=60,
                   message="the run completed on the second daemon")
    rows = _executions(db_url, run_id)
    assert [(name, status) for name, status, _, _ in rows] == [
        ("discovery", "completed"), ("enrichment", "completed"), ("scoring", "completed")]


def _fires(db_url: str, since: dt.datetime, until: dt.datetime) -> list[tuple[Any, ...]]:
    return query(db_url, """
        SELECT f.fire_time, f.task_id, f.daemon_id FROM cron_fires f
        WHERE f.fire_time >= %s AND f.fire_time < %s ORDER BY f.fire_time""", (since, until))


def _db_now(db_url: str) -> dt.datetime:
    now: dt.datetime = query(db_url, "SELECT now()")[0][0]
    return now


def test_three_daemons_fire_every_two_seconds_once_per_fire_time(
    db_url: str, tmp_path: Path,
) -> None:
    with daemons(db_url, tmp_path, count=3) as started:
        wait_for_daemons(db_url, 3)
        query(db_url, "INSERT INTO ai_agents (name, agent_type, schedule_cron) "
                      "VALUES ('ticker', 'noop', '*/2 * * * * *') RETURNING id")
        # start the window on a fire boundary, once every daemon has had time to load it
        time.sleep(2)
        now = _db_now(db_url)
        start = now.replace(microsecond=0) + dt.timedelta(seconds=2 + now.second % 2)
        end = start + dt.timedelta(seconds=20)
        wait_until(lambda: _db_now(db_url) > end + dt.timedelta(seconds=2), timeout=40,
                   interval=0.5, message="twenty seconds of schedule")
        assert all(d.proc.poll() is None for d in started)
    fires = _fires(db_url, start, end)
    assert 9 <= len(fires) <= 11, fires
    times = [row[0] for row in fires]
    assert len(set(times)) == len(times)
    assert all(t.second % 2 == 0 and t.microsecond == 0 for t in times)
    # one task per fire, and no scheduled task without a fire
    task_ids = [row[1] for row in fires]
    assert None not in task_ids and len(set(task_ids)) == len(task_ids)
    assert query(db_url, "SELECT count(*) FROM agent_tasks WHERE trigger = 'scheduled'"
                 )[0][0] == query(db_url, "SELECT count(*) FROM cron_fires")[0][0]


def test_an_update_to_the_expression_takes_effect_within_five_seconds(
    db_url: str, tmp_path: Path,
) -> None:
    query(db_url, "INSERT INTO ai_agents (name, agent_type, schedule_cron) "
                  "VALUES ('ticker', 'noop', '*/2 * * * * *') RETURNING id")
    with daemons(db_url, tmp_path, count=3):
        wait_for_daemons(db_url, 3)
        wait_until(lambda: query(db_url, "SELECT count(*) FROM cron_fires")[0][0] >= 2,
                   timeout=30, message="the first fires")
        # odd seconds from now on: no fire time of the old schedule can match
        changed_at = query(db_url, "UPDATE ai_agents SET schedule_cron = '1-59/2 * * * * *' "
                                   "RETURNING now()")[0][0]
        wait_until(lambda: query(db_url, "SELECT count(*) FROM cron_fires WHERE fire_time > %s",
                                 (changed_at,))[0][0] >= 3,
                   timeout=30, message="fires of the new schedule")
    after = query(db_url, "SELECT fire_time, created_at FROM cron_fires WHERE fire_time > %s "
                          "ORDER BY fire_time", (changed_at,))
    assert all(fire.second % 2 == 1 for fire, _ in after), after
    first_new = after[0][1]
    assert (first_new - changed_at).total_seconds() < 5
