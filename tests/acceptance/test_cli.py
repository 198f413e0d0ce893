"""Acceptance: every ``agent-runner`` command as a real subprocess, human output and
``--json``, and the exit codes of CONTRACT.md (0 success, 1 failed, 2 usage)."""

from __future__ import annotations

import datetime as dt
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.harness import REPO, daemon_env, daemons, query, wait_for_daemons, wait_until

pytestmark = pytest.mark.slow

UNKNOWN_TASK = "00000000-0000-4000-8000-000000000000"


def _cli(db_url: str | None, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI; ``db_url=None`` runs it with no DATABASE_URL at all."""
    environment = daemon_env(db_url or "", **env)
    if db_url is None:
        environment.pop("DATABASE_URL")
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args], cwd=REPO, env=environment,
        capture_output=True, text=True, timeout=60,
    )


def _ok(db_url: str, *args: str) -> str:
    result = _cli(db_url, *args)
    assert result.returncode == 0, (result.stdout, result.stderr)
    return result.stdout


def _json(db_url: str, *args: str) -> Any:
    return json.loads(_ok(db_url, *args, "--json"))


def _noop_agent(db_url: str, name: str = "n", **columns: Any) -> str:
    names = ", ".join(["name", "agent_type", *columns])
    marks = ", ".join(["%s"] * (2 + len(columns)))
    return str(query(db_url, f"INSERT INTO ai_agents ({names}) VALUES ({marks}) RETURNING id",
                     (name, "noop", *columns.values()))[0][0])


def _enqueue(db_url: str, payload: dict[str, Any] | None = None, agent: str = "n") -> str:
    return str(query(db_url, "SELECT enqueue_agent_task(%s, %s::jsonb)",
                     (agent, json.dumps(payload or {})))[0][0])


def _status(db_url: str, task_id: str) -> str:
    return str(query(db_url, "SELECT status FROM agent_tasks WHERE id = %s", (task_id,))[0][0])


def _log(db_url: str, task_id: str, message: str, log_type: str = "info") -> None:
    query(db_url, "INSERT INTO agent_task_logs (task_id, log_type, message) "
                  "VALUES (%s, %s, %s) RETURNING id", (task_id, log_type, message))


# -- usage errors (exit 2) -------------------------------------------------------------

CONTRACT_COMMANDS = ["migrate", "run", "demo", "status", "enqueue", "tasks", "show", "retry",
                     "cancel", "logs", "agents", "schedules", "pause", "resume",
                     "import-companies"]


def test_help_names_every_contract_command() -> None:
    result = _cli(None, "--help")
    assert result.returncode == 0
    for command in CONTRACT_COMMANDS:
        assert command in result.stdout, command


@pytest.mark.parametrize("args", [
    ["migrate"], ["status"], ["status", "--json"], ["enqueue", "n"], ["tasks"],
    ["show", UNKNOWN_TASK], ["retry", UNKNOWN_TASK], ["cancel", UNKNOWN_TASK], ["logs"],
    ["agents"], ["agents", "show", "n"], ["agents", "enable", "n"], ["schedules"],
    ["pause"], ["resume"], ["import-companies", "companies.csv"],
])
def test_without_database_url_is_a_usage_error(args: list[str]) -> None:
    result = _cli(None, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "DATABASE_URL is not set" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize(("args", "complaint"), [
    (["show", "not-a-uuid"], "not a task id"),
    (["retry", "12345"], "not a task id"),
    (["cancel", "zzz"], "not a task id"),
    (["logs", "nope"], "not a task id"),
    (["enqueue", "n", "--payload", "{not json"], "not valid JSON"),
    (["enqueue", "n", "--payload", "[1, 2]"], "must be a JSON object"),
    (["enqueue", "n", "--priority", "11"], "between 1 and 10"),
    (["enqueue", "n", "--priority", "0"], "between 1 and 10"),
    (["enqueue", "n", "--priority", "high"], "integer 1-10"),
    (["enqueue", "n", "--at", "tomorrow"], "ISO 8601"),
    (["enqueue"], "required"),
    (["tasks", "--status", "done"], "invalid choice"),
    (["tasks", "--limit", "0"], "positive integer"),
    (["agents", "show"], "required"),
    (["agents", "frobnicate"], "invalid choice"),
    (["schedules", "delete"], "invalid choice"),
    (["no-such-command"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments_are_usage_errors(db_url: str, args: list[str], complaint: str) -> None:
    result = _cli(db_url, *args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert complaint in result.stderr
    assert query(db_url, "SELECT count(*) FROM agent_tasks")[0][0] == 0


def test_a_bad_setting_is_a_usage_error(db_url: str) -> None:
    result = _cli(db_url, "status", RUNNER_CONCURRENCY="lots")
    assert result.returncode == 2
    assert "RUNNER_CONCURRENCY" in result.stderr


def test_an_unreachable_database_fails(db_url: str) -> None:
    result = _cli("postgresql://nobody@127.0.0.1:1/nothing", "status")
    assert result.returncode == 1
    assert "cannot connect to the database" in result.stderr


# -- migrate ----------------------------------------------------------------------------


def test_migrate_applies_then_finds_nothing_to_do(empty_db_url: str) -> None:
    first = _ok(empty_db_url, "migrate")
    assert "applied 0001_core.sql" in first
    assert _ok(empty_db_url, "migrate").strip() == "schema is up to date"
    assert query(empty_db_url, "SELECT count(*) FROM agent_task_stats")[0][0] == 1


def test_an_edited_landed_migration_is_refused_at_start(db_url: str) -> None:
    # What a database reports when sql/0003 was edited after it was applied there.
    query(db_url, "UPDATE runner_migrations SET checksum = 'edited' WHERE version = 3 "
                  "RETURNING 1")
    for command in (["migrate"], ["status"], ["run", "--metrics-addr", "127.0.0.1:0"]):
        result = _cli(db_url, *command)
        assert result.returncode == 1, (command, result.stdout, result.stderr)
        assert "migration 0003_stream_items.sql differs from the one this database applied" \
            in result.stderr, (command, result.stderr)
        assert "Traceback" not in result.stderr
    assert query(db_url, "SELECT count(*) FROM runner_daemons")[0][0] == 0


def test_migrate_registers_the_installed_agent_types(db_url: str) -> None:
    query(db_url, "UPDATE agent_types SET seen_at = now() - interval '1 day', "
                  "module = 'stale:Stale' RETURNING 1")
    result = _cli(db_url, "migrate")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "schema is up to date"
    assert "agent types: enrichment_agent, llm_agent, noop, opportunity_bot, scoring_agent, " \
        "scout_agent" in result.stderr
    rows = query(db_url, "SELECT agent_type, module, distribution LIKE 'agent-runner %', "
                         "seen_at > now() - interval '60 seconds' FROM agent_types ORDER BY 1")
    assert ("noop", "agents.noop:NoopAgent", True, True) in rows
    assert len(rows) == 6 and all(row[2] and row[3] for row in rows)


# -- enqueue, tasks, show, retry, cancel ------------------------------------------------


def test_enqueue_prints_the_new_task_id(db_url: str) -> None:
    _noop_agent(db_url)
    out = _ok(db_url, "enqueue", "n", "--payload", '{"sleep_seconds": 0.5}',
              "--priority", "9", "--at", "2031-01-02T03:04:05")
    task_id = str(uuid.UUID(out.strip()))
    priority, payload, at = query(
        db_url, "SELECT priority, payload, scheduled_for AT TIME ZONE 'UTC' FROM agent_tasks "
                "WHERE id = %s", (task_id,))[0]
    assert (priority, payload) == (9, {"sleep_seconds": 0.5})
    assert at.isoformat() == "2031-01-02T03:04:05"


@pytest.mark.parametrize(("args", "complaint"), [
    (["enqueue", "nobody"], "unknown agent: nobody"),
    (["enqueue", "n", "--payload", '{"sleep_seconds": "soon"}'], "sleep_seconds"),
    (["enqueue", "n", "--payload", '{"unexpected": 1}'], "unexpected"),
])
def test_enqueue_refuses_before_writing(db_url: str, args: list[str], complaint: str) -> None:
    _noop_agent(db_url)
    result = _cli(db_url, *args)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert complaint in result.stderr
    assert query(db_url, "SELECT count(*) FROM agent_tasks")[0][0] == 0


def test_tasks_lists_and_filters(db_url: str) -> None:
    _noop_agent(db_url, "n")
    _noop_agent(db_url, "other")
    first = _enqueue(db_url, agent="n")
    second = _enqueue(db_url, agent="other")
    query(db_url, "SELECT cancel_agent_task(%s)", (second,))

    human = _ok(db_url, "tasks")
    assert "AGENT_NAME" in human and first in human and second in human
    rows = _json(db_url, "tasks")
    assert [row["id"] for row in rows] == [second, first]
    assert {row["status"] for row in rows} == {"pending", "cancelled"}
    assert [r["id"] for r in _json(db_url, "tasks", "--status", "cancelled")] == [second]
    assert [r["id"] for r in _json(db_url, "tasks", "--agent", "n")] == [first]
    assert len(_json(db_url, "tasks", "--limit", "1")) == 1
    assert _json(db_url, "tasks", "--agent", "nobody") == []
    assert "(none)" in _ok(db_url, "tasks", "--agent", "nobody")


def test_cancel_and_retry(db_url: str) -> None:
    _noop_agent(db_url)
    task_id = _enqueue(db_url)
    assert "cancellation requested" in _ok(db_url, "cancel", task_id)
    assert _status(db_url, task_id) == "cancelled"
    again = _cli(db_url, "cancel", task_id)
    assert again.returncode == 1 and "not pending or processing" in again.stderr

    assert "re-queued" in _ok(db_url, "retry", task_id)
    assert _status(db_url, task_id) == "pending"
    again = _cli(db_url, "retry", task_id)
    assert again.returncode == 1 and "not failed or cancelled" in again.stderr

    for command in ("retry", "cancel", "show"):
        result = _cli(db_url, command, UNKNOWN_TASK)
        assert result.returncode == 1, command
        assert UNKNOWN_TASK in result.stderr


def test_show_a_task_with_executions_and_logs(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url)
    task_id = _enqueue(db_url, {"fail_times": 1})
    with daemons(db_url, tmp_path, RUNNER_RETRY_BASE_DELAY="0.1"):
        wait_until(lambda: _status(db_url, task_id) == "completed", message="completion")
    _log(db_url, task_id, "a line the operator wrote")
    # What the executor records for an attempt that called a model (CONTRACT.md).
    query(db_url, "UPDATE agent_executions SET metrics = metrics || "
                  "'{\"llm_calls\": 2, \"input_tokens\": 1200, \"output_tokens\": 300, "
                  "\"cost_usd\": 0.0123}' WHERE task_id = %s AND status = 'completed' "
                  "RETURNING id", (task_id,))

    document = _json(db_url, "show", task_id)
    assert document["task"]["id"] == task_id
    assert document["task"]["status"] == "completed"
    assert document["task"]["output"] == {"slept": 0, "attempt": 2}
    assert [e["status"] for e in document["executions"]] == ["failed", "completed"]
    assert all(isinstance(e["duration_ms"], int) for e in document["executions"])
    failed, completed = document["executions"]
    assert (failed["llm_calls"], failed["cost_usd"]) == (None, None)
    assert (completed["llm_calls"], completed["cost_usd"]) == (2, 0.0123)
    assert completed["metrics"]["input_tokens"] == 1200
    assert "a line the operator wrote" in [line["message"] for line in document["logs"]]
    assert document["workflow"] is None

    human = _ok(db_url, "show", task_id)
    assert "executions:" in human and "logs:" in human
    assert "COST_USD" in human and "0.0123" in human
    assert "a line the operator wrote" in human
    assert "planned failure 1 of 1" in human


def _workflow(db_url: str, names: list[str]) -> tuple[str, str]:
    """A stream whose agents run in a chain, in the order given; returns (stream, run)."""
    stream = str(query(db_url, "INSERT INTO streams (name) VALUES ('chain') RETURNING id")[0][0])
    previous: list[str] = []
    for order, name in enumerate(names, 1):
        agent = _noop_agent(db_url, name)
        query(db_url, "INSERT INTO stream_agent_assignments (stream_id, agent_id, "
                      "execution_order, depends_on_agent_ids) VALUES (%s, %s, %s, %s::uuid[]) "
                      "RETURNING id", (stream, agent, order, previous))
        previous = [agent]
    run = str(query(db_url, "SELECT trigger_stream_workflow(%s, 'manual')", (stream,))[0][0])
    return stream, run


def test_show_a_task_of_a_workflow_run_draws_the_run(db_url: str, tmp_path: Path) -> None:
    _stream, run = _workflow(db_url, ["discover", "enrich", "score"])
    (first,) = query(db_url, "SELECT id::text FROM agent_tasks")[0]

    document = _json(db_url, "show", first)
    workflow = document["workflow"]
    assert workflow["run_id"] == run and workflow["run"]["status"] == "running"
    assert workflow["parents"] == []
    assert [(s["agent_name"], s["status"]) for s in workflow["children"]] == [
        ("enrich", "waiting")]
    assert [s["agent_name"] for s in workflow["steps"]] == ["discover", "enrich", "score"]

    with daemons(db_url, tmp_path):
        wait_until(lambda: query(db_url, "SELECT status FROM workflow_runs")[0][0]
                   == "completed", message="the run completing")
    ids = dict(query(db_url, "SELECT a.name, t.id::text FROM agent_tasks t "
                             "JOIN ai_agents a ON a.id = t.agent_id"))
    workflow = _json(db_url, "show", ids["enrich"])["workflow"]
    assert workflow["run"]["status"] == "completed"
    assert [s["task_id"] for s in workflow["parents"]] == [ids["discover"]]
    assert [s["task_id"] for s in workflow["children"]] == [ids["score"]]
    assert document["task"]["trigger"] == "manual"

    human = _ok(db_url, "show", ids["enrich"])
    lines = human[human.index("workflow run"):].splitlines()
    assert f"workflow run {run} (completed)" in lines[0]
    assert lines[1].lstrip().startswith(f"discover  completed  {ids['discover']}")
    assert lines[2].lstrip().startswith(f"└─ enrich  completed  {ids['enrich']}")
    assert lines[2].endswith("<- this task")
    assert lines[3].lstrip().startswith(f"└─ score  completed  {ids['score']}")
    # Each generation is indented one step further.
    indents = [len(line) - len(line.lstrip(" └─")) for line in lines[1:4]]
    assert indents[0] < indents[1] < indents[2]


# -- status, pause, resume --------------------------------------------------------------


def test_status_shows_daemons_counts_and_recent_tasks(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url)
    done = _enqueue(db_url)
    with daemons(db_url, tmp_path, RUNNER_CONCURRENCY="4") as (daemon,):
        wait_for_daemons(db_url, 1)
        wait_until(lambda: _status(db_url, done) == "completed", message="completion")
        query(db_url, "SELECT cancel_agent_task(enqueue_agent_task('n', '{}', 5, "
                      "now() + interval '1 hour'))")
        document = _json(db_url, "status")
        human = _ok(db_url, "status")
        # A daemon that stops cleanly leaves the list at once: the runner is stopped.
        daemon.signal(signal.SIGTERM)
        assert daemon.wait(15) == 0
        stopped = _json(db_url, "status")
    assert stopped["runner"]["status"] == "stopped" and stopped["daemons"] == []
    assert document["paused"] is False
    runner = document["runner"]
    assert runner["status"] == "running"
    assert (runner["daemons"], runner["max_concurrent_tasks"]) == (1, 4)
    assert runner["polling_interval"] == 500
    (row,) = document["daemons"]
    assert row["pid"] == daemon.pid
    assert row["concurrency"] == 4 and row["in_flight"] == 0
    assert row["poll_interval_seconds"] == 0.5
    assert row["host"] and row["last_heartbeat"]
    stats = document["stats"]
    assert (stats["completed"], stats["cancelled"], stats["total"]) == (1, 1, 2)
    assert {t["status"] for t in document["recent_tasks"]} == {"completed", "cancelled"}

    assert "runner: running" in human
    assert str(daemon.pid) in human
    assert "completed=1" in human and "total=2" in human


def test_pause_holds_new_tasks_until_resume(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url)
    with daemons(db_url, tmp_path) as (daemon,):
        wait_for_daemons(db_url, 1)
        out = _ok(db_url, "pause")
        assert "claiming paused" in out and "1 live daemon" in out
        assert "already paused" in _ok(db_url, "pause")
        assert _json(db_url, "status")["runner"]["status"] == "paused"
        # Daemons apply the switch within 2 s (NOTIFY, with a 2 s poll as fallback).
        time.sleep(2.5)
        task_id = _ok(db_url, "enqueue", "n").strip()
        held_until = time.monotonic() + 3.5
        while time.monotonic() < held_until:
            assert _status(db_url, task_id) == "pending"
            assert daemon.proc.poll() is None
            time.sleep(0.2)

        out = _ok(db_url, "resume")
        assert "claiming resumed" in out
        resumed_at = time.monotonic()
        wait_until(lambda: _status(db_url, task_id) == "completed", timeout=10,
                   message="completion after resume")
        assert time.monotonic() - resumed_at < 5
        assert "already enabled" in _ok(db_url, "resume")


# -- logs -------------------------------------------------------------------------------


def test_logs_prints_existing_lines(db_url: str) -> None:
    _noop_agent(db_url)
    first, second = _enqueue(db_url), _enqueue(db_url)
    _log(db_url, first, "first task says hello")
    _log(db_url, second, "second task says hello", "warning")

    mine = _ok(db_url, "logs", first)
    assert "first task says hello" in mine and "second" not in mine
    everything = _ok(db_url, "logs").splitlines()
    assert len(everything) == 2
    assert "first task says hello" in everything[0]
    assert "warning: second task says hello" in everything[1]
    assert _ok(db_url, "logs", "--limit", "1").splitlines() == everything[1:]

    missing = _cli(db_url, "logs", UNKNOWN_TASK)
    assert missing.returncode == 1 and "no task" in missing.stderr


class _Follower:
    """``agent-runner logs --follow`` as a subprocess, its output read line by line."""

    def __init__(self, db_url: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "logs", "--follow", *args], cwd=REPO,
            env=daemon_env(db_url), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        self._selector = selectors.DefaultSelector()
        self._buffers: dict[Any, str] = {}
        self.output: dict[Any, list[str]] = {}
        for pipe in (self.proc.stdout, self.proc.stderr):
            assert pipe is not None
            os.set_blocking(pipe.fileno(), False)
            self._selector.register(pipe, selectors.EVENT_READ)
            self._buffers[pipe], self.output[pipe] = "", []

    @property
    def lines(self) -> list[str]:
        return self.output[self.proc.stdout]

    def read_until(self, text: str, *, stderr: bool = False, timeout: float = 15.0) -> None:
        lines = self.output[self.proc.stderr if stderr else self.proc.stdout]
        deadline = time.monotonic() + timeout
        while not any(text in line for line in lines):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not printed; got {self.output}"
            assert self.proc.poll() is None, self.output
            for key, _ in self._selector.select(timeout=min(remaining, 0.5)):
                pipe = key.fileobj
                self._buffers[pipe] += pipe.read() or ""  # type: ignore[union-attr]
                *complete, self._buffers[pipe] = self._buffers[pipe].split("\n")
                self.output[pipe].extend(complete)

    def stop(self, signum: int) -> int:
        self.proc.send_signal(signum)
        return self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._selector.close()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def followers() -> Iterator[list[_Follower]]:
    started: list[_Follower] = []
    yield started
    for follower in started:
        follower.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_logs_follow_streams_new_lines_until_signalled(
    db_url: str, followers: list[_Follower], signum: int
) -> None:
    _noop_agent(db_url)
    task_id, other = _enqueue(db_url), _enqueue(db_url)
    _log(db_url, task_id, "written before following")
    follower = _Follower(db_url, task_id)
    followers.append(follower)
    follower.read_until("written before following")

    for n in range(3):
        _log(db_url, task_id, f"streamed line {n}")
    _log(db_url, other, "another task's line")
    follower.read_until("streamed line 2")
    _log(db_url, task_id, "after a pause")
    follower.read_until("after a pause")

    started = time.monotonic()
    assert follower.stop(signum) == 0
    assert time.monotonic() - started < 5
    printed = [line for line in follower.lines if line]
    assert [line.rsplit(": ", 1)[1] for line in printed] == [
        "written before following", "streamed line 0", "streamed line 1", "streamed line 2",
        "after a pause"]


def test_logs_follow_without_a_task_streams_every_task(
    db_url: str, followers: list[_Follower], tmp_path: Path
) -> None:
    _noop_agent(db_url)
    follower = _Follower(db_url)
    followers.append(follower)
    follower.read_until("following new log lines", stderr=True)
    first, second = _enqueue(db_url), _enqueue(db_url)
    _log(db_url, first, "from the first task")
    _log(db_url, second, "from the second task")
    follower.read_until("from the second task")
    assert any("from the first task" in line for line in follower.lines)
    assert follower.stop(signal.SIGTERM) == 0


# -- agents and schedules ---------------------------------------------------------------


def test_agents_list_and_show_with_performance(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url, "n")
    _noop_agent(db_url, "nightly", schedule_cron="0 9 * * *")
    ok, failing = _enqueue(db_url), _enqueue(db_url, {"fail_times": 10})
    query(db_url, "UPDATE agent_tasks SET max_retries = 0 WHERE id = %s RETURNING id", (failing,))
    with daemons(db_url, tmp_path):
        wait_until(lambda: {_status(db_url, ok), _status(db_url, failing)}
                   == {"completed", "failed"}, message="both tasks finished")

    rows = {row["name"]: row for row in _json(db_url, "agents")}
    assert rows == {row["name"]: row for row in _json(db_url, "agents", "list")}
    n, nightly = rows["n"], rows["nightly"]
    assert (n["agent_type"], n["is_active"], n["schedule_cron"]) == ("noop", True, None)
    assert (n["total_executions"], n["successful_executions"], n["failed_executions"]) == (
        2, 1, 1)
    assert n["success_rate"] == 50.0
    assert isinstance(n["average_execution_time_ms"], int)
    assert (nightly["schedule_cron"], nightly["total_executions"]) == ("0 9 * * *", 0)

    human = _ok(db_url, "agents", "list")
    assert "SUCCESS_RATE" in human and "50.00" in human and "0 9 * * *" in human

    query(db_url, "UPDATE agent_executions SET metrics = metrics || "
                  "'{\"llm_calls\": 1, \"cost_usd\": 0.5}' RETURNING id")
    document = _json(db_url, "agents", "show", "n")
    assert document["agent"]["name"] == "n"
    assert document["agent"]["total_executions"] == 2
    assert (document["agent"]["llm_calls"], document["agent"]["llm_cost_usd"]) == (2, 1.0)
    assert {t["id"] for t in document["recent_tasks"]} == {ok, failing}
    human = _ok(db_url, "agents", "show", "n")
    assert "agent_type: noop" in human and ok in human

    missing = _cli(db_url, "agents", "show", "nobody")
    assert missing.returncode == 1 and "unknown agent: nobody" in missing.stderr


def test_agents_disable_and_enable(db_url: str) -> None:
    agent_id = _noop_agent(db_url)
    assert "agent n disabled" in _ok(db_url, "agents", "disable", "n")
    assert query(db_url, "SELECT is_active FROM ai_agents")[0][0] is False
    assert "already disabled" in _ok(db_url, "agents", "disable", agent_id)
    refused = _cli(db_url, "enqueue", "n")
    assert refused.returncode == 1 and "disabled" in refused.stderr

    assert "agent n enabled" in _ok(db_url, "agents", "enable", "n")
    assert query(db_url, "SELECT is_active FROM ai_agents")[0][0] is True
    uuid.UUID(_ok(db_url, "enqueue", "n").strip())

    for action in ("enable", "disable"):
        missing = _cli(db_url, "agents", action, "nobody")
        assert missing.returncode == 1 and "unknown agent" in missing.stderr


def test_schedules_list(db_url: str) -> None:
    _noop_agent(db_url, "n")
    _noop_agent(db_url, "every-five", schedule_cron="*/5 * * * * *")
    _noop_agent(db_url, "mornings", schedule_cron="0 9 * * *",
                schedule_timezone="Europe/London")
    _noop_agent(db_url, "off", schedule_cron="0 9 * * *", is_active=False)

    before = dt.datetime.now(dt.UTC)
    rows = {row["name"]: row for row in _json(db_url, "schedules")}
    assert rows.keys() == {"every-five", "mornings", "off"}
    # `schedules list` is the same listing (next fire times move on in between).
    listed = {row["name"]: row for row in _json(db_url, "schedules", "list")}
    assert {name: {**row, "next_fire": None} for name, row in rows.items()} == {
        name: {**row, "next_fire": None} for name, row in listed.items()}
    assert rows["mornings"]["schedule_timezone"] == "Europe/London"
    assert rows["off"]["is_active"] is False and rows["off"]["next_fire"] is None
    assert rows["every-five"]["last_fire"] is None
    every_five = dt.datetime.fromisoformat(rows["every-five"]["next_fire"])
    assert every_five.second % 5 == 0 and every_five.microsecond == 0
    assert before < every_five <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    # 09:00 in London, whatever the season.
    mornings = dt.datetime.fromisoformat(rows["mornings"]["next_fire"])
    assert mornings.astimezone(ZoneInfo("Europe/London")).time() == dt.time(9, 0)

    human = _ok(db_url, "schedules")
    assert "*/5 * * * * *" in human and "Europe/London" in human


def test_schedules_show_the_last_fire(db_url: str, tmp_path: Path) -> None:
    _noop_agent(db_url, "every-second", schedule_cron="* * * * * *")
    with daemons(db_url, tmp_path):
        wait_until(lambda: query(db_url, "SELECT count(*) FROM cron_fires")[0][0] >= 1,
                   message="a cron fire")
        (row,) = _json(db_url, "schedules")
    assert row["last_fire"] is not None and row["last_task_id"] is not None
    assert query(db_url, "SELECT trigger FROM agent_tasks WHERE id = %s",
                 (row["last_task_id"],))[0][0] == "scheduled"


def test_commands_refuse_a_database_whose_schema_is_behind(empty_db_url: str) -> None:
    result = _cli(empty_db_url, "status")
    assert result.returncode == 1
    assert "run `agent-runner migrate` first" in result.stderr


# -- import-companies -------------------------------------------------------------------


def _companies_file(path: Path, rows: int, bad_rows: int = 0) -> list[tuple[int, str]]:
    """A BasicCompanyData CSV from the generator; returns (line, kind) of its bad rows."""
    result = subprocess.run(
        [sys.executable, "scripts/generate_companies.py", "--rows", str(rows),
         "--bad-rows", str(bad_rows), "--seed", "11", "--out", str(path)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=True,
    )
    bad = []
    for line in result.stderr.splitlines():
        if line.startswith("bad row: line "):
            number, kind = line.removeprefix("bad row: line ").split(": ")
            bad.append((int(number), kind))
    return bad


def test_import_companies_reports_counts_and_bad_rows(db_url: str, tmp_path: Path) -> None:
    csv_path = tmp_path / "BasicCompanyData.csv"
    bad = _companies_file(csv_path, rows=300, bad_rows=3)
    assert len(bad) == 3

    result = _cli(db_url, "import-companies", str(csv_path))
    assert result.returncode == 0, result.stderr
    assert "rows/s" in result.stdout
    assert "inserted   300" in result.stdout and "rejected   3" in result.stdout
    for line, _kind in bad:
        assert f"line {line}: " in result.stdout
    # The progress bar goes to stderr, never into the report.
    assert "companies:" in result.stderr and "companies:" not in result.stdout
    assert query(db_url, "SELECT count(*) FROM companies")[0][0] == 300

    again = json.loads(_ok(db_url, "import-companies", str(csv_path), "--json"))
    assert (again["rows_read"], again["inserted"], again["unchanged"], again["rejected"]) == (
        303, 0, 300, 3)
    assert [reject["line"] for reject in again["rejects"]] == [line for line, _ in bad]
    assert again["rows_per_second"] > 0


@pytest.mark.parametrize(("content", "complaint"), [
    (None, "cannot read"),
    (b"", "is empty"),
    (b"name,number\r\nACME LTD,01234567\r\n", "not a Companies House BasicCompanyData CSV"),
])
def test_import_companies_refuses_an_unusable_file(
    db_url: str, tmp_path: Path, content: bytes | None, complaint: str
) -> None:
    path = tmp_path / "companies.csv"
    if content is not None:
        path.write_bytes(content)
    result = _cli(db_url, "import-companies", str(path))
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert complaint in result.stderr
    assert result.stdout == ""
    assert query(db_url, "SELECT count(*) FROM companies")[0][0] == 0
