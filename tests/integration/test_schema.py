"""The SQL surface: enqueue paths, constraints, admin functions, monitoring queries."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.types.json import Jsonb

from runner.migrate import migrate, pending_migrations
from runner.store.agent_types import AgentTypeRow, refresh_sync

Conn = psycopg.Connection[tuple[object, ...]]


def _agent(conn: Conn, name: str = "x", agent_type: str = "noop") -> str:
    row = conn.execute(
        "INSERT INTO ai_agents (name, agent_type) VALUES (%s, %s) RETURNING id", (name, agent_type)
    ).fetchone()
    assert row
    return str(row[0])


def test_migrate_is_idempotent(empty_db_url: str) -> None:
    first = migrate(empty_db_url)
    assert first[0].startswith("procrastinate schema")
    assert "0001_core.sql" in first
    assert migrate(empty_db_url) == []
    assert pending_migrations(empty_db_url) == []


def test_plain_insert_of_agent_has_defaults(conn: Conn) -> None:
    _agent(conn)
    row = conn.execute(
        "SELECT org_id, max_retries, timeout_seconds, is_active, configuration FROM ai_agents"
    ).fetchone()
    assert row == (
        conn.execute("SELECT runner_default_org_id()").fetchone()[0],  # type: ignore[index]
        3, 300, True, {},
    )


def test_plain_insert_enqueues_with_agent_defaults(conn: Conn) -> None:
    agent_id = _agent(conn)
    conn.execute(
        "INSERT INTO agent_tasks (agent_id, payload, priority) VALUES (%s, '{}', 4)", (agent_id,)
    )
    row = conn.execute(
        "SELECT t.task_type, t.max_retries, t.status, j.status, j.priority "
        "FROM agent_tasks t JOIN procrastinate_jobs j ON j.id = t.job_id"
    ).fetchone()
    assert row == ("noop", 3, "pending", "todo", 4)


def test_enqueue_joins_callers_transaction(conn: Conn) -> None:
    _agent(conn)
    with pytest.raises(psycopg.errors.RaiseException), conn.transaction():
        conn.execute("SELECT enqueue_agent_task('x')")
        raise psycopg.errors.RaiseException("roll back")
    assert conn.execute("SELECT count(*) FROM agent_tasks").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone() == (0,)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        ("SELECT enqueue_agent_task('nope')", "unknown agent: nope"),
        ("SELECT enqueue_agent_task('x', '{}', 0)", "priority must be between 1 and 10, got 0"),
        ("SELECT enqueue_agent_task('x', '{}', 11)", "priority must be between 1 and 10, got 11"),
        ("SELECT enqueue_agent_task('x', '[1]')", "payload must be a JSON object"),
        ("SELECT enqueue_agent_task('x'' OR 1=1 --')", "unknown agent: x' OR 1=1 --"),
    ],
)
def test_bad_enqueue_is_refused_and_writes_nothing(conn: Conn, call: str, message: str) -> None:
    _agent(conn)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(call)  # type: ignore[arg-type]
    assert message in str(info.value)
    assert conn.execute("SELECT count(*) FROM agent_tasks").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM procrastinate_jobs").fetchone() == (0,)


def test_oversized_payload_is_refused(conn: Conn) -> None:
    _agent(conn)
    big = '{"blob": "' + "a" * (1024 * 1024 + 10) + '"}'
    with pytest.raises(psycopg.errors.CheckViolation, match="agent_tasks_payload_size"):
        conn.execute("SELECT enqueue_agent_task('x', %s::jsonb)", (big,))
    assert conn.execute("SELECT count(*) FROM agent_tasks").fetchone() == (0,)


def test_disabled_agent_cannot_be_enqueued(conn: Conn) -> None:
    _agent(conn)
    conn.execute("UPDATE ai_agents SET is_active = false")
    with pytest.raises(psycopg.errors.CheckViolation, match="is disabled"):
        conn.execute("SELECT enqueue_agent_task('x')")


def test_cancel_pending_then_retry(conn: Conn) -> None:
    _agent(conn)
    task_id = conn.execute("SELECT enqueue_agent_task('x')").fetchone()[0]  # type: ignore[index]
    assert conn.execute("SELECT cancel_agent_task(%s)", (task_id,)).fetchone() == (True,)
    assert conn.execute("SELECT cancel_agent_task(%s)", (task_id,)).fetchone() == (False,)
    assert conn.execute(
        "SELECT count(*) FROM procrastinate_jobs WHERE status = 'todo'"
    ).fetchone() == (0,)
    assert conn.execute("SELECT retry_agent_task(%s)", (task_id,)).fetchone() == (True,)
    row = conn.execute(
        "SELECT t.status, j.status FROM agent_tasks t JOIN procrastinate_jobs j ON j.id = t.job_id"
    ).fetchone()
    assert row == ("pending", "todo")
    assert conn.execute("SELECT retry_agent_task(%s)", (task_id,)).fetchone() == (False,)


def test_seed_monitoring_queries_run_verbatim(conn: Conn) -> None:
    agent_id = _agent(conn)
    conn.execute("SELECT enqueue_agent_task('x')")
    org = conn.execute("SELECT runner_default_org_id()").fetchone()[0]  # type: ignore[index]
    conn.execute(
        "INSERT INTO agent_executions (agent_id, status, duration_ms) VALUES (%s, 'completed', 5)",
        (agent_id,),
    )
    executions = conn.execute(
        f"""
SELECT
  ae.id,
  aa.name as agent_name,
  ae.status,
  ae.duration_ms,
  ae.metrics,
  ae.created_at
FROM agent_executions ae
JOIN ai_agents aa ON ae.agent_id = aa.id
WHERE ae.org_id = '{org}'
ORDER BY ae.created_at DESC
LIMIT 50;
"""  # type: ignore[arg-type]
    ).fetchall()
    assert [row[1:4] for row in executions] == [("x", "completed", 5)]
    pending = conn.execute(
        """
SELECT
  at.id,
  aa.name as agent_name,
  at.task_type,
  at.priority,
  at.status,
  at.retry_count,
  at.created_at
FROM agent_tasks at
JOIN ai_agents aa ON at.agent_id = aa.id
WHERE at.status = 'pending'
ORDER BY at.priority DESC, at.created_at ASC;
"""
    ).fetchall()
    assert [row[1:6] for row in pending] == [("x", "noop", 5, "pending", 0)]
    conn.execute("UPDATE agent_tasks SET status = 'failed'")
    failed = conn.execute(
        """
SELECT
  at.*,
  aa.name as agent_name
FROM agent_tasks at
JOIN ai_agents aa ON at.agent_id = aa.id
WHERE at.status = 'failed'
ORDER BY at.created_at DESC;
"""
    ).fetchall()
    assert len(failed) == 1 and failed[0][-1] == "x"


# -- agent types (plugins) ---------------------------------------------------------------


def test_builtin_agent_types_are_registered_by_the_migration(conn: Conn) -> None:
    rows = conn.execute("SELECT agent_type, module FROM agent_types ORDER BY 1").fetchall()
    assert rows == [
        ("enrichment_agent", "agents.enrichment_agent:EnrichmentAgent"),
        ("llm_agent", "agents.llm_agent:LLMAgent"),
        ("noop", "agents.noop:NoopAgent"),
        ("opportunity_bot", "agents.opportunity_bot:OpportunityBot"),
        ("scoring_agent", "agents.scoring_agent:ScoringAgent"),
        ("scout_agent", "agents.scout_agent:ScoutAgent"),
    ]


def test_an_agent_of_an_unregistered_type_is_refused_naming_the_known_types(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.CheckViolation) as info:
        _agent(conn, agent_type="echo_agent")
    assert info.value.diag.message_primary == (
        'unknown agent_type "echo_agent" for agent "x"; known types: enrichment_agent, '
        "llm_agent, noop, opportunity_bot, scoring_agent, scout_agent")
    assert "agent-runner migrate" in (info.value.diag.message_hint or "")
    assert conn.execute("SELECT count(*) FROM ai_agents").fetchone() == (0,)
    _agent(conn)
    with pytest.raises(psycopg.errors.CheckViolation, match='unknown agent_type "nope"'):
        conn.execute("UPDATE ai_agents SET agent_type = 'nope'")
    # Other updates of the row, or naming its type again, are not checked again.
    conn.execute("UPDATE ai_agents SET agent_type = 'noop', description = 'still noop'")


def test_registering_a_type_admits_it_and_shapes_its_workflow_payload(conn: Conn) -> None:
    stream = "00000000-0000-4000-8000-00000000000a"

    def payload(agent_type: str) -> object:
        row = conn.execute("SELECT runner_workflow_payload(%s, %s, %s, %s)",
                           (agent_type, Jsonb({"payload": {"n": 1}}), stream,
                            Jsonb({"goal_criteria": {}}))).fetchone()
        assert row
        return row[0]

    # The built-ins keep the inputs 0005 gave them by hand.
    assert payload("opportunity_bot") == payload("scoring_agent") == {
        "n": 1, "stream_id": stream, "goal_context": {"goal_criteria": {}}}
    assert payload("enrichment_agent") == {"n": 1, "stream_id": stream}
    assert payload("noop") == payload("llm_agent") == payload("unknown_type") == {"n": 1}

    refresh_sync(conn, [AgentTypeRow("echo_agent", "echo_plugin:EchoAgent", "echo-plugin 1.0",
                                     takes_stream_id=True, takes_goal_context=False)])
    _agent(conn, agent_type="echo_agent")
    assert payload("echo_agent") == {"n": 1, "stream_id": stream}
    before = conn.execute("SELECT seen_at FROM agent_types WHERE agent_type = 'echo_agent'"
                          ).fetchone()
    # A refresh rewrites what it loaded and when; the others are kept.
    refresh_sync(conn, [AgentTypeRow("echo_agent", "echo_plugin.v2:EchoAgent", None,
                                     takes_stream_id=False, takes_goal_context=True)])
    row = conn.execute("SELECT module, distribution, seen_at > %s FROM agent_types "
                       "WHERE agent_type = 'echo_agent'", before).fetchone()
    assert row == ("echo_plugin.v2:EchoAgent", None, True)
    assert payload("echo_agent") == {"n": 1, "goal_context": {"goal_criteria": {}}}
    assert conn.execute("SELECT count(*) FROM agent_types").fetchone() == (7,)


def test_every_foreign_key_into_pruned_history_has_an_index_to_find_its_rows(
    conn: Conn,
) -> None:
    """The prune deletes tasks, executions, jobs, runs and webhook events in batches;
    each deleted row runs every foreign key's action on it (a cascade, a SET NULL, a
    check) as one query. Without an index on the referencing columns each of those
    scans the whole referencing table, and a prune slows to a crawl as that table grows
    (a year of llm_calls, say). (Keys into organizations, agents and streams are left
    out: those rows are deleted by hand, one at a time.)"""
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND "
                        "confrelid = 'agent_tasks'::regclass").fetchone()[0] >= 7  # type: ignore[index]
    unindexed = conn.execute("""
        SELECT c.conrelid::regclass::text, c.conname
        FROM pg_constraint c
        WHERE c.contype = 'f'
          AND c.confrelid::regclass::text IN ('agent_tasks', 'agent_executions',
              'procrastinate_jobs', 'workflow_runs', 'webhook_events')
          AND NOT EXISTS (
              SELECT 1 FROM pg_index i
              WHERE i.indrelid = c.conrelid
                -- the key's columns lead the index, in any order
                AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1]::int2[] @> c.conkey
                AND (i.indkey::int2[])[0:cardinality(c.conkey) - 1]::int2[] <@ c.conkey)
        ORDER BY 1, 2""").fetchall()
    assert unindexed == []
