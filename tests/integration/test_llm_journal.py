"""Durable turns and the transcript (issue 12, items 3 and 4): a retried ``llm_agent``
task replays the model turns and tool results its earlier attempt journaled, instead of
paying for them again, and ``agent-runner show TASK --transcript`` shows them.

Real executor, real Postgres, the real ``anthropic`` client against the Messages API
stand-in on 127.0.0.1.
"""

from __future__ import annotations

import json
import threading
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from agents.llm_agent import LLMAgent
from agents.tools import BUILTIN_TOOLS, PendingWrites, SaveInsightInput, ToolRegistry, ToolSpec
from runner import cli, metrics
from runner.api import AgentContext
from runner.outcomes import Outcome
from runner.plugins import Registry
from runner.settings import Settings
from tests.harness import FAST_LLM_POLICY as FAST
from tests.harness import run_task_inline, task_state, test_settings
from tests.standins.anthropic_api import AnthropicStandIn, Reply, error, text, tool_use

Conn = psycopg.Connection[tuple[Any, ...]]

MODEL = "claude-sonnet-4-6"
SERVER_ERRORS = [error(500, "api_error", "Internal server error")] * 3


class _CountingSaves:
    """The built-in tools, with ``save_insight``'s handler counting its runs."""

    def __init__(self) -> None:
        self.runs = 0
        save = next(spec for spec in BUILTIN_TOOLS.select(["save_insight"]))

        async def counted(ctx: AgentContext, writes: PendingWrites,
                          args: SaveInsightInput) -> Any:
            self.runs += 1
            return await save.handler(ctx, writes, args)

        others = BUILTIN_TOOLS.select([n for n in BUILTIN_TOOLS.names() if n != "save_insight"])
        self.registry = Registry([LLMAgent(policy=FAST, tools=ToolRegistry([
            *others, ToolSpec(save.name, save.description, save.input_model, counted),
        ]))])


def _setup(conn: Conn) -> tuple[str, str]:
    conn.execute(
        "INSERT INTO companies (company_number, name, post_town, sic_codes, status) "
        "VALUES ('01234567', 'ACME SOFTWARE LTD', 'LEEDS', '{62012}', 'Active')")
    conn.execute(
        "INSERT INTO ai_agents (name, agent_type, model, instructions_prompt, tool_names, "
        "max_agent_steps) VALUES ('analyst', 'llm_agent', %s, 'Be brief.', %s, 8)",
        (MODEL, ["get_company", "save_insight"]))
    stream = conn.execute("INSERT INTO streams (name) VALUES ('Leeds software') "
                          "RETURNING id").fetchone()
    assert stream
    row = conn.execute("SELECT enqueue_agent_task('analyst', %s::jsonb)",
                       (json.dumps({"prompt": "Find signals for ACME."}),)).fetchone()
    assert row
    return str(stream[0]), str(row[0])


def _three_turns(stream_id: str) -> list[Any]:
    insight = {"title": "ACME is hiring", "kind": "opportunity",
               "company_number": "01234567", "stream_id": stream_id}
    return [
        tool_use("get_company", {"company_number": "1234567"}, id="toolu_1",
                 say="Let me look it up."),
        tool_use("save_insight", insight, id="toolu_2"),
        tool_use("get_company", {"company_number": "01234567"}, id="toolu_3"),
    ]


def _ledger(conn: Conn, task_id: str) -> list[tuple[int, int, Decimal]]:
    return [(r[0], r[1], r[2]) for r in conn.execute(
        "SELECT e.attempt, c.call_index, c.cost_usd FROM llm_calls c JOIN agent_executions e "
        "ON e.id = c.execution_id WHERE c.task_id = %s ORDER BY e.attempt, c.call_index",
        (task_id,)).fetchall()]


def _transcript(conn: Conn, task_id: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT e.attempt, t.step, t.role, t.tool_name, t.replayed, t.cost_usd > 0 "
        "FROM llm_transcript t JOIN agent_executions e ON e.id = t.execution_id "
        "WHERE t.task_id = %s ORDER BY e.attempt, t.step, t.role", (task_id,)).fetchall()


def _replayed_total() -> float:
    return metrics.REGISTRY.get_sample_value(
        "agent_runner_llm_replayed_calls_total", {"model": MODEL}) or 0.0


async def test_retry_replays_journaled_turns_and_continues_live(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings,
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    stream_id, task_id = _setup(conn)
    tools = _CountingSaves()
    # Attempt 1: three model turns (each asking for a tool), then the API fails.
    api.enqueue(*_three_turns(stream_id), *SERVER_ERRORS)
    assert await run_task_inline(pool, task_id, registry=tools.registry,
                                 settings=settings) is Outcome.RETRY
    assert len(api.message_requests()) == 6
    assert tools.runs == 1
    first_ledger = _ledger(conn, task_id)
    assert [(a, i) for a, i, _ in first_ledger] == [(1, 1), (1, 2), (1, 3)]
    replayed_before = _replayed_total()

    # Attempt 2: turns 1-3 and their tool results come from the journal; only the
    # fourth turn reaches the API.
    api.enqueue(text("ACME is hiring; saved one insight."))
    assert await run_task_inline(pool, task_id, registry=tools.registry,
                                 settings=settings) is Outcome.COMPLETED
    requests = api.message_requests()
    assert len(requests) == 7
    live = requests[-1].body["messages"]
    # The conversation the live turn continues is attempt 1's, block for block.
    assert [m["role"] for m in live] == ["user"] + ["assistant", "user"] * 3
    assert [b["tool_use_id"] for m in live[2::2] for b in m["content"]] == [
        "toolu_1", "toolu_2", "toolu_3"]
    status, retry_count, output, _ = task_state(conn, task_id)
    assert (status, retry_count, output["steps"]) == ("completed", 1, 4)

    # Not paid twice: attempt 2 has one ledger row, for the live turn.
    assert [(a, i) for a, i, _ in _ledger(conn, task_id)] == [(1, 1), (1, 2), (1, 3), (2, 1)]
    assert _replayed_total() - replayed_before == 3
    metrics_row = conn.execute(
        "SELECT metrics FROM agent_executions WHERE task_id = %s AND attempt = 2",
        (task_id,)).fetchone()
    assert metrics_row and metrics_row[0]["llm_replayed_calls"] == 3
    assert metrics_row[0]["llm_calls"] == 1

    # The side-effecting tool ran once; what it saved committed once, with the task.
    assert tools.runs == 1
    saved = conn.execute(
        "SELECT i.title, e.attempt FROM stream_insights i JOIN agent_executions e "
        "ON e.id = i.execution_id WHERE i.task_id = %s", (task_id,)).fetchall()
    assert saved == [("ACME is hiring", 2)]

    paid = [(1, step, role, tool, False, role == "assistant")
            for step, role, tool in [(1, "assistant", None), (1, "tool", "get_company"),
                                     (2, "assistant", None), (2, "tool", "save_insight"),
                                     (3, "assistant", None), (3, "tool", "get_company")]]
    replayed = [(2, step, role, tool, True, False) for _, step, role, tool, _, _ in paid]
    assert _transcript(conn, task_id) == [
        *paid, *replayed, (2, 4, "assistant", None, False, True)]

    # `show --transcript`: the steps, with the replayed ones marked.
    monkeypatch.setenv("DATABASE_URL", db_url)
    capsys.readouterr()
    assert cli.main(["show", task_id, "--transcript"]) == 0
    shown = capsys.readouterr().out
    transcript = shown[shown.index("\ntranscript:"):]
    assert "attempt 1:" in transcript and "attempt 2:" in transcript
    assert transcript.count("[replayed]") == 6
    assert "tool call save_insight: {" in transcript and "ACME is hiring" in transcript
    assert "step 2 tool save_insight" in transcript and "text: Let me look it up." in transcript
    assert cli.main(["show", task_id, "--transcript", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert [row["replayed"] for row in document["transcript"]].count(True) == 6
    assert {"step", "role", "content", "tool_name", "tool_input", "tool_output",
            "input_tokens", "output_tokens", "cost_usd", "duration_ms",
            "replayed"} <= set(document["transcript"][0])


async def test_the_call_in_flight_when_an_attempt_dies_is_made_again_the_rest_replayed(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings,
) -> None:
    """At least once: attempt 1 dies (its timeout) during its third model call; attempt 2
    replays the first two turns and makes the third call again. Model calls in all: 4
    (6 without the journal)."""
    stream_id, task_id = _setup(conn)
    conn.execute("UPDATE ai_agents SET timeout_seconds = 3 WHERE name = 'analyst'")
    release = threading.Event()
    answered = []

    def third_call(body: dict[str, Any]) -> Reply:
        if not answered:
            answered.append(True)
            release.wait(10)  # the attempt is gone long before: nobody reads this
            return text("too late")
        return text("ACME is hiring.")

    api.default = third_call
    api.enqueue(*_three_turns(stream_id)[:2])
    tools = _CountingSaves()
    try:
        assert await run_task_inline(pool, task_id, registry=tools.registry,
                                     settings=settings) is Outcome.TIMEOUT
    finally:
        release.set()
    assert task_state(conn, task_id)[0] == "pending" and "timed out" in task_state(conn, task_id)[3]
    assert [(a, i) for a, i, _ in _ledger(conn, task_id)] == [(1, 1), (1, 2)]

    assert await run_task_inline(pool, task_id, registry=tools.registry,
                                 settings=settings) is Outcome.COMPLETED
    assert len(api.message_requests()) == 4
    assert task_state(conn, task_id)[2]["text"] == "ACME is hiring."
    assert [(a, i) for a, i, _ in _ledger(conn, task_id)] == [(1, 1), (1, 2), (2, 1)]
    assert tools.runs == 1
    assert [row[:5] for row in _transcript(conn, task_id) if row[0] == 2] == [
        (2, 1, "assistant", None, True), (2, 1, "tool", "get_company", True),
        (2, 2, "assistant", None, True), (2, 2, "tool", "save_insight", True),
        (2, 3, "assistant", None, False)]


async def test_a_changed_request_is_not_replayed(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings,
) -> None:
    stream_id, task_id = _setup(conn)
    tools = _CountingSaves()
    api.enqueue(*_three_turns(stream_id), *SERVER_ERRORS)
    assert await run_task_inline(pool, task_id, registry=tools.registry,
                                 settings=settings) is Outcome.RETRY
    replayed_before = _replayed_total()

    # New instructions: every request of attempt 2 differs from the first turn on.
    conn.execute("UPDATE ai_agents SET instructions_prompt = 'Be very brief.' "
                 "WHERE name = 'analyst'")
    api.enqueue(*_three_turns(stream_id), text("Done."))
    assert await run_task_inline(pool, task_id, registry=tools.registry,
                                 settings=settings) is Outcome.COMPLETED
    assert len(api.message_requests()) == 6 + 4
    assert _replayed_total() == replayed_before
    assert tools.runs == 2
    assert [(a, i) for a, i, _ in _ledger(conn, task_id)] == [
        (1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (2, 4)]
    assert not any(row[4] for row in _transcript(conn, task_id))
    assert conn.execute("SELECT count(*) FROM stream_insights").fetchone() == (1,)


async def test_journal_goes_with_its_task(
    conn: Conn, pool: AsyncConnectionPool, api: AnthropicStandIn, settings: Settings,
) -> None:
    _, task_id = _setup(conn)
    api.enqueue(text("Nothing to do."))
    assert await run_task_inline(pool, task_id, registry=_CountingSaves().registry,
                                 settings=settings) is Outcome.COMPLETED
    assert conn.execute("SELECT count(*) FROM llm_transcript").fetchone() == (1,)
    # Retention deletes executions, then the task (runner/store/retention.py): the
    # journal's foreign keys cascade, the ledger keeps its row.
    conn.execute("DELETE FROM agent_executions WHERE task_id = %s", (task_id,))
    conn.execute("DELETE FROM agent_tasks WHERE id = %s", (task_id,))
    assert conn.execute("SELECT count(*) FROM llm_journal").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM llm_calls").fetchone() == (1,)


def test_transcript_trims_oversized_blobs_and_redacts_secrets() -> None:
    settings = test_settings(ANTHROPIC_API_KEY="sk-ant-secret-key")
    row = {"attempt": 1, "step": 1, "role": "tool", "tool_name": "get_company",
           "tool_input": {"company_number": "01234567"},
           "tool_output": "x" * 5000 + " sk-ant-secret-key",
           "content": {"type": "tool_result", "content": "key sk-ant-secret-key"},
           "replayed": False, "duration_ms": 3}
    shown, = cli._shown_transcript([row], cli.Redactor.from_settings(settings))
    assert shown["tool_output"].startswith("x" * 4096)
    assert shown["tool_output"].endswith("...[truncated: 5004 characters in all]")
    assert shown["content"]["content"] == "key ***"
    assert "sk-ant-secret-key" not in json.dumps(shown)
