"""Acceptance: ``agent-runner demo`` as a newcomer runs it, as a real subprocess.

Once against the test database (``DATABASE_URL``), run twice to show that a re-run
works, and once with no ``DATABASE_URL`` at all, on the embedded Postgres.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from runner.embedded_pg import CLUSTER_DIR_NAME, start_embedded_postgres
from tests.harness import REPO, daemon_env, query

pytestmark = pytest.mark.slow

AGENTS = ("demo-opportunity-bot", "demo-enrichment-agent", "demo-scoring-agent")
SCOUT = "demo-signal-scout"


def _demo(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # The keys are dropped by the demo anyway (offline by default); removing them here
    # too makes sure no test run can reach the network whatever the caller's shell has.
    for key in ("ANTHROPIC_API_KEY", "COMPANIES_HOUSE_API_KEY"):
        env.pop(key, None)
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", "demo", *args], cwd=REPO, env=env,
        capture_output=True, text=True, timeout=170,
    )


def _check_run(conn: psycopg.Connection[tuple[object, ...]], stream_id: str) -> None:
    """The workflow ran to completion and the stream holds scored companies."""
    tasks = conn.execute(
        "SELECT a.name, t.status, t.trigger FROM agent_tasks t "
        "JOIN ai_agents a ON a.id = t.agent_id JOIN workflow_runs r ON r.id = t.workflow_run_id "
        "WHERE r.stream_id = %s ORDER BY t.created_at", (stream_id,)).fetchall()
    assert tasks == [(AGENTS[0], "completed", "manual"), (AGENTS[1], "completed", "dependent"),
                     (AGENTS[2], "completed", "dependent")]
    assert conn.execute("SELECT status FROM workflow_runs WHERE stream_id = %s",
                        (stream_id,)).fetchall() == [("completed",)]
    items, scored, positioned = conn.execute(
        "SELECT count(*), count(quality_score), count(position) FROM stream_items "
        "WHERE stream_id = %s", (stream_id,)).fetchone() or (0, 0, 0)
    assert 0 < items <= 50
    assert scored == positioned == items
    # Enriched from the demo's own websites and filing histories: leads worth calling.
    leads = conn.execute("SELECT count(*) FROM stream_items WHERE stream_id = %s "
                         "AND priority IN ('critical', 'high')", (stream_id,)).fetchone()
    assert leads is not None and leads[0] >= 1
    # One insight of each business agent for the run, and the scout's signals.
    kinds = dict(conn.execute("SELECT kind, count(*) FROM stream_insights "
                              "WHERE stream_id = %s GROUP BY kind", (stream_id,)).fetchall())
    assert {k: kinds.get(k) for k in ("discovery", "buying_signals", "leads")} == {
        "discovery": 1, "buying_signals": 1, "leads": 1}
    assert kinds.get("signal", 0) >= 1
    scout = conn.execute(
        "SELECT t.status, t.output FROM agent_tasks t JOIN ai_agents a ON a.id = t.agent_id "
        "WHERE a.name = %s AND t.payload ->> 'stream_id' = %s", (SCOUT, stream_id)).fetchall()
    assert len(scout) == 1 and scout[0][0] == "completed"
    assert scout[0][1]["insights_created"] == kinds["signal"]


@pytest.mark.timeout(360)
def test_demo_on_database_url_then_again(db_url: str) -> None:
    first = _demo(daemon_env(db_url))
    assert first.returncode == 0, first.stderr
    out = first.stdout
    assert "top 10 companies:" in out
    for column in ("NAME", "TOWN", "QUALITY_SCORE", "PRIORITY", "KEY_SIGNALS"):
        assert column in out
    agents = out[out.index("\nagents:"):]
    for name in AGENTS:
        assert name in agents
    assert "EXECUTIONS" in agents and "DURATION" in agents and "LLM_COST_USD" in agents
    # Stage lines on stderr, never on stdout.
    for stage in ("generating 4,000 demo companies", "importing them", "discovery",
                  "enrichment", "scoring (demo-scoring-agent): completed",
                  "demo company websites at http://127.0.0.1:",
                  "filings for 4,000 demo companies", "scout (demo-signal-scout): completed"):
        assert stage in first.stderr
    assert "agent-runner:" not in out
    # The stream's progress, its critical or high leads with their reasons, its insights.
    progress = next(line for line in out.splitlines() if line.startswith("progress: "))
    assert "enriched" in progress and "scored" in progress and "critical" in progress
    leads = out[out.index("\nleads: "):out.index("\ntop 10 companies:")]
    assert " critical and " in leads.splitlines()[1]
    lead_lines = [line for line in leads.splitlines() if line.startswith("  1. ")]
    assert lead_lines and (" critical " in lead_lines[0] or " high " in lead_lines[0])
    assert "       - meets industry, location and employees" in leads
    insights = out[out.index("\ninsights: "):out.index("\nagents:")]
    for kind in ("[discovery]", "[buying_signals]", "[leads]", "[signal]"):
        assert kind in insights
    assert "new critical" in insights or "new high" in insights
    assert "scout (demo-signal-scout): completed; checked " in insights

    with psycopg.connect(db_url, autocommit=True) as conn:
        ((stream_id,),) = conn.execute("SELECT id::text FROM streams").fetchall()
        _check_run(conn, stream_id)
        best = conn.execute(
            "SELECT c.name FROM stream_items i JOIN companies c ON c.id = i.company_id "
            "WHERE i.stream_id = %s ORDER BY i.position LIMIT 1", (stream_id,)).fetchone()
        assert best is not None and best[0] in out
        companies = conn.execute("SELECT count(*) FROM companies").fetchone()
        assert companies == (4000,)

    # A re-run: a new stream, the same agents and companies; --json this time.
    second = _demo(daemon_env(db_url), "--json")
    assert second.returncode == 0, second.stderr
    assert "using the 4,000 companies already in the database" in second.stderr
    report = json.loads(second.stdout)
    assert report["mode"] == "offline"
    assert report["workflow_run"]["status"] == "completed"
    assert report["companies"] == {"loaded": False, "present": 4000, "import": None}
    assert [a["agent_name"] for a in report["agents"]] == list(AGENTS)
    assert all(a["status"] == "completed" and a["executions"] == 1 and a["cost_usd"] == 0
               for a in report["agents"])
    progress = report["progress"]
    assert progress["stream_id"] == report["stream"]["id"]
    assert progress["items"] == report["summary"]["items"] and progress["target"] == 50
    assert progress["last_run_status"] == "completed"
    assert report["leads"] and all(lead["priority"] in ("critical", "high") and lead["reasons"]
                                   for lead in report["leads"])
    assert {i["kind"] for i in report["insights"]} == {
        "discovery", "buying_signals", "leads", "signal"}
    assert report["scout"]["agent_name"] == SCOUT and report["scout"]["status"] == "completed"
    assert report["scout"]["output"]["insights_created"] >= 1
    assert 0 < len(report["top_companies"]) <= 10
    scores = [c["quality_score"] for c in report["top_companies"]]
    assert scores == sorted(scores, reverse=True)
    assert report["summary"]["items"] == len(query(
        db_url, "SELECT 1 FROM stream_items WHERE stream_id = %s",
        (report["stream"]["id"],)))
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM streams").fetchone() == (2,)
        # The three of the workflow and the scout.
        assert conn.execute("SELECT count(*) FROM ai_agents").fetchone() == (4,)
        _check_run(conn, report["stream"]["id"])


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """``RUNNER_DATA_DIR`` for the embedded server. As root, the server runs as an
    unprivileged user that must traverse every parent of it, and pytest's ``tmp_path``
    sits under a 0700 directory; so, like tests/integration/test_embedded_pg.py, this
    is a fresh 0755 directory under the system temp directory."""
    path = Path(tempfile.mkdtemp(prefix="ar-demo-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(180)
def test_demo_without_database_url_uses_the_embedded_postgres(data_dir: Path) -> None:
    env = daemon_env("", RUNNER_DATA_DIR=str(data_dir))
    env.pop("DATABASE_URL")
    result = _demo(env)
    assert result.returncode == 0, result.stderr
    assert "DATABASE_URL is not set: starting the embedded Postgres in " \
           f"{data_dir.resolve()}" in result.stderr
    assert "stopped the embedded Postgres" in result.stderr
    assert "top 10 companies:" in result.stdout
    # The demo stopped the server it started...
    assert not (data_dir / CLUSTER_DIR_NAME / "postmaster.pid").exists()
    # ...and the results are kept in the cluster for the next `agent-runner run`.
    with start_embedded_postgres(data_dir) as server, \
            psycopg.connect(server.url, autocommit=True) as conn:
        ((stream_id,),) = conn.execute("SELECT id::text FROM streams").fetchall()
        _check_run(conn, stream_id)


def test_demo_refuses_a_disabled_demo_agent_and_leaves_nothing_half_made(db_url: str) -> None:
    query(db_url, "INSERT INTO ai_agents (name, agent_type, is_active) "
                  "VALUES ('demo-enrichment-agent', 'enrichment_agent', false) RETURNING id")
    result = _demo(daemon_env(db_url))
    assert result.returncode == 1
    assert "agents enable demo-enrichment-agent" in result.stderr
    assert query(db_url, "SELECT count(*) FROM streams")[0][0] == 0
    assert query(db_url, "SELECT count(*) FROM ai_agents")[0][0] == 1
    assert query(db_url, "SELECT count(*) FROM agent_tasks")[0][0] == 0
