"""Acceptance: ``agent-runner run`` as a real subprocess, driven through SQL and the CLI."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.harness import REPO, daemon_env, daemons, query, wait_for_daemons, wait_until

pytestmark = pytest.mark.slow


def _noop_agent(db_url: str, name: str = "n") -> None:
    query(db_url, "INSERT INTO ai_agents (name, agent_type) VALUES (%s, 'noop') RETURNING id",
          (name,))


def _enqueue(db_url: str, payload: dict[str, Any] | None = None, priority: int = 5) -> str:
    return str(query(db_url, "SELECT enqueue_agent_task('n', %s::jsonb, %s)",
                     (json.dumps(payload or {}), priority))[0][0])


def _status(db_url: str, task_id: str) -> str:
    return str(query(db_url, "SELECT status FROM agent_tasks WHERE id = %s", (task_id,))[0][0])


def _cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args], cwd=REPO, env=daemon_env(db_url),
        capture_output=True, text=True, timeout=60,
    )


def test_refuses_a_database_whose_schema_is_behind(empty_db_url: str) -> None:
    result = _cli(empty_db_url, "run")
    assert result.returncode == 1
    assert "run `agent-runner migrate` first" in result.stderr


def test_higher_priority_runs_first(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url)
    low = [_enqueue(db_url, priority=1) for _ in range(5)]
    high = [_enqueue(db_url, priority=10) for _ in range(5)]
    with daemons(db_url, tmp_path, RUNNER_CONCURRENCY="1"):
        wait_until(lambda: query(db_url, "SELECT count(*) FROM agent_tasks "
                                         "WHERE status = 'completed'")[0][0] == 10,
                   message="all ten tasks completed")
    order = [str(row[0]) for row in query(
        db_url, "SELECT task_id FROM agent_executions ORDER BY started_at")]
    assert set(order[:5]) == set(high)
    assert set(order[5:]) == set(low)
    # FIFO within a priority
    assert order[:5] == high and order[5:] == low


def test_retries_with_growing_gaps_then_completes(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url)
    task_id = _enqueue(db_url, {"fail_times": 2})
    with daemons(db_url, tmp_path, RUNNER_RETRY_BASE_DELAY="1", RUNNER_POLL_INTERVAL="0.2"):
        wait_until(lambda: _status(db_url, task_id) == "completed", message="completion")
    assert query(db_url, "SELECT retry_count FROM agent_tasks")[0][0] == 2
    rows = query(db_url, "SELECT status, started_at FROM agent_executions "
                         "WHERE task_id = %s ORDER BY attempt", (task_id,))
    assert [row[0] for row in rows] == ["failed", "failed", "completed"]
    gaps = [(b[1] - a[1]).total_seconds() for a, b in itertools.pairwise(rows)]
    assert gaps[0] < gaps[1], gaps
    assert 0.7 <= gaps[0] <= 2.0, gaps


def test_gives_up_after_max_retries(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url)
    task_id = _enqueue(db_url, {"fail_times": 10})
    with daemons(db_url, tmp_path, RUNNER_RETRY_BASE_DELAY="0.1", RUNNER_POLL_INTERVAL="0.2"):
        wait_until(lambda: _status(db_url, task_id) == "failed", message="failure")
    retry_count, error = query(db_url, "SELECT retry_count, error_message FROM agent_tasks")[0]
    assert retry_count == 3
    assert "planned failure 4 of 10" in error
    assert query(db_url, "SELECT count(*) FROM agent_executions")[0][0] == 4


def test_two_daemons_drain_2000_tasks_exactly_once(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url)
    query(db_url, "SELECT enqueue_agent_task('n') FROM generate_series(1, 2000)")
    with daemons(db_url, tmp_path, count=2, RUNNER_CONCURRENCY="4") as started:
        wait_until(lambda: query(db_url, "SELECT count(*) FROM agent_tasks "
                                         "WHERE status = 'completed'")[0][0] == 2000,
                   timeout=100, interval=0.5, message="2000 completions")
        assert all(d.proc.poll() is None for d in started)
    assert query(db_url, "SELECT count(*), count(DISTINCT task_id) FROM agent_executions "
                         "WHERE status = 'completed'")[0] == (2000, 2000)
    assert query(db_url, "SELECT count(*) FROM agent_executions "
                         "WHERE status <> 'completed'")[0][0] == 0
    # Both daemons did part of the work.
    assert query(db_url, "SELECT count(DISTINCT daemon_id) FROM agent_executions")[0][0] == 2


def test_kill_9_mid_task_is_rescued_by_another_daemon(db_url: str, tmp_path: Path) -> None:
    """Default heartbeat and rescue settings: the task completes within 60 s of the kill."""
    _noop_agent(db_url)
    task_id = _enqueue(db_url, {"sleep_seconds": 10})
    defaults = {"RUNNER_HEARTBEAT_INTERVAL": "5", "RUNNER_RESCUE_AFTER": "20"}
    with daemons(db_url, tmp_path, **defaults) as (first,):
        wait_until(lambda: _status(db_url, task_id) == "processing", message="processing")
        first.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        first.wait(10)
        with daemons(db_url, tmp_path / "second", **defaults):
            wait_until(lambda: _status(db_url, task_id) == "completed", timeout=60,
                       interval=0.2, message="completion after kill -9")
            elapsed = time.monotonic() - killed_at
    assert elapsed < 60
    statuses = query(db_url, "SELECT status FROM agent_executions ORDER BY attempt")
    assert statuses == [("rescued",), ("completed",)]


def test_stalled_worker_cannot_commit_after_rescue(db_url: str, tmp_path: Path) -> None:
    """Fencing: a daemon frozen mid-task (SIGSTOP) is rescued; when it resumes, its
    attempt finishes but writes nothing."""
    _noop_agent(db_url)
    task_id = _enqueue(db_url, {"sleep_seconds": 4})
    fast = {"RUNNER_HEARTBEAT_INTERVAL": "0.5", "RUNNER_RESCUE_AFTER": "2"}
    with daemons(db_url, tmp_path, **fast) as (stalled,):
        wait_until(lambda: _status(db_url, task_id) == "processing", message="processing")
        stalled.signal(signal.SIGSTOP)
        with daemons(db_url, tmp_path / "b", **fast):
            wait_until(lambda: _status(db_url, task_id) == "completed", timeout=40,
                       message="completion by the second daemon")
            stalled.signal(signal.SIGCONT)
            # The resumed attempt's sleep ends and it tries to finish: fenced.
            wait_until(lambda: "attempt_fenced" in stalled.log_text(), timeout=20,
                       message="the stale attempt to be fenced")
    rows = query(db_url, "SELECT status, output_data FROM agent_executions ORDER BY attempt")
    assert rows == [("rescued", None), ("completed", {"slept": 4.0, "attempt": 2})]
    assert query(db_url, "SELECT status, output FROM agent_tasks")[0] == (
        "completed", {"slept": 4.0, "attempt": 2})


def test_sigterm_hands_back_then_next_daemon_completes(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url)
    task_id = _enqueue(db_url, {"sleep_seconds": 8})
    grace = 2.0
    with daemons(db_url, tmp_path, RUNNER_SHUTDOWN_GRACE=str(grace)) as (first,):
        wait_until(lambda: _status(db_url, task_id) == "processing", message="processing")
        first.signal(signal.SIGTERM)
        sent = time.monotonic()
        assert first.wait(timeout=grace + 10) == 0
        assert time.monotonic() - sent < grace + 5
    assert query(db_url, "SELECT status, retry_count FROM agent_tasks")[0] == ("pending", 0)
    assert query(db_url, "SELECT status FROM agent_executions")[0][0] == "interrupted"
    with daemons(db_url, tmp_path / "next"):
        wait_until(lambda: _status(db_url, task_id) == "completed", timeout=30,
                   message="completion by the next daemon")
    assert query(db_url, "SELECT retry_count FROM agent_tasks")[0][0] == 0


def test_cancel_running_task_within_5_seconds(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url)
    task_id = _enqueue(db_url, {"sleep_seconds": 60})
    with daemons(db_url, tmp_path, RUNNER_POLL_INTERVAL="5"):
        wait_until(lambda: _status(db_url, task_id) == "processing", message="processing")
        result = _cli(db_url, "cancel", task_id)
        assert result.returncode == 0, result.stderr
        asked = time.monotonic()
        wait_until(lambda: _status(db_url, task_id) == "cancelled", timeout=5,
                   message="cancelled within 5 s")
        assert time.monotonic() - asked < 5
    assert query(db_url, "SELECT status FROM agent_executions")[0][0] == "cancelled"


def test_bad_input_is_refused_and_the_daemon_keeps_running(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url)
    with daemons(db_url, tmp_path) as (daemon,):
        wait_for_daemons(db_url, 1)
        cases = [
            (["enqueue", "nope"], 1, "unknown agent: nope"),
            (["enqueue", "n", "--priority", "0"], 2, "priority must be between 1 and 10"),
            (["enqueue", "n", "--priority", "11"], 2, "priority must be between 1 and 10"),
            (["enqueue", "n", "--payload", "{not json"], 2, "--payload is not valid JSON"),
            (["enqueue", "n", "--payload", '{"sleep_seconds": "x"}'], 1,
             "invalid payload: sleep_seconds"),
            (["enqueue", "n'; DROP TABLE agent_tasks; --"], 1, "unknown agent"),
        ]
        for args, code, message in cases:
            result = _cli(db_url, *args)
            assert result.returncode == code, (args, result.stderr)
            assert message in result.stderr, (args, result.stderr)
        assert query(db_url, "SELECT count(*) FROM agent_tasks")[0][0] == 0
        # A task the schema refuses, enqueued through SQL, fails permanently at once.
        task_id = _enqueue(db_url, {"sleep_seconds": "x"})
        wait_until(lambda: _status(db_url, task_id) == "failed", message="permanent failure")
        ok = _cli(db_url, "enqueue", "n", "--payload", '{"sleep_seconds": 0}')
        assert ok.returncode == 0
        wait_until(lambda: _status(db_url, ok.stdout.strip()) == "completed", message="ok task")
        assert daemon.proc.poll() is None
    assert query(db_url, "SELECT retry_count FROM agent_tasks WHERE id = %s", (task_id,))[0][0] == 0


def test_systemd_notifications(db_url: str, tmp_path: Path) -> None:
    """READY=1 after start-up, WATCHDOG=1 while healthy, STOPPING=1 on SIGTERM."""
    import socket

    path = tmp_path / "notify.sock"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(0.2)
    messages: list[str] = []

    def received(state: str) -> bool:
        try:
            while True:
                messages.append(receiver.recv(4096).decode())
        except TimeoutError:
            pass
        return any(state in message.split("\n") for message in messages)

    try:
        with daemons(db_url, tmp_path / "d", NOTIFY_SOCKET=str(path),
                     WATCHDOG_USEC="2000000") as (daemon,):
            wait_until(lambda: received("READY=1"), message="READY=1")
            wait_until(lambda: received("WATCHDOG=1"), message="WATCHDOG=1")
            daemon.signal(signal.SIGTERM)
            wait_until(lambda: received("STOPPING=1"), message="STOPPING=1")
            assert daemon.wait(timeout=15) == 0
    finally:
        receiver.close()
