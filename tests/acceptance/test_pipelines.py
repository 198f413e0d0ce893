"""Acceptance: pipelines that run by themselves (issue 11), with ``agent-runner run`` as
real subprocesses.

* Seed 004's example 1 as written: assign the three agents with their dependencies,
  then trigger only the first one (a plain INSERT, or ``agent-runner enqueue``): the
  enrichment and scoring agents run by themselves, once each. The second test sets it
  all up with the CLI alone, as the README's walkthrough does.
* A stream scheduled every 2 s with three daemons for 20 s: one run per fire, never
  two; a run that outlasts the interval is not overlapped by the next.
* The new CLI commands, their output and their errors (in-process, ``runner.cli.main``).
"""

from __future__ import annotations

import datetime as dt
import io
import itertools
import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agents import companies_generator
from runner import cli
from tests.harness import REPO, daemon_env, daemons, query, wait_for_daemons, wait_until

pytestmark = pytest.mark.slow

# Seed 004's "Execution Input" of the opportunity bot.
GOAL_CRITERIA = {"industry": ["SaaS", "FinTech"], "location": ["UK", "Ireland"],
                 "employee_count": {"min": 10, "max": 500}}
TARGET_METRICS = {"companies_to_find": 50, "min_quality_score": 4.0}


def _cli(db_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args], cwd=REPO, env=daemon_env(db_url),
        input=stdin, capture_output=True, text=True, timeout=120,
    )


def _ok(db_url: str, *args: str, stdin: str | None = None) -> str:
    result = _cli(db_url, *args, stdin=stdin)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


def _import_companies(db_url: str, tmp_path: Path, rows: int = 2000) -> None:
    csv_path = tmp_path / "BasicCompanyData.csv"
    with csv_path.open("w", encoding="utf-8", newline="") as out:
        companies_generator.generate(out, rows, seed=11)
    _ok(db_url, "import-companies", str(csv_path))


def _run_tasks(db_url: str, run_id: str) -> list[tuple[Any, ...]]:
    """(agent, task status, trigger, completed executions, all executions) per task."""
    return query(db_url, """
        SELECT a.name, t.status, t.trigger,
               (SELECT count(*) FROM agent_executions e
                WHERE e.task_id = t.id AND e.status = 'completed'),
               (SELECT count(*) FROM agent_executions e WHERE e.task_id = t.id)
        FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id
        WHERE t.workflow_run_id = %s ORDER BY t.created_at""", (run_id,))


def _assert_the_chain_ran_by_itself(db_url: str, stream_id: str) -> str:
    """Exactly one run, rooted at the opportunity bot; each agent one task, run once,
    completed; the stream was filled, enriched and scored."""
    ((run_id, trigger, status, root),) = query(db_url, """
        SELECT r.id::text, r.trigger, r.status, a.name FROM workflow_runs r
        JOIN ai_agents a ON a.id = r.root_agent_id WHERE r.stream_id = %s""", (stream_id,))
    assert (trigger, status, root) == ("manual", "completed", "opportunity-bot")
    assert _run_tasks(db_url, run_id) == [
        ("opportunity-bot", "completed", "manual", 1, 1),
        ("enrichment-agent", "completed", "dependent", 1, 1),
        ("scoring-agent", "completed", "dependent", 1, 1)]
    assert query(db_url, "SELECT count(*) FROM agent_tasks")[0][0] == 3
    ((items, scored, last_run, last_status),) = query(db_url, """
        SELECT items, scored, last_run_id::text, last_run_status FROM stream_progress
        WHERE stream_id = %s""", (stream_id,))
    assert items > 0 and scored == items
    assert (last_run, last_status) == (run_id, "completed")
    return str(run_id)


def _wait_for_the_run(db_url: str, stream_id: str) -> None:
    wait_until(lambda: query(db_url, "SELECT count(*) > 0 AND bool_and(completed_at IS NOT NULL) "
                                     "FROM workflow_runs WHERE stream_id = %s",
                             (stream_id,))[0][0],
               timeout=100, interval=0.5, message="the run to finish")


# -- seed 004, example 1 ---------------------------------------------------------------


def test_seed_example_1_as_written_in_sql(db_url: str, tmp_path: Path) -> None:
    _import_companies(db_url, tmp_path)
    query(db_url, """
        INSERT INTO ai_agents (name, agent_type) VALUES
            ('opportunity-bot', 'opportunity_bot'), ('enrichment-agent', 'enrichment_agent'),
            ('scoring-agent', 'scoring_agent') RETURNING id""")
    stream_id = str(query(db_url, "INSERT INTO streams (name, goal_criteria, target_metrics) "
                                  "VALUES ('UK SaaS', %s, %s) RETURNING id",
                          (json.dumps(GOAL_CRITERIA), json.dumps(TARGET_METRICS)))[0][0])
    # 1. Assign agents to stream (assignAgentsToStream, field for field)
    query(db_url, """
        INSERT INTO stream_agent_assignments
            (stream_id, agent_id, assignment_role, execution_order, auto_execute,
             depends_on_agent_ids)
        SELECT %(s)s, a.id, v.role, v.ord, true,
               coalesce((SELECT array_agg(d.id) FROM ai_agents d WHERE d.name = v.dep), '{}')
        FROM (VALUES ('opportunity-bot', 'primary', 1, NULL),
                     ('enrichment-agent', 'enrichment', 2, 'opportunity-bot'),
                     ('scoring-agent', 'scoring', 3, 'enrichment-agent')) v(name, role, ord, dep)
        JOIN ai_agents a ON a.name = v.name RETURNING id""", {"s": stream_id})
    # 2. Trigger first agent: a plain INSERT of its task with the seed's execution input
    query(db_url, """
        INSERT INTO agent_tasks (agent_id, task_type, payload, priority)
        SELECT id, 'opportunity_bot', %s, 5 FROM ai_agents WHERE name = 'opportunity-bot'
        RETURNING id""", (json.dumps({"stream_id": stream_id, "goal_context": {
            "goal_criteria": GOAL_CRITERIA, "target_metrics": TARGET_METRICS}}),))
    # 3. The task runner automatically executes the three of them
    with daemons(db_url, tmp_path / "daemon"):
        _wait_for_the_run(db_url, stream_id)
    _assert_the_chain_ran_by_itself(db_url, stream_id)


def test_seed_example_1_with_the_cli_alone(db_url: str, tmp_path: Path) -> None:
    """The README's walkthrough, command for command."""
    _import_companies(db_url, tmp_path)
    for name, agent_type in [("opportunity-bot", "opportunity_bot"),
                             ("enrichment-agent", "enrichment_agent"),
                             ("scoring-agent", "scoring_agent")]:
        uuid.UUID(_ok(db_url, "agents", "create", name, "--type", agent_type).strip())
    stream_id = _ok(db_url, "streams", "create", "UK SaaS",
                    "--criteria", json.dumps(GOAL_CRITERIA),
                    "--targets", json.dumps(TARGET_METRICS)).strip()
    _ok(db_url, "streams", "assign", "UK SaaS", "opportunity-bot", "--role", "primary")
    _ok(db_url, "streams", "assign", "UK SaaS", "enrichment-agent",
        "--after", "opportunity-bot", "--role", "enrichment")
    _ok(db_url, "streams", "assign", "UK SaaS", "scoring-agent",
        "--after", "enrichment-agent", "--role", "scoring")
    payload = tmp_path / "payload.json"
    payload.write_text(json.dumps({"stream_id": stream_id}))
    enqueued = _cli(db_url, "enqueue", "opportunity-bot", "--payload", f"@{payload}")
    assert enqueued.returncode == 0, enqueued.stderr
    task_id = str(uuid.UUID(enqueued.stdout.strip()))
    assert "starts run" in enqueued.stderr and "UK SaaS" in enqueued.stderr

    with daemons(db_url, tmp_path / "daemon"):
        _wait_for_the_run(db_url, stream_id)
    run_id = _assert_the_chain_ran_by_itself(db_url, stream_id)

    shown = json.loads(_ok(db_url, "streams", "show", "UK SaaS", "--json"))
    assert shown["stream"]["goal_criteria"] == GOAL_CRITERIA
    assert [(a["agent_name"], a["depends_on"], a["total_executions"])
            for a in shown["agents"]] == [("opportunity-bot", [], 1),
                                          ("enrichment-agent", ["opportunity-bot"], 1),
                                          ("scoring-agent", ["enrichment-agent"], 1)]
    assert shown["progress"]["last_run_id"] == run_id
    assert shown["progress"]["items"] == shown["progress"]["scored"] > 0
    assert [(r["id"], r["root_agent"], r["status"]) for r in shown["runs"]] == [
        (run_id, "opportunity-bot", "completed")]
    human = _ok(db_url, "streams", "show", "UK SaaS")
    assert "enrichment-agent  enrichment_agent  opportunity-bot" in human
    # `show` of the last step: its parent as an id, the run drawn as a tree
    ((scoring_task,),) = query(db_url, "SELECT t.id::text FROM agent_tasks t JOIN ai_agents a "
                                       "ON a.id = t.agent_id WHERE a.name = 'scoring-agent'")
    ((enrichment_task,),) = query(db_url, "SELECT t.id::text FROM agent_tasks t JOIN ai_agents "
                                          "a ON a.id = t.agent_id WHERE a.name = "
                                          "'enrichment-agent'")
    shown_task = _ok(db_url, "show", scoring_task)
    assert f"parent_task_ids: {enrichment_task}\n" in shown_task
    assert "UUID(" not in shown_task and task_id in shown_task


# -- stream schedules across daemons ---------------------------------------------------


def _scheduled_stream(db_url: str, name: str, middle_sleep: float) -> str:
    """first -> middle (sleeps) -> last, noop agents named after the stream."""
    stream_id = str(query(db_url, "INSERT INTO streams (name) VALUES (%s) RETURNING id",
                          (name,))[0][0])
    previous: list[str] = []
    for order, (step, sleep) in enumerate([("first", 0), ("middle", middle_sleep),
                                           ("last", 0)], start=1):
        agent_id = str(query(db_url, "INSERT INTO ai_agents (name, agent_type, configuration) "
                                     "VALUES (%s, 'noop', %s) RETURNING id",
                             (f"{name}-{step}",
                              json.dumps({"payload": {"sleep_seconds": sleep}})))[0][0])
        query(db_url, "INSERT INTO stream_agent_assignments (stream_id, agent_id, "
                      "execution_order, depends_on_agent_ids) VALUES (%s, %s, %s, %s::uuid[]) "
                      "RETURNING id", (stream_id, agent_id, order, previous))
        previous = [agent_id]
    return stream_id


def _db_now(db_url: str) -> dt.datetime:
    now: dt.datetime = query(db_url, "SELECT now()")[0][0]
    return now


def test_streams_scheduled_every_two_seconds_on_three_daemons(
    db_url: str, tmp_path: Path,
) -> None:
    """``fast`` runs in well under 2 s: one run per fire. ``slow`` sleeps 3 s in its
    middle step: the fires while a run is going are skipped, runs never overlap."""
    fast = _scheduled_stream(db_url, "fast", 0)
    slow = _scheduled_stream(db_url, "slow", 3)
    with daemons(db_url, tmp_path, count=3) as started:
        wait_for_daemons(db_url, 3)
        _ok(db_url, "streams", "schedule", "fast", "*/2 * * * * *")
        _ok(db_url, "streams", "schedule", "slow", "*/2 * * * * *")
        time.sleep(2)  # every daemon loads the schedules (NOTIFY)
        now = _db_now(db_url)
        start = now.replace(microsecond=0) + dt.timedelta(seconds=2 + now.second % 2)
        end = start + dt.timedelta(seconds=20)
        wait_until(lambda: _db_now(db_url) > end + dt.timedelta(seconds=1), timeout=40,
                   interval=0.5, message="twenty seconds of schedule")
        for stream in ("fast", "slow"):
            _ok(db_url, "streams", "schedule", stream, "off")
        wait_until(lambda: query(db_url, "SELECT bool_and(completed_at IS NOT NULL) "
                                         "FROM workflow_runs")[0][0],
                   timeout=30, interval=0.5, message="every run finished")
        assert all(d.proc.poll() is None for d in started)

    for stream_id in (fast, slow):
        fires = query(db_url, """
            SELECT fire_time, outcome, workflow_run_id::text, daemon_id FROM stream_cron_fires
            WHERE stream_id = %s AND fire_time >= %s AND fire_time < %s ORDER BY fire_time""",
                      (stream_id, start, end))
        assert 9 <= len(fires) <= 11, fires
        assert all(f[0].second % 2 == 0 and f[0].microsecond == 0 for f in fires)
        assert len({f[3] for f in fires}) >= 2  # the fires were spread over the daemons
        # one run per started fire, and no scheduled run without a fire
        started_runs = [f[2] for f in fires if f[1] == "started"]
        assert len(set(started_runs)) == len(started_runs)
        all_started = query(db_url, "SELECT workflow_run_id::text FROM stream_cron_fires "
                                    "WHERE stream_id = %s AND outcome = 'started'",
                            (stream_id,))
        runs = query(db_url, """
            SELECT id::text, status, created_at, completed_at FROM workflow_runs
            WHERE stream_id = %s AND trigger = 'scheduled' ORDER BY created_at""",
                     (stream_id,))
        assert sorted(r[0] for r in runs) == sorted(r[0] for r in all_started)
        for run_id, status, _, _ in runs:
            assert status == "completed", run_id
            tasks = _run_tasks(db_url, run_id)
            assert [(t[1], t[3], t[4]) for t in tasks] == [("completed", 1, 1)] * 3, tasks
        # a run starts only once the previous scheduled one has finished
        for (_, _, _, previous_done), (_, _, next_started, _) in itertools.pairwise(runs):
            assert next_started >= previous_done
        skipped = [f for f in fires if f[1] == "skipped"]
        assert all(f[2] in {r[0] for r in runs} for f in skipped)
        if stream_id == fast:
            assert len(started_runs) >= 8, fires
        else:
            # a run takes 3 s and more: about every other fire finds one going
            assert 3 <= len(started_runs) <= 7 and len(skipped) >= 3, fires


# -- the CLI, in-process ---------------------------------------------------------------


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def run_cli(db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
            ) -> Any:
    monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.delenv("RUNNER_LOG_FORMAT", raising=False)

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            return _main(capsys, *args)
        except SystemExit as exc:  # argparse's usage errors
            captured = capsys.readouterr()
            return int(exc.code or 0), captured.out, captured.err
    return run


def test_help_stands_on_its_own(run_cli: Any) -> None:
    code, out, _ = run_cli("--help")
    assert code == 0 and "CONTRACT.md" not in out
    assert "streams" in out and "@FILE" in out
    for command in (["agents", "create"], ["streams", "assign"], ["streams", "schedule"]):
        code, out, _ = run_cli(*command, "--help")
        assert code == 0 and "CONTRACT.md" not in out


def test_agents_create(db_url: str, run_cli: Any, tmp_path: Path) -> None:
    code, out, err = run_cli("agents", "create", "writer", "--type", "llm_agent",
                             "--config", '{"payload": {"prompt": "Summarise."}}',
                             "--cron", "0 9 * * MON-FRI", "--tz", "Europe/London",
                             "--model", "claude-haiku-4-5", "--instructions", "Be brief.",
                             "--tools", "list_stream_items, save_insight", "--max-steps", "4")
    assert code == 0, err
    agent_id = str(uuid.UUID(out.strip()))
    assert "created agent writer (llm_agent); schedule 0 9 * * MON-FRI (Europe/London)" in err
    assert query(db_url, "SELECT name, agent_type, configuration, schedule_cron, "
                         "schedule_timezone, model, instructions_prompt, tool_names, "
                         "max_agent_steps FROM ai_agents WHERE id = %s", (agent_id,)) == [
        ("writer", "llm_agent", {"payload": {"prompt": "Summarise."}}, "0 9 * * MON-FRI",
         "Europe/London", "claude-haiku-4-5", "Be brief.", ["list_stream_items", "save_insight"],
         4)]
    # the defaults of everything not given; the configuration from a file
    config = tmp_path / "config.json"
    config.write_text('{"payload": {"sleep_seconds": 1}}')
    code, out, err = run_cli("agents", "create", "n", "--type", "noop", "--config", f"@{config}")
    assert code == 0, err
    assert query(db_url, "SELECT configuration, schedule_cron, model, max_agent_steps "
                         "FROM ai_agents WHERE name = 'n'") == [
        ({"payload": {"sleep_seconds": 1}}, None, "claude-sonnet-4-6", 10)]
    code, out, err = run_cli("agents", "create", "m", "--type", "noop", "--config", "-",
                             stdin='{"payload": {}}')
    assert code == 0, err


@pytest.mark.parametrize(("args", "code", "complaint"), [
    (["--type", "nope"], 1, 'unknown agent_type "nope" for agent "x"; known types: '),
    (["--type", "noop", "--cron", "0 25 * * *"], 2,
     'invalid cron expression "0 25 * * *": hour field "25": 25 is out of range 0-23'),
    (["--type", "noop", "--cron", "@daily"], 2, "invalid cron expression"),
    (["--type", "noop", "--tz", "Mars/Base"], 2, 'unknown time zone "Mars/Base"'),
    (["--type", "noop", "--config", "{oops"], 2, "--config is not valid JSON"),
    (["--type", "noop", "--config", "[1]"], 2, "--config must be a JSON object"),
    (["--type", "noop", "--config", "@/no/such/file.json"], 2, "cannot read the file"),
    (["--type", "noop", "--max-steps", "0"], 2, "positive integer"),
    (["--type", "noop", "--max-steps", "1001"], 2, "between 1 and 1000"),
    (["--type", "noop", "--tools", ","], 2, "name at least one tool"),
    ([], 2, "--type"),
])
def test_agents_create_refuses(
    db_url: str, run_cli: Any, args: list[str], code: int, complaint: str,
) -> None:
    result, out, err = run_cli("agents", "create", "x", *args)
    assert (result, out) == (code, "")
    assert complaint in err
    assert query(db_url, "SELECT count(*) FROM ai_agents")[0][0] == 0


def test_agents_create_refuses_a_name_taken(db_url: str, run_cli: Any) -> None:
    assert run_cli("agents", "create", "x", "--type", "noop")[0] == 0
    code, _, err = run_cli("agents", "create", "x", "--type", "scoring_agent")
    assert code == 1 and 'an agent named "x" already exists' in err
    assert query(db_url, "SELECT agent_type FROM ai_agents") == [("noop",)]


def _noop_agents(db_url: str, *names: str) -> None:
    for name in names:
        query(db_url, "INSERT INTO ai_agents (name, agent_type) VALUES (%s, 'noop') "
                      "RETURNING id", (name,))


def test_streams_create_list_and_show(db_url: str, run_cli: Any, tmp_path: Path) -> None:
    criteria = tmp_path / "criteria.json"
    criteria.write_text(json.dumps(GOAL_CRITERIA))
    code, out, err = run_cli("streams", "create", "UK SaaS", "--criteria", f"@{criteria}",
                             "--targets", "-", "--description", "for the sales team",
                             stdin=json.dumps(TARGET_METRICS))
    assert code == 0, err
    stream_id = str(uuid.UUID(out.strip()))
    assert query(db_url, "SELECT name, description, goal_criteria, target_metrics "
                         "FROM streams") == [("UK SaaS", "for the sales team", GOAL_CRITERIA,
                                              TARGET_METRICS)]
    assert run_cli("streams", "create", "empty")[0] == 0
    code, _, err = run_cli("streams", "create", "UK SaaS")
    assert code == 1 and 'a stream named "UK SaaS" already exists' in err
    for bad, complaint in [("{", "--criteria is not valid JSON"),
                           ('"FinTech"', "--criteria must be a JSON object")]:
        code, _, err = run_cli("streams", "create", "other", "--criteria", bad)
        assert code == 2 and complaint in err
    assert query(db_url, "SELECT count(*) FROM streams")[0][0] == 2

    _noop_agents(db_url, "a", "b")
    run_cli("streams", "assign", "UK SaaS", "a")
    run_cli("streams", "assign", "UK SaaS", "b", "--after", "a")
    run_cli("streams", "schedule", "UK SaaS", "0 9 * * *")

    code, out, _ = run_cli("streams", "list", "--json")
    assert code == 0
    listed = {row["name"]: row for row in json.loads(out)}
    assert set(listed) == {"UK SaaS", "empty"}
    assert (listed["UK SaaS"]["id"], listed["UK SaaS"]["agents"], listed["UK SaaS"]["target"],
            listed["UK SaaS"]["schedule_cron"]) == (stream_id, 2, 50, "0 9 * * *")
    assert listed["UK SaaS"]["next_fire"].endswith("09:00:00+00:00")
    assert listed["empty"]["agents"] == 0 and listed["empty"]["next_fire"] is None
    code, out, _ = run_cli("streams")
    assert code == 0 and "UK SaaS" in out and "0 9 * * *" in out and "NEXT_FIRE" in out

    code, out, _ = run_cli("streams", "show", stream_id, "--json")
    assert code == 0
    shown = json.loads(out)
    assert shown["stream"]["name"] == "UK SaaS" and shown["progress"]["target"] == 50
    assert [(a["agent_name"], a["depends_on"]) for a in shown["agents"]] == [
        ("a", []), ("b", ["a"])]
    assert shown["runs"] == [] and shown["scheduled_fires"] == []
    code, out, _ = run_cli("streams", "show", "UK SaaS")
    assert code == 0
    assert 'goal_criteria: {"industry": ["SaaS", "FinTech"], ' in out
    assert "schedule: 0 9 * * * (UTC), next fire " in out
    assert "progress: 0 items of 50, 0 enriched, 0 scored, 0 qualified" in out
    assert "2                b           noop        a" in out
    code, _, err = run_cli("streams", "show", "nowhere")
    assert code == 1 and "unknown stream: nowhere" in err


def test_streams_assign(db_url: str, run_cli: Any) -> None:
    _noop_agents(db_url, "a", "b", "c")
    run_cli("streams", "create", "s")
    code, out, err = run_cli("streams", "assign", "s", "a")
    assert (code, out) == (0, "assigned a to stream s (order 1, after nothing)\n"), err
    code, out, _ = run_cli("streams", "assign", "s", "b", "--after", "a", "--role", "enrichment")
    assert out == "assigned b to stream s (order 2, after a)\n"
    code, out, _ = run_cli("streams", "assign", "s", "c", "--after", "a", "--after", "b",
                           "--order", "7")
    assert out == "assigned c to stream s (order 7, after a, b)\n"
    # assigning again replaces the dependencies, keeps the order unless given
    code, out, _ = run_cli("streams", "assign", "s", "c", "--after", "b")
    assert out == "updated the assignment of c to stream s (order 7, after b)\n"
    rows = query(db_url, """
        SELECT a.name, sa.execution_order, sa.assignment_role,
               ARRAY(SELECT d.name FROM ai_agents d WHERE d.id = ANY(sa.depends_on_agent_ids)
                     ORDER BY d.name)
        FROM stream_agent_assignments sa JOIN ai_agents a ON a.id = sa.agent_id
        ORDER BY sa.execution_order""")
    assert rows == [("a", 1, "primary", []), ("b", 2, "enrichment", ["a"]),
                    ("c", 7, "primary", ["b"])]


@pytest.mark.parametrize(("args", "code", "complaint"), [
    (["nowhere", "a"], 1, "unknown stream: nowhere"),
    (["s", "nobody"], 1, "unknown agent: nobody"),
    (["s", "b", "--after", "nobody"], 1, "unknown agent: nobody"),
    (["s", "b", "--after", "outsider"], 1,
     'agent "b" in stream "s" depends on agent "outsider", which is not assigned to the stream'),
    (["s", "a", "--after", "b"], 1,
     'dependency cycle in stream "s": a -> b -> a (each agent depends on the next)'),
    (["s", "a", "--after", "a"], 1, 'dependency cycle in stream "s": a -> a'),
    (["s", "writer"], 1, "writer (llm_agent) cannot run as a step of stream s: its payload "
                         "would be {}, and invalid payload: prompt: Field required"),
    (["s", "b", "--order", "first"], 2, "--order must be an integer"),
    (["s"], 2, "required"),
])
def test_streams_assign_refuses(
    db_url: str, run_cli: Any, args: list[str], code: int, complaint: str,
) -> None:
    _noop_agents(db_url, "a", "b", "outsider")
    query(db_url, "INSERT INTO ai_agents (name, agent_type) VALUES ('writer', 'llm_agent') "
                  "RETURNING id")
    run_cli("streams", "create", "s")
    run_cli("streams", "assign", "s", "a")
    run_cli("streams", "assign", "s", "b", "--after", "a")
    before = query(db_url, "SELECT agent_id, depends_on_agent_ids, execution_order "
                           "FROM stream_agent_assignments ORDER BY agent_id")
    result, out, err = run_cli("streams", "assign", *args)
    assert (result, out) == (code, "")
    assert complaint in err
    assert query(db_url, "SELECT agent_id, depends_on_agent_ids, execution_order "
                         "FROM stream_agent_assignments ORDER BY agent_id") == before


def test_a_name_shared_by_two_streams_needs_the_id(db_url: str, run_cli: Any) -> None:
    first, second = (str(query(db_url, "INSERT INTO streams (name) VALUES ('twin') "
                                       "RETURNING id")[0][0]) for _ in range(2))
    code, _, err = run_cli("streams", "show", "twin")
    assert code == 1 and '2 streams are named "twin"; pass the id' in err
    code, out, _ = run_cli("streams", "show", second.upper(), "--json")
    assert code == 0 and json.loads(out)["stream"]["id"] == second != first


def test_streams_trigger(db_url: str, run_cli: Any) -> None:
    _noop_agents(db_url, "a", "b")
    run_cli("streams", "create", "s")
    code, _, err = run_cli("streams", "trigger", "s")
    assert code == 1 and 'stream "s" has no active agent assignments' in err
    run_cli("streams", "assign", "s", "a")
    run_cli("streams", "assign", "s", "b", "--after", "a")
    code, out, err = run_cli("streams", "trigger", "s", "--priority", "9")
    assert code == 0, err
    run_id = str(uuid.UUID(out.strip()))
    assert f"started run {run_id} of stream s: a enqueued" in err
    assert query(db_url, "SELECT trigger, priority, root_agent_id FROM workflow_runs "
                         "WHERE id = %s", (run_id,)) == [("manual", 9, None)]
    assert run_cli("streams", "trigger", "s", "--priority", "11")[0] == 2
    assert run_cli("streams", "trigger", "nowhere")[0] == 1
    query(db_url, "UPDATE ai_agents SET is_active = false WHERE name = 'a' RETURNING id")
    code, _, err = run_cli("streams", "trigger", "s")
    assert code == 1 and 'nothing to run in stream "s": a: not started: agent "a" is disabled' \
        in err


def test_streams_schedule(db_url: str, run_cli: Any) -> None:
    run_cli("streams", "create", "s")
    code, out, err = run_cli("streams", "schedule", "s", "30 4 * * *", "--tz", "Europe/Paris")
    assert code == 0, err
    assert out.startswith("stream s: a run at every fire of 30 4 * * * (Europe/Paris), "
                          "next fire ")
    assert query(db_url, "SELECT schedule_cron, schedule_timezone FROM streams") == [
        ("30 4 * * *", "Europe/Paris")]
    # the time zone stays unless given
    assert run_cli("streams", "schedule", "s", "*/5 * * * * *")[0] == 0
    assert query(db_url, "SELECT schedule_cron, schedule_timezone FROM streams") == [
        ("*/5 * * * * *", "Europe/Paris")]
    for bad, complaint in [("0 25 * * *", 'hour field "25": 25 is out of range 0-23'),
                           ("0 0 30 2 *", 'day-of-month "30" never occurs in month "2"'),
                           ("tomorrow", "expected 5 fields")]:
        code, _, err = run_cli("streams", "schedule", "s", bad)
        assert code == 2 and complaint in err
    code, _, err = run_cli("streams", "schedule", "s", "0 9 * * *", "--tz", "Mars/Base")
    assert code == 2 and 'unknown time zone "Mars/Base"' in err
    assert run_cli("streams", "schedule", "nowhere", "0 9 * * *")[0] == 1
    code, out, _ = run_cli("streams", "schedule", "s", "off")
    assert (code, out) == (0, "stream s: no schedule\n")
    assert query(db_url, "SELECT schedule_cron FROM streams") == [(None,)]


def test_enqueue_reads_the_payload_from_a_file_or_stdin(
    db_url: str, run_cli: Any, tmp_path: Path,
) -> None:
    _noop_agents(db_url, "n")
    payload = tmp_path / "payload.json"
    payload.write_text('{"sleep_seconds": 2}')
    code, out, err = run_cli("enqueue", "n", "--payload", f"@{payload}")
    assert code == 0, err
    first = out.strip()
    code, out, err = run_cli("enqueue", "n", "--payload", "-", stdin='{"fail_times": 1}')
    assert code == 0, err
    second = out.strip()
    assert query(db_url, "SELECT id::text, payload FROM agent_tasks ORDER BY created_at") == [
        (first, {"sleep_seconds": 2}), (second, {"fail_times": 1})]
    for args, complaint in [(["@" + str(tmp_path / "missing.json")], "cannot read the file"),
                            (["-"], "--payload (standard input) is not valid JSON")]:
        code, _, err = run_cli("enqueue", "n", "--payload", *args, stdin="not json")
        assert code == 2 and complaint in err
    assert query(db_url, "SELECT count(*) FROM agent_tasks")[0][0] == 2


def test_the_new_commands_need_a_database(monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for args in (["streams"], ["streams", "show", "s"], ["agents", "create", "x", "--type",
                                                         "noop"]):
        code, out, err = _main(capsys, *args)
        assert (code, out) == (2, "") and "DATABASE_URL is not set" in err
